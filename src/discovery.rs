//! Masternode discovery: `discoveryurl` fetched with `ureq` at start, every
//! `discoveryinterval`, and on SIGHUP. The answer is a JSON array of `"IP"` or `"IP:PORT"`
//! strings; whatever goes wrong, the list the node already has stands.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{info, warn};

use crate::rules::canonical;

/// The most of a discovery answer read: a list of even ten thousand masternodes fits, and a
/// runaway or hostile server cannot make us buffer more.
pub const MAX_BODY: u64 = 1 << 20;
/// Bound on the whole fetch, connect to last byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed discovery answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The usable masternode addresses, canonical, in order, without repeats.
    pub masternodes: Vec<SocketAddr>,
    /// One line per dropped entry, for the log.
    pub dropped: Vec<String>,
}

/// Parses a discovery answer. `Err` when the body is not a JSON array of strings at all (the
/// whole answer is then ignored); single bad entries are dropped with a reason: malformed,
/// unspecified, multicast, broadcast or port 0. This node's own entry is kept: it is never
/// dialed, but it is what makes this node a masternode, exactly as in `masternode=` lines.
pub fn parse(body: &str, default_port: u16) -> Result<Parsed, String> {
    let entries: Vec<serde_json::Value> = match serde_json::from_str(body) {
        Ok(serde_json::Value::Array(a)) => a,
        Ok(other) => return Err(format!("expected a JSON array, got {}", kind(&other))),
        Err(e) => return Err(format!("not JSON: {e}")),
    };
    let mut parsed = Parsed {
        masternodes: Vec::new(),
        dropped: Vec::new(),
    };
    for entry in entries {
        let Some(text) = entry.as_str() else {
            parsed.dropped.push(format!("{entry}: not a string"));
            continue;
        };
        match parse_entry(text, default_port) {
            Err(why) => parsed.dropped.push(format!("{text:?}: {why}")),
            Ok(addr) if parsed.masternodes.contains(&addr) => {}
            Ok(addr) => parsed.masternodes.push(addr),
        }
    }
    Ok(parsed)
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn parse_entry(text: &str, default_port: u16) -> Result<SocketAddr, &'static str> {
    let text = text.trim();
    let addr = if let Ok(addr) = text.parse::<SocketAddr>() {
        addr
    } else if let Ok(ip) = text
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        SocketAddr::new(ip, default_port)
    } else {
        return Err("not an IP or IP:PORT");
    };
    let addr = canonical(addr);
    let ip = addr.ip();
    if ip.is_unspecified() {
        return Err("unspecified address");
    }
    if ip.is_multicast() {
        return Err("multicast address");
    }
    if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        return Err("broadcast address");
    }
    if addr.port() == 0 {
        return Err("port 0");
    }
    Ok(addr)
}

/// Fetches the list once. The body is read with a hard limit, so a huge answer is an error,
/// not a memory spike.
pub fn fetch(agent: &ureq::Agent, url: &str) -> Result<String, String> {
    let mut response = agent.get(url).call().map_err(|e| e.to_string())?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_string()
        .map_err(|e| e.to_string())
}

/// An HTTP(S) agent with a bounded fetch. HTTPS uses the system's OpenSSL (`native-tls`)
/// and the system's CA store (so a CA the operator added to `/etc/ssl/certs` is trusted),
/// both of which ureq only picks when told.
pub fn agent() -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::NativeTls)
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    ureq::Agent::config_builder()
        .timeout_global(Some(FETCH_TIMEOUT))
        .http_status_as_error(false)
        .tls_config(tls)
        .build()
        .into()
}

/// Runs the discovery loop: fetch now, then every `interval` or whenever `refresh` says so
/// (SIGHUP); each successful, changed list goes to `publish`. Returns when `refresh` closes.
pub fn run(
    url: String,
    interval: Duration,
    default_port: u16,
    refresh: Receiver<()>,
    publish: Sender<Vec<SocketAddr>>,
) {
    let agent = agent();
    let mut current: Option<Vec<SocketAddr>> = None;
    loop {
        match fetch(&agent, &url).and_then(|body| parse(&body, default_port)) {
            Ok(parsed) => {
                for why in &parsed.dropped {
                    warn!("Discovery: dropped entry {why}");
                }
                if current.as_ref() != Some(&parsed.masternodes) {
                    info!(
                        "Discovery: {} masternodes from {url}",
                        parsed.masternodes.len()
                    );
                    current = Some(parsed.masternodes.clone());
                    if publish.send(parsed.masternodes).is_err() {
                        return;
                    }
                }
            }
            Err(e) => warn!("Discovery from {url} failed, keeping the current list: {e}"),
        }
        match refresh.recv_timeout(interval) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn entries_with_and_without_port() {
        let p = parse(
            r#"["10.0.0.1", "10.0.0.2:24200", "[2001:db8::1]:1", "2001:db8::2"]"#,
            24100,
        )
        .unwrap();
        assert_eq!(
            p.masternodes,
            [
                a("10.0.0.1:24100"),
                a("10.0.0.2:24200"),
                a("[2001:db8::1]:1"),
                a("[2001:db8::2]:24100")
            ]
        );
        assert!(p.dropped.is_empty());
    }

    #[test]
    fn bad_entries_are_dropped_with_a_reason() {
        let body = r#"["0.0.0.0", "224.0.0.1:5", "255.255.255.255", "10.0.0.1:0", "nope", 7,
                      "10.0.0.3", "10.0.0.3:24100", "[::ffff:10.0.0.4]:24100", "10.0.0.9:24100"]"#;
        let p = parse(body, 24100).unwrap();
        // Duplicates collapse (also through the v4-mapped form).
        assert_eq!(
            p.masternodes,
            [
                a("10.0.0.3:24100"),
                a("10.0.0.4:24100"),
                a("10.0.0.9:24100")
            ]
        );
        assert_eq!(p.dropped.len(), 6, "{:?}", p.dropped);
        assert!(p.dropped.iter().any(|d| d.contains("multicast")));
        assert!(p.dropped.iter().any(|d| d.contains("unspecified")));
    }

    #[test]
    fn garbage_is_rejected_whole() {
        assert!(parse("<html>oops</html>", 24100).is_err());
        assert!(parse(r#"{"masternodes": []}"#, 24100).is_err());
        assert!(parse("", 24100).is_err());
        assert_eq!(parse("[]", 24100).unwrap().masternodes, []);
    }
}
