//! The wire format: frames, messages and the one bincode configuration both ends use.
//!
//! Byte-level documentation lives in `PROTOCOL.md`; the tests at the bottom pin the bytes it
//! shows, so the two cannot drift apart.

use serde::{Deserialize, Serialize};

/// Which network a node belongs to. Each has its own magic bytes and default port, so nodes
/// of different networks can never mistake each other's traffic for their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Network {
    /// The production network.
    Mainnet,
    /// The test network (the default).
    Testnet,
}

impl Network {
    /// The network's name as written in `timed.conf` and reported by the status endpoint.
    pub fn name(self) -> &'static str {
        match self {
            Network::Mainnet => "mainnet",
            Network::Testnet => "testnet",
        }
    }

    /// Parses a `network=` value.
    pub fn from_name(name: &str) -> Option<Network> {
        match name {
            "mainnet" => Some(Network::Mainnet),
            "testnet" => Some(Network::Testnet),
            _ => None,
        }
    }

    /// The P2P port used when an address is given without one.
    pub fn default_port(self) -> u16 {
        match self {
            Network::Mainnet => 24000,
            Network::Testnet => 24100,
        }
    }

    /// The four bytes every frame of this network starts with.
    pub fn magic(self) -> [u8; 4] {
        match self {
            Network::Mainnet => [0x74, 0x6d, 0x64, 0xd1],
            Network::Testnet => [0x74, 0x6d, 0x64, 0x7e],
        }
    }
}

/// Protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Oldest protocol version this build still talks to.
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// Hard maximum of a frame's payload. Checked on the length prefix, before any byte of the
/// payload is buffered, so a peer cannot make us allocate more than this per connection.
pub const MAX_FRAME: usize = 1 << 20;
/// Bytes before the payload: four magic bytes and a little-endian `u32` length.
pub const HEADER_LEN: usize = 8;
/// Longest agent string accepted in a `Hello`; it is only informational.
pub const MAX_AGENT_LEN: usize = 64;

/// Why a connection is being closed, carried by [`Message::Disconnect`].
///
/// On the wire a reason is one byte (see `PROTOCOL.md`); codes this build does not know
/// decode to [`Reason::Unknown`] so that a newer peer's new reason is not a protocol error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Another connection between the same two nodes won.
    Duplicate,
    /// The peer is this very process (its boot id is ours).
    SelfConnection,
    /// The peer belongs to another network.
    WrongNetwork,
    /// No protocol version both sides speak.
    IncompatibleVersion,
    /// The claimed P2P address does not match the connection.
    AddressMismatch,
    /// No room for another peer.
    TooManyPeers,
    /// The sender is shutting down.
    Shutdown,
    /// Handshake or liveness deadline passed.
    Timeout,
    /// The peer sent something the protocol does not allow.
    ProtocolViolation,
    /// The peer is no longer in this node's masternode or addnode list.
    Unlisted,
    /// A reason code this build does not know.
    Unknown(u8),
}

impl Reason {
    /// One-byte wire code.
    pub fn code(self) -> u8 {
        match self {
            Reason::Duplicate => 1,
            Reason::SelfConnection => 2,
            Reason::WrongNetwork => 3,
            Reason::IncompatibleVersion => 4,
            Reason::AddressMismatch => 5,
            Reason::TooManyPeers => 6,
            Reason::Shutdown => 7,
            Reason::Timeout => 8,
            Reason::ProtocolViolation => 9,
            Reason::Unlisted => 10,
            Reason::Unknown(code) => code,
        }
    }

    /// Inverse of [`Reason::code`].
    pub fn from_code(code: u8) -> Reason {
        match code {
            1 => Reason::Duplicate,
            2 => Reason::SelfConnection,
            3 => Reason::WrongNetwork,
            4 => Reason::IncompatibleVersion,
            5 => Reason::AddressMismatch,
            6 => Reason::TooManyPeers,
            7 => Reason::Shutdown,
            8 => Reason::Timeout,
            9 => Reason::ProtocolViolation,
            10 => Reason::Unlisted,
            other => Reason::Unknown(other),
        }
    }

