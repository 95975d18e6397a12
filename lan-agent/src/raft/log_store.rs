//! Durable Raft log store for openraft, backed by one redb file (`<dir>/raft.redb`).
//!
//! It holds the log entries, the vote, the committed and last-purged log ids, and small named
//! metadata (e.g. the cluster id). Writes are fsynced before they are acknowledged; they
//! go through one writer thread that commits whatever queued up during the previous
//! commit together (group commit, `group_commit.rs`).
//!
//! Layout: table `log` maps the entry index to `crc32 (4 bytes, LE) ++ rmp(entry)`, table `meta`
//! maps a name to `crc32 ++ rmp(value)`. Raft's own meta keys use the reserved `raft.` prefix.
//!
//! Corruption handling, in layers:
//! - redb is opened with `set_check_integrity_on_open`, so every page checksum of the committed
//!   trees is verified on each open, and a truncated or garbled file is refused.
//! - every commit uses two-phase commit, so redb reports a corrupted latest commit as an error
//!   instead of quietly falling back to the previous commit (which would drop an acknowledged
//!   vote or entry).
//! - our own CRC32 per value, checked on every read and, at open, on the whole meta table and
//!   the newest 64 entries, catches what redb's checksums cannot see: values written with a
//!   valid redb checksum that are still wrong (bugs, foreign writers, format drift).

use std::fmt;
use std::fs;
use std::io;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::group_commit::{self, Op, Pending, Writer};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogId, NodeId, OptionalSend, RaftLogId, RaftLogReader,
    RaftTypeConfig, StorageError, StorageIOError, Vote,
};
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

const FILE_NAME: &str = "raft.redb";
/// Name the file is initialized under, so `raft.redb` either does not exist or is complete.
const INIT_FILE_NAME: &str = "raft.redb.init";

const LOG: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("meta");

/// Keys under this prefix belong to the store itself; `meta_put` refuses them.
const RESERVED_PREFIX: &str = "raft.";
const KEY_VOTE: &str = "raft.vote";
const KEY_COMMITTED: &str = "raft.committed";
const KEY_PURGED: &str = "raft.last_purged_log_id";

/// How many of the newest entries `open` decodes; they are the ones a restart reads first.
const OPEN_SCAN_TAIL: u64 = 64;

/// redb caches up to this much; its 1 GiB default is far more than a Raft log needs.
const CACHE_BYTES: usize = 32 << 20;

/// Errors of [`LogStore`]. Every message names the database file.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("raft log store {}: {context}: {error}", path.display())]
    Io {
        path: PathBuf,
        context: &'static str,
        error: io::Error,
    },
    #[error("raft log store {}: {context}: {error}", path.display())]
    Db {
        path: PathBuf,
        context: &'static str,
        // Boxed: redb's error is large and would bloat every Result.
        error: Box<redb::Error>,
    },
    #[error("raft log store {}: corrupt log entry at index {index}: {detail}", path.display())]
    CorruptEntry {
        path: PathBuf,
        index: u64,
        detail: String,
    },
    #[error("raft log store {}: corrupt meta value {key:?}: {detail}", path.display())]
    CorruptMeta {
        path: PathBuf,
        key: String,
        detail: String,
    },
    /// Values that decode but contradict each other, e.g. a hole in the log.
    #[error("raft log store {}: inconsistent log: {detail}", path.display())]
    Inconsistent { path: PathBuf, detail: String },
    #[error("raft log store {}: cannot encode {what}: {detail}", path.display())]
    Encode {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    /// A caller error: reserved meta key, or an `append_raw` that would break the log.
    #[error("raft log store {}: {detail}", path.display())]
    Rejected { path: PathBuf, detail: String },
    #[error("raft log store {}: blocking task failed: {detail}", path.display())]
    Task { path: PathBuf, detail: String },
    /// A group commit failed; the writer's message names the file.
    #[error("{0}")]
    Commit(String),
}

impl LogStoreError {
    /// True when the file's content is damaged (as opposed to I/O, locking or caller errors):
    /// the node must not start from it.
    pub fn is_corruption(&self) -> bool {
        match self {
            Self::CorruptEntry { .. } | Self::CorruptMeta { .. } | Self::Inconsistent { .. } => {
                true
            }
            Self::Db { error, .. } => match &**error {
                redb::Error::Corrupted(_) => true,
                // redb reports a bad magic number or an empty file as InvalidData, and a file
                // shorter than its header as UnexpectedEof.
                redb::Error::Io(e) => matches!(
                    e.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                ),
                _ => false,
            },
            _ => false,
        }
    }
}

/// openraft log storage on redb. Cheap to clone; clones share one database handle.
///
/// The trait methods run redb work via `tokio::task::spawn_blocking`, so they need a tokio
/// runtime; the inherent methods are plain blocking calls.
pub struct LogStore<C: RaftTypeConfig> {
    inner: Arc<Inner>,
    writer: Arc<Writer>,
    // fn() -> C: the store holds no C, so it must not inherit C's auto traits.
    _config: PhantomData<fn() -> C>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            writer: Arc::clone(&self.writer),
            _config: PhantomData,
        }
    }
}

