//! Unit tests of the registry state machine: who dials, which duplicate survives, backoff,
//! admission, list changes and shutdown, driven with inputs and virtual time only.

use super::*;

use std::net::SocketAddr;

use proptest::prelude::*;

use crate::wire::PROTOCOL_VERSION;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const INB: ConnId = INBOUND_ID_BIT;
const T0: Duration = Duration::ZERO;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|s| addr(s)).collect()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn settings_for(local: Option<SocketAddr>) -> Settings {
    Settings {
        network: Network::Testnet,
        local,
        maxpeers: 125,
        maxinboundperip: 4,
        reconnectmin: secs(1),
        reconnectmax: secs(60),
        fallbackgrace: secs(60),
        boot_id: 0xb007,
        seed: 0x5eed_1234_abcd,
        policy: crate::rules::Policy::STANDARD,
    }
}

fn settings(local: &str) -> Settings {
    settings_for(Some(addr(local)))
}

fn registry(local: &str, masternodes: &[&str]) -> Registry {
    Registry::new(settings(local), addrs(masternodes), Vec::new())
}

fn hello(peer: &str, boot_id: u64, seq: u64) -> PeerHello {
    PeerHello {
        addr: addr(peer),
        addr_known: true,
        boot_id,
        seq,
        masternode: true,
        version: PROTOCOL_VERSION,
        agent: "timed/test".into(),
    }
}

fn tick(r: &mut Registry, now: Duration) -> Vec<Output> {
    r.handle(Input::Tick, now)
}

/// The dials among `outs`, as (conn, addr), in output order.
fn dials(outs: &[Output]) -> Vec<(ConnId, SocketAddr)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Dial { conn, addr } => Some((*conn, *addr)),
            _ => None,
        })
        .collect()
}

/// The addresses dialed among `outs`, sorted.
fn dialed(outs: &[Output]) -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = dials(outs).into_iter().map(|(_, a)| a).collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<SocketAddr>) -> Vec<SocketAddr> {
    v.sort();
    v
}

/// The one dial of `outs` to `to`.
fn dial_to(outs: &[Output], to: &str) -> ConnId {
    let found: Vec<ConnId> = dials(outs)
        .into_iter()
        .filter(|(_, a)| *a == addr(to))
        .map(|(c, _)| c)
        .collect();
    assert_eq!(found.len(), 1, "expected one dial to {to} in {outs:?}");
    found[0]
}

fn closes(outs: &[Output]) -> Vec<(ConnId, Reason)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Close { conn, reason } => Some((*conn, *reason)),
            _ => None,
        })
        .collect()
}

fn accepts(outs: &[Output]) -> Vec<ConnId> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Accept { conn } => Some(*conn),
            _ => None,
        })
        .collect()
}

/// Drives a dial of the registry to an established outbound connection.
fn establish_outbound(r: &mut Registry, conn: ConnId, peer: &str, boot: u64, now: Duration) {
    assert!(r.handle(Input::Connected { conn }, now).is_empty());
    let outs = r.handle(
        Input::Handshaken {
            conn,
            hello: hello(peer, boot, conn),
        },
        now,
    );
    assert_eq!(outs, vec![Output::Accept { conn }]);
}

/// An inbound connection from `peer` (its TCP source on an ephemeral port), admitted and
/// handshaken; returns the outputs of the handshake.
fn inbound(
    r: &mut Registry,
    conn: ConnId,
    peer: &str,
    boot: u64,
    seq: u64,
    now: Duration,
) -> Vec<Output> {
    let remote = SocketAddr::new(addr(peer).ip(), 50_000 + (conn as u16));
    assert_eq!(
        r.handle(Input::Inbound { conn, remote }, now),
        vec![Output::Admit { conn }]
    );
    r.handle(
        Input::Handshaken {
            conn,
            hello: hello(peer, boot, seq),
        },
        now,
    )
}

fn status_of(r: &Registry, peer: &str, now: Duration) -> MasternodeStatus {
    let peer = addr(peer).to_string();
    r.masternode_status(now)
        .into_iter()
        .find(|m| m.address == peer)
        .unwrap_or_else(|| panic!("{peer} not in /masternodes"))
}

fn failures(r: &Registry, peer: &str) -> u32 {
    r.targets[&addr(peer)].failures
}

// ---------------------------------------------------------------------------------------------
// Direction
// ---------------------------------------------------------------------------------------------

const MN4: [&str; 4] = [
    "127.0.0.2:24100",
    "127.0.0.3:24100",
    "127.0.0.4:24100",
    "127.0.0.5:24100",
];

#[test]
fn the_lowest_masternode_dials_every_other_at_once() {
    let mut r = registry("127.0.0.2:24100", &MN4);
    assert!(r.is_masternode());
    let outs = tick(&mut r, T0);
    assert_eq!(
        dialed(&outs),
        addrs(&["127.0.0.3:24100", "127.0.0.4:24100", "127.0.0.5:24100"])
    );
    // Connection ids of dials count from 1 and never have the inbound bit.
    let mut ids: Vec<ConnId> = dials(&outs).into_iter().map(|(c, _)| c).collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3]);
    // Nothing more to do: every target has its dial.
    assert_eq!(r.next_deadline(), None);
    assert!(dials(&tick(&mut r, secs(1000))).is_empty());
}

#[test]
fn a_middle_masternode_dials_only_the_higher_ones() {
    let mut r = registry("127.0.0.3:24100", &MN4);
    assert_eq!(
        dialed(&tick(&mut r, T0)),
        addrs(&["127.0.0.4:24100", "127.0.0.5:24100"])
    );
}

#[test]
fn the_highest_masternode_waits_the_grace_then_falls_back() {
    let mut r = registry("127.0.0.5:24100", &MN4);
    assert!(tick(&mut r, T0).is_empty());
    assert_eq!(r.next_deadline(), Some(secs(60)));
    assert!(tick(&mut r, secs(59)).is_empty());
    assert!(tick(&mut r, secs(60) - ms(1)).is_empty());
    assert_eq!(
        dialed(&tick(&mut r, secs(60))),
        addrs(&["127.0.0.2:24100", "127.0.0.3:24100", "127.0.0.4:24100"])
    );
}

#[test]
fn addresses_order_numerically_not_as_strings() {
    let list = ["127.0.0.9:24100", "127.0.0.10:24100"];
    let mut ten = registry("127.0.0.10:24100", &list);
    assert!(
        dials(&tick(&mut ten, T0)).is_empty(),
        ".10 must not dial .9"
    );
    assert_eq!(ten.next_deadline(), Some(secs(60)));
    let mut nine = registry("127.0.0.9:24100", &list);
    assert_eq!(dialed(&tick(&mut nine, T0)), addrs(&["127.0.0.10:24100"]));

    // Same with more digits: 10.0.0.100 > 10.0.0.20.
    let list = ["10.0.0.100:24100", "10.0.0.20:24100"];
    let mut hi = registry("10.0.0.100:24100", &list);
    assert!(dials(&tick(&mut hi, T0)).is_empty());
    let mut lo = registry("10.0.0.20:24100", &list);
    assert_eq!(dialed(&tick(&mut lo, T0)), addrs(&["10.0.0.100:24100"]));
}

#[test]
fn one_ip_several_ports_orders_by_port() {
    let list = ["127.0.0.1:24100", "127.0.0.1:24101", "127.0.0.1:9000"];
    let mut a = registry("127.0.0.1:24100", &list);
    assert_eq!(dialed(&tick(&mut a, T0)), addrs(&["127.0.0.1:24101"]));
    let mut b = registry("127.0.0.1:24101", &list);
    assert!(dials(&tick(&mut b, T0)).is_empty());
    let mut c = registry("127.0.0.1:9000", &list);
    assert_eq!(
        dialed(&tick(&mut c, T0)),
        addrs(&["127.0.0.1:24100", "127.0.0.1:24101"])
    );
}

#[test]
fn ipv6_masternodes() {
    let list = [
        "[2001:db8::2]:24100",
        "[2001:db8::3]:24100",
        "[2001:db8::a]:24100",
        "[2001:db8::9]:24100",
        "10.0.0.1:24100",
    ];
    let mut r = registry("[2001:db8::3]:24100", &list);
    // ::9 < ::a numerically; every IPv4 address orders before every IPv6 one.
    assert_eq!(
        dialed(&tick(&mut r, T0)),
        addrs(&["[2001:db8::9]:24100", "[2001:db8::a]:24100"])
    );
    let mut r = registry("[2001:db8::a]:24100", &list);
    assert!(dials(&tick(&mut r, T0)).is_empty());
    let mut r = registry("[2001:db8::9]:24100", &list);
    assert_eq!(dialed(&tick(&mut r, T0)), addrs(&["[2001:db8::a]:24100"]));
    let mut r = registry("10.0.0.1:24100", &list);
    assert_eq!(dials(&tick(&mut r, T0)).len(), 4);
}

#[test]
fn ipv4_mapped_masternode_entries_are_canonical() {
    let list = ["[::ffff:127.0.0.2]:24100", "[::ffff:127.0.0.3]:24100"];
    let mut r = registry("127.0.0.2:24100", &list);
    assert!(r.is_masternode());
    assert_eq!(dialed(&tick(&mut r, T0)), addrs(&["127.0.0.3:24100"]));
    let mut r = registry("127.0.0.3:24100", &list);
    assert!(r.is_masternode());
    assert!(dials(&tick(&mut r, T0)).is_empty());
}

#[test]
fn a_non_masternode_dials_every_masternode() {
    let mut r = registry("127.0.0.20:24100", &MN4);
    assert!(!r.is_masternode());
    assert_eq!(dialed(&tick(&mut r, T0)), sorted(addrs(&MN4)));
    // Also without a known address of its own.
    let mut r = Registry::new(settings_for(None), addrs(&MN4), Vec::new());
    assert!(!r.is_masternode());
    assert_eq!(dialed(&tick(&mut r, T0)), sorted(addrs(&MN4)));
}

