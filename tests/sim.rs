//! The deterministic simulator, as CI runs it: the daemon's rules over a thousand seeds, and
//! proof that each check can fail — deliberately broken policies are caught by the check
//! that guards against them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use timed::rules::{self, Contender, Policy, Survivor};
use timed::sim::{self, Check, Report, SimConfig};

/// Runs `seeds` seeds over two threads; returns every failing report.
fn failures(
    seeds: std::ops::RangeInclusive<u64>,
    config: impl Fn(u64) -> SimConfig + Sync,
) -> Vec<Report> {
    let seeds: Vec<u64> = seeds.collect();
    let next = AtomicU64::new(0);
    let failed = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(seed) = seeds.get(i) else { break };
                let report = sim::run(&config(*seed));
                if !report.passed() {
                    failed.lock().unwrap().push(report);
                }
            });
        }
    });
    let mut failed = failed.into_inner().unwrap();
    failed.sort_by_key(|r| r.seed);
    failed
}

fn describe(failed: &[Report]) -> String {
    failed
        .iter()
        .take(5)
        .map(|r| {
            let config = SimConfig::new(r.seed, 5);
            format!(
                "{}\n  replay: {}",
                r.violations[0],
                sim::replay_command(&config)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_daemon_rules_hold_over_a_thousand_seeds_with_faults() {
    let failed = failures(1..=1000, |seed| SimConfig::new(seed, 5));
    assert!(
        failed.is_empty(),
        "{} seeds failed:\n{}",
        failed.len(),
        describe(&failed)
    );
}

#[test]
fn fault_free_meshes_form_with_one_handshake_per_link() {
    let failed = failures(1..=200, |seed| SimConfig {
        faults: false,
        ..SimConfig::new(seed, 7)
    });
    assert!(
        failed.is_empty(),
        "{} seeds failed:\n{}",
        failed.len(),
        describe(&failed)
    );
}

/// Seeds kept for good. 9, 10, 29, 32 and 33 found a daemon bug: a designated dialer whose
/// dial to a NAT'd peer failed while the peer's fallback link was up redialed without backoff
/// (every connect timeout instead of growing to `reconnectmax`). 4262, 6865, 9455 and 9819
/// found another: the failure of a dial given up when its peer was unlisted was charged to the
/// peer's backoff once it was listed again. 1741 (a crash before a node's start) and the others
/// once exposed a
/// wrong assumption of the simulator: a list edited before the node started (14, 23), a
/// half-open link that looks established until liveness notices (45), a fallback link the
/// designated dialer must replace (6, 17, 20).
#[test]
fn regression_seeds() {
    for seed in [
        6, 9, 10, 14, 17, 20, 23, 29, 32, 33, 45, 1741, 4262, 6865, 9455, 9819,
    ] {
        let report = sim::run(&SimConfig::new(seed, 5));
        assert!(report.passed(), "{}", report.violations[0]);
        assert_eq!(report.links, report.expected_links, "seed {seed}");
    }
}

#[test]
fn a_seed_replays_exactly() {
    let a = sim::run(&SimConfig::new(77, 5));
    let b = sim::run(&SimConfig::new(77, 5));
    assert_eq!(
        (a.steps, a.handshakes, a.convergence),
        (b.steps, b.handshakes, b.convergence)
    );
}

/// The report of the first seed (of `seeds`) whose run under `policy` is `found`.
fn first_report(
    policy: Policy,
    faults: bool,
    nodes: usize,
    seeds: u64,
    found: impl Fn(&Report) -> bool,
) -> Option<Report> {
    (1..=seeds).find_map(|seed| {
        let config = SimConfig {
            faults,
            policy,
            ..SimConfig::new(seed, nodes)
        };
        Some(sim::run(&config)).filter(|r| found(r))
    })
}

/// The first seed (of `seeds`) on which `policy` breaks `check`.
fn caught(policy: Policy, faults: bool, nodes: usize, seeds: u64, check: Check) -> Option<Report> {
    first_report(policy, faults, nodes, seeds, |r| {
        r.violations.iter().any(|v| v.check == check)
    })
}

fn string_order(local: SocketAddr, remote: SocketAddr) -> bool {
    local.to_string() < remote.to_string()
}

#[test]
fn broken_string_comparison_is_caught_by_lower_dialer_survives() {
    let policy = Policy {
        should_dial: string_order,
        ..Policy::STANDARD
    };
    let report = caught(policy, false, 5, 20, Check::LowerDialerSurvives);
    assert!(
        report.is_some(),
        "comparing addresses as strings went unnoticed"
    );
}

#[test]
fn broken_both_sides_dial_is_caught_by_one_handshake_per_link() {
    let policy = Policy {
        should_dial: |_, _| true,
        ..Policy::STANDARD
    };
    let report = caught(policy, false, 5, 20, Check::OneHandshakePerLink);
    assert!(report.is_some(), "both sides dialing went unnoticed");
}

#[test]
fn broken_first_connection_wins_before_handshake_is_caught_by_lower_dialer_survives() {
    // Refusing a second connection at accept time lets a fallback link block the designated
    // dialer's for good.
    let policy = Policy {
        judge_after_handshake: false,
        ..Policy::STANDARD
    };
    let report = caught(policy, true, 5, 50, Check::LowerDialerSurvives);
    assert!(
        report.is_some(),
        "judging duplicates before the handshake went unnoticed"
    );
}

#[test]
fn broken_closing_the_loser_early_is_caught_by_loser_after_winner() {
    let policy = Policy {
        loser_waits_for_winner: false,
        ..Policy::STANDARD
    };
    let report = caught(policy, true, 5, 200, Check::LoserAfterWinner);
    assert!(
        report.is_some(),
        "closing the loser before the winner is established went unnoticed"
    );
}

#[test]
fn broken_closing_the_loser_before_the_peer_holds_the_winner_is_caught_by_loser_after_winner() {
    let policy = Policy {
        loser_waits_for_peer: false,
        ..Policy::STANDARD
    };
    let report = caught(policy, true, 5, 50, Check::LoserAfterWinner);
    assert!(
        report.is_some(),
        "closing the loser while the peer is still in the winner's handshake went unnoticed"
    );
}

fn newest_wins(existing: &Contender, new: &Contender) -> Survivor {
    let _ = (existing, new);
    Survivor::New
}

#[test]
fn broken_newest_connection_wins_is_caught_by_ends_agree_or_lower_dialer() {
    // "Last one wins" looks harmless at each end, but the two ends see the two connections
    // in opposite orders.
    let policy = Policy {
        resolve_duplicate: newest_wins,
        ..Policy::STANDARD
    };
    let report = first_report(policy, true, 5, 200, |r| !r.passed())
        .expect("arrival-order duplicate resolution went unnoticed");
    let check = report.violations[0].check;
    assert!(
        [
            Check::EndsAgree,
            Check::LowerDialerSurvives,
            Check::Converges,
            Check::NoDialStorm
        ]
        .contains(&check),
        "caught by an unexpected check: {}",
        report.violations[0]
    );
}

#[test]
fn the_standard_policy_is_the_rules_module() {
    let a: SocketAddr = "10.0.0.9:1".parse().unwrap();
    let b: SocketAddr = "10.0.0.10:1".parse().unwrap();
    assert_eq!(
        (Policy::STANDARD.should_dial)(a, b),
        rules::should_dial(a, b)
    );
}
