//! Command-line parsing: turns the arguments into a [`Command`] or a usage error, with no side
//! effects, so every accepted and rejected form is unit-tested.

/// Where `status` and `peers` look when no `--rpc` is given: the daemon's default `rpclisten`.
pub const DEFAULT_RPC: &str = "http://127.0.0.1:8332";

/// The synopsis, printed with every usage error and at the top of `--help`.
pub const USAGE: &str = "\
Usage:
  time-cli [--rpc URL] status [--json]
  time-cli [--rpc URL] peers  [--json]
  time-cli matrix URL [URL ...]
  time-cli --help | --version
";

/// The full `--help` text after [`USAGE`]: commands, flags, matrix cells, exit codes.
pub const HELP: &str = "\n\
Commands:
  status    The node's summary (GET /consensus_info): network, version, local P2P address,
            whether it is a masternode, active and listed masternodes, connected peers
            (inbound/outbound), uptime.
  peers     One row per established connection (GET /peers): the peer's P2P address,
            direction, masternode or not, connected for, last heard, round-trip time, agent.
  matrix    The connection matrix of the nodes whose status URLs are given. Fetches
            /consensus_info and /peers from every node, and prints one row and column per
            node, ordered numerically by P2P address (IP, then port). Each cell is the row
            node's own view of its link with the column node.

Options:
  --rpc URL, --rpc=URL  Status endpoint of the node to ask (default http://127.0.0.1:8332).
  --json                Print the endpoint's JSON as served instead of the readable view.
  -h, --help            Print this help.
  -V, --version         Print the version.

Matrix cells:
  \u{2192}  the row node dialed the column node (outbound link)
  \u{2190}  the column node dialed the row node (inbound link)
  \u{b7}  the node itself
  \u{2717}  missing: no link with that node
  2  duplicate: that many links with that node (there must be exactly one)
  !  wrong direction: dialed by the higher address (between masternodes the lower dials)
  ?  unknown: the row node could not be read, or the column node's address is unknown
The matrix ends with exactly one summary line:
  links: N of M, duplicates: D, wrong direction: W, unreachable nodes: U
M = k(k-1)/2 pairs for k nodes; N counts the pairs joined by exactly one link that both ends
agree on (one end's view when the other cannot be read); D and W count pairs.

Exit status:
  0  success; for matrix, a complete and clean mesh (N = M, D = W = U = 0)
  1  a node could not be reached or gave an unexpected answer (the message names its URL),
     or the matrix is not complete and clean
  2  usage error
";

/// What the operator asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `--help`.
    Help,
    /// `--version`.
    Version,
    /// `status`: the node's summary, raw JSON when `json`.
    Status { rpc: String, json: bool },
    /// `peers`: the node's connections, raw JSON when `json`.
    Peers { rpc: String, json: bool },
    /// `matrix`: the mesh of the nodes behind these status URLs.
    Matrix { urls: Vec<String> },
}

/// Parses the arguments (without the program name). The error is a one-line reason for a
/// usage error (exit 2).
///
/// Flags are accepted before or after the command (`time-cli status --rpc URL` is as clear
/// as the synopsis order, and operators type both); `--help` and `--version` win wherever
/// they appear, so they always work.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
    let mut rpc: Option<String> = None;
    let mut json = false;
    let mut command: Option<String> = None;
    let mut operands = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--json" => json = true,
            "--rpc" => rpc = Some(rpc_value(args.next())?),
            _ if arg.starts_with("--rpc=") => {
                rpc = Some(rpc_value(arg.split_once('=').map(|(_, v)| v.to_string()))?)
            }
            // A lone "-" is an operand by convention; anything else dashed is a flag we lack.
            _ if arg.starts_with('-') && arg != "-" => {
                return Err(format!("unknown option '{arg}'"))
            }
            _ if command.is_none() => command = Some(arg),
            _ => operands.push(arg),
        }
    }
    match command.as_deref() {
        None => Err("no command given".to_string()),
        Some(name @ ("status" | "peers")) => {
            if let Some(extra) = operands.first() {
                return Err(format!("unexpected argument '{extra}' for {name}"));
            }
            let rpc = rpc.unwrap_or_else(|| DEFAULT_RPC.to_string());
            Ok(if name == "status" {
                Command::Status { rpc, json }
            } else {
                Command::Peers { rpc, json }
            })
        }
        Some("matrix") => {
            // Silently ignoring either would let an operator believe it had an effect.
            if rpc.is_some() {
                return Err("matrix takes node URLs as arguments, not --rpc".to_string());
            }
            if json {
                return Err("matrix has no --json".to_string());
            }
            if operands.is_empty() {
                return Err("matrix needs at least one node URL".to_string());
            }
            Ok(Command::Matrix { urls: operands })
        }
        Some(other) => Err(format!("unknown command '{other}'")),
    }
}

