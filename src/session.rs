//! One connection's protocol state machine: handshake, verdict, liveness and graceful close.
//!
//! Sans-I/O: bytes and time go in, bytes to send, events for the registry and "shut down
//! the write side" / "done" come out. The peer worker drives it over a real socket; the
//! simulator drives the very same code over a virtual network.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::rules::{canonical, canonical_ip, Direction};
use crate::wire::{
    self, FrameDecoder, Hello, Message, Network, Reason, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};

/// How long a closing connection waits for the peer's FIN after sending its own. Bounded so
/// that shutdown finishes within its 5 seconds even when a peer never answers.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes queued for a peer that does not read: past this it is dropped rather than let
/// our memory grow.
pub const MAX_SEND_QUEUE: usize = 256 * 1024;
/// Largest frame accepted before the handshake is complete. Only a `Hello` (under 200 bytes
/// with the longest agent) or an `Ack` may come then, and a peer we know nothing about must
/// not make us hold [`wire::MAX_FRAME`] bytes: with `maxpeers` plus the handshake slack of
/// connections each holding a megabyte, that would be well over a hundred megabytes.
pub const MAX_HANDSHAKE_FRAME: usize = 4096;
/// Pings answered per `pinginterval` before a peer counts as flooding.
const MAX_PINGS_PER_INTERVAL: u32 = 64;
/// Least time between two [`SessionEvent::Heard`] events without a new RTT, so a chatty peer
/// cannot flood the registry.
const HEARD_EVERY: Duration = Duration::from_secs(1);

/// What every session of this process shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalInfo {
    /// Our network.
    pub network: Network,
    /// Our P2P address as claimed in the handshake (unspecified IP when unknown).
    pub addr: SocketAddr,
    /// This process's random boot id.
    pub boot_id: u64,
    /// Whether we are a masternode.
    pub masternode: bool,
    /// Our agent string.
    pub agent: String,
    /// Deadline for the whole handshake, verdict included.
    pub handshake_timeout: Duration,
    /// How often to ping an established peer.
    pub ping_interval: Duration,
    /// Silence after which an established peer counts as dead.
    pub ping_timeout: Duration,
}

/// What the session learned of its peer in the handshake, with the P2P address resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerHello {
    /// The peer's P2P address (canonical).
    pub addr: SocketAddr,
    /// Whether the peer knows its own address (claimed a specified IP); if not, `addr` is
    /// its source IP with the claimed port.
    pub addr_known: bool,
    /// The peer's boot id.
    pub boot_id: u64,
    /// The dialer's connection counter for this connection.
    pub seq: u64,
    /// Whether the peer says it is a masternode.
    pub masternode: bool,
    /// The peer's protocol version.
    pub version: u32,
    /// The peer's agent string.
    pub agent: String,
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// We closed it and told the peer this reason.
    Local(Reason),
    /// The peer told us this reason.
    Remote(Reason),
    /// The peer closed without a reason.
    Eof,
    /// The socket failed.
    Io(String),
}

impl CloseReason {
    /// The protocol reason, whichever side gave it.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            CloseReason::Local(r) | CloseReason::Remote(r) => Some(*r),
            _ => None,
        }
    }
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Local(r) => write!(f, "{r}"),
            CloseReason::Remote(r) => write!(f, "{r} (by peer)"),
            CloseReason::Eof => f.write_str("connection closed by peer"),
            CloseReason::Io(e) => write!(f, "{e}"),
        }
    }
}

