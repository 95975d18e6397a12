//! The state store: nodes, checks, KV, sessions and lock-delays, with per-table indexes,
//! KV tombstones and fine-grained change notification.
//!
//! Every change is a [`Command`] applied by [`Store::apply`] at a log index. `apply` is
//! deterministic: it reads no clock and draws no random numbers (times and generated IDs
//! arrive inside the command), so every server that applies the same log reaches the same
//! state. The dev agent calls it directly; the Raft state machine calls it for each
//! committed entry.
//!
//! Each mutation goes through a few primitives that can record their inverse, which is how
//! a transaction rolls back, and that report what changed ([`Change`]) so blocking queries
//! are woken only when what they read moved ([`watch`]).

pub mod acl;
mod kv;
pub mod prepared;
mod query;
mod registry;
mod session;
mod state;
mod template;
mod txn;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet};

use cairn_shared::api::{
    AutopilotConfig, ConfigEntry, CoordinateEntry, HealthCheck, KvPair, Node, NodeService,
    PreparedQuery, Session,
};
use cairn_shared::coordinate::Coordinate;
use cairn_shared::rpc::{RpcError, WriteOp, WriteResult};
use serde::{Deserialize, Serialize};

pub use state::StateStore;
pub use watch::{Change, WatchKey};

/// A log entry: a write plus what the leader decided for it once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Wall-clock milliseconds since the Unix epoch when the leader accepted the write;
    /// the only time `apply` ever sees (lock-delay expiry, for one).
    pub now_ms: u64,
    pub op: CommandOp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandOp {
    /// A write a client asked for, with generated IDs already filled in.
    Client(WriteOp),
    /// Forget KV tombstones at or below this index (their TTL has passed on the leader).
    ReapTombstones { index: u64 },
    /// Writes proposed together (`raft/batch.rs`), applied in order at one index, each
    /// with its own result.
    Batch(Vec<Command>),
    /// The piece at `offset` of a snapshot file being restored, staged until its commit
    /// (`docs/raft.md`, "Snapshots"). A piece of another restore drops the one staged; a
    /// piece already staged (a retried proposal) changes nothing.
    RestorePart {
        restore: String,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Replaces the whole state with the staged file `restore`, which must be `len` bytes.
    RestoreCommit { restore: String, len: u64 },
}

/// A snapshot file whose pieces are arriving through the log.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StagedRestore {
    restore: String,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// The tables whose last-modified index blocking queries compare against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Table {
    Nodes,
    Services,
    Checks,
    Kvs,
    Tombstones,
    Sessions,
    Coordinates,
    PreparedQueries,
    Autopilot,
    ConfigEntries,
    AclTokens,
    AclPolicies,
    AclRoles,
    AclAuthMethods,
    AclBindingRules,
}

/// Entry counts per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub nodes: usize,
    pub services: usize,
    pub checks: usize,
    pub kv: usize,
    pub sessions: usize,
}

/// Where an atomic unit started, to roll back to.
#[derive(Debug, Clone, Copy)]
struct Savepoint {
    /// Whether an enclosing unit was already recording.
    outer: bool,
    journal_len: usize,
    changes_len: usize,
}

/// (node, service ID) or (node, check ID).
type NodeKey = (String, String);

/// The inverse of one primitive mutation, kept while a transaction runs.
#[derive(Debug, Clone)]
enum Undo {
    Kv(String, Option<KvPair>),
    Tombstone(String, Option<u64>),
    LockDelay(String, Option<u64>),
    Session(String, Option<Session>),
    Node(String, Option<Node>),
    Service(NodeKey, Option<NodeService>),
    Check(NodeKey, Option<HealthCheck>),
    TableIndex(Table, Option<u64>),
    NodeIndex(String, Option<u64>),
    ServiceIndex(String, Option<u64>),
    Coordinate(String, Option<Coordinate>),
    Query(String, Option<PreparedQuery>),
}

