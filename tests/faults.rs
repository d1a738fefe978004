//! Network faults against real `timed` processes: what the protections are for, shown on
//! the wire rather than in the simulator.
//!
//! 1. **A partition that heals.** The cable between two nodes is cut both ways until the
//!    ping timeout ends their link at both ends (and the higher one has begun its fallback
//!    dials), then healed. The link comes back dialed by the lower address, as exactly one
//!    connection, and the links the partition did not touch never dropped.
//! 2. **A frozen node.** SIGSTOP: its kernel still acknowledges every byte, so only the
//!    silence of the process tells. Its peers end their links with `timeout`; after SIGCONT
//!    the links are replaced by new ones, one per pair, and the woken node joins the mesh.
//! 3. **Inbound blocked, outbound works (NAT).** The highest node drops every new inbound
//!    connection to its P2P port, so the lower nodes, whose job it is to dial it, cannot.
//!    The mesh still completes, through the fallback: after `fallbackgrace` the node behind
//!    NAT dials out itself. Its links are outbound from it (without the fallback there would
//!    be none), the designated dialers keep trying over them without disturbing them, and
//!    once the NAT is gone the duplicate rule hands every link back to the lower address.
//! 4. **A lost FIN.** A node shuts down while everything it sends to one peer is dropped, so
//!    its `Disconnect` and FIN never arrive there. That peer still ends the dead link, by
//!    ping timeout, while the node is away (another peer, which did get the FIN, saw the
//!    shutdown at once), and the mesh is whole again when the node returns.
//!
//! Why namespaces: loopback never loses a packet, and all loopback addresses share one
//! netfilter ruleset. Each outer test re-runs this binary in a private network namespace
//! (`unshare -n`, nothing reaches the host), where the nodes run on addresses of `lo` and the
//! node a fault is aimed at runs in a namespace of its own behind a veth pair (a [`Cage`]):
//! nftables rules in its namespace then act on that node alone, the way a broken cable, a
//! firewall or a NAT in front of one host would. Every node listens and dials from its own
//! address.
//!
//! Timings are shortened (`pinginterval=500ms`, `pingtimeout=3s`, `handshaketimeout=2s`,
//! fast redials) so each test takes seconds; every wait is a poll with a generous deadline.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Set in the environment of the inner runs, inside the private namespace.
const INNER_ENV: &str = "TIMED_TEST_FAULTS_INNER";

/// Every test's addresses: `lo` of the private namespace, and the cage's veth.
const NET: &str = "10.77.0.0/24";

const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Short timings; `fallbackgrace` is each test's own.
const TIMINGS: &[&str] = &[
    "--pinginterval=500ms",
    "--pingtimeout=3s",
    "--handshaketimeout=2s",
    "--reconnectmin=100ms",
    "--reconnectmax=1s",
];

/// Debug for the decisions (`Dialing`, `Dial to … failed`, `Replacing connection to`), but
/// not a line per status request: the tests poll every 50 ms.
const LOG_FILTER: &str = "debug,timed::status=info";

/// Deadline for a mesh to form or re-form (about a second when the machine is idle).
const FORM: Duration = Duration::from_secs(20);

/// Deadline for a dead link to be noticed: the ping timeout and then some, for a busy machine.
const DETECT: Duration = Duration::from_secs(15);

/// The hub's own address for the test's status requests (see [`Cage::hub_source`]).
const OBSERVER: u8 = 100;

fn ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, host)
}

fn addr(host: u8) -> SocketAddr {
    SocketAddr::from((ip(host), P2P_PORT))
}

// ---------------------------------------------------------------------------------------
// The outer tests: each runs its inner test in a private network namespace.

fn run_inner(inner: &str, what: &str, needs_nft: bool) {
    if needs_nft && netns_unavailable().is_none() {
        if let Some(why) = nft_unavailable() {
            let msg = format!("{what} needs nftables in a network namespace: {why}");
            if std::env::var_os("CI").is_some() {
                panic!("{msg}");
            }
            eprintln!("SKIPPED: {msg} (this fails when CI is set)");
            return;
        }
    }
    let Some((stdout, stderr)) = run_in_private_netns(inner, INNER_ENV, what) else {
        return;
    };
    assert!(
        stdout.contains("1 passed") && stderr.contains(&format!("{inner}: passed")),
        "the inner test did not run:\n{stdout}\n{stderr}"
    );
}

