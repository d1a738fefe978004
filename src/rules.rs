//! The connection rules, as pure functions: who dials, which duplicate survives, how long to
//! back off. Both ends of a link evaluate the same functions on the same inputs, which is
//! what makes them agree without talking.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Canonical form of an address: an IPv4-mapped IPv6 address (what a dual-stack listener
/// reports for an IPv4 peer) becomes the IPv4 address it carries, so one peer never has two
/// names and the ordering rule sees the same value at both ends.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(addr.ip()), addr.port())
}

/// [`canonical`] for a bare IP.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Which way a connection was opened, seen from this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// The peer dialed us.
    Inbound,
    /// We dialed the peer.
    Outbound,
}

impl Direction {
    /// `inbound` or `outbound`, as the status endpoint spells it.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// The key addresses are ordered by: `(IP, port)` compared numerically, after
/// canonicalization. Numerically matters: as strings `127.0.0.10` sorts before `127.0.0.9`.
/// All IPv4 addresses order before all IPv6 addresses.
pub fn order_key(addr: SocketAddr) -> (IpAddr, u16) {
    let c = canonical(addr);
    (c.ip(), c.port())
}

/// The direction rule: between two masternodes, only the lower address dials. Both ends
/// evaluate it with the roles swapped and so always agree; it is consulted before a dial is
/// started, so the higher node never even spawns work for a dial it must not make.
pub fn should_dial(local: SocketAddr, remote: SocketAddr) -> bool {
    order_key(local) < order_key(remote)
}

/// What both ends of a connection know about it once its handshake is done: enough for the
/// duplicate rule to give the same answer at both ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Contender {
    /// The P2P address of the node that dialed this connection.
    pub dialer: SocketAddr,
    /// The dialer's per-boot connection counter for it.
    pub seq: u64,
}

/// The outcome of [`resolve_duplicate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Survivor {
    /// The established connection stays; the new one is closed as a duplicate.
    Existing,
    /// The new connection replaces the established one.
    New,
}

/// The duplicate rule, for two handshaken connections between the same two (unrestarted)
/// nodes: the one dialed by the lower address survives; between two dialed by the same node,
/// the newer (higher `seq`) survives, because a dialer only redials after giving up the old
/// one. The answer depends only on what both ends know, never on arrival order, so both ends
/// pick the same survivor on their own.
pub fn resolve_duplicate(existing: &Contender, new: &Contender) -> Survivor {
    let (e, n) = (order_key(existing.dialer), order_key(new.dialer));
    if e != n {
        return if n < e {
            Survivor::New
        } else {
            Survivor::Existing
        };
    }
    if new.seq > existing.seq {
        Survivor::New
    } else {
        Survivor::Existing
    }
}

/// Delay before the next dial of a peer after `failures` failed attempts in a row: doubling
/// from `min`, capped at `max` and staying there (a listed masternode is never given up on).
/// `jitter` is any random number; it takes up to a quarter off the delay so that nodes which
/// failed together do not retry in lockstep.
pub fn backoff(failures: u32, min: Duration, max: Duration, jitter: u64) -> Duration {
    let factor = 1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX);
    let base = min.saturating_mul(factor).min(max).max(min.min(max));
    let quarter = base.as_nanos() as u64 / 4;
    let off = if quarter == 0 { 0 } else { jitter % (quarter + 1) };
    base - Duration::from_nanos(off)
}

/// How this node relates to one peer it wants connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Both are masternodes and we are the lower address: we dial.
    Designated,
    /// Both are masternodes and they are the lower address: we wait for their dial, and dial
    /// ourselves only after the fallback grace (they may be unable to reach us).
    AwaitInbound,
    /// Not a masternode pair (an `addnode`, or we are no masternode): we dial when there is no
    /// connection at all; the duplicate rule settles the rare overlap.
    Dial,
}

/// The role toward `peer`. `local` is this node's address when known; a node whose address is
/// unknown cannot be a masternode, so it always takes [`Role::Dial`].
pub fn role(local: Option<SocketAddr>, we_are_masternode: bool, peer: SocketAddr, peer_is_masternode: bool) -> Role {
    match local {
        Some(local) if we_are_masternode && peer_is_masternode => {
            if should_dial(local, peer) {
                Role::Designated
            } else {
                Role::AwaitInbound
            }
        }
        _ => Role::Dial,
    }
}

/// The fallback rule: a node waiting for a lower masternode's dial starts dialing it itself
/// once `grace` has passed since it began waiting (startup, or the last link's loss).
pub fn fallback_due(waiting_since: Duration, now: Duration, grace: Duration) -> bool {
    now >= waiting_since.saturating_add(grace)
}
