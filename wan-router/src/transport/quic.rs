//! The router's QUIC endpoint: one UDP socket that accepts and dials connections to other
//! routers (mutual TLS, see [`super::tls`]) and carries three kinds of traffic.
//!
//! - **Gossip packets** as QUIC datagrams. A packet larger than the connection's datagram
//!   limit (about 1,200 bytes) goes on a unidirectional stream instead, whole.
//! - **Gossip streams** (push/pull, fallback pings): bidirectional streams opened with the
//!   byte [`STREAM_GOSSIP`].
//! - **Forwarded requests**: bidirectional streams opened with [`STREAM_FORWARD`], handed
//!   to the forwarder through a bounded channel.
//!
//! [`Quic`] implements [`GossipTransport`], so the WAN pool runs the same SWIM driver as
//! the LAN. Sending a packet never waits for a handshake: with no connection yet, one is
//! dialled in the background and the packet goes once it is up. Every queue is bounded;
//! what does not fit is dropped and counted, as a datagram would be.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cairn_shared::gossip::GossipTransport;
use cairn_shared::gossip::transport::BoxStream;
use cairn_shared::rpc::timeouts::CONNECT_TIMEOUT;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::tls::{self, Crypto};
use crate::telemetry::names;

/// First byte of a bidirectional stream carrying gossip (push/pull, fallback ping).
pub const STREAM_GOSSIP: u8 = b'G';
/// First byte of a bidirectional stream carrying one forwarded request.
pub const STREAM_FORWARD: u8 = b'F';
/// First byte of a unidirectional stream carrying one gossip packet too large for a
/// datagram.
pub const STREAM_PACKET: u8 = b'D';

/// Largest gossip packet accepted (on a stream; datagrams are smaller anyway).
const MAX_PACKET: usize = 64 * 1024;
/// A connection with no traffic for this long is dead (keep-alives flow every
/// [`KEEP_ALIVE`], so only a vanished peer goes quiet). This bounds how long a request
/// accepted by a router that then dies waits before it is sent elsewhere.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// How long a peer may take to say what a new stream is for.
const STREAM_HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounded queues between connections and their consumers.
const PACKET_QUEUE: usize = 4096;
const STREAM_QUEUE: usize = 128;
const FORWARD_QUEUE: usize = 1024;
/// Requests one peer may have in flight on one connection.
const MAX_STREAMS: u32 = 1024;

/// Who is at the other end of a connection, as its certificate says.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    pub datacenter: String,
}

/// An incoming forwarded request: its stream, after the kind byte.
#[derive(Debug)]
pub struct ForwardStream {
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    pub peer: Peer,
}

#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    #[error("QUIC endpoint on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("{0}")]
    Config(String),
}

