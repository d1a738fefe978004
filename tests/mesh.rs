//! Multi-node tests: real `timed` processes on loopback addresses forming a mesh.
//!
//! Host numbers deliberately straddle 9/10 (and 2/12 and so on): `127.x.y.9 < 127.x.y.10`
//! numerically while the strings compare the other way, so a string comparison anywhere in
//! the ordering rule shows up as a link dialed from the wrong side.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;

/// Generous deadline for a mesh to form (it takes well under a second on an idle machine).
const FORM: Duration = Duration::from_secs(20);

/// Every `Handshake accepted from` / `Handshake completed with` line of `node`.
fn handshake_count(node: &Node) -> usize {
    node.handshake_lines().len()
}

/// Watches a complete mesh for at least `secs` seconds of connection age: polls until every
/// link's `connected_secs` has grown by `secs` over its first observed value, checking on
/// every poll that the mesh is still complete and that no node logged another handshake or a
/// disconnect. A reconnect would reset `connected_secs` or log a handshake.
fn assert_stable(nodes: &[&Node], secs: u64) {
    assert_stable_groups(&[nodes.to_vec()], secs)
}

/// [`assert_stable`] for several independent meshes watched over the same window.
fn assert_stable_groups(groups: &[Vec<&Node>], secs: u64) {
    let nodes: Vec<&Node> = groups.iter().flatten().copied().collect();
    for g in groups {
        mesh_complete(g).expect("mesh complete at the start of the stability window");
    }
    let handshakes: Vec<usize> = nodes.iter().map(|n| handshake_count(n)).collect();
    let disconnects: Vec<usize> = nodes
        .iter()
        .map(|n| n.log_lines("Disconnected from").len())
        .collect();
    let mut first: BTreeMap<(SocketAddr, SocketAddr), u64> = BTreeMap::new();
    for n in &nodes {
        for row in n.try_peer_table().expect("peers") {
            first.insert((n.addr, row.address), row.connected_secs);
        }
    }
    wait_until(
        Duration::from_secs(secs + 10),
        &format!("{secs} s of stable links"),
        || {
            for g in groups {
                mesh_complete(g).map_err(|e| format!("mesh broke during the window:\n{e}"))?;
            }
            let mut behind = Vec::new();
            for (i, n) in nodes.iter().enumerate() {
                let now = handshake_count(n);
                assert_eq!(
                    now,
                    handshakes[i],
                    "{} logged a new handshake during the stability window:\n{}",
                    n.addr,
                    n.log_tail(20)
                );
                let d = n.log_lines("Disconnected from").len();
                assert_eq!(
                    d,
                    disconnects[i],
                    "{} logged a disconnect during the stability window:\n{}",
                    n.addr,
                    n.log_tail(20)
                );
                for row in n.try_peer_table()? {
                    let start = first[&(n.addr, row.address)];
                    assert!(
                        row.connected_secs >= start,
                        "{}: link with {} was replaced (connected_secs {} -> {})",
                        n.addr,
                        row.address,
                        start,
                        row.connected_secs
                    );
                    if row.connected_secs < start + secs {
                        behind.push(format!(
                            "{} -> {}: connected_secs {} (started at {start})",
                            n.addr, row.address, row.connected_secs
                        ));
                    }
                }
            }
            if behind.is_empty() {
                Ok(())
            } else {
                Err(behind.join("\n"))
            }
        },
    );
}

