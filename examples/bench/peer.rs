//! The load generator's peer: a real protocol client (the library's own frames and
//! messages) that dials a node from a loopback address of its own, completes the handshake,
//! answers pings, measures round trips and closes the way the protocol says: `Disconnect`,
//! FIN, drain to the peer's FIN.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use timed::wire::{
    encode, FrameDecoder, Hello, Message, Network, Reason, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};

use crate::node::P2P_PORT;
use crate::sys;

/// Every read waits at most this long.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// One established connection to a node.
pub struct Peer {
    stream: TcpStream,
    decoder: FrameDecoder,
    queue: VecDeque<Message>,
    network: Network,
}

/// A random-enough 64-bit boot id (never the node's: that would be a self-connection).
fn boot_id(salt: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(salt);
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

impl Peer {
    /// Dials `node` from `src`, sends our `Hello` (claiming `src` as our P2P address), reads
    /// the node's `Hello` and `Ack` and sends our `Ack`. Returns the peer and the round trip
    /// from the start of the connect to the node's `Ack`.
    pub fn handshake(src: Ipv4Addr, node: SocketAddrV4) -> Result<(Peer, Duration), String> {
        let network = Network::Testnet;
        let start = Instant::now();
        let stream = sys::connect_from(src, node).map_err(|e| format!("connect {src}: {e}"))?;
        stream.set_read_timeout(Some(READ_TIMEOUT)).ok();
        stream.set_write_timeout(Some(READ_TIMEOUT)).ok();
        let mut peer = Peer {
            stream,
            decoder: FrameDecoder::new(network),
            queue: VecDeque::new(),
            network,
        };
        let hello = Hello {
            network,
            version: PROTOCOL_VERSION,
            min_version: MIN_PROTOCOL_VERSION,
            addr: SocketAddr::V4(SocketAddrV4::new(src, P2P_PORT)),
            boot_id: boot_id(u32::from(src) as u64),
            seq: 1,
            masternode: false,
            agent: "timed-bench".into(),
        };
        peer.send(&Message::Hello(hello))?;
        let mut got_hello = false;
        loop {
            match peer.recv()? {
                Message::Hello(_) => got_hello = true,
                Message::Ack if got_hello => break,
                Message::Disconnect(r) => return Err(format!("refused by the node: {r}")),
                other => return Err(format!("unexpected {} in the handshake", other.kind())),
            }
        }
        let rtt = start.elapsed();
        peer.send(&Message::Ack)?;
        Ok((peer, rtt))
    }

    fn send(&mut self, msg: &Message) -> Result<(), String> {
        self.stream
            .write_all(&encode(self.network, msg))
            .map_err(|e| format!("send {}: {e}", msg.kind()))
    }

    /// The next message (blocking, bounded by the read timeout).
    fn recv(&mut self) -> Result<Message, String> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(m) = self.queue.pop_front() {
                return Ok(m);
            }
            let n = match self.stream.read(&mut buf) {
                Ok(0) => return Err("the node closed the connection".into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read: {e}")),
            };
            let mut input = &buf[..n];
            while !input.is_empty() {
                match self.decoder.decode(&mut input) {
                    Ok(Some(m)) => self.queue.push_back(m),
                    Ok(None) => break,
                    Err(e) => return Err(format!("bad frame: {e}")),
                }
            }
        }
    }

    /// One `Ping` → `Pong` round trip; the node's own pings met on the way are answered.
    pub fn ping(&mut self, nonce: u64) -> Result<Duration, String> {
        let start = Instant::now();
        self.send(&Message::Ping(nonce))?;
        loop {
            match self.recv()? {
                Message::Pong(n) if n == nonce => return Ok(start.elapsed()),
                Message::Ping(n) => self.send(&Message::Pong(n))?,
                Message::Disconnect(r) => return Err(format!("disconnected: {r}")),
                _ => {}
            }
        }
    }

    /// Waits for the node's first ping (sent right after its verdict) and answers it, so the
    /// node has its round trip and nothing is left unread.
    pub fn answer_first_ping(&mut self) -> Result<(), String> {
        loop {
            match self.recv()? {
                Message::Ping(n) => return self.send(&Message::Pong(n)),
                Message::Disconnect(r) => return Err(format!("disconnected: {r}")),
                _ => {}
            }
        }
    }

    /// The protocol's graceful close: `Disconnect{shutdown}`, our FIN, then read and discard
    /// until the node's FIN, so our receive queue is empty and the close is never an RST.
    pub fn close(mut self) {
        let _ = self.send(&Message::Disconnect(Reason::Shutdown));
        let _ = self.stream.shutdown(Shutdown::Write);
        self.stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .ok();
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            match self.stream.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
}
