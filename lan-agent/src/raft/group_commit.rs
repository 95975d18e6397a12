//! Group commit for the Raft log: one thread owns the writes to `raft.redb`, and every
//! write queued while a commit (and its fsync) runs joins the next one, so a burst of
//! proposals costs one fsync, not one each.
//!
//! Appends do not wait: they are queued and report through a callback once their commit
//! has returned, which is what openraft's `LogFlushed` is for. The leader therefore
//! replicates entries while its own fsync runs, and counts itself towards the quorum only
//! after it. Queued entries are readable at once from [`Pending`] (replication reads them
//! before they reach the file); they leave it only after their commit, so a reader that
//! looks at `Pending` first and the file second never misses one.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Counts commits that were fsynced; with the entries counter it gives fsyncs per write.
pub(super) const METRIC_FSYNCS: &str = "cairn_raft_log_fsyncs_total";
/// Counts log entries written.
pub(super) const METRIC_ENTRIES: &str = "cairn_raft_log_entries_total";

/// An upper bound on the writes one commit takes, so a flood cannot grow one transaction
/// without limit.
const MAX_OPS_PER_COMMIT: usize = 1024;

/// Called once with the outcome of the commit that carried a write.
pub(super) type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

/// One write, in the order it was queued.
pub(super) enum Op {
    /// Sealed entries by index.
    Append {
        rows: Vec<(u64, Arc<[u8]>)>,
        done: Done,
    },
    /// A meta value (`None` removes it). `durable: false` is for what may be lost in a
    /// crash (the committed pointer, which openraft treats as a hint): it rides along
    /// with the next durable commit, or goes unsynced when alone.
    Meta {
        key: &'static str,
        value: Option<Vec<u8>>,
        durable: bool,
        done: Option<Done>,
    },
    /// Deletes entries from `since` on.
    Truncate { since: u64, done: Done },
    /// Writes nothing; done once every write queued before it is committed.
    Barrier { done: Done },
    /// Deletes entries up to `upto` and stores the last purged id (`value`) with it.
    Purge {
        upto: u64,
        value: Vec<u8>,
        done: Done,
    },
}

impl Op {
    fn durable(&self) -> bool {
        !matches!(self, Op::Meta { durable: false, .. } | Op::Barrier { .. })
    }

    fn finish(self, outcome: Result<(), String>) {
        match self {
            Op::Append { done, .. }
            | Op::Truncate { done, .. }
            | Op::Purge { done, .. }
            | Op::Barrier { done } => done(outcome),
            Op::Meta { done, .. } => {
                if let Some(done) = done {
                    done(outcome)
                }
            }
        }
    }
}

/// Entries queued but not yet committed, by index.
#[derive(Debug, Default)]
pub(super) struct Pending(Mutex<BTreeMap<u64, Arc<[u8]>>>);

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<[u8]>>> {
        // The map stays consistent whatever panicked while holding it.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn insert(&self, rows: &[(u64, Arc<[u8]>)]) {
        let mut map = self.lock();
        for (index, value) in rows {
            map.insert(*index, Arc::clone(value));
        }
    }

    /// The queued entries in `start..end` (`end` `None`: unbounded).
    pub(super) fn range(&self, start: u64, end: Option<u64>) -> Vec<(u64, Arc<[u8]>)> {
        let map = self.lock();
        let rows = match end {
            Some(end) => map.range(start..end),
            None => map.range(start..),
        };
        rows.map(|(k, v)| (*k, Arc::clone(v))).collect()
    }

    pub(super) fn last(&self) -> Option<(u64, Arc<[u8]>)> {
        self.lock()
            .last_key_value()
            .map(|(k, v)| (*k, Arc::clone(v)))
    }

    /// Drops rows that are now in the file, unless the index was queued again since.
    fn remove_committed(&self, rows: &[(u64, Arc<[u8]>)]) {
        let mut map = self.lock();
        for (index, value) in rows {
            if map.get(index).is_some_and(|v| Arc::ptr_eq(v, value)) {
                map.remove(index);
            }
        }
    }
}

