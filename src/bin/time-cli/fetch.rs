//! Talking to the status endpoint: one `ureq` agent with hard time and size limits, reading
//! the JSON shapes `timed` serves into `timed::status`'s own types.

use std::fmt::Display;
use std::time::Duration;

use serde::de::DeserializeOwned;
use ureq::tls::{RootCerts, TlsConfig, TlsProvider};

/// Whole-request deadline (connect, send, receive). The endpoint answers from memory in
/// microseconds; a node that takes longer is stuck, and the operator should hear so rather
/// than watch a hung prompt.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Largest body accepted. `/peers` of a full node (125 peers) is about 20 KB; the limit only
/// stops a wrong URL from streaming something huge into memory.
const MAX_BODY: u64 = 4 * 1024 * 1024;

/// `GET /consensus_info` and one element of `GET /peers`: the daemon's own types, so a
/// renamed field cannot slip past the client.
pub use timed::status::{ConsensusInfo, PeerStatus as Peer};

/// A blocking HTTP client for status endpoints. Cheap to share across threads (the agent is
/// reference-counted inside).
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
}

impl Client {
    /// An agent with the deadline and limits above. Non-2xx statuses come back as responses,
    /// not errors, so that the daemon's JSON error text reaches the operator.
    pub fn new() -> Client {
        // ureq's default provider is rustls, which this build leaves out; HTTPS goes through
        // the system's TLS library and its CA store, which the distribution keeps updated.
        let tls = TlsConfig::builder()
            .provider(TlsProvider::NativeTls)
            .root_certs(RootCerts::PlatformVerifier)
            .build();
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false)
            // The status endpoint is an operator's own node, normally on loopback; an
            // HTTP_PROXY meant for the internet would only get in the way (or see the data).
            .proxy(None)
            .user_agent(concat!("time-cli/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build()
            .into();
        Client { agent }
    }

    /// `GET base + path` and the body as served. The error names the request and what went
    /// wrong; the caller adds the URL.
    pub fn get_text(&self, base: &str, path: &str) -> Result<String, String> {
        let fail = |e: &dyn Display| format!("GET {path}: {e}");
        let mut response = self
            .agent
            .get(endpoint(base, path))
            .call()
            .map_err(|e| fail(&e))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| fail(&e))?;
        if status != 200 {
            return Err(fail(&format!("HTTP {status}: {}", error_text(&body))));
        }
        Ok(body)
    }

    /// `GET base + path` decoded as `T`, with the raw body (for `--json`, which prints the
    /// answer as served but should still fail on something that is not the daemon's JSON).
    pub fn get_json<T: DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
    ) -> Result<(T, String), String> {
        let body = self.get_text(base, path)?;
        let value = serde_json::from_str(&body)
            .map_err(|e| format!("GET {path}: not the expected JSON ({e})"))?;
        Ok((value, body))
    }

    /// Everything the matrix needs from one node.
    pub fn node(&self, base: &str) -> Result<(ConsensusInfo, Vec<Peer>), String> {
        let (info, _) = self.get_json(base, "/consensus_info")?;
        let (peers, _) = self.get_json(base, "/peers")?;
        Ok((info, peers))
    }
}

/// The request URL: `base` with a default `http://` scheme (operators type `127.0.0.1:8332`
/// as readily as a full URL) and without a trailing slash, then `path`.
pub fn endpoint(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.contains("://") {
        format!("{base}{path}")
    } else {
        format!("http://{base}{path}")
    }
}

/// The readable part of an error body: the daemon's `{"error": "..."}` message, else the
/// start of whatever was sent.
fn error_text(body: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Error {
        error: String,
    }
    match serde_json::from_str::<Error>(body) {
        Ok(e) => e.error,
        Err(_) => {
            let body = body.trim();
            match body.char_indices().nth(200) {
                Some((cut, _)) => format!("{}...", &body[..cut]),
                None if body.is_empty() => "(empty body)".to_string(),
                None => body.to_string(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_adds_scheme_and_joins_paths() {
        assert_eq!(
            endpoint("http://127.0.0.1:8332", "/peers"),
            "http://127.0.0.1:8332/peers"
        );
        assert_eq!(
            endpoint("http://127.0.0.1:8332/", "/peers"),
            "http://127.0.0.1:8332/peers"
        );
        assert_eq!(
            endpoint("127.0.0.1:8332", "/peers"),
            "http://127.0.0.1:8332/peers"
        );
        assert_eq!(
            endpoint("https://node.example/timed/", "/peers"),
            "https://node.example/timed/peers"
        );
    }

    #[test]
    fn error_text_prefers_the_daemons_message() {
        assert_eq!(
            error_text("{\"error\":\"not found: /x\"}\n"),
            "not found: /x"
        );
        assert_eq!(error_text("<html>nope</html>"), "<html>nope</html>");
        assert_eq!(error_text(""), "(empty body)");
        assert!(error_text(&"x".repeat(1000)).ends_with("..."));
    }

    #[test]
    fn decodes_the_documented_examples() {
        let info: ConsensusInfo = serde_json::from_str(
            r#"{"network": "testnet", "version": "0.1.0", "local_address": "127.0.0.2:24100",
                "masternode": true, "active_masternodes": 4, "total_masternodes": 4,
                "connected_peers": 3, "inbound": 1, "outbound": 2, "uptime_secs": 12}"#,
        )
        .unwrap();
        assert_eq!(info.local_address.as_deref(), Some("127.0.0.2:24100"));
        let peers: Vec<Peer> = serde_json::from_str(
            r#"[{"address": "127.0.0.3:24100", "direction": "outbound", "masternode": true,
                 "connected_secs": 40, "last_recv_secs": 2, "rtt_ms": 0.31,
                 "agent": "timed/0.1.0"},
                {"address": "127.0.0.4:24100", "direction": "inbound", "masternode": false,
                 "connected_secs": 1, "last_recv_secs": 0, "rtt_ms": null,
                 "agent": "timed/0.1.0"}]"#,
        )
        .unwrap();
        assert_eq!(peers[0].rtt_ms, Some(0.31));
        assert_eq!(peers[1].rtt_ms, None);
    }
}
