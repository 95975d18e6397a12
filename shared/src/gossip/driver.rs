//! The task that owns the SWIM state machine and does its I/O (see the module above).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::coordinate::{Client as Vivaldi, Config as VivaldiConfig, Coordinate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::envelope::{Envelope, LeaveIntent};
use super::keyring::{self, Keyring};
use super::swim::{Effect, PushPullState, State, Swim};
use super::transport::{BoxStream, GossipTransport};
use super::{
    Cmd, EventSink, GossipConfig, GossipError, KeyOp, KeyringReport, METRIC_BAD_PACKETS,
    MemberInfo, MemberStatus, decode_tags, encode_tags,
};
use crate::api::{UserEvent, event_index};

/// Stream kinds, the first byte of a gossip TCP connection.
const STREAM_PUSH_PULL: u8 = b'P';
const STREAM_PING: u8 = b'T';
/// Largest stream frame (a push/pull of tens of thousands of members fits).
const MAX_STREAM_FRAME: usize = 16 * 1024 * 1024;
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// Inbound streams served at once; more are refused (push/pulls are rare, one per member
/// every 30 s or so, so only a flood hits this).
const MAX_INBOUND_STREAMS: usize = 128;
/// Event and query IDs remembered, so each is handled and re-gossiped once.
const SEEN: usize = 4096;

pub(super) struct Parts {
    pub config: GossipConfig,
    pub transport: Arc<dyn GossipTransport>,
    pub sink: Arc<dyn EventSink>,
    pub commands: mpsc::UnboundedReceiver<Cmd>,
    pub fired: mpsc::UnboundedReceiver<UserEvent>,
}

/// Recent events carried in every push/pull, so one that missed a member by gossip
/// still reaches it (Serf's anti-entropy for events).
const EXCHANGED_EVENTS: usize = 64;

/// The host's part of a push/pull, next to SWIM's state: what plain gossip could miss.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct HostState {
    events: Vec<UserEvent>,
    left: Vec<LeaveIntent>,
}

/// A push/pull payload: SWIM's state, length-prefixed, then the host's.
fn encode_exchange(swim_state: &[u8], host: &HostState) -> Vec<u8> {
    let mut out = Vec::with_capacity(swim_state.len() + 64);
    out.extend_from_slice(&(swim_state.len() as u32).to_be_bytes());
    out.extend_from_slice(swim_state);
    if rmp_serde::encode::write(&mut out, host).is_err() {
        out.truncate(4 + swim_state.len());
    }
    out
}

fn decode_exchange(bytes: &[u8]) -> Result<(PushPullState, HostState), String> {
    let (len, rest) = bytes.split_first_chunk::<4>().ok_or("short push/pull")?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err("short push/pull".into());
    }
    let (state, host) = rest.split_at(len);
    let state = Swim::decode_state(state).map_err(|e| e.to_string())?;
    let host = rmp_serde::from_slice(host).map_err(|e| e.to_string())?;
    Ok((state, host))
}

#[derive(Debug, Clone, Copy)]
struct Intent {
    incarnation: u32,
    prune: bool,
    since: Duration,
}

/// What spawned I/O tasks report back to the driver.
enum Internal {
    /// A push/pull we started came back with the peer's state; `ack` is set for joins.
    PulledState(PushPullState, HostState, Option<oneshot::Sender<bool>>),
    /// A push/pull we started failed.
    PushPullFailed(Option<oneshot::Sender<bool>>),
    /// A peer pushed its state and wants ours.
    PushedState(PushPullState, HostState, oneshot::Sender<Vec<u8>>),
    /// A peer's fallback ping over TCP.
    StreamPing(Vec<u8>, oneshot::Sender<Option<Vec<u8>>>),
    TcpPingResult(u32, Option<Vec<u8>>),
}

struct PendingQuery {
    report: KeyringReport,
    waiting: HashSet<String>,
    deadline: Instant,
    done: oneshot::Sender<Result<KeyringReport, GossipError>>,
}

