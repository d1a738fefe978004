//! The bad-input catalog (issue 6, part 1): a real `timed` on loopback, attacked by raw TCP
//! clients that speak the protocol badly on purpose, one case after another.
//!
//! Node A is the target; it keeps a masternode link with node B throughout, at fast timings
//! (`--pinginterval=1s --pingtimeout=5s`, `--handshaketimeout=2s`). Every case connects from
//! its own loopback IP and asserts, where it applies:
//!
//! - exactly one `WARN` line in A's log, naming the client's address and the reason (and
//!   no other warn line while the case ran);
//! - the `Disconnect{reason}` frame the protocol prescribes, as the last frame received;
//! - the connection closed by A (the client reads EOF);
//! - the A–B link undisturbed: no `Disconnected from` line for it at either end, no new
//!   handshake, its `connected_secs` never going back and `last_recv_secs` small;
//! - A's memory bounded: its `VmRSS` stays within 16 MiB of the baseline, sampled after every
//!   case and during the long ones.
//!
//! The cases run in sequence against the same node, so the memory bound and the link hold
//! over the whole catalog. A failing case does not stop the others; all failures are listed
//! at the end. `HOSTILE_CASES=name,name` runs only those cases.
//!
//! The flood beyond `maxpeers` needs a node of its own (a small `maxpeers` and a third
//! masternode that joins during the flood) and runs as its own test beside the catalog.

mod common;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use common::*;
use timed::wire::{
    encode, FrameDecoder, Hello, Message, Network, Reason, MAX_FRAME, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
};

/// The target's handshake deadline: short, so the slowloris cases take seconds.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// The target's `pingtimeout` (from [`FAST`]): how long a peer that reads nothing is kept.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// How far A's resident memory may grow over its baseline during the whole catalog.
const RSS_HEADROOM_KIB: u64 = 16 * 1024;
/// Largest `last_recv_secs` for the A–B link that still counts as "pings answered" with a
/// 1 s ping interval, allowing for a loaded machine.
const LINK_QUIET_SECS: u64 = 3;
/// First host number of the clients' source IPs (each case gets its own).
const FIRST_CLIENT_HOST: u8 = 100;
/// The port clients claim as their P2P port (nobody listens there; they are not dialed).
const CLAIMED_PORT: u16 = 24100;

const NET: Network = Network::Testnet;

// ---------------------------------------------------------------------------------------------
// A raw client
// ---------------------------------------------------------------------------------------------

/// A TCP connection from a chosen loopback IP to the target, with a frame decoder for
/// what the target sends back.
struct Client {
    stream: TcpStream,
    /// Our address as the target sees it (and logs it).
    local: SocketAddr,
    decoder: FrameDecoder,
    inbox: VecDeque<Message>,
    eof: bool,
    /// The target reset the connection instead of closing it.
    reset: bool,
}

/// A `sockaddr_in` for `addr`.
fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// Connects to `to` from `from` (any port), optionally with a receive buffer of `rcvbuf`
/// bytes, set before the connect so the window the kernel offers is small from the start.
/// `std` cannot bind a client socket, hence the raw calls.
fn connect_from(from: Ipv4Addr, to: SocketAddr, rcvbuf: Option<libc::c_int>) -> TcpStream {
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 targets only: {to}")
    };
    // SAFETY: plain socket(2); the fd is owned by the TcpStream right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
    // SAFETY: fd is a fresh socket nobody else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    if let Some(size) = rcvbuf {
        // SAFETY: setsockopt with an int value on a valid socket.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &size as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVBUF: {}", io::Error::last_os_error());
    }
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let source = sockaddr_in(SocketAddrV4::new(from, 0));
    // SAFETY: a valid sockaddr_in of the given length.
    let rc = unsafe { libc::bind(fd, &source as *const _ as *const libc::sockaddr, len) };
    assert_eq!(rc, 0, "bind {from}: {}", io::Error::last_os_error());
    let target = sockaddr_in(to);
    // SAFETY: as above.
    let rc = unsafe { libc::connect(fd, &target as *const _ as *const libc::sockaddr, len) };
    assert_eq!(
        rc,
        0,
        "connect {from} -> {to}: {}",
        io::Error::last_os_error()
    );
    stream
}

/// A valid `Hello` of a non-masternode at `ip`.
fn hello_from(ip: IpAddr) -> Hello {
    Hello {
        network: NET,
        version: PROTOCOL_VERSION,
        min_version: MIN_PROTOCOL_VERSION,
        addr: SocketAddr::new(ip, CLAIMED_PORT),
        boot_id: 0x5eed_0000_0000,
        seq: 1,
        masternode: false,
        agent: "hostile/0.1".into(),
    }
}

impl Client {
    fn connect(from: Ipv4Addr, to: SocketAddr) -> Client {
        Client::with_stream(connect_from(from, to, None))
    }

    fn with_stream(stream: TcpStream) -> Client {
        stream.set_nodelay(true).unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let local = stream.local_addr().unwrap();
        Client {
            stream,
            local,
            decoder: FrameDecoder::new(NET),
            inbox: VecDeque::new(),
            eof: false,
            reset: false,
        }
    }

    /// How the target's log names this connection: `from ADDR: `.
    fn log_name(&self) -> String {
        format!("from {}: ", self.local)
    }

    /// A valid `Hello` of a non-masternode at our own IP.
    fn hello(&self) -> Hello {
        let mut h = hello_from(self.local.ip());
        h.boot_id ^= u64::from(self.local.port());
        h
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write {} bytes from {}: {e}", bytes.len(), self.local));
    }

    fn send_msg(&mut self, msg: &Message) {
        self.send(&encode(NET, msg));
    }

