//! Scenarios: everything random about a run, drawn from the seed up front, so that a failing
//! run can be replayed exactly and shrunk by removing parts of it.

use std::time::Duration;

use super::SimConfig;

/// One injected fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The node dies at `at`; `silent` means its peers get no FIN (power loss, freeze), else
    /// the kernel closes its sockets. It restarts `down_for` later with a new boot id.
    Crash {
        /// When.
        at: Duration,
        /// Which node.
        node: usize,
        /// No FIN to the peers.
        silent: bool,
        /// Until the restart.
        down_for: Duration,
    },
    /// Nothing passes between `a` and `b` from `at` for `lasts`; TCP retransmits what was
    /// sent once it heals.
    Partition {
        /// When.
        at: Duration,
        /// One side.
        a: usize,
        /// The other side.
        b: usize,
        /// How long.
        lasts: Duration,
    },
    /// The connections open between `a` and `b` at `at` go silent for good, FINs included:
    /// each end holds a dead link until liveness notices (a lost FIN, a NAT dropping state).
    Cut {
        /// When.
        at: Duration,
        /// One side.
        a: usize,
        /// The other side.
        b: usize,
    },
    /// `node` drops `target` from its masternode list at `at` and lists it again `for_` later.
    Unlist {
        /// When.
        at: Duration,
        /// Whose list.
        node: usize,
        /// Which entry.
        target: usize,
        /// Until it is listed again.
        for_: Duration,
    },
}

impl Fault {
    /// When the fault's effects end.
    pub fn ends(&self) -> Duration {
        match self {
            Fault::Crash { at, down_for, .. } => *at + *down_for,
            Fault::Partition { at, lasts, .. } => *at + *lasts,
            Fault::Cut { at, .. } => *at,
            Fault::Unlist { at, for_, .. } => *at + *for_,
        }
    }
}

/// Everything random about one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// When each node starts.
    pub starts: Vec<Duration>,
    /// Nodes whose inbound connections are dropped (behind NAT or a firewall); they can dial.
    pub behind_nat: Vec<bool>,
    /// Nodes that dial their lower masternodes at once instead of waiting (`fallbackgrace=0`),
    /// which forces duplicate connections.
    pub impatient: Vec<bool>,
    /// Faults, in time order.
    pub faults: Vec<Fault>,
    /// Message latency range, in microseconds.
    pub latency_us: (u64, u64),
    /// Seed of per-message choices (latency).
    pub net_seed: u64,
}

/// splitmix64: small, fast, and good enough to drive a simulation.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// True with probability `p` percent.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    /// A duration uniform in `lo..=hi` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }
}

impl Scenario {
    /// Draws a scenario from the configuration's seed.
    pub fn generate(config: &SimConfig) -> Scenario {
        let mut rng = Rng::new(config.seed);
        let n = config.nodes;
        let grace = config.timings.fallback_grace.as_millis() as u64;
        let latency_us = if rng.chance(20) {
            (50, 300_000) // a slow, jittery network
        } else {
            (50, 20_000)
        };
        if !config.faults {
            // Fault-free: staggered starts well inside the grace, so every pair forms with
            // exactly one handshake.
            let spread = rng.range(0, grace / 4);
            return Scenario {
                starts: (0..n).map(|_| rng.millis(0, spread)).collect(),
                behind_nat: vec![false; n],
                impatient: vec![false; n],
                faults: Vec::new(),
                latency_us,
                net_seed: rng.next(),
            };
        }
        // Often all at the same instant (the classic race), sometimes spread past the grace
        // so that fallbacks happen.
        let spread = match rng.range(0, 3) {
            0 => 0,
            1 => rng.range(0, 2_000),
            _ => rng.range(0, 2 * grace),
        };
        let starts = (0..n).map(|_| rng.millis(0, spread)).collect();
        let mut behind_nat = vec![false; n];
        if n > 2 && rng.chance(30) {
            behind_nat[rng.range(0, n as u64 - 1) as usize] = true;
        }
        let impatient = (0..n).map(|_| rng.chance(25)).collect();
        let mut faults = Vec::new();
        let count = rng.range(0, 6);
        let horizon = 4 * grace.max(1_000);
        for _ in 0..count {
            let at = rng.millis(0, horizon);
            let a = rng.range(0, n as u64 - 1) as usize;
            let mut b = rng.range(0, n as u64 - 1) as usize;
            if b == a {
                b = (a + 1) % n;
            }
            let fault = match rng.range(0, 3) {
                0 => Fault::Crash {
                    at,
                    node: a,
                    silent: rng.chance(50),
                    down_for: rng.millis(10, 3 * grace.max(1_000)),
                },
                1 => Fault::Partition {
                    at,
                    a,
                    b,
                    lasts: rng.millis(100, 3 * grace.max(1_000)),
                },
                2 => Fault::Cut { at, a, b },
                _ => Fault::Unlist {
                    at,
                    node: a,
                    target: b,
                    for_: rng.millis(100, 2 * grace.max(1_000)),
                },
            };
            faults.push(fault);
        }
        faults.sort_by_key(Fault::ends);
        Scenario {
            starts,
            behind_nat,
            impatient,
            faults,
            latency_us,
            net_seed: rng.next(),
        }
    }

    /// When the last fault's effects end (and the last node has started).
    pub fn quiet_at(&self) -> Duration {
        let last_start = self.starts.iter().max().copied().unwrap_or_default();
        self.faults
            .iter()
            .map(Fault::ends)
            .max()
            .unwrap_or_default()
            .max(last_start)
    }

    /// Whether node `i` and `j` can connect in at least one direction.
    pub fn reachable(&self, i: usize, j: usize) -> bool {
        !(self.behind_nat[i] && self.behind_nat[j])
    }

    /// Scenarios one step simpler than this one, for shrinking.
    pub fn simpler(&self) -> Vec<Scenario> {
        let mut out = Vec::new();
        for i in 0..self.faults.len() {
            let mut s = self.clone();
            s.faults.remove(i);
            out.push(s);
        }
        for i in 0..self.behind_nat.len() {
            if self.behind_nat[i] {
                let mut s = self.clone();
                s.behind_nat[i] = false;
                out.push(s);
            }
            if self.impatient[i] {
                let mut s = self.clone();
                s.impatient[i] = false;
                out.push(s);
            }
        }
        if self.starts.iter().any(|s| !s.is_zero()) {
            let mut s = self.clone();
            s.starts.iter_mut().for_each(|t| *t = Duration::ZERO);
            out.push(s);
        }
        out
    }
}
