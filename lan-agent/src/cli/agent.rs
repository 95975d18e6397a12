//! `cairn agent`: builds a [`Config`] from Consul's agent flags, starts the agent, prints the
//! startup banner, and runs until interrupted.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::agent::{self, Deps};
use crate::config::Config;
use crate::telemetry::{self, Telemetry};

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Development mode: an in-memory server on loopback, nothing else to set up
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    pub dev: bool,
    /// Run as a server
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    pub server: bool,
    /// Bootstrap a single-server cluster
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    pub bootstrap: bool,
    /// Number of servers to wait for before bootstrapping
    #[arg(long = "bootstrap-expect")]
    pub bootstrap_expect: Option<u32>,
    /// Scale Raft's timers (performance.raft_multiplier: 1 fastest, default 5)
    #[arg(long = "raft-multiplier")]
    pub raft_multiplier: Option<u32>,
    /// Directory for persistent state
    #[arg(long = "data-dir")]
    pub data_dir: Option<PathBuf>,
    /// Datacenter of this agent
    #[arg(long, alias = "dc")]
    pub datacenter: Option<String>,
    /// Node name (default: hostname)
    #[arg(long)]
    pub node: Option<String>,
    /// Node ID (a UUID; generated when absent)
    #[arg(long = "node-id")]
    pub node_id: Option<String>,
    /// Address to bind cluster traffic to
    #[arg(long)]
    pub bind: Option<IpAddr>,
    /// Address to advertise to other agents
    #[arg(long)]
    pub advertise: Option<IpAddr>,
    /// Address to advertise to other datacenters (the node's `wan` tagged address)
    #[arg(long = "advertise-wan")]
    pub advertise_wan: Option<IpAddr>,
    /// Addresses for the HTTP and DNS interfaces (space-separated)
    #[arg(long)]
    pub client: Option<crate::config::ClientAddrs>,
    /// HTTP API port (0 picks a free one; -1 disables)
    #[arg(long = "http-port", allow_hyphen_values = true)]
    pub http_port: Option<i32>,
    /// HTTPS API port (-1, the default, disables; needs cert_file and key_file)
    #[arg(long = "https-port", allow_hyphen_values = true)]
    pub https_port: Option<i32>,
    /// DNS port (-1 disables)
    #[arg(long = "dns-port", allow_hyphen_values = true)]
    pub dns_port: Option<i32>,
    /// Server RPC port
    #[arg(long = "server-port")]
    pub server_port: Option<u16>,
    /// LAN gossip port
    #[arg(long = "serf-lan-port")]
    pub serf_lan_port: Option<u16>,
    /// DNS domain
    #[arg(long)]
    pub domain: Option<String>,
    /// Log level: trace, debug, info, warn, error
    #[arg(long = "log-level")]
    pub log_level: Option<String>,
    /// Log as JSON
    #[arg(long = "log-json", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub log_json: bool,
    /// Default wait of blocking queries
    #[arg(long = "default-query-time", value_parser = parse_duration)]
    pub default_query_time: Option<Duration>,
    /// Longest wait of blocking queries
    #[arg(long = "max-query-time", value_parser = parse_duration)]
    pub max_query_time: Option<Duration>,
    /// A JSON config file to load (repeatable)
    #[arg(long = "config-file", action = ArgAction::Append)]
    pub config_file: Vec<PathBuf>,
    /// A directory of JSON config files to load (repeatable)
    #[arg(long = "config-dir", action = ArgAction::Append)]
    pub config_dir: Vec<PathBuf>,
    /// Allow script checks from the API and config files
    #[arg(long = "enable-script-checks", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub enable_script_checks: bool,
    /// Allow script checks from config files only
    #[arg(long = "enable-local-script-checks", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub enable_local_script_checks: bool,
    /// Upstream DNS server for names outside the domain (repeatable)
    #[arg(long, action = ArgAction::Append)]
    pub recursor: Vec<String>,
    /// Node metadata as key:value (repeatable)
    #[arg(long = "node-meta", action = ArgAction::Append)]
    pub node_meta: Vec<String>,
    /// Join this agent's gossip address at start; fail if none answers (repeatable)
    #[arg(long, action = ArgAction::Append)]
    pub join: Vec<String>,
    /// Join this address at start, retrying until it answers (repeatable)
    #[arg(long = "retry-join", action = ArgAction::Append)]
    pub retry_join: Vec<String>,
    /// Time between -retry-join attempts
    #[arg(long = "retry-interval", value_parser = parse_duration)]
    pub retry_interval: Option<Duration>,
    /// -retry-join attempts before giving up (0: unlimited)
    #[arg(long = "retry-max")]
    pub retry_max: Option<u32>,
    /// Rejoin the previously known members even after leaving
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    pub rejoin: bool,
    /// Gossip encryption key (base64, 16, 24 or 32 bytes; see `cairn keygen`)
    #[arg(long)]
    pub encrypt: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    cairn_shared::duration::parse(s).map_err(|e| e.to_string())
}

