//! The Cairn LAN agent: everything behind the `cairn` binary.
//!
//! Layout:
//! - [`agent`]: starts an agent from a [`config::Config`] and tracks its tasks.
//! - [`catalog`]: the state store, applied by one deterministic `apply` per command.
//! - [`server`]: the server endpoint (blocking reads, writes into the log, session TTLs);
//!   [`rpc`] carries requests to it over the server RPC port.
//! - [`http`]: Consul's HTTP API on top of the server endpoint; [`dns`]: its DNS interface.
//! - [`local`]: the agent's own services and checks, persisted and synced to the catalog;
//!   [`health`] runs their checks.
//! - [`cli`]: the subcommands, each a client of an agent's HTTP API (except `agent`).
//! - [`filter`]: Consul's `?filter=` expressions.
//! - [`telemetry`], [`logs`] (the log `/v1/agent/monitor` streams), [`memory`] (freed heap
//!   back to the system), [`clock`], [`config`],
//!   [`version`]: support.
//!
//! `main.rs` only parses arguments and hands over to [`cli::run`].

pub mod acl;
pub mod agent;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dns;
pub mod events;
pub mod filter;
pub mod gossip;
pub mod health;
pub mod http;
pub mod local;
pub mod logs;
pub mod memory;
pub mod raft;
pub mod rpc;
pub mod server;
pub mod telemetry;
pub mod version;
