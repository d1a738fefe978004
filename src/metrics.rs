//! `GET /metrics`: the registry's counters in the Prometheus text exposition format.
//!
//! Counters are plain fields the registry state machine bumps as it decides; bytes are
//! counted by the workers in two process-wide atomics, so the hot path never talks to the
//! registry. No label carries a peer address: the series count stays fixed however many
//! peers come and go.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::status::ConsensusInfo;
use crate::wire::Reason;

/// Bytes read from peers, all connections together.
pub static BYTES_IN: AtomicU64 = AtomicU64::new(0);
/// Bytes written to peers, all connections together.
pub static BYTES_OUT: AtomicU64 = AtomicU64::new(0);

/// Why a wanted dial was not made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Skip {
    /// The direction rule: the peer is the lower address and dials us.
    Direction,
    /// A connection to the peer already exists.
    Connected,
    /// The backoff delay has not passed.
    Backoff,
}

impl Skip {
    fn name(self) -> &'static str {
        match self {
            Skip::Direction => "direction",
            Skip::Connected => "connected",
            Skip::Backoff => "backoff",
        }
    }
}

/// Every reason label a counter can carry, so each series exists (at 0) from the start.
const REASONS: [Reason; 10] = [
    Reason::Duplicate,
    Reason::SelfConnection,
    Reason::WrongNetwork,
    Reason::IncompatibleVersion,
    Reason::AddressMismatch,
    Reason::TooManyPeers,
    Reason::Shutdown,
    Reason::Timeout,
    Reason::ProtocolViolation,
    Reason::Unlisted,
];

/// The registry's counters.
#[derive(Clone, Debug)]
pub struct Counters {
    handshakes: BTreeMap<&'static str, u64>,
    dials: u64,
    skipped: BTreeMap<&'static str, u64>,
    duplicates: u64,
    disconnects: BTreeMap<&'static str, u64>,
    rejected: BTreeMap<&'static str, u64>,
}

impl Default for Counters {
    fn default() -> Counters {
        let reasons = || {
            let mut m: BTreeMap<&'static str, u64> =
                REASONS.iter().map(|r| (r.name(), 0)).collect();
            m.insert("closed", 0);
            m.insert("error", 0);
            m
        };
        let mut handshakes = reasons();
        handshakes.insert("accepted", 0);
        Counters {
            handshakes,
            dials: 0,
            skipped: [Skip::Direction, Skip::Connected, Skip::Backoff]
                .iter()
                .map(|s| (s.name(), 0))
                .collect(),
            duplicates: 0,
            disconnects: reasons(),
            rejected: REASONS.iter().map(|r| (r.name(), 0)).collect(),
        }
    }
}

/// The label for a close: the protocol reason, `closed` for a plain FIN, `error` for a
/// socket failure.
pub fn close_label(reason: Option<Reason>, eof: bool) -> &'static str {
    match (reason, eof) {
        (Some(r), _) => r.name(),
        (None, true) => "closed",
        (None, false) => "error",
    }
}

impl Counters {
    /// A handshake ended with `result` (`accepted` or the reason it was refused).
    pub fn handshake(&mut self, result: &'static str) {
        *self.handshakes.entry(result).or_default() += 1;
    }

    /// A dial was started.
    pub fn dial(&mut self) {
        self.dials += 1;
    }

    /// A wanted dial was skipped for `why` (counted once per change of reason, not per tick).
    pub fn skipped(&mut self, why: Skip) {
        *self.skipped.entry(why.name()).or_default() += 1;
    }

    /// A duplicate connection was resolved.
    pub fn duplicate(&mut self) {
        self.duplicates += 1;
    }

    /// An established connection ended.
    pub fn disconnect(&mut self, label: &'static str) {
        *self.disconnects.entry(label).or_default() += 1;
    }

    /// Bad input was rejected.
    pub fn rejected(&mut self, reason: Reason) {
        *self.rejected.entry(reason.name()).or_default() += 1;
    }