fn port(value: i32, name: &str) -> Result<Option<u16>, String> {
    match value {
        -1 => Ok(None),
        0..=65535 => Ok(Some(value as u16)),
        _ => Err(format!("{name}: {value} is not a port")),
    }
}

impl AgentArgs {
    /// The configuration these flags describe, on top of the defaults (or `-dev`'s).
    pub fn config(&self) -> Result<Config, String> {
        let mut c = if self.dev {
            Config::dev()
        } else {
            Config::default()
        };
        // Config files first, in the order given (files, then directories); flags win.
        c.config_sources = self
            .config_file
            .iter()
            .chain(&self.config_dir)
            .cloned()
            .collect();
        if !c.config_sources.is_empty() {
            crate::config::file::load(&c.config_sources)
                .and_then(|f| f.apply(&mut c))
                .map_err(|e| e.to_string())?;
        }
        c.server |= self.server;
        c.enable_script_checks |= self.enable_script_checks;
        c.enable_local_script_checks |= self.enable_local_script_checks;
        for r in &self.recursor {
            c.recursors
                .push(crate::config::file::parse_recursor(r).map_err(|e| e.to_string())?);
        }
        for kv in &self.node_meta {
            let (k, v) = kv.split_once(':').unwrap_or((kv.as_str(), ""));
            c.node_meta.insert(k.to_string(), v.to_string());
        }
        c.bootstrap |= self.bootstrap;
        c.start_join.extend(self.join.iter().cloned());
        c.retry_join.extend(self.retry_join.iter().cloned());
        if let Some(d) = self.retry_interval {
            c.retry_interval = d;
        }
        if let Some(n) = self.retry_max {
            c.retry_max = n;
        }
        c.rejoin_after_leave |= self.rejoin;
        if self.encrypt.is_some() {
            c.encrypt = self.encrypt.clone();
        }
        if self.bootstrap_expect.is_some() {
            c.bootstrap_expect = self.bootstrap_expect;
        }
        if let Some(m) = self.raft_multiplier {
            c.raft_multiplier = m.clamp(1, 10);
        }
        if let Some(d) = &self.data_dir {
            c.data_dir = Some(d.clone());
        }
        if let Some(dc) = &self.datacenter {
            c.datacenter = dc.clone();
        }
        if let Some(n) = &self.node {
            c.node_name = n.clone();
        }
        if let Some(id) = &self.node_id {
            c.node_id = id.clone();
        }
        if let Some(b) = self.bind {
            c.bind_addr = b;
        }
        c.advertise_addr = self.advertise.or(c.advertise_addr);
        c.advertise_addr_wan = self.advertise_wan.or(c.advertise_addr_wan);
        if let Some(a) = &self.client {
            c.client_addrs = a.0.clone();
        }
        if let Some(p) = self.http_port {
            c.ports.http = port(p, "http-port")?;
        }
        if let Some(p) = self.https_port {
            c.ports.https = port(p, "https-port")?;
        }
        if let Some(p) = self.dns_port {
            c.ports.dns = port(p, "dns-port")?;
        }
        if let Some(p) = self.server_port {
            c.ports.server = p;
        }
        if let Some(p) = self.serf_lan_port {
            c.ports.serf_lan = p;
        }
        if let Some(d) = &self.domain {
            c.domain = if d.ends_with('.') {
                d.clone()
            } else {
                format!("{d}.")
            };
        }
        if let Some(l) = &self.log_level {
            c.log_level = l.clone();
        }
        c.log_json |= self.log_json;
        if let Some(d) = self.default_query_time {
            c.default_query_time = d;
        }
        if let Some(d) = self.max_query_time {
            c.max_query_time = d;
        }
        Ok(c)
    }
}