#[test]
fn four_nodes_form_six_links_dialed_by_the_lower_address_and_stay_stable() {
    let h = Harness::new("four_nodes");
    let mesh = Mesh::start(&h, &[3, 9, 10, 20], |b| b.fast());
    mesh.wait_complete(FORM);
    let nodes: Vec<&Node> = mesh.nodes.iter().collect();

    assert_eq!(
        link_count(&nodes).unwrap(),
        6,
        "4 nodes must have exactly 6 links"
    );
    for n in &nodes {
        let info = n.consensus_info();
        assert_eq!(info["active_masternodes"], 4, "{}: {info}", n.addr);
        assert_eq!(info["connected_peers"], 3, "{}: {info}", n.addr);
        assert_eq!(info["masternode"], true, "{}: {info}", n.addr);
        assert_eq!(info["total_masternodes"], 4, "{}: {info}", n.addr);
        assert_eq!(
            info["local_address"],
            n.addr.to_string(),
            "{}: {info}",
            n.addr
        );
        // The lower address dials: outbound count = number of higher nodes.
        let higher = nodes.iter().filter(|m| m.addr > n.addr).count() as u64;
        assert_eq!(info["outbound"], higher, "{}: {info}", n.addr);
        assert_eq!(info["inbound"], 3 - higher, "{}: {info}", n.addr);
        // Exactly one handshake per peer so far: nothing was lost or redone.
        assert_eq!(handshake_count(n), 3, "{}:\n{}", n.addr, n.log());
    }
    // /masternodes agrees: every listed peer established, in the expected direction.
    for n in &nodes {
        let list = n.masternodes();
        let rows = list.as_array().expect("array");
        assert_eq!(rows.len(), 3, "{}: {list}", n.addr);
        for row in rows {
            assert_eq!(row["state"], "established", "{}: {row}", n.addr);
            assert_eq!(row["connected"], true, "{}: {row}", n.addr);
            assert_eq!(
                row["direction"], row["expected_direction"],
                "{}: {row}",
                n.addr
            );
        }
    }
    // Over three ping intervals nothing reconnects.
    assert_stable(&nodes, 3);
}

#[test]
fn eight_nodes_started_at_once_converge_without_collisions() {
    let h = Harness::new("eight_nodes");
    // 5..=12 crosses 9/10; started back to back, every node races every other.
    let hosts = [5, 6, 7, 8, 9, 10, 11, 12];
    let mesh = Mesh::start(&h, &hosts, |b| b.fast().debug());
    mesh.wait_complete(FORM);
    let nodes: Vec<&Node> = mesh.nodes.iter().collect();
    assert_eq!(link_count(&nodes).unwrap(), 28);

    for n in &nodes {
        let log = n.log();
        for bad in [
            "Rejecting duplicate",
            "Replacing connection",
            "Disconnected from",
        ] {
            let hits: Vec<&str> = log.lines().filter(|l| l.contains(bad)).collect();
            assert!(
                hits.is_empty(),
                "{} logged {bad:?} while the mesh formed:\n{}",
                n.addr,
                hits.join("\n")
            );
        }
        let lines = n.handshake_lines();
        assert_eq!(
            lines.len(),
            7,
            "{}: want exactly one handshake per peer, got:\n{}",
            n.addr,
            lines.join("\n")
        );
        // And each with a different peer, in the expected direction.
        for m in nodes.iter().filter(|m| m.addr != n.addr) {
            let phrase = if n.addr < m.addr {
                format!("Handshake completed with {}", m.addr)
            } else {
                format!("Handshake accepted from {}", m.addr)
            };
            assert!(
                lines.iter().any(|l| l.contains(&phrase)),
                "{}: no {phrase:?} in:\n{}",
                n.addr,
                lines.join("\n")
            );
        }
        // The higher node of each pair never dials it; it says so at debug level.
        for m in nodes.iter().filter(|m| m.addr < n.addr) {
            let phrase = format!(
                "Skipping outbound to {} (they should connect to us: {} > {})",
                m.addr, n.addr, m.addr
            );
            assert!(log.contains(&phrase), "{}: missing {phrase:?}", n.addr);
            let wrong = format!("Dialing {} ", m.addr);
            assert!(
                !log.contains(&wrong),
                "{} dialed the lower address {}",
                n.addr,
                m.addr
            );
        }
    }
}