/// The writer thread and its queue. Dropping it lets the queue drain and joins the thread,
/// so the database is closed when the last store handle is gone.
pub(super) struct Writer {
    tx: Option<mpsc::Sender<Op>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread. `commit(ops, durable)` writes `ops` in order in one transaction,
    /// fsynced when `durable`.
    pub(super) fn start<F>(name: String, pending: Arc<Pending>, mut commit: F) -> Self
    where
        F: FnMut(&[Op], bool) -> Result<(), String> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Op>();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_OPS_PER_COMMIT {
                        match rx.try_recv() {
                            Ok(op) => batch.push(op),
                            Err(_) => break,
                        }
                    }
                    let durable = batch.iter().any(Op::durable);
                    let outcome = commit(&batch, durable);
                    if durable && outcome.is_ok() {
                        metrics::counter!(METRIC_FSYNCS).increment(1);
                    }
                    for op in batch {
                        if let (Op::Append { rows, .. }, Ok(())) = (&op, &outcome) {
                            pending.remove_committed(rows);
                        }
                        op.finish(outcome.clone());
                    }
                }
            })
            .ok();
        Self {
            tx: Some(tx),
            thread,
        }
    }

    /// Queues a write; if the thread is gone, the write fails at once.
    pub(super) fn submit(&self, op: Op) {
        let Some(tx) = &self.tx else {
            return op.finish(Err("the log writer has stopped".into()));
        };
        if let Err(mpsc::SendError(op)) = tx.send(op) {
            op.finish(Err("the log writer has stopped".into()));
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn row(index: u64, byte: u8) -> (u64, Arc<[u8]>) {
        (index, Arc::from(vec![byte]))
    }

    /// Writes queued while a commit runs go together in the next one, in order, and each
    /// is told the outcome of the commit that carried it.
    #[test]
    fn writes_queued_during_a_commit_share_the_next() {
        let pending = Arc::new(Pending::default());
        let commits = Arc::new(Mutex::new(Vec::<Vec<u64>>::new()));
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let seen = Arc::clone(&commits);
        let writer = Writer::start("test-writer".into(), Arc::clone(&pending), move |ops, _| {
            // Hold the first commit until the test has queued more behind it.
            if seen.lock().unwrap().is_empty() {
                started_tx.send(()).unwrap();
                gate_rx.recv().unwrap();
            }
            let indexes = ops
                .iter()
                .flat_map(|op| match op {
                    Op::Append { rows, .. } => rows.iter().map(|r| r.0).collect(),
                    _ => Vec::new(),
                })
                .collect();
            seen.lock().unwrap().push(indexes);
            Ok(())
        });
        let acked = Arc::new(AtomicUsize::new(0));
        let append = |index: u64| {
            let rows = vec![row(index, index as u8)];
            pending.insert(&rows);
            let acked = Arc::clone(&acked);
            writer.submit(Op::Append {
                rows,
                done: Box::new(move |r| {
                    assert!(r.is_ok());
                    acked.fetch_add(1, Ordering::SeqCst);
                }),
            });
        };
        append(1);
        started_rx.recv().unwrap();
        for i in 2..=10 {
            append(i);
        }
        // Nothing is acknowledged, everything is readable, while the first commit runs.
        assert_eq!(acked.load(Ordering::SeqCst), 0);
        assert_eq!(pending.range(1, None).len(), 10);
        gate_tx.send(()).unwrap();
        drop(writer); // drains the queue and joins the thread
        assert_eq!(acked.load(Ordering::SeqCst), 10);
        assert_eq!(
            *commits.lock().unwrap(),
            vec![vec![1], (2..=10).collect::<Vec<_>>()]
        );
        assert!(pending.last().is_none(), "committed rows leave Pending");
    }

    /// A failed commit fails every write it carried and leaves their rows readable, and an
    /// unsynced meta write alone does not count as an fsync.
    #[test]
    fn a_failed_commit_fails_its_writes() {
        let pending = Arc::new(Pending::default());
        let durables = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&durables);
        let writer = Writer::start("test-writer".into(), Arc::clone(&pending), move |ops, d| {
            seen.lock().unwrap().push(d);
            match ops.first() {
                Some(Op::Append { .. }) => Err("disk on fire".into()),
                _ => Ok(()),
            }
        });
        let rows = vec![row(7, 1)];
        pending.insert(&rows);
        let (tx, rx) = mpsc::channel();
        writer.submit(Op::Append {
            rows,
            done: Box::new(move |r| tx.send(r).unwrap()),
        });
        assert_eq!(rx.recv().unwrap(), Err("disk on fire".to_string()));
        assert_eq!(pending.last().map(|r| r.0), Some(7));
        writer.submit(Op::Meta {
            key: "k",
            value: None,
            durable: false,
            done: None,
        });
        drop(writer);
        assert_eq!(*durables.lock().unwrap(), vec![true, false]);
    }
}
