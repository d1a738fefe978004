//! Fuzzing harnesses: the entry points of the coverage-guided `cargo fuzz` targets in `fuzz/`
//! and of their deterministic smoke in `cargo test` (`tests/fuzz_smoke.rs`), so both exercise
//! exactly the same code with exactly the same checks.
//!
//! Each harness takes arbitrary bytes, drives one sans-I/O state machine with them and panics
//! when an invariant breaks; a crash is what the fuzzer looks for. Neither touches a socket,
//! a thread or the real clock, so an execution costs microseconds.

use std::net::SocketAddr;
use std::time::Duration;

use crate::session::{LocalInfo, Session, SessionEvent, MAX_HANDSHAKE_FRAME, MAX_SEND_QUEUE};
use crate::wire::{
    self, FrameDecoder, Hello, Message, Network, Reason, HEADER_LEN, MAX_FRAME,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};

/// The names of the harnesses, as the `fuzz/` targets and their corpus folders are named.
pub const TARGETS: [&str; 2] = ["frame_decoder", "handshake"];

/// Runs the harness named `target` (one of [`TARGETS`]) on `data`.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "frame_decoder" => frame_decoder(data),
        "handshake" => {
            handshake(data);
        }
        other => panic!("no fuzz target named {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Frame decoder
// ---------------------------------------------------------------------------------------------

/// The frame decoder fed `data[1..]` as one stream, once whole and once cut into pieces whose
/// sizes `data[0]` picks. Checks: no panic; never more than one frame buffered; a decode that
/// returns nothing has taken all its input; both feedings yield the same messages and end the
/// same way (how TCP happens to split a stream must never matter); every decoded message
/// encodes to a frame that decodes back to it.
pub fn frame_decoder(data: &[u8]) {
    let Some((&control, stream)) = data.split_first() else {
        return;
    };
    let network = if control & 1 == 0 {
        Network::Testnet
    } else {
        Network::Mainnet
    };
    let whole = decode_stream(network, [stream]);
    let pieces = decode_stream(network, split(stream, control >> 1));
    assert_eq!(
        whole, pieces,
        "the same stream decoded differently when split"
    );
    for msg in &whole.0 {
        let frame = wire::encode(network, msg);
        let (again, end) = decode_stream(network, [frame.as_slice()]);
        assert_eq!(end, None, "re-encoded {msg:?} does not decode");
        assert_eq!(again, vec![msg.clone()], "re-encoding changed a message");
    }
}

/// The messages decoded from `chunks`, and the reason of the error that ended the stream.
fn decode_stream<'a>(
    network: Network,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<Message>, Option<Reason>) {
    let mut decoder = FrameDecoder::new(network);
    let mut messages = Vec::new();
    for chunk in chunks {
        let mut input = chunk;
        while !input.is_empty() {
            let before = input.len();
            let result = decoder.decode(&mut input);
            assert!(
                decoder.buffered() <= HEADER_LEN + MAX_FRAME,
                "decoder holds {} bytes",
                decoder.buffered()
            );
            match result {
                Ok(Some(msg)) => messages.push(msg),
                Ok(None) => assert!(input.is_empty(), "decoder wants more but left input"),
                Err(e) => return (messages, Some(e.reason())),
            }
            assert!(input.len() < before, "decoder made no progress");
        }
    }
    (messages, None)
}

/// `stream` cut into pieces of 1 to 16 bytes (from `seed`), as a slow or hostile sender would.
fn split(stream: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    let mut state = u32::from(seed) | 0x100;
    let mut rest = stream;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state as usize % 16 + 1).min(rest.len());
        pieces.push(&rest[..n]);
        rest = &rest[n..];
    }
    pieces
}

// ---------------------------------------------------------------------------------------------
// Handshake state machine
// ---------------------------------------------------------------------------------------------

const NET: Network = Network::Testnet;
const OUR_BOOT: u64 = 0xB0B;
const PEER_BOOT: u64 = 0xA11CE;
const OUR_SEQ: u64 = 7;
const PEER_SEQ: u64 = 1;

/// Us: the higher address of the pair.
fn us() -> LocalInfo {
    LocalInfo {
        network: NET,
        addr: "127.0.0.3:24100".parse().expect("literal"),
        boot_id: OUR_BOOT,
        masternode: true,
        agent: "timed/fuzz".into(),
        handshake_timeout: Duration::from_secs(10),
        ping_interval: Duration::from_secs(30),
        ping_timeout: Duration::from_secs(90),
    }
}

/// The peer: the lower address, so it dials us in the inbound case.
fn peer_addr() -> SocketAddr {
    "127.0.0.2:24100".parse().expect("literal")
}

