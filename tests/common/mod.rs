//! Harness for integration tests that run real `timed` processes on loopback addresses.
//!
//! Every test gets its own [`Harness`]: a temporary directory (logs, configuration files)
//! and a block of loopback addresses `127.A.B.0/24` that no other test of this or another
//! concurrently running test process uses. Each node listens on `127.A.B.HOST:24100`, dials
//! from that address, and serves its status endpoint on `127.A.B.HOST:8332`, so several
//! meshes run side by side without any port juggling.
//!
//! The directory is removed after a passing test and kept (its path printed) after a failing
//! one, or always with `TIMED_TEST_KEEP=1`.
//!
//! Processes are stopped by their own PID (SIGTERM, then SIGKILL after a deadline) when a
//! [`Node`] is dropped, also when the test panics. Synchronisation is always polling with a
//! deadline ([`wait_until`]), never a fixed sleep.

#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The daemon under test, built by cargo for the integration tests.
pub const TIMED: &str = env!("CARGO_BIN_EXE_timed");

/// P2P port of every test node (each node has its own IP).
pub const P2P_PORT: u16 = 24100;
/// Status endpoint port of every test node.
pub const RPC_PORT: u16 = 8332;

/// Timings for tests that are not about the defaults: fast pings, fast redials.
pub const FAST: &[&str] = &[
    "--pinginterval=1s",
    "--pingtimeout=5s",
    "--reconnectmin=100ms",
    "--reconnectmax=2s",
];

/// How often [`wait_until`] polls.
const POLL: Duration = Duration::from_millis(50);

/// How long a stopped node may take to exit after SIGTERM before it gets SIGKILL on drop.
const DROP_GRACE: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// Polling

/// Polls `probe` every 50 ms until it returns `Ok`, and returns that value. On timeout it
/// panics with `what` and the last state the probe reported (its `Err` text).
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(state) => {
                if Instant::now() >= deadline {
                    panic!(
                        "timed out after {:.1?} waiting for {what}\nlast observed state:\n{state}",
                        start.elapsed()
                    );
                }
            }
        }
        std::thread::sleep(POLL);
    }
}

/// Like [`wait_until`] for a plain condition; `state` describes what was seen on timeout.
pub fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_until(timeout, what, || {
        if cond() {
            Ok(())
        } else {
            Err("condition still false".to_string())
        }
    })
}

// ---------------------------------------------------------------------------------------
// HTTP

/// How many [`http_get`] connects were refused (nobody listening yet). Each is one SYN the
/// kernel answered with an RST, which the RST-free test must tell apart from resets.
pub static HTTP_REFUSED: AtomicU64 = AtomicU64::new(0);

/// A minimal `GET` over a fresh connection (`Connection: close`), with timeouts. Returns the
/// status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            HTTP_REFUSED.fetch_add(1, Ordering::SeqCst);
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
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed response from {addr}{path}: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line from {addr}{path}: {head:?}"))?;
    Ok((status, body.to_string()))
}