#[test]
fn addnode_peers_are_dialed() {
    let adds = addrs(&["127.0.0.30:24100", "127.0.0.1:24100"]);
    // By a masternode, whatever the addresses' order.
    let mut r = Registry::new(settings("127.0.0.5:24100"), addrs(&MN4), adds.clone());
    assert_eq!(dialed(&tick(&mut r, T0)), sorted(adds.clone()));
    // By a non-masternode, beside the masternodes.
    let mut r = Registry::new(settings("127.0.0.20:24100"), addrs(&MN4), adds.clone());
    let mut expected = addrs(&MN4);
    expected.extend(adds);
    assert_eq!(dialed(&tick(&mut r, T0)), sorted(expected));
}

#[test]
fn this_node_in_its_own_lists_is_never_dialed() {
    let mut r = Registry::new(
        settings("127.0.0.2:24100"),
        addrs(&MN4),
        addrs(&["127.0.0.2:24100"]),
    );
    let outs = tick(&mut r, T0);
    assert!(!dialed(&outs).contains(&addr("127.0.0.2:24100")));
    assert_eq!(r.masternode_status(T0).len(), 3);
}

// ---------------------------------------------------------------------------------------------
// Accept path and status
// ---------------------------------------------------------------------------------------------

#[test]
fn dial_connect_handshake_accept_with_status_along_the_way() {
    let list = ["127.0.0.2:24100", "127.0.0.3:24100", "127.0.0.4:24100"];
    let mut r = registry("127.0.0.3:24100", &list);
    let info = r.consensus_info(T0);
    assert_eq!(info.network, "testnet");
    assert_eq!(info.local_address.as_deref(), Some("127.0.0.3:24100"));
    assert!(info.masternode);
    assert_eq!(
        (info.active_masternodes, info.total_masternodes),
        (1, 3),
        "this node counts itself"
    );
    assert_eq!(
        (info.connected_peers, info.inbound, info.outbound),
        (0, 0, 0)
    );

    // .2 is lower: we wait for it. .4 is higher: we dial it.
    let s2 = status_of(&r, "127.0.0.2:24100", T0);
    assert_eq!(s2.expected_direction, "inbound");
    assert_eq!(s2.state, "waiting_inbound");
    assert_eq!(s2.next_dial_secs, Some(60));
    let s4 = status_of(&r, "127.0.0.4:24100", T0);
    assert_eq!(s4.expected_direction, "outbound");

    let outs = tick(&mut r, T0);
    assert_eq!(dialed(&outs), addrs(&["127.0.0.4:24100"]));
    let c4 = dial_to(&outs, "127.0.0.4:24100");
    assert!(r.knows(c4));
    let s4 = status_of(&r, "127.0.0.4:24100", T0);
    assert_eq!((s4.state.as_str(), s4.connected), ("dialing", false));
    assert_eq!(s4.next_dial_secs, None);

    assert!(r.handle(Input::Connected { conn: c4 }, ms(10)).is_empty());
    assert_eq!(
        status_of(&r, "127.0.0.4:24100", ms(10)).state,
        "handshaking"
    );
    assert_eq!(r.consensus_info(ms(10)).connected_peers, 0);

    let outs = r.handle(
        Input::Handshaken {
            conn: c4,
            hello: hello("127.0.0.4:24100", 44, c4),
        },
        ms(20),
    );
    assert_eq!(outs, vec![Output::Accept { conn: c4 }]);
    let s4 = status_of(&r, "127.0.0.4:24100", ms(20));
    assert_eq!(s4.state, "established");
    assert!(s4.connected);
    assert_eq!(s4.direction.as_deref(), Some("outbound"));
    assert_eq!(s4.last_error, None);
    let info = r.consensus_info(ms(20));
    assert_eq!(info.active_masternodes, 2);
    assert_eq!(
        (info.connected_peers, info.inbound, info.outbound),
        (1, 0, 1)
    );

    // The grace expired but the registry was not ticked yet: "fallback".
    let s2 = status_of(&r, "127.0.0.2:24100", secs(61));
    assert_eq!(s2.state, "fallback");
    assert_eq!(s2.expected_direction, "inbound");
    // The fallback dial, and it fails: "backoff", with the error.
    let outs = tick(&mut r, secs(61));
    let c2 = dial_to(&outs, "127.0.0.2:24100");
    assert_eq!(status_of(&r, "127.0.0.2:24100", secs(61)).state, "dialing");
    r.handle(
        Input::DialFailed {
            conn: c2,
            error: "connection refused".into(),
        },
        secs(61),
    );
    let s2 = status_of(&r, "127.0.0.2:24100", secs(61));
    assert_eq!(s2.state, "backoff");
    assert_eq!(s2.last_error.as_deref(), Some("connection refused"));
    assert!(matches!(s2.next_dial_secs, Some(0..=1)), "{s2:?}");
    assert!(!r.knows(c2));

    // Now .2 dials us after all (before our redial is due).
    let t = secs(61) + ms(500);
    let outs = inbound(&mut r, INB | 1, "127.0.0.2:24100", 22, 5, t);
    assert_eq!(outs, vec![Output::Accept { conn: INB | 1 }]);
    let s2 = status_of(&r, "127.0.0.2:24100", t);
    assert_eq!(s2.state, "established");
    assert_eq!(s2.direction.as_deref(), Some("inbound"));
    assert_eq!(s2.last_error, None, "cleared by the new link");
    assert_eq!(s2.next_dial_secs, None);
    let info = r.consensus_info(t);
    assert_eq!(info.active_masternodes, 3);
    assert_eq!(
        (info.connected_peers, info.inbound, info.outbound),
        (2, 1, 1)
    );
    assert_eq!(info.uptime_secs, 61);

    // /peers: one row per established connection, by P2P address.
    r.handle(
        Input::Heard {
            conn: c4,
            rtt: Some(Duration::from_micros(310)),
        },
        secs(70),
    );
    let peers = r.peers(secs(72));
    assert_eq!(peers.len(), 2);
    assert_eq!(peers[0].address, "127.0.0.2:24100");
    assert_eq!(peers[0].direction, "inbound");
    assert!(peers[0].masternode);
    assert_eq!(peers[0].connected_secs, 10);
    assert_eq!(peers[0].rtt_ms, None);
    assert_eq!(peers[1].address, "127.0.0.4:24100");
    assert_eq!(peers[1].direction, "outbound");
    assert_eq!(peers[1].last_recv_secs, 2);
    assert_eq!(peers[1].rtt_ms, Some(0.31));
    assert_eq!(peers[1].agent, "timed/test");

    // Nothing left to dial while every link is up.
    assert_eq!(r.next_deadline(), None);
    assert!(dials(&tick(&mut r, secs(1000))).is_empty());
}

#[test]
fn a_non_masternode_peer_is_not_counted_as_active_masternode() {
    let mut r = registry("127.0.0.2:24100", &["127.0.0.2:24100", "127.0.0.3:24100"]);
    tick(&mut r, T0);
    let outs = inbound(&mut r, INB | 1, "10.9.9.9:24100", 9, 1, secs(1));
    assert_eq!(accepts(&outs), vec![INB | 1]);
    let info = r.consensus_info(secs(1));
    assert_eq!(info.active_masternodes, 1);
    assert_eq!((info.connected_peers, info.inbound), (1, 1));
    let peers = r.peers(secs(1));
    assert_eq!(peers.len(), 1);
    assert!(!peers[0].masternode);
    // /masternodes lists masternodes only.
    assert_eq!(r.masternode_status(secs(1)).len(), 1);
}

#[test]
fn an_inbound_connection_closed_before_its_handshake_leaves_no_trace() {
    let mut r = registry("127.0.0.5:24100", &MN4);
    tick(&mut r, T0);
    let remote = addr("127.0.0.3:51000");
    r.handle(
        Input::Inbound {
            conn: INB | 1,
            remote,
        },
        secs(1),
    );
    assert!(r.knows(INB | 1));
    assert!(r
        .handle(
            Input::Closed {
                conn: INB | 1,
                reason: CloseReason::Eof
            },
            secs(2)
        )
        .is_empty());
    assert!(!r.knows(INB | 1));
    assert_eq!(
        status_of(&r, "127.0.0.3:24100", secs(2)).state,
        "waiting_inbound"
    );
}

// ---------------------------------------------------------------------------------------------
// Duplicates
// ---------------------------------------------------------------------------------------------

const A: &str = "127.0.0.2:24100";
const B: &str = "127.0.0.3:24100";
const BOOT_A: u64 = 0xA;
const BOOT_B: u64 = 0xB;

/// Which registry of the pair.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Side {
    A,
    B,
}

/// The registries of A (lower, the designated dialer) and B (higher, with no grace so it
/// falls back at once): each has dialed the other at time 0. Returns the registries, per
/// registry (its id of A's dial a1, its id of B's dial b1), and the seqs of a1 and b1 (each
/// dialer's own id of its dial).
#[allow(clippy::type_complexity)]
fn crossed_dials() -> (
    Registry,
    Registry,
    (ConnId, ConnId),
    (ConnId, ConnId),
    (u64, u64),
) {
    let mut ra = registry(A, &[A, B]);
    let mut rb = Registry::new(
        Settings {
            fallbackgrace: Duration::ZERO,
            ..settings(B)
        },
        addrs(&[A, B]),
        Vec::new(),
    );
    let a1_at_a = dial_to(&tick(&mut ra, T0), B);
    let b1_at_b = dial_to(&tick(&mut rb, T0), A);
    assert_eq!(status_of(&rb, A, T0).expected_direction, "inbound");
    // Each dial arrives at the other as an inbound connection.
    let b1_at_a = INB | 7;
    let a1_at_b = INB | 9;
    assert_eq!(
        ra.handle(
            Input::Inbound {
                conn: b1_at_a,
                remote: addr("127.0.0.3:51234")
            },
            ms(1)
        ),
        vec![Output::Admit { conn: b1_at_a }]
    );
    assert_eq!(
        rb.handle(
            Input::Inbound {
                conn: a1_at_b,
                remote: addr("127.0.0.2:52345")
            },
            ms(1)
        ),
        vec![Output::Admit { conn: a1_at_b }]
    );
    assert!(ra
        .handle(Input::Connected { conn: a1_at_a }, ms(1))
        .is_empty());
    assert!(rb
        .handle(Input::Connected { conn: b1_at_b }, ms(1))
        .is_empty());
    (
        ra,
        rb,
        (a1_at_a, b1_at_a),
        (a1_at_b, b1_at_b),
        (a1_at_a, b1_at_b),
    )
}

