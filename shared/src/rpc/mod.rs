//! Requests and answers between an agent's API surface and the servers.
//!
//! Every HTTP or DNS request becomes a [`ReadRequest`] or [`WriteRequest`]. A server answers
//! them from its state store; a client agent sends them over the server RPC port, and a
//! request for another datacenter travels through a WAN router. Keeping them plain data is
//! what lets the same request run locally, across the LAN, or across datacenters, and lets a
//! blocking query wait on the server that holds the data, as Consul's do.
//!
//! - [`wire`]: frames and the bodies the RPC port carries; [`timeouts`]: every wait, once.
//! - With the `net` feature, [`client`] (multiplexed connections that tell a request never
//!   sent from one whose fate is unknown) and [`server`] (the accept loop, one task per
//!   request, answers tagged with their IDs), both over plain TCP or [`tls`].

#[cfg(feature = "net")]
pub mod client;
#[cfg(feature = "net")]
pub mod server;
pub mod timeouts;
#[cfg(feature = "net")]
pub mod tls;
pub mod wire;

/// A byte stream the RPC protocol runs over: a TCP socket or a TLS session on one.
#[cfg(feature = "net")]
pub(crate) trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
#[cfg(feature = "net")]
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::{
    CheckStatus, CoordinateEntry, DeregisterRequest, HealthCheck, KvTxnOp, Node, NodeServiceList,
    NodeServices, PreparedQuery, QueryExecuteResponse, QuerySource, RegisterRequest, ServiceEntry,
    ServiceNode, Session, TxnOp, TxnResponse,
};

/// Consul's read consistency modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Consistency {
    /// Served by the leader without a quorum round (`X-Consul-Effective-Consistency: leader`).
    #[default]
    Default,
    /// Served by any server, possibly behind the leader.
    Stale,
    /// Linearizable: the leader confirms its leadership with a quorum first.
    Consistent,
}

impl Consistency {
    /// The value of `X-Consul-Effective-Consistency`.
    pub fn header_value(self) -> &'static str {
        match self {
            Self::Default => "leader",
            Self::Stale => "stale",
            Self::Consistent => "consistent",
        }
    }
}

/// Options every read carries (`?dc`, `?index`, `?wait`, consistency, token).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct QueryOptions {
    /// Empty means the datacenter of the agent that received the request.
    pub datacenter: String,
    /// Block until the result's index is greater than this (0 never blocks).
    pub min_index: u64,
    /// How long to block; `None` means the server's default query time.
    pub max_wait: Option<Duration>,
    pub consistency: Consistency,
    pub token: String,
    /// `?near`: sort results by estimated round-trip time from this node (`_agent` is
    /// resolved to the asking agent's node before the request leaves it).
    pub near: String,
}

/// What a read says about where its data came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct QueryMeta {
    /// The index of the data returned; never 0.
    pub index: u64,
    pub known_leader: bool,
    /// Milliseconds since the answering server last heard from the leader (0 on the leader).
    pub last_contact_ms: u64,
    pub consistency: Consistency,
    /// Some results were left out because the token may not read them.
    #[serde(default)]
    pub filtered_by_acls: bool,
}