impl<C: RaftTypeConfig> fmt::Debug for LogStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl<C> LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    /// Opens or creates `<dir>/raft.redb`. Any corruption (redb error on open, a value whose
    /// CRC32 does not match, an undecodable entry found during an open-time scan of the last
    /// entries and of the meta table) is an error whose message names the file path.
    ///
    /// Blocking: reads the whole file to verify redb's page checksums.
    /// The last committed log index openraft saved (0 before any).
    pub fn committed_index(&self) -> u64 {
        self.inner
            .committed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn note_committed(&self, index: Option<u64>) {
        self.inner
            .committed
            .store(index.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn open(dir: &Path) -> Result<Self, LogStoreError> {
        let path = dir.join(FILE_NAME);
        fs::create_dir_all(dir).map_err(io_err(&path, "create directory"))?;
        match fs::metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => init_file(dir, &path)?,
            Err(e) => return Err(io_err(&path, "stat database file")(e)),
        }
        // `open`, not `create`: redb's `create` silently re-initializes an empty file, which
        // would turn a zeroed log into an empty one.
        let db = builder()
            .open(&path)
            .map_err(db_err(&path, "open database"))?;
        let inner = Inner {
            db,
            path,
            committed: Default::default(),
            pending: Arc::default(),
        };
        inner.verify::<C>()?;
        let inner = Arc::new(inner);
        let committer = Arc::clone(&inner);
        let writer = Writer::start(
            "raft-log-writer".into(),
            Arc::clone(&inner.pending),
            move |ops, durable| {
                committer
                    .write_batch(ops, durable)
                    .map_err(|e| e.to_string())
            },
        );
        Ok(Self {
            inner,
            writer: Arc::new(writer),
            _config: PhantomData,
        })
    }

    /// The database file, `<dir>/raft.redb`.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Small named metadata outside Raft's own (e.g. "cluster_id"), stored in the meta table.
    /// Blocking.
    pub fn meta_get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, LogStoreError> {
        self.inner.read_meta(key)
    }

    /// Stores `v` under `key` durably. Keys starting with `raft.` are reserved. Blocking.
    pub fn meta_put<T: Serialize>(&self, key: &str, v: &T) -> Result<(), LogStoreError> {
        if key.starts_with(RESERVED_PREFIX) {
            return Err(self.inner.rejected(format!(
                "meta key {key:?} uses the reserved prefix {RESERVED_PREFIX:?}"
            )));
        }
        let value = seal(&self.inner.path, "meta value", v)?;
        self.inner.write_meta(key, Some(value))
    }

    /// For offline outage recovery (before Raft starts): the last entry. Blocking.
    pub fn last_entry(&self) -> Result<Option<C::Entry>, LogStoreError> {
        self.inner.read(|txn| {
            let log = txn
                .open_table(LOG)
                .map_err(self.inner.db_err("open log table"))?;
            let last = log.last().map_err(self.inner.db_err("read last entry"))?;
            last.map(|(k, v)| decode_entry::<C>(&self.inner.path, k.value(), v.value()))
                .transpose()
        })
    }

    /// For offline outage recovery (before Raft starts): appends one entry directly. It must
    /// directly follow the last entry (or the last purged id) and must not lower the term.
    /// Blocking.
    pub fn append_raw(&self, entry: &C::Entry) -> Result<(), LogStoreError> {
        let id = entry.get_log_id().clone();
        let value = seal(&self.inner.path, "log entry", entry)?;
        self.inner.write(|txn| {
            let mut log = txn
                .open_table(LOG)
                .map_err(self.inner.db_err("open log table"))?;
            let last = log
                .last()
                .map_err(self.inner.db_err("read last entry"))?
                .map(|(k, v)| decode_entry::<C>(&self.inner.path, k.value(), v.value()))
                .transpose()?;
            let prev = match last {
                Some(entry) => Some(entry.get_log_id().clone()),
                None => {
                    let meta = txn
                        .open_table(META)
                        .map_err(self.inner.db_err("open meta table"))?;
                    self.inner
                        .meta_value::<LogId<C::NodeId>>(&meta, KEY_PURGED)?
                }
            };
            // A hole or a lower term would make openraft's view of the log wrong.
            let want = prev.as_ref().map_or(0, |p| p.index + 1);
            if id.index != want || prev.as_ref().is_some_and(|p| *p > id) {
                return Err(self.inner.rejected(format!(
                    "append_raw of {id} does not follow {}",
                    prev.map_or_else(|| "an empty log".to_string(), |p| p.to_string())
                )));
            }
            log.insert(id.index, value.as_slice())
                .map_err(self.inner.db_err("insert log entry"))?;
            Ok(())
        })
    }

    /// Queues a write for the writer thread and waits for the commit that carries it.
    async fn commit(&self, op: impl FnOnce(group_commit::Done) -> Op) -> Result<(), LogStoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writer.submit(op(Box::new(move |outcome| {
            let _ = tx.send(outcome);
        })));
        match rx.await {
            Ok(outcome) => outcome.map_err(LogStoreError::Commit),
            Err(_) => Err(LogStoreError::Commit(format!(
                "raft log store {}: the log writer dropped a write",
                self.inner.path.display()
            ))),
        }
    }

    /// Runs blocking redb work off the async runtime's worker threads.
    async fn blocking<T, F>(&self, f: F) -> Result<T, LogStoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, LogStoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(res) => res,
            Err(e) => Err(LogStoreError::Task {
                path: self.inner.path.clone(),
                detail: e.to_string(),
            }),
        }
    }
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + fmt::Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        // Owned bounds: the range type itself need not be 'static.
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.checked_add(1),
            Bound::Excluded(&e) => Some(e),
            Bound::Unbounded => None,
        };
        self.blocking(move |inner| inner.read_entries::<C>(start, end))
            .await
            .map_err(|e| storage_err(ErrorSubject::Logs, ErrorVerb::Read, &e))
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        let (last_purged_log_id, last) = self
            .blocking(|inner| {
                inner.read(|txn| {
                    let meta = txn
                        .open_table(META)
                        .map_err(inner.db_err("open meta table"))?;
                    let purged = inner.meta_value::<LogId<C::NodeId>>(&meta, KEY_PURGED)?;
                    let log = txn
                        .open_table(LOG)
                        .map_err(inner.db_err("open log table"))?;
                    let last = match log.last().map_err(inner.db_err("read last entry"))? {
                        Some((k, v)) => Some(
                            decode_entry::<C>(&inner.path, k.value(), v.value())?
                                .get_log_id()
                                .clone(),
                        ),
                        None => None,
                    };
                    Ok((purged, last))
                })
            })
            .await
            .map_err(|e| storage_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?;
        // Entries still queued for the file come after everything in it.
        let queued = match self.inner.pending.last() {
            Some((index, value)) => Some(
                decode_entry::<C>(&self.inner.path, index, &value)
                    .map_err(|e| storage_err(ErrorSubject::Logs, ErrorVerb::Read, &e))?
                    .get_log_id()
                    .clone(),
            ),
            None => None,
        };
        let last_log_id = queued.or(last).or_else(|| last_purged_log_id.clone());
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let err = |e: LogStoreError| storage_err(ErrorSubject::Vote, ErrorVerb::Write, &e);
        let value = seal(&self.inner.path, "vote", vote).map_err(err)?;
        self.commit(|done| Op::Meta {
            key: KEY_VOTE,
            value: Some(value),
            durable: true,
            done: Some(done),
        })
        .await
        .map_err(err)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        self.blocking(|inner| inner.read_meta(KEY_VOTE))
            .await
            .map_err(|e| storage_err(ErrorSubject::Vote, ErrorVerb::Read, &e))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<C::NodeId>>,
    ) -> Result<(), StorageError<C::NodeId>> {
        // openraft has no subject for the committed pointer; its examples use Store.
        let err = |e: LogStoreError| storage_err(ErrorSubject::Store, ErrorVerb::Write, &e);
        let index = committed.as_ref().map(|c| c.index);
        let value = committed
            .map(|c| seal(&self.inner.path, "committed log id", &c))
            .transpose()
            .map_err(err)?;
        // None clears the key. Not waited for and not fsynced on its own: openraft treats
        // the committed pointer as a hint (a lower one after a crash only means re-applying
        // entries), so it rides along with the next durable commit.
        self.writer.submit(Op::Meta {
            key: KEY_COMMITTED,
            value,
            durable: false,
            done: None,
        });
        self.note_committed(index);
        Ok(())
    }

    async fn read_committed(
        &mut self,
    ) -> Result<Option<LogId<C::NodeId>>, StorageError<C::NodeId>> {
        // The pointer is written without waiting (`save_committed`): see it first.
        self.commit(|done| Op::Barrier { done })
            .await
            .map_err(|e| storage_err(ErrorSubject::Store, ErrorVerb::Read, &e))?;
        let committed: Option<LogId<C::NodeId>> = self
            .blocking(|inner| inner.read_meta(KEY_COMMITTED))
            .await
            .map_err(|e| storage_err(ErrorSubject::Store, ErrorVerb::Read, &e))?;
        self.note_committed(committed.as_ref().map(|c| c.index));
        Ok(committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows: Vec<(u64, Arc<[u8]>)> = Vec::new();
        for entry in entries {
            let id = entry.get_log_id().clone();
            match seal(&self.inner.path, "log entry", &entry) {
                Ok(value) => rows.push((id.index, value.into())),
                Err(e) => {
                    callback.log_io_completed(Err(io::Error::other(e.to_string())));
                    return Err(storage_err(ErrorSubject::Log(id), ErrorVerb::Write, &e));
                }
            }
        }
        if rows.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        metrics::counter!(group_commit::METRIC_ENTRIES).increment(rows.len() as u64);
        self.inner.pending.insert(&rows);
        // The callback runs only once the commit carrying these rows has been fsynced:
        // reporting earlier would let openraft acknowledge entries a kill -9 could lose.
        self.writer.submit(Op::Append {
            rows,
            done: Box::new(move |outcome| {
                callback.log_io_completed(outcome.map_err(io::Error::other))
            }),
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let since = log_id.index;
        // Queued behind any append still in flight, so the order of the log is kept.
        self.commit(|done| Op::Truncate { since, done })
            .await
            .map_err(|e| storage_err(ErrorSubject::Log(log_id), ErrorVerb::Delete, &e))
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let err = |e: LogStoreError| {
            storage_err(ErrorSubject::Log(log_id.clone()), ErrorVerb::Delete, &e)
        };
        let upto = log_id.index;
        let value = seal(&self.inner.path, "last purged log id", &log_id).map_err(err)?;
        self.commit(|done| Op::Purge { upto, value, done })
            .await
            .map_err(err)
    }
}

/// The shared, non-generic part: the database and its path.
struct Inner {
    db: Database,
    path: PathBuf,
    /// The last committed index saved or read (for `/v1/agent/self`), 0 before any.
    committed: std::sync::atomic::AtomicU64,
    /// Entries queued for the writer thread and not yet committed.
    pending: Arc<Pending>,
}

impl Inner {
    fn db_err<E: Into<redb::Error>>(
        &self,
        context: &'static str,
    ) -> impl FnOnce(E) -> LogStoreError + '_ {
        db_err(&self.path, context)
    }

    fn rejected(&self, detail: String) -> LogStoreError {
        LogStoreError::Rejected {
            path: self.path.clone(),
            detail,
        }
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, LogStoreError>,
    ) -> Result<T, LogStoreError> {
        let txn = self
            .db
            .begin_read()
            .map_err(self.db_err("begin read transaction"))?;
        f(&txn)
    }

    /// Runs `f` in a write transaction and commits it durably; an error from `f` aborts it.
    fn write<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, LogStoreError>,
    ) -> Result<T, LogStoreError> {
        let mut txn = self
            .db
            .begin_write()
            .map_err(self.db_err("begin write transaction"))?;
        // Immediate is redb's default; set it anyway so a default change cannot weaken Raft.
        txn.set_durability(Durability::Immediate)
            .map_err(self.db_err("set durability"))?;
        // With one-phase commit, redb treats a bad latest commit as torn and rolls back to the
        // previous one; two-phase commit makes that an error instead of silent loss.
        txn.set_two_phase_commit(true);
        let out = f(&txn)?;
        txn.commit().map_err(self.db_err("commit"))?;
        Ok(out)
    }

    /// One group commit: `ops` in order in one transaction, fsynced when `durable`.
    fn write_batch(&self, ops: &[Op], durable: bool) -> Result<(), LogStoreError> {
        let mut txn = self
            .db
            .begin_write()
            .map_err(self.db_err("begin write transaction"))?;
        if durable {
            txn.set_durability(Durability::Immediate)
                .map_err(self.db_err("set durability"))?;
            // As in `write`: a torn latest commit is an error, never a silent rollback.
            txn.set_two_phase_commit(true);
        } else {
            txn.set_durability(Durability::None)
                .map_err(self.db_err("set durability"))?;
        }
        {
            let mut log = txn.open_table(LOG).map_err(self.db_err("open log table"))?;
            let mut meta = txn
                .open_table(META)
                .map_err(self.db_err("open meta table"))?;
            for op in ops {
                match op {
                    Op::Append { rows, .. } => {
                        for (index, value) in rows {
                            log.insert(*index, &**value)
                                .map_err(self.db_err("insert log entry"))?;
                        }
                    }
                    Op::Meta { key, value, .. } => match value {
                        Some(v) => meta.insert(*key, v.as_slice()).map(drop),
                        None => meta.remove(*key).map(drop),
                    }
                    .map_err(self.db_err("write meta value"))?,
                    Op::Barrier { .. } => {}
                    Op::Truncate { since, .. } => log
                        .retain_in(*since.., |_, _| false)
                        .map_err(self.db_err("delete log entries"))?,
                    // One transaction: the pointer and the deletion are never seen apart.
                    Op::Purge { upto, value, .. } => {
                        log.retain_in(..=*upto, |_, _| false)
                            .map_err(self.db_err("delete log entries"))?;
                        meta.insert(KEY_PURGED, value.as_slice())
                            .map_err(self.db_err("write last purged log id"))?;
                    }
                }
            }
        }
        txn.commit().map_err(self.db_err("commit"))
    }

    fn read_entries<C: RaftTypeConfig>(
        &self,
        start: u64,
        end: Option<u64>,
    ) -> Result<Vec<C::Entry>, LogStoreError>
    where
        C::Entry: DeserializeOwned,
    {
        if end.is_some_and(|e| e <= start) {
            return Ok(Vec::new());
        }
        // Queued entries first, the file second: a row leaves `pending` only after its
        // commit, so it is in one or the other (or both) whenever it is looked for.
        let queued = self.pending.range(start, end);
        let file_end = match (end, queued.first()) {
            (Some(e), Some(q)) => Some(e.min(q.0)),
            (e, q) => e.or(q.map(|q| q.0)),
        };
        let mut out = if file_end.is_some_and(|e| e <= start) {
            Vec::new()
        } else {
            self.read_file_entries::<C>(start, file_end)?
        };
        for (index, value) in &queued {
            out.push(decode_entry::<C>(&self.path, *index, value)?);
        }
        Ok(out)
    }

    fn read_file_entries<C: RaftTypeConfig>(
        &self,
        start: u64,
        end: Option<u64>,
    ) -> Result<Vec<C::Entry>, LogStoreError>
    where
        C::Entry: DeserializeOwned,
    {
        self.read(|txn| {
            let log = txn.open_table(LOG).map_err(self.db_err("open log table"))?;
            let range = match end {
                Some(end) => log.range(start..end),
                None => log.range(start..),
            }
            .map_err(self.db_err("read log range"))?;
            let mut out = Vec::new();
            for row in range {
                let (k, v) = row.map_err(self.db_err("read log entry"))?;
                out.push(decode_entry::<C>(&self.path, k.value(), v.value())?);
            }
            Ok(out)
        })
    }

    fn write_meta(&self, key: &str, value: Option<Vec<u8>>) -> Result<(), LogStoreError> {
        self.write(|txn| {
            let mut meta = txn
                .open_table(META)
                .map_err(self.db_err("open meta table"))?;
            match value {
                Some(v) => meta.insert(key, v.as_slice()).map(drop),
                None => meta.remove(key).map(drop),
            }
            .map_err(self.db_err("write meta value"))
        })
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, LogStoreError> {
        self.read(|txn| {
            let meta = txn
                .open_table(META)
                .map_err(self.db_err("open meta table"))?;
            self.meta_value(&meta, key)
        })
    }

    fn meta_value<T: DeserializeOwned>(
        &self,
        meta: &impl ReadableTable<&'static str, &'static [u8]>,
        key: &str,
    ) -> Result<Option<T>, LogStoreError> {
        let Some(v) = meta.get(key).map_err(self.db_err("read meta value"))? else {
            return Ok(None);
        };
        decode_meta(&self.path, key, v.value()).map(Some)
    }

    /// The open-time scan: every meta value, the log's shape, and the newest entries.
    fn verify<C: RaftTypeConfig>(&self) -> Result<(), LogStoreError>
    where
        C::Entry: DeserializeOwned,
    {
        self.read(|txn| {
            let meta = txn
                .open_table(META)
                .map_err(self.db_err("open meta table"))?;
            let mut purged: Option<LogId<C::NodeId>> = None;
            for row in meta.iter().map_err(self.db_err("scan meta table"))? {
                let (k, v) = row.map_err(self.db_err("scan meta table"))?;
                let (key, value) = (k.value(), v.value());
                // User values can only be CRC-checked here; their type is the caller's.
                match key {
                    KEY_VOTE => {
                        decode_meta::<Vote<C::NodeId>>(&self.path, key, value)?;
                    }
                    KEY_COMMITTED => {
                        decode_meta::<LogId<C::NodeId>>(&self.path, key, value)?;
                    }
                    KEY_PURGED => purged = Some(decode_meta(&self.path, key, value)?),
                    _ => {
                        unseal(value).map_err(|detail| corrupt_meta(&self.path, key, detail))?;
                    }
                }
            }

            let log = txn.open_table(LOG).map_err(self.db_err("open log table"))?;
            let first = log.first().map_err(self.db_err("read first entry"))?;
            let last = log.last().map_err(self.db_err("read last entry"))?;
            let (Some((first_k, first_v)), Some((last_k, _))) = (first, last) else {
                return Ok(());
            };
            let (first, last) = (first_k.value(), last_k.value());
            let len = log.len().map_err(self.db_err("count log entries"))?;
            let inconsistent = |detail: String| LogStoreError::Inconsistent {
                path: self.path.clone(),
                detail,
            };
            if last - first + 1 != len {
                return Err(inconsistent(format!(
                    "{len} entries between index {first} and {last}: the log has holes"
                )));
            }
            if let Some(p) = &purged
                && first <= p.index
            {
                return Err(inconsistent(format!(
                    "entry {first} is still present although {p} was purged"
                )));
            }
            decode_entry::<C>(&self.path, first, first_v.value())?;

            let tail_start = last.saturating_sub(OPEN_SCAN_TAIL - 1).max(first);
            let mut prev: Option<LogId<C::NodeId>> = None;
            for row in log
                .range(tail_start..=last)
                .map_err(self.db_err("scan log tail"))?
            {
                let (k, v) = row.map_err(self.db_err("scan log tail"))?;
                let id = decode_entry::<C>(&self.path, k.value(), v.value())?
                    .get_log_id()
                    .clone();
                if let Some(p) = &prev
                    && *p > id
                {
                    return Err(inconsistent(format!("log id {id} follows the greater {p}")));
                }
                prev = Some(id);
            }
            Ok(())
        })
    }
}

fn builder() -> redb::Builder {
    let mut b = Database::builder();
    // A plain open trusts a cleanly closed file and may even panic on one damaged outside
    // redb; the check walks every committed page checksum instead. Raft logs are purged, so
    // the file stays small enough for this to be cheap.
    b.set_check_integrity_on_open(true)
        .set_cache_size(CACHE_BYTES);
    b
}

/// Creates an empty database under a temporary name and renames it into place, so a crash
/// during creation never leaves a `raft.redb` that `open` would have to guess about.
fn init_file(dir: &Path, path: &Path) -> Result<(), LogStoreError> {
    let tmp = dir.join(INIT_FILE_NAME);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path, "remove stale init file")(e)),
    }
    let db = builder()
        .create(&tmp)
        .map_err(db_err(path, "create database"))?;
    let inner = Inner {
        db,
        path: path.to_path_buf(),
        committed: Default::default(),
        pending: Arc::default(),
    };
    inner.write(|txn| {
        txn.open_table(LOG)
            .map_err(inner.db_err("create log table"))?;
        txn.open_table(META)
            .map_err(inner.db_err("create meta table"))?;
        Ok(())
    })?;
    inner
        .db
        .close()
        .map_err(db_err(path, "close new database"))?;
    fs::rename(&tmp, path).map_err(io_err(path, "rename new database into place"))?;
    // The rename itself must survive a crash too.
    #[cfg(unix)]
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(path, "sync directory"))?;
    Ok(())
}

