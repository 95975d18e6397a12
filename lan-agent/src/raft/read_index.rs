//! Read-index batching for `?consistent` reads on the leader.
//!
//! A consistent read needs a read index taken after it arrived: the leader confirms with a
//! quorum that it still leads, notes its commit index, and waits until it has applied that
//! far (`Raft::ensure_linearizable`). Every read that is waiting when a round starts shares
//! that round, as etcd's ReadIndex batching does; reads that arrive during a round wait for
//! the next one, so no read is served by a round that began before it arrived. One round
//! is in flight at a time: under load the cost is one quorum round per batch, not per read.

use std::time::Duration;

use cairn_shared::rpc::RpcError;
use openraft::Raft;
use openraft::error::RaftError;
use tokio::sync::{mpsc, oneshot};

use super::{TypeConfig, no_leader};

/// Counts confirmation rounds, and the reads they served.
const METRIC_ROUNDS: &str = "cairn_raft_read_index_rounds_total";
const METRIC_READS: &str = "cairn_raft_read_index_reads_total";

/// How long a round may take before its reads are told there is no leader.
const ROUND_TIMEOUT: Duration = Duration::from_secs(5);

type Waiter = oneshot::Sender<Result<(), RpcError>>;

/// The queue of reads waiting for a read index.
pub(super) struct ReadIndex {
    tx: mpsc::UnboundedSender<Waiter>,
}

impl ReadIndex {
    /// Starts the task that runs rounds; it ends when this is dropped.
    pub(super) fn start(raft: Raft<TypeConfig>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(raft, rx));
        Self { tx }
    }

    /// Resolves once a round that started after this call has confirmed leadership and
    /// the state machine has applied up to that round's read index.
    pub(super) async fn wait(&self) -> Result<(), RpcError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).map_err(|_| no_leader())?;
        rx.await.unwrap_or_else(|_| Err(no_leader()))
    }
}

async fn run(raft: Raft<TypeConfig>, mut rx: mpsc::UnboundedReceiver<Waiter>) {
    while let Some(first) = rx.recv().await {
        // Everyone queued now arrived before the round below starts.
        let mut batch = vec![first];
        while let Ok(w) = rx.try_recv() {
            batch.push(w);
        }
        metrics::counter!(METRIC_ROUNDS).increment(1);
        metrics::counter!(METRIC_READS).increment(batch.len() as u64);
        let result = match tokio::time::timeout(ROUND_TIMEOUT, raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(_))) | Err(_) => Err(no_leader()),
            Ok(Err(e)) => Err(RpcError::internal(e.to_string())),
        };
        for w in batch {
            let _ = w.send(result.clone());
        }
    }
}
