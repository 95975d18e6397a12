//! The [`Gossip`] handle, its configuration and the member view (feature `net`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::coordinate::Coordinate;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{GossipTransport, Keyring, driver, keyring, swim};
use crate::api::UserEvent;

/// What the host does with a user event heard on the pool for the first time. The LAN
/// agent keeps those that match its node and services; a WAN router only relays them
/// (the driver re-gossips every new event whatever the sink does).
pub trait EventSink: Send + Sync {
    fn deliver(&self, event: UserEvent);
}

/// A sink that keeps nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct RelayOnly;

impl EventSink for RelayOnly {
    fn deliver(&self, _event: UserEvent) {}
}

/// Metric: datagrams or streams refused (garbage, wrong key, too large).
pub const METRIC_BAD_PACKETS: &str = "cairn_gossip_bad_packets_total";

/// A member as the agent API shows it (Serf's status codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum MemberStatus {
    Alive,
    Leaving,
    Left,
    Failed,
}

impl MemberStatus {
    /// Serf's numeric status (`/v1/agent/members`).
    pub fn code(self) -> u8 {
        match self {
            Self::Alive => 1,
            Self::Leaving => 2,
            Self::Left => 3,
            Self::Failed => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Leaving => "leaving",
            Self::Left => "left",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub name: String,
    pub addr: SocketAddr,
    pub tags: BTreeMap<String, String>,
    pub status: MemberStatus,
}

impl MemberInfo {
    /// A server of datacenter `dc`, and its RPC address.
    pub fn server_rpc(&self, dc: &str) -> Option<SocketAddr> {
        if self.tags.get("role").map(String::as_str) != Some("consul")
            || self.tags.get("dc").map(String::as_str) != Some(dc)
            || self.status != MemberStatus::Alive
        {
            return None;
        }
        let port = self.tags.get("port")?.parse().ok()?;
        Some(SocketAddr::new(self.addr.ip(), port))
    }
}

/// How gossip runs.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    pub node: String,
    pub tags: BTreeMap<String, String>,
    pub swim: swim::Config,
    pub keyring: Keyring,
    /// Where the keyring is saved after changes (`<data_dir>/serf/local.keyring`).
    pub keyring_path: Option<PathBuf>,
    /// Where known members are saved for rejoining after a restart
    /// (`<data_dir>/serf/local.snapshot`).
    pub snapshot_path: Option<PathBuf>,
    /// Members from the last snapshot, kept in the next one until heard of again.
    pub known: BTreeMap<String, String>,
    /// Failed members are forgotten after this long.
    pub reconnect_timeout: Duration,
    /// Left members are forgotten after this long.
    pub tombstone_timeout: Duration,
    /// How often reaping runs.
    pub reap_interval: Duration,
    /// How long a graceful leave waits for the news to spread.
    pub leave_propagate_delay: Duration,
    /// How long keyring queries wait for answers.
    pub query_timeout: Duration,
    pub seed: u64,
}

impl GossipConfig {
    pub fn lan(node: &str) -> Self {
        Self {
            node: node.to_string(),
            tags: BTreeMap::new(),
            swim: swim::Config::lan(),
            keyring: Keyring::default(),
            keyring_path: None,
            snapshot_path: None,
            known: BTreeMap::new(),
            reconnect_timeout: Duration::from_secs(72 * 3600),
            tombstone_timeout: Duration::from_secs(24 * 3600),
            reap_interval: Duration::from_secs(15),
            leave_propagate_delay: Duration::from_secs(1),
            query_timeout: Duration::from_secs(5),
            seed: rand::random(),
        }
    }

    /// The WAN pool of routers: memberlist's WAN timing (probe 5 s, timeout 3 s, gossip
    /// every 500 ms to 4, suspicion multiplier 6, push/pull 60 s).
    pub fn wan(node: &str) -> Self {
        Self {
            swim: swim::Config::wan(),
            ..Self::lan(node)
        }
    }

