//! The sans-I/O SWIM + Lifeguard state machine.
//!
//! [`Swim`] never touches a socket or a clock. The host feeds it datagrams
//! ([`Swim::handle_datagram`]), push/pull states ([`Swim::merge_remote_state`])
//! and the current time ([`Swim::tick`] at [`Swim::next_deadline`]), and
//! collects [`Effect`]s with [`Swim::drain_effects`]. Given the same seed and
//! the same sequence of calls it produces the same effects, bit for bit.
//!
//! Behaviour follows HashiCorp memberlist:
//!
//! * **Probing**: every `probe_interval` one member is probed, round-robin over
//!   a list that is reshuffled (and cleared of long-dead members) on every
//!   wrap. No ack within `probe_timeout` → `indirect_checks` random live peers
//!   are asked to probe it and to nack if they cannot reach it, and the host
//!   is asked for a TCP ping ([`Effect::TcpPing`]). No ack by the
//!   (awareness-scaled) probe interval → the member becomes suspect.
//!   A suspect is re-checked directly every `min / 4` (see the crate docs).
//! * **Suspicion** ([`crate::gossip::swim::suspicion`]): timeout between
//!   `suspicion_timeout(...)` and `suspicion_max_timeout_mult` times that,
//!   shortened by independent confirmations; a suspect member refutes by
//!   gossiping a higher incarnation.
//! * **Awareness** ([`crate::gossip::swim::awareness`]): failed probes without nacks and
//!   refutations raise our health score, which slows our probing.
//! * **Gossip**: every `gossip_interval`, queued broadcasts are packed into
//!   datagrams of at most `udp_buffer_size` for `gossip_nodes` random members
//!   (alive, suspect, or dead for less than `gossip_to_the_dead_time`); every
//!   other datagram we send also piggybacks broadcasts.
//! * **Push/pull**: every `push_pull_scale(push_pull_interval, n)` a full state
//!   exchange with one random live member is requested from the host.
//!
//! Invariants:
//! * the local member is always present in `members` and never removed;
//! * `probe_order` holds exactly the non-reaped members (memberlist's node
//!   list); its length is the cluster-size estimate `n` used by all scaling math;
//! * a member has a suspicion timer iff it is `Suspect`;
//! * the local incarnation only grows.

mod handlers;
mod probe;
mod table;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use thiserror::Error;

use crate::gossip::swim::awareness::Awareness;
use crate::gossip::swim::config::{Config, ConfigError, push_pull_scale};
use crate::gossip::swim::member::{Member, State};
use crate::gossip::swim::queue::TransmitLimitedQueue;
use crate::gossip::swim::wire::{
    self, Alive, COMPOUND_ENTRY_OVERHEAD, COMPOUND_HEADER, DecodeError, MAX_DATAGRAM, MAX_META_LEN,
    MAX_NAME_LEN, Message, PushNode, PushPullState,
};
use table::MemberTable;

/// Most user broadcasts kept queued (Serf's default `MaxQueueDepth`).
pub const MAX_USER_QUEUE: usize = 4096;
/// Most indirect probes we relay concurrently.
const MAX_RELAYS: usize = 4096;

