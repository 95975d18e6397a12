//! Starting and stopping an agent: binds its listeners, starts its server (on server
//! agents), registers its own node, and returns a handle with the bound addresses.
//!
//! [`start`] takes the configuration, the injected dependencies and a cancellation token;
//! every task it spawns is tracked, so [`AgentHandle::stopped`] returns only once all of
//! them have finished. Tests run several agents in one process this way.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cairn_shared::api::{
    self, CheckStatus, CoordinateEntry, HealthCheck, NodeService, RegisterRequest,
};
use cairn_shared::rpc::{WriteOp, WriteRequest};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::{CommandOp, StateStore};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigError};
use crate::dns::{self, DnsSettings};
use crate::events::Events;
use crate::gossip::{Gossip, GossipConfig, Keyring, MemberStatus, NetTransport, Snapshot};
use crate::http::{self, AgentInfo, HttpState, ReloadFn, Stats, StatsFn};
use crate::local::persist::Persist;
use crate::local::sync::{AntiEntropy, NodeInfo};
use crate::local::{LocalAgent, LocalConfig, LocalError};
use crate::raft::{RaftConsensus, RaftSettings};
use crate::rpc::{self, ClientRpc, Endpoint, RpcClient, ServerSource};
use crate::server::reconcile::reconcile_loop;
use crate::server::wan::WanRoutes;
use crate::server::{Consensus, DevConsensus, Rpc, Server, ServerConfig};
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
    #[error("raft: {0}")]
    Raft(String),
    #[error("gossip: {0}")]
    Gossip(String),
    #[error("failed to join: {0}")]
    Join(String),
    #[error("registering this node failed: {0}")]
    Register(String),
    #[error("{0}")]
    Local(#[from] LocalError),
    #[error("TLS: {0}")]
    Tls(String),
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
    /// Where the HTTPS API listens, if enabled.
    pub https_addr: Option<SocketAddr>,
    /// Where DNS listens (UDP and TCP), if enabled.
    pub dns_addr: Option<SocketAddr>,
    /// The server RPC address (servers only).
    pub rpc_addr: Option<SocketAddr>,
    pub node_name: String,
    pub node_id: String,
    pub server: Option<Server>,
    /// The server's Raft (servers outside dev mode).
    pub raft: Option<Arc<RaftConsensus>>,
    pub local: Arc<LocalAgent>,
    pub gossip: Gossip,
    reload: ReloadFn,
    /// Why the agent stopped itself, if it did (`-retry-max` exhausted).
    fatal: Arc<OnceLock<String>>,
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

    /// Leaves the gossip pool gracefully (members see `left`, not `failed`), then stops.
    pub async fn leave(&self) {
        if let Err(e) = self.gossip.leave().await {
            tracing::warn!(error = %e, "graceful leave failed");
        }
        self.shutdown.cancel();
    }

    /// Resolves when the agent is stopping, whoever asked (a signal, `/v1/agent/leave`).
    pub async fn stopping(&self) {
        self.shutdown.cancelled().await;
    }

    /// Why the agent stopped itself, if it was not asked to.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.get().cloned()
    }

    /// Waits until every task of the agent has finished (after [`Self::shutdown`]).
    pub async fn stopped(self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Starts an agent. Returns once its listeners are bound, gossip runs, `-join` has
/// succeeded and (on servers) its node is registered. On failure, whatever was started
/// is stopped.
pub async fn start(
    config: Config,
    deps: Deps,
    shutdown: CancellationToken,
) -> Result<AgentHandle, AgentError> {
    let started = start_parts(config, deps, shutdown.clone()).await;
    if started.is_err() {
        shutdown.cancel();
    }
    started
}

async fn start_parts(
    config: Config,
    deps: Deps,
    shutdown: CancellationToken,
) -> Result<AgentHandle, AgentError> {
    config.validate()?;
    let tasks = TaskTracker::new();
    let node_id = node_id(&config)?;
    let fatal = Arc::new(OnceLock::new());

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
    let events = Arc::new(Events::default());
    // Members from before a restart. As in Serf, a graceful leave forgets them unless
    // -rejoin is given.
    let known = match config
        .data_dir
        .as_ref()
        .and_then(|d| Snapshot::load(&snapshot_path(d)))
    {
        Some(s) if s.left && !config.rejoin_after_leave => {
            tracing::info!("left the pool before the restart; not rejoining (see -rejoin)");
            BTreeMap::new()
        }
        Some(s) => s.members,
        None => BTreeMap::new(),
    };

    // Listeners first, so the gossip tags carry the ports actually bound.
    let http_listener = match config.http_addr() {
        Some(addr) => Some(bind_tcp("HTTP", addr).await?),
        None => None,
    };
    // The other client addresses listen on the port the first one got.
    let mut more_http = Vec::new();
    if let Some(port) = http_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port())
    {
        for ip in config.more_client_addrs() {
            more_http.push(bind_tcp("HTTP", SocketAddr::new(*ip, port)).await?);
        }
    }
    // TLS on the RPC port, from files read once, before anything listens or dials.
    let rpc_tls = RpcTls::from_config(&config)?;
    // HTTPS on the same addresses, with its certificate checked before anything starts.
    let tls = match config.https_addr() {
        Some(_) => Some(http::tls::server_config(&config.tls).map_err(AgentError::Tls)?),
        None => None,
    };
    let mut https = Vec::new();
    if let Some(addr) = config.https_addr() {
        let first = bind_tcp("HTTPS", addr).await?;
        let port = first.local_addr().map_or(addr.port(), |a| a.port());
        https.push(first);
        for ip in config.more_client_addrs() {
            https.push(bind_tcp("HTTPS", SocketAddr::new(*ip, port)).await?);
        }
    }
    let https_addr = https.first().and_then(|l| l.local_addr().ok());
    let server = match config.server {
        true => Some(start_server(&config, &node_id, &deps, &rpc_tls, &tasks, &shutdown).await?),
        false => None,
    };
    let rpc_addr = server.as_ref().map(|(_, addr, _)| *addr);
    let http_port = http_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port());
    let gossip = start_gossip(
        &config,
        &node_id,
        rpc_addr,
        http_port,
        known.clone(),
        events.clone(),
        local.clone(),
        &tasks,
        &shutdown,
    )
    .await?;
    let raft = server.as_ref().and_then(|(_, _, r)| r.clone());
    let server = server.map(|(s, _, _)| s);
    if let Some(s) = &server {
        s.set_wan(WanRoutes::new(
            gossip.clone(),
            &config.datacenter,
            &config.node_name,
            RpcClient::from_ip(config.bind_addr).with_tls(rpc_tls.client.clone()),
            events.clone(),
            local.clone(),
        ));
        tasks.spawn(refresh_wan_status(s.clone(), shutdown.clone()));
    }
    if let Some(r) = &raft {
        r.set_gossip(gossip.clone());
        tasks.spawn(crate::raft::autopilot::run(
            r.clone(),
            gossip.clone(),
            shutdown.clone(),
        ));
    }

    let acl = Arc::new(crate::acl::AgentAcl::new(
        config.acl.clone(),
        config.data_dir.as_deref(),
    ));
    let rpc: Arc<dyn Rpc> = match &server {
        Some(s) => {
            tasks.spawn(reconcile_loop(
                s.clone(),
                gossip.clone(),
                config.datacenter.clone(),
                shutdown.clone(),
            ));
            Arc::new(s.clone())
        }
        None => Arc::new(ClientRpc::new(
            Arc::new(GossipServers {
                gossip: gossip.clone(),
                datacenter: config.datacenter.clone(),
            }),
            Arc::new(RpcClient::default().with_tls(rpc_tls.client.clone())),
        )),
    };
    tasks.spawn(crate::memory::release_loop(shutdown.clone()));
    let rejoin: Vec<String> = known.into_values().collect();
    join_at_start(&config, rejoin, &gossip, &tasks, &shutdown, &fatal).await?;
    tasks.spawn(send_coordinates(
        rpc.clone(),
        acl.clone(),
        gossip.clone(),
        config.node_name.clone(),
        config.datacenter.clone(),
        if config.dev {
            DEV_COORDINATE_INTERVAL
        } else {
            COORDINATE_INTERVAL
        },
        shutdown.clone(),
    ));

    let sync = AntiEntropy {
        state: local.state.clone(),
        rpc: rpc.clone(),
        node: node_info(&config, &node_id),
        sync_interval: SYNC_INTERVAL,
        acl: acl.clone(),
    };
    tasks.spawn(sync.run(shutdown.clone()));
    let reload = reload_fn(&config, local.clone());

    let http_addr = http_listener.as_ref().and_then(|l| l.local_addr().ok());
    if http_listener.is_some() || !https.is_empty() {
        let state = HttpState {
            rpc: rpc.clone(),
            local: local.clone(),
            events: events.clone(),
            gossip: gossip.clone(),
            shutdown: shutdown.clone(),
            reload: reload.clone(),
            info: Arc::new(agent_info(&config, &node_id, &gossip)),
            telemetry: deps.telemetry.clone(),
            limits: config.limits.clone(),
            stats: stats_fn(&config, server.clone(), gossip.clone()),
            started: Instant::now(),
            acl: acl.clone(),
        };
        let app = http::router(state);
        for listener in http_listener.into_iter().chain(more_http) {
            let stop = shutdown.clone();
            let app = app.clone();
            tasks.spawn(async move {
                // With the peer's address: `near=_ip` sorts from the asking host.
                let app = app.into_make_service_with_connect_info::<SocketAddr>();
                let serve = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            });
        }
        for listener in https {
            let config = tls
                .clone()
                .ok_or_else(|| AgentError::Tls("no TLS settings".into()))?;
            let listener = http::tls::TlsListener::new(listener, config, shutdown.clone())
                .map_err(|e| AgentError::Tls(e.to_string()))?;
            let stop = shutdown.clone();
            let app = app.clone();
            tasks.spawn(async move {
                use axum::serve::ListenerExt;
                // `tap_io` gives the listener axum's connect-info for its address type.
                let app = app.into_make_service_with_connect_info::<SocketAddr>();
                let serve = axum::serve(listener.tap_io(|_| {}), app)
                    .with_graceful_shutdown(async move { stop.cancelled().await });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "HTTPS server failed");
                }
            });
        }
    }
    let dns_addr = match config.dns_addr() {
        Some(addr) => {
            let settings = DnsSettings {
                domain: config.domain.to_ascii_lowercase(),
                datacenter: config.datacenter.clone(),
                node: config.node_name.clone(),
                config: config.dns.clone(),
                recursors: config.recursors.clone(),
                acl: acl.clone(),
            };
            // The first address picks the port (0: any free one); the others take it too.
            let mut first: Option<SocketAddr> = None;
            for ip in std::iter::once(addr.ip()).chain(config.more_client_addrs().iter().copied()) {
                let at = SocketAddr::new(ip, first.map_or(addr.port(), |b| b.port()));
                let bound = dns::serve(at, rpc.clone(), settings.clone(), &tasks, shutdown.clone())
                    .await
                    .map_err(|source| AgentError::Bind {
                        what: "DNS",
                        addr: at,
                        source,
                    })?;
                first.get_or_insert(bound);
            }
            first
        }
        None => None,
    };
    tasks.spawn(deps.telemetry.clone().upkeep(shutdown.clone()));
    if let Some(s) = &server {
        tasks.spawn(gauges(s.clone(), shutdown.clone()));
    }
    Ok(AgentHandle {
        http_addr,
        https_addr,
        dns_addr,
        rpc_addr,
        node_name: config.node_name.clone(),
        node_id,
        server,
        raft,
        local,
        gossip,
        reload,
        fatal,
        tasks,
        shutdown,
    })
}

