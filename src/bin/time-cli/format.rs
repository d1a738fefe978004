//! Human-readable output: durations, the `status` summary, the `peers` table, and the
//! column alignment they and the matrix share.

use std::net::SocketAddr;

use crate::fetch::{ConsensusInfo, Peer};

/// A duration in seconds as its two largest units, the way an operator reads an uptime at a
/// glance: `45s`, `2m05s`, `3h07m`, `12d04h`.
pub fn duration(secs: u64) -> String {
    const MIN: u64 = 60;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;
    match secs {
        s if s < MIN => format!("{s}s"),
        s if s < HOUR => format!("{}m{:02}s", s / MIN, s % MIN),
        s if s < DAY => format!("{}h{:02}m", s / HOUR, s % HOUR / MIN),
        s => format!("{}d{:02}h", s / DAY, s % DAY / HOUR),
    }
}

/// How long ago something happened: `3s ago`.
pub fn ago(secs: u64) -> String {
    format!("{} ago", duration(secs))
}

/// A round-trip time: `0.31 ms`, or `-` before the first pong.
pub fn rtt(ms: Option<f64>) -> String {
    match ms {
        Some(ms) => format!("{ms:.2} ms"),
        None => "-".to_string(),
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

/// The `status` view: one aligned `key: value` line per fact.
pub fn status(info: &ConsensusInfo) -> String {
    let lines = [
        ("network", info.network.clone()),
        ("version", info.version.clone()),
        (
            "local address",
            info.local_address
                .clone()
                .unwrap_or_else(|| "unknown".to_string()),
        ),
        ("masternode", yes_no(info.masternode)),
        (
            "masternodes",
            format!(
                "{} of {} active",
                info.active_masternodes, info.total_masternodes
            ),
        ),
        (
            "peers",
            format!(
                "{} connected ({} inbound, {} outbound)",
                info.connected_peers, info.inbound, info.outbound
            ),
        ),
        ("uptime", duration(info.uptime_secs)),
    ];
    let width = lines.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    lines
        .iter()
        .map(|(key, value)| format!("{:<width$} {value}\n", format!("{key}:")))
        .collect()
}

/// The `peers` view: a header and one row per peer, in numeric address order (the daemon
/// serves them in string order, where `127.0.0.10` comes before `127.0.0.9`).
pub fn peers(peers: &[Peer]) -> String {
    if peers.is_empty() {
        return "no peers\n".to_string();
    }
    let mut sorted: Vec<&Peer> = peers.iter().collect();
    sorted.sort_by_key(|p| address_order(&p.address));
    let mut rows = vec![[
        "ADDRESS",
        "DIRECTION",
        "MASTERNODE",
        "CONNECTED",
        "LAST HEARD",
        "RTT",
        "AGENT",
    ]
    .map(str::to_string)
    .to_vec()];
    rows.extend(sorted.iter().map(|p| {
        vec![
            p.address.clone(),
            p.direction.clone(),
            yes_no(p.masternode),
            duration(p.connected_secs),
            ago(p.last_recv_secs),
            rtt(p.rtt_ms),
            p.agent.clone(),
        ]
    }));
    table(&rows)
}

/// Sort key for an address: parsed ones numerically by `(IP, port)`, unparseable ones (never
/// served by a sane daemon) after them by their text.
fn address_order(address: &str) -> (bool, Option<SocketAddr>, String) {
    let parsed = address.parse::<SocketAddr>().ok();
    (parsed.is_none(), parsed, address.to_string())
}

/// Left-aligned columns two spaces apart, widths by character count (the matrix symbols are
/// multi-byte but one column wide); no trailing spaces, so output diffs and greps cleanly.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            line.push_str(cell);
            line.extend(std::iter::repeat(' ').take(width - cell.chars().count() + 2));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_show_two_units() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(60), "1m00s");
        assert_eq!(duration(125), "2m05s");
        assert_eq!(duration(3599), "59m59s");
        assert_eq!(duration(3600), "1h00m");
        assert_eq!(duration(3 * 3600 + 7 * 60 + 59), "3h07m");
        assert_eq!(duration(86_399), "23h59m");
        assert_eq!(duration(86_400), "1d00h");
        assert_eq!(duration(12 * 86_400 + 4 * 3600 + 1), "12d04h");
        assert_eq!(ago(3), "3s ago");
    }

    #[test]
    fn rtt_has_two_decimals_or_a_dash() {
        assert_eq!(rtt(Some(0.31)), "0.31 ms");
        assert_eq!(rtt(Some(12.0)), "12.00 ms");
        assert_eq!(rtt(None), "-");
    }

    fn info() -> ConsensusInfo {
        ConsensusInfo {
            network: "testnet".into(),
            version: "0.1.0".into(),
            local_address: Some("127.0.0.2:24100".into()),
            masternode: true,
            active_masternodes: 4,
            total_masternodes: 4,
            connected_peers: 3,
            inbound: 1,
            outbound: 2,
            uptime_secs: 125,
        }
    }

    #[test]
    fn status_lines_are_aligned() {
        let text = status(&info());
        assert_eq!(
            text,
            "network:       testnet\n\
             version:       0.1.0\n\
             local address: 127.0.0.2:24100\n\
             masternode:    yes\n\
             masternodes:   4 of 4 active\n\
             peers:         3 connected (1 inbound, 2 outbound)\n\
             uptime:        2m05s\n"
        );
        let unknown = ConsensusInfo {
            local_address: None,
            masternode: false,
            ..info()
        };
        let text = status(&unknown);
        assert!(text.contains("local address: unknown\n"), "{text}");
        assert!(text.contains("masternode:    no\n"), "{text}");
    }

    fn peer(address: &str, direction: &str, rtt_ms: Option<f64>) -> Peer {
        Peer {
            address: address.into(),
            direction: direction.into(),
            masternode: true,
            connected_secs: 125,
            last_recv_secs: 3,
            rtt_ms,
            agent: "timed/0.1.0".into(),
        }
    }

    #[test]
    fn peers_table_in_numeric_order() {
        let text = peers(&[
            peer("127.0.0.10:24100", "inbound", None),
            peer("127.0.0.9:24100", "outbound", Some(0.31)),
        ]);
        assert_eq!(
            text,
            "ADDRESS           DIRECTION  MASTERNODE  CONNECTED  LAST HEARD  RTT      AGENT\n\
             127.0.0.9:24100   outbound   yes         2m05s      3s ago      0.31 ms  timed/0.1.0\n\
             127.0.0.10:24100  inbound    yes         2m05s      3s ago      -        timed/0.1.0\n"
        );
        assert_eq!(peers(&[]), "no peers\n");
    }

    #[test]
    fn table_counts_characters_not_bytes() {
        let rows = vec![
            vec!["a".to_string(), "\u{2192}".to_string(), "x".to_string()],
            vec!["bb".to_string(), "10".to_string(), "".to_string()],
        ];
        assert_eq!(table(&rows), "a   \u{2192}   x\nbb  10\n");
    }
}