/// Something the host must do (or may want to know).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send this datagram.
    Udp {
        /// Destination.
        to: SocketAddr,
        /// Encoded datagram (host encrypts if configured).
        data: Vec<u8>,
    },
    /// Open a stream to `to`, exchange [`Swim::encode_state`] both ways and
    /// call [`Swim::merge_remote_state`] with what comes back.
    PushPull {
        /// Peer.
        to: SocketAddr,
        /// Whether this is a join (vs. periodic anti-entropy).
        join: bool,
    },
    /// A member was added or changed state, metadata or address.
    MemberChanged(Member),
    /// Fallback probe over TCP (memberlist's TCP ping): connect to `to`,
    /// write `data`, read one datagram-sized answer, then call
    /// [`Swim::tcp_ping_result`] with it (or `None` on any failure), before
    /// `deadline` if possible. The peer's host answers with
    /// [`Swim::answer_stream_ping`].
    TcpPing {
        /// Probed member's address.
        to: SocketAddr,
        /// Probe sequence number to report back.
        seq: u32,
        /// Encoded ping to send.
        data: Vec<u8>,
        /// When the probe gives up on this ping.
        deadline: Duration,
    },
    /// A direct probe was acked within the probe timeout.
    Ack {
        /// Probed member.
        node: String,
        /// Round-trip time.
        rtt: Duration,
        /// The member's ack payload.
        payload: Vec<u8>,
    },
    /// A user message arrived (broadcast or direct).
    User {
        /// Datagram source.
        from: SocketAddr,
        /// Opaque payload.
        payload: Vec<u8>,
    },
    /// Someone claims a known member's name from a different address; ignored.
    Conflict {
        /// Contested name.
        name: String,
        /// Address we know.
        existing: SocketAddr,
        /// Address in the claim.
        other: SocketAddr,
    },
}

/// Errors from the local API (not from the network).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SwimError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Node name empty or too long.
    #[error("node name must be 1..={MAX_NAME_LEN} bytes, got {0}")]
    InvalidName(usize),
    /// Metadata over [`MAX_META_LEN`].
    #[error("node metadata is {len} bytes, limit {MAX_META_LEN}")]
    MetaTooLarge {
        /// Offending length.
        len: usize,
    },
    /// A payload that could never be sent.
    #[error("payload of {len} bytes exceeds the {max} byte limit")]
    PayloadTooLarge {
        /// Offending length.
        len: usize,
        /// Limit.
        max: usize,
    },
}

/// Protocol counters, for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Probes started.
    pub probes: u64,
    /// Probes that failed and made us suspect the target.
    pub probe_failures: u64,
    /// Times a member (other than us) became suspect in our view.
    pub suspicions: u64,
    /// Times we refuted a suspicion/death claim about ourselves.
    pub refutations: u64,
    /// Suspicion timeouts that made us declare a member dead.
    pub deaths_declared: u64,
    /// Conflicting alive claims ignored.
    pub conflicts: u64,
    /// Indirect probes we relayed.
    pub relays: u64,
    /// Nacks we sent for unreachable indirect targets.
    pub nacks_sent: u64,
    /// Alive messages sent to peers that accused us at an old incarnation.
    pub reassertions: u64,
    /// Suspicion re-checks sent to suspects.
    pub rechecks: u64,
    /// Probes rescued by the TCP fallback after UDP failed.
    pub tcp_fallback_successes: u64,
}

#[derive(Clone, Debug)]
struct Probe {
    seq: u32,
    target: String,
    target_incarnation: u32,
    sent: Duration,
    timeout_at: Duration,
    deadline: Duration,
    indirect_sent: bool,
    tcp: TcpPing,
    /// The deadline was pushed back once to wait for the TCP fallback.
    extended: bool,
    expected_nacks: u32,
    nacks: u32,
}

/// Progress of the TCP fallback ping of the current probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TcpPing {
    /// Not requested (yet, or disabled).
    None,
    /// Requested, no answer yet.
    Pending,
    /// The host reported the outcome.
    Done { acked: bool },
}

