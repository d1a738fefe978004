//! The registry: the one owner of connection state, as a plain state machine.
//!
//! Inputs ([`Input`]) come from the reactor, the peer workers and the signal handler; the
//! registry applies the rules of [`crate::rules`] and answers with [`Output`]s for the
//! reactor and the workers to carry out. Time is passed in with every call; randomness comes
//! from a seed. Nothing here touches a socket, a thread or a clock, which is what lets the
//! simulator run the very same code over a virtual network.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use log::{debug, info};

use crate::metrics::{self, Counters, Skip};
use crate::rules::{self, canonical, Contender, Direction, Policy, Role, Survivor};
use crate::session::{CloseReason, PeerHello};
use crate::status::{ConsensusInfo, MasternodeStatus, PeerStatus};
use crate::wire::{Network, Reason};

/// Identifies one TCP connection for its whole life. The registry numbers the connections it
/// dials from 1 up (the number doubles as the handshake's `seq`); the reactor numbers the ones
/// it accepts with [`INBOUND_ID_BIT`] set, so the two never collide.
pub type ConnId = u64;

/// Set in the ids of accepted connections.
pub const INBOUND_ID_BIT: u64 = 1 << 63;

/// Connections admitted for a handshake beyond `maxpeers`: a full node must still be able to
/// hear a listed masternode out, and only the handshake tells who is calling.
const HANDSHAKE_SLACK: usize = 16;

/// A link that lived at least this long counts as healthy: its loss starts the backoff over.
const HEALTHY_LINK: Duration = Duration::from_secs(60);

/// What the registry is told.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Only time passed.
    Tick,
    /// The reactor accepted a TCP connection from `remote`.
    Inbound {
        /// Its id.
        conn: ConnId,
        /// Its TCP source address.
        remote: SocketAddr,
    },
    /// An outbound dial's TCP connection is up; its handshake starts.
    Connected {
        /// The dial's id.
        conn: ConnId,
    },
    /// An outbound dial failed before its handshake could start.
    DialFailed {
        /// The dial's id.
        conn: ConnId,
        /// Why, for logs and `/masternodes`.
        error: String,
    },
    /// A connection completed its handshake and waits for the verdict.
    Handshaken {
        /// The connection.
        conn: ConnId,
        /// What the peer told about itself.
        hello: PeerHello,
    },
    /// The peer's verdict accepted the connection too (its first `Ping` arrived).
    Confirmed {
        /// The connection.
        conn: ConnId,
    },
    /// The peer was heard from.
    Heard {
        /// The connection.
        conn: ConnId,
        /// A fresh round-trip time, if one was measured.
        rtt: Option<Duration>,
    },
    /// The session ended (the worker may still be draining the socket).
    Closed {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// The session rejected bad input (it closes itself; this is for the counters).
    Rejected {
        /// The connection.
        conn: ConnId,
        /// The reason sent to the peer.
        reason: Reason,
    },
    /// A new masternode and addnode list (SIGHUP, discovery).
    SetPeers {
        /// Listed masternodes, possibly including this node.
        masternodes: Vec<SocketAddr>,
        /// Other peers to keep connected.
        addnodes: Vec<SocketAddr>,
    },
    /// Close everything and stop (SIGTERM/SIGINT).
    Shutdown,
}

/// What the registry asks the edges to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Dial `addr`; the connection is `conn`.
    Dial {
        /// Id (and handshake `seq`) of the new connection.
        conn: ConnId,
        /// Where to.
        addr: SocketAddr,
    },
    /// Let an accepted connection proceed to its handshake.
    Admit {
        /// The connection.
        conn: ConnId,
    },
    /// Turn an accepted connection away before its handshake (gracefully).
    Refuse {
        /// The connection.
        conn: ConnId,
        /// The reason to send.
        reason: Reason,
    },
    /// The handshaken connection is accepted.
    Accept {
        /// The connection.
        conn: ConnId,
    },
    /// Close the connection gracefully with this reason (a lost duplicate, a rejected
    /// handshake, a removed peer, shutdown). A connection still dialing is just abandoned.
    Close {
        /// The connection.
        conn: ConnId,
        /// The reason to send.
        reason: Reason,
    },
    /// Shutdown is complete: every session has ended.
    Stopped,
}