/// The handshake of `conn` as `side` sees it: the other node's address and boot id, and the
/// dialer's seq (the acceptor echoes it).
fn handshake_input(side: Side, conn: ConnId, seq: u64) -> Input {
    let hello = match side {
        Side::A => hello(B, BOOT_B, seq),
        Side::B => hello(A, BOOT_A, seq),
    };
    Input::Handshaken { conn, hello }
}

#[test]
fn duplicate_rule_keeps_the_lower_dialers_connection_at_both_ends_in_any_order() {
    for side in [Side::A, Side::B] {
        for winner_first in [true, false] {
            for loser_close in [
                CloseReason::Local(Reason::Duplicate),
                CloseReason::Remote(Reason::Duplicate),
            ] {
                let case = format!("{side:?}, winner first: {winner_first}, {loser_close:?}");
                let (ra, rb, ids_a, ids_b, (a1_seq, b1_seq)) = crossed_dials();
                let (mut r, (a1, b1)) = match side {
                    Side::A => (ra, ids_a),
                    Side::B => (rb, ids_b),
                };
                let order = if winner_first {
                    [(a1, a1_seq), (b1, b1_seq)]
                } else {
                    [(b1, b1_seq), (a1, a1_seq)]
                };
                let mut winner_accepted = false;
                let mut all = Vec::new();
                for (i, (conn, seq)) in order.into_iter().enumerate() {
                    let outs = r.handle(handshake_input(side, conn, seq), ms(10 + i as u64));
                    if accepts(&outs).contains(&a1) {
                        winner_accepted = true;
                    }
                    for (closed, reason) in closes(&outs) {
                        assert_ne!(closed, a1, "{case}: the winner was closed: {outs:?}");
                        assert_eq!((closed, reason), (b1, Reason::Duplicate), "{case}");
                        assert!(
                            winner_accepted,
                            "{case}: loser closed before the winner was established"
                        );
                    }
                    assert!(dials(&outs).is_empty(), "{case}: {outs:?}");
                    all.extend(outs);
                }
                // The peer confirms the winner (A's dial: at A the loser waited for this).
                let outs = r.handle(Input::Confirmed { conn: a1 }, ms(20));
                for (closed, reason) in closes(&outs) {
                    assert_eq!((closed, reason), (b1, Reason::Duplicate), "{case}");
                }
                all.extend(outs);
                assert_eq!(
                    accepts(&all).iter().filter(|c| **c == a1).count(),
                    1,
                    "{case}"
                );
                assert_eq!(closes(&all), vec![(b1, Reason::Duplicate)], "{case}");

                // The loser's session ends; the link stays as it is, and nobody redials.
                let outs = r.handle(
                    Input::Closed {
                        conn: b1,
                        reason: loser_close.clone(),
                    },
                    ms(50),
                );
                assert!(outs.is_empty(), "{case}: {outs:?}");
                let info = r.consensus_info(ms(50));
                assert_eq!(info.connected_peers, 1, "{case}");
                let (inbound, outbound) = match side {
                    Side::A => (0, 1),
                    Side::B => (1, 0),
                };
                assert_eq!((info.inbound, info.outbound), (inbound, outbound), "{case}");
                let other = if side == Side::A { B } else { A };
                assert_eq!(status_of(&r, other, ms(50)).state, "established", "{case}");
                assert!(dials(&tick(&mut r, secs(500))).is_empty(), "{case}");
                assert_eq!(r.next_deadline(), None, "{case}");
            }
        }
    }
}

#[test]
fn a_newer_connection_from_the_same_dialer_replaces_the_older() {
    // B (higher) holds A's connection seq 1; A redials (it gave the old one up) with seq 2.
    let mut r = registry(B, &[A, B]);
    tick(&mut r, T0);
    assert_eq!(
        accepts(&inbound(&mut r, INB | 1, A, BOOT_A, 1, secs(1))),
        vec![INB | 1]
    );
    let outs = inbound(&mut r, INB | 2, A, BOOT_A, 2, secs(100));
    assert_eq!(closes(&outs), vec![(INB | 1, Reason::Duplicate)]);
    assert_eq!(accepts(&outs), vec![INB | 2]);
    assert_eq!(r.consensus_info(secs(100)).connected_peers, 1);
    r.handle(
        Input::Closed {
            conn: INB | 1,
            reason: CloseReason::Local(Reason::Duplicate),
        },
        secs(100),
    );
    assert_eq!(r.consensus_info(secs(100)).connected_peers, 1);
}

#[test]
fn an_older_connection_from_the_same_dialer_loses_to_the_newer() {
    let mut r = registry(B, &[A, B]);
    tick(&mut r, T0);
    assert_eq!(
        accepts(&inbound(&mut r, INB | 2, A, BOOT_A, 2, secs(1))),
        vec![INB | 2]
    );
    let outs = inbound(&mut r, INB | 1, A, BOOT_A, 1, secs(2));
    assert_eq!(
        outs,
        vec![Output::Close {
            conn: INB | 1,
            reason: Reason::Duplicate
        }]
    );
}

#[test]
fn duplicate_rule_applies_between_non_masternodes_too() {
    // Two addnode peers that both dial: the lower address's dial survives at both ends.
    let n1 = "10.0.0.1:24100";
    let n2 = "10.0.0.2:24100";
    let mut r1 = Registry::new(settings(n1), Vec::new(), addrs(&[n2]));
    let mut r2 = Registry::new(settings(n2), Vec::new(), addrs(&[n1]));
    let d1 = dial_to(&tick(&mut r1, T0), n2);
    let d2 = dial_to(&tick(&mut r2, T0), n1);
    r1.handle(Input::Connected { conn: d1 }, ms(1));
    r2.handle(Input::Connected { conn: d2 }, ms(1));
    // r2 handshakes its own dial first, then n1's; r1 the other way round.
    let o2 = r2.handle(
        Input::Handshaken {
            conn: d2,
            hello: hello(n1, 1, d2),
        },
        ms(2),
    );
    assert_eq!(accepts(&o2), vec![d2]);
    let o2 = inbound(&mut r2, INB | 1, n1, 1, d1, ms(3));
    assert_eq!(closes(&o2), vec![(d2, Reason::Duplicate)]);
    assert_eq!(accepts(&o2), vec![INB | 1]);
    let o1 = inbound(&mut r1, INB | 1, n2, 2, d2, ms(2));
    assert_eq!(accepts(&o1), vec![INB | 1]);
    let o1 = r1.handle(
        Input::Handshaken {
            conn: d1,
            hello: hello(n2, 2, d1),
        },
        ms(3),
    );
    assert_eq!(closes(&o1), vec![]);
    assert_eq!(accepts(&o1), vec![d1]);
    let o1 = r1.handle(Input::Confirmed { conn: d1 }, ms(4));
    assert_eq!(closes(&o1), vec![(INB | 1, Reason::Duplicate)]);
}

/// The same as above for two nodes that do not know their own address (they listen on
/// `0.0.0.0` without `externalip`, which the configuration allows when no masternode is
/// listed): each claims `0.0.0.0:24100` and the other fills in the IP it sees.
#[test]
fn duplicate_rule_agrees_when_neither_node_knows_its_own_address() {
    let n1 = "10.0.0.1:24100";
    let n2 = "10.0.0.2:24100";
    // Each end knows the other's boot id from its Hello: n1 is boot 1, n2 boot 2.
    let unknown = |boot_id| Settings {
        boot_id,
        ..settings_for(None)
    };
    let mut r1 = Registry::new(unknown(1), Vec::new(), addrs(&[n2]));
    let mut r2 = Registry::new(unknown(2), Vec::new(), addrs(&[n1]));
    let anonymous = |peer, boot, seq| PeerHello {
        addr_known: false,
        ..hello(peer, boot, seq)
    };
    let d1 = dial_to(&tick(&mut r1, T0), n2);
    let d2 = dial_to(&tick(&mut r2, T0), n1);
    r1.handle(Input::Connected { conn: d1 }, ms(1));
    r2.handle(Input::Connected { conn: d2 }, ms(1));
    // Each handshakes its own dial first, then the other's (INB|1 at r1 is d2, at r2 d1).
    let mut o1 = r1.handle(
        Input::Handshaken {
            conn: d1,
            hello: anonymous(n2, 2, d1),
        },
        ms(2),
    );
    let remote = SocketAddr::new(addr(n2).ip(), 50_001);
    r1.handle(
        Input::Inbound {
            conn: INB | 1,
            remote,
        },
        ms(3),
    );
    o1.extend(r1.handle(
        Input::Handshaken {
            conn: INB | 1,
            hello: anonymous(n2, 2, d2),
        },
        ms(3),
    ));
    let mut o2 = r2.handle(
        Input::Handshaken {
            conn: d2,
            hello: anonymous(n1, 1, d2),
        },
        ms(2),
    );
    let remote = SocketAddr::new(addr(n1).ip(), 50_001);
    r2.handle(
        Input::Inbound {
            conn: INB | 1,
            remote,
        },
        ms(3),
    );
    o2.extend(r2.handle(
        Input::Handshaken {
            conn: INB | 1,
            hello: anonymous(n1, 1, d1),
        },
        ms(3),
    ));
    // r1 keeps d1 (its dial) exactly when r2 keeps INB|1 (that same connection, n1's dial).
    // (A loser may still be open, retiring until the peer confirms the winner.)
    let keeps = |r: &Registry, conn| {
        r.connections()
            .iter()
            .any(|v| v.conn == conn && v.established)
    };
    let r1_keeps_d1 = keeps(&r1, d1);
    let r2_keeps_d1 = keeps(&r2, INB | 1);
    let r1_keeps_d2 = keeps(&r1, INB | 1);
    let r2_keeps_d2 = keeps(&r2, d2);
    assert_eq!(r1_keeps_d1, r2_keeps_d1, "{o1:?} / {o2:?}");
    assert_eq!(r1_keeps_d2, r2_keeps_d2, "{o1:?} / {o2:?}");
    assert!(
        r1_keeps_d1 != r1_keeps_d2,
        "exactly one must survive: {o1:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Restart
// ---------------------------------------------------------------------------------------------

#[test]
fn a_new_boot_id_replaces_the_stale_connection_at_once_and_the_old_boot_stays_out() {
    let p = A;
    let mut r = registry(B, &[A, B]);
    tick(&mut r, T0);
    assert_eq!(
        accepts(&inbound(&mut r, INB | 1, p, 1, 1, secs(1))),
        vec![INB | 1]
    );

    // P restarted: its first connection of the new boot (seq 1 again) replaces the old.
    let outs = inbound(&mut r, INB | 2, p, 2, 1, secs(30));
    assert_eq!(closes(&outs), vec![(INB | 1, Reason::Duplicate)]);
    assert_eq!(accepts(&outs), vec![INB | 2]);
    assert_eq!(r.consensus_info(secs(30)).connected_peers, 1);

    // A late handshake of the old process, even with a higher seq, does not win it back.
    let outs = inbound(&mut r, INB | 3, p, 1, 5, secs(31));
    assert_eq!(
        outs,
        vec![Output::Close {
            conn: INB | 3,
            reason: Reason::Duplicate
        }]
    );

    // Still not after the stale connection's session has ended.
    r.handle(
        Input::Closed {
            conn: INB | 1,
            reason: CloseReason::Local(Reason::Duplicate),
        },
        secs(32),
    );
    let outs = inbound(&mut r, INB | 4, p, 1, 6, secs(33));
    assert_eq!(
        outs,
        vec![Output::Close {
            conn: INB | 4,
            reason: Reason::Duplicate
        }]
    );
    assert_eq!(status_of(&r, p, secs(33)).state, "established");
    let peers = r.peers(secs(33));
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].connected_secs, 3);
}

