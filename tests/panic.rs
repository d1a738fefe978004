//! One peer worker's panic ends only its own connection: the daemon keeps running, its other
//! links stay up, and the registry forgets the dead connection. (The release profile keeps
//! `panic = "unwind"` for exactly this.) Debug builds panic on purpose for a peer whose
//! agent is `timed::peer::PANIC_TEST_AGENT`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use timed::wire::{self, FrameDecoder, Hello, Message, Network};

/// Completes a handshake as a peer whose agent asks the worker to panic.
fn panicking_peer(target: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(target).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let local = s.local_addr().unwrap();
    let hello = Hello {
        network: Network::Testnet,
        version: wire::PROTOCOL_VERSION,
        min_version: wire::MIN_PROTOCOL_VERSION,
        addr: SocketAddr::new(local.ip(), 24999),
        boot_id: 0xdead_beef,
        seq: 1,
        masternode: false,
        agent: timed::peer::PANIC_TEST_AGENT.into(),
    };
    s.write_all(&wire::encode(Network::Testnet, &Message::Hello(hello)))
        .unwrap();
    // Their Hello and Ack, then our Ack completes the handshake at their end.
    let mut decoder = FrameDecoder::new(Network::Testnet);
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while got.len() < 2 {
        let n = s.read(&mut buf).expect("read the handshake");
        assert!(n > 0, "closed during the handshake: {got:?}");
        let mut input = &buf[..n];
        while let Some(m) = decoder.decode(&mut input).expect("valid frames") {
            got.push(m);
        }
    }
    assert!(
        matches!(got[..], [Message::Hello(_), Message::Ack]),
        "{got:?}"
    );
    s.write_all(&wire::encode(Network::Testnet, &Message::Ack))
        .unwrap();
    s
}

#[test]
fn a_panicking_worker_leaves_the_daemon_and_its_other_links_alone() {
    let h = Harness::new("panic");
    let list = h.addrs(&[2, 3]);
    let mut a = h
        .node(2)
        .masternodes(&list)
        .fast()
        .rust_log("info,timed::daemon=debug,timed::peer=debug")
        .spawn();
    let mut b = h.node(3).masternodes(&list).fast().spawn();
    a.wait_healthy(Duration::from_secs(10));
    b.wait_healthy(Duration::from_secs(10));
    wait_mesh(&[&a, &b], Duration::from_secs(15));
    let before = a.handshake_lines().len();

    let mut peer = panicking_peer(a.addr);
    // The worker dies with the connection; the peer sees it closed.
    let mut buf = [0u8; 64];
    let closed = loop {
        match peer.read(&mut buf) {
            Ok(0) | Err(_) => break true,
            Ok(_) => continue,
        }
    };
    assert!(closed);
    wait_for(Duration::from_secs(5), "the panic to be logged", || {
        a.log().contains("panicked")
    });

    // Still running, still serving, the other link untouched and the dead one forgotten.
    assert!(a.is_running(), "the daemon died with its worker");
    wait_for(
        Duration::from_secs(5),
        "the registry to drop the dead connection",
        || {
            let peers = a.peers();
            peers.as_array().is_some_and(|p| p.len() == 1)
                && peers[0]["address"] == b.addr.to_string()
        },
    );
    let info = a.consensus_info();
    assert_eq!(info["connected_peers"], 1, "{info}");
    assert_eq!(
        a.handshake_lines().len(),
        before,
        "the link to b was not re-made"
    );
    // Pings still flow on the surviving link.
    let first = a.peers()[0]["connected_secs"].as_u64().unwrap();
    wait_for(Duration::from_secs(5), "the surviving link to age", || {
        a.peers()[0]["connected_secs"].as_u64().unwrap_or(0) > first
    });
    // And the daemon still shuts down cleanly.
    let status = a
        .terminate(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no exit within 5 s:\n{}", a.log()));
    assert!(status.success(), "{}", describe(&status));
    let _ = b.terminate(Duration::from_secs(5));
}
