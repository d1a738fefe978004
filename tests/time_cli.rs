//! `time-cli` against real `timed` processes on loopback addresses: the readable and JSON
//! views of one node, the matrix of a healthy mesh and of one with a node stopped, and the
//! exit codes for an unreachable endpoint and for usage errors.
//!
//! The mesh's hosts straddle 9/10 so that the matrix's row order proves numeric sorting.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The client under test.
const CLI: &str = env!("CARGO_BIN_EXE_time-cli");

/// Generous deadline for a mesh to form or to notice a lost node.
const DEADLINE: Duration = Duration::from_secs(20);

/// The summary line of a complete, clean mesh of four.
const HEALTHY_FOUR: &str = "links: 6 of 6, duplicates: 0, wrong direction: 0, unreachable nodes: 0";

/// What one run of the client produced.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn cli<S: AsRef<str>>(args: &[S]) -> Run {
    let out = Command::new(CLI)
        .args(args.iter().map(AsRef::as_ref))
        // The client ignores proxies, but keep the environment from even suggesting one.
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .output()
        .expect("run time-cli");
    Run {
        code: out.status.code().expect("time-cli killed by a signal"),
        stdout: String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(out.stderr).expect("stderr is UTF-8"),
    }
}

fn url(node: &Node) -> String {
    format!("http://{}", node.rpc)
}

#[test]
fn status_peers_and_matrix_of_a_live_mesh() {
    let h = Harness::new("time_cli_mesh");
    let mut mesh = Mesh::start(&h, &[3, 9, 10, 20], |b| b.fast());
    mesh.wait_complete(DEADLINE);
    let (a3, a9, a10, a20) = (h.addr(3), h.addr(9), h.addr(10), h.addr(20));
    let rpc9 = url(&mesh.nodes[1]);

    // status: node 9 was dialed by 3 and dialed 10 and 20.
    let run = cli(&["--rpc", &rpc9, "status"]);
    assert_eq!(run.code, 0, "{run}");
    for line in [
        "network:       testnet".to_string(),
        format!("local address: {a9}"),
        "masternode:    yes".to_string(),
        "masternodes:   4 of 4 active".to_string(),
        "peers:         3 connected (1 inbound, 2 outbound)".to_string(),
    ] {
        assert!(
            run.stdout.lines().any(|l| l == line),
            "no line {line:?}\n{run}"
        );
    }
    assert!(run.stdout.contains("\nuptime:        "), "{run}");

    let run = cli(&["status", "--json", &format!("--rpc={rpc9}")]);
    assert_eq!(run.code, 0, "{run}");
    let info: Value = serde_json::from_str(&run.stdout).expect("status --json is JSON");
    assert_eq!(info["local_address"], a9.to_string());
    assert_eq!(info["connected_peers"], 3);
    assert_eq!(info["active_masternodes"], 4);

    // peers: a header and the three others, in numeric order (10 after 9's lower peer 3,
    // 20 last), each with the direction the dial rule gives.
    let run = cli(&["--rpc", &rpc9, "peers"]);
    assert_eq!(run.code, 0, "{run}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{run}");
    assert!(
        lines[0].starts_with("ADDRESS") && lines[0].contains("LAST HEARD"),
        "{run}"
    );
    for (line, (addr, direction)) in
        lines[1..]
            .iter()
            .zip([(a3, "inbound"), (a10, "outbound"), (a20, "outbound")])
    {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[0], addr.to_string(), "{run}");
        assert_eq!(fields[1], direction, "{run}");
        assert_eq!(fields[2], "yes", "{run}");
        assert!(line.contains(" ago "), "{run}");
        assert!(
            line.ends_with(&format!("timed/{}", env!("CARGO_PKG_VERSION"))),
            "{run}"
        );
    }

    let run = cli(&["--rpc", &rpc9, "peers", "--json"]);
    assert_eq!(run.code, 0, "{run}");
    let peers: Value = serde_json::from_str(&run.stdout).expect("peers --json is JSON");
    let mut served: Vec<&str> = peers
        .as_array()
        .expect("an array")
        .iter()
        .map(|p| p["address"].as_str().expect("address"))
        .collect();
    served.sort_unstable();
    let mut want = [a3.to_string(), a10.to_string(), a20.to_string()];
    want.sort_unstable();
    assert_eq!(served, want, "{run}");

    // matrix, URLs given out of order: rows come out numerically, the mesh is clean.
    let urls: Vec<String> = [3, 0, 2, 1].iter().map(|&i| url(&mesh.nodes[i])).collect();
    let mut args = vec!["matrix".to_string()];
    args.extend(urls.iter().cloned());
    let run = cli(&args);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.stderr, "", "{run}");
    assert_eq!(run.stdout.lines().last(), Some(HEALTHY_FOUR), "{run}");
    let rows: Vec<&str> = run.stdout.lines().skip(1).take(4).collect();
    for (row, (i, addr)) in rows.iter().zip([(1, a3), (2, a9), (3, a10), (4, a20)]) {
        let fields: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(fields[..2], [i.to_string(), addr.to_string()], "{run}");
        // Lower addresses dial: ← left of the diagonal, → right of it.
        let cells: String = fields[2..].concat();
        let want: String = (1..=4)
            .map(|c| match c.cmp(&i) {
                std::cmp::Ordering::Less => '\u{2190}',
                std::cmp::Ordering::Equal => '\u{b7}',
                std::cmp::Ordering::Greater => '\u{2192}',
            })
            .collect();
        assert_eq!(cells, want, "row {i}\n{run}");
    }

    // Stop node 10 and wait until the others have dropped it: then its links are missing
    // and the node itself is unreachable.
    let stopped = url(&mesh.nodes[2]);
    assert!(
        mesh.nodes[2].terminate(Duration::from_secs(5)).is_some(),
        "node 10 did not stop"
    );
    let others: Vec<&Node> = [0, 1, 3].iter().map(|&i| &mesh.nodes[i]).collect();
    wait_until(DEADLINE, "the others to drop the stopped node", || {
        let counts: Vec<Value> = others
            .iter()
            .map(|n| {
                n.try_get("/consensus_info")
                    .map(|i| i["connected_peers"].clone())
            })
            .collect::<Result<_, _>>()?;
        if counts.iter().all(|c| *c == 2) {
            Ok(())
        } else {
            Err(format!("connected_peers: {counts:?}"))
        }
    });
    let run = cli(&args);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stderr.starts_with(&format!("time-cli: {stopped}: ")),
        "{run}"
    );
    assert_eq!(
        run.stdout.lines().last(),
        Some("links: 3 of 6, duplicates: 0, wrong direction: 0, unreachable nodes: 1"),
        "{run}"
    );
    assert!(
        run.stdout.contains(&format!("{stopped} (unreachable)")),
        "{run}"
    );
}