#[test]
fn partition_heals_in_the_designated_direction() {
    run_inner("inner_partition", "the partition test", true);
}

#[test]
fn frozen_node_is_timed_out_and_rejoins() {
    run_inner("inner_frozen", "the frozen-node test", false);
}

#[test]
fn node_behind_nat_is_meshed_by_the_fallback() {
    run_inner("inner_nat", "the NAT fallback test", true);
}

#[test]
fn lost_fin_does_not_leave_a_dead_link() {
    run_inner("inner_lost_fin", "the lost-FIN test", true);
}

// ---------------------------------------------------------------------------------------
// Helpers of the inner tests

/// Whether this is the inner run; prints why not otherwise.
fn inside(test: &str) -> bool {
    let inside = std::env::var_os(INNER_ENV).is_some();
    if !inside {
        eprintln!("{test} only runs inside the namespace its outer test makes; skipped");
    }
    inside
}

/// Brings up `lo` of the private namespace with the addresses of the hosts that live on it
/// and the observer's.
fn hub(hosts: &[u8]) {
    sh("ip link set lo up");
    for h in hosts.iter().chain([&OBSERVER]) {
        sh(&format!("ip addr add {}/32 dev lo", ip(*h)));
    }
}

/// A cage for `host`, reached from the observer's address.
fn cage(host: u8) -> Cage {
    let cage = Cage::new(1, ip(host), NET);
    cage.hub_source(ip(OBSERVER));
    cage
}

/// One masternode on each of `hosts`, all listing each other, with the short timings and
/// `extra`; the host `caged.0` runs in the namespace of `caged.1`.
fn start(h: &Harness, hosts: &[u8], caged: Option<(u8, &Cage)>, extra: &[&str]) -> Mesh {
    let list: Vec<SocketAddr> = hosts.iter().map(|h| addr(*h)).collect();
    let nodes = hosts
        .iter()
        .map(|host| {
            let mut b = h
                .node_at(ip(*host))
                .masternodes(&list)
                .args(TIMINGS)
                .args(extra)
                .rust_log(LOG_FILTER);
            if let Some((_, cage)) = caged.filter(|(c, _)| c == host) {
                b = b.netns(cage.pid());
            }
            b.spawn()
        })
        .collect();
    Mesh { nodes }
}

/// Whether `node` has no link with `peer` (an error if it does, or has two).
fn no_link(node: &Node, peer: SocketAddr) -> Result<(), String> {
    match node.try_link_with(peer)? {
        None => Ok(()),
        Some(row) => Err(format!("{} still has {row:?}", node.name)),
    }
}

/// The age in seconds of `node`'s one link with `peer`; panics without one.
fn age(node: &Node, peer: SocketAddr) -> u64 {
    match node.try_link_with(peer) {
        Ok(Some(row)) => row.connected_secs,
        Ok(None) => panic!("{} has no link with {peer}", node.name),
        Err(e) => panic!("{e}"),
    }
}

/// Panics unless `node` logged, after `mark`, that its link with `peer` ended with exactly
/// `reason` (its own verdict: a reason the peer gave would end in "(by peer)").
fn assert_disconnected(node: &Node, mark: usize, peer: SocketAddr, reason: &str) {
    let lines = node.log_lines_since(mark, &format!("Disconnected from {peer}: "));
    assert!(
        lines
            .iter()
            .any(|l| l.trim_end().ends_with(&format!(": {reason}"))),
        "{} did not log `Disconnected from {peer}: {reason}`; its lines about it: {lines:#?}",
        node.name
    );
}

/// Links a fault must leave alone: their ages and the logs' lengths when it began.
struct Untouched {
    /// (node index, peer index, age in seconds).
    links: Vec<(usize, usize, u64)>,
    marks: Vec<usize>,
    since: Instant,
}

impl Untouched {
    fn record(nodes: &[Node], pairs: &[(usize, usize)]) -> Untouched {
        let mut links = Vec::new();
        for &(i, j) in pairs {
            links.push((i, j, age(&nodes[i], nodes[j].addr)));
            links.push((j, i, age(&nodes[j], nodes[i].addr)));
        }
        Untouched {
            links,
            marks: nodes.iter().map(Node::log_mark).collect(),
            since: Instant::now(),
        }
    }