/// `GET` that must answer 200 with JSON.
pub fn get_json(addr: SocketAddr, path: &str) -> Result<Value, String> {
    let (status, body) = http_get(addr, path)?;
    if status != 200 {
        return Err(format!("GET {addr}{path} -> {status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("GET {addr}{path}: bad JSON ({e}): {body}"))
}

// ---------------------------------------------------------------------------------------
// Address blocks and the per-test directory

static NEXT_BLOCK: AtomicU32 = AtomicU32::new(0);

/// Whether `ip:port` can be bound right now (nobody listens there).
pub fn port_free(ip: Ipv4Addr, port: u16) -> bool {
    TcpListener::bind((ip, port)).is_ok()
}

/// A test's private world: a temporary directory and a /24 of loopback addresses.
pub struct Harness {
    pub name: String,
    pub dir: PathBuf,
    /// Second and third octet of this test's `127.A.B.0/24`.
    block: (u8, u8),
}

impl Harness {
    /// A new harness for the test `name`. Picks a loopback block from the process id and a
    /// counter (so parallel tests and parallel test binaries get different blocks) and checks
    /// that the ports of the hosts tests use are free in it; moves on to the next block if not.
    pub fn new(name: &str) -> Harness {
        // 127.0.0.0/16 is left alone: people run hand-made meshes on 127.0.0.x.
        let a = 1 + (std::process::id() % 250) as u8;
        let block = loop {
            let n = NEXT_BLOCK.fetch_add(1, Ordering::SeqCst);
            assert!(n < 1024, "no free loopback block found");
            let candidate = (a.wrapping_add((n / 256) as u8).max(1), (n % 256) as u8);
            let free = (1..=20u8).all(|h| {
                let ip = Ipv4Addr::new(127, candidate.0, candidate.1, h);
                port_free(ip, P2P_PORT) && port_free(ip, RPC_PORT)
            });
            if free {
                break candidate;
            }
        };
        let dir = std::env::temp_dir().join(format!(
            "timed-it-{}-{}-{}.{}",
            std::process::id(),
            name,
            block.0,
            block.1
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create test directory");
        // An empty configuration file, so that a /etc/timed/timed.conf on the host (left by
        // `make install`) never leaks into a test.
        fs::write(dir.join("empty.conf"), "# empty\n").expect("write empty.conf");
        Harness {
            name: name.to_string(),
            dir,
            block,
        }
    }

    /// The loopback IP `127.A.B.host` of this test.
    pub fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, self.block.0, self.block.1, host)
    }

    /// The P2P address of host `host`.
    pub fn addr(&self, host: u8) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip(host), P2P_PORT))
    }

    /// The status endpoint address of host `host`.
    pub fn rpc_addr(&self, host: u8) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.ip(host), RPC_PORT))
    }

    pub fn addrs(&self, hosts: &[u8]) -> Vec<SocketAddr> {
        hosts.iter().map(|h| self.addr(*h)).collect()
    }

    /// A node on `host` with no masternodes, default configuration otherwise.
    pub fn node(&self, host: u8) -> NodeBuilder {
        NodeBuilder {
            name: format!("node-{host}"),
            ip: self.ip(host),
            dir: self.dir.clone(),
            masternodes: Vec::new(),
            args: Vec::new(),
            rust_log: None,
            conf: Some(self.dir.join("empty.conf")),
            netns: None,
        }
    }

    /// A node on `ip` (outside this test's loopback block: an address inside a private
    /// network namespace, see [`Cage`]), named after its address; otherwise like
    /// [`Harness::node`].
    pub fn node_at(&self, ip: Ipv4Addr) -> NodeBuilder {
        NodeBuilder {
            name: format!("node-{ip}"),
            ip,
            ..self.node(0)
        }
    }

    /// Writes a file in the test directory and returns its path.
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        fs::write(&path, contents).expect("write test file");
        path
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "[{}] test failed: node logs kept in {}",
                self.name,
                self.dir.display()
            );
        } else if std::env::var_os("TIMED_TEST_KEEP").is_some() {
            eprintln!("[{}] node logs kept in {}", self.name, self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Nodes

/// How to start one node.
#[derive(Clone)]
pub struct NodeBuilder {
    name: String,
    ip: Ipv4Addr,
    dir: PathBuf,
    masternodes: Vec<SocketAddr>,
    args: Vec<String>,
    rust_log: Option<String>,
    conf: Option<PathBuf>,
    /// PID of a process whose network namespace the node runs in (`nsenter -n`).
    netns: Option<u32>,
}

impl NodeBuilder {
    pub fn masternodes(mut self, list: &[SocketAddr]) -> Self {
        self.masternodes = list.to_vec();
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.args
            .extend(args.iter().map(|a| a.as_ref().to_string()));
        self
    }

    /// The fast timings of [`FAST`].
    pub fn fast(self) -> Self {
        self.args(FAST)
    }

    /// `RUST_LOG` for the node (by default it is removed from the environment and the node
    /// logs at its configured level, `info`).
    pub fn rust_log(mut self, filter: &str) -> Self {
        self.rust_log = Some(filter.to_string());
        self
    }

    pub fn debug(self) -> Self {
        self.rust_log("debug")
    }

    /// Use this configuration file instead of the empty one. Keys given with `arg` still
    /// override it; no `--masternode` is passed unless `masternodes` was called.
    pub fn conf(mut self, path: &Path) -> Self {
        self.conf = Some(path.to_path_buf());
        self
    }

    /// Run the node in the network namespace of process `pid` (a [`Cage`]'s holder). nsenter
    /// execs `timed` without forking, so the node's PID is still `timed`'s own.
    pub fn netns(mut self, pid: u32) -> Self {
        self.netns = Some(pid);
        self
    }

    pub fn spawn(self) -> Node {
        let mut node = Node {
            name: self.name.clone(),
            addr: SocketAddr::V4(SocketAddrV4::new(self.ip, P2P_PORT)),
            rpc: SocketAddr::V4(SocketAddrV4::new(self.ip, RPC_PORT)),
            log_path: self.dir.join(format!("{}.log", self.name)),
            builder: self,
            child: None,
            exited: None,
            starts: 0,
        };
        node.start();
        node
    }
}

/// One running (or stopped) `timed` process.
pub struct Node {
    pub name: String,
    /// P2P address (listen and dial source).
    pub addr: SocketAddr,
    /// Status endpoint.
    pub rpc: SocketAddr,
    pub log_path: PathBuf,
    builder: NodeBuilder,
    child: Option<Child>,
    /// Exit status of the last run, once reaped.
    exited: Option<ExitStatus>,
    starts: u32,
}

impl Node {
    fn command(&self) -> Command {
        let b = &self.builder;
        let mut cmd = match b.netns {
            Some(pid) => {
                let mut cmd = Command::new("nsenter");
                cmd.args(["-t", &pid.to_string(), "-n", "--", TIMED]);
                cmd
            }
            None => Command::new(TIMED),
        };
        if let Some(conf) = &b.conf {
            cmd.arg("--conf").arg(conf);
        }
        cmd.arg(format!("--listen={}", self.addr))
            .arg(format!("--rpclisten={}", self.rpc));
        for m in &b.masternodes {
            cmd.arg(format!("--masternode={m}"));
        }
        cmd.args(&b.args);
        cmd.env_remove("RUST_LOG");
        if let Some(filter) = &b.rust_log {
            cmd.env("RUST_LOG", filter);
        }
        cmd
    }

    /// The command line, for messages.
    pub fn command_line(&self) -> String {
        let cmd = self.command();
        let mut s = cmd.get_program().to_string_lossy().into_owned();
        for a in cmd.get_args() {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    fn start(&mut self) {
        assert!(!self.is_running(), "{} is already running", self.name);
        self.exited = None;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open node log");
        self.starts += 1;
        writeln!(
            log,
            "=== harness: start #{} of {}: {}",
            self.starts,
            self.name,
            self.command_line()
        )
        .ok();
        let stdout = log.try_clone().expect("clone log handle");
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {TIMED}: {e}"));
        self.child = Some(child);
    }

    /// Starts the node again (same address, same arguments) after it was stopped.
    pub fn restart(&mut self) {
        if self.is_running() {
            let status = self.terminate(Duration::from_secs(5));
            assert!(
                status.is_some(),
                "{} did not stop for the restart",
                self.name
            );
        }
        self.start();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process is still running; reaps it (and remembers its exit status) if
    /// it has exited.
    pub fn is_running(&mut self) -> bool {
        let Some(child) = &mut self.child else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.reaped(status);
                false
            }
            Err(e) => panic!("waiting for {}: {e}", self.name),
        }
    }

    fn reaped(&mut self, status: ExitStatus) {
        self.child = None;
        self.exited = Some(status);
        self.note(&format!("exited: {}", describe(&status)));
    }

    /// Sends `signal` (a name such as TERM, HUP, KILL) to this node's own PID. The child is
    /// checked with `try_wait` first and not reaped before the signal, so the PID cannot
    /// belong to anyone else.
    pub fn signal(&mut self, signal: &str) {
        assert!(
            self.is_running(),
            "{} is not running (last exit: {:?}), cannot send SIG{signal}",
            self.name,
            self.exited.as_ref().map(describe)
        );
        let pid = self.pid().expect("running");
        let status = Command::new("kill")
            .arg("-s")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {signal} {pid} failed");
    }

    /// Waits up to `timeout` for the process to exit and reaps it. Returns the exit status
    /// (also when it had already exited), `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                return self.exited;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL / 5);
        }
    }

    /// SIGTERM, then waits up to `timeout`; `None` if it is still running (it is left
    /// running; drop or `kill9` ends it).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if !self.is_running() {
            return self.exited;
        }
        self.signal("TERM");
        self.wait_exit(timeout)
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("node is not running");
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("reap");
        self.reaped(status);
        status
    }

    fn note(&self, what: &str) {
        if let Ok(mut f) = OpenOptions::new().append(true).open(&self.log_path) {
            let _ = writeln!(f, "=== harness: {} {what}", self.name);
        }
    }

    /// Everything the node wrote to stderr and stdout so far, over all its starts.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// A position in the log, for [`Node::log_since`].
    pub fn log_mark(&self) -> usize {
        self.log().len()
    }

    pub fn log_since(&self, mark: usize) -> String {
        let log = self.log();
        log.get(mark..).unwrap_or("").to_string()
    }

    /// The log lines containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }

    /// The last `n` lines of the log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn try_get(&self, path: &str) -> Result<Value, String> {
        get_json(self.rpc, path).map_err(|e| format!("{}: {e}", self.name))
    }

    fn get(&self, path: &str) -> Value {
        self.try_get(path)
            .unwrap_or_else(|e| panic!("{e}\nlog tail:\n{}", self.log_tail(20)))
    }

    pub fn consensus_info(&self) -> Value {
        self.get("/consensus_info")
    }

    pub fn peers(&self) -> Value {
        self.get("/peers")
    }

    pub fn masternodes(&self) -> Value {
        self.get("/masternodes")
    }

    /// Waits until `/health` answers 200 (the P2P listener is up); panics with the log if the
    /// process exits first.
    pub fn wait_healthy(&mut self, timeout: Duration) {
        let what = format!("{} /health", self.name);
        let rpc = self.rpc;
        let running = wait_until(timeout, &what, || {
            if !self.is_running() {
                return Ok(false);
            }
            match http_get(rpc, "/health") {
                Ok((200, _)) => Ok(true),
                Ok((s, b)) => Err(format!("/health -> {s}: {b}")),
                Err(e) => Err(e),
            }
        });
        assert!(
            running,
            "{} exited during start-up:\n{}",
            self.name,
            self.log_tail(30)
        );
    }

    /// The node's established peers as address → (direction, connected_secs).
    pub fn try_peer_table(&self) -> Result<Vec<PeerRow>, String> {
        let peers = self.try_get("/peers")?;
        let rows = peers
            .as_array()
            .ok_or_else(|| format!("{}: /peers is not an array: {peers}", self.name))?;
        rows.iter()
            .map(|p| {
                let address = p["address"]
                    .as_str()
                    .and_then(|s| s.parse::<SocketAddr>().ok())
                    .ok_or_else(|| format!("{}: bad peer address in {p}", self.name))?;
                Ok(PeerRow {
                    address,
                    direction: p["direction"].as_str().unwrap_or("?").to_string(),
                    connected_secs: p["connected_secs"].as_u64().unwrap_or(0),
                })
            })
            .collect()
    }

    /// Lines logged for completed handshakes, both directions.
    pub fn handshake_lines(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| {
                l.contains("Handshake accepted from") || l.contains("Handshake completed with")
            })
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        stop_all(std::slice::from_mut(self));
    }
}

