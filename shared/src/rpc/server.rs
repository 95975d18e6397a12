//! The serving side of the RPC port: accepts connections, answers each request in its own
//! task through a [`Handler`], and writes the answers back tagged with their IDs. Servers
//! serve their endpoint this way, WAN routers their local forwarding API.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::tls::ServerTls;
use super::wire::{
    Body, MAX_FRAME, METRIC_BAD_FRAMES, PROTO_RPC, PROTO_TLS, Reply, Request, Response, codec,
    decode, encode,
};
use super::{Io, RpcError};

/// Answers one request; `peer` is the address the connection came from.
#[async_trait]
pub trait Handler: Send + Sync {
    async fn handle(&self, peer: IpAddr, body: Body) -> Result<Reply, RpcError>;
}

/// How long a new connection may take to say which protocol it speaks (a TLS handshake
/// included).
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests one connection may have in flight (blocking queries included).
const MAX_IN_FLIGHT: usize = 1024;
/// Consul's `limits.rpc_max_conns_per_client`: open connections from one IP address.
const MAX_CONNS_PER_CLIENT: usize = 100;

/// Open connections per client address; a slot is given back when its guard drops.
#[derive(Default)]
struct PerClient(Mutex<HashMap<IpAddr, usize>>);

struct Slot {
    table: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_default();
        if *n >= MAX_CONNS_PER_CLIENT {
            return None;
        }
        *n += 1;
        Some(Slot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.table.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Accepts RPC connections until `shutdown`, TLS ones too when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<dyn Handler>,
    tls: Option<ServerTls>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let per_client = Arc::new(PerClient::default());
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an RPC connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = per_client.take(peer.ip()) else {
            metrics::counter!(METRIC_BAD_FRAMES).increment(1);
            tracing::warn!(%peer, "refused an RPC connection: too many from this address");
            continue;
        };
        let handler = handler.clone();
        let stop = shutdown.clone();
        let inner = tasks.clone();
        let tls = tls.clone();
        tasks.spawn(async move {
            let _slot = slot;
            let opened = tokio::time::timeout(HELLO_TIMEOUT, open(stream, tls.as_ref()))
                .await
                .unwrap_or(Err("no protocol byte"));
            let served = match opened {
                Ok(io) => connection(io, peer.ip(), handler, inner, stop).await,
                Err(why) => Err(why),
            };
            if let Err(why) = served {
                metrics::counter!(METRIC_BAD_FRAMES).increment(1);
                tracing::debug!(%peer, why, "RPC connection closed");
            }
        });
    }
}

async fn hello(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Result<u8, &'static str> {
    let mut byte = [0u8; 1];
    stream
        .read_exact(&mut byte)
        .await
        .map_err(|_| "no protocol byte")?;
    Ok(byte[0])
}

/// Reads the protocol byte and, for a TLS connection, runs the handshake and reads the
/// byte inside it; refuses plain RPC where TLS is required.
async fn open(mut stream: TcpStream, tls: Option<&ServerTls>) -> Result<Box<dyn Io>, &'static str> {
    let _ = stream.set_nodelay(true);
    match (hello(&mut stream).await?, tls) {
        (PROTO_RPC, Some(t)) if t.required => Err("plain RPC refused: this port requires TLS"),
        (PROTO_RPC, _) => Ok(Box::new(stream)),
        (PROTO_TLS, Some(t)) => {
            let mut session = t
                .acceptor
                .accept(stream)
                .await
                .map_err(|_| "TLS handshake failed")?;
            match hello(&mut session).await? {
                PROTO_RPC => Ok(Box::new(session)),
                _ => Err("unknown protocol byte inside TLS"),
            }
        }
        (PROTO_TLS, None) => Err("TLS offered, but this port has no certificate"),
        _ => Err("unknown protocol byte"),
    }
}

async fn connection(
    stream: Box<dyn Io>,
    peer: IpAddr,
    handler: Arc<dyn Handler>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) -> Result<(), &'static str> {
    let (mut sink, mut frames) = Framed::new(stream, codec()).split();
    let (tx, mut rx) = mpsc::channel::<bytes::Bytes>(256);
    let writer = tasks.spawn(async move {
        while let Some(frame) = rx.recv().await {
            if super::wire::write_batch(&mut sink, &mut rx, frame)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let limit = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let result = loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            f = frames.next() => f,
        };
        let frame = match frame {
            None => break Ok(()),
            Some(Err(_)) => break Err("bad frame"),
            Some(Ok(f)) => f,
        };
        let Ok(req) = decode::<Request>(&frame) else {
            break Err("undecodable request");
        };
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break Ok(());
        };
        let (handler, tx) = (handler.clone(), tx.clone());
        tasks.spawn(async move {
            let result = handler.handle(peer, req.body).await;
            let _ = tx.send(response_frame(req.id, result)).await;
            drop(permit);
        });
    };
    drop(tx);
    let _ = writer.await;
    result
}

