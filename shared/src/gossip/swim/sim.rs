//! A deterministic one-process network simulator for [`Swim`] clusters.
//!
//! N nodes live on virtual addresses (`127.x.y.z:7946`; nothing touches a
//! real socket). A virtual clock advances event by event from a priority
//! queue ordered by `(time, insertion sequence)`, holding datagram
//! deliveries, push/pull stream legs and node wake-ups. Given the same seed
//! and the same calls, a run is reproducible bit for bit.
//!
//! Network model:
//! * per-link one-way latency from a user function (default 1 ms);
//! * independent UDP loss with probability `loss` (seeded), checked at send;
//! * partitions: blocked node pairs drop UDP and fail push/pull streams;
//! * killed nodes neither process nor send; deliveries to them vanish;
//! * push/pull is a simulated TCP exchange: the initiator's state arrives
//!   after one latency, the responder answers with its own state and merges,
//!   and the answer arrives after another latency. Streams see latency but
//!   no loss;
//! * a TCP fallback ping takes a handshake round trip plus the ping and its
//!   answer. Each of its four packets is subject to the UDP loss rate, and a
//!   loss fails it (TCP's retransmission timeout is longer than the probe
//!   deadline). Failures report at the deadline, or after one round trip if
//!   the peer is down (connection refused).
//!
//! The simulator also watches every `MemberChanged` effect and records a
//! [`FalsePositive`] whenever a node declares `Dead` a member that is up.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::gossip::swim::config::Config;
use crate::gossip::swim::machine::{Effect, Swim};
use crate::gossip::swim::member::State;
use crate::gossip::swim::wire::PushPullState;

/// A `Dead` verdict about a member that was actually up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FalsePositive {
    /// Node that reached the verdict.
    pub observer: usize,
    /// Node wrongly declared dead.
    pub subject: usize,
    /// Simulated time of the verdict.
    pub at: Duration,
}

/// Counters over a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Datagrams handed to the network.
    pub udp_sent: u64,
    /// Datagrams delivered to a live node.
    pub udp_delivered: u64,
    /// Datagrams lost to random loss.
    pub udp_lost: u64,
    /// Datagrams dropped by a partition or a dead destination.
    pub udp_blocked: u64,
    /// Datagrams a node rejected as undecodable.
    pub decode_errors: u64,
    /// Push/pull exchanges completed.
    pub push_pulls: u64,
    /// Push/pull exchanges that failed (partition, dead peer, unknown address).
    pub push_pull_failures: u64,
    /// TCP fallback pings requested.
    pub tcp_pings: u64,
    /// TCP fallback pings that got an answer.
    pub tcp_ping_answers: u64,
    /// `MemberChanged` effects reporting `Suspect`.
    pub suspect_events: u64,
    /// `MemberChanged` effects reporting `Dead`.
    pub dead_events: u64,
    /// `Ack` effects (direct probe round trips).
    pub acks: u64,
    /// `User` effects.
    pub user_messages: u64,
    /// `Conflict` effects.
    pub conflicts: u64,
}

type LatencyFn = Box<dyn Fn(usize, usize) -> Duration>;
type EffectHook = Box<dyn FnMut(usize, &Effect, Duration)>;

enum Event {
    Datagram {
        to: usize,
        from: SocketAddr,
        data: Vec<u8>,
    },
    PushPullRequest {
        from: usize,
        to: usize,
        state: Vec<u8>,
    },
    PushPullResponse {
        from: usize,
        to: usize,
        state: Vec<u8>,
    },
    TcpPingRequest {
        from: usize,
        to: usize,
        seq: u32,
        data: Vec<u8>,
    },
    TcpPingResponse {
        to: usize,
        seq: u32,
        response: Option<Vec<u8>>,
    },
    Wake {
        node: usize,
        at: Duration,
    },
}