/// A read of the state store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Query {
    /// `/v1/operator/raft/configuration` (answered by the leader).
    RaftConfiguration,
    /// `/v1/operator/autopilot/health`.
    AutopilotHealth,
    /// `/v1/snapshot` GET: the whole state, in the snapshot file format. The answer is its
    /// first [`SnapshotPart`]; the rest are read with [`Query::SnapshotPart`].
    Snapshot,
    /// The part of a saved snapshot starting at `offset`, from the server whose `handle`
    /// it is (any server forwards the read to that one).
    SnapshotPart {
        handle: String,
        offset: u64,
    },
    /// One key (`/v1/kv/:key`).
    KvGet {
        key: String,
    },
    /// Every entry under a prefix (`?recurse`).
    KvList {
        prefix: String,
    },
    /// Key names under a prefix, rolled up at `separator` when it is non-empty (`?keys`).
    KvKeys {
        prefix: String,
        separator: String,
    },
    SessionInfo {
        id: String,
    },
    SessionList,
    SessionNode {
        node: String,
    },
    /// A transaction made only of read verbs.
    TxnRead(Vec<TxnOp>),
    /// Datacenters this server knows, nearest first (`/v1/catalog/datacenters`).
    Datacenters,
    /// `/v1/catalog/nodes`.
    CatalogNodes {
        select: Select,
    },
    /// `/v1/catalog/services`: service name → the union of its instances' tags.
    CatalogServices {
        select: Select,
    },
    /// `/v1/catalog/service/:name`.
    CatalogService {
        service: String,
        select: Select,
    },
    /// `/v1/catalog/node/:node`; `None` when the node is unknown.
    CatalogNode {
        node: String,
        select: Select,
    },
    /// `/v1/catalog/node-services/:node`.
    CatalogNodeServices {
        node: String,
        select: Select,
    },
    /// `/v1/health/node/:node`.
    HealthNode {
        node: String,
        select: Select,
    },
    /// `/v1/health/checks/:service`.
    HealthChecks {
        service: String,
        select: Select,
    },
    /// `/v1/health/service/:service`; `passing` keeps instances whose every check passes.
    HealthService {
        service: String,
        passing: bool,
        select: Select,
    },
    /// `/v1/health/state/:state`; `None` is `any`.
    HealthState {
        state: Option<CheckStatus>,
        select: Select,
    },
    /// `/v1/coordinate/nodes`.
    CoordinateNodes,
    /// `/v1/coordinate/node/:node`.
    CoordinateNode {
        node: String,
    },
    /// The WAN pool (`/v1/agent/members?wan=1`), as this datacenter's routers see it.
    WanMembers,
    /// Every datacenter's servers and their WAN coordinates, nearest first
    /// (`/v1/coordinate/datacenters`).
    WanCoordinates,
    /// Every prepared query (`GET /v1/query`).
    PreparedQueries,
    /// One prepared query by ID (`GET /v1/query/:id`).
    PreparedQuery {
        id: String,
    },
    /// Runs a prepared query (by ID or name) here, failing over to other datacenters
    /// when nothing here matches. `near` is in the options; `source_ip` serves `_ip`.
    PreparedQueryExecute {
        id_or_name: String,
        limit: usize,
        agent: QuerySource,
        source_ip: Option<String>,
    },
    /// The query a name resolves to, templates rendered (`/v1/query/:name/explain`).
    PreparedQueryExplain {
        id_or_name: String,
        agent: QuerySource,
    },
    /// A whole query shipped from another datacenter's failover: run here, shuffled,
    /// no further failover.
    PreparedQueryExecuteRemote {
        query: Box<PreparedQuery>,
        limit: usize,
    },
    /// The leader's RPC address (`/v1/status/leader`).
    Leader,
    /// The voters' RPC addresses (`/v1/status/peers`).
    Peers,
    /// Service, instance and node counts (`/v1/operator/usage`).
    Usage,
    /// Autopilot's settings (`/v1/operator/autopilot/configuration`); `None` before the
    /// first leader stored them.
    AutopilotConfiguration,
    /// Config entries of a kind (`/v1/config/:kind`), by name.
    ConfigEntries {
        kind: String,
    },
    /// One config entry (`/v1/config/:kind/:name`); not found is an empty list.
    ConfigEntry {
        kind: String,
        name: String,
    },
    /// `/v1/acl/replication`, answered by the leader.
    AclReplication,
    /// `/v1/acl/tokens`, narrowed to tokens linking a policy or role (by ID), or made by
    /// an auth method's logins, when given.
    AclTokens {
        policy: String,
        role: String,
        #[serde(default)]
        auth_method: String,
    },
    /// One token by accessor ID; not found is an empty list.
    AclToken {
        accessor_id: String,
    },
    /// The token the request carries (`/v1/acl/token/self`).
    AclTokenSelf,
    AclPolicies,
    /// One policy by ID, or by name with `by_name`.
    AclPolicy {
        id: String,
        by_name: bool,
    },
    /// `/v1/acl/roles`, narrowed to roles linking a policy when given.
    AclRoles {
        policy: String,
    },
    AclRole {
        id: String,
        by_name: bool,
    },
    /// What the request's token resolves to, for a client agent's own checks.
    AclResolve,
    /// `/v1/acl/auth-methods`.
    AclAuthMethods,
    /// One auth method by name; not found is an empty list.
    AclAuthMethod {
        name: String,
    },
    /// `/v1/acl/binding-rules`, narrowed to one auth method's when given.
    AclBindingRules {
        auth_method: String,
    },
    AclBindingRule {
        id: String,
    },
}

