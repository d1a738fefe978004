//! Wiring: binds the listeners, starts the reactor, status and signal threads, and runs the
//! registry thread, which alone owns the [`Registry`] and routes its outputs to the edges.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use log::{debug, error, info, warn};
use mio::Waker;

use crate::config::{Config, ConfigError};
use crate::discovery;
use crate::peer::{Command, WorkerContext, WorkerHandle};
use crate::reactor::{Reactor, ReactorCommand};
use crate::registry::{ConnId, Input, Output, Registry, Settings};
use crate::session::LocalInfo;
use crate::signals::{self, Signal};
use crate::status::{self, Answer, Query};

/// Messages to the registry thread waiting in its inbox: plenty for every peer's events, and
/// bounded so a misbehaving edge slows down instead of eating memory. (crossbeam allocates a
/// bounded channel's slots up front, so this is also resident memory from the start.)
const INBOX: usize = 1024;
/// How long the status endpoint waits for the registry.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// From the shutdown signal to exit: every graceful close must be done by then.
const SHUTDOWN_DEADLINE: Duration = Duration::from_millis(4500);

/// Monotonic time since the daemon started: the `now` every state machine is given.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    /// A clock starting at zero now.
    pub fn start() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }

    /// Time since the start.
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// The registry thread's inbox.
pub enum Msg {
    /// An input for the registry state machine.
    Input(Input),
    /// A worker started for this connection; commands for it go through the handle.
    Attach(ConnId, WorkerHandle),
    /// A status query, answered on the sender.
    Query(Query, Sender<Answer>),
    /// The configuration's lists, re-read on SIGHUP.
    Configured {
        /// `masternode` entries.
        masternodes: Vec<SocketAddr>,
        /// `addnode` entries.
        addnodes: Vec<SocketAddr>,
    },
    /// Masternodes from `discoveryurl`, changed since the last fetch.
    Discovered(Vec<SocketAddr>),
}

/// Re-reads the configuration for SIGHUP.
pub type Reload = Box<dyn Fn() -> Result<Config, ConfigError> + Send>;

/// Why the daemon could not run.
#[derive(Debug)]
pub struct RunError(pub String);

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A random 64-bit number from the kernel, for boot ids and the jitter seed. The std hasher's
/// random keys are the fallback on the odd system without `/dev/urandom`.
pub fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok()
    {
        return u64::from_ne_bytes(bytes);
    }
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.write_u32(std::process::id());
    h.finish()
}

