//! Raft for the servers of a datacenter: openraft over the server RPC port, its log in
//! redb under `-data-dir`, and the state store's `apply` as the state machine.
//!
//! [`RaftConsensus`] is the [`Consensus`] the server endpoint proposes through. This module
//! also forms the cluster (`-bootstrap`, `-bootstrap-expect`), keeps its membership in step
//! with gossip (autopilot: healthy new servers become voters, servers that left are
//! removed) and guards the Raft messages a server accepts (only from servers of its own
//! datacenter and cluster). The reasoning is in `docs/raft.md`.

pub mod autopilot;
mod batch;
mod group_commit;
pub mod log_store;
pub mod network;
mod read_index;
pub mod recover;
pub mod snapshot;
pub mod state_machine;

use cairn_shared::rpc::tls::ClientTls;
use std::collections::BTreeMap;
use std::io::Cursor;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cairn_shared::api::{AutopilotHealth, AutopilotServer, RaftConfiguration, RaftServer};
use cairn_shared::rpc::{ErrorKind, RpcError};
use openraft::error::{ClientWriteError, InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{ChangeMembers, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::{Command, StateStore};
use crate::gossip::{Gossip, MemberStatus};
use crate::server::{Applied, Consensus, LeaderStatus};
use log_store::LogStore;
use network::Network;
use snapshot::SnapshotDir;
use state_machine::StateMachine;

pub type NodeId = u64;

/// A server as Raft knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftNode {
    /// Its node name, for humans.
    pub name: String,
    /// Its server RPC address (`ip:port`), which carries Raft too.
    pub addr: String,
    /// Its node ID (a UUID), as operators name it.
    pub node_id: String,
}

impl std::fmt::Display for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)
    }
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = EntryApplied,
        NodeId = NodeId,
        Node = RaftNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// What applying one log entry answers: one result, or one per command of a batch.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum EntryApplied {
    One(Applied),
    Many(Vec<Applied>),
}

/// The Raft ID of a node: the first 64 bits of its node UUID, so every agent derives the
/// same number from the `id` gossip tag.
pub fn raft_id(node_id: &str) -> NodeId {
    match uuid::Uuid::parse_str(node_id) {
        Ok(u) => u64::from_be_bytes(u.as_bytes()[..8].try_into().expect("8 bytes")),
        // Not a UUID (a test's chosen ID): hash it, stably.
        Err(_) => node_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        }),
    }
}

/// A Raft message between servers, with what the receiver checks before handing it on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RaftEnvelope {
    pub datacenter: String,
    /// The sender's cluster, once it has one.
    pub cluster_id: Option<String>,
    pub from: NodeId,
    pub msg: RaftMsg,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RaftMsg {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// Whether the receiver already belongs to a cluster (asked before bootstrapping).
    Status,
    /// From the leader handing over: start an election now.
    TimeoutNow,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum RaftReply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Status {
        cluster_id: Option<String>,
        voters: usize,
    },
    /// The election a [`RaftMsg::TimeoutNow`] asked for has started.
    ElectionStarted,
}

/// How a server's Raft is set up.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub data_dir: PathBuf,
    pub node_name: String,
    pub node_id: String,
    pub datacenter: String,
    /// Where other servers reach this one's RPC port.
    pub advertise: SocketAddr,
    pub bootstrap: bool,
    pub bootstrap_expect: Option<u32>,
    /// Consul's `performance.raft_multiplier`: scales every Raft timer.
    pub raft_multiplier: u32,
    /// Entries between snapshots (`raft_snapshot_threshold`).
    pub snapshot_threshold: u64,
    /// How long a new server must stay healthy before it becomes a voter.
    pub stabilization: Duration,
    /// `verify_outgoing`: Raft and autopilot calls to other servers go over TLS.
    pub rpc_tls: Option<ClientTls>,
}

