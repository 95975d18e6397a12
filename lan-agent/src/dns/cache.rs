//! Service answers already built, reused while the catalog they came from is unchanged.
//!
//! An entry is the answer to one question (the name as asked and the type) before it is
//! shuffled, limited and fitted to the transport, tagged with the catalog index it was
//! built at: the service's own index, which every change an answer could show moves
//! (an instance, its checks, its node). A lookup first asks the agent's own state store
//! for that index (`Rpc::local_index`, a map lookup) and uses the entry only when it is
//! the same, so a cached answer is never older than the catalog the agent serves. Agents
//! without a local store (client agents), other datacenters and `allow_stale = false`
//! are not cached: their index is not known without asking a server.

use std::collections::HashMap;
use std::sync::Mutex;

use hickory_proto::rr::{Name, RecordType};

use super::records::Answer;

/// Entries kept at most; past it the cache starts again empty (an ordinary agent asks
/// for far fewer names).
const MAX_ENTRIES: usize = 10_000;

const METRIC_HITS: &str = "cairn_dns_cache_hits_total";
const METRIC_MISSES: &str = "cairn_dns_cache_misses_total";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Key {
    /// The name as asked: records are owned by it, case included.
    name: String,
    qtype: u16,
}

impl Key {
    pub(super) fn new(owner: &Name, qtype: RecordType) -> Self {
        Self {
            name: owner.to_string(),
            qtype: u16::from(qtype),
        }
    }
}

#[derive(Debug)]
struct Entry {
    index: u64,
    answer: Answer,
}

#[derive(Debug, Default)]
pub(super) struct AnswerCache {
    entries: Mutex<HashMap<Key, Entry>>,
}

impl AnswerCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The answer built at `index`, if that is what is cached.
    pub(super) fn get(&self, key: &Key, index: u64) -> Option<Answer> {
        let hit = self
            .lock()
            .get(key)
            .filter(|e| e.index == index)
            .map(|e| e.answer.clone());
        let metric = if hit.is_some() {
            METRIC_HITS
        } else {
            METRIC_MISSES
        };
        metrics::counter!(metric).increment(1);
        hit
    }

    pub(super) fn put(&self, key: Key, index: u64, answer: Answer) {
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            entries.clear();
        }
        entries.insert(key, Entry { index, answer });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::ResponseCode;

    #[test]
    fn an_entry_serves_only_its_own_index() {
        let c = AnswerCache::default();
        let name = Name::from_ascii("web.service.consul.").unwrap();
        let key = Key::new(&name, RecordType::A);
        assert!(c.get(&key, 5).is_none());
        c.put(key.clone(), 5, Answer::code(ResponseCode::NoError));
        assert!(c.get(&key, 5).is_some());
        assert!(c.get(&key, 6).is_none(), "a newer catalog misses");
        assert!(c.get(&Key::new(&name, RecordType::SRV), 5).is_none());
    }
}
