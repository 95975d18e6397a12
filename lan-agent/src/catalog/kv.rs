//! KV verbs on the store, with Consul's semantics: `set` keeps the lock holder, `cas` with
//! index 0 only creates, `lock` bumps `LockIndex` for a new holder and honours lock-delay,
//! `unlock` only for the holder, deletes leave tombstones.

use cairn_shared::api::{KvPair, KvTxnOp, KvVerb};
use cairn_shared::rpc::RpcError;

use super::{Store, Table};

impl Store {
    /// One KV verb from `/v1/kv`; `Ok(false)` is Consul's `false` answer (CAS mismatch,
    /// lock held elsewhere or in lock-delay).
    pub(super) fn kv_apply(&mut self, idx: u64, now: u64, op: &KvTxnOp) -> Result<bool, RpcError> {
        match &op.verb {
            KvVerb::Set => {
                self.kv_set(idx, op, false);
                Ok(true)
            }
            KvVerb::Cas => Ok(self.kv_cas(idx, op)),
            KvVerb::Lock => {
                if self.in_lock_delay(&op.key, now) {
                    return Ok(false);
                }
                self.kv_lock(idx, op)
            }
            KvVerb::Unlock => self.kv_unlock(idx, op),
            KvVerb::Delete => {
                self.kv_delete(idx, &op.key);
                Ok(true)
            }
            KvVerb::DeleteCas => Ok(self.kv_delete_cas(idx, &op.key, op.index)),
            KvVerb::DeleteTree => {
                self.kv_delete_tree(idx, &op.key);
                Ok(true)
            }
            other => Err(RpcError::bad_request(format!(
                "Invalid KV operation \"{}\" for /v1/kv",
                other.as_str()
            ))),
        }
    }

    /// Writes a value. Without `update_session` the current holder is kept, so a plain
    /// PUT never steals or drops a lock.
    /// Whether a lock-delay left by an invalidated session still guards `key`.
    pub(super) fn in_lock_delay(&self, key: &str, now: u64) -> bool {
        self.lock_delays.get(key).is_some_and(|&until| until > now)
    }

    /// Writes a value. Without `update_session` the current holder is kept, so a plain
    /// PUT never steals or drops a lock. Writing what is already there changes nothing.
    pub(super) fn kv_set(&mut self, idx: u64, op: &KvTxnOp, update_session: bool) -> KvPair {
        let existing = self.kv.get(&op.key);
        if let Some(e) = existing
            && e.value == op.value
            && e.flags == op.flags
            && (!update_session || e.session == op.session)
        {
            return e.clone();
        }
        let entry = KvPair {
            key: op.key.clone(),
            value: op.value.clone(),
            flags: op.flags,
            lock_index: existing.map_or(0, |e| e.lock_index),
            session: if update_session {
                op.session.clone()
            } else {
                existing.map(|e| e.session.clone()).unwrap_or_default()
            },
            create_index: existing.map_or(idx, |e| e.create_index),
            modify_index: idx,
        };
        self.put_kv(entry.clone());
        self.bump(Table::Kvs, idx);
        entry
    }

    pub(super) fn kv_cas(&mut self, idx: u64, op: &KvTxnOp) -> bool {
        let current = self.kv.get(&op.key).map(|e| e.modify_index);
        let ok = match (op.index, current) {
            (0, None) => true,
            (0, Some(_)) | (_, None) => false,
            (want, Some(have)) => want == have,
        };
        if ok {
            self.kv_set(idx, op, false);
        }
        ok
    }

    pub(super) fn kv_lock(&mut self, idx: u64, op: &KvTxnOp) -> Result<bool, RpcError> {
        if op.session.is_empty() {
            return Err(RpcError::internal("missing session"));
        }
        if !self.sessions.contains_key(&op.session) {
            return Err(RpcError::internal(format!(
                "invalid session \"{}\"",
                op.session
            )));
        }
        let (create_index, lock_index) = match self.kv.get(&op.key) {
            Some(e) if e.session == op.session => (e.create_index, e.lock_index),
            Some(e) if !e.session.is_empty() => return Ok(false),
            Some(e) => (e.create_index, e.lock_index + 1),
            None => (idx, 1),
        };
        let entry = KvPair {
            key: op.key.clone(),
            value: op.value.clone(),
            flags: op.flags,
            lock_index,
            session: op.session.clone(),
            create_index,
            modify_index: idx,
        };
        self.put_kv(entry);
        self.bump(Table::Kvs, idx);
        Ok(true)
    }