/// Everything the registry needs to know about this node, fixed for its lifetime.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Our network.
    pub network: Network,
    /// Our P2P address as the others know it, when known.
    pub local: Option<SocketAddr>,
    /// Total connections allowed.
    pub maxpeers: usize,
    /// Inbound connections allowed from one IP (listed masternodes on that IP come on top).
    pub maxinboundperip: usize,
    /// Shortest delay between dials of one peer.
    pub reconnectmin: Duration,
    /// Longest delay between dials of one peer.
    pub reconnectmax: Duration,
    /// How long to wait for a lower masternode's dial before dialing it ourselves.
    pub fallbackgrace: Duration,
    /// This process's boot id (the duplicate rule's tie-break when an address is unknown).
    pub boot_id: u64,
    /// Seed of the jitter generator.
    pub seed: u64,
    /// The rules; always [`Policy::STANDARD`] outside the simulator's tests.
    pub policy: Policy,
}

/// Peers with a live connection, and those with a live outbound one.
#[derive(Default)]
struct LivePeers {
    any: std::collections::BTreeSet<SocketAddr>,
    outbound: std::collections::BTreeSet<SocketAddr>,
}

impl LivePeers {
    /// Whether a dial to `addr` in `role` is called for, timing aside.
    fn dial_wanted(&self, addr: SocketAddr, role: Role) -> bool {
        match role {
            // The designated dialer also dials over a wrong-direction link (one a fallback
            // made): the duplicate rule then restores the designated direction.
            Role::Designated => !self.outbound.contains(&addr),
            Role::Dial | Role::AwaitInbound => !self.any.contains(&addr),
        }
    }
}

/// A read-only view of one tracked connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnView {
    /// Its id.
    pub conn: ConnId,
    /// The peer's P2P address, once known.
    pub peer: Option<SocketAddr>,
    /// Who dialed.
    pub direction: Direction,
    /// Accepted and open.
    pub established: bool,
    /// Told to close, not yet closed.
    pub closing: bool,
    /// Lost a duplicate, but open (and not counted) until the peer confirms the winner.
    pub retiring: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnState {
    Dialing,
    Handshaking,
    Established,
    /// Lost a duplicate to `winner`, which the peer may not hold yet (see
    /// `Registry::settle_duplicate`); kept open, but no longer counted, until the peer
    /// confirms `winner`, so the peer never reads this one's close before it holds the
    /// winner. The link again (accepted now, if it never was) if the winner ends unconfirmed.
    Retiring {
        /// The connection that replaces it.
        winner: ConnId,
    },
    /// Told to close; waiting for the session's `Closed`.
    Closing,
}

#[derive(Clone, Debug)]
struct Conn {
    direction: Direction,
    /// TCP address of the other end (the dial target for outbound).
    remote: SocketAddr,
    state: ConnState,
    /// The peer's P2P address: the dial target for outbound, learned in the handshake for
    /// inbound.
    peer: Option<SocketAddr>,
    hello: Option<PeerHello>,
    /// Whether the registry ever accepted it (it may be closing now).
    was_established: bool,
    established_at: Duration,
    last_recv: Duration,
    rtt: Option<Duration>,
    /// The peer confirmed it: its own verdict accepted it too.
    confirmed: bool,
}

impl Conn {
    fn live(&self) -> bool {
        self.state != ConnState::Closing
    }

    /// The connection as the duplicate rule sees it. A node that does not know its own
    /// address appears with an unspecified one at both ends (it said so in its `Hello`), so
    /// both ends fall back to the same boot-id comparison.
    fn contender(&self, local: SocketAddr, boot_id: u64) -> Option<Contender> {
        let hello = self.hello.as_ref()?;
        let (dialer, dialer_boot) = match self.direction {
            Direction::Outbound => (local, boot_id),
            Direction::Inbound if hello.addr_known => (hello.addr, hello.boot_id),
            Direction::Inbound => (unspecified(), hello.boot_id),
        };
        Some(Contender {
            dialer,
            dialer_boot,
            seq: hello.seq,
        })
    }
}

/// A peer this node wants connected: a listed masternode or an `addnode`.
#[derive(Clone, Debug)]
struct Target {
    masternode: bool,
    role: Role,
    failures: u32,
    next_dial: Duration,
    /// When we began waiting for the peer's dial (role [`Role::AwaitInbound`]).
    waiting_since: Duration,
    /// Whether the "they should connect to us" decision was logged for this wait.
    skip_logged: bool,
    /// Why the last planning pass did not dial, so each reason is counted once per spell.
    last_skip: Option<Skip>,
    last_error: Option<String>,
}

