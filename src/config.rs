//! The daemon's configuration: `timed.conf`, `--KEY=VALUE` overrides, and the checks that
//! turn a bad configuration into an exit-2 error naming file, line and key at start-up,
//! instead of a node that runs but silently never dials (SPEC §2, §3).
//!
//! Parsing happens in two passes: first every line is split into a raw `key=value` and the
//! command line is merged in; only then are values interpreted. That is what lets `network=`
//! decide the default port of a `masternode=` line that appears above it.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use log::LevelFilter;

use crate::rules::canonical;
use crate::wire::Network;

/// Where the packaged configuration is installed; used when `--conf` is not given.
const DEFAULT_CONF_PATH: &str = "/etc/timed/timed.conf";

/// The `origin` of errors in `--KEY=VALUE` overrides.
const COMMAND_LINE: &str = "command line";

/// The `origin` of errors when no file was read at all.
const BUILT_IN: &str = "built-in defaults";

/// Port of the status endpoint when `rpclisten` is a bare IP, matching the default.
const DEFAULT_RPC_PORT: u16 = 8332;

/// Longest accepted duration: far beyond any sensible setting, yet short enough that adding it
/// to an `Instant` can never overflow and panic deep inside the daemon.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The expected forms, repeated in every duration error so the operator can fix it at once.
const DURATION_HINT: &str = "(expected 250ms, 30s, 5m or a number of seconds)";

/// One configuration key: the single table that parsing, `to_conf_string` and `usage` all
/// read, so the three can never disagree about which keys exist.
struct KeyInfo {
    name: &'static str,
    list: bool,
    help: &'static str,
}

const KEYS: [KeyInfo; 17] = [
    KeyInfo {
        name: "network",
        list: false,
        help: "mainnet or testnet: magic bytes and default port",
    },
    KeyInfo {
        name: "listen",
        list: false,
        help: "P2P listen address",
    },
    KeyInfo {
        name: "externalip",
        list: false,
        help: "this node's address as the others know it, IP or IP:PORT",
    },
    KeyInfo {
        name: "masternode",
        list: true,
        help: "a masternode's IP:PORT; repeat for each",
    },
    KeyInfo {
        name: "addnode",
        list: true,
        help: "a non-masternode peer to keep connected; repeat",
    },
    KeyInfo {
        name: "discoveryurl",
        list: false,
        help: "http(s) URL returning a JSON array of more masternodes",
    },
    KeyInfo {
        name: "discoveryinterval",
        list: false,
        help: "how often discoveryurl is fetched",
    },
    KeyInfo {
        name: "rpclisten",
        list: false,
        help: "status HTTP endpoint; empty disables it",
    },
    KeyInfo {
        name: "maxpeers",
        list: false,
        help: "total connections",
    },
    KeyInfo {
        name: "maxinboundperip",
        list: false,
        help: "inbound connections from one IP",
    },
    KeyInfo {
        name: "handshaketimeout",
        list: false,
        help: "close connections not handshaken by then",
    },
    KeyInfo {
        name: "pinginterval",
        list: false,
        help: "how often idle peers are pinged",
    },
    KeyInfo {
        name: "pingtimeout",
        list: false,
        help: "no traffic for this long: the connection is dead",
    },
    KeyInfo {
        name: "reconnectmin",
        list: false,
        help: "first backoff between dials of one peer",
    },
    KeyInfo {
        name: "reconnectmax",
        list: false,
        help: "backoff ceiling; dialing never stops",
    },
    KeyInfo {
        name: "fallbackgrace",
        list: false,
        help: "wait for a lower-address masternode to dial before dialing it",
    },
    KeyInfo {
        name: "loglevel",
        list: false,
        help: "error, warn, info, debug or trace; RUST_LOG overrides it",
    },
];

fn key_info(name: &str) -> Option<&'static KeyInfo> {
    KEYS.iter().find(|k| k.name == name)
}

/// The effective configuration of one daemon.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Which network this node talks on; also decides the port of bare-IP addresses.
    pub network: Network,
    /// Where the P2P listener binds.
    pub listen: SocketAddr,
    /// This node's address as the others know it, when the listen address cannot say it
    /// (listening on 0.0.0.0, or behind NAT). Canonical.
    pub externalip: Option<SocketAddr>,
    /// Every masternode of the network, possibly including this node. Canonical and
    /// de-duplicated, so the ordering rule and `maxpeers` see each node exactly once.
    pub masternodes: Vec<SocketAddr>,
    /// Non-masternode peers this node keeps connected. Canonical and de-duplicated.
    pub addnodes: Vec<SocketAddr>,
    /// Where more masternodes can be fetched from; `None` when only the listed ones count.
    pub discoveryurl: Option<String>,
    /// How often `discoveryurl` is re-fetched.
    pub discoveryinterval: Duration,
    /// Where the status endpoint listens; `None` when the operator disabled it.
    pub rpclisten: Option<SocketAddr>,
    /// Ceiling on established connections, room for every masternode included.
    pub maxpeers: usize,
    /// Ceiling on inbound connections from one IP, so one host cannot take every slot.
    pub maxinboundperip: usize,
    /// How long a connection may take to complete its handshake before it is closed.
    pub handshaketimeout: Duration,
    /// How often a peer is pinged, to measure round trips and keep idle links provably alive.
    pub pinginterval: Duration,
    /// Silence after which a connection is considered dead (always more than `pinginterval`,
    /// so a slow reply is never mistaken for a dead link).
    pub pingtimeout: Duration,
    /// First backoff after a failed dial.
    pub reconnectmin: Duration,
    /// Backoff ceiling; dialing a listed masternode never stops, it only slows to this.
    pub reconnectmax: Duration,
    /// How long to wait for a lower-address masternode to dial us before dialing it ourselves.
    pub fallbackgrace: Duration,
    /// Log verbosity when `RUST_LOG` is not set.
    pub loglevel: LevelFilter,
    /// The file this was read from (made absolute, so a SIGHUP re-read finds it whatever the
    /// working directory); `None` for built-in defaults and for [`parse_str`].
    pub source: Option<PathBuf>,
}

impl Config {
    /// The defaults of SPEC §3 for one network (only the listen port differs).
    fn defaults(network: Network) -> Config {
        Config {
            network,
            listen: SocketAddr::new(IpAddr::from([0, 0, 0, 0]), network.default_port()),
            externalip: None,
            masternodes: Vec::new(),
            addnodes: Vec::new(),
            discoveryurl: None,
            discoveryinterval: Duration::from_secs(600),
            rpclisten: Some(SocketAddr::new(
                IpAddr::from([127, 0, 0, 1]),
                DEFAULT_RPC_PORT,
            )),
            maxpeers: 125,
            maxinboundperip: 4,
            handshaketimeout: Duration::from_secs(10),
            pinginterval: Duration::from_secs(30),
            pingtimeout: Duration::from_secs(90),
            reconnectmin: Duration::from_secs(1),
            reconnectmax: Duration::from_secs(60),
            fallbackgrace: Duration::from_secs(60),
            loglevel: LevelFilter::Info,
            source: None,
        }
    }

    /// This node's P2P address as others know it: externalip if set, else the listen address
    /// when its IP is not unspecified; None otherwise. Canonical.
    pub fn local_address(&self) -> Option<SocketAddr> {
        if let Some(external) = self.externalip {
            return Some(canonical(external));
        }
        let listen = canonical(self.listen);
        if listen.ip().is_unspecified() {
            None
        } else {
            Some(listen)
        }
    }

    /// Whether local_address() is in the masternode list.
    pub fn is_masternode(&self) -> bool {
        self.local_address()
            .is_some_and(|me| self.masternodes.contains(&me))
    }