/// The autopilot settings the leader acts on.
#[derive(Debug, Clone, Copy)]
pub struct Autopilot {
    pub cleanup_dead_servers: bool,
    /// A follower not heard from for longer is unhealthy.
    pub last_contact_threshold: Duration,
    pub max_trailing_logs: u64,
    pub min_quorum: u64,
    pub stabilization: Duration,
}

/// Entries per AppendEntries: a burst of proposals replicates in a few messages.
const MAX_PAYLOAD_ENTRIES: u64 = 512;

/// Consul's Raft timing at `raft_multiplier = 1` (heartbeat and election timeouts).
const BASE_HEARTBEAT_MS: u64 = 100;
const BASE_ELECTION_MS: u64 = 1000;
/// Entries kept behind a snapshot so a briefly lagging follower needs no snapshot.
const TRAILING_LOGS: u64 = 1024;

/// Where the pieces live under the data directory.
pub fn raft_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("raft")
}

#[derive(Debug, thiserror::Error)]
pub enum RaftStartError {
    #[error("{0}")]
    Storage(String),
    #[error("starting Raft: {0}")]
    Raft(String),
}

/// Opens the log and snapshots under `data_dir/raft` and starts Raft. Nothing is
/// initialised here: bootstrap happens in [`RaftConsensus::run_bootstrap`].
pub async fn start(
    settings: RaftSettings,
    state: Arc<StateStore>,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<Arc<RaftConsensus>, RaftStartError> {
    let dir = raft_dir(&settings.data_dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| RaftStartError::Storage(format!("creating {}: {e}", dir.display())))?;
    let mut log =
        LogStore::<TypeConfig>::open(&dir).map_err(|e| RaftStartError::Storage(e.to_string()))?;
    recover::apply_peers_json(&dir, &mut log)
        .await
        .map_err(RaftStartError::Storage)?;
    let snapshots = SnapshotDir::open(dir.join("snapshots"))
        .map_err(|e| RaftStartError::Storage(format!("{}: {e}", dir.display())))?;
    let sm = StateMachine::open(state.clone(), snapshots, &settings.datacenter)
        .map_err(RaftStartError::Storage)?;
    let cluster_id: Option<String> = log
        .meta_get("cluster_id")
        .map_err(|e| RaftStartError::Storage(e.to_string()))?;
    let dc: Option<String> = log
        .meta_get("datacenter")
        .map_err(|e| RaftStartError::Storage(e.to_string()))?;
    if let Some(dc) = dc.filter(|d| *d != settings.datacenter) {
        return Err(RaftStartError::Storage(format!(
            "the data directory {} belongs to a server of datacenter {dc:?}, not {:?}; refusing to start",
            settings.data_dir.display(),
            settings.datacenter
        )));
    }

    let m = u64::from(settings.raft_multiplier.max(1));
    let config = openraft::Config {
        cluster_name: format!("cairn-{}", settings.datacenter),
        heartbeat_interval: BASE_HEARTBEAT_MS * m,
        election_timeout_min: BASE_ELECTION_MS * m,
        election_timeout_max: 2 * BASE_ELECTION_MS * m,
        install_snapshot_timeout: 30_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_threshold.max(1)),
        max_in_snapshot_log_to_keep: TRAILING_LOGS,
        purge_batch_size: 256,
        // Entries per AppendEntries; `network.rs` also bounds its bytes.
        max_payload_entries: MAX_PAYLOAD_ENTRIES,
        ..Default::default()
    };
    let config = Arc::new(
        config
            .validate()
            .map_err(|e| RaftStartError::Raft(e.to_string()))?,
    );
    let id = raft_id(&settings.node_id);
    let node = RaftNode {
        name: settings.node_name.clone(),
        addr: settings.advertise.to_string(),
        node_id: settings.node_id.clone(),
    };
    let shared = Arc::new(Shared {
        id,
        datacenter: settings.datacenter.clone(),
        cluster_id: Mutex::new(cluster_id),
        log: log.clone(),
        // Until a leader speaks, LastContact counts from the start.
        last_contact: Mutex::new(Some(Instant::now())),
        follower_contact: Mutex::default(),
        gossip: OnceLock::new(),
    });
    let net = Network::new(
        shared.clone(),
        settings.advertise.ip(),
        settings.rpc_tls.clone(),
    );
    let raft = Raft::new(id, config, net, log, sm)
        .await
        .map_err(|e| RaftStartError::Raft(e.to_string()))?;
    let (leader_tx, leader_rx) = watch::channel(false);
    let batcher = batch::Batcher::start(raft.clone());
    let read_index = read_index::ReadIndex::start(raft.clone());
    let consensus = Arc::new(RaftConsensus {
        raft,
        node,
        shared,
        settings,
        state,
        leader_rx,
        batcher,
        read_index,
    });
    tasks.spawn(
        consensus
            .clone()
            .track_leadership(leader_tx, shutdown.clone()),
    );
    let c = consensus.clone();
    let stop = shutdown.clone();
    tasks.spawn(async move {
        stop.cancelled().await;
        let _ = c.raft.shutdown().await;
    });
    Ok(consensus)
}

