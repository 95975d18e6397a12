//! The Raft state machine: committed entries go through the state store's `apply`, and
//! snapshots are the whole store written to a checksummed file.
//!
//! The store lives in memory; durability comes from the log plus snapshots. On start the
//! newest snapshot file is loaded and openraft re-applies the committed log after it.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, ErrorSubject, ErrorVerb, LogId, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership,
};

use super::snapshot::{SnapshotDir, SnapshotFile};
use super::{NodeId, RaftNode, TypeConfig};
use crate::catalog::StateStore;
use cairn_shared::rpc::{RpcError, WriteResult};

use super::EntryApplied;
use crate::catalog::CommandOp;

type Membership = StoredMembership<NodeId, RaftNode>;

pub struct StateMachine {
    state: Arc<StateStore>,
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    dir: SnapshotDir,
    datacenter: String,
}

impl StateMachine {
    /// Loads the newest snapshot from `dir` into `state`. A damaged snapshot is an error
    /// naming the file.
    pub fn open(
        state: Arc<StateStore>,
        dir: SnapshotDir,
        datacenter: &str,
    ) -> Result<Self, String> {
        let mut sm = Self {
            state,
            last_applied: None,
            membership: Membership::default(),
            dir,
            datacenter: datacenter.to_string(),
        };
        if let Some((snap, _)) = sm.dir.load_latest()? {
            tracing::info!(
                index = snap.last_log_id.map(|l| l.index).unwrap_or(0),
                "loaded Raft snapshot"
            );
            sm.last_applied = snap.last_log_id;
            sm.membership = snap.membership.clone();
            sm.state.replace(snap.store);
        }
        Ok(sm)
    }

    fn io_err(verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError<NodeId> {
        StorageIOError::new(
            ErrorSubject::StateMachine,
            verb,
            openraft::AnyError::error(e.to_string()),
        )
        .into()
    }
}

pub struct Builder {
    file: SnapshotFile,
    dir: SnapshotDir,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let file = std::mem::replace(
            &mut self.file,
            SnapshotFile {
                last_log_id: None,
                membership: Membership::default(),
                snapshot_id: String::new(),
                datacenter: String::new(),
                store: Default::default(),
            },
        );
        let dir = self.dir.clone();
        let (meta, bytes) = tokio::task::spawn_blocking(move || {
            let bytes = file.encode()?;
            dir.save(&file, &bytes).map_err(|e| e.to_string())?;
            Ok::<_, String>((file.meta(), bytes))
        })
        .await
        .map_err(|e| StateMachine::io_err(ErrorVerb::Write, e))?
        .map_err(|e| StateMachine::io_err(ErrorVerb::Write, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<EntryApplied>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        // One lock and one round of wake-ups for the whole batch.
        let state = Arc::clone(&self.state);
        let out = state.apply_batch(|store| {
            let mut out = Vec::new();
            for entry in entries {
                self.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Normal(cmd) => {
                        let mut results = store.apply_each(entry.log_id.index, &cmd);
                        out.push(match cmd.op {
                            CommandOp::Batch(_) => EntryApplied::Many(results),
                            _ => EntryApplied::One(results.pop().unwrap_or_else(|| {
                                Err(RpcError::internal("invariant: a command without a result"))
                            })),
                        });
                    }
                    EntryPayload::Membership(m) => {
                        self.membership = StoredMembership::new(Some(entry.log_id), m);
                        out.push(EntryApplied::One(Ok(WriteResult::Bool(true))));
                    }
                    EntryPayload::Blank => out.push(EntryApplied::One(Ok(WriteResult::Bool(true)))),
                }
            }
            out
        });
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        // The copy is taken now, consistent with `last_applied`; encoding and writing
        // happen off the apply path.
        Builder {
            file: SnapshotFile {
                last_log_id: self.last_applied,
                membership: self.membership.clone(),
                snapshot_id: format!(
                    "{}-{}",
                    self.last_applied.map(|l| l.index).unwrap_or(0),
                    uuid::Uuid::new_v4()
                ),
                datacenter: self.datacenter.clone(),
                store: self.state.read(|s| s.clone()),
            },
            dir: self.dir.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, RaftNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        let snap = SnapshotFile::decode(&bytes).map_err(|e| {
            StorageError::from(StorageIOError::new(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                openraft::AnyError::error(e),
            ))
        })?;
        let dir = self.dir.clone();
        let store = snap.store;
        let header = SnapshotFile {
            store: Default::default(),
            ..snap
        };
        tokio::task::spawn_blocking(move || dir.save(&header, &bytes))
            .await
            .map_err(|e| Self::io_err(ErrorVerb::Write, e))?
            .map_err(|e| Self::io_err(ErrorVerb::Write, e))?;
        tracing::info!(
            index = meta.last_log_id.map(|l| l.index).unwrap_or(0),
            "installed a snapshot from the leader"
        );
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.state.replace(store);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        // Every snapshot, built here or received, is saved to disk first.
        match self.dir.load_latest() {
            Ok(Some((snap, bytes))) => Ok(Some(Snapshot {
                meta: snap.meta(),
                snapshot: Box::new(Cursor::new(bytes)),
            })),
            Ok(None) => Ok(None),
            Err(e) => Err(Self::io_err(ErrorVerb::Read, e)),
        }
    }
}