    /// The name used in logs, metrics labels and `PROTOCOL.md`.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Duplicate => "duplicate",
            Reason::SelfConnection => "self",
            Reason::WrongNetwork => "wrong_network",
            Reason::IncompatibleVersion => "incompatible_version",
            Reason::AddressMismatch => "address_mismatch",
            Reason::TooManyPeers => "too_many_peers",
            Reason::Shutdown => "shutdown",
            Reason::Timeout => "timeout",
            Reason::ProtocolViolation => "protocol_violation",
            Reason::Unlisted => "unlisted",
            Reason::Unknown(_) => "unknown",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Unknown(code) => write!(f, "unknown({code})"),
            other => f.write_str(other.name()),
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.code())
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u8::deserialize(d).map(Reason::from_code)
    }
}

/// The handshake: everything each side must know about the other before the registry can
/// judge the connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's network (also implied by the magic; stated so a mismatch is explicit).
    pub network: Network,
    /// The protocol version the sender speaks.
    pub version: u32,
    /// The oldest version the sender accepts.
    pub min_version: u32,
    /// The sender's P2P address as the others know it. An unspecified IP means "unknown":
    /// the receiver then uses the connection's source IP with this port.
    pub addr: std::net::SocketAddr,
    /// Random per process start: equal to ours means we dialed ourselves; a new one from a
    /// known address means the peer restarted.
    pub boot_id: u64,
    /// The dialer's per-boot connection counter (the acceptor echoes the dialer's): between
    /// two connections dialed by the same node, the higher one is the newer.
    pub seq: u64,
    /// Whether the sender considers itself a masternode.
    pub masternode: bool,
    /// Free-form software name and version, e.g. `timed/0.1.0`.
    pub agent: String,
}

/// Every message of the protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// First message in each direction.
    Hello(Hello),
    /// Acknowledges the peer's `Hello`; the handshake is complete once both were exchanged.
    Ack,
    /// Liveness probe with a nonce.
    Ping(u64),
    /// Answer to a `Ping`, echoing its nonce.
    Pong(u64),
    /// The sender is closing the connection, and why. Nothing follows but its FIN.
    Disconnect(Reason),
}

impl Message {
    /// Short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Ack => "Ack",
            Message::Ping(_) => "Ping",
            Message::Pong(_) => "Pong",
            Message::Disconnect(_) => "Disconnect",
        }
    }
}

/// The one bincode configuration both ends use: little-endian, variable-length integers,
/// and a decode limit equal to the frame maximum.
fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME>()
}

/// Encodes one message as a complete frame of `network`.
pub fn encode(network: Network, msg: &Message) -> Vec<u8> {
    let payload = bincode::serde::encode_to_vec(msg, bincode_config())
        .expect("every message this build creates fits the frame limit");
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&network.magic());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.extend_from_slice(&payload);
    frame
}

/// Why incoming bytes were rejected. Any of these ends the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The frame starts with another network's magic.
    WrongNetwork,
    /// The frame starts with bytes that are no network's magic.
    BadMagic([u8; 4]),
    /// The length prefix exceeds [`MAX_FRAME`].
    TooLarge(u32),
    /// The payload is not a message this build understands.
    Undecodable(String),
}

impl WireError {
    /// The `Disconnect` reason this error earns.
    pub fn reason(&self) -> Reason {
        match self {
            WireError::WrongNetwork => Reason::WrongNetwork,
            _ => Reason::ProtocolViolation,
        }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::WrongNetwork => f.write_str("magic bytes of another network"),
            WireError::BadMagic(m) => write!(
                f,
                "bad magic bytes {:02x}{:02x}{:02x}{:02x}",
                m[0], m[1], m[2], m[3]
            ),
            WireError::TooLarge(len) => {
                write!(f, "frame length {len} exceeds the maximum of {MAX_FRAME}")
            }
            WireError::Undecodable(e) => write!(f, "undecodable frame: {e}"),
        }
    }
}

