//! The status HTTP endpoint (`rpclisten`): read-only JSON views of the registry.
//!
//! The data types below are what the registry produces (and what `time-cli` reads back); the
//! server only asks for them over the `ask` function it is given and never touches
//! connection state itself.

use serde::{Deserialize, Serialize};

/// `GET /consensus_info`: the node's summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsensusInfo {
    /// `mainnet` or `testnet`.
    pub network: String,
    /// The daemon's version.
    pub version: String,
    /// This node's P2P address as the others know it (`null` when it cannot be known).
    pub local_address: Option<String>,
    /// Whether this node's own address is in the masternode list.
    pub masternode: bool,
    /// This node (if a masternode) plus every listed masternode with an established link.
    pub active_masternodes: usize,
    /// Listed masternodes, this node included.
    pub total_masternodes: usize,
    /// Established connections.
    pub connected_peers: usize,
    /// Established connections the peer dialed.
    pub inbound: usize,
    /// Established connections this node dialed.
    pub outbound: usize,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
}

/// One element of `GET /peers`: an established connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// The peer's P2P address (not the ephemeral source port).
    pub address: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// Whether the peer is a listed masternode.
    pub masternode: bool,
    /// Seconds since the handshake completed.
    pub connected_secs: u64,
    /// Seconds since anything was last received from the peer.
    pub last_recv_secs: u64,
    /// Round-trip time of the last ping, in milliseconds; `null` before the first pong.
    pub rtt_ms: Option<f64>,
    /// The peer's agent string, e.g. `timed/0.1.0`.
    pub agent: String,
}

/// One element of `GET /masternodes`: a listed masternode other than this node, the expected
/// beside the actual.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MasternodeStatus {
    /// The masternode's P2P address.
    pub address: String,
    /// `outbound` when this node is the designated dialer, else `inbound`.
    pub expected_direction: String,
    /// Whether an established connection exists.
    pub connected: bool,
    /// Direction of the established connection, `null` when there is none.
    pub direction: Option<String>,
    /// `established`, `handshaking`, `dialing`, `backoff`, `waiting_inbound` or `fallback`.
    pub state: String,
    /// Seconds until the next dial, when one is scheduled.
    pub next_dial_secs: Option<u64>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
}

/// What the server can ask the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Query {
    /// For `/consensus_info`.
    ConsensusInfo,
    /// For `/peers`.
    Peers,
    /// For `/masternodes`.
    Masternodes,
    /// For `/metrics`.
    Metrics,
}

/// The registry's answer to a [`Query`].
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// Answers [`Query::ConsensusInfo`].
    ConsensusInfo(ConsensusInfo),
    /// Answers [`Query::Peers`].
    Peers(Vec<PeerStatus>),
    /// Answers [`Query::Masternodes`].
    Masternodes(Vec<MasternodeStatus>),
    /// Answers [`Query::Metrics`]: the Prometheus text exposition.
    Metrics(String),
}

