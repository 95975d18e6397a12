//! Forwarding requests between datacenters.
//!
//! **Outbound** ([`Forwarder::forward`]): a local server hands the router a request for
//! another datacenter. The router sends it to a live member of that datacenter, chosen at
//! random ([`crate::routing`]), on a QUIC stream of its own: `[F]` and one request frame.
//! The peer answers `[ANSWER]` and one answer frame when the request is done; a request
//! not done within [`ACK_AFTER`] is first acknowledged with `[RECEIVED]`. Either byte
//! arriving within [`received_timeout`] is what tells a dead or unreachable router from a
//! slow request (a blocking query waits minutes), so a dead router costs a fraction of a
//! second, not a timeout, and a quick request costs no extra packet.
//!
//! A read that fails is sent to another member until the deadline (the hold timeout, or
//! the blocking wait); a write only when it provably never left (the connection or stream
//! could not be opened, or the peer said it delivered nothing to any server).
//!
//! **Inbound** ([`Forwarder::serve`]): a request from another datacenter's router is
//! relayed over the RPC port to the server this router fronts, or, when that one is down,
//! to another live local server, and answered with what the server said.
//!
//! Frames are 4-byte big-endian lengths and MessagePack bodies, at most
//! [`MAX_FRAME`] bytes; every read and write on a stream has a deadline, so a peer that
//! stops reading or never finishes a frame holds up only its own stream.

use std::sync::Arc;
use std::time::Duration;

use cairn_shared::rpc::client::{CallError, RpcClient};
use cairn_shared::rpc::timeouts::{self, HOLD_TIMEOUT, WRITE_TIMEOUT};
use cairn_shared::rpc::wire::{Forwarded, MAX_FRAME, Reply, decode, encode};
use cairn_shared::rpc::{ErrorKind, RpcError};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::federation::{Federation, Target};
use crate::routing::Penalties;
use crate::telemetry::names;
use crate::transport::{ForwardStream, Quic, STREAM_FORWARD};

/// What a router sends back when a forwarded request is not done within [`ACK_AFTER`].
pub const RECEIVED: u8 = 0x06;
/// What precedes the answer frame.
pub const ANSWER: u8 = 0x07;
/// How long a router works on a request before acknowledging it; well under the least
/// [`received_timeout`], so a slow request is never taken for a dead router.
pub const ACK_AFTER: Duration = Duration::from_millis(100);
/// How many routers a request may pass; a request from another datacenter is never sent
/// on to a third.
pub const MAX_HOPS: u8 = 1;
/// How long a peer may take to send its request frame, and to take our answer.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Incoming forwarded requests handled at once.
const MAX_INBOUND: usize = 4096;
/// Pause before another round over a datacenter's members.
const ROUND_PAUSE: Duration = Duration::from_millis(200);
/// After a read was accepted and then lost (its router died holding it), at least this
/// long is left for another attempt, however late the loss was noticed.
const AFTER_LOSS: Duration = Duration::from_secs(3);

/// What crosses the WAN.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WanRequest {
    /// Routers passed so far (1 at the receiving router).
    pub hops: u8,
    /// The datacenter the request comes from, for logs.
    pub from: String,
    pub forwarded: Forwarded,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WanAnswer {
    Ok(Reply),
    /// The request was carried out and failed, or its fate is unknown.
    Failed(RpcError),
    /// The request reached no server: safe to send elsewhere, even a write.
    NotDelivered(String),
}

/// How far one failed attempt at a member got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reached {
    /// Nothing left this router.
    Nowhere,
    /// The request may have reached the peer, which never said it did.
    Unknown,
    /// The peer said it received the request, then the stream or connection broke.
    Peer,
}

#[derive(Debug)]
struct Attempt {
    reached: Reached,
    why: String,
}

impl Attempt {
    fn at(reached: Reached) -> impl FnOnce(String) -> Self {
        move |why| Self { reached, why }
    }
}

/// How long a peer gets to acknowledge a request: a few round trips on a warm connection,
/// bounded so that a dead router is passed over quickly.
pub fn received_timeout(rtt: Option<Duration>) -> Duration {
    let rtt = rtt.unwrap_or(Duration::from_millis(100));
    (Duration::from_millis(500) + rtt * 4).min(Duration::from_secs(3))
}