/// The registry. See the module docs.
#[derive(Debug)]
pub struct Registry {
    settings: Settings,
    masternodes: Vec<SocketAddr>,
    we_are_masternode: bool,
    targets: BTreeMap<SocketAddr, Target>,
    conns: BTreeMap<ConnId, Conn>,
    /// Boot ids of peers that restarted, per peer, while a connection to them remains: a late
    /// handshake from the dead process must not replace its successor.
    retired_boots: BTreeMap<SocketAddr, u64>,
    next_dial_id: ConnId,
    rng: u64,
    stopping: bool,
    stopped: bool,
    outputs: Vec<Output>,
    metrics: Counters,
}

impl Registry {
    /// A registry for a node that started at time zero and wants `masternodes` and `addnodes`
    /// connected.
    pub fn new(
        settings: Settings,
        masternodes: Vec<SocketAddr>,
        addnodes: Vec<SocketAddr>,
    ) -> Registry {
        let rng = settings.seed | 1;
        let mut r = Registry {
            settings,
            masternodes: Vec::new(),
            we_are_masternode: false,
            targets: BTreeMap::new(),
            conns: BTreeMap::new(),
            retired_boots: BTreeMap::new(),
            next_dial_id: 1,
            rng,
            stopping: false,
            stopped: false,
            outputs: Vec::new(),
            metrics: Counters::default(),
        };
        r.set_peers(masternodes, addnodes, Duration::ZERO);
        r
    }

