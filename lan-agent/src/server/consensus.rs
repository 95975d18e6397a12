//! How a server gets commands into the log: the seam between the endpoint logic and the
//! replication engine.
//!
//! The dev agent's [`DevConsensus`] is a log of one: it assigns the next index and applies
//! at once, so it is always the leader. The Raft engine implements the same trait.

use std::sync::Arc;

use async_trait::async_trait;
use cairn_shared::rpc::{RpcError, WriteResult};
use tokio::sync::Mutex;

use crate::catalog::{Command, StateStore};

/// What `apply` answered for one command.
pub type Applied = Result<WriteResult, RpcError>;

/// What the server knows about leadership, for response headers and `/v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaderStatus {
    /// The leader's RPC address, if one is known.
    pub leader_addr: Option<String>,
    pub is_leader: bool,
    /// Milliseconds since this server last heard from the leader (0 on the leader).
    pub last_contact_ms: u64,
    /// Voters' RPC addresses.
    pub peers: Vec<String>,
}

#[async_trait]
pub trait Consensus: Send + Sync + std::fmt::Debug {
    /// Appends `cmd` to the log and resolves once it is committed and applied locally.
    /// The outer error is a replication failure (no leader, say); the inner result is what
    /// `apply` answered. Only the leader accepts proposals.
    async fn propose(&self, cmd: Command) -> Result<Applied, RpcError>;

    /// Confirms this server is still the leader and its state machine has applied
    /// everything committed before the call (a read index), for `?consistent` reads.
    async fn read_barrier(&self) -> Result<(), RpcError>;

    fn status(&self) -> LeaderStatus;
}

/// A single-node log applied in memory, for `cairn agent -dev`.
#[derive(Debug)]
pub struct DevConsensus {
    state: Arc<StateStore>,
    next_index: Mutex<u64>,
    addr: String,
}

impl DevConsensus {
    pub fn new(state: Arc<StateStore>, addr: String) -> Self {
        let start = state.last_index();
        Self {
            state,
            next_index: Mutex::new(start),
            addr,
        }
    }
}

#[async_trait]
impl Consensus for DevConsensus {
    async fn propose(&self, cmd: Command) -> Result<Applied, RpcError> {
        // The lock orders commands exactly like a log would.
        let mut last = self.next_index.lock().await;
        *last += 1;
        Ok(self.state.apply(*last, &cmd))
    }

    async fn read_barrier(&self) -> Result<(), RpcError> {
        // Applying is synchronous with proposing, so everything acknowledged is applied.
        Ok(())
    }

    fn status(&self) -> LeaderStatus {
        LeaderStatus {
            leader_addr: Some(self.addr.clone()),
            is_leader: true,
            last_contact_ms: 0,
            peers: vec![self.addr.clone()],
        }
    }
}