struct Driver {
    cfg: GossipConfig,
    swim: Swim,
    transport: Arc<dyn GossipTransport>,
    keyring: Arc<RwLock<Keyring>>,
    origin: Instant,
    members_tx: watch::Sender<Arc<Vec<MemberInfo>>>,
    coord_tx: watch::Sender<Coordinate>,
    /// The last coordinate each member sent on an ack (Serf's coordinate cache).
    peer_coords: PeerCoordinates,
    vivaldi: Vivaldi,
    sink: Arc<dyn EventSink>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    tasks: TaskTracker,
    /// Failed members told to be gone (`force-leave`): shown as left, reaped as left.
    /// Failed members told to be gone (`force-leave`). A member still alive in our view
    /// keeps the intent until it fails (then it shows as left, or is forgotten with
    /// `-prune`); a newer incarnation (a rejoin) voids it. Kept, and sent in push/pulls,
    /// until the tombstone timeout, so members that missed the gossip still learn it.
    force_left: HashMap<String, Intent>,
    leaving: Option<(Instant, oneshot::Sender<()>)>,
    left: bool,
    queries: HashMap<u64, PendingQuery>,
    /// Events and queries already handled (SWIM gossips a user message only from its
    /// sender, so, like Serf, each member re-broadcasts what it sees first).
    seen: VecDeque<u64>,
    recent_events: VecDeque<UserEvent>,
    /// Until when undecryptable packets are not logged again.
    quiet_until: Option<Instant>,
    next_reap: Instant,
}

fn read_lock(k: &RwLock<Keyring>) -> std::sync::RwLockReadGuard<'_, Keyring> {
    // Keyring updates are whole-value replacements; a poisoned lock still holds a keyring.
    k.read().unwrap_or_else(|p| p.into_inner())
}

fn write_lock(k: &RwLock<Keyring>) -> std::sync::RwLockWriteGuard<'_, Keyring> {
    k.write().unwrap_or_else(|p| p.into_inner())
}

/// Members' coordinates as last heard on probe acks, shared with the handle.
pub(super) type PeerCoordinates = Arc<RwLock<HashMap<String, Coordinate>>>;

pub(super) type Handles = (
    watch::Receiver<Arc<Vec<MemberInfo>>>,
    watch::Receiver<Coordinate>,
    PeerCoordinates,
);

pub(super) fn spawn(
    parts: Parts,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<Handles, GossipError> {
    let Parts {
        config,
        transport,
        sink,
        commands,
        fired,
    } = parts;
    let origin = Instant::now();
    let mut swim = Swim::new(
        config.node.clone(),
        transport.local_addr(),
        encode_tags(&config.tags),
        config.swim.clone(),
        config.seed,
        Duration::ZERO,
    )?;
    let vivaldi = Vivaldi::new(VivaldiConfig::default());
    let coord = vivaldi.coordinate();
    swim.set_ack_payload(rmp_serde::to_vec(&coord).unwrap_or_default())?;
    let (members_tx, members_rx) = watch::channel(Arc::new(Vec::new()));
    let (coord_tx, coord_rx) = watch::channel(coord);
    let peer_coords = PeerCoordinates::default();
    let (internal_tx, internal_rx) = mpsc::unbounded_channel();
    let keyring = Arc::new(RwLock::new(config.keyring.clone()));
    tasks.spawn(accept_loop(
        transport.clone(),
        keyring.clone(),
        internal_tx.clone(),
        tasks.clone(),
        shutdown.clone(),
    ));
    let next_reap = origin + config.reap_interval;
    let driver = Driver {
        cfg: config,
        swim,
        transport,
        keyring,
        origin,
        members_tx,
        coord_tx,
        peer_coords: peer_coords.clone(),
        vivaldi,
        sink,
        internal_tx,
        tasks: tasks.clone(),
        force_left: HashMap::new(),
        leaving: None,
        left: false,
        queries: HashMap::new(),
        seen: VecDeque::new(),
        recent_events: VecDeque::new(),
        quiet_until: None,
        next_reap,
    };
    tasks.spawn(driver.run(commands, fired, internal_rx, shutdown));
    Ok((members_rx, coord_rx, peer_coords))
}

async fn read_frame(s: &mut BoxStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_STREAM_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    // Grow with what actually arrives: a peer that claims 16 MiB and sends nothing costs
    // nothing.
    let mut buf = Vec::with_capacity(len.min(64 * 1024));
    (&mut *s).take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "short frame",
        ));
    }
    Ok(buf)
}