/// The peer's `Hello`: correct for 0, 1 (address unknown) and 7 (our counter echoed, as an
/// acceptor does); otherwise one of the handshakes the protocol must refuse.
fn peer_hello(variant: u8) -> Hello {
    let mut hello = Hello {
        network: NET,
        version: PROTOCOL_VERSION,
        min_version: MIN_PROTOCOL_VERSION,
        addr: peer_addr(),
        boot_id: PEER_BOOT,
        seq: PEER_SEQ,
        masternode: true,
        agent: "timed/peer".into(),
    };
    match variant % 8 {
        0 => {}
        1 => hello.addr = "0.0.0.0:24100".parse().expect("literal"),
        2 => hello.network = Network::Mainnet,
        3 => {
            hello.version = MIN_PROTOCOL_VERSION.saturating_sub(1);
            hello.min_version = 0;
        }
        4 => hello.min_version = PROTOCOL_VERSION + 1,
        5 => hello.addr = "127.0.0.9:24100".parse().expect("literal"),
        6 => hello.boot_id = OUR_BOOT,
        _ => hello.seq = OUR_SEQ,
    }
    hello
}

/// Reads the fuzzer's bytes as a script; everything past the end reads as zeros, so every
/// input is a valid script.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        taken
    }

    /// An absolute time, not a step: consecutive times jump forwards, stand still or run
    /// backwards as the bytes please. The top two bits pick the scale, so both the
    /// millisecond races around a deadline and jumps of days are reachable.
    fn time(&mut self) -> Duration {
        let v = self.u16();
        let unit = [1, 10, 1_000, 1 << 20][usize::from(v >> 14)];
        Duration::from_millis(u64::from(v & 0x3fff) * unit)
    }
}

/// One session (inbound if `data[0]` is even, else outbound) driven by a script read from the
/// rest of `data`: raw bytes, well-formed frames of every kind (correct and refusable
/// handshakes among them, so the fuzzer reaches the later states), the registry's verdicts,
/// EOF, socket errors, partial writes, the kernel's backlog reports and ticks, each at a time
/// of its own that may lie before the last one. [`Invariants`] is checked after every step.
/// Returns how far the session got, so seeds can be checked to reach the states they are for.
pub fn handshake(data: &[u8]) -> Reached {
    let mut script = Script(data);
    let outbound = script.byte() & 1 == 1;
    let start = script.time();
    let mut s = if outbound {
        Session::outbound(us(), peer_addr(), OUR_SEQ, start)
    } else {
        // The peer's dial arrives from its own IP with an ephemeral port.
        Session::inbound(us(), "127.0.0.2:40000".parse().expect("literal"), start)
    };
    let mut check = Invariants::new(NET);
    check.after_step(&mut s);
    while !script.0.is_empty() {
        match script.byte() % 12 {
            0 => {
                let len = usize::from(script.byte());
                let bytes = script.bytes(len).to_vec();
                s.on_data(&bytes, script.time());
            }
            1 => {
                let hello = peer_hello(script.byte());
                s.on_data(&wire::encode(NET, &Message::Hello(hello)), script.time());
            }
            2 => s.on_data(&wire::encode(NET, &Message::Ack), script.time()),
            3 => {
                let nonce = u64::from(script.u16());
                s.on_data(&wire::encode(NET, &Message::Ping(nonce)), script.time());
            }
            4 => {
                // A pong answering one of our first pings (nonces are `seq << 32 ^ count`),
                // for either end's counter, or an unsolicited one.
                let n = script.byte();
                let seq = if n & 0x80 == 0 { OUR_SEQ } else { PEER_SEQ };
                let nonce = (seq << 32) ^ u64::from(n & 0x7f);
                s.on_data(&wire::encode(NET, &Message::Pong(nonce)), script.time());
            }
            5 => {
                let reason = Reason::from_code(script.byte());
                s.on_data(
                    &wire::encode(NET, &Message::Disconnect(reason)),
                    script.time(),
                );
            }
            6 => s.on_tick(script.time()),
            7 => s.accept(script.time()),
            8 => s.close(Reason::from_code(script.byte()), script.time()),
            9 => {
                // The socket took part of our output, and maybe then our FIN.
                let n = usize::from(script.u16()) % (s.pending_output().len() + 1);
                check.written(&s.pending_output()[..n]);
                s.consume_output(n);
                if s.wants_fin() {
                    s.fin_sent();
                }
            }
            10 => {
                // Any claim, even more than was ever written: the session must cope.
                let unsent = usize::from(script.u16());
                s.on_transport_backlog(unsent, script.time());
            }
            _ => match script.byte() % 3 {
                0 => s.on_eof(script.time()),
                1 => s.on_io_error("injected".into()),
                _ => {
                    let _ = s.next_deadline();
                }
            },
        }
        check.after_step(&mut s);
        if s.is_established() {
            check.reached.established = true;
        }
    }
    check.reached
}