/// Reassembles frames from a byte stream. Holds at most one frame's worth of bytes: the
/// header is validated as soon as it is complete, so neither garbage nor a huge length
/// prefix ever makes it buffer more than [`HEADER_LEN`] + [`MAX_FRAME`].
#[derive(Debug)]
pub struct FrameDecoder {
    network: Network,
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder for frames of `network`.
    pub fn new(network: Network) -> Self {
        FrameDecoder {
            network,
            buf: Vec::new(),
        }
    }

    /// Bytes held for an incomplete frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Decodes the next complete message from `input`, taking what it needs from the front of
    /// `input` and leaving the rest there. `Ok(None)` means more bytes are needed (and all of
    /// `input` was taken).
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Message>, WireError> {
        // Header first, validated the moment it is complete.
        if self.buf.len() < HEADER_LEN {
            let want = HEADER_LEN - self.buf.len();
            let take = want.min(input.len());
            self.buf.extend_from_slice(&input[..take]);
            *input = &input[take..];
            let magic_seen = self.buf.len().min(4);
            let ours = self.network.magic();
            if self.buf[..magic_seen] != ours[..magic_seen] {
                return Err(self.magic_error());
            }
            if self.buf.len() < HEADER_LEN {
                return Ok(None);
            }
        }
        let len = u32::from_le_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
        if len as usize > MAX_FRAME {
            return Err(WireError::TooLarge(len));
        }
        let total = HEADER_LEN + len as usize;
        let take = (total - self.buf.len()).min(input.len());
        self.buf.extend_from_slice(&input[..take]);
        *input = &input[take..];
        if self.buf.len() < total {
            return Ok(None);
        }
        let result = decode_payload(&self.buf[HEADER_LEN..]);
        self.buf.clear();
        result.map(Some)
    }

    fn magic_error(&self) -> WireError {
        let mut magic = [0u8; 4];
        let n = self.buf.len().min(4);
        magic[..n].copy_from_slice(&self.buf[..n]);
        let other_network = [Network::Mainnet, Network::Testnet]
            .into_iter()
            .any(|net| net != self.network && net.magic() == magic);
        if other_network {
            WireError::WrongNetwork
        } else {
            WireError::BadMagic(magic)
        }
    }
}