/// What the network layer and the message handler share.
pub struct Shared {
    pub id: NodeId,
    pub datacenter: String,
    pub cluster_id: Mutex<Option<String>>,
    log: LogStore<TypeConfig>,
    /// When a leader last sent this follower entries or a heartbeat.
    last_contact: Mutex<Option<Instant>>,
    /// On a leader: when each follower last answered an AppendEntries (autopilot's
    /// `LastContact`).
    follower_contact: Mutex<std::collections::HashMap<NodeId, Instant>>,
    /// Set once gossip runs: who is a server.
    gossip: OnceLock<Gossip>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn heard_from(&self, follower: NodeId) {
        lock(&self.follower_contact).insert(follower, Instant::now());
    }

    /// How long ago `follower` last answered this leader, if it ever did.
    fn since_heard(&self, follower: NodeId) -> Option<Duration> {
        lock(&self.follower_contact)
            .get(&follower)
            .map(Instant::elapsed)
    }

    pub fn cluster_id(&self) -> Option<String> {
        lock(&self.cluster_id).clone()
    }

    /// Remembers the cluster this server belongs to, durably.
    fn adopt_cluster(&self, id: &str) -> Result<(), String> {
        let mut current = lock(&self.cluster_id);
        if current.as_deref() == Some(id) {
            return Ok(());
        }
        self.log
            .meta_put("cluster_id", &id.to_string())
            .and_then(|_| self.log.meta_put("datacenter", &self.datacenter))
            .map_err(|e| e.to_string())?;
        *current = Some(id.to_string());
        tracing::info!(cluster = id, "joined Raft cluster");
        Ok(())
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A server's Raft, as the server endpoint sees it.
pub struct RaftConsensus {
    pub raft: Raft<TypeConfig>,
    pub node: RaftNode,
    pub shared: Arc<Shared>,
    pub settings: RaftSettings,
    /// The applied state, for the settings autopilot keeps in it.
    state: Arc<StateStore>,
    leader_rx: watch::Receiver<bool>,
    batcher: batch::Batcher,
    /// Gathers `?consistent` reads behind shared leadership confirmations.
    read_index: read_index::ReadIndex,
}

impl std::fmt::Debug for RaftConsensus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftConsensus")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// A Raft message as it arrived in an RPC frame (malformed ones are counted).
pub fn decode_message(bytes: &[u8]) -> Result<RaftEnvelope, RpcError> {
    cairn_shared::rpc::wire::decode(bytes).inspect_err(|_| {
        metrics::counter!(crate::rpc::METRIC_BAD_FRAMES).increment(1);
    })
}

/// A Raft answer as it goes back in an RPC frame.
pub fn encode_reply(reply: &RaftReply) -> Result<Vec<u8>, RpcError> {
    cairn_shared::rpc::wire::encode(reply)
}

pub fn no_leader() -> RpcError {
    RpcError::new(ErrorKind::NoLeader, "No cluster leader")
}

impl RaftConsensus {
    /// Tells `target` to stand for election and waits until it leads (a few tries).
    async fn hand_over(
        &self,
        target: NodeId,
        addr: SocketAddr,
        lease: Duration,
        wait: Duration,
    ) -> Result<(), String> {
        let client = crate::rpc::RpcClient::from_ip(self.settings.advertise.ip())
            .with_tls(self.settings.rpc_tls.clone());
        let mut metrics = self.raft.metrics();
        for _ in 0..3 {
            tokio::time::sleep(lease).await;
            let leader = metrics.borrow().current_leader;
            if leader == Some(target) {
                return Ok(());
            }
            if leader != Some(self.id()) {
                // Someone else took over meanwhile; only its leader can try again.
                return Err(format!("lost the election (leader now {leader:?})"));
            }
            match network::send(&client, &self.shared, addr, RaftMsg::TimeoutNow, wait).await {
                Ok(RaftReply::ElectionStarted) => {}
                other => return Err(format!("did not start an election: {other:?}")),
            }
            let _ = tokio::time::timeout(lease * 2, async {
                loop {
                    let leader = metrics.borrow_and_update().current_leader;
                    if leader.is_some() && leader != Some(self.id()) {
                        return;
                    }
                    if metrics.changed().await.is_err() {
                        return;
                    }
                }
            })
            .await;
            if metrics.borrow().current_leader == Some(target) {
                return Ok(());
            }
        }
        Err("did not take over".into())
    }

    pub fn id(&self) -> NodeId {
        self.shared.id
    }

    /// Autopilot's settings as stored through the log, or the configured ones before a
    /// leader stored them.
    pub fn autopilot_config(&self) -> Autopilot {
        let stored = self.state.read(|s| s.autopilot_config().cloned());
        let Some(c) = stored else {
            return Autopilot {
                cleanup_dead_servers: true,
                last_contact_threshold: Duration::from_millis(200),
                max_trailing_logs: 250,
                min_quorum: 0,
                stabilization: self.settings.stabilization,
            };
        };
        Autopilot {
            cleanup_dead_servers: c.cleanup_dead_servers,
            last_contact_threshold: cairn_shared::duration::parse(&c.last_contact_threshold)
                .unwrap_or(Duration::from_millis(200)),
            max_trailing_logs: c.max_trailing_logs,
            min_quorum: c.min_quorum,
            stabilization: cairn_shared::duration::parse(&c.server_stabilization_time)
                .unwrap_or(self.settings.stabilization),
        }
    }

    /// Hands gossip over once it runs: membership decisions and the sender check need it.
    pub fn set_gossip(&self, gossip: Gossip) {
        let _ = self.shared.gossip.set(gossip);
    }

    async fn track_leadership(
        self: Arc<Self>,
        tx: watch::Sender<bool>,
        shutdown: CancellationToken,
    ) {
        let mut metrics = self.raft.metrics();
        loop {
            let leader = leader_caught_up(&metrics.borrow_and_update());
            tx.send_if_modified(|v| std::mem::replace(v, leader) != leader);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = metrics.changed() => if r.is_err() { return },
            }
        }
    }

    /// Handles a Raft message from another server, after checking it may send one.
    pub async fn handle(&self, from: IpAddr, env: RaftEnvelope) -> Result<RaftReply, RpcError> {
        if env.datacenter != self.shared.datacenter {
            tracing::warn!(%from, datacenter = %env.datacenter, "refused a Raft message from a server of another datacenter");
            return Err(RpcError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "Raft message from datacenter {:?} refused by a server of {:?}",
                    env.datacenter, self.shared.datacenter
                ),
            ));
        }
        if !self.is_server_ip(from) {
            metrics::counter!(crate::rpc::METRIC_BAD_FRAMES).increment(1);
            tracing::warn!(%from, "refused a Raft message from an address that is not a known server");
            return Err(RpcError::new(
                ErrorKind::PermissionDenied,
                "Raft messages are accepted only from servers",
            ));
        }
        let ours = self.shared.cluster_id();
        if let (Some(ours), Some(theirs)) = (&ours, &env.cluster_id)
            && ours != theirs
        {
            tracing::error!(%from, ours, theirs, "refused a Raft message from a server of another cluster (a foreign data directory?)");
            return Err(RpcError::new(
                ErrorKind::PermissionDenied,
                format!(
                    "Raft cluster mismatch: this server belongs to cluster {ours}, the sender to {theirs}"
                ),
            ));
        }
        match env.msg {
            RaftMsg::Status => {
                let voters = self
                    .raft
                    .metrics()
                    .borrow()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .count();
                Ok(RaftReply::Status {
                    cluster_id: ours,
                    voters,
                })
            }
            RaftMsg::Vote(v) => Ok(RaftReply::Vote(self.raft.vote(v).await)),
            RaftMsg::TimeoutNow => {
                tracing::info!(%from, "the leader hands over leadership; starting an election");
                self.raft
                    .trigger()
                    .elect()
                    .await
                    .map_err(|e| RpcError::internal(e.to_string()))?;
                // The first round meets the leader's lease and is refused, but its higher
                // term makes the leader step down; asking again soon after, before any
                // other server's election timer runs out, wins the votes it now grants.
                let raft = self.raft.clone();
                tokio::spawn(async move {
                    let pause = Duration::from_millis(raft.config().heartbeat_interval * 3);
                    for _ in 0..5 {
                        tokio::time::sleep(pause).await;
                        let m = raft.metrics().borrow().clone();
                        let settled = m.state == ServerState::Leader
                            || (m.state == ServerState::Follower && m.current_leader.is_some());
                        if settled || raft.trigger().elect().await.is_err() {
                            return;
                        }
                    }
                });
                Ok(RaftReply::ElectionStarted)
            }
            RaftMsg::Append(a) => {
                let from_leader = a.vote.is_committed();
                let r = self.raft.append_entries(a).await;
                self.after_leader_message(
                    from_leader,
                    &r.as_ref().map(|r| r.is_success()),
                    &env.cluster_id,
                )?;
                Ok(RaftReply::Append(r))
            }
            RaftMsg::Snapshot(s) => {
                let r = self.raft.install_snapshot(s).await;
                self.after_leader_message(true, &r.as_ref().map(|_| true), &env.cluster_id)?;
                Ok(RaftReply::Snapshot(r))
            }
        }
    }

    /// A leader's message was accepted: note the contact, and join its cluster.
    fn after_leader_message<E>(
        &self,
        from_leader: bool,
        accepted: &Result<bool, E>,
        cluster: &Option<String>,
    ) -> Result<(), RpcError> {
        if !from_leader || !matches!(accepted, Ok(true)) {
            return Ok(());
        }
        *lock(&self.shared.last_contact) = Some(Instant::now());
        if let Some(id) = cluster {
            self.shared.adopt_cluster(id).map_err(RpcError::internal)?;
        }
        Ok(())
    }

    fn is_server_ip(&self, ip: IpAddr) -> bool {
        let Some(g) = self.shared.gossip.get() else {
            return false;
        };
        g.members().iter().any(|m| {
            m.addr.ip() == ip
                && m.status != MemberStatus::Left
                && m.tags.get("role").map(String::as_str) == Some("consul")
        })
    }

    /// Voters and learners with their nodes.
    pub fn configuration(&self) -> (Vec<(NodeId, RaftNode, bool)>, Option<NodeId>, u64) {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let list = membership
            .nodes()
            .map(|(id, n)| (*id, n.clone(), voters.contains(id)))
            .collect();
        let index = m.membership_config.log_id().map(|l| l.index).unwrap_or(0);
        (list, m.current_leader, index)
    }

    /// Initialises a new cluster with these servers, under a fresh cluster ID.
    pub async fn initialize(&self, members: BTreeMap<NodeId, RaftNode>) -> Result<(), String> {
        let cluster = uuid::Uuid::new_v4().to_string();
        self.shared.adopt_cluster(&cluster)?;
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Whether this server has any Raft state (a vote or a membership) yet.
    pub async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(true)
    }
}

