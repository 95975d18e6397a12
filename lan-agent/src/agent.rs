//! Starting and stopping an agent: binds its listeners, starts its server (on server
//! agents), registers its own node, and returns a handle with the bound addresses.
//!
//! [`start`] takes the configuration, the injected dependencies and a cancellation token;
//! every task it spawns is tracked, so [`AgentHandle::stopped`] returns only once all of
//! them have finished. Tests run several agents in one process this way.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_shared::api::{self, CheckStatus, HealthCheck, NodeService, RegisterRequest};
use cairn_shared::rpc::WriteOp;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::{CommandOp, StateStore};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigError};
use crate::dns::{self, DnsSettings};
use crate::events::Events;
use crate::http::{self, AgentInfo, HttpState, ReloadFn, Stats, StatsFn};
use crate::local::persist::Persist;
use crate::local::sync::{AntiEntropy, NodeInfo};
use crate::local::{LocalAgent, LocalConfig, LocalError};
use crate::server::{DevConsensus, Rpc, Server, ServerConfig};
use crate::telemetry::{Telemetry, names};
use crate::version;

/// What an agent needs from outside: the clock and the metrics handles.
#[derive(Debug, Clone)]
pub struct Deps {
    pub clock: Arc<dyn Clock>,
    pub telemetry: Telemetry,
}

