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

mod kv;
mod session;
mod state;
mod txn;
pub mod watch;

use std::collections::BTreeMap;

use cairn_shared::api::{CheckStatus, HealthCheck, KvPair, Node, Session};
use cairn_shared::rpc::{Query, QueryResult, RpcError, WriteOp, WriteResult};
use serde::{Deserialize, Serialize};

pub use state::StateStore;
pub use watch::{Change, WatchKey};

/// A log entry: a write plus what the leader decided for it once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Wall-clock milliseconds since the Unix epoch when the leader accepted the write;
    /// the only time `apply` ever sees (lock-delay expiry, for one).
    pub now_ms: u64,
    pub op: CommandOp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandOp {
    /// A write a client asked for, with generated IDs already filled in.
    Client(WriteOp),
    /// Register (or refresh) a node and its node-level checks.
    RegisterNode {
        node: Node,
        checks: Vec<HealthCheck>,
    },
    /// Forget KV tombstones at or below this index (their TTL has passed on the leader).
    ReapTombstones { index: u64 },
}

/// The tables whose last-modified index blocking queries compare against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Table {
    Nodes,
    Checks,
    Kvs,
    Tombstones,
    Sessions,
}

/// The inverse of one primitive mutation, kept while a transaction runs.
#[derive(Debug, Clone)]
enum Undo {
    Kv(String, Option<KvPair>),
    Tombstone(String, Option<u64>),
    LockDelay(String, Option<u64>),
    Session(String, Option<Session>),
    TableIndex(Table, u64),
}