#[derive(Clone, Debug)]
struct Relay {
    orig_seq: u32,
    reply_to: SocketAddr,
    nack: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Suspicion { name: String, id: u64 },
    Recheck { name: String, id: u64 },
    Relay { seq: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Due {
    Timer,
    ProbeTimeout,
    ProbeDeadline,
    ProbeTick,
    Gossip,
    PushPull,
}

/// One node's SWIM state machine.
#[derive(Debug)]
pub struct Swim {
    cfg: Config,
    name: String,
    addr: SocketAddr,
    rng: SmallRng,
    members: MemberTable,
    /// Slot of the local member (inserted first, never removed).
    local_slot: usize,
    /// Slots of memberlist's node list, in probe order.
    probe_order: Vec<usize>,
    probe_index: usize,
    seq: u32,
    awareness: Awareness,
    broadcasts: TransmitLimitedQueue,
    user_broadcasts: TransmitLimitedQueue,
    probe: Option<Probe>,
    probe_pending: bool,
    next_probe: Option<Duration>,
    next_gossip: Option<Duration>,
    next_push_pull: Option<Duration>,
    /// False until the initial random stagger of the push/pull timer is over.
    push_pull_started: bool,
    relays: HashMap<u32, Relay>,
    timers: BinaryHeap<Reverse<(Duration, Timer)>>,
    effects: Vec<Effect>,
    ack_payload: Vec<u8>,
    left: bool,
    leave_done: bool,
    suspicion_gen: u64,
    stats: Stats,
}

impl Swim {
    /// Creates the local node (incarnation 1, alive) and schedules its timers
    /// with a random phase. Emits `MemberChanged` for the local member.
    pub fn new(
        name: String,
        addr: SocketAddr,
        meta: Vec<u8>,
        config: Config,
        seed: u64,
        now: Duration,
    ) -> Result<Self, SwimError> {
        config.validate()?;
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(SwimError::InvalidName(name.len()));
        }
        if meta.len() > MAX_META_LEN {
            return Err(SwimError::MetaTooLarge { len: meta.len() });
        }
        let mut rng = SmallRng::seed_from_u64(seed);
        let stagger = |rng: &mut SmallRng, d: Duration| -> Option<Duration> {
            if d.is_zero() {
                None
            } else {
                let nanos = rng.random_range(0..d.as_nanos().min(u128::from(u64::MAX)) as u64);
                Some(now.saturating_add(Duration::from_nanos(nanos)))
            }
        };
        let next_probe = stagger(&mut rng, config.probe_interval);
        let next_gossip = if config.gossip_nodes == 0 {
            None
        } else {
            stagger(&mut rng, config.gossip_interval)
        };
        // The first push/pull interval is computed once the stagger is over,
        // when the cluster size is known (see `Due::PushPull`).
        let next_push_pull = stagger(&mut rng, config.push_pull_interval);
        let mut swim = Self {
            awareness: Awareness::new(config.awareness_max_multiplier),
            cfg: config,
            name: name.clone(),
            addr,
            rng,
            members: MemberTable::default(),
            local_slot: 0,
            probe_order: Vec::new(),
            probe_index: 0,
            seq: 0,
            broadcasts: TransmitLimitedQueue::new(),
            user_broadcasts: TransmitLimitedQueue::new(),
            probe: None,
            probe_pending: false,
            next_probe,
            next_gossip,
            next_push_pull,
            push_pull_started: false,
            relays: HashMap::new(),
            timers: BinaryHeap::new(),
            effects: Vec::new(),
            ack_payload: Vec::new(),
            left: false,
            leave_done: false,
            suspicion_gen: 0,
            stats: Stats::default(),
        };
        let alive = Alive {
            incarnation: 1,
            node: name,
            addr,
            meta,
        };
        swim.alive_node(alive, true, now);
        swim.local_slot = swim
            .members
            .slot(&swim.name)
            .expect("invariant: the local member was just inserted");
        Ok(swim)
    }

    /// Processes one datagram. Garbage is rejected as a whole and never panics.
    pub fn handle_datagram(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        now: Duration,
    ) -> Result<(), DecodeError> {
        let msgs = wire::decode_datagram(data)?;
        for msg in msgs {
            self.handle_message(from, msg, now);
        }
        Ok(())
    }

    /// Our full state for a push/pull exchange (every non-reaped member).
    pub fn local_state(&self) -> PushPullState {
        PushPullState {
            join: false,
            members: self
                .members
                .values()
                .filter(|ns| !ns.reaped)
                .map(|ns| PushNode {
                    name: ns.member.name.clone(),
                    addr: ns.member.addr,
                    meta: ns.member.meta.clone(),
                    incarnation: ns.member.incarnation,
                    state: ns.member.state,
                })
                .collect(),
        }
    }

    /// Merges a remote push/pull state: alive entries as alive messages, left
    /// entries as leaves, and dead/suspect entries only as *suspicions* (a
    /// remote verdict never kills a member here without our own timer).
    pub fn merge_remote_state(&mut self, remote: PushPullState, now: Duration) {
        for r in remote.members {
            match r.state {
                State::Alive => self.alive_node(
                    Alive {
                        incarnation: r.incarnation,
                        node: r.name,
                        addr: r.addr,
                        meta: r.meta,
                    },
                    false,
                    now,
                ),
                State::Left => {
                    let name = r.name;
                    self.dead_node(r.incarnation, &name, &name, now);
                }
                State::Dead | State::Suspect => {
                    let me = self.name.clone();
                    self.suspect_node(r.incarnation, &r.name, &me, now);
                }
            }
        }
    }

    /// [`Self::local_state`], encoded.
    pub fn encode_state(&self) -> Vec<u8> {
        self.local_state().encode()
    }

    /// Decodes a state received from a peer.
    pub fn decode_state(bytes: &[u8]) -> Result<PushPullState, DecodeError> {
        PushPullState::decode(bytes)
    }

    /// Runs every timer due at or before `now`.
    pub fn tick(&mut self, now: Duration) {
        // Each step either removes its timer or moves it past `now`; the bound
        // is a safety net against a logic error turning into a hang.
        for _ in 0..100_000 {
            let Some((due, at)) = self.earliest() else {
                return;
            };
            if at > now {
                return;
            }
            self.run_due(due, at, now);
        }
    }

    /// When [`Self::tick`] next has work; `Duration::MAX` if never.
    pub fn next_deadline(&self) -> Duration {
        self.earliest().map_or(Duration::MAX, |(_, t)| t)
    }

    /// Takes the effects produced since the last call.
    pub fn drain_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    /// Requests a joining push/pull with each address.
    pub fn join(&mut self, addrs: &[SocketAddr]) {
        for &to in addrs {
            self.effects.push(Effect::PushPull { to, join: true });
        }
    }

    /// Announces our departure: gossips our own death with `from == us`, which
    /// peers record as `Left`. The node keeps answering probes until the host
    /// stops it; [`Self::leave_broadcast_done`] tells when the news is out.
    pub fn leave(&mut self, now: Duration) {
        if self.left {
            return;
        }
        self.left = true;
        let inc = self.local().incarnation;
        let me = self.name.clone();
        self.dead_node(inc, &me, &me, now);
        let any_alive = self.members.values().any(|ns| {
            ns.member.name != self.name && !ns.reaped && !ns.member.state.is_dead_or_left()
        });
        if !any_alive {
            self.leave_done = true;
        }
    }

    /// True once our leave broadcast was fully retransmitted (or nobody was left to tell).
    pub fn leave_broadcast_done(&self) -> bool {
        self.leave_done
    }

    /// Publishes new metadata under a fresh incarnation.
    pub fn update_meta(&mut self, meta: Vec<u8>, now: Duration) -> Result<(), SwimError> {
        if meta.len() > MAX_META_LEN {
            return Err(SwimError::MetaTooLarge { len: meta.len() });
        }
        let alive = Alive {
            incarnation: self.local().incarnation.saturating_add(1),
            node: self.name.clone(),
            addr: self.addr,
            meta,
        };
        self.alive_node(alive, true, now);
        Ok(())
    }

    /// Sets the opaque payload attached to every ack we send.
    pub fn set_ack_payload(&mut self, payload: Vec<u8>) -> Result<(), SwimError> {
        // version + type + seq + len + payload must fit a datagram.
        let max = self.cfg.udp_buffer_size.saturating_sub(1 + 1 + 4 + 2);
        if payload.len() > max {
            return Err(SwimError::PayloadTooLarge {
                len: payload.len(),
                max,
            });
        }
        self.ack_payload = payload;
        Ok(())
    }

    /// Answers a ping received over a stream (the peer's TCP fallback probe).
    /// Returns the encoded ack to write back, or `None` if the ping is for
    /// another node name.
    pub fn answer_stream_ping(&self, data: &[u8]) -> Result<Option<Vec<u8>>, DecodeError> {
        let msgs = wire::decode_datagram(data)?;
        let Some(Message::Ping(p)) = msgs.into_iter().next() else {
            return Ok(None);
        };
        if !p.target.is_empty() && p.target != self.name {
            return Ok(None);
        }
        let ack = wire::encode_message(&Message::Ack {
            seq: p.seq,
            payload: self.ack_payload.clone(),
        });
        Ok(Some(wire::single_datagram(&ack)))
    }

    /// Reports the outcome of an [`Effect::TcpPing`]: the answer read back,
    /// or `None` if the connection or the read failed.
    pub fn tcp_ping_result(&mut self, seq: u32, response: Option<&[u8]>, now: Duration) {
        let acked = response
            .and_then(|r| wire::decode_datagram(r).ok())
            .is_some_and(|msgs| {
                msgs.iter()
                    .any(|m| matches!(m, Message::Ack { seq: s, .. } if *s == seq))
            });
        let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq) else {
            return;
        };
        if p.tcp != TcpPing::Pending {
            return;
        }
        p.tcp = TcpPing::Done { acked };
        // memberlist only looks at the fallback once the UDP wait is over; if
        // that already happened and we are in the grace period, decide now.
        if p.extended {
            p.deadline = p.deadline.min(now);
        }
    }

