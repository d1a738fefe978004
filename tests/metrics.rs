//! `/metrics` parses with a real Prometheus text parser (the `prometheus_client` package from
//! PyPI, which `make test` installs), and its counters move as links form and break.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Parses the exposition with prometheus_client; returns `name{labels}` → value.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        print(f"{s.name}{{{labels}}} {s.value}" if labels else f"{s.name} {s.value}")
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client rejected the exposition (install it with `pip install prometheus-client`):\n{}\n---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn metrics(node: &Node) -> BTreeMap<String, f64> {
    let (status, body) = http_get(node.rpc, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    parse(&body)
}

fn value(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no series {series} in {m:#?}"))
}

#[test]
fn metrics_parse_and_move_as_links_form_and_break() {
    let h = Harness::new("metrics");
    let list = h.addrs(&[2, 3]);
    let mut a = h.node(2).masternodes(&list).fast().spawn();
    a.wait_healthy(Duration::from_secs(10));
    let before = metrics(&a);
    assert_eq!(value(&before, "timed_peers{direction=\"outbound\"}"), 0.0);
    assert_eq!(
        value(&before, "timed_handshakes_total{result=\"accepted\"}"),
        0.0
    );
    assert_eq!(
        value(
            &before,
            "timed_build_info{network=\"testnet\",version=\"0.1.0\"}"
        ),
        1.0
    );

    let mut b = h.node(3).masternodes(&list).fast().spawn();
    wait_mesh(&[&a, &b], Duration::from_secs(15));
    let formed = metrics(&a);
    assert_eq!(value(&formed, "timed_peers{direction=\"outbound\"}"), 1.0);
    assert_eq!(
        value(&formed, "timed_handshakes_total{result=\"accepted\"}"),
        1.0
    );
    assert!(value(&formed, "timed_dials_total") >= 1.0);
    assert!(value(&formed, "timed_bytes_total{direction=\"in\"}") > 0.0);
    assert!(value(&formed, "timed_bytes_total{direction=\"out\"}") > 0.0);
    // b, the higher address, skipped dialing a by the direction rule.
    let at_b = metrics(&b);
    assert!(value(&at_b, "timed_dials_skipped_total{reason=\"direction\"}") >= 1.0);
    assert_eq!(value(&at_b, "timed_dials_total"), 0.0);

    let status = b.terminate(Duration::from_secs(5)).expect("b exits");
    assert!(status.success());
    wait_for(Duration::from_secs(10), "a to count the disconnect", || {
        let m = metrics(&a);
        value(&m, "timed_disconnects_total{reason=\"shutdown\"}") == 1.0
            && value(&m, "timed_peers{direction=\"outbound\"}") == 0.0
    });
}