#[test]
fn node_killed_with_sigkill_and_restarted_rejoins_without_duplicates() {
    let h = Harness::new("sigkill_restart");
    // Default fallbackgrace (60 s): only the designated dials or the boot-id rule can bring
    // the restarted node back within the deadline.
    let mut mesh = Mesh::start(&h, &[2, 9, 10, 11], |b| b.fast());
    mesh.wait_complete(FORM);

    // .9 is dialed by .2 and dials .10 and .11 itself.
    let victim = 1;
    let status = mesh.nodes[victim].kill9();
    assert_eq!(status.code(), None, "SIGKILL expected");
    let victim_addr = mesh.nodes[victim].addr;
    let mark = mesh.nodes[victim].log_mark();
    mesh.nodes[victim].restart();

    let nodes: Vec<&Node> = mesh.nodes.iter().collect();
    wait_mesh(&nodes, Duration::from_secs(10));
    // Afterwards: nobody holds a second link to the restarted node, and it stays that way.
    assert_stable(&nodes, 2);
    let restarted = &mesh.nodes[victim];
    assert_eq!(
        handshake_count_since(restarted, mark),
        3,
        "{victim_addr} after restart:\n{}",
        restarted.log_since(mark)
    );
}

fn handshake_count_since(node: &Node, mark: usize) -> usize {
    node.log_since(mark)
        .lines()
        .filter(|l| l.contains("Handshake accepted from") || l.contains("Handshake completed with"))
        .count()
}

#[test]
fn forced_duplicate_converges_to_the_link_dialed_by_the_lower_address() {
    let h = Harness::new("forced_duplicate");
    // Five independent pairs, raced side by side; the first crosses 9/10.
    let pairs: [(u8, u8); 5] = [(9, 10), (2, 3), (4, 12), (13, 14), (15, 16)];
    let mut nodes: Vec<(Node, Node)> = Vec::new();
    for (a_host, b_host) in pairs {
        let list = h.addrs(&[a_host, b_host]);
        // A (lower) is the designated dialer; B has no grace and dials A at once as well.
        let a = h.node(a_host).masternodes(&list).fast().debug().spawn();
        let b = h
            .node(b_host)
            .masternodes(&list)
            .fast()
            .debug()
            .arg("--fallbackgrace=0")
            .spawn();
        assert!(a.addr < b.addr);
        nodes.push((a, b));
    }
    let mut raced = 0;
    for (a, b) in &nodes {
        wait_mesh(&[a, b], FORM);
        let a_peers = a.try_peer_table().unwrap();
        let b_peers = b.try_peer_table().unwrap();
        assert_eq!(a_peers.len(), 1, "{}: {a_peers:?}", a.addr);
        assert_eq!(a_peers[0].direction, "outbound", "{}: {a_peers:?}", a.addr);
        assert_eq!(b_peers.len(), 1, "{}: {b_peers:?}", b.addr);
        assert_eq!(b_peers[0].direction, "inbound", "{}: {b_peers:?}", b.addr);

        // If B's own dial completed a handshake, there were two links: the duplicate rule
        // must have been applied (by at least the end that saw both links established; the
        // other may learn it from the peer's Disconnect first), and both ends must have the
        // loser closed with reason "duplicate", never as a failure.
        let b_dialed = b
            .log_lines(&format!("Handshake completed with {}", a.addr))
            .len();
        let (a_log, b_log) = (a.log(), b.log());
        let resolved = |log: &str, peer: SocketAddr| {
            log.contains(&format!("Rejecting duplicate connection from {peer}"))
                || log.contains(&format!("Replacing connection to {peer}"))
        };
        let closed_duplicate = |log: &str, peer: SocketAddr| {
            log.contains(&format!("Connection with {peer} closed: duplicate"))
        };
        if b_dialed > 0 {
            raced += 1;
            assert!(
                resolved(&a_log, b.addr) || resolved(&b_log, a.addr),
                "pair {}/{}: B's link completed but neither end resolved the duplicate\n\
                 --- A:\n{a_log}\n--- B:\n{b_log}",
                a.addr,
                b.addr
            );
            for (log, peer, who) in [(&a_log, b.addr, "A"), (&b_log, a.addr, "B")] {
                assert!(
                    resolved(log, peer) || closed_duplicate(log, peer),
                    "{who} neither resolved the duplicate nor was told 'duplicate':\n{log}"
                );
            }
        }
        // A duplicate is no failure: no "Disconnected from" line, and it stays one link.
        for (n, log) in [(a, &a_log), (b, &b_log)] {
            let hits: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("Disconnected from"))
                .collect();
            assert!(
                hits.is_empty(),
                "{}: a duplicate was treated as a failure:\n{}",
                n.addr,
                hits.join("\n")
            );
        }
        let b_mn = b.masternodes();
        assert_eq!(b_mn[0]["state"], "established", "{b_mn}");
        assert_eq!(b_mn[0]["direction"], "inbound", "{b_mn}");
    }
    let groups: Vec<Vec<&Node>> = nodes.iter().map(|(a, b)| vec![a, b]).collect();
    assert_stable_groups(&groups, 2);
    assert!(
        raced > 0,
        "in none of {} pairs did the higher node's dial complete: the race was never run",
        pairs.len()
    );
    eprintln!(
        "forced duplicate: {raced} of {} pairs raced to two links",
        pairs.len()
    );
    let mut all: Vec<Node> = nodes.into_iter().flat_map(|(a, b)| [a, b]).collect();
    stop_all(&mut all);
}

