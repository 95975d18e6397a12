//! Coordinate updates from agents, batched by the server before they are written, as
//! Consul's servers do: the newest update per node is kept, and every batch period up to
//! 5 batches of 128 go into the log; more than that in one period are dropped (agents send
//! again soon).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use cairn_shared::api::CoordinateEntry;
use cairn_shared::rpc::{RpcError, WriteOp};
use tokio_util::sync::CancellationToken;

use super::Server;
use crate::catalog::CommandOp;

const BATCH_SIZE: usize = 128;
const MAX_BATCHES: usize = 5;
/// Vivaldi's dimensionality; coordinates of any other size are refused.
const DIMENSIONS: usize = 8;

#[derive(Debug, Default)]
pub(super) struct Pending(Mutex<HashMap<String, CoordinateEntry>>);

impl Pending {
    /// Queues an agent's coordinate, refusing invalid ones.
    pub(super) fn push(&self, entry: CoordinateEntry) -> Result<(), RpcError> {
        let ok = entry
            .coord
            .as_ref()
            .is_some_and(|c| c.is_valid() && c.vec.len() == DIMENSIONS);
        if !ok || entry.node.is_empty() {
            return Err(RpcError::bad_request("rejected bad coordinate"));
        }
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry.node.clone(), entry);
        Ok(())
    }

    fn take(&self) -> Vec<CoordinateEntry> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<CoordinateEntry> = map.drain().map(|(_, e)| e).collect();
        all.sort_by(|a, b| a.node.cmp(&b.node));
        if all.len() > BATCH_SIZE * MAX_BATCHES {
            tracing::warn!(
                dropped = all.len() - BATCH_SIZE * MAX_BATCHES,
                "too many coordinate updates in one period"
            );
            all.truncate(BATCH_SIZE * MAX_BATCHES);
        }
        all
    }
}

pub(super) async fn flush_loop(server: Server, period: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let all = server.inner.coordinates.take();
        for batch in all.chunks(BATCH_SIZE) {
            let op = CommandOp::Client(WriteOp::CoordinateBatchUpdate(batch.to_vec()));
            if let Err(e) = server.propose(op).await.and_then(|a| a) {
                tracing::warn!(error = %e, "failed to write coordinates");
            }
        }
    }
}
