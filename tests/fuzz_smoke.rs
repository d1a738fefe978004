//! A short, deterministic smoke of the fuzz targets (`make fuzz` runs them for real): every
//! input of the seed corpus in `fuzz/corpus/<target>/`, then a fixed series of mutations of
//! them (bit flips, overwrites, insertions, deletions, cuts, splices), through the same
//! harnesses libFuzzer drives (`timed::fuzz`). Same inputs every run, so a failure here is
//! reproducible with the input it prints.
//!
//! The seeds are built here from the protocol's own types, so a wire format change that makes
//! the committed corpus stale fails `seed_corpus_is_current`; `TIMED_WRITE_CORPUS=1 cargo test
//! --test fuzz_smoke` rewrites it.

use std::fs;
use std::panic;
use std::path::PathBuf;

use timed::fuzz::{handshake, run, Reached, TARGETS};
use timed::wire::{encode, Hello, Message, Network, Reason, MAX_FRAME};

/// Mutated inputs per target and seed: about a second per target.
const MUTATIONS_PER_SEED: usize = 20_000;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

// ---------------------------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------------------------

fn hello() -> Hello {
    Hello {
        network: Network::Testnet,
        version: timed::wire::PROTOCOL_VERSION,
        min_version: timed::wire::MIN_PROTOCOL_VERSION,
        addr: "127.0.0.2:24100".parse().unwrap(),
        boot_id: 0xA11CE,
        seq: 1,
        masternode: true,
        agent: "timed/peer".into(),
    }
}

fn testnet(msgs: &[Message]) -> Vec<u8> {
    msgs.iter()
        .flat_map(|m| encode(Network::Testnet, m))
        .collect()
}

/// Seeds of the frame decoder: a control byte (bit 0 picks the network; the rest, how the
/// stream is split), then the stream.
fn decoder_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let with = |control: u8, stream: Vec<u8>| [vec![control], stream].concat();
    let every_message = testnet(&[
        Message::Hello(hello()),
        Message::Ack,
        Message::Ping(7),
        Message::Pong(7),
        Message::Disconnect(Reason::Duplicate),
    ]);
    let mut header_4gib = Network::Testnet.magic().to_vec();
    header_4gib.extend(u32::MAX.to_le_bytes());
    let mut header_max = Network::Testnet.magic().to_vec();
    header_max.extend((MAX_FRAME as u32).to_le_bytes());
    let mut header_over = Network::Testnet.magic().to_vec();
    header_over.extend((MAX_FRAME as u32 + 1).to_le_bytes());
    let mut unknown_type = Network::Testnet.magic().to_vec();
    unknown_type.extend(1u32.to_le_bytes());
    unknown_type.push(0x7f);
    let mut trailing = testnet(&[Message::Ack]);
    trailing[4] += 1;
    trailing.push(0);
    let ping = testnet(&[Message::Ping(u64::MAX)]);
    vec![
        ("every-message", with(0, every_message.clone())),
        ("every-message-split", with(0x5a, every_message.clone())),
        (
            "mainnet-hello",
            with(1, encode(Network::Mainnet, &Message::Hello(hello()))),
        ),
        ("other-network", with(1, every_message)),
        ("bad-magic", with(0, b"GET / HTTP/1.1\r\n\r\n".to_vec())),
        ("length-4gib", with(0, header_4gib)),
        ("length-max", with(0, header_max)),
        ("length-max-plus-one", with(0, header_over)),
        ("unknown-type", with(0, unknown_type)),
        ("trailing-byte", with(0, trailing)),
        ("truncated", with(0, ping[..ping.len() - 3].to_vec())),
        (
            "every-reason",
            with(
                2,
                testnet(
                    &(0..=11)
                        .map(|c| Message::Disconnect(Reason::from_code(c)))
                        .collect::<Vec<_>>(),
                ),
            ),
        ),
    ]
}

/// Seeds of the handshake script (see `timed::fuzz::handshake`): byte 0 picks the direction,
/// two bytes the start time; then operations, each an opcode and its arguments, times as two
/// little-endian bytes.
fn handshake_seeds() -> Vec<(&'static str, Vec<u8>)> {
    const T0: [u8; 2] = [0, 0];
    let t = |ms: u16| ms.to_le_bytes();
    let hello = |variant: u8, at: u16| [&[1, variant][..], &t(at)].concat();
    let ack = |at: u16| [&[2][..], &t(at)].concat();
    let accept = |at: u16| [&[7][..], &t(at)].concat();
    let drain_all = || vec![9, 0xff, 0xff];
    let tick = |at: u16| [&[6][..], &t(at)].concat();
    let pong = |n: u8, at: u16| [&[4, n][..], &t(at)].concat();
    let ping = |at: u16| [&[3, 9, 0][..], &t(at)].concat();
    let eof = |at: u16| [&[11, 0][..], &t(at)].concat();
    let handshake = |direction: u8, variant: u8| {
        [
            vec![direction],
            T0.to_vec(),
            hello(variant, 10),
            drain_all(),
            ack(20),
            accept(30),
            drain_all(),
            pong(1 | if direction == 0 { 0x80 } else { 0 }, 40),
            ping(50),
            drain_all(),
        ]
        .concat()
    };
    let mut seeds = vec![
        ("inbound-handshake", handshake(0, 0)),
        ("outbound-handshake", handshake(1, 0)),
        ("inbound-unknown-address", handshake(0, 1)),
    ];
    for (name, variant) in [
        ("wrong-network", 2),
        ("too-old", 3),
        ("too-new", 4),
        ("address-mismatch", 5),
        ("self", 6),
        ("echoed-seq", 7),
    ] {
        seeds.push((name, handshake(1, variant)));
    }
    seeds.extend([
        (
            "clock-runs-backwards",
            [
                handshake(0, 0),
                tick(0x7fff),
                tick(100),
                tick(0xffff),
                tick(0),
                eof(5),
                drain_all(),
                tick(0xbfff),
            ]
            .concat(),
        ),
        (
            "slowloris",
            [
                vec![0],
                T0.to_vec(),
                vec![0, 3],
                b"tmd".to_vec(),
                t(5).to_vec(),
                tick(0x4400),
            ]
            .concat(),
        ),
        (
            // A header announcing 64 KiB, then 5 KiB of its body before any handshake.
            "big-frame-before-handshake",
            [
                vec![0],
                T0.to_vec(),
                vec![0, 8],
                Network::Testnet.magic().to_vec(),
                (64u32 << 10).to_le_bytes().to_vec(),
                t(1).to_vec(),
                [vec![0, 255], vec![0x55; 255], t(2).to_vec()]
                    .concat()
                    .repeat(20),
            ]
            .concat(),
        ),
        (
            "ack-first",
            [vec![0], T0.to_vec(), ack(1), drain_all(), eof(2)].concat(),
        ),
        (
            "stalled-reader",
            [
                handshake(0, 0),
                vec![10, 0xff, 0x0f],
                t(60).to_vec(),
                tick(0x8000 | 9_100),
            ]
            .concat(),
        ),
    ]);
    seeds
}