/// What the session reports to the registry.
#[derive(Clone, Debug, PartialEq)]
pub enum SessionEvent {
    /// The handshake completed; the registry must answer with [`Session::accept`] or
    /// [`Session::close`].
    Handshaken(PeerHello),
    /// The peer was heard from; `rtt` is set when a pong measured the round trip.
    Heard {
        /// Round-trip time of the ping just answered.
        rtt: Option<Duration>,
    },
    /// The peer's registry accepted the connection too: its first `Ping` arrived, and it
    /// pings only after its verdict. Reported at most once, after our own acceptance. The end
    /// that completes its handshake first (the dialer) waits for this before it closes the
    /// duplicate the new connection replaces, so the other end never sees that close before
    /// it has the replacement.
    Confirmed,
    /// The session ended (it may still be draining); reported exactly once.
    Closed(CloseReason),
    /// Bad input was rejected (the session closes itself as well); reported once, for logs
    /// and metrics.
    Rejected {
        /// The reason sent to the peer.
        reason: Reason,
        /// What exactly was wrong.
        detail: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for the peer's `Hello`.
    AwaitHello,
    /// We have its `Hello`, waiting for its `Ack` of ours.
    AwaitAck(PeerHello),
    /// Handshake complete, waiting for the registry's verdict.
    AwaitVerdict,
    /// Accepted by the registry.
    Established,
    /// Our FIN is due or sent; discarding input until the peer's FIN or the drain deadline.
    Closing {
        fin_sent: bool,
        peer_eof: bool,
        deadline: Duration,
    },
    /// Nothing left to do: the socket may be dropped.
    Done,
}

/// The state machine of one connection. See the module docs.
#[derive(Debug)]
pub struct Session {
    local: LocalInfo,
    direction: Direction,
    /// For outbound: the address we dialed; the peer must claim exactly it.
    expected: Option<SocketAddr>,
    remote_ip: IpAddr,
    seq: u64,
    state: State,
    started: Duration,
    decoder: FrameDecoder,
    out: Vec<u8>,
    events: VecDeque<SessionEvent>,
    last_recv: Duration,
    last_ping_sent: Duration,
    ping_outstanding: Option<(u64, Duration)>,
    ping_counter: u64,
    /// The peer has pinged us since the handshake (so its verdict accepted the connection).
    peer_pinged: bool,
    /// [`SessionEvent::Confirmed`] was reported.
    confirmed: bool,
    pings_this_interval: u32,
    ping_window_start: Duration,
    last_heard_event: Option<Duration>,
    /// Bytes handed to the transport so far (everything [`Session::consume_output`] took).
    written: u64,
    /// Of those, how many the transport still held undelivered at its last report (the
    /// kernel's send queue). Zero for a driver that never reports it.
    transport_backlog: u64,
    /// Bytes known delivered (`written - transport_backlog`) when [`Session::progress_at`]
    /// was last moved.
    delivered: u64,
    /// When output last made progress, or last was found empty: a peer that reads nothing
    /// leaves this behind while our bytes wait, which is how the write stall is found.
    progress_at: Duration,
}

impl Session {
    /// A session for a connection we dialed to `target` (its `seq` is our connection counter).
    /// Our `Hello` is queued at once.
    pub fn outbound(local: LocalInfo, target: SocketAddr, seq: u64, now: Duration) -> Session {
        let target = canonical(target);
        let mut s = Session::new(local, Direction::Outbound, target.ip(), seq, now);
        s.expected = Some(target);
        s.send_hello(now);
        s
    }

    /// A session for a connection accepted from `remote` (its TCP source address).
    pub fn inbound(local: LocalInfo, remote: SocketAddr, now: Duration) -> Session {
        Session::new(local, Direction::Inbound, canonical_ip(remote.ip()), 0, now)
    }

    fn new(
        local: LocalInfo,
        direction: Direction,
        remote_ip: IpAddr,
        seq: u64,
        now: Duration,
    ) -> Session {
        Session {
            decoder: FrameDecoder::new(local.network),
            local,
            direction,
            expected: None,
            remote_ip,
            seq,
            state: State::AwaitHello,
            started: now,
            out: Vec::new(),
            events: VecDeque::new(),
            last_recv: now,
            last_ping_sent: now,
            ping_outstanding: None,
            ping_counter: 0,
            peer_pinged: false,
            confirmed: false,
            pings_this_interval: 0,
            ping_window_start: now,
            last_heard_event: None,
            written: 0,
            transport_backlog: 0,
            delivered: 0,
            progress_at: now,
        }
    }