    /// Applies one input at time `now` and returns what to do about it.
    pub fn handle(&mut self, input: Input, now: Duration) -> Vec<Output> {
        match input {
            Input::Tick => {}
            Input::Inbound { conn, remote } => self.on_inbound(conn, canonical(remote), now),
            Input::Connected { conn } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    if c.state == ConnState::Dialing {
                        c.state = ConnState::Handshaking;
                    }
                }
            }
            Input::DialFailed { conn, error } => self.on_dial_failed(conn, error, now),
            Input::Handshaken { conn, hello } => self.on_handshaken(conn, hello, now),
            Input::Confirmed { conn } => self.on_confirmed(conn),
            Input::Heard { conn, rtt } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.last_recv = now;
                    if rtt.is_some() {
                        c.rtt = rtt;
                    }
                }
            }
            Input::Closed { conn, reason } => self.on_closed(conn, reason, now),
            Input::Rejected { reason, .. } => self.metrics.rejected(reason),
            Input::SetPeers {
                masternodes,
                addnodes,
            } => self.set_peers(masternodes, addnodes, now),
            Input::Shutdown => self.on_shutdown(),
        }
        self.plan_dials(now);
        if self.stopping && !self.stopped && self.conns.is_empty() {
            self.stopped = true;
            self.outputs.push(Output::Stopped);
        }
        std::mem::take(&mut self.outputs)
    }

    /// When [`Registry::handle`] must next be called with [`Input::Tick`], if ever.
    pub fn next_deadline(&self) -> Option<Duration> {
        if self.stopping {
            return None;
        }
        let live = self.live_peers();
        self.targets
            .iter()
            .filter(|(addr, t)| live.dial_wanted(**addr, t.role))
            .map(|(_, t)| match t.role {
                Role::AwaitInbound => t
                    .next_dial
                    .max(t.waiting_since.saturating_add(self.settings.fallbackgrace)),
                _ => t.next_dial,
            })
            .min()
    }

    /// Every connection the registry tracks, for the simulator's checks and tests.
    pub fn connections(&self) -> Vec<ConnView> {
        self.conns
            .iter()
            .map(|(id, c)| ConnView {
                conn: *id,
                peer: c.peer,
                direction: c.direction,
                established: c.state == ConnState::Established,
                closing: c.state == ConnState::Closing,
                retiring: matches!(c.state, ConnState::Retiring { .. }),
            })
            .collect()
    }

    /// Whether `conn` is a connection the registry still tracks.
    pub fn knows(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// Whether this node is in its own masternode list.
    pub fn is_masternode(&self) -> bool {
        self.we_are_masternode
    }

    fn set_peers(
        &mut self,
        masternodes: Vec<SocketAddr>,
        addnodes: Vec<SocketAddr>,
        now: Duration,
    ) {
        let local = self.settings.local;
        let mut masternodes: Vec<SocketAddr> = masternodes.into_iter().map(canonical).collect();
        masternodes.sort_by_key(|a| rules::order_key(*a));
        masternodes.dedup();
        self.we_are_masternode = local.is_some_and(|l| masternodes.contains(&l));
        let mut wanted: BTreeMap<SocketAddr, bool> = BTreeMap::new();
        for addr in addnodes.into_iter().map(canonical) {
            wanted.insert(addr, false);
        }
        for &addr in &masternodes {
            wanted.insert(addr, true);
        }
        if let Some(l) = local {
            wanted.remove(&l);
        }
        // Peers no longer wanted are disconnected; their connections, if they dial us again,
        // are then ordinary inbound peers.
        let removed: Vec<SocketAddr> = self
            .targets
            .keys()
            .filter(|a| !wanted.contains_key(a))
            .copied()
            .collect();
        for addr in removed {
            self.targets.remove(&addr);
            let ids: Vec<ConnId> = self
                .conns
                .iter()
                .filter(|(_, c)| c.live() && c.peer == Some(addr))
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                info!("Disconnecting {addr}: no longer listed");
                self.close(id, Reason::Unlisted);
            }
        }
        for (addr, masternode) in wanted {
            let role = rules::role_under(
                self.settings.policy,
                local,
                self.we_are_masternode,
                addr,
                masternode,
            );
            let target = self.targets.entry(addr).or_insert(Target {
                masternode,
                role,
                failures: 0,
                next_dial: now,
                waiting_since: now,
                skip_logged: false,
                last_skip: None,
                last_error: None,
            });
            if target.role != role {
                target.waiting_since = now;
                target.skip_logged = false;
            }
            target.masternode = masternode;
            target.role = role;
        }
        self.masternodes = masternodes;
    }

    /// Whether a dial to `addr` is called for, timing aside.
    fn dial_wanted(&self, addr: SocketAddr) -> bool {
        self.targets
            .get(&addr)
            .is_some_and(|t| self.live_peers().dial_wanted(addr, t.role))
    }

    /// Which peers have live connections: collected once per pass, so planning stays linear
    /// in the number of connections instead of targets times connections.
    fn live_peers(&self) -> LivePeers {
        let mut live = LivePeers::default();
        for c in self.conns.values().filter(|c| c.live()) {
            if let Some(peer) = c.peer {
                live.any.insert(peer);
                if c.direction == Direction::Outbound {
                    live.outbound.insert(peer);
                }
            }
        }
        live
    }

    fn has_live_conn(&self, peer: SocketAddr) -> bool {
        self.conns
            .values()
            .any(|c| c.live() && c.peer == Some(peer))
    }

    fn plan_dials(&mut self, now: Duration) {
        if self.stopping {
            return;
        }
        let local = self.settings.local.unwrap_or_else(unspecified);
        let grace = self.settings.fallbackgrace;
        let addrs: Vec<SocketAddr> = self.targets.keys().copied().collect();
        // Dials made in this pass are not in it: each is to a different target.
        let live = self.live_peers();
        for addr in addrs {
            let wanted = live.dial_wanted(addr, self.targets[&addr].role);
            let t = self.targets.get_mut(&addr).expect("listed above");
            let skip = if !wanted {
                Some(Skip::Connected)
            } else if t.role == Role::AwaitInbound
                && !rules::fallback_due(t.waiting_since, now, grace)
            {
                if !t.skip_logged {
                    t.skip_logged = true;
                    debug!(
                        "Skipping outbound to {addr} (they should connect to us: {local} > {addr})"
                    );
                }
                Some(Skip::Direction)
            } else if now < t.next_dial {
                Some(Skip::Backoff)
            } else {
                None
            };
            if let Some(why) = skip.filter(|_| skip != t.last_skip) {
                self.metrics.skipped(why);
            }
            t.last_skip = skip;
            if skip.is_none() {
                self.metrics.dial();
                let conn = self.next_dial_id;
                self.next_dial_id += 1;
                debug!("Dialing {addr} ({})", role_name(t.role));
                self.conns.insert(
                    conn,
                    Conn {
                        direction: Direction::Outbound,
                        remote: addr,
                        state: ConnState::Dialing,
                        peer: Some(addr),
                        hello: None,
                        was_established: false,
                        confirmed: false,
                        established_at: now,
                        last_recv: now,
                        rtt: None,
                    },
                );
                self.outputs.push(Output::Dial { conn, addr });
            }
        }
    }

    fn on_inbound(&mut self, conn: ConnId, remote: SocketAddr, now: Duration) {
        let refuse = if self.stopping {
            Some(Reason::Shutdown)
        } else {
            let from_ip = self
                .conns
                .values()
                .filter(|c| {
                    c.live() && c.direction == Direction::Inbound && c.remote.ip() == remote.ip()
                })
                .count();
            let listed_on_ip = self
                .masternodes
                .iter()
                .filter(|m| m.ip() == remote.ip())
                .count();
            let live = self.conns.values().filter(|c| c.live()).count();
            // A listed masternode's IP is never turned away for the global cap before its
            // handshake: strangers' half-open connections must not crowd it out (the
            // handshake then decides, with its reserved slot).
            let full = from_ip >= self.settings.maxinboundperip + listed_on_ip
                || (listed_on_ip == 0 && live >= self.settings.maxpeers + HANDSHAKE_SLACK);
            // The broken "first connection wins" policy judges here, before any handshake.
            let premature = !self.settings.policy.judge_after_handshake
                && self
                    .conns
                    .values()
                    .any(|c| c.live() && c.peer.map_or(c.remote.ip(), |p| p.ip()) == remote.ip());
            if full {
                Some(Reason::TooManyPeers)
            } else if premature {
                Some(Reason::Duplicate)
            } else {
                None
            }
        };
        if let Some(reason) = refuse {
            debug!("Refusing connection from {remote}: {reason}");
            self.outputs.push(Output::Refuse { conn, reason });
            return;
        }
        self.conns.insert(
            conn,
            Conn {
                direction: Direction::Inbound,
                remote,
                state: ConnState::Handshaking,
                peer: None,
                hello: None,
                was_established: false,
                confirmed: false,
                established_at: now,
                last_recv: now,
                rtt: None,
            },
        );
        self.outputs.push(Output::Admit { conn });
    }

    fn on_dial_failed(&mut self, conn: ConnId, error: String, now: Duration) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if c.state == ConnState::Closing {
            // We had already given it up (the peer was unlisted): its failure says nothing
            // about the peer's next dial.
            return;
        }
        if let Some(addr) = c.peer {
            debug!("Dial to {addr} failed: {error}");
            self.schedule_redial(addr, true, false, Some(error), now);
        }
    }

    fn on_handshaken(&mut self, conn: ConnId, hello: PeerHello, now: Duration) {
        let Some(c) = self.conns.get(&conn) else {
            // Abandoned while its worker was starting (shutdown): end the session too.
            if self.stopping {
                self.outputs.push(Output::Close {
                    conn,
                    reason: Reason::Shutdown,
                });
            }
            return;
        };
        if c.state == ConnState::Closing {
            return;
        }
        if self.stopping {
            return self.close(conn, Reason::Shutdown);
        }
        let peer = hello.addr;
        let local = self.settings.local.unwrap_or_else(unspecified);
        let boot_id = self.settings.boot_id;
        let new_contender = {
            let c = self.conns.get_mut(&conn).expect("checked above");
            c.peer = Some(peer);
            c.hello = Some(hello.clone());
            c.contender(local, boot_id).expect("hello just set")
        };
        let existing = self
            .conns
            .iter()
            .find(|(id, c)| {
                **id != conn && c.state == ConnState::Established && c.peer == Some(peer)
            })
            .map(|(id, c)| (*id, c.clone()));
        if let Some((old_id, old)) = existing {
            let old_hello = old
                .hello
                .as_ref()
                .expect("established connections have a hello");
            let replace = if old_hello.boot_id != hello.boot_id {
                // A new boot id: the peer restarted and the old link is stale, unless this is
                // the late handshake of the very process that was already replaced.
                if self.retired_boots.get(&peer) == Some(&hello.boot_id) {
                    false
                } else {
                    info!("Peer {peer} restarted (new boot id): replacing its stale connection");
                    self.retired_boots.insert(peer, old_hello.boot_id);
                    true
                }
            } else {
                let old_contender = old.contender(local, boot_id).expect("established");
                (self.settings.policy.resolve_duplicate)(&old_contender, &new_contender)
                    == Survivor::New
            };
            self.metrics.duplicate();
            let restarted = old_hello.boot_id != hello.boot_id;
            if !self.settle_duplicate(conn, old_id, replace, restarted, peer) {
                return;
            }
        } else if !self.settings.policy.loser_waits_for_winner
            && self.loses_to_pending(conn, peer, &new_contender, local)
        {
            // The broken policy: the "winner" has not completed its handshake yet.
            return self.close(conn, Reason::Duplicate);
        } else if !self.has_room_for(peer, conn) {
            debug!("Rejecting {peer}: too many peers");
            self.metrics.handshake(Reason::TooManyPeers.name());
            return self.close(conn, Reason::TooManyPeers);
        }
        self.metrics.handshake("accepted");
        self.establish(conn, now);
    }

    /// Accepts `conn`, whose handshake is complete: it is the link to its peer now.
    fn establish(&mut self, conn: ConnId, now: Duration) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(peer) = c.peer else {
            return;
        };
        c.state = ConnState::Established;
        c.was_established = true;
        c.established_at = now;
        c.last_recv = now;
        match c.direction {
            Direction::Inbound => info!("Handshake accepted from {peer}"),
            Direction::Outbound => info!("Handshake completed with {peer}"),
        }
        if let Some(t) = self.targets.get_mut(&peer) {
            t.last_error = None;
            t.skip_logged = false;
        }
        self.outputs.push(Output::Accept { conn });
    }

    /// Carries out the verdict between `new`, just handshaken, and `old`, established, both to
    /// `peer`: `replace` if `new` survives. Returns whether `new` is to be accepted.
    ///
    /// The loser is closed at once only if the peer surely holds the winner already: a dialer
    /// completes its handshake before its acceptor, so a winner the peer dialed, or one the
    /// peer has confirmed, is safe. Otherwise the loser retires: it stays open, uncounted,
    /// until the peer confirms the winner (by then the peer's own verdict has closed the
    /// loser too), so the peer never reads the loser's `Disconnect` while it holds no link.
    /// A restart needs no such care: the old connection is stale.
    fn settle_duplicate(
        &mut self,
        new: ConnId,
        old: ConnId,
        replace: bool,
        restarted: bool,
        peer: SocketAddr,
    ) -> bool {
        let (winner, loser) = if replace { (new, old) } else { (old, new) };
        let w = &self.conns[&winner];
        let peer_holds_winner = restarted
            || w.confirmed
            || w.direction == Direction::Inbound
            || !self.settings.policy.loser_waits_for_peer;
        if replace {
            debug!("Replacing connection to {peer}");
        } else {
            debug!("Rejecting duplicate connection from {peer}");
            self.metrics.handshake(Reason::Duplicate.name());
        }
        if peer_holds_winner {
            self.close(loser, Reason::Duplicate);
        } else if let Some(l) = self.conns.get_mut(&loser) {
            debug!("Keeping the losing connection to {peer} open until {peer} confirms the winner");
            l.state = ConnState::Retiring { winner };
        }
        replace
    }

    /// `winner` ended before the peer confirmed it: the connection it was replacing is the
    /// link again (accepted now, if it was a newcomer that lost), unless another link to the
    /// peer took over meanwhile. Should several have waited on it, the duplicate rule picks
    /// one and the others close.
    fn rescue_retiring(&mut self, winner: ConnId, now: Duration) {
        let local = self.settings.local.unwrap_or_else(unspecified);
        let boot_id = self.settings.boot_id;
        let orphans: Vec<(ConnId, Contender)> = self
            .retirees(winner)
            .filter_map(|(id, c)| Some((id, c.contender(local, boot_id)?)))
            .collect();
        let resolve = self.settings.policy.resolve_duplicate;
        let Some((kept, _)) =
            orphans
                .iter()
                .cloned()
                .reduce(|best, next| match resolve(&best.1, &next.1) {
                    Survivor::Existing => best,
                    Survivor::New => next,
                })
        else {
            return;
        };
        if self.stopping {
            return;
        }
        let peer = self.conns[&kept].peer;
        let replaced = self
            .conns
            .values()
            .any(|c| c.state == ConnState::Established && c.peer == peer);
        if replaced {
            // The winner itself lost to a newer link (a restart, say): they all go.
            for (id, _) in orphans {
                self.close(id, Reason::Duplicate);
            }
            return;
        }
        if self.conns[&kept].was_established {
            self.conns.get_mut(&kept).expect("listed").state = ConnState::Established;
        } else {
            self.establish(kept, now);
        }
        for (id, _) in orphans {
            if id != kept {
                self.close(id, Reason::Duplicate);
            }
        }
    }

    /// The peer accepted `conn`: the connections it replaced may close now.
    fn on_confirmed(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.confirmed = true;
        if c.state != ConnState::Established {
            // It lost to another link meanwhile: what waited on it is settled when it ends.
            return;
        }
        let retired: Vec<ConnId> = self.retirees(conn).map(|(id, _)| id).collect();
        for id in retired {
            self.close(id, Reason::Duplicate);
        }
    }

    /// The connections retiring in favour of `winner`.
    fn retirees(&self, winner: ConnId) -> impl Iterator<Item = (ConnId, &Conn)> {
        self.conns
            .iter()
            .filter(move |(_, c)| c.state == ConnState::Retiring { winner })
            .map(|(id, c)| (*id, c))
    }

    /// Whether `new` loses to one of our own dials to `peer` still in its handshake (only the
    /// broken policy without `loser_waits_for_winner` asks).
    fn loses_to_pending(
        &self,
        conn: ConnId,
        peer: SocketAddr,
        new: &Contender,
        local: SocketAddr,
    ) -> bool {
        self.conns.iter().any(|(id, c)| {
            *id != conn
                && c.live()
                && matches!(c.state, ConnState::Dialing | ConnState::Handshaking)
                && c.direction == Direction::Outbound
                && c.peer == Some(peer)
                && (self.settings.policy.resolve_duplicate)(
                    &Contender {
                        dialer: local,
                        dialer_boot: self.settings.boot_id,
                        seq: *id,
                    },
                    new,
                ) == Survivor::Existing
        })
    }

    /// Whether a new (not duplicate) peer fits: listed masternodes always do, because
    /// `maxpeers` keeps room for every one of them; everyone else shares the rest.
    fn has_room_for(&self, peer: SocketAddr, conn: ConnId) -> bool {
        let established: Vec<&Conn> = self
            .conns
            .iter()
            .filter(|(id, c)| **id != conn && c.state == ConnState::Established)
            .map(|(_, c)| c)
            .collect();
        if self.masternodes.contains(&peer) {
            return established.len() < self.settings.maxpeers.max(self.listed_others());
        }
        let others = established
            .iter()
            .filter(|c| !c.peer.is_some_and(|p| self.masternodes.contains(&p)))
            .count();
        let room = self.settings.maxpeers.saturating_sub(self.listed_others());
        others < room && established.len() < self.settings.maxpeers
    }

    fn listed_others(&self) -> usize {
        let local = self.settings.local;
        self.masternodes
            .iter()
            .filter(|m| Some(**m) != local)
            .count()
    }

    fn on_closed(&mut self, conn: ConnId, reason: CloseReason, now: Duration) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.rescue_retiring(conn, now);
        // A connection closing while retiring was replaced: its end is no event of its own.
        let replaced = matches!(c.state, ConnState::Retiring { .. });
        let label = metrics::close_label(reason.reason(), reason == CloseReason::Eof);
        if c.hello.is_none() && c.state != ConnState::Dialing {
            // It never completed a handshake: that is the handshake's result.
            self.metrics.handshake(label);
        }
        if c.was_established {
            self.metrics.disconnect(label);
        }
        let Some(peer) = c.peer else {
            debug!(
                "Connection from {} closed before its handshake: {reason}",
                c.remote
            );
            return;
        };
        if c.was_established && !replaced && reason.reason() != Some(Reason::Duplicate) {
            info!("Disconnected from {peer}: {reason}");
        } else {
            debug!("Connection with {peer} closed: {reason}");
        }
        if !self.has_live_conn(peer) {
            self.retired_boots.remove(&peer);
        }
        // Losing a duplicate is no failure: another connection carries the link.
        let duplicate = replaced || reason.reason() == Some(Reason::Duplicate);
        let was_up = c.was_established;
        let healthy = was_up && now.saturating_sub(c.established_at) >= HEALTHY_LINK;
        if healthy {
            if let Some(t) = self.targets.get_mut(&peer) {
                t.failures = 0;
            }
        }
        let error = (!duplicate && !was_up).then(|| reason.to_string());
        self.schedule_redial(peer, !duplicate && !healthy, was_up, error, now);
    }

    /// After a connection to `peer` ended or failed: when the next dial may happen, and, for
    /// a peer we wait for, when the fallback grace starts over.
    fn schedule_redial(
        &mut self,
        peer: SocketAddr,
        failed: bool,
        link_lost: bool,
        error: Option<String>,
        now: Duration,
    ) {
        // Another connection may carry the link (then no dial is due), but a designated
        // dialer over a wrong-direction link still wants its own: its failures back off too.
        let wanted = self.dial_wanted(peer);
        let jitter = self.next_random();
        let (min, max) = (self.settings.reconnectmin, self.settings.reconnectmax);
        let Some(t) = self.targets.get_mut(&peer) else {
            return;
        };
        if error.is_some() {
            t.last_error = error;
        }
        if !wanted {
            return;
        }
        t.next_dial = now + rules::backoff(t.failures, min, max, jitter);
        if failed {
            t.failures = t.failures.saturating_add(1);
        }
        if t.role == Role::AwaitInbound && link_lost {
            // A link ended: give the designated dialer the whole grace to dial us again
            // before we fall back. (A failing fallback dial just backs off.)
            t.waiting_since = now;
            t.skip_logged = false;
        }
    }

    fn on_shutdown(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.live())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if self.conns[&id].state == ConnState::Dialing {
                // Nothing was said on it yet: just abandon it.
                self.conns.remove(&id);
                self.outputs.push(Output::Close {
                    conn: id,
                    reason: Reason::Shutdown,
                });
            } else {
                self.close(id, Reason::Shutdown);
            }
        }
    }

    fn close(&mut self, conn: ConnId, reason: Reason) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if c.live() {
                c.state = ConnState::Closing;
                self.outputs.push(Output::Close { conn, reason });
            }
        }
    }

    /// xorshift64*: the jitter needs no cryptographic quality, only reproducibility.
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// `GET /metrics` at time `now`.
    pub fn metrics_text(&self, now: Duration) -> String {
        self.metrics.render(&self.consensus_info(now))
    }

    /// `GET /consensus_info` at time `now` (uptime counts from time zero).
    pub fn consensus_info(&self, now: Duration) -> ConsensusInfo {
        let established: Vec<&Conn> = self
            .conns
            .values()
            .filter(|c| c.state == ConnState::Established)
            .collect();
        let inbound = established
            .iter()
            .filter(|c| c.direction == Direction::Inbound)
            .count();
        let active_listed = self
            .masternodes
            .iter()
            .filter(|m| Some(**m) != self.settings.local)
            .filter(|m| established.iter().any(|c| c.peer == Some(**m)))
            .count();
        ConsensusInfo {
            network: self.settings.network.name().to_string(),
            version: crate::VERSION.to_string(),
            local_address: self.settings.local.map(|a| a.to_string()),
            masternode: self.we_are_masternode,
            active_masternodes: active_listed + usize::from(self.we_are_masternode),
            total_masternodes: self.masternodes.len(),
            connected_peers: established.len(),
            inbound,
            outbound: established.len() - inbound,
            uptime_secs: now.as_secs(),
        }
    }

    /// `GET /peers` at time `now`.
    pub fn peers(&self, now: Duration) -> Vec<PeerStatus> {
        let mut peers: Vec<PeerStatus> = self
            .conns
            .values()
            .filter(|c| c.state == ConnState::Established)
            .filter_map(|c| {
                let hello = c.hello.as_ref()?;
                Some(PeerStatus {
                    address: hello.addr.to_string(),
                    direction: c.direction.name().to_string(),
                    masternode: self.masternodes.contains(&hello.addr),
                    connected_secs: now.saturating_sub(c.established_at).as_secs(),
                    last_recv_secs: now.saturating_sub(c.last_recv).as_secs(),
                    rtt_ms: c.rtt.map(|d| (d.as_secs_f64() * 1e5).round() / 100.0),
                    agent: hello.agent.clone(),
                })
            })
            .collect();
        peers.sort_by_key(|p| p.address.parse().map(rules::order_key).ok());
        peers
    }

    /// `GET /masternodes` at time `now`: every listed masternode but this node.
    pub fn masternode_status(&self, now: Duration) -> Vec<MasternodeStatus> {
        self.targets
            .iter()
            .filter(|(_, t)| t.masternode)
            .map(|(addr, t)| {
                let conns: Vec<&Conn> = self
                    .conns
                    .values()
                    .filter(|c| c.live() && c.peer == Some(*addr))
                    .collect();
                let established = conns.iter().find(|c| c.state == ConnState::Established);
                let state = if established.is_some() {
                    "established"
                } else if conns.iter().any(|c| c.state == ConnState::Handshaking) {
                    "handshaking"
                } else if conns.iter().any(|c| c.state == ConnState::Dialing) {
                    "dialing"
                } else if t.role == Role::AwaitInbound
                    && !rules::fallback_due(t.waiting_since, now, self.settings.fallbackgrace)
                {
                    "waiting_inbound"
                } else if t.role == Role::AwaitInbound && t.failures == 0 {
                    "fallback"
                } else {
                    "backoff"
                };
                let next_dial = if established.is_some() || !conns.is_empty() {
                    None
                } else if t.role == Role::AwaitInbound {
                    Some(
                        t.next_dial
                            .max(t.waiting_since.saturating_add(self.settings.fallbackgrace)),
                    )
                } else {
                    Some(t.next_dial)
                };
                MasternodeStatus {
                    address: addr.to_string(),
                    expected_direction: match t.role {
                        Role::AwaitInbound => "inbound",
                        _ => "outbound",
                    }
                    .to_string(),
                    connected: established.is_some(),
                    direction: established.map(|c| c.direction.name().to_string()),
                    state: state.to_string(),
                    next_dial_secs: next_dial.map(|d| d.saturating_sub(now).as_secs()),
                    last_error: t.last_error.clone(),
                }
            })
            .collect()
    }
}

fn unspecified() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0)
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Designated => "we are the lower address",
        Role::AwaitInbound => "fallback: they did not dial us within the grace period",
        Role::Dial => "not a masternode pair",
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