#[test]
fn a_restarted_peer_on_our_outbound_link_is_replaced_too() {
    // We (A) dialed B; B restarts and falls back to dialing us: the new boot wins at once,
    // and we then redial to restore the designated direction.
    let mut r = registry(A, &[A, B]);
    let a1 = dial_to(&tick(&mut r, T0), B);
    establish_outbound(&mut r, a1, B, 1, ms(1));
    let mut outs = inbound(&mut r, INB | 1, B, 2, 1, secs(100));
    assert_eq!(closes(&outs), vec![(a1, Reason::Duplicate)]);
    assert_eq!(accepts(&outs), vec![INB | 1]);
    // The upgrade dial (our outbound is closing, the link is inbound), now or soon.
    outs.extend(tick(&mut r, secs(102)));
    let a2 = dial_to(&outs, B);
    let outs = r.handle(
        Input::Handshaken {
            conn: a2,
            hello: hello(B, 2, a2),
        },
        secs(103),
    );
    // We dialed the winner, so B completes its handshake after us: B's link closes only
    // once B confirms ours.
    assert_eq!(closes(&outs), vec![]);
    assert_eq!(accepts(&outs), vec![a2]);
    let outs = r.handle(Input::Confirmed { conn: a2 }, secs(103));
    assert_eq!(closes(&outs), vec![(INB | 1, Reason::Duplicate)]);
}

// ---------------------------------------------------------------------------------------------
// Backoff
// ---------------------------------------------------------------------------------------------

fn fail(r: &mut Registry, conn: ConnId, now: Duration) -> Vec<Output> {
    r.handle(
        Input::DialFailed {
            conn,
            error: "connection refused".into(),
        },
        now,
    )
}

#[test]
fn a_failed_dial_is_retried_after_reconnectmin_with_jitter() {
    let mut r = registry(A, &[A, B]);
    let c1 = dial_to(&tick(&mut r, T0), B);
    assert!(dials(&fail(&mut r, c1, T0)).is_empty());
    let next = r.next_deadline().expect("a redial is scheduled");
    assert!(next >= ms(750) && next <= secs(1), "{next:?}");
    assert!(dials(&tick(&mut r, ms(750) - Duration::from_nanos(1))).is_empty());
    assert!(dials(&tick(&mut r, next - Duration::from_nanos(1))).is_empty());
    let outs = tick(&mut r, secs(1));
    assert_eq!(dialed(&outs), addrs(&[B]));
    assert_ne!(dial_to(&outs, B), c1, "a new connection id");
}

#[test]
fn backoff_doubles_up_to_reconnectmax_and_never_gives_up() {
    let mut r = registry(A, &[A, B]);
    let mut conn = dial_to(&tick(&mut r, T0), B);
    let mut now = T0;
    let mut seen_max = 0;
    for failure in 0..50u32 {
        assert!(
            dials(&fail(&mut r, conn, now)).is_empty(),
            "redialed at once"
        );
        assert_eq!(failures(&r, B), failure + 1);
        let base = secs(1)
            .saturating_mul(1u32 << failure.min(20))
            .min(secs(60));
        let next = r.next_deadline().expect("never gives up");
        let delay = next - now;
        assert!(
            delay >= base * 3 / 4 && delay <= base,
            "failure {}: delay {delay:?}, expected within [{:?}, {base:?}]",
            failure + 1,
            base * 3 / 4
        );
        if base == secs(60) {
            seen_max += 1;
        }
        let s = status_of(&r, B, now);
        assert_eq!(s.state, "backoff");
        assert_eq!(s.next_dial_secs, Some(delay.as_secs()));
        assert!(dials(&tick(&mut r, next - Duration::from_nanos(1))).is_empty());
        now = next;
        conn = dial_to(&tick(&mut r, now), B);
    }
    assert!(seen_max > 40, "stays at reconnectmax");
}

#[test]
fn losing_as_a_duplicate_is_no_failure() {
    let mut r = registry(A, &[A, B]);
    let c1 = dial_to(&tick(&mut r, T0), B);
    fail(&mut r, c1, T0);
    let c2 = dial_to(&tick(&mut r, secs(1)), B);
    fail(&mut r, c2, secs(1));
    assert_eq!(failures(&r, B), 2);

    // The peer tells us "duplicate" before the handshake.
    let c3 = dial_to(&tick(&mut r, secs(3)), B);
    r.handle(Input::Connected { conn: c3 }, secs(3));
    let outs = r.handle(
        Input::Closed {
            conn: c3,
            reason: CloseReason::Remote(Reason::Duplicate),
        },
        secs(3),
    );
    assert!(dials(&outs).is_empty());
    assert_eq!(failures(&r, B), 2);
    let s = status_of(&r, B, secs(3));
    assert_eq!(
        s.last_error,
        Some("connection refused".into()),
        "no new error"
    );
    let delay = r.next_deadline().unwrap() - secs(3);
    assert!(
        delay >= secs(3) && delay <= secs(4),
        "no doubling: {delay:?}"
    );

    // We closed it as a duplicate ourselves.
    let at = secs(3) + delay;
    let c4 = dial_to(&tick(&mut r, at), B);
    r.handle(Input::Connected { conn: c4 }, at);
    r.handle(
        Input::Closed {
            conn: c4,
            reason: CloseReason::Local(Reason::Duplicate),
        },
        at,
    );
    assert_eq!(failures(&r, B), 2);

    // Whereas a connection lost before its handshake for another reason is one.
    let at = r.next_deadline().unwrap();
    let c5 = dial_to(&tick(&mut r, at), B);
    r.handle(Input::Connected { conn: c5 }, at);
    r.handle(
        Input::Closed {
            conn: c5,
            reason: CloseReason::Local(Reason::Timeout),
        },
        at,
    );
    assert_eq!(failures(&r, B), 3);
    assert_eq!(status_of(&r, B, at).last_error, Some("timeout".into()));
}

#[test]
fn a_healthy_link_lost_starts_the_backoff_over() {
    let mut r = registry(A, &[A, B]);
    let mut now = T0;
    let mut conn = dial_to(&tick(&mut r, now), B);
    for _ in 0..5 {
        fail(&mut r, conn, now);
        now = r.next_deadline().unwrap();
        conn = dial_to(&tick(&mut r, now), B);
    }
    assert_eq!(failures(&r, B), 5);
    establish_outbound(&mut r, conn, B, 1, now);
    let lost = now + secs(3600);
    let outs = r.handle(
        Input::Closed {
            conn,
            reason: CloseReason::Local(Reason::Timeout),
        },
        lost,
    );
    assert!(dials(&outs).is_empty());
    assert_eq!(failures(&r, B), 0);
    let delay = r.next_deadline().unwrap() - lost;
    assert!(delay >= ms(750) && delay <= secs(1), "{delay:?}");
}

#[test]
fn a_lost_link_to_a_higher_masternode_restarts_the_grace() {
    // B (higher) lost its link from A: it waits the grace again before dialing A itself.
    let mut r = registry(B, &[A, B]);
    tick(&mut r, T0);
    inbound(&mut r, INB | 1, A, BOOT_A, 1, secs(1));
    let lost = secs(500);
    let outs = r.handle(
        Input::Closed {
            conn: INB | 1,
            reason: CloseReason::Eof,
        },
        lost,
    );
    assert!(dials(&outs).is_empty());
    assert_eq!(status_of(&r, A, lost).state, "waiting_inbound");
    assert_eq!(r.next_deadline(), Some(lost + secs(60)));
    assert!(dials(&tick(&mut r, lost + secs(59))).is_empty());
    assert_eq!(dialed(&tick(&mut r, lost + secs(60))), addrs(&[A]));
}

// ---------------------------------------------------------------------------------------------
// Upgrade of a wrong-direction link
// ---------------------------------------------------------------------------------------------

