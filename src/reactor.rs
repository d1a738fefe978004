//! The reactor: a `mio` event loop that accepts connections and completes dials, then hands
//! each connected socket to its own peer worker. It decides nothing itself: every accepted
//! connection is put to the registry, and it dials only when the registry says so.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::mem;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::os::fd::{FromRawFd, RawFd};
use std::sync::Mutex;
use std::time::Duration;

use crossbeam_channel::{Receiver, TryRecvError};
use log::{debug, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::daemon::Msg;
use crate::peer::{self, WorkerContext};
use crate::registry::{ConnId, Input, INBOUND_ID_BIT};
use crate::rules::canonical;
use crate::session::{LocalInfo, Session, DRAIN_TIMEOUT};
use crate::wire::{self, Message, Reason};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
/// Accepted connections waiting for the registry's admission. Past this the reactor stops
/// accepting until the registry catches up, so a connection flood queues in the kernel's
/// backlog instead of in our memory.
const MAX_PENDING: usize = 256;
/// Refused connections being closed gracefully at once; more are simply dropped.
const MAX_CLOSING: usize = 256;
/// Refusals of one source IP earn at most one warn line per this period; a flood from one
/// address is one line a minute, not one per connection.
pub const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(60);
/// Warn lines about refusals per period over all IPs, so that a flood from many addresses is
/// bounded too; the refusals not logged are counted in the next line.
pub const REFUSAL_LOG_BURST: u32 = 10;
/// Source IPs whose last warn line is remembered. Past this the oldest are forgotten (they
/// may then earn a line again, still within [`REFUSAL_LOG_BURST`]).
const REFUSAL_LOG_IPS: usize = 1024;

/// Rate limit for the warn lines about refused connections (`too_many_peers`), shared by the
/// reactor (refusals before the handshake) and the peer workers (after it).
pub static REFUSALS: Mutex<RefusalLog> = Mutex::new(RefusalLog::new());

/// Decides which refusals are logged at warn: the first from an IP in each
/// [`REFUSAL_LOG_PERIOD`], and at most [`REFUSAL_LOG_BURST`] lines per period in all.
#[derive(Debug)]
pub struct RefusalLog {
    /// When each IP last had a line.
    last_line: BTreeMap<IpAddr, Duration>,
    /// Start of the current period of the global budget, and lines logged in it.
    period_start: Option<Duration>,
    lines: u32,
    /// Refusals counted but not logged since the last line.
    unlogged: u64,
}

impl Default for RefusalLog {
    fn default() -> Self {
        RefusalLog::new()
    }
}

impl RefusalLog {
    /// An empty log: the first refusal of every IP is logged.
    pub const fn new() -> RefusalLog {
        RefusalLog {
            last_line: BTreeMap::new(),
            period_start: None,
            lines: 0,
            unlogged: 0,
        }
    }

    /// Counts a refusal of `ip` at `now`. `Some(n)` means log it now, mentioning the `n`
    /// refusals counted without a line since the previous one; `None` means stay quiet.
    /// A clock that went backwards only restarts the periods, it never silences an IP for
    /// longer than one period from the time it is told.
    pub fn note(&mut self, ip: IpAddr, now: Duration) -> Option<u64> {
        let period_over = |since: Duration| now >= since + REFUSAL_LOG_PERIOD || now < since;
        if self.period_start.map_or(true, period_over) {
            self.period_start = Some(now);
            self.lines = 0;
        }
        let ip_quiet = self.last_line.get(&ip).is_some_and(|t| !period_over(*t));
        if ip_quiet || self.lines >= REFUSAL_LOG_BURST {
            self.unlogged += 1;
            return None;
        }
        if self.last_line.len() >= REFUSAL_LOG_IPS {
            self.last_line.retain(|_, t| !period_over(*t));
            if self.last_line.len() >= REFUSAL_LOG_IPS {
                let oldest = self
                    .last_line
                    .iter()
                    .min_by_key(|(_, t)| **t)
                    .map(|(ip, _)| *ip);
                if let Some(oldest) = oldest {
                    self.last_line.remove(&oldest);
                }
            }
        }
        self.last_line.insert(ip, now);
        self.lines += 1;
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// Logs the refusal of `remote` with `reason` at warn, within the limits of [`REFUSALS`].
/// `why` says which check refused it.
pub fn log_refusal(remote: SocketAddr, reason: Reason, why: &str, now: Duration) {
    let verdict = match REFUSALS.lock() {
        Ok(mut log) => log.note(remote.ip(), now),
        // A worker panicked while holding it: the count is only for logs, carry on.
        Err(poisoned) => poisoned.into_inner().note(remote.ip(), now),
    };
    if let Some(unlogged) = verdict {
        let more = if unlogged > 0 {
            format!("; {unlogged} other refusals not logged since the last line")
        } else {
            String::new()
        };
        warn!(
            "Refused connection from {remote}: {why} ({reason}); more from {} within {}s are only counted{more}",
            remote.ip(),
            REFUSAL_LOG_PERIOD.as_secs()
        );
    }
}

/// What the registry asks of the reactor.
#[derive(Debug)]
pub enum ReactorCommand {
    /// Start a non-blocking dial.
    Dial {
        /// The connection's id.
        conn: ConnId,
        /// Where to.
        addr: SocketAddr,
    },
    /// Hand an accepted connection to a worker for its handshake.
    Admit {
        /// The connection.
        conn: ConnId,
    },
    /// Refuse an accepted connection gracefully.
    Refuse {
        /// The connection.
        conn: ConnId,
        /// Told to the peer.
        reason: Reason,
    },
    /// Abandon a dial still in progress.
    Abandon {
        /// The dial.
        conn: ConnId,
    },
    /// Stop accepting and dialing; finish the graceful closes under way, then return.
    Stop,
}

/// What a socket held by the reactor is waiting for.
enum Slot {
    /// A dial whose connect has not completed.
    Dialing {
        conn: ConnId,
        addr: SocketAddr,
        stream: TcpStream,
        deadline: Duration,
    },
    /// A refused connection: our `Disconnect` and FIN are sent, waiting for the peer's FIN.
    Closing {
        stream: TcpStream,
        deadline: Duration,
    },
}

/// The reactor. Built (and its listener bound) on the main thread so a bind failure is a
/// start-up error; run on its own thread.
pub struct Reactor {
    poll: Poll,
    listener: Option<TcpListener>,
    commands: Receiver<ReactorCommand>,
    local: LocalInfo,
    /// Source IP for dials, when it is an address of this host.
    source_ip: Option<IpAddr>,
    /// Bound on connects; a dial silently dropped by a firewall would otherwise hang for
    /// minutes.
    dial_timeout: Duration,
    ctx: WorkerContext,
    pending: BTreeMap<ConnId, (TcpStream, SocketAddr)>,
    slots: BTreeMap<Token, Slot>,
    next_token: usize,
    next_inbound: u64,
    stopping: bool,
}

impl Reactor {
    /// Binds the P2P listener on `listen` and prepares the loop. Returns the reactor and the
    /// waker the registry uses to signal new commands.
    pub fn bind(
        listen: SocketAddr,
        commands: Receiver<ReactorCommand>,
        local: LocalInfo,
        dial_timeout: Duration,
        ctx: WorkerContext,
    ) -> io::Result<(Reactor, Waker)> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(listen)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        // Bind dials to our own address when it is one of this host's, so the peer sees the
        // source IP we claim; probing with a throwaway bind tells.
        let source_ip = [Some(local.addr.ip()), Some(listen.ip())]
            .into_iter()
            .flatten()
            .find(|ip| !ip.is_unspecified() && std::net::TcpListener::bind((*ip, 0)).is_ok());
        Ok((
            Reactor {
                poll,
                listener: Some(listener),
                commands,
                local,
                source_ip,
                dial_timeout,
                ctx,
                pending: BTreeMap::new(),
                slots: BTreeMap::new(),
                next_token: 2,
                next_inbound: 0,
                stopping: false,
            },
            waker,
        ))
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.listener {
            Some(l) => l.local_addr(),
            None => Err(io::Error::new(io::ErrorKind::NotConnected, "stopped")),
        }
    }

    /// Runs until told to stop and every graceful close it holds has finished.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = self
                .slots
                .values()
                .map(|s| match s {
                    Slot::Dialing { deadline, .. } | Slot::Closing { deadline, .. } => *deadline,
                })
                .min()
                .map(|d| d.saturating_sub(self.ctx.clock.now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    warn!("Reactor poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    token => self.on_socket(token),
                }
            }
            if !self.commands() {
                return;
            }
            self.expire();
            if self.pending.len() < MAX_PENDING {
                // Catch up on connections left in the backlog while admissions were full.
                self.accept();
            }
            if self.stopping && self.slots.is_empty() {
                return;
            }
        }
    }

    fn accept(&mut self) {
        loop {
            if self.pending.len() >= MAX_PENDING {
                return;
            }
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, remote)) => {
                    let remote = canonical(remote);
                    self.next_inbound += 1;
                    let conn = INBOUND_ID_BIT | self.next_inbound;
                    self.pending.insert(conn, (stream, remote));
                    let _ = self
                        .ctx
                        .registry
                        .send(Msg::Input(Input::Inbound { conn, remote }));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    // EMFILE and friends: leave the rest in the backlog for the next round.
                    warn!("Accept on the P2P listener failed: {e}");
                    return;
                }
            }
        }
    }

    /// Carries out the registry's commands. False once told to stop and nothing is left.
    fn commands(&mut self) -> bool {
        loop {
            match self.commands.try_recv() {
                Ok(ReactorCommand::Dial { conn, addr }) => self.dial(conn, addr),
                Ok(ReactorCommand::Admit { conn }) => {
                    if let Some((stream, remote)) = self.pending.remove(&conn) {
                        let session =
                            Session::inbound(self.local.clone(), remote, self.ctx.clock.now());
                        self.start_worker(conn, stream, session);
                    }
                }
                Ok(ReactorCommand::Refuse { conn, reason }) => {
                    if let Some((stream, remote)) = self.pending.remove(&conn) {
                        if reason != Reason::Shutdown {
                            // The registry logs each refusal at debug; an operator needs to
                            // see a flood at warn, once per IP and minute, not per connection.
                            let why = match reason {
                                Reason::TooManyPeers => {
                                    "no room for its handshake (maxinboundperip or maxpeers reached)"
                                }
                                _ => "refused before its handshake",
                            };
                            log_refusal(remote, reason, why, self.ctx.clock.now());
                        }
                        self.refuse(stream, reason);
                    }
                }
                Ok(ReactorCommand::Abandon { conn }) => {
                    let token = self.slots.iter().find_map(|(t, s)| match s {
                        Slot::Dialing { conn: c, .. } if *c == conn => Some(*t),
                        _ => None,
                    });
                    if let Some(token) = token {
                        self.drop_slot(token);
                    }
                }
                Ok(ReactorCommand::Stop) => {
                    self.stopping = true;
                    if let Some(mut l) = self.listener.take() {
                        let _ = self.poll.registry().deregister(&mut l);
                    }
                    for (_, (stream, _)) in mem::take(&mut self.pending) {
                        self.refuse(stream, Reason::Shutdown);
                    }
                }
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return !self.slots.is_empty(),
            }
        }
    }

    fn dial(&mut self, conn: ConnId, addr: SocketAddr) {
        if self.stopping {
            return;
        }
        let result = connect(addr, self.source_ip).and_then(|mut stream| {
            let token = Token(self.next_token);
            self.next_token += 1;
            self.poll
                .registry()
                .register(&mut stream, token, Interest::WRITABLE)?;
            Ok((token, stream))
        });
        match result {
            Ok((token, stream)) => {
                let deadline = self.ctx.clock.now() + self.dial_timeout;
                self.slots.insert(
                    token,
                    Slot::Dialing {
                        conn,
                        addr,
                        stream,
                        deadline,
                    },
                );
            }
            Err(e) => self.dial_failed(conn, e.to_string()),
        }
    }

    fn dial_failed(&self, conn: ConnId, error: String) {
        let _ = self
            .ctx
            .registry
            .send(Msg::Input(Input::DialFailed { conn, error }));
    }

    fn on_socket(&mut self, token: Token) {
        match self.slots.get_mut(&token) {
            Some(Slot::Dialing { stream, .. }) => {
                let status = match stream.take_error() {
                    Ok(Some(e)) | Err(e) => Err(e),
                    Ok(None) => match stream.peer_addr() {
                        Ok(_) => Ok(true),
                        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
                        Err(e) => Err(e),
                    },
                };
                match status {
                    Ok(false) => {} // spurious wake-up; still connecting
                    Ok(true) => {
                        let Some(Slot::Dialing {
                            conn,
                            addr,
                            mut stream,
                            ..
                        }) = self.slots.remove(&token)
                        else {
                            unreachable!()
                        };
                        let _ = self.poll.registry().deregister(&mut stream);
                        let _ = self
                            .ctx
                            .registry
                            .send(Msg::Input(Input::Connected { conn }));
                        let session =
                            Session::outbound(self.local.clone(), addr, conn, self.ctx.clock.now());
                        self.start_worker(conn, stream, session);
                    }
                    Err(e) => {
                        let conn = match self.slots.get(&token) {
                            Some(Slot::Dialing { conn, .. }) => *conn,
                            _ => unreachable!(),
                        };
                        self.drop_slot(token);
                        self.dial_failed(conn, e.to_string());
                    }
                }
            }
            Some(Slot::Closing { stream, .. }) => {
                // Drain until the peer's FIN, so closing never leaves unread bytes (an RST).
                let mut buf = [0u8; 1024];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) => return self.drop_slot(token),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return self.drop_slot(token),
                    }
                }
            }
            None => {}
        }
    }

    fn start_worker(&mut self, conn: ConnId, stream: TcpStream, session: Session) {
        let _ = stream.set_nodelay(true);
        set_keepalive(&stream, self.local.ping_timeout);
        if let Err(e) = peer::spawn(conn, stream, session, &self.ctx) {
            warn!("Cannot start a worker thread: {e}");
        }
    }

    fn refuse(&mut self, mut stream: TcpStream, reason: Reason) {
        if self.slots.len() >= MAX_CLOSING {
            return; // under a flood: drop it rather than hold more sockets
        }
        let frame = wire::encode(self.local.network, &Message::Disconnect(reason));
        // A dozen bytes on a fresh socket: the send buffer always has room.
        let _ = stream.write(&frame);
        let _ = stream.shutdown(Shutdown::Write);
        let token = Token(self.next_token);
        self.next_token += 1;
        if self
            .poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
            .is_ok()
        {
            let deadline = self.ctx.clock.now() + DRAIN_TIMEOUT;
            self.slots.insert(token, Slot::Closing { stream, deadline });
            self.on_socket(token);
        }
    }

    fn expire(&mut self) {
        let now = self.ctx.clock.now();
        let expired: Vec<Token> = self
            .slots
            .iter()
            .filter(|(_, s)| match s {
                Slot::Dialing { deadline, .. } | Slot::Closing { deadline, .. } => *deadline <= now,
            })
            .map(|(t, _)| *t)
            .collect();
        for token in expired {
            if let Some(Slot::Dialing { conn, .. }) = self.slots.get(&token) {
                let conn = *conn;
                debug!("Dial {conn} timed out");
                self.dial_failed(conn, "connect timed out".into());
            }
            self.drop_slot(token);
        }
    }

    fn drop_slot(&mut self, token: Token) {
        match self.slots.remove(&token) {
            Some(Slot::Dialing { mut stream, .. }) | Some(Slot::Closing { mut stream, .. }) => {
                let _ = self.poll.registry().deregister(&mut stream);
            }
            None => {}
        }
    }
}

