//! Unit tests of the session state machine: handshake, verdict, liveness, rejections and the
//! graceful close, driven with bytes and virtual time only.

use super::*;

use std::net::SocketAddr;

use proptest::prelude::*;

use crate::fuzz::Invariants;
use crate::wire::{HEADER_LEN, MAX_FRAME};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const NET: Network = Network::Testnet;
const BOOT_A: u64 = 0xA11CE;
const BOOT_B: u64 = 0xB0B;
/// The ephemeral source port of A's dials, as B sees it.
const A_SOURCE_PORT: u16 = 40_000;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn info(address: &str, boot_id: u64) -> LocalInfo {
    LocalInfo {
        network: NET,
        addr: addr(address),
        boot_id,
        masternode: true,
        agent: "timed/test".into(),
        handshake_timeout: secs(10),
        ping_interval: secs(30),
        ping_timeout: secs(90),
    }
}

/// Node A, the lower address (the dialer in most tests).
fn node_a() -> LocalInfo {
    info("127.0.0.2:24100", BOOT_A)
}

/// Node B, the higher address.
fn node_b() -> LocalInfo {
    info("127.0.0.3:24100", BOOT_B)
}

/// The TCP source address of a dial from `local` (its IP, an ephemeral port). A node that
/// does not know its own IP dials from A's.
fn source_of(local: &LocalInfo) -> SocketAddr {
    let ip = if local.addr.ip().is_unspecified() {
        node_a().addr.ip()
    } else {
        local.addr.ip()
    };
    SocketAddr::new(ip, A_SOURCE_PORT)
}

/// A's outbound session to B and B's inbound session from A, as freshly connected.
fn connect(a: LocalInfo, b: LocalInfo, seq: u64, now: Duration) -> (Session, Session) {
    let target = b.addr;
    let source = source_of(&a);
    (
        Session::outbound(a, target, seq, now),
        Session::inbound(b, source, now),
    )
}

fn drain_events(s: &mut Session) -> Vec<SessionEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn take_output(s: &mut Session) -> Vec<u8> {
    let out = s.pending_output().to_vec();
    s.consume_output(out.len());
    out
}

/// Decodes every complete frame of `bytes` (which must hold only valid, whole frames).
fn frames(bytes: &[u8]) -> Vec<Message> {
    let mut decoder = FrameDecoder::new(NET);
    let mut input = bytes;
    let mut msgs = Vec::new();
    while let Some(msg) = decoder.decode(&mut input).expect("our output is valid") {
        msgs.push(msg);
    }
    assert!(input.is_empty());
    assert_eq!(
        decoder.buffered(),
        0,
        "output ends in the middle of a frame"
    );
    msgs
}

fn frame(msg: &Message) -> Vec<u8> {
    wire::encode(NET, msg)
}

/// A virtual TCP connection between `a` and `b`: moves bytes both ways and turns a session's
/// FIN into the other's EOF, until nothing moves any more. Returns the events of each side.
fn pump(a: &mut Session, b: &mut Session, now: Duration) -> (Vec<SessionEvent>, Vec<SessionEvent>) {
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    for _ in 0..10_000 {
        let mut moved = false;
        let out_a = take_output(a);
        if !out_a.is_empty() {
            moved = true;
            b.on_data(&out_a, now);
        }
        let out_b = take_output(b);
        if !out_b.is_empty() {
            moved = true;
            a.on_data(&out_b, now);
        }
        if a.wants_fin() {
            moved = true;
            a.fin_sent();
            b.on_eof(now);
        }
        if b.wants_fin() {
            moved = true;
            b.fin_sent();
            a.on_eof(now);
        }
        ea.extend(drain_events(a));
        eb.extend(drain_events(b));
        if !moved {
            return (ea, eb);
        }
    }
    panic!("the two sessions never went quiet");
}

fn handshakens(events: &[SessionEvent]) -> Vec<PeerHello> {
    events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Handshaken(h) => Some(h.clone()),
            _ => None,
        })
        .collect()
}

