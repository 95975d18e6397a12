//! Proposal batching on the leader.
//!
//! openraft 0.9's core appends one client write at a time and waits for that append's
//! fsync before it takes the next (`append_to_log`), so under load the leader would do one
//! fsync per write however the log store groups them. Writes that arrive while earlier
//! proposals are in flight are therefore gathered here into one log entry
//! (`CommandOp::Batch`), applied in arrival order at that entry's index, each with its own
//! result, as a Consul transaction of independent operations would be. A lone write goes
//! as a plain entry, so an idle cluster's latency is unchanged.
//!
//! At most [`MAX_IN_FLIGHT`] proposals are inside openraft at once: one committing while
//! the next is appended. Everything that arrives meanwhile waits here and goes as one.

use std::sync::Arc;

use cairn_shared::rpc::RpcError;
use openraft::Raft;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{EntryApplied, TypeConfig, leader_err};
use crate::catalog::{Command, CommandOp};
use crate::server::Applied;

/// Proposals inside openraft at once.
const MAX_IN_FLIGHT: usize = 2;
/// Commands per batch entry.
const MAX_COMMANDS: usize = 256;
/// Encoded bytes per batch entry, well under what one AppendEntries carries
/// (`network.rs`), since one entry cannot be split.
const MAX_BYTES: usize = 1 << 20;

/// Counts log entries proposed, and the commands they carried.
const METRIC_ENTRIES: &str = "cairn_raft_proposals_total";
const METRIC_COMMANDS: &str = "cairn_raft_proposed_commands_total";

type Reply = oneshot::Sender<Result<Applied, RpcError>>;

struct Waiting {
    cmd: Command,
    bytes: usize,
    reply: Reply,
}

/// The queue in front of `Raft::client_write`.
pub(super) struct Batcher {
    tx: mpsc::UnboundedSender<Waiting>,
}

impl Batcher {
    /// Starts the task that drains the queue; it ends when the batcher is dropped.
    pub(super) fn start(raft: Raft<TypeConfig>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx));
        Self { tx }
    }

    /// Proposes `cmd` and waits for its own result.
    pub(super) async fn propose(&self, cmd: Command) -> Result<Applied, RpcError> {
        let bytes = rmp_serde::to_vec(&cmd).map_or(MAX_BYTES, |v| v.len());
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Waiting { cmd, bytes, reply })
            .map_err(|_| RpcError::internal("raft is shutting down"))?;
        answer
            .await
            .unwrap_or_else(|_| Err(RpcError::internal("raft is shutting down")))
    }
}

async fn run(raft: Raft<TypeConfig>, mut rx: mpsc::UnboundedReceiver<Waiting>) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut bytes = first.bytes;
        let mut batch = vec![first];
        while batch.len() < MAX_COMMANDS && bytes < MAX_BYTES {
            match rx.try_recv() {
                Ok(w) => {
                    bytes += w.bytes;
                    batch.push(w);
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _permit = permit;
            commit(&raft, batch).await;
        });
    }
}

/// Proposes one entry for `batch` and hands each waiter its result.
async fn commit(raft: &Raft<TypeConfig>, mut batch: Vec<Waiting>) {
    metrics::counter!(METRIC_ENTRIES).increment(1);
    metrics::counter!(METRIC_COMMANDS).increment(batch.len() as u64);
    let (cmd, replies): (Command, Vec<Reply>) = if batch.len() == 1 {
        let w = batch.remove(0);
        (w.cmd, vec![w.reply])
    } else {
        let now_ms = batch.iter().map(|w| w.cmd.now_ms).max().unwrap_or(0);
        let (cmds, replies) = batch.into_iter().map(|w| (w.cmd, w.reply)).unzip();
        let cmd = Command {
            now_ms,
            op: CommandOp::Batch(cmds),
        };
        (cmd, replies)
    };
    match raft.client_write(cmd).await {
        Ok(resp) => match resp.data {
            EntryApplied::One(applied) => {
                for r in replies {
                    let _ = r.send(Ok(applied.clone()));
                }
            }
            EntryApplied::Many(results) => {
                let mut results = results.into_iter();
                for r in replies {
                    let applied = results.next().unwrap_or_else(|| {
                        Err(RpcError::internal("invariant: a batch result went missing"))
                    });
                    let _ = r.send(Ok(applied));
                }
            }
        },
        Err(e) => {
            let e = leader_err(e);
            for r in replies {
                let _ = r.send(Err(e.clone()));
            }
        }
    }
}
