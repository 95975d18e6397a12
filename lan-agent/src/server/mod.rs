//! The server endpoint: answers [`ReadRequest`]s (blocking, with consistency modes) and
//! turns [`WriteRequest`]s into log commands.
//!
//! This is where Consul's RPC endpoint logic lives: the leader stamps each write with the
//! time and generated IDs, validates what does not depend on state, keeps session TTL
//! timers and the tombstone reaper. Everything that depends on state is decided in
//! [`crate::catalog::Store::apply`], so it is replicated deterministically.

mod acl;
mod acl_replication;
pub mod consensus;
mod coordinates;
mod login;
mod prepared;
pub mod reconcile;
mod sessions;
mod snapshots;
mod tombstones;
pub mod wan;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use cairn_shared::api::{AutopilotConfig, Session, SessionBehavior};
use cairn_shared::rpc::{
    AclOp, Consistency, ErrorKind, Query, QueryMeta, QueryResult, ReadRequest, ReadResponse,
    RpcError, WriteOp, WriteRequest, WriteResult,
};
use cairn_shared::{api, duration};
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::catalog::{Command, CommandOp, StateStore, Store};
use crate::clock::Clock;
use crate::events::UserEvent;
use crate::raft::no_leader;
use crate::rpc::{Body, CallError, Reply, RpcClient};
use cairn_shared::rpc::timeouts::{self, JITTER_FRACTION, WRITE_TIMEOUT};
use cairn_shared::rpc::wire::{DatacenterMap, Forwarded};
pub use consensus::{Applied, Consensus, DevConsensus, LeaderStatus};
use sessions::SessionTimers;
use wan::WanRoutes;

/// Consul's bounds and defaults for what servers accept.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub datacenter: String,
    /// `default_query_time`: how long a blocking query waits without `?wait`.
    pub default_query_time: Duration,
    /// `max_query_time`: the cap on `?wait`.
    pub max_query_time: Duration,
    /// `session_ttl_min`.
    pub session_ttl_min: Duration,
    /// How long a deleted key's tombstone keeps its prefix index from going back.
    pub tombstone_ttl: Duration,
    /// How often queued coordinate updates are written (Consul: 5s).
    pub coordinate_batch_period: Duration,
    /// Autopilot's settings a first leader stores (the `autopilot` config block).
    pub autopilot: AutopilotConfig,
    pub acl: AclSettings,
    /// `verify_outgoing`: calls to other servers and the WAN router go over TLS.
    pub rpc_tls: Option<cairn_shared::rpc::tls::ClientTls>,
}

impl ServerConfig {
    pub fn new(datacenter: &str) -> Self {
        Self {
            datacenter: datacenter.to_string(),
            default_query_time: timeouts::DEFAULT_QUERY_TIME,
            max_query_time: timeouts::MAX_QUERY_TIME,
            session_ttl_min: Duration::from_secs(10),
            tombstone_ttl: Duration::from_secs(15 * 60),
            coordinate_batch_period: Duration::from_secs(5),
            autopilot: Default::default(),
            acl: AclSettings::default(),
            rpc_tls: None,
        }
    }
}

pub use acl::{AclSettings, rfc3339};

/// Largest snapshot `PUT /v1/snapshot` restores.
pub const MAX_RESTORE: usize = 512 * 1024 * 1024;
/// A restore's piece in one log entry: well under the proposal batch's byte bound.
const RESTORE_PIECE: usize = 512 * 1024;

/// Consul's `SessionTTLMax`.
pub const SESSION_TTL_MAX: Duration = Duration::from_secs(86_400);

/// Answers reads and writes, locally or for agents that forward to it.
#[async_trait]
pub trait Rpc: Send + Sync + std::fmt::Debug {
    async fn read(&self, req: ReadRequest) -> Result<ReadResponse, RpcError>;
    async fn write(&self, req: WriteRequest) -> Result<WriteResult, RpcError>;

    /// A read another server forwarded because this one is the leader: answered here or
    /// refused, never forwarded again (no forwarding loops while leadership moves).
    async fn read_on_leader(&self, req: ReadRequest) -> Result<ReadResponse, RpcError> {
        self.read(req).await
    }