    /// The effective configuration in timed.conf syntax (every key, one per line, lists
    /// repeated, durations in the largest exact unit like `90s`, `10m`, `250ms`; empty value
    /// for disabled rpclisten / unset externalip / discoveryurl), what `timed --check-config`
    /// prints.
    ///
    /// An empty list is shown as a comment, because `masternode=` with no value is an error.
    /// Durations below a millisecond cannot be written in the file format and are rounded up
    /// to one, so a non-zero setting never turns into zero.
    pub fn to_conf_string(&self) -> String {
        let mut out = String::from("# effective timed configuration");
        if let Some(path) = &self.source {
            out.push_str(&format!(" (read from {})", path.display()));
        }
        out.push('\n');
        for key in &KEYS {
            let values = self.values(key.name);
            if key.list && values.is_empty() {
                out.push_str(&format!("# no {} entries\n", key.name));
            }
            for value in values {
                out.push_str(&format!("{}={}\n", key.name, value));
            }
        }
        out
    }

    /// The value(s) of one key as written in timed.conf: shared by `to_conf_string` and
    /// `usage`, so the printed defaults are the real ones.
    fn values(&self, name: &str) -> Vec<String> {
        let addr = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        let one = |s: String| vec![s];
        match name {
            "network" => one(self.network.name().to_string()),
            "listen" => one(self.listen.to_string()),
            "externalip" => one(addr(self.externalip)),
            "masternode" => self.masternodes.iter().map(|a| a.to_string()).collect(),
            "addnode" => self.addnodes.iter().map(|a| a.to_string()).collect(),
            "discoveryurl" => one(self.discoveryurl.clone().unwrap_or_default()),
            "discoveryinterval" => one(format_duration(self.discoveryinterval)),
            "rpclisten" => one(addr(self.rpclisten)),
            "maxpeers" => one(self.maxpeers.to_string()),
            "maxinboundperip" => one(self.maxinboundperip.to_string()),
            "handshaketimeout" => one(format_duration(self.handshaketimeout)),
            "pinginterval" => one(format_duration(self.pinginterval)),
            "pingtimeout" => one(format_duration(self.pingtimeout)),
            "reconnectmin" => one(format_duration(self.reconnectmin)),
            "reconnectmax" => one(format_duration(self.reconnectmax)),
            "fallbackgrace" => one(format_duration(self.fallbackgrace)),
            "loglevel" => one(self.loglevel.as_str().to_ascii_lowercase()),
            other => unreachable!("key {other} is in KEYS but has no value"),
        }
    }
}

impl Default for Config {
    /// All defaults (testnet).
    fn default() -> Config {
        Config::defaults(Network::Testnet)
    }
}

/// Where a configuration error came from and what is wrong. Display must name the file and
/// line and the key, e.g.
/// `/etc/timed/timed.conf:12: pinginterval: invalid duration "abc" (expected 250ms, 30s, 5m or a number of seconds)`
/// or for command-line values `command line: --pinginterval: invalid duration "abc" ...`
/// or for whole-file problems `/x/timed.conf: cannot read: No such file or directory (os error 2)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// The file as the operator named it, or `command line` for `--KEY=VALUE` overrides.
    pub origin: String,
    /// 1-based line in `origin`; `None` for the command line and whole-file problems.
    pub line: Option<usize>,
    /// The offending key, so the operator knows what to edit; `None` when the line has none.
    pub key: Option<String>,
    /// What is wrong, quoting the offending value.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            // On the command line the key is shown as the operator typed it.
            if self.line.is_none() && self.origin == COMMAND_LINE {
                write!(f, ": --{key}")?;
            } else {
                write!(f, ": {key}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// What the command line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Run the daemon.
    Run,
    /// `--check-config`: validate, print the effective configuration, exit.
    CheckConfig,
    /// `--version`: print the version, exit.
    Version,
    /// `--help`: print [`usage`], exit.
    Help,
}

/// The parsed command line, before any file is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// What to do. When several of `--help`, `--version`, `--check-config` are given the first
    /// in that order wins, as an operator asking for help wants help.
    pub command: Command,
    /// `--conf PATH`, if given; it must then exist.
    pub conf: Option<PathBuf>,
    /// `--KEY=VALUE` pairs in command-line order, not yet checked, so that [`load`] can report
    /// a bad key together with where it came from.
    pub overrides: Vec<(String, String)>,
}

/// Parses `timed [--conf PATH] [--KEY=VALUE ...] [--check-config] [--version] [--help]` (args
/// without `argv[0]`). `--conf PATH` and `--conf=PATH` both work. Unknown flags / positional args
/// / `--KEY` without `=VALUE` (other than the four flags) are usage errors -> Err(String
/// message). Key validity is checked later by load (so errors name the key).
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Args, String> {
    let (mut help, mut version, mut check) = (false, false, false);
    let mut conf: Option<PathBuf> = None;
    let mut overrides = Vec::new();
    let mut set_conf = |path: String| -> Result<(), String> {
        if path.is_empty() {
            return Err("--conf requires a PATH".to_string());
        }
        if conf.is_some() {
            return Err("--conf given more than once".to_string());
        }
        conf = Some(PathBuf::from(path));
        Ok(())
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--help" => help = true,
            "--version" => version = true,
            "--check-config" => check = true,
            "--conf" => match args.next() {
                // A flag where the path should be is almost surely a forgotten path.
                Some(path) if !path.starts_with("--") => set_conf(path)?,
                _ => return Err("--conf requires a PATH".to_string()),
            },
            _ => {
                let Some(rest) = arg.strip_prefix("--") else {
                    return Err(format!(
                        "unexpected argument \"{arg}\" (configuration keys are given as --KEY=VALUE)"
                    ));
                };
                match rest.split_once('=') {
                    Some(("conf", path)) => set_conf(path.to_string())?,
                    Some((flag @ ("help" | "version" | "check-config"), _)) => {
                        return Err(format!("--{flag} takes no value"));
                    }
                    Some(("", _)) => return Err(format!("missing key in \"{arg}\"")),
                    Some((key, value)) => overrides.push((key.to_string(), value.to_string())),
                    None if key_info(rest).is_some() => {
                        return Err(format!("--{rest} requires a value: --{rest}=VALUE"));
                    }
                    None => return Err(format!("unknown option \"{arg}\"")),
                }
            }
        }
    }
    let command = if help {
        Command::Help
    } else if version {
        Command::Version
    } else if check {
        Command::CheckConfig
    } else {
        Command::Run
    };
    Ok(Args {
        command,
        conf,
        overrides,
    })
}

/// Usage text for --help (lists flags and every config key with its default, one line each).
pub fn usage() -> String {
    let mut out = String::new();
    out.push_str(
        "Usage: timed [--conf PATH] [--KEY=VALUE ...] [--check-config] [--version] [--help]\n\n",
    );
    out.push_str("Keeps the masternodes of a peer-to-peer network connected in a full mesh.\n\n");
    out.push_str("Options:\n");
    let flags = [
        ("--conf PATH", format!("configuration file (default {DEFAULT_CONF_PATH} if it exists, else built-in defaults)")),
        ("--KEY=VALUE", "set a configuration key, overriding the file; masternode/addnode repeat and replace the file's list".to_string()),
        ("--check-config", "validate the configuration, print the effective configuration, exit".to_string()),
        ("--version", "print the version and exit".to_string()),
        ("--help", "print this help and exit".to_string()),
    ];
    for (flag, help) in flags {
        out.push_str(&format!("  {flag:<20} {help}\n"));
    }
    out.push_str("\nConfiguration keys (timed.conf key=value, or --KEY=VALUE):\n");
    let testnet = Config::defaults(Network::Testnet);
    let mainnet = Config::defaults(Network::Mainnet);
    for key in &KEYS {
        let mut default = testnet.values(key.name).join(", ");
        if default.is_empty() {
            default = "none".to_string();
        }
        let on_mainnet = mainnet.values(key.name).join(", ");
        if key.name != "network" && on_mainnet != testnet.values(key.name).join(", ") {
            default = format!("{default}; mainnet {on_mainnet}");
        }
        out.push_str(&format!(
            "  {:<20} {} (default: {})\n",
            key.name, key.help, default
        ));
    }
    out.push_str("\nDurations: 250ms, 30s, 5m, 2h or a number of seconds. SIGHUP re-reads the masternode list.\n");
    out.push_str("Exit status: 0 success, 1 runtime failure, 2 usage or configuration error.\n");
    out
}

