//! The client side of the RPC port: one multiplexed connection per peer, reused for every
//! request. [`RpcClient::call`] tells a request that never left this process (safe to send
//! elsewhere, even a write) from one whose connection broke after it was sent.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::Framed;

use super::timeouts::CONNECT_TIMEOUT;
use super::tls::ClientTls;
use super::wire::{Body, PROTO_RPC, PROTO_TLS, Reply, Request, Response, codec, decode, encode};
use super::{Io, RpcError};

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The request never left this process (no connection): safe to send elsewhere.
    NotSent(String),
    /// The connection broke or timed out after the request was sent: it may or may not
    /// have been carried out.
    Transport(String),
    /// The server answered with an error.
    Remote(RpcError),
}

/// The calls waiting on a connection. Once the connection's reader has stopped, `closed`
/// is set under the same lock as the waiters are dropped, so a call that registers later
/// learns the connection is dead instead of waiting out its timeout.
#[derive(Default)]
struct Waiters {
    waiting: HashMap<u64, oneshot::Sender<Result<Reply, RpcError>>>,
    closed: bool,
}

type Pending = Arc<Mutex<Waiters>>;

struct Conn {
    tx: mpsc::Sender<bytes::Bytes>,
    pending: Pending,
}

/// Connections to servers, shared by all calls.
#[derive(Default)]
pub struct RpcClient {
    conns: Mutex<HashMap<SocketAddr, Arc<Conn>>>,
    next_id: AtomicU64,
    /// The address outgoing connections come from; servers recognise each other by it.
    source: Option<IpAddr>,
    /// `verify_outgoing`: every connection is TLS.
    tls: Option<ClientTls>,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is one map operation; a poisoned map is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RpcClient {
    /// A client whose connections leave from `ip` (a server's bind address).
    pub fn from_ip(ip: IpAddr) -> Self {
        Self {
            source: (!ip.is_unspecified()).then_some(ip),
            ..Self::default()
        }
    }

    /// The same client dialling over TLS (`verify_outgoing`) when `tls` is given.
    pub fn with_tls(mut self, tls: Option<ClientTls>) -> Self {
        self.tls = tls;
        self
    }

    async fn connect(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let Some(ip) = self.source.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) else {
            return tokio::net::TcpStream::connect(addr).await;
        };
        let socket = if ip.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(ip, 0))?;
        socket.connect(addr).await
    }

    async fn conn(&self, addr: SocketAddr) -> Result<Arc<Conn>, CallError> {
        if let Some(c) = lock(&self.conns)
            .get(&addr)
            .filter(|c| !c.tx.is_closed() && !lock(&c.pending).closed)
        {
            return Ok(c.clone());
        }
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, self.open(addr))
            .await
            .map_err(|_| CallError::NotSent(format!("connecting to {addr}: timed out")))?
            .map_err(|e| CallError::NotSent(format!("connecting to {addr}: {e}")))?;
        let (mut sink, mut frames) = Framed::new(stream, codec()).split();
        let (tx, mut rx) = mpsc::channel::<bytes::Bytes>(256);
        let pending: Pending = Arc::default();
        // When the last user of a discarded connection is gone, the writer closes it and
        // tells the reader, so a silent peer does not keep a socket and a task forever.
        let (writer_done, mut stop_reading) = oneshot::channel::<()>();
        tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if super::wire::write_batch(&mut sink, &mut rx, frame)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let _ = tokio::time::timeout(CONNECT_TIMEOUT, sink.close()).await;
            let _ = writer_done.send(());
        });
        let reader_pending = pending.clone();
        tokio::spawn(async move {
            loop {
                let frame = tokio::select! {
                    f = frames.next() => match f {
                        Some(Ok(frame)) => frame,
                        _ => break,
                    },
                    _ = &mut stop_reading => break,
                };
                let Ok(resp) = decode::<Response>(&frame) else {
                    break;
                };
                if let Some(waiter) = lock(&reader_pending).waiting.remove(&resp.id) {
                    let _ = waiter.send(resp.result);
                }
            }
            // The connection is gone: every waiter learns it (their senders drop here).
            let mut w = lock(&reader_pending);
            w.closed = true;
            w.waiting.clear();
        });
        let conn = Arc::new(Conn { tx, pending });
        lock(&self.conns).insert(addr, conn.clone());
        Ok(conn)
    }

    /// A connection that has said it speaks RPC, inside TLS when this client dials so.
    async fn open(&self, addr: SocketAddr) -> std::io::Result<Box<dyn Io>> {
        let mut stream = self.connect(addr).await?;
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.tls else {
            stream.write_all(&[PROTO_RPC]).await?;
            return Ok(Box::new(stream));
        };
        stream.write_all(&[PROTO_TLS]).await?;
        let mut session = tls
            .connector
            .connect(tls.name.clone(), stream)
            .await
            .map_err(|e| std::io::Error::other(format!("TLS: {e}")))?;
        session.write_all(&[PROTO_RPC]).await?;
        session.flush().await?;
        Ok(Box::new(session))
    }

    fn forget(&self, addr: SocketAddr) {
        lock(&self.conns).remove(&addr);
    }

    /// Sends one request to `addr` and waits up to `timeout` for its answer.
    pub async fn call(
        &self,
        addr: SocketAddr,
        body: Body,
        timeout: Duration,
    ) -> Result<Reply, CallError> {
        let conn = self.conn(addr).await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = bytes::Bytes::from(encode(&Request { id, body }).map_err(CallError::Remote)?);
        let (tx, rx) = oneshot::channel();
        {
            let mut w = lock(&conn.pending);
            if w.closed {
                drop(w);
                self.forget(addr);
                return Err(CallError::NotSent(format!("{addr}: connection closed")));
            }
            w.waiting.insert(id, tx);
        }
        if conn.tx.send(frame).await.is_err() {
            self.forget(addr);
            return Err(CallError::NotSent(format!("{addr}: connection closed")));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result.map_err(CallError::Remote),
            Ok(Err(_)) => {
                self.forget(addr);
                Err(CallError::Transport(format!("{addr}: connection lost")))
            }
            Err(_) => {
                lock(&conn.pending).waiting.remove(&id);
                // The connection may be dead without having said so (a peer that stopped,
                // a path that drops packets): the next call gets a fresh one. Calls still
                // waiting on this one keep it until they finish.
                let mut conns = lock(&self.conns);
                if conns.get(&addr).is_some_and(|c| Arc::ptr_eq(c, &conn)) {
                    conns.remove(&addr);
                }
                Err(CallError::Transport(format!(
                    "{addr}: no answer in {timeout:?}"
                )))
            }
        }
    }
}
