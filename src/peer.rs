//! The peer worker: one thread per connection, driving its [`Session`] over the socket.
//!
//! Each worker has its own small `mio` poll, so it sleeps until its socket, a command from
//! the registry, or its own next deadline wakes it: an idle link costs no wake-ups between
//! pings, and a ping is never stuck behind another peer's work.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::daemon::{Clock, Msg};
use crate::metrics::{BYTES_IN, BYTES_OUT};
use crate::registry::{ConnId, Input};
use crate::session::{Session, SessionEvent};
use crate::wire::Reason;

const SOCKET: Token = Token(0);
const WAKER: Token = Token(1);
/// Commands a worker can have queued: a verdict and a close at most, with room to spare.
const COMMAND_QUEUE: usize = 8;
/// Read buffer per worker: our messages are tiny, so a small buffer keeps each peer's
/// footprint small; a large frame simply takes more reads.
const READ_BUF: usize = 4096;
/// Stack of a worker thread: it runs a shallow loop, so the default 2 MiB is waste.
const STACK_SIZE: usize = 128 * 1024;

/// What the registry tells a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// The handshake is accepted.
    Accept,
    /// Close gracefully with this reason.
    Close(Reason),
}

/// The registry's line to one worker.
#[derive(Clone, Debug)]
pub struct WorkerHandle {
    commands: Sender<Command>,
    waker: Arc<Waker>,
}

impl WorkerHandle {
    /// Queues a command and wakes the worker. Never blocks: the registry must not wait on
    /// any one peer.
    pub fn send(&self, command: Command) {
        match self.commands.try_send(command) {
            Ok(()) => {}
            Err(TrySendError::Full(c)) => warn!("Peer worker queue full; dropped {c:?}"),
            Err(TrySendError::Disconnected(_)) => return,
        }
        let _ = self.waker.wake();
    }
}

/// Everything a worker needs besides its socket and session.
#[derive(Clone)]
pub struct WorkerContext {
    /// The daemon's clock.
    pub clock: Clock,
    /// The registry thread's inbox.
    pub registry: Sender<Msg>,
    /// Running workers, so shutdown can wait for every FIN exchange to finish.
    pub live: Arc<AtomicUsize>,
}

/// Starts a worker for `conn`. The registry learns its handle (`Msg::Attach`) before the
/// thread runs, so the handle is known before any of the worker's events arrive.
pub fn spawn(
    conn: ConnId,
    mut stream: TcpStream,
    session: Session,
    ctx: &WorkerContext,
) -> io::Result<()> {
    let poll = Poll::new()?;
    poll.registry()
        .register(&mut stream, SOCKET, Interest::READABLE | Interest::WRITABLE)?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = crossbeam_channel::bounded(COMMAND_QUEUE);
    let handle = WorkerHandle {
        commands: tx,
        waker,
    };
    let _ = ctx.registry.send(Msg::Attach(conn, handle));
    let peer = stream.peer_addr().ok();
    let remote = peer.map_or_else(|| "?".into(), |a| a.to_string());
    let worker = Worker {
        conn,
        peer,
        remote,
        stream,
        poll,
        commands: rx,
        session,
        ctx: ctx.clone(),
        eof: false,
    };
    ctx.live.fetch_add(1, Ordering::SeqCst);
    let spawned = std::thread::Builder::new()
        .name(format!("peer-{}", worker.remote))
        .stack_size(STACK_SIZE)
        .spawn(move || worker.run_guarded());
    if let Err(e) = spawned {
        ctx.live.fetch_sub(1, Ordering::SeqCst);
        // The registry already knows the connection: tell it that it is gone.
        let _ = ctx.registry.send(Msg::Input(Input::Closed {
            conn,
            reason: crate::session::CloseReason::Io(format!("cannot start worker: {e}")),
        }));
        return Err(e);
    }
    Ok(())
}

struct Worker {
    conn: ConnId,
    /// The peer's TCP address, when the socket could tell.
    peer: Option<SocketAddr>,
    /// The same for logs.
    remote: String,
    stream: TcpStream,
    poll: Poll,
    commands: Receiver<Command>,
    session: Session,
    ctx: WorkerContext,
    eof: bool,
}

/// Agent string that makes a debug build's worker panic after the handshake: the hook the
/// integration tests use to prove one worker's panic leaves the daemon running. Release
/// builds do not have it.
#[cfg(debug_assertions)]
pub const PANIC_TEST_AGENT: &str = "timed-test/panic";

