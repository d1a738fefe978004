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
    /// The P2P address of the node that dialed this connection; unspecified when that node
    /// does not know its own address.
    pub dialer: SocketAddr,
    /// The dialer's boot id.
    pub dialer_boot: u64,
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
///
/// A node that does not know its own address (a non-masternode on `0.0.0.0` without
/// `externalip`) has no address to compare; when either dialer is such a node, the lower boot
/// id stands in for the lower address, which both ends know as well.
pub fn resolve_duplicate(existing: &Contender, new: &Contender) -> Survivor {
    let known = |c: &Contender| !c.dialer.ip().is_unspecified();
    let lower_new = if known(existing) && known(new) {
        let (e, n) = (order_key(existing.dialer), order_key(new.dialer));
        (e != n).then_some(n < e)
    } else {
        (existing.dialer_boot != new.dialer_boot).then_some(new.dialer_boot < existing.dialer_boot)
    };
    if let Some(new_is_lower) = lower_new {
        return if new_is_lower {
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
    let off = if quarter == 0 {
        0
    } else {
        jitter % (quarter + 1)
    };
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
pub fn role(
    local: Option<SocketAddr>,
    we_are_masternode: bool,
    peer: SocketAddr,
    peer_is_masternode: bool,
) -> Role {
    role_under(
        Policy::STANDARD,
        local,
        we_are_masternode,
        peer,
        peer_is_masternode,
    )
}

/// [`role`] under another [`Policy`] (the simulator's broken variants).
pub fn role_under(
    policy: Policy,
    local: Option<SocketAddr>,
    we_are_masternode: bool,
    peer: SocketAddr,
    peer_is_masternode: bool,
) -> Role {
    match local {
        Some(local) if we_are_masternode && peer_is_masternode => {
            if (policy.should_dial)(local, peer) {
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

/// The rule set a registry applies. Production always uses [`Policy::STANDARD`]; the
/// simulator's tests plug in deliberately broken variants to prove its checks catch them.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// The direction rule.
    pub should_dial: fn(SocketAddr, SocketAddr) -> bool,
    /// The duplicate rule.
    pub resolve_duplicate: fn(&Contender, &Contender) -> Survivor,
    /// Let a second connection to a peer run its handshake (true), rather than refuse it at
    /// accept time because a connection to that IP already exists ("first wins" before the
    /// handshake: both simultaneous dials refuse each other).
    pub judge_after_handshake: bool,
    /// Close a losing connection only once its winner is established (true), rather than as
    /// soon as it loses to a connection still in its handshake.
    pub loser_waits_for_winner: bool,
    /// Keep a losing connection open, uncounted, until the peer confirms the winner when the
    /// peer may not hold the winner yet (true), rather than closing the loser at once: then
    /// the peer can read the loser's close while its handshake of the winner is still under
    /// way, and hold no link at all for that moment.
    pub loser_waits_for_peer: bool,
}

impl Policy {
    /// The rules of this page, as the daemon runs them.
    pub const STANDARD: Policy = Policy {
        should_dial,
        resolve_duplicate,
        judge_after_handshake: true,
        loser_waits_for_winner: true,
        loser_waits_for_peer: true,
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn direction_is_numeric_not_lexicographic() {
        // As strings "127.0.0.10" < "127.0.0.9"; numerically it is the other way round.
        assert!(should_dial(a("127.0.0.9:24100"), a("127.0.0.10:24100")));
        assert!(!should_dial(a("127.0.0.10:24100"), a("127.0.0.9:24100")));
        assert!(should_dial(a("10.0.0.2:1"), a("10.0.0.10:1")));
        assert!(should_dial(a("9.255.255.255:1"), a("10.0.0.0:1")));
    }

    #[test]
    fn one_ip_several_ports_orders_by_port_numerically() {
        assert!(should_dial(a("127.0.0.1:24100"), a("127.0.0.1:24101")));
        assert!(!should_dial(a("127.0.0.1:24101"), a("127.0.0.1:24100")));
        assert!(should_dial(a("127.0.0.1:9"), a("127.0.0.1:10")));
        // The IP decides before the port.
        assert!(should_dial(a("127.0.0.1:60000"), a("127.0.0.2:1")));
    }

    #[test]
    fn ipv6_orders_numerically_and_after_ipv4() {
        assert!(should_dial(a("[::1]:24100"), a("[::2]:24100")));
        assert!(should_dial(a("[2001:db8::9]:1"), a("[2001:db8::10]:1")));
        assert!(should_dial(a("[2001:db8::ff]:1"), a("[2001:db8::100]:1")));
        assert!(should_dial(a("[::1]:24100"), a("[::1]:24101")));
        assert!(should_dial(a("255.255.255.255:1"), a("[::1]:1")));
    }

    #[test]
    fn ipv4_mapped_addresses_are_the_ipv4_address() {
        assert_eq!(canonical(a("[::ffff:10.0.0.1]:24100")), a("10.0.0.1:24100"));
        assert_eq!(canonical(a("[::1]:24100")), a("[::1]:24100"));
        // A dual-stack listener's view must order exactly like the IPv4 view.
        assert!(should_dial(
            a("[::ffff:127.0.0.9]:24100"),
            a("127.0.0.10:24100")
        ));
        assert!(!should_dial(
            a("127.0.0.10:24100"),
            a("[::ffff:127.0.0.9]:24100")
        ));
        assert!(!should_dial(a("[::ffff:10.0.0.1]:1"), a("10.0.0.1:1")));
    }

    #[test]
    fn nobody_dials_itself() {
        assert!(!should_dial(a("127.0.0.2:24100"), a("127.0.0.2:24100")));
        assert!(!should_dial(
            a("[::ffff:127.0.0.2]:24100"),
            a("127.0.0.2:24100")
        ));
    }

    fn views(x: SocketAddr, y: SocketAddr, cx: u64, cy: u64) -> [(Contender, Contender); 2] {
        // The connection x dialed and the one y dialed, as contenders.
        let by_x = Contender {
            dialer: x,
            dialer_boot: 1,
            seq: cx,
        };
        let by_y = Contender {
            dialer: y,
            dialer_boot: 2,
            seq: cy,
        };
        [(by_x, by_y), (by_y, by_x)]
    }

    #[test]
    fn duplicate_lower_dialer_wins_seen_from_both_ends_of_both_connections() {
        let (x, y) = (a("127.0.0.9:24100"), a("127.0.0.10:24100"));
        // Each end sees both connections; whichever completed first is "existing". The
        // contenders carry only what both ends know, so x's and y's views are the same
        // pairs, in either arrival order.
        for (existing, new) in views(x, y, 7, 3) {
            let winner = match resolve_duplicate(&existing, &new) {
                Survivor::Existing => existing,
                Survivor::New => new,
            };
            assert_eq!(
                winner.dialer, x,
                "the connection dialed by the lower address survives"
            );
        }
    }

    #[test]
    fn duplicate_same_dialer_newer_wins() {
        let x = a("127.0.0.2:24100");
        let old = Contender {
            dialer: x,
            dialer_boot: 7,
            seq: 4,
        };
        let new = Contender {
            dialer: x,
            dialer_boot: 7,
            seq: 5,
        };
        assert_eq!(resolve_duplicate(&old, &new), Survivor::New);
        assert_eq!(resolve_duplicate(&new, &old), Survivor::Existing);
        assert_eq!(resolve_duplicate(&new, &new), Survivor::Existing);
    }

    #[test]
    fn duplicate_rule_uses_canonical_addresses() {
        let mapped = Contender {
            dialer: a("[::ffff:127.0.0.9]:1"),
            dialer_boot: 1,
            seq: 1,
        };
        let plain = Contender {
            dialer: a("127.0.0.10:1"),
            dialer_boot: 2,
            seq: 9,
        };
        assert_eq!(resolve_duplicate(&plain, &mapped), Survivor::New);
    }

    #[test]
    fn duplicate_rule_with_unknown_addresses_uses_boot_ids_at_both_ends() {
        let unknown = a("0.0.0.0:0");
        // x (boot 5) does not know its address; y (boot 9) does. Both ends see the same pair.
        let by_x = Contender {
            dialer: unknown,
            dialer_boot: 5,
            seq: 1,
        };
        let by_y = Contender {
            dialer: a("127.0.0.3:24100"),
            dialer_boot: 9,
            seq: 1,
        };
        assert_eq!(resolve_duplicate(&by_x, &by_y), Survivor::Existing);
        assert_eq!(resolve_duplicate(&by_y, &by_x), Survivor::New);
        let by_z = Contender {
            dialer: unknown,
            dialer_boot: 3,
            seq: 1,
        };
        assert_eq!(resolve_duplicate(&by_x, &by_z), Survivor::New);
        assert_eq!(resolve_duplicate(&by_z, &by_x), Survivor::Existing);
    }

    #[test]
    fn backoff_doubles_then_stays_at_max() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let no_jitter: Vec<u64> = (0..10).map(|f| backoff(f, min, max, 0).as_secs()).collect();
        assert_eq!(no_jitter, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
        assert_eq!(backoff(u32::MAX, min, max, 0), max);
        assert_eq!(backoff(1000, min, max, 0), max);
    }

    #[test]
    fn roles() {
        let (lo, hi) = (a("127.0.0.9:1"), a("127.0.0.10:1"));
        assert_eq!(role(Some(lo), true, hi, true), Role::Designated);
        assert_eq!(role(Some(hi), true, lo, true), Role::AwaitInbound);
        // Not a masternode pair: no direction rule.
        assert_eq!(role(Some(hi), false, lo, true), Role::Dial);
        assert_eq!(role(Some(hi), true, lo, false), Role::Dial);
        assert_eq!(role(None, false, lo, true), Role::Dial);
    }

    #[test]
    fn fallback_after_grace() {
        let s = Duration::from_secs;
        assert!(!fallback_due(s(10), s(69), s(60)));
        assert!(fallback_due(s(10), s(70), s(60)));
        assert!(fallback_due(s(10), s(10), s(0)));
        assert!(!fallback_due(s(0), s(1), Duration::MAX));
    }

    fn any_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
            (any::<[u16; 8]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| {
                SocketAddr::new(IpAddr::V6(std::net::Ipv4Addr::from(ip).to_ipv6_mapped()), p)
            }),
        ]
    }

    proptest! {
        #[test]
        fn exactly_one_side_dials(x in any_addr(), y in any_addr()) {
            if canonical(x) != canonical(y) {
                prop_assert!(should_dial(x, y) ^ should_dial(y, x));
            } else {
                prop_assert!(!should_dial(x, y) && !should_dial(y, x));
            }
        }

        #[test]
        fn both_ends_agree_on_the_survivor(
            x in any_addr(), y in any_addr(), cx in any::<u64>(), cy in any::<u64>(),
        ) {
            prop_assume!(canonical(x) != canonical(y));
            let lower = if should_dial(x, y) { x } else { y };
            for (existing, new) in views(x, y, cx, cy) {
                let winner = match resolve_duplicate(&existing, &new) {
                    Survivor::Existing => existing,
                    Survivor::New => new,
                };
                prop_assert_eq!(winner.dialer, lower);
            }
        }

        #[test]
        fn backoff_stays_within_bounds(
            failures in 0u32..200, min_ms in 1u64..10_000, extra_ms in 0u64..600_000, jitter in any::<u64>(),
        ) {
            let min = Duration::from_millis(min_ms);
            let max = Duration::from_millis(min_ms + extra_ms);
            let d = backoff(failures, min, max, jitter);
            prop_assert!(d <= max);
            prop_assert!(d >= min * 3 / 4);
            let base = backoff(failures, min, max, 0);
            prop_assert!(d >= base * 3 / 4 && d <= base);
            // Monotone in the failure count (ignoring jitter).
            prop_assert!(backoff(failures + 1, min, max, 0) >= base);
        }
    }
}