#[test]
fn the_designated_dialer_still_dials_over_an_inbound_link_and_keeps_its_outbound() {
    let mut r = registry(A, &[A, B]);
    let c1 = dial_to(&tick(&mut r, T0), B);
    fail(&mut r, c1, T0);
    // B fell back and dialed us: accepted, the link is up, but in the wrong direction.
    let outs = inbound(&mut r, INB | 1, B, BOOT_B, 1, ms(500));
    assert_eq!(outs, vec![Output::Accept { conn: INB | 1 }]);
    assert_eq!(
        status_of(&r, B, ms(500)).direction.as_deref(),
        Some("inbound")
    );
    assert_eq!(status_of(&r, B, ms(500)).expected_direction, "outbound");
    // We still dial when the backoff allows.
    assert!(r.next_deadline().is_some());
    let at = r.next_deadline().unwrap();
    let c2 = dial_to(&tick(&mut r, at), B);
    r.handle(Input::Connected { conn: c2 }, at);
    let outs = r.handle(
        Input::Handshaken {
            conn: c2,
            hello: hello(B, BOOT_B, c2),
        },
        at,
    );
    // The duplicate rule keeps ours (A is the lower address) and closes B's once B
    // confirms ours.
    assert_eq!(closes(&outs), vec![]);
    assert_eq!(accepts(&outs), vec![c2]);
    let outs = r.handle(Input::Confirmed { conn: c2 }, at);
    assert_eq!(closes(&outs), vec![(INB | 1, Reason::Duplicate)]);
    r.handle(
        Input::Closed {
            conn: INB | 1,
            reason: CloseReason::Remote(Reason::Duplicate),
        },
        at,
    );
    let s = status_of(&r, B, at);
    assert_eq!(s.direction.as_deref(), Some("outbound"));
    assert_eq!(r.next_deadline(), None);
}

/// A's registry with B's fallback link (inbound) replaced by A's own dial, which A accepted
/// at `at` but B has not confirmed yet.
fn replaced_awaiting_confirmation() -> (Registry, ConnId, Duration) {
    let mut r = registry(A, &[A, B]);
    let c1 = dial_to(&tick(&mut r, T0), B);
    fail(&mut r, c1, T0);
    inbound(&mut r, INB | 1, B, BOOT_B, 1, ms(500));
    let at = r.next_deadline().unwrap();
    let c2 = dial_to(&tick(&mut r, at), B);
    r.handle(Input::Connected { conn: c2 }, at);
    let outs = r.handle(
        Input::Handshaken {
            conn: c2,
            hello: hello(B, BOOT_B, c2),
        },
        at,
    );
    assert_eq!(outs, vec![Output::Accept { conn: c2 }]);
    (r, c2, at)
}

#[test]
fn a_replaced_link_stays_open_but_uncounted_until_the_peer_confirms_its_successor() {
    let (mut r, c2, at) = replaced_awaiting_confirmation();
    // Only the new connection is the link now.
    let info = r.consensus_info(at);
    assert_eq!(
        (info.connected_peers, info.inbound, info.outbound),
        (1, 0, 1)
    );
    assert_eq!(status_of(&r, B, at).direction.as_deref(), Some("outbound"));
    let views = r.connections();
    let old = views.iter().find(|v| v.conn == INB | 1).unwrap();
    assert!(old.retiring && !old.established && !old.closing);
    // B closes it itself (its own verdict, when its handshake completes): no failure, no
    // redial, nothing left for the confirmation to do.
    let outs = r.handle(
        Input::Closed {
            conn: INB | 1,
            reason: CloseReason::Remote(Reason::Duplicate),
        },
        at + ms(1),
    );
    assert!(outs.is_empty(), "{outs:?}");
    assert!(r
        .handle(Input::Confirmed { conn: c2 }, at + ms(2))
        .is_empty());
    assert_eq!(r.next_deadline(), None);
    assert_eq!(r.consensus_info(at + ms(2)).connected_peers, 1);
}

#[test]
fn a_replacement_that_ends_unconfirmed_hands_the_link_back() {
    let (mut r, c2, at) = replaced_awaiting_confirmation();
    let outs = r.handle(
        Input::Closed {
            conn: c2,
            reason: CloseReason::Eof,
        },
        at + ms(1),
    );
    assert_eq!(closes(&outs), vec![], "the old link must not be closed");
    let s = status_of(&r, B, at + ms(1));
    assert_eq!(s.state, "established");
    assert_eq!(s.direction.as_deref(), Some("inbound"));
    assert_eq!(r.consensus_info(at + ms(1)).connected_peers, 1);
    // A later confirmation of the dead connection changes nothing.
    assert!(closes(&r.handle(Input::Confirmed { conn: c2 }, at + ms(2))).is_empty());
}

/// A's registry holding its own dial to B, not yet confirmed by B, when B's dial (which B
/// accepted on its side, as dialers complete first) completes its handshake here and loses.
fn losing_newcomer_awaiting_confirmation() -> (Registry, ConnId) {
    let mut r = registry(A, &[A, B]);
    let c1 = dial_to(&tick(&mut r, T0), B);
    establish_outbound(&mut r, c1, B, BOOT_B, ms(1));
    let outs = inbound(&mut r, INB | 1, B, BOOT_B, 1, ms(2));
    assert!(
        accepts(&outs).is_empty() && closes(&outs).is_empty(),
        "the loser is neither accepted nor closed yet: {outs:?}"
    );
    let views = r.connections();
    assert!(views.iter().any(|v| v.conn == INB | 1 && v.retiring));
    assert_eq!(r.consensus_info(ms(2)).connected_peers, 1);
    (r, c1)
}

#[test]
fn a_losing_newcomer_closes_once_the_peer_confirms_the_winner() {
    let (mut r, c1) = losing_newcomer_awaiting_confirmation();
    let outs = r.handle(Input::Confirmed { conn: c1 }, ms(3));
    assert_eq!(closes(&outs), vec![(INB | 1, Reason::Duplicate)]);
    // Once the winner is confirmed, a further duplicate is closed at once.
    let outs = inbound(&mut r, INB | 2, B, BOOT_B, 2, ms(4));
    assert_eq!(closes(&outs), vec![(INB | 2, Reason::Duplicate)]);
}

#[test]
fn a_losing_newcomer_becomes_the_link_if_the_winner_ends_unconfirmed() {
    let (mut r, c1) = losing_newcomer_awaiting_confirmation();
    let outs = r.handle(
        Input::Closed {
            conn: c1,
            reason: CloseReason::Io("reset".into()),
        },
        ms(3),
    );
    assert_eq!(accepts(&outs), vec![INB | 1]);
    assert!(closes(&outs).is_empty());
    let s = status_of(&r, B, ms(3));
    assert_eq!(s.state, "established");
    assert_eq!(s.direction.as_deref(), Some("inbound"));
}

#[test]
fn of_several_losers_waiting_on_one_winner_only_one_becomes_the_link() {
    let (mut r, c1) = losing_newcomer_awaiting_confirmation();
    let outs = inbound(&mut r, INB | 2, B, BOOT_B, 2, ms(3));
    assert!(
        accepts(&outs).is_empty() && closes(&outs).is_empty(),
        "{outs:?}"
    );
    let outs = r.handle(
        Input::Closed {
            conn: c1,
            reason: CloseReason::Eof,
        },
        ms(4),
    );
    let (accepted, closed) = (accepts(&outs), closes(&outs));
    assert_eq!(accepted.len(), 1, "{outs:?}");
    assert_eq!(closed.len(), 1, "{outs:?}");
    assert_ne!(accepted[0], closed[0].0);
    assert_eq!(r.consensus_info(ms(4)).connected_peers, 1);
}

#[test]
fn losers_waiting_on_a_winner_that_was_itself_replaced_close_with_it() {
    let (mut r, c1) = losing_newcomer_awaiting_confirmation();
    // B restarts and dials again: its new boot replaces our link at once.
    let outs = inbound(&mut r, INB | 2, B, BOOT_B + 1, 1, ms(3));
    assert_eq!(closes(&outs), vec![(c1, Reason::Duplicate)]);
    assert_eq!(accepts(&outs), vec![INB | 2]);
    // Our old link's end leaves nothing to rescue: the new boot's link carries the pair.
    let outs = r.handle(
        Input::Closed {
            conn: c1,
            reason: CloseReason::Local(Reason::Duplicate),
        },
        ms(4),
    );
    assert!(accepts(&outs).is_empty(), "{outs:?}");
    assert_eq!(closes(&outs), vec![(INB | 1, Reason::Duplicate)]);
    assert_eq!(r.consensus_info(ms(4)).connected_peers, 1);
}

#[test]
fn shutdown_closes_a_retiring_connection_too() {
    let (mut r, c1) = losing_newcomer_awaiting_confirmation();
    let mut closed = closes(&r.handle(Input::Shutdown, ms(3)));
    closed.sort_by_key(|(c, _)| *c);
    assert_eq!(
        closed,
        vec![(c1, Reason::Shutdown), (INB | 1, Reason::Shutdown)]
    );
    // The winner's close must not rescue the loser during shutdown.
    let outs = r.handle(
        Input::Closed {
            conn: c1,
            reason: CloseReason::Local(Reason::Shutdown),
        },
        ms(4),
    );
    assert!(accepts(&outs).is_empty(), "{outs:?}");
}

#[test]
fn a_failing_upgrade_dial_backs_off() {
    let mut r = registry(A, &[A, B]);
    let mut conn = dial_to(&tick(&mut r, T0), B);
    // B fell back and dialed us; the link is up, in the wrong direction.
    assert_eq!(
        accepts(&inbound(&mut r, INB | 1, B, BOOT_B, 1, ms(1))),
        vec![INB | 1]
    );
    let mut now = ms(2);
    for failure in 0..10u32 {
        // We cannot reach B (it is behind NAT): the upgrade dial fails.
        let outs = fail(&mut r, conn, now);
        assert!(
            dials(&outs).is_empty(),
            "failure {}: redialed at once: {outs:?}",
            failure + 1
        );
        let next = r.next_deadline().expect("the upgrade is retried");
        let base = secs(1).saturating_mul(1 << failure).min(secs(60));
        assert!(
            next - now >= base * 3 / 4,
            "failure {}: {:?}",
            failure + 1,
            next - now
        );
        now = next;
        conn = dial_to(&tick(&mut r, now), B);
    }
    // The inbound link was never disturbed.
    assert_eq!(status_of(&r, B, now).state, "established");
}

