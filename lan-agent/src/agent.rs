//! Starting and stopping an agent: binds its listeners, starts its server (on server
//! agents), registers its own node, and returns a handle with the bound addresses.
//!
//! [`start`] takes the configuration, the injected dependencies and a cancellation token;
//! every task it spawns is tracked, so [`AgentHandle::stopped`] returns only once all of
//! them have finished. Tests run several agents in one process this way.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use cairn_shared::api::{self, CheckStatus, HealthCheck, NodeService, RegisterRequest};
use cairn_shared::rpc::WriteOp;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::{CommandOp, StateStore};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigError};
use crate::http::{self, AgentInfo, HttpState, Stats, StatsFn};
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
}

/// A running agent.
#[derive(Debug)]
pub struct AgentHandle {
    /// Where the HTTP API listens, if enabled.
    pub http_addr: Option<SocketAddr>,
    pub node_name: String,
    pub node_id: String,
    pub server: Option<Server>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl AgentHandle {
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
    let node_id = if config.node_id.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        config.node_id.clone()
    };
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
                rpc,
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
    tasks.spawn(deps.telemetry.clone().upkeep(shutdown.clone()));
    tasks.spawn(gauges(server.clone(), shutdown.clone()));
    Ok(AgentHandle {
        http_addr,
        node_name: config.node_name.clone(),
        node_id,
        server: Some(server),
        tasks,
        shutdown,
    })
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
        tagged_addresses: BTreeMap::from([
            ("lan".to_string(), addr.clone()),
            ("lan_ipv4".to_string(), addr.clone()),
            ("wan".to_string(), addr.clone()),
            ("wan_ipv4".to_string(), addr),
        ]),
        node_meta: BTreeMap::from([("consul-network-segment".to_string(), String::new())]),
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
        node_meta: BTreeMap::from([("consul-network-segment".to_string(), String::new())]),
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
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
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
