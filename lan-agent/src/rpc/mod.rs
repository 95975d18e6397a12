//! The agent's side of the RPC port (`:8300`). The wire protocol, the connection client and
//! the accept loop are shared with the WAN router ([`cairn_shared::rpc`]); here are what
//! only agents do: [`ClientRpc`], a client agent's way to its servers, and [`Endpoint`],
//! which answers the port's requests through a server's [`Rpc`].

mod client;

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
pub use cairn_shared::rpc::client::{CallError, RpcClient};
pub use cairn_shared::rpc::server::{Handler, serve};
pub use cairn_shared::rpc::wire::{Body, METRIC_BAD_FRAMES, Reply};
use cairn_shared::rpc::{ErrorKind, RpcError, WriteResult};
pub use client::{ClientRpc, ServerSource, StaticServers};

use crate::server::Rpc;

/// Answers RPC-port requests with a server's endpoint.
#[derive(Debug)]
pub struct Endpoint(pub Arc<dyn Rpc>);

#[async_trait]
impl Handler for Endpoint {
    async fn handle(&self, peer: IpAddr, body: Body) -> Result<Reply, RpcError> {
        let rpc = &self.0;
        match body {
            Body::Read(r) => rpc.read(r).await.map(Reply::Read),
            Body::Write(w) => rpc.write(w).await.map(Reply::Write),
            Body::LeaderRead(r) => rpc.read_on_leader(r).await.map(Reply::Read),
            Body::LeaderWrite(w) => rpc.write_on_leader(w).await.map(Reply::Write),
            Body::Raft(bytes) => rpc.raft(peer, bytes).await.map(Reply::Raft),
            Body::FireEvent { datacenter, event } => rpc
                .fire_event(datacenter, event)
                .await
                .map(|()| Reply::Write(WriteResult::Bool(true))),
            Body::Forward(_) | Body::WanStatus => Err(RpcError::new(
                ErrorKind::BadRequest,
                "this is a server's RPC port, not a WAN router's",
            )),
        }
    }
}
