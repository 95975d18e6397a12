//! How gossip reaches the network: UDP datagrams and TCP streams behind a trait, with the
//! real sockets in [`NetTransport`] and an in-memory network with latency, loss and
//! partitions in [`Fabric`], so several agents' gossip can run in one test process.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

/// A byte stream to a peer.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub type BoxStream = Box<dyn Stream>;

/// The packet and stream layer gossip runs on.
#[async_trait]
pub trait GossipTransport: Send + Sync {
    /// The address other members reach this one at.
    fn local_addr(&self) -> SocketAddr;
    async fn recv_packet(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;
    async fn send_packet(&self, to: SocketAddr, data: &[u8]) -> io::Result<()>;
    async fn accept(&self) -> io::Result<(BoxStream, SocketAddr)>;
    async fn connect(&self, to: SocketAddr) -> io::Result<BoxStream>;
}

/// UDP and TCP sockets bound to one address.
pub struct NetTransport {
    udp: UdpSocket,
    tcp: TcpListener,
    addr: SocketAddr,
}

impl NetTransport {
    /// Binds UDP and TCP on `bind` (port 0: one free for both); peers are told
    /// `advertise` (the bound IP when `None`) with the bound port.
    pub async fn bind(bind: SocketAddr, advertise: Option<IpAddr>) -> io::Result<Self> {
        let mut tries = 0;
        loop {
            let udp = UdpSocket::bind(bind).await?;
            let bound = udp.local_addr()?;
            match TcpListener::bind(bound).await {
                Ok(tcp) => {
                    return Ok(Self {
                        udp,
                        tcp,
                        addr: SocketAddr::new(advertise.unwrap_or(bound.ip()), bound.port()),
                    });
                }
                // An ephemeral UDP port whose TCP twin is taken: pick another.
                Err(_) if bind.port() == 0 && tries < 16 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

#[async_trait]
impl GossipTransport for NetTransport {
    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    async fn recv_packet(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.udp.recv_from(buf).await
    }

    async fn send_packet(&self, to: SocketAddr, data: &[u8]) -> io::Result<()> {
        self.udp.send_to(data, to).await.map(|_| ())
    }

    async fn accept(&self) -> io::Result<(BoxStream, SocketAddr)> {
        let (s, peer) = self.tcp.accept().await?;
        let _ = s.set_nodelay(true);
        Ok((Box::new(s), peer))
    }

    async fn connect(&self, to: SocketAddr) -> io::Result<BoxStream> {
        let s = tokio::net::TcpStream::connect(to).await?;
        let _ = s.set_nodelay(true);
        Ok(Box::new(s))
    }
}

type Packet = (Vec<u8>, SocketAddr);

#[derive(Default)]
struct FabricInner {
    packets: HashMap<SocketAddr, mpsc::UnboundedSender<Packet>>,
    streams: HashMap<SocketAddr, mpsc::UnboundedSender<(DuplexStream, SocketAddr)>>,
    /// Links that cannot carry traffic, either way.
    cut: HashSet<(SocketAddr, SocketAddr)>,
    /// Nodes off the network, both ways.
    down: HashSet<SocketAddr>,
    latency: HashMap<(SocketAddr, SocketAddr), Duration>,
    loss: f64,
}

/// An in-memory network joining [`FabricTransport`]s.
#[derive(Clone, Default)]
pub struct Fabric {
    inner: Arc<Mutex<FabricInner>>,
}

impl Fabric {
    fn lock(&self) -> std::sync::MutexGuard<'_, FabricInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A transport for `addr` on this fabric.
    pub fn transport(&self, addr: SocketAddr) -> FabricTransport {
        let (ptx, prx) = mpsc::unbounded_channel();
        let (stx, srx) = mpsc::unbounded_channel();
        let mut inner = self.lock();
        inner.packets.insert(addr, ptx);
        inner.streams.insert(addr, stx);
        FabricTransport {
            fabric: self.clone(),
            addr,
            packets: tokio::sync::Mutex::new(prx),
            streams: tokio::sync::Mutex::new(srx),
        }
    }

    /// Cuts every link between the two groups.
    pub fn partition(&self, a: &[SocketAddr], b: &[SocketAddr]) {
        let mut inner = self.lock();
        for x in a {
            for y in b {
                inner.cut.insert((*x, *y));
                inner.cut.insert((*y, *x));
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.lock().cut.clear();
    }

    /// Takes a node off the network entirely (as if its machine died).
    pub fn isolate(&self, addr: SocketAddr) {
        self.lock().down.insert(addr);
    }

    pub fn set_latency(&self, a: SocketAddr, b: SocketAddr, d: Duration) {
        let mut inner = self.lock();
        inner.latency.insert((a, b), d);
        inner.latency.insert((b, a), d);
    }

    /// The probability that any one packet is lost.
    pub fn set_loss(&self, p: f64) {
        self.lock().loss = p;
    }

    fn route(&self, from: SocketAddr, to: SocketAddr) -> Option<Duration> {
        let inner = self.lock();
        if inner.cut.contains(&(from, to)) || inner.down.contains(&from) || inner.down.contains(&to)
        {
            return None;
        }
        Some(inner.latency.get(&(from, to)).copied().unwrap_or_default())
    }
}

/// One node's view of a [`Fabric`].
pub struct FabricTransport {
    fabric: Fabric,
    addr: SocketAddr,
    packets: tokio::sync::Mutex<mpsc::UnboundedReceiver<Packet>>,
    streams: tokio::sync::Mutex<mpsc::UnboundedReceiver<(DuplexStream, SocketAddr)>>,
}

#[async_trait]
impl GossipTransport for FabricTransport {
    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    async fn recv_packet(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (data, from) = self
            .packets
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "fabric closed"))?;
        let n = data.len().min(buf.len());
        buf[..n].copy_from_slice(&data[..n]);
        Ok((n, from))
    }

    async fn send_packet(&self, to: SocketAddr, data: &[u8]) -> io::Result<()> {
        let Some(delay) = self.fabric.route(self.addr, to) else {
            return Ok(());
        };
        let (lossy, tx) = {
            let inner = self.fabric.lock();
            (inner.loss, inner.packets.get(&to).cloned())
        };
        if lossy > 0.0 && rand::rng().random_bool(lossy.min(1.0)) {
            return Ok(());
        }
        if let Some(tx) = tx {
            let packet = (data.to_vec(), self.addr);
            if delay.is_zero() {
                let _ = tx.send(packet);
            } else {
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = tx.send(packet);
                });
            }
        }
        Ok(())
    }

    async fn accept(&self) -> io::Result<(BoxStream, SocketAddr)> {
        let (s, from) = self
            .streams
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "fabric closed"))?;
        Ok((Box::new(s), from))
    }

    async fn connect(&self, to: SocketAddr) -> io::Result<BoxStream> {
        let refused = || io::Error::new(io::ErrorKind::ConnectionRefused, "unreachable");
        let delay = self.fabric.route(self.addr, to).ok_or_else(refused)?;
        let tx = self
            .fabric
            .lock()
            .streams
            .get(&to)
            .cloned()
            .ok_or_else(refused)?;
        tokio::time::sleep(delay).await;
        let (a, b) = tokio::io::duplex(64 * 1024);
        tx.send((b, self.addr)).map_err(|_| refused())?;
        Ok(Box::new(a))
    }
}
