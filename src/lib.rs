//! timed: keeps the masternodes of a peer-to-peer network connected in a full mesh.
//!
//! The crate is split sans-I/O style: [`rules`], [`session`] and [`registry`] are plain
//! state machines (event in, actions out, time passed in); [`reactor`], [`peer`], [`status`]
//! and [`daemon`] are the I/O edges that feed them and carry out what they decide.

pub mod config;
pub mod daemon;
pub mod discovery;
pub mod fuzz;
pub mod metrics;
pub mod notify;
pub mod peer;
pub mod reactor;
pub mod registry;
pub mod rules;
pub mod session;
pub mod signals;
pub mod sim;
pub mod status;
pub mod wire;

/// Version of this build, reported in the handshake's agent string and the status endpoint.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
