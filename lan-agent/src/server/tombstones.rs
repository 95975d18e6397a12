//! The leader's tombstone reaper.
//!
//! Every granule the reaper notes the newest tombstone index; once a note is older than the
//! tombstone TTL it writes a `ReapTombstones` up to that index. Consul does the same with its
//! in-memory TombstoneGC: a deleted key keeps its prefix's index from going backwards for at
//! least the TTL, and the graveyard does not grow without bound.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Server;
use crate::catalog::CommandOp;

/// Consul's tombstone granularity.
const GRANULARITY: Duration = Duration::from_secs(30);

pub(super) async fn reap_loop(server: Server, shutdown: CancellationToken) {
    let ttl = server.inner.config.tombstone_ttl;
    let mut tick = tokio::time::interval(GRANULARITY.min(ttl).max(Duration::from_millis(10)));
    let mut notes: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut reaped = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !server.status().is_leader {
            notes.clear();
            continue;
        }
        let now = Instant::now();
        let newest = server.state().read(|s| s.max_tombstone_index());
        if newest > reaped && notes.back().is_none_or(|(_, i)| *i != newest) {
            notes.push_back((now, newest));
        }
        let mut upto = None;
        while notes
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= ttl)
        {
            upto = notes.pop_front().map(|(_, i)| i);
        }
        if let Some(index) = upto {
            match server
                .propose(CommandOp::ReapTombstones { index })
                .await
                .and_then(|a| a)
            {
                Ok(_) => reaped = index,
                Err(e) => tracing::warn!(error = %e, "failed to reap tombstones"),
            }
        }
    }
}