/// The narrowing every list read accepts: `?tag` (all required, case-insensitive),
/// `?node-meta=k:v` (all required) and `?filter` (a go-bexpr expression over the result
/// element's JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Select {
    pub tags: Vec<String>,
    pub node_meta: Vec<(String, String)>,
    pub filter: String,
}

/// The data a [`Query`] returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum QueryResult {
    Kv(Vec<crate::api::KvPair>),
    Keys(Vec<String>),
    Sessions(Vec<Session>),
    Txn(TxnResponse),
    Leader(String),
    Peers(Vec<String>),
    Datacenters(Vec<String>),
    Nodes(Vec<Node>),
    ServiceTags(BTreeMap<String, Vec<String>>),
    ServiceNodes(Vec<ServiceNode>),
    NodeServices(Option<NodeServices>),
    NodeServiceList(Option<NodeServiceList>),
    Checks(Vec<HealthCheck>),
    ServiceEntries(Vec<ServiceEntry>),
    Coordinates(Vec<CoordinateEntry>),
    RaftConfiguration(crate::api::RaftConfiguration),
    AutopilotHealth(crate::api::AutopilotHealth),
    SnapshotPart(SnapshotPart),
    WanMembers(Vec<wire::WanMember>),
    DatacenterMaps(Vec<wire::DatacenterMap>),
    PreparedQueries(Vec<PreparedQuery>),
    PreparedQueryExecute(Box<QueryExecuteResponse>),
    PreparedQueryExplain(Box<PreparedQuery>),
    Usage(Usage),
    AutopilotConfiguration(Option<crate::api::AutopilotConfig>),
    ConfigEntries(Vec<crate::api::ConfigEntry>),
    AclTokens(Vec<crate::acl::Token>),
    AclPolicies(Vec<crate::acl::Policy>),
    AclRoles(Vec<crate::acl::Role>),
    AclIdentity(crate::acl::Identity),
    AclAuthMethods(Vec<crate::acl::AuthMethod>),
    AclBindingRules(Vec<crate::acl::BindingRule>),
    AclReplication(AclReplicationStatus),
}

/// A datacenter's counts, as `/v1/operator/usage` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Usage {
    /// Distinct service names, `consul` included.
    pub services: u64,
    pub service_instances: u64,
    /// Instances other than the servers' own `consul` service.
    pub billable_service_instances: u64,
    pub nodes: u64,
}

/// Largest piece of a snapshot one RPC frame carries, either way: well under
/// [`wire::MAX_FRAME`], so a state of any size moves as a run of bounded frames.
pub const SNAPSHOT_PART: usize = 4 * 1024 * 1024;

