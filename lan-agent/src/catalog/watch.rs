//! Fine-grained wake-ups for blocking queries.
//!
//! A blocking query registers the [`WatchKey`]s it reads (an exact KV key, a KV prefix, a
//! table) before it reads, then sleeps on its [`Watch`]. Each applied command reports the
//! [`Change`]s it made; the hub wakes only the watches those changes touch. A write to
//! `b/x` therefore wakes no watcher of `a/`, unlike Consul's table-wide wake-ups.
//!
//! A wake-up is a hint, never an answer: the woken query re-reads and compares indexes, so
//! a spurious wake-up costs a read but cannot return wrong data.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::Table;

/// Something a blocking query reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WatchKey {
    /// One KV key.
    KvKey(String),
    /// Every KV key under a prefix.
    KvPrefix(String),
    /// Anything about one node (itself, its services, its checks).
    Node(String),
    /// Anything a health read of one service name shows.
    Service(String),
    Table(Table),
}

/// Something an applied command changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// One KV key was written or deleted.
    Kv(String),
    Node(String),
    Service(String),
    Table(Table),
}

type Waiters = HashMap<u64, Arc<Notify>>;

#[derive(Default)]
struct Registry {
    next_id: u64,
    kv_keys: BTreeMap<String, Waiters>,
    kv_prefixes: BTreeMap<String, Waiters>,
    nodes: BTreeMap<String, Waiters>,
    services: BTreeMap<String, Waiters>,
    tables: BTreeMap<Table, Waiters>,
    /// How many watches have been woken; tests use it to prove unrelated writes wake none.
    wakeups: u64,
}

/// The registry of sleeping blocking queries.
#[derive(Default, Clone)]
pub struct WatchHub {
    inner: Arc<Mutex<Registry>>,
}

impl std::fmt::Debug for WatchHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchHub").finish_non_exhaustive()
    }
}

/// A registration; dropping it unregisters.
pub struct Watch {
    hub: WatchHub,
    id: u64,
    keys: Vec<WatchKey>,
    notify: Arc<Notify>,
}

impl Watch {
    /// Resolves once any watched key changes after registration.
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut reg = self.hub.lock();
        for key in &self.keys {
            match key {
                WatchKey::KvKey(k) => remove(&mut reg.kv_keys, k, self.id),
                WatchKey::KvPrefix(k) => remove(&mut reg.kv_prefixes, k, self.id),
                WatchKey::Node(k) => remove(&mut reg.nodes, k, self.id),
                WatchKey::Service(k) => remove(&mut reg.services, k, self.id),
                WatchKey::Table(t) => remove(&mut reg.tables, t, self.id),
            }
        }
    }
}

fn remove<K: Ord>(map: &mut BTreeMap<K, Waiters>, key: &K, id: u64) {
    if let Some(w) = map.get_mut(key) {
        w.remove(&id);
        if w.is_empty() {
            map.remove(key);
        }
    }
}