/// How the server reaches the registry: `None` when it did not answer in time.
pub type Ask = Box<dyn Fn(Query) -> Option<Answer> + Send + 'static>;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Our requests are one line plus a few headers; anything bigger is a confused or hostile
/// client and not worth buffering.
const MAX_HEAD: usize = 8 * 1024;
/// One connection is served at a time, so this bounds how long a slow client can hold the
/// thread in each direction.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long to wait for the client's FIN after ours. Closing with unread bytes in the receive
/// buffer makes the kernel send an RST, which can destroy the response before the client reads
/// it; the bound keeps a client that never closes from stalling the next one for long.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);
/// Errors such as EMFILE persist until some descriptor is closed elsewhere; retrying at once
/// would spin a core and flood the log.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const JSON: &str = "application/json";
const TEXT: &str = "text/plain";
/// The Prometheus text exposition format's content type.
const METRICS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Starts the status server on an already-bound listener (the daemon binds it so that a bind
/// failure is reported at start-up) on its own thread named "status", and returns the
/// JoinHandle. Serves one connection at a time: requests are tiny and local, and a single
/// thread keeps the footprint flat.
///
/// The thread never returns: it has no stop signal, since serving until the process exits is
/// all the daemon needs, so the handle is only for naming and may be dropped.
pub fn spawn(listener: TcpListener, ask: Ask) -> io::Result<JoinHandle<()>> {
    // A listener bound for an event loop may be non-blocking; this thread wants to sleep in
    // accept, not spin on WouldBlock.
    listener.set_nonblocking(false)?;
    thread::Builder::new()
        .name("status".to_string())
        .spawn(move || serve(&listener, &*ask))
}

/// Handles one request already read from a client: returns (status code, content type, body).
/// Pure, for unit tests.
///
/// `path` is the request target as sent; a query string is ignored so that cache-busting or
/// tooling parameters do not turn a valid path into a 404. `ask` is only consulted for a `GET`
/// of a path that needs registry data.
pub fn respond(
    method: &str,
    path: &str,
    ask: &dyn Fn(Query) -> Option<Answer>,
) -> (u16, &'static str, String) {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let query = match path {
        "/health" => None,
        "/consensus_info" => Some(Query::ConsensusInfo),
        "/peers" => Some(Query::Peers),
        "/masternodes" => Some(Query::Masternodes),
        "/metrics" => Some(Query::Metrics),
        _ => return error(404, &format!("not found: {path}")),
    };
    if method != "GET" {
        return error(405, "method not allowed");
    }
    let query = match query {
        // The server is only started once the P2P listener is up, so being here is the answer.
        None => return (200, TEXT, "ok\n".to_string()),
        Some(query) => query,
    };
    let body = match (query, ask(query)) {
        (_, None) => return error(503, "registry did not answer in time"),
        (Query::ConsensusInfo, Some(Answer::ConsensusInfo(info))) => serde_json::to_string(&info),
        (Query::Peers, Some(Answer::Peers(peers))) => serde_json::to_string(&peers),
        (Query::Masternodes, Some(Answer::Masternodes(nodes))) => serde_json::to_string(&nodes),
        (Query::Metrics, Some(Answer::Metrics(text))) => return (200, METRICS, text),
        (query, Some(other)) => {
            // A mismatch is a bug in the registry, not a client error; say so loudly once per
            // request rather than serving the wrong shape.
            log::warn!(
                "status: registry answered {query:?} with {}",
                answer_name(&other)
            );
            return error(503, "registry gave an unexpected answer");
        }
    };
    match body {
        Ok(mut body) => {
            body.push('\n');
            (200, JSON, body)
        }
        Err(e) => error(500, &format!("cannot encode answer: {e}")),
    }
}

fn answer_name(answer: &Answer) -> &'static str {
    match answer {
        Answer::ConsensusInfo(_) => "ConsensusInfo",
        Answer::Peers(_) => "Peers",
        Answer::Masternodes(_) => "Masternodes",
        Answer::Metrics(_) => "Metrics",
    }
}

fn error(status: u16, message: &str) -> (u16, &'static str, String) {
    let mut body = serde_json::json!({ "error": message }).to_string();
    body.push('\n');
    (status, JSON, body)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn serve(listener: &TcpListener, ask: &dyn Fn(Query) -> Option<Answer>) {
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = handle(stream, peer, ask) {
                    // The client went away or stalled; nothing to do but move on.
                    log::debug!("status: connection from {peer} failed: {e}");
                }
            }
            // Both are about one client or one signal, not about the listener: retry at once.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) =>
            {
                log::debug!("status: accept interrupted: {e}");
            }
            Err(e) => {
                log::warn!("status: accept failed: {e}");
                thread::sleep(ACCEPT_BACKOFF);
            }
        }
    }
}