    /// A write another server forwarded to this one as the leader.
    async fn write_on_leader(&self, req: WriteRequest) -> Result<WriteResult, RpcError> {
        self.write(req).await
    }

    /// A Raft message from another server, as the consensus engine encoded it; the
    /// answer likewise.
    async fn raft(&self, _from: IpAddr, _message: Vec<u8>) -> Result<Vec<u8>, RpcError> {
        Err(RpcError::new(
            ErrorKind::PermissionDenied,
            "this agent does not run Raft",
        ))
    }

    /// Fires a user event into the LAN pool of `datacenter` (a server's own or, through a
    /// WAN router, another's).
    async fn fire_event(&self, _datacenter: String, _event: UserEvent) -> Result<(), RpcError> {
        Err(RpcError::new(
            ErrorKind::BadRequest,
            "this agent does not fire events for others",
        ))
    }

    /// The index a stale read of `query` would answer with right now, from this agent's
    /// own state store; `None` where there is none (a client agent, another datacenter,
    /// a query the store cannot index cheaply). Lets DNS reuse an answer built at that
    /// index without reading again.
    fn local_index(&self, _query: &Query, _datacenter: &str) -> Option<u64> {
        None
    }
}

/// A server's endpoint over its state store and consensus.
#[derive(Debug, Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ServerConfig,
    state: Arc<StateStore>,
    consensus: Arc<dyn Consensus>,
    clock: Arc<dyn Clock>,
    timers: SessionTimers,
    /// Ends blocking queries early when the agent stops.
    shutdown: CancellationToken,
    coordinates: coordinates::Pending,
    /// Connections to the leader, for forwarded requests.
    forwarder: RpcClient,
    /// The WAN routers and the LAN pool, once gossip runs.
    wan: OnceLock<WanRoutes>,
    /// Snapshots being saved or uploaded in pieces.
    transfers: snapshots::Transfers,
    /// Compiled ACL authorizers by token secret.
    authz: acl::AuthzCache,
    /// How this secondary's copy of the primary's ACLs stands.
    acl_replication: std::sync::Mutex<cairn_shared::rpc::AclReplicationStatus>,
}