/// The value of `--rpc`: present, not empty, and not the next flag swallowed by mistake.
fn rpc_value(value: Option<String>) -> Result<String, String> {
    match value {
        Some(v) if !v.is_empty() && !v.starts_with('-') => Ok(v),
        _ => Err("--rpc needs a URL".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, String> {
        parse(args.iter().map(|s| s.to_string()))
    }

    fn status(rpc: &str, json: bool) -> Command {
        Command::Status {
            rpc: rpc.to_string(),
            json,
        }
    }

    #[test]
    fn status_and_peers_default_to_the_local_endpoint() {
        assert_eq!(p(&["status"]), Ok(status(DEFAULT_RPC, false)));
        assert_eq!(
            p(&["peers", "--json"]),
            Ok(Command::Peers {
                rpc: DEFAULT_RPC.to_string(),
                json: true
            })
        );
    }

    #[test]
    fn rpc_in_both_spellings_and_either_position() {
        let want = Ok(status("http://10.0.0.1:8332", true));
        assert_eq!(
            p(&["--rpc", "http://10.0.0.1:8332", "status", "--json"]),
            want
        );
        assert_eq!(p(&["--rpc=http://10.0.0.1:8332", "status", "--json"]), want);
        assert_eq!(
            p(&["status", "--json", "--rpc", "http://10.0.0.1:8332"]),
            want
        );
        assert_eq!(
            p(&["--rpc=a", "--rpc=b", "status"]),
            Ok(status("b", false)),
            "the last --rpc wins"
        );
    }

    #[test]
    fn matrix_takes_urls() {
        assert_eq!(
            p(&["matrix", "http://a:1", "http://b:2"]),
            Ok(Command::Matrix {
                urls: vec!["http://a:1".to_string(), "http://b:2".to_string()]
            })
        );
    }

    #[test]
    fn help_and_version_win_anywhere() {
        assert_eq!(p(&["--help"]), Ok(Command::Help));
        assert_eq!(p(&["-h"]), Ok(Command::Help));
        assert_eq!(p(&["status", "--help"]), Ok(Command::Help));
        assert_eq!(p(&["--version"]), Ok(Command::Version));
        assert_eq!(p(&["matrix", "-V"]), Ok(Command::Version));
    }

    #[test]
    fn usage_errors() {
        for (args, needle) in [
            (&[][..], "no command"),
            (&["frobnicate"][..], "unknown command 'frobnicate'"),
            (&["status", "--verbose"][..], "unknown option '--verbose'"),
            (&["status", "extra"][..], "unexpected argument 'extra'"),
            (&["--rpc"][..], "--rpc needs a URL"),
            (&["--rpc", "--json", "status"][..], "--rpc needs a URL"),
            (&["--rpc=", "status"][..], "--rpc needs a URL"),
            (&["matrix"][..], "at least one node URL"),
            (
                &["--rpc", "http://x:1", "matrix", "http://y:1"][..],
                "not --rpc",
            ),
            (&["matrix", "--json", "http://y:1"][..], "no --json"),
        ] {
            let err = p(args).expect_err(&format!("{args:?} must be a usage error"));
            assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
        }
    }
}