fn leader_err(e: RaftError<NodeId, ClientWriteError<NodeId, RaftNode>>) -> RpcError {
    match e {
        // Never appended, or truncated away before commit: safe to send elsewhere.
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => no_leader(),
        other => RpcError::internal(format!("raft apply failed: {other}")),
    }
}

/// How long a write may wait for commit before the client is told the outcome is unknown.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(15);

impl RaftConsensus {
    /// A leader that has not heard from a quorum within this time stops acting as one
    /// (Consul's leader lease): it may be on the wrong side of a partition.
    fn lease_ms(&self) -> u64 {
        BASE_ELECTION_MS * u64::from(self.settings.raft_multiplier.max(1))
    }

    fn holds_lease(&self, m: &openraft::RaftMetrics<NodeId, RaftNode>) -> bool {
        if !leader_caught_up(m) {
            return false;
        }
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        if voters == [self.id()] {
            return true;
        }
        m.millis_since_quorum_ack
            .is_some_and(|ms| ms <= self.lease_ms())
    }
}

/// A leader that has applied an entry of its own term, so everything committed before it
/// was elected is in its state store too (Consul's barrier in `establishLeadership`).
/// Until then it neither serves reads, takes writes, nor arms session timers: a session
/// committed just before the old leader died would otherwise be missing from the first
/// reads and never get a TTL timer.
fn leader_caught_up(m: &openraft::RaftMetrics<NodeId, RaftNode>) -> bool {
    m.state == ServerState::Leader
        && m.last_applied
            .is_some_and(|l| l.leader_id.get_term() == m.current_term)
}