    /// Queues a user broadcast, piggybacked on gossip and retransmit-limited.
    pub fn broadcast_user(&mut self, payload: Vec<u8>) -> Result<(), SwimError> {
        let max = self
            .cfg
            .udp_buffer_size
            .saturating_sub(COMPOUND_HEADER + COMPOUND_ENTRY_OVERHEAD + 1 + 2);
        if payload.len() > max {
            return Err(SwimError::PayloadTooLarge {
                len: payload.len(),
                max,
            });
        }
        self.user_broadcasts
            .queue(None, wire::encode_message(&Message::User(payload)));
        self.user_broadcasts.prune(MAX_USER_QUEUE);
        Ok(())
    }

    /// Sends a user message straight to `to` (no piggybacking).
    pub fn send_user(&mut self, to: SocketAddr, payload: Vec<u8>) -> Result<(), SwimError> {
        let max = (MAX_DATAGRAM - 1 - 1 - 2).min(usize::from(u16::MAX));
        if payload.len() > max {
            return Err(SwimError::PayloadTooLarge {
                len: payload.len(),
                max,
            });
        }
        let msg = wire::encode_message(&Message::User(payload));
        self.effects.push(Effect::Udp {
            to,
            data: wire::single_datagram(&msg),
        });
        Ok(())
    }

