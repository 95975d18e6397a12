//! Raft's transport: each Raft message is one request on the server RPC port, over the same
//! multiplexed connections client RPCs use, wrapped in a [`RaftEnvelope`] that tells the
//! receiver the sender's datacenter and cluster.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::{NodeId, RaftEnvelope, RaftMsg, RaftNode, RaftReply, Shared, TypeConfig};
use crate::rpc::{Body, CallError, Reply, RpcClient};
use cairn_shared::rpc::wire::{decode, encode};

/// Makes a connection handle per peer; all share one [`RpcClient`].
#[derive(Clone)]
pub struct Network {
    shared: Arc<Shared>,
    client: Arc<RpcClient>,
}

impl Network {
    pub fn new(
        shared: Arc<Shared>,
        source: std::net::IpAddr,
        tls: Option<cairn_shared::rpc::tls::ClientTls>,
    ) -> Self {
        Self {
            shared,
            client: Arc::new(RpcClient::from_ip(source).with_tls(tls)),
        }
    }
}

pub struct Peer {
    target: NodeId,
    addr: Result<SocketAddr, String>,
    net: Network,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &RaftNode) -> Peer {
        Peer {
            target,
            addr: node
                .addr
                .parse()
                .map_err(|e| format!("bad Raft address {:?}: {e}", node.addr)),
            net: self.clone(),
        }
    }
}

type NetErr<E = openraft::error::Infallible> = RPCError<NodeId, RaftNode, RaftError<NodeId, E>>;

/// The byte bound of one AppendEntries: a bigger batch is split (openraft retries with
/// fewer entries), so a run of large KV values cannot make a frame over the RPC limit or
/// hold a follower's connection for long.
const MAX_APPEND_BYTES: usize = 4 << 20;

/// Counts AppendEntries sent back to openraft to be split.
const METRIC_APPEND_SPLITS: &str = "cairn_raft_append_splits_total";

/// A message in its envelope, encoded.
fn envelope(shared: &Shared, msg: RaftMsg) -> Result<Vec<u8>, String> {
    let env = RaftEnvelope {
        datacenter: shared.datacenter.clone(),
        cluster_id: shared.cluster_id(),
        from: shared.id,
        msg,
    };
    encode(&env).map_err(|e| e.message)
}

/// Sends one message to another server.
pub async fn send(
    client: &RpcClient,
    shared: &Shared,
    addr: SocketAddr,
    msg: RaftMsg,
    timeout: Duration,
) -> Result<RaftReply, CallError> {
    let frame = envelope(shared, msg).map_err(CallError::NotSent)?;
    send_frame(client, addr, frame, timeout).await
}

async fn send_frame(
    client: &RpcClient,
    addr: SocketAddr,
    frame: Vec<u8>,
    timeout: Duration,
) -> Result<RaftReply, CallError> {
    match client.call(addr, Body::Raft(frame), timeout).await? {
        Reply::Raft(r) => decode(&r).map_err(|e| CallError::Transport(e.message)),
        _ => Err(CallError::Transport(
            "a Raft message got a non-Raft answer".into(),
        )),
    }
}

impl Peer {
    async fn call<E: std::error::Error>(
        &self,
        msg: RaftMsg,
        option: &RPCOption,
    ) -> Result<RaftReply, NetErr<E>> {
        let frame = envelope(&self.net.shared, msg)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&Msg(e))))?;
        self.call_frame(frame, option).await
    }

    async fn call_frame<E: std::error::Error>(
        &self,
        frame: Vec<u8>,
        option: &RPCOption,
    ) -> Result<RaftReply, NetErr<E>> {
        let addr = match &self.addr {
            Ok(a) => *a,
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&Msg(e.clone())))),
        };
        send_frame(&self.net.client, addr, frame, option.hard_ttl())
            .await
            .map_err(|e| match e {
                CallError::NotSent(m) => RPCError::Unreachable(Unreachable::new(&Msg(m))),
                CallError::Transport(m) => RPCError::Network(NetworkError::new(&Msg(m))),
                CallError::Remote(r) => RPCError::Network(NetworkError::new(&Msg(format!(
                    "server {} refused: {}",
                    self.target, r.message
                )))),
            })
    }
}

/// A message as an error, for openraft's error wrappers.
#[derive(Debug)]
struct Msg(String);

impl std::fmt::Display for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Msg {}

fn unexpected<E: std::error::Error>() -> NetErr<E> {
    RPCError::Network(NetworkError::new(&Msg("unexpected Raft reply".into())))
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, NetErr> {
        let entries = rpc.entries.len();
        let frame = envelope(&self.net.shared, RaftMsg::Append(rpc))
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&Msg(e))))?;
        if frame.len() > MAX_APPEND_BYTES && entries > 1 {
            metrics::counter!(METRIC_APPEND_SPLITS).increment(1);
            let hint = (entries * MAX_APPEND_BYTES / frame.len()).max(1);
            return Err(PayloadTooLarge::new_entries_hint(hint as u64).into());
        }
        match self.call_frame(frame, &option).await? {
            RaftReply::Append(r) => {
                if r.is_ok() {
                    self.net.shared.heard_from(self.target);
                }
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, NetErr<InstallSnapshotError>> {
        match self.call(RaftMsg::Snapshot(rpc), &option).await? {
            RaftReply::Snapshot(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(unexpected()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, NetErr> {
        match self.call(RaftMsg::Vote(rpc), &option).await? {
            RaftReply::Vote(r) => {
                r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            _ => Err(unexpected()),
        }
    }
}