    /// Which way this connection was opened.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Whether the registry accepted the connection and it is still open.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// Whether the session is over and its socket may be dropped.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether the connection is closing or closed.
    pub fn is_closing(&self) -> bool {
        matches!(self.state, State::Closing { .. } | State::Done)
    }

    /// Bytes of an incomplete incoming frame held for the peer.
    pub fn buffered_input(&self) -> usize {
        self.decoder.buffered()
    }

    /// Bytes waiting to be written to the socket.
    pub fn pending_output(&self) -> &[u8] {
        &self.out
    }

    /// Marks the first `n` bytes of [`Session::pending_output`] as written.
    pub fn consume_output(&mut self, n: usize) {
        self.out.drain(..n);
        self.written += n as u64;
    }

    /// The transport still holds `unsent` of the bytes already taken from
    /// [`Session::pending_output`]: written but not yet acknowledged by the peer (for TCP the
    /// kernel's send queue, `SIOCOUTQ`). A driver that cannot tell never calls this; the write
    /// stall rule then sees only our own queue.
    pub fn on_transport_backlog(&mut self, unsent: usize, now: Duration) {
        self.transport_backlog = (unsent as u64).min(self.written);
        self.note_progress(now);
    }

    /// The next event for the registry, if any.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Whether the driver should now shut down the socket's write side (send our FIN):
    /// closing, and everything queued before the FIN has been written.
    pub fn wants_fin(&self) -> bool {
        matches!(
            self.state,
            State::Closing {
                fin_sent: false,
                ..
            }
        ) && self.out.is_empty()
    }

    /// The driver has shut down the write side.
    pub fn fin_sent(&mut self) {
        if let State::Closing {
            fin_sent, peer_eof, ..
        } = &mut self.state
        {
            *fin_sent = true;
            if *peer_eof {
                self.state = State::Done;
            }
        }
    }

    /// When [`Session::on_tick`] must next be called, if ever.
    pub fn next_deadline(&self) -> Option<Duration> {
        match &self.state {
            State::AwaitHello | State::AwaitAck(_) | State::AwaitVerdict => {
                Some((self.started + self.local.handshake_timeout).min(self.stall_deadline()))
            }
            State::Established => Some(
                (self.last_ping_sent + self.local.ping_interval)
                    .min(self.last_recv + self.local.ping_timeout)
                    .min(self.stall_deadline()),
            ),
            State::Closing { deadline, .. } => Some(*deadline),
            State::Done => None,
        }
    }

    /// Bytes arrived from the peer.
    pub fn on_data(&mut self, mut data: &[u8], now: Duration) {
        if matches!(self.state, State::Closing { .. } | State::Done) {
            // Draining: read and discard, so closing never leaves unread bytes behind.
            return;
        }
        self.last_recv = now;
        while !data.is_empty() && !self.is_closing() {
            match self.decoder.decode(&mut data) {
                Ok(Some(msg)) => self.on_message(msg, now),
                Ok(None) => break,
                Err(e) => self.reject(e.reason(), e.to_string(), now),
            }
        }
        let handshaking = matches!(self.state, State::AwaitHello | State::AwaitAck(_));
        if handshaking && self.decoder.buffered() > wire::HEADER_LEN + MAX_HANDSHAKE_FRAME {
            let detail = format!(
                "{} bytes of one frame before the handshake (at most {MAX_HANDSHAKE_FRAME} until it completes)",
                self.decoder.buffered() - wire::HEADER_LEN
            );
            self.reject(Reason::ProtocolViolation, detail, now);
        }
        if self.state == State::Established {
            let due = match self.last_heard_event {
                None => true,
                Some(t) => now >= t + HEARD_EVERY,
            };
            if due {
                self.heard(None, now);
            }
        }
    }

    /// The peer shut down its write side (read returned 0).
    pub fn on_eof(&mut self, now: Duration) {
        match &mut self.state {
            State::Closing {
                peer_eof, fin_sent, ..
            } => {
                *peer_eof = true;
                if *fin_sent {
                    self.state = State::Done;
                }
            }
            State::Done => {}
            _ => {
                let reason = if self.decoder.buffered() > 0 {
                    CloseReason::Io(format!(
                        "connection closed in the middle of a frame ({} bytes buffered)",
                        self.decoder.buffered()
                    ))
                } else {
                    CloseReason::Eof
                };
                self.begin_close(reason, true, now);
            }
        }
    }