impl Server {
    /// Starts the server's background tasks (session TTL timers, tombstone reaper) on
    /// `tasks`; they stop when `shutdown` is cancelled.
    pub fn start(
        config: ServerConfig,
        state: Arc<StateStore>,
        consensus: Arc<dyn Consensus>,
        clock: Arc<dyn Clock>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let (timers, expired) = SessionTimers::new();
        let forwarder = RpcClient::default().with_tls(config.rpc_tls.clone());
        let server = Self {
            inner: Arc::new(Inner {
                config,
                state,
                consensus,
                clock,
                timers,
                shutdown: shutdown.clone(),
                coordinates: coordinates::Pending::default(),
                forwarder,
                wan: OnceLock::new(),
                transfers: snapshots::Transfers::default(),
                authz: acl::AuthzCache::default(),
                acl_replication: std::sync::Mutex::default(),
            }),
        };
        let s = server.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move { s.expire_sessions(expired, stop).await });
        let s = server.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move { tombstones::reap_loop(s, stop).await });
        let s = server.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move { s.reap_expired_tokens(stop).await });
        let s = server.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move { s.replicate_acls(stop).await });
        let s = server.clone();
        let stop = shutdown.clone();
        let period = server.inner.config.coordinate_batch_period;
        tasks.spawn(async move { coordinates::flush_loop(s, period, stop).await });
        server.inner.timers.spawn(tasks, shutdown.clone());
        let s = server.clone();
        tasks.spawn(async move { s.follow_leadership(shutdown).await });
        server
    }

    /// Session TTL timers run on the leader only. A new leader gives every TTL session a
    /// full timer, as Consul does, so a failover can lengthen a session but not cut it.
    async fn follow_leadership(&self, shutdown: CancellationToken) {
        let mut rx = self.inner.consensus.leadership();
        let mut was = false;
        loop {
            let leader = *rx.borrow_and_update();
            if leader && !was {
                tracing::info!("this server is now the leader");
                let sessions: Vec<Session> =
                    self.inner.state.read(|s| s.sessions().cloned().collect());
                for s in &sessions {
                    self.inner.timers.reset(s);
                }
                // Off the watcher, so a slow first write cannot delay the next change.
                // A first write can fail while the new term settles: try again while leading.
                let s = self.clone();
                let lead = rx.clone();
                tokio::spawn(async move {
                    for _ in 0..20 {
                        if !*lead.borrow() {
                            return;
                        }
                        if s.store_autopilot_defaults().await && s.store_acl_defaults().await {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                });
            } else if !leader && was {
                tracing::info!("this server is no longer the leader");
                self.inner.timers.clear();
            }
            was = leader;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
        }
    }

    /// A first leader writes the configured autopilot settings through the log, as Consul
    /// does, so every server's autopilot and `/v1/operator/autopilot/configuration` agree.
    async fn store_autopilot_defaults(&self) -> bool {
        if self.inner.state.read(|s| s.autopilot_config().is_some()) {
            return true;
        }
        let op = WriteOp::AutopilotSetConfig {
            config: self.inner.config.autopilot.clone(),
            cas: Some(0),
        };
        match self.propose(CommandOp::Client(op)).await {
            Err(e) => {
                tracing::debug!(error = %e, "could not store autopilot's settings yet");
                false
            }
            Ok(_) => true,
        }
    }

    /// Connects the server to its WAN routers and LAN pool (once, when gossip runs).
    pub fn set_wan(&self, routes: WanRoutes) {
        let _ = self.inner.wan.set(routes);
    }

    /// The WAN routes, if gossip runs.
    pub fn wan(&self) -> Option<&WanRoutes> {
        self.inner.wan.get()
    }

    fn is_local(&self, dc: &str) -> bool {
        dc.is_empty() || dc == self.inner.config.datacenter
    }

    /// Sends a request to another datacenter through a WAN router.
    async fn forward_dc(&self, fwd: Forwarded) -> Result<Reply, RpcError> {
        match self.wan() {
            Some(w) => w.forward(fwd).await,
            None => Err(RpcError::unknown_datacenter()),
        }
    }

    /// The consensus engine, for operator endpoints.
    pub fn consensus(&self) -> &Arc<dyn Consensus> {
        &self.inner.consensus
    }

    pub fn state(&self) -> &Arc<StateStore> {
        &self.inner.state
    }

    pub fn status(&self) -> LeaderStatus {
        self.inner.consensus.status()
    }

    /// Proposes a command on the leader, stamped with the current time.
    pub async fn propose(&self, op: CommandOp) -> Result<Applied, RpcError> {
        let cmd = Command {
            now_ms: self.inner.clock.now_ms(),
            op,
        };
        self.inner.consensus.propose(cmd).await
    }

    async fn expire_sessions(
        &self,
        mut expired: tokio::sync::mpsc::UnboundedReceiver<String>,
        shutdown: CancellationToken,
    ) {
        loop {
            let id = tokio::select! {
                _ = shutdown.cancelled() => return,
                id = expired.recv() => match id { Some(id) => id, None => return },
            };
            let still_there = self.inner.state.read(|s| s.session(&id).is_some());
            if !still_there {
                continue;
            }
            tracing::debug!(session = %id, "session TTL expired");
            let op = CommandOp::Client(WriteOp::SessionDestroy { id: id.clone() });
            if let Err(e) = self.propose(op).await.and_then(|applied| applied) {
                tracing::warn!(session = %id, error = %e, "failed to destroy expired session");
            }
        }
    }

    /// Validates a session request the way Consul's Session.Apply endpoint does and
    /// gives it an ID that is not in use.
    fn prepare_session(&self, mut s: Session) -> Result<Session, RpcError> {
        if s.node.is_empty() {
            return Err(RpcError::internal("Must provide Node"));
        }
        if !s.ttl.is_empty() {
            let ttl = duration::parse(&s.ttl)
                .map_err(|e| RpcError::internal(format!("Session TTL '{}' invalid: {e}", s.ttl)))?;
            let min = self.inner.config.session_ttl_min;
            if !ttl.is_zero() && (ttl < min || ttl > SESSION_TTL_MAX) {
                return Err(RpcError::internal(format!(
                    "Invalid Session TTL '{}', must be between [{}={}]",
                    ttl.as_nanos(),
                    duration::format(min),
                    duration::format(SESSION_TTL_MAX)
                )));
            }
        }
        s.id = self.inner.state.read(|store| {
            loop {
                let id = uuid::Uuid::new_v4().to_string();
                if store.session(&id).is_none() {
                    break id;
                }
            }
        });
        Ok(s)
    }

    fn renew(&self, id: &str) -> Result<WriteResult, RpcError> {
        let Some(session) = self.inner.state.read(|s| s.session(id).cloned()) else {
            return Err(RpcError::not_found(format!("Session id '{id}' not found")));
        };
        self.inner.timers.reset(&session);
        Ok(WriteResult::Sessions(vec![session]))
    }

    fn meta(&self, index: u64, req: &ReadRequest) -> QueryMeta {
        let status = self.inner.consensus.status();
        QueryMeta {
            index: index.max(1),
            known_leader: status.leader_addr.is_some(),
            last_contact_ms: status.last_contact_ms,
            consistency: req.options.consistency,
            filtered_by_acls: false,
        }
    }

    /// How long a blocking query may wait: `?wait` (default `default_query_time`) capped at
    /// `max_query_time`, plus up to 1/16 random jitter so watchers do not return in step.
    fn blocking_deadline(&self, wait: Option<Duration>) -> Duration {
        let cfg = &self.inner.config;
        let wait = wait
            .filter(|w| !w.is_zero())
            .unwrap_or(cfg.default_query_time)
            .min(cfg.max_query_time);
        let jitter_ms = (wait / JITTER_FRACTION).as_millis() as u64;
        let jitter = if jitter_ms > 0 {
            rand::rng().random_range(0..jitter_ms)
        } else {
            0
        };
        wait + Duration::from_millis(jitter)
    }
}

impl Server {
    /// Sends a request on to the leader, waiting up to the hold timeout for one to be
    /// known. Reads are retried after any transport failure; writes only when they
    /// certainly did not reach the leader, so a write is never carried out twice.
    async fn via_leader(
        &self,
        body: Body,
        timeout: Duration,
        may_forward: bool,
    ) -> Result<Reply, RpcError> {
        let is_read = matches!(body, Body::LeaderRead(_));
        let deadline = tokio::time::Instant::now() + timeouts::HOLD_TIMEOUT;
        loop {
            let status = self.inner.consensus.status();
            if status.is_leader {
                let local = match &body {
                    Body::LeaderRead(r) => self.read_local(r).await.map(Reply::Read),
                    Body::LeaderWrite(w) => self.write_local(w.clone()).await.map(Reply::Write),
                    _ => Err(RpcError::internal(
                        "invariant: only reads and writes are routed",
                    )),
                };
                match local {
                    Err(e) if e.kind == ErrorKind::NoLeader => {}
                    other => return other,
                }
            } else if !may_forward {
                return Err(no_leader());
            } else if let Some(addr) = status
                .leader_addr
                .and_then(|a| a.parse::<SocketAddr>().ok())
            {
                match self.inner.forwarder.call(addr, body.clone(), timeout).await {
                    Ok(reply) => return Ok(reply),
                    Err(CallError::Remote(e)) if e.kind == ErrorKind::NoLeader => {}
                    Err(CallError::Remote(e)) => return Err(e),
                    Err(CallError::NotSent(e)) => {
                        tracing::debug!(leader = %addr, error = %e, "leader unreachable; waiting");
                    }
                    Err(CallError::Transport(e)) if is_read => {
                        tracing::debug!(leader = %addr, error = %e, "forwarded read failed; retrying");
                    }
                    Err(CallError::Transport(e)) => {
                        return Err(RpcError::internal(format!(
                            "rpc error forwarding to the leader: {e}"
                        )));
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(no_leader());
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = self.inner.shutdown.cancelled() => return Err(no_leader()),
            }
        }
    }

    async fn route_read(
        &self,
        req: ReadRequest,
        may_forward: bool,
    ) -> Result<ReadResponse, RpcError> {
        if !self.is_local(&req.options.datacenter) {
            let mut req = req;
            // Consul sorts by distance only within the asking agent's datacenter.
            req.options.near.clear();
            return match self.forward_dc(Forwarded::Read(req)).await? {
                Reply::Read(r) => Ok(r),
                _ => Err(RpcError::internal(
                    "another datacenter answered a read with something else",
                )),
            };
        }
        let authz = self.authorize_read(&req.options.token, &req.query)?;
        let token = req.options.token.clone();
        let one = matches!(req.query, Query::PreparedQuery { .. });
        let mut resp = self.route_read_here(req, may_forward).await?;
        self.filter_read(&token, authz, one, &mut resp)?;
        Ok(resp)
    }

    /// A read of this datacenter, allowed by its token, before filtering.
    async fn route_read_here(
        &self,
        req: ReadRequest,
        may_forward: bool,
    ) -> Result<ReadResponse, RpcError> {
        let local_only = matches!(
            req.query,
            Query::Leader
                | Query::Peers
                | Query::Datacenters
                | Query::WanMembers
                | Query::WanCoordinates
                | Query::AclTokenSelf
                | Query::AclResolve
        ) || req.options.consistency == Consistency::Stale;
        if let Query::SnapshotPart { handle, .. } = &req.query {
            return self.read_snapshot_part(req.clone(), handle).await;
        }
        if local_only {
            return self.read_local(&req).await;
        }
        let wait = req
            .options
            .max_wait
            .unwrap_or(self.inner.config.default_query_time);
        let timeout = timeouts::read_timeout(Some(wait));
        match self
            .via_leader(Body::LeaderRead(req), timeout, may_forward)
            .await?
        {
            Reply::Read(r) => Ok(r),
            _ => Err(RpcError::internal(
                "the leader answered a read with something else",
            )),
        }
    }

    async fn route_write(
        &self,
        mut req: WriteRequest,
        may_forward: bool,
    ) -> Result<WriteResult, RpcError> {
        // The leader's own ACL upkeep is proposed directly, never asked for.
        if let WriteOp::Acl(AclOp::Init { .. } | AclOp::ReapExpired | AclOp::Replicate { .. }) =
            &req.op
        {
            return Err(RpcError::bad_request("not a request a client may make"));
        }
        // A secondary datacenter's policies, roles and global tokens are the primary's.
        if self.is_local(&req.datacenter)
            && let Some(primary) = self.acl_primary()
            && self.acl_write_is_global(&req.op)
        {
            req.datacenter = primary.to_string();
        }
        if !self.is_local(&req.datacenter) {
            return match self.forward_dc(Forwarded::Write(req)).await? {
                Reply::Write(w) => Ok(w),
                _ => Err(RpcError::internal(
                    "another datacenter answered a write with something else",
                )),
            };
        }
        self.authorize_write(&req.token, &req.op)?;
        match self
            .via_leader(Body::LeaderWrite(req), WRITE_TIMEOUT, may_forward)
            .await?
        {
            Reply::Write(w) => Ok(w),
            _ => Err(RpcError::internal(
                "the leader answered a write with something else",
            )),
        }
    }

    async fn read_local(&self, req: &ReadRequest) -> Result<ReadResponse, RpcError> {
        let req = req.clone();
        let operator = match &req.query {
            Query::AclReplication => Some(QueryResult::AclReplication(self.replication_status())),
            Query::RaftConfiguration => Some(QueryResult::RaftConfiguration(
                self.inner.consensus.raft_configuration(),
            )),
            Query::AutopilotHealth => Some(QueryResult::AutopilotHealth(
                self.inner.consensus.autopilot_health(),
            )),
            Query::Snapshot => {
                let holder = self.inner.consensus.status().self_addr.unwrap_or_default();
                Some(QueryResult::SnapshotPart(
                    self.inner.transfers.save(&holder, self.snapshot()?)?,
                ))
            }
            Query::SnapshotPart { handle, offset } => Some(QueryResult::SnapshotPart(
                self.inner.transfers.read(handle, *offset).ok_or_else(|| {
                    RpcError::not_found(
                        "Snapshot save failed: the snapshot expired or its server restarted; \
                         try again",
                    )
                })??,
            )),
            _ => None,
        };
        if let Some(result) = operator {
            return Ok(ReadResponse {
                meta: self.meta(self.inner.state.last_index(), &req),
                result,
            });
        }
        match &req.query {
            Query::AclTokenSelf => {
                let (index, result) = self.acl_self(&req.options.token)?;
                return Ok(ReadResponse {
                    meta: self.meta(index, &req),
                    result,
                });
            }
            Query::AclResolve => {
                return Ok(ReadResponse {
                    meta: self.meta(self.inner.state.last_index(), &req),
                    result: self.acl_resolve(&req.options.token),
                });
            }
            Query::Leader => {
                let status = self.status();
                return Ok(ReadResponse {
                    meta: self.meta(self.inner.state.last_index(), &req),
                    result: QueryResult::Leader(status.leader_addr.unwrap_or_default()),
                });
            }
            Query::Peers => {
                let status = self.status();
                return Ok(ReadResponse {
                    meta: self.meta(self.inner.state.last_index(), &req),
                    result: QueryResult::Peers(status.peers),
                });
            }
            Query::Datacenters => {
                let names = match self.wan() {
                    Some(w) => w.datacenters().await,
                    None => vec![self.inner.config.datacenter.clone()],
                };
                return Ok(ReadResponse {
                    meta: self.meta(self.inner.state.last_index(), &req),
                    result: QueryResult::Datacenters(names),
                });
            }
            Query::WanMembers | Query::WanCoordinates => {
                let status = match self.wan() {
                    Some(w) => w.status().await,
                    None => None,
                };
                let result = match (&req.query, status) {
                    (Query::WanMembers, s) => {
                        QueryResult::WanMembers(s.map(|s| s.members).unwrap_or_default())
                    }
                    (_, Some(s)) => QueryResult::DatacenterMaps(s.datacenters),
                    // No router: this datacenter alone, without WAN coordinates.
                    (_, None) => QueryResult::DatacenterMaps(vec![DatacenterMap {
                        datacenter: self.inner.config.datacenter.clone(),
                        rtt_secs: 0.0,
                        coordinates: Vec::new(),
                    }]),
                };
                return Ok(ReadResponse {
                    meta: self.meta(self.inner.state.last_index(), &req),
                    result,
                });
            }
            _ => {}
        }
        if req.options.consistency == Consistency::Consistent {
            self.inner.consensus.read_barrier().await?;
        }
        let prepared = match &req.query {
            Query::PreparedQueryExecute {
                id_or_name,
                limit,
                agent,
                source_ip,
            } => Some(
                self.execute_query(&req, id_or_name, *limit, agent, source_ip.as_deref())
                    .await?,
            ),
            Query::PreparedQueryExplain { id_or_name, agent } => {
                Some(self.explain_query(id_or_name, agent)?)
            }
            Query::PreparedQueryExecuteRemote { query, limit } => {
                Some(self.execute_query_remote(&req.options.token, query, *limit)?)
            }
            _ => None,
        };
        if let Some((index, result)) = prepared {
            return Ok(ReadResponse {
                meta: self.meta(index, &req),
                result,
            });
        }
        let keys = Store::watch_keys(&req.query);
        let min_index = req.options.min_index;
        let deadline = tokio::time::Instant::now() + self.blocking_deadline(req.options.max_wait);
        let mut timed_out = false;
        loop {
            // Register before reading so a write landing in between still wakes us.
            let watch = (!keys.is_empty() && min_index > 0 && !timed_out)
                .then(|| self.inner.state.hub().watch(keys.clone()));
            let (index, result) = self
                .inner
                .state
                .read(|s| s.query(&req.query, &req.options.near))?;
            let Some(watch) = watch.filter(|_| index <= min_index) else {
                return Ok(ReadResponse {
                    meta: self.meta(index, &req),
                    result,
                });
            };
            tokio::select! {
                _ = watch.changed() => {}
                _ = tokio::time::sleep_until(deadline) => timed_out = true,
                _ = self.inner.shutdown.cancelled() => timed_out = true,
            }
        }
    }

    /// A part of a saved snapshot: from this server if it holds the file, else from the
    /// server its handle names (one hop: that server answers from what it holds).
    async fn read_snapshot_part(
        &self,
        req: ReadRequest,
        handle: &str,
    ) -> Result<ReadResponse, RpcError> {
        let own = self.inner.consensus.status().self_addr;
        let holder = cairn_shared::rpc::SnapshotPart::holder(handle);
        match holder {
            Some(addr) if own.as_deref() != Some(addr.to_string().as_str()) => {
                let timeout = timeouts::read_timeout(None);
                match self
                    .inner
                    .forwarder
                    .call(addr, Body::Read(req), timeout)
                    .await
                {
                    Ok(Reply::Read(r)) => Ok(r),
                    Ok(_) => Err(RpcError::internal(
                        "a server answered a snapshot read with something else",
                    )),
                    Err(CallError::Remote(e)) => Err(e),
                    Err(CallError::NotSent(e) | CallError::Transport(e)) => {
                        Err(RpcError::internal(format!(
                            "Snapshot save failed: the server holding it is unreachable: {e}"
                        )))
                    }
                }
            }
            _ => self.read_local(&req).await,
        }
    }

    /// Gathers an uploaded snapshot and, once it is whole, checks it and restores it.
    async fn snapshot_upload(
        &self,
        upload: &str,
        offset: u64,
        data: &[u8],
        done: bool,
    ) -> Result<WriteResult, RpcError> {
        let Some(file) = self
            .inner
            .transfers
            .upload(upload, offset, data, done, MAX_RESTORE)?
        else {
            return Ok(WriteResult::Bool(true));
        };
        // Refuse a damaged file here, with the reason, rather than in the log.
        crate::raft::snapshot::SnapshotFile::decode(&file)
            .map_err(|e| RpcError::bad_request(format!("Snapshot restore failed: {e}")))?;
        // The file goes through the log in bounded pieces that every server stages, and
        // one command swaps it in; then the log is compacted into a snapshot of it.
        let restore = uuid::Uuid::new_v4().to_string();
        for (i, piece) in file.chunks(RESTORE_PIECE).enumerate() {
            self.propose_retrying(CommandOp::RestorePart {
                restore: restore.clone(),
                offset: (i * RESTORE_PIECE) as u64,
                data: piece.to_vec(),
            })
            .await?;
        }
        let len = file.len() as u64;
        drop(file);
        let result = self
            .propose_retrying(CommandOp::RestoreCommit { restore, len })
            .await?;
        self.inner.consensus.compact().await;
        Ok(result)
    }

    /// Proposes a command that is safe to apply twice, again after a failure that left its
    /// fate unknown (a lease that lapsed under load), for as long as the hold timeout.
    async fn propose_retrying(&self, op: CommandOp) -> Result<WriteResult, RpcError> {
        let deadline = tokio::time::Instant::now() + timeouts::HOLD_TIMEOUT;
        loop {
            match self.propose(op.clone()).await {
                Ok(applied) => return applied,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "restore proposal failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The whole state in the snapshot file format (`/v1/snapshot`).
    fn snapshot(&self) -> Result<Vec<u8>, RpcError> {
        let store = self.inner.state.read(|s| s.clone()).without_staging();
        let file = crate::raft::snapshot::SnapshotFile {
            last_log_id: None,
            membership: Default::default(),
            snapshot_id: format!("{}-{}", store.last_index(), uuid::Uuid::new_v4()),
            datacenter: self.inner.config.datacenter.clone(),
            store,
        };
        file.encode().map_err(RpcError::internal)
    }

    async fn write_local(&self, req: WriteRequest) -> Result<WriteResult, RpcError> {
        let op = match req.op {
            WriteOp::RaftRemovePeer { id, address } => {
                self.inner.consensus.remove_peer(id, address).await?;
                return Ok(WriteResult::Bool(true));
            }
            WriteOp::RaftTransferLeader { id } => {
                self.inner.consensus.transfer_leader(id).await?;
                return Ok(WriteResult::Bool(true));
            }
            WriteOp::SnapshotUpload {
                upload,
                offset,
                data,
                done,
            } => return self.snapshot_upload(&upload, offset, &data, done).await,
            WriteOp::SessionRenew { id } => return self.renew(&id),
            WriteOp::CoordinateUpdate(entry) => {
                self.inner.coordinates.push(entry)?;
                return Ok(WriteResult::Bool(true));
            }
            WriteOp::SessionCreate(s) => WriteOp::SessionCreate(self.prepare_session(s)?),
            WriteOp::PreparedQuery { op, query } => self.prepare_query(op, query)?,
            WriteOp::Acl(op) => WriteOp::Acl(self.prepare_acl(op)?),
            other => other,
        };
        let bootstrap = matches!(op, WriteOp::Acl(AclOp::Bootstrap { .. }));
        let created = match &op {
            WriteOp::SessionCreate(s) => Some(s.clone()),
            _ => None,
        };
        // Consul prefixes what its state store refused with the step that refused it.
        let prefix = match &op {
            WriteOp::Kv(_) => "raft apply failed: ",
            // Consul returns what its prepared-query and ACL applies refused as it is.
            WriteOp::PreparedQuery { .. } | WriteOp::Acl(_) => "",
            _ => "apply failed: ",
        };
        let result = self
            .propose(CommandOp::Client(op))
            .await?
            .map_err(|e| RpcError::new(e.kind, format!("{prefix}{}", e.message)))?;
        if let Some(s) = created {
            self.inner.timers.reset(&s);
        }
        if bootstrap {
            self.bootstrap_done();
        }
        Ok(result)
    }
}

#[async_trait]
impl Rpc for Server {
    async fn read(&self, req: ReadRequest) -> Result<ReadResponse, RpcError> {
        self.route_read(req, true).await
    }

    async fn write(&self, req: WriteRequest) -> Result<WriteResult, RpcError> {
        self.route_write(req, true).await
    }

    async fn read_on_leader(&self, req: ReadRequest) -> Result<ReadResponse, RpcError> {
        self.route_read(req, false).await
    }

    async fn write_on_leader(&self, req: WriteRequest) -> Result<WriteResult, RpcError> {
        self.route_write(req, false).await
    }

    fn local_index(&self, query: &Query, datacenter: &str) -> Option<u64> {
        if !self.is_local(datacenter) {
            return None;
        }
        self.inner.state.read(|s| s.query_index(query))
    }

    async fn fire_event(&self, datacenter: String, event: UserEvent) -> Result<(), RpcError> {
        if self.is_local(&datacenter) {
            let Some(w) = self.wan() else {
                return Err(RpcError::internal("this server has no gossip pool yet"));
            };
            w.fire_here(event);
            return Ok(());
        }
        match self
            .forward_dc(Forwarded::FireEvent { datacenter, event })
            .await?
        {
            Reply::Write(_) => Ok(()),
            _ => Err(RpcError::internal(
                "another datacenter answered an event with something else",
            )),
        }
    }

    async fn raft(&self, from: IpAddr, message: Vec<u8>) -> Result<Vec<u8>, RpcError> {
        let env = crate::raft::decode_message(&message)?;
        let reply = self.inner.consensus.raft_message(from, env).await?;
        crate::raft::encode_reply(&reply)
    }
}

/// Defaults for a session created through this agent's HTTP API.
pub fn default_session(node: &str) -> Session {
    Session {
        node: node.to_string(),
        lock_delay: Duration::from_secs(15).as_nanos() as u64,
        behavior: SessionBehavior::Release,
        node_checks: Some(vec![api::SERF_CHECK_ID.to_string()]),
        ..Session::default()
    }
}
