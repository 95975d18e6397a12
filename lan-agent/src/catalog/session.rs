//! Sessions on the store: creation checks the node and its checks, invalidation releases
//! or deletes held keys and starts their lock-delay.
//!
//! TTL expiry is not decided here: the leader keeps the timers and writes a destroy when
//! one fires, so `apply` stays free of clocks.

use cairn_shared::api::{CheckStatus, KvPair, Session, SessionBehavior};
use cairn_shared::rpc::RpcError;

use super::{Store, Table};

/// Consul's `MaxLockDelay`, 60s.
const MAX_LOCK_DELAY_NS: u64 = 60_000_000_000;

impl Store {
    pub(super) fn session_create(&mut self, idx: u64, s: &Session) -> Result<(), RpcError> {
        if s.id.is_empty() {
            return Err(RpcError::internal(
                "invariant: session ID is set by the leader",
            ));
        }
        if self.sessions.contains_key(&s.id) {
            return Err(RpcError::internal(format!(
                "Session ID '{}' is already in use",
                s.id
            )));
        }
        if !self.nodes.contains_key(&s.node) {
            return Err(RpcError::internal("Missing node registration"));
        }
        for check in s.check_ids() {
            match self.check(&s.node, check) {
                None => {
                    return Err(RpcError::internal(format!(
                        "Missing check '{check}' registration"
                    )));
                }
                Some(c) if c.status == CheckStatus::Critical => {
                    return Err(RpcError::internal(format!(
                        "Check '{check}' is in critical state"
                    )));
                }
                Some(_) => {}
            }
        }
        let mut session = s.clone();
        session.create_index = idx;
        session.modify_index = idx;
        self.put_session(session);
        self.bump(Table::Sessions, idx);
        Ok(())
    }

    /// Destroys a session for any reason (explicit destroy, TTL, failed check, node gone):
    /// its keys are released or deleted per its behavior, and each gets the lock-delay.
    pub(super) fn session_destroy(&mut self, idx: u64, now: u64, id: &str) {
        let Some(session) = self.remove_session(id) else {
            return;
        };
        self.prune_lock_delays(now);
        // Consul caps the delay when it applies it, not when the session is created.
        let delay_ms = session.lock_delay.min(MAX_LOCK_DELAY_NS) / 1_000_000;
        let held: Vec<KvPair> = self
            .kv
            .values()
            .filter(|e| e.session == session.id)
            .cloned()
            .collect();
        for entry in held {
            match session.behavior {
                SessionBehavior::Release => {
                    self.put_kv(KvPair {
                        session: String::new(),
                        modify_index: idx,
                        ..entry.clone()
                    });
                }
                SessionBehavior::Delete => {
                    self.remove_kv(&entry.key, idx);
                }
            }
            if delay_ms > 0 {
                self.set_lock_delay(&entry.key, now + delay_ms);
            }
            self.bump(Table::Kvs, idx);
        }
        self.remove_queries_of_session(idx, &session.id);
        self.bump(Table::Sessions, idx);
    }

    /// Sessions that must die because one of their checks went critical or was removed.
    pub(super) fn sessions_bound_to(&self, node: &str, check: &str) -> Vec<String> {
        self.sessions
            .values()
            .filter(|s| s.node == node && s.check_ids().any(|c| c == check))
            .map(|s| s.id.clone())
            .collect()
    }

    /// Sessions that live on a node.
    pub(super) fn sessions_on(&self, node: &str) -> Vec<String> {
        self.sessions
            .values()
            .filter(|s| s.node == node)
            .map(|s| s.id.clone())
            .collect()
    }
}