#[async_trait]
impl Consensus for RaftConsensus {
    async fn propose(&self, cmd: Command) -> Result<Applied, RpcError> {
        if !self.holds_lease(&self.raft.metrics().borrow()) {
            return Err(no_leader());
        }
        // The entry may still commit after either failure below; the client is told the
        // write failed, as Consul tells it, and nothing retries it.
        let lost = async {
            let mut m = self.raft.metrics();
            loop {
                if !self.holds_lease(&m.borrow_and_update()) {
                    return;
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), m.changed()).await;
            }
        };
        tokio::select! {
            r = self.batcher.propose(cmd) => r,
            _ = lost => Err(RpcError::internal("leadership lost while committing log")),
            _ = tokio::time::sleep(COMMIT_TIMEOUT) => Err(RpcError::internal(
                "timed out enqueuing operation",
            )),
        }
    }

    async fn read_barrier(&self) -> Result<(), RpcError> {
        if !self.holds_lease(&self.raft.metrics().borrow()) {
            return Err(no_leader());
        }
        // A read queued behind a stalled round waits at most this long in all.
        tokio::time::timeout(Duration::from_secs(5), self.read_index.wait())
            .await
            .unwrap_or_else(|_| Err(no_leader()))
    }

    fn status(&self) -> LeaderStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let addr_of = |id: &NodeId| membership.get_node(id).map(|n| n.addr.clone());
        let is_leader = self.holds_lease(&m);
        let leader = if m.state == ServerState::Leader && !is_leader {
            None
        } else {
            m.current_leader
        };
        let last_contact_ms = if is_leader {
            0
        } else {
            lock(&self.shared.last_contact)
                .map(|t| t.elapsed().as_millis() as u64)
                .unwrap_or(u64::MAX / 2)
        };
        LeaderStatus {
            leader_addr: leader.as_ref().and_then(addr_of),
            is_leader,
            last_contact_ms,
            peers: membership
                .voter_ids()
                .filter_map(|id| addr_of(&id))
                .collect(),
            self_addr: addr_of(&m.id),
        }
    }

    async fn compact(&self) {
        if let Err(e) = self.raft.trigger().snapshot().await {
            tracing::warn!(error = %e, "could not start a snapshot after a restore");
        }
    }

    fn leadership(&self) -> watch::Receiver<bool> {
        self.leader_rx.clone()
    }

    fn log_indexes(&self) -> (u64, u64, u64) {
        let m = self.raft.metrics().borrow().clone();
        let applied = m.last_applied.map_or(0, |l| l.index);
        // The saved commit index can trail what is applied by a flush; never report less.
        let committed = self.shared.log.committed_index().max(applied);
        (committed, m.last_log_index.unwrap_or(0), applied)
    }

    async fn raft_message(&self, from: IpAddr, env: RaftEnvelope) -> Result<RaftReply, RpcError> {
        self.handle(from, env).await
    }

    fn raft_configuration(&self) -> RaftConfiguration {
        let m = self.raft.metrics().borrow().clone();
        let (nodes, leader, index) = self.configuration();
        let last_index = |id: NodeId| {
            if Some(id) == leader && id == self.id() {
                m.last_log_index.unwrap_or(0)
            } else {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map(|l| l.index)
                    .unwrap_or(0)
            }
        };
        RaftConfiguration {
            servers: nodes
                .into_iter()
                .map(|(id, node, voter)| RaftServer {
                    id: node.node_id.clone(),
                    node: node.name.clone(),
                    address: node.addr.clone(),
                    leader: Some(id) == leader,
                    protocol_version: "3".into(),
                    voter,
                    last_index: last_index(id),
                })
                .collect(),
            index,
        }
    }

    fn autopilot_health(&self) -> AutopilotHealth {
        let m = self.raft.metrics().borrow().clone();
        let config = self.raft_configuration();
        let seen = self
            .shared
            .gossip
            .get()
            .map(|g| autopilot::servers(g, &self.settings.datacenter))
            .unwrap_or_default();
        let last = m.last_log_index.unwrap_or(0);
        let leading = m.state == ServerState::Leader;
        let ap = self.autopilot_config();
        // Below two heartbeats every follower would look lost between them.
        let heartbeat = Duration::from_millis(self.raft.config().heartbeat_interval);
        let threshold = ap.last_contact_threshold.max(heartbeat * 2);
        let servers: Vec<AutopilotServer> = config
            .servers
            .into_iter()
            .map(|s| {
                let status = seen
                    .get(&raft_id(&s.id))
                    .map_or("none", |x| x.status.as_str());
                let rid = raft_id(&s.id);
                let contact = if s.leader {
                    Some(Duration::ZERO)
                } else {
                    self.shared.since_heard(rid)
                };
                let healthy = status == "alive"
                    && (s.leader || s.last_index + ap.max_trailing_logs >= last)
                    // Only a leader hears from followers; elsewhere it is unknown.
                    && (!leading || contact.is_some_and(|c| c <= threshold));
                AutopilotServer {
                    id: s.id,
                    name: s.node,
                    address: s.address,
                    serf_status: status.into(),
                    version: crate::version::VERSION.into(),
                    leader: s.leader,
                    last_contact: contact
                        .map(cairn_shared::duration::format)
                        .unwrap_or_default(),
                    last_term: m.current_term,
                    last_index: s.last_index,
                    healthy,
                    voter: s.voter,
                    stable_since: String::new(),
                }
            })
            .collect();
        let voters = servers.iter().filter(|s| s.voter).count() as u64;
        let healthy_voters = servers.iter().filter(|s| s.voter && s.healthy).count() as u64;
        let quorum = voters / 2 + 1;
        AutopilotHealth {
            healthy: servers.iter().all(|s| s.healthy),
            failure_tolerance: healthy_voters.saturating_sub(quorum),
            servers,
        }
    }

    async fn transfer_leader(&self, id: Option<String>) -> Result<(), RpcError> {
        let fail =
            |why: String| RpcError::internal(format!("Failed to transfer leadership: {why}"));
        let (nodes, leader, _) = self.configuration();
        if leader != Some(self.id()) {
            return Err(no_leader());
        }
        let matched = |rid: NodeId| {
            let m = self.raft.metrics().borrow().clone();
            let last = m.last_log_index.unwrap_or(0);
            let at = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&rid).cloned().flatten())
                .map_or(0, |l| l.index);
            (at, last)
        };
        let others = nodes
            .iter()
            .filter(|(rid, _, voter)| *voter && *rid != self.id());
        let target = match &id {
            Some(want) => {
                let Some(found) = nodes.iter().find(|(_, n, _)| n.node_id == *want) else {
                    return Err(fail(format!("cannot find peer {want}")));
                };
                if found.0 == self.id() {
                    return Err(fail(format!("{want} is already the leader")));
                }
                if !found.2 {
                    return Err(fail(format!("{want} is not a voter")));
                }
                found.clone()
            }
            None => match others.max_by_key(|(rid, _, _)| matched(*rid).0) {
                Some(t) => t.clone(),
                None => return Err(fail("cannot find peer".into())),
            },
        };
        let (rid, node, _) = target;
        let addr: SocketAddr = node
            .addr
            .parse()
            .map_err(|_| fail(format!("bad address {:?}", node.addr)))?;
        // The target must hold the whole log, or the voters (this one included) refuse it.
        let wait = Duration::from_millis(self.raft.config().election_timeout_max * 4);
        let deadline = Instant::now() + wait;
        loop {
            let (at, last) = matched(rid);
            if at >= last {
                break;
            }
            if Instant::now() >= deadline {
                return Err(fail(format!("{node} did not catch up ({at} of {last})")));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::info!(server = %node, "transferring leadership");
        // Followers refuse votes while the leader's lease holds (openraft's leader lease is
        // the longest election timeout), so heartbeats pause until it has run out; the
        // target then asks with the whole log and wins before any election timer fires.
        let config = self.raft.config().clone();
        let lease = Duration::from_millis(config.election_timeout_max + config.heartbeat_interval);
        self.raft.runtime_config().heartbeat(false);
        let result = self.hand_over(rid, addr, lease, wait).await;
        self.raft.runtime_config().heartbeat(true);
        result.map_err(|why| fail(format!("{node} {why}")))
    }

    async fn remove_peer(
        &self,
        id: Option<String>,
        address: Option<String>,
    ) -> Result<(), RpcError> {
        let (nodes, _, _) = self.configuration();
        let found = nodes.iter().find(|(_, n, _)| {
            id.as_deref().is_some_and(|i| i == n.node_id)
                || address.as_deref().is_some_and(|a| a == n.addr)
        });
        let Some((rid, node, voter)) = found else {
            let what = id.map_or_else(
                || format!("address \"{}\"", address.unwrap_or_default()),
                |i| format!("id \"{i}\""),
            );
            return Err(RpcError::internal(format!(
                "{what} was not found in the Raft configuration"
            )));
        };
        let change = if *voter {
            ChangeMembers::RemoveVoters([*rid].into())
        } else {
            ChangeMembers::RemoveNodes([*rid].into())
        };
        tracing::info!(server = %node, "removing a server from the Raft configuration");
        self.raft
            .change_membership(change, false)
            .await
            .map(|_| ())
            .map_err(leader_err)
    }
}
