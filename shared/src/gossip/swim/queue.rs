//! Transmit-limited broadcast queue (memberlist's `TransmitLimitedQueue`).
//!
//! Each queued message carries the number of times it has been sent. When
//! packing a datagram we walk the queue by *tier* (transmit count, fewest
//! first); within a tier we take the largest message that still fits, ties
//! broken newest first. A message is dropped once it has been sent
//! `retransmit_limit(mult, n)` times.
//!
//! Named entries (membership updates are named after the node they describe)
//! invalidate any queued entry with the same name, so a newer alive/suspect/dead
//! about a node replaces the stale one instead of competing with it. Unnamed
//! entries (user broadcasts) never invalidate anything.
//!
//! Invariant: `by_name` maps exactly the names of the named entries in `tree`
//! to their keys.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use crate::gossip::swim::config::retransmit_limit;

/// Ordering key: (transmits asc, length desc, id desc).
type Key = (u32, Reverse<usize>, Reverse<u64>);

#[derive(Clone, Debug)]
struct Item {
    name: Option<String>,
    msg: Vec<u8>,
    /// Set for the broadcast of our own leave; tracked so the host can wait for it.
    leave_marker: bool,
}

/// Queue of pending broadcasts with per-message retransmit accounting.
#[derive(Clone, Debug, Default)]
pub struct TransmitLimitedQueue {
    tree: BTreeMap<Key, Item>,
    by_name: HashMap<String, Key>,
    id_gen: u64,
    leave_finished: bool,
}