    /// The socket failed; nothing more can be sent or received.
    pub fn on_io_error(&mut self, error: String) {
        if !self.is_closing() {
            self.events
                .push_back(SessionEvent::Closed(CloseReason::Io(error)));
        }
        self.out.clear();
        self.state = State::Done;
    }

    /// Time passed: handshake deadline, write stall, pings, liveness, drain deadline.
    pub fn on_tick(&mut self, now: Duration) {
        if !self.is_closing() {
            self.note_progress(now);
            if now >= self.stall_deadline() {
                return self.drop_stalled(now);
            }
        }
        match self.state {
            State::AwaitHello | State::AwaitAck(_) => {
                if now >= self.started + self.local.handshake_timeout {
                    self.handshake_timed_out(now);
                }
            }
            State::AwaitVerdict => {
                // The peer did its part; the registry is late. Nothing to warn about.
                if now >= self.started + self.local.handshake_timeout {
                    self.close_with(Reason::Timeout, now);
                }
            }
            State::Established => {
                if now >= self.last_recv + self.local.ping_timeout {
                    self.close_with(Reason::Timeout, now);
                } else if now >= self.last_ping_sent + self.local.ping_interval {
                    self.send_ping(now);
                }
            }
            State::Closing { deadline, .. } => {
                if now >= deadline {
                    self.state = State::Done;
                }
            }
            State::Done => {}
        }
    }

    /// The registry's verdict: keep this connection.
    pub fn accept(&mut self, now: Duration) {
        if self.state == State::AwaitVerdict {
            self.state = State::Established;
            self.heard(None, now);
            self.confirm();
            // Ping at once: the round-trip time is known from the start, the link proves
            // itself both ways before anyone relies on it, and the peer learns that our
            // verdict accepted it (see `SessionEvent::Confirmed`).
            self.send_ping(now);
        }
    }

    /// Closes the connection gracefully: `Disconnect{reason}`, then our FIN, then drain until
    /// the peer's FIN or the drain deadline. Used for the registry's rejections and for
    /// shutdown.
    pub fn close(&mut self, reason: Reason, now: Duration) {
        self.close_with(reason, now);
    }

    fn close_with(&mut self, reason: Reason, now: Duration) {
        if self.is_closing() {
            return;
        }
        self.send(&Message::Disconnect(reason), now);
        self.begin_close(CloseReason::Local(reason), false, now);
    }

    fn begin_close(&mut self, why: CloseReason, peer_eof: bool, now: Duration) {
        if self.is_closing() {
            return;
        }
        self.events.push_back(SessionEvent::Closed(why));
        self.state = State::Closing {
            fin_sent: false,
            peer_eof,
            deadline: now + DRAIN_TIMEOUT,
        };
    }

    fn reject(&mut self, reason: Reason, detail: String, now: Duration) {
        if self.is_closing() {
            return;
        }
        self.events
            .push_back(SessionEvent::Rejected { reason, detail });
        self.close_with(reason, now);
    }

    /// The handshake deadline passed with the peer's part still missing. An inbound peer that
    /// connects and then stalls holds one of our handshake slots for nothing (slowloris), so
    /// that is rejected bad input and earns its warn line; a peer we dialed that stalls is a
    /// failed dial, which the registry reports on its own.
    fn handshake_timed_out(&mut self, now: Duration) {
        if self.direction == Direction::Outbound {
            return self.close_with(Reason::Timeout, now);
        }
        let mut detail = format!(
            "handshake not complete within {:?} ({})",
            self.local.handshake_timeout,
            state_name(&self.state)
        );
        if self.decoder.buffered() > 0 {
            detail += &format!(
                "; {} bytes of an incomplete frame held",
                self.decoder.buffered()
            );
        }
        self.reject(Reason::Timeout, detail, now);
    }