#[test]
fn an_upgrade_connection_lost_before_its_handshake_backs_off() {
    let mut r = registry(A, &[A, B]);
    let conn = dial_to(&tick(&mut r, T0), B);
    assert_eq!(
        accepts(&inbound(&mut r, INB | 1, B, BOOT_B, 1, ms(1))),
        vec![INB | 1]
    );
    r.handle(Input::Connected { conn }, ms(2));
    let outs = r.handle(
        Input::Closed {
            conn,
            reason: CloseReason::Local(Reason::Timeout),
        },
        secs(10),
    );
    assert!(dials(&outs).is_empty(), "redialed at once: {outs:?}");
    let next = r.next_deadline().expect("the upgrade is retried");
    assert!(next > secs(10), "{next:?}");
}

// ---------------------------------------------------------------------------------------------
// Admission
// ---------------------------------------------------------------------------------------------

fn admit(r: &mut Registry, conn: ConnId, remote: &str, now: Duration) -> Vec<Output> {
    r.handle(
        Input::Inbound {
            conn,
            remote: addr(remote),
        },
        now,
    )
}

#[test]
fn too_many_inbound_connections_from_one_ip_are_refused() {
    let mut r = registry("127.0.0.2:24100", &MN4);
    tick(&mut r, T0);
    for i in 0..4 {
        let conn = INB | (i + 1);
        let outs = admit(&mut r, conn, &format!("10.1.1.1:{}", 40_000 + i), secs(1));
        assert_eq!(outs, vec![Output::Admit { conn }]);
    }
    let outs = admit(&mut r, INB | 5, "10.1.1.1:40100", secs(1));
    assert_eq!(
        outs,
        vec![Output::Refuse {
            conn: INB | 5,
            reason: Reason::TooManyPeers
        }]
    );
    assert!(!r.knows(INB | 5));
    // Another IP is not affected.
    assert_eq!(
        admit(&mut r, INB | 6, "10.1.1.2:40000", secs(1)),
        vec![Output::Admit { conn: INB | 6 }]
    );
    // A slot frees up when one of them ends.
    r.handle(
        Input::Closed {
            conn: INB | 1,
            reason: CloseReason::Eof,
        },
        secs(2),
    );
    assert_eq!(
        admit(&mut r, INB | 7, "10.1.1.1:40200", secs(2)),
        vec![Output::Admit { conn: INB | 7 }]
    );
    // IPv4-mapped sources count as the same IP.
    assert_eq!(
        admit(&mut r, INB | 8, "[::ffff:10.1.1.1]:40300", secs(2)),
        vec![Output::Refuse {
            conn: INB | 8,
            reason: Reason::TooManyPeers
        }]
    );
}

#[test]
fn a_listed_masternode_ip_gets_extra_room() {
    let mut r = registry("127.0.0.5:24100", &MN4);
    tick(&mut r, T0);
    // 127.0.0.3 hosts a listed masternode: four ordinary slots plus its own.
    for i in 0..5 {
        let conn = INB | (i + 1);
        let outs = admit(&mut r, conn, &format!("127.0.0.3:{}", 40_000 + i), secs(1));
        assert_eq!(outs, vec![Output::Admit { conn }], "connection {}", i + 1);
    }
    assert_eq!(
        admit(&mut r, INB | 6, "127.0.0.3:40100", secs(1)),
        vec![Output::Refuse {
            conn: INB | 6,
            reason: Reason::TooManyPeers
        }]
    );
    // The masternode can still complete its handshake on one of them.
    let outs = r.handle(
        Input::Handshaken {
            conn: INB | 5,
            hello: hello("127.0.0.3:24100", 3, 1),
        },
        secs(2),
    );
    assert_eq!(outs, vec![Output::Accept { conn: INB | 5 }]);
}

#[test]
fn maxpeers_keeps_room_for_the_listed_masternodes() {
    let list = ["127.0.0.2:24100", "127.0.0.3:24100", "127.0.0.4:24100"];
    let mut r = Registry::new(
        Settings {
            maxpeers: 3,
            ..settings("127.0.0.2:24100")
        },
        addrs(&list),
        Vec::new(),
    );
    let outs = tick(&mut r, T0);
    let c3 = dial_to(&outs, "127.0.0.3:24100");
    let c4 = dial_to(&outs, "127.0.0.4:24100");
    // Two non-masternodes handshake first: only one fits (3 - 2 listed = 1).
    let outs = inbound(&mut r, INB | 1, "10.0.0.1:24100", 101, 1, secs(1));
    assert_eq!(accepts(&outs), vec![INB | 1]);
    let outs = inbound(&mut r, INB | 2, "10.0.0.2:24100", 102, 1, secs(1));
    assert_eq!(
        outs,
        vec![Output::Close {
            conn: INB | 2,
            reason: Reason::TooManyPeers
        }]
    );
    // Both masternodes still get in.
    establish_outbound(&mut r, c3, "127.0.0.3:24100", 3, secs(2));
    establish_outbound(&mut r, c4, "127.0.0.4:24100", 4, secs(2));
    let info = r.consensus_info(secs(2));
    assert_eq!(info.connected_peers, 3);
    assert_eq!(info.active_masternodes, 3);
    // And still no room for another non-masternode.
    let outs = inbound(&mut r, INB | 3, "10.0.0.3:24100", 103, 1, secs(3));
    assert_eq!(
        outs,
        vec![Output::Close {
            conn: INB | 3,
            reason: Reason::TooManyPeers
        }]
    );
}

#[test]
fn maxpeers_with_masternodes_first() {
    let list = ["127.0.0.2:24100", "127.0.0.3:24100", "127.0.0.4:24100"];
    let mut r = Registry::new(
        Settings {
            maxpeers: 3,
            ..settings("127.0.0.2:24100")
        },
        addrs(&list),
        Vec::new(),
    );
    let outs = tick(&mut r, T0);
    establish_outbound(
        &mut r,
        dial_to(&outs, "127.0.0.3:24100"),
        "127.0.0.3:24100",
        3,
        secs(1),
    );
    establish_outbound(
        &mut r,
        dial_to(&outs, "127.0.0.4:24100"),
        "127.0.0.4:24100",
        4,
        secs(1),
    );
    let outs = inbound(&mut r, INB | 1, "10.0.0.1:24100", 101, 1, secs(2));
    assert_eq!(accepts(&outs), vec![INB | 1]);
    let outs = inbound(&mut r, INB | 2, "10.0.0.2:24100", 102, 1, secs(2));
    assert_eq!(closes(&outs), vec![(INB | 2, Reason::TooManyPeers)]);
}

// ---------------------------------------------------------------------------------------------
// List changes
// ---------------------------------------------------------------------------------------------

#[test]
fn set_peers_disconnects_removed_and_dials_added_masternodes() {
    let mut r = registry(
        "127.0.0.2:24100",
        &["127.0.0.2:24100", "127.0.0.3:24100", "127.0.0.4:24100"],
    );
    let outs = tick(&mut r, T0);
    let c3 = dial_to(&outs, "127.0.0.3:24100");
    let c4 = dial_to(&outs, "127.0.0.4:24100");
    establish_outbound(&mut r, c3, "127.0.0.3:24100", 3, secs(1));
    establish_outbound(&mut r, c4, "127.0.0.4:24100", 4, secs(1));

    // .4 removed; .5 (higher: we dial) and .1 (lower: we wait) added.
    let now = secs(10);
    let outs = r.handle(
        Input::SetPeers {
            masternodes: addrs(&[
                "127.0.0.1:24100",
                "127.0.0.2:24100",
                "127.0.0.3:24100",
                "127.0.0.5:24100",
            ]),
            addnodes: Vec::new(),
        },
        now,
    );
    assert_eq!(closes(&outs), vec![(c4, Reason::Unlisted)]);
    assert_eq!(dialed(&outs), addrs(&["127.0.0.5:24100"]));
    assert_eq!(r.consensus_info(now).total_masternodes, 4);
    let listed: Vec<String> = r
        .masternode_status(now)
        .into_iter()
        .map(|m| m.address)
        .collect();
    assert_eq!(
        listed,
        vec!["127.0.0.1:24100", "127.0.0.3:24100", "127.0.0.5:24100"]
    );
    assert_eq!(
        status_of(&r, "127.0.0.1:24100", now).state,
        "waiting_inbound"
    );
    // The grace for the new lower masternode counts from the change.
    assert_eq!(r.next_deadline(), Some(now + secs(60)));
    assert_eq!(
        dialed(&tick(&mut r, now + secs(60))),
        addrs(&["127.0.0.1:24100"])
    );

    // The removed peer's session ends: no redial.
    let outs = r.handle(
        Input::Closed {
            conn: c4,
            reason: CloseReason::Local(Reason::Unlisted),
        },
        now + secs(61),
    );
    assert!(outs.is_empty(), "{outs:?}");
    assert!(dials(&tick(&mut r, now + secs(1000))).is_empty());
}

#[test]
fn set_peers_with_the_same_list_changes_nothing() {
    let mut r = registry("127.0.0.2:24100", &MN4);
    let outs = tick(&mut r, T0);
    let c3 = dial_to(&outs, "127.0.0.3:24100");
    establish_outbound(&mut r, c3, "127.0.0.3:24100", 3, secs(1));
    let outs = r.handle(
        Input::SetPeers {
            masternodes: addrs(&MN4),
            addnodes: Vec::new(),
        },
        secs(5),
    );
    assert!(outs.is_empty(), "{outs:?}");
}

#[test]
fn set_peers_removing_an_addnode_disconnects_it() {
    let mut r = Registry::new(
        settings("10.0.0.1:24100"),
        Vec::new(),
        addrs(&["10.0.0.9:24100"]),
    );
    let c = dial_to(&tick(&mut r, T0), "10.0.0.9:24100");
    establish_outbound(&mut r, c, "10.0.0.9:24100", 9, secs(1));
    let outs = r.handle(
        Input::SetPeers {
            masternodes: Vec::new(),
            addnodes: Vec::new(),
        },
        secs(2),
    );
    assert_eq!(closes(&outs), vec![(c, Reason::Unlisted)]);
}

// ---------------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------------

#[test]
fn shutdown_without_connections_stops_at_once() {
    let mut r = registry("127.0.0.5:24100", &MN4);
    assert!(tick(&mut r, T0).is_empty());
    assert_eq!(r.handle(Input::Shutdown, secs(1)), vec![Output::Stopped]);
    assert_eq!(r.next_deadline(), None);
    assert!(
        r.handle(Input::Shutdown, secs(2)).is_empty(),
        "Stopped only once"
    );
    assert!(
        tick(&mut r, secs(100)).is_empty(),
        "no fallback dials after shutdown"
    );
}