struct Inner {
    endpoint: quinn::Endpoint,
    advertise: SocketAddr,
    domain: String,
    conns: Mutex<HashMap<SocketAddr, quinn::Connection>>,
    dialing: Mutex<HashSet<SocketAddr>>,
    packets_tx: mpsc::Sender<(Vec<u8>, SocketAddr)>,
    packets_rx: tokio::sync::Mutex<mpsc::Receiver<(Vec<u8>, SocketAddr)>>,
    streams_tx: mpsc::Sender<(BoxStream, SocketAddr)>,
    streams_rx: tokio::sync::Mutex<mpsc::Receiver<(BoxStream, SocketAddr)>>,
    forwards_tx: mpsc::Sender<ForwardStream>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// The endpoint; cheap to clone.
#[derive(Clone)]
pub struct Quic {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Quic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quic")
            .field("advertise", &self.inner.advertise)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is one map operation; a poisoned map is still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn transport_config() -> Result<Arc<quinn::TransportConfig>, QuicError> {
    let mut t = quinn::TransportConfig::default();
    let idle =
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT).map_err(|e| QuicError::Config(e.to_string()))?;
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_concurrent_bidi_streams(MAX_STREAMS.into());
    t.max_concurrent_uni_streams(256u32.into());
    t.datagram_receive_buffer_size(Some(1 << 20));
    Ok(Arc::new(t))
}

impl Quic {
    /// Binds `bind` and starts accepting. Other routers are told `advertise` (the bound
    /// address when `None`). Returns the endpoint and the queue of incoming forwards.
    pub fn bind(
        bind: SocketAddr,
        advertise: Option<SocketAddr>,
        crypto: Crypto,
        domain: &str,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<(Self, mpsc::Receiver<ForwardStream>), QuicError> {
        let transport = transport_config()?;
        let server_crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto.server)
            .map_err(|e| QuicError::Config(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport.clone());
        let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto.client)
            .map_err(|e| QuicError::Config(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport);
        let mut endpoint = quinn::Endpoint::server(server, bind).map_err(|e| QuicError::Bind {
            addr: bind,
            reason: e.to_string(),
        })?;
        endpoint.set_default_client_config(client);
        let bound = endpoint.local_addr().map_err(|e| QuicError::Bind {
            addr: bind,
            reason: e.to_string(),
        })?;
        let advertise = advertise.unwrap_or(bound);
        let (packets_tx, packets_rx) = mpsc::channel(PACKET_QUEUE);
        let (streams_tx, streams_rx) = mpsc::channel(STREAM_QUEUE);
        let (forwards_tx, forwards_rx) = mpsc::channel(FORWARD_QUEUE);
        let quic = Self {
            inner: Arc::new(Inner {
                endpoint,
                advertise,
                domain: domain.to_string(),
                conns: Mutex::new(HashMap::new()),
                dialing: Mutex::new(HashSet::new()),
                packets_tx,
                packets_rx: tokio::sync::Mutex::new(packets_rx),
                streams_tx,
                streams_rx: tokio::sync::Mutex::new(streams_rx),
                forwards_tx,
                tasks: tasks.clone(),
                shutdown: shutdown.clone(),
            }),
        };
        let q = quic.clone();
        tasks.spawn(async move { q.accept_loop().await });
        let q = quic.clone();
        tasks.spawn(async move {
            shutdown.cancelled().await;
            q.inner.endpoint.close(0u32.into(), b"router stopping");
        });
        Ok((quic, forwards_rx))
    }

    /// The UDP address the endpoint is bound to.
    pub fn bound_addr(&self) -> io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// How many connections are up.
    pub fn connections(&self) -> usize {
        lock(&self.inner.conns).len()
    }

    /// Smoothed round trip to `addr`, if connected.
    pub fn rtt(&self, addr: SocketAddr) -> Option<Duration> {
        lock(&self.inner.conns).get(&addr).map(|c| c.rtt())
    }

    async fn accept_loop(self) {
        loop {
            let incoming = tokio::select! {
                _ = self.inner.shutdown.cancelled() => return,
                i = self.inner.endpoint.accept() => match i {
                    Some(i) => i,
                    None => return,
                },
            };
            let q = self.clone();
            self.inner.tasks.spawn(async move {
                let from = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => q.adopt(conn),
                    Err(e) => {
                        metrics::counter!(names::REJECTED_HANDSHAKES, "side" => "accept")
                            .increment(1);
                        tracing::warn!(%from, error = %e, "refused a WAN connection");
                    }
                }
            });
        }
    }