struct Scheduled {
    at: Duration,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct SimNode {
    name: String,
    addr: SocketAddr,
    swim: Swim,
    up: bool,
    wake_at: Option<Duration>,
    seen_user: HashSet<Vec<u8>>,
}

/// The simulator.
pub struct Sim {
    cfg: Config,
    now: Duration,
    nodes: Vec<SimNode>,
    by_addr: HashMap<SocketAddr, usize>,
    by_name: HashMap<String, usize>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    rng: SmallRng,
    latency: LatencyFn,
    loss: f64,
    blocked: Vec<bool>,
    any_blocked: bool,
    check_interval: Duration,
    stats: SimStats,
    false_positives: Vec<FalsePositive>,
    hook: Option<EffectHook>,
    /// Serf-like handling of user messages: re-broadcast on first sight.
    rebroadcast_user: bool,
}

/// Virtual address of node `i`.
pub fn node_addr(i: usize) -> SocketAddr {
    let ip = Ipv4Addr::new(127, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
    SocketAddr::new(IpAddr::V4(ip), 7946)
}

/// Name of node `i`.
pub fn node_name(i: usize) -> String {
    format!("node-{i:04}")
}

impl Sim {
    /// `n` nodes created at time zero, none joined yet.
    ///
    /// # Panics
    /// If `config` is invalid (a test-harness programming error).
    pub fn new(n: usize, config: Config, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut sim = Sim {
            cfg: config,
            now: Duration::ZERO,
            nodes: Vec::with_capacity(n),
            by_addr: HashMap::with_capacity(n),
            by_name: HashMap::with_capacity(n),
            queue: BinaryHeap::new(),
            seq: 0,
            rng: SmallRng::seed_from_u64(rng.random()),
            latency: Box::new(|_, _| Duration::from_millis(1)),
            loss: 0.0,
            blocked: vec![false; n * n],
            any_blocked: false,
            check_interval: Duration::from_millis(50),
            stats: SimStats::default(),
            false_positives: Vec::new(),
            hook: None,
            rebroadcast_user: false,
        };
        for i in 0..n {
            let (name, addr) = (node_name(i), node_addr(i));
            let swim = sim.make_swim(i, rng.random());
            sim.by_addr.insert(addr, i);
            sim.by_name.insert(name.clone(), i);
            sim.nodes.push(SimNode {
                name,
                addr,
                swim,
                up: true,
                wake_at: None,
                seen_user: HashSet::new(),
            });
            sim.after_call(i);
        }
        sim
    }

    fn make_swim(&self, i: usize, seed: u64) -> Swim {
        Swim::new(
            node_name(i),
            node_addr(i),
            Vec::new(),
            self.cfg.clone(),
            seed,
            self.now,
        )
        .expect("invariant: simulator config and names are valid")
    }

    /// Sets the one-way latency function `(from, to) -> latency`.
    pub fn set_latency(&mut self, f: impl Fn(usize, usize) -> Duration + 'static) {
        self.latency = Box::new(f);
    }

    /// Sets the UDP loss probability (0.0..=1.0).
    pub fn set_loss(&mut self, p: f64) {
        self.loss = p.clamp(0.0, 1.0);
    }

    /// Granularity at which [`Self::run_until_pred`] evaluates its predicate.
    pub fn set_check_interval(&mut self, d: Duration) {
        self.check_interval = d.max(Duration::from_micros(1));
    }

    /// Installs a hook called with `(node, effect, now)` for every effect
    /// any node produces, before the simulator acts on it.
    pub fn set_effect_hook(&mut self, f: impl FnMut(usize, &Effect, Duration) + 'static) {
        self.hook = Some(Box::new(f));
    }

    /// Emulates Serf's user-event handling: a node re-broadcasts every user
    /// message the first time it sees it (memberlist itself never does).
    pub fn set_rebroadcast_user(&mut self, on: bool) {
        self.rebroadcast_user = on;
    }

    /// Distinct user messages node `i` has seen (tracked with
    /// [`Self::set_rebroadcast_user`] on).
    pub fn user_messages_seen(&self, i: usize) -> usize {
        self.nodes[i].seen_user.len()
    }

    /// Blocks all traffic between the two groups (both directions).
    pub fn partition(&mut self, a: &[usize], b: &[usize]) {
        let n = self.nodes.len();
        for &x in a {
            for &y in b {
                if x < n && y < n {
                    self.blocked[x * n + y] = true;
                    self.blocked[y * n + x] = true;
                    self.any_blocked = true;
                }
            }
        }
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.blocked.iter_mut().for_each(|b| *b = false);
        self.any_blocked = false;
    }

    fn is_blocked(&self, a: usize, b: usize) -> bool {
        self.any_blocked && self.blocked[a * self.nodes.len() + b]
    }

    /// Stops node `i` (it keeps its state but processes nothing).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].up = false;
        self.nodes[i].wake_at = None;
    }

    /// Restarts node `i` with fresh state (incarnation 1, knows only itself).
    pub fn restart(&mut self, i: usize) {
        let seed = self.rng.random();
        self.nodes[i].swim = self.make_swim(i, seed);
        self.nodes[i].up = true;
        self.nodes[i].wake_at = None;
        self.nodes[i].seen_user.clear();
        self.after_call(i);
    }

    /// Makes node `i` join through node `j`.
    pub fn join(&mut self, i: usize, j: usize) {
        let addr = self.nodes[j].addr;
        self.with_node(i, |s, _| s.join(&[addr]));
    }

    /// Makes every other node join through node `k`.
    pub fn join_all_to(&mut self, k: usize) {
        for i in 0..self.nodes.len() {
            if i != k {
                self.join(i, k);
            }
        }
    }

    /// Runs `f` on node `i`'s state machine at the current time, then
    /// processes its effects. Does nothing for a killed node.
    pub fn with_node<R>(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut Swim, Duration) -> R,
    ) -> Option<R> {
        if !self.nodes[i].up {
            return None;
        }
        let now = self.now;
        let r = f(&mut self.nodes[i].swim, now);
        self.after_call(i);
        Some(r)
    }