#[test]
fn an_unreachable_endpoint_exits_1_and_names_the_url() {
    // A port that was free a moment ago: nobody listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port();
    let rpc = format!("http://127.0.0.1:{port}");
    for command in ["status", "peers"] {
        for json in [false, true] {
            let mut args = vec!["--rpc", &rpc, command];
            if json {
                args.push("--json");
            }
            let run = cli(&args);
            assert_eq!(run.code, 1, "{args:?}\n{run}");
            assert!(run.stderr.contains(&rpc), "{args:?}\n{run}");
            assert_eq!(run.stdout, "", "{args:?}\n{run}");
        }
    }
    let run = cli(&["matrix", &rpc]);
    assert_eq!(run.code, 1, "{run}");
    assert!(
        run.stderr.starts_with(&format!("time-cli: {rpc}: ")),
        "{run}"
    );
    assert_eq!(
        run.stdout.lines().last(),
        Some("links: 0 of 0, duplicates: 0, wrong direction: 0, unreachable nodes: 1"),
        "{run}"
    );
}

#[test]
fn usage_errors_exit_2_with_the_usage_on_stderr() {
    for args in [
        &[][..],
        &["bogus"][..],
        &["status", "--bogus"][..],
        &["status", "extra"][..],
        &["--rpc"][..],
        &["matrix"][..],
        &[
            "--rpc",
            "http://127.0.0.1:1",
            "matrix",
            "http://127.0.0.1:2",
        ][..],
    ] {
        let run = cli(args);
        assert_eq!(run.code, 2, "{args:?}\n{run}");
        assert!(run.stderr.starts_with("time-cli: "), "{args:?}\n{run}");
        assert!(run.stderr.contains("Usage:"), "{args:?}\n{run}");
        assert_eq!(run.stdout, "", "{args:?}\n{run}");
    }
}

#[test]
fn help_and_version() {
    let run = cli(&["--help"]);
    assert_eq!(run.code, 0, "{run}");
    for needle in [
        "time-cli [--rpc URL] status [--json]",
        "time-cli [--rpc URL] peers  [--json]",
        "time-cli matrix URL [URL ...]",
        "links: N of M, duplicates: D, wrong direction: W, unreachable nodes: U",
        "Exit status:",
        "\u{2717}",
    ] {
        assert!(run.stdout.contains(needle), "help lacks {needle:?}\n{run}");
    }
    let run = cli(&["--version"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(
        run.stdout,
        format!("time-cli {}\n", env!("CARGO_PKG_VERSION"))
    );
}
