//! `cairn-wan-router`: the only process that crosses datacenters.
//!
//! A router runs beside a server of its datacenter (one router per server is the
//! recommended layout). It joins the datacenter's LAN pool as a router member, learns the
//! local servers from it, and joins the WAN pool of routers over QUIC with mutual TLS as
//! the member `NODE.DC` of the server it fronts. Servers hand it requests for other
//! datacenters; it sends each to a random live server there, through the router fronting
//! it, and retries elsewhere when a router or server is dead. WAN probe round trips feed
//! Vivaldi coordinates, which order datacenters by distance.
//!
//! Layout:
//! - [`config`]: flags and config file.
//! - [`transport`]: the QUIC endpoint and the TLS that guards it.
//! - [`federation`]: the LAN and WAN pools and what the router makes of them.
//! - [`routing`]: target choice, failure penalties, datacenter ordering.
//! - [`forward`]: requests out to other datacenters and in to local servers.
//! - [`api`]: the local API servers call, and the HTTP port for metrics and status.
//!
//! [`run`] starts everything on a task tracker and returns a [`RouterHandle`]; nothing is
//! global, so tests can run several routers in one process.

pub mod api;
pub mod config;
pub mod federation;
pub mod forward;
pub mod routing;
pub mod telemetry;
pub mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cairn_shared::gossip::{
    Gossip, GossipConfig, Keyring, NetTransport, RelayOnly, keyring::parse_key,
};
use cairn_shared::rpc::client::RpcClient;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
use federation::{Federation, ROLE_ROUTER, TAG_WAN_ADDR};
use transport::Quic;

