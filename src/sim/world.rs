//! The simulated world: nodes running the production state machines, TCP connections as
//! ordered byte pipes with latency, and a virtual clock driven by an ordered event queue.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use super::checks::{self, Check, Violation};
use super::scenario::{Fault, Rng, Scenario};
use super::{node_addr, Report, SimConfig};
use crate::registry::{ConnId, Input, Output, Registry, Settings, INBOUND_ID_BIT};
use crate::session::{CloseReason, LocalInfo, Session, SessionEvent};
use crate::wire::{Network, Reason};

/// One node.
pub(super) struct Node {
    /// Running (started and not crashed).
    pub up: bool,
    /// When its current process started: its own clock reads zero then.
    epoch: Duration,
    pub registry: Registry,
    /// Sessions by connection id.
    pub sessions: BTreeMap<ConnId, Endpoint>,
    /// Dials whose connect has not completed, and their wire.
    dials: BTreeMap<ConnId, usize>,
    /// Accepted connections waiting for the registry's admission.
    pending: BTreeMap<ConnId, usize>,
    /// Masternodes currently dropped from this node's list.
    unlisted: BTreeSet<usize>,
    next_inbound: u64,
    boot: u64,
    local: LocalInfo,
    last_dial: BTreeMap<SocketAddr, Duration>,
    /// Dials of each peer that failed in a row: the next must wait out the backoff.
    fail_streak: BTreeMap<SocketAddr, u32>,
    tick_at: Option<Duration>,
}

/// A connection's end at one node.
pub(super) struct Endpoint {
    pub session: Session,
    pub wire: usize,
}

/// A simulated TCP connection. Side 0 dialed, side 1 accepted.
pub(super) struct Wire {
    pub nodes: [usize; 2],
    pub conns: [ConnId; 2],
    boots: [u64; 2],
    /// The side's socket is closed.
    released: [bool; 2],
    /// The side's process crashed (its kernel, not timed, closed the socket).
    crashed: [bool; 2],
    /// Time the last segment toward each side arrives: TCP delivers in order.
    last_at: [Duration; 2],
    /// Segments on their way toward each side.
    pub in_flight: [u32; 2],
    /// Goes nowhere any more (a lost FIN: both ends left holding a dead link).
    cut: bool,
    /// A fault touched it: the kernel may legitimately reset it.
    faulted: bool,
}

enum Ev {
    Start(usize),
    Tick(usize),
    Syn(usize),
    SynAck(usize),
    DialFailed {
        node: usize,
        boot: u64,
        conn: ConnId,
        error: &'static str,
    },
    Data {
        wire: usize,
        to: usize,
        bytes: Vec<u8>,
    },
    Fin {
        wire: usize,
        to: usize,
    },
    FaultStart(usize),
    FaultEnd(usize),
    Verify,
}

pub(super) struct World<'a> {
    pub config: &'a SimConfig,
    pub scenario: &'a Scenario,
    pub now: Duration,
    pub step: u64,
    pub nodes: Vec<Node>,
    pub wires: Vec<Wire>,
    queue: BTreeMap<(Duration, u64), Ev>,
    seq: u64,
    net: Rng,
    partitions: Vec<(usize, usize, Duration)>,
    violations: Vec<Violation>,
    handshakes: usize,
    /// Duplicate verdicts: the wire a node closed, and the one it kept.
    verdicts: BTreeMap<usize, (usize, usize)>,
    /// Crash faults that found their node up (only those restart it).
    crashed: BTreeSet<usize>,
    /// `settled[a][b]`: see [`World::settled_link`].
    settled: Vec<Vec<Option<usize>>>,
    /// Set at the verification point when the mesh is complete: from then on nobody may
    /// dial (a half-open link can no longer be hiding).
    formed_at: Option<Duration>,
    /// Since when the mesh has been complete, after the last fault.
    complete_since: Option<Duration>,
    /// Handshakes per pair, in fault-free runs.
    pair_handshakes: BTreeMap<(usize, usize), u32>,
}