fn closeds(events: &[SessionEvent]) -> Vec<CloseReason> {
    events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Closed(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

fn rejecteds(events: &[SessionEvent]) -> Vec<Reason> {
    events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Rejected { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

fn rtts(events: &[SessionEvent]) -> Vec<Option<Duration>> {
    events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Heard { rtt } => Some(*rtt),
            _ => None,
        })
        .collect()
}

/// A and B with a completed handshake, both accepted, the first ping/pong exchanged, all
/// events drained. A dialed B with `seq` 7.
fn established_pair(now: Duration) -> (Session, Session) {
    let (mut a, mut b) = connect(node_a(), node_b(), 7, now);
    let (ea, eb) = pump(&mut a, &mut b, now);
    assert_eq!(handshakens(&ea).len(), 1);
    assert_eq!(handshakens(&eb).len(), 1);
    a.accept(now);
    b.accept(now);
    pump(&mut a, &mut b, now);
    assert!(a.is_established() && b.is_established());
    (a, b)
}

/// A `Hello` as A would send it to B.
fn hello_of(local: &LocalInfo, seq: u64) -> Hello {
    Hello {
        network: local.network,
        version: PROTOCOL_VERSION,
        min_version: MIN_PROTOCOL_VERSION,
        addr: local.addr,
        boot_id: local.boot_id,
        seq,
        masternode: local.masternode,
        agent: local.agent.clone(),
    }
}

/// A fresh inbound session of B for a dial from A.
fn inbound_b(now: Duration) -> Session {
    Session::inbound(node_b(), source_of(&node_a()), now)
}

/// Asserts the graceful close sequence on a session that has just closed itself at `now`:
/// the `Disconnect` drains, then the FIN is wanted, then the peer's EOF ends it; bytes arriving
/// meanwhile are discarded without events.
fn assert_graceful_close(s: &mut Session, now: Duration) {
    assert!(s.is_closing());
    assert!(!s.is_done());
    assert!(!s.is_established());
    if !s.pending_output().is_empty() {
        assert!(!s.wants_fin(), "FIN before the queued bytes were written");
        let n = s.pending_output().len();
        // Partial writes do not make the FIN due either.
        s.consume_output(n - 1);
        assert!(!s.wants_fin());
        s.consume_output(1);
    }
    assert!(s.wants_fin());
    s.on_data(b"late bytes from the peer, discarded", now);
    s.on_data(&frame(&Message::Ping(1)), now);
    assert!(drain_events(s).is_empty(), "data while closing made events");
    assert!(
        s.pending_output().is_empty(),
        "data while closing was answered"
    );
    s.fin_sent();
    assert!(!s.wants_fin());
    assert!(
        !s.is_done(),
        "done before the peer's FIN or the drain deadline"
    );
    s.on_eof(now);
    assert!(s.is_done());
    assert_eq!(s.next_deadline(), None);
    assert!(drain_events(s).is_empty());
}

/// Asserts that `s` rejected its peer with `reason`: exactly one `Rejected`, one
/// `Closed(Local(reason))`, no handshake, a `Disconnect(reason)` as the last frame queued, and
/// then the graceful close sequence.
fn assert_rejected(s: &mut Session, reason: Reason, now: Duration) {
    let events = drain_events(s);
    assert_eq!(rejecteds(&events), vec![reason], "{events:?}");
    assert_eq!(
        closeds(&events),
        vec![CloseReason::Local(reason)],
        "{events:?}"
    );
    assert!(handshakens(&events).is_empty(), "{events:?}");
    // The rejection is reported before the close.
    let rejected_at = events
        .iter()
        .position(|e| matches!(e, SessionEvent::Rejected { .. }));
    let closed_at = events
        .iter()
        .position(|e| matches!(e, SessionEvent::Closed(_)));
    assert!(rejected_at < closed_at, "{events:?}");
    let msgs = frames(s.pending_output());
    assert_eq!(msgs.last(), Some(&Message::Disconnect(reason)), "{msgs:?}");
    let disconnects = msgs
        .iter()
        .filter(|m| matches!(m, Message::Disconnect(_)))
        .count();
    assert_eq!(disconnects, 1, "{msgs:?}");
    assert_graceful_close(s, now);
}

/// Feeds `bytes` to a fresh inbound session of B and asserts it rejects them with `reason`.
fn assert_inbound_rejects(bytes: &[u8], reason: Reason) {
    let mut s = inbound_b(Duration::ZERO);
    s.on_data(bytes, ms(5));
    assert_rejected(&mut s, reason, ms(5));
}

// ---------------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------------

#[test]
fn clean_handshake_reports_each_side_to_the_other_once() {
    let now = secs(3);
    let (mut a, mut b) = connect(node_a(), node_b(), 7, now);
    assert_eq!(a.direction(), Direction::Outbound);
    assert_eq!(b.direction(), Direction::Inbound);
    // The dialer speaks first; the acceptor waits.
    assert!(matches!(
        frames(a.pending_output()).as_slice(),
        [Message::Hello(_)]
    ));
    assert!(b.pending_output().is_empty());

    let (ea, eb) = pump(&mut a, &mut b, now);
    assert_eq!(
        ea,
        vec![SessionEvent::Handshaken(PeerHello {
            addr: node_b().addr,
            addr_known: true,
            boot_id: BOOT_B,
            seq: 7, // the acceptor echoes the dialer's seq
            masternode: true,
            version: PROTOCOL_VERSION,
            agent: "timed/test".into(),
        })]
    );
    assert_eq!(
        eb,
        vec![SessionEvent::Handshaken(PeerHello {
            addr: node_a().addr,
            addr_known: true,
            boot_id: BOOT_A,
            seq: 7,
            masternode: true,
            version: PROTOCOL_VERSION,
            agent: "timed/test".into(),
        })]
    );
    // Waiting for the registry's verdict: not established, nothing more to say.
    assert!(!a.is_established() && !b.is_established());
    assert!(!a.is_closing() && !b.is_closing());
    assert!(a.pending_output().is_empty() && b.pending_output().is_empty());
}

#[test]
fn handshake_completes_when_bytes_arrive_one_at_a_time() {
    let now = secs(1);
    let (mut a, mut b) = connect(node_a(), node_b(), 1, now);
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    for _ in 0..100 {
        for byte in take_output(&mut a) {
            b.on_data(&[byte], now);
        }
        for byte in take_output(&mut b) {
            a.on_data(&[byte], now);
        }
        ea.extend(drain_events(&mut a));
        eb.extend(drain_events(&mut b));
    }
    assert_eq!(handshakens(&ea).len(), 1);
    assert_eq!(handshakens(&eb).len(), 1);
    assert!(closeds(&ea).is_empty() && closeds(&eb).is_empty());
}

#[test]
fn accept_establishes_and_the_immediate_ping_measures_the_rtt() {
    let t0 = secs(5);
    let (mut a, mut b) = connect(node_a(), node_b(), 7, t0);
    pump(&mut a, &mut b, t0);
    a.accept(t0);
    b.accept(t0);
    assert!(a.is_established() && b.is_established());
    // Accepting counts as hearing from the peer, and pings at once.
    assert_eq!(
        drain_events(&mut a),
        vec![SessionEvent::Heard { rtt: None }]
    );
    assert_eq!(
        drain_events(&mut b),
        vec![SessionEvent::Heard { rtt: None }]
    );
    assert!(matches!(
        frames(a.pending_output()).as_slice(),
        [Message::Ping(_)]
    ));
    assert!(matches!(
        frames(b.pending_output()).as_slice(),
        [Message::Ping(_)]
    ));

    // The pongs come back 3 ms later.
    let t1 = t0 + ms(3);
    let (ea, eb) = pump(&mut a, &mut b, t1);
    assert_eq!(rtts(&ea), vec![Some(ms(3))], "{ea:?}");
    assert_eq!(rtts(&eb), vec![Some(ms(3))], "{eb:?}");
    assert!(closeds(&ea).is_empty() && closeds(&eb).is_empty());
    assert!(a.is_established() && b.is_established());
}

fn confirmations(events: &[SessionEvent]) -> usize {
    events
        .iter()
        .filter(|e| **e == SessionEvent::Confirmed)
        .count()
}

#[test]
fn each_end_is_confirmed_once_by_the_peers_first_ping_after_both_verdicts() {
    let t0 = secs(5);
    let (mut a, mut b) = connect(node_a(), node_b(), 7, t0);
    pump(&mut a, &mut b, t0);
    // A, the dialer, is accepted first; B's verdict is still out, so B has not pinged.
    a.accept(t0);
    let (ea, eb) = pump(&mut a, &mut b, t0);
    assert_eq!(confirmations(&ea), 0, "{ea:?}");
    // A's ping reached B before B's verdict: it proves A accepted, so B is confirmed the
    // moment its own verdict accepts.
    assert_eq!(confirmations(&eb), 0, "{eb:?}");
    b.accept(t0);
    assert_eq!(confirmations(&drain_events(&mut b)), 1);
    // B's first ping confirms A.
    let (ea, eb) = pump(&mut a, &mut b, t0 + ms(1));
    assert_eq!(confirmations(&ea), 1, "{ea:?}");
    assert_eq!(confirmations(&eb), 0, "{eb:?}");
    // Later pings confirm nothing more.
    let t1 = t0 + secs(30);
    a.on_tick(t1);
    b.on_tick(t1);
    let (ea, eb) = pump(&mut a, &mut b, t1);
    assert_eq!(confirmations(&ea) + confirmations(&eb), 0);
}

#[test]
fn a_session_the_registry_never_accepts_is_never_confirmed() {
    let t0 = secs(5);
    let (mut a, mut b) = connect(node_a(), node_b(), 7, t0);
    pump(&mut a, &mut b, t0);
    a.accept(t0);
    b.close(Reason::Duplicate, t0);
    let (ea, eb) = pump(&mut a, &mut b, t0);
    assert_eq!(confirmations(&ea) + confirmations(&eb), 0, "{ea:?} {eb:?}");
}

#[test]
fn accept_is_ignored_outside_the_verdict_wait() {
    let mut s = inbound_b(Duration::ZERO);
    s.accept(secs(1));
    assert!(!s.is_established());
    assert!(s.pending_output().is_empty());
    assert!(drain_events(&mut s).is_empty());
}

#[test]
fn pings_continue_every_ping_interval() {
    let (mut a, mut b) = established_pair(Duration::ZERO);
    let interval = node_a().ping_interval;
    for round in 1..=5u32 {
        let due = interval * round;
        // Nothing before the interval is over.
        a.on_tick(due - ms(1));
        assert!(a.pending_output().is_empty(), "round {round}: pinged early");
        assert_eq!(a.next_deadline(), Some(due));
        a.on_tick(due);
        assert!(
            matches!(frames(a.pending_output()).as_slice(), [Message::Ping(_)]),
            "round {round}"
        );
        // The pong arrives 10 ms later.
        let (ea, _) = pump(&mut a, &mut b, due + ms(10));
        assert_eq!(rtts(&ea), vec![Some(ms(10))], "round {round}: {ea:?}");
        assert!(a.is_established() && b.is_established());
    }
}

#[test]
fn busy_link_is_never_closed_for_timeout_even_when_pongs_are_late() {
    // B keeps sending (pings, even junk-free traffic) but never answers A's pings: A measures
    // no RTT, yet the link is alive, so it must not be closed.
    let (mut a, _b) = established_pair(Duration::ZERO);
    let timeout = node_a().ping_timeout;
    let mut now = Duration::ZERO;
    let mut nonce = 1000;
    while now < timeout * 5 {
        now += secs(5);
        a.on_tick(now);
        // B's bytes arrive (a ping of its own every 20 s) ...
        if now.as_secs() % 20 == 0 {
            nonce += 1;
            a.on_data(&frame(&Message::Ping(nonce)), now);
        }
        // ... but whatever A sends is never answered (B never reads).
        let _ = take_output(&mut a);
        let events = drain_events(&mut a);
        assert!(closeds(&events).is_empty(), "closed at {now:?}: {events:?}");
        assert!(rtts(&events).iter().all(|r| r.is_none()));
        assert!(a.is_established());
    }
}

#[test]
fn a_late_pong_still_keeps_the_link_and_is_not_counted_as_rtt() {
    let (mut a, mut b) = established_pair(Duration::ZERO);
    let interval = node_a().ping_interval;
    // A pings at 30 s; B answers only after A pinged again at 60 s.
    a.on_tick(interval);
    let first_ping = take_output(&mut a);
    a.on_tick(interval * 2);
    let second_ping = take_output(&mut a);
    b.on_data(&first_ping, interval * 2 + ms(1));
    let late_pong = take_output(&mut b);
    a.on_data(&late_pong, interval * 2 + ms(2));
    let events = drain_events(&mut a);
    assert!(rtts(&events).iter().all(|r| r.is_none()), "{events:?}");
    assert!(a.is_established());
    // The pong of the current ping does measure.
    b.on_data(&second_ping, interval * 2 + ms(3));
    let pong = take_output(&mut b);
    a.on_data(&pong, interval * 2 + ms(4));
    assert_eq!(rtts(&drain_events(&mut a)), vec![Some(ms(4))]);
}

#[test]
fn silent_link_times_out_after_ping_timeout() {
    let (_a, mut b) = established_pair(Duration::ZERO);
    let timeout = node_a().ping_timeout;
    // B hears from A for a while, then A goes silent at 20 s.
    let last = secs(20);
    b.on_data(&frame(&Message::Ping(99)), last);
    let _ = take_output(&mut b);
    let mut now = last;
    while now < last + timeout - secs(1) {
        now += secs(1);
        b.on_tick(now);
        let _ = take_output(&mut b);
        assert!(b.is_established(), "closed early at {now:?}");
    }
    drain_events(&mut b);
    b.on_tick(last + timeout);
    assert_eq!(
        drain_events(&mut b),
        vec![SessionEvent::Closed(CloseReason::Local(Reason::Timeout))]
    );
    assert_eq!(
        frames(b.pending_output()),
        vec![Message::Disconnect(Reason::Timeout)]
    );
    assert_graceful_close(&mut b, last + timeout);
}

// ---------------------------------------------------------------------------------------------
// Rejections
// ---------------------------------------------------------------------------------------------

#[test]
fn rejects_a_hello_of_the_wrong_network() {
    let mut hello = hello_of(&node_a(), 1);
    hello.network = Network::Mainnet;
    assert_inbound_rejects(&frame(&Message::Hello(hello)), Reason::WrongNetwork);
}

#[test]
fn outbound_rejects_a_hello_of_the_wrong_network() {
    let now = secs(1);
    let mut a = Session::outbound(node_a(), node_b().addr, 1, now);
    let mut hello = hello_of(&node_b(), 1);
    hello.network = Network::Mainnet;
    a.on_data(&frame(&Message::Hello(hello)), now);
    assert_rejected(&mut a, Reason::WrongNetwork, now);
}

#[test]
fn rejects_frames_with_the_other_networks_magic() {
    let hello = Message::Hello(hello_of(&node_a(), 1));
    let mainnet_frame = wire::encode(Network::Mainnet, &hello);
    assert_inbound_rejects(&mainnet_frame, Reason::WrongNetwork);
    // Recognised from the magic alone, before any payload.
    assert_inbound_rejects(&Network::Mainnet.magic(), Reason::WrongNetwork);
    // And the other way round.
    let mut s = Session::inbound(
        LocalInfo {
            network: Network::Mainnet,
            ..node_b()
        },
        source_of(&node_a()),
        Duration::ZERO,
    );
    s.on_data(&frame(&hello), ms(1));
    let events = drain_events(&mut s);
    assert_eq!(rejecteds(&events), vec![Reason::WrongNetwork]);
    assert_eq!(
        closeds(&events),
        vec![CloseReason::Local(Reason::WrongNetwork)]
    );
}

#[test]
fn rejects_a_too_old_protocol_version() {
    let mut hello = hello_of(&node_a(), 1);
    hello.version = MIN_PROTOCOL_VERSION
        .checked_sub(1)
        .expect("a version below the minimum");
    hello.min_version = hello.version;
    assert_inbound_rejects(&frame(&Message::Hello(hello)), Reason::IncompatibleVersion);
}

#[test]
fn rejects_a_peer_whose_minimum_version_is_above_ours() {
    let mut hello = hello_of(&node_a(), 1);
    hello.version = PROTOCOL_VERSION + 5;
    hello.min_version = PROTOCOL_VERSION + 1;
    assert_inbound_rejects(&frame(&Message::Hello(hello)), Reason::IncompatibleVersion);
}

#[test]
fn accepts_a_newer_peer_that_still_speaks_our_version() {
    let mut hello = hello_of(&node_a(), 1);
    hello.version = PROTOCOL_VERSION + 5;
    hello.min_version = PROTOCOL_VERSION;
    let mut s = inbound_b(Duration::ZERO);
    s.on_data(&frame(&Message::Hello(hello)), ms(1));
    s.on_data(&frame(&Message::Ack), ms(2));
    let events = drain_events(&mut s);
    let peers = handshakens(&events);
    assert_eq!(peers.len(), 1, "{events:?}");
    assert_eq!(peers[0].version, PROTOCOL_VERSION + 5);
}

#[test]
fn rejects_our_own_boot_id_as_self() {
    let mut hello = hello_of(&node_a(), 1);
    hello.boot_id = BOOT_B;
    assert_inbound_rejects(&frame(&Message::Hello(hello)), Reason::SelfConnection);
}

#[test]
fn dialing_ourselves_ends_on_both_ends_with_self() {
    let now = secs(1);
    let me = node_b();
    let mut out = Session::outbound(me.clone(), me.addr, 3, now);
    let mut inb = Session::inbound(me.clone(), SocketAddr::new(me.addr.ip(), 50_000), now);
    let (eo, ei) = pump(&mut out, &mut inb, now);
    assert_eq!(rejecteds(&ei), vec![Reason::SelfConnection]);
    assert_eq!(
        closeds(&ei),
        vec![CloseReason::Local(Reason::SelfConnection)]
    );
    assert_eq!(
        closeds(&eo),
        vec![CloseReason::Remote(Reason::SelfConnection)]
    );
    assert!(handshakens(&eo).is_empty() && handshakens(&ei).is_empty());
    // The virtual TCP carried both FINs: both ends are done.
    assert!(out.is_done() && inb.is_done());
}

#[test]
fn rejects_an_inbound_hello_claiming_another_ip_than_the_tcp_source() {
    let mut hello = hello_of(&node_a(), 1);
    hello.addr = addr("127.0.0.4:24100");
    assert_inbound_rejects(&frame(&Message::Hello(hello)), Reason::AddressMismatch);
}

#[test]
fn rejects_an_inbound_hello_claiming_port_zero() {
    let mut hello = hello_of(&node_a(), 1);
    hello.addr = addr("127.0.0.2:0");
    assert_inbound_rejects(&frame(&Message::Hello(hello)), Reason::AddressMismatch);
}

#[test]
fn outbound_rejects_a_peer_claiming_another_address_than_dialed() {
    for claimed in ["127.0.0.3:24101", "127.0.0.4:24100", "0.0.0.0:24101"] {
        let now = secs(1);
        let mut a = Session::outbound(node_a(), node_b().addr, 1, now);
        let _ = take_output(&mut a); // our Hello went out
        let mut hello = hello_of(&node_b(), 1);
        hello.addr = addr(claimed);
        a.on_data(&frame(&Message::Hello(hello)), now);
        assert_rejected(&mut a, Reason::AddressMismatch, now);
    }
}

#[test]
fn rejects_ping_pong_or_ack_before_hello() {
    for msg in [Message::Ping(1), Message::Pong(1), Message::Ack] {
        // Inbound: the dialer must start with its Hello.
        assert_inbound_rejects(&frame(&msg), Reason::ProtocolViolation);
        // Outbound: the acceptor must answer with its Hello.
        let now = secs(1);
        let mut a = Session::outbound(node_a(), node_b().addr, 1, now);
        let _ = take_output(&mut a);
        a.on_data(&frame(&msg), now);
        assert_rejected(&mut a, Reason::ProtocolViolation, now);
    }
}

#[test]
fn rejects_ping_before_the_ack() {
    let mut s = inbound_b(Duration::ZERO);
    s.on_data(&frame(&Message::Hello(hello_of(&node_a(), 1))), ms(1));
    let _ = take_output(&mut s);
    s.on_data(&frame(&Message::Ping(5)), ms(2));
    assert_rejected(&mut s, Reason::ProtocolViolation, ms(2));
}

#[test]
fn rejects_a_second_hello_after_the_handshake() {
    let (_a, mut b) = established_pair(Duration::ZERO);
    drain_events(&mut b);
    b.on_data(&frame(&Message::Hello(hello_of(&node_a(), 8))), secs(1));
    assert_rejected(&mut b, Reason::ProtocolViolation, secs(1));

    // Also while waiting for the verdict.
    let (mut a, mut b) = connect(node_a(), node_b(), 7, Duration::ZERO);
    pump(&mut a, &mut b, Duration::ZERO);
    b.on_data(&frame(&Message::Hello(hello_of(&node_a(), 7))), ms(1));
    assert_rejected(&mut b, Reason::ProtocolViolation, ms(1));
}

#[test]
fn rejects_a_second_ack() {
    let (mut a, _b) = established_pair(Duration::ZERO);
    drain_events(&mut a);
    a.on_data(&frame(&Message::Ack), secs(1));
    assert_rejected(&mut a, Reason::ProtocolViolation, secs(1));
}

/// A frame of our network carrying `payload` as is.
fn raw_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = NET.magic().to_vec();
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

#[test]
fn rejects_undecodable_payloads() {
    // An unknown message variant.
    assert_inbound_rejects(&raw_frame(&[0xff, 0xff, 0xff]), Reason::ProtocolViolation);
    // An empty payload.
    assert_inbound_rejects(&raw_frame(&[]), Reason::ProtocolViolation);
    // A valid message followed by trailing bytes in the same frame.
    let ack = frame(&Message::Ack);
    let mut payload = ack[HEADER_LEN..].to_vec();
    payload.push(0);
    assert_inbound_rejects(&raw_frame(&payload), Reason::ProtocolViolation);
    // A Hello cut short.
    let hello = frame(&Message::Hello(hello_of(&node_a(), 1)));
    let cut = &hello[HEADER_LEN..hello.len() - 3];
    assert_inbound_rejects(&raw_frame(cut), Reason::ProtocolViolation);
    // An agent string over the limit.
    let mut long = hello_of(&node_a(), 1);
    long.agent = "x".repeat(crate::wire::MAX_AGENT_LEN + 1);
    assert_inbound_rejects(&frame(&Message::Hello(long)), Reason::ProtocolViolation);
}

#[test]
fn rejects_an_oversized_length_prefix_from_the_header_alone() {
    let mut header = NET.magic().to_vec();
    header.extend_from_slice(&((MAX_FRAME as u32) + 1).to_le_bytes());
    assert_eq!(header.len(), HEADER_LEN);
    let mut s = inbound_b(Duration::ZERO);
    s.on_data(&header, ms(1));
    assert!(s.decoder.buffered() <= HEADER_LEN);
    assert_rejected(&mut s, Reason::ProtocolViolation, ms(1));

    let mut header = NET.magic().to_vec();
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    assert_inbound_rejects(&header, Reason::ProtocolViolation);
}

#[test]
fn a_frame_of_exactly_max_frame_is_buffered_then_judged() {
    // On an established link the largest allowed frame is read in full (and then found
    // undecodable); the decoder never holds more than one frame.
    let (_a, mut s) = established_pair(Duration::ZERO);
    drain_events(&mut s);
    let _ = take_output(&mut s);
    let mut header = NET.magic().to_vec();
    header.extend_from_slice(&(MAX_FRAME as u32).to_le_bytes());
    s.on_data(&header, ms(1));
    let chunk = vec![0xffu8; 64 * 1024];
    let mut sent = 0;
    while sent + chunk.len() < MAX_FRAME {
        s.on_data(&chunk, ms(2));
        sent += chunk.len();
        assert!(!s.is_closing());
        assert_eq!(s.decoder.buffered(), HEADER_LEN + sent);
    }
    s.on_data(&chunk[..MAX_FRAME - sent], ms(3));
    assert!(s.decoder.buffered() <= HEADER_LEN + MAX_FRAME);
    assert_rejected(&mut s, Reason::ProtocolViolation, ms(3));
}

#[test]
fn before_the_handshake_a_frame_may_not_outgrow_a_hello() {
    // Fed in the worker's 4 KiB reads: rejected as soon as the frame passes the handshake
    // limit, so a stranger never makes us hold more than that (and one read).
    for claimed in [MAX_HANDSHAKE_FRAME as u32 + 1, MAX_FRAME as u32] {
        let mut s = inbound_b(Duration::ZERO);
        let mut header = NET.magic().to_vec();
        header.extend_from_slice(&claimed.to_le_bytes());
        s.on_data(&header, ms(1));
        let read = vec![0u8; 4096];
        let mut sent = 0;
        while !s.is_closing() {
            assert!(
                sent <= MAX_HANDSHAKE_FRAME,
                "still reading after {sent} bytes"
            );
            s.on_data(&read, ms(2));
            sent += read.len();
            assert!(s.decoder.buffered() <= HEADER_LEN + MAX_HANDSHAKE_FRAME + read.len());
        }
        assert_rejected(&mut s, Reason::ProtocolViolation, ms(2));
    }
    // While waiting for the Ack as well.
    let mut s = inbound_b(Duration::ZERO);
    s.on_data(&frame(&Message::Hello(hello_of(&node_a(), 1))), ms(1));
    let _ = take_output(&mut s);
    drain_events(&mut s);
    let mut big = NET.magic().to_vec();
    big.extend_from_slice(&(MAX_FRAME as u32).to_le_bytes());
    big.extend_from_slice(&[0u8; MAX_HANDSHAKE_FRAME + 1]);
    s.on_data(&big, ms(2));
    assert_rejected(&mut s, Reason::ProtocolViolation, ms(2));
    // A frame of exactly the limit is still judged by its content, not its size.
    let mut s = inbound_b(Duration::ZERO);
    let mut edge = NET.magic().to_vec();
    edge.extend_from_slice(&(MAX_HANDSHAKE_FRAME as u32).to_le_bytes());
    edge.extend_from_slice(&vec![0xff; MAX_HANDSHAKE_FRAME]);
    s.on_data(&edge, ms(1));
    let events = drain_events(&mut s);
    let detail = events
        .iter()
        .find_map(|e| match e {
            SessionEvent::Rejected { detail, .. } => Some(detail.clone()),
            _ => None,
        })
        .expect("rejected");
    assert!(detail.contains("undecodable"), "{detail}");
}

#[test]
fn rejects_garbage_bytes() {
    assert_inbound_rejects(
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Reason::ProtocolViolation,
    );
    assert_inbound_rejects(&[0u8; 100], Reason::ProtocolViolation);
    // A wrong byte right after a correct start of the magic.
    assert_inbound_rejects(&[NET.magic()[0], 0x00], Reason::ProtocolViolation);
}

#[test]
fn rejects_garbage_after_a_valid_frame_in_the_same_chunk() {
    let mut s = inbound_b(Duration::ZERO);
    let mut bytes = frame(&Message::Hello(hello_of(&node_a(), 1)));
    bytes.extend_from_slice(b"\x00\x01\x02 garbage");
    s.on_data(&bytes, ms(1));
    // The Hello was answered, then the garbage was rejected.
    assert_rejected(&mut s, Reason::ProtocolViolation, ms(1));
}

#[test]
fn refused_before_the_hello_is_a_remote_close() {
    // What an acceptor that is full says before any handshake.
    let now = secs(1);
    let mut a = Session::outbound(node_a(), node_b().addr, 1, now);
    let _ = take_output(&mut a);
    a.on_data(&frame(&Message::Disconnect(Reason::TooManyPeers)), now);
    assert_eq!(
        drain_events(&mut a),
        vec![SessionEvent::Closed(CloseReason::Remote(
            Reason::TooManyPeers
        ))]
    );
    // No Disconnect is sent back to a peer that already said goodbye.
    assert!(a.pending_output().is_empty());
    assert!(a.wants_fin());
}

#[test]
fn an_acceptor_refusing_before_the_handshake_closes_both_ends_gracefully() {
    // The registry refuses an accepted connection (too many peers) before any Hello.
    let now = secs(1);
    let (mut a, mut b) = connect(node_a(), node_b(), 1, now);
    b.close(Reason::TooManyPeers, now);
    assert_eq!(
        frames(b.pending_output()),
        vec![Message::Disconnect(Reason::TooManyPeers)]
    );
    let (ea, eb) = pump(&mut a, &mut b, now);
    assert_eq!(
        ea,
        vec![SessionEvent::Closed(CloseReason::Remote(
            Reason::TooManyPeers
        ))]
    );
    assert_eq!(
        eb,
        vec![SessionEvent::Closed(CloseReason::Local(
            Reason::TooManyPeers
        ))]
    );
    assert!(a.is_done() && b.is_done());
}

// ---------------------------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------------------------

#[test]
fn unspecified_claimed_ip_takes_the_tcp_source_ip_with_the_claimed_port() {
    for unspecified in ["0.0.0.0:24555", "[::]:24555"] {
        let now = secs(1);
        let a = LocalInfo {
            addr: addr(unspecified),
            ..node_a()
        };
        let (mut a, mut b) = connect(a, node_b(), 4, now);
        let (ea, eb) = pump(&mut a, &mut b, now);
        let seen_by_b = handshakens(&eb);
        assert_eq!(seen_by_b.len(), 1, "{eb:?}");
        assert_eq!(seen_by_b[0].addr, addr("127.0.0.2:24555"));
        assert_eq!(handshakens(&ea).len(), 1, "{ea:?}");
    }
}

#[test]
fn outbound_accepts_an_unspecified_claim_from_the_dialed_address() {
    let now = secs(1);
    let b = LocalInfo {
        addr: addr("0.0.0.0:24100"),
        ..node_b()
    };
    // A dials B by its real address; B claims only its port.
    let mut a = Session::outbound(node_a(), node_b().addr, 4, now);
    let mut b = Session::inbound(b, source_of(&node_a()), now);
    let (ea, _) = pump(&mut a, &mut b, now);
    let seen_by_a = handshakens(&ea);
    assert_eq!(seen_by_a.len(), 1, "{ea:?}");
    assert_eq!(seen_by_a[0].addr, node_b().addr);
}

#[test]
fn ipv4_mapped_source_and_target_are_canonical() {
    let now = secs(1);
    // A dual-stack listener reports the dialer as ::ffff:127.0.0.2.
    let mut b = Session::inbound(node_b(), addr("[::ffff:127.0.0.2]:40000"), now);
    // And A dialed B by its mapped name.
    let mut a = Session::outbound(node_a(), addr("[::ffff:127.0.0.3]:24100"), 2, now);
    let (ea, eb) = pump(&mut a, &mut b, now);
    assert_eq!(handshakens(&eb)[0].addr, node_a().addr);
    assert_eq!(handshakens(&ea)[0].addr, node_b().addr);
}

#[test]
fn ipv6_handshake() {
    let now = secs(1);
    let a = info("[2001:db8::2]:24100", BOOT_A);
    let b = info("[2001:db8::3]:24100", BOOT_B);
    let (mut a, mut b) = connect(a, b, 9, now);
    let (ea, eb) = pump(&mut a, &mut b, now);
    assert_eq!(handshakens(&ea)[0].addr, addr("[2001:db8::3]:24100"));
    assert_eq!(handshakens(&eb)[0].addr, addr("[2001:db8::2]:24100"));
}

// ---------------------------------------------------------------------------------------------
// Handshake timeout
// ---------------------------------------------------------------------------------------------

#[test]
fn no_hello_by_the_handshake_timeout_closes_with_timeout() {
    let start = secs(100);
    let mut s = Session::inbound(node_b(), source_of(&node_a()), start);
    let deadline = start + node_b().handshake_timeout;
    assert_eq!(s.next_deadline(), Some(deadline));
    s.on_tick(deadline - ms(1));
    assert!(!s.is_closing());
    assert!(drain_events(&mut s).is_empty());
    s.on_tick(deadline);
    // An inbound peer that never says Hello is a slowloris: rejected bad input (the warn
    // line), then the close.
    let events = drain_events(&mut s);
    assert_eq!(
        events[1..],
        [SessionEvent::Closed(CloseReason::Local(Reason::Timeout))],
        "{events:?}"
    );
    match &events[0] {
        SessionEvent::Rejected { reason, detail } => {
            assert_eq!(*reason, Reason::Timeout);
            assert!(detail.contains("awaiting Hello"), "{detail}");
        }
        other => panic!("expected a rejection first, got {other:?}"),
    }
    assert_eq!(
        frames(s.pending_output()),
        vec![Message::Disconnect(Reason::Timeout)]
    );
    assert_graceful_close(&mut s, deadline);
}

#[test]
fn a_partial_hello_does_not_extend_the_handshake_timeout() {
    let mut s = inbound_b(Duration::ZERO);
    let hello = frame(&Message::Hello(hello_of(&node_a(), 1)));
    // A slow peer trickles its Hello and never finishes it.
    for (i, byte) in hello[..hello.len() - 1].iter().enumerate() {
        s.on_data(&[*byte], ms(i as u64 * 100));
    }
    s.on_tick(secs(10));
    let events = drain_events(&mut s);
    assert_eq!(closeds(&events), vec![CloseReason::Local(Reason::Timeout)]);
    assert_eq!(rejecteds(&events), vec![Reason::Timeout]);
    // The warn line says how much of a frame the peer left hanging.
    let detail = events
        .iter()
        .find_map(|e| match e {
            SessionEvent::Rejected { detail, .. } => Some(detail.clone()),
            _ => None,
        })
        .unwrap();
    assert!(
        detail.contains(&format!("{} bytes of an incomplete frame", hello.len() - 1)),
        "{detail}"
    );
}

#[test]
fn an_inbound_peer_that_never_acks_is_rejected_at_the_handshake_timeout() {
    let mut s = inbound_b(Duration::ZERO);
    s.on_data(&frame(&Message::Hello(hello_of(&node_a(), 1))), ms(1));
    let _ = take_output(&mut s);
    drain_events(&mut s);
    s.on_tick(node_b().handshake_timeout);
    assert_rejected(&mut s, Reason::Timeout, node_b().handshake_timeout);
}

#[test]
fn an_outbound_handshake_timeout_is_a_failed_dial_not_bad_input() {
    let mut a = Session::outbound(node_a(), node_b().addr, 1, Duration::ZERO);
    let _ = take_output(&mut a);
    a.on_tick(node_a().handshake_timeout);
    assert_eq!(
        drain_events(&mut a),
        vec![SessionEvent::Closed(CloseReason::Local(Reason::Timeout))]
    );
}

#[test]
fn no_verdict_by_the_handshake_timeout_closes_with_timeout() {
    let (mut a, mut b) = connect(node_a(), node_b(), 1, Duration::ZERO);
    pump(&mut a, &mut b, secs(1));
    // The registry never answers.
    b.on_tick(secs(10));
    assert_eq!(
        drain_events(&mut b),
        vec![SessionEvent::Closed(CloseReason::Local(Reason::Timeout))]
    );
    // A late verdict changes nothing.
    b.accept(secs(11));
    assert!(!b.is_established());
    assert!(drain_events(&mut b).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Graceful close
// ---------------------------------------------------------------------------------------------

#[test]
fn close_sends_disconnect_then_fin_once_drained_then_done_on_peer_eof() {
    let (mut a, _b) = established_pair(Duration::ZERO);
    drain_events(&mut a);
    a.close(Reason::Duplicate, secs(1));
    assert_eq!(
        drain_events(&mut a),
        vec![SessionEvent::Closed(CloseReason::Local(Reason::Duplicate))]
    );
    assert_eq!(
        frames(a.pending_output()),
        vec![Message::Disconnect(Reason::Duplicate)]
    );
    assert!(!a.is_established());
    assert_graceful_close(&mut a, secs(1));
}

#[test]
fn close_over_the_virtual_wire_ends_both_sides() {
    let (mut a, mut b) = established_pair(Duration::ZERO);
    drain_events(&mut a);
    drain_events(&mut b);
    a.close(Reason::Duplicate, secs(1));
    let (ea, eb) = pump(&mut a, &mut b, secs(1));
    assert_eq!(
        ea,
        vec![SessionEvent::Closed(CloseReason::Local(Reason::Duplicate))]
    );
    assert_eq!(
        eb,
        vec![SessionEvent::Closed(CloseReason::Remote(Reason::Duplicate))]
    );
    assert!(a.is_done() && b.is_done());
}

#[test]
fn close_without_the_peers_eof_is_done_at_the_drain_deadline() {
    let (mut a, _b) = established_pair(Duration::ZERO);
    let at = secs(7);
    a.close(Reason::Shutdown, at);
    let _ = take_output(&mut a);
    assert!(a.wants_fin());
    a.fin_sent();
    assert_eq!(a.next_deadline(), Some(at + DRAIN_TIMEOUT));
    a.on_tick(at + DRAIN_TIMEOUT - ms(1));
    assert!(!a.is_done());
    a.on_tick(at + DRAIN_TIMEOUT);
    assert!(a.is_done());
    assert_eq!(a.next_deadline(), None);
}

#[test]
fn close_is_done_at_the_drain_deadline_even_if_the_peer_never_reads() {
    let (mut a, _b) = established_pair(Duration::ZERO);
    let at = secs(7);
    a.close(Reason::Shutdown, at);
    // Nothing is ever written: no FIN, but the deadline still ends it.
    assert!(!a.wants_fin());
    a.on_tick(at + DRAIN_TIMEOUT);
    assert!(a.is_done());
}

#[test]
fn peer_eof_before_our_fin_ends_the_session_once_the_fin_is_sent() {
    let (mut a, _b) = established_pair(Duration::ZERO);
    a.close(Reason::Shutdown, secs(1));
    a.on_eof(secs(1));
    assert!(!a.is_done(), "our Disconnect and FIN are still due");
    let _ = take_output(&mut a);
    assert!(a.wants_fin());
    a.fin_sent();
    assert!(a.is_done());
    assert_eq!(
        closeds(&drain_events(&mut a)),
        vec![CloseReason::Local(Reason::Shutdown)]
    );
}

#[test]
fn data_arriving_while_closing_is_discarded() {
    let (mut a, mut b) = established_pair(Duration::ZERO);
    a.close(Reason::Shutdown, secs(1));
    drain_events(&mut a);
    let before = a.pending_output().to_vec();
    // B keeps talking: pings, a second Hello, garbage.
    b.on_tick(secs(30));
    a.on_data(&take_output(&mut b), secs(30));
    a.on_data(&frame(&Message::Hello(hello_of(&node_b(), 1))), secs(30));
    a.on_data(b"garbage", secs(30));
    assert!(drain_events(&mut a).is_empty());
    assert_eq!(a.pending_output(), before.as_slice());
}

#[test]
fn closed_is_reported_exactly_once() {
    let (mut a, _b) = established_pair(Duration::ZERO);
    drain_events(&mut a);
    a.close(Reason::Duplicate, secs(1));
    a.close(Reason::Shutdown, secs(1));
    a.on_tick(secs(1000)); // would be a ping timeout
    a.on_eof(secs(1));
    a.on_io_error("reset".into());
    let events = drain_events(&mut a);
    assert_eq!(
        events,
        vec![SessionEvent::Closed(CloseReason::Local(Reason::Duplicate))]
    );
    // Only one Disconnect was queued; the io error dropped it.
    assert!(a.pending_output().is_empty());
    assert!(a.is_done());
}

#[test]
fn a_second_close_queues_no_second_disconnect() {
    let (mut a, _b) = established_pair(Duration::ZERO);
    a.close(Reason::Duplicate, secs(1));
    a.close(Reason::Shutdown, secs(2));
    assert_eq!(
        frames(a.pending_output()),
        vec![Message::Disconnect(Reason::Duplicate)]
    );
    assert_eq!(a.next_deadline(), Some(secs(1) + DRAIN_TIMEOUT));
}

#[test]
fn remote_disconnect_duplicate_is_a_remote_close() {
    let (_a, mut b) = established_pair(Duration::ZERO);
    drain_events(&mut b);
    b.on_data(&frame(&Message::Disconnect(Reason::Duplicate)), secs(1));
    assert_eq!(
        drain_events(&mut b),
        vec![SessionEvent::Closed(CloseReason::Remote(Reason::Duplicate))]
    );
    assert!(b.is_closing());
    assert!(b.pending_output().is_empty());
    assert!(b.wants_fin());
    b.fin_sent();
    b.on_eof(secs(1));
    assert!(b.is_done());
}

#[test]
fn an_unknown_disconnect_reason_is_not_a_protocol_error() {
    let (_a, mut b) = established_pair(Duration::ZERO);
    drain_events(&mut b);
    b.on_data(&frame(&Message::Disconnect(Reason::Unknown(200))), secs(1));
    assert_eq!(
        drain_events(&mut b),
        vec![SessionEvent::Closed(CloseReason::Remote(Reason::Unknown(
            200
        )))]
    );
}

#[test]
fn eof_in_the_middle_of_a_frame_is_an_io_error() {
    let mut s = inbound_b(Duration::ZERO);
    let hello = frame(&Message::Hello(hello_of(&node_a(), 1)));
    s.on_data(&hello[..hello.len() / 2], ms(1));
    s.on_eof(ms(2));
    let events = drain_events(&mut s);
    assert_eq!(closeds(&events).len(), 1, "{events:?}");
    assert!(
        matches!(closeds(&events)[0], CloseReason::Io(_)),
        "{events:?}"
    );
    assert!(rejecteds(&events).is_empty());
    // We still close our side gracefully.
    assert!(s.wants_fin());
    s.fin_sent();
    assert!(s.is_done());
}

#[test]
fn eof_in_the_middle_of_a_header_is_an_io_error() {
    let mut s = inbound_b(Duration::ZERO);
    s.on_data(&NET.magic()[..3], ms(1));
    s.on_eof(ms(2));
    let events = drain_events(&mut s);
    assert!(
        matches!(closeds(&events).as_slice(), [CloseReason::Io(_)]),
        "{events:?}"
    );
}

#[test]
fn clean_eof_is_eof() {
    // Before the handshake.
    let mut s = inbound_b(Duration::ZERO);
    s.on_eof(ms(1));
    assert_eq!(
        drain_events(&mut s),
        vec![SessionEvent::Closed(CloseReason::Eof)]
    );
    assert!(s.wants_fin());
    s.fin_sent();
    assert!(s.is_done());

    // On an established link.
    let (mut a, _b) = established_pair(Duration::ZERO);
    drain_events(&mut a);
    a.on_eof(secs(1));
    assert_eq!(
        drain_events(&mut a),
        vec![SessionEvent::Closed(CloseReason::Eof)]
    );
    assert!(
        a.pending_output().is_empty(),
        "no Disconnect to a peer that left"
    );
    assert!(a.wants_fin());
    a.fin_sent();
    assert!(a.is_done());
}

#[test]
fn io_error_ends_at_once() {
    let (mut a, _b) = established_pair(Duration::ZERO);
    drain_events(&mut a);
    a.on_tick(secs(30));
    assert!(!a.pending_output().is_empty());
    a.on_io_error("connection reset".into());
    assert_eq!(
        drain_events(&mut a),
        vec![SessionEvent::Closed(CloseReason::Io(
            "connection reset".into()
        ))]
    );
    assert!(a.is_done());
    assert!(a.pending_output().is_empty());
    assert!(!a.wants_fin());
    assert_eq!(a.next_deadline(), None);
}

// ---------------------------------------------------------------------------------------------
// Abuse
// ---------------------------------------------------------------------------------------------

#[test]
fn a_ping_flood_is_a_protocol_violation() {
    let (_a, mut b) = established_pair(Duration::ZERO);
    drain_events(&mut b);
    // A fresh ping window (the first one also counted the ping that came with accept).
    let t = secs(31);
    for i in 0..MAX_PINGS_PER_INTERVAL {
        b.on_data(&frame(&Message::Ping(u64::from(i))), t + ms(u64::from(i)));
        assert!(b.is_established(), "closed after {} pings", i + 1);
    }
    let pongs = frames(b.pending_output())
        .into_iter()
        .filter(|m| matches!(m, Message::Pong(_)))
        .count();
    assert_eq!(pongs, MAX_PINGS_PER_INTERVAL as usize);
    let _ = take_output(&mut b);
    drain_events(&mut b);
    b.on_data(&frame(&Message::Ping(1000)), t + secs(1));
    assert_rejected(&mut b, Reason::ProtocolViolation, t + secs(1));
}

#[test]
fn a_ping_flood_in_one_chunk_is_a_protocol_violation() {
    let (_a, mut b) = established_pair(Duration::ZERO);
    drain_events(&mut b);
    let _ = take_output(&mut b);
    let flood: Vec<u8> = (0..200).flat_map(|i| frame(&Message::Ping(i))).collect();
    b.on_data(&flood, secs(5));
    let events = drain_events(&mut b);
    assert_eq!(rejecteds(&events), vec![Reason::ProtocolViolation]);
    assert_eq!(
        closeds(&events),
        vec![CloseReason::Local(Reason::ProtocolViolation)]
    );
    let msgs = frames(b.pending_output());
    assert!(msgs.len() <= MAX_PINGS_PER_INTERVAL as usize + 1);
    assert_eq!(
        msgs.last(),
        Some(&Message::Disconnect(Reason::ProtocolViolation))
    );
}

#[test]
fn pings_at_the_allowed_rate_are_no_flood() {
    let (_a, mut b) = established_pair(Duration::ZERO);
    let interval = node_b().ping_interval;
    let mut nonce = 0;
    for round in 1..=10u32 {
        let t = interval * round;
        for _ in 0..MAX_PINGS_PER_INTERVAL {
            nonce += 1;
            b.on_data(&frame(&Message::Ping(nonce)), t);
        }
        b.on_tick(t);
        let _ = take_output(&mut b);
        let events = drain_events(&mut b);
        assert!(closeds(&events).is_empty(), "round {round}: {events:?}");
    }
    assert!(b.is_established());
}

#[test]
fn send_queue_is_capped_when_the_peer_never_reads() {
    // A patient node (the write stall rule would take 10^6 s), so the cap is what acts.
    let mut patient = node_b();
    patient.ping_timeout = secs(1_000_000);
    let (mut a, mut b) = connect(node_a(), patient, 7, Duration::ZERO);
    pump(&mut a, &mut b, Duration::ZERO);
    a.accept(Duration::ZERO);
    b.accept(Duration::ZERO);
    pump(&mut a, &mut b, Duration::ZERO);
    assert!(b.is_established());
    drain_events(&mut b);
    let interval = node_b().ping_interval;
    // The largest Pong a ping can earn.
    let big_ping = frame(&Message::Ping(u64::MAX));
    let largest_frame = frame(&Message::Pong(u64::MAX)).len().max(big_ping.len());
    let mut events = Vec::new();
    let mut rounds = 0u32;
    // A keeps pinging at the allowed rate but never reads a byte of B's answers.
    while !b.is_closing() {
        rounds += 1;
        assert!(rounds < 10_000, "the send queue grew without limit");
        let t = interval * rounds + ms(1);
        for _ in 0..MAX_PINGS_PER_INTERVAL {
            b.on_data(&big_ping, t);
            assert!(
                b.pending_output().len() <= MAX_SEND_QUEUE + largest_frame,
                "queue at {} bytes",
                b.pending_output().len()
            );
            if b.is_closing() {
                break;
            }
        }
        b.on_tick(t);
        assert!(b.pending_output().len() <= MAX_SEND_QUEUE + largest_frame);
        events.extend(drain_events(&mut b));
    }
    events.extend(drain_events(&mut b));
    assert!(rounds > 1, "closed before the queue could fill");
    assert_eq!(rejecteds(&events).len(), 1, "{events:?}");
    assert_eq!(closeds(&events).len(), 1, "{events:?}");
    // The queue is let go, not kept.
    assert!(b.pending_output().len() <= MAX_SEND_QUEUE + largest_frame);
    assert!(b.is_closing());
    // It ends: either at once, or by the drain deadline.
    b.on_tick(interval * (rounds + 1) + DRAIN_TIMEOUT);
    assert!(b.is_done());
}

/// An established pair where B's transport takes nothing more from `now` on: A keeps
/// pinging at the allowed rate (so B never times A out) but reads none of B's answers.
/// Returns B's events up to and including its close, and when it closed.
fn ping_without_reading(
    b: &mut Session,
    start: Duration,
    step: Duration,
    limit: Duration,
    mut transport: impl FnMut(&mut Session, Duration),
) -> (Vec<SessionEvent>, Option<Duration>) {
    let mut events = Vec::new();
    let mut now = start;
    let mut nonce = 0;
    while now <= limit {
        nonce += 1;
        b.on_data(&frame(&Message::Ping(nonce)), now);
        b.on_tick(now);
        transport(b, now);
        events.extend(drain_events(b));
        if b.is_closing() {
            return (events, Some(now));
        }
        now += step;
    }
    (events, None)
}

#[test]
fn a_peer_that_reads_nothing_is_dropped_after_ping_timeout() {
    let (_a, mut b) = established_pair(Duration::ZERO);
    drain_events(&mut b);
    let _ = take_output(&mut b);
    let timeout = node_b().ping_timeout;
    let start = secs(1);
    // Nothing of B's output is ever written: its own queue holds every pong.
    let (events, closed_at) = ping_without_reading(&mut b, start, secs(1), secs(1000), |_, _| {});
    let closed_at = closed_at.expect("a peer that reads nothing was kept");
    // The first pong started the clock at `start`; a pingtimeout later, not sooner, it ends.
    assert_eq!(closed_at, start + timeout);
    assert_eq!(rejecteds(&events), vec![Reason::Timeout], "{events:?}");
    assert_eq!(
        closeds(&events),
        vec![CloseReason::Local(Reason::Timeout)],
        "{events:?}"
    );
    // At once: no Disconnect queued behind the bytes it does not read, nothing kept.
    assert!(b.is_done());
    assert!(b.pending_output().is_empty());
    assert_eq!(b.next_deadline(), None);
}

#[test]
fn a_full_kernel_buffer_counts_as_not_read() {
    let (_a, mut b) = established_pair(Duration::ZERO);
    drain_events(&mut b);
    let _ = take_output(&mut b);
    b.on_transport_backlog(0, Duration::ZERO);
    let start = secs(1);
    // Everything is written to the socket at once, and the kernel holds all of it: the
    // peer's window is shut.
    let mut held = 0;
    let (events, closed_at) = ping_without_reading(&mut b, start, secs(1), secs(1000), |s, now| {
        held += take_output(s).len();
        s.on_transport_backlog(held, now);
    });
    assert_eq!(closed_at, Some(start + node_b().ping_timeout));
    assert_eq!(rejecteds(&events), vec![Reason::Timeout]);
    let detail = events
        .iter()
        .find_map(|e| match e {
            SessionEvent::Rejected { detail, .. } => Some(detail.clone()),
            _ => None,
        })
        .unwrap();
    assert!(detail.contains("read none of our bytes"), "{detail}");
    assert!(b.is_done());
}

#[test]
fn the_stall_deadline_wakes_the_driver() {
    // A driver that looks at the session only at its deadlines (as the worker does when its
    // socket is quiet) still finds the stall in time.
    let (_a, mut b) = established_pair(Duration::ZERO);
    drain_events(&mut b);
    let _ = take_output(&mut b);
    b.on_transport_backlog(0, Duration::ZERO);
    let start = secs(1);
    b.on_data(&frame(&Message::Ping(1)), start);
    let mut held = take_output(&mut b).len();
    b.on_transport_backlog(held, start);
    let mut events = Vec::new();
    let mut now = start;
    while !b.is_closing() {
        now = b.next_deadline().expect("a deadline while bytes wait");
        assert!(now <= start + node_b().ping_timeout, "woke at {now:?}");
        b.on_tick(now);
        held += take_output(&mut b).len();
        b.on_transport_backlog(held, now);
        events.extend(drain_events(&mut b));
    }
    assert_eq!(now, start + node_b().ping_timeout);
    assert_eq!(rejecteds(&events), vec![Reason::Timeout], "{events:?}");
}

#[test]
fn a_slow_reader_is_kept() {
    let (_a, mut b) = established_pair(Duration::ZERO);
    drain_events(&mut b);
    let _ = take_output(&mut b);
    b.on_transport_backlog(0, Duration::ZERO);
    // The kernel always holds a backlog, but the peer acknowledges a few bytes every
    // second: slow, but reading.
    let mut held = 0usize;
    let (events, closed_at) =
        ping_without_reading(&mut b, secs(1), secs(1), secs(400), |s, now| {
            held += take_output(s).len();
            held = held.saturating_sub(3).max(1);
            s.on_transport_backlog(held, now);
        });
    assert_eq!(closed_at, None, "{events:?}");
    assert!(b.is_established());
}

#[test]
fn bytes_in_flight_on_a_healthy_link_are_no_stall() {
    let (mut a, mut b) = established_pair(Duration::ZERO);
    // Every ping sits in the kernel until the peer's ACK, which the next look finds: for
    // hours, and never a stall.
    for round in 1..=200u64 {
        let now = secs(30 * round);
        a.on_tick(now);
        let out = take_output(&mut a);
        a.on_transport_backlog(out.len(), now);
        b.on_data(&out, now);
        let back = take_output(&mut b);
        a.on_data(&back, now + ms(1));
        a.on_transport_backlog(0, now + ms(1));
        b.on_transport_backlog(0, now + ms(1));
        assert!(a.is_established() && b.is_established(), "round {round}");
        drain_events(&mut a);
        drain_events(&mut b);
    }
}

#[test]
fn the_stall_clock_starts_when_bytes_start_waiting() {
    // An idle link: nothing looked at the session for a long time, then one pong waits.
    let (_a, mut b) = established_pair(Duration::ZERO);
    drain_events(&mut b);
    let _ = take_output(&mut b);
    b.on_transport_backlog(0, Duration::ZERO);
    let later = secs(80);
    b.on_data(&frame(&Message::Ping(1)), later);
    b.on_tick(later + secs(5));
    assert!(
        b.is_established(),
        "the stall clock ran from the last look, not from when the pong was queued"
    );
    b.on_tick(later + node_b().ping_timeout);
    assert!(b.is_done());
}

// ---------------------------------------------------------------------------------------------
// Deadlines
// ---------------------------------------------------------------------------------------------

#[test]
fn next_deadline_in_each_state() {
    let t0 = secs(50);
    let (mut a, mut b) = connect(node_a(), node_b(), 1, t0);
    let hs = node_a().handshake_timeout;
    // Awaiting Hello.
    assert_eq!(a.next_deadline(), Some(t0 + hs));
    assert_eq!(b.next_deadline(), Some(t0 + hs));
    // Awaiting the verdict: still the handshake deadline, from the start.
    pump(&mut a, &mut b, t0 + secs(2));
    assert_eq!(a.next_deadline(), Some(t0 + hs));
    assert_eq!(b.next_deadline(), Some(t0 + hs));
    // Established: the next ping.
    let t1 = t0 + secs(3);
    a.accept(t1);
    b.accept(t1);
    pump(&mut a, &mut b, t1);
    let interval = node_a().ping_interval;
    assert_eq!(a.next_deadline(), Some(t1 + interval));
    // Ticking at the deadline pings and moves it on; it never stays in the past.
    a.on_tick(t1 + interval);
    let d = a.next_deadline().expect("established has a deadline");
    assert!(d > t1 + interval, "{d:?}");
    // With pings going unanswered, the liveness deadline comes first eventually.
    let timeout = node_a().ping_timeout;
    let mut now = t1 + interval;
    while !a.is_closing() {
        let next = a.next_deadline().expect("deadline while established");
        assert!(next > now, "deadline {next:?} not after now {now:?}");
        assert!(next <= t1 + timeout);
        now = next;
        a.on_tick(now);
        let _ = take_output(&mut a);
    }
    assert_eq!(now, t1 + timeout);
    // Closing: the drain deadline.
    assert_eq!(a.next_deadline(), Some(now + DRAIN_TIMEOUT));
    a.on_tick(now + DRAIN_TIMEOUT);
    // Done: nothing.
    assert!(a.is_done());
    assert_eq!(a.next_deadline(), None);
}

#[test]
fn ticks_before_a_deadline_do_nothing() {
    let (mut a, _b) = established_pair(Duration::ZERO);
    drain_events(&mut a);
    let deadline = a.next_deadline().unwrap();
    for t in [secs(1), secs(10), deadline - ms(1)] {
        a.on_tick(t);
        assert!(a.pending_output().is_empty());
        assert!(drain_events(&mut a).is_empty());
        assert_eq!(a.next_deadline(), Some(deadline));
    }
}

// ---------------------------------------------------------------------------------------------
// Property: arbitrary input never breaks an inbound session
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Data(Vec<u8>),
    Tick(u64),
    Accept,
    Eof,
    Close(u8),
    Drain(usize),
}

fn chunk() -> impl Strategy<Value = Vec<u8>> {
    let valid_hello = frame(&Message::Hello(hello_of(&node_a(), 1)));
    prop_oneof![
        // Raw garbage.
        prop::collection::vec(any::<u8>(), 0..48),
        // Valid frames, whole.
        Just(valid_hello),
        Just(frame(&Message::Ack)),
        any::<u64>().prop_map(|n| frame(&Message::Ping(n))),
        any::<u64>().prop_map(|n| frame(&Message::Pong(n))),
        any::<u8>().prop_map(|c| frame(&Message::Disconnect(Reason::from_code(c)))),
        // Hellos with random fields.
        (any::<u32>(), any::<u32>(), any::<u64>(), any::<bool>()).prop_map(|(v, m, boot, mn)| {
            let mut h = hello_of(&node_a(), 1);
            h.version = v % 4;
            h.min_version = m % 4;
            h.boot_id = if boot % 5 == 0 { BOOT_B } else { boot };
            h.masternode = mn;
            frame(&Message::Hello(h))
        }),
        // A header of our network with an arbitrary length, and some payload.
        (any::<u32>(), prop::collection::vec(any::<u8>(), 0..32)).prop_map(|(len, tail)| {
            let mut f = NET.magic().to_vec();
            f.extend_from_slice(&len.to_le_bytes());
            f.extend_from_slice(&tail);
            f
        }),
        // Another network's frame.
        Just(wire::encode(Network::Mainnet, &Message::Ack)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => chunk().prop_map(Op::Data),
        // The start of a frame, cut at an arbitrary point.
        2 => (chunk(), any::<prop::sample::Index>()).prop_map(|(c, i)| {
            let at = if c.is_empty() { 0 } else { i.index(c.len()) };
            Op::Data(c[..at].to_vec())
        }),
        2 => (0u64..40_000).prop_map(Op::Tick),
        1 => Just(Op::Accept),
        1 => Just(Op::Eof),
        1 => any::<u8>().prop_map(Op::Close),
        2 => any::<usize>().prop_map(Op::Drain),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_input_never_breaks_an_inbound_session(ops in prop::collection::vec(op(), 0..40)) {
        let mut now = Duration::ZERO;
        let mut s = inbound_b(now);
        let mut check = Invariants::new(NET);
        for op in ops {
            match op {
                Op::Data(bytes) => s.on_data(&bytes, now),
                Op::Tick(step) => {
                    now += ms(step);
                    s.on_tick(now);
                    if let Some(d) = s.next_deadline() {
                        prop_assert!(d > now, "deadline {:?} not after {:?} after a tick", d, now);
                    }
                }
                Op::Accept => s.accept(now),
                Op::Eof => s.on_eof(now),
                Op::Close(code) => s.close(Reason::from_code(code), now),
                Op::Drain(n) => {
                    let n = n % (s.pending_output().len() + 1);
                    check.written(&s.pending_output()[..n]);
                    s.consume_output(n);
                    if s.wants_fin() {
                        s.fin_sent();
                    }
                }
            }
            check.after_step(&mut s);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Property: arbitrary chunks under a clock that jumps about, both directions
// ---------------------------------------------------------------------------------------------

/// One step of a driver whose clock cannot be trusted: every step carries its own time,
/// drawn at random, so time may stand still, leap ahead or run backwards between two calls.
#[derive(Clone, Debug)]
enum ClockOp {
    Data(Vec<u8>, u64),
    Tick(u64),
    Accept(u64),
    Eof(u64),
    Close(u8, u64),
    Drain(usize),
    Backlog(usize, u64),
    IoError,
}

/// A time in milliseconds: mostly near the start (where the deadlines are), sometimes far.
fn any_time() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..20_000,
        2 => 0u64..400_000,
        1 => 0u64..(1 << 40),
    ]
}

/// Chunks for either direction: valid frames of both ends of a handshake, their pieces,
/// garbage, and headers with arbitrary lengths.
fn any_chunk() -> impl Strategy<Value = Vec<u8>> {
    // The frames of a handshake weigh more than in `chunk`, so that sequences reach the
    // verdict and the established state often enough, clock jumps and all.
    let whole = prop_oneof![
        3 => chunk(),
        1 => Just(frame(&Message::Hello(hello_of(&node_a(), 1)))),
        1 => Just(frame(&Message::Hello(hello_of(&node_b(), 7)))),
        2 => Just(frame(&Message::Ack)),
        1 => any::<u64>().prop_map(|n| frame(&Message::Ping(n))),
        // Pongs that answer one of our first pings (their nonce is `seq << 32 ^ count`).
        1 => (prop::sample::select(vec![1u64, 7]), 1u64..4)
            .prop_map(|(seq, n)| frame(&Message::Pong((seq << 32) ^ n))),
    ];
    prop_oneof![
        4 => whole.clone(),
        1 => (whole, any::<prop::sample::Index>()).prop_map(|(c, i)| {
            let at = if c.is_empty() { 0 } else { i.index(c.len()) };
            c[at..].to_vec()
        }),
    ]
}

fn clock_op() -> impl Strategy<Value = ClockOp> {
    prop_oneof![
        6 => (any_chunk(), any_time()).prop_map(|(c, t)| ClockOp::Data(c, t)),
        3 => any_time().prop_map(ClockOp::Tick),
        2 => any_time().prop_map(ClockOp::Accept),
        1 => any_time().prop_map(ClockOp::Eof),
        1 => (any::<u8>(), any_time()).prop_map(|(c, t)| ClockOp::Close(c, t)),
        2 => any::<usize>().prop_map(ClockOp::Drain),
        2 => (any::<usize>(), any_time()).prop_map(|(n, t)| ClockOp::Backlog(n, t)),
        1 => Just(ClockOp::IoError),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The handshake state machine fed arbitrary byte chunks by a driver whose clock jumps
    /// backwards as readily as forwards: it never panics, never holds more than a frame or
    /// more than its queue cap, and reports at most one `Closed` (with nothing after it) and
    /// at most one `Rejected`, whichever end it is.
    #[test]
    fn arbitrary_chunks_and_a_clock_that_jumps_backwards(
        outbound in any::<bool>(),
        start in any_time(),
        handshake_steps in 0usize..5,
        step_times in prop::collection::vec(any_time(), 4),
        ops in prop::collection::vec(clock_op(), 0..48),
    ) {
        let mut s = if outbound {
            Session::outbound(node_a(), node_b().addr, 7, ms(start))
        } else {
            inbound_b(ms(start))
        };
        // Often the peer first plays its part of the handshake (its Hello, its Ack, then our
        // registry's verdict, then its Pong to our first ping), each step at a random time, so
        // the arbitrary input that follows also meets the later states.
        let (peer_hello, seq) = if outbound {
            (hello_of(&node_b(), 7), 7u64)
        } else {
            (hello_of(&node_a(), 1), 1u64)
        };
        let script = [
            ClockOp::Data(frame(&Message::Hello(peer_hello)), step_times[0]),
            ClockOp::Data(frame(&Message::Ack), step_times[1]),
            ClockOp::Accept(step_times[2]),
            ClockOp::Data(frame(&Message::Pong((seq << 32) ^ 1)), step_times[3]),
        ];
        let ops = script.into_iter().take(handshake_steps).chain(ops);
        let mut check = Invariants::new(NET);
        for op in ops {
            match op {
                ClockOp::Data(bytes, t) => s.on_data(&bytes, ms(t)),
                ClockOp::Tick(t) => s.on_tick(ms(t)),
                ClockOp::Accept(t) => s.accept(ms(t)),
                ClockOp::Eof(t) => s.on_eof(ms(t)),
                ClockOp::Close(code, t) => s.close(Reason::from_code(code), ms(t)),
                ClockOp::Drain(n) => {
                    let n = n % (s.pending_output().len() + 1);
                    check.written(&s.pending_output()[..n]);
                    s.consume_output(n);
                    if s.wants_fin() {
                        s.fin_sent();
                    }
                }
                ClockOp::Backlog(n, t) => {
                    // Any claim, even more than was ever written: the session must cope.
                    s.on_transport_backlog(n % 4096, ms(t));
                }
                ClockOp::IoError => s.on_io_error("injected".into()),
            }
            let _ = s.next_deadline();
            check.after_step(&mut s);
        }
    }
}