    /// Whether bytes of ours wait for the peer, in our queue or the transport's.
    fn output_waiting(&self) -> bool {
        !self.out.is_empty() || self.transport_backlog > 0
    }

    /// Moves [`Session::progress_at`] to `now` when nothing waits or the peer took bytes since
    /// the last look. Looking only moves it later than the true progress, which errs on the
    /// side of keeping a peer.
    fn note_progress(&mut self, now: Duration) {
        let delivered = self.written - self.transport_backlog;
        if !self.output_waiting() || delivered != self.delivered {
            self.delivered = delivered;
            self.progress_at = now;
        }
    }

    /// When a peer that still has not taken any of our waiting bytes counts as not reading.
    /// `pingtimeout` is the silence that ends a link in the other direction, so a healthy but
    /// slow reader gets the same patience; and since each of our pings waits for it, a peer
    /// that reads even a little keeps moving this deadline on.
    fn stall_deadline(&self) -> Duration {
        if self.output_waiting() {
            self.progress_at + self.local.ping_timeout
        } else {
            Duration::MAX
        }
    }

    /// The peer has read nothing for `pingtimeout` while bytes of ours waited. A `Disconnect`
    /// would only queue behind the bytes it is not reading, so the connection ends at once:
    /// our queue is let go and the driver closes the socket (a FIN after whatever the kernel
    /// still holds for it). Without this rule a peer that keeps pinging but never reads would
    /// hold its connection, our queue and the kernel's buffers forever.
    fn drop_stalled(&mut self, now: Duration) {
        let waited = now.saturating_sub(self.progress_at);
        let detail = format!(
            "peer has read none of our bytes for {waited:?} ({} queued, {} in the socket)",
            self.out.len(),
            self.transport_backlog
        );
        self.events.push_back(SessionEvent::Rejected {
            reason: Reason::Timeout,
            detail,
        });
        self.events
            .push_back(SessionEvent::Closed(CloseReason::Local(Reason::Timeout)));
        self.out.clear();
        self.state = State::Done;
    }

    /// Reports [`SessionEvent::Confirmed`] once both verdicts accepted the connection.
    fn confirm(&mut self) {
        if self.peer_pinged && !self.confirmed && self.state == State::Established {
            self.confirmed = true;
            self.events.push_back(SessionEvent::Confirmed);
        }
    }

    fn heard(&mut self, rtt: Option<Duration>, now: Duration) {
        self.last_heard_event = Some(now);
        self.events.push_back(SessionEvent::Heard { rtt });
    }

    fn send(&mut self, msg: &Message, now: Duration) {
        if !self.output_waiting() {
            // The stall clock starts when our bytes start waiting, not at the last look.
            self.delivered = self.written - self.transport_backlog;
            self.progress_at = now;
        }
        if self.out.len() >= MAX_SEND_QUEUE {
            // The peer does not read: drop it rather than let our memory grow.
            self.events.push_back(SessionEvent::Rejected {
                reason: Reason::ProtocolViolation,
                detail: format!("peer does not read; {} bytes queued", self.out.len()),
            });
            self.on_io_error("send queue full: peer does not read".into());
            return;
        }
        self.out
            .extend_from_slice(&wire::encode(self.local.network, msg));
    }

    fn send_ping(&mut self, now: Duration) {
        self.ping_counter += 1;
        let nonce = (self.seq << 32) ^ self.ping_counter;
        self.ping_outstanding = Some((nonce, now));
        self.last_ping_sent = now;
        self.send(&Message::Ping(nonce), now);
    }

    fn send_hello(&mut self, now: Duration) {
        let hello = Hello {
            network: self.local.network,
            version: PROTOCOL_VERSION,
            min_version: MIN_PROTOCOL_VERSION,
            addr: self.local.addr,
            boot_id: self.local.boot_id,
            seq: self.seq,
            masternode: self.local.masternode,
            agent: self.local.agent.clone(),
        };
        self.send(&Message::Hello(hello), now);
    }

