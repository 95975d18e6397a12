//! How a server gets commands into the log: the seam between the endpoint logic and the
//! replication engine.
//!
//! The dev agent's [`DevConsensus`] is a log of one: it assigns the next index and applies
//! at once, so it is always the leader. The Raft engine implements the same trait.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use cairn_shared::api::{AutopilotHealth, AutopilotServer, RaftConfiguration, RaftServer};
use cairn_shared::rpc::{ErrorKind, RpcError, WriteResult};
use tokio::sync::{Mutex, watch};

use crate::catalog::{Command, StateStore};
use crate::raft::{RaftEnvelope, RaftReply};

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
    /// This server's own RPC address, as the others reach it.
    pub self_addr: Option<String>,
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

    /// Folds the log into a snapshot now (after a restore, so its pieces leave the log).
    async fn compact(&self) {}

    /// The log as `/v1/agent/self` reports it: commit index, last log index, applied
    /// index. A log of one commits and applies as it appends.
    fn log_indexes(&self) -> (u64, u64, u64) {
        (0, 0, 0)
    }

    /// Whether this server is the leader, as it changes.
    fn leadership(&self) -> watch::Receiver<bool>;

    /// The voting servers (`/v1/operator/raft/configuration`).
    fn raft_configuration(&self) -> RaftConfiguration {
        let st = self.status();
        let servers = st
            .peers
            .iter()
            .map(|addr| RaftServer {
                id: addr.clone(),
                node: addr.clone(),
                address: addr.clone(),
                leader: st.leader_addr.as_ref() == Some(addr),
                protocol_version: "3".into(),
                voter: true,
                last_index: 0,
            })
            .collect();
        RaftConfiguration { servers, index: 0 }
    }

    /// Server health as autopilot judges it (`/v1/operator/autopilot/health`).
    fn autopilot_health(&self) -> AutopilotHealth {
        let servers: Vec<AutopilotServer> = self
            .raft_configuration()
            .servers
            .into_iter()
            .map(|s| AutopilotServer {
                id: s.id,
                name: s.node,
                address: s.address,
                serf_status: "alive".into(),
                version: crate::version::VERSION.into(),
                leader: s.leader,
                last_contact: "0s".into(),
                last_index: s.last_index,
                healthy: true,
                voter: s.voter,
                ..AutopilotServer::default()
            })
            .collect();
        AutopilotHealth {
            healthy: true,
            failure_tolerance: (servers.len() as u64).saturating_sub(1) / 2,
            servers,
        }
    }

    /// Removes a server from the Raft configuration.
    async fn remove_peer(
        &self,
        _id: Option<String>,
        _address: Option<String>,
    ) -> Result<(), RpcError> {
        Err(RpcError::bad_request(
            "this server runs without Raft peers (dev mode); nothing to remove",
        ))
    }

    /// Hands leadership to another voter (`id`, or the most caught-up one).
    async fn transfer_leader(&self, _id: Option<String>) -> Result<(), RpcError> {
        Err(RpcError::internal(
            "Failed to transfer leadership: cannot find peer (this server has no other voter)",
        ))
    }

    /// A Raft message from another server (only Raft engines take them).
    async fn raft_message(&self, _from: IpAddr, _env: RaftEnvelope) -> Result<RaftReply, RpcError> {
        Err(RpcError::new(
            ErrorKind::PermissionDenied,
            "this server does not run Raft",
        ))
    }
}

/// A single-node log applied in memory, for `cairn agent -dev`.
#[derive(Debug)]
pub struct DevConsensus {
    state: Arc<StateStore>,
    next_index: Mutex<u64>,
    addr: String,
    /// Always the leader.
    leader: watch::Sender<bool>,
}

impl DevConsensus {
    pub fn new(state: Arc<StateStore>, addr: String) -> Self {
        let start = state.last_index();
        Self {
            state,
            next_index: Mutex::new(start),
            addr,
            leader: watch::Sender::new(true),
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
            self_addr: Some(self.addr.clone()),
        }
    }

    fn leadership(&self) -> watch::Receiver<bool> {
        self.leader.subscribe()
    }

    fn log_indexes(&self) -> (u64, u64, u64) {
        let i = self.state.last_index();
        (i, i, i)
    }
}