    /// Keeps a new connection and starts reading what it carries.
    fn adopt(&self, conn: quinn::Connection) {
        let addr = conn.remote_address();
        let datacenter = conn
            .peer_identity()
            .and_then(|id| {
                id.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .and_then(|chain| {
                chain
                    .first()
                    .and_then(|c| tls::server_identity(c, &self.inner.domain))
            })
            .map(|(dc, _)| dc)
            .unwrap_or_default();
        tracing::debug!(%addr, %datacenter, "WAN connection up");
        lock(&self.inner.conns).insert(addr, conn.clone());
        let peer = Peer { addr, datacenter };
        let q = self.clone();
        self.inner
            .tasks
            .spawn(async move { q.serve_connection(conn, peer).await });
    }

    async fn serve_connection(self, conn: quinn::Connection, peer: Peer) {
        let datagrams = async {
            while let Ok(d) = conn.read_datagram().await {
                self.packet(d.to_vec(), peer.addr);
            }
        };
        let uni = async {
            while let Ok(mut recv) = conn.accept_uni().await {
                let q = self.clone();
                let from = peer.addr;
                self.inner.tasks.spawn(async move {
                    let read = async {
                        let kind = recv.read_u8().await.ok()?;
                        let data = recv.read_to_end(MAX_PACKET).await.ok()?;
                        (kind == STREAM_PACKET).then_some(data)
                    };
                    match tokio::time::timeout(STREAM_HELLO_TIMEOUT, read).await {
                        Ok(Some(data)) => q.packet(data, from),
                        _ => bad("a packet stream that is late, too large or unknown"),
                    }
                });
            }
        };
        let bi = async {
            while let Ok((send, recv)) = conn.accept_bi().await {
                let q = self.clone();
                let peer = peer.clone();
                self.inner
                    .tasks
                    .spawn(async move { q.stream(send, recv, peer).await });
            }
        };
        tokio::select! {
            _ = datagrams => {}
            _ = uni => {}
            _ = bi => {}
            _ = self.inner.shutdown.cancelled() => {}
        }
        let mut conns = lock(&self.inner.conns);
        if conns
            .get(&peer.addr)
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            conns.remove(&peer.addr);
        }
        tracing::debug!(addr = %peer.addr, reason = ?conn.close_reason(), "WAN connection closed");
    }

    fn packet(&self, data: Vec<u8>, from: SocketAddr) {
        if self.inner.packets_tx.try_send((data, from)).is_err() {
            bad("the gossip packet queue is full");
        }
    }

    /// Routes a new bidirectional stream by its first byte.
    async fn stream(&self, send: quinn::SendStream, mut recv: quinn::RecvStream, peer: Peer) {
        let kind = match tokio::time::timeout(STREAM_HELLO_TIMEOUT, recv.read_u8()).await {
            Ok(Ok(k)) => k,
            _ => return bad("a stream that never said what it is for"),
        };
        match kind {
            STREAM_GOSSIP => {
                let stream: BoxStream = Box::new(tokio::io::join(recv, send));
                if self.inner.streams_tx.try_send((stream, peer.addr)).is_err() {
                    bad("too many gossip streams at once");
                }
            }
            STREAM_FORWARD => {
                let fwd = ForwardStream { send, recv, peer };
                if let Err(mpsc::error::TrySendError::Full(mut f)) =
                    self.inner.forwards_tx.try_send(fwd)
                {
                    let _ = f.send.reset(1u32.into());
                    bad("too many forwarded requests at once");
                }
            }
            _ => bad("a stream of an unknown kind"),
        }
    }

    /// The connection to `to`, dialling it if there is none.
    pub async fn connection(&self, to: SocketAddr) -> Result<quinn::Connection, String> {
        if let Some(c) = lock(&self.inner.conns)
            .get(&to)
            .filter(|c| c.close_reason().is_none())
        {
            return Ok(c.clone());
        }
        let connecting = self
            .inner
            .endpoint
            .connect(to, &format!("server.{}", self.inner.domain))
            .map_err(|e| format!("dialling {to}: {e}"))?;
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                // Refused by our verifier or by theirs (a timeout is not a refusal).
                if matches!(
                    e,
                    quinn::ConnectionError::TransportError(_)
                        | quinn::ConnectionError::ConnectionClosed(_)
                ) {
                    metrics::counter!(names::REJECTED_HANDSHAKES, "side" => "dial").increment(1);
                }
                return Err(format!("connecting to {to}: {e}"));
            }
            Err(_) => return Err(format!("connecting to {to}: timed out")),
        };
        self.adopt(conn.clone());
        Ok(conn)
    }