/// Stops every running node: SIGTERM to all of them at once, then waits up to 5 s in total,
/// then SIGKILL for any still running (noted in its log and on stderr).
pub fn stop_all(nodes: &mut [Node]) {
    for n in nodes.iter_mut() {
        if n.is_running() {
            n.signal("TERM");
        }
    }
    let deadline = Instant::now() + DROP_GRACE;
    for n in nodes.iter_mut() {
        if n.child.is_none() {
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if n.wait_exit(left).is_none() {
            n.note("did not exit within 5 s of SIGTERM: SIGKILL");
            eprintln!(
                "harness: {} ({}) did not exit within 5 s of SIGTERM; killed",
                n.name, n.addr
            );
            if let Some(mut child) = n.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// One row of `/peers`.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerRow {
    pub address: SocketAddr,
    pub direction: String,
    pub connected_secs: u64,
}

/// The exit code, or a description of the signal that ended the process.
pub fn describe(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{status}"),
    }
}

// ---------------------------------------------------------------------------------------
// Meshes

/// K masternodes that all list each other. Dropping it stops them all at once.
pub struct Mesh {
    pub nodes: Vec<Node>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        stop_all(&mut self.nodes);
    }
}

impl Mesh {
    /// Starts one masternode on each of `hosts`, back to back, every one listing all of them;
    /// `configure` adds arguments to each node.
    pub fn start(
        h: &Harness,
        hosts: &[u8],
        configure: impl Fn(NodeBuilder) -> NodeBuilder,
    ) -> Mesh {
        let addrs = h.addrs(hosts);
        let builders: Vec<NodeBuilder> = hosts
            .iter()
            .map(|host| configure(h.node(*host).masternodes(&addrs)))
            .collect();
        // Build every command line first so the processes start as close together as possible.
        let nodes = builders.into_iter().map(NodeBuilder::spawn).collect();
        Mesh { nodes }
    }

    /// Waits until [`mesh_complete`] holds.
    pub fn wait_complete(&self, timeout: Duration) {
        let refs: Vec<&Node> = self.nodes.iter().collect();
        wait_mesh(&refs, timeout);
    }
}

/// Waits until [`mesh_complete`] holds for `nodes`.
pub fn wait_mesh(nodes: &[&Node], timeout: Duration) {
    wait_until(
        timeout,
        &format!("a complete mesh of {} nodes", nodes.len()),
        || mesh_complete(nodes),
    );
}

/// Checks, through every node's `/consensus_info` and `/peers`, that `nodes` form a complete
/// and clean mesh: every node has exactly the others as peers (no address twice, nobody
/// else), each pair's link is outbound at the lower address and inbound at the higher one
/// (numeric `(IP, port)` order), and every node reports `active_masternodes = K` and
/// `connected_peers = K - 1`. The error text lists every violation found.
pub fn mesh_complete(nodes: &[&Node]) -> Result<(), String> {
    mesh_check(nodes, |a, b| a.min(b), "the lower address dials")
}

/// Like [`mesh_complete`], but each pair's link must have been dialed by `dialer(a, b)` (one
/// of `a` and `b`) instead of by the lower address: for meshes that a fallback completed.
pub fn mesh_complete_dialed_by(
    nodes: &[&Node],
    dialer: impl Fn(SocketAddr, SocketAddr) -> SocketAddr,
) -> Result<(), String> {
    mesh_check(nodes, dialer, "the expected dialer")
}

fn mesh_check(
    nodes: &[&Node],
    dialer: impl Fn(SocketAddr, SocketAddr) -> SocketAddr,
    rule: &str,
) -> Result<(), String> {
    let k = nodes.len();
    let mut problems = Vec::new();
    let mut tables: BTreeMap<SocketAddr, Vec<PeerRow>> = BTreeMap::new();
    for node in nodes {
        match node.try_get("/consensus_info") {
            Ok(info) => {
                let active = info["active_masternodes"].as_u64();
                let connected = info["connected_peers"].as_u64();
                if active != Some(k as u64) || connected != Some(k as u64 - 1) {
                    problems.push(format!(
                        "{}: active_masternodes={:?} connected_peers={:?} (want {k} and {})",
                        node.addr,
                        active,
                        connected,
                        k - 1
                    ));
                }
            }
            Err(e) => problems.push(e),
        }
        match node.try_peer_table() {
            Ok(rows) => {
                tables.insert(node.addr, rows);
            }
            Err(e) => problems.push(e),
        }
    }
    let all: BTreeSet<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    for (me, rows) in &tables {
        let mut seen = BTreeSet::new();
        for row in rows {
            if !seen.insert(row.address) {
                problems.push(format!("{me}: {} appears twice in /peers", row.address));
            }
            if !all.contains(&row.address) {
                problems.push(format!("{me}: unexpected peer {}", row.address));
            } else {
                let want = if dialer(*me, row.address) == *me {
                    "outbound"
                } else {
                    "inbound"
                };
                if row.direction != want {
                    problems.push(format!(
                        "{me}: link with {} is {} (want {want}: {rule})",
                        row.address, row.direction
                    ));
                }
            }
        }
        for other in all.iter().filter(|a| *a != me) {
            if !seen.contains(other) {
                problems.push(format!("{me}: no link with {other}"));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Total number of distinct links seen across the nodes' `/peers` (each pair counted once).
pub fn link_count(nodes: &[&Node]) -> Result<usize, String> {
    let mut links = BTreeSet::new();
    for node in nodes {
        for row in node.try_peer_table()? {
            let pair = if node.addr < row.address {
                (node.addr, row.address)
            } else {
                (row.address, node.addr)
            };
            links.insert(pair);
        }
    }
    Ok(links.len())
}

/// Reads the kernel's TCP counters (`/proc/net/netstat` and `/proc/net/snmp`, the files
/// `nstat -az` reads) as `Prefix` + `Name` → value, for example `TcpExtTCPAbortOnClose` and
/// `TcpOutRsts`. Counters belong to the network namespace of the calling process.
pub fn tcp_counters() -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for file in ["/proc/net/netstat", "/proc/net/snmp"] {
        let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("read {file}: {e}"));
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let mut names = names.split_whitespace();
            let mut values = values.split_whitespace();
            let prefix = names.next().unwrap_or("").trim_end_matches(':');
            values.next();
            for (n, v) in names.zip(values) {
                if let Ok(v) = v.parse::<u64>() {
                    out.insert(format!("{prefix}{n}"), v);
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Private network namespaces

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Why a private network namespace cannot be made here, if it cannot.
pub fn netns_unavailable() -> Option<String> {
    if !is_root() {
        return Some("not running as root".into());
    }
    match Command::new("unshare")
        .args(["-n", "true"])
        .stdin(Stdio::null())
        .output()
    {
        Err(e) => Some(format!("cannot run unshare ({e}); install util-linux")),
        Ok(out) if !out.status.success() => Some(format!(
            "`unshare -n true` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// Runs the `#[ignore]`d test `inner_test` of the current test binary inside a fresh network
/// namespace (`unshare -n`), with `inner_env` set so the inner test knows it is inside.
/// Returns its stdout and stderr once it passed; panics (with its output) when it failed.
/// Without root or `unshare` it returns `None` after printing why — or panics when `CI` is
/// set, so CI never silently skips `what`.
pub fn run_in_private_netns(
    inner_test: &str,
    inner_env: &str,
    what: &str,
) -> Option<(String, String)> {
    if let Some(why) = netns_unavailable() {
        let msg =
            format!("{what} needs a private network namespace (root and `unshare -n`): {why}");
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg} (this fails when CI is set)");
        return None;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new("unshare")
        .arg("-n")
        .arg("--")
        .arg(&exe)
        .args(["--exact", inner_test, "--ignored", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(inner_env, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run unshare");
    // Read both pipes on threads so neither fills up.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).ok();
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).ok();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(150);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            // unshare execs the test binary, so this PID is the inner run itself.
            let _ = child.kill();
            let _ = child.wait();
            panic!("the inner run in the namespace did not finish within 150 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (stdout, stderr) = (t_out.join().unwrap(), t_err.join().unwrap());
    eprintln!("--- inner run (in a private network namespace):\n{stdout}\n{stderr}");
    assert!(
        status.success(),
        "the inner run failed ({}); its output is above",
        describe(&status)
    );
    Some((stdout, stderr))
}

// ---------------------------------------------------------------------------------------
// Namespaces inside the private one: a node behind its own cable

/// Runs `cmd` with `sh -c` and panics, with its stderr, when it fails.
pub fn sh(cmd: &str) {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .stdin(Stdio::null())
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}): {}",
        describe(&out.status),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// A network namespace of its own for one node, held open by a sleeping process and joined
/// to the calling (hub) namespace by a veth pair: the hub routes `ip` to the cage, the cage
/// reaches `hub_net` over the cable. Loopback cannot lose a packet and shares one netfilter
/// ruleset, so faults that only one node should suffer (a pulled cable, a firewall, a
/// NAT) are made in its cage. Killing the holder (on drop) lets the kernel destroy the
/// namespace and both veth ends, once no socket of it lingers.
pub struct Cage {
    holder: Child,
    n: u32,
    ip: Ipv4Addr,
}

impl Cage {
    /// A cage for `ip` whose veth ends are named `vy{n}` (the hub's) and `vx{n}` (its own):
    /// a dead cage's namespace lingers while the kernel still holds its orphaned sockets, so
    /// each cage of one run needs names of its own.
    pub fn new(n: u32, ip: Ipv4Addr, hub_net: &str) -> Cage {
        let holder = Command::new("unshare")
            .args(["-n", "sleep", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare");
        // From here on, a panic drops the cage and so ends the holder.
        let cage = Cage { holder, n, ip };
        let pid = cage.pid();
        // The holder must be in its namespace before the veth end moves there.
        wait_for(Duration::from_secs(5), "the cage's namespace", || {
            let ours = fs::read_link("/proc/self/ns/net").ok();
            let theirs = fs::read_link(format!("/proc/{pid}/ns/net")).ok();
            theirs.is_some() && theirs != ours
        });
        sh(&format!(
            "ip link add vy{n} type veth peer name vx{n} netns {pid}"
        ));
        sh(&format!(
            "ip link set vy{n} up && ip route replace {ip}/32 dev vy{n}"
        ));
        cage.sh(&format!(
            "ip link set lo up && ip link set vx{n} up && ip addr add {ip}/32 dev vx{n} && \
             ip route add {hub_net} dev vx{n}"
        ));
        cage
    }

    /// The holder's PID: [`NodeBuilder::netns`] takes it.
    pub fn pid(&self) -> u32 {
        self.holder.id()
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Runs `cmd` with `sh -c` inside the cage's namespace; panics when it fails.
    pub fn sh(&self, cmd: &str) {
        let quoted = cmd.replace('\'', r"'\''");
        sh(&format!("nsenter -t {} -n sh -c '{quoted}'", self.pid()));
    }

    /// Loads an nftables script (`nft -f` syntax) into the cage's own ruleset.
    pub fn nft(&self, script: &str) {
        let mut child = Command::new("nsenter")
            .args(["-t", &self.pid().to_string(), "-n", "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run nsenter nft (install nftables)");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write the nft script");
        let out = child.wait_with_output().expect("nft");
        assert!(
            out.status.success(),
            "nft -f failed in the cage of {} ({}): {}\nscript:\n{script}",
            self.ip,
            describe(&out.status),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }

    /// Makes the hub's unbound sockets (a test's status requests) reach the cage from `src`,
    /// an address of the hub, instead of whichever the kernel picks: a rule against one node
    /// of the hub must not catch the test's own requests.
    pub fn hub_source(&self, src: Ipv4Addr) {
        sh(&format!(
            "ip route replace {}/32 dev vy{} src {src}",
            self.ip, self.n
        ));
    }

    /// Pulls the cable: nothing leaves or enters the cage any more.
    pub fn cut(&self) {
        self.sh(&format!("ip link set vx{} down", self.n));
    }
}

impl Drop for Cage {
    fn drop(&mut self) {
        // The holder is our own child: its PID cannot have been reused before this wait.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Why nftables cannot be used in a network namespace here, if it cannot (run as root).
pub fn nft_unavailable() -> Option<String> {
    match Command::new("unshare")
        .args(["-n", "nft", "add table inet timed_probe"])
        .stdin(Stdio::null())
        .output()
    {
        Err(e) => Some(format!("cannot run `unshare -n nft` ({e})")),
        Ok(out) if !out.status.success() => Some(format!(
            "`nft add table` in a fresh namespace failed: {}; install nftables",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => None,
    }
}

impl Node {
    /// This node's `/peers` row for `peer`: `None` without a link, an error when the link is
    /// listed twice (a duplicate) or the node does not answer.
    pub fn try_link_with(&self, peer: SocketAddr) -> Result<Option<PeerRow>, String> {
        let rows: Vec<PeerRow> = self
            .try_peer_table()?
            .into_iter()
            .filter(|r| r.address == peer)
            .collect();
        match rows.as_slice() {
            [] => Ok(None),
            [row] => Ok(Some(row.clone())),
            _ => Err(format!("{}: {peer} appears twice in /peers", self.name)),
        }
    }

    /// The lines logged after `mark` (see [`Node::log_mark`]) that contain `needle`.
    pub fn log_lines_since(&self, mark: usize, needle: &str) -> Vec<String> {
        self.log_since(mark)
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_string)
            .collect()
    }
}