#[test]
fn shutdown_closes_everything_then_stops() {
    let mut r = registry("127.0.0.2:24100", &MN4);
    let outs = tick(&mut r, T0);
    let c3 = dial_to(&outs, "127.0.0.3:24100"); // will be established
    let c4 = dial_to(&outs, "127.0.0.4:24100"); // still dialing
    let c5 = dial_to(&outs, "127.0.0.5:24100"); // connected, handshaking
    establish_outbound(&mut r, c3, "127.0.0.3:24100", 3, secs(1));
    r.handle(Input::Confirmed { conn: c3 }, secs(1));
    r.handle(Input::Connected { conn: c5 }, secs(1));
    // An inbound connection in its handshake, and one that lost as a duplicate.
    assert_eq!(
        admit(&mut r, INB | 1, "10.0.0.1:40000", secs(1)),
        vec![Output::Admit { conn: INB | 1 }]
    );
    let outs = inbound(&mut r, INB | 2, "127.0.0.3:24100", 3, 9, secs(1));
    assert_eq!(closes(&outs), vec![(INB | 2, Reason::Duplicate)]);

    let outs = r.handle(Input::Shutdown, secs(2));
    let mut closed = closes(&outs);
    closed.sort_by_key(|(c, _)| *c);
    let mut expected = vec![
        (c3, Reason::Shutdown),
        (c4, Reason::Shutdown),
        (c5, Reason::Shutdown),
        (INB | 1, Reason::Shutdown),
    ];
    expected.sort_by_key(|(c, _)| *c);
    assert_eq!(closed, expected, "{outs:?}");
    assert!(!outs.contains(&Output::Stopped));
    assert!(dials(&outs).is_empty());
    // The dialing one is abandoned: forgotten at once.
    assert!(!r.knows(c4));
    assert_eq!(r.next_deadline(), None);

    // Nothing new starts.
    assert!(tick(&mut r, secs(3)).is_empty());
    assert_eq!(
        admit(&mut r, INB | 3, "10.0.0.2:40000", secs(3)),
        vec![Output::Refuse {
            conn: INB | 3,
            reason: Reason::Shutdown
        }]
    );
    // A late report about the abandoned dial changes nothing.
    assert!(fail(&mut r, c4, secs(3)).is_empty());
    // A handshake finishing now is closed, not accepted.
    let outs = r.handle(
        Input::Handshaken {
            conn: c5,
            hello: hello("127.0.0.5:24100", 5, c5),
        },
        secs(3),
    );
    assert!(accepts(&outs).is_empty(), "{outs:?}");

    // Stopped once every session has reported its end.
    let mut pending = vec![c3, c5, INB | 1, INB | 2];
    while let Some(conn) = pending.pop() {
        let outs = r.handle(
            Input::Closed {
                conn,
                reason: CloseReason::Local(Reason::Shutdown),
            },
            secs(4),
        );
        assert!(dials(&outs).is_empty());
        if pending.is_empty() {
            assert_eq!(outs, vec![Output::Stopped]);
        } else {
            assert!(outs.is_empty(), "{outs:?}");
        }
    }
    assert!(tick(&mut r, secs(5)).is_empty(), "Stopped only once");
}