/// What reading a request head produced.
#[derive(Debug, PartialEq)]
enum Head {
    /// A parseable request line.
    Request { method: String, target: String },
    /// Something we answer with an error status and a reason.
    Reject(u16, &'static str),
    /// The client closed or stalled before sending a byte (a port probe): no answer is owed.
    Nothing,
}

fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    ask: &dyn Fn(Query) -> Option<Answer>,
) -> io::Result<()> {
    // Some platforms let accepted sockets inherit the listener's non-blocking flag.
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let head = read_head(&mut stream)?;
    let (method, status, content_type, body) = match head {
        Head::Nothing => {
            log::debug!("status: {peer} sent no request");
            return Ok(());
        }
        Head::Reject(status, why) => {
            if status == 408 {
                log::debug!("status: request from {peer} timed out: {why}");
            } else {
                log::warn!("status: rejected request from {peer}: {why}");
            }
            let (status, content_type, body) = error(status, why);
            (None, status, content_type, body)
        }
        Head::Request { method, target } => {
            let (status, content_type, body) = respond(&method, &target, ask);
            log::debug!("status: {peer} {method} {target} -> {status}");
            (Some(method), status, content_type, body)
        }
    };
    let mut response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    if status == 405 {
        response.push_str("Allow: GET\r\n");
    }
    response.push_str("\r\n");
    // A response to HEAD carries the headers a GET would have but never a body (RFC 9110).
    if method.as_deref() != Some("HEAD") {
        response.push_str(&body);
    }
    // One write: the response is small, and split writes would meet Nagle's delay.
    stream.write_all(response.as_bytes())?;
    stream.flush()?;
    close_gracefully(&mut stream);
    Ok(())
}

/// Reads until the blank line that ends the head, within [`MAX_HEAD`] bytes and [`IO_TIMEOUT`]
/// overall. The deadline is for the whole head, not per read: a client trickling one byte at a
/// time would otherwise hold the only serving thread for hours.
fn read_head(stream: &mut TcpStream) -> io::Result<Head> {
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Ok(timed_out(&buf));
        }
        stream.set_read_timeout(Some(remaining))?;
        let room = (MAX_HEAD - buf.len()).min(chunk.len());
        let n = match stream.read(&mut chunk[..room]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(timed_out(&buf));
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(if buf.is_empty() {
                Head::Nothing
            } else {
                Head::Reject(400, "connection closed inside the request head")
            });
        }
        // Rescan only what may complete a terminator, so the loop stays linear in the head size.
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[from..]) {
            return Ok(parse_head(&buf[..from + end]));
        }
        if buf.len() >= MAX_HEAD {
            return Ok(Head::Reject(431, "request head too large"));
        }
    }
}

fn timed_out(buf: &[u8]) -> Head {
    if buf.is_empty() {
        Head::Nothing
    } else {
        Head::Reject(408, "request head not received in time")
    }
}

/// Where the head ends: after `\r\n\r\n`, or after `\n\n` for clients typing by hand.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(2).enumerate().find_map(|(i, w)| match w {
        b"\n\n" => Some(i + 2),
        b"\n\r" if buf.get(i + 2) == Some(&b'\n') => Some(i + 3),
        _ => None,
    })
}

/// Parses `METHOD TARGET HTTP/1.x` from the head's first line; headers are ignored because
/// nothing we serve depends on them.
fn parse_head(head: &[u8]) -> Head {
    const MALFORMED: Head = Head::Reject(400, "malformed request line");
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return MALFORMED;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return MALFORMED;
    };
    let is_token = !method.is_empty()
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    let is_http1 = version.len() == 8
        && version.starts_with("HTTP/1.")
        && version.as_bytes()[7].is_ascii_digit();
    // Only origin-form targets name our resources; `*` and absolute URLs are for proxies.
    let is_origin = target.starts_with('/') && !target.bytes().any(|b| b.is_ascii_control());
    if !(is_token && is_http1 && is_origin) {
        return MALFORMED;
    }
    Head::Request {
        method: method.to_string(),
        target: target.to_string(),
    }
}