/// Runs the daemon until SIGTERM/SIGINT. Signals must already be blocked ([`signals::block`]).
pub fn run(config: Config, reload: Reload) -> Result<(), RunError> {
    let clock = Clock::start();
    let boot_id = random_u64();
    let local_addr = config.local_address();
    let claimed = local_addr.unwrap_or_else(|| {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), config.listen.port())
    });
    let local = LocalInfo {
        network: config.network,
        addr: claimed,
        boot_id,
        masternode: config.is_masternode(),
        agent: format!("timed/{}", crate::VERSION),
        handshake_timeout: config.handshaketimeout,
        ping_interval: config.pinginterval,
        ping_timeout: config.pingtimeout,
    };
    let (inbox_tx, inbox_rx) = bounded::<Msg>(INBOX);
    // Registry to reactor: unbounded, because the registry must never block on or drop a
    // command (a lost Admit or Dial would strand a connection), and what can be outstanding
    // is already bounded by the reactor's admission limit and the number of listed peers.
    // A bounded channel that large would allocate its slots up front (megabytes of RSS).
    let (reactor_tx, reactor_rx) = crossbeam_channel::unbounded::<ReactorCommand>();
    let live = Arc::new(AtomicUsize::new(0));
    let ctx = WorkerContext {
        clock,
        registry: inbox_tx.clone(),
        live: live.clone(),
    };
    let (reactor, reactor_waker) = Reactor::bind(
        config.listen,
        reactor_rx,
        local.clone(),
        config.handshaketimeout,
        ctx,
    )
    .map_err(|e| RunError(format!("cannot listen on {}: {e}", config.listen)))?;
    let rpc = match config.rpclisten {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .map_err(|e| RunError(format!("cannot listen for RPC on {addr}: {e}")))?,
        ),
        None => None,
    };
    let listen_addr = reactor.local_addr().unwrap_or(config.listen);
    info!(
        "timed {} starting on {} ({}), P2P listening on {listen_addr}, address {}, {}",
        crate::VERSION,
        config.network.name(),
        if local.masternode {
            "masternode"
        } else {
            "not a masternode"
        },
        local_addr.map_or("unknown".to_string(), |a| a.to_string()),
        match config.rpclisten {
            Some(a) => format!("status on http://{a}"),
            None => "status endpoint disabled".to_string(),
        }
    );
    let reactor_thread = std::thread::Builder::new()
        .name("reactor".into())
        .spawn(move || reactor.run())
        .map_err(|e| RunError(format!("cannot start the reactor thread: {e}")))?;
    if let Some(listener) = rpc {
        let tx = inbox_tx.clone();
        let ask: status::Ask = Box::new(move |query| {
            let (reply_tx, reply_rx) = bounded(1);
            tx.send_timeout(Msg::Query(query, reply_tx), QUERY_TIMEOUT)
                .ok()?;
            reply_rx.recv_timeout(QUERY_TIMEOUT).ok()
        });
        status::spawn(listener, ask)
            .map_err(|e| RunError(format!("cannot start the status thread: {e}")))?;
    }
    // Discovery runs on its own thread: a slow server must never hold up the registry.
    let (refresh_tx, refresh_rx) = bounded::<()>(1);
    if let Some(url) = config.discoveryurl.clone() {
        let (found_tx, found_rx) = bounded::<Vec<SocketAddr>>(1);
        let (interval, port) = (config.discoveryinterval, config.network.default_port());
        std::thread::Builder::new()
            .name("discovery".into())
            .spawn(move || discovery::run(url, interval, port, refresh_rx, found_tx))
            .map_err(|e| RunError(format!("cannot start the discovery thread: {e}")))?;
        let tx = inbox_tx.clone();
        std::thread::Builder::new()
            .name("discovered".into())
            .spawn(move || {
                for list in found_rx {
                    if tx.send(Msg::Discovered(list)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| RunError(format!("cannot start the discovery thread: {e}")))?;
    }
    let signal_tx = inbox_tx.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || signal_loop(signal_tx, reload, refresh_tx))
        .map_err(|e| RunError(format!("cannot start the signal thread: {e}")))?;
    drop(inbox_tx);
    // Every listener is bound and every thread is up: tell systemd (Type=notify).
    if let Err(e) = crate::notify::notify("READY=1") {
        warn!("Cannot notify the service manager: {e}");
    }

    let settings = Settings {
        network: config.network,
        local: local_addr,
        maxpeers: config.maxpeers,
        maxinboundperip: config.maxinboundperip,
        reconnectmin: config.reconnectmin,
        reconnectmax: config.reconnectmax,
        fallbackgrace: config.fallbackgrace,
        boot_id,
        seed: random_u64(),
        policy: crate::rules::Policy::STANDARD,
    };
    let registry = Registry::new(
        settings,
        config.masternodes.clone(),
        config.addnodes.clone(),
    );
    let mut thread = RegistryThread {
        lists: Lists {
            masternodes: config.masternodes.clone(),
            addnodes: config.addnodes.clone(),
            discovered: Vec::new(),
        },
        registry,
        clock,
        inbox: inbox_rx,
        reactor: reactor_tx,
        reactor_waker,
        workers: BTreeMap::new(),
        orphan_closes: BTreeMap::new(),
    };
    let shutdown_started = thread.run();

    // Every session has ended; wait (boundedly) for the workers' FIN exchanges to finish so
    // the process exit does not cut a close short.
    let deadline = shutdown_started + SHUTDOWN_DEADLINE;
    debug!(
        "Registry stopped; waiting for {} workers to finish closing",
        live.load(Ordering::SeqCst)
    );
    while live.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let left = live.load(Ordering::SeqCst);
    if left > 0 {
        warn!("{left} connections still closing at exit");
    }
    let _ = thread.reactor.send(ReactorCommand::Stop);
    let _ = thread.reactor_waker.wake();
    // The waker must outlive the reactor's wake-up: closing its eventfd first would drop the
    // pending event from the epoll set, and the reactor would sleep forever.
    let _ = reactor_thread.join();
    drop(thread);
    info!("timed stopped");
    Ok(())
}

fn signal_loop(inbox: Sender<Msg>, reload: Reload, refresh_discovery: Sender<()>) {
    loop {
        match signals::wait() {
            Signal::Terminate => {
                info!("Shutting down");
                let _ = inbox.send(Msg::Input(Input::Shutdown));
            }
            Signal::Reload => match reload() {
                Ok(config) => {
                    info!(
                        "Reloaded configuration: {} masternodes, {} addnodes",
                        config.masternodes.len(),
                        config.addnodes.len()
                    );
                    let _ = inbox.send(Msg::Configured {
                        masternodes: config.masternodes,
                        addnodes: config.addnodes,
                    });
                    let _ = refresh_discovery.try_send(());
                }
                Err(e) => error!("Configuration reload failed, keeping the current lists: {e}"),
            },
        }
    }
}

/// Where the wanted peers come from: the configuration and discovery.
struct Lists {
    masternodes: Vec<SocketAddr>,
    addnodes: Vec<SocketAddr>,
    discovered: Vec<SocketAddr>,
}

impl Lists {
    /// The registry's input for the union of both sources.
    fn input(&self) -> Input {
        let mut masternodes = self.masternodes.clone();
        masternodes.extend(
            self.discovered
                .iter()
                .filter(|a| !self.masternodes.contains(a)),
        );
        Input::SetPeers {
            masternodes,
            addnodes: self.addnodes.clone(),
        }
    }
}

/// The registry thread: the one place the registry lives.
struct RegistryThread {
    lists: Lists,
    registry: Registry,
    clock: Clock,
    inbox: Receiver<Msg>,
    reactor: Sender<ReactorCommand>,
    reactor_waker: Waker,
    workers: BTreeMap<ConnId, WorkerHandle>,
    /// Closes decided before the connection's worker was attached.
    orphan_closes: BTreeMap<ConnId, crate::wire::Reason>,
}

impl RegistryThread {
    /// Runs until shutdown completes; returns when shutdown began.
    fn run(&mut self) -> Instant {
        let mut shutdown_started: Option<Instant> = None;
        let mut stopped = false;
        let outputs = self.registry.handle(Input::Tick, self.clock.now());
        self.route(outputs, &mut stopped);
        while !stopped {
            let now = self.clock.now();
            let mut timeout = self
                .registry
                .next_deadline()
                .map(|d| d.saturating_sub(now))
                .unwrap_or(Duration::from_secs(3600));
            if let Some(started) = shutdown_started {
                let left = (started + SHUTDOWN_DEADLINE).saturating_duration_since(Instant::now());
                if left.is_zero() {
                    warn!("Shutdown deadline passed with sessions still open");
                    break;
                }
                timeout = timeout.min(left);
            }
            let msg = match self.inbox.recv_timeout(timeout) {
                Ok(msg) => Some(msg),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let now = self.clock.now();
            let input = match msg {
                None => Input::Tick,
                Some(Msg::Input(input)) => input,
                Some(Msg::Attach(conn, handle)) => {
                    if let Some(reason) = self.orphan_closes.remove(&conn) {
                        handle.send(Command::Close(reason));
                    } else if !self.registry.knows(conn) {
                        handle.send(Command::Close(crate::wire::Reason::Shutdown));
                    }
                    self.workers.insert(conn, handle);
                    continue;
                }
                Some(Msg::Configured {
                    masternodes,
                    addnodes,
                }) => {
                    self.lists.masternodes = masternodes;
                    self.lists.addnodes = addnodes;
                    self.lists.input()
                }
                Some(Msg::Discovered(list)) => {
                    self.lists.discovered = list;
                    self.lists.input()
                }
                Some(Msg::Query(query, reply)) => {
                    let answer = match query {
                        Query::ConsensusInfo => {
                            Answer::ConsensusInfo(self.registry.consensus_info(now))
                        }
                        Query::Peers => Answer::Peers(self.registry.peers(now)),
                        Query::Masternodes => {
                            Answer::Masternodes(self.registry.masternode_status(now))
                        }
                        Query::Metrics => Answer::Metrics(self.registry.metrics_text(now)),
                    };
                    let _ = reply.try_send(answer);
                    continue;
                }
            };
            if input == Input::Shutdown && shutdown_started.is_none() {
                shutdown_started = Some(Instant::now());
                let _ = crate::notify::notify("STOPPING=1");
            }
            if let Input::Closed { conn, .. } = &input {
                self.workers.remove(conn);
            }
            let outputs = self.registry.handle(input, now);
            self.route(outputs, &mut stopped);
        }
        shutdown_started.unwrap_or_else(Instant::now)
    }

    fn route(&mut self, outputs: Vec<Output>, stopped: &mut bool) {
        let mut wake_reactor = false;
        for output in outputs {
            match output {
                Output::Dial { conn, addr } => {
                    wake_reactor |= self
                        .reactor
                        .try_send(ReactorCommand::Dial { conn, addr })
                        .is_ok();
                }
                Output::Admit { conn } => {
                    wake_reactor |= self
                        .reactor
                        .try_send(ReactorCommand::Admit { conn })
                        .is_ok();
                }
                Output::Refuse { conn, reason } => {
                    wake_reactor |= self
                        .reactor
                        .try_send(ReactorCommand::Refuse { conn, reason })
                        .is_ok();
                }
                Output::Accept { conn } => match self.workers.get(&conn) {
                    Some(worker) => worker.send(Command::Accept),
                    None => debug!("Accept for connection {conn:#x} without a worker"),
                },
                Output::Close { conn, reason } => match self.workers.get(&conn) {
                    Some(worker) => worker.send(Command::Close(reason)),
                    None => {
                        self.orphan_closes.insert(conn, reason);
                        wake_reactor |= self
                            .reactor
                            .try_send(ReactorCommand::Abandon { conn })
                            .is_ok();
                    }
                },
                Output::Stopped => *stopped = true,
            }
        }
        if wake_reactor {
            let _ = self.reactor_waker.wake();
        }
    }
}