async fn bind_tcp(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AgentError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::Bind { what, addr, source })
}

/// The server endpoint, its RPC port, and (dev mode) this node in the catalog; outside
/// dev mode, Raft under the data directory. Returns the RPC address other agents use.
async fn start_server(
    config: &Config,
    node_id: &str,
    deps: &Deps,
    rpc_tls: &RpcTls,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<(Server, SocketAddr, Option<Arc<RaftConsensus>>), AgentError> {
    let listener = bind_tcp(
        "server RPC",
        SocketAddr::new(config.bind_addr, config.ports.server),
    )
    .await?;
    let port = listener
        .local_addr()
        .map_or(config.ports.server, |a| a.port());
    let advertised = SocketAddr::new(config.advertise(), port);
    let state = Arc::new(StateStore::new());
    let (consensus, raft): (Arc<dyn Consensus>, _) = match (&config.data_dir, config.dev) {
        (Some(dir), false) => {
            let settings = RaftSettings {
                data_dir: dir.clone(),
                node_name: config.node_name.clone(),
                node_id: node_id.to_string(),
                datacenter: config.datacenter.clone(),
                advertise: advertised,
                bootstrap: config.bootstrap,
                bootstrap_expect: config.bootstrap_expect,
                raft_multiplier: config.raft_multiplier,
                snapshot_threshold: config.raft_snapshot_threshold,
                stabilization: config.server_stabilization_time,
                rpc_tls: rpc_tls.client.clone(),
            };
            let raft = crate::raft::start(settings, state.clone(), tasks, shutdown.clone())
                .await
                .map_err(|e| AgentError::Raft(e.to_string()))?;
            (raft.clone() as Arc<dyn Consensus>, Some(raft))
        }
        _ => (
            Arc::new(DevConsensus::new(state.clone(), advertised.to_string()))
                as Arc<dyn Consensus>,
            None,
        ),
    };
    let server = Server::start(
        ServerConfig {
            rpc_tls: rpc_tls.client.clone(),
            ..server_config(config)
        },
        state,
        consensus,
        deps.clock.clone(),
        tasks,
        shutdown.clone(),
    );
    tasks.spawn(rpc::serve(
        listener,
        Arc::new(Endpoint(Arc::new(server.clone()))),
        rpc_tls.server.clone(),
        tasks.clone(),
        shutdown.clone(),
    ));
    if raft.is_none() {
        register_self(&server, config, node_id, port).await?;
    }
    Ok((server, advertised, raft))
}

/// Binds the gossip port and starts gossip with this agent's tags and keyring.
#[allow(clippy::too_many_arguments)]
async fn start_gossip(
    config: &Config,
    node_id: &str,
    rpc_addr: Option<SocketAddr>,
    http_port: Option<u16>,
    known: BTreeMap<String, String>,
    events: Arc<Events>,
    local: Arc<LocalAgent>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Result<Gossip, AgentError> {
    let bind = SocketAddr::new(config.bind_addr, config.ports.serf_lan);
    let transport = NetTransport::bind(bind, Some(config.advertise()))
        .await
        .map_err(|source| AgentError::Bind {
            what: "LAN gossip",
            addr: bind,
            source,
        })?;
    let mut g = if config.dev {
        GossipConfig::dev(&config.node_name)
    } else {
        GossipConfig::lan(&config.node_name)
    };
    config.gossip_lan.apply(&mut g.swim);
    g.reconnect_timeout = config.reconnect_timeout;
    g.tags = gossip_tags(config, node_id, rpc_addr, http_port);
    g.keyring = keyring(config)?;
    if let Some(dir) = &config.data_dir {
        g.keyring_path = Some(Keyring::file(dir));
        g.snapshot_path = Some(snapshot_path(dir));
        g.known = known;
    }
    crate::gossip::start(
        g,
        Arc::new(transport),
        events,
        local,
        tasks,
        shutdown.clone(),
    )
    .map_err(|e| AgentError::Gossip(e.to_string()))
}

/// Where the members known before a restart are kept (Serf's snapshot).
fn snapshot_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("serf").join("local.snapshot")
}

/// The keyring: the saved one if there is one (Consul ignores `-encrypt` then), else the
/// `-encrypt` key, saved for next time.
fn keyring(config: &Config) -> Result<Keyring, AgentError> {
    let err = |e: crate::gossip::keyring::KeyError| AgentError::Gossip(e.to_string());
    let path = config.data_dir.as_deref().map(Keyring::file);
    if let Some(path) = &path
        && let Some(ring) = Keyring::load(path).map_err(err)?
    {
        if config.encrypt.is_some() {
            tracing::warn!(path = %path.display(), "loaded the keyring file; ignoring -encrypt");
        }
        return Ok(ring);
    }
    let Some(key) = &config.encrypt else {
        return Ok(Keyring::default());
    };
    let ring = Keyring::with_primary(crate::gossip::keyring::parse_key(key).map_err(err)?);
    if let Some(path) = &path {
        ring.save(path).map_err(err)?;
    }
    Ok(ring)
}

/// Serf tags as Consul's agents set them (role, datacenter, ID, versions, RPC port on
/// servers), plus this agent's HTTP port.
fn gossip_tags(
    config: &Config,
    node_id: &str,
    rpc_addr: Option<SocketAddr>,
    http_port: Option<u16>,
) -> BTreeMap<String, String> {
    let mut t: BTreeMap<String, String> = [
        (
            "role",
            if config.server { "consul" } else { "node" }.to_string(),
        ),
        ("dc", config.datacenter.clone()),
        ("segment", String::new()),
        ("id", node_id.to_string()),
        ("vsn", "2".to_string()),
        ("vsn_min", "2".to_string()),
        ("vsn_max", "3".to_string()),
        (
            "build",
            format!("{}:{}", version::VERSION, version::REVISION),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(addr) = rpc_addr {
        t.insert("port".into(), addr.port().to_string());
        t.insert("raft_vsn".into(), "3".into());
        t.insert("acls".into(), "0".into());
        if config.bootstrap {
            t.insert("bootstrap".into(), "1".into());
        }
        if let Some(n) = config.bootstrap_expect {
            t.insert("expect".into(), n.to_string());
        }
    }
    if let Some(p) = http_port {
        t.insert("http_port".into(), p.to_string());
    }
    t
}

/// `-join` (fatal when nobody answers), `-retry-join` (in the background), and the rejoin
/// of members saved before a restart.
async fn join_at_start(
    config: &Config,
    rejoin: Vec<String>,
    gossip: &Gossip,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
    fatal: &Arc<OnceLock<String>>,
) -> Result<(), AgentError> {
    if !config.start_join.is_empty() {
        let joined = gossip
            .join(&config.start_join)
            .await
            .map_err(|e| AgentError::Join(e.to_string()))?;
        if joined == 0 {
            return Err(AgentError::Join(format!(
                "no agent answered at {}",
                config.start_join.join(", ")
            )));
        }
        tracing::info!(joined, "join completed");
    }
    if !config.retry_join.is_empty() {
        tasks.spawn(retry_join(
            gossip.clone(),
            config.retry_join.clone(),
            config.retry_interval,
            config.retry_max,
            shutdown.clone(),
            fatal.clone(),
        ));
    }
    if !rejoin.is_empty() {
        let gossip = gossip.clone();
        tasks.spawn(async move {
            match gossip.join(&rejoin).await {
                Ok(n) => tracing::info!(rejoined = n, "rejoined previously known members"),
                Err(e) => tracing::warn!(error = %e, "rejoining previously known members failed"),
            }
        });
    }
    Ok(())
}

async fn retry_join(
    gossip: Gossip,
    addrs: Vec<String>,
    interval: Duration,
    max: u32,
    shutdown: CancellationToken,
    fatal: Arc<OnceLock<String>>,
) {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match gossip.join(&addrs).await {
            Ok(n) if n > 0 => {
                tracing::info!(joined = n, attempt, "retry-join completed");
                return;
            }
            Ok(_) => tracing::warn!(attempt, "retry-join: no agent answered"),
            Err(e) => tracing::warn!(attempt, error = %e, "retry-join failed"),
        }
        if max > 0 && attempt >= max {
            let _ = fatal.set(format!("max join retry exhausted after {attempt} attempts"));
            tracing::error!("max join retry exhausted, exiting");
            shutdown.cancel();
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Consul's coordinate sync: the minimum period, stretched for big pools to keep servers at
/// about 64 updates a second, plus a random stagger of up to the same again.
const COORDINATE_INTERVAL: Duration = Duration::from_secs(15);
const DEV_COORDINATE_INTERVAL: Duration = Duration::from_secs(1);
const COORDINATE_RATE: f64 = 64.0;
const FIRST_COORDINATE: Duration = Duration::from_secs(2);

async fn send_coordinates(
    rpc: Arc<dyn Rpc>,
    acl: Arc<crate::acl::AgentAcl>,
    gossip: Gossip,
    node: String,
    datacenter: String,
    min: Duration,
    shutdown: CancellationToken,
) {
    // The first update goes out after a few probes rather than a full period, so a new
    // agent shows up in `/v1/coordinate/nodes` (and `?near`) soon.
    let mut first = true;
    loop {
        let members = gossip.members().len() as f64;
        let base = if first {
            FIRST_COORDINATE.min(min)
        } else {
            min.max(Duration::from_secs_f64(members / COORDINATE_RATE))
        };
        first = false;
        let wait = base + base.mul_f64(rand::random::<f64>());
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let req = WriteRequest {
            datacenter: datacenter.clone(),
            token: acl.agent_token(),
            op: WriteOp::CoordinateUpdate(CoordinateEntry {
                node: node.clone(),
                segment: String::new(),
                coord: Some(gossip.coordinate()),
            }),
        };
        if let Err(e) = rpc.write(req).await {
            tracing::debug!(error = %e, "sending this node's coordinate failed");
        }
    }
}

/// A client agent's servers: the live servers of its datacenter in the gossip pool.
#[derive(Debug)]
struct GossipServers {
    gossip: Gossip,
    datacenter: String,
}

impl ServerSource for GossipServers {
    fn servers(&self) -> Vec<SocketAddr> {
        self.gossip.servers(&self.datacenter)
    }
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
    let family = |ip: std::net::IpAddr| if ip.is_ipv4() { "ipv4" } else { "ipv6" };
    let (lan, wan) = (config.advertise(), config.advertise_wan());
    BTreeMap::from([
        ("lan".to_string(), lan.to_string()),
        (format!("lan_{}", family(lan)), lan.to_string()),
        ("wan".to_string(), wan.to_string()),
        (format!("wan_{}", family(wan)), wan.to_string()),
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

/// TLS on the RPC port: what a server serves with, and what every outgoing call dials with.
struct RpcTls {
    server: Option<cairn_shared::rpc::tls::ServerTls>,
    client: Option<cairn_shared::rpc::tls::ClientTls>,
}

impl RpcTls {
    fn from_config(config: &Config) -> Result<Self, AgentError> {
        use cairn_shared::rpc::tls::{ClientTls, ServerTls};
        let t = &config.rpc_tls;
        let server = match config.server {
            true => ServerTls::from_settings(t).map_err(AgentError::Tls)?,
            false => None,
        };
        let client = ClientTls::from_settings(t, &config.datacenter, &config.domain)
            .map_err(AgentError::Tls)?;
        if server.is_some() || client.is_some() {
            tracing::info!(
                accepts_tls = server.is_some(),
                requires_tls = t.verify_incoming && config.server,
                dials_tls = client.is_some(),
                verify_server_hostname = t.verify_server_hostname,
                "TLS on the server RPC port"
            );
        }
        Ok(Self { server, client })
    }
}

fn server_config(config: &Config) -> ServerConfig {
    ServerConfig {
        default_query_time: config.default_query_time,
        max_query_time: config.max_query_time,
        session_ttl_min: config.session_ttl_min,
        autopilot: config.autopilot.clone(),
        acl: crate::server::AclSettings {
            enabled: config.acl.enabled,
            default_allow: config.acl.default_allow,
            enable_key_list_policy: config.acl.enable_key_list_policy,
            initial_management: config.acl.tokens.initial_management.clone(),
            data_dir: config.data_dir.clone(),
            primary_datacenter: config.primary_datacenter.clone(),
            replication_token: config.acl.tokens.replication.clone(),
            enable_token_replication: config.acl.enable_token_replication,
        },
        ..ServerConfig::new(&config.datacenter)
    }
}

/// Registers this agent's node and its `serfHealth` check, as a Consul leader does for
/// every live member.
async fn register_self(
    server: &Server,
    config: &Config,
    node_id: &str,
    rpc_port: u16,
) -> Result<(), AgentError> {
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
        port: rpc_port,
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

fn agent_info(config: &Config, node_id: &str, gossip: &Gossip) -> AgentInfo {
    AgentInfo {
        node_name: config.node_name.clone(),
        node_id: node_id.to_string(),
        datacenter: config.datacenter.clone(),
        server: config.server,
        dev: config.dev,
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
            "AdvertiseAddrLAN": config.advertise().to_string(),
            "AdvertiseAddrWAN": config.advertise_wan().to_string(),
            "ClientAddrs": config.client_addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "HTTPPort": config.ports.http.map_or(-1, i32::from),
            "DNSPort": config.ports.dns.map_or(-1, i32::from),
            "ServerPort": config.ports.server,
            "SerfPortLAN": gossip.local_addr().port(),
            "DNSDomain": config.domain,
            "KVMaxValueSize": config.limits.kv_max_value_size,
            "TxnMaxReqLen": config.limits.txn_max_req_len,
        }),
    }
}

fn stats_fn(config: &Config, server: Option<Server>, gossip: Gossip) -> StatsFn {
    let bootstrap = config.bootstrap;
    let datacenter = config.datacenter.clone();
    let encrypted = !config.encrypt.as_deref().unwrap_or_default().is_empty()
        || config
            .data_dir
            .as_deref()
            .is_some_and(|d| Keyring::file(d).exists());
    StatsFn(Arc::new(move || {
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
        let members = gossip.members();
        let count = |st: MemberStatus| members.iter().filter(|m| m.status == st).count();
        out.insert(
            "serf_lan".into(),
            s(&[
                ("members", members.len().to_string()),
                ("failed", count(MemberStatus::Failed).to_string()),
                ("left", count(MemberStatus::Left).to_string()),
                ("encrypted", encrypted.to_string()),
            ]),
        );
        match &server {
            Some(server) => {
                let status = server.status();
                let wan = server.wan().and_then(|w| w.cached_status());
                let wan_members = wan.as_ref().map(|w| w.members.as_slice()).unwrap_or(&[]);
                let wan_count = |code: u8| wan_members.iter().filter(|m| m.status == code).count();
                out.insert(
                    "serf_wan".into(),
                    s(&[
                        ("members", wan_members.len().to_string()),
                        ("failed", wan_count(MemberStatus::Failed.code()).to_string()),
                        ("left", wan_count(MemberStatus::Left.code()).to_string()),
                        ("encrypted", (!wan_members.is_empty()).to_string()),
                    ]),
                );
                let known_dcs = wan.as_ref().map_or(1, |w| w.datacenters.len().max(1));
                out.insert(
                    "consul".into(),
                    s(&[
                        ("acl", "disabled".into()),
                        ("bootstrap", bootstrap.to_string()),
                        ("known_datacenters", known_dcs.to_string()),
                        ("leader", status.is_leader.to_string()),
                        (
                            "leader_addr",
                            status.leader_addr.clone().unwrap_or_default(),
                        ),
                        ("server", "true".into()),
                    ]),
                );
                let state = if status.is_leader {
                    "Leader"
                } else {
                    "Follower"
                };
                let (commit, last_log, applied) = server.consensus().log_indexes();
                out.insert(
                    "raft".into(),
                    s(&[
                        ("applied_index", applied.to_string()),
                        ("commit_index", commit.to_string()),
                        ("last_log_index", last_log.to_string()),
                        ("last_contact", format!("{}ms", status.last_contact_ms)),
                        (
                            "num_peers",
                            status.peers.len().saturating_sub(1).to_string(),
                        ),
                        ("state", state.into()),
                    ]),
                );
            }
            None => {
                out.insert(
                    "consul".into(),
                    s(&[
                        ("acl", "disabled".into()),
                        (
                            "known_servers",
                            gossip.servers(&datacenter).len().to_string(),
                        ),
                        ("server", "false".into()),
                    ]),
                );
            }
        }
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

/// Keeps the WAN status `/v1/agent/self` shows no older than a few seconds.
async fn refresh_wan_status(server: Server, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(w) = server.wan() {
            w.status().await;
        }
    }
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