fn io_err<'a>(
    path: &'a Path,
    context: &'static str,
) -> impl FnOnce(io::Error) -> LogStoreError + 'a {
    move |error| LogStoreError::Io {
        path: path.to_path_buf(),
        context,
        error,
    }
}

fn db_err<'a, E: Into<redb::Error>>(
    path: &'a Path,
    context: &'static str,
) -> impl FnOnce(E) -> LogStoreError + 'a {
    move |error| LogStoreError::Db {
        path: path.to_path_buf(),
        context,
        error: Box::new(error.into()),
    }
}

fn corrupt_meta(path: &Path, key: &str, detail: String) -> LogStoreError {
    LogStoreError::CorruptMeta {
        path: path.to_path_buf(),
        key: key.to_string(),
        detail,
    }
}

/// The subject/verb say what openraft was doing; the message (with the path) says why it failed.
fn storage_err<NID: NodeId>(
    subject: ErrorSubject<NID>,
    verb: ErrorVerb,
    e: &LogStoreError,
) -> StorageError<NID> {
    let subject = match e {
        LogStoreError::CorruptEntry { index, .. } => ErrorSubject::LogIndex(*index),
        _ => subject,
    };
    StorageIOError::new(subject, verb, AnyError::new(e)).into()
}

/// `crc32(payload)` as 4 little-endian bytes, then the named MessagePack encoding of `v`.
fn seal<T: Serialize + ?Sized>(
    path: &Path,
    what: &'static str,
    v: &T,
) -> Result<Vec<u8>, LogStoreError> {
    let payload = rmp_serde::to_vec_named(v).map_err(|e| LogStoreError::Encode {
        path: path.to_path_buf(),
        what,
        detail: e.to_string(),
    })?;
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Checks the CRC and returns the payload.
fn unseal(bytes: &[u8]) -> Result<&[u8], String> {
    let Some((crc, payload)) = bytes.split_first_chunk::<4>() else {
        return Err(format!("{} bytes, too short for a CRC32", bytes.len()));
    };
    let (stored, actual) = (u32::from_le_bytes(*crc), crc32fast::hash(payload));
    if stored != actual {
        return Err(format!(
            "CRC32 mismatch (stored {stored:08x}, computed {actual:08x})"
        ));
    }
    Ok(payload)
}

fn decode_meta<T: DeserializeOwned>(
    path: &Path,
    key: &str,
    bytes: &[u8],
) -> Result<T, LogStoreError> {
    let payload = unseal(bytes).map_err(|detail| corrupt_meta(path, key, detail))?;
    rmp_serde::from_slice(payload).map_err(|e| corrupt_meta(path, key, format!("undecodable: {e}")))
}

fn decode_entry<C: RaftTypeConfig>(
    path: &Path,
    index: u64,
    bytes: &[u8],
) -> Result<C::Entry, LogStoreError>
where
    C::Entry: DeserializeOwned,
{
    let corrupt = |detail: String| LogStoreError::CorruptEntry {
        path: path.to_path_buf(),
        index,
        detail,
    };
    let payload = unseal(bytes).map_err(corrupt)?;
    let entry: C::Entry =
        rmp_serde::from_slice(payload).map_err(|e| corrupt(format!("undecodable: {e}")))?;
    // Catches a valid value stored under the wrong key.
    let id = entry.get_log_id();
    if id.index != index {
        return Err(corrupt(format!("holds log id {id}")));
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Cursor, Write};
    use std::process::{Command, Stdio};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use openraft::storage::{RaftLogStorageExt, RaftSnapshotBuilder, RaftStateMachine, Snapshot};
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{
        BasicNode, CommittedLeaderId, Entry, EntryPayload, Membership, SnapshotMeta,
        StoredMembership,
    };

    use super::*;

    // The macro's default `SnapshotData` is a bare `Cursor<Vec<u8>>`, hence the import above.
    openraft::declare_raft_types!(
        TC: D = String, R = ()
    );

    type Store = LogStore<TC>;

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("raftlog-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Minimal in-memory state machine, only so openraft's suite can run.
    #[derive(Default)]
    struct SmState {
        last_applied: Option<LogId<u64>>,
        membership: StoredMembership<u64, BasicNode>,
        data: Vec<String>,
        snapshot: Option<(SnapshotMeta<u64, BasicNode>, Vec<u8>)>,
        snapshots_built: u64,
    }

    #[derive(Clone, Default)]
    struct TestSm(Arc<Mutex<SmState>>);

    impl RaftSnapshotBuilder<TC> for TestSm {
        async fn build_snapshot(&mut self) -> Result<Snapshot<TC>, StorageError<u64>> {
            let mut st = self.0.lock().unwrap();
            st.snapshots_built += 1;
            let meta = SnapshotMeta {
                last_log_id: st.last_applied,
                last_membership: st.membership.clone(),
                snapshot_id: format!("snap-{}", st.snapshots_built),
            };
            let bytes = rmp_serde::to_vec(&st.data).unwrap();
            st.snapshot = Some((meta.clone(), bytes.clone()));
            Ok(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(bytes)),
            })
        }
    }

    impl RaftStateMachine<TC> for TestSm {
        type SnapshotBuilder = Self;

        async fn applied_state(
            &mut self,
        ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>>
        {
            let st = self.0.lock().unwrap();
            Ok((st.last_applied, st.membership.clone()))
        }

        async fn apply<I>(&mut self, entries: I) -> Result<Vec<()>, StorageError<u64>>
        where
            I: IntoIterator<Item = Entry<TC>> + OptionalSend,
            I::IntoIter: OptionalSend,
        {
            let mut st = self.0.lock().unwrap();
            let mut replies = Vec::new();
            for entry in entries {
                st.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Normal(s) => st.data.push(s),
                    EntryPayload::Membership(m) => {
                        st.membership = StoredMembership::new(Some(entry.log_id), m)
                    }
                }
                replies.push(());
            }
            Ok(replies)
        }

        async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
            self.clone()
        }

        async fn begin_receiving_snapshot(
            &mut self,
        ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
            Ok(Box::new(Cursor::new(Vec::new())))
        }

        async fn install_snapshot(
            &mut self,
            meta: &SnapshotMeta<u64, BasicNode>,
            snapshot: Box<Cursor<Vec<u8>>>,
        ) -> Result<(), StorageError<u64>> {
            let bytes = snapshot.into_inner();
            let mut st = self.0.lock().unwrap();
            st.data = rmp_serde::from_slice(&bytes).unwrap();
            st.last_applied = meta.last_log_id;
            st.membership = meta.last_membership.clone();
            st.snapshot = Some((meta.clone(), bytes));
            Ok(())
        }

        async fn get_current_snapshot(
            &mut self,
        ) -> Result<Option<Snapshot<TC>>, StorageError<u64>> {
            let st = self.0.lock().unwrap();
            Ok(st.snapshot.clone().map(|(meta, bytes)| Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(bytes)),
            }))
        }
    }

    /// Gives every suite case a fresh directory; the guard removes it afterwards.
    struct FreshDir;

    impl StoreBuilder<TC, Store, TestSm, TempDir> for FreshDir {
        async fn build(&self) -> Result<(TempDir, Store, TestSm), StorageError<u64>> {
            let dir = TempDir::new("suite");
            let store =
                Store::open(dir.path()).map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
            Ok((dir, store, TestSm::default()))
        }
    }

    #[test]
    fn openraft_suite() {
        // Not a tokio test: the suite starts its own runtime per case.
        Suite::<TC, Store, TestSm, FreshDir, TempDir>::test_all(FreshDir).unwrap();
    }

    fn log_id(term: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn normal(term: u64, index: u64, data: &str) -> Entry<TC> {
        Entry {
            log_id: log_id(term, index),
            payload: EntryPayload::Normal(data.to_string()),
        }
    }

    fn file_path(dir: &TempDir) -> String {
        dir.path().join(FILE_NAME).display().to_string()
    }

    /// Opening must fail, name the file, and classify the failure as corruption.
    fn assert_corrupt_open(dir: &TempDir) -> String {
        let err = Store::open(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&file_path(dir)),
            "message lacks the path: {msg}"
        );
        assert!(err.is_corruption(), "not classified as corruption: {err:?}");
        msg
    }

    #[tokio::test]
    async fn reopen_returns_what_was_written() {
        let dir = TempDir::new("reopen");
        let members = Membership::new(vec![[1, 2, 3].into()], None);
        let entries = vec![
            Entry::<TC> {
                log_id: log_id(1, 0),
                payload: EntryPayload::Membership(members),
            },
            Entry::<TC> {
                log_id: log_id(1, 1),
                payload: EntryPayload::Blank,
            },
            normal(1, 2, "two"),
            normal(2, 3, "three"),
            normal(2, 4, "four"),
        ];
        let vote = Vote::new_committed(2, 1);
        {
            let mut store = Store::open(dir.path()).unwrap();
            store.save_vote(&vote).await.unwrap();
            store.blocking_append(entries.clone()).await.unwrap();
            store.save_committed(Some(log_id(2, 3))).await.unwrap();
            store.purge(log_id(1, 0)).await.unwrap();
            store.meta_put("cluster_id", &"c-42".to_string()).unwrap();
        }

        let mut store = Store::open(dir.path()).unwrap();
        assert_eq!(store.read_vote().await.unwrap(), Some(vote));
        assert_eq!(store.read_committed().await.unwrap(), Some(log_id(2, 3)));
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 0)));
        assert_eq!(state.last_log_id, Some(log_id(2, 4)));
        let got = store.try_get_log_entries(..).await.unwrap();
        assert_eq!(format!("{got:?}"), format!("{:?}", &entries[1..]));
        assert_eq!(
            store.meta_get::<String>("cluster_id").unwrap().as_deref(),
            Some("c-42")
        );
        assert_eq!(store.meta_get::<String>("absent").unwrap(), None);
        assert_eq!(
            store.last_entry().unwrap().map(|e| e.log_id),
            Some(log_id(2, 4))
        );

        // Empty and inverted ranges are empty, not errors.
        assert!(store.try_get_log_entries(3..3).await.unwrap().is_empty());
        assert!(store.try_get_log_entries(9..).await.unwrap().is_empty());

        // save_committed(None) clears the pointer.
        store.save_committed(None).await.unwrap();
        assert_eq!(store.read_committed().await.unwrap(), None);
    }

    #[tokio::test]
    async fn append_raw_and_meta_rules() {
        let dir = TempDir::new("raw");
        let store = Store::open(dir.path()).unwrap();
        assert!(store.last_entry().unwrap().is_none());

        // An empty log with nothing purged starts at index 0.
        let err = store.append_raw(&normal(1, 1, "gap")).unwrap_err();
        assert!(matches!(err, LogStoreError::Rejected { .. }), "{err:?}");
        store.append_raw(&normal(1, 0, "a")).unwrap();
        store.append_raw(&normal(2, 1, "b")).unwrap();
        // A hole, a rewrite, and a lower term are all refused.
        for bad in [
            normal(2, 3, "hole"),
            normal(2, 1, "again"),
            normal(1, 2, "older"),
        ] {
            assert!(store.append_raw(&bad).is_err(), "accepted {bad}");
        }
        assert_eq!(
            store.last_entry().unwrap().map(|e| e.log_id),
            Some(log_id(2, 1))
        );

        // After purging everything the next raw entry follows the purged id.
        store.clone().purge(log_id(2, 1)).await.unwrap();
        assert!(store.append_raw(&normal(2, 1, "x")).is_err());
        store.append_raw(&normal(3, 2, "c")).unwrap();

        let err = store.meta_put("raft.vote", &1u8).unwrap_err();
        assert!(err.to_string().contains("reserved"), "{err}");
        assert!(err.to_string().contains(&file_path(&dir)), "{err}");
    }

    /// Writes one append transaction of entries whose payload holds `MARKER`, then closes.
    async fn write_marked_log(dir: &TempDir, count: u64) {
        let mut store = Store::open(dir.path()).unwrap();
        store.save_vote(&Vote::new(1, 1)).await.unwrap();
        let entries: Vec<_> = (0..count)
            .map(|i| normal(1, i, &format!("MARKER-{i:06}-{}", "p".repeat(100))))
            .collect();
        store.blocking_append(entries).await.unwrap();
    }

    fn flip_byte(file: &Path, offset: usize) {
        let mut bytes = fs::read(file).unwrap();
        bytes[offset] ^= 0x5a;
        fs::write(file, bytes).unwrap();
    }

    #[tokio::test]
    async fn flipped_byte_in_live_data_is_refused() {
        let dir = TempDir::new("flip");
        write_marked_log(&dir, 500).await;
        let file = dir.path().join(FILE_NAME);
        let bytes = fs::read(&file).unwrap();
        // The marker occurrence nearest the middle of the file: live entry data, so the
        // flip hits a page of the current tree rather than free space.
        let middle = bytes.len() / 2;
        let hit = bytes
            .windows(7)
            .enumerate()
            .filter(|(_, w)| w == b"MARKER-")
            .map(|(i, _)| i + 9)
            .min_by_key(|i| i.abs_diff(middle))
            .unwrap();
        flip_byte(&file, hit);
        let msg = assert_corrupt_open(&dir);
        // redb's own page checksums catch this before our CRC scan runs.
        assert!(msg.contains("corrupted"), "{msg}");
    }

    /// After a crash redb may legitimately fall back to the previous commit, but only for a
    /// commit that never returned. With one-phase commit it also "recovers" a damaged latest
    /// commit that way, silently dropping acknowledged entries; two-phase commit must refuse.
    #[tokio::test]
    async fn flipped_byte_after_unclean_shutdown_is_refused_not_rolled_back() {
        let src = TempDir::new("unclean-src");
        let crashed = {
            let mut store = Store::open(src.path()).unwrap();
            store.save_vote(&Vote::new(1, 1)).await.unwrap();
            let entries: Vec<_> = (0..500)
                .map(|i| normal(1, i, &format!("MARKER-{i:06}-{}", "p".repeat(100))))
                .collect();
            store.blocking_append(entries).await.unwrap();
            // The file as a kill -9 would leave it: no clean-shutdown commit.
            fs::read(store.path()).unwrap()
        };
        let dir = TempDir::new("unclean");
        let file = dir.path().join(FILE_NAME);
        fs::write(&file, &crashed).unwrap();
        assert_eq!(
            Store::open(dir.path())
                .unwrap()
                .try_get_log_entries(..)
                .await
                .unwrap()
                .len(),
            500
        );

        fs::write(&file, &crashed).unwrap();
        let hit = crashed.windows(7).position(|w| w == b"MARKER-").unwrap();
        flip_byte(&file, hit + 9);
        assert_corrupt_open(&dir);
    }

    #[tokio::test]
    async fn flipped_middle_byte_is_refused() {
        let dir = TempDir::new("middle");
        write_marked_log(&dir, 500).await;
        let file = dir.path().join(FILE_NAME);
        let len = fs::metadata(&file).unwrap().len() as usize;
        flip_byte(&file, len / 2);
        assert_corrupt_open(&dir);
    }

    #[tokio::test]
    async fn truncated_file_is_refused() {
        let dir = TempDir::new("trunc");
        write_marked_log(&dir, 500).await;
        let file = dir.path().join(FILE_NAME);
        let len = fs::metadata(&file).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        assert_corrupt_open(&dir);
    }

    #[tokio::test]
    async fn emptied_or_foreign_file_is_refused_not_reinitialized() {
        let dir = TempDir::new("empty");
        write_marked_log(&dir, 10).await;
        fs::write(dir.path().join(FILE_NAME), b"").unwrap();
        assert_corrupt_open(&dir);

        let dir = TempDir::new("magic");
        write_marked_log(&dir, 10).await;
        flip_byte(&dir.path().join(FILE_NAME), 0);
        assert_corrupt_open(&dir);
    }

    #[test]
    fn stale_init_file_is_replaced_and_second_open_is_locked_out() {
        let dir = TempDir::new("init");
        // As left by a crash during creation.
        fs::write(dir.path().join(INIT_FILE_NAME), b"half-written").unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(!dir.path().join(INIT_FILE_NAME).exists());
        assert_eq!(store.path(), dir.path().join(FILE_NAME));

        // redb's file lock refuses a second handle; that is not corruption.
        let err = Store::open(dir.path()).unwrap_err();
        assert!(!err.is_corruption(), "{err:?}");
        assert!(err.to_string().contains(&file_path(&dir)), "{err}");
    }

    /// Writes `value` under `index` with a plain redb transaction, bypassing the store.
    fn raw_put_log(dir: &TempDir, index: u64, value: &[u8]) {
        let db = Database::open(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(LOG).unwrap().insert(index, value).unwrap();
        txn.commit().unwrap();
    }

    fn raw_put_meta(dir: &TempDir, key: &str, value: &[u8]) {
        let db = Database::open(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert(key, value).unwrap();
        txn.commit().unwrap();
    }

    fn bad_crc(value: &[u8]) -> Vec<u8> {
        let mut v = value.to_vec();
        v[0] ^= 1;
        v
    }

    #[tokio::test]
    async fn bad_crc_in_tail_entry_is_refused_on_open() {
        let dir = TempDir::new("crc-tail");
        write_marked_log(&dir, 200).await;
        let good = seal(Path::new("-"), "t", &normal(1, 199, "replaced")).unwrap();
        raw_put_log(&dir, 199, &bad_crc(&good));
        let msg = assert_corrupt_open(&dir);
        assert!(
            msg.contains("index 199") && msg.contains("CRC32 mismatch"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn bad_crc_in_old_entry_is_reported_on_read() {
        let dir = TempDir::new("crc-old");
        write_marked_log(&dir, 200).await;
        let good = seal(Path::new("-"), "t", &normal(1, 10, "replaced")).unwrap();
        raw_put_log(&dir, 10, &bad_crc(&good));

        // Index 10 is neither the first entry nor in the scanned tail, so open succeeds...
        let mut store = Store::open(dir.path()).unwrap();
        assert_eq!(store.try_get_log_entries(0..10).await.unwrap().len(), 10);
        // ...and the read that reaches it fails, naming the file and the index.
        let err = store.try_get_log_entries(5..15).await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&file_path(&dir)), "{msg}");
        assert!(
            msg.contains("LogIndex(10)") && msg.contains("CRC32"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn valid_crc_but_wrong_content_is_refused() {
        let dir = TempDir::new("crc-wrong");
        write_marked_log(&dir, 200).await;
        // A correctly sealed entry stored under the wrong index.
        raw_put_log(
            &dir,
            198,
            &seal(Path::new("-"), "t", &normal(1, 3, "moved")).unwrap(),
        );
        let msg = assert_corrupt_open(&dir);
        assert!(msg.contains("index 198"), "{msg}");

        let dir = TempDir::new("crc-garbage");
        write_marked_log(&dir, 20).await;
        // Correct CRC over bytes that are not an entry.
        raw_put_log(
            &dir,
            19,
            &seal(Path::new("-"), "t", &"not an entry").unwrap(),
        );
        let msg = assert_corrupt_open(&dir);
        assert!(msg.contains("undecodable"), "{msg}");
    }

    #[tokio::test]
    async fn bad_meta_values_are_refused_on_open() {
        let dir = TempDir::new("meta-user");
        write_marked_log(&dir, 5).await;
        let good = seal(Path::new("-"), "t", &"c-42").unwrap();
        raw_put_meta(&dir, "cluster_id", &bad_crc(&good));
        let msg = assert_corrupt_open(&dir);
        assert!(msg.contains("\"cluster_id\""), "{msg}");

        let dir = TempDir::new("meta-vote");
        write_marked_log(&dir, 5).await;
        // The vote key with a valid CRC over something that is not a vote.
        raw_put_meta(&dir, KEY_VOTE, &seal(Path::new("-"), "t", &"nope").unwrap());
        let msg = assert_corrupt_open(&dir);
        assert!(
            msg.contains("raft.vote") && msg.contains("undecodable"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn hole_in_log_is_refused_on_open() {
        let dir = TempDir::new("hole");
        write_marked_log(&dir, 20).await;
        let db = Database::open(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(LOG).unwrap().remove(7).unwrap();
        txn.commit().unwrap();
        drop(db);
        let msg = assert_corrupt_open(&dir);
        assert!(msg.contains("holes"), "{msg}");
    }

    const KILL9_ENV: &str = "RAFTLOG_KILL9_DIR";

    /// Child half of `kill9_keeps_acknowledged_entries`: appends until killed, printing
    /// each acknowledged index.
    fn kill9_child(dir: &std::ffi::OsStr) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut store = Store::open(Path::new(dir)).unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut index = 0;
            while Instant::now() < deadline {
                store
                    .blocking_append([normal(1, index, "payload")])
                    .await
                    .unwrap();
                // blocking_append returns once the LogFlushed callback fired.
                println!("ACK {index}");
                io::stdout().flush().unwrap();
                index += 1;
            }
        });
    }

    #[test]
    fn kill9_keeps_acknowledged_entries() {
        // Re-run as the child (this same test in a new process) when the parent asks.
        if let Some(dir) = std::env::var_os(KILL9_ENV) {
            kill9_child(&dir);
            return;
        }
        let dir = TempDir::new("kill9");
        // Test names exclude the crate name, and this file may live at another module path.
        let module = module_path!().split_once("::").map_or("", |(_, rest)| rest);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                &format!("{module}::kill9_keeps_acknowledged_entries"),
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(KILL9_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acked = None;
        for line in lines.by_ref() {
            if let Some(n) = line.unwrap().strip_prefix("ACK ") {
                acked = Some(n.parse::<u64>().unwrap());
                if acked >= Some(30) {
                    break;
                }
            }
        }
        // SIGKILL while the child is mid-stream; keep the pipe open until it is dead.
        child.kill().unwrap();
        child.wait().unwrap();
        drop(lines);
        let acked = acked.expect("child acknowledged nothing");

        let store = Store::open(dir.path()).unwrap();
        let last = store.last_entry().unwrap().unwrap().log_id.index;
        assert!(
            last >= acked,
            "acknowledged {acked} but only {last} survived"
        );
        let rt = tokio::runtime::Runtime::new().unwrap();
        let all = rt.block_on(store.clone().try_get_log_entries(..)).unwrap();
        assert_eq!(all.len() as u64, last + 1);
    }
}