fn seeds(target: &str) -> Vec<(&'static str, Vec<u8>)> {
    match target {
        "frame_decoder" => decoder_seeds(),
        "handshake" => handshake_seeds(),
        other => panic!("no seeds for {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Mutation
// ---------------------------------------------------------------------------------------------

/// xorshift64*: a fixed sequence, so every run tries the same inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four random edits of `input`, with `other` as a splice partner.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = [0, 0xff, 0x7f, 0x80, rng.next() as u8][rng.below(5)];
            }
            2 => out.insert(at, rng.next() as u8),
            3 if at < out.len() => {
                let n = rng.below(out.len() - at) + 1;
                out.drain(at..at + n);
            }
            4 => out.truncate(at),
            5 if !out.is_empty() => {
                // Repeat a piece: replays a message, a header or an operation.
                let from = rng.below(out.len());
                let n = rng.below(out.len() - from) + 1;
                let piece = out[from..from + n].to_vec();
                out.splice(at..at, piece);
            }
            _ => {
                let from = rng.below(other.len() + 1);
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
        }
    }
    out
}

fn run_reporting(target: &str, input: &[u8], what: &str) {
    if panic::catch_unwind(|| run(target, input)).is_err() {
        panic!("fuzz target {target} failed on {what}: {input:02x?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// The committed corpus holds every seed built above, byte for byte.
#[test]
fn seed_corpus_is_current() {
    let write = std::env::var_os("TIMED_WRITE_CORPUS").is_some();
    for target in TARGETS {
        let dir = corpus_dir(target);
        for (name, bytes) in seeds(target) {
            let path = dir.join(name);
            if write {
                fs::create_dir_all(&dir).unwrap();
                fs::write(&path, &bytes).unwrap();
            }
            let committed = fs::read(&path).unwrap_or_default();
            assert!(
                committed == bytes,
                "{} is missing or stale: TIMED_WRITE_CORPUS=1 cargo test --test fuzz_smoke",
                path.display()
            );
        }
    }
}

/// Each handshake seed gets where it is meant to, so the fuzzer starts from every state: a
/// seed that silently stopped reaching the established state would leave it unexplored.
#[test]
fn handshake_seeds_reach_their_states() {
    let reached = |name: &str| {
        let (_, script) = handshake_seeds()
            .into_iter()
            .find(|(n, _)| *n == name)
            .unwrap();
        handshake(&script)
    };
    let open = Reached {
        handshaken: true,
        established: true,
        confirmed: true,
        rejected: false,
        closed: false,
    };
    for name in [
        "inbound-handshake",
        "outbound-handshake",
        "inbound-unknown-address",
    ] {
        assert_eq!(reached(name), open, "{name}");
    }
    for name in [
        "wrong-network",
        "too-old",
        "too-new",
        "address-mismatch",
        "self",
        "slowloris",
        "big-frame-before-handshake",
        "ack-first",
    ] {
        let r = reached(name);
        assert!(r.rejected && r.closed && !r.established, "{name}: {r:?}");
    }
    for name in ["clock-runs-backwards", "stalled-reader"] {
        let r = reached(name);
        assert!(r.established && r.closed, "{name}: {r:?}");
    }
}

#[test]
fn frame_decoder_smoke() {
    smoke("frame_decoder");
}

#[test]
fn handshake_smoke() {
    smoke("handshake");
}

fn smoke(target: &str) {
    let mut corpus: Vec<(String, Vec<u8>)> = fs::read_dir(corpus_dir(target))
        .expect("the seed corpus")
        .map(|entry| {
            let path = entry.unwrap().path();
            (path.display().to_string(), fs::read(&path).unwrap())
        })
        .collect();
    corpus.sort();
    assert!(corpus.len() >= 5, "the {target} corpus is too small");
    let mut rng = Rng(0x7133_d5ee_d000_0001);
    for (i, (name, input)) in corpus.iter().enumerate() {
        run_reporting(target, input, name);
        let other = &corpus[(i + 1) % corpus.len()].1;
        for n in 0..MUTATIONS_PER_SEED {
            let mutated = mutate(&mut rng, input, other);
            run_reporting(target, &mutated, &format!("mutation {n} of {name}"));
        }
    }
}
