//! [`ClientRpc`]: a client agent's reads and writes go to a random live server of its
//! datacenter, and another is tried when one cannot be reached.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn_shared::api::UserEvent;
use cairn_shared::rpc::timeouts::{HOLD_TIMEOUT, WRITE_TIMEOUT, read_timeout};
use cairn_shared::rpc::{ReadRequest, ReadResponse, RpcError, WriteRequest, WriteResult};
use rand::seq::SliceRandom;

use super::{Body, CallError, Reply, RpcClient};
use crate::server::Rpc;

/// Where a client agent finds servers: the live servers of its datacenter.
pub trait ServerSource: Send + Sync + std::fmt::Debug {
    fn servers(&self) -> Vec<SocketAddr>;
}

/// A fixed list of servers.
#[derive(Debug, Clone)]
pub struct StaticServers(pub Vec<SocketAddr>);

impl ServerSource for StaticServers {
    fn servers(&self) -> Vec<SocketAddr> {
        self.0.clone()
    }
}

/// A client agent's [`Rpc`]: each request goes to a random live server; if that server
/// cannot be reached, another is tried until the hold timeout.
#[derive(Debug)]
pub struct ClientRpc {
    servers: Arc<dyn ServerSource>,
    client: Arc<RpcClient>,
}

impl ClientRpc {
    pub fn new(servers: Arc<dyn ServerSource>, client: Arc<RpcClient>) -> Self {
        Self { servers, client }
    }

    /// Sends `body` to a random live server. Only failures that certainly did not reach a
    /// server are retried elsewhere for writes, so a write is never carried out twice.
    async fn call(&self, body: Body, timeout: Duration) -> Result<Reply, RpcError> {
        let retry_sent = matches!(body, Body::Read(_));
        let deadline = tokio::time::Instant::now() + HOLD_TIMEOUT;
        let mut last = String::from("no known servers");
        loop {
            let mut servers = self.servers.servers();
            servers.shuffle(&mut rand::rng());
            for addr in servers {
                match self.client.call(addr, body.clone(), timeout).await {
                    Ok(reply) => return Ok(reply),
                    Err(CallError::Remote(e)) => return Err(e),
                    Err(CallError::Transport(e)) if !retry_sent => {
                        return Err(RpcError::internal(format!("rpc error: {e}")));
                    }
                    Err(CallError::Transport(e) | CallError::NotSent(e)) => {
                        tracing::debug!(server = %addr, error = %e, "RPC failed; trying another server");
                        last = e;
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RpcError::internal(format!(
                    "No known Consul servers: {last}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[async_trait]
impl Rpc for ClientRpc {
    async fn read(&self, req: ReadRequest) -> Result<ReadResponse, RpcError> {
        let timeout = read_timeout(req.options.max_wait);
        match self.call(Body::Read(req), timeout).await? {
            Reply::Read(r) => Ok(r),
            _ => Err(RpcError::internal("a read got an answer of another kind")),
        }
    }

    async fn write(&self, req: WriteRequest) -> Result<WriteResult, RpcError> {
        match self.call(Body::Write(req), WRITE_TIMEOUT).await? {
            Reply::Write(r) => Ok(r),
            _ => Err(RpcError::internal("a write got an answer of another kind")),
        }
    }

    async fn fire_event(&self, datacenter: String, event: UserEvent) -> Result<(), RpcError> {
        match self
            .call(Body::FireEvent { datacenter, event }, WRITE_TIMEOUT)
            .await?
        {
            Reply::Write(_) => Ok(()),
            _ => Err(RpcError::internal("an event got an answer of another kind")),
        }
    }
}