pub async fn run(args: AgentArgs) -> u8 {
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => return super::fail(format!("==> {e}")),
    };
    telemetry::init_logging(&config.log_level, config.log_json);
    let telemetry = match Telemetry::install() {
        Ok(t) => t,
        Err(e) => return super::fail(format!("==> {e}")),
    };
    let shutdown = CancellationToken::new();
    let deps = Deps {
        telemetry,
        ..Deps::default()
    };
    let handle = match agent::start(config.clone(), deps, shutdown.clone()).await {
        Ok(h) => h,
        Err(e) => return super::fail(format!("==> Error starting agent: {e}")),
    };
    print_banner(&config, &handle);
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => return super::fail(format!("==> {e}")),
    };
    loop {
        let signal = tokio::select! {
            s = signals.next() => s,
            _ = handle.stopping() => break,
        };
        let leave = match signal {
            Signal::Reload => {
                println!("==> Caught signal: hangup, reloading configuration");
                if let Err(e) = handle.reload() {
                    eprintln!("==> Failed to reload configuration: {e}");
                }
                continue;
            }
            Signal::Interrupt => config.leaves_on_interrupt(),
            Signal::Terminate => config.leaves_on_terminate(),
        };
        println!("==> Caught signal, shutting down");
        if leave {
            println!("==> Gracefully leaving the cluster");
            handle.leave().await;
        }
        break;
    }
    handle.shutdown();
    let fatal = handle.fatal();
    handle.stopped().await;
    if let Some(why) = fatal {
        return super::fail(format!("==> {why}"));
    }
    println!("==> Cairn agent stopped");
    0
}

fn print_banner(c: &Config, h: &agent::AgentHandle) {
    let http = h
        .http_addr
        .map_or("-1".to_string(), |a| a.port().to_string());
    let dns = h
        .dns_addr
        .map_or("-1".to_string(), |a| a.port().to_string());
    let https = h
        .https_addr
        .map_or("-1".to_string(), |a| a.port().to_string());
    println!("==> Starting Cairn agent...");
    println!("           Version: '{}'", crate::version::VERSION);
    println!("           Node ID: '{}'", h.node_id);
    println!("         Node name: '{}'", h.node_name);
    println!("        Datacenter: '{}' (Segment: '<all>')", c.datacenter);
    println!(
        "            Server: {} (Bootstrap: {})",
        c.server, c.bootstrap
    );
    println!(
        "       Client Addr: [{}] (HTTP: {http}, HTTPS: {https}, gRPC: -1, DNS: {dns})",
        c.client_addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "      Cluster Addr: {} (LAN: {}, WAN: {})",
        c.advertise(),
        h.gossip.local_addr().port(),
        c.ports.serf_wan.map_or(-1, i32::from)
    );
    println!(
        " Gossip Encryption: {}",
        c.encrypt.is_some()
            || c.data_dir
                .as_deref()
                .is_some_and(|d| crate::gossip::Keyring::file(d).exists())
    );
    if c.dev {
        println!("          Dev Mode: true (in-memory state, lost on exit)");
    }
    println!();
    println!("==> Log data will now stream in as it occurs:");
    println!();
}

enum Signal {
    Reload,
    Interrupt,
    Terminate,
}

/// SIGHUP reloads; SIGINT and SIGTERM stop (leaving the pool first as configured).
struct Signals {
    hup: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            hup: signal(SignalKind::hangup())?,
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.hup.recv() => Signal::Reload,
            _ = self.int.recv() => Signal::Interrupt,
            _ = self.term.recv() => Signal::Terminate,
        }
    }
}
