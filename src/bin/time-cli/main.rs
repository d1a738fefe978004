//! `time-cli`: the operator's client of timed's status endpoint (SPEC §2).
//!
//! `status` and `peers` show one node; `matrix` asks several nodes and shows whether they
//! form the full mesh the daemon exists to keep. Modules by role: `args` (command line),
//! `fetch` (HTTP), `format` (human-readable output), `matrix` (the mesh check).

mod args;
mod fetch;
mod format;
mod matrix;

use std::io::{self, Write};
use std::process::ExitCode;

use serde::de::DeserializeOwned;

use args::Command;
use fetch::{Client, ConsensusInfo, Peer};

/// Exit status for success, and for a matrix that is complete and clean.
const OK: u8 = 0;
/// Exit status when a node could not be read or the matrix is unhealthy.
const FAILED: u8 = 1;
/// Exit status for a usage error.
const USAGE: u8 = 2;

fn main() -> ExitCode {
    ExitCode::from(run(std::env::args().skip(1)))
}

/// Runs one invocation and returns its exit status.
fn run(argv: impl IntoIterator<Item = String>) -> u8 {
    let command = match args::parse(argv) {
        Ok(command) => command,
        Err(why) => {
            eprint!(
                "time-cli: {why}\n{}Try 'time-cli --help' for more information.\n",
                args::USAGE
            );
            return USAGE;
        }
    };
    match command {
        Command::Help => {
            print(&format!(
                "time-cli {} \u{2014} the operator's client of timed's status endpoint\n\n{}{}",
                env!("CARGO_PKG_VERSION"),
                args::USAGE,
                args::HELP
            ));
            OK
        }
        Command::Version => {
            print(&format!("time-cli {}\n", env!("CARGO_PKG_VERSION")));
            OK
        }
        Command::Status { rpc, json } => {
            show(&rpc, "/consensus_info", json, |i: &ConsensusInfo| {
                format::status(i)
            })
        }
        Command::Peers { rpc, json } => {
            show(&rpc, "/peers", json, |p: &Vec<Peer>| format::peers(p))
        }
        Command::Matrix { urls } => matrix(&urls),
    }
}

/// `status` and `peers`: one GET, then the raw body or its readable form.
fn show<T: DeserializeOwned>(
    rpc: &str,
    path: &str,
    json: bool,
    render: impl Fn(&T) -> String,
) -> u8 {
    match Client::new().get_json::<T>(rpc, path) {
        Ok((_, body)) if json => {
            print(&body);
            if !body.ends_with('\n') {
                print("\n");
            }
            OK
        }
        Ok((value, _)) => {
            print(&render(&value));
            OK
        }
        Err(e) => {
            eprintln!("time-cli: {rpc}: {e}");
            FAILED
        }
    }
}

/// `matrix`: asks every node at once, so that k unreachable nodes cost one timeout rather
/// than k, and the views are as close in time as possible.
fn matrix(urls: &[String]) -> u8 {
    let client = Client::new();
    let answers: Vec<(String, matrix::Answer)> = std::thread::scope(|scope| {
        let asks: Vec<_> = urls
            .iter()
            .map(|url| {
                let client = &client;
                (url, scope.spawn(move || client.node(url)))
            })
            .collect();
        asks.into_iter()
            .map(|(url, ask)| {
                let answer = ask
                    .join()
                    .unwrap_or_else(|_| Err("internal error while fetching".to_string()));
                (url.clone(), answer)
            })
            .collect()
    });
    let (matrix, problems) = matrix::build(answers);
    for (url, problem) in problems {
        eprintln!("time-cli: {url}: {problem}");
    }
    print(&matrix.render());
    if matrix.summary.healthy() {
        OK
    } else {
        FAILED
    }
}

/// Writes to stdout. A closed pipe (`time-cli peers | head -1`) is the reader's choice, so
/// write errors are ignored instead of panicking as `print!` would.
fn print(text: &str) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}