    fn on_message(&mut self, msg: Message, now: Duration) {
        match (&self.state, msg) {
            (_, Message::Disconnect(reason)) => {
                self.begin_close(CloseReason::Remote(reason), false, now);
            }
            (State::AwaitHello, Message::Hello(hello)) => self.on_hello(hello, now),
            (State::AwaitAck(_), Message::Ack) => {
                let State::AwaitAck(peer) = std::mem::replace(&mut self.state, State::AwaitVerdict)
                else {
                    unreachable!()
                };
                self.events.push_back(SessionEvent::Handshaken(peer));
            }
            (State::AwaitVerdict | State::Established, Message::Ping(nonce)) => {
                if now >= self.ping_window_start + self.local.ping_interval {
                    self.ping_window_start = now;
                    self.pings_this_interval = 0;
                }
                self.pings_this_interval += 1;
                if self.pings_this_interval > MAX_PINGS_PER_INTERVAL {
                    let detail = format!(
                        "ping flood: more than {MAX_PINGS_PER_INTERVAL} pings within {:?}",
                        self.local.ping_interval
                    );
                    self.reject(Reason::ProtocolViolation, detail, now);
                } else {
                    self.send(&Message::Pong(nonce), now);
                    self.peer_pinged = true;
                    self.confirm();
                }
            }
            (State::AwaitVerdict | State::Established, Message::Pong(nonce)) => {
                if let Some((expected, sent)) = self.ping_outstanding {
                    if nonce == expected {
                        self.ping_outstanding = None;
                        if self.state == State::Established {
                            self.heard(Some(now.saturating_sub(sent)), now);
                        }
                    }
                }
                // A stale or unsolicited pong is harmless: it only proves liveness.
            }
            (state, msg) => {
                let detail = format!("unexpected {} in state {}", msg.kind(), state_name(state));
                self.reject(Reason::ProtocolViolation, detail, now);
            }
        }
    }

    fn on_hello(&mut self, hello: Hello, now: Duration) {
        if hello.network != self.local.network {
            let detail = format!("peer is on {}", hello.network.name());
            return self.reject(Reason::WrongNetwork, detail, now);
        }
        if hello.version < MIN_PROTOCOL_VERSION || hello.min_version > PROTOCOL_VERSION {
            let detail = format!(
                "peer speaks version {} (accepts {}+), we speak {PROTOCOL_VERSION} (accept {MIN_PROTOCOL_VERSION}+)",
                hello.version, hello.min_version
            );
            return self.reject(Reason::IncompatibleVersion, detail, now);
        }
        if hello.boot_id == self.local.boot_id {
            return self.reject(Reason::SelfConnection, "connected to ourselves".into(), now);
        }
        let claimed = canonical(hello.addr);
        let addr = if claimed.ip().is_unspecified() {
            SocketAddr::new(self.remote_ip, claimed.port())
        } else {
            claimed
        };
        let mismatch = match self.expected {
            Some(dialed) => addr != dialed,
            None => addr.ip() != self.remote_ip,
        };
        if mismatch || addr.port() == 0 {
            let detail = match self.expected {
                Some(dialed) => format!("dialed {dialed} but the peer claims {claimed}"),
                None => format!("claims {claimed} but connects from {}", self.remote_ip),
            };
            return self.reject(Reason::AddressMismatch, detail, now);
        }
        if self.direction == Direction::Inbound {
            self.seq = hello.seq;
            self.send_hello(now);
        }
        self.send(&Message::Ack, now);
        if self.is_closing() {
            return; // the send queue overflowed and ended the session
        }
        self.state = State::AwaitAck(PeerHello {
            addr,
            addr_known: !claimed.ip().is_unspecified(),
            boot_id: hello.boot_id,
            seq: hello.seq,
            masternode: hello.masternode,
            version: hello.version,
            agent: hello.agent,
        });
    }
}

fn state_name(state: &State) -> &'static str {
    match state {
        State::AwaitHello => "awaiting Hello",
        State::AwaitAck(_) => "awaiting Ack",
        State::AwaitVerdict => "awaiting verdict",
        State::Established => "established",
        State::Closing { .. } => "closing",
        State::Done => "done",
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