#[test]
fn shutdown_with_only_dialing_connections_stops_at_once() {
    let mut r = registry("127.0.0.2:24100", &MN4);
    tick(&mut r, T0);
    let outs = r.handle(Input::Shutdown, secs(1));
    assert_eq!(closes(&outs).len(), 3);
    assert_eq!(outs.last(), Some(&Output::Stopped));
    assert_eq!(outs.iter().filter(|o| **o == Output::Stopped).count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Property: the direction rule
// ---------------------------------------------------------------------------------------------

fn node_address() -> impl Strategy<Value = SocketAddr> {
    let port = prop_oneof![Just(24100u16), Just(24101u16), 1u16..=65535];
    prop_oneof![
        // Loopback IPv4.
        (any::<[u8; 3]>(), port.clone())
            .prop_map(|(b, p)| SocketAddr::from(([127, b[0], b[1], b[2]], p))),
        // IPv6.
        (any::<u128>(), port.clone())
            .prop_map(|(ip, p)| SocketAddr::from((std::net::Ipv6Addr::from(ip), p))),
        // IPv4-mapped IPv6 of a loopback address (canonically the IPv4 one).
        (1u8..=20, port).prop_map(|(b, p)| SocketAddr::from((
            std::net::Ipv4Addr::new(127, 0, 0, b).to_ipv6_mapped(),
            p
        ))),
    ]
}

fn masternode_list() -> impl Strategy<Value = Vec<SocketAddr>> {
    prop::collection::vec(node_address(), 2..10)
        .prop_map(|v| {
            // Distinct nodes (after canonicalization), each in a form it might be listed in.
            let mut seen = std::collections::BTreeSet::new();
            v.into_iter()
                .filter(|a| seen.insert(canonical(*a)))
                .collect::<Vec<_>>()
        })
        .prop_filter("at least two distinct nodes", |v| v.len() >= 2)
        .prop_filter("no unspecified addresses", |v| {
            v.iter().all(|a| !canonical(*a).ip().is_unspecified())
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn exactly_one_of_each_pair_dials_at_time_zero(list in masternode_list()) {
        // Each node knows itself canonically (as the configuration gives it).
        let dialed_by: Vec<(SocketAddr, Vec<SocketAddr>)> = list
            .iter()
            .map(|me| {
                let me = canonical(*me);
                let mut r = Registry::new(settings_for(Some(me)), list.clone(), Vec::new());
                prop_assert!(r.is_masternode());
                let outs = r.handle(Input::Tick, T0);
                Ok((me, dialed(&outs)))
            })
            .collect::<Result<_, TestCaseError>>()?;
        for (x, x_dials) in &dialed_by {
            prop_assert!(!x_dials.contains(x), "{} dials itself", x);
            for (y, y_dials) in &dialed_by {
                if x == y {
                    continue;
                }
                let x_to_y = x_dials.contains(y);
                let y_to_x = y_dials.contains(x);
                prop_assert!(
                    x_to_y != y_to_x,
                    "{} dials {}: {}, {} dials {}: {}",
                    x, y, x_to_y, y, x, y_to_x
                );
                // And it is the lower one, numerically.
                prop_assert_eq!(x_to_y, crate::rules::order_key(*x) < crate::rules::order_key(*y));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Extra admission and session checks
// ---------------------------------------------------------------------------------------------

#[test]
fn live_connections_are_capped_at_maxpeers_plus_the_handshake_slack() {
    let mut r = Registry::new(
        Settings {
            maxpeers: 2,
            ..settings("10.0.0.1:24100")
        },
        Vec::new(),
        Vec::new(),
    );
    let cap = 2 + HANDSHAKE_SLACK as u64;
    for i in 0..cap {
        let conn = INB | (i + 1);
        let remote = format!("10.2.{}.{}:40000", i / 200, i % 200 + 1);
        assert_eq!(
            admit(&mut r, conn, &remote, secs(1)),
            vec![Output::Admit { conn }]
        );
    }
    let outs = admit(&mut r, INB | 1000, "10.3.0.1:40000", secs(1));
    assert_eq!(
        outs,
        vec![Output::Refuse {
            conn: INB | 1000,
            reason: Reason::TooManyPeers
        }]
    );
}

// ---------------------------------------------------------------------------------------------
// Property: random inputs keep the registry's invariants
// ---------------------------------------------------------------------------------------------

/// Peers of the random walk: two listed masternodes around us (local .3), an addnode, and a
/// stranger.
const WALK_PEERS: [&str; 4] = [
    "127.0.0.2:24100",
    "127.0.0.4:24100",
    "10.0.0.9:24100",
    "10.0.0.7:24100",
];

#[derive(Clone, Debug)]
enum Step {
    Tick(u64),
    Fail(usize),
    Connect(usize),
    HandshakeOut(usize, bool),
    Inbound(usize),
    HandshakeIn(usize, bool, u64),
    Close(usize, u8),
    Confirm(usize),
    Restart(usize),
    SetPeers(bool, bool),
    Shutdown,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        16 => (0u64..90_000).prop_map(Step::Tick),
        8 => any::<usize>().prop_map(Step::Fail),
        8 => any::<usize>().prop_map(Step::Connect),
        12 => (any::<usize>(), any::<bool>()).prop_map(|(i, s)| Step::HandshakeOut(i, s)),
        12 => (0..WALK_PEERS.len()).prop_map(Step::Inbound),
        12 => (any::<usize>(), any::<bool>(), 0u64..4).prop_map(|(i, s, q)| Step::HandshakeIn(i, s, q)),
        12 => (any::<usize>(), any::<u8>()).prop_map(|(i, r)| Step::Close(i, r)),
        8 => any::<usize>().prop_map(Step::Confirm),
        4 => (0..WALK_PEERS.len()).prop_map(Step::Restart),
        4 => (any::<bool>(), any::<bool>()).prop_map(|(a, b)| Step::SetPeers(a, b)),
        1 => Just(Step::Shutdown),
    ]
}

/// What the test driver knows of one connection.
#[derive(Clone, Debug)]
struct Driven {
    conn: ConnId,
    peer: SocketAddr,
    outbound: bool,
    connected: bool,
    handshaken: bool,
    /// The registry accepted it (only then may its session report `Confirmed`).
    accepted: bool,
}

fn pick(list: &[Driven], i: usize, want: impl Fn(&Driven) -> bool) -> Option<Driven> {
    let candidates: Vec<&Driven> = list.iter().filter(|d| want(d)).collect();
    if candidates.is_empty() {
        None
    } else {
        Some(candidates[i % candidates.len()].clone())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_inputs_keep_the_registry_invariants(steps in prop::collection::vec(step(), 1..80)) {
        let local = addr("127.0.0.3:24100");
        let masternodes = addrs(&["127.0.0.2:24100", "127.0.0.3:24100", "127.0.0.4:24100"]);
        let addnodes = addrs(&["10.0.0.9:24100"]);
        let mut r = Registry::new(settings("127.0.0.3:24100"), masternodes.clone(), addnodes.clone());
        let mut now = T0;
        let mut boots = [1u64, 1, 1, 1];
        let mut driven: Vec<Driven> = Vec::new();
        let mut next_inbound = 1u64;
        let mut shut_down = false;
        let mut stopped = 0;
        let mut listed = masternodes.clone();
        let mut waiting_since_lower = Some(T0); // for 127.0.0.2, the lower masternode
        for step in steps {
            let (input, handshaken_now): (Input, Option<ConnId>) = match step {
                Step::Tick(d) => {
                    now += ms(d);
                    (Input::Tick, None)
                }
                Step::Fail(i) => match pick(&driven, i, |d| d.outbound && !d.handshaken) {
                    Some(d) if !d.connected => {
                        driven.retain(|x| x.conn != d.conn);
                        (Input::DialFailed { conn: d.conn, error: "refused".into() }, None)
                    }
                    _ => (Input::Tick, None),
                },
                Step::Connect(i) => match pick(&driven, i, |d| d.outbound && !d.connected) {
                    Some(d) => {
                        driven.iter_mut().find(|x| x.conn == d.conn).unwrap().connected = true;
                        (Input::Connected { conn: d.conn }, None)
                    }
                    None => (Input::Tick, None),
                },
                Step::HandshakeOut(i, stale) => {
                    match pick(&driven, i, |d| d.outbound && d.connected && !d.handshaken) {
                        Some(d) => {
                            driven.iter_mut().find(|x| x.conn == d.conn).unwrap().handshaken = true;
                            let k = WALK_PEERS.iter().position(|p| addr(p) == d.peer).unwrap();
                            let boot = if stale { boots[k].saturating_sub(1).max(1) } else { boots[k] };
                            let h = PeerHello { addr: d.peer, ..hello(WALK_PEERS[k], boot, d.conn) };
                            (Input::Handshaken { conn: d.conn, hello: h }, Some(d.conn))
                        }
                        None => (Input::Tick, None),
                    }
                }
                Step::Inbound(k) => {
                    let conn = INB | next_inbound;
                    next_inbound += 1;
                    let peer = addr(WALK_PEERS[k]);
                    driven.push(Driven { conn, peer, outbound: false, connected: true, handshaken: false, accepted: false });
                    let remote = SocketAddr::new(peer.ip(), 40_000 + next_inbound as u16);
                    (Input::Inbound { conn, remote }, None)
                }
                Step::HandshakeIn(i, stale, seq) => {
                    match pick(&driven, i, |d| !d.outbound && !d.handshaken) {
                        Some(d) if r.knows(d.conn) => {
                            driven.iter_mut().find(|x| x.conn == d.conn).unwrap().handshaken = true;
                            let k = WALK_PEERS.iter().position(|p| addr(p) == d.peer).unwrap();
                            let boot = if stale { boots[k].saturating_sub(1).max(1) } else { boots[k] };
                            (
                                Input::Handshaken { conn: d.conn, hello: hello(WALK_PEERS[k], boot, seq) },
                                Some(d.conn),
                            )
                        }
                        _ => (Input::Tick, None),
                    }
                }
                Step::Close(i, code) => match pick(&driven, i, |d| d.connected) {
                    Some(d) => {
                        driven.retain(|x| x.conn != d.conn);
                        let reason = match code % 4 {
                            0 => CloseReason::Eof,
                            1 => CloseReason::Local(Reason::from_code(code % 11)),
                            2 => CloseReason::Remote(Reason::from_code(code % 11)),
                            _ => CloseReason::Io("reset".into()),
                        };
                        (Input::Closed { conn: d.conn, reason }, None)
                    }
                    None => (Input::Tick, None),
                },
                Step::Confirm(i) => match pick(&driven, i, |d| d.accepted) {
                    Some(d) => (Input::Confirmed { conn: d.conn }, None),
                    None => (Input::Tick, None),
                },
                Step::Restart(k) => {
                    boots[k] += 1;
                    (Input::Tick, None)
                }
                Step::SetPeers(keep_lower, keep_higher) => {
                    let mut mns = vec![local];
                    if keep_lower {
                        mns.push(addr("127.0.0.2:24100"));
                    }
                    if keep_higher {
                        mns.push(addr("127.0.0.4:24100"));
                    }
                    let lower_was_listed = listed.contains(&addr("127.0.0.2:24100"));
                    if keep_lower && !lower_was_listed {
                        waiting_since_lower = Some(now);
                    }
                    if !keep_lower {
                        waiting_since_lower = None;
                    }
                    listed = mns.clone();
                    (Input::SetPeers { masternodes: mns, addnodes: addnodes.clone() }, None)
                }
                Step::Shutdown => {
                    shut_down = true;
                    (Input::Shutdown, None)
                }
            };
            let is_handshake = handshaken_now;
            let outs = r.handle(input.clone(), now);

            // Carry out the outputs in the driver's book.
            for o in &outs {
                match o {
                    Output::Dial { conn, addr } => {
                        prop_assert!(!shut_down, "dial after shutdown: {:?}", o);
                        prop_assert!(*conn & INB == 0);
                        prop_assert!(!driven.iter().any(|d| d.conn == *conn), "conn id reused: {:?}", o);
                        prop_assert_ne!(*addr, local);
                        prop_assert!(
                            listed.contains(addr) || addnodes.contains(addr),
                            "dial to an unlisted peer: {:?}", o
                        );
                        if *addr == addr_lower() {
                            if let Some(since) = waiting_since_lower {
                                prop_assert!(
                                    now >= since + secs(60),
                                    "dialed the lower masternode within the grace: {:?} at {:?}", o, now
                                );
                            }
                        }
                        driven.push(Driven { conn: *conn, peer: *addr, outbound: true, connected: false, handshaken: false, accepted: false });
                    }
                    Output::Refuse { conn, .. } => {
                        prop_assert!(!r.knows(*conn));
                        driven.retain(|d| d.conn != *conn);
                    }
                    Output::Admit { conn } => {
                        let admitted = matches!(input, Input::Inbound { conn: c, .. } if c == *conn);
                        prop_assert!(admitted, "admit of another connection: {:?}", o);
                    }
                    Output::Accept { conn } => {
                        // Or a loser kept open for its winner, which ended unconfirmed.
                        let rescued = matches!(input, Input::Closed { .. })
                            && driven.iter().any(|d| d.conn == *conn && d.handshaken && !d.accepted);
                        prop_assert!(
                            Some(*conn) == is_handshake || rescued,
                            "accept of a connection not just handshaken: {:?}", o
                        );
                        if let Some(d) = driven.iter_mut().find(|d| d.conn == *conn) {
                            d.accepted = true;
                        }
                    }
                    Output::Close { conn, reason } => {
                        if !r.knows(*conn) {
                            // Abandoned while dialing (or a late handshake after shutdown).
                            driven.retain(|d| d.conn != *conn);
                        }
                        if *reason == Reason::Duplicate {
                            // A loser is closed only once its winner is established.
                            let peer = driven.iter().find(|d| d.conn == *conn).map(|d| d.peer);
                            if let Some(peer) = peer {
                                let winner = r.conns.iter().any(|(id, c)| {
                                    id != conn && c.state == ConnState::Established && c.peer == Some(peer)
                                });
                                prop_assert!(winner, "{:?} closed as duplicate without an established winner", conn);
                            }
                        }
                    }
                    Output::Stopped => {
                        stopped += 1;
                        prop_assert!(shut_down);
                        prop_assert!(r.conns.is_empty());
                    }
                }
            }
            prop_assert!(stopped <= 1, "Stopped twice");

            // At most one established connection and one live dial per peer.
            let mut established = std::collections::BTreeMap::<SocketAddr, usize>::new();
            let mut outbound_live = std::collections::BTreeMap::<SocketAddr, usize>::new();
            for c in r.conns.values() {
                if let Some(p) = c.peer {
                    if c.state == ConnState::Established {
                        *established.entry(p).or_default() += 1;
                    }
                    if c.live() && c.direction == Direction::Outbound {
                        *outbound_live.entry(p).or_default() += 1;
                    }
                }
            }
            prop_assert!(established.values().all(|n| *n <= 1), "{:?}", established);
            prop_assert!(outbound_live.values().all(|n| *n <= 1), "{:?}", outbound_live);

            // The status views agree with each other.
            let info = r.consensus_info(now);
            prop_assert_eq!(info.connected_peers, r.peers(now).len());
            prop_assert_eq!(info.connected_peers, info.inbound + info.outbound);
            prop_assert!(info.active_masternodes <= info.total_masternodes);

            // The next deadline is in the future (a deadline in the past would spin the loop).
            if let Some(d) = r.next_deadline() {
                prop_assert!(d > now, "next deadline {:?} not after now {:?}", d, now);
            }
        }
    }
}

fn addr_lower() -> SocketAddr {
    addr("127.0.0.2:24100")
}

/// Strangers' half-open connections fill the handshake slack, but a listed masternode's IP
/// is still let in to its handshake (where its reserved slot is decided).
#[test]
fn a_listed_masternode_is_admitted_past_a_full_handshake_slack() {
    let mut r = Registry::new(
        Settings {
            maxpeers: 2,
            ..settings("10.0.0.5:24100")
        },
        addrs(&["10.0.0.5:24100", "10.0.0.1:24100"]),
        Vec::new(),
    );
    let mut refused_stranger = false;
    for i in 0..40u64 {
        let remote = SocketAddr::new(format!("192.0.2.{}", 10 + i).parse().unwrap(), 40_000);
        let out = r.handle(
            Input::Inbound {
                conn: INB | (100 + i),
                remote,
            },
            T0,
        );
        refused_stranger |= matches!(
            out.as_slice(),
            [Output::Refuse {
                reason: Reason::TooManyPeers,
                ..
            }]
        );
    }
    assert!(refused_stranger, "the global cap must bite for strangers");
    let remote = addr("10.0.0.1:51000");
    assert_eq!(
        r.handle(
            Input::Inbound {
                conn: INB | 1,
                remote
            },
            T0
        ),
        vec![Output::Admit { conn: INB | 1 }]
    );
}