/// Starts a non-blocking connect to `addr`, from `source` when given. `mio` cannot bind a
/// dialing socket, so the socket is made by hand.
fn connect(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let domain = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain socket(2); the fd is owned by the TcpStream built below or closed here.
    let fd: RawFd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid socket we own.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    if let Some(ip) = source.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) {
        let (sa, len) = sockaddr(SocketAddr::new(ip, 0));
        // SAFETY: sa is a valid sockaddr of length len.
        if unsafe { libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let (sa, len) = sockaddr(addr);
    // SAFETY: as above.
    let rc = unsafe { libc::connect(fd, &sa as *const _ as *const libc::sockaddr, len) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(TcpStream::from_std(stream))
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// TCP keepalive under the ping: the kernel then also notices a peer that vanished while we
/// had nothing to send.
fn set_keepalive(stream: &TcpStream, idle: Duration) {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let idle = idle.as_secs().clamp(1, i32::MAX as u64) as libc::c_int;
    let opts: [(libc::c_int, libc::c_int, libc::c_int); 4] = [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 10),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3),
    ];
    for (level, name, value) in opts {
        // SAFETY: setsockopt with a c_int option value on a valid socket.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                &value as *const _ as *const libc::c_void,
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            debug!("setsockopt({name}) failed: {}", io::Error::last_os_error());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn one_line_per_ip_per_period() {
        let mut log = RefusalLog::new();
        assert_eq!(log.note(ip(1), secs(100)), Some(0));
        for t in 100..160 {
            assert_eq!(log.note(ip(1), secs(t)), None, "at {t}s");
        }
        // A period later it is logged again, with the count of what was not.
        assert_eq!(log.note(ip(1), secs(160)), Some(60));
        assert_eq!(log.note(ip(1), secs(161)), None);
    }

    #[test]
    fn other_ips_are_logged_within_the_burst() {
        let mut log = RefusalLog::new();
        for i in 0..REFUSAL_LOG_BURST as u8 {
            assert_eq!(log.note(ip(i), secs(5)), Some(0), "ip {i}");
        }
        // The burst is spent: every further IP is only counted until the period is over.
        for i in 100..200 {
            assert_eq!(log.note(ip(i), secs(6)), None);
        }
        assert_eq!(log.note(ip(250), secs(65)), Some(100));
    }

    #[test]
    fn many_ips_do_not_grow_the_table_without_bound() {
        let mut log = RefusalLog::new();
        for n in 0..(REFUSAL_LOG_IPS as u64 * 4) {
            let addr = IpAddr::from((n as u32 + 1).to_be_bytes());
            // One period per burst, so that every IP earns its line.
            let t = secs(n / u64::from(REFUSAL_LOG_BURST) * 60);
            log.note(addr, t);
            assert!(log.last_line.len() <= REFUSAL_LOG_IPS);
        }
    }

    #[test]
    fn a_clock_that_goes_back_never_silences_an_ip_for_long() {
        let mut log = RefusalLog::new();
        assert_eq!(log.note(ip(1), secs(1000)), Some(0));
        // Time jumped back: the remembered line is "in the future"; a new period starts.
        assert_eq!(log.note(ip(1), secs(10)), Some(0));
        assert_eq!(log.note(ip(1), secs(11)), None);
    }
}