/// Loads the configuration: `conf` if given (must exist: error otherwise), else
/// `/etc/timed/timed.conf` if it exists, else built-in defaults; then applies overrides
/// (command line wins; list keys `masternode`/`addnode` given on the command line REPLACE the
/// file's list; a scalar key repeated on the command line is an error); then validates.
pub fn load(conf: Option<&Path>, overrides: &[(String, String)]) -> Result<Config, ConfigError> {
    load_with_default(conf, Path::new(DEFAULT_CONF_PATH), overrides)
}

/// [`load`] with the fallback path as a parameter, so tests need not touch `/etc`.
fn load_with_default(
    conf: Option<&Path>,
    default_path: &Path,
    overrides: &[(String, String)],
) -> Result<Config, ConfigError> {
    let whole_file = |path: &Path, e: std::io::Error| ConfigError {
        origin: path.display().to_string(),
        line: None,
        key: None,
        message: format!("cannot read: {e}"),
    };
    let path = match conf {
        Some(path) => path,
        // Only "not there" falls back to defaults: a file that exists but cannot be read
        // (permissions) must not be silently replaced by defaults.
        None => match default_path.try_exists() {
            Ok(true) => default_path,
            Ok(false) => return parse_inner("", BUILT_IN, overrides),
            Err(e) => return Err(whole_file(default_path, e)),
        },
    };
    let text = std::fs::read_to_string(path).map_err(|e| whole_file(path, e))?;
    let mut config = parse_inner(&text, &path.display().to_string(), overrides)?;
    config.source = Some(if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|dir| dir.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    });
    Ok(config)
}

/// Like load but from a string (for tests and for SIGHUP re-reads); `origin` names it in
/// errors.
pub fn parse_str(
    text: &str,
    origin: &str,
    overrides: &[(String, String)],
) -> Result<Config, ConfigError> {
    parse_inner(text, origin, overrides)
}

/// Parses a duration: `250ms`, `30s`, `5m`, `2h`, or a bare number of seconds. No negatives,
/// no empty. At most a year, so that no timer computed from it can overflow.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration \"{s}\" {DURATION_HINT}");
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() {
        return Err(invalid());
    }
    let too_long = || format!("invalid duration \"{s}\": longer than a year");
    let n: u64 = number.parse().map_err(|_| too_long())?;
    let duration = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(too_long)?),
        "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(too_long)?),
        _ => return Err(invalid()),
    };
    if duration > MAX_DURATION {
        return Err(too_long());
    }
    Ok(duration)
}

