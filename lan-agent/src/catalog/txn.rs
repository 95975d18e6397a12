//! `/v1/txn` on the store: every operation runs in order against the live tables with the
//! store's journal on; if any fails, the journal undoes them all and the answer lists every
//! failure, so the transaction is all or nothing.

use cairn_shared::api::{KvPair, KvTxnOp, KvVerb, TxnError, TxnOp, TxnResponse, TxnResult};

use super::Store;

impl Store {
    pub(super) fn txn_apply(&mut self, idx: u64, now: u64, ops: &[TxnOp]) -> TxnResponse {
        let sp = self.savepoint();
        let mut results = Vec::new();
        let mut errors = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let TxnOp::Kv(kv) = op;
            match self.txn_kv(idx, now, kv) {
                Ok(mut r) => results.append(&mut r),
                Err(what) => errors.push(TxnError { op_index: i, what }),
            }
        }
        if errors.is_empty() {
            self.release(sp);
            TxnResponse {
                results: Some(results),
                errors: None,
            }
        } else {
            self.rollback_to(sp);
            TxnResponse {
                results: None,
                errors: Some(errors),
            }
        }
    }

    /// A transaction of read verbs only; it changes nothing, so no journal is needed.
    pub(super) fn txn_read(&self, ops: &[TxnOp]) -> TxnResponse {
        let mut results = Vec::new();
        let mut errors = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let TxnOp::Kv(kv) = op;
            match self.txn_kv_read(kv) {
                Ok(mut r) => results.append(&mut r),
                Err(what) => errors.push(TxnError { op_index: i, what }),
            }
        }
        if errors.is_empty() {
            TxnResponse {
                results: Some(results),
                errors: None,
            }
        } else {
            TxnResponse {
                results: None,
                errors: Some(errors),
            }
        }
    }

    fn txn_kv(&mut self, idx: u64, now: u64, op: &KvTxnOp) -> Result<Vec<TxnResult>, String> {
        let key = &op.key;
        if key.is_empty() && op.verb != KvVerb::DeleteTree {
            return Err("Must provide key".to_string());
        }
        let entry = match &op.verb {
            KvVerb::Set => Some(self.kv_set(idx, op, false)),
            KvVerb::Cas => {
                if !self.kv_cas(idx, op) {
                    return Err(format!("failed to set key \"{key}\", index is stale"));
                }
                self.kv.get(key).cloned()
            }
            KvVerb::Lock if self.in_lock_delay(key, now) => {
                return Err(format!("failed to lock key \"{key}\" due to lock delay"));
            }
            KvVerb::Lock => match self.kv_lock(idx, op) {
                Ok(true) => self.kv.get(key).cloned(),
                Ok(false) => {
                    return Err(format!(
                        "failed to lock key \"{key}\", lock is already held"
                    ));
                }
                Err(e) => return Err(e.message),
            },
            KvVerb::Unlock => match self.kv_unlock(idx, op) {
                Ok(true) => self.kv.get(key).cloned(),
                Ok(false) => {
                    return Err(format!(
                        "failed to unlock key \"{key}\", lock isn't held, or is held by another session"
                    ));
                }
                Err(e) => return Err(e.message),
            },
            KvVerb::Delete => {
                self.kv_delete(idx, key);
                None
            }
            KvVerb::DeleteCas => {
                if !self.kv_delete_cas(idx, key, op.index) {
                    return Err(format!("failed to delete key \"{key}\", index is stale"));
                }
                None
            }
            KvVerb::DeleteTree => {
                self.kv_delete_tree(idx, key);
                None
            }
            _ => return self.txn_kv_read(op),
        };
        Ok(entry
            .map(|e| TxnResult::Kv(without_value(e)))
            .into_iter()
            .collect())
    }

    fn txn_kv_read(&self, op: &KvTxnOp) -> Result<Vec<TxnResult>, String> {
        let key = &op.key;
        let current = self.kv.get(key);
        let result = match &op.verb {
            KvVerb::Get => match current {
                Some(e) => TxnResult::Kv(e.clone()),
                None => return Err(format!("key \"{key}\" doesn't exist")),
            },
            KvVerb::GetOrEmpty => TxnResult::Kv(current.cloned().unwrap_or_else(|| KvPair {
                key: key.clone(),
                ..KvPair::default()
            })),
            KvVerb::GetTree => {
                return Ok(self.kv_range(key).cloned().map(TxnResult::Kv).collect());
            }
            KvVerb::CheckIndex => match current {
                None => {
                    return Err(format!(
                        "failed to check index, key \"{key}\" doesn't exist"
                    ));
                }
                Some(e) if e.modify_index != op.index => {
                    return Err(format!(
                        "failed index check for key \"{key}\", current modify index {} != {}",
                        e.modify_index, op.index
                    ));
                }
                Some(e) => TxnResult::Kv(without_value(e.clone())),
            },
            KvVerb::CheckSession => match current {
                None => {
                    return Err(format!(
                        "failed to check session, key \"{key}\" doesn't exist"
                    ));
                }
                Some(e) if e.session != op.session => {
                    return Err(format!(
                        "failed session check for key \"{key}\", current session \"{}\" != \"{}\"",
                        e.session, op.session
                    ));
                }
                Some(e) => TxnResult::Kv(without_value(e.clone())),
            },
            KvVerb::CheckNotExists => {
                if current.is_some() {
                    return Err(format!("key \"{key}\" exists"));
                }
                return Ok(Vec::new());
            }
            KvVerb::Unknown(verb) => return Err(format!("unknown KV verb \"{verb}\"")),
            write => {
                return Err(format!(
                    "verb \"{}\" changes data and cannot run in a read-only transaction",
                    write.as_str()
                ));
            }
        };
        Ok(vec![result])
    }
}

/// Results of non-`get` verbs carry no value, as in Consul.
fn without_value(mut e: KvPair) -> KvPair {
    e.value = None;
    e
}
