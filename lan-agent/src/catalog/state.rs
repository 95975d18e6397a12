//! The shared handle on the store: one writer applying commands, many readers, and the
//! watch hub woken after each apply.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use cairn_shared::rpc::{RpcError, WriteResult};

use super::watch::WatchHub;
use super::{Command, Store};

/// The store behind a lock, with its watch hub.
#[derive(Debug, Default)]
pub struct StateStore {
    store: RwLock<Store>,
    hub: WatchHub,
}

impl StateStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn write(&self) -> RwLockWriteGuard<'_, Store> {
        // A panic inside `apply` would already have stopped the agent's consensus loop;
        // readers may still look at what is there.
        self.store.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a command and wakes the blocking queries it affects.
    pub fn apply(&self, index: u64, cmd: &Command) -> Result<WriteResult, RpcError> {
        let mut store = self.write();
        let result = store.apply(index, cmd);
        let changes = store.take_changes();
        drop(store);
        if Store::is_restore(cmd) {
            self.hub.notify_all();
        } else {
            self.hub.notify(&changes);
        }
        result
    }

    /// Applies a run of committed commands under one write lock, and wakes the blocking
    /// queries they affect once, after the last: what Raft hands over in one batch.
    pub fn apply_batch<T>(&self, f: impl FnOnce(&mut Applier<'_>) -> T) -> T {
        let mut store = self.write();
        let mut applier = Applier {
            store: &mut store,
            restored: false,
        };
        let out = f(&mut applier);
        let restored = applier.restored;
        let changes = store.take_changes();
        drop(store);
        if restored {
            self.hub.notify_all();
        } else {
            self.hub.notify(&changes);
        }
        out
    }

    /// Replaces the whole store (a snapshot was installed) and wakes every blocking query.
    pub fn replace(&self, store: Store) {
        *self.write() = store;
        self.hub.notify_all();
    }

    /// Runs `f` against a consistent view of the store.
    pub fn read<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        f(&self.guard())
    }

    fn guard(&self) -> RwLockReadGuard<'_, Store> {
        self.store.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn hub(&self) -> &WatchHub {
        &self.hub
    }

    pub fn last_index(&self) -> u64 {
        self.guard().last_index()
    }
}

/// The store while [`StateStore::apply_batch`] holds it.
pub struct Applier<'a> {
    store: &'a mut Store,
    restored: bool,
}

impl Applier<'_> {
    /// One result per command: a batch's commands, or the command itself.
    pub fn apply_each(&mut self, index: u64, cmd: &Command) -> Vec<Result<WriteResult, RpcError>> {
        self.restored |= Store::is_restore(cmd);
        self.store.apply_each(index, cmd)
    }
}
