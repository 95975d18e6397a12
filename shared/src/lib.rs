//! Types and pure algorithms shared by `cairn` (the LAN agent) and `cairn-wan-router`.
//!
//! Layout:
//! - [`api`]: Consul's JSON shapes (KV entries, sessions, transactions).
//! - [`rpc`]: the read and write requests that flow from an agent's HTTP or DNS surface to
//!   the servers, locally, over the LAN or across datacenters.
//! - [`duration`]: Go-style duration parsing and formatting.
//! - [`coordinate`]: Serf's Vivaldi network coordinates (pure math).
//! - `argv` (feature `cli`): Consul's single-dash flags for clap.
//! - [`gossip`]: SWIM membership with Lifeguard, as a sans-I/O state machine.
//!
//! Without features nothing here opens a socket or needs an async runtime. The `net`
//! feature adds the runtime parts both binaries share: the gossip driver and transports
//! ([`gossip`]), the RPC client and accept loop ([`rpc`]).

pub mod acl;
pub mod api;
#[cfg(feature = "cli")]
pub mod argv;
pub mod coordinate;
pub mod duration;
pub mod gossip;
pub mod rpc;
pub mod tls;