    /// Dev-mode timings, near Consul's: everything several times faster. (Consul uses a
    /// 100ms interval and timeout; our probe timeout must be shorter than the interval.)
    pub fn dev(node: &str) -> Self {
        let mut c = Self::lan(node);
        c.swim = swim::Config {
            probe_interval: Duration::from_millis(200),
            probe_timeout: Duration::from_millis(100),
            gossip_interval: Duration::from_millis(100),
            suspicion_mult: 3,
            retransmit_mult: 4,
            push_pull_interval: Duration::from_secs(5),
            ..swim::Config::local()
        };
        c.reap_interval = Duration::from_secs(1);
        c.leave_propagate_delay = Duration::from_millis(300);
        c.query_timeout = Duration::from_secs(2);
        c
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    #[error("{0}")]
    Swim(#[from] swim::SwimError),
    #[error("gossip has stopped")]
    Stopped,
    #[error("{0}")]
    Join(String),
    #[error("{0}")]
    Key(#[from] keyring::KeyError),
    #[error("No member named {0:?}")]
    NoMember(String),
}

/// A keyring change or listing, run on every member of the pool.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KeyOp {
    List,
    Install(String),
    Use(String),
    Remove(String),
}

/// What a keyring query gathered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyringReport {
    /// Members asked (alive when the query started).
    pub num_nodes: usize,
    /// Each key, and how many members have it.
    pub keys: BTreeMap<String, usize>,
    /// Each primary key, and how many members use it.
    pub primary_keys: BTreeMap<String, usize>,
    /// Member → error message.
    pub errors: BTreeMap<String, String>,
    pub responses: usize,
}

#[derive(Debug)]
pub(crate) enum Cmd {
    Join(Vec<SocketAddr>, oneshot::Sender<usize>),
    Leave(oneshot::Sender<()>),
    ForceLeave {
        node: String,
        prune: bool,
        done: oneshot::Sender<Result<(), GossipError>>,
    },
    Key(KeyOp, oneshot::Sender<Result<KeyringReport, GossipError>>),
    Tags(BTreeMap<String, String>),
}

/// A handle on the running gossip task.
#[derive(Debug, Clone)]
pub struct Gossip {
    cmd: mpsc::UnboundedSender<Cmd>,
    events: mpsc::UnboundedSender<UserEvent>,
    members: watch::Receiver<Arc<Vec<MemberInfo>>>,
    coordinate: watch::Receiver<Coordinate>,
    peer_coordinates: driver::PeerCoordinates,
    local_addr: SocketAddr,
    node: String,
}

impl Gossip {
    /// Starts gossip over `transport`. User events heard for the first time go to
    /// `sink`; events sent on [`Self::event_outbox`] are gossiped.
    pub fn start(
        config: GossipConfig,
        transport: Arc<dyn GossipTransport>,
        sink: Arc<dyn EventSink>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Self, GossipError> {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let local_addr = transport.local_addr();
        let node = config.node.clone();
        let (members, coordinate, peer_coordinates) = driver::spawn(
            driver::Parts {
                config,
                transport,
                sink,
                commands: cmd_rx,
                fired: event_rx,
            },
            tasks,
            shutdown,
        )?;
        Ok(Self {
            cmd: cmd_tx,
            events: event_tx,
            members,
            coordinate,
            peer_coordinates,
            local_addr,
            node,
        })
    }

    /// Where events to be gossiped from this member go.
    pub fn event_outbox(&self) -> mpsc::UnboundedSender<UserEvent> {
        self.events.clone()
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The current member list.
    pub fn members(&self) -> Arc<Vec<MemberInfo>> {
        self.members.borrow().clone()
    }

    /// Changes whenever the member list does.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Vec<MemberInfo>>> {
        self.members.clone()
    }

    /// This node's network coordinate.
    pub fn coordinate(&self) -> Coordinate {
        self.coordinate.borrow().clone()
    }

    /// The coordinates other members last sent on their probe acks (Serf's coordinate
    /// cache: what a member knows of the others without asking a server).
    pub fn peer_coordinates(&self) -> std::collections::HashMap<String, Coordinate> {
        self.peer_coordinates
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The RPC addresses of the live servers of `dc`.
    pub fn servers(&self, dc: &str) -> Vec<SocketAddr> {
        self.members
            .borrow()
            .iter()
            .filter_map(|m| m.server_rpc(dc))
            .collect()
    }

    /// Joins through each address (a full state exchange); returns how many answered.
    pub async fn join(&self, addrs: &[String]) -> Result<usize, GossipError> {
        let mut resolved = Vec::new();
        for a in addrs {
            resolved.extend(resolve(a).await.map_err(GossipError::Join)?);
        }
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Join(resolved, tx))
            .map_err(|_| GossipError::Stopped)?;
        rx.await.map_err(|_| GossipError::Stopped)
    }

    /// Announces a graceful leave and waits for it to spread.
    pub async fn leave(&self) -> Result<(), GossipError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Leave(tx))
            .map_err(|_| GossipError::Stopped)?;
        rx.await.map_err(|_| GossipError::Stopped)
    }

    /// Marks a failed member as left everywhere (or forgets it with `prune`).
    pub async fn force_leave(&self, node: &str, prune: bool) -> Result<(), GossipError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::ForceLeave {
                node: node.to_string(),
                prune,
                done: tx,
            })
            .map_err(|_| GossipError::Stopped)?;
        rx.await.map_err(|_| GossipError::Stopped)?
    }

    /// Runs a keyring operation on every member and reports what they said.
    pub async fn keyring(&self, op: KeyOp) -> Result<KeyringReport, GossipError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Key(op, tx))
            .map_err(|_| GossipError::Stopped)?;
        rx.await.map_err(|_| GossipError::Stopped)?
    }

    /// Replaces this node's tags (gossiped with a new incarnation).
    pub fn set_tags(&self, tags: BTreeMap<String, String>) {
        let _ = self.cmd.send(Cmd::Tags(tags));
    }
}

/// `host[:port]` to socket addresses, port 8301 by default.
pub async fn resolve(addr: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, 8301)]);
    }
    let with_port = if addr.contains(':') {
        addr.to_string()
    } else {
        format!("{addr}:8301")
    };
    tokio::net::lookup_host(&with_port)
        .await
        .map(|it| it.collect())
        .map_err(|e| format!("failed to resolve {addr}: {e}"))
}

/// Tags as the bytes SWIM carries.
pub(crate) fn encode_tags(tags: &BTreeMap<String, String>) -> Vec<u8> {
    rmp_serde::to_vec(tags).unwrap_or_default()
}

pub(crate) fn decode_tags(meta: &[u8]) -> BTreeMap<String, String> {
    rmp_serde::from_slice(meta).unwrap_or_default()
}
