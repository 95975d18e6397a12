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
