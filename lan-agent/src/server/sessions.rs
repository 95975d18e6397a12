//! Session TTL timers, kept in memory by the leader as Consul does.
//!
//! A session with a TTL is destroyed when it goes unrenewed for twice its TTL (Consul's
//! `SessionTTLMultiplier`). Timers are not replicated: a new leader starts a full timer for
//! every TTL session it finds, so a failover can extend a session's life but never cut it
//! short.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use cairn_shared::api::Session;
use cairn_shared::duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::time::DelayQueue;
use tokio_util::time::delay_queue::Key;

/// Consul's `SessionTTLMultiplier`.
pub(super) const TTL_MULTIPLIER: u32 = 2;

enum TimerOp {
    Reset(String, Duration),
    /// Drop every timer (this server stopped being the leader).
    Clear,
}

#[derive(Debug)]
pub(super) struct SessionTimers {
    ops: mpsc::UnboundedSender<TimerOp>,
    task: Mutex<Option<TimerTask>>,
}

struct TimerTask {
    ops: mpsc::UnboundedReceiver<TimerOp>,
    expired: mpsc::UnboundedSender<String>,
}

impl std::fmt::Debug for TimerTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TimerTask")
    }
}

impl SessionTimers {
    /// Returns the timers and the stream of session IDs whose time ran out.
    pub(super) fn new() -> (Self, mpsc::UnboundedReceiver<String>) {
        let (ops_tx, ops_rx) = mpsc::unbounded_channel();
        let (exp_tx, exp_rx) = mpsc::unbounded_channel();
        let timers = Self {
            ops: ops_tx,
            task: Mutex::new(Some(TimerTask {
                ops: ops_rx,
                expired: exp_tx,
            })),
        };
        (timers, exp_rx)
    }

    /// (Re)starts the timer of a session; sessions without a TTL have none.
    pub(super) fn reset(&self, s: &Session) {
        if let Some(ttl) = ttl_of(s) {
            let _ = self
                .ops
                .send(TimerOp::Reset(s.id.clone(), ttl * TTL_MULTIPLIER));
        }
    }

    /// Stops every timer.
    pub(super) fn clear(&self) {
        let _ = self.ops.send(TimerOp::Clear);
    }

    /// Runs the timer task. Timers for sessions already stored are armed by the server
    /// when it becomes the leader, not here: a follower keeps none.
    pub(super) fn spawn(&self, tasks: &TaskTracker, shutdown: CancellationToken) {
        let Some(mut task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        tasks.spawn(async move {
            let mut queue: DelayQueue<String> = DelayQueue::new();
            let mut keys: HashMap<String, Key> = HashMap::new();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    op = task.ops.recv() => match op {
                        Some(TimerOp::Reset(id, after)) => {
                            if let Some(k) = keys.remove(&id) {
                                queue.remove(&k);
                            }
                            keys.insert(id.clone(), queue.insert(id, after));
                        }
                        Some(TimerOp::Clear) => {
                            queue.clear();
                            keys.clear();
                        }
                        None => return,
                    },
                    Some(fired) = std::future::poll_fn(|cx| queue.poll_expired(cx)), if !queue.is_empty() => {
                        let id = fired.into_inner();
                        keys.remove(&id);
                        if task.expired.send(id).is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

fn ttl_of(s: &Session) -> Option<Duration> {
    if s.ttl.is_empty() {
        return None;
    }
    duration::parse(&s.ttl).ok().filter(|d| !d.is_zero())
}