/// How long a request may take once received.
fn answer_timeout(f: &Forwarded) -> Duration {
    match f {
        Forwarded::Read(r) => timeouts::read_timeout(r.options.max_wait),
        _ => WRITE_TIMEOUT,
    }
}

/// Until when a request keeps being tried elsewhere: a blocking read as long as its wait,
/// anything else for the hold timeout.
fn retry_deadline(f: &Forwarded) -> Duration {
    match f {
        Forwarded::Read(r) if r.options.min_index > 0 => timeouts::read_timeout(r.options.max_wait),
        _ => HOLD_TIMEOUT,
    }
}

/// `prefix`, then `body` as a frame (4-byte length first), in one buffer.
fn framed(prefix: u8, body: &[u8]) -> Result<Vec<u8>, String> {
    let len = u32::try_from(body.len()).map_err(|_| "frame too large".to_string())?;
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(prefix);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Vec<u8>, String> {
    let len = recv.read_u32().await.map_err(|e| e.to_string())? as usize;
    if len > MAX_FRAME {
        return Err(format!("a {len}-byte frame is over the limit"));
    }
    // Grow with what arrives: a peer that announces 16 MiB and sends nothing costs nothing.
    let mut buf = Vec::with_capacity(len.min(64 * 1024));
    (&mut *recv)
        .take(len as u64)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| e.to_string())?;
    if buf.len() != len {
        return Err("short frame".into());
    }
    Ok(buf)
}

/// The forwarding engine, both directions.
#[derive(Debug)]
pub struct Forwarder {
    pub fed: Federation,
    quic: Quic,
    /// Connections to local servers.
    rpc: RpcClient,
    penalties: Penalties,
}

impl Forwarder {
    pub fn new(fed: Federation, quic: Quic, rpc: RpcClient) -> Self {
        Self {
            fed,
            quic,
            rpc,
            penalties: Penalties::default(),
        }
    }