#[test]
fn sigterm_exits_zero_within_five_seconds_and_peers_see_shutdown() {
    let h = Harness::new("sigterm");
    let mut mesh = Mesh::start(&h, &[2, 9, 10], |b| b.fast());
    mesh.wait_complete(FORM);

    let gone = mesh.nodes.remove(1);
    let gone_addr = gone.addr;
    let mut gone = gone;
    let started = std::time::Instant::now();
    let status = gone
        .terminate(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no exit within 5 s of SIGTERM:\n{}", gone.log_tail(30)));
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM: {}\n{}",
        describe(&status),
        gone.log_tail(30)
    );
    eprintln!("{gone_addr} exited 0 after {:.2?}", started.elapsed());

    let phrase = format!("Disconnected from {gone_addr}: shutdown");
    for n in &mesh.nodes {
        wait_until(
            Duration::from_secs(5),
            &format!("{} to log {phrase:?}", n.addr),
            || {
                if n.log().contains(&phrase) {
                    Ok(())
                } else {
                    Err(n.log_tail(10))
                }
            },
        );
    }
    // The survivors keep their own link and drop the stopped node.
    let nodes: Vec<&Node> = mesh.nodes.iter().collect();
    wait_until(
        Duration::from_secs(5),
        "survivors without the stopped node",
        || {
            for n in &nodes {
                let peers = n.try_peer_table()?;
                if peers.len() != 1 || peers[0].address == gone_addr {
                    return Err(format!("{}: {peers:?}", n.addr));
                }
            }
            Ok(())
        },
    );

    // Stopping every remaining node at the same instant: each exits 0 within 5 s.
    for n in &mut mesh.nodes {
        n.signal("TERM");
    }
    for n in &mut mesh.nodes {
        let status = n.wait_exit(Duration::from_secs(5)).unwrap_or_else(|| {
            panic!(
                "{} did not exit within 5 s of SIGTERM (all stopped together):\n{}",
                n.addr,
                n.log_tail(30)
            )
        });
        assert_eq!(status.code(), Some(0), "{}: {}", n.addr, describe(&status));
    }
}