/// The build string routers gossip.
pub const BUILD: &str = concat!(env!("CARGO_PKG_VERSION"), ":cairn");
/// How often an unanswered LAN join is tried again.
const LAN_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Tls(#[from] transport::tls::TlsError),
    #[error("{0}")]
    Quic(#[from] transport::quic::QuicError),
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gossip: {0}")]
    Gossip(String),
}

/// What a router needs from outside.
#[derive(Debug, Clone, Default)]
pub struct Deps {
    /// The installed Prometheus recorder, rendered on `/metrics`.
    pub prometheus: Option<PrometheusHandle>,
}

/// A running router.
#[derive(Debug)]
pub struct RouterHandle {
    /// The UDP address of the QUIC endpoint.
    pub wan_addr: SocketAddr,
    pub lan_addr: SocketAddr,
    pub rpc_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub federation: Federation,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl RouterHandle {
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Leaves both pools gracefully, then stops.
    pub async fn leave(&self) {
        let (wan, lan) = (self.federation.wan.leave(), self.federation.lan.leave());
        let (w, l) = tokio::join!(wan, lan);
        for r in [w, l] {
            if let Err(e) = r {
                tracing::warn!(error = %e, "graceful leave failed");
            }
        }
        self.shutdown.cancel();
    }

    pub async fn stopping(&self) {
        self.shutdown.cancelled().await;
    }

    /// Waits until every task has finished (after [`Self::shutdown`]).
    pub async fn stopped(self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Starts a router. On failure whatever was started is stopped.
pub async fn run(
    config: Config,
    deps: Deps,
    shutdown: CancellationToken,
) -> Result<RouterHandle, RouterError> {
    let started = start(config, deps, shutdown.clone()).await;
    if started.is_err() {
        shutdown.cancel();
    }
    started
}

async fn bind_tcp(
    what: &'static str,
    addr: SocketAddr,
) -> Result<tokio::net::TcpListener, RouterError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RouterError::Bind { what, addr, source })
}

async fn start(
    config: Config,
    deps: Deps,
    shutdown: CancellationToken,
) -> Result<RouterHandle, RouterError> {
    config.validate()?;
    let tasks = TaskTracker::new();
    let crypto = transport::tls::load(&config.tls, &config.datacenter, &config.domain)?;
    // The LAN side: TLS accepted on the local RPC port (required, and spoken to the
    // servers with their names checked, under -lan-tls), with the WAN's files.
    let lan_tls = cairn_shared::tls::TlsSettings {
        ca_file: Some(config.tls.ca_file.clone()),
        cert_file: Some(config.tls.cert_file.clone()),
        key_file: Some(config.tls.key_file.clone()),
        verify_incoming: config.lan_tls,
        verify_outgoing: config.lan_tls,
        verify_server_hostname: config.lan_tls,
    };
    let lan_server_tls = cairn_shared::rpc::tls::ServerTls::from_settings(&lan_tls)
        .map_err(transport::tls::TlsError::Config)?;
    let lan_client_tls = cairn_shared::rpc::tls::ClientTls::from_settings(
        &lan_tls,
        &config.datacenter,
        &config.domain,
    )
    .map_err(transport::tls::TlsError::Config)?;
    let (quic, forwards) = Quic::bind(
        SocketAddr::new(config.bind, config.wan_port),
        config.advertise_wan,
        crypto,
        &config.domain,
        &tasks,
        shutdown.clone(),
    )?;
    let wan_addr = quic.bound_addr().map_err(|source| RouterError::Bind {
        what: "WAN",
        addr: SocketAddr::new(config.bind, config.wan_port),
        source,
    })?;
    let advertised_wan = cairn_shared::gossip::GossipTransport::local_addr(&quic);

    let rpc_listener = bind_tcp(
        "the local API",
        SocketAddr::new(config.bind, config.rpc_port),
    )
    .await?;
    let rpc_addr = rpc_listener
        .local_addr()
        .map_err(|source| RouterError::Bind {
            what: "the local API",
            addr: SocketAddr::new(config.bind, config.rpc_port),
            source,
        })?;
    let http_listener = match config.http_port {
        Some(p) => Some(bind_tcp("HTTP", SocketAddr::new(config.bind, p)).await?),
        None => None,
    };

    let lan_bind = SocketAddr::new(config.bind, config.lan_port);
    let lan_transport =
        NetTransport::bind(lan_bind, None)
            .await
            .map_err(|source| RouterError::Bind {
                what: "LAN gossip",
                addr: lan_bind,
                source,
            })?;
    let mut lan_cfg = GossipConfig::lan(&format!("{}-router", config.node));
    config.gossip_lan.apply(&mut lan_cfg.swim);
    lan_cfg.tags = [
        ("role", ROLE_ROUTER.to_string()),
        ("dc", config.datacenter.clone()),
        ("segment", String::new()),
        ("fronts", config.node.clone()),
        ("port", rpc_addr.port().to_string()),
        (TAG_WAN_ADDR, advertised_wan.to_string()),
        ("build", BUILD.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(key) = &config.encrypt {
        let key = parse_key(key).map_err(|e| RouterError::Gossip(e.to_string()))?;
        lan_cfg.keyring = Keyring::with_primary(key);
    }
    let lan = Gossip::start(
        lan_cfg,
        Arc::new(lan_transport),
        Arc::new(RelayOnly),
        &tasks,
        shutdown.clone(),
    )
    .map_err(|e| RouterError::Gossip(e.to_string()))?;
    let lan_addr = lan.local_addr();

    let member = format!("{}.{}", config.node, config.datacenter);
    let mut wan_cfg = GossipConfig::wan(&member);
    config.gossip_wan.apply(&mut wan_cfg.swim);
    let wan = Gossip::start(
        wan_cfg,
        Arc::new(quic.clone()),
        Arc::new(RelayOnly),
        &tasks,
        shutdown.clone(),
    )
    .map_err(|e| RouterError::Gossip(e.to_string()))?;

    let federation = Federation {
        datacenter: config.datacenter.clone(),
        node: config.node.clone(),
        member,
        lan: lan.clone(),
        wan: wan.clone(),
    };
    tasks.spawn(
        federation
            .clone()
            .follow_lan(BUILD.to_string(), shutdown.clone()),
    );
    let forwarder = Arc::new(forward::Forwarder::new(
        federation.clone(),
        quic.clone(),
        RpcClient::from_ip(config.bind).with_tls(lan_client_tls),
    ));
    tasks.spawn(
        forwarder
            .clone()
            .serve(forwards, tasks.clone(), shutdown.clone()),
    );
    tasks.spawn(cairn_shared::rpc::server::serve(
        rpc_listener,
        Arc::new(api::LocalApi(forwarder.clone())),
        lan_server_tls,
        tasks.clone(),
        shutdown.clone(),
    ));
    let http_addr = match http_listener {
        Some(listener) => {
            let bound = listener.local_addr().ok();
            let app = api::http(forwarder.clone(), deps.prometheus.clone());
            let stop = shutdown.clone();
            tasks.spawn(async move {
                let serve = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            });
            bound
        }
        None => None,
    };
    tasks.spawn(join_until_answered(
        lan,
        config.join_lan.clone(),
        8301,
        LAN_RETRY,
        "LAN",
        shutdown.clone(),
    ));
    tasks.spawn(join_until_answered(
        wan,
        config.retry_join_wan.clone(),
        config::DEFAULT_WAN_PORT,
        config.retry_interval_wan,
        "WAN",
        shutdown.clone(),
    ));
    if let Some(prom) = deps.prometheus {
        tasks.spawn(upkeep(prom, federation.clone(), shutdown.clone()));
    }
    tracing::info!(
        member = %federation.member,
        wan = %advertised_wan,
        lan = %lan_addr,
        rpc = %rpc_addr,
        "router running"
    );
    Ok(RouterHandle {
        wan_addr,
        lan_addr,
        rpc_addr,
        http_addr,
        federation,
        tasks,
        shutdown,
    })
}

/// `host[:port]` with `port` by default.
async fn resolve(addr: &str, port: u16) -> Vec<String> {
    if addr.parse::<SocketAddr>().is_ok() {
        return vec![addr.to_string()];
    }
    if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
        return vec![SocketAddr::new(ip, port).to_string()];
    }
    let with_port = if addr.contains(':') {
        addr.to_string()
    } else {
        format!("{addr}:{port}")
    };
    match tokio::net::lookup_host(&with_port).await {
        Ok(it) => it.map(|a| a.to_string()).collect(),
        Err(e) => {
            tracing::warn!(%addr, error = %e, "cannot resolve a join address");
            Vec::new()
        }
    }
}

/// Joins a pool through `addrs`, trying again every `every` until one answers.
async fn join_until_answered(
    pool: Gossip,
    addrs: Vec<String>,
    port: u16,
    every: Duration,
    what: &'static str,
    shutdown: CancellationToken,
) {
    if addrs.is_empty() {
        return;
    }
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let mut resolved = Vec::new();
        for a in &addrs {
            resolved.extend(resolve(a, port).await);
        }
        match pool.join(&resolved).await {
            Ok(n) if n > 0 => {
                tracing::info!(pool = what, joined = n, attempt, "joined");
                return;
            }
            Ok(_) => tracing::warn!(pool = what, attempt, "join: nobody answered yet"),
            Err(e) => tracing::warn!(pool = what, attempt, error = %e, "join failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Keeps histograms of the Prometheus recorder in bounds and gauges fresh.
async fn upkeep(prom: PrometheusHandle, fed: Federation, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        prom.run_upkeep();
        fed.record_gauges();
    }
}