async fn write_frame(s: &mut BoxStream, data: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(data.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame too large"))?;
    s.write_all(&len.to_be_bytes()).await?;
    s.write_all(data).await?;
    s.flush().await
}

fn bad_packet(why: &str) {
    metrics::counter!(METRIC_BAD_PACKETS).increment(1);
    tracing::debug!(why, "dropped a gossip packet");
}

async fn accept_loop(
    transport: Arc<dyn GossipTransport>,
    keyring: Arc<RwLock<Keyring>>,
    internal: mpsc::UnboundedSender<Internal>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_INBOUND_STREAMS));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = transport.accept() => a,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            bad_packet("too many gossip streams at once");
            continue;
        };
        let (keyring, internal) = (keyring.clone(), internal.clone());
        tasks.spawn(async move {
            let _slot = slot;
            let served =
                tokio::time::timeout(STREAM_TIMEOUT, serve_stream(stream, keyring, internal)).await;
            match served {
                Ok(Ok(())) => {}
                Ok(Err(StreamError::Key(e))) => {
                    metrics::counter!(METRIC_BAD_PACKETS).increment(1);
                    tracing::warn!(%peer, error = %e,
                        "refused a gossip stream that does not decrypt (wrong or missing encryption key?)");
                }
                Ok(Err(StreamError::Other(e))) => {
                    bad_packet("gossip stream failed");
                    tracing::debug!(%peer, error = %e, "gossip stream from peer failed");
                }
                Err(_) => bad_packet("gossip stream timed out"),
            }
        });
    }
}

enum StreamError {
    /// The frame does not decrypt with our keys (or is plain while we encrypt).
    Key(String),
    Other(String),
}

impl From<String> for StreamError {
    fn from(e: String) -> Self {
        Self::Other(e)
    }
}

impl From<&str> for StreamError {
    fn from(e: &str) -> Self {
        Self::Other(e.to_string())
    }
}

/// Answers one incoming stream: a push/pull (their state in, ours out) or a fallback ping.
async fn serve_stream(
    mut stream: BoxStream,
    keyring: Arc<RwLock<Keyring>>,
    internal: mpsc::UnboundedSender<Internal>,
) -> Result<(), StreamError> {
    let mut kind = [0u8; 1];
    stream
        .read_exact(&mut kind)
        .await
        .map_err(|e| e.to_string())?;
    let frame = read_frame(&mut stream).await.map_err(|e| e.to_string())?;
    let plain = read_lock(&keyring)
        .open(&frame)
        .map_err(|e| StreamError::Key(e.to_string()))?;
    let reply = match kind[0] {
        STREAM_PUSH_PULL => {
            let (remote, host) = decode_exchange(&plain)?;
            let (tx, rx) = oneshot::channel();
            internal
                .send(Internal::PushedState(remote, host, tx))
                .map_err(|_| "gossip stopped")?;
            rx.await.map_err(|_| "gossip stopped")?
        }
        STREAM_PING => {
            let (tx, rx) = oneshot::channel();
            internal
                .send(Internal::StreamPing(plain, tx))
                .map_err(|_| "gossip stopped")?;
            match rx.await.map_err(|_| "gossip stopped")? {
                Some(ack) => ack,
                None => return Ok(()),
            }
        }
        _ => return Err("unknown stream kind".into()),
    };
    let sealed = read_lock(&keyring).seal(&reply);
    write_frame(&mut stream, &sealed)
        .await
        .map_err(|e| StreamError::Other(e.to_string()))
}

/// Opens a stream of `kind`, sends `data` and returns the peer's answer, unsealed.
async fn exchange(
    transport: &dyn GossipTransport,
    keyring: &RwLock<Keyring>,
    to: SocketAddr,
    kind: u8,
    data: &[u8],
) -> Result<Vec<u8>, String> {
    let mut s = transport.connect(to).await.map_err(|e| e.to_string())?;
    s.write_all(&[kind]).await.map_err(|e| e.to_string())?;
    let sealed = read_lock(keyring).seal(data);
    write_frame(&mut s, &sealed)
        .await
        .map_err(|e| e.to_string())?;
    let answer = read_frame(&mut s).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            "the peer closed the stream (is the gossip encryption key the same?)".to_string()
        } else {
            e.to_string()
        }
    })?;
    read_lock(keyring)
        .open(&answer)
        .map_err(|e| format!("{e} (is the gossip encryption key the same?)"))
}