/// All replicated state. Cloneable and serialisable so it can be snapshotted whole.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Store {
    /// The log index of the last applied command.
    last_index: u64,
    table_index: BTreeMap<Table, u64>,
    /// Last change to anything about a node (itself, its services, its checks).
    node_index: BTreeMap<String, u64>,
    /// Last change to anything a health query of a service name reads (its instances,
    /// their checks, their nodes). Kept after the last instance goes, so the index of a
    /// service never moves backwards.
    service_index: BTreeMap<String, u64>,
    nodes: BTreeMap<String, Node>,
    services: BTreeMap<NodeKey, NodeService>,
    /// Service name → instances, so a lookup by name does not scan every service.
    by_service_name: BTreeMap<String, BTreeSet<NodeKey>>,
    checks: BTreeMap<NodeKey, HealthCheck>,
    kv: BTreeMap<String, KvPair>,
    /// Deleted keys and the index they were deleted at, so a prefix's index never goes
    /// backwards when its newest key is removed.
    tombstones: BTreeMap<String, u64>,
    /// The newest reaped tombstone: prefix indexes never drop below it.
    tombstone_floor: u64,
    /// Key → wall-clock millisecond until which it cannot be acquired.
    lock_delays: BTreeMap<String, u64>,
    sessions: BTreeMap<String, Session>,
    /// Node → its latest network coordinate.
    coordinates: BTreeMap<String, Coordinate>,
    /// Prepared queries by ID (absent from snapshots written before they existed).
    #[serde(default)]
    prepared_queries: BTreeMap<String, PreparedQuery>,
    /// A restore in progress; in Raft snapshots too, so a server that installs one
    /// mid-restore stages the same bytes as the others.
    #[serde(default)]
    restoring: Option<StagedRestore>,
    /// The last restore committed, so a retried commit of it succeeds without redoing it.
    #[serde(default)]
    last_restore: Option<String>,
    /// Autopilot's settings, once a leader stored them.
    #[serde(default)]
    autopilot: Option<AutopilotConfig>,
    /// Config entries by kind, then name.
    #[serde(default)]
    config_entries: BTreeMap<String, BTreeMap<String, ConfigEntry>>,
    /// Tokens, policies and roles.
    #[serde(default)]
    acl: acl::AclState,
    #[serde(skip)]
    journal: Option<Vec<Undo>>,
    #[serde(skip)]
    changes: Vec<Change>,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// The index of the last applied command.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Applies one command at `index`. Errors are deterministic answers to the client (a
    /// session that does not exist, say); they leave the store unchanged.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Result<WriteResult, RpcError> {
        debug_assert!(
            self.journal.is_none(),
            "invariant: no transaction left open"
        );
        self.last_index = self.last_index.max(index);
        match &cmd.op {
            CommandOp::Client(op) => self.apply_client(index, cmd.now_ms, op),
            CommandOp::ReapTombstones { index: upto } => {
                self.reap_tombstones(index, *upto);
                Ok(WriteResult::Bool(true))
            }
            // The Raft state machine applies batches with `apply_each`, for the results.
            CommandOp::Batch(_) => {
                self.apply_each(index, cmd);
                Ok(WriteResult::Bool(true))
            }
            CommandOp::RestorePart {
                restore,
                offset,
                data,
            } => {
                let staged = match self.restoring.take() {
                    Some(s) if s.restore == *restore => s,
                    _ => StagedRestore {
                        restore: restore.clone(),
                        data: Vec::new(),
                    },
                };
                let staged = self.restoring.insert(staged);
                let have = staged.data.len() as u64;
                if *offset == have {
                    staged.data.extend_from_slice(data);
                } else if offset + data.len() as u64 > have {
                    // A gap: a piece was lost; the commit will find the file incomplete.
                    staged.data.clear();
                }
                Ok(WriteResult::Bool(true))
            }
            CommandOp::RestoreCommit { restore, len } => {
                if self.last_restore.as_deref() == Some(restore.as_str()) {
                    return Ok(WriteResult::Bool(true));
                }
                let staged = match self.restoring.take() {
                    Some(s) if s.restore == *restore && s.data.len() as u64 == *len => s,
                    other => {
                        self.restoring = other;
                        return Err(RpcError::internal(
                            "Snapshot restore failed: the restore was interrupted; try again",
                        ));
                    }
                };
                let snap = crate::raft::snapshot::SnapshotFile::decode(&staged.data)
                    .map_err(|e| RpcError::bad_request(format!("Snapshot restore failed: {e}")))?;
                self.restore(index, snap.store);
                self.last_restore = Some(restore.clone());
                Ok(WriteResult::Bool(true))
            }
        }
    }

    /// The store as a user's snapshot holds it: without a restore in progress.
    pub fn without_staging(mut self) -> Self {
        self.restoring = None;
        self
    }

    /// Applies a batch's commands in order at `index`, one result each; any other
    /// command is a batch of one.
    pub fn apply_each(&mut self, index: u64, cmd: &Command) -> Vec<Result<WriteResult, RpcError>> {
        match &cmd.op {
            CommandOp::Batch(cmds) => cmds.iter().map(|c| self.apply(index, c)).collect(),
            _ => vec![self.apply(index, cmd)],
        }
    }

    fn apply_client(&mut self, idx: u64, now: u64, op: &WriteOp) -> Result<WriteResult, RpcError> {
        match op {
            WriteOp::Kv(kv) => self.kv_apply(idx, now, kv).map(WriteResult::Bool),
            WriteOp::SessionCreate(s) => {
                self.session_create(idx, s)?;
                Ok(WriteResult::SessionId(s.id.clone()))
            }
            WriteOp::SessionDestroy { id } => {
                self.session_destroy(idx, now, id);
                Ok(WriteResult::Bool(true))
            }
            WriteOp::SessionRenew { .. } => Err(RpcError::internal(
                "invariant: session renew is served by the leader, not the log",
            )),
            WriteOp::Txn(ops) => Ok(WriteResult::Txn(self.txn_apply(idx, now, ops))),
            WriteOp::CatalogRegister(req) => {
                self.atomically(|s| s.register(idx, now, req))?;
                Ok(WriteResult::Bool(true))
            }
            WriteOp::CatalogDeregister(req) => {
                self.atomically(|s| s.deregister(idx, now, req))?;
                Ok(WriteResult::Bool(true))
            }
            WriteOp::CoordinateBatchUpdate(entries) => {
                self.coordinate_batch(idx, entries);
                Ok(WriteResult::Bool(true))
            }
            WriteOp::CoordinateUpdate(_) => Err(RpcError::internal(
                "invariant: coordinate updates are batched by the server before the log",
            )),
            WriteOp::RaftRemovePeer { .. } | WriteOp::RaftTransferLeader { .. } => Err(
                RpcError::internal("invariant: Raft configuration changes are not commands"),
            ),
            WriteOp::PreparedQuery { op, query } => {
                self.atomically(|s| s.query_apply(idx, *op, query))
            }
            WriteOp::ConfigEntry { entry, delete, cas } => {
                let kinds = &mut self.config_entries;
                let current = kinds.get(&entry.kind).and_then(|m| m.get(&entry.name));
                if cas.is_some_and(|c| c != current.map_or(0, |e| e.modify_index)) {
                    return Ok(WriteResult::Bool(false));
                }
                if *delete {
                    if let Some(m) = kinds.get_mut(&entry.kind) {
                        m.remove(&entry.name);
                        if m.is_empty() {
                            kinds.remove(&entry.kind);
                        }
                    }
                } else {
                    let mut next = entry.clone();
                    next.create_index = current.map_or(idx, |e| e.create_index);
                    next.modify_index = idx;
                    kinds
                        .entry(entry.kind.clone())
                        .or_default()
                        .insert(entry.name.clone(), next);
                }
                self.bump(Table::ConfigEntries, idx);
                Ok(WriteResult::Bool(true))
            }
            WriteOp::AutopilotSetConfig { config, cas } => {
                let current = self.autopilot.as_ref();
                if cas.is_some_and(|c| c != current.map_or(0, |a| a.modify_index)) {
                    return Ok(WriteResult::Bool(false));
                }
                let mut next = config.clone();
                next.create_index = current.map_or(idx, |a| a.create_index);
                next.modify_index = idx;
                self.autopilot = Some(next);
                self.bump(Table::Autopilot, idx);
                Ok(WriteResult::Bool(true))
            }
            WriteOp::Acl(op) => self.acl_apply(idx, now, op),
            WriteOp::SnapshotUpload { .. } => Err(RpcError::internal(
                "invariant: snapshot uploads are gathered by the leader, not logged",
            )),
        }
    }

    /// Replaces everything with a restored store. Every table index moves to `idx` so
    /// blocking queries see the change; the caller wakes every watcher.
    fn restore(&mut self, idx: u64, restored: Store) {
        *self = restored.without_staging();
        self.last_index = idx;
        for t in [
            Table::Nodes,
            Table::Services,
            Table::Checks,
            Table::Kvs,
            Table::Tombstones,
            Table::Sessions,
            Table::Coordinates,
            Table::PreparedQueries,
            Table::Autopilot,
            Table::ConfigEntries,
            Table::AclTokens,
            Table::AclPolicies,
            Table::AclRoles,
            Table::AclAuthMethods,
            Table::AclBindingRules,
        ] {
            self.table_index.insert(t, idx);
        }
        for v in self
            .node_index
            .values_mut()
            .chain(self.service_index.values_mut())
        {
            *v = idx;
        }
    }

    /// Whether a command replaces the whole store (so every watcher must wake), or is a
    /// batch holding one that does.
    pub fn is_restore(cmd: &Command) -> bool {
        match &cmd.op {
            CommandOp::RestoreCommit { .. } => true,
            CommandOp::Batch(cmds) => cmds.iter().any(Self::is_restore),
            _ => false,
        }
    }

    /// Drains the changes made since the last call.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    pub fn session(&self, id: &str) -> Option<&Session> {
        self.sessions.get(id)
    }

    /// Autopilot's settings, if a leader stored them.
    pub fn autopilot_config(&self) -> Option<&AutopilotConfig> {
        self.autopilot.as_ref()
    }

    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    /// How much of each kind the store holds (`cairn snapshot inspect`).
    pub fn counts(&self) -> Counts {
        Counts {
            nodes: self.nodes.len(),
            services: self.services.len(),
            checks: self.checks.len(),
            kv: self.kv.len(),
            sessions: self.sessions.len(),
        }
    }

    pub fn kv_len(&self) -> usize {
        self.kv.len()
    }

    fn table(&self, t: Table) -> u64 {
        self.table_index.get(&t).copied().unwrap_or(0)
    }

    /// A table's last-modified index (0: never written).
    pub fn table_index(&self, t: Table) -> u64 {
        self.table(t)
    }

    pub fn service_of(&self, node: &str, id: &str) -> Option<&NodeService> {
        self.services.get(&(node.to_string(), id.to_string()))
    }

    pub fn check_of(&self, node: &str, id: &str) -> Option<&HealthCheck> {
        self.checks.get(&(node.to_string(), id.to_string()))
    }

    // ---- primitives: every mutation goes through these ----

    fn record(&mut self, undo: impl FnOnce() -> Undo) {
        if let Some(j) = self.journal.as_mut() {
            j.push(undo());
        }
    }

    fn bump(&mut self, t: Table, idx: u64) {
        let old = self.table_index.insert(t, idx);
        self.record(|| Undo::TableIndex(t, old));
        self.changes.push(Change::Table(t));
    }

    fn put_kv(&mut self, entry: KvPair) {
        let key = entry.key.clone();
        self.changes.push(Change::Kv(key.clone()));
        let old = self.kv.insert(key.clone(), entry);
        self.record(|| Undo::Kv(key, old));
    }

    fn remove_kv(&mut self, key: &str, idx: u64) -> Option<KvPair> {
        let old = self.kv.remove(key)?;
        self.changes.push(Change::Kv(key.to_string()));
        let prev_tomb = self.tombstones.insert(key.to_string(), idx);
        self.record(|| Undo::Tombstone(key.to_string(), prev_tomb));
        self.record(|| Undo::Kv(key.to_string(), Some(old.clone())));
        Some(old)
    }

    fn set_lock_delay(&mut self, key: &str, until_ms: u64) {
        let old = self.lock_delays.insert(key.to_string(), until_ms);
        self.record(|| Undo::LockDelay(key.to_string(), old));
    }

    fn put_session(&mut self, s: Session) {
        let id = s.id.clone();
        let old = self.sessions.insert(id.clone(), s);
        self.record(|| Undo::Session(id, old));
    }

    fn remove_session(&mut self, id: &str) -> Option<Session> {
        let old = self.sessions.remove(id)?;
        self.record(|| Undo::Session(id.to_string(), Some(old.clone())));
        Some(old)
    }

    /// Starts an atomic unit: from here every primitive records its inverse, until the
    /// savepoint is released or rolled back. Savepoints nest.
    fn savepoint(&mut self) -> Savepoint {
        let outer = self.journal.is_some();
        let journal = self.journal.get_or_insert_with(Vec::new);
        Savepoint {
            outer,
            journal_len: journal.len(),
            changes_len: self.changes.len(),
        }
    }

    /// Keeps what was done since the savepoint.
    fn release(&mut self, sp: Savepoint) {
        if !sp.outer {
            self.journal = None;
        }
    }

    /// Undoes everything since the savepoint, including its pending change notices.
    fn rollback_to(&mut self, sp: Savepoint) {
        let undo: Vec<Undo> = match self.journal.as_mut() {
            Some(j) => j.drain(sp.journal_len..).collect(),
            None => Vec::new(),
        };
        for u in undo.into_iter().rev() {
            match u {
                Undo::Kv(k, v) => restore(&mut self.kv, k, v),
                Undo::Tombstone(k, v) => restore(&mut self.tombstones, k, v),
                Undo::LockDelay(k, v) => restore(&mut self.lock_delays, k, v),
                Undo::Session(k, v) => restore(&mut self.sessions, k, v),
                Undo::Node(k, v) => restore(&mut self.nodes, k, v),
                Undo::Service(k, v) => {
                    if let Some(name) = self.services.get(&k).map(|s| s.service.clone()) {
                        self.unindex_service(&name, &k);
                    }
                    if let Some(new) = &v {
                        self.by_service_name
                            .entry(new.service.to_lowercase())
                            .or_default()
                            .insert(k.clone());
                    }
                    restore(&mut self.services, k, v)
                }
                Undo::Check(k, v) => restore(&mut self.checks, k, v),
                Undo::TableIndex(t, i) => restore(&mut self.table_index, t, i),
                Undo::NodeIndex(k, v) => restore(&mut self.node_index, k, v),
                Undo::ServiceIndex(k, v) => restore(&mut self.service_index, k, v),
                Undo::Coordinate(k, v) => restore(&mut self.coordinates, k, v),
                Undo::Query(k, v) => restore(&mut self.prepared_queries, k, v),
            }
        }
        self.changes.truncate(sp.changes_len);
        self.release(sp);
    }

    /// Runs `f` as one atomic unit: if it fails, everything it did is undone.
    fn atomically<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, RpcError>,
    ) -> Result<T, RpcError> {
        let sp = self.savepoint();
        let result = f(self);
        match result {
            Ok(_) => self.release(sp),
            Err(_) => self.rollback_to(sp),
        }
        result
    }

    /// Stores the coordinates of known nodes; others are dropped, as Consul does.
    fn coordinate_batch(&mut self, idx: u64, entries: &[CoordinateEntry]) {
        let mut changed = false;
        for e in entries {
            let Some(coord) = &e.coord else { continue };
            if !self.nodes.contains_key(&e.node) || !coord.is_valid() {
                continue;
            }
            let old = self.coordinates.insert(e.node.clone(), coord.clone());
            let node = e.node.clone();
            self.record(|| Undo::Coordinate(node, old));
            changed = true;
        }
        if changed {
            self.bump(Table::Coordinates, idx);
        }
    }

    pub(super) fn remove_coordinate(&mut self, idx: u64, node: &str) {
        if let Some(old) = self.coordinates.remove(node) {
            self.record(|| Undo::Coordinate(node.to_string(), Some(old)));
            self.bump(Table::Coordinates, idx);
        }
    }

    pub fn coordinate(&self, node: &str) -> Option<&Coordinate> {
        self.coordinates.get(node)
    }

    pub fn check(&self, node: &str, id: &str) -> Option<&HealthCheck> {
        self.checks.get(&(node.to_string(), id.to_string()))
    }

    /// Nodes that have a check with this ID (the reconciler's `serfHealth`).
    pub fn nodes_with_check<'a>(&'a self, id: &'a str) -> impl Iterator<Item = String> + 'a {
        self.checks
            .keys()
            .filter(move |(_, check)| check == id)
            .map(|(node, _)| node.clone())
    }

    pub fn has_service(&self, node: &str, id: &str) -> bool {
        self.services
            .contains_key(&(node.to_string(), id.to_string()))
    }
}

fn restore<K: Ord, V>(map: &mut BTreeMap<K, V>, key: K, old: Option<V>) {
    match old {
        Some(v) => {
            map.insert(key, v);
        }
        None => {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests;
