//! `make sim`: runs the deterministic simulator over many seeds and prints a summary.
//!
//! `cargo run --release --example sim -- [--seeds N] [--seed S] [--nodes K] [--faults 0|1]`
//! `--seed S` runs (replays) that one seed verbosely (with `TRACE=1` in the environment, every
//! registry decision too); `--seeds N` runs seeds 1..=N.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use timed::sim::{self, Report, SimConfig};

struct Args {
    seeds: u64,
    seed: Option<u64>,
    nodes: usize,
    faults: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        seeds: 1000,
        seed: None,
        nodes: 5,
        faults: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--seeds" => args.seeds = value()?.parse().map_err(|e| format!("--seeds: {e}"))?,
            "--seed" => args.seed = Some(value()?.parse().map_err(|e| format!("--seed: {e}"))?),
            "--nodes" => args.nodes = value()?.parse().map_err(|e| format!("--nodes: {e}"))?,
            "--faults" => args.faults = value()? != "0",
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if !(2..=200).contains(&args.nodes) {
        return Err("--nodes must be between 2 and 200".into());
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sim: {e}\nusage: sim [--seeds N] [--seed S] [--nodes K] [--faults 0|1]");
            return ExitCode::from(2);
        }
    };
    let config_for = |seed| SimConfig {
        faults: args.faults,
        trace: args.seed.is_some()
            && std::env::var("TRACE").is_ok_and(|v| !v.is_empty() && v != "0"),
        ..SimConfig::new(seed, args.nodes)
    };
    let started = Instant::now();
    let seeds: Vec<u64> = match args.seed {
        Some(s) => vec![s],
        None => (1..=args.seeds).collect(),
    };
    let next = AtomicU64::new(0);
    let reports: Mutex<Vec<Report>> = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(seed) = seeds.get(i) else { break };
                let report = sim::run(&config_for(*seed));
                reports.lock().unwrap().push(report);
            });
        }
    });
    let mut reports = reports.into_inner().unwrap();
    reports.sort_by_key(|r| r.seed);
    let failed: Vec<&Report> = reports.iter().filter(|r| !r.passed()).collect();
    let links: usize = reports.iter().map(|r| r.links).sum();
    let handshakes: usize = reports.iter().map(|r| r.handshakes).sum();
    let worst = reports
        .iter()
        .filter_map(|r| r.convergence)
        .max()
        .unwrap_or(Duration::ZERO);
    let steps: u64 = reports.iter().map(|r| r.steps).sum();
    println!(
        "sim: {} seeds, {} nodes, faults {}: {links} links formed, {:.2} handshakes per link, worst convergence {:.1} virtual s after the last fault, {steps} steps, {} violations, {:.1}s",
        reports.len(),
        args.nodes,
        if args.faults { "on" } else { "off" },
        handshakes as f64 / links.max(1) as f64,
        worst.as_secs_f64(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    for r in &failed {
        let v = &r.violations[0];
        let config = config_for(r.seed);
        println!("FAIL {v}");
        let scenario = sim::Scenario::generate(&config);
        let shrunk = sim::shrink(&config, &scenario, v.check);
        println!(
            "  shrunk from {} faults to {}: {:?}",
            scenario.faults.len(),
            shrunk.faults.len(),
            shrunk
        );
        println!("  replay: {}", sim::replay_command(&config));
    }
    if args.seed.is_some() && failed.is_empty() {
        let r = &reports[0];
        println!(
            "seed {}: {} of {} links, {} handshakes, convergence {:?}",
            r.seed, r.links, r.expected_links, r.handshakes, r.convergence
        );
        println!("{:?}", sim::Scenario::generate(&config_for(r.seed)));
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