    /// Opens a stream to `to` and writes `first` on it: the kind byte, and what follows it
    /// when the caller has it at hand (one write, so it usually goes in one packet).
    pub async fn open(
        &self,
        to: SocketAddr,
        first: &[u8],
    ) -> Result<(quinn::SendStream, quinn::RecvStream), String> {
        let conn = self.connection(to).await?;
        let (mut send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| format!("opening a stream to {to}: {e}"))?;
        send.write_all(first)
            .await
            .map_err(|e| format!("writing to {to}: {e}"))?;
        Ok((send, recv))
    }

    fn send_now(&self, conn: &quinn::Connection, data: &[u8]) {
        let fits = conn
            .max_datagram_size()
            .is_some_and(|max| data.len() <= max);
        if fits && conn.send_datagram(Bytes::copy_from_slice(data)).is_ok() {
            return;
        }
        // Too large for a datagram (or datagrams refused): the whole packet on a stream.
        let (conn, data) = (conn.clone(), data.to_vec());
        self.inner.tasks.spawn(async move {
            let sent = async {
                let mut s = conn.open_uni().await.ok()?;
                s.write_all(&[STREAM_PACKET]).await.ok()?;
                s.write_all(&data).await.ok()?;
                s.finish().ok()
            };
            if tokio::time::timeout(STREAM_HELLO_TIMEOUT, sent).await.ok().flatten().is_none() {
                tracing::debug!(to = %conn.remote_address(), "a large gossip packet was not delivered");
            }
        });
    }
}

fn bad(why: &'static str) {
    metrics::counter!(names::BAD_PACKETS).increment(1);
    tracing::debug!(why, "dropped WAN input");
}

#[async_trait]
impl GossipTransport for Quic {
    fn local_addr(&self) -> SocketAddr {
        self.inner.advertise
    }