    /// Every recorded link is still the same connection: it aged at least as long as the
    /// wall clock (a replacement would be younger), and neither end logged a disconnect or a
    /// new handshake with the other.
    fn check(&self, nodes: &[Node]) {
        let elapsed = self.since.elapsed().as_secs();
        for &(i, j, before) in &self.links {
            let (node, peer) = (&nodes[i], nodes[j].addr);
            let now = age(node, peer);
            assert!(
                now + 1 >= before + elapsed,
                "{}'s link with {peer} was {before} s old {elapsed} s ago and is {now} s old \
                 now: it was replaced",
                node.name
            );
            let log = node.log_since(self.marks[i]);
            let bad: Vec<&str> = log
                .lines()
                .filter(|l| {
                    l.contains(&peer.to_string())
                        && (l.contains("Disconnected from")
                            || l.contains("Handshake accepted from")
                            || l.contains("Handshake completed with"))
                })
                .collect();
            assert!(
                bad.is_empty(),
                "{} logged about its untouched link with {peer}: {bad:#?}",
                node.name
            );
        }
    }
}

/// Established TCP sockets from `local` to `remote`, counted by the kernel of the namespace
/// `local` lives in (a cage's, or ours): what the daemon's table cannot hide.
fn sockets(cage: Option<&Cage>, local: Ipv4Addr, remote: Ipv4Addr) -> usize {
    let mut cmd = match cage {
        Some(c) => {
            let mut cmd = Command::new("nsenter");
            cmd.args(["-t", &c.pid().to_string(), "-n", "ss"]);
            cmd
        }
        None => Command::new("ss"),
    };
    let out = cmd
        .args(["-Htn", "state", "established", "src"])
        .arg(local.to_string())
        .arg("dst")
        .arg(remote.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("run ss (install iproute2)");
    assert!(
        out.status.success(),
        "ss failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// Waits until the kernels at both ends hold exactly one established connection between
/// `a` and `b` (a closed loser may take a moment to leave `ESTABLISHED`).
fn wait_one_socket(a: (Ipv4Addr, Option<&Cage>), b: (Ipv4Addr, Option<&Cage>)) {
    wait_until(
        Duration::from_secs(10),
        &format!("one TCP connection between {} and {}", a.0, b.0),
        || {
            let (at_a, at_b) = (sockets(a.1, a.0, b.0), sockets(b.1, b.0, a.0));
            if at_a == 1 && at_b == 1 {
                Ok(())
            } else {
                Err(format!(
                    "established sockets: {at_a} at {}, {at_b} at {}",
                    a.0, b.0
                ))
            }
        },
    );
}

/// Checks `check` on every poll for `window`: the mesh must not just form but stay.
fn assert_holds(window: Duration, what: &str, check: impl Fn() -> Result<(), String>) {
    let end = Instant::now() + window;
    while Instant::now() < end {
        if let Err(e) = check() {
            panic!("{what} broke within {window:?}:\n{e}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn refs(mesh: &Mesh) -> Vec<&Node> {
    mesh.nodes.iter().collect()
}

// ---------------------------------------------------------------------------------------
// 1. Partition

#[test]
#[ignore = "runs only inside the private network namespace made by partition_heals_in_the_designated_direction"]
fn inner_partition() {
    if !inside("inner_partition") {
        return;
    }
    // A (.1, caged) < B (.2) < C (.3): A is B's designated dialer.
    hub(&[2, 3]);
    let h = Harness::new("faults-partition");
    let cage = cage(1);
    // A short grace, so B falls back to dialing A during the partition too: after the heal
    // both ends dial, and the link must still end up A's.
    let mesh = start(&h, &[1, 2, 3], Some((1, &cage)), &["--fallbackgrace=2s"]);
    let all = refs(&mesh);
    let [a, b, _c] = [&mesh.nodes[0], &mesh.nodes[1], &mesh.nodes[2]];
    wait_mesh(&all, FORM);
    let untouched = Untouched::record(&mesh.nodes, &[(0, 2), (1, 2)]);
    let marks: Vec<usize> = mesh.nodes.iter().map(Node::log_mark).collect();

    cage.nft(&format!(
        "table inet partition {{
            chain in {{ type filter hook input priority 0; ip saddr {b} drop; }}
            chain out {{ type filter hook output priority 0; ip daddr {b} drop; }}
        }}",
        b = ip(2)
    ));
    let cut = Instant::now();
    wait_until(DETECT, "A and B to end their link", || {
        no_link(a, b.addr)?;
        no_link(b, a.addr)
    });
    let noticed = cut.elapsed();
    // Both ends decided on their own, from silence: nothing else can cross the cut.
    assert_disconnected(a, marks[0], b.addr, "timeout");
    assert_disconnected(b, marks[1], a.addr, "timeout");
    // B, the higher end, waits `fallbackgrace` after the loss and then dials A itself.
    let fallback = format!("Dialing {} (fallback:", a.addr);
    wait_for(DETECT, "B's fallback dial to A", || {
        !b.log_lines_since(marks[1], &fallback).is_empty()
    });

    cage.nft("delete table inet partition");
    let healed = Instant::now();
    wait_mesh(&all, FORM);
    let reformed = healed.elapsed();
    // A new connection (not a resurrected one), dialed by A, and the only one.
    let fresh = healed.elapsed().as_secs() + 1;
    for (x, y) in [(a, b), (b, a)] {
        let secs = age(x, y.addr);
        assert!(
            secs <= fresh,
            "{}'s link with {} is {secs} s old: the old connection survived the partition",
            x.name,
            y.addr
        );
    }
    wait_one_socket((ip(1), Some(&cage)), (ip(2), None));
    assert_holds(Duration::from_secs(2), "the healed mesh", || {
        mesh_complete(&all)
    });
    untouched.check(&mesh.nodes);
    eprintln!(
        "inner_partition: passed (link ended {noticed:.1?} after the cut, back \
         {reformed:.1?} after the heal)"
    );
}

// ---------------------------------------------------------------------------------------
// 2. Frozen node

#[test]
#[ignore = "runs only inside the private network namespace made by frozen_node_is_timed_out_and_rejoins"]
fn inner_frozen() {
    if !inside("inner_frozen") {
        return;
    }
    // A (.1) < B (.2) < C (.3); B freezes. No cage: a stopped process needs no firewall.
    hub(&[1, 2, 3]);
    let h = Harness::new("faults-frozen");
    let mut mesh = start(&h, &[1, 2, 3], None, &["--fallbackgrace=2s"]);
    wait_mesh(&refs(&mesh), FORM);
    let untouched = Untouched::record(&mesh.nodes, &[(0, 2)]);
    let marks: Vec<usize> = mesh.nodes.iter().map(Node::log_mark).collect();
    let b_addr = mesh.nodes[1].addr;

    mesh.nodes[1].signal("STOP");
    let stopped = Instant::now();
    {
        // B's status endpoint is frozen too: only A and C are asked.
        let [a, _, c] = [&mesh.nodes[0], &mesh.nodes[1], &mesh.nodes[2]];
        wait_until(DETECT, "A and C to time B out", || {
            no_link(a, b_addr)?;
            no_link(c, b_addr)
        });
        // B's kernel acknowledged every ping; only the missing answers can have told.
        assert_disconnected(a, marks[0], b_addr, "timeout");
        assert_disconnected(c, marks[2], b_addr, "timeout");
    }
    let noticed = stopped.elapsed();

    mesh.nodes[1].signal("CONT");
    let woke = Instant::now();
    let all = refs(&mesh);
    wait_mesh(&all, FORM);
    let rejoined = woke.elapsed();
    // Every link of B is a new connection: B's own stale ones ended too.
    let fresh = woke.elapsed().as_secs() + 1;
    let [a, b, c] = [all[0], all[1], all[2]];
    for (x, y) in [(a, b), (b, a), (b, c), (c, b)] {
        let secs = age(x, y.addr);
        assert!(
            secs <= fresh,
            "{}'s link with {} is {secs} s old",
            x.name,
            y.addr
        );
    }
    for other in [ip(1), ip(3)] {
        wait_one_socket((ip(2), None), (other, None));
    }
    assert_holds(Duration::from_secs(2), "the mesh after the thaw", || {
        mesh_complete(&all)
    });
    untouched.check(&mesh.nodes);
    eprintln!(
        "inner_frozen: passed (timed out {noticed:.1?} after SIGSTOP, rejoined \
         {rejoined:.1?} after SIGCONT)"
    );
}

// ---------------------------------------------------------------------------------------
// 3. NAT: inbound blocked, outbound works

#[test]
#[ignore = "runs only inside the private network namespace made by node_behind_nat_is_meshed_by_the_fallback"]
fn inner_nat() {
    if !inside("inner_nat") {
        return;
    }
    // L1 (.1) < L2 (.2) < H (.3): L1 and L2 are H's designated dialers, H is behind NAT.
    hub(&[1, 2]);
    let h = Harness::new("faults-nat");
    let cage = cage(3);
    // What a NAT (or a stateful firewall) does: replies to H's own connections pass, new
    // connections to H do not. The SYNs are dropped, not refused, as a NAT does.
    cage.nft(
        "table inet nat {
            chain in {
                type filter hook input priority 0;
                tcp dport 24100 ct state new drop;
            }
        }",
    );
    let grace = Duration::from_secs(3);
    let started = Instant::now();
    let mesh = start(&h, &[1, 2, 3], Some((3, &cage)), &["--fallbackgrace=3s"]);
    let all = refs(&mesh);
    let [l1, l2, hn] = [all[0], all[1], all[2]];
    let h_addr = hn.addr;
    let h_dials = move |x: SocketAddr, y: SocketAddr| {
        if x == h_addr || y == h_addr {
            h_addr
        } else {
            x.min(y)
        }
    };

    // While the grace runs, H knows it is waiting for dials that cannot reach it (checked
    // only if this poll comes early enough to see it).
    let early = wait_until(FORM, "H's /masternodes", || hn.try_get("/masternodes"));
    if started.elapsed() < grace - Duration::from_millis(1500) {
        for m in early.as_array().expect("an array") {
            assert_eq!(m["expected_direction"], "inbound", "{early}");
            assert_eq!(m["state"], "waiting_inbound", "{early}");
        }
    }

    wait_until(FORM, "the mesh, completed by H's fallback dials", || {
        mesh_complete_dialed_by(&all, h_dials)
    });
    let took = started.elapsed();
    // Not before the grace: the fallback, and nothing else, made H's links.
    assert!(
        took >= grace,
        "the mesh completed after {took:?}, before the grace"
    );
    for l in [l1, l2] {
        // First H kept to the direction rule, then the grace ran out.
        let skipping = format!(
            "Skipping outbound to {} (they should connect to us:",
            l.addr
        );
        assert!(
            !hn.log_lines(&skipping).is_empty(),
            "H did not log `{skipping}`"
        );
        let fallback = format!("Dialing {} (fallback:", l.addr);
        assert!(
            !hn.log_lines(&fallback).is_empty(),
            "H did not log its fallback dial to {}",
            l.addr
        );
        // The designated dialers did try, and the NAT swallowed their SYNs.
        let failed = format!("Dial to {h_addr} failed: connect timed out");
        wait_for(DETECT, "a designated dial to H to time out", || {
            !l.log_lines(&failed).is_empty()
        });
    }
    // The status says the link runs against the rule, from both sides.
    let hm = hn.masternodes();
    for m in hm.as_array().expect("an array") {
        assert_eq!(m["expected_direction"], "inbound", "{hm}");
        assert_eq!(m["direction"], "outbound", "{hm}");
    }

    // The designated dialers keep dialing over the fallback links (so they can take them
    // back once they get through); each failure must leave those links alone.
    let untouched = Untouched::record(&mesh.nodes, &[(0, 1), (0, 2), (1, 2)]);
    let marks: Vec<usize> = mesh.nodes.iter().map(Node::log_mark).collect();
    let failed = format!("Dial to {h_addr} failed: connect timed out");
    wait_for(DETECT, "another designated dial to H to time out", || {
        [0, 1]
            .iter()
            .all(|&i| !mesh.nodes[i].log_lines_since(marks[i], &failed).is_empty())
    });
    mesh_complete_dialed_by(&all, h_dials).expect("the fallback mesh after the failed dials");
    untouched.check(&mesh.nodes);

    // Without the NAT the designated dials get through, and the duplicate rule gives every
    // link back to the lower address.
    let marks: Vec<usize> = mesh.nodes.iter().map(Node::log_mark).collect();
    cage.nft("delete table inet nat");
    let opened = Instant::now();
    wait_mesh(&all, FORM);
    let handed_back = opened.elapsed();
    // Both ends reach the verdict on their own. The lower end decides first (its handshake
    // completes first) but keeps the fallback link open until H confirms the new one, so H
    // always holds both when it decides: its own `Replacing` line is there too, never a
    // close of the fallback link by the peer before it.
    let replacing = format!("Replacing connection to {h_addr}");
    for (i, l) in [l1, l2].iter().enumerate() {
        assert!(
            !l.log_lines_since(marks[i], &replacing).is_empty(),
            "{} did not log `{replacing}`",
            l.name
        );
        let h_replacing = format!("Replacing connection to {}", l.addr);
        assert!(
            !hn.log_lines_since(marks[2], &h_replacing).is_empty(),
            "H did not log `{h_replacing}`:\n{}",
            hn.log_tail(40)
        );
    }
    for other in [ip(1), ip(2)] {
        wait_one_socket((ip(3), Some(&cage)), (other, None));
    }
    assert_holds(Duration::from_secs(2), "the mesh after the NAT", || {
        mesh_complete(&all)
    });
    eprintln!(
        "inner_nat: passed (fallback mesh after {took:.1?}, grace {grace:?}; designated \
         direction back {handed_back:.1?} after the NAT went)"
    );
}

// ---------------------------------------------------------------------------------------
// 4. Lost FIN

#[test]
#[ignore = "runs only inside the private network namespace made by lost_fin_does_not_leave_a_dead_link"]
fn inner_lost_fin() {
    if !inside("inner_lost_fin") {
        return;
    }
    // V (.1, caged) < W (.2) < P (.3). P shuts down; nothing from P reaches V.
    hub(&[2, 3]);
    let h = Harness::new("faults-lost-fin");
    let cage = cage(1);
    let mut mesh = start(&h, &[1, 2, 3], Some((1, &cage)), &["--fallbackgrace=2s"]);
    wait_mesh(&refs(&mesh), FORM);
    let untouched = Untouched::record(&mesh.nodes, &[(0, 1)]);
    let marks: Vec<usize> = mesh.nodes.iter().map(Node::log_mark).collect();
    let p_addr = mesh.nodes[2].addr;

    cage.nft(&format!(
        "table inet lost_fin {{
            chain in {{ type filter hook input priority 0; ip saddr {} drop; }}
        }}",
        ip(3)
    ));
    let cut = Instant::now();
    mesh.nodes[2].signal("TERM");
    {
        let [v, w] = [&mesh.nodes[0], &mesh.nodes[1]];
        // W got P's Disconnect and FIN at once...
        wait_until(DETECT, "W to hear P's shutdown", || no_link(w, p_addr));
        assert_disconnected(w, marks[1], p_addr, "shutdown (by peer)");
        // ...V did not: it holds a link to a process that is gone or going.
        let held = cut.elapsed();
        assert!(
            v.try_link_with(p_addr).expect("V's /peers").is_some() && held < PING_TIMEOUT,
            "V no longer lists P {held:?} after P's shutdown: the test needs the FIN lost"
        );
        // Only the ping timeout can end it: nothing from P arrives, not even an RST.
        wait_until(DETECT, "V to end its dead link to P", || no_link(v, p_addr));
        assert_disconnected(v, marks[0], p_addr, "timeout");
    }
    let ended = cut.elapsed();
    let status = mesh.nodes[2]
        .wait_exit(Duration::from_secs(10))
        .expect("P exits after SIGTERM");
    assert!(status.success(), "P: {}", describe(&status));
    // Still gone while V gave up on it: no later delivery of the FIN can have done it.
    assert!(
        mesh.nodes[0]
            .log_lines_since(marks[0], &format!("Disconnected from {p_addr}: shutdown"))
            .is_empty(),
        "V got P's Disconnect after all"
    );

    cage.nft("delete table inet lost_fin");
    mesh.nodes[2].restart();
    let back = Instant::now();
    let all = refs(&mesh);
    wait_mesh(&all, FORM);
    let rejoined = back.elapsed();
    wait_one_socket((ip(1), Some(&cage)), (ip(3), None));
    assert_holds(Duration::from_secs(2), "the mesh with P back", || {
        mesh_complete(&all)
    });
    untouched.check(&mesh.nodes);
    eprintln!(
        "inner_lost_fin: passed (dead link ended {ended:.1?} after the shutdown, mesh whole \
         {rejoined:.1?} after P's restart)"
    );
}
