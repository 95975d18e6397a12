//! A user-space UDP proxy that delays packets, for WAN latency between routers on loopback
//! (the kernel here has no `netem`).
//!
//! A proxy stands in for one router: it listens on its own address and relays every
//! packet to the router, and the router's answers back, each after the one-way delay that
//! [`DelayProxy::start`]'s `delay` function gives for the sender's address. Each sender
//! gets an upstream socket of its own, so the router sees one stable peer per sender, as
//! QUIC requires. Routers advertise their proxy's address (`-advertise-wan`), so every
//! packet between two routers crosses the receiver's proxy once and is delayed once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;

/// One-way delay for packets between the proxied router and a peer at this address.
pub type DelayFn = Arc<dyn Fn(IpAddr) -> Duration + Send + Sync>;

/// A running proxy; it stops when dropped.
pub struct DelayProxy {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DelayProxy {
    /// Listens on `listen` (port 0 picks one) and relays to `target`.
    pub async fn start(listen: SocketAddr, target: SocketAddr, delay: DelayFn) -> Self {
        let front = Arc::new(UdpSocket::bind(listen).await.expect("binding the proxy"));
        let addr = front.local_addr().unwrap();
        let task = tokio::spawn(run(front, target, delay));
        Self { addr, task }
    }
}

async fn run(front: Arc<UdpSocket>, target: SocketAddr, delay: DelayFn) {
    let upstreams: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let mut buf = vec![0u8; 65_536];
    let mut children = tokio::task::JoinSet::new();
    loop {
        let Ok((n, from)) = front.recv_from(&mut buf).await else {
            return;
        };
        let packet = buf[..n].to_vec();
        let wait = delay(from.ip());
        let existing = upstreams.lock().unwrap().get(&from).cloned();
        let up = match existing {
            Some(u) => u,
            None => {
                let u = Arc::new(
                    UdpSocket::bind(SocketAddr::new(front.local_addr().unwrap().ip(), 0))
                        .await
                        .expect("binding an upstream socket"),
                );
                upstreams.lock().unwrap().insert(from, u.clone());
                // Answers from the router go back to this sender, delayed the same.
                let (back, front2) = (u.clone(), front.clone());
                children.spawn(async move {
                    let mut b = vec![0u8; 65_536];
                    while let Ok((n, _)) = back.recv_from(&mut b).await {
                        let p = b[..n].to_vec();
                        let f = front2.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(wait).await;
                            let _ = f.send_to(&p, from).await;
                        });
                    }
                });
                u
            }
        };
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let _ = up.send_to(&packet, target).await;
        });
    }
}