/// A piece of a snapshot being saved: `data` starts at `offset` of a file of `total` bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotPart {
    /// Names the server holding the file and the file (`ip:port/uuid`).
    pub handle: String,
    pub total: u64,
    pub offset: u64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl SnapshotPart {
    /// The RPC address of the server that holds the file.
    pub fn holder(handle: &str) -> Option<std::net::SocketAddr> {
        handle.split_once('/')?.0.parse().ok()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadRequest {
    pub query: Query,
    pub options: QueryOptions,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadResponse {
    pub meta: QueryMeta,
    pub result: QueryResult,
}

/// A change to the state store, as a client asks for it. The leader turns it into a log
/// command, adding what must be decided once (times, generated IDs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WriteOp {
    /// One of the KV verbs `set`, `cas`, `lock`, `unlock`, `delete`, `delete-cas`, `delete-tree`.
    Kv(KvTxnOp),
    /// Create a session; the leader fills in `ID`.
    SessionCreate(Session),
    SessionDestroy {
        id: String,
    },
    /// Reset a session's TTL timer on the leader; nothing is written to the log.
    SessionRenew {
        id: String,
    },
    Txn(Vec<TxnOp>),
    CatalogRegister(Box<RegisterRequest>),
    CatalogDeregister(DeregisterRequest),
    /// One agent's coordinate; servers batch these before writing.
    CoordinateUpdate(CoordinateEntry),
    /// Coordinates collected by a server, written together.
    CoordinateBatchUpdate(Vec<CoordinateEntry>),
    /// Remove a server from the Raft configuration, by node ID or by `ip:port`
    /// (`/v1/operator/raft/peer`); handled by the leader, not logged as a command.
    RaftRemovePeer {
        id: Option<String>,
        address: Option<String>,
    },
    /// Hand leadership to another voter, the one with this node ID or any
    /// (`/v1/operator/raft/transfer-leader`); handled by the leader, not logged.
    RaftTransferLeader {
        id: Option<String>,
    },
    /// Store a config entry (`delete: false`) or remove one; with `cas`, only if its modify
    /// index is still that (0: only if absent, for a store).
    ConfigEntry {
        entry: crate::api::ConfigEntry,
        delete: bool,
        cas: Option<u64>,
    },
    /// Replace autopilot's settings; with `cas`, only if their modify index is still that.
    AutopilotSetConfig {
        config: crate::api::AutopilotConfig,
        cas: Option<u64>,
    },
    /// Create, update or delete a prepared query; the leader fills in a new query's ID.
    PreparedQuery {
        op: QueryOp,
        query: Box<PreparedQuery>,
    },
    /// A change to the ACL state.
    Acl(AclOp),
    /// A piece of a snapshot file to restore (`/v1/snapshot` PUT), in order from offset 0;
    /// the leader gathers the pieces of `upload` and, on the one marked `done`, checks the
    /// file and replaces the whole state with it. Not logged as one command.
    SnapshotUpload {
        upload: String,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        done: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteRequest {
    pub datacenter: String,
    pub token: String,
    pub op: WriteOp,
}

/// ACL writes. The leader fills in what is decided once (IDs, secrets, times, hashes);
/// the state machine checks what depends on the state (names in use, linked policies).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AclOp {
    /// Sets ACLs up when a leader takes office: the built-in `global-management` policy,
    /// the anonymous token and, if configured, the initial management token (which also
    /// uses up the bootstrap). Does nothing that is already there.
    Init {
        policy: Box<crate::acl::Policy>,
        anonymous: Box<crate::acl::Token>,
        management: Option<Box<crate::acl::Token>>,
    },
    /// `PUT /v1/acl/bootstrap`: allowed once, or again when the operator wrote the reset
    /// index the refusal named into `<data-dir>/acl-bootstrap-reset` (the leader reads it).
    Bootstrap {
        token: Box<crate::acl::Token>,
        policy: Box<crate::acl::Policy>,
        reset_index: Option<u64>,
    },
    /// Create (`create`) or update a token; `expires_ms` when it has an expiration.
    TokenSet {
        token: Box<crate::acl::Token>,
        create: bool,
        expires_ms: Option<u64>,
    },
    TokenDelete {
        accessor_id: String,
    },
    PolicySet {
        policy: Box<crate::acl::Policy>,
        create: bool,
    },
    PolicyDelete {
        id: String,
    },
    RoleSet {
        role: Box<crate::acl::Role>,
        create: bool,
    },
    RoleDelete {
        id: String,
    },
    /// The leader's reaper: deletes tokens expired at the command's time.
    ReapExpired,
    /// Create or update an auth method (by name; its type cannot change).
    AuthMethodSet {
        method: Box<crate::acl::AuthMethod>,
        create: bool,
    },
    /// Deletes an auth method with its binding rules and the tokens its logins made.
    AuthMethodDelete {
        name: String,
    },
    BindingRuleSet {
        rule: Box<crate::acl::BindingRule>,
        create: bool,
    },
    BindingRuleDelete {
        id: String,
    },
    /// `/v1/acl/login`: the leader checks the bearer token against the auth method and
    /// its binding rules and logs the token that results as a [`AclOp::TokenSet`].
    Login {
        auth_method: String,
        bearer_token: String,
        meta: BTreeMap<String, String>,
    },
    /// `/v1/acl/logout`: deletes the token with this secret if a login made it.
    Logout {
        secret: String,
    },
    /// A secondary datacenter's leader stores what the primary holds: its policies and
    /// roles, and (with token replication) its global tokens, each with its expiry.
    /// Local tokens stay as they are.
    Replicate {
        policies: Vec<crate::acl::Policy>,
        roles: Vec<crate::acl::Role>,
        tokens: Option<Vec<(crate::acl::Token, Option<u64>)>>,
    },
}

/// `/v1/acl/replication`: how a secondary datacenter's copy of the primary's ACLs stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct AclReplicationStatus {
    pub enabled: bool,
    pub running: bool,
    pub source_datacenter: String,
    /// `policies`, or `tokens` when global tokens are copied too.
    pub replication_type: String,
    pub replicated_index: u64,
    pub replicated_role_index: u64,
    pub replicated_token_index: u64,
    /// RFC 3339; Go's zero time when it never happened, as Consul shows it.
    pub last_success: String,
    pub last_error: String,
    pub last_error_message: String,
}

/// What a prepared-query write does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryOp {
    Create,
    Update,
    Delete,
}

/// What a write returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteResult {
    Bool(bool),
    SessionId(String),
    /// A prepared query's ID.
    QueryId(String),
    Sessions(Vec<Session>),
    Txn(TxnResponse),
    AclToken(Box<crate::acl::Token>),
    AclPolicy(Box<crate::acl::Policy>),
    AclRole(Box<crate::acl::Role>),
    AclAuthMethod(Box<crate::acl::AuthMethod>),
    AclBindingRule(Box<crate::acl::BindingRule>),
}

