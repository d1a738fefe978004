//! Masternode discovery against a small HTTP server on loopback that the test runs: a list
//! that grows, shrinks, fails, and turns to garbage or to a huge body.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// What the test server answers.
#[derive(Clone)]
enum Answer {
    Json(String),
    Status500,
    Hangup,
    Huge,
}

/// A one-path HTTP server whose answer the test changes at will. Lives as long as the test.
struct ListServer {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
}

impl ListServer {
    fn start(ip: std::net::Ipv4Addr) -> ListServer {
        let listener = TcpListener::bind((ip, 0)).expect("bind the list server");
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(Answer::Json("[]".into())));
        let shared = answer.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut head = [0u8; 2048];
                let _ = s.read(&mut head);
                let answer = shared.lock().unwrap().clone();
                let _ = match answer {
                    Answer::Json(body) => s.write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    ),
                    Answer::Status500 => s.write_all(
                        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    ),
                    Answer::Hangup => Ok(()),
                    Answer::Huge => {
                        // 4 MiB of a syntactically valid list: only a bounded read stops it.
                        let entry = "\"10.9.9.9:1\",";
                        let n = (4 << 20) / entry.len();
                        let _ = s.write_all(
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n[",
                                n * entry.len() + 12
                            )
                            .as_bytes(),
                        );
                        let chunk = entry.repeat(1024);
                        let mut sent = 0;
                        while sent < n {
                            if s.write_all(chunk.as_bytes()).is_err() {
                                break;
                            }
                            sent += 1024;
                        }
                        s.write_all(b"\"10.9.9.9:2\"]")
                    }
                };
            }
        });
        ListServer { addr, answer }
    }

    fn serve(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn serve_list(&self, list: &[SocketAddr]) {
        let body =
            serde_json::to_string(&list.iter().map(|a| a.to_string()).collect::<Vec<_>>()).unwrap();
        self.serve(Answer::Json(body));
    }

    fn url(&self) -> String {
        format!("http://{}/masternodes.json", self.addr)
    }
}

fn discovering(h: &Harness, host: u8, url: &str) -> NodeBuilder {
    h.node(host)
        .fast()
        .arg(format!("--discoveryurl={url}"))
        .arg("--discoveryinterval=1s")
}

fn total_masternodes(node: &Node) -> u64 {
    node.consensus_info()["total_masternodes"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn discovery_grows_shrinks_and_survives_bad_answers() {
    let h = Harness::new("discovery");
    let server = ListServer::start(h.ip(100));
    let (a, b, c) = (h.addr(2), h.addr(3), h.addr(4));
    server.serve_list(&[a, b]);
    let mut na = discovering(&h, 2, &server.url()).spawn();
    let mut nb = discovering(&h, 3, &server.url()).spawn();
    na.wait_healthy(Duration::from_secs(10));
    nb.wait_healthy(Duration::from_secs(10));
    wait_mesh(&[&na, &nb], Duration::from_secs(15));
    assert_eq!(na.consensus_info()["masternode"], true);

    // Grows: the new masternode is dialed per the direction rule.
    server.serve_list(&[a, b, c]);
    let mut nc = discovering(&h, 4, &server.url()).spawn();
    nc.wait_healthy(Duration::from_secs(10));
    wait_mesh(&[&na, &nb, &nc], Duration::from_secs(20));
    assert_eq!(total_masternodes(&na), 3);

    // Shrinks: the removed masternode is disconnected and no longer listed.
    server.serve_list(&[a, b]);
    wait_for(Duration::from_secs(10), "a to drop c from its list", || {
        total_masternodes(&na) == 2 && total_masternodes(&nb) == 2
    });
    wait_for(
        Duration::from_secs(5),
        "a to disconnect c as unlisted",
        || {
            na.log()
                .contains(&format!("Disconnected from {c}: unlisted"))
        },
    );
    let listed: Vec<String> = na
        .masternodes()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["address"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, [b.to_string()]);

    // Fails, then garbage, then a huge body: each time the list stands.
    for (answer, what) in [
        (Answer::Status500, "HTTP 500"),
        (Answer::Hangup, "a hang-up"),
        (Answer::Json("<html>not json</html>".into()), "not JSON"),
        (Answer::Json(r#"{"masternodes": []}"#.into()), "an object"),
        (Answer::Huge, "a huge body"),
    ] {
        let mark = na.log_mark();
        server.serve(answer);
        wait_for(
            Duration::from_secs(15),
            &format!("a failed fetch on {what}"),
            || {
                na.log_since(mark)
                    .contains("failed, keeping the current list")
            },
        );
        assert_eq!(total_masternodes(&na), 2, "after {what}");
        assert_eq!(
            na.consensus_info()["connected_peers"],
            2,
            "after {what}: {}",
            na.log_tail(5)
        );
    }
    assert!(
        na.is_running(),
        "the huge body must not have hurt the daemon"
    );

    // A good list again is applied again.
    server.serve_list(&[a, b, c]);
    wait_for(Duration::from_secs(10), "the list to come back", || {
        total_masternodes(&na) == 3
    });
    wait_mesh(&[&na, &nb, &nc], Duration::from_secs(20));
}