    async fn recv_packet(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (data, from) = self
            .inner
            .packets_rx
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "endpoint closed"))?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Ok((n, from))
    }

    async fn send_packet(&self, to: SocketAddr, data: &[u8]) -> io::Result<()> {
        let conn = lock(&self.inner.conns)
            .get(&to)
            .filter(|c| c.close_reason().is_none())
            .cloned();
        if let Some(conn) = conn {
            self.send_now(&conn, data);
            return Ok(());
        }
        // Dial in the background; the driver must not wait on a handshake. Packets sent
        // while the dial is under way are dropped, as UDP would.
        if !lock(&self.inner.dialing).insert(to) {
            return Ok(());
        }
        let (q, data) = (self.clone(), data.to_vec());
        self.inner.tasks.spawn(async move {
            match q.connection(to).await {
                Ok(conn) => q.send_now(&conn, &data),
                Err(e) => tracing::debug!(%to, error = %e, "gossip could not reach a router"),
            }
            lock(&q.inner.dialing).remove(&to);
        });
        Ok(())
    }

    async fn accept(&self) -> io::Result<(BoxStream, SocketAddr)> {
        self.inner
            .streams_rx
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "endpoint closed"))
    }

    async fn connect(&self, to: SocketAddr) -> io::Result<BoxStream> {
        let (send, recv) = self
            .open(to, &[STREAM_GOSSIP])
            .await
            .map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, e))?;
        Ok(Box::new(tokio::io::join(recv, send)))
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    use super::*;

    /// A CA, and a way to issue leaf certificates for given DNS names from it.
    struct TestCa {
        cert: CertificateDer<'static>,
        issuer: Issuer<'static, KeyPair>,
    }

    impl TestCa {
        fn new() -> Self {
            let mut p = CertificateParams::default();
            p.distinguished_name.push(DnType::CommonName, "test CA");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let key = KeyPair::generate().unwrap();
            let cert = p.self_signed(&key).unwrap().der().clone();
            Self {
                cert,
                issuer: Issuer::new(p, key),
            }
        }

        fn leaf(&self, names: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
            let p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &self.issuer).unwrap().der().clone();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            (cert, key)
        }

        fn endpoint(&self, leaf: &TestCa, names: &[&str], tasks: &TaskTracker) -> Quic {
            let (cert, key) = leaf.leaf(names);
            let crypto = tls::build(vec![self.cert.clone()], vec![cert], key, "consul").unwrap();
            let (q, _forwards) = Quic::bind(
                "127.0.0.1:0".parse().unwrap(),
                None,
                crypto,
                "consul",
                tasks,
                CancellationToken::new(),
            )
            .unwrap();
            q
        }
    }

    /// Whether the server refused the handshake: under TLS 1.3 the client may think it is
    /// connected until the refusal arrives, so a connection that closes at once counts.
    async fn refused(conn: Option<quinn::Connection>) -> bool {
        let Some(conn) = conn else { return true };
        tokio::time::timeout(Duration::from_secs(2), conn.closed())
            .await
            .is_ok()
    }

    async fn recv(q: &Quic) -> (Vec<u8>, SocketAddr) {
        let mut buf = vec![0u8; 70_000];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), q.recv_packet(&mut buf))
            .await
            .expect("a packet in time")
            .unwrap();
        buf.truncate(n);
        (buf, from)
    }

    #[tokio::test]
    async fn small_packets_go_as_datagrams_and_large_ones_whole_on_a_stream() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = TestCa::new();
        let tasks = TaskTracker::new();
        let a = ca.endpoint(&ca, &["server.dc1.consul"], &tasks);
        let b = ca.endpoint(&ca, &["server.dc2.consul"], &tasks);
        let b_addr = b.local_addr();
        // The first packet dials in the background and may be dropped, like UDP.
        a.connection(b_addr).await.unwrap();
        a.send_packet(b_addr, b"ping").await.unwrap();
        let (got, from) = recv(&b).await;
        assert_eq!(got, b"ping");
        assert_eq!(from, a.local_addr());
        let big: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        a.send_packet(b_addr, &big).await.unwrap();
        let (got, _) = recv(&b).await;
        assert_eq!(got, big, "a packet over the datagram limit arrives whole");
        // And the answer goes back over the same connection.
        b.send_packet(a.local_addr(), b"pong").await.unwrap();
        assert_eq!(recv(&a).await.0, b"pong");
    }

    #[tokio::test]
    async fn only_server_certificates_of_the_ca_and_domain_get_through() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = TestCa::new();
        let other = TestCa::new();
        let tasks = TaskTracker::new();
        let server = ca.endpoint(&ca, &["server.dc1.consul"], &tasks);
        let to = server.local_addr();
        let good = ca.endpoint(&ca, &["server.dc2.consul"], &tasks);
        assert!(
            !refused(good.connection(to).await.ok()).await,
            "a server certificate of the CA"
        );
        for (issuer, names, what) in [
            (&other, &["server.dc2.consul"][..], "another CA"),
            (&ca, &["client.dc2.consul"][..], "a client certificate"),
            (&ca, &["server.dc2.example"][..], "another domain"),
            (&ca, &["server.a.b.consul"][..], "a malformed datacenter"),
        ] {
            let q = ca.endpoint(issuer, names, &tasks);
            assert!(
                refused(q.connection(to).await.ok()).await,
                "{what} must be refused"
            );
        }
        // And a router refuses to dial one whose certificate is not a server's.
        let client_only = ca.endpoint(&ca, &["client.dc3.consul"], &tasks);
        let err = good.connection(client_only.local_addr()).await;
        assert!(err.is_err(), "dialling a non-server certificate must fail");
    }
}