/// Sends our FIN, then reads and discards whatever the client still sends (a body we never
/// wanted, say) until it closes or [`DRAIN_TIMEOUT`] passes, so the close is a FIN and not an
/// RST that could destroy the response in flight.
fn close_gracefully(stream: &mut TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut sink = [0u8; 4096];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() || stream.set_read_timeout(Some(remaining)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::cell::Cell;

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
            uptime_secs: 12,
        }
    }

    fn peer() -> PeerStatus {
        PeerStatus {
            address: "127.0.0.3:24100".into(),
            direction: "outbound".into(),
            masternode: true,
            connected_secs: 40,
            last_recv_secs: 2,
            rtt_ms: Some(0.31),
            agent: "timed/0.1.0".into(),
        }
    }

    fn node() -> MasternodeStatus {
        MasternodeStatus {
            address: "127.0.0.3:24100".into(),
            expected_direction: "outbound".into(),
            connected: true,
            direction: Some("outbound".into()),
            state: "established".into(),
            next_dial_secs: None,
            last_error: None,
        }
    }

    /// A registry that answers everything correctly.
    fn good(query: Query) -> Option<Answer> {
        Some(match query {
            Query::ConsensusInfo => Answer::ConsensusInfo(info()),
            Query::Peers => Answer::Peers(vec![peer()]),
            Query::Masternodes => Answer::Masternodes(vec![node()]),
            Query::Metrics => Answer::Metrics("# HELP timed_x x\n".into()),
        })
    }

    fn keys(value: &Value) -> Vec<&str> {
        let mut keys: Vec<&str> = value
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        keys
    }

    fn sorted(mut names: Vec<&str>) -> Vec<&str> {
        names.sort_unstable();
        names
    }

    fn json(body: &str) -> Value {
        assert!(body.ends_with('\n'), "body ends with a newline: {body:?}");
        serde_json::from_str(body).expect("valid JSON")
    }

    #[test]
    fn consensus_info_fields_match_the_spec() {
        let value = serde_json::to_value(info()).unwrap();
        assert_eq!(
            keys(&value),
            sorted(vec![
                "network",
                "version",
                "local_address",
                "masternode",
                "active_masternodes",
                "total_masternodes",
                "connected_peers",
                "inbound",
                "outbound",
                "uptime_secs",
            ])
        );
        assert_eq!(value["active_masternodes"], 4);
        assert_eq!(value["local_address"], "127.0.0.2:24100");
    }

    #[test]
    fn peer_status_fields_match_the_spec() {
        let value = serde_json::to_value(peer()).unwrap();
        assert_eq!(
            keys(&value),
            sorted(vec![
                "address",
                "direction",
                "masternode",
                "connected_secs",
                "last_recv_secs",
                "rtt_ms",
                "agent",
            ])
        );
        assert_eq!(value["rtt_ms"], 0.31);
    }

    #[test]
    fn masternode_status_fields_match_the_spec() {
        let value = serde_json::to_value(node()).unwrap();
        assert_eq!(
            keys(&value),
            sorted(vec![
                "address",
                "expected_direction",
                "connected",
                "direction",
                "state",
                "next_dial_secs",
                "last_error",
            ])
        );
        // Absent values are `null`, not missing, so `jq` filters see every field.
        assert!(value["next_dial_secs"].is_null());
        assert!(value["last_error"].is_null());
    }

    #[test]
    fn health_is_plain_ok_without_asking() {
        let asked = Cell::new(false);
        let ask = |_: Query| {
            asked.set(true);
            None
        };
        assert_eq!(respond("GET", "/health", &ask), (200, TEXT, "ok\n".into()));
        assert!(!asked.get());
    }

    #[test]
    fn consensus_info_is_served_from_the_registry() {
        let (status, content_type, body) = respond("GET", "/consensus_info", &good);
        assert_eq!((status, content_type), (200, JSON));
        assert_eq!(json(&body), serde_json::to_value(info()).unwrap());
    }

    #[test]
    fn peers_is_a_json_array() {
        let (status, content_type, body) = respond("GET", "/peers", &good);
        assert_eq!((status, content_type), (200, JSON));
        assert_eq!(json(&body), serde_json::to_value(vec![peer()]).unwrap());
        let empty = |_: Query| Some(Answer::Peers(Vec::new()));
        assert_eq!(respond("GET", "/peers", &empty).2, "[]\n");
    }

    #[test]
    fn masternodes_is_a_json_array() {
        let (status, content_type, body) = respond("GET", "/masternodes", &good);
        assert_eq!((status, content_type), (200, JSON));
        assert_eq!(json(&body), serde_json::to_value(vec![node()]).unwrap());
    }

    #[test]
    fn each_path_asks_its_own_query() {
        let seen = Cell::new(None);
        let ask = |query: Query| {
            seen.set(Some(query));
            good(query)
        };
        for (path, query) in [
            ("/consensus_info", Query::ConsensusInfo),
            ("/peers", Query::Peers),
            ("/masternodes", Query::Masternodes),
        ] {
            assert_eq!(respond("GET", path, &ask).0, 200);
            assert_eq!(seen.take(), Some(query), "{path}");
        }
    }

    #[test]
    fn query_string_is_ignored() {
        assert_eq!(
            respond("GET", "/peers?x=1", &good),
            respond("GET", "/peers", &good)
        );
        assert_eq!(respond("GET", "/health?", &good).0, 200);
        let (status, _, body) = respond("GET", "/nope?x=1", &good);
        assert_eq!(status, 404);
        assert_eq!(json(&body)["error"], "not found: /nope");
    }

    #[test]
    fn unknown_path_is_404_with_the_path() {
        for path in ["/nope", "/", "/peers/", "/PEERS", "/health/x"] {
            let (status, content_type, body) = respond("GET", path, &good);
            assert_eq!((status, content_type), (404, JSON), "{path}");
            assert_eq!(
                json(&body),
                serde_json::json!({ "error": format!("not found: {path}") })
            );
        }
        // A path needing JSON escaping still yields valid JSON.
        let (_, _, body) = respond("GET", "/a\"b\\c", &good);
        assert_eq!(json(&body)["error"], "not found: /a\"b\\c");
    }

    #[test]
    fn other_methods_on_known_paths_are_405_without_asking() {
        let ask = |_: Query| -> Option<Answer> { panic!("must not ask for a 405") };
        for method in ["POST", "PUT", "DELETE", "HEAD", "OPTIONS", "get"] {
            for path in ["/health", "/consensus_info", "/peers", "/masternodes"] {
                let (status, content_type, body) = respond(method, path, &ask);
                assert_eq!((status, content_type), (405, JSON), "{method} {path}");
                assert_eq!(
                    json(&body),
                    serde_json::json!({ "error": "method not allowed" })
                );
            }
        }
        // The path decides first: an unknown path is 404 whatever the method.
        assert_eq!(respond("POST", "/nope", &ask).0, 404);
    }

    #[test]
    fn silent_registry_is_503() {
        let silent = |_: Query| None;
        for path in ["/consensus_info", "/peers", "/masternodes"] {
            let (status, content_type, body) = respond("GET", path, &silent);
            assert_eq!((status, content_type), (503, JSON), "{path}");
            assert!(json(&body)["error"].is_string());
        }
        // Health does not depend on the registry.
        assert_eq!(respond("GET", "/health", &silent).0, 200);
    }

    #[test]
    fn metrics_are_served_as_prometheus_text() {
        let (status, content_type, body) = respond("GET", "/metrics", &good);
        assert_eq!(status, 200);
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert!(body.starts_with("# HELP timed_"));
        assert_eq!(respond("POST", "/metrics", &good).0, 405);
    }

    #[test]
    fn wrong_answer_is_503() {
        let confused = |query: Query| match query {
            Query::ConsensusInfo => Some(Answer::Peers(vec![peer()])),
            Query::Peers => Some(Answer::Masternodes(vec![node()])),
            Query::Masternodes => Some(Answer::ConsensusInfo(info())),
            Query::Metrics => Some(Answer::Peers(vec![])),
        };
        for path in ["/consensus_info", "/peers", "/masternodes", "/metrics"] {
            let (status, content_type, body) = respond("GET", path, &confused);
            assert_eq!((status, content_type), (503, JSON), "{path}");
            assert!(json(&body)["error"].is_string());
        }
    }

    #[test]
    fn request_line_parsing() {
        let request = |method: &str, target: &str| Head::Request {
            method: method.into(),
            target: target.into(),
        };
        assert_eq!(
            parse_head(b"GET /peers HTTP/1.1\r\nHost: x\r\n\r\n"),
            request("GET", "/peers")
        );
        assert_eq!(
            parse_head(b"GET /x?y=1 HTTP/1.0\n\n"),
            request("GET", "/x?y=1")
        );
        assert_eq!(
            parse_head(b"POST /peers HTTP/1.1\r\n\r\n"),
            request("POST", "/peers")
        );
        for bad in [
            &b"\r\n\r\n"[..],
            b"GET\r\n\r\n",
            b"GET /peers\r\n\r\n",
            b"GET  /peers HTTP/1.1\r\n\r\n",
            b"GET /peers HTTP/1.1 extra\r\n\r\n",
            b"GET /peers HTTP/2.0\r\n\r\n",
            b"GET /peers HTTP/1.10\r\n\r\n",
            b"GET peers HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\n",
            b"G(T /peers HTTP/1.1\r\n\r\n",
            b"GET /pe\xffrs HTTP/1.1\r\n\r\n",
            b"GET /pe\trs HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                parse_head(bad),
                Head::Reject(400, "malformed request line"),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn head_end_finds_either_terminator() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nbody"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(head_end(b"\r\n\r"), None);
    }

    mod end_to_end {
        use super::*;
        use std::net::Ipv4Addr;

        struct Response {
            status: u16,
            headers: Vec<(String, String)>,
            body: String,
        }

        impl Response {
            fn header(&self, name: &str) -> Option<&str> {
                self.headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.as_str())
            }
        }

        fn server() -> SocketAddr {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let addr = listener.local_addr().unwrap();
            let handle = spawn(listener, Box::new(good)).unwrap();
            assert_eq!(handle.thread().name(), Some("status"));
            addr
        }

        /// Sends `request` as is and reads to EOF; a reset instead of a FIN fails the read.
        fn exchange(addr: SocketAddr, request: &[u8]) -> Response {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            stream.write_all(request).unwrap();
            let mut raw = Vec::new();
            stream
                .read_to_end(&mut raw)
                .expect("response then a clean EOF");
            // A response to HEAD announces the length of a body it does not carry.
            parse_response(&raw, !request.starts_with(b"HEAD "))
        }

        fn parse_response(raw: &[u8], has_body: bool) -> Response {
            let raw = String::from_utf8(raw.to_vec()).unwrap();
            let (head, body) = raw.split_once("\r\n\r\n").expect("a complete head");
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap();
            let mut parts = status_line.splitn(3, ' ');
            assert_eq!(parts.next(), Some("HTTP/1.1"));
            let status = parts.next().unwrap().parse().unwrap();
            let headers: Vec<(String, String)> = lines
                .map(|line| {
                    let (name, value) = line.split_once(": ").unwrap();
                    (name.to_string(), value.to_string())
                })
                .collect();
            let response = Response {
                status,
                headers,
                body: body.to_string(),
            };
            assert_eq!(response.header("Connection"), Some("close"));
            let length: usize = response.header("Content-Length").unwrap().parse().unwrap();
            if has_body {
                assert_eq!(length, response.body.len(), "Content-Length is exact");
            } else {
                assert!(length > 0 && response.body.is_empty(), "no body after HEAD");
            }
            response
        }

        #[test]
        fn get_health() {
            let addr = server();
            let response = exchange(addr, b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n");
            assert_eq!(response.status, 200);
            assert_eq!(response.header("Content-Type"), Some(TEXT));
            assert_eq!(response.body, "ok\n");
        }

        #[test]
        fn get_consensus_info() {
            let addr = server();
            let response = exchange(addr, b"GET /consensus_info HTTP/1.1\r\n\r\n");
            assert_eq!(response.status, 200);
            assert_eq!(response.header("Content-Type"), Some(JSON));
            let value: Value = serde_json::from_str(&response.body).unwrap();
            assert_eq!(value["connected_peers"], 3);
        }

        #[test]
        fn unknown_path_is_404_json() {
            let addr = server();
            let response = exchange(addr, b"GET /nope HTTP/1.1\r\n\r\n");
            assert_eq!(response.status, 404);
            assert_eq!(response.header("Content-Type"), Some(JSON));
            let value: Value = serde_json::from_str(&response.body).unwrap();
            assert_eq!(value, serde_json::json!({ "error": "not found: /nope" }));
        }

        #[test]
        fn post_is_405_and_its_body_does_not_cause_a_reset() {
            let addr = server();
            // A body much bigger than what one read takes, none of which we read as a request.
            let body = vec![b'x'; 256 * 1024];
            let mut request = format!(
                "POST /peers HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            request.extend_from_slice(&body);
            let response = exchange(addr, &request);
            assert_eq!(response.status, 405);
            assert_eq!(response.header("Allow"), Some("GET"));
            let value: Value = serde_json::from_str(&response.body).unwrap();
            assert_eq!(value, serde_json::json!({ "error": "method not allowed" }));
        }

        #[test]
        fn head_gets_headers_only() {
            let addr = server();
            let response = exchange(addr, b"HEAD /health HTTP/1.1\r\n\r\n");
            assert_eq!(response.status, 405);
            assert_eq!(response.header("Allow"), Some("GET"));
            assert_eq!(response.body, "");
        }

        #[test]
        fn oversized_head_is_rejected_and_closed() {
            let addr = server();
            let mut request = b"GET /health HTTP/1.1\r\n".to_vec();
            while request.len() <= MAX_HEAD {
                request.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
            }
            request.extend_from_slice(b"\r\n");
            // `exchange` reads to EOF, so returning at all shows the server closed.
            let response = exchange(addr, &request);
            assert_eq!(response.status, 431);
            let value: Value = serde_json::from_str(&response.body).unwrap();
            assert!(value["error"].is_string());
        }

        #[test]
        fn malformed_request_is_400() {
            let addr = server();
            let response = exchange(addr, b"hello\r\n\r\n");
            assert_eq!(response.status, 400);
            let value: Value = serde_json::from_str(&response.body).unwrap();
            assert!(value["error"].is_string());
        }

        #[test]
        fn stalled_head_times_out_as_a_whole() {
            let addr = server();
            let mut stream = TcpStream::connect(addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let started = Instant::now();
            // Trickle bytes well within the per-read timeout, stopping just short of the
            // overall deadline: a per-read timeout alone would answer only ~2s after the last.
            for byte in b"GET /health HTTP/1." {
                stream.write_all(&[*byte]).unwrap();
                thread::sleep(Duration::from_millis(100));
            }
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).unwrap();
            let elapsed = started.elapsed();
            assert!(elapsed >= IO_TIMEOUT, "{elapsed:?}");
            assert!(elapsed < IO_TIMEOUT + Duration::from_secs(1), "{elapsed:?}");
            assert_eq!(parse_response(&raw, true).status, 408);
        }

        #[test]
        fn keeps_serving_after_bad_clients() {
            let addr = server();
            // A probe that sends nothing, and one that sends half a head, then vanish.
            drop(TcpStream::connect(addr).unwrap());
            let mut half = TcpStream::connect(addr).unwrap();
            half.write_all(b"GET /hea").unwrap();
            drop(half);
            for _ in 0..3 {
                assert_eq!(exchange(addr, b"GET /health HTTP/1.0\r\n\r\n").status, 200);
            }
        }
    }
}
