//! `make bench`: how fast the mesh forms, how quiet it stays, how small a node is.
//!
//! `cargo run --release --example bench -- [--reps N] [--idle SECS] [--peers N]
//! [--handshakes N] [--no-netns]` (the `timed` and `time-cli` release binaries must be
//! built: `make bench` does both).
//!
//! Real `timed` processes run on loopback addresses `127.x.y.z`, each listening, dialing and
//! serving its status endpoint on its own address. As root the benchmark re-executes itself
//! inside a fresh network namespace (`unshare -n`), so the kernel's TCP counters (what
//! `nstat` shows) count only its own traffic and nothing else on the machine can collide
//! with its addresses. It prints a table of every figure beside its goal and writes
//! `results.json`, `results.md` and `bench.svg` to `target/bench/`. It never fails because
//! a figure misses its goal; it fails only when it cannot measure.
//!
//! 1. Formation: N = 4, 16, 64 masternodes started together at default settings; time from
//!    the last start until every node's `/consensus_info` reports N-1 connected peers;
//!    handshakes and dials per link, dials skipped by the direction rule and duplicates
//!    resolved from `/metrics`; TCP resets from the namespace's counters.
//! 2. Steady state: a 16-node mesh idle for 60 s at default timings: CPU time
//!    (`/proc/PID/task/*/schedstat`), context switches, dials, disconnects, log lines.
//! 3. Memory: one node's RSS and threads at 0 to 1,000 peers, each peer a real handshake
//!    from its own loopback address.
//! 4. Latency: connect-to-`Ack` handshake round trips and `Ping`/`Pong` round trips.
//! 5. Binary: stripped sizes of `timed` and `time-cli`.

#[path = "bench/node.rs"]
mod node;
#[path = "bench/peer.rs"]
mod peer;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/sys.rs"]
mod sys;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use node::{stop_all, Metrics, Node, Spec, HTTP_REFUSED, P2P_PORT};
use peer::Peer;
use report::{FormationPoint, Goal, Row, Unit};

/// Set in the environment of the run inside the namespace.
const INNER_ENV: &str = "TIMED_BENCH_NETNS";

/// The goals of issue 7 (a 2-core machine).
const GOAL_FORMATION_MS: f64 = 1000.0;
const GOAL_CPU_PER_MIN: f64 = 0.01;
const GOAL_RSS_63_KIB: f64 = 8.0 * 1024.0;
const GOAL_PER_PEER_KIB: f64 = 48.0;
const GOAL_HANDSHAKE_P99_MS: f64 = 5.0;
const GOAL_TIMED_BYTES: f64 = 1.5 * 1024.0 * 1024.0;

struct Opts {
    reps: usize,
    idle: Duration,
    peers: usize,
    handshakes: usize,
    netns: bool,
    timed: Option<PathBuf>,
    only: Option<Vec<String>>,
}

impl Opts {
    fn wants(&self, section: &str) -> bool {
        match &self.only {
            None => true,
            Some(v) => v.iter().any(|s| s == section),
        }
    }
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        reps: 3,
        idle: Duration::from_secs(60),
        peers: 1000,
        handshakes: 400,
        netns: true,
        timed: None,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut num = |what: &str| -> Result<u64, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or(format!("{flag} needs {what}"))
        };
        match flag.as_str() {
            "--reps" => o.reps = num("a number of runs per N")?.max(1) as usize,
            "--idle" => o.idle = Duration::from_secs(num("seconds")?.max(1)),
            "--peers" => o.peers = num("a number of peers")?.clamp(64, 60000) as usize,
            "--handshakes" => o.handshakes = num("a number of handshakes")?.max(10) as usize,
            "--no-netns" => o.netns = false,
            "--timed" => {
                o.timed = Some(PathBuf::from(
                    it.next()
                        .ok_or("--timed needs the path of a timed binary")?,
                ))
            }
            "--only" => {
                let list = it.next().ok_or("--only needs a list of sections")?;
                o.only = Some(list.split(',').map(str::to_string).collect());
            }
            "-h" | "--help" => {
                println!(
                    "usage: bench [--reps N (3)] [--idle SECS (60)] [--peers N (1000)] \
                     [--handshakes N (400)] [--no-netns] [--timed PATH (another build)] \
                     [--only binary,formation,steady,memory,latency]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other} (try --help)")),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == sys::EXEC_AFTER_RELEASE) {
        sys::exec_after_release(&args[1..]);
    }
    let opts = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::from(2);
        }
    };
    let inner = std::env::var_os(INNER_ENV).is_some();
    let mut private = inner;
    if !inner && opts.netns {
        match netns_unavailable() {
            None => return reexec_in_netns(),
            Some(why) => eprintln!(
                "bench: WARNING: no private network namespace ({why}); running on the host's \
                 loopback: TCP counters are the whole host's and addresses may collide"
            ),
        }
    }
    if inner {
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status();
        if !matches!(up, Ok(s) if s.success()) {
            eprintln!("bench: `ip link set lo up` failed in the namespace (install iproute2)");
            return ExitCode::FAILURE;
        }
    } else {
        private = false;
    }
    sys::install_signal_cleanup();
    match run(&opts, private) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Why a private network namespace cannot be made here, if it cannot.