/// A duration in the largest unit that states it exactly, as an operator would write it.
fn format_duration(d: Duration) -> String {
    // Rounded up: the file cannot state less than a millisecond, and zero would mean "off".
    match d.as_nanos().div_ceil(1_000_000) {
        0 => "0s".to_string(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// Where a key's value came from, kept until validation so that a cross-key error can still
/// point at the line to edit.
#[derive(Clone, Debug)]
struct Loc {
    origin: String,
    line: Option<usize>,
}

impl Loc {
    fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: self.origin.clone(),
            line: self.line,
            key: Some(key.to_string()),
            message: message.into(),
        }
    }
}

/// One `key=value` before its value is interpreted.
struct Entry {
    key: &'static KeyInfo,
    value: String,
    loc: Loc,
}

/// The first pass over the file: syntax, key names and duplicates, no values yet.
fn lex(text: &str, origin: &str) -> Result<Vec<Entry>, ConfigError> {
    let mut entries: Vec<Entry> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let loc = Loc {
            origin: origin.to_string(),
            line: Some(index + 1),
        };
        let raw = if index == 0 {
            raw.trim_start_matches('\u{feff}')
        } else {
            raw
        };
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let Some((key, value)) = content.split_once('=') else {
            return Err(match key_info(content) {
                Some(info) => loc.error(info.name, "missing \"=VALUE\""),
                None => ConfigError {
                    key: None,
                    ..loc.error("", format!("expected key=value, found \"{content}\""))
                },
            });
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() {
            return Err(ConfigError {
                key: None,
                ..loc.error("", format!("missing key before \"={value}\""))
            });
        }
        let info = key_info(key).ok_or_else(|| loc.error(key, unknown_key_message(key)))?;
        if !info.list {
            if let Some(first) = entries.iter().find(|e| e.key.name == info.name) {
                let first_line = first.loc.line.unwrap_or(0);
                return Err(loc.error(
                    info.name,
                    format!("set more than once (first at line {first_line}); only list keys (masternode, addnode) repeat"),
                ));
            }
        }
        entries.push(Entry {
            key: info,
            value: value.to_string(),
            loc,
        });
    }
    Ok(entries)
}

/// "unknown key", with the key the operator most likely meant when one is close.
fn unknown_key_message(key: &str) -> String {
    let lower = key.to_ascii_lowercase();
    let guess = KEYS
        .iter()
        .map(|k| (edit_distance(&lower, k.name), k.name))
        .min()
        .filter(|(distance, _)| *distance <= 2);
    match guess {
        Some((_, name)) => format!("unknown key (did you mean {name}?)"),
        None => "unknown key".to_string(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Merges the command line over the file's entries: a scalar replaces the file's value, a list
/// key replaces the file's whole list.
fn merge(file: Vec<Entry>, overrides: &[(String, String)]) -> Result<Vec<Entry>, ConfigError> {
    let cli = Loc {
        origin: COMMAND_LINE.to_string(),
        line: None,
    };
    let mut given: Vec<Entry> = Vec::new();
    for (key, value) in overrides {
        let info = key_info(key).ok_or_else(|| cli.error(key, unknown_key_message(key)))?;
        if !info.list && given.iter().any(|e| e.key.name == info.name) {
            return Err(cli.error(
                info.name,
                "given more than once; only list keys (masternode, addnode) repeat",
            ));
        }
        given.push(Entry {
            key: info,
            value: value.trim().to_string(),
            loc: cli.clone(),
        });
    }
    let mut merged: Vec<Entry> = file
        .into_iter()
        .filter(|f| !given.iter().any(|g| g.key.name == f.key.name))
        .collect();
    merged.extend(given);
    Ok(merged)
}

fn parse_inner(
    text: &str,
    origin: &str,
    overrides: &[(String, String)],
) -> Result<Config, ConfigError> {
    let entries = merge(lex(text, origin)?, overrides)?;

    // The network decides ports of every other key, so it is known before anything else is
    // read; an invalid one is still reported in line order, below.
    let network_entry = entries.iter().find(|e| e.key.name == "network");
    let network = match network_entry.map(|e| Network::from_name(&e.value)) {
        Some(Some(network)) => network,
        _ => Network::Testnet,
    };
    let port = network.default_port();

    let mut config = Config::defaults(network);
    let mut locs: HashMap<&'static str, Loc> = HashMap::new();
    // externalip without a port takes the listen port, which a later line may still change.
    let mut external: Option<(IpAddr, Option<u16>)> = None;

    for entry in &entries {
        let name = entry.key.name;
        let value = entry.value.as_str();
        let fail = |message: String| entry.loc.error(name, message);
        locs.entry(name).or_insert_with(|| entry.loc.clone());
        match name {
            "network" => {
                if Network::from_name(value).is_none() {
                    return Err(fail(format!(
                        "invalid network \"{value}\" (expected mainnet or testnet)"
                    )));
                }
            }
            "listen" => {
                let addr = parse_socket_addr(value, port).map_err(fail)?;
                check_bindable(addr, value).map_err(fail)?;
                config.listen = addr;
            }
            "externalip" => {
                external = if value.is_empty() {
                    None
                } else {
                    let (ip, explicit_port) = parse_ip_port(value).map_err(fail)?;
                    let ip = crate::rules::canonical_ip(ip);
                    if ip.is_unspecified() {
                        return Err(fail(format!(
                            "\"{value}\" is unspecified; externalip must be the address other nodes reach this node at"
                        )));
                    }
                    check_unicast(ip, value).map_err(fail)?;
                    if explicit_port == Some(0) {
                        return Err(fail(format!("\"{value}\": port 0 cannot be dialed")));
                    }
                    Some((ip, explicit_port))
                };
            }
            "masternode" | "addnode" => {
                let addr = parse_socket_addr(value, port).map_err(fail)?;
                if addr.ip().is_unspecified() {
                    return Err(fail(format!(
                        "\"{value}\" is an unspecified address and cannot be dialed"
                    )));
                }
                check_bindable(addr, value).map_err(fail)?;
                let list = if name == "masternode" {
                    &mut config.masternodes
                } else {
                    &mut config.addnodes
                };
                if !list.contains(&addr) {
                    list.push(addr);
                }
            }
            "discoveryurl" => {
                config.discoveryurl = if value.is_empty() {
                    None
                } else {
                    check_url(value).map_err(fail)?;
                    Some(value.to_string())
                };
            }
            "rpclisten" => {
                config.rpclisten = if value.is_empty() {
                    None
                } else {
                    let addr = parse_socket_addr(value, DEFAULT_RPC_PORT).map_err(fail)?;
                    check_bindable(addr, value).map_err(fail)?;
                    Some(addr)
                };
            }
            "maxpeers" => config.maxpeers = parse_count(value).map_err(fail)?,
            "maxinboundperip" => config.maxinboundperip = parse_count(value).map_err(fail)?,
            "loglevel" => config.loglevel = parse_level(value).map_err(fail)?,
            _ => {
                let duration = parse_duration(value).map_err(fail)?;
                *duration_field(&mut config, name) = duration;
            }
        }
    }
    config.externalip =
        external.map(|(ip, p)| SocketAddr::new(ip, p.unwrap_or(config.listen.port())));

    validate(&config, &locs, origin)?;
    Ok(config)
}

fn duration_field<'a>(config: &'a mut Config, name: &str) -> &'a mut Duration {
    match name {
        "discoveryinterval" => &mut config.discoveryinterval,
        "handshaketimeout" => &mut config.handshaketimeout,
        "pinginterval" => &mut config.pinginterval,
        "pingtimeout" => &mut config.pingtimeout,
        "reconnectmin" => &mut config.reconnectmin,
        "reconnectmax" => &mut config.reconnectmax,
        "fallbackgrace" => &mut config.fallbackgrace,
        other => unreachable!("key {other} is in KEYS but not parsed"),
    }
}

/// The cross-key rules of SPEC §3, each blamed on the key an operator would have to change.
fn validate(
    config: &Config,
    locs: &HashMap<&'static str, Loc>,
    origin: &str,
) -> Result<(), ConfigError> {
    let fallback = Loc {
        origin: origin.to_string(),
        line: None,
    };
    let at = |key: &str| locs.get(key).unwrap_or(&fallback);
    let d = format_duration;

    if config.discoveryinterval < Duration::from_secs(1) {
        return Err(at("discoveryinterval").error("discoveryinterval", "must be at least 1s"));
    }
    if config.maxpeers == 0 {
        return Err(at("maxpeers").error("maxpeers", "must be at least 1"));
    }
    if config.maxinboundperip == 0 {
        return Err(at("maxinboundperip").error("maxinboundperip", "must be at least 1"));
    }
    if config.handshaketimeout.is_zero() {
        return Err(at("handshaketimeout").error("handshaketimeout", "must be greater than 0"));
    }
    if config.pinginterval.is_zero() {
        return Err(at("pinginterval").error("pinginterval", "must be greater than 0"));
    }
    if config.pingtimeout <= config.pinginterval {
        // Blame the one the operator actually wrote: the other is the default.
        let (key, message) = if locs.contains_key("pingtimeout")
            || !locs.contains_key("pinginterval")
        {
            ("pingtimeout", format!("must be greater than pinginterval ({}), or healthy peers would be declared dead between pings", d(config.pinginterval)))
        } else {
            ("pinginterval", format!("must be less than pingtimeout ({}), or healthy peers would be declared dead between pings", d(config.pingtimeout)))
        };
        return Err(at(key).error(key, message));
    }
    if config.reconnectmin.is_zero() {
        return Err(at("reconnectmin").error(
            "reconnectmin",
            "must be greater than 0, or a failing peer would be redialed in a tight loop",
        ));
    }
    if config.reconnectmin > config.reconnectmax {
        let (key, message) =
            if locs.contains_key("reconnectmin") || !locs.contains_key("reconnectmax") {
                (
                    "reconnectmin",
                    format!("must not exceed reconnectmax ({})", d(config.reconnectmax)),
                )
            } else {
                (
                    "reconnectmax",
                    format!(
                        "must not be less than reconnectmin ({})",
                        d(config.reconnectmin)
                    ),
                )
            };
        return Err(at(key).error(key, message));
    }
    let first_masternode = locs.get("masternode").or_else(|| locs.get("discoveryurl"));
    if config.maxpeers <= config.masternodes.len() {
        let loc = locs
            .get("maxpeers")
            .or(first_masternode)
            .unwrap_or(&fallback);
        return Err(loc.error(
            "maxpeers",
            format!(
                "{} leaves no room: it must be greater than the number of masternodes ({}) so that every listed masternode fits",
                config.maxpeers,
                config.masternodes.len()
            ),
        ));
    }
    if (!config.masternodes.is_empty() || config.discoveryurl.is_some())
        && config.local_address().is_none()
    {
        let loc = locs.get("listen").or(first_masternode).unwrap_or(&fallback);
        return Err(loc.error(
            "externalip",
            format!(
                "this node's own address cannot be known: listen={} is unspecified and externalip is not set, \
                 so the masternode ordering rule cannot decide which side dials; set externalip=IP",
                config.listen
            ),
        ));
    }
    Ok(())
}

/// `IP:PORT`, `[v6]:PORT`, bare `IP`, bare `v6` or `[v6]`; the port is `None` when not given.
fn parse_ip_port(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok((addr.ip(), Some(addr.port())));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok((ip, None));
    }
    if let Some(Ok(ip)) = s
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .map(|inner| inner.parse::<std::net::Ipv6Addr>())
    {
        return Ok((IpAddr::V6(ip), None));
    }
    Err(format!(
        "invalid address \"{s}\" (expected IP, IP:PORT or [IPv6]:PORT; host names are not resolved)"
    ))
}

/// An address with `default_port` filled in, canonical so that one node has one name.
fn parse_socket_addr(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    let (ip, port) = parse_ip_port(s)?;
    Ok(canonical(SocketAddr::new(ip, port.unwrap_or(default_port))))
}

/// Rejects what can be neither bound nor dialed as one peer: group addresses and port 0
/// (which would bind a random port no peer could know).
fn check_bindable(addr: SocketAddr, text: &str) -> Result<(), String> {
    check_unicast(addr.ip(), text)?;
    if addr.port() == 0 {
        return Err(format!("\"{text}\": port 0 is not allowed"));
    }
    Ok(())
}

fn check_unicast(ip: IpAddr, text: &str) -> Result<(), String> {
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_multicast() || broadcast {
        return Err(format!(
            "\"{text}\" is a multicast or broadcast address, not a single node"
        ));
    }
    Ok(())
}

fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("\"{url}\" must start with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("\"{url}\" has no host"));
    }
    if url.chars().any(char::is_whitespace) {
        return Err(format!("\"{url}\" contains whitespace"));
    }
    Ok(())
}

fn parse_count(s: &str) -> Result<usize, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid number \"{s}\" (expected a whole number)"));
    }
    s.parse()
        .map_err(|_| format!("number \"{s}\" is too large"))
}

