//! Deterministic simulation of the whole connection protocol.
//!
//! N nodes run the production [`Registry`](crate::registry::Registry) and
//! [`Session`](crate::session::Session) state machines — the very code the daemon runs — over
//! a simulated network with a virtual clock. One seed drives every random choice: start
//! times, per-message latency, which nodes sit behind NAT, crashes and restarts with new boot
//! ids, partitions that heal, links that silently die (a lost FIN), masternodes
//! dropped from and returned to a node's list. After every step the named checks of
//! [`checks`] run; a failing seed replays exactly with `make sim SEED=…`.

pub mod checks;
mod scenario;
mod world;

pub use checks::{Check, Violation};
pub use scenario::{Fault, Scenario};

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::Config;
use crate::rules::Policy;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of every random choice.
    pub seed: u64,
    /// Number of masternodes.
    pub nodes: usize,
    /// Inject faults (otherwise: staggered starts and latency only).
    pub faults: bool,
    /// The rules under test; [`Policy::STANDARD`] is the daemon's.
    pub policy: Policy,
    /// Timeouts and backoff, as in `timed.conf` (the daemon's defaults unless changed).
    pub timings: Timings,
    /// Print every registry decision to standard error (for replaying a seed).
    pub trace: bool,
}

/// The configuration keys the protocol's timing depends on.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    /// `handshaketimeout`.
    pub handshake: Duration,
    /// `pinginterval`.
    pub ping_interval: Duration,
    /// `pingtimeout`.
    pub ping_timeout: Duration,
    /// `reconnectmin`.
    pub reconnect_min: Duration,
    /// `reconnectmax`.
    pub reconnect_max: Duration,
    /// `fallbackgrace`.
    pub fallback_grace: Duration,
}

impl Default for Timings {
    fn default() -> Timings {
        let c = Config::default();
        Timings {
            handshake: c.handshaketimeout,
            ping_interval: c.pinginterval,
            ping_timeout: c.pingtimeout,
            reconnect_min: c.reconnectmin,
            reconnect_max: c.reconnectmax,
            fallback_grace: c.fallbackgrace,
        }
    }
}

impl Timings {
    /// How long after the last fault every reachable pair must have exactly one link,
    /// derived from the timeouts: a half-open link is noticed within one ping interval plus
    /// the ping timeout; the node that must redial may first wait the fallback grace, then
    /// at most two backoff periods pass (one dial that was already scheduled, one that
    /// succeeds), each dial taking at most the handshake timeout; one more second covers
    /// latency.
    pub fn convergence_bound(&self) -> Duration {
        self.ping_interval
            + self.ping_timeout
            + self.fallback_grace
            + self.reconnect_max * 2
            + self.handshake * 2
            + Duration::from_secs(1)
    }
}

impl SimConfig {
    /// The daemon's policy and timings, with faults.
    pub fn new(seed: u64, nodes: usize) -> SimConfig {
        SimConfig {
            seed,
            nodes,
            faults: true,
            policy: Policy::STANDARD,
            timings: Timings::default(),
            trace: false,
        }
    }
}

/// The outcome of one simulated run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Links at the end (pairs with exactly one established connection).
    pub links: usize,
    /// Pairs that must be linked at the end.
    pub expected_links: usize,
    /// Handshakes completed (counted once per connection, at the acceptor).
    pub handshakes: usize,
    /// Virtual time from the last fault to the complete mesh.
    pub convergence: Option<Duration>,
    /// Steps (events) processed.
    pub steps: u64,
    /// Every violation found, in order; empty when the run passed.
    pub violations: Vec<Violation>,
}

impl Report {
    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Simulated P2P address of node `i`. They straddle `.9`/`.10`, where string order and
/// numeric order disagree.
pub fn node_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 8 + i as u8], 24100))
}

/// Runs the scenario the seed generates.
pub fn run(config: &SimConfig) -> Report {
    run_scenario(config, &Scenario::generate(config))
}

/// Runs one given scenario (a generated one, or a shrunk one).
pub fn run_scenario(config: &SimConfig, scenario: &Scenario) -> Report {
    world::World::new(config, scenario).run()
}

/// Shrinks a failing scenario: drops faults one at a time (and NAT, and start skew) as long as
/// the run still fails with the same check. Returns the smallest failing scenario found.
pub fn shrink(config: &SimConfig, scenario: &Scenario, check: Check) -> Scenario {
    let fails = |s: &Scenario| {
        run_scenario(config, s)
            .violations
            .first()
            .is_some_and(|v| v.check == check)
    };
    let mut best = scenario.clone();
    loop {
        let mut improved = false;
        for candidate in best.simpler() {
            if fails(&candidate) {
                best = candidate;
                improved = true;
                break;
            }
        }
        if !improved {
            return best;
        }
    }
}

/// The one-line command that replays a seed.
pub fn replay_command(config: &SimConfig) -> String {
    format!(
        "make sim SEED={} NODES={}{}",
        config.seed,
        config.nodes,
        if config.faults { "" } else { " FAULTS=0" }
    )
}