fn netns_unavailable() -> Option<String> {
    if !sys::is_root() {
        return Some("not root".into());
    }
    match Command::new("unshare")
        .args(["-n", "true"])
        .stdin(Stdio::null())
        .output()
    {
        Err(e) => Some(format!("cannot run unshare: {e}")),
        Ok(out) if !out.status.success() => Some(format!(
            "`unshare -n true` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// Runs this very program again inside a new network namespace and passes on its exit code.
fn reexec_in_netns() -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("bench: cannot find my own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut cmd = Command::new("unshare");
    cmd.arg("-n")
        .arg("--")
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(INNER_ENV, "1");
    sys::die_with_parent(&mut cmd);
    // Ctrl-C reaches the inner run too (same process group); this one just waits.
    // SAFETY: ignoring SIGINT/SIGTERM here; the inner run handles them and exits.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
    match cmd.status() {
        Ok(s) => ExitCode::from(s.code().unwrap_or(1).clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("bench: cannot run unshare: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Paths and settings shared by the phases.
struct Ctx {
    timed: PathBuf,
    cli: PathBuf,
    out: PathBuf,
    logs: PathBuf,
    conf: PathBuf,
    private: bool,
}

impl Ctx {
    fn spawn(&self, ip: Ipv4Addr, list: &[SocketAddrV4], extra: &[String], log: &str) -> Node {
        self.spawn_at(ip, list, extra, log, None)
    }

    fn spawn_at(
        &self,
        ip: Ipv4Addr,
        list: &[SocketAddrV4],
        extra: &[String],
        log: &str,
        barrier: Option<&sys::Barrier>,
    ) -> Node {
        Node::spawn(
            Spec {
                bin: &self.timed,
                conf: &self.conf,
                ip,
                masternodes: list,
                extra,
                log: self.logs.join(log),
            },
            barrier,
        )
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.timed.display()))
    }
}

fn run(opts: &Opts, private: bool) -> Result<(), String> {
    let started = Instant::now();
    // target/release/examples/bench → target/release (binaries) → target (output).
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let bin_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot locate the build directory")?
        .to_path_buf();
    let timed = opts.timed.clone().unwrap_or_else(|| bin_dir.join("timed"));
    let cli = bin_dir.join("time-cli");
    for b in [&timed, &cli] {
        if !b.is_file() {
            return Err(format!(
                "{} is missing: build it first (`cargo build --release`; `make bench` does)",
                b.display()
            ));
        }
    }
    let out = bin_dir
        .parent()
        .ok_or("cannot locate the target directory")?
        .join("bench");
    let logs = out.join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).map_err(|e| format!("create {}: {e}", logs.display()))?;
    let conf = out.join("empty.conf");
    std::fs::write(&conf, "# timed bench: everything is on the command line\n")
        .map_err(|e| format!("write {}: {e}", conf.display()))?;
    let nofile = sys::raise_nofile();
    let ctx = Ctx {
        timed,
        cli,
        out,
        logs,
        conf,
        private,
    };
    let machine = machine_info(private);
    println!(
        "bench: {} ({} CPUs, kernel {}), load {}, {}",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cpus"],
        machine["kernel"].as_str().unwrap_or("?"),
        machine["load_before"].as_str().unwrap_or("?"),
        if private {
            "in a private network namespace"
        } else {
            "on the host's loopback"
        }
    );
    let mut rows = Vec::new();
    let mut details = serde_json::Map::new();

    let mut phases = Vec::new();
    let mut phase = |name: &str| {
        let load = loadavg();
        println!(
            "bench: {name} ({:.0} s so far, load {load})",
            started.elapsed().as_secs_f64()
        );
        phases
            .push(json!({"phase": name, "at_secs": started.elapsed().as_secs_f64(), "load": load}));
    };

    if opts.wants("binary") {
        phase("binary sizes");
        details.insert("binary".into(), binaries(&ctx, &mut rows));
    }
    if opts.wants("latency") {
        phase("latency");
        details.insert("latency".into(), latency(&ctx, opts, &mut rows));
    }
    let mut points = Vec::new();
    if opts.wants("formation") {
        phase("formation");
        let (formation_json, p) = formation(&ctx, opts, &mut rows);
        details.insert("formation".into(), formation_json);
        points = p;
    }
    if opts.wants("steady") {
        phase("steady state");
        details.insert("steady".into(), steady(&ctx, opts, &mut rows));
    }
    let mut rss_points = Vec::new();
    if opts.wants("memory") {
        phase("memory");
        let (memory_json, p) = memory(&ctx, opts, nofile, &mut rows);
        details.insert("memory".into(), memory_json);
        rss_points = p;
    }

    details.insert("phases".into(), Value::Array(phases));
    // The table is ordered by section, as the issue lists them.
    let order = ["Formation", "Steady state", "Memory", "Latency", "Binary"];
    rows.sort_by_key(|r| order.iter().position(|s| r.section.starts_with(s)));

    let elapsed = started.elapsed().as_secs_f64();
    let mut machine = machine;
    machine["load_after"] = json!(loadavg());
    let caption = format!(
        "timed {} · {} · {} CPUs · Linux {} · {}",
        machine["commit"].as_str().unwrap_or("?"),
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cpus"],
        machine["kernel"].as_str().unwrap_or("?"),
        machine["date"].as_str().unwrap_or("?")
    );
    let table = report::table(&rows);
    println!();
    print!("{table}");
    println!(
        "machine: {} · {} CPUs · kernel {} · load {} before, {} after · {} · {}",
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cpus"],
        machine["kernel"].as_str().unwrap_or("?"),
        machine["load_before"].as_str().unwrap_or("?"),
        machine["load_after"].as_str().unwrap_or("?"),
        machine["date"].as_str().unwrap_or("?"),
        if private {
            "private network namespace"
        } else {
            "host loopback"
        }
    );
    let results = json!({
        "machine": machine,
        "duration_secs": elapsed,
        "figures": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        "details": Value::Object(details),
    });
    let write = |name: &str, text: &str| -> Result<PathBuf, String> {
        let p = ctx.out.join(name);
        std::fs::write(&p, text).map_err(|e| format!("write {}: {e}", p.display()))?;
        Ok(p)
    };
    let json_path = write(
        "results.json",
        &serde_json::to_string_pretty(&results).unwrap_or_default(),
    )?;
    let md = format!(
        "{}\nMachine: {} · {} CPUs · Linux {} · load average {} before, {} after · {} · \
         commit {} · `make bench` run time {:.0} s.\n",
        report::markdown(&rows),
        machine["cpu"].as_str().unwrap_or("?"),
        machine["cpus"],
        machine["kernel"].as_str().unwrap_or("?"),
        machine["load_before"].as_str().unwrap_or("?"),
        machine["load_after"].as_str().unwrap_or("?"),
        machine["date"].as_str().unwrap_or("?"),
        machine["commit"].as_str().unwrap_or("?"),
        elapsed
    );
    let md_path = write("results.md", &md)?;
    let svg_path = write("bench.svg", &report::svg(&rss_points, &points, &caption))?;
    println!(
        "bench: wrote {}, {} and {} in {elapsed:.0} s (node logs in {})",
        json_path.display(),
        md_path.display(),
        svg_path.display(),
        ctx.logs.display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Helpers

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn command_line(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn machine_info(private: bool) -> Value {
    let cpu = command_line("lscpu", &[])
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Model name:").map(|v| v.trim().to_string()))
        })
        .or_else(|| {
            std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
                t.lines().find_map(|l| {
                    l.strip_prefix("model name")
                        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
                })
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mem_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024);
    let commit = command_line("git", &["describe", "--always", "--dirty"]).unwrap_or_default();
    json!({
        "cpu": cpu,
        "cpus": cpus,
        "kernel": kernel,
        "memory_mib": mem_mib,
        "date": command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default(),
        "load_before": loadavg(),
        "commit": commit,
        "rustc": command_line("rustc", &["--version"]).unwrap_or_default(),
        "private_netns": private,
    })
}

/// The `p`-quantile (0..=1) of sorted samples (nearest rank).
fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[allow(clippy::too_many_arguments)]
fn row(
    rows: &mut Vec<Row>,
    key: impl Into<String>,
    section: &'static str,
    label: impl Into<String>,
    value: Option<f64>,
    unit: Unit,
    goal: Goal,
    note: Option<String>,
) {
    rows.push(Row {
        key: key.into(),
        section,
        label: label.into(),
        value,
        unit,
        goal,
        note,
    });
}

/// `n` loopback IPs `127.a.b.c` of block `a`, hosts numbered from 1 (skipping .0 and .255).
fn ips(block: u8, n: usize) -> Vec<Ipv4Addr> {
    (0..n)
        .map(|i| Ipv4Addr::new(127, block, (i / 250) as u8, (i % 250 + 1) as u8))
        .collect()
}

/// The kernel counters a reset shows up in.
const ABORTS: [&str; 5] = [
    "TcpExtTCPAbortOnClose",
    "TcpExtTCPAbortOnData",
    "TcpExtTCPAbortOnLinger",
    "TcpExtTCPAbortOnMemory",
    "TcpExtTCPAbortOnTimeout",
];

/// RSTs sent, split: those answering a connect to a port nobody listens on (each is also a
/// `TcpAttemptFails`: SYN-SENT → CLOSED on the dialer, in the same namespace) and the
/// rest, which reset a connection.
struct Resets {
    out_rsts: i64,
    refused: i64,
    resets: i64,
    aborts: i64,
    estab_resets: i64,
    /// Other counters that explain a slow formation (SYN retransmits, listen overflows).
    other: BTreeMap<String, i64>,
}

/// Counters kept in `results.json` beside the resets.
const EXPLAIN: [&str; 6] = [
    "TcpExtListenOverflows",
    "TcpExtListenDrops",
    "TcpExtTCPSynRetrans",
    "TcpRetransSegs",
    "TcpActiveOpens",
    "TcpPassiveOpens",
];

fn resets(d: &BTreeMap<String, i64>) -> Resets {
    let g = |k: &str| d.get(k).copied().unwrap_or(0);
    let out_rsts = g("TcpOutRsts");
    let refused = g("TcpAttemptFails");
    Resets {
        out_rsts,
        refused,
        resets: (out_rsts - refused).max(0),
        aborts: ABORTS.iter().map(|k| g(k)).sum(),
        estab_resets: g("TcpEstabResets"),
        other: EXPLAIN.iter().map(|k| (k.to_string(), g(k))).collect(),
    }
}

// ---------------------------------------------------------------------------------------
// 5. Binary

fn binaries(ctx: &Ctx, rows: &mut Vec<Row>) -> Value {
    let mut out = serde_json::Map::new();
    for (name, path, goal) in [
        ("timed", &ctx.timed, Goal::AtMost(GOAL_TIMED_BYTES)),
        ("time-cli", &ctx.cli, Goal::None),
    ] {
        let size = std::fs::metadata(path).map(|m| m.len()).ok();
        // The release profile strips (`strip = true`); strip a copy anyway to be sure the
        // figure is the stripped size.
        let copy = ctx.out.join(format!("{name}.stripped"));
        let stripped = Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(&copy)
            .arg(path)
            .status()
            .ok()
            .filter(|s| s.success())
            .and_then(|_| std::fs::metadata(&copy).ok())
            .map(|m| m.len());
        let _ = std::fs::remove_file(&copy);
        let value = stripped.or(size);
        out.insert(
            name.into(),
            json!({"file_bytes": size, "strip_all_bytes": stripped}),
        );
        row(
            rows,
            format!("binary.{name}_stripped_bytes"),
            "Binary (release profile)",
            format!("{name}, stripped"),
            value.map(|v| v as f64),
            Unit::BytesMib,
            goal,
            (name == "timed").then(|| {
                format!(
                    "file as built {} bytes, after `strip --strip-all` {} bytes",
                    size.map_or("?".into(), |v| v.to_string()),
                    stripped.map_or("? (no strip tool)".into(), |v| v.to_string())
                )
            }),
        );
    }
    Value::Object(out)
}

// ---------------------------------------------------------------------------------------
// 1. Formation

struct FormationRun {
    n: usize,
    formed: bool,
    ms: f64,
    handshakes: f64,
    accepted: f64,
    dials: f64,
    skipped_direction: f64,
    duplicates: f64,
    tcp: Resets,
    shutdown: Resets,
    http_refused: i64,
    killed: usize,
    fork_ms: f64,
    /// When each node first reported the full mesh, ms after the last start, sorted.
    node_ms: Vec<f64>,
    /// CPU time of all nodes from their start to 1 s after formation.
    cpu_secs: f64,
}

impl FormationRun {
    fn links(&self) -> f64 {
        (self.n * (self.n - 1) / 2) as f64
    }

    fn json(&self) -> Value {
        json!({
            "n": self.n,
            "formed": self.formed,
            "ms_after_last_start": self.ms,
            "handshakes_completed": self.handshakes,
            "handshakes_accepted": self.accepted,
            "handshakes_per_link": self.handshakes / 2.0 / self.links(),
            "dials": self.dials,
            "dials_per_link": self.dials / self.links(),
            "dials_skipped_direction": self.skipped_direction,
            "duplicates_resolved": self.duplicates,
            "tcp_out_rsts": self.tcp.out_rsts,
            "tcp_attempt_fails": self.tcp.refused,
            "tcp_resets": self.tcp.resets,
            "tcp_abort_counters": self.tcp.aborts,
            "tcp_estab_resets": self.tcp.estab_resets,
            "tcp_other": self.tcp.other,
            "node_done_ms": self.node_ms,
            "cpu_secs_all_nodes": self.cpu_secs,
            "status_polls_refused": self.http_refused,
            "shutdown_out_rsts": self.shutdown.out_rsts,
            "shutdown_resets": self.shutdown.resets,
            "shutdown_abort_counters": self.shutdown.aborts,
            "killed_after_sigterm": self.killed,
            "ms_to_fork_all_before_release": self.fork_ms,
        })
    }
}

fn formation_run(ctx: &Ctx, n: usize, block: u8, extra: &[String]) -> FormationRun {
    let hosts = ips(block, n);
    let list: Vec<SocketAddrV4> = hosts
        .iter()
        .map(|ip| SocketAddrV4::new(*ip, P2P_PORT))
        .collect();
    let before = sys::tcp_counters();
    let refused_before = HTTP_REFUSED.load(Ordering::Relaxed);
    // Every process is forked and waits at the barrier; releasing it starts all N at once
    // (in numeric order of address they would race the direction rule unequally).
    let barrier = sys::Barrier::new().expect("pipe for the start barrier");
    let forking = Instant::now();
    let mut nodes: Vec<Node> = hosts
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let log = format!("formation-{n}-{block}-{i}.log");
            ctx.spawn_at(*ip, &list, extra, &log, Some(&barrier))
        })
        .collect();
    let fork_ms = ms(forking.elapsed());
    barrier.release();
    let last_start = Instant::now();
    let want = (n - 1) as u64;
    let deadline = last_start + Duration::from_secs(30);
    // One node at a time, every 2 ms, in order: the mesh is formed when the last node
    // reports it, so asking the others meanwhile would only load the CPU the nodes need
    // (sweeping all 64 every millisecond took most of a core). A node seen complete is
    // asked once more at the end, so a link lost meanwhile is not missed.
    let mut done: Vec<Option<Instant>> = vec![None; n];
    let formed = 'outer: loop {
        for (i, node) in nodes.iter().enumerate() {
            while done[i].is_none() {
                if node.connected_peers() == Ok(want) {
                    done[i] = Some(Instant::now());
                } else if Instant::now() > deadline {
                    break 'outer false;
                } else {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
        let mut all = true;
        for (i, node) in nodes.iter().enumerate() {
            if node.connected_peers() != Ok(want) {
                done[i] = None;
                all = false;
            }
        }
        if all {
            break true;
        }
    };
    let ms = done
        .iter()
        .flatten()
        .max()
        .map_or(f64::NAN, |t| self::ms(t.duration_since(last_start)));
    let mut node_ms: Vec<f64> = done
        .iter()
        .flatten()
        .map(|t| self::ms(t.duration_since(last_start)))
        .collect();
    node_ms.sort_by(f64::total_cmp);
    // Every node's CPU time from its start until the mesh was seen formed: live threads'
    // run time in ns (a thread that ended is only in the 10 ms ticks; take the larger).
    let cpu_secs: f64 = nodes
        .iter()
        .filter_map(|n| sys::sample(n.pid()).ok())
        .map(|s| (s.run_ns as f64 / 1e9).max(s.cpu_ticks as f64 / sys::clock_ticks() as f64))
        .sum();
    // Let the first pings and any late duplicate verdicts pass before counting.
    std::thread::sleep(Duration::from_millis(1000));
    let metrics: Vec<Metrics> = nodes.iter().filter_map(|n| n.metrics().ok()).collect();
    let mid = sys::tcp_counters();
    let http_refused = (HTTP_REFUSED.load(Ordering::Relaxed) - refused_before) as i64;
    let killed = stop_all(&mut nodes);
    std::thread::sleep(Duration::from_millis(300));
    let after = sys::tcp_counters();
    let h = |m: &Metrics, r: &str| m.get(&format!("timed_handshakes_total{{result=\"{r}\"}}"));
    FormationRun {
        n,
        formed,
        ms,
        handshakes: node::sum(&metrics, |m| {
            h(m, "accepted") + h(m, "duplicate") + h(m, "too_many_peers")
        }),
        accepted: node::sum(&metrics, |m| h(m, "accepted")),
        dials: node::sum(&metrics, |m| m.get("timed_dials_total")),
        skipped_direction: node::sum(&metrics, |m| {
            m.get("timed_dials_skipped_total{reason=\"direction\"}")
        }),
        duplicates: node::sum(&metrics, |m| m.get("timed_duplicates_resolved_total")),
        tcp: resets(&sys::counter_deltas(&before, &mid)),
        shutdown: resets(&sys::counter_deltas(&mid, &after)),
        http_refused,
        killed,
        fork_ms,
        node_ms,
        cpu_secs,
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    quantile(v, 0.5)
}

/// Runs `reps` formations of `n` nodes with `extra` arguments; prints one line per run.
fn formation_runs(
    ctx: &Ctx,
    n: usize,
    reps: usize,
    block: &mut u8,
    extra: &[String],
) -> Vec<FormationRun> {
    (0..reps)
        .map(|rep| {
            let r = formation_run(ctx, n, *block, extra);
            *block += 1;
            println!(
                "  N={n:<2}{} run {}: {} in {:.0} ms after the last start, {:.2} handshakes \
                 and {:.2} dials per link, {} refused connects, {} resets",
                if extra.is_empty() {
                    ""
                } else {
                    " (diagnostic)"
                },
                rep + 1,
                if r.formed { "formed" } else { "NOT formed" },
                r.ms,
                r.handshakes / 2.0 / r.links(),
                r.dials / r.links(),
                r.tcp.refused,
                r.tcp.resets
            );
            r
        })
        .collect()
}

fn formation(ctx: &Ctx, opts: &Opts, rows: &mut Vec<Row>) -> (Value, Vec<FormationPoint>) {
    let mut all = Vec::new();
    let mut points = Vec::new();
    let mut block = 10u8;
    for n in [4usize, 16, 64] {
        let runs = formation_runs(ctx, n, opts.reps, &mut block, &[]);
        let formed = runs.iter().all(|r| r.formed);
        let mut times: Vec<f64> = runs.iter().map(|r| r.ms).collect();
        let med = median(&mut times);
        let (lo, hi) = (times[0], times[times.len() - 1]);
        points.push(FormationPoint {
            n,
            median: med,
            min: lo,
            max: hi,
            diagnostic: None,
        });
        let section = "Formation (N masternodes started together, default settings)";
        // Per-link figures and counts: the worst of the runs.
        let worst =
            |f: &dyn Fn(&FormationRun) -> f64| runs.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
        let links = (n * (n - 1) / 2) as f64;
        row(
            rows,
            format!("formation.n{n}.ms"),
            section,
            format!("N={n}: full mesh after the last start (median)"),
            formed.then_some(med),
            Unit::Ms,
            if n == 64 {
                Goal::AtMost(GOAL_FORMATION_MS)
            } else {
                Goal::None
            },
            (n == 64).then(|| {
                format!(
                    "{} runs per N, from {lo:.0} to {hi:.0} ms; all N processes are forked and \
                     held at a barrier, then exec timed at once: time from that release until \
                     every node's /consensus_info reports N-1 connected peers (each node asked \
                     every 2 ms in turn)",
                    runs.len()
                )
            }),
        );
        row(
            rows,
            format!("formation.n{n}.handshakes_per_link"),
            section,
            format!("N={n}: handshakes completed per link (worst run)"),
            Some(worst(&|r| r.handshakes / 2.0 / r.links())),
            Unit::Ratio,
            Goal::Exactly(1.0),
            None,
        );
        row(
            rows,
            format!("formation.n{n}.dials_per_link"),
            section,
            format!("N={n}: dials per link (worst run)"),
            Some(worst(&|r| r.dials / r.links())),
            Unit::Ratio,
            Goal::None,
            (n == 64).then(|| {
                "a dial above 1.00 per link is a redial after a refused connect: the peer \
                 was not listening yet"
                    .to_string()
            }),
        );
        row(
            rows,
            format!("formation.n{n}.skipped_direction"),
            section,
            format!("N={n}: dials skipped by the direction rule (of {links:.0} pairs)"),
            Some(worst(&|r| r.skipped_direction)),
            Unit::Count,
            Goal::None,
            None,
        );
        row(
            rows,
            format!("formation.n{n}.duplicates"),
            section,
            format!("N={n}: duplicates resolved"),
            Some(worst(&|r| r.duplicates)),
            Unit::Count,
            Goal::None,
            None,
        );
        let reset_note = (n == 64).then(|| {
            if ctx.private {
                "from the namespace's TcpOutRsts minus TcpAttemptFails (an RST answering a \
                 connect to a port nobody listens on yet is a refused SYN, counted apart in \
                 the next row), cross-checked with the TcpExtTCPAbortOn* counters; counted \
                 from before the first start until 1 s after the mesh formed"
                    .to_string()
            } else {
                "no private network namespace: the host's counters, other traffic included"
                    .to_string()
            }
        });
        row(
            rows,
            format!("formation.n{n}.resets"),
            section,
            format!("N={n}: TCP resets sent (worst run)"),
            Some(worst(&|r| r.tcp.resets.max(r.tcp.aborts) as f64)),
            Unit::Count,
            Goal::Exactly(0.0),
            reset_note,
        );
        row(
            rows,
            format!("formation.n{n}.refused_connects"),
            section,
            format!("N={n}: RSTs answering refused connects (worst run)"),
            Some(worst(&|r| r.tcp.refused as f64)),
            Unit::Count,
            Goal::None,
            (n == 64).then(|| {
                "TcpAttemptFails: dials (and the bench's own status polls) that reached a \
                 node before its listener was up"
                    .to_string()
            }),
        );
        let mut cpu: Vec<f64> = runs.iter().map(|r| r.cpu_secs).collect();
        row(
            rows,
            format!("formation.n{n}.cpu_secs"),
            section,
            format!("N={n}: CPU seconds of all nodes, start to full mesh (median)"),
            Some(median(&mut cpu)),
            Unit::CpuSecs,
            Goal::None,
            (n == 64).then(|| {
                "summed over the N processes from /proc/PID/task/*/schedstat when the mesh was \
                 seen formed: process start-up included. On 2 cores, more than 2 CPU-seconds \
                 cannot fit in 1 s of wall time"
                    .to_string()
            }),
        );
        all.extend(runs.iter().map(FormationRun::json));
    }
    // Diagnostic: the same formations with a shorter first redial, to show how much of the
    // formation time is the wait after a connect refused because the peer was not up yet.
    let extra = vec!["--reconnectmin=100ms".to_string()];
    for n in [4usize, 16, 64] {
        let runs = formation_runs(ctx, n, opts.reps, &mut block, &extra);
        let mut times: Vec<f64> = runs.iter().map(|r| r.ms).collect();
        let med = median(&mut times);
        if let Some(p) = points.iter_mut().find(|p| p.n == n) {
            p.diagnostic = Some(med);
        }
        row(
            rows,
            format!("formation.n{n}_reconnectmin_100ms.ms"),
            "Formation (N masternodes started together, default settings)",
            format!("N={n} with --reconnectmin=100ms (diagnostic, median)"),
            runs.iter().all(|r| r.formed).then_some(med),
            Unit::Ms,
            Goal::None,
            (n == 64).then(|| {
                "not a default: shows how much of the time above is the first redial's \
                 backoff after a refused connect (reconnectmin, 1 s less up to 25% jitter)"
                    .to_string()
            }),
        );
        all.extend(runs.iter().map(|r| {
            let mut v = r.json();
            v["extra_args"] = json!(extra);
            v
        }));
    }
    (Value::Array(all), points)
}

// ---------------------------------------------------------------------------------------
// 2. Steady state

fn steady(ctx: &Ctx, opts: &Opts, rows: &mut Vec<Row>) -> Value {
    let n = 16;
    let section = "Steady state (16-node mesh idle, default timings)";
    let hosts = ips(30, n);
    let list: Vec<SocketAddrV4> = hosts
        .iter()
        .map(|ip| SocketAddrV4::new(*ip, P2P_PORT))
        .collect();
    let mut nodes: Vec<Node> = hosts
        .iter()
        .enumerate()
        .map(|(i, ip)| ctx.spawn(*ip, &list, &[], &format!("steady-{i}.log")))
        .collect();
    let formed = nodes
        .iter()
        .all(|node| node.wait_peers((n - 1) as u64, Duration::from_secs(30)));
    if !formed {
        stop_all(&mut nodes);
        for (key, label) in [
            ("cpu", "CPU per node per minute"),
            ("wakeups", "wake-ups per second per node"),
        ] {
            row(
                rows,
                format!("steady.{key}"),
                section,
                label,
                None,
                Unit::Count,
                Goal::None,
                Some("the 16-node mesh did not form within 30 s".into()),
            );
        }
        return json!({"formed": false});
    }
    // The first pings (sent right after each verdict) are over well before this.
    std::thread::sleep(Duration::from_secs(2));
    let m_before: Vec<Metrics> = nodes.iter().filter_map(|n| n.metrics().ok()).collect();
    let logs_before: Vec<usize> = nodes.iter().map(Node::log_lines).collect();
    // Let the status requests' own wake-ups pass before the window opens.
    std::thread::sleep(Duration::from_millis(200));
    let tcp_before = sys::tcp_counters();
    let p_before: Vec<sys::ProcSample> = nodes
        .iter()
        .map(|n| sys::sample(n.pid()).unwrap_or_default())
        .collect();
    let t0 = Instant::now();
    println!("  mesh formed; idle for {} s", opts.idle.as_secs());
    std::thread::sleep(opts.idle);
    let p_after: Vec<sys::ProcSample> = nodes
        .iter()
        .map(|n| sys::sample(n.pid()).unwrap_or_default())
        .collect();
    let window = t0.elapsed().as_secs_f64();
    let tcp_after = sys::tcp_counters();
    let logs_after: Vec<usize> = nodes.iter().map(Node::log_lines).collect();
    let m_after: Vec<Metrics> = nodes.iter().filter_map(|n| n.metrics().ok()).collect();
    let mut rtts: Vec<f64> = nodes
        .iter()
        .filter_map(|n| n.json("/peers").ok())
        .flat_map(|v| {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p["rtt_ms"].as_f64())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .collect();
    rtts.sort_by(f64::total_cmp);
    let still = nodes
        .iter()
        .filter(|node| node.connected_peers() == Ok((n - 1) as u64))
        .count();
    stop_all(&mut nodes);

    let ticks = sys::clock_ticks() as f64;
    let per_node: Vec<Value> = p_before
        .iter()
        .zip(&p_after)
        .map(|(b, a)| {
            json!({
                "cpu_secs_schedstat": (a.run_ns.saturating_sub(b.run_ns)) as f64 / 1e9,
                "cpu_secs_stat": (a.cpu_ticks.saturating_sub(b.cpu_ticks)) as f64 / ticks,
                "voluntary": a.voluntary.saturating_sub(b.voluntary),
                "involuntary": a.involuntary.saturating_sub(b.involuntary),
                "threads": a.threads,
                "rss_kib": a.rss_kib,
            })
        })
        .collect();
    let per_min = 60.0 / window;
    let cpu: Vec<f64> = p_before
        .iter()
        .zip(&p_after)
        .map(|(b, a)| (a.run_ns.saturating_sub(b.run_ns)) as f64 / 1e9 * per_min)
        .collect();
    let cpu_mean = cpu.iter().sum::<f64>() / cpu.len() as f64;
    let stat_mean = p_before
        .iter()
        .zip(&p_after)
        .map(|(b, a)| (a.cpu_ticks.saturating_sub(b.cpu_ticks)) as f64 / ticks * per_min)
        .sum::<f64>()
        / cpu.len() as f64;
    let cpu_max = cpu.iter().copied().fold(0.0, f64::max);
    let wake: Vec<f64> = p_before
        .iter()
        .zip(&p_after)
        .map(|(b, a)| {
            (a.voluntary + a.involuntary).saturating_sub(b.voluntary + b.involuntary) as f64
                / window
        })
        .collect();
    let wake_mean = wake.iter().sum::<f64>() / wake.len() as f64;
    let delta = |f: &dyn Fn(&Metrics) -> f64| node::sum(&m_after, f) - node::sum(&m_before, f);
    let dials = delta(&|m| m.get("timed_dials_total"));
    let disconnects = delta(&|m| m.family("timed_disconnects_total"));
    let accepted = delta(&|m| m.get("timed_handshakes_total{result=\"accepted\"}"));
    let log_lines: usize = logs_after
        .iter()
        .zip(&logs_before)
        .map(|(a, b)| a.saturating_sub(*b))
        .sum();
    let tcp = resets(&sys::counter_deltas(&tcp_before, &tcp_after));
    let threads = p_after.first().map_or(0, |p| p.threads);

    row(
        rows,
        "steady.cpu_secs_per_node_per_min",
        section,
        "CPU seconds per node per minute (mean of 16)",
        Some(cpu_mean),
        Unit::CpuSecs,
        Goal::AtMost(GOAL_CPU_PER_MIN),
        Some(format!(
            "sum of /proc/PID/task/*/schedstat run time over a {window:.0} s window, scaled to \
             a minute; busiest node {cpu_max:.4} s; utime+stime of /proc/PID/stat, in 10 ms \
             ticks, says {stat_mean:.4} s"
        )),
    );
    row(
        rows,
        "steady.wakeups_per_sec_per_node",
        section,
        format!("wake-ups per second per node ({threads} threads)"),
        Some(wake_mean),
        Unit::PerSec,
        Goal::None,
        Some("voluntary + involuntary context switches summed over /proc/PID/task/*/status".into()),
    );
    row(
        rows,
        "steady.reconnects",
        section,
        "reconnects (dials + disconnects, all nodes)",
        Some(dials + disconnects),
        Unit::Count,
        Goal::Exactly(0.0),
        None,
    );
    row(
        rows,
        "steady.info_log_lines",
        section,
        "log lines at info (all nodes)",
        Some(log_lines as f64),
        Unit::Count,
        Goal::Exactly(0.0),
        None,
    );
    row(
        rows,
        "steady.resets",
        section,
        "TCP resets sent",
        Some(tcp.resets.max(tcp.aborts) as f64),
        Unit::Count,
        Goal::Exactly(0.0),
        None,
    );
    if !rtts.is_empty() {
        row(
            rows,
            "steady.mesh_ping_rtt_ms_median",
            "Latency (loopback)",
            "ping RTT between nodes, timed's own /peers rtt_ms (median)",
            Some(quantile(&rtts, 0.5)),
            Unit::Ms,
            Goal::None,
            None,
        );
    }
    json!({
        "formed": true,
        "window_secs": window,
        "cpu_secs_per_node_per_min": cpu,
        "wakeups_per_sec": wake,
        "dials": dials,
        "disconnects": disconnects,
        "handshakes_accepted": accepted,
        "info_log_lines": log_lines,
        "tcp_out_rsts": tcp.out_rsts,
        "tcp_resets": tcp.resets,
        "nodes_still_meshed": still,
        "mesh_rtt_ms": {"median": quantile(&rtts, 0.5), "p99": quantile(&rtts, 0.99), "samples": rtts.len()},
        "per_node": per_node,
    })
}

// ---------------------------------------------------------------------------------------
// 3. Memory

/// Connects peers `from..to` (indexes into `sources`) to `node`, on `threads` threads.
fn connect_many(
    node: SocketAddrV4,
    sources: &[Ipv4Addr],
    threads: usize,
) -> (Vec<Peer>, Vec<f64>, Vec<String>) {
    let chunk = sources.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut peers = Vec::new();
                    let mut rtts = Vec::new();
                    let mut errors = Vec::new();
                    for ip in part {
                        match Peer::handshake(*ip, node) {
                            Ok((p, rtt)) => {
                                peers.push(p);
                                rtts.push(ms(rtt));
                            }
                            Err(e) => errors.push(e),
                        }
                    }
                    (peers, rtts, errors)
                })
            })
            .collect();
        let mut all = (Vec::new(), Vec::new(), Vec::new());
        for h in handles {
            let (p, r, e) = h.join().expect("load generator thread");
            all.0.extend(p);
            all.1.extend(r);
            all.2.extend(e);
        }
        all
    })
}

/// Closes every peer gracefully, on `threads` threads.
fn close_many(peers: Vec<Peer>, threads: usize) {
    let chunk = peers.len().div_ceil(threads.max(1)).max(1);
    let mut peers = peers;
    std::thread::scope(|s| {
        while !peers.is_empty() {
            let part: Vec<Peer> = peers.drain(..chunk.min(peers.len())).collect();
            s.spawn(move || part.into_iter().for_each(Peer::close));
        }
    });
}

fn memory(ctx: &Ctx, opts: &Opts, nofile: u64, rows: &mut Vec<Row>) -> (Value, Vec<(usize, f64)>) {
    let section = "Memory (one node, peers completing real handshakes)";
    let ip = Ipv4Addr::new(127, 50, 0, 1);
    let max = opts.peers;
    let extra = vec![
        format!("--maxpeers={}", max + 100),
        "--maxinboundperip=4".to_string(),
    ];
    let mut node = ctx.spawn(ip, &[], &extra, "memory.log");
    let addr = node.p2p;
    let mut samples: Vec<(usize, sys::ProcSample)> = Vec::new();
    let mut errors = Vec::new();
    let mut load_rtts = Vec::new();
    if !node.wait_healthy(Duration::from_secs(10)) {
        stop_all(std::slice::from_mut(&mut node));
        return (json!({"error": "the node did not come up"}), Vec::new());
    }
    std::thread::sleep(Duration::from_millis(500));
    samples.push((0, sys::sample(node.pid()).unwrap_or_default()));
    let sources = ips(51, max);
    let mut peers: Vec<Peer> = Vec::new();
    let mut stages: Vec<usize> = vec![8, 16, 32, 63, 125, 250, 500, 750, 1000, max];
    stages.retain(|s| *s <= max);
    stages.dedup();
    for target in stages {
        let from = peers.len();
        // Up to 63 one at a time; beyond, four connectors (the node accepts them in turn).
        let threads = if target <= 63 { 1 } else { 4 };
        let (p, r, e) = connect_many(addr, &sources[from..target], threads);
        peers.extend(p);
        load_rtts.extend(r);
        errors.extend(e);
        if !node.wait_peers(peers.len() as u64, Duration::from_secs(30)) {
            errors.push(format!(
                "the node did not report {} peers (fd limit {nofile})",
                peers.len()
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        let s = sys::sample(node.pid()).unwrap_or_default();
        println!(
            "  {:>4} peers: RSS {:.2} MiB (anon {:.2}, file {:.2}), {} threads",
            peers.len(),
            s.rss_kib as f64 / 1024.0,
            s.rss_anon_kib as f64 / 1024.0,
            s.rss_file_kib as f64 / 1024.0,
            s.threads
        );
        samples.push((peers.len(), s));
    }
    let held = peers.len();
    close_many(peers, 4);
    let drained = node.wait_peers(0, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let after_close = sys::sample(node.pid()).unwrap_or_default();
    // A second round of as many peers (from other addresses): memory the first round left
    // behind that is reused stays flat; a leak grows.
    let (again, _, e) = connect_many(addr, &ips(52, held), 4);
    errors.extend(e);
    let again_held = again.len();
    node.wait_peers(again_held as u64, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let second_full = sys::sample(node.pid()).unwrap_or_default();
    close_many(again, 4);
    let drained_again = node.wait_peers(0, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let second_close = sys::sample(node.pid()).unwrap_or_default();
    stop_all(std::slice::from_mut(&mut node));

    let at = |n: usize| samples.iter().find(|(p, _)| *p == n).map(|(_, s)| *s);
    let (s0, s63, smax) = (at(0), at(63), at(max));
    for (n, s, goal) in [
        (0, s0, Goal::None),
        (63, s63, Goal::AtMost(GOAL_RSS_63_KIB)),
        (max, smax, Goal::None),
    ] {
        row(
            rows,
            format!("memory.rss_kib_{n}"),
            section,
            format!("RSS at {n} peers"),
            s.map(|s| s.rss_kib as f64),
            Unit::Mib,
            goal,
            (n == 0).then(|| {
                "VmRSS from /proc/PID/status, 0.5 s after the node reports the peers; \
                 file-backed pages (binary, libc, OpenSSL) included"
                    .to_string()
            }),
        );
        row(
            rows,
            format!("memory.threads_{n}"),
            section,
            format!("threads at {n} peers"),
            s.map(|s| s.threads as f64),
            Unit::Count,
            Goal::None,
            None,
        );
    }
    let per_peer = match (s63, smax) {
        (Some(a), Some(b)) => Some((b.rss_kib as f64 - a.rss_kib as f64) / (max - 63) as f64),
        _ => None,
    };
    row(
        rows,
        "memory.rss_kib_per_extra_peer",
        section,
        format!("RSS per extra peer (63 to {max})"),
        per_peer,
        Unit::Kib,
        Goal::AtMost(GOAL_PER_PEER_KIB),
        None,
    );
    row(
        rows,
        "memory.rss_kib_after_all_left",
        section,
        format!("RSS after all {held} peers left"),
        drained.then_some(after_close.rss_kib as f64),
        Unit::Mib,
        Goal::None,
        Some(format!(
            "{} threads again, but {:.2} MiB anonymous memory kept (at 0 peers: {:.2} MiB): \
             freed heap and cached thread stacks stay with the process",
            after_close.threads,
            after_close.rss_anon_kib as f64 / 1024.0,
            s0.map_or(0.0, |s| s.rss_anon_kib as f64 / 1024.0)
        )),
    );
    row(
        rows,
        "memory.rss_kib_after_second_round",
        section,
        format!("RSS after a second round of {again_held} peers left"),
        drained_again.then_some(second_close.rss_kib as f64),
        Unit::Mib,
        Goal::None,
        Some(format!(
            "{:.2} MiB with the {again_held} peers connected; the same as after the first \
             round means memory kept for reuse, more means a leak",
            second_full.rss_kib as f64 / 1024.0
        )),
    );
    let rss_points: Vec<(usize, f64)> = samples
        .iter()
        .map(|(p, s)| (*p, s.rss_kib as f64))
        .collect();
    load_rtts.sort_by(f64::total_cmp);
    let json = json!({
        "samples": samples.iter().map(|(p, s)| json!({
            "peers": p, "rss_kib": s.rss_kib, "rss_anon_kib": s.rss_anon_kib,
            "rss_file_kib": s.rss_file_kib, "threads": s.threads,
        })).collect::<Vec<_>>(),
        "after_all_closed": {
            "drained": drained, "rss_kib": after_close.rss_kib,
            "rss_anon_kib": after_close.rss_anon_kib, "threads": after_close.threads,
        },
        "held_peers": held,
        "second_round": {
            "peers": again_held, "rss_kib_full": second_full.rss_kib,
            "rss_kib_after_close": second_close.rss_kib,
            "rss_anon_kib_after_close": second_close.rss_anon_kib, "drained": drained_again,
        },
        "errors": errors,
        "nofile_limit": nofile,
        "handshake_ms_under_load": {
            "p50": quantile(&load_rtts, 0.5), "p99": quantile(&load_rtts, 0.99),
            "samples": load_rtts.len(),
        },
    });
    (json, rss_points)
}

// ---------------------------------------------------------------------------------------
// 4. Latency

fn latency(ctx: &Ctx, opts: &Opts, rows: &mut Vec<Row>) -> Value {
    let section = "Latency (loopback)";
    let mut node = ctx.spawn(Ipv4Addr::new(127, 40, 0, 1), &[], &[], "latency.log");
    if !node.wait_healthy(Duration::from_secs(10)) {
        stop_all(std::slice::from_mut(&mut node));
        return json!({"error": "the node did not come up"});
    }
    std::thread::sleep(Duration::from_millis(300));
    let addr = node.p2p;
    // Handshakes one after another, each from its own address, each closed gracefully.
    let mut hs = Vec::new();
    let mut errors = Vec::new();
    for ip in ips(41, opts.handshakes) {
        match Peer::handshake(ip, addr) {
            Ok((p, rtt)) => {
                hs.push(ms(rtt));
                p.close();
            }
            Err(e) => errors.push(e),
        }
    }
    // Pings: a node allows 64 per ping interval on a connection, so 8 connections × 60.
    let mut pings = Vec::new();
    for ip in ips(42, 8) {
        match Peer::handshake(ip, addr) {
            Ok((mut p, _)) => {
                if let Err(e) = p.answer_first_ping() {
                    errors.push(e);
                }
                for nonce in 0..60u64 {
                    match p.ping(nonce + 1) {
                        Ok(rtt) => pings.push(ms(rtt)),
                        Err(e) => {
                            errors.push(e);
                            break;
                        }
                    }
                }
                p.close();
            }
            Err(e) => errors.push(e),
        }
    }
    stop_all(std::slice::from_mut(&mut node));
    hs.sort_by(f64::total_cmp);
    pings.sort_by(f64::total_cmp);
    let some = |v: &[f64], p: f64| (!v.is_empty()).then(|| quantile(v, p));
    row(
        rows,
        "latency.handshake_ms_p50",
        section,
        "handshake, connect to Ack (p50)",
        some(&hs, 0.5),
        Unit::Ms,
        Goal::None,
        Some(format!(
            "{} handshakes in sequence, each from its own 127.41.x.y, timed from connect() to \
             the node's Ack, then closed gracefully",
            hs.len()
        )),
    );
    row(
        rows,
        "latency.handshake_ms_p99",
        section,
        "handshake, connect to Ack (p99)",
        some(&hs, 0.99),
        Unit::Ms,
        Goal::AtMost(GOAL_HANDSHAKE_P99_MS),
        None,
    );
    row(
        rows,
        "latency.ping_ms_p50",
        section,
        "ping RTT, Ping to Pong (p50)",
        some(&pings, 0.5),
        Unit::Ms,
        Goal::None,
        Some(format!(
            "{} pings, 60 per connection on 8 connections (a node allows 64 per ping interval)",
            pings.len()
        )),
    );
    row(
        rows,
        "latency.ping_ms_p99",
        section,
        "ping RTT, Ping to Pong (p99)",
        some(&pings, 0.99),
        Unit::Ms,
        Goal::None,
        None,
    );
    json!({
        "handshake_ms": {"p50": quantile(&hs, 0.5), "p99": quantile(&hs, 0.99),
                         "max": hs.last(), "samples": hs.len()},
        "ping_ms": {"p50": quantile(&pings, 0.5), "p99": quantile(&pings, 0.99),
                    "max": pings.last(), "samples": pings.len()},
        "errors": errors,
    })
}