#[test]
fn sighup_reloads_the_masternode_list() {
    let h = Harness::new("sighup");
    // X = .9 is the node under test. P = .2 dials X; Q = .10, R = .11 and S = .12 are
    // higher, so X must dial them (the string order would say .10, .11, .12 < .9).
    let x = h.addr(9);
    let (p, q, r, s) = (h.addr(2), h.addr(10), h.addr(11), h.addr(12));
    let conf = |list: &[SocketAddr]| {
        let mut text = String::from("# written by the sighup test\n");
        for m in list {
            text.push_str(&format!("masternode={m}\n"));
        }
        text
    };
    let path = h.write_file("x.conf", &conf(&[x, p, q, r]));
    let mut xn = h.node(9).conf(&path).fast().debug().spawn();
    // Each other node knows only itself and X.
    let others: Vec<Node> = [2u8, 10, 11, 12]
        .iter()
        .map(|host| {
            h.node(*host)
                .masternodes(&[h.addr(*host), x])
                .fast()
                .spawn()
        })
        .collect();
    let (pn, qn, rn, sn) = (&others[0], &others[1], &others[2], &others[3]);

    let peers_of = |n: &Node| -> Result<BTreeMap<SocketAddr, String>, String> {
        Ok(n.try_peer_table()?
            .into_iter()
            .map(|r| (r.address, r.direction))
            .collect())
    };
    wait_until(FORM, "X connected to P, Q and R", || {
        let got = peers_of(&xn)?;
        let want: BTreeMap<SocketAddr, String> = [
            (p, "inbound".to_string()),
            (q, "outbound".to_string()),
            (r, "outbound".to_string()),
        ]
        .into_iter()
        .collect();
        if got == want {
            Ok(())
        } else {
            Err(format!("X peers {got:?}, want {want:?}"))
        }
    });
    assert!(
        peers_of(sn).unwrap().is_empty(),
        "S must wait for X to dial"
    );
    let info = xn.consensus_info();
    assert_eq!(info["total_masternodes"], 4, "{info}");
    assert_eq!(info["active_masternodes"], 4, "{info}");

    let kept: Vec<(SocketAddr, u64)> = xn
        .try_peer_table()
        .unwrap()
        .into_iter()
        .filter(|row| row.address == p || row.address == q)
        .map(|row| (row.address, row.connected_secs))
        .collect();
    let handshakes_before = handshake_count(&xn);

    // Add S, remove R, reload.
    std::fs::write(&path, conf(&[x, p, q, s])).unwrap();
    let mark = xn.log_mark();
    xn.signal("HUP");

    wait_until(FORM, "X connected to P, Q and S, not R", || {
        let got = peers_of(&xn)?;
        let want: BTreeMap<SocketAddr, String> = [
            (p, "inbound".to_string()),
            (q, "outbound".to_string()),
            (s, "outbound".to_string()),
        ]
        .into_iter()
        .collect();
        if got != want {
            return Err(format!("X peers {got:?}, want {want:?}"));
        }
        let r_peers = peers_of(rn)?;
        if !r_peers.is_empty() {
            return Err(format!("R still has {r_peers:?}"));
        }
        let s_peers = peers_of(sn)?;
        if s_peers.get(&x).map(String::as_str) != Some("inbound") {
            return Err(format!("S peers {s_peers:?}"));
        }
        Ok(())
    });
    let info = xn.consensus_info();
    assert_eq!(info["total_masternodes"], 4, "{info}");
    assert_eq!(info["active_masternodes"], 4, "{info}");
    assert_eq!(info["connected_peers"], 3, "{info}");

    // Nothing else restarted: the links with P and Q are the same connections.
    let after = xn.try_peer_table().unwrap();
    for (addr, secs) in kept {
        let row = after.iter().find(|r| r.address == addr).unwrap();
        assert!(
            row.connected_secs >= secs,
            "link with {addr} was re-made on SIGHUP"
        );
    }
    assert_eq!(
        handshake_count(&xn),
        handshakes_before + 1,
        "exactly one new handshake (with S) after SIGHUP:\n{}",
        xn.log_since(mark)
    );
    let since = xn.log_since(mark);
    assert!(
        since.contains(&format!("Handshake completed with {s}")),
        "{since}"
    );
    assert!(xn.is_running(), "SIGHUP must not stop the node");
    // P and Q did not see a disconnect.
    for n in [pn, qn] {
        assert!(
            n.log_lines("Disconnected from").is_empty(),
            "{}:\n{}",
            n.addr,
            n.log()
        );
    }
    // X's /masternodes now lists P, Q, S.
    let listed: Vec<String> = xn
        .masternodes()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["address"].as_str().unwrap_or("").to_string())
        .collect();
    let mut want = vec![p.to_string(), q.to_string(), s.to_string()];
    want.sort();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    assert_eq!(listed_sorted, want, "/masternodes after SIGHUP: {listed:?}");
}