    /// The exposition text, with the gauges of `info`.
    pub fn render(&self, info: &ConsensusInfo) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(
                out,
                "# HELP timed_{name} {help}\n# TYPE timed_{name} {kind}"
            );
            for (labels, value) in samples {
                let _ = writeln!(out, "timed_{name}{labels} {value}");
            }
        };
        let one = |v: u64| vec![(String::new(), v)];
        let labelled = |label: &str, m: &BTreeMap<&'static str, u64>| -> Vec<(String, u64)> {
            m.iter()
                .map(|(k, v)| (format!("{{{label}=\"{k}\"}}"), *v))
                .collect()
        };
        family(
            "build_info",
            "gauge",
            "Build and network of this node (always 1).",
            &[(
                format!(
                    "{{version=\"{}\",network=\"{}\"}}",
                    info.version, info.network
                ),
                1,
            )],
        );
        family(
            "peers",
            "gauge",
            "Established connections by direction.",
            &[
                ("{direction=\"inbound\"}".into(), info.inbound as u64),
                ("{direction=\"outbound\"}".into(), info.outbound as u64),
            ],
        );
        family(
            "masternodes_active",
            "gauge",
            "This node (if a masternode) plus listed masternodes with an established link.",
            &one(info.active_masternodes as u64),
        );
        family(
            "masternodes_total",
            "gauge",
            "Listed masternodes, this node included.",
            &one(info.total_masternodes as u64),
        );
        family(
            "uptime_seconds",
            "gauge",
            "Seconds since the daemon started.",
            &one(info.uptime_secs),
        );
        family(
            "handshakes_total",
            "counter",
            "Handshakes by result: accepted, or why the connection was refused or failed.",
            &labelled("result", &self.handshakes),
        );
        family(
            "dials_total",
            "counter",
            "Outbound dials started.",
            &one(self.dials),
        );
        family(
            "dials_skipped_total",
            "counter",
            "Wanted dials not made, by reason (counted when the reason changes).",
            &labelled("reason", &self.skipped),
        );
        family(
            "duplicates_resolved_total",
            "counter",
            "Duplicate connections closed in favour of the surviving one.",
            &one(self.duplicates),
        );
        family(
            "disconnects_total",
            "counter",
            "Established connections that ended, by reason.",
            &labelled("reason", &self.disconnects),
        );
        family(
            "frames_rejected_total",
            "counter",
            "Bad input rejected, by the reason sent to the peer.",
            &labelled("reason", &self.rejected),
        );
        family(
            "bytes_total",
            "counter",
            "Bytes exchanged with peers.",
            &[
                (
                    "{direction=\"in\"}".into(),
                    BYTES_IN.load(Ordering::Relaxed),
                ),
                (
                    "{direction=\"out\"}".into(),
                    BYTES_OUT.load(Ordering::Relaxed),
                ),
            ],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ConsensusInfo {
        ConsensusInfo {
            network: "testnet".into(),
            version: "0.1.0".into(),
            local_address: None,
            masternode: true,
            active_masternodes: 3,
            total_masternodes: 4,
            connected_peers: 2,
            inbound: 1,
            outbound: 1,
            uptime_secs: 9,
        }
    }

    fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn every_family_has_help_and_type_and_starts_at_zero() {
        let text = Counters::default().render(&info());
        for family in [
            "build_info",
            "peers",
            "handshakes_total",
            "dials_total",
            "dials_skipped_total",
            "duplicates_resolved_total",
            "disconnects_total",
            "frames_rejected_total",
            "bytes_total",
        ] {
            assert!(
                text.contains(&format!("# HELP timed_{family} ")),
                "{family}"
            );
            assert!(
                text.contains(&format!("# TYPE timed_{family} ")),
                "{family}"
            );
        }
        assert_eq!(sample(&text, "timed_dials_total"), Some("0"));
        assert_eq!(
            sample(&text, "timed_handshakes_total{result=\"accepted\"}"),
            Some("0")
        );
        assert_eq!(
            sample(&text, "timed_dials_skipped_total{reason=\"direction\"}"),
            Some("0")
        );
        assert_eq!(
            sample(&text, "timed_peers{direction=\"inbound\"}"),
            Some("1")
        );
        assert_eq!(
            sample(
                &text,
                "timed_build_info{version=\"0.1.0\",network=\"testnet\"}"
            ),
            Some("1")
        );
        // Counters end in _total; no address ever appears in a label.
        for line in text
            .lines()
            .filter(|l| l.starts_with("# TYPE") && l.ends_with("counter"))
        {
            assert!(
                line.split(' ').nth(2).unwrap().ends_with("_total"),
                "{line}"
            );
        }
        assert!(!text.contains("127.0.0."));
    }

    #[test]
    fn counters_move() {
        let mut c = Counters::default();
        c.dial();
        c.handshake("accepted");
        c.skipped(Skip::Backoff);
        c.duplicate();
        c.disconnect(close_label(Some(Reason::Timeout), false));
        c.disconnect(close_label(None, true));
        c.rejected(Reason::WrongNetwork);
        let text = c.render(&info());
        assert_eq!(sample(&text, "timed_dials_total"), Some("1"));
        assert_eq!(
            sample(&text, "timed_handshakes_total{result=\"accepted\"}"),
            Some("1")
        );
        assert_eq!(
            sample(&text, "timed_dials_skipped_total{reason=\"backoff\"}"),
            Some("1")
        );
        assert_eq!(sample(&text, "timed_duplicates_resolved_total"), Some("1"));
        assert_eq!(
            sample(&text, "timed_disconnects_total{reason=\"timeout\"}"),
            Some("1")
        );
        assert_eq!(
            sample(&text, "timed_disconnects_total{reason=\"closed\"}"),
            Some("1")
        );
        assert_eq!(
            sample(
                &text,
                "timed_frames_rejected_total{reason=\"wrong_network\"}"
            ),
            Some("1")
        );
    }
}