    pub(super) fn kv_unlock(&mut self, idx: u64, op: &KvTxnOp) -> Result<bool, RpcError> {
        if op.session.is_empty() {
            return Err(RpcError::internal("missing session"));
        }
        let Some(e) = self.kv.get(&op.key) else {
            return Ok(false);
        };
        if e.session != op.session {
            return Ok(false);
        }
        let entry = KvPair {
            key: op.key.clone(),
            value: op.value.clone(),
            flags: op.flags,
            lock_index: e.lock_index,
            session: String::new(),
            create_index: e.create_index,
            modify_index: idx,
        };
        self.put_kv(entry);
        self.bump(Table::Kvs, idx);
        Ok(true)
    }

    pub(super) fn kv_delete(&mut self, idx: u64, key: &str) {
        if self.remove_kv(key, idx).is_some() {
            self.bump(Table::Kvs, idx);
        }
    }

    /// Deletes only if the entry is at `index`; a missing key counts as deleted.
    pub(super) fn kv_delete_cas(&mut self, idx: u64, key: &str, index: u64) -> bool {
        match self.kv.get(key) {
            None => true,
            Some(e) if e.modify_index != index => false,
            Some(_) => {
                self.kv_delete(idx, key);
                true
            }
        }
    }

    pub(super) fn kv_delete_tree(&mut self, idx: u64, prefix: &str) {
        let keys: Vec<String> = self.kv_range(prefix).map(|e| e.key.clone()).collect();
        for k in &keys {
            self.remove_kv(k, idx);
        }
        if !keys.is_empty() {
            self.bump(Table::Kvs, idx);
        }
    }

    pub(super) fn kv_range<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a KvPair> {
        self.kv
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v)
    }

    /// The index a whole-table read reports: the newest write or delete of any key.
    pub(super) fn kv_table_index(&self) -> u64 {
        self.table(Table::Kvs).max(self.table(Table::Tombstones))
    }

    /// The newest write or delete under `prefix`, falling back to the table index when
    /// nothing was ever there, as Consul does; deletes count through their tombstones.
    pub(super) fn kv_prefix_index(&self, prefix: &str) -> u64 {
        if prefix.is_empty() {
            return self.kv_table_index();
        }
        let live = self.kv_range(prefix).map(|e| e.modify_index).max();
        let dead = self
            .tombstones
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, i)| *i)
            .max();
        match live.max(dead) {
            // Reaped tombstones raise the floor, so reaping never moves an index back.
            Some(i) if i > 0 => i.max(self.tombstone_floor),
            _ => self.kv_table_index(),
        }
    }

    /// Keys under `prefix`; with a separator, anything past the first separator after the
    /// prefix is rolled up into one `prefix…sep` entry.
    pub(super) fn kv_keys(&self, prefix: &str, separator: &str) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for e in self.kv_range(prefix) {
            let key = match (separator.is_empty(), e.key[prefix.len()..].find(separator)) {
                (false, Some(pos)) => &e.key[..prefix.len() + pos + separator.len()],
                _ => e.key.as_str(),
            };
            if out.last().map(String::as_str) != Some(key) {
                out.push(key.to_string());
            }
        }
        out
    }

    /// The newest tombstone's index (0 when there are none).
    pub fn max_tombstone_index(&self) -> u64 {
        self.tombstones.values().copied().max().unwrap_or(0)
    }

    pub(super) fn reap_tombstones(&mut self, idx: u64, upto: u64) {
        let mut reaped = 0;
        self.tombstones.retain(|_, i| {
            reaped = reaped.max(if *i <= upto { *i } else { 0 });
            *i > upto
        });
        if reaped > 0 {
            self.tombstone_floor = self.tombstone_floor.max(reaped);
            self.bump(Table::Tombstones, idx);
        }
    }

    /// Lock-delays whose time is past are dropped so the map does not grow forever; called
    /// from `apply` paths that set new ones.
    pub(super) fn prune_lock_delays(&mut self, now: u64) {
        self.lock_delays.retain(|_, until| *until > now);
    }
}