/// All replicated state. Cloneable and serialisable so it can be snapshotted whole.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Store {
    /// The log index of the last applied command.
    last_index: u64,
    table_index: BTreeMap<Table, u64>,
    nodes: BTreeMap<String, Node>,
    /// Keyed by (node, check ID).
    checks: BTreeMap<(String, String), HealthCheck>,
    kv: BTreeMap<String, KvPair>,
    /// Deleted keys and the index they were deleted at, so a prefix's index never goes
    /// backwards when its newest key is removed.
    tombstones: BTreeMap<String, u64>,
    /// The newest reaped tombstone: prefix indexes never drop below it.
    tombstone_floor: u64,
    /// Key → wall-clock millisecond until which it cannot be acquired.
    lock_delays: BTreeMap<String, u64>,
    sessions: BTreeMap<String, Session>,
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
            CommandOp::RegisterNode { node, checks } => {
                self.register_node(index, cmd.now_ms, node, checks);
                Ok(WriteResult::Bool(true))
            }
            CommandOp::ReapTombstones { index: upto } => {
                self.reap_tombstones(index, *upto);
                Ok(WriteResult::Bool(true))
            }
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
        }
    }

    /// Answers a read and says which index it is at. The index is never 0.
    pub fn query(&self, q: &Query) -> Result<(u64, QueryResult), RpcError> {
        let (index, result) = match q {
            Query::KvGet { key } => {
                let hit = self.kv.get(key).cloned();
                let index = hit
                    .as_ref()
                    .map_or(self.kv_table_index(), |e| e.modify_index);
                (index, QueryResult::Kv(hit.into_iter().collect()))
            }
            Query::KvList { prefix } => (
                self.kv_prefix_index(prefix),
                QueryResult::Kv(self.kv_range(prefix).cloned().collect()),
            ),
            Query::KvKeys { prefix, separator } => (
                self.kv_prefix_index(prefix),
                QueryResult::Keys(self.kv_keys(prefix, separator)),
            ),
            Query::SessionInfo { id } => (
                self.table(Table::Sessions),
                QueryResult::Sessions(self.sessions.get(id).cloned().into_iter().collect()),
            ),
            Query::SessionList => (
                self.table(Table::Sessions),
                QueryResult::Sessions(self.sessions.values().cloned().collect()),
            ),
            Query::SessionNode { node } => (
                self.table(Table::Sessions),
                QueryResult::Sessions(
                    self.sessions
                        .values()
                        .filter(|s| &s.node == node)
                        .cloned()
                        .collect(),
                ),
            ),
            Query::TxnRead(ops) => {
                let resp = self.txn_read(ops);
                (self.kv_table_index(), QueryResult::Txn(resp))
            }
            Query::Leader | Query::Peers => {
                return Err(RpcError::internal(
                    "invariant: status queries are answered by consensus",
                ));
            }
        };
        Ok((index.max(1), result))
    }

    /// What a blocking query must watch to see its answer change; empty for queries that
    /// do not block.
    pub fn watch_keys(q: &Query) -> Vec<WatchKey> {
        match q {
            Query::KvGet { key } => vec![WatchKey::KvKey(key.clone())],
            Query::KvList { prefix } | Query::KvKeys { prefix, .. } => {
                vec![WatchKey::KvPrefix(prefix.clone())]
            }
            Query::SessionInfo { .. } | Query::SessionList | Query::SessionNode { .. } => {
                vec![WatchKey::Table(Table::Sessions)]
            }
            Query::TxnRead(_) | Query::Leader | Query::Peers => Vec::new(),
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

    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values()
    }

    pub fn kv_len(&self) -> usize {
        self.kv.len()
    }

    fn table(&self, t: Table) -> u64 {
        self.table_index.get(&t).copied().unwrap_or(0)
    }

    // ---- primitives: every mutation goes through these ----

    fn record(&mut self, undo: impl FnOnce() -> Undo) {
        if let Some(j) = self.journal.as_mut() {
            j.push(undo());
        }
    }

    fn bump(&mut self, t: Table, idx: u64) {
        let old = self.table(t);
        self.record(|| Undo::TableIndex(t, old));
        self.table_index.insert(t, idx);
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

    /// Starts recording inverses; everything until [`Self::commit`] or
    /// [`Self::rollback`] is one atomic unit.
    fn begin(&mut self) {
        self.journal = Some(Vec::new());
    }

    fn commit(&mut self) {
        self.journal = None;
    }

    fn rollback(&mut self, changes_before: usize) {
        let journal = self.journal.take().unwrap_or_default();
        for undo in journal.into_iter().rev() {
            match undo {
                Undo::Kv(k, Some(v)) => {
                    self.kv.insert(k, v);
                }
                Undo::Kv(k, None) => {
                    self.kv.remove(&k);
                }
                Undo::Tombstone(k, Some(i)) => {
                    self.tombstones.insert(k, i);
                }
                Undo::Tombstone(k, None) => {
                    self.tombstones.remove(&k);
                }
                Undo::LockDelay(k, Some(t)) => {
                    self.lock_delays.insert(k, t);
                }
                Undo::LockDelay(k, None) => {
                    self.lock_delays.remove(&k);
                }
                Undo::Session(id, Some(s)) => {
                    self.sessions.insert(id, s);
                }
                Undo::Session(id, None) => {
                    self.sessions.remove(&id);
                }
                Undo::TableIndex(t, i) => {
                    self.table_index.insert(t, i);
                }
            }
        }
        self.changes.truncate(changes_before);
    }

    fn register_node(&mut self, idx: u64, now: u64, node: &Node, checks: &[HealthCheck]) {
        let mut n = node.clone();
        match self.nodes.get(&n.node) {
            Some(old) => {
                n.create_index = old.create_index;
                n.modify_index = old.modify_index;
                if *old != n {
                    n.modify_index = idx;
                    self.nodes.insert(n.node.clone(), n);
                    self.bump(Table::Nodes, idx);
                }
            }
            None => {
                n.create_index = idx;
                n.modify_index = idx;
                self.nodes.insert(n.node.clone(), n);
                self.bump(Table::Nodes, idx);
            }
        }
        for c in checks {
            let key = (c.node.clone(), c.check_id.clone());
            let mut c = c.clone();
            match self.checks.get(&key) {
                Some(old) => {
                    c.create_index = old.create_index;
                    c.modify_index = old.modify_index;
                    if *old == c {
                        continue;
                    }
                }
                None => c.create_index = idx,
            }
            c.modify_index = idx;
            let critical = c.status == CheckStatus::Critical;
            let check_id = c.check_id.clone();
            self.checks.insert(key, c);
            self.bump(Table::Checks, idx);
            if critical {
                for id in self.sessions_bound_to(&node.node, &check_id) {
                    self.session_destroy(idx, now, &id);
                }
            }
        }
    }

    pub fn check(&self, node: &str, id: &str) -> Option<&HealthCheck> {
        self.checks.get(&(node.to_string(), id.to_string()))
    }
}

#[cfg(test)]
mod tests;