impl TransmitLimitedQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of queued messages.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Queues a message. A `Some(name)` replaces any queued message with the same name.
    pub fn queue(&mut self, name: Option<&str>, msg: Vec<u8>) {
        self.queue_inner(name, msg, false);
    }

    /// Queues our own leave announcement; [`Self::take_leave_finished`] reports
    /// when it has been fully retransmitted or superseded.
    pub fn queue_leave(&mut self, name: &str, msg: Vec<u8>) {
        self.queue_inner(Some(name), msg, true);
    }

    fn queue_inner(&mut self, name: Option<&str>, msg: Vec<u8>, leave_marker: bool) {
        if let Some(name) = name
            && let Some(old) = self.by_name.remove(name)
            && let Some(item) = self.tree.remove(&old)
        {
            self.finished(&item);
        }
        self.id_gen = self.id_gen.wrapping_add(1);
        let key = (0, Reverse(msg.len()), Reverse(self.id_gen));
        if let Some(name) = name {
            self.by_name.insert(name.to_owned(), key);
        }
        self.tree.insert(
            key,
            Item {
                name: name.map(str::to_owned),
                msg,
                leave_marker,
            },
        );
    }

    fn finished(&mut self, item: &Item) {
        if item.leave_marker {
            self.leave_finished = true;
        }
    }

    fn remove(&mut self, key: &Key) -> Option<Item> {
        let item = self.tree.remove(key)?;
        if let Some(name) = &item.name
            && self.by_name.get(name) == Some(key)
        {
            self.by_name.remove(name);
        }
        if self.tree.is_empty() {
            self.id_gen = 0;
        }
        Some(item)
    }

    /// True once (and only the first time after) the leave broadcast finished.
    pub fn take_leave_finished(&mut self) -> bool {
        std::mem::take(&mut self.leave_finished)
    }

    /// Whether a leave broadcast is still queued.
    pub fn has_leave_pending(&self) -> bool {
        self.tree.values().any(|i| i.leave_marker)
    }

    /// Takes up to `max_count` messages whose sizes plus `overhead` each fit
    /// in `limit` bytes, for a cluster of `n` nodes. Each returned message's
    /// transmit count is bumped; messages reaching the retransmit limit are removed.
    pub fn get_broadcasts(
        &mut self,
        overhead: usize,
        limit: usize,
        max_count: usize,
        retransmit_mult: u32,
        n: usize,
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if self.tree.is_empty() || max_count == 0 {
            return out;
        }
        let transmit_limit = retransmit_limit(retransmit_mult, n);
        let (Some(min_tier), Some(max_tier)) = (
            self.tree.keys().next().map(|k| k.0),
            self.tree.keys().next_back().map(|k| k.0),
        ) else {
            return out;
        };
        let mut used = 0usize;
        let mut reinsert: Vec<(Key, Item)> = Vec::new();
        let mut tier = min_tier;
        while tier <= max_tier && out.len() < max_count {
            let Some(free) = limit.checked_sub(used + overhead).filter(|f| *f > 0) else {
                break;
            };
            // First key in this tier whose message length is <= free.
            let lo: Key = (tier, Reverse(free), Reverse(u64::MAX));
            let hi: Key = (
                tier.saturating_add(1),
                Reverse(usize::MAX),
                Reverse(u64::MAX),
            );
            let found = self.tree.range(lo..hi).next().map(|(k, _)| *k);
            let Some(key) = found else {
                tier += 1;
                continue;
            };
            let Some(item) = self.remove(&key) else {
                tier += 1;
                continue;
            };
            used += overhead + item.msg.len();
            out.push(item.msg.clone());
            let transmits = key.0 + 1;
            if transmits >= transmit_limit {
                self.finished(&item);
            } else {
                // Reinsert after the walk so we do not meet it again in the next tier.
                reinsert.push(((transmits, key.1, key.2), item));
            }
        }
        for (key, item) in reinsert {
            if let Some(name) = &item.name {
                // A same-named broadcast cannot have been queued meanwhile
                // (we hold &mut self), so the name slot is free.
                self.by_name.insert(name.clone(), key);
            }
            self.tree.insert(key, item);
        }
        out
    }

    /// Drops the most-transmitted (then smallest, oldest) messages until at
    /// most `max_retain` remain.
    pub fn prune(&mut self, max_retain: usize) {
        while self.tree.len() > max_retain {
            let Some(key) = self.tree.keys().next_back().copied() else {
                break;
            };
            if let Some(item) = self.remove(&key) {
                self.finished(&item);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q_with(names: &[&str]) -> TransmitLimitedQueue {
        let mut q = TransmitLimitedQueue::new();
        for n in names {
            q.queue(Some(n), format!("msg-{n}").into_bytes());
        }
        q
    }

    #[test]
    fn named_entries_invalidate() {
        let mut q = q_with(&["a", "b"]);
        q.queue(Some("a"), b"newer-a".to_vec());
        assert_eq!(q.len(), 2);
        let got = q.get_broadcasts(2, 1000, 255, 1, 10);
        assert!(got.contains(&b"newer-a".to_vec()));
        assert!(!got.contains(&b"msg-a".to_vec()));
    }

    #[test]
    fn unnamed_entries_do_not_invalidate() {
        let mut q = TransmitLimitedQueue::new();
        q.queue(None, b"x".to_vec());
        q.queue(None, b"x".to_vec());
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn fresh_and_large_first_then_limit() {
        let mut q = TransmitLimitedQueue::new();
        q.queue(Some("small"), vec![1; 10]);
        q.queue(Some("big"), vec![2; 30]);
        // Room for only one message of 30 + 2 overhead.
        let got = q.get_broadcasts(2, 33, 255, 3, 1);
        assert_eq!(got, vec![vec![2; 30]]);
        // Next round: tier 0 still has "small", which goes first.
        let got = q.get_broadcasts(2, 13, 255, 3, 1);
        assert_eq!(got, vec![vec![1; 10]]);
        // retransmit_limit(3, 1) = 3 transmissions each, then gone.
        for _ in 0..2 {
            assert_eq!(q.get_broadcasts(2, 1000, 255, 3, 1).len(), 2);
        }
        assert!(q.is_empty());
        assert!(q.get_broadcasts(2, 1000, 255, 3, 1).is_empty());
    }

    #[test]
    fn respects_byte_and_count_limits() {
        let mut q = TransmitLimitedQueue::new();
        for i in 0..100u8 {
            q.queue(None, vec![i; 20]);
        }
        let got = q.get_broadcasts(2, 1400, 255, 4, 200);
        let bytes: usize = got.iter().map(|m| m.len() + 2).sum();
        assert!(bytes <= 1400);
        assert_eq!(got.len(), 1400 / 22);
        let got = q.get_broadcasts(2, 1400, 5, 4, 200);
        assert_eq!(got.len(), 5);
    }

    #[test]
    fn leave_marker_reports_completion() {
        let mut q = TransmitLimitedQueue::new();
        q.queue_leave("me", b"dead-me".to_vec());
        assert!(q.has_leave_pending());
        assert!(!q.take_leave_finished());
        for _ in 0..3 {
            q.get_broadcasts(2, 100, 255, 3, 1);
        }
        assert!(!q.has_leave_pending());
        assert!(q.take_leave_finished());
        assert!(!q.take_leave_finished());
    }

    #[test]
    fn prune_keeps_freshest() {
        let mut q = TransmitLimitedQueue::new();
        for i in 0..10u8 {
            q.queue(None, vec![i]);
        }
        q.get_broadcasts(2, 9, 255, 10, 10); // bumps three messages to tier 1
        q.prune(7);
        assert_eq!(q.len(), 7);
        assert!(q.tree.keys().all(|k| k.0 == 0));
    }
}