    /// Every member we know, including ourselves and dead/left ones the host
    /// has not removed yet.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values().map(|ns| &ns.member)
    }

    /// One member by name.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.get(name).map(|ns| &ns.member)
    }

    /// The local member.
    pub fn local(&self) -> &Member {
        // The local member is inserted by `new` and never removed.
        &self
            .members
            .by_slot(self.local_slot)
            .expect("invariant: the local member is always present")
            .member
    }

    /// Local health score (0 = healthy, up to `awareness_max_multiplier - 1`).
    pub fn health_score(&self) -> u32 {
        self.awareness.score()
    }

    /// Cluster-size estimate used by the scaling formulas.
    pub fn num_nodes(&self) -> usize {
        self.probe_order.len()
    }

    /// Protocol counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Forgets a member entirely (Serf's reap of failed/left members).
    /// Returns false for unknown names and for the local node.
    pub fn remove_member(&mut self, name: &str) -> bool {
        if name == self.name {
            return false;
        }
        let Some(slot) = self.members.remove(name) else {
            return false;
        };
        if let Some(pos) = self.probe_order.iter().position(|&s| s == slot) {
            self.probe_order.remove(pos);
            if pos < self.probe_index {
                self.probe_index -= 1;
            }
        }
        true
    }

    // ------------------------------------------------------------ timers

    fn earliest(&self) -> Option<(Due, Duration)> {
        let mut best: Option<(Due, Duration)> = None;
        let mut consider = |due: Due, at: Option<Duration>| {
            if let Some(at) = at
                && best.is_none_or(|(_, b)| at < b)
            {
                best = Some((due, at));
            }
        };
        consider(Due::Timer, self.timers.peek().map(|Reverse((t, _))| *t));
        if let Some(p) = &self.probe {
            if !p.indirect_sent {
                consider(Due::ProbeTimeout, Some(p.timeout_at));
            }
            consider(Due::ProbeDeadline, Some(p.deadline));
        }
        consider(Due::ProbeTick, self.next_probe);
        consider(Due::Gossip, self.next_gossip);
        consider(Due::PushPull, self.next_push_pull);
        best
    }

    fn run_due(&mut self, due: Due, at: Duration, now: Duration) {
        match due {
            Due::Timer => {
                if let Some(Reverse((_, timer))) = self.timers.pop() {
                    self.run_timer(timer, now);
                }
            }
            Due::ProbeTimeout => self.probe_timeout(now),
            Due::ProbeDeadline => self.probe_deadline(now),
            Due::ProbeTick => {
                self.next_probe = Some(next_tick(at, self.cfg.probe_interval, now));
                if self.probe.is_some() {
                    // memberlist's ticker buffers one tick while a probe runs.
                    self.probe_pending = true;
                } else {
                    self.probe_round(now);
                }
            }
            Due::Gossip => {
                self.next_gossip = Some(next_tick(at, self.cfg.gossip_interval, now));
                self.gossip(now);
            }
            Due::PushPull => {
                let interval = push_pull_scale(self.cfg.push_pull_interval, self.num_nodes());
                self.next_push_pull = Some(now.saturating_add(interval));
                if std::mem::replace(&mut self.push_pull_started, true) {
                    self.push_pull();
                }
            }
        }
    }

    fn run_timer(&mut self, timer: Timer, now: Duration) {
        match timer {
            Timer::Suspicion { name, id } => self.suspicion_expired(&name, id, now),
            Timer::Recheck { name, id } => self.suspicion_recheck(&name, id, now),
            Timer::Relay { seq } => {
                if let Some(relay) = self.relays.remove(&seq)
                    && relay.nack
                {
                    self.stats.nacks_sent += 1;
                    let msg = wire::encode_message(&Message::Nack {
                        seq: relay.orig_seq,
                    });
                    self.send_msg(relay.reply_to, msg);
                }
            }
        }
    }

    fn push_timer(&mut self, at: Duration, timer: Timer) {
        self.timers.push(Reverse((at, timer)));
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn emit_changed(&mut self, name: &str) {
        if let Some(ns) = self.members.get(name) {
            self.effects.push(Effect::MemberChanged(ns.member.clone()));
        }
    }
}

/// Next tick of a fixed-rate ticker that last fired at `at`, skipping ticks
/// missed before `now` (as Go's `time.Ticker` drops them).
fn next_tick(at: Duration, interval: Duration, now: Duration) -> Duration {
    let mut next = at.saturating_add(interval);
    if next <= now {
        let behind = now.saturating_sub(next).as_nanos() / interval.as_nanos().max(1) + 1;
        let skip = u32::try_from(behind).unwrap_or(u32::MAX);
        next = next.saturating_add(interval.saturating_mul(skip));
    }
    next
}

#[cfg(test)]
mod tests;