/// How far one run of [`handshake`] got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reached {
    /// The session reported the completed handshake.
    pub handshaken: bool,
    /// The registry's acceptance took effect.
    pub established: bool,
    /// The peer confirmed the connection (pinged after both verdicts).
    pub confirmed: bool,
    /// The session rejected bad input (and said why).
    pub rejected: bool,
    /// The session ended.
    pub closed: bool,
}

/// What must hold of a session after every call, whatever its input and clock did. Also used
/// by the session's own property tests.
#[derive(Debug)]
pub struct Invariants {
    closed: u32,
    rejected: u32,
    handshaken: u32,
    /// Decodes what the session wrote: it must only ever write well-formed frames.
    output: FrameDecoder,
    reached: Reached,
}

impl Invariants {
    /// Nothing seen yet, for a session of `network`.
    pub fn new(network: Network) -> Self {
        Invariants {
            closed: 0,
            rejected: 0,
            handshaken: 0,
            output: FrameDecoder::new(network),
            reached: Reached::default(),
        }
    }

    /// Checks the session's state and drains its events, checking each. Panics on a
    /// violation.
    pub fn after_step(&mut self, s: &mut Session) {
        while let Some(event) = s.poll_event() {
            assert_eq!(self.closed, 0, "event after Closed: {event:?}");
            match event {
                SessionEvent::Closed(_) => self.closed += 1,
                SessionEvent::Rejected { .. } => self.rejected += 1,
                SessionEvent::Handshaken(_) => self.handshaken += 1,
                SessionEvent::Heard { .. } => {
                    assert_eq!(self.handshaken, 1, "Heard before the handshake completed");
                }
                SessionEvent::Confirmed => {
                    assert_eq!(
                        self.handshaken, 1,
                        "Confirmed before the handshake completed"
                    );
                    assert!(!self.reached.confirmed, "Confirmed twice");
                    self.reached.confirmed = true;
                }
            }
        }
        assert!(self.rejected <= 1, "rejected {} times", self.rejected);
        assert!(self.handshaken <= 1, "handshaken {} times", self.handshaken);
        // Until the handshake completes a frame may be only small (strangers must not make
        // us hold a megabyte each); afterwards one full frame.
        let limit = if self.handshaken == 0 && !s.is_closing() {
            MAX_HANDSHAKE_FRAME
        } else {
            MAX_FRAME
        };
        assert!(
            s.buffered_input() <= HEADER_LEN + limit,
            "{} input bytes held (limit {limit})",
            s.buffered_input()
        );
        assert!(
            s.pending_output().len() <= MAX_SEND_QUEUE + 128,
            "send queue grew to {} bytes",
            s.pending_output().len()
        );
        if self.rejected == 1 {
            assert!(s.is_closing(), "rejected but still open");
        }
        if s.is_closing() {
            assert_eq!(self.closed, 1, "closing without a Closed event");
        }
        if s.is_established() {
            assert_eq!(self.handshaken, 1, "established without a handshake");
        }
        if s.is_done() {
            assert_eq!(s.next_deadline(), None, "a finished session wants ticks");
        }
        self.reached.handshaken = self.handshaken == 1;
        self.reached.rejected = self.rejected == 1;
        self.reached.closed = self.closed == 1;
    }

    /// The driver wrote `bytes` of the session's output to the socket.
    pub fn written(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.output.decode(&mut bytes) {
                Ok(_) => {}
                Err(e) => panic!("the session wrote a malformed frame: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_the_stream_in_small_pieces() {
        let stream: Vec<u8> = (0..=255).collect();
        for seed in [0, 1, 127, 255] {
            let pieces = split(&stream, seed);
            assert!(pieces.iter().all(|p| (1..=16).contains(&p.len())));
            assert_eq!(pieces.concat(), stream);
        }
    }

    #[test]
    fn script_times_reach_every_scale_and_run_backwards() {
        let mut script = Script(&[0xff, 0xff, 0x05, 0x00, 0x00]);
        assert_eq!(script.time(), Duration::from_millis(0x3fff << 20));
        assert_eq!(script.time(), Duration::from_millis(5));
        // Past the end the script reads zeros.
        assert_eq!(script.time(), Duration::ZERO);
    }

    #[test]
    fn every_target_name_runs() {
        for target in TARGETS {
            run(target, &[]);
            run(target, &[1, 2, 3]);
        }
    }

    #[test]
    #[should_panic(expected = "closing without a Closed event")]
    fn invariants_catch_a_silent_close() {
        // A session that closes but whose Closed event was swallowed must be caught.
        let mut s = Session::inbound(us(), "127.0.0.2:40000".parse().unwrap(), Duration::ZERO);
        s.on_data(b"garbage!", Duration::ZERO);
        while s.poll_event().is_some() {}
        Invariants::new(NET).after_step(&mut s);
    }
}