    /// Current simulated time.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Number of nodes (up or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True for an empty simulation.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether node `i` is running.
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].up
    }

    /// Node `i`'s state machine.
    pub fn node(&self, i: usize) -> &Swim {
        &self.nodes[i].swim
    }

    /// What node `i` thinks of node `j`.
    pub fn view(&self, i: usize, j: usize) -> Option<State> {
        self.nodes[i]
            .swim
            .member(&self.nodes[j].name)
            .map(|m| m.state)
    }

    /// True when every running node sees every running node as alive.
    pub fn all_alive_converged(&self) -> bool {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].up)
            .collect();
        up.iter()
            .all(|&i| up.iter().all(|&j| self.view(i, j) == Some(State::Alive)))
    }

    /// Run counters.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// Every `Dead` verdict reached about a running node so far.
    pub fn false_positives(&self) -> &[FalsePositive] {
        &self.false_positives
    }

    /// Processes every event up to and including time `t`, then sets the clock to `t`.
    pub fn run_until(&mut self, t: Duration) {
        while let Some(Reverse(top)) = self.queue.peek() {
            if top.at > t {
                break;
            }
            let Some(Reverse(ev)) = self.queue.pop() else {
                break;
            };
            self.now = self.now.max(ev.at);
            self.dispatch(ev.event);
        }
        self.now = self.now.max(t);
    }

    /// Runs until `pred` holds (checked every check interval, default 50 ms)
    /// or until time `limit`. Returns the time at which `pred` was seen true.
    pub fn run_until_pred(
        &mut self,
        mut pred: impl FnMut(&Sim) -> bool,
        limit: Duration,
    ) -> Option<Duration> {
        loop {
            if pred(self) {
                return Some(self.now);
            }
            if self.now >= limit {
                return None;
            }
            let next = (self.now + self.check_interval).min(limit);
            self.run_until(next);
        }
    }

    fn schedule(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            event,
        }));
    }

    fn dispatch(&mut self, event: Event) {
        let now = self.now;
        match event {
            Event::Wake { node, at } => {
                if !self.nodes[node].up || self.nodes[node].wake_at != Some(at) {
                    return;
                }
                self.nodes[node].wake_at = None;
                self.nodes[node].swim.tick(now);
                self.after_call(node);
            }
            Event::Datagram { to, from, data } => {
                if !self.nodes[to].up {
                    self.stats.udp_blocked += 1;
                    return;
                }
                self.stats.udp_delivered += 1;
                if self.nodes[to]
                    .swim
                    .handle_datagram(from, &data, now)
                    .is_err()
                {
                    self.stats.decode_errors += 1;
                }
                self.after_call(to);
            }
            Event::PushPullRequest { from, to, state } => {
                if !self.nodes[to].up || self.is_blocked(from, to) {
                    self.stats.push_pull_failures += 1;
                    return;
                }
                let reply = self.nodes[to].swim.encode_state();
                match Swim::decode_state(&state) {
                    Ok(remote) => self.nodes[to].swim.merge_remote_state(remote, now),
                    Err(_) => self.stats.decode_errors += 1,
                }
                self.after_call(to);
                let at = now + (self.latency)(to, from);
                self.schedule(
                    at,
                    Event::PushPullResponse {
                        from: to,
                        to: from,
                        state: reply,
                    },
                );
            }
            Event::TcpPingRequest {
                from,
                to,
                seq,
                data,
            } => {
                let response = if self.nodes[to].up && !self.is_blocked(from, to) {
                    self.nodes[to].swim.answer_stream_ping(&data).ok().flatten()
                } else {
                    None
                };
                if response.is_some() {
                    self.stats.tcp_ping_answers += 1;
                }
                let at = now + (self.latency)(to, from);
                self.schedule(
                    at,
                    Event::TcpPingResponse {
                        to: from,
                        seq,
                        response,
                    },
                );
            }
            Event::TcpPingResponse { to, seq, response } => {
                if !self.nodes[to].up {
                    return;
                }
                self.nodes[to]
                    .swim
                    .tcp_ping_result(seq, response.as_deref(), now);
                self.after_call(to);
            }
            Event::PushPullResponse { from, to, state } => {
                if !self.nodes[to].up || self.is_blocked(from, to) {
                    self.stats.push_pull_failures += 1;
                    return;
                }
                match Swim::decode_state(&state) {
                    Ok(remote) => {
                        self.stats.push_pulls += 1;
                        self.nodes[to].swim.merge_remote_state(remote, now);
                    }
                    Err(_) => self.stats.decode_errors += 1,
                }
                self.after_call(to);
            }
        }
    }

    /// Routes node `i`'s effects and reschedules its wake-up.
    fn after_call(&mut self, i: usize) {
        let now = self.now;
        for effect in self.nodes[i].swim.drain_effects() {
            if let Some(hook) = self.hook.as_mut() {
                hook(i, &effect, now);
            }
            match effect {
                Effect::Udp { to, data } => self.send_udp(i, to, data),
                Effect::PushPull { to, join } => {
                    let Some(&j) = self.by_addr.get(&to) else {
                        self.stats.push_pull_failures += 1;
                        continue;
                    };
                    if self.is_blocked(i, j) || !self.nodes[j].up {
                        self.stats.push_pull_failures += 1;
                        continue;
                    }
                    let state = PushPullState {
                        join,
                        ..self.nodes[i].swim.local_state()
                    }
                    .encode();
                    let at = now + (self.latency)(i, j);
                    self.schedule(
                        at,
                        Event::PushPullRequest {
                            from: i,
                            to: j,
                            state,
                        },
                    );
                }
                Effect::MemberChanged(m) => match m.state {
                    State::Suspect => self.stats.suspect_events += 1,
                    State::Dead => {
                        self.stats.dead_events += 1;
                        if let Some(&j) = self.by_name.get(&m.name)
                            && self.nodes[j].up
                            && j != i
                        {
                            self.false_positives.push(FalsePositive {
                                observer: i,
                                subject: j,
                                at: now,
                            });
                        }
                    }
                    State::Alive | State::Left => {}
                },
                Effect::TcpPing {
                    to,
                    seq,
                    data,
                    deadline,
                } => self.start_tcp_ping(i, to, seq, data, deadline),
                Effect::Ack { .. } => self.stats.acks += 1,
                Effect::User { payload, .. } => {
                    self.stats.user_messages += 1;
                    if self.rebroadcast_user && self.nodes[i].seen_user.insert(payload.clone()) {
                        // Cannot fail: it arrived in a datagram of the same size limit.
                        let _ = self.nodes[i].swim.broadcast_user(payload);
                    }
                }
                Effect::Conflict { .. } => self.stats.conflicts += 1,
            }
        }
        if !self.nodes[i].up {
            return;
        }
        let deadline = self.nodes[i].swim.next_deadline();
        if deadline == Duration::MAX {
            self.nodes[i].wake_at = None;
            return;
        }
        let at = deadline.max(now);
        if self.nodes[i].wake_at != Some(at) {
            self.nodes[i].wake_at = Some(at);
            self.schedule(at, Event::Wake { node: i, at });
        }
    }

    fn start_tcp_ping(
        &mut self,
        i: usize,
        to: SocketAddr,
        seq: u32,
        data: Vec<u8>,
        deadline: Duration,
    ) {
        self.stats.tcp_pings += 1;
        let now = self.now;
        let fail_at = |at: Duration| {
            (
                at.max(now),
                Event::TcpPingResponse {
                    to: i,
                    seq,
                    response: None,
                },
            )
        };
        let Some(&j) = self.by_addr.get(&to) else {
            let (at, ev) = fail_at(deadline);
            self.schedule(at, ev);
            return;
        };
        let (there, back) = ((self.latency)(i, j), (self.latency)(j, i));
        let lost = self.loss > 0.0 && (0..4).any(|_| self.rng.random_bool(self.loss));
        if self.is_blocked(i, j) || lost {
            let (at, ev) = fail_at(deadline);
            self.schedule(at, ev);
        } else if !self.nodes[j].up {
            let (at, ev) = fail_at(now + there + back);
            self.schedule(at, ev);
        } else {
            let at = now + there + back + there;
            self.schedule(
                at,
                Event::TcpPingRequest {
                    from: i,
                    to: j,
                    seq,
                    data,
                },
            );
        }
    }

    fn send_udp(&mut self, from: usize, to: SocketAddr, data: Vec<u8>) {
        self.stats.udp_sent += 1;
        let Some(&j) = self.by_addr.get(&to) else {
            self.stats.udp_blocked += 1;
            return;
        };
        if self.is_blocked(from, j) {
            self.stats.udp_blocked += 1;
            return;
        }
        if self.loss > 0.0 && self.rng.random_bool(self.loss) {
            self.stats.udp_lost += 1;
            return;
        }
        let at = self.now + (self.latency)(from, j);
        let from_addr = self.nodes[from].addr;
        self.schedule(
            at,
            Event::Datagram {
                to: j,
                from: from_addr,
                data,
            },
        );
    }
}