impl Driver {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    fn at(&self, d: Duration) -> Instant {
        self.origin + d
    }

    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Cmd>,
        mut fired: mpsc::UnboundedReceiver<UserEvent>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
        shutdown: CancellationToken,
    ) {
        let mut buf = vec![0u8; 65_536];
        let transport = self.transport.clone();
        self.after_step().await;
        loop {
            let wake = self.next_wake();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                packet = transport.recv_packet(&mut buf) => {
                    if let Ok((n, from)) = packet {
                        self.datagram(from, &buf[..n]);
                    }
                }
                Some(cmd) = commands.recv() => self.command(cmd),
                Some(ev) = fired.recv() => {
                    self.remember(event_index(&ev.id));
                    self.send_event(ev);
                }
                Some(msg) = internal.recv() => self.internal(msg),
                _ = tokio::time::sleep_until(wake) => self.timers(),
            }
            self.after_step().await;
        }
    }

    fn next_wake(&self) -> Instant {
        let mut wake = self.at(self.swim.next_deadline()).min(self.next_reap);
        if let Some((at, _)) = &self.leaving {
            wake = wake.min(*at);
        }
        for q in self.queries.values() {
            wake = wake.min(q.deadline);
        }
        wake
    }

    fn datagram(&mut self, from: SocketAddr, data: &[u8]) {
        let plain = match read_lock(&self.keyring).open(data) {
            Ok(p) => p,
            Err(e) => {
                metrics::counter!(METRIC_BAD_PACKETS).increment(1);
                // A member with the wrong key shows up here: say so, but not per packet.
                let now = Instant::now();
                if self.quiet_until.is_none_or(|t| now >= t) {
                    self.quiet_until = Some(now + Duration::from_secs(10));
                    tracing::warn!(%from, error = %e,
                        "dropping gossip packets that do not decrypt (wrong or missing encryption key?)");
                }
                return;
            }
        };
        let now = self.now();
        if let Err(e) = self.swim.handle_datagram(from, &plain, now) {
            bad_packet(&e.to_string());
        }
    }

    fn timers(&mut self) {
        let now = self.now();
        self.swim.tick(now);
        let instant = Instant::now();
        if instant >= self.next_reap {
            self.reap(now);
            self.next_reap = instant + self.cfg.reap_interval;
        }
        if self.leaving.as_ref().is_some_and(|(at, _)| instant >= *at)
            && let Some((_, done)) = self.leaving.take()
        {
            self.left = true;
            self.save_snapshot();
            let _ = done.send(());
        }
        let expired: Vec<u64> = self
            .queries
            .iter()
            .filter(|(_, q)| instant >= q.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(q) = self.queries.remove(&id) {
                let _ = q.done.send(Ok(q.report));
            }
        }
    }

    /// Forgets failed members after the reconnect timeout and left ones after the
    /// tombstone timeout (Serf's reaper).
    fn reap(&mut self, now: Duration) {
        let gone: Vec<String> = self
            .swim
            .members()
            .filter(|m| m.name != self.cfg.node)
            .filter(|m| {
                let age = now.saturating_sub(m.state_change);
                match (m.state, self.intent_for(m)) {
                    (State::Dead, Some(i)) => {
                        i.prune || now.saturating_sub(i.since) >= self.cfg.tombstone_timeout
                    }
                    (State::Dead, None) => age >= self.cfg.reconnect_timeout,
                    (State::Left, _) => age >= self.cfg.tombstone_timeout,
                    _ => false,
                }
            })
            .map(|m| m.name.clone())
            .collect();
        for name in gone {
            tracing::info!(member = %name, "reaping member");
            self.swim.remove_member(&name);
            self.vivaldi.forget_node(&name);
            self.peer_coords
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
        }
        let keep = self.cfg.tombstone_timeout;
        self.force_left
            .retain(|_, i| now.saturating_sub(i.since) < keep);
    }

    /// The force-leave intent that applies to `m` as it is now.
    fn intent_for(&self, m: &super::swim::Member) -> Option<Intent> {
        self.force_left
            .get(&m.name)
            .filter(|i| m.incarnation <= i.incarnation)
            .copied()
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Join(addrs, done) => self.join(addrs, done),
            Cmd::Leave(done) => {
                let now = self.now();
                self.swim.leave(now);
                self.leaving = Some((Instant::now() + self.cfg.leave_propagate_delay, done));
            }
            Cmd::ForceLeave { node, prune, done } => {
                let Some(incarnation) = self.swim.member(&node).map(|m| m.incarnation) else {
                    let _ = done.send(Err(GossipError::NoMember(node)));
                    return;
                };
                let intent = LeaveIntent {
                    node,
                    incarnation,
                    prune,
                };
                self.leave_intent(&intent);
                self.broadcast(Envelope::LeaveIntent(intent));
                let _ = done.send(Ok(()));
            }
            Cmd::Key(op, done) => self.start_query(op, done),
            Cmd::Tags(tags) => {
                let now = self.now();
                self.cfg.tags = tags;
                if let Err(e) = self.swim.update_meta(encode_tags(&self.cfg.tags), now) {
                    tracing::warn!(error = %e, "tags not updated");
                }
            }
        }
    }

    /// Push/pull with every address; `done` gets how many answered.
    fn join(&mut self, addrs: Vec<SocketAddr>, done: oneshot::Sender<usize>) {
        let state = self.exchange_payload();
        let (tx, mut rx) = mpsc::unbounded_channel::<bool>();
        let n = addrs.len();
        for to in addrs {
            let (transport, keyring, internal) = (
                self.transport.clone(),
                self.keyring.clone(),
                self.internal_tx.clone(),
            );
            let (state, tx) = (state.clone(), tx.clone());
            self.tasks.spawn(async move {
                let (ack_tx, ack_rx) = oneshot::channel();
                let result = tokio::time::timeout(
                    STREAM_TIMEOUT,
                    exchange(transport.as_ref(), &keyring, to, STREAM_PUSH_PULL, &state),
                )
                .await;
                let ok = match result.map_err(|_| "timed out".to_string()).and_then(|r| r) {
                    Ok(bytes) => match decode_exchange(&bytes) {
                        Ok((remote, host)) => {
                            let _ =
                                internal.send(Internal::PulledState(remote, host, Some(ack_tx)));
                            ack_rx.await.unwrap_or(false)
                        }
                        Err(_) => false,
                    },
                    Err(e) => {
                        tracing::warn!(%to, error = %e, "failed to join");
                        false
                    }
                };
                let _ = tx.send(ok);
            });
        }
        drop(tx);
        self.tasks.spawn(async move {
            let mut joined = 0;
            for _ in 0..n {
                if rx.recv().await == Some(true) {
                    joined += 1;
                }
            }
            let _ = done.send(joined);
        });
    }

    fn internal(&mut self, msg: Internal) {
        let now = self.now();
        match msg {
            Internal::PulledState(remote, host, ack) => {
                self.swim.merge_remote_state(remote, now);
                // Like Consul's join, events from before we joined are not replayed.
                self.merge_host_state(host, ack.is_none());
                if let Some(ack) = ack {
                    let _ = ack.send(true);
                }
            }
            Internal::PushPullFailed(ack) => {
                if let Some(ack) = ack {
                    let _ = ack.send(false);
                }
            }
            Internal::PushedState(remote, host, reply) => {
                self.swim.merge_remote_state(remote, now);
                self.merge_host_state(host, true);
                let _ = reply.send(self.exchange_payload());
            }
            Internal::StreamPing(data, reply) => {
                let _ = reply.send(self.swim.answer_stream_ping(&data).ok().flatten());
            }
            Internal::TcpPingResult(seq, resp) => {
                self.swim.tcp_ping_result(seq, resp.as_deref(), now);
            }
        }
    }

    fn exchange_payload(&self) -> Vec<u8> {
        let host = HostState {
            events: self.recent_events.iter().cloned().collect(),
            left: self
                .force_left
                .iter()
                .map(|(node, i)| LeaveIntent {
                    node: node.clone(),
                    incarnation: i.incarnation,
                    prune: i.prune,
                })
                .collect(),
        };
        encode_exchange(&self.swim.encode_state(), &host)
    }

    fn merge_host_state(&mut self, host: HostState, deliver: bool) {
        for intent in host.left {
            self.leave_intent(&intent);
        }
        for ev in host.events {
            if deliver {
                self.receive_event(ev);
            } else {
                self.remember(event_index(&ev.id));
            }
        }
    }

    /// An event from gossip or push/pull: delivered and re-gossiped the first time only.
    fn receive_event(&mut self, ev: UserEvent) {
        if self.remember(event_index(&ev.id)) {
            self.sink.deliver(ev.clone());
            self.send_event(ev);
        }
    }

    /// Gossips an event and keeps it for push/pull.
    fn send_event(&mut self, ev: UserEvent) {
        self.recent_events.push_back(ev.clone());
        while self.recent_events.len() > EXCHANGED_EVENTS {
            self.recent_events.pop_front();
        }
        self.broadcast(Envelope::Event(ev));
    }

    fn broadcast(&mut self, env: Envelope) {
        if let Err(e) = self.swim.broadcast_user(env.encode()) {
            tracing::warn!(error = %e, "gossip broadcast refused");
        }
    }

    /// Records a force-leave; whether it is news (and so worth re-gossiping).
    fn leave_intent(&mut self, intent: &LeaveIntent) -> bool {
        if intent.node == self.cfg.node {
            return false;
        }
        let member = self.swim.member(&intent.node).cloned();
        if member
            .as_ref()
            .is_some_and(|m| m.incarnation > intent.incarnation)
        {
            return false; // It rejoined since.
        }
        let news = self
            .force_left
            .get(&intent.node)
            .is_none_or(|i| intent.incarnation > i.incarnation || (intent.prune && !i.prune));
        if news {
            let since = self.now();
            self.force_left.insert(
                intent.node.clone(),
                Intent {
                    incarnation: intent.incarnation,
                    prune: intent.prune,
                    since,
                },
            );
        }
        if intent.prune && member.is_some_and(|m| m.state == State::Dead) {
            self.swim.remove_member(&intent.node);
        }
        news
    }

    fn start_query(
        &mut self,
        op: KeyOp,
        done: oneshot::Sender<Result<KeyringReport, GossipError>>,
    ) {
        let id: u64 = rand::random();
        let waiting: HashSet<String> = self
            .swim
            .members()
            .filter(|m| !m.state.is_dead_or_left())
            .map(|m| m.name.clone())
            .collect();
        let mut pending = PendingQuery {
            report: KeyringReport {
                num_nodes: waiting.len(),
                ..KeyringReport::default()
            },
            waiting,
            deadline: Instant::now() + self.cfg.query_timeout,
            done,
        };
        // This node answers first, then the query spreads.
        let own = self.apply_key_op(&op);
        record_reply(&mut pending, &self.cfg.node, own);
        self.remember(id);
        if pending.waiting.is_empty() {
            let _ = pending.done.send(Ok(pending.report));
            return;
        }
        self.queries.insert(id, pending);
        self.broadcast(Envelope::Query {
            id,
            reply_to: self.transport.local_addr(),
            op,
        });
    }

    /// Whether `id` is new (and remembers it).
    fn remember(&mut self, id: u64) -> bool {
        if self.seen.contains(&id) {
            return false;
        }
        self.seen.push_back(id);
        while self.seen.len() > SEEN {
            self.seen.pop_front();
        }
        true
    }

    /// Runs a keyring operation on this node; the answer lists the keys it now has.
    fn apply_key_op(&mut self, op: &KeyOp) -> QueryAnswer {
        let result = {
            let mut ring = write_lock(&self.keyring);
            // Installing into an empty ring would switch encryption on here alone.
            let r = if !ring.enabled() {
                Err(keyring::KeyError::Disabled)
            } else {
                match op {
                    KeyOp::List => Ok(()),
                    KeyOp::Install(k) => keyring::parse_key(k).map(|k| ring.install(k)),
                    KeyOp::Use(k) => keyring::parse_key(k).and_then(|k| ring.use_key(&k)),
                    KeyOp::Remove(k) => keyring::parse_key(k).and_then(|k| ring.remove(&k)),
                }
            };
            r.map(|_| ring.clone())
        };
        match result {
            Ok(ring) => {
                if !matches!(op, KeyOp::List)
                    && let Some(path) = &self.cfg.keyring_path
                    && let Err(e) = ring.save(path)
                {
                    tracing::warn!(error = %e, "keyring not saved");
                }
                QueryAnswer {
                    keys: ring.keys().map(keyring::encode_key).collect(),
                    primary: ring.primary().map(keyring::encode_key),
                    error: None,
                }
            }
            Err(e) => QueryAnswer {
                keys: Vec::new(),
                primary: None,
                error: Some(e.to_string()),
            },
        }
    }

    fn user_message(&mut self, payload: &[u8]) {
        let Some(env) = Envelope::decode(payload) else {
            bad_packet("undecodable user message");
            return;
        };
        match env {
            Envelope::Event(ev) => self.receive_event(ev),
            Envelope::LeaveIntent(intent) => {
                if self.leave_intent(&intent) {
                    self.broadcast(Envelope::LeaveIntent(intent));
                }
            }
            Envelope::Query { id, reply_to, op } => {
                if !self.remember(id) {
                    return;
                }
                self.broadcast(Envelope::Query {
                    id,
                    reply_to,
                    op: op.clone(),
                });
                let a = self.apply_key_op(&op);
                let reply = Envelope::QueryReply {
                    id,
                    node: self.cfg.node.clone(),
                    keys: a.keys,
                    primary: a.primary,
                    error: a.error,
                };
                if let Err(e) = self.swim.send_user(reply_to, reply.encode()) {
                    tracing::warn!(error = %e, "query reply not sent");
                }
            }
            Envelope::QueryReply {
                id,
                node,
                keys,
                primary,
                error,
            } => {
                let Some(q) = self.queries.get_mut(&id) else {
                    return;
                };
                record_reply(
                    q,
                    &node,
                    QueryAnswer {
                        keys,
                        primary,
                        error,
                    },
                );
                if q.waiting.is_empty()
                    && let Some(q) = self.queries.remove(&id)
                {
                    let _ = q.done.send(Ok(q.report));
                }
            }
        }
    }

    /// Performs the state machine's effects, then republishes what changed.
    async fn after_step(&mut self) {
        let mut changed = false;
        for effect in self.swim.drain_effects() {
            match effect {
                Effect::Udp { to, data } => {
                    let sealed = read_lock(&self.keyring).seal(&data);
                    if let Err(e) = self.transport.send_packet(to, &sealed).await {
                        tracing::debug!(%to, error = %e, "gossip send failed");
                    }
                }
                Effect::PushPull { to, .. } => self.push_pull(to),
                Effect::TcpPing {
                    to,
                    seq,
                    data,
                    deadline,
                } => self.tcp_ping(to, seq, data, deadline),
                Effect::MemberChanged(m) => {
                    changed = true;
                    if m.state == State::Dead && self.intent_for(&m).is_some_and(|i| i.prune) {
                        self.swim.remove_member(&m.name);
                    }
                }
                Effect::Ack { node, rtt, payload } => self.observe_rtt(&node, rtt, &payload),
                Effect::User { payload, .. } => self.user_message(&payload),
                Effect::Conflict {
                    name,
                    existing,
                    other,
                } => {
                    metrics::counter!("cairn_gossip_name_conflicts_total").increment(1);
                    tracing::warn!(%name, %existing, %other,
                        "a member claims a name already in use at another address; ignored");
                }
            }
        }
        // Removals (reaping, prune) do not come back as effects: always compare.
        let list = self.member_list();
        if changed || *self.members_tx.borrow() != list {
            self.members_tx.send_replace(list);
            self.save_snapshot();
        }
    }

    fn push_pull(&mut self, to: SocketAddr) {
        let state = self.exchange_payload();
        let (transport, keyring, internal) = (
            self.transport.clone(),
            self.keyring.clone(),
            self.internal_tx.clone(),
        );
        self.tasks.spawn(async move {
            let result = tokio::time::timeout(
                STREAM_TIMEOUT,
                exchange(transport.as_ref(), &keyring, to, STREAM_PUSH_PULL, &state),
            )
            .await;
            let msg = match result {
                Ok(Ok(bytes)) => match decode_exchange(&bytes) {
                    Ok((remote, host)) => Internal::PulledState(remote, host, None),
                    Err(_) => Internal::PushPullFailed(None),
                },
                _ => Internal::PushPullFailed(None),
            };
            let _ = internal.send(msg);
        });
    }

    fn tcp_ping(&mut self, to: SocketAddr, seq: u32, data: Vec<u8>, deadline: Duration) {
        let wait = deadline
            .saturating_sub(self.now())
            .max(Duration::from_millis(10));
        let (transport, keyring, internal) = (
            self.transport.clone(),
            self.keyring.clone(),
            self.internal_tx.clone(),
        );
        self.tasks.spawn(async move {
            let answer = tokio::time::timeout(
                wait,
                exchange(transport.as_ref(), &keyring, to, STREAM_PING, &data),
            )
            .await
            .ok()
            .and_then(Result::ok);
            let _ = internal.send(Internal::TcpPingResult(seq, answer));
        });
    }

    /// A probe's round trip moves this node's Vivaldi coordinate, which then rides on
    /// our own acks.
    fn observe_rtt(&mut self, node: &str, rtt: Duration, payload: &[u8]) {
        let Ok(theirs) = rmp_serde::from_slice::<Coordinate>(payload) else {
            return;
        };
        self.peer_coords
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_string(), theirs.clone());
        match self.vivaldi.update(node, &theirs, rtt) {
            Ok(mine) => {
                if let Ok(bytes) = rmp_serde::to_vec(&mine) {
                    let _ = self.swim.set_ack_payload(bytes);
                }
                self.coord_tx.send_replace(mine);
            }
            Err(e) => tracing::debug!(%node, error = %e, "coordinate sample rejected"),
        }
    }

    fn member_list(&self) -> Arc<Vec<MemberInfo>> {
        let mut list: Vec<MemberInfo> = self
            .swim
            .members()
            .map(|m| {
                let status = match m.state {
                    _ if m.name == self.cfg.node && self.leaving.is_some() => MemberStatus::Leaving,
                    _ if m.name == self.cfg.node && self.left => MemberStatus::Left,
                    State::Alive | State::Suspect => MemberStatus::Alive,
                    State::Dead if self.intent_for(m).is_some() => MemberStatus::Left,
                    State::Dead => MemberStatus::Failed,
                    State::Left => MemberStatus::Left,
                };
                MemberInfo {
                    name: m.name.clone(),
                    addr: m.addr,
                    tags: decode_tags(&m.meta),
                    status,
                }
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Arc::new(list)
    }

    fn save_snapshot(&self) {
        let Some(path) = &self.cfg.snapshot_path else {
            return;
        };
        // Members alive now, plus those known before a restart that we have not heard
        // of since (so a restart while they are unreachable does not forget them).
        let mut members: BTreeMap<String, String> = self
            .cfg
            .known
            .iter()
            .filter(|(name, _)| self.swim.member(name).is_none())
            .map(|(n, a)| (n.clone(), a.clone()))
            .collect();
        members.extend(
            self.swim
                .members()
                .filter(|m| m.name != self.cfg.node && !m.state.is_dead_or_left())
                .map(|m| (m.name.clone(), m.addr.to_string())),
        );
        let snap = Snapshot {
            left: self.left,
            members,
        };
        if let Err(e) = snap.save(path) {
            tracing::debug!(error = %e, "gossip snapshot not saved");
        }
    }
}

struct QueryAnswer {
    keys: Vec<String>,
    primary: Option<String>,
    error: Option<String>,
}

fn record_reply(q: &mut PendingQuery, node: &str, a: QueryAnswer) {
    if !q.waiting.remove(node) {
        return;
    }
    q.report.responses += 1;
    match a.error {
        Some(e) => {
            q.report.errors.insert(node.to_string(), e);
        }
        None => {
            for k in a.keys {
                *q.report.keys.entry(k).or_default() += 1;
            }
            if let Some(p) = a.primary {
                *q.report.primary_keys.entry(p).or_default() += 1;
            }
        }
    }
}

/// The members a node knew (name → gossip address), to rejoin after a restart, and
/// whether it left on purpose (then it rejoins only with `-rejoin`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    pub left: bool,
    pub members: BTreeMap<String, String>,
}

impl Snapshot {
    pub fn load(path: &std::path::Path) -> Option<Self> {
        let body = std::fs::read(path).ok()?;
        serde_json::from_slice(&body).ok()
    }

    fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).unwrap_or_default())?;
        std::fs::rename(&tmp, path)
    }
}
