//! The properties every simulated run must keep, each a named check.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::world::World;
use crate::registry::ConnId;

/// A named property.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Check {
    /// A node never holds two established connections to one peer.
    OneLinkPerPair,
    /// Once a pair settles, both ends keep the same connection; the two ends never pick
    /// different winners of a duplicate.
    EndsAgree,
    /// A duplicate is closed only while its winner is established at that node, and a node
    /// reads the peer's `Disconnect{duplicate}` on its link only while it holds the winner.
    LoserAfterWinner,
    /// After the last fault, every pair that can connect has exactly one link within
    /// [`super::Timings::convergence_bound`].
    Converges,
    /// When both directions work, the surviving link is the one the lower address dialed.
    LowerDialerSurvives,
    /// Dials of one peer are spaced by the backoff, and a formed mesh dials nobody.
    NoDialStorm,
    /// In a fault-free run every link forms with exactly one handshake.
    OneHandshakePerLink,
    /// No close is abortive: data never arrives at a socket its owner already closed.
    NoAbortiveClose,
    /// `connected_peers` and `active_masternodes` of the status endpoint match the sessions.
    StatusMatchesTruth,
}

impl Check {
    /// The check's name, as printed.
    pub fn name(self) -> &'static str {
        match self {
            Check::OneLinkPerPair => "one_link_per_pair",
            Check::EndsAgree => "ends_agree",
            Check::LoserAfterWinner => "loser_after_winner",
            Check::Converges => "converges",
            Check::LowerDialerSurvives => "lower_dialer_survives",
            Check::NoDialStorm => "no_dial_storm",
            Check::OneHandshakePerLink => "one_handshake_per_link",
            Check::NoAbortiveClose => "no_abortive_close",
            Check::StatusMatchesTruth => "status_matches_truth",
        }
    }
}

/// A property that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which.
    pub check: Check,
    /// The run's seed.
    pub seed: u64,
    /// The step (event number) at which it failed.
    pub step: u64,
    /// Virtual time.
    pub time: Duration,
    /// What exactly.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} violated (seed {}, step {}, t={:.3}s): {}",
            self.check.name(),
            self.seed,
            self.step,
            self.time.as_secs_f64(),
            self.detail
        )
    }
}

/// Checks run after every step.
pub(super) fn after_step(w: &mut World) {
    for n in 0..w.nodes.len() {
        if !w.nodes[n].up {
            continue;
        }
        // One established connection per peer.
        let views = w.nodes[n].registry.connections();
        let mut per_peer: BTreeMap<_, u32> = BTreeMap::new();
        for c in &views {
            if c.established {
                *per_peer.entry(c.peer).or_default() += 1;
            }
        }
        if let Some((peer, count)) = per_peer.iter().find(|(_, c)| **c > 1) {
            let detail = format!("node {n} holds {count} established connections to {peer:?}");
            w.violate(Check::OneLinkPerPair, detail);
        }
        // The status endpoint's counts against the sessions themselves. A connection the
        // registry has replaced but keeps open until the peer confirms its successor is no
        // longer the link, so it does not count.
        let retiring = |id: &ConnId| views.iter().any(|v| v.conn == *id && v.retiring);
        let truth: Vec<ConnId> = w.nodes[n]
            .sessions
            .iter()
            .filter(|(id, e)| e.session.is_established() && !retiring(id))
            .map(|(id, _)| *id)
            .collect();
        let info = w.nodes[n].registry.consensus_info(w.now);
        let listed_truth = truth
            .iter()
            .filter(|id| {
                let peer = views.iter().find(|v| v.conn == **id).and_then(|v| v.peer);
                peer.is_some_and(|p| w.lists_masternode(n, p))
            })
            .count()
            + usize::from(info.masternode);
        if info.connected_peers != truth.len() || info.active_masternodes != listed_truth {
            let detail = format!(
                "node {n} reports connected_peers={} active_masternodes={}, its sessions say {} and {}",
                info.connected_peers,
                info.active_masternodes,
                truth.len(),
                listed_truth
            );
            w.violate(Check::StatusMatchesTruth, detail);
        }
    }
    // Settled pairs keep the same connection at both ends.
    for a in 0..w.nodes.len() {
        for b in a + 1..w.nodes.len() {
            if let (Some(wa), Some(wb)) = (w.settled_link(a, b), w.settled_link(b, a)) {
                if wa != wb && w.pair_quiet(a, b) {
                    let detail =
                        format!("node {a} keeps connection #{wa} to node {b}, which keeps #{wb}");
                    w.violate(Check::EndsAgree, detail);
                }
            }
        }
    }
}

/// Checks at the end of the run: the mesh is complete, in the right direction.
pub(super) fn at_end(w: &mut World) {
    let n = w.nodes.len();
    for a in 0..n {
        for b in a + 1..n {
            if !w.scenario.reachable(a, b) {
                continue;
            }
            let (la, lb) = (w.settled_link(a, b), w.settled_link(b, a));
            match (la, lb) {
                (Some(x), Some(y)) if x == y => {
                    let both_ways = !w.scenario.behind_nat[a] && !w.scenario.behind_nat[b];
                    let dialer = w.wires[x].nodes[0];
                    if both_ways && dialer != a.min(b) {
                        let detail = format!(
                            "the link between node {a} ({}) and node {b} ({}) was dialed by node {dialer}",
                            super::node_addr(a),
                            super::node_addr(b)
                        );
                        w.violate(Check::LowerDialerSurvives, detail);
                    }
                }
                _ => {
                    let detail = format!(
                        "{:?} after the last fault, node {a} and node {b} have no single shared link (node {a}: {}, node {b}: {})",
                        w.config.timings.convergence_bound(),
                        w.describe_links(a, b),
                        w.describe_links(b, a)
                    );
                    w.violate(Check::Converges, detail);
                }
            }
        }
    }
}