/// Decodes a payload that must be exactly one message.
fn decode_payload(payload: &[u8]) -> Result<Message, WireError> {
    let (msg, used): (Message, usize) =
        bincode::serde::decode_from_slice(payload, bincode_config())
            .map_err(|e| WireError::Undecodable(e.to_string()))?;
    if used != payload.len() {
        return Err(WireError::Undecodable(format!(
            "{} trailing bytes after {}",
            payload.len() - used,
            msg.kind()
        )));
    }
    if let Message::Hello(h) = &msg {
        if h.agent.len() > MAX_AGENT_LEN {
            return Err(WireError::Undecodable(format!(
                "agent string of {} bytes (maximum {MAX_AGENT_LEN})",
                h.agent.len()
            )));
        }
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn sample_hello() -> Hello {
        Hello {
            network: Network::Testnet,
            version: 1,
            min_version: 1,
            addr: "127.0.0.2:24100".parse().unwrap(),
            boot_id: 0x0123_4567_89ab_cdef,
            seq: 1,
            masternode: true,
            agent: "timed/0.1.0".into(),
        }
    }

    fn decode_all(network: Network, mut bytes: &[u8]) -> Result<Vec<Message>, WireError> {
        let mut d = FrameDecoder::new(network);
        let mut out = Vec::new();
        while let Some(m) = d.decode(&mut bytes)? {
            out.push(m);
        }
        Ok(out)
    }

    /// The bytes PROTOCOL.md shows; if this test changes, so must the document.
    #[test]
    fn documented_bytes() {
        assert_eq!(
            hex(&encode(Network::Testnet, &Message::Ack)),
            "74 6d 64 7e 01 00 00 00 01"
        );
        assert_eq!(
            hex(&encode(Network::Testnet, &Message::Ping(1000))),
            "74 6d 64 7e 04 00 00 00 02 fb e8 03"
        );
        assert_eq!(
            hex(&encode(Network::Mainnet, &Message::Pong(7))),
            "74 6d 64 d1 02 00 00 00 03 07"
        );
        assert_eq!(
            hex(&encode(
                Network::Testnet,
                &Message::Disconnect(Reason::Duplicate)
            )),
            "74 6d 64 7e 02 00 00 00 04 01"
        );
        assert_eq!(
            hex(&encode(Network::Testnet, &Message::Hello(sample_hello()))),
            "74 6d 64 7e 23 00 00 00 00 01 01 01 00 7f 00 00 02 fb 24 5e \
             fd ef cd ab 89 67 45 23 01 01 01 0b 74 69 6d 65 64 2f 30 2e 31 2e 30"
        );
    }

    #[test]
    fn every_message_round_trips() {
        let mut v6 = sample_hello();
        v6.addr = "[2001:db8::1]:24000".parse().unwrap();
        v6.network = Network::Mainnet;
        let msgs = [
            Message::Hello(sample_hello()),
            Message::Hello(v6),
            Message::Ack,
            Message::Ping(u64::MAX),
            Message::Pong(0),
            Message::Disconnect(Reason::Shutdown),
            Message::Disconnect(Reason::Unknown(200)),
        ];
        for m in msgs {
            for net in [Network::Mainnet, Network::Testnet] {
                assert_eq!(decode_all(net, &encode(net, &m)).unwrap(), vec![m.clone()]);
            }
        }
    }

    #[test]
    fn reasons_have_stable_codes_and_names() {
        for code in 0..=255u8 {
            assert_eq!(Reason::from_code(code).code(), code);
        }
        let names: Vec<&str> = (1..=10).map(|c| Reason::from_code(c).name()).collect();
        assert_eq!(
            names,
            [
                "duplicate",
                "self",
                "wrong_network",
                "incompatible_version",
                "address_mismatch",
                "too_many_peers",
                "shutdown",
                "timeout",
                "protocol_violation",
                "unlisted"
            ]
        );
        assert_eq!(Reason::from_code(99).to_string(), "unknown(99)");
    }

    #[test]
    fn one_byte_at_a_time_decodes() {
        let mut stream = encode(Network::Testnet, &Message::Hello(sample_hello()));
        stream.extend(encode(Network::Testnet, &Message::Ack));
        let mut d = FrameDecoder::new(Network::Testnet);
        let mut got = Vec::new();
        for b in &stream {
            let mut one: &[u8] = std::slice::from_ref(b);
            if let Some(m) = d.decode(&mut one).unwrap() {
                got.push(m);
            }
            assert!(one.is_empty());
        }
        assert_eq!(got, vec![Message::Hello(sample_hello()), Message::Ack]);
    }

    #[test]
    fn oversized_length_is_rejected_from_the_header_alone() {
        let mut header = Network::Testnet.magic().to_vec();
        header.extend(((MAX_FRAME + 1) as u32).to_le_bytes());
        let mut d = FrameDecoder::new(Network::Testnet);
        let mut input = header.as_slice();
        assert_eq!(
            d.decode(&mut input),
            Err(WireError::TooLarge(MAX_FRAME as u32 + 1))
        );
        assert!(d.buffered() <= HEADER_LEN);

        let mut header = Network::Testnet.magic().to_vec();
        header.extend(u32::MAX.to_le_bytes());
        assert_eq!(
            decode_all(Network::Testnet, &header),
            Err(WireError::TooLarge(u32::MAX))
        );
    }

    #[test]
    fn a_frame_of_exactly_the_maximum_is_read_then_judged_by_its_content() {
        let mut frame = Network::Testnet.magic().to_vec();
        frame.extend((MAX_FRAME as u32).to_le_bytes());
        frame.extend(std::iter::repeat(0xff).take(MAX_FRAME));
        let mut d = FrameDecoder::new(Network::Testnet);
        let mut input = frame.as_slice();
        match d.decode(&mut input) {
            Err(WireError::Undecodable(_)) => {}
            other => panic!("expected an undecodable payload, got {other:?}"),
        }
        assert_eq!(d.buffered(), 0, "the frame is dropped after judging");
    }

    #[test]
    fn magic_errors() {
        assert_eq!(
            decode_all(Network::Testnet, &encode(Network::Mainnet, &Message::Ack)),
            Err(WireError::WrongNetwork)
        );
        // Garbage is caught within its first header's worth of bytes.
        let mut d = FrameDecoder::new(Network::Testnet);
        let mut input: &[u8] = b"GET / HTTP/1.1\r\n";
        assert_eq!(d.decode(&mut input), Err(WireError::BadMagic(*b"GET ")));
        assert!(d.buffered() <= HEADER_LEN);
        // Even one byte at a time: the first wrong byte ends it.
        let mut d = FrameDecoder::new(Network::Testnet);
        let mut input: &[u8] = b"t";
        assert_eq!(d.decode(&mut input), Ok(None));
        let mut input: &[u8] = b"x";
        assert!(matches!(d.decode(&mut input), Err(WireError::BadMagic(_))));
    }

    #[test]
    fn payload_must_be_exactly_one_message() {
        let mut frame = encode(Network::Testnet, &Message::Pong(7));
        frame[4] += 1; // claim one more byte
        frame.push(0);
        assert!(matches!(
            decode_all(Network::Testnet, &frame),
            Err(WireError::Undecodable(_))
        ));
        // Unknown message type.
        let mut frame = Network::Testnet.magic().to_vec();
        frame.extend(1u32.to_le_bytes());
        frame.push(42);
        assert!(matches!(
            decode_all(Network::Testnet, &frame),
            Err(WireError::Undecodable(_))
        ));
        // An empty payload.
        let mut frame = Network::Testnet.magic().to_vec();
        frame.extend(0u32.to_le_bytes());
        assert!(matches!(
            decode_all(Network::Testnet, &frame),
            Err(WireError::Undecodable(_))
        ));
    }

    #[test]
    fn long_agent_is_rejected() {
        let mut h = sample_hello();
        h.agent = "x".repeat(MAX_AGENT_LEN + 1);
        let frame = encode(Network::Testnet, &Message::Hello(h));
        assert!(matches!(
            decode_all(Network::Testnet, &frame),
            Err(WireError::Undecodable(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_nor_overbuffer(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..32)) {
            let mut d = FrameDecoder::new(Network::Testnet);
            'outer: for chunk in &chunks {
                let mut input = chunk.as_slice();
                while !input.is_empty() {
                    match d.decode(&mut input) {
                        Ok(_) => {}
                        Err(_) => break 'outer,
                    }
                    prop_assert!(d.buffered() <= HEADER_LEN + MAX_FRAME);
                }
            }
        }

        #[test]
        fn valid_frames_survive_any_split(ping in any::<u64>(), cut in 0usize..40) {
            let mut stream = encode(Network::Testnet, &Message::Ping(ping));
            stream.extend(encode(Network::Testnet, &Message::Hello(sample_hello())));
            let cut = cut.min(stream.len());
            let mut d = FrameDecoder::new(Network::Testnet);
            let mut got = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                let mut input = part;
                while let Some(m) = d.decode(&mut input).unwrap() {
                    got.push(m);
                }
            }
            prop_assert_eq!(got, vec![Message::Ping(ping), Message::Hello(sample_hello())]);
        }
    }
}