/// How a request failed; each kind maps to the HTTP status Consul gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    BadRequest,
    NotFound,
    PermissionDenied,
    TooLarge,
    Conflict,
    /// No leader within the hold timeout, unknown datacenter and other server-side failures.
    Internal,
    /// This server is not the leader and knows of none (yet): `No cluster leader`.
    NoLeader,
    /// No router knows the datacenter: `No path to datacenter` (DNS: NXDOMAIN).
    UnknownDatacenter,
    /// The datacenter is known but none of its servers answered:
    /// `Remote DC has no server currently reachable`.
    NoServer,
}

/// An error that crosses the RPC boundary, with Consul's message text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    pub kind: ErrorKind,
    pub message: String,
}

impl RpcError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }

    pub fn permission_denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PermissionDenied, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// Consul's error for a datacenter no router knows.
    pub fn unknown_datacenter() -> Self {
        Self::new(ErrorKind::UnknownDatacenter, "No path to datacenter")
    }

    /// Consul's error for a known datacenter none of whose servers could be reached.
    pub fn no_server() -> Self {
        Self::new(
            ErrorKind::NoServer,
            "Remote DC has no server currently reachable",
        )
    }

    /// Consul's text when no leader is elected within `rpc_hold_timeout`.
    pub fn no_leader() -> Self {
        Self::internal("No cluster leader")
    }
}