    /// Sends a local server's request to its datacenter and returns the answer.
    pub async fn forward(&self, fwd: Forwarded) -> Result<Reply, RpcError> {
        let dc = fwd.datacenter().to_string();
        let started = Instant::now();
        let result = self.forward_to(&dc, fwd).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) if e.kind == ErrorKind::NoServer => "no_server",
            Err(e) if e.kind == ErrorKind::UnknownDatacenter => "unknown_dc",
            Err(_) => "error",
        };
        metrics::counter!(names::FORWARDS, "dc" => dc.clone(), "outcome" => outcome).increment(1);
        metrics::histogram!(names::FORWARD_SECONDS, "dc" => dc).record(started.elapsed());
        result
    }

    async fn forward_to(&self, dc: &str, fwd: Forwarded) -> Result<Reply, RpcError> {
        if dc == self.fed.datacenter {
            return Err(RpcError::bad_request(format!(
                "a request for {dc} was sent to a router of {dc}"
            )));
        }
        if !self.fed.known(dc) {
            return Err(RpcError::unknown_datacenter());
        }
        let req = WanRequest {
            hops: 1,
            from: self.fed.datacenter.clone(),
            forwarded: fwd,
        };
        let frame = framed(STREAM_FORWARD, &encode(&req)?).map_err(RpcError::internal)?;
        let is_read = req.forwarded.is_read();
        let mut deadline = Instant::now() + retry_deadline(&req.forwarded);
        let mut attempts = 0u32;
        let mut last = String::new();
        loop {
            let targets = self.penalties.order(self.fed.targets(dc));
            if targets.is_empty() {
                // Known, but every router of it is down: Consul's answer, at once.
                tracing::debug!(%dc, attempts, last, "no live router of the datacenter");
                return Err(RpcError::no_server());
            }
            for t in targets {
                if attempts > 0 {
                    if Instant::now() >= deadline {
                        break;
                    }
                    metrics::counter!(names::RETRIES, "dc" => dc.to_string()).increment(1);
                }
                attempts += 1;
                match self.attempt(&t, &frame, &req.forwarded).await {
                    Ok(WanAnswer::Ok(reply)) => {
                        self.penalties.succeeded(&t.name);
                        return Ok(reply);
                    }
                    Ok(WanAnswer::Failed(e)) => {
                        self.penalties.succeeded(&t.name);
                        return Err(e);
                    }
                    Ok(WanAnswer::NotDelivered(why))
                    | Err(Attempt {
                        reached: Reached::Nowhere,
                        why,
                    }) => {
                        tracing::debug!(target = %t.name, why, "not delivered; trying another");
                        self.penalties.failed(&t.name);
                        last = why;
                    }
                    Err(Attempt { reached, why }) => {
                        self.penalties.failed(&t.name);
                        if !is_read {
                            return Err(RpcError::internal(format!(
                                "rpc error forwarding to {}: {why}",
                                t.name
                            )));
                        }
                        // A router that died holding the read is noticed only when its
                        // connection times out; that wait is not the datacenter's fault.
                        if reached == Reached::Peer {
                            deadline = deadline.max(Instant::now() + AFTER_LOSS);
                        }
                        tracing::debug!(target = %t.name, why, "forwarded read failed; trying another");
                        last = why;
                    }
                }
            }
            if Instant::now() >= deadline {
                tracing::warn!(%dc, attempts, last, "no server of the datacenter answered");
                return Err(RpcError::no_server());
            }
            tokio::time::sleep(ROUND_PAUSE.min(deadline - Instant::now())).await;
        }
    }

    async fn attempt(
        &self,
        t: &Target,
        frame: &[u8],
        fwd: &Forwarded,
    ) -> Result<WanAnswer, Attempt> {
        let (mut send, mut recv) = self
            .quic
            .open(t.addr, frame)
            .await
            .map_err(Attempt::at(Reached::Nowhere))?;
        let _ = send.finish();
        let ack_wait = received_timeout(self.quic.rtt(t.addr));
        let unknown = Attempt::at(Reached::Unknown);
        let first = match tokio::time::timeout(ack_wait, recv.read_u8()).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => return Err(unknown(e.to_string())),
            Err(_) => return Err(unknown(format!("no acknowledgement in {ack_wait:?}"))),
        };
        let lost = Attempt::at(Reached::Peer);
        let answer = async {
            let kind = match first {
                RECEIVED => recv.read_u8().await.map_err(|e| e.to_string())?,
                other => other,
            };
            if kind != ANSWER {
                return Err(format!("a stream of an unknown kind {kind:#x}"));
            }
            read_frame(&mut recv).await
        };
        let answer = tokio::time::timeout(answer_timeout(fwd), answer)
            .await
            .map_err(|_| Attempt::at(Reached::Peer)("no answer in time".into()))?
            .map_err(lost)?;
        decode::<WanAnswer>(&answer).map_err(|e| Attempt::at(Reached::Peer)(e.message))
    }

    /// Answers requests from other datacenters until `shutdown`.
    pub async fn serve(
        self: Arc<Self>,
        mut incoming: mpsc::Receiver<ForwardStream>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) {
        let slots = Arc::new(Semaphore::new(MAX_INBOUND));
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => return,
                s = incoming.recv() => match s { Some(s) => s, None => return },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                metrics::counter!(names::BAD_PACKETS).increment(1);
                continue;
            };
            let me = self.clone();
            tasks.spawn(async move {
                me.answer(stream).await;
                drop(slot);
            });
        }
    }

    async fn answer(&self, s: ForwardStream) {
        let ForwardStream {
            mut send,
            mut recv,
            peer,
        } = s;
        let req = match tokio::time::timeout(FRAME_TIMEOUT, read_frame(&mut recv)).await {
            Ok(Ok(frame)) => decode::<WanRequest>(&frame),
            _ => Err(RpcError::bad_request("no complete request")),
        };
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                metrics::counter!(names::BAD_PACKETS).increment(1);
                tracing::debug!(peer = %peer.addr, error = %e, "refused a forwarded request");
                let _ = send.reset(2u32.into());
                return;
            }
        };
        let relay = self.relay(req);
        tokio::pin!(relay);
        let answer = tokio::select! {
            a = &mut relay => a,
            _ = tokio::time::sleep(ACK_AFTER) => {
                if send.write_all(&[RECEIVED]).await.is_err() {
                    return;
                }
                relay.await
            }
        };
        let outcome = match &answer {
            WanAnswer::Ok(_) => "ok",
            WanAnswer::Failed(_) => "error",
            WanAnswer::NotDelivered(_) => "not_delivered",
        };
        metrics::counter!(names::RELAYED, "outcome" => outcome).increment(1);
        let body = match encode(&answer) {
            Ok(f) if f.len() <= MAX_FRAME => f,
            Ok(f) => encode(&WanAnswer::Failed(RpcError::internal(format!(
                "the answer ({} bytes) is larger than the {MAX_FRAME}-byte frame limit",
                f.len()
            ))))
            .unwrap_or_default(),
            Err(e) => encode(&WanAnswer::Failed(e)).unwrap_or_default(),
        };
        let written = async {
            send.write_all(&framed(ANSWER, &body)?)
                .await
                .map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())
        };
        if let Ok(Err(e)) | Err(e) = tokio::time::timeout(FRAME_TIMEOUT, written)
            .await
            .map_err(|_| "the peer stopped reading".to_string())
        {
            tracing::debug!(peer = %peer.addr, error = %e, "an answer was not delivered");
        }
    }

    /// Hands a request from another datacenter to a local server: the fronted one first,
    /// then the others in random order.
    async fn relay(&self, req: WanRequest) -> WanAnswer {
        let dc = req.forwarded.datacenter();
        if dc != self.fed.datacenter {
            return WanAnswer::NotDelivered(format!(
                "this router is in {}, not {dc}",
                self.fed.datacenter
            ));
        }
        if req.hops > MAX_HOPS {
            return WanAnswer::Failed(RpcError::internal(format!(
                "a request from {} passed too many routers",
                req.from
            )));
        }
        let fronted = self.fed.fronted_rpc();
        let mut others: Vec<_> = self
            .fed
            .local_servers()
            .into_iter()
            .map(|(_, a)| a)
            .filter(|a| Some(*a) != fronted)
            .collect();
        others.shuffle(&mut rand::rng());
        let is_read = req.forwarded.is_read();
        let timeout = answer_timeout(&req.forwarded);
        let body = req.forwarded.into_body();
        for server in fronted.into_iter().chain(others) {
            match self.rpc.call(server, body.clone(), timeout).await {
                Ok(reply) => return WanAnswer::Ok(reply),
                Err(CallError::Remote(e)) => return WanAnswer::Failed(e),
                Err(CallError::NotSent(e)) => {
                    tracing::debug!(%server, error = %e, "local server unreachable; trying another");
                }
                Err(CallError::Transport(e)) if is_read => {
                    tracing::debug!(%server, error = %e, "relayed read failed; trying another");
                }
                Err(CallError::Transport(e)) => {
                    return WanAnswer::Failed(RpcError::internal(format!("rpc error: {e}")));
                }
            }
        }
        WanAnswer::NotDelivered(format!("no live server in {}", self.fed.datacenter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_request_is_acknowledged_long_before_the_least_ack_wait() {
        assert!(ACK_AFTER * 4 <= received_timeout(Some(Duration::ZERO)));
        let f = framed(ANSWER, b"abc").unwrap();
        assert_eq!(f, [ANSWER, 0, 0, 0, 3, b'a', b'b', b'c']);
    }

    #[test]
    fn acknowledgements_are_waited_for_a_few_round_trips_at_most_three_seconds() {
        assert_eq!(received_timeout(None), Duration::from_millis(900));
        assert_eq!(
            received_timeout(Some(Duration::from_millis(50))),
            Duration::from_millis(700)
        );
        assert_eq!(
            received_timeout(Some(Duration::from_secs(2))),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn answers_round_trip() {
        let a = WanAnswer::NotDelivered("x".into());
        let back: WanAnswer = decode(&encode(&a).unwrap()).unwrap();
        assert!(matches!(back, WanAnswer::NotDelivered(s) if s == "x"));
    }
}