impl Default for Deps {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            telemetry: Telemetry::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "server agents with a data directory need Raft, which this build does not have yet; run `cairn agent -dev`"
    )]
    NoRaftYet,
    #[error("registering this node failed: {0}")]
    Register(String),
    #[error("{0}")]
    Local(#[from] LocalError),
    #[error("node ID file {path}: {source}")]
    NodeId {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// A running agent.
#[derive(Debug)]
pub struct AgentHandle {
    /// Where the HTTP API listens, if enabled.
    pub http_addr: Option<SocketAddr>,
    /// Where DNS listens (UDP and TCP), if enabled.
    pub dns_addr: Option<SocketAddr>,
    pub node_name: String,
    pub node_id: String,
    pub server: Option<Server>,
    pub local: Arc<LocalAgent>,
    reload: ReloadFn,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl AgentHandle {
    /// Re-reads the config files' services and checks (SIGHUP, `cairn reload`).
    pub fn reload(&self) -> Result<(), String> {
        (self.reload.0)()
    }

    /// Asks the agent to stop.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until every task of the agent has finished (after [`Self::shutdown`]).
    pub async fn stopped(self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Starts an agent. Returns once its listeners are bound and its node is registered.
pub async fn start(
    config: Config,
    deps: Deps,
    shutdown: CancellationToken,
) -> Result<AgentHandle, AgentError> {
    config.validate()?;
    if !config.dev {
        return Err(AgentError::NoRaftYet);
    }
    let tasks = TaskTracker::new();
    let node_id = node_id(&config)?;
    let state = Arc::new(StateStore::new());
    let consensus = Arc::new(DevConsensus::new(
        state.clone(),
        config.rpc_addr().to_string(),
    ));
    let server = Server::start(
        server_config(&config),
        state,
        consensus,
        deps.clock.clone(),
        &tasks,
        shutdown.clone(),
    );
    register_self(&server, &config, &node_id).await?;
    let rpc: Arc<dyn Rpc> = Arc::new(server.clone());

    let local = LocalAgent::new(
        LocalConfig {
            node: config.node_name.clone(),
            enable_script_checks: config.enable_script_checks,
            enable_local_script_checks: config.enable_local_script_checks,
            check_update_interval: config.check_update_interval,
        },
        config.data_dir.as_deref().map(Persist::new),
        &tasks,
        shutdown.clone(),
    );
    local.load_config(&config.services, &config.checks)?;
    let restored = local.restore()?;
    if restored > 0 {
        tracing::info!(
            restored,
            "restored services and checks registered through the API"
        );
    }
    let sync = AntiEntropy {
        state: local.state.clone(),
        rpc: rpc.clone(),
        node: node_info(&config, &node_id),
        sync_interval: SYNC_INTERVAL,
    };
    tasks.spawn(sync.run(shutdown.clone()));
    let reload = reload_fn(&config, local.clone());
    let events = Arc::new(Events::default());

    let http_addr = match config.http_addr() {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::Bind {
                    what: "HTTP",
                    addr,
                    source,
                })?;
            let bound = listener.local_addr().unwrap_or(addr);
            let state = HttpState {
                rpc: rpc.clone(),
                local: local.clone(),
                events: events.clone(),
                reload: reload.clone(),
                info: Arc::new(agent_info(&config, &node_id)),
                telemetry: deps.telemetry.clone(),
                limits: config.limits.clone(),
                stats: stats_fn(&config, server.clone()),
                started: Instant::now(),
            };
            let app = http::router(state);
            let stop = shutdown.clone();
            tasks.spawn(async move {
                let serve = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            });
            Some(bound)
        }
        None => None,
    };
    let dns_addr = match config.dns_addr() {
        Some(addr) => {
            let settings = DnsSettings {
                domain: config.domain.to_ascii_lowercase(),
                datacenter: config.datacenter.clone(),
                config: config.dns.clone(),
                recursors: config.recursors.clone(),
            };
            let bound = dns::serve(addr, rpc.clone(), settings, &tasks, shutdown.clone())
                .await
                .map_err(|source| AgentError::Bind {
                    what: "DNS",
                    addr,
                    source,
                })?;
            Some(bound)
        }
        None => None,
    };
    tasks.spawn(deps.telemetry.clone().upkeep(shutdown.clone()));
    tasks.spawn(gauges(server.clone(), shutdown.clone()));
    Ok(AgentHandle {
        http_addr,
        dns_addr,
        node_name: config.node_name.clone(),
        node_id,
        server: Some(server),
        local,
        reload,
        tasks,
        shutdown,
    })
}

/// How often anti-entropy compares the catalog with the local state in full.
const SYNC_INTERVAL: Duration = Duration::from_secs(60);

/// The node ID: the configured one, else the one saved under the data directory, else a new
/// one (saved there when there is a data directory, so it survives restarts).
fn node_id(config: &Config) -> Result<String, AgentError> {
    if !config.node_id.is_empty() {
        return Ok(config.node_id.clone());
    }
    let Some(dir) = &config.data_dir else {
        return Ok(uuid::Uuid::new_v4().to_string());
    };
    let path = dir.join("node-id");
    let err = |source| AgentError::NodeId {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(id) if uuid::Uuid::parse_str(id.trim()).is_ok() => Ok(id.trim().to_string()),
        Ok(_) | Err(_) if !path.exists() => {
            let id = uuid::Uuid::new_v4().to_string();
            std::fs::create_dir_all(dir).map_err(err)?;
            std::fs::write(&path, &id).map_err(err)?;
            Ok(id)
        }
        Ok(bad) => Err(err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not a UUID: {:?}", bad.trim()),
        ))),
        Err(e) => Err(err(e)),
    }
}

fn node_meta(config: &Config) -> BTreeMap<String, String> {
    let mut meta = config.node_meta.clone();
    meta.insert("consul-network-segment".to_string(), String::new());
    meta
}

fn tagged_addresses(config: &Config) -> BTreeMap<String, String> {
    let addr = config.advertise().to_string();
    let family = if config.advertise().is_ipv4() {
        "ipv4"
    } else {
        "ipv6"
    };
    BTreeMap::from([
        ("lan".to_string(), addr.clone()),
        (format!("lan_{family}"), addr.clone()),
        ("wan".to_string(), addr.clone()),
        (format!("wan_{family}"), addr),
    ])
}

fn node_info(config: &Config, node_id: &str) -> NodeInfo {
    NodeInfo {
        id: node_id.to_string(),
        node: config.node_name.clone(),
        address: config.advertise().to_string(),
        datacenter: config.datacenter.clone(),
        tagged_addresses: tagged_addresses(config),
        meta: node_meta(config),
    }
}

/// Re-reads the config sources and swaps in their services and checks.
fn reload_fn(config: &Config, local: Arc<LocalAgent>) -> ReloadFn {
    let sources = config.config_sources.clone();
    ReloadFn(Arc::new(move || {
        let mut fresh = Config::default();
        if !sources.is_empty() {
            crate::config::file::load(&sources)
                .and_then(|f| f.apply(&mut fresh))
                .map_err(|e| e.to_string())?;
        }
        local
            .load_config(&fresh.services, &fresh.checks)
            .map_err(|e| e.to_string())?;
        tracing::info!(
            services = fresh.services.len(),
            checks = fresh.checks.len(),
            "reloaded configuration"
        );
        Ok(())
    }))
}

fn server_config(config: &Config) -> ServerConfig {
    ServerConfig {
        default_query_time: config.default_query_time,
        max_query_time: config.max_query_time,
        session_ttl_min: config.session_ttl_min,
        ..ServerConfig::new(&config.datacenter)
    }
}

/// Registers this agent's node and its `serfHealth` check, as a Consul leader does for
/// every live member.
async fn register_self(server: &Server, config: &Config, node_id: &str) -> Result<(), AgentError> {
    let addr = config.advertise().to_string();
    let serf = HealthCheck {
        check_id: api::SERF_CHECK_ID.to_string(),
        name: api::SERF_CHECK_NAME.to_string(),
        status: CheckStatus::Passing,
        output: "Agent alive and reachable".to_string(),
        ..HealthCheck::default()
    };
    let consul = config.server.then(|| NodeService {
        id: "consul".to_string(),
        service: "consul".to_string(),
        port: config.ports.server,
        ..NodeService::default()
    });
    let req = RegisterRequest {
        id: node_id.to_string(),
        node: config.node_name.clone(),
        address: addr.clone(),
        datacenter: config.datacenter.clone(),
        tagged_addresses: tagged_addresses(config),
        node_meta: node_meta(config),
        service: consul,
        check: Some(serf),
        ..RegisterRequest::default()
    };
    server
        .propose(CommandOp::Client(WriteOp::CatalogRegister(Box::new(req))))
        .await
        .and_then(|applied| applied)
        .map(|_| ())
        .map_err(|e| AgentError::Register(e.message))
}

fn agent_info(config: &Config, node_id: &str) -> AgentInfo {
    AgentInfo {
        node_name: config.node_name.clone(),
        node_id: node_id.to_string(),
        datacenter: config.datacenter.clone(),
        server: config.server,
        dev: config.dev,
        lan_addr: config.advertise().to_string(),
        lan_port: config.ports.serf_lan,
        node_meta: node_meta(config),
        debug_config: serde_json::json!({
            "Datacenter": config.datacenter,
            "NodeName": config.node_name,
            "DataDir": config.data_dir,
            "DevMode": config.dev,
            "ServerMode": config.server,
            "Bootstrap": config.bootstrap,
            "BootstrapExpect": config.bootstrap_expect.unwrap_or(0),
            "BindAddr": config.bind_addr.to_string(),
            "ClientAddrs": [config.client_addr.to_string()],
            "HTTPPort": config.ports.http.map_or(-1, i32::from),
            "DNSPort": config.ports.dns.map_or(-1, i32::from),
            "ServerPort": config.ports.server,
            "SerfPortLAN": config.ports.serf_lan,
            "DNSDomain": config.domain,
            "KVMaxValueSize": config.limits.kv_max_value_size,
            "TxnMaxReqLen": config.limits.txn_max_req_len,
        }),
    }
}

fn stats_fn(config: &Config, server: Server) -> StatsFn {
    let bootstrap = config.bootstrap;
    StatsFn(Arc::new(move || {
        let status = server.status();
        let applied = server.state().last_index().to_string();
        let s = |pairs: &[(&str, String)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect()
        };
        let mut out: Stats = BTreeMap::new();
        out.insert(
            "agent".into(),
            s(&[
                ("check_monitors", "0".into()),
                ("check_ttls", "0".into()),
                ("checks", "0".into()),
                ("services", "0".into()),
            ]),
        );
        out.insert(
            "build".into(),
            s(&[
                ("prerelease", String::new()),
                ("revision", version::REVISION.into()),
                ("version", version::VERSION.into()),
            ]),
        );
        out.insert(
            "consul".into(),
            s(&[
                ("acl", "disabled".into()),
                ("bootstrap", bootstrap.to_string()),
                ("known_datacenters", "1".into()),
                ("leader", status.is_leader.to_string()),
                (
                    "leader_addr",
                    status.leader_addr.clone().unwrap_or_default(),
                ),
                ("server", "true".into()),
            ]),
        );
        out.insert(
            "raft".into(),
            s(&[
                ("applied_index", applied.clone()),
                ("commit_index", applied.clone()),
                ("last_log_index", applied),
                ("last_contact", format!("{}ms", status.last_contact_ms)),
                (
                    "num_peers",
                    status.peers.len().saturating_sub(1).to_string(),
                ),
                (
                    "state",
                    if status.is_leader {
                        "Leader"
                    } else {
                        "Follower"
                    }
                    .into(),
                ),
            ]),
        );
        out.insert(
            "runtime".into(),
            s(&[
                ("arch", std::env::consts::ARCH.into()),
                ("os", std::env::consts::OS.into()),
                (
                    "cpu_count",
                    std::thread::available_parallelism()
                        .map_or(1, |n| n.get())
                        .to_string(),
                ),
                (
                    "version",
                    format!("rust-{}", env!("CARGO_PKG_RUST_VERSION")),
                ),
            ]),
        );
        out
    }))
}

/// Publishes store sizes as gauges every few seconds.
async fn gauges(server: Server, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (kv, sessions) = server.state().read(|s| (s.kv_len(), s.sessions().count()));
        metrics::gauge!(names::KV_ENTRIES).set(kv as f64);
        metrics::gauge!(names::SESSIONS).set(sessions as f64);
    }
}