impl<'a> World<'a> {
    pub fn new(config: &'a SimConfig, scenario: &'a Scenario) -> World<'a> {
        let mut net = Rng::new(scenario.net_seed);
        let nodes = (0..config.nodes)
            .map(|i| {
                let boot = net.next();
                let seed = net.next();
                Node {
                    up: false,
                    epoch: Duration::ZERO,
                    registry: new_registry(config, scenario, i, boot, seed),
                    sessions: BTreeMap::new(),
                    dials: BTreeMap::new(),
                    pending: BTreeMap::new(),
                    unlisted: BTreeSet::new(),
                    next_inbound: 0,
                    boot,
                    local: local_info(config, i, boot),
                    last_dial: BTreeMap::new(),
                    fail_streak: BTreeMap::new(),
                    tick_at: None,
                }
            })
            .collect();
        let mut w = World {
            config,
            scenario,
            now: Duration::ZERO,
            step: 0,
            nodes,
            wires: Vec::new(),
            queue: BTreeMap::new(),
            seq: 0,
            net,
            partitions: Vec::new(),
            violations: Vec::new(),
            handshakes: 0,
            verdicts: BTreeMap::new(),
            formed_at: None,
            complete_since: None,
            crashed: BTreeSet::new(),
            settled: vec![vec![None; config.nodes]; config.nodes],
            pair_handshakes: BTreeMap::new(),
        };
        for (i, at) in scenario.starts.iter().enumerate() {
            w.at(*at, Ev::Start(i));
        }
        for (i, f) in scenario.faults.iter().enumerate() {
            let at = match f {
                Fault::Crash { at, .. }
                | Fault::Partition { at, .. }
                | Fault::Cut { at, .. }
                | Fault::Unlist { at, .. } => *at,
            };
            w.at(at, Ev::FaultStart(i));
            w.at(f.ends(), Ev::FaultEnd(i));
        }
        w.at(w.verify_at(), Ev::Verify);
        w
    }

    fn verify_at(&self) -> Duration {
        self.scenario.quiet_at() + self.config.timings.convergence_bound()
    }

    pub fn run(mut self) -> Report {
        // After the verification, watch the formed mesh for a few ping intervals: it must
        // stay exactly as it is.
        let end = self.verify_at() + self.config.timings.ping_interval * 3;
        while let Some(((t, _), ev)) = self.queue.pop_first() {
            if t > end || !self.violations.is_empty() {
                break;
            }
            self.now = t;
            self.step += 1;
            if self.config.trace {
                match &ev {
                    Ev::Data { .. } | Ev::Tick(_) => {}
                    Ev::Start(n) => eprintln!("{:>12.6} node {n}: start", t.as_secs_f64()),
                    Ev::FaultStart(i) => eprintln!(
                        "{:>12.6} fault {:?}",
                        t.as_secs_f64(),
                        self.scenario.faults[*i]
                    ),
                    Ev::Fin { wire, to } => {
                        eprintln!("{:>12.6} FIN on wire {wire} to side {to}", t.as_secs_f64())
                    }
                    Ev::DialFailed { node, error, .. } => eprintln!(
                        "{:>12.6} node {node}: dial failed: {error}",
                        t.as_secs_f64()
                    ),
                    _ => {}
                }
            }
            self.handle(ev);
            self.refresh_links();
            checks::after_step(&mut self);
            if self.now >= self.scenario.quiet_at() {
                // A half-open link looks complete until liveness notices; the convergence
                // time is therefore when the mesh last became (and stayed) complete.
                match (self.mesh_complete(), self.complete_since) {
                    (true, None) => self.complete_since = Some(self.now),
                    (false, Some(_)) => self.complete_since = None,
                    _ => {}
                }
            }
        }
        if self.violations.is_empty() {
            self.now = end;
            self.refresh_links();
            checks::at_end(&mut self);
        }
        if self.violations.is_empty() && !self.config.faults {
            let pairs = self.expected_links();
            if self.handshakes != pairs {
                let detail = format!("{} handshakes for {pairs} links", self.handshakes);
                self.violate(Check::OneHandshakePerLink, detail);
            }
        }
        let links = self.links();
        Report {
            seed: self.config.seed,
            links,
            expected_links: self.expected_links(),
            handshakes: self.handshakes,
            convergence: self
                .complete_since
                .map(|t| t.saturating_sub(self.scenario.quiet_at())),
            steps: self.step,
            violations: self.violations,
        }
    }

    pub fn violate(&mut self, check: Check, detail: String) {
        if self.violations.iter().any(|v| v.check == check) {
            return;
        }
        self.violations.push(Violation {
            check,
            seed: self.config.seed,
            step: self.step,
            time: self.now,
            detail,
        });
    }

    fn at(&mut self, t: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t, self.seq), ev);
    }

    fn latency(&mut self) -> Duration {
        let (lo, hi) = self.scenario.latency_us;
        Duration::from_micros(self.net.range(lo, hi))
    }

    fn local_now(&self, n: usize) -> Duration {
        self.now.saturating_sub(self.nodes[n].epoch)
    }

    fn partitioned_until(&self, a: usize, b: usize) -> Option<Duration> {
        self.partitions
            .iter()
            .filter(|(x, y, until)| ((*x, *y) == (a, b) || (*x, *y) == (b, a)) && *until > self.now)
            .map(|(_, _, until)| *until)
            .max()
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Start(n) => self.start(n),
            Ev::Tick(n) => {
                self.nodes[n].tick_at = None;
                if self.nodes[n].up {
                    let now = self.local_now(n);
                    for e in self.nodes[n].sessions.values_mut() {
                        e.session.on_tick(now);
                    }
                    let out = self.nodes[n].registry.handle(Input::Tick, now);
                    self.apply(n, out);
                    self.pump(n);
                }
            }
            Ev::Syn(wire) => self.on_syn(wire),
            Ev::SynAck(wire) => self.on_syn_ack(wire),
            Ev::DialFailed {
                node,
                boot,
                conn,
                error,
            } => {
                if self.nodes[node].up && self.nodes[node].boot == boot {
                    if let Some(wire) = self.nodes[node].dials.remove(&conn) {
                        let target = node_addr(self.wires[wire].nodes[1]);
                        *self.nodes[node].fail_streak.entry(target).or_default() += 1;
                    } else if let Some(target) = self.dial_target(node, conn) {
                        // A dial the registry still counts (not one it gave up).
                        *self.nodes[node].fail_streak.entry(target).or_default() += 1;
                    }
                    let now = self.local_now(node);
                    let input = Input::DialFailed {
                        conn,
                        error: error.into(),
                    };
                    let out = self.nodes[node].registry.handle(input, now);
                    self.apply(node, out);
                    self.pump(node);
                }
            }
            Ev::Data { wire, to, bytes } => {
                self.wires[wire].in_flight[to] -= 1;
                let w = &self.wires[wire];
                let (n, conn) = (w.nodes[to], w.conns[to]);
                if w.released[to] {
                    if !w.faulted && !w.crashed[1 - to] {
                        let detail = format!(
                            "{} bytes reached node {n}'s closed connection #{wire}: the kernel answers with an RST",
                            bytes.len()
                        );
                        self.violate(Check::NoAbortiveClose, detail);
                    }
                    return;
                }
                let now = self.local_now(n);
                if let Some(e) = self.nodes[n].sessions.get_mut(&conn) {
                    e.session.on_data(&bytes, now);
                }
                self.pump(n);
            }
            Ev::Fin { wire, to } => {
                self.wires[wire].in_flight[to] -= 1;
                let w = &self.wires[wire];
                let (n, conn) = (w.nodes[to], w.conns[to]);
                if w.released[to] {
                    return;
                }
                let now = self.local_now(n);
                if let Some(e) = self.nodes[n].sessions.get_mut(&conn) {
                    e.session.on_eof(now);
                }
                self.pump(n);
            }
            Ev::FaultStart(i) => self.fault_start(i),
            Ev::FaultEnd(i) => self.fault_end(i),
            Ev::Verify => {
                self.refresh_links();
                checks::at_end(self);
                if self.violations.is_empty() {
                    self.formed_at = Some(self.now);
                }
            }
        }
    }

    fn start(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        node.up = true;
        node.epoch = self.now;
        let out = node.registry.handle(Input::Tick, Duration::ZERO);
        self.apply(n, out);
        if !self.nodes[n].unlisted.is_empty() {
            // The list was edited before this process started: it starts with the edit.
            self.set_list(n);
        }
        self.pump(n);
    }

    fn fault_start(&mut self, i: usize) {
        match self.scenario.faults[i].clone() {
            Fault::Crash { node, silent, .. } => {
                if !self.nodes[node].up {
                    return;
                }
                self.crashed.insert(i);
                self.nodes[node].up = false;
                let ends: Vec<(ConnId, usize)> = self.nodes[node]
                    .sessions
                    .iter()
                    .map(|(c, e)| (*c, e.wire))
                    .collect();
                for (conn, wire) in ends {
                    let side = self.side(wire, node, conn);
                    let w = &mut self.wires[wire];
                    w.released[side] = true;
                    w.crashed[side] = true;
                    w.faulted = true;
                    if !silent {
                        self.send_fin(wire, side);
                    }
                }
                let node = &mut self.nodes[node];
                node.sessions.clear();
                node.dials.clear();
                node.pending.clear();
            }
            Fault::Partition { a, b, lasts, .. } => {
                let until = self.now + lasts;
                self.partitions.push((a, b, until));
            }
            Fault::Cut { a, b, .. } => {
                for w in &mut self.wires {
                    let between = w.nodes == [a, b] || w.nodes == [b, a];
                    if between && !w.released[0] && !w.released[1] {
                        w.cut = true;
                        w.faulted = true;
                    }
                }
            }
            Fault::Unlist { node, target, .. } => {
                self.nodes[node].unlisted.insert(target);
                self.forget_dials(node, target);
                self.set_list(node);
            }
        }
    }

    fn fault_end(&mut self, i: usize) {
        match self.scenario.faults[i].clone() {
            Fault::Crash { node, .. } => {
                if !self.crashed.remove(&i) || self.nodes[node].up {
                    return;
                }
                // A new process: new boot id, new registry, and the configured list.
                let boot = self.net.next();
                let seed = self.net.next();
                let n = &mut self.nodes[node];
                n.boot = boot;
                n.local = local_info(self.config, node, boot);
                n.registry = new_registry(self.config, self.scenario, node, boot, seed);
                n.unlisted.clear();
                n.last_dial.clear();
                n.fail_streak.clear();
                n.next_inbound = 0;
                self.start(node);
            }
            Fault::Unlist { node, target, .. } => {
                self.nodes[node].unlisted.remove(&target);
                self.forget_dials(node, target);
                self.set_list(node);
            }
            Fault::Partition { .. } | Fault::Cut { .. } => {}
        }
    }

    /// A peer newly (re)listed is a new target: its backoff starts afresh.
    fn forget_dials(&mut self, n: usize, target: usize) {
        let addr = node_addr(target);
        self.nodes[n].fail_streak.remove(&addr);
        self.nodes[n].last_dial.remove(&addr);
    }

    fn set_list(&mut self, n: usize) {
        if !self.nodes[n].up {
            return;
        }
        let masternodes = (0..self.config.nodes)
            .filter(|i| !self.nodes[n].unlisted.contains(i))
            .map(node_addr)
            .collect();
        let input = Input::SetPeers {
            masternodes,
            addnodes: Vec::new(),
        };
        let now = self.local_now(n);
        let out = self.nodes[n].registry.handle(input, now);
        self.apply(n, out);
        self.pump(n);
    }

    fn side(&self, wire: usize, node: usize, conn: ConnId) -> usize {
        let w = &self.wires[wire];
        if w.nodes[0] == node && w.conns[0] == conn {
            0
        } else {
            1
        }
    }

    fn node_of(&self, addr: SocketAddr) -> Option<usize> {
        (0..self.config.nodes).find(|i| node_addr(*i) == addr)
    }

    fn on_syn(&mut self, wire: usize) {
        let (dialer, m) = (self.wires[wire].nodes[0], self.wires[wire].nodes[1]);
        if !self.nodes[m].up {
            let lat = self.latency();
            let (boot, conn) = (self.wires[wire].boots[0], self.wires[wire].conns[0]);
            self.at(
                self.now + lat,
                Ev::DialFailed {
                    node: dialer,
                    boot,
                    conn,
                    error: "connection refused",
                },
            );
            return;
        }
        let node = &mut self.nodes[m];
        node.next_inbound += 1;
        let conn = INBOUND_ID_BIT | node.next_inbound;
        node.pending.insert(conn, wire);
        self.wires[wire].conns[1] = conn;
        self.wires[wire].boots[1] = node.boot;
        // SYN-ACK goes through the same ordered pipe, so it precedes any data.
        let lat = self.latency();
        let at = (self.now + lat).max(self.wires[wire].last_at[0]);
        self.wires[wire].last_at[0] = at;
        self.at(at, Ev::SynAck(wire));
        let remote = SocketAddr::new(node_addr(dialer).ip(), 30000 + (wire % 30000) as u16);
        let now = self.local_now(m);
        let out = self.nodes[m]
            .registry
            .handle(Input::Inbound { conn, remote }, now);
        self.apply(m, out);
        self.pump(m);
    }

    fn on_syn_ack(&mut self, wire: usize) {
        let (n, conn) = (self.wires[wire].nodes[0], self.wires[wire].conns[0]);
        let current = self.nodes[n].up
            && self.nodes[n].boot == self.wires[wire].boots[0]
            && self.nodes[n].dials.remove(&conn).is_some();
        if !current {
            // Crashed or abandoned meanwhile: the socket is closed as soon as it connects.
            let w = &mut self.wires[wire];
            w.released[0] = true;
            w.crashed[0] = !self.nodes[n].up;
            w.faulted |= !self.nodes[n].up;
            self.send_fin(wire, 0);
            return;
        }
        let now = self.local_now(n);
        let addr = node_addr(self.wires[wire].nodes[1]);
        let session = Session::outbound(self.nodes[n].local.clone(), addr, conn, now);
        self.nodes[n]
            .sessions
            .insert(conn, Endpoint { session, wire });
        let out = self.nodes[n]
            .registry
            .handle(Input::Connected { conn }, now);
        self.apply(n, out);
        self.pump(n);
    }

    /// Carries out a registry's outputs at node `n`.
    fn apply(&mut self, n: usize, outputs: Vec<Output>) {
        let now = self.local_now(n);
        for out in outputs {
            if self.config.trace {
                let wire = match &out {
                    Output::Accept { conn } | Output::Close { conn, .. } => {
                        self.nodes[n].sessions.get(conn).map(|e| e.wire)
                    }
                    _ => None,
                };
                eprintln!(
                    "{:>12.6} node {n}: {out:?} wire {wire:?}",
                    self.now.as_secs_f64()
                );
            }
            match out {
                Output::Dial { conn, addr } => self.dial(n, conn, addr),
                Output::Admit { conn } => {
                    if let Some(wire) = self.nodes[n].pending.remove(&conn) {
                        let remote = node_addr(self.wires[wire].nodes[0]);
                        let session = Session::inbound(self.nodes[n].local.clone(), remote, now);
                        self.nodes[n]
                            .sessions
                            .insert(conn, Endpoint { session, wire });
                    }
                }
                Output::Refuse { conn, reason } => {
                    if let Some(wire) = self.nodes[n].pending.remove(&conn) {
                        let remote = node_addr(self.wires[wire].nodes[0]);
                        let mut session =
                            Session::inbound(self.nodes[n].local.clone(), remote, now);
                        session.close(reason, now);
                        self.nodes[n]
                            .sessions
                            .insert(conn, Endpoint { session, wire });
                    }
                }
                Output::Accept { conn } => {
                    if let Some(e) = self.nodes[n].sessions.get_mut(&conn) {
                        e.session.accept(now);
                    }
                    if let Some(peer) = self.peer_of(n, conn) {
                        self.nodes[n].fail_streak.remove(&peer);
                    }
                }
                Output::Close { conn, reason } => {
                    if reason == Reason::Duplicate {
                        self.judge_duplicate_close(n, conn);
                    }
                    if let Some(e) = self.nodes[n].sessions.get_mut(&conn) {
                        e.session.close(reason, now);
                    } else {
                        // Still dialing: abandoned; closed as soon as it connects.
                        self.nodes[n].dials.remove(&conn);
                    }
                }
                Output::Stopped => {}
            }
        }
    }

    /// `loser_after_winner` and the disagreement half of `ends_agree`, at the moment node
    /// `n` closes `conn` as a duplicate.
    fn judge_duplicate_close(&mut self, n: usize, conn: ConnId) {
        let views = self.nodes[n].registry.connections();
        let Some(peer) = views.iter().find(|v| v.conn == conn).and_then(|v| v.peer) else {
            return;
        };
        let winner = views
            .iter()
            .find(|v| v.conn != conn && v.established && v.peer == Some(peer));
        let Some(winner) = winner else {
            let detail = format!(
                "node {n} closes connection {conn:#x} to {peer} as a duplicate while no other connection to it is established"
            );
            return self.violate(Check::LoserAfterWinner, detail);
        };
        let (Some(lost), Some(kept)) = (
            self.nodes[n].sessions.get(&conn).map(|e| e.wire),
            self.nodes[n].sessions.get(&winner.conn).map(|e| e.wire),
        ) else {
            return;
        };
        let other = self.wires[lost]
            .nodes
            .into_iter()
            .find(|x| *x != n)
            .unwrap_or(n);
        if self.verdicts.get(&kept) == Some(&(other, lost)) {
            let detail = format!(
                "node {n} keeps connection #{kept} and closes #{lost}; node {other} did the opposite"
            );
            self.violate(Check::EndsAgree, detail);
        }
        self.verdicts.insert(lost, (n, kept));
    }

    /// The other half of `loser_after_winner`: node `n` reads the peer's `Disconnect{duplicate}`
    /// on `conn`, still its link (it had not closed it itself). If the winner the peer kept is
    /// a connection node `n` has too, `n` must hold it established already: otherwise the
    /// pair had no link at this end, however briefly. (A winner `n` no longer has at all is a
    /// stale link at the peer, which only its ping timeout can end; `converges` bounds that.)
    fn judge_duplicate_received(&mut self, n: usize, conn: ConnId) {
        let views = self.nodes[n].registry.connections();
        if !views.iter().any(|v| v.conn == conn && v.established) {
            return;
        }
        let Some(lost) = self.nodes[n].sessions.get(&conn).map(|e| e.wire) else {
            return;
        };
        let Some(&(closer, kept)) = self.verdicts.get(&lost) else {
            return;
        };
        let wire = &self.wires[kept];
        let Some(side) = wire.nodes.iter().position(|x| *x == n) else {
            return;
        };
        let ours = wire.conns[side];
        let Some(e) = self.nodes[n].sessions.get(&ours) else {
            return;
        };
        if !e.session.is_closing() && !e.session.is_established() {
            let detail = format!(
                "node {n} reads Disconnect{{duplicate}} on its link #{lost} from node {closer}, which kept #{kept}, still in its handshake here"
            );
            self.violate(Check::LoserAfterWinner, detail);
        }
    }

    /// The peer a dial of node `n` goes to, unless the registry gave the dial up.
    fn dial_target(&self, n: usize, conn: ConnId) -> Option<SocketAddr> {
        self.nodes[n]
            .registry
            .connections()
            .into_iter()
            .find(|v| v.conn == conn && !v.closing)
            .and_then(|v| v.peer)
    }

    fn dial(&mut self, n: usize, conn: ConnId, addr: SocketAddr) {
        // After k failed dials in a row the next waits at least 3/4 of the k-th backoff step.
        let t = self.config.timings;
        let streak = self.nodes[n].fail_streak.get(&addr).copied().unwrap_or(0);
        let step = crate::rules::backoff(
            streak.saturating_sub(1),
            t.reconnect_min,
            t.reconnect_max,
            0,
        );
        let min_gap = step * 3 / 4;
        if let Some(last) = self.nodes[n].last_dial.insert(addr, self.now) {
            if self.now - last + Duration::from_millis(1) < min_gap {
                let detail = format!(
                    "node {n} dialed {addr} again after {:?} ({streak} failures in a row: backoff at least {min_gap:?})",
                    self.now - last
                );
                self.violate(Check::NoDialStorm, detail);
            }
        }
        let Some(m) = self.node_of(addr) else {
            return;
        };
        if self.formed_at.is_some() && !self.scenario.behind_nat[m] {
            let detail = format!("node {n} dialed node {m} after the mesh had formed");
            self.violate(Check::NoDialStorm, detail);
        }
        let boot = self.nodes[n].boot;
        if self.scenario.behind_nat[m] || self.partitioned_until(n, m).is_some() {
            let at = self.now + self.config.timings.handshake;
            let error = "connect timed out";
            self.at(
                at,
                Ev::DialFailed {
                    node: n,
                    boot,
                    conn,
                    error,
                },
            );
            return;
        }
        let wire = self.wires.len();
        self.wires.push(Wire {
            nodes: [n, m],
            conns: [conn, 0],
            boots: [boot, 0],
            released: [false; 2],
            crashed: [false; 2],
            last_at: [Duration::ZERO; 2],
            in_flight: [0; 2],
            cut: false,
            faulted: false,
        });
        self.nodes[n].dials.insert(conn, wire);
        let lat = self.latency();
        self.at(self.now + lat, Ev::Syn(wire));
    }

    /// Moves everything the node's sessions produced: events to the registry (and its
    /// outputs back), bytes and FINs onto the wires, finished sessions off the node.
    fn pump(&mut self, n: usize) {
        loop {
            let mut progressed = false;
            let ids: Vec<ConnId> = self.nodes[n].sessions.keys().copied().collect();
            for id in &ids {
                while let Some(e) = self.nodes[n].sessions.get_mut(id) {
                    let inbound = e.session.direction() == crate::rules::Direction::Inbound;
                    let Some(event) = e.session.poll_event() else {
                        break;
                    };
                    progressed = true;
                    let input = match event {
                        SessionEvent::Handshaken(hello) => {
                            if inbound {
                                self.handshakes += 1;
                                self.count_pair_handshake(n, hello.addr);
                            }
                            Input::Handshaken { conn: *id, hello }
                        }
                        SessionEvent::Heard { rtt } => Input::Heard { conn: *id, rtt },
                        SessionEvent::Confirmed => Input::Confirmed { conn: *id },
                        SessionEvent::Closed(reason) => {
                            if reason == CloseReason::Remote(Reason::Duplicate) {
                                self.judge_duplicate_received(n, *id);
                            }
                            // A link that was up ends: the daemon starts its backoff over.
                            let view = self.nodes[n]
                                .registry
                                .connections()
                                .into_iter()
                                .find(|v| v.conn == *id);
                            if let Some(peer) = view.filter(|v| v.established).and_then(|v| v.peer)
                            {
                                self.nodes[n].fail_streak.remove(&peer);
                            }
                            Input::Closed { conn: *id, reason }
                        }
                        SessionEvent::Rejected { .. } => continue,
                    };
                    let now = self.local_now(n);
                    let out = self.nodes[n].registry.handle(input, now);
                    self.apply(n, out);
                }
            }
            let ids: Vec<ConnId> = self.nodes[n].sessions.keys().copied().collect();
            for id in ids {
                let e = self.nodes[n].sessions.get_mut(&id).expect("listed above");
                let wire = e.wire;
                let bytes = e.session.pending_output().to_vec();
                if !bytes.is_empty() {
                    e.session.consume_output(bytes.len());
                }
                let fin = e.session.wants_fin();
                if fin {
                    e.session.fin_sent();
                }
                let done = e.session.is_done() && e.session.poll_event().is_none();
                let side = self.side(wire, n, id);
                if !bytes.is_empty() {
                    progressed = true;
                    self.send_data(wire, side, bytes);
                }
                if fin {
                    progressed = true;
                    self.send_fin(wire, side);
                }
                if done {
                    progressed = true;
                    self.nodes[n].sessions.remove(&id);
                    self.wires[wire].released[side] = true;
                }
            }
            if !progressed {
                break;
            }
        }
        self.schedule_tick(n);
    }

    fn schedule_tick(&mut self, n: usize) {
        let node = &self.nodes[n];
        if !node.up {
            return;
        }
        let deadline = node
            .sessions
            .values()
            .filter_map(|e| e.session.next_deadline())
            .chain(node.registry.next_deadline())
            .min();
        let Some(local) = deadline else {
            return;
        };
        let at = (node.epoch + local).max(self.now + Duration::from_micros(1));
        if node.tick_at.is_some_and(|t| t <= at && t > self.now) {
            return;
        }
        self.nodes[n].tick_at = Some(at);
        self.at(at, Ev::Tick(n));
    }

    fn arrival(&mut self, wire: usize, to: usize) -> Duration {
        let lat = self.latency();
        let mut at = (self.now + lat).max(self.wires[wire].last_at[to]);
        let [a, b] = self.wires[wire].nodes;
        if let Some(until) = self.partitioned_until(a, b) {
            // TCP retransmits until the partition heals.
            self.wires[wire].faulted = true;
            at = at.max(until + lat);
        }
        self.wires[wire].last_at[to] = at;
        self.wires[wire].in_flight[to] += 1;
        at
    }

    fn send_data(&mut self, wire: usize, from: usize, bytes: Vec<u8>) {
        if self.wires[wire].cut {
            return;
        }
        let to = 1 - from;
        let at = self.arrival(wire, to);
        self.at(at, Ev::Data { wire, to, bytes });
    }

    fn send_fin(&mut self, wire: usize, from: usize) {
        if self.wires[wire].cut {
            return;
        }
        let to = 1 - from;
        let at = self.arrival(wire, to);
        self.at(at, Ev::Fin { wire, to });
    }

    /// `one_handshake_per_link`: in a fault-free run a pair handshakes exactly once.
    fn count_pair_handshake(&mut self, acceptor: usize, dialer: SocketAddr) {
        if self.config.faults {
            return;
        }
        let Some(d) = self.node_of(dialer) else {
            return;
        };
        let pair = (d.min(acceptor), d.max(acceptor));
        let count = self.pair_handshakes.entry(pair).or_default();
        *count += 1;
        if *count > 1 {
            let detail = format!(
                "nodes {} and {} completed a second handshake",
                pair.0, pair.1
            );
            self.violate(Check::OneHandshakePerLink, detail);
        }
    }

    /// Whether `peer` is in node `n`'s current masternode list.
    pub fn lists_masternode(&self, n: usize, peer: SocketAddr) -> bool {
        self.node_of(peer)
            .is_some_and(|i| !self.nodes[n].unlisted.contains(&i))
    }

    /// The P2P address of node `n`'s connection `conn`'s peer, once known.
    pub fn peer_of(&self, n: usize, conn: ConnId) -> Option<SocketAddr> {
        self.nodes[n]
            .registry
            .connections()
            .into_iter()
            .find(|v| v.conn == conn)
            .and_then(|v| v.peer)
    }

    /// The wire of node `a`'s link to node `b`, when `a` holds exactly one established
    /// connection to `b` (a dial still in progress beside it is no link). Read from the table
    /// [`World::refresh_links`] keeps.
    pub fn settled_link(&self, a: usize, b: usize) -> Option<usize> {
        self.settled[a][b]
    }

    /// Rebuilds the table of settled links: one registry view per node per step, where asking
    /// pair by pair would cost a view per pair.
    pub fn refresh_links(&mut self) {
        let n = self.nodes.len();
        for a in 0..n {
            let mut count = vec![0u32; n];
            let mut wire = vec![None; n];
            if self.nodes[a].up {
                for v in self.nodes[a].registry.connections() {
                    let Some(b) = v
                        .peer
                        .filter(|_| v.established)
                        .and_then(|p| self.node_of(p))
                    else {
                        continue;
                    };
                    count[b] += 1;
                    wire[b] = self.nodes[a].sessions.get(&v.conn).map(|e| e.wire);
                }
            }
            for b in 0..n {
                self.settled[a][b] = if count[b] == 1 { wire[b] } else { None };
            }
        }
    }

    /// Nothing is on its way between `a` and `b`.
    pub fn pair_quiet(&self, a: usize, b: usize) -> bool {
        self.wires
            .iter()
            .filter(|w| w.nodes == [a, b] || w.nodes == [b, a])
            .all(|w| w.in_flight == [0, 0])
    }

    /// Every pair that can connect shares exactly one link, dialed by the lower address
    /// wherever both directions work: the state the mesh must reach and keep.
    fn mesh_complete(&self) -> bool {
        let n = self.nodes.len();
        (0..n).all(|a| {
            (a + 1..n).all(|b| {
                if !self.scenario.reachable(a, b) {
                    return true;
                }
                let (x, y) = (self.settled_link(a, b), self.settled_link(b, a));
                let both_ways = !self.scenario.behind_nat[a] && !self.scenario.behind_nat[b];
                match x {
                    Some(wire) if x == y => !both_ways || self.wires[wire].nodes[0] == a,
                    _ => false,
                }
            })
        })
    }

    fn expected_links(&self) -> usize {
        let n = self.nodes.len();
        (0..n)
            .flat_map(|a| (a + 1..n).map(move |b| (a, b)))
            .filter(|(a, b)| self.scenario.reachable(*a, *b))
            .count()
    }

    fn links(&self) -> usize {
        let n = self.nodes.len();
        (0..n)
            .flat_map(|a| (a + 1..n).map(move |b| (a, b)))
            .filter(|(a, b)| {
                let x = self.settled_link(*a, *b);
                x.is_some() && x == self.settled_link(*b, *a)
            })
            .count()
    }

    /// Node `a`'s connections to node `b`, for violation reports.
    pub fn describe_links(&self, a: usize, b: usize) -> String {
        if !self.nodes[a].up {
            return "down".into();
        }
        let peer = node_addr(b);
        let conns: Vec<String> = self.nodes[a]
            .registry
            .connections()
            .into_iter()
            .filter(|v| v.peer == Some(peer))
            .map(|v| {
                let state = if v.established {
                    "established"
                } else if v.closing {
                    "closing"
                } else {
                    "pending"
                };
                format!("{} {state}", v.direction.name())
            })
            .collect();
        if conns.is_empty() {
            "none".into()
        } else {
            conns.join(", ")
        }
    }
}

fn local_info(config: &SimConfig, i: usize, boot: u64) -> LocalInfo {
    LocalInfo {
        network: Network::Testnet,
        addr: node_addr(i),
        boot_id: boot,
        masternode: true,
        agent: format!("timed-sim/{}", crate::VERSION),
        handshake_timeout: config.timings.handshake,
        ping_interval: config.timings.ping_interval,
        ping_timeout: config.timings.ping_timeout,
    }
}

fn new_registry(
    config: &SimConfig,
    scenario: &Scenario,
    i: usize,
    boot_id: u64,
    seed: u64,
) -> Registry {
    let t = config.timings;
    let settings = Settings {
        network: Network::Testnet,
        local: Some(node_addr(i)),
        maxpeers: 125,
        maxinboundperip: 4,
        reconnectmin: t.reconnect_min,
        reconnectmax: t.reconnect_max,
        fallbackgrace: if scenario.impatient[i] {
            Duration::ZERO
        } else {
            t.fallback_grace
        },
        boot_id,
        seed,
        policy: config.policy,
    };
    let masternodes = (0..config.nodes).map(node_addr).collect();
    Registry::new(settings, masternodes, Vec::new())
}