fn parse_level(s: &str) -> Result<LevelFilter, String> {
    Ok(match s {
        "error" => LevelFilter::Error,
        "warn" => LevelFilter::Warn,
        "info" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => {
            return Err(format!(
                "invalid log level \"{s}\" (expected error, warn, info, debug or trace)"
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_str(text, "/etc/timed/timed.conf", &[])
    }

    fn ok(text: &str) -> Config {
        parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(text: &str) -> ConfigError {
        match parse(text) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(e) => e,
        }
    }

    fn ov(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn args(list: &[&str]) -> Result<Args, String> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    /// A masternode setup that passes validation, for tests about other keys.
    const MESH: &str =
        "listen=127.0.0.2:24100\nmasternode=127.0.0.2:24100\nmasternode=127.0.0.3:24100\n";

    #[test]
    fn defaults_are_the_spec_table() {
        let c = Config::default();
        assert_eq!(c.network, Network::Testnet);
        assert_eq!(c.listen, addr("0.0.0.0:24100"));
        assert_eq!(c.externalip, None);
        assert!(c.masternodes.is_empty());
        assert!(c.addnodes.is_empty());
        assert_eq!(c.discoveryurl, None);
        assert_eq!(c.discoveryinterval, Duration::from_secs(600));
        assert_eq!(c.rpclisten, Some(addr("127.0.0.1:8332")));
        assert_eq!(c.maxpeers, 125);
        assert_eq!(c.maxinboundperip, 4);
        assert_eq!(c.handshaketimeout, Duration::from_secs(10));
        assert_eq!(c.pinginterval, Duration::from_secs(30));
        assert_eq!(c.pingtimeout, Duration::from_secs(90));
        assert_eq!(c.reconnectmin, Duration::from_secs(1));
        assert_eq!(c.reconnectmax, Duration::from_secs(60));
        assert_eq!(c.fallbackgrace, Duration::from_secs(60));
        assert_eq!(c.loglevel, LevelFilter::Info);
        assert_eq!(c.source, None);
        assert_eq!(c.local_address(), None);
        assert!(!c.is_masternode());
    }

    #[test]
    fn empty_text_is_the_defaults() {
        assert_eq!(ok(""), Config::default());
        assert_eq!(ok("\n\n   \n# only comments\n"), Config::default());
    }

    #[test]
    fn every_key_is_read() {
        let c = ok("network=mainnet\n\
                    listen=10.0.0.5:24001\n\
                    externalip=203.0.113.7:24002\n\
                    masternode=10.0.0.1:24000\n\
                    masternode=10.0.0.2\n\
                    addnode=10.0.1.1:9999\n\
                    discoveryurl=https://example.org/masternodes.json\n\
                    discoveryinterval=5m\n\
                    rpclisten=127.0.0.1:9000\n\
                    maxpeers=50\n\
                    maxinboundperip=2\n\
                    handshaketimeout=5s\n\
                    pinginterval=250ms\n\
                    pingtimeout=2\n\
                    reconnectmin=500ms\n\
                    reconnectmax=2m\n\
                    fallbackgrace=1h\n\
                    loglevel=debug\n");
        assert_eq!(c.network, Network::Mainnet);
        assert_eq!(c.listen, addr("10.0.0.5:24001"));
        assert_eq!(c.externalip, Some(addr("203.0.113.7:24002")));
        assert_eq!(
            c.masternodes,
            vec![addr("10.0.0.1:24000"), addr("10.0.0.2:24000")]
        );
        assert_eq!(c.addnodes, vec![addr("10.0.1.1:9999")]);
        assert_eq!(
            c.discoveryurl.as_deref(),
            Some("https://example.org/masternodes.json")
        );
        assert_eq!(c.discoveryinterval, Duration::from_secs(300));
        assert_eq!(c.rpclisten, Some(addr("127.0.0.1:9000")));
        assert_eq!(c.maxpeers, 50);
        assert_eq!(c.maxinboundperip, 2);
        assert_eq!(c.handshaketimeout, Duration::from_secs(5));
        assert_eq!(c.pinginterval, Duration::from_millis(250));
        assert_eq!(c.pingtimeout, Duration::from_secs(2));
        assert_eq!(c.reconnectmin, Duration::from_millis(500));
        assert_eq!(c.reconnectmax, Duration::from_secs(120));
        assert_eq!(c.fallbackgrace, Duration::from_secs(3600));
        assert_eq!(c.loglevel, LevelFilter::Debug);
        assert_eq!(c.local_address(), Some(addr("203.0.113.7:24002")));
        assert!(!c.is_masternode());
    }

    #[test]
    fn every_table_key_is_accepted() {
        // Guards the KEYS table against a key that lex accepts but parse_inner forgets.
        let valid = |key: &str| match key {
            "network" => "mainnet",
            "listen" | "masternode" => "127.0.0.2:24100",
            "externalip" | "addnode" => "127.0.0.9",
            "discoveryurl" => "http://x",
            "rpclisten" => "127.0.0.1:1",
            "maxpeers" | "maxinboundperip" => "7",
            "loglevel" => "warn",
            "pingtimeout" => "31s",
            _ => "20s",
        };
        for key in &KEYS {
            let text = format!("listen=127.0.0.2:24100\n{}={}\n", key.name, valid(key.name));
            let text = if key.name == "listen" {
                format!("{}={}\n", key.name, valid(key.name))
            } else {
                text
            };
            let c = ok(&text);
            let reread = ok(&c.to_conf_string());
            assert_eq!(reread, c, "{}", key.name);
            assert_ne!(
                c.values(key.name),
                Config::default().values(key.name),
                "{} had no effect",
                key.name
            );
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(12)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        for bad in [
            "",
            "abc",
            "-5",
            "+5",
            "5 s",
            " 5s",
            "5S",
            "1.5s",
            "s",
            "ms",
            "5d",
            "5sec",
            "10mm",
            "99999999999999999999999",
            "9999999999h",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains(&format!("\"{bad}\"")), "{bad}: {e}");
        }
        assert_eq!(
            parse_duration("abc").unwrap_err(),
            "invalid duration \"abc\" (expected 250ms, 30s, 5m or a number of seconds)"
        );
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        assert!(parse_duration("8761h").is_err());
    }

    #[test]
    fn durations_are_written_in_the_largest_exact_unit() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(600), "10m"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_secs(5400), "90m"),
            (Duration::from_nanos(1), "1ms"),
        ];
        for (d, text) in cases {
            assert_eq!(format_duration(d), text);
        }
    }

    #[test]
    fn comments_blanks_and_whitespace() {
        let c = ok("\u{feff}# header\r\n\
                    \r\n\
                    \t  maxpeers = 40   # trailing comment\r\n\
                    #maxpeers=7\n\
                    loglevel=trace#no space before comment\n\
                    rpclisten =   \n");
        assert_eq!(c.maxpeers, 40);
        assert_eq!(c.loglevel, LevelFilter::Trace);
        assert_eq!(c.rpclisten, None);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = err("# comment\nmaxpeers=10\npinginterwal=30s\n");
        assert_eq!(e.origin, "/etc/timed/timed.conf");
        assert_eq!(e.line, Some(3));
        assert_eq!(e.key.as_deref(), Some("pinginterwal"));
        assert_eq!(
            e.to_string(),
            "/etc/timed/timed.conf:3: pinginterwal: unknown key (did you mean pinginterval?)"
        );
        let e = err("frobnicate=1\n");
        assert_eq!(
            e.to_string(),
            "/etc/timed/timed.conf:1: frobnicate: unknown key"
        );
        // Keys are case-sensitive, like bitcoin.conf, but the hint shows the right spelling.
        assert!(err("MaxPeers=3").message.contains("did you mean maxpeers?"));
    }

    #[test]
    fn lines_without_a_key_value_pair() {
        let e = err("maxpeers=3\njust some words\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(2), None));
        assert_eq!(
            e.to_string(),
            "/etc/timed/timed.conf:2: expected key=value, found \"just some words\""
        );
        let e = err("masternode\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(1), Some("masternode")));
        let e = err("\n=5\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(2), None));
    }

    #[test]
    fn bad_values_name_file_line_and_key() {
        let e = err("\n\npinginterval=abc\n");
        assert_eq!(
            e.to_string(),
            "/etc/timed/timed.conf:3: pinginterval: invalid duration \"abc\" (expected 250ms, 30s, 5m or a number of seconds)"
        );
        for (text, key) in [
            ("network=regtest", "network"),
            ("listen=localhost:24100", "listen"),
            ("maxpeers=many", "maxpeers"),
            ("maxpeers=-1", "maxpeers"),
            ("maxpeers=99999999999999999999999999", "maxpeers"),
            ("maxinboundperip=", "maxinboundperip"),
            ("loglevel=verbose", "loglevel"),
            ("loglevel=INFO", "loglevel"),
            ("loglevel=off", "loglevel"),
            ("handshaketimeout=", "handshaketimeout"),
            ("masternode=", "masternode"),
            ("addnode=host.example:1", "addnode"),
            ("rpclisten=nope", "rpclisten"),
            ("fallbackgrace=-1s", "fallbackgrace"),
        ] {
            let e = err(text);
            assert_eq!(
                (e.line, e.key.as_deref()),
                (Some(1), Some(key)),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn duplicate_scalar_is_an_error() {
        let e = err("pinginterval=30s\nmaxpeers=5\npinginterval=30s\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("pinginterval")));
        assert!(e.message.contains("first at line 1"), "{e}");
        // An empty value is still a setting.
        let e = err("externalip=\nexternalip=1.2.3.4\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("externalip")));
    }

    #[test]
    fn list_keys_repeat_canonical_and_deduplicated() {
        let c = ok("listen=127.0.0.2:24100\n\
                    masternode=127.0.0.3:24100\n\
                    masternode=127.0.0.2\n\
                    masternode=[::ffff:127.0.0.3]:24100\n\
                    masternode=127.0.0.10:24100\n\
                    masternode=127.0.0.2:24100\n\
                    addnode=10.1.1.1\n\
                    addnode=[::ffff:10.1.1.1]:24100\n\
                    addnode=10.1.1.2:5\n");
        assert_eq!(
            c.masternodes,
            vec![
                addr("127.0.0.3:24100"),
                addr("127.0.0.2:24100"),
                addr("127.0.0.10:24100")
            ]
        );
        assert_eq!(c.addnodes, vec![addr("10.1.1.1:24100"), addr("10.1.1.2:5")]);
        assert!(c.is_masternode());
    }

    #[test]
    fn mainnet_ports_apply_regardless_of_line_order() {
        let c = ok("masternode=10.0.0.1\nmasternode=[2001:db8::1]\naddnode=10.0.0.9\nexternalip=10.0.0.1\nnetwork=mainnet\n");
        assert_eq!(c.network, Network::Mainnet);
        assert_eq!(c.listen, addr("0.0.0.0:24000"));
        assert_eq!(
            c.masternodes,
            vec![addr("10.0.0.1:24000"), addr("[2001:db8::1]:24000")]
        );
        assert_eq!(c.addnodes, vec![addr("10.0.0.9:24000")]);
        assert_eq!(c.externalip, Some(addr("10.0.0.1:24000")));
        assert!(c.is_masternode());
        // An explicit listen port is kept on mainnet.
        assert_eq!(
            ok("listen=0.0.0.0:1234\nnetwork=mainnet").listen,
            addr("0.0.0.0:1234")
        );
        // And bare IPs in listen get the network's port.
        assert_eq!(
            ok("listen=10.0.0.1\nnetwork=mainnet").listen,
            addr("10.0.0.1:24000")
        );
    }

    #[test]
    fn a_bad_network_is_reported_in_line_order() {
        let e = err("maxpeers=x\nnetwork=moon\n");
        assert_eq!(e.line, Some(1));
        let e = err("maxpeers=3\nnetwork=moon\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("network")));
        assert!(e.message.contains("mainnet or testnet"));
    }

    #[test]
    fn externalip_port_defaults_to_the_listen_port_wherever_listen_is() {
        let c = ok("externalip=198.51.100.4\nlisten=0.0.0.0:25000\n");
        assert_eq!(c.externalip, Some(addr("198.51.100.4:25000")));
        let c = ok("externalip=198.51.100.4:26000\nlisten=0.0.0.0:25000\n");
        assert_eq!(c.externalip, Some(addr("198.51.100.4:26000")));
        let c = ok("externalip=[::ffff:198.51.100.4]:7");
        assert_eq!(c.externalip, Some(addr("198.51.100.4:7")));
        let c = ok("externalip=2001:db8::4");
        assert_eq!(c.externalip, Some(addr("[2001:db8::4]:24100")));
    }

    #[test]
    fn ipv6_entries() {
        let c = ok("listen=[2001:db8::10]:24100\n\
                    masternode=[2001:db8::1]:24100\n\
                    masternode=2001:db8::2\n\
                    masternode=[2001:db8::3]\n\
                    masternode=[2001:db8::10]:24100\n\
                    rpclisten=[::1]\n");
        assert_eq!(
            c.masternodes,
            vec![
                addr("[2001:db8::1]:24100"),
                addr("[2001:db8::2]:24100"),
                addr("[2001:db8::3]:24100"),
                addr("[2001:db8::10]:24100"),
            ]
        );
        assert_eq!(c.rpclisten, Some(addr("[::1]:8332")));
        assert!(c.is_masternode());
        assert_eq!(ok("listen=[::]:24100").listen, addr("[::]:24100"));
    }

    #[test]
    fn v4_mapped_addresses_are_canonicalized() {
        let c = ok("listen=[::ffff:127.0.0.2]:24100\nmasternode=::ffff:127.0.0.2\nexternalip=::ffff:127.0.0.2");
        assert_eq!(c.listen, addr("127.0.0.2:24100"));
        assert_eq!(c.masternodes, vec![addr("127.0.0.2:24100")]);
        assert_eq!(c.externalip, Some(addr("127.0.0.2:24100")));
        assert_eq!(c.local_address(), Some(addr("127.0.0.2:24100")));
        assert!(c.is_masternode());
    }

    #[test]
    fn undialable_peer_addresses_are_rejected() {
        for bad in [
            "0.0.0.0:24100",
            "0.0.0.0",
            "[::]:24100",
            "::",
            "::ffff:0.0.0.0",
            "224.0.0.1:24100",
            "[ff02::1]:24100",
            "255.255.255.255",
            "10.0.0.1:0",
            "10.0.0.1:65536",
            "10.0.0.1:",
            "node1.example.com:24100",
            "10.0.0",
        ] {
            for key in ["masternode", "addnode"] {
                let e = err(&format!("listen=127.0.0.2:24100\n{key}={bad}\n"));
                assert_eq!(
                    (e.line, e.key.as_deref()),
                    (Some(2), Some(key)),
                    "{key}={bad}: {e}"
                );
            }
        }
    }

    #[test]
    fn externalip_and_listen_checks() {
        for bad in [
            "0.0.0.0",
            "[::]:24100",
            "224.1.1.1",
            "1.2.3.4:0",
            "example.com",
        ] {
            let e = err(&format!("externalip={bad}"));
            assert_eq!(e.key.as_deref(), Some("externalip"), "{bad}: {e}");
        }
        for bad in ["0.0.0.0:0", "239.0.0.1:24100", "x"] {
            let e = err(&format!("listen={bad}"));
            assert_eq!(e.key.as_deref(), Some("listen"), "{bad}: {e}");
        }
        assert_eq!(
            err("rpclisten=127.0.0.1:0").key.as_deref(),
            Some("rpclisten")
        );
    }

    #[test]
    fn empty_values_disable_optional_keys() {
        let c = ok("externalip=\ndiscoveryurl=\nrpclisten=\n");
        assert_eq!(
            (c.externalip, c.discoveryurl.clone(), c.rpclisten),
            (None, None, None)
        );
        assert_eq!(
            ok("rpclisten=0.0.0.0").rpclisten,
            Some(addr("0.0.0.0:8332"))
        );
    }

    #[test]
    fn discoveryurl_checks() {
        let with = |url: &str| format!("{MESH}discoveryurl={url}\n");
        assert_eq!(
            ok(&with("http://10.0.0.1/x")).discoveryurl.as_deref(),
            Some("http://10.0.0.1/x")
        );
        assert_eq!(
            ok(&with("https://example.org")).discoveryurl.as_deref(),
            Some("https://example.org")
        );
        for bad in [
            "ftp://example.org",
            "example.org/list",
            "https://",
            "http:///x",
            "https://a b",
        ] {
            let e = err(&with(bad));
            assert_eq!(
                (e.line, e.key.as_deref()),
                (Some(4), Some("discoveryurl")),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn loglevels() {
        for (text, level) in [
            ("error", LevelFilter::Error),
            ("warn", LevelFilter::Warn),
            ("info", LevelFilter::Info),
            ("debug", LevelFilter::Debug),
            ("trace", LevelFilter::Trace),
        ] {
            assert_eq!(ok(&format!("loglevel={text}")).loglevel, level);
        }
    }

    #[test]
    fn range_validation() {
        for (text, key, line) in [
            ("pinginterval=0", "pinginterval", Some(1)),
            ("handshaketimeout=0ms", "handshaketimeout", Some(1)),
            ("reconnectmin=0", "reconnectmin", Some(1)),
            ("maxpeers=0", "maxpeers", Some(1)),
            ("maxinboundperip=0", "maxinboundperip", Some(1)),
            ("discoveryinterval=999ms", "discoveryinterval", Some(1)),
            ("discoveryinterval=0", "discoveryinterval", Some(1)),
            // Blame the key the operator wrote, not the default it collides with.
            ("pingtimeout=30s", "pingtimeout", Some(1)),
            ("pingtimeout=10s", "pingtimeout", Some(1)),
            ("\npinginterval=90s", "pinginterval", Some(2)),
            ("pinginterval=5m\npingtimeout=1m", "pingtimeout", Some(2)),
            ("reconnectmin=61s", "reconnectmin", Some(1)),
            ("reconnectmax=500ms", "reconnectmax", Some(1)),
            ("reconnectmax=1s\nreconnectmin=2s", "reconnectmin", Some(2)),
        ] {
            let e = err(text);
            assert_eq!((e.key.as_deref(), e.line), (Some(key), line), "{text}: {e}");
            assert!(e.to_string().starts_with("/etc/timed/timed.conf:"), "{e}");
        }
        // Boundaries that are fine.
        let c = ok("discoveryinterval=1s\nreconnectmin=5s\nreconnectmax=5s\npingtimeout=31s\nfallbackgrace=0\nmaxpeers=1\nmaxinboundperip=1");
        assert_eq!(c.fallbackgrace, Duration::ZERO);
    }

    #[test]
    fn maxpeers_must_fit_every_masternode() {
        let e =
            err("listen=127.0.0.2:24100\nmasternode=127.0.0.2\nmasternode=127.0.0.3\nmaxpeers=2\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(4), Some("maxpeers")));
        assert!(e.message.contains("(2)"), "{e}");
        assert_eq!(ok(&format!("{MESH}maxpeers=3")).maxpeers, 3);
        // Too many masternodes for the default: blamed on maxpeers at the first masternode line.
        let mut text = String::from("listen=10.0.0.1:1\n");
        for i in 1..=125 {
            text.push_str(&format!("masternode=10.0.{}.{}\n", i / 200, i % 200 + 1));
        }
        let e = err(&text);
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("maxpeers")));
    }

    #[test]
    fn masternodes_need_a_known_own_address() {
        // listen in the file: its line is named.
        let e = err("masternode=10.0.0.1\nlisten=0.0.0.0:24100\nmasternode=10.0.0.2\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("externalip")));
        assert!(e.message.contains("set externalip=IP"), "{e}");
        assert!(
            e.to_string()
                .starts_with("/etc/timed/timed.conf:2: externalip: "),
            "{e}"
        );
        // listen defaulted: the first masternode line is named.
        let e = err("maxpeers=10\n\nmasternode=10.0.0.1\nmasternode=10.0.0.2\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(3), Some("externalip")));
        // IPv6 unspecified is just as unknown.
        assert_eq!(
            err("listen=[::]:24100\nmasternode=10.0.0.1").key.as_deref(),
            Some("externalip")
        );
        // discoveryurl alone also needs it.
        let e = err("\ndiscoveryurl=https://example.org/mn.json\n");
        assert_eq!((e.line, e.key.as_deref()), (Some(2), Some("externalip")));
        // From the command line, the command line is named.
        let e = parse_str("", "/x.conf", &ov(&[("masternode", "10.0.0.1")])).unwrap_err();
        assert_eq!(
            (e.origin.as_str(), e.line, e.key.as_deref()),
            ("command line", None, Some("externalip"))
        );
        // Either fix works.
        let c = ok("masternode=10.0.0.1\nmasternode=10.0.0.2\nexternalip=10.0.0.2\n");
        assert!(c.is_masternode());
        assert_eq!(c.local_address(), Some(addr("10.0.0.2:24100")));
        let c = ok("masternode=10.0.0.1\nlisten=10.0.0.3\n");
        assert!(!c.is_masternode());
        assert_eq!(c.local_address(), Some(addr("10.0.0.3:24100")));
        // A plain node without masternodes needs no address.
        assert_eq!(ok("addnode=10.0.0.1").local_address(), None);
    }

    #[test]
    fn local_address_and_is_masternode() {
        let mut c = Config::default();
        assert_eq!(c.local_address(), None);
        c.listen = addr("[::ffff:127.0.0.5]:24100");
        assert_eq!(c.local_address(), Some(addr("127.0.0.5:24100")));
        c.masternodes = vec![addr("127.0.0.5:24100")];
        assert!(c.is_masternode());
        c.externalip = Some(addr("127.0.0.6:24100"));
        assert_eq!(c.local_address(), Some(addr("127.0.0.6:24100")));
        assert!(!c.is_masternode());
        // Same IP, different port: a different node.
        c.externalip = Some(addr("127.0.0.5:24101"));
        assert!(!c.is_masternode());
    }

    #[test]
    fn overrides_beat_scalars_and_replace_lists() {
        let file = "listen=127.0.0.2:24100\npinginterval=10s\nmasternode=127.0.0.2\nmasternode=127.0.0.3\naddnode=10.9.9.9\n";
        let c = parse_str(
            file,
            "f",
            &ov(&[
                ("pinginterval", "20s"),
                ("masternode", "127.0.0.4"),
                ("masternode", "127.0.0.2"),
                ("loglevel", "warn"),
            ]),
        )
        .unwrap();
        assert_eq!(c.pinginterval, Duration::from_secs(20));
        assert_eq!(
            c.masternodes,
            vec![addr("127.0.0.4:24100"), addr("127.0.0.2:24100")]
        );
        assert_eq!(c.addnodes, vec![addr("10.9.9.9:24100")]);
        assert_eq!(c.loglevel, LevelFilter::Warn);
        // A command-line network also sets the port of the file's bare IPs.
        let c = parse_str(
            "masternode=10.0.0.1\nexternalip=10.0.0.1",
            "f",
            &ov(&[("network", "mainnet")]),
        )
        .unwrap();
        assert_eq!(c.masternodes, vec![addr("10.0.0.1:24000")]);
        // Overriding a file key that is set is not a duplicate.
        let c = parse_str("maxpeers=5\n", "f", &ov(&[("maxpeers", "6")])).unwrap();
        assert_eq!(c.maxpeers, 6);
        // Overrides clear optional values too.
        let c = parse_str("", "f", &ov(&[("rpclisten", "")])).unwrap();
        assert_eq!(c.rpclisten, None);
    }

    #[test]
    fn override_errors_name_the_command_line() {
        let e = parse_str("", "f", &ov(&[("pinginterval", "abc")])).unwrap_err();
        assert_eq!(
            (e.origin.as_str(), e.line, e.key.as_deref()),
            ("command line", None, Some("pinginterval"))
        );
        assert_eq!(
            e.to_string(),
            "command line: --pinginterval: invalid duration \"abc\" (expected 250ms, 30s, 5m or a number of seconds)"
        );
        let e = parse_str("", "f", &ov(&[("maxpeers", "3"), ("maxpeers", "4")])).unwrap_err();
        assert_eq!(
            (e.origin.as_str(), e.key.as_deref()),
            ("command line", Some("maxpeers"))
        );
        let e = parse_str("", "f", &ov(&[("bogus", "1")])).unwrap_err();
        assert_eq!(e.to_string(), "command line: --bogus: unknown key");
        // A cross-key error blames the command line when the key came from there.
        let e = parse_str("pinginterval=30s", "f", &ov(&[("pingtimeout", "30s")])).unwrap_err();
        assert_eq!(
            (e.origin.as_str(), e.key.as_deref()),
            ("command line", Some("pingtimeout"))
        );
        // File errors are found before command-line ones and still name the file.
        let e = parse_str("bogus=1", "f", &ov(&[("bogus", "1")])).unwrap_err();
        assert_eq!((e.origin.as_str(), e.line), ("f", Some(1)));
    }

    #[test]
    fn error_display_forms() {
        let e = ConfigError {
            origin: "/x/timed.conf".into(),
            line: None,
            key: None,
            message: "cannot read: gone".into(),
        };
        assert_eq!(e.to_string(), "/x/timed.conf: cannot read: gone");
        let e = ConfigError {
            origin: "/x".into(),
            line: Some(4),
            key: Some("maxpeers".into()),
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "/x:4: maxpeers: bad");
        let e = ConfigError {
            origin: "/x".into(),
            line: None,
            key: Some("maxpeers".into()),
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "/x: maxpeers: bad");
        let _: &dyn std::error::Error = &e;
    }

    #[test]
    fn parse_args_cases() {
        assert_eq!(
            args(&[]),
            Ok(Args {
                command: Command::Run,
                conf: None,
                overrides: vec![]
            })
        );
        let a = args(&[
            "--conf",
            "/tmp/a.conf",
            "--maxpeers=5",
            "--masternode=1.2.3.4",
            "--masternode=1.2.3.5",
            "--rpclisten=",
        ])
        .unwrap();
        assert_eq!(a.command, Command::Run);
        assert_eq!(a.conf, Some(PathBuf::from("/tmp/a.conf")));
        assert_eq!(
            a.overrides,
            ov(&[
                ("maxpeers", "5"),
                ("masternode", "1.2.3.4"),
                ("masternode", "1.2.3.5"),
                ("rpclisten", "")
            ])
        );
        assert_eq!(
            args(&["--conf=/etc/x.conf"]).unwrap().conf,
            Some(PathBuf::from("/etc/x.conf"))
        );
        assert_eq!(
            args(&["--check-config"]).unwrap().command,
            Command::CheckConfig
        );
        assert_eq!(args(&["--version"]).unwrap().command, Command::Version);
        assert_eq!(args(&["--help"]).unwrap().command, Command::Help);
        assert_eq!(
            args(&["--check-config", "--help"]).unwrap().command,
            Command::Help
        );
        assert_eq!(
            args(&["--check-config", "--version"]).unwrap().command,
            Command::Version
        );
        // Values may contain '='; unknown keys pass here and are named by load.
        assert_eq!(
            args(&["--discoveryurl=http://x/?a=b"]).unwrap().overrides,
            ov(&[("discoveryurl", "http://x/?a=b")])
        );
        assert_eq!(
            args(&["--nosuchkey=1"]).unwrap().overrides,
            ov(&[("nosuchkey", "1")])
        );
        for bad in [
            &["--conf"][..],
            &["--conf", "--check-config"],
            &["--conf="],
            &["--conf", "a", "--conf", "b"],
            &["--maxpeers"],
            &["--frobnicate"],
            &["-h"],
            &["positional"],
            &["--=5"],
            &["--help=yes"],
            &["--check-config=1"],
            &["--"],
        ] {
            assert!(args(bad).is_err(), "{bad:?}");
        }
        assert!(args(&["--maxpeers"])
            .unwrap_err()
            .contains("--maxpeers=VALUE"));
    }

    #[test]
    fn usage_lists_flags_and_every_key_with_its_default() {
        let text = usage();
        for flag in [
            "--conf PATH",
            "--KEY=VALUE",
            "--check-config",
            "--version",
            "--help",
        ] {
            assert!(text.contains(flag), "{flag}");
        }
        for key in &KEYS {
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{} ", key.name)))
                .unwrap_or_else(|| panic!("no line for {}", key.name));
            assert!(line.contains("default: "), "{line}");
        }
        assert!(text.contains("0.0.0.0:24100; mainnet 0.0.0.0:24000"));
        assert!(text.contains("(default: 90s)"));
        assert!(text.contains("(default: 127.0.0.1:8332)"));
    }

    #[test]
    fn to_conf_string_round_trips() {
        let default = Config::default();
        let text = default.to_conf_string();
        assert_eq!(ok(&text), default);
        for key in &KEYS {
            assert!(text.contains(key.name), "{} missing from\n{text}", key.name);
        }
        assert!(text.contains("pingtimeout=90s\n"));
        assert!(text.contains("discoveryinterval=10m\n"));
        assert!(text.contains("externalip=\n"));

        let busy = ok("network=mainnet\n\
                       listen=[::]:24000\n\
                       externalip=[2001:db8::5]\n\
                       masternode=[2001:db8::5]\n\
                       masternode=10.0.0.1\n\
                       masternode=10.0.0.2:1\n\
                       addnode=10.0.0.3\n\
                       addnode=[2001:db8::9]:7\n\
                       discoveryurl=https://example.org/list?x=1\n\
                       discoveryinterval=90m\n\
                       rpclisten=\n\
                       maxpeers=10\n\
                       maxinboundperip=3\n\
                       handshaketimeout=1500ms\n\
                       pinginterval=250ms\n\
                       pingtimeout=1s\n\
                       reconnectmin=100ms\n\
                       reconnectmax=2h\n\
                       fallbackgrace=0\n\
                       loglevel=error\n");
        let text = busy.to_conf_string();
        assert_eq!(ok(&text), busy, "{text}");
        assert_eq!(text.matches("masternode=").count(), 3);
        assert!(text.contains("rpclisten=\n"));
        assert!(text.contains("handshaketimeout=1500ms\n"));
        assert!(text.contains("fallbackgrace=0s\n"));
    }

    #[test]
    fn shipped_conf_is_the_defaults() {
        let text = include_str!("../conf/timed.conf");
        let c = parse_str(text, "conf/timed.conf", &[]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c, Config::default());
        // Every key is documented with its default as a commented-out line, so uncommenting
        // one line changes exactly that setting.
        let defaults = Config::default();
        for key in &KEYS {
            let prefix = format!("#{}=", key.name);
            let line = text
                .lines()
                .find(|l| l.starts_with(&prefix))
                .unwrap_or_else(|| panic!("conf/timed.conf lacks a {prefix} line"));
            if !key.list {
                // Compared by meaning: the file may say 60s where to_conf_string says 1m.
                let alone = parse_str(&line[1..], "line", &[]).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(alone.values(key.name), defaults.values(key.name), "{line}");
            }
        }
    }

    #[test]
    fn load_reads_files_and_reports_missing_ones() {
        let dir = std::env::temp_dir().join(format!("timed-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("timed.conf");
        std::fs::write(&path, "maxpeers=42\naddnode=10.0.0.1\n").unwrap();

        let c = load(Some(&path), &ov(&[("maxinboundperip", "9")])).unwrap();
        assert_eq!((c.maxpeers, c.maxinboundperip), (42, 9));
        assert_eq!(c.source.as_deref(), Some(path.as_path()));
        assert!(c.to_conf_string().contains(&path.display().to_string()));

        // The fallback path is used when --conf is absent.
        let c = load_with_default(None, &path, &[]).unwrap();
        assert_eq!(
            (c.maxpeers, c.source.as_deref()),
            (42, Some(path.as_path()))
        );

        // No fallback file: built-in defaults plus the command line.
        let missing = dir.join("absent.conf");
        let c = load_with_default(None, &missing, &ov(&[("maxpeers", "7")])).unwrap();
        assert_eq!(
            c,
            Config {
                maxpeers: 7,
                ..Config::default()
            }
        );

        // An explicit --conf must exist.
        let e = load(Some(&missing), &[]).unwrap_err();
        assert_eq!((e.line, e.key.as_deref()), (None, None));
        assert_eq!(
            e.to_string(),
            format!(
                "{}: cannot read: No such file or directory (os error 2)",
                missing.display()
            )
        );

        // Errors inside the file name it as the operator gave it.
        std::fs::write(&path, "maxpeers=42\nmaxpeers=43\n").unwrap();
        let e = load(Some(&path), &[]).unwrap_err();
        assert_eq!(
            e.to_string().split(": ").next().unwrap(),
            format!("{}:2", path.display())
        );

        std::fs::remove_dir_all(&dir).unwrap();
    }
}