/// The frame answering request `id`. A reply that cannot be encoded, or is larger than a
/// frame may be, becomes an error answer, so the caller learns why and the connection
/// stays usable.
fn response_frame(id: u64, result: Result<Reply, RpcError>) -> bytes::Bytes {
    let encoded = encode(&Response { id, result }).and_then(|b| {
        if b.len() > MAX_FRAME {
            Err(RpcError::internal(format!(
                "the answer ({} bytes) is larger than the {MAX_FRAME}-byte frame limit",
                b.len()
            )))
        } else {
            Ok(b)
        }
    });
    let bytes = encoded.unwrap_or_else(|e| {
        encode(&Response { id, result: Err(e) }).expect("invariant: an error answer always encodes")
    });
    bytes::Bytes::from(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_answer_becomes_an_error_answer() {
        use crate::rpc::{QueryMeta, QueryResult, ReadResponse, SnapshotPart};
        let huge = Reply::Read(ReadResponse {
            meta: QueryMeta::default(),
            result: QueryResult::SnapshotPart(SnapshotPart {
                handle: "127.0.0.1:8300/x".into(),
                total: MAX_FRAME as u64 + 1,
                offset: 0,
                data: vec![7; MAX_FRAME + 1],
            }),
        });
        let frame = response_frame(9, Ok(huge));
        assert!(frame.len() < 1024);
        let resp: Response = decode(&frame).unwrap();
        assert_eq!(resp.id, 9);
        let err = resp.result.expect_err("an error answer");
        assert!(err.message.contains("frame limit"), "{}", err.message);
        let small = response_frame(10, Ok(Reply::Raft(vec![1, 2])));
        let back: Response = decode(&small).unwrap();
        assert!(matches!(back.result, Ok(Reply::Raft(b)) if b == [1, 2]));
    }

    /// Serves one connection with `handler`; with `silent_first`, the connection accepted
    /// before it is held open and never read, as a peer that went silent would.
    async fn serve_one(handler: Arc<dyn Handler>, silent_first: bool) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _silent = if silent_first {
                Some(listener.accept().await.unwrap())
            } else {
                None
            };
            let (stream, peer) = listener.accept().await.unwrap();
            let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
            let io = open(stream, None).await.unwrap();
            let _ = connection(io, peer.ip(), handler, tasks, stop).await;
        });
        addr
    }

    /// A call that timed out on a connection whose peer went silent does not make the next
    /// call wait on the same connection.
    #[tokio::test]
    async fn a_timed_out_call_does_not_poison_the_next() {
        struct Answer;
        #[async_trait]
        impl Handler for Answer {
            async fn handle(&self, _: IpAddr, _: Body) -> Result<Reply, RpcError> {
                Ok(Reply::Raft(vec![42]))
            }
        }
        let addr = serve_one(Arc::new(Answer), true).await;
        let client = crate::rpc::client::RpcClient::default();
        let first = client
            .call(addr, Body::Raft(vec![1]), Duration::from_millis(300))
            .await;
        assert!(
            matches!(first, Err(crate::rpc::client::CallError::Transport(_))),
            "{first:?}"
        );
        let second = client
            .call(addr, Body::Raft(vec![2]), Duration::from_secs(5))
            .await;
        assert!(
            matches!(&second, Ok(Reply::Raft(b)) if b == &[42]),
            "{second:?}"
        );
    }

    /// An answer over the frame limit reaches the caller as an error, and the connection
    /// (the only one the listener ever accepts) answers the next call.
    #[tokio::test]
    async fn an_oversized_answer_leaves_the_connection_usable() {
        struct Sized;
        #[async_trait]
        impl Handler for Sized {
            async fn handle(&self, _: IpAddr, body: Body) -> Result<Reply, RpcError> {
                match body {
                    Body::Raft(b) if b == [1] => Ok(Reply::Raft(vec![0; MAX_FRAME + 1])),
                    _ => Ok(Reply::Raft(vec![42])),
                }
            }
        }
        let addr = serve_one(Arc::new(Sized), false).await;
        let client = crate::rpc::client::RpcClient::default();
        let big = client
            .call(addr, Body::Raft(vec![1]), Duration::from_secs(10))
            .await;
        match &big {
            Err(crate::rpc::client::CallError::Remote(e)) => {
                assert!(e.message.contains("frame limit"), "{}", e.message)
            }
            other => panic!("an oversized answer came back as {other:?}"),
        }
        let next = client
            .call(addr, Body::Raft(vec![2]), Duration::from_secs(5))
            .await;
        assert!(
            matches!(&next, Ok(Reply::Raft(b)) if b == &[42]),
            "{next:?}"
        );
    }

    #[test]
    fn connections_per_client_are_capped_and_given_back() {
        let table = Arc::new(PerClient::default());
        let a: IpAddr = [127, 0, 0, 2].into();
        let b: IpAddr = [127, 0, 0, 3].into();
        let mut held: Vec<Slot> = (0..MAX_CONNS_PER_CLIENT)
            .map(|_| table.take(a).expect("under the cap"))
            .collect();
        assert!(table.take(a).is_none());
        assert!(table.take(b).is_some(), "other clients are not affected");
        held.pop();
        assert!(table.take(a).is_some());
    }
}