impl Worker {
    /// Runs the worker; a panic (a bug) ends only this connection: the registry is told it is
    /// gone, and every other link carries on. This is why the release profile keeps
    /// `panic = "unwind"`.
    fn run_guarded(self) {
        let (conn, remote, ctx) = (self.conn, self.remote.clone(), self.ctx.clone());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run()));
        if let Err(panic) = result {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            log::error!("Worker for {remote} panicked ({what}); its connection is closed");
            let reason = crate::session::CloseReason::Io(format!("worker panicked: {what}"));
            let _ = ctx
                .registry
                .send(Msg::Input(Input::Closed { conn, reason }));
            ctx.live.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(4);
        let mut buf = vec![0u8; READ_BUF];
        loop {
            let now = self.ctx.clock.now();
            while let Ok(cmd) = self.commands.try_recv() {
                match cmd {
                    Command::Accept => self.session.accept(now),
                    Command::Close(reason) => {
                        if reason == Reason::TooManyPeers && !self.session.is_closing() {
                            // A full node turning peers away after their handshake: worth a
                            // warn line, but a flood must not turn into one per connection.
                            if let Some(peer) = self.peer {
                                let why = "no room for another peer after its handshake (maxpeers reached)";
                                crate::reactor::log_refusal(peer, reason, why, now);
                            }
                        }
                        self.session.close(reason, now)
                    }
                }
            }
            self.read(&mut buf);
            self.session.on_tick(self.ctx.clock.now());
            // The registry hears of a completed handshake before our Ack leaves: the Ack is
            // what completes the peer's side, and the peer may at once close a losing
            // duplicate on the strength of it; that Closed must not overtake our Handshaken.
            if !self.report() {
                break;
            }
            self.write();
            if !self.report() || self.session.is_done() {
                break;
            }
            let timeout = self
                .session
                .next_deadline()
                .map(|d| d.saturating_sub(self.ctx.clock.now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.session.on_io_error(format!("poll failed: {e}"));
                }
            }
        }
        self.report();
        debug!("Worker for {} ({:#x}) finished", self.remote, self.conn);
        self.ctx.live.fetch_sub(1, Ordering::SeqCst);
    }

    /// Reads until the socket would block (the poll is edge-triggered).
    fn read(&mut self, buf: &mut [u8]) {
        while !self.eof && !self.session.is_done() {
            match self.stream.read(buf) {
                Ok(0) => {
                    self.eof = true;
                    self.session.on_eof(self.ctx.clock.now());
                }
                Ok(n) => {
                    BYTES_IN.fetch_add(n as u64, Ordering::Relaxed);
                    self.session.on_data(&buf[..n], self.ctx.clock.now());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.session.on_io_error(e.to_string()),
            }
        }
    }

    /// Writes what the session queued, then our FIN once it asks for it.
    fn write(&mut self) {
        while !self.session.pending_output().is_empty() && !self.session.is_done() {
            match self.stream.write(self.session.pending_output()) {
                Ok(n) => {
                    BYTES_OUT.fetch_add(n as u64, Ordering::Relaxed);
                    self.session.consume_output(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.session.on_io_error(e.to_string()),
            }
        }
        if !self.session.is_done() {
            if let Some(unsent) = self.kernel_backlog() {
                self.session
                    .on_transport_backlog(unsent, self.ctx.clock.now());
            }
        }
        if self.session.wants_fin() {
            if let Err(e) = self.stream.shutdown(Shutdown::Write) {
                debug!("shutdown(Write) to {} failed: {e}", self.remote);
            }
            self.session.fin_sent();
        }
    }

    /// Bytes written to the socket that the peer has not acknowledged yet (`SIOCOUTQ`). The
    /// session's write stall rule needs it: a peer that reads nothing first fills the
    /// kernel's buffers, and only after them our own queue, which on loopback with an
    /// autotuned send buffer could take hours at the rate pings are allowed.
    fn kernel_backlog(&self) -> Option<usize> {
        let mut unsent: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (= TIOCOUTQ) on a TCP socket writes one int to the pointer given.
        let rc = unsafe {
            libc::ioctl(
                self.stream.as_raw_fd(),
                libc::TIOCOUTQ,
                &mut unsent as *mut libc::c_int,
            )
        };
        (rc == 0).then(|| usize::try_from(unsent).unwrap_or(0))
    }

    /// Passes the session's events on to the registry. False once the registry is gone.
    fn report(&mut self) -> bool {
        while let Some(event) = self.session.poll_event() {
            #[cfg(debug_assertions)]
            if let SessionEvent::Handshaken(hello) = &event {
                if hello.agent == PANIC_TEST_AGENT {
                    panic!("panic requested by a test peer");
                }
            }
            let input = match event {
                SessionEvent::Handshaken(hello) => Input::Handshaken {
                    conn: self.conn,
                    hello,
                },
                SessionEvent::Heard { rtt } => Input::Heard {
                    conn: self.conn,
                    rtt,
                },
                SessionEvent::Confirmed => Input::Confirmed { conn: self.conn },
                SessionEvent::Closed(reason) => Input::Closed {
                    conn: self.conn,
                    reason,
                },
                SessionEvent::Rejected { reason, detail } => {
                    warn!(
                        "Rejected bad input from {}: {detail} ({reason})",
                        self.remote
                    );
                    continue;
                }
            };
            if self.ctx.registry.send(Msg::Input(input)).is_err() {
                return false;
            }
        }
        true
    }
}