    /// The next message within `timeout`: `Ok(None)` at the target's EOF, `Err` when
    /// nothing came in time.
    fn recv(&mut self, timeout: Duration) -> Result<Option<Message>, String> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(m) = self.inbox.pop_front() {
                return Ok(Some(m));
            }
            if self.eof {
                return Ok(None);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("nothing within {timeout:?}"));
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    let mut input = &buf[..n];
                    while !input.is_empty() {
                        match self.decoder.decode(&mut input) {
                            Ok(Some(m)) => self.inbox.push_back(m),
                            Ok(None) => break,
                            Err(e) => panic!("the target sent bytes that are no frame: {e}"),
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    self.reset = true;
                    self.eof = true;
                }
                Err(e) => panic!("read at {}: {e}", self.local),
            }
        }
    }

    /// The next message, which must come within `timeout`.
    fn expect_msg(&mut self, timeout: Duration, what: &str) -> Message {
        match self.recv(timeout) {
            Ok(Some(m)) => m,
            Ok(None) => panic!("connection closed while waiting for {what}"),
            Err(e) => panic!("{e} while waiting for {what}"),
        }
    }

    /// Everything until the target's EOF, which must come within `timeout`.
    fn until_eof(&mut self, timeout: Duration) -> Vec<Message> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Ok(Some(m)) => got.push(m),
                Ok(None) => return got,
                Err(_) => panic!(
                    "the target did not close the connection within {timeout:?}; got {got:?}"
                ),
            }
        }
    }

    /// Reads to the target's EOF within `timeout` and asserts the last frame was
    /// `Disconnect{reason}`, the only `Disconnect`, and that the close was a FIN, not a reset.
    fn expect_disconnect(&mut self, reason: Reason, timeout: Duration) -> Vec<Message> {
        let got = self.until_eof(timeout);
        assert!(!self.reset, "the target reset the connection; got {got:?}");
        assert_eq!(
            got.last(),
            Some(&Message::Disconnect(reason)),
            "want Disconnect{{{reason}}} as the last frame; got {got:?}"
        );
        let disconnects = got
            .iter()
            .filter(|m| matches!(m, Message::Disconnect(_)))
            .count();
        assert_eq!(disconnects, 1, "{got:?}");
        // Our FIN lets the target's drain end at once.
        let _ = self.stream.shutdown(Shutdown::Write);
        got
    }

    /// The handshake of a well-behaved peer claiming `claimed`: our `Hello`, their `Hello`
    /// and `Ack`, our `Ack`, then their first `Ping` (sent once the registry accepted us),
    /// which we answer.
    fn handshake_as(&mut self, claimed: SocketAddr) {
        let mut hello = self.hello();
        hello.addr = claimed;
        self.send_msg(&Message::Hello(hello));
        self.expect_handshake_reply();
        self.send_msg(&Message::Ack);
        self.expect_accepted();
    }

    fn handshake(&mut self) {
        let claimed = self.hello().addr;
        self.handshake_as(claimed);
    }

    /// The target's `Hello` and `Ack`, answering ours.
    fn expect_handshake_reply(&mut self) -> Hello {
        let hello = match self.expect_msg(Duration::from_secs(5), "the target's Hello") {
            Message::Hello(h) => h,
            other => panic!("want the target's Hello, got {other:?}"),
        };
        let ack = self.expect_msg(Duration::from_secs(5), "the target's Ack");
        assert_eq!(ack, Message::Ack);
        hello
    }

    /// The target's first `Ping`, which shows the registry accepted us; answered.
    fn expect_accepted(&mut self) {
        match self.expect_msg(Duration::from_secs(5), "the target's first Ping") {
            Message::Ping(n) => self.send_msg(&Message::Pong(n)),
            other => panic!("want a Ping after the handshake, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Watching the target
// ---------------------------------------------------------------------------------------------

/// `VmRSS` of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Lines of `log` at warn level.
fn warn_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(" WARN "))
        .map(str::to_string)
        .collect()
}

/// The `/peers` row of `node` for `peer`: (`connected_secs`, `last_recv_secs`).
fn link_row(node: &Node, peer: SocketAddr) -> Result<(u64, u64), String> {
    let peers = node.try_get("/peers")?;
    let rows = peers.as_array().ok_or("/peers is not an array")?;
    let row = rows
        .iter()
        .find(|r| r["address"] == peer.to_string())
        .ok_or_else(|| format!("{}: no link with {peer} in {peers}", node.name))?;
    let connected = row["connected_secs"].as_u64().ok_or("no connected_secs")?;
    let last_recv = row["last_recv_secs"].as_u64().ok_or("no last_recv_secs")?;
    Ok((connected, last_recv))
}

/// How many handshakes `me` logged with `other`.
fn handshakes_with(me: &Node, other: &Node) -> usize {
    let with = other.addr.to_string();
    me.handshake_lines()
        .iter()
        .filter(|l| l.ends_with(&with) || l.contains(&format!("{with} ")))
        .count()
}

/// The A–B link as last seen, to prove that nothing a case did touched it.
struct LinkWatch {
    since: Instant,
    first: u64,
    last: [u64; 2],
    handshakes: [usize; 2],
}

impl LinkWatch {
    fn new(a: &Node, b: &Node) -> LinkWatch {
        let (ca, _) = link_row(a, b.addr).expect("A-B link");
        let (cb, _) = link_row(b, a.addr).expect("B-A link");
        LinkWatch {
            since: Instant::now(),
            first: ca,
            last: [ca, cb],
            handshakes: [handshakes_with(a, b), handshakes_with(b, a)],
        }
    }

    /// The link is still the same connection, alive and answering pings.
    fn check(&mut self, a: &Node, b: &Node) -> Result<(), String> {
        for (i, (me, other)) in [(a, b), (b, a)].into_iter().enumerate() {
            let gone = me.log_lines(&format!("Disconnected from {}", other.addr));
            if !gone.is_empty() {
                return Err(format!(
                    "{} lost its link with {}: {gone:?}",
                    me.name, other.name
                ));
            }
            let handshakes = handshakes_with(me, other);
            if handshakes != self.handshakes[i] {
                return Err(format!(
                    "{} logged {} new handshakes: the link was re-made",
                    me.name,
                    handshakes - self.handshakes[i]
                ));
            }
            let (connected, last_recv) = link_row(me, other.addr)?;
            if connected < self.last[i] {
                return Err(format!(
                    "{}: connected_secs of the link went back from {} to {connected}",
                    me.name, self.last[i]
                ));
            }
            if last_recv > LINK_QUIET_SECS {
                return Err(format!(
                    "{}: nothing heard from {} for {last_recv} s (pings every 1 s)",
                    me.name, other.name
                ));
            }
            self.last[i] = connected;
        }
        Ok(())
    }
}

/// A's resident memory over the catalog.
struct RssWatch {
    pid: u32,
    baseline: u64,
    peak: u64,
}

impl RssWatch {
    fn sample(&mut self) -> Result<u64, String> {
        let now = rss_kib(self.pid);
        self.peak = self.peak.max(now);
        if now > self.baseline + RSS_HEADROOM_KIB {
            return Err(format!(
                "VmRSS {now} KiB, more than {RSS_HEADROOM_KIB} KiB over the baseline of {} KiB",
                self.baseline
            ));
        }
        Ok(now)
    }
}

// ---------------------------------------------------------------------------------------------
// The target
// ---------------------------------------------------------------------------------------------

/// Node A under attack, its partner B, and what the cases need to know.
struct Target {
    h: Harness,
    a: Node,
    b: Node,
    /// A's boot id, learned from the `Hello` A sent to a listener posing as a masternode.
    a_boot_id: u64,
    rss: RssWatch,
}

impl Target {
    /// A client from `ip` to A.
    fn client(&self, ip: Ipv4Addr) -> Client {
        Client::connect(ip, self.a.addr)
    }

    /// Waits for the case's one warn line (naming `who` and `(reason)`, and containing
    /// `detail`) in A's log since `mark`, then asserts it is the only warn line since.
    fn expect_one_warn(&self, mark: usize, who: &str, reason: Reason, detail: &str) {
        let tag = format!("({})", reason.name());
        let line = wait_until(Duration::from_secs(5), "the warn line", || {
            let warns = warn_lines(&self.a.log_since(mark));
            warns
                .iter()
                .find(|l| l.contains(who))
                .cloned()
                .ok_or_else(|| format!("warn lines so far: {warns:#?}"))
        });
        assert!(line.contains(&tag), "no {tag} in {line:?}");
        assert!(line.contains(detail), "no {detail:?} in {line:?}");
        // A late second line would show up here or in the final recount.
        std::thread::sleep(Duration::from_millis(50));
        let warns = warn_lines(&self.a.log_since(mark));
        assert_eq!(warns.len(), 1, "want exactly one warn line: {warns:#?}");
    }

    /// No warn line since `mark`.
    fn expect_no_warn(&self, mark: usize) {
        let warns = warn_lines(&self.a.log_since(mark));
        assert!(warns.is_empty(), "unexpected warn lines: {warns:#?}");
    }
}

/// Starts A (host 2) and B (host 3) as masternodes, with A also listing a fake masternode
/// on host 4 that the test itself listens as: A dials it (the lower address dials) and
/// sends its `Hello`, which tells the test A's boot id. The fake then stops listening; A's
/// redials to it fail quietly (at debug) through the catalog.
fn start_target(name: &str) -> Target {
    let h = Harness::new(name);
    let fake = TcpListener::bind(h.addr(4)).expect("bind the fake masternode");
    fake.set_nonblocking(true).unwrap();
    let a_list = h.addrs(&[2, 3, 4]);
    let b_list = h.addrs(&[2, 3]);
    let mut a = h
        .node(2)
        .masternodes(&a_list)
        .fast()
        .arg(format!(
            "--handshaketimeout={}s",
            HANDSHAKE_TIMEOUT.as_secs()
        ))
        .spawn();
    let mut b = h.node(3).masternodes(&b_list).fast().spawn();
    a.wait_healthy(Duration::from_secs(10));
    b.wait_healthy(Duration::from_secs(10));

    let (stream, from) = wait_until(Duration::from_secs(10), "A to dial the fake", || {
        fake.accept().map_err(|e| e.to_string())
    });
    assert_eq!(from.ip(), a.addr.ip(), "dialed from A's address");
    stream.set_nonblocking(false).unwrap();
    let mut dialer = Client::with_stream(stream);
    let a_boot_id = match dialer.expect_msg(Duration::from_secs(5), "A's Hello") {
        Message::Hello(h) => {
            assert_eq!(h.addr, a.addr, "A claims its address");
            h.boot_id
        }
        other => panic!("A opened with {other:?}"),
    };
    drop(dialer);
    drop(fake);

    wait_mesh(&[&a, &b], Duration::from_secs(15));
    let pid = a.pid().expect("A runs");
    // Let A settle (threads started, first pings exchanged) before taking the baseline.
    std::thread::sleep(Duration::from_millis(500));
    let baseline = rss_kib(pid);
    Target {
        h,
        a,
        b,
        a_boot_id,
        rss: RssWatch {
            pid,
            baseline,
            peak: baseline,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// The cases
// ---------------------------------------------------------------------------------------------

/// One entry of the catalog.
struct Case {
    name: &'static str,
    /// What the case sends and what it proves.
    what: &'static str,
    run: fn(&mut Target, Ipv4Addr, usize),
}

/// A frame of our network carrying `payload` as it is.
fn raw_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = NET.magic().to_vec();
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

/// Sends `bytes` as the first thing on a fresh connection and expects the rejection:
/// `Disconnect{reason}` at once (well before the handshake deadline), EOF, one warn line.
fn first_bytes_rejected(
    t: &mut Target,
    ip: Ipv4Addr,
    mark: usize,
    bytes: &[u8],
    reason: Reason,
    detail: &str,
) {
    let mut c = t.client(ip);
    let started = Instant::now();
    c.send(bytes);
    let got = c.expect_disconnect(reason, Duration::from_secs(5));
    assert_eq!(got.len(), 1, "nothing but the Disconnect: {got:?}");
    assert!(
        started.elapsed() < HANDSHAKE_TIMEOUT,
        "rejected only after {:?}: the handshake deadline, not the check, acted",
        started.elapsed()
    );
    t.expect_one_warn(mark, &c.log_name(), reason, detail);
}

/// A valid `Hello` from `ip`, as a frame, after `edit`.
fn hello_frame(ip: Ipv4Addr, edit: impl FnOnce(&mut Hello)) -> Vec<u8> {
    let mut h = hello_from(IpAddr::V4(ip));
    edit(&mut h);
    encode(NET, &Message::Hello(h))
}

fn random_bytes(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    // A fixed xorshift stream, so a failure replays; the first byte is no magic's.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut bytes: Vec<u8> = (0..16 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    bytes[0] = 0x00;
    first_bytes_rejected(
        t,
        ip,
        mark,
        &bytes,
        Reason::ProtocolViolation,
        "bad magic bytes",
    );
}

fn wrong_magic(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    let request = b"GET /consensus_info HTTP/1.1\r\nHost: timed\r\n\r\n";
    first_bytes_rejected(
        t,
        ip,
        mark,
        request,
        Reason::ProtocolViolation,
        "bad magic bytes 47455420",
    );
}

fn length_prefix_4gib(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    let mut header = NET.magic().to_vec();
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    // The header alone, and nothing after it: the length is judged before any payload.
    first_bytes_rejected(
        t,
        ip,
        mark,
        &header,
        Reason::ProtocolViolation,
        "frame length 4294967295 exceeds the maximum of 1048576",
    );
}

fn frame_of_exactly_max(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    // On an established link: before the handshake no frame may pass 4 KiB (the next case).
    let mut c = t.client(ip);
    c.handshake();
    let mut header = NET.magic().to_vec();
    header.extend_from_slice(&(MAX_FRAME as u32).to_le_bytes());
    c.send(&header);
    // The length is allowed: A waits for the payload instead of rejecting the header (its
    // pings may arrive meanwhile; a Disconnect would not).
    let waiting = Instant::now() + Duration::from_millis(300);
    while let Ok(Some(m)) = c.recv(waiting.saturating_duration_since(Instant::now())) {
        assert!(
            matches!(m, Message::Ping(_)),
            "A answered the header with {m:?}"
        );
    }
    assert!(
        !c.eof,
        "a frame of exactly MAX_FRAME was refused by its header"
    );
    t.expect_no_warn(mark);
    // A payload of that size is read whole and then judged by its content: no message is
    // that long, so it is undecodable.
    c.send(&vec![0xff; MAX_FRAME]);
    t.rss.sample().unwrap();
    c.expect_disconnect(Reason::ProtocolViolation, Duration::from_secs(5));
    t.expect_one_warn(
        mark,
        &c.log_name(),
        Reason::ProtocolViolation,
        "undecodable frame",
    );
}

fn big_frame_before_the_handshake(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    // A stranger announcing a megabyte: cut off once 4 KiB of it are in, well before the
    // megabyte (and before the handshake deadline).
    let mut c = t.client(ip);
    let mut header = NET.magic().to_vec();
    header.extend_from_slice(&(MAX_FRAME as u32).to_le_bytes());
    c.send(&header);
    let started = Instant::now();
    c.send(&vec![0u8; 64 * 1024]);
    c.expect_disconnect(Reason::ProtocolViolation, Duration::from_secs(5));
    assert!(
        started.elapsed() < HANDSHAKE_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
    t.expect_one_warn(
        mark,
        &c.log_name(),
        Reason::ProtocolViolation,
        "of one frame before the handshake (at most 4096",
    );
}

fn frame_one_byte_over_max(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    let mut header = NET.magic().to_vec();
    header.extend_from_slice(&(MAX_FRAME as u32 + 1).to_le_bytes());
    first_bytes_rejected(
        t,
        ip,
        mark,
        &header,
        Reason::ProtocolViolation,
        "frame length 1048577 exceeds the maximum of 1048576",
    );
}

fn truncated_frame_then_silence(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    let mut c = t.client(ip);
    let hello = hello_frame(ip, |_| {});
    let half = hello.len() / 2;
    let started = Instant::now();
    c.send(&hello[..half]);
    // Silence: the handshake deadline ends it, and the warn line says what was left hanging.
    c.expect_disconnect(Reason::Timeout, HANDSHAKE_TIMEOUT + Duration::from_secs(3));
    let took = started.elapsed();
    assert!(
        took >= HANDSHAKE_TIMEOUT - Duration::from_millis(100),
        "closed after {took:?}, before the handshake deadline"
    );
    t.expect_one_warn(
        mark,
        &c.log_name(),
        Reason::Timeout,
        &format!("{half} bytes of an incomplete frame held"),
    );
}

fn frame_split_into_single_bytes(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    let mut c = t.client(ip);
    let hello = hello_frame(ip, |_| {});
    for byte in &hello {
        c.send(std::slice::from_ref(byte));
        std::thread::sleep(Duration::from_millis(1));
    }
    c.expect_handshake_reply();
    for byte in encode(NET, &Message::Ack) {
        c.send(&[byte]);
        std::thread::sleep(Duration::from_millis(1));
    }
    c.expect_accepted();
    // A valid peer, however it trickles in: accepted and listed, no warn line.
    let claimed = c.hello().addr;
    wait_for(
        Duration::from_secs(5),
        "the trickling peer in /peers",
        || link_row(&t.a, claimed).is_ok(),
    );
    assert!(
        t.a.log_since(mark)
            .contains(&format!("Handshake accepted from {claimed}")),
        "no handshake line"
    );
    t.expect_no_warn(mark);
    // And a clean goodbye.
    c.send_msg(&Message::Disconnect(Reason::Shutdown));
    let _ = c.stream.shutdown(Shutdown::Write);
    let rest = c.until_eof(Duration::from_secs(5));
    assert!(
        rest.iter()
            .all(|m| matches!(m, Message::Ping(_) | Message::Pong(_))),
        "{rest:?}"
    );
    wait_for(Duration::from_secs(5), "the peer to leave /peers", || {
        link_row(&t.a, claimed).is_err()
    });
    t.expect_no_warn(mark);
}

fn undecodable_body(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    // A Hello whose agent string is not UTF-8: a valid frame around a body that does not
    // decode.
    let mut frame = hello_frame(ip, |h| h.agent = "zzzz".into());
    let n = frame.len();
    frame[n - 4..].copy_from_slice(&[0xff, 0xfe, 0xfd, 0xfc]);
    first_bytes_rejected(
        t,
        ip,
        mark,
        &frame,
        Reason::ProtocolViolation,
        "undecodable frame",
    );
}

fn unknown_message_type(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    first_bytes_rejected(
        t,
        ip,
        mark,
        &raw_frame(&[42]),
        Reason::ProtocolViolation,
        "undecodable frame",
    );
}

fn empty_payload(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    first_bytes_rejected(
        t,
        ip,
        mark,
        &raw_frame(&[]),
        Reason::ProtocolViolation,
        "undecodable frame",
    );
}

fn trailing_bytes(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    // Ping(1) and one byte more, in one frame.
    first_bytes_rejected(
        t,
        ip,
        mark,
        &raw_frame(&[2, 1, 0]),
        Reason::ProtocolViolation,
        "1 trailing bytes after Ping",
    );
}

fn agent_too_long(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    let frame = hello_frame(ip, |h| h.agent = "x".repeat(65));
    first_bytes_rejected(
        t,
        ip,
        mark,
        &frame,
        Reason::ProtocolViolation,
        "agent string of 65 bytes",
    );
}

fn ping_before_hello(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    let ping = encode(NET, &Message::Ping(7));
    first_bytes_rejected(
        t,
        ip,
        mark,
        &ping,
        Reason::ProtocolViolation,
        "unexpected Ping in state awaiting Hello",
    );
}

fn pong_before_hello(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    let pong = encode(NET, &Message::Pong(7));
    first_bytes_rejected(
        t,
        ip,
        mark,
        &pong,
        Reason::ProtocolViolation,
        "unexpected Pong in state awaiting Hello",
    );
}

fn ack_without_handshake(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    let ack = encode(NET, &Message::Ack);
    first_bytes_rejected(
        t,
        ip,
        mark,
        &ack,
        Reason::ProtocolViolation,
        "unexpected Ack in state awaiting Hello",
    );
}

fn ping_before_ack(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    let mut c = t.client(ip);
    let hello = c.hello();
    c.send_msg(&Message::Hello(hello));
    c.expect_handshake_reply();
    c.send_msg(&Message::Ping(9));
    c.expect_disconnect(Reason::ProtocolViolation, Duration::from_secs(5));
    t.expect_one_warn(
        mark,
        &c.log_name(),
        Reason::ProtocolViolation,
        "unexpected Ping in state awaiting Ack",
    );
}

fn second_hello(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    let mut c = t.client(ip);
    c.handshake();
    let hello = c.hello();
    c.send_msg(&Message::Hello(hello));
    c.expect_disconnect(Reason::ProtocolViolation, Duration::from_secs(5));
    t.expect_one_warn(
        mark,
        &c.log_name(),
        Reason::ProtocolViolation,
        "unexpected Hello in state established",
    );
}

fn second_ack(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    let mut c = t.client(ip);
    c.handshake();
    c.send_msg(&Message::Ack);
    c.expect_disconnect(Reason::ProtocolViolation, Duration::from_secs(5));
    t.expect_one_warn(
        mark,
        &c.log_name(),
        Reason::ProtocolViolation,
        "unexpected Ack in state established",
    );
}

fn other_networks_magic(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    let mut hello = hello_from(IpAddr::V4(ip));
    hello.network = Network::Mainnet;
    let frame = encode(Network::Mainnet, &Message::Hello(hello));
    first_bytes_rejected(
        t,
        ip,
        mark,
        &frame,
        Reason::WrongNetwork,
        "magic bytes of another network",
    );
}

fn hello_of_another_network(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    // Our magic, but the Hello says mainnet.
    let frame = hello_frame(ip, |h| h.network = Network::Mainnet);
    first_bytes_rejected(
        t,
        ip,
        mark,
        &frame,
        Reason::WrongNetwork,
        "peer is on mainnet",
    );
}

fn version_too_old(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    let frame = hello_frame(ip, |h| {
        h.version = MIN_PROTOCOL_VERSION - 1;
        h.min_version = MIN_PROTOCOL_VERSION - 1;
    });
    first_bytes_rejected(
        t,
        ip,
        mark,
        &frame,
        Reason::IncompatibleVersion,
        "peer speaks version 0",
    );
}

fn version_too_new(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    // A future peer that no longer accepts our version.
    let frame = hello_frame(ip, |h| {
        h.version = PROTOCOL_VERSION + 3;
        h.min_version = PROTOCOL_VERSION + 1;
    });
    first_bytes_rejected(
        t,
        ip,
        mark,
        &frame,
        Reason::IncompatibleVersion,
        "accepts 2+",
    );
}

fn claimed_address_differs_from_source(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    let elsewhere = t.h.ip(250);
    let frame = hello_frame(ip, |h| {
        h.addr = SocketAddr::new(IpAddr::V4(elsewhere), CLAIMED_PORT)
    });
    first_bytes_rejected(
        t,
        ip,
        mark,
        &frame,
        Reason::AddressMismatch,
        &format!("claims {elsewhere}:{CLAIMED_PORT} but connects from {ip}"),
    );
}

fn claimed_port_zero(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    let frame = hello_frame(ip, |h| h.addr.set_port(0));
    first_bytes_rejected(
        t,
        ip,
        mark,
        &frame,
        Reason::AddressMismatch,
        &format!("claims {ip}:0"),
    );
}

fn our_own_boot_id(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    let boot = t.a_boot_id;
    let frame = hello_frame(ip, |h| h.boot_id = boot);
    first_bytes_rejected(
        t,
        ip,
        mark,
        &frame,
        Reason::SelfConnection,
        "connected to ourselves",
    );
}

fn slowloris_no_hello(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    let mut c = t.client(ip);
    let started = Instant::now();
    c.expect_disconnect(Reason::Timeout, HANDSHAKE_TIMEOUT + Duration::from_secs(3));
    let took = started.elapsed();
    assert!(
        took >= HANDSHAKE_TIMEOUT - Duration::from_millis(100),
        "closed after {took:?}, before the handshake deadline"
    );
    t.expect_one_warn(
        mark,
        &c.log_name(),
        Reason::Timeout,
        "handshake not complete within 2s (awaiting Hello)",
    );
}

fn slowloris_no_ack(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    let mut c = t.client(ip);
    let started = Instant::now();
    let hello = c.hello();
    c.send_msg(&Message::Hello(hello));
    c.expect_handshake_reply();
    c.expect_disconnect(Reason::Timeout, HANDSHAKE_TIMEOUT + Duration::from_secs(3));
    assert!(started.elapsed() >= HANDSHAKE_TIMEOUT - Duration::from_millis(100));
    t.expect_one_warn(mark, &c.log_name(), Reason::Timeout, "(awaiting Ack)");
}

fn ping_flood(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    let mut c = t.client(ip);
    c.handshake();
    let flood: Vec<u8> = (0..200u64)
        .flat_map(|n| encode(NET, &Message::Ping(n)))
        .collect();
    c.send(&flood);
    let got = c.expect_disconnect(Reason::ProtocolViolation, Duration::from_secs(5));
    let pongs = got.iter().filter(|m| matches!(m, Message::Pong(_))).count();
    assert!(
        pongs <= 64,
        "{pongs} pongs answered before the flood was cut off"
    );
    t.expect_one_warn(mark, &c.log_name(), Reason::ProtocolViolation, "ping flood");
}

fn peer_that_never_reads(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    // The smallest receive buffer the kernel allows: the window shuts after a few KiB.
    let mut c = Client::with_stream(connect_from(ip, t.a.addr, Some(1)));
    c.handshake();
    let who = c.log_name();
    let started = Instant::now();
    let mut nonce = u64::MAX;
    // Pings at half the allowed rate (30 a second, the limit is 64 per 1 s interval), each
    // earning an 18-byte Pong, none of which we read. The pings keep A's liveness check
    // happy, so only the write stall rule can end this.
    let warned = loop {
        let log = t.a.log_since(mark);
        if let Some(line) = warn_lines(&log).into_iter().find(|l| l.contains(&who)) {
            break line;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "a peer that reads nothing was kept for {:?}",
            started.elapsed()
        );
        let burst: Vec<u8> = (0..30)
            .flat_map(|_| {
                nonce -= 1;
                encode(NET, &Message::Ping(nonce))
            })
            .collect();
        if c.stream.write_all(&burst).is_err() {
            // A closed the socket between our look at its log and this write.
            continue;
        }
        t.rss.sample().unwrap();
        std::thread::sleep(Duration::from_secs(1));
    };
    let took = started.elapsed();
    assert!(warned.contains("(timeout)"), "{warned}");
    assert!(warned.contains("read none of our bytes"), "{warned}");
    // Kept at least a ping timeout (the window took a while to shut before that).
    assert!(took >= PING_TIMEOUT, "dropped after {took:?}");
    // Now read: the pongs that fitted, then the end (A's FIN after what the kernel held; a
    // reset when one of our last pings arrived after A had let go of the socket).
    let mut got = Vec::new();
    loop {
        match c.recv(Duration::from_secs(5)) {
            Ok(Some(m)) => got.push(m),
            Ok(None) => break,
            Err(e) => panic!("{e}: the connection of a peer that never read stayed open"),
        }
    }
    assert!(
        got.iter()
            .all(|m| matches!(m, Message::Ping(_) | Message::Pong(_))),
        "{:?}",
        &got[got.len().saturating_sub(3)..]
    );
    std::thread::sleep(Duration::from_millis(50));
    let warns = warn_lines(&t.a.log_since(mark));
    assert_eq!(warns.len(), 1, "{warns:#?}");
}

fn connection_flood_from_one_ip(t: &mut Target, ip: Ipv4Addr, mark: usize) {
    const MAX_PER_IP: usize = 4; // the default maxinboundperip
                                 // Each connection sends its Hello at once; A answers the first four with the
                                 // handshake and refuses the rest before theirs. Distinct claimed ports keep the four
                                 // from being duplicates of each other.
    let open = |n: usize, first_port: u16| -> Vec<Client> {
        (0..n)
            .map(|i| {
                let mut c = t.client(ip);
                let claimed = SocketAddr::new(IpAddr::V4(ip), first_port + i as u16);
                let mut hello = c.hello();
                hello.addr = claimed;
                c.send_msg(&Message::Hello(hello));
                c
            })
            .collect()
    };
    let mut wave = open(12, 30_000);
    let mut admitted = Vec::new();
    let mut refused = 0;
    for mut c in wave.drain(..) {
        match c.expect_msg(Duration::from_secs(5), "A's answer") {
            Message::Hello(_) => {
                assert_eq!(c.expect_msg(Duration::from_secs(5), "Ack"), Message::Ack);
                c.send_msg(&Message::Ack);
                c.expect_accepted();
                admitted.push(c);
            }
            Message::Disconnect(Reason::TooManyPeers) => {
                let rest = c.until_eof(Duration::from_secs(5));
                assert!(rest.is_empty(), "{rest:?}");
                assert!(!c.reset);
                refused += 1;
            }
            other => panic!("want a Hello or Disconnect{{too_many_peers}}, got {other:?}"),
        }
    }
    assert_eq!(admitted.len(), MAX_PER_IP, "admitted from one IP");
    assert_eq!(refused, 12 - MAX_PER_IP);
    // A second wave within the minute: refused as well, and not one more warn line.
    for mut c in open(6, 31_000) {
        c.expect_disconnect(Reason::TooManyPeers, Duration::from_secs(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    let warns: Vec<String> = warn_lines(&t.a.log_since(mark));
    assert_eq!(
        warns.len(),
        1,
        "one warn line for the flood from {ip}: {warns:#?}"
    );
    assert!(warns[0].contains(&format!("from {ip}:")), "{}", warns[0]);
    assert!(warns[0].contains("(too_many_peers)"), "{}", warns[0]);
    // The four admitted leave; their slots free up for the next connection from that IP.
    for mut c in admitted {
        c.send_msg(&Message::Disconnect(Reason::Shutdown));
        let _ = c.stream.shutdown(Shutdown::Write);
        c.until_eof(Duration::from_secs(5));
    }
    wait_for(Duration::from_secs(5), "the flood's peers to leave", || {
        t.a.try_get("/peers")
            .map(|p| p.as_array().map_or(0, |a| a.len()) == 1)
            .unwrap_or(false)
    });
    let mut again = t.client(ip);
    again.handshake_as(SocketAddr::new(IpAddr::V4(ip), 32_000));
    drop(again);
}

const CATALOG: &[Case] = &[
    Case {
        name: "random_bytes",
        what: "16 KiB of random bytes",
        run: random_bytes,
    },
    Case {
        name: "wrong_magic",
        what: "an HTTP request",
        run: wrong_magic,
    },
    Case {
        name: "length_prefix_4gib",
        what: "a header claiming 4 GiB, nothing after",
        run: length_prefix_4gib,
    },
    Case {
        name: "frame_of_exactly_max",
        what: "established: header of a 1 MiB frame (accepted), then 1 MiB of junk",
        run: frame_of_exactly_max,
    },
    Case {
        name: "big_frame_before_the_handshake",
        what: "a 1 MiB frame as the first thing (cut off after 4 KiB)",
        run: big_frame_before_the_handshake,
    },
    Case {
        name: "frame_one_byte_over_max",
        what: "header of a 1 MiB + 1 frame",
        run: frame_one_byte_over_max,
    },
    Case {
        name: "truncated_frame_then_silence",
        what: "half a Hello, then nothing",
        run: truncated_frame_then_silence,
    },
    Case {
        name: "frame_split_into_single_bytes",
        what: "a valid handshake in 1-byte writes (accepted)",
        run: frame_split_into_single_bytes,
    },
    Case {
        name: "undecodable_body",
        what: "a Hello frame whose agent is not UTF-8",
        run: undecodable_body,
    },
    Case {
        name: "unknown_message_type",
        what: "a frame of message type 42",
        run: unknown_message_type,
    },
    Case {
        name: "empty_payload",
        what: "a frame of length 0",
        run: empty_payload,
    },
    Case {
        name: "trailing_bytes",
        what: "a Ping with a byte too many",
        run: trailing_bytes,
    },
    Case {
        name: "agent_too_long",
        what: "a Hello with a 65-byte agent",
        run: agent_too_long,
    },
    Case {
        name: "ping_before_hello",
        what: "Ping as the first message",
        run: ping_before_hello,
    },
    Case {
        name: "pong_before_hello",
        what: "Pong as the first message",
        run: pong_before_hello,
    },
    Case {
        name: "ack_without_handshake",
        what: "Ack as the first message",
        run: ack_without_handshake,
    },
    Case {
        name: "ping_before_ack",
        what: "Hello, then Ping instead of Ack",
        run: ping_before_ack,
    },
    Case {
        name: "second_hello",
        what: "a Hello on an established link",
        run: second_hello,
    },
    Case {
        name: "second_ack",
        what: "an Ack on an established link",
        run: second_ack,
    },
    Case {
        name: "other_networks_magic",
        what: "a mainnet frame",
        run: other_networks_magic,
    },
    Case {
        name: "hello_of_another_network",
        what: "a testnet frame whose Hello says mainnet",
        run: hello_of_another_network,
    },
    Case {
        name: "version_too_old",
        what: "a Hello of version 0",
        run: version_too_old,
    },
    Case {
        name: "version_too_new",
        what: "a Hello accepting only versions 2+",
        run: version_too_new,
    },
    Case {
        name: "claimed_address_differs_from_source",
        what: "a Hello claiming another IP",
        run: claimed_address_differs_from_source,
    },
    Case {
        name: "claimed_port_zero",
        what: "a Hello claiming port 0",
        run: claimed_port_zero,
    },
    Case {
        name: "our_own_boot_id",
        what: "a Hello carrying A's own boot id",
        run: our_own_boot_id,
    },
    Case {
        name: "slowloris_no_hello",
        what: "connect and say nothing",
        run: slowloris_no_hello,
    },
    Case {
        name: "slowloris_no_ack",
        what: "Hello, then never the Ack",
        run: slowloris_no_ack,
    },
    Case {
        name: "ping_flood",
        what: "200 pings at once on an established link",
        run: ping_flood,
    },
    Case {
        name: "peer_that_never_reads",
        what: "tiny receive buffer, pings at the allowed rate, reads nothing",
        run: peer_that_never_reads,
    },
    Case {
        name: "connection_flood_from_one_ip",
        what: "18 connections from one IP (maxinboundperip 4)",
        run: connection_flood_from_one_ip,
    },
];

#[test]
fn bad_input_catalog() {
    let only: Option<Vec<String>> = std::env::var("HOSTILE_CASES")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect());
    let started = Instant::now();
    let mut t = start_target("hostile");
    let mut link = LinkWatch::new(&t.a, &t.b);
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for (i, case) in CATALOG.iter().enumerate() {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|n| n == case.name))
        {
            continue;
        }
        let ip = t.h.ip(FIRST_CLIENT_HOST + i as u8);
        let mark = t.a.log_mark();
        let case_start = Instant::now();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            (case.run)(&mut t, ip, mark);
        }));
        let mut problems = Vec::new();
        if let Err(panic) = outcome {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            problems.push(msg);
        }
        if let Err(e) = link.check(&t.a, &t.b) {
            problems.push(format!("the A-B link was disturbed: {e}"));
        }
        match t.rss.sample() {
            Ok(_) => {}
            Err(e) => problems.push(e),
        }
        if !t.a.is_running() {
            problems.push(format!("A died:\n{}", t.a.log_tail(20)));
        }
        report.push(format!(
            "{:>6.2}s  {:<38} {} ({})",
            case_start.elapsed().as_secs_f64(),
            case.name,
            if problems.is_empty() { "ok" } else { "FAILED" },
            case.what
        ));
        if !problems.is_empty() {
            failures.push(format!("{} ({ip}): {}", case.name, problems.join("\n  ")));
            if !t.a.is_running() {
                break;
            }
        }
    }
    // Once per connection, over the whole catalog: no connection has a second line.
    let mut seen = std::collections::BTreeSet::new();
    for line in warn_lines(&t.a.log()) {
        if let Some(rest) = line.split("Rejected bad input from ").nth(1) {
            let who = rest.split(": ").next().unwrap_or(rest).to_string();
            if !seen.insert(who.clone()) {
                failures.push(format!("a second warn line for {who}: {line}"));
            }
        }
    }
    // The A-B link lived through it all: its age grew with the catalog's.
    let (connected, _) = link_row(&t.a, t.b.addr).expect("A-B link at the end");
    let ran = link.since.elapsed().as_secs();
    if connected + 2 < link.first + ran {
        failures.push(format!(
            "the A-B link is {connected} s old after a {ran} s catalog that began at {} s",
            link.first
        ));
    }
    eprintln!(
        "bad-input catalog: {} cases in {:.1}s; A's VmRSS baseline {} KiB, peak {} KiB",
        report.len(),
        started.elapsed().as_secs_f64(),
        t.rss.baseline,
        t.rss.peak
    );
    for line in &report {
        eprintln!("  {line}");
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A flood of non-masternode peers beyond `maxpeers`, from many IPs, each completing its
/// handshake: A keeps one slot per listed masternode, so the flood gets only what is left
/// (refused with `Disconnect{too_many_peers}`, before or after the handshake), a masternode
/// that comes later still gets its link, the existing masternode link is untouched, and the
/// refusals make a bounded number of warn lines (at most one per IP, at most
/// `REFUSAL_LOG_BURST` in all), not one per connection.
#[test]
fn a_flood_beyond_maxpeers_leaves_every_listed_masternode_its_slot() {
    const MAXPEERS: usize = 4;
    const REFUSAL_LOG_BURST: usize = 10; // timed::reactor::REFUSAL_LOG_BURST
    let h = Harness::new("hostile-maxpeers");
    // C < A < B: A dials B, and C dials A, so C's link is an inbound one that must get past
    // A's admission while the flood is on.
    let list = h.addrs(&[2, 3, 4]);
    let mut a = h
        .node(3)
        .masternodes(&list)
        .fast()
        .arg(format!("--maxpeers={MAXPEERS}"))
        .spawn();
    let mut b = h.node(4).masternodes(&list).fast().spawn();
    a.wait_healthy(Duration::from_secs(10));
    b.wait_healthy(Duration::from_secs(10));
    wait_for(Duration::from_secs(15), "the A-B link", || {
        link_row(&a, b.addr).is_ok() && link_row(&b, a.addr).is_ok()
    });
    let mut link = LinkWatch::new(&a, &b);
    let pid = a.pid().unwrap();
    let mut rss = RssWatch {
        pid,
        baseline: rss_kib(pid),
        peak: 0,
    };

    // The flood: two connections from each of 12 IPs, all at once, each sending its Hello.
    let flood_ips: Vec<Ipv4Addr> = (0..12).map(|i| h.ip(FIRST_CLIENT_HOST + i)).collect();
    let wave = |ips: &[Ipv4Addr], per_ip: u16, first_port: u16| -> Vec<Client> {
        let mut clients = Vec::new();
        for (i, ip) in ips.iter().enumerate() {
            for k in 0..per_ip {
                let mut c = Client::connect(*ip, a.addr);
                let mut hello = c.hello();
                hello.addr = SocketAddr::new(IpAddr::V4(*ip), first_port + i as u16 * 10 + k);
                c.send_msg(&Message::Hello(hello));
                clients.push(c);
            }
        }
        clients
    };
    // Plays each client's handshake to its end: Some(client) if A accepted it.
    let outcome = |mut c: Client| -> Option<Client> {
        match c.expect_msg(Duration::from_secs(5), "A's answer to the Hello") {
            Message::Hello(_) => {
                assert_eq!(c.expect_msg(Duration::from_secs(5), "Ack"), Message::Ack);
                c.send_msg(&Message::Ack);
                match c.expect_msg(Duration::from_secs(5), "the verdict") {
                    Message::Ping(n) => {
                        c.send_msg(&Message::Pong(n));
                        Some(c)
                    }
                    Message::Disconnect(Reason::TooManyPeers) => {
                        assert!(c.until_eof(Duration::from_secs(5)).is_empty());
                        None
                    }
                    other => panic!("want a Ping or Disconnect{{too_many_peers}}, got {other:?}"),
                }
            }
            Message::Disconnect(Reason::TooManyPeers) => {
                assert!(c.until_eof(Duration::from_secs(5)).is_empty());
                None
            }
            other => panic!("want a Hello or Disconnect{{too_many_peers}}, got {other:?}"),
        }
    };
    let accepted: Vec<Client> = wave(&flood_ips, 2, 30_000)
        .into_iter()
        .filter_map(outcome)
        .collect();
    // maxpeers 4 minus the 2 other listed masternodes: two slots for everyone else.
    assert_eq!(accepted.len(), MAXPEERS - 2, "flood peers accepted");
    link.check(&a, &b).expect("A-B link through the flood");

    // Now the third masternode starts and dials A: its slot was kept.
    let c = h.node(2).masternodes(&list).fast().spawn();
    wait_for(Duration::from_secs(15), "C's links with A and B", || {
        link_row(&a, c.addr).is_ok() && link_row(&c, a.addr).is_ok() && link_row(&b, c.addr).is_ok()
    });
    let peers = a.peers();
    assert_eq!(peers.as_array().unwrap().len(), MAXPEERS, "{peers}");

    // Full now: a second wave from other IPs is turned away entirely.
    let more_ips: Vec<Ipv4Addr> = (12..18).map(|i| h.ip(FIRST_CLIENT_HOST + i)).collect();
    let late: Vec<Client> = wave(&more_ips, 1, 40_000)
        .into_iter()
        .filter_map(outcome)
        .collect();
    assert!(
        late.is_empty(),
        "{} peers accepted beyond maxpeers",
        late.len()
    );
    link.check(&a, &b).expect("A-B link after the flood");
    assert!(link_row(&a, c.addr).is_ok(), "A lost C");
    rss.sample().expect("A's memory");

    // Bounded logging: 29 refusals from 18 IPs, at most one line per IP and a global cap.
    std::thread::sleep(Duration::from_millis(100));
    let refusals: Vec<String> = warn_lines(&a.log())
        .into_iter()
        .filter(|l| l.contains("(too_many_peers)"))
        .collect();
    assert!(!refusals.is_empty(), "the flood went unreported at warn");
    assert!(
        refusals.len() <= REFUSAL_LOG_BURST,
        "{} warn lines for one minute's refusals: {refusals:#?}",
        refusals.len()
    );
    for ip in flood_ips.iter().chain(&more_ips) {
        let n = refusals
            .iter()
            .filter(|l| l.contains(&format!("from {ip}:")))
            .count();
        assert!(n <= 1, "{n} warn lines for {ip}: {refusals:#?}");
    }
    let others: Vec<String> = warn_lines(&a.log())
        .into_iter()
        .filter(|l| !l.contains("(too_many_peers)"))
        .collect();
    assert!(others.is_empty(), "{others:#?}");
    drop(accepted);
    let _ = a.terminate(Duration::from_secs(5));
}