impl WatchHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding this lock cannot leave the maps inconsistent (each
        // operation is a single insert or remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers interest in `keys`. Register before reading, so no change between the
    /// read and the sleep is missed.
    pub fn watch(&self, keys: Vec<WatchKey>) -> Watch {
        let notify = Arc::new(Notify::new());
        let mut reg = self.lock();
        reg.next_id += 1;
        let id = reg.next_id;
        for key in &keys {
            let waiters = match key {
                WatchKey::KvKey(k) => reg.kv_keys.entry(k.clone()).or_default(),
                WatchKey::KvPrefix(k) => reg.kv_prefixes.entry(k.clone()).or_default(),
                WatchKey::Node(k) => reg.nodes.entry(k.clone()).or_default(),
                WatchKey::Service(k) => reg.services.entry(k.clone()).or_default(),
                WatchKey::Table(t) => reg.tables.entry(*t).or_default(),
            };
            waiters.insert(id, notify.clone());
        }
        drop(reg);
        Watch {
            hub: self.clone(),
            id,
            keys,
            notify,
        }
    }

    /// Wakes every watch that reads something in `changes`.
    pub fn notify(&self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let mut reg = self.lock();
        let mut woken: HashMap<u64, Arc<Notify>> = HashMap::new();
        for change in changes {
            match change {
                Change::Kv(key) => {
                    if let Some(w) = reg.kv_keys.get(key) {
                        woken.extend(w.iter().map(|(i, n)| (*i, n.clone())));
                    }
                    // Every prefix of the key, including "" and the key itself.
                    let bounds = key
                        .char_indices()
                        .map(|(i, _)| i)
                        .chain(std::iter::once(key.len()));
                    for end in bounds {
                        if let Some(w) = reg.kv_prefixes.get(&key[..end]) {
                            woken.extend(w.iter().map(|(i, n)| (*i, n.clone())));
                        }
                    }
                }
                Change::Node(k) => {
                    if let Some(w) = reg.nodes.get(k) {
                        woken.extend(w.iter().map(|(i, n)| (*i, n.clone())));
                    }
                }
                Change::Service(k) => {
                    if let Some(w) = reg.services.get(k) {
                        woken.extend(w.iter().map(|(i, n)| (*i, n.clone())));
                    }
                }
                Change::Table(t) => {
                    if let Some(w) = reg.tables.get(t) {
                        woken.extend(w.iter().map(|(i, n)| (*i, n.clone())));
                    }
                }
            }
        }
        reg.wakeups += woken.len() as u64;
        drop(reg);
        for n in woken.values() {
            // One sleeper per Notify, so a stored permit covers a wake-up that lands
            // between registration and the first await.
            n.notify_one();
        }
    }

    /// Wakes every registered watch.
    pub fn notify_all(&self) {
        let mut reg = self.lock();
        let mut woken: HashMap<u64, Arc<Notify>> = HashMap::new();
        let maps = [
            reg.kv_keys.values().collect::<Vec<_>>(),
            reg.kv_prefixes.values().collect(),
            reg.nodes.values().collect(),
            reg.services.values().collect(),
        ];
        for w in maps.into_iter().flatten().chain(reg.tables.values()) {
            woken.extend(w.iter().map(|(i, n)| (*i, n.clone())));
        }
        reg.wakeups += woken.len() as u64;
        drop(reg);
        for n in woken.values() {
            n.notify_one();
        }
    }

    /// Total watches woken so far.
    pub fn wakeups(&self) -> u64 {
        self.lock().wakeups
    }

    /// Watches currently registered.
    pub fn len(&self) -> usize {
        let reg = self.lock();
        let all = reg
            .kv_keys
            .values()
            .chain(reg.kv_prefixes.values())
            .chain(reg.nodes.values())
            .chain(reg.services.values())
            .chain(reg.tables.values())
            .flat_map(|w| w.keys());
        let mut ids: Vec<u64> = all.copied().collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn fires(w: &Watch) -> bool {
        tokio::time::timeout(Duration::from_millis(20), w.changed())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn prefix_watch_ignores_unrelated_keys() {
        let hub = WatchHub::default();
        let a = hub.watch(vec![WatchKey::KvPrefix("a/".into())]);
        hub.notify(&[Change::Kv("b/x".into()), Change::Kv("a".into())]);
        assert!(!fires(&a).await);
        assert_eq!(hub.wakeups(), 0);
        hub.notify(&[Change::Kv("a/deep/key".into())]);
        assert!(fires(&a).await);
        assert_eq!(hub.wakeups(), 1);
    }

    #[tokio::test]
    async fn key_watch_is_exact() {
        let hub = WatchHub::default();
        let a = hub.watch(vec![WatchKey::KvKey("a".into())]);
        hub.notify(&[Change::Kv("ab".into())]);
        assert!(!fires(&a).await);
        hub.notify(&[Change::Kv("a".into())]);
        assert!(fires(&a).await);
    }

    #[tokio::test]
    async fn empty_prefix_sees_everything_and_tables_are_separate() {
        let hub = WatchHub::default();
        let all = hub.watch(vec![WatchKey::KvPrefix(String::new())]);
        let sessions = hub.watch(vec![WatchKey::Table(Table::Sessions)]);
        hub.notify(&[Change::Kv("zzz".into())]);
        assert!(fires(&all).await);
        assert!(!fires(&sessions).await);
        hub.notify(&[Change::Table(Table::Sessions)]);
        assert!(fires(&sessions).await);
    }

    #[test]
    fn dropping_a_watch_unregisters_it() {
        let hub = WatchHub::default();
        let w = hub.watch(vec![
            WatchKey::KvKey("k".into()),
            WatchKey::KvPrefix("p".into()),
            WatchKey::Table(Table::Kvs),
        ]);
        assert_eq!(hub.len(), 1);
        drop(w);
        assert!(hub.is_empty());
    }
}
