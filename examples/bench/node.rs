//! Real `timed` processes: started with their own loopback address, asked over their status
//! endpoint, stopped by PID.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::sys;

/// P2P port of every node (each node has its own IP).
pub const P2P_PORT: u16 = 24100;
/// Status endpoint port of every node, on the node's IP.
pub const RPC_PORT: u16 = 8332;

/// Status requests refused because the node was not listening yet: each is one SYN the
/// kernel answers with an RST (and one `TcpAttemptFails`).
pub static HTTP_REFUSED: AtomicU64 = AtomicU64::new(0);

/// One running `timed`.
pub struct Node {
    /// P2P address.
    pub p2p: SocketAddrV4,
    /// Status endpoint.
    pub rpc: SocketAddrV4,
    /// Its standard error.
    pub log: PathBuf,
    child: Option<Child>,
}

/// How to start a node.
pub struct Spec<'a> {
    /// The `timed` binary.
    pub bin: &'a Path,
    /// An empty configuration file, so an installed `/etc/timed/timed.conf` cannot leak in.
    pub conf: &'a Path,
    /// The node's IP (P2P and status endpoint).
    pub ip: Ipv4Addr,
    /// `--masternode=` entries.
    pub masternodes: &'a [SocketAddrV4],
    /// More `--key=value` arguments.
    pub extra: &'a [String],
    /// Where its standard error goes.
    pub log: PathBuf,
}

impl Node {
    /// Starts a node at the default log level (`RUST_LOG` removed); with a barrier, the
    /// process waits for its release before it execs `timed`.
    pub fn spawn(spec: Spec, barrier: Option<&sys::Barrier>) -> io::Result<Node> {
        let p2p = SocketAddrV4::new(spec.ip, P2P_PORT);
        let rpc = SocketAddrV4::new(spec.ip, RPC_PORT);
        let log = File::create(&spec.log)?;
        let mut args: Vec<OsString> = vec![
            "--conf".into(),
            spec.conf.into(),
            format!("--listen={p2p}").into(),
            format!("--rpclisten={rpc}").into(),
        ];
        args.extend(
            spec.masternodes
                .iter()
                .map(|m| format!("--masternode={m}").into()),
        );
        args.extend(spec.extra.iter().map(OsString::from));
        let mut cmd = match barrier {
            Some(b) => b.command(spec.bin, &args),
            None => {
                let mut cmd = Command::new(spec.bin);
                cmd.args(&args);
                cmd
            }
        };
        cmd.env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        sys::die_with_parent(&mut cmd);
        let child = cmd.spawn()?;
        sys::register_child(child.id());
        Ok(Node {
            p2p,
            rpc,
            log: spec.log,
            child: Some(child),
        })
    }

    /// The process id (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// `GET path` → status and body.
    pub fn get(&self, path: &str) -> Result<(u16, String), String> {
        http_get(self.rpc, path)
    }

    /// `GET path` as JSON (200 only).
    pub fn json(&self, path: &str) -> Result<Value, String> {
        let (code, body) = self.get(path)?;
        if code != 200 {
            return Err(format!("GET {}{path} -> {code}", self.rpc));
        }
        serde_json::from_str(&body).map_err(|e| format!("GET {}{path}: {e}", self.rpc))
    }

    /// `connected_peers` from `/consensus_info`.
    pub fn connected_peers(&self) -> Result<u64, String> {
        self.json("/consensus_info")?["connected_peers"]
            .as_u64()
            .ok_or_else(|| "no connected_peers".to_string())
    }

    /// `GET /metrics`, parsed.
    pub fn metrics(&self) -> Result<Metrics, String> {
        let (code, body) = self.get("/metrics")?;
        if code != 200 {
            return Err(format!("GET {}/metrics -> {code}", self.rpc));
        }
        Ok(Metrics::parse(&body))
    }

    /// Lines in its log so far.
    pub fn log_lines(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    /// Polls until `connected_peers == want` (true) or the deadline passes (false).
    pub fn wait_peers(&self, want: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.connected_peers() == Ok(want) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Polls `/health` until it answers 200.
    pub fn wait_healthy(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if matches!(self.get("/health"), Ok((200, _))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            // SAFETY: kill on the PID of our own child, not yet reaped.
            unsafe {
                libc::kill(c.id() as libc::pid_t, sig);
            }
        }
    }

    fn reap(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
            sys::forget_child(c.id());
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.running() {
            self.signal(libc::SIGKILL);
        }
        self.reap();
    }
}

/// SIGTERM to every node at once; whoever has not exited 6 s later gets SIGKILL. Returns
/// how many had to be killed.
pub fn stop_all(nodes: &mut [Node]) -> usize {
    for n in nodes.iter() {
        n.signal(libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut killed = 0;
    for n in nodes.iter_mut() {
        while n.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if n.running() {
            n.signal(libc::SIGKILL);
            killed += 1;
        }
        n.reap();
    }
    killed
}

/// A minimal `GET` over a fresh connection (`Connection: close`) with short timeouts.
pub fn http_get(addr: SocketAddrV4, path: &str) -> Result<(u16, String), String> {
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&SocketAddr::V4(addr), timeout).map_err(|e| {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            HTTP_REFUSED.fetch_add(1, Ordering::Relaxed);
        }
        format!("connect to {addr}: {e}")
    })?;
    stream.set_read_timeout(Some(timeout)).ok();
    stream.set_write_timeout(Some(timeout)).ok();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("read from {addr}{path}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed response from {addr}{path}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line from {addr}{path}"))?;
    Ok((code, body.to_string()))
}

/// Samples of a Prometheus text exposition: `name{labels}` → value.
#[derive(Clone, Debug, Default)]
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    /// Parses the exposition text (comments skipped).
    pub fn parse(text: &str) -> Metrics {
        Metrics(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (k, v) = l.rsplit_once(' ')?;
                    Some((k.to_string(), v.parse().ok()?))
                })
                .collect(),
        )
    }

    /// One sample (0 when absent).
    pub fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }

    /// The sum of every series of a family.
    pub fn family(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
            .map(|(_, v)| v)
            .sum()
    }
}

/// The sum of `f` over several nodes' metrics.
pub fn sum(all: &[Metrics], f: impl Fn(&Metrics) -> f64) -> f64 {
    all.iter().map(f).sum()
}
