//! Failure detection rounds, gossip rounds, push/pull scheduling and the
//! datagram packing shared by everything we send.

use std::net::SocketAddr;
use std::time::Duration;

use rand::Rng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;

use super::table::{MemberTable, NodeState};
use super::{Effect, Probe, Swim, TcpPing};
use crate::gossip::swim::member::State;
use crate::gossip::swim::wire::{
    self, Accusation, COMPOUND_ENTRY_OVERHEAD, COMPOUND_HEADER, IndirectPing, MAX_COMPOUND_PARTS,
    Message, Ping,
};

impl Swim {
    /// memberlist `probe()`: picks the next probe target round-robin, reaping
    /// and reshuffling the list whenever it wraps.
    pub(super) fn probe_round(&mut self, now: Duration) {
        let mut num_check = 0;
        loop {
            if num_check >= self.probe_order.len() {
                return;
            }
            if self.probe_index >= self.probe_order.len() {
                self.reset_nodes(now);
                self.probe_index = 0;
                num_check += 1;
                continue;
            }
            let slot = self.probe_order[self.probe_index];
            self.probe_index += 1;
            let target = self
                .members
                .by_slot(slot)
                .filter(|ns| slot != self.local_slot && !ns.member.state.is_dead_or_left())
                .map(|ns| ns.member.name.clone());
            let Some(name) = target else {
                num_check += 1;
                continue;
            };
            self.probe_node(&name, now);
            return;
        }
    }

    /// Drops members dead for longer than `gossip_to_the_dead_time` from the
    /// probe list (marking them reaped) and shuffles the rest.
    fn reset_nodes(&mut self, now: Duration) {
        let gttd = self.cfg.gossip_to_the_dead_time;
        let members = &mut self.members;
        self.probe_order.retain(|&slot| {
            let Some(ns) = members.by_slot_mut(slot) else {
                return false;
            };
            let expired = ns.member.state.is_dead_or_left()
                && now.saturating_sub(ns.member.state_change) > gttd;
            if expired {
                ns.reaped = true;
            }
            !expired
        });
        self.probe_order.shuffle(&mut self.rng);
    }

    /// Adds a (re)discovered member at a random position of the probe list.
    pub(super) fn insert_probe_order(&mut self, slot: usize) {
        let n = self.probe_order.len();
        let offset = if n == 0 {
            0
        } else {
            self.rng.random_range(0..n)
        };
        self.probe_order.push(slot);
        self.probe_order.swap(offset, n);
    }

    fn probe_node(&mut self, name: &str, now: Duration) {
        let Some(ns) = self.members.get(name) else {
            return;
        };
        let (addr, incarnation, state) = (ns.member.addr, ns.member.incarnation, ns.member.state);
        let probe_interval = self.awareness.scale_timeout(self.cfg.probe_interval);
        let seq = self.next_seq();
        let ping = wire::encode_message(&Message::Ping(Ping {
            seq,
            target: name.to_owned(),
            source_addr: self.addr,
            source_name: self.name.clone(),
        }));
        if state == State::Alive {
            self.send_msg(addr, ping);
        } else {
            // Give a suspect the chance to refute right away.
            let suspect = wire::encode_message(&Message::Suspect(Accusation {
                incarnation,
                node: name.to_owned(),
                from: self.name.clone(),
            }));
            self.send_raw(addr, wire::compound_datagram(&[ping, suspect]));
        }
        self.stats.probes += 1;
        self.probe = Some(Probe {
            seq,
            target: name.to_owned(),
            target_incarnation: incarnation,
            sent: now,
            timeout_at: now.saturating_add(self.cfg.probe_timeout),
            deadline: now.saturating_add(probe_interval),
            indirect_sent: false,
            tcp: TcpPing::None,
            extended: false,
            expected_nacks: 0,
            nacks: 0,
        });
    }

    /// No direct ack within `probe_timeout`: ask random live peers to probe.
    pub(super) fn probe_timeout(&mut self, _now: Duration) {
        let Some(p) = self.probe.as_ref() else {
            return;
        };
        let (seq, target) = (p.seq, p.target.clone());
        let Some(target_addr) = self.members.get(&target).map(|ns| ns.member.addr) else {
            if let Some(p) = self.probe.as_mut() {
                p.indirect_sent = true;
            }
            return;
        };
        let me = self.local_slot;
        let target_slot = self.members.slot(&target);
        let peers = k_random_nodes(
            &mut self.rng,
            &self.probe_order,
            &self.members,
            self.cfg.indirect_checks,
            |slot, ns| slot != me && Some(slot) != target_slot && ns.member.state == State::Alive,
        );
        let req = wire::encode_message(&Message::IndirectPing(IndirectPing {
            seq,
            target_addr,
            target_name: target.clone(),
            nack: true,
            source_addr: self.addr,
            source_name: self.name.clone(),
        }));
        for (_, addr) in &peers {
            self.send_msg(*addr, req.clone());
        }
        let tcp = (!self.cfg.disable_tcp_pings).then(|| {
            wire::single_datagram(&wire::encode_message(&Message::Ping(Ping {
                seq,
                target: target.clone(),
                source_addr: self.addr,
                source_name: self.name.clone(),
            })))
        });
        let Some(p) = self.probe.as_mut() else {
            return;
        };
        p.indirect_sent = true;
        p.expected_nacks = u32::try_from(peers.len()).unwrap_or(u32::MAX);
        if let Some(data) = tcp {
            // Also try the target over TCP, in case only UDP is broken.
            p.tcp = TcpPing::Pending;
            let deadline = p.deadline;
            self.effects.push(Effect::TcpPing {
                to: target_addr,
                seq,
                data,
                deadline,
            });
        }
    }

    /// No ack at all by the (awareness-scaled) probe interval: suspect the target.
    pub(super) fn probe_deadline(&mut self, now: Duration) {
        if let Some(p) = self.probe.as_mut()
            && p.tcp == TcpPing::Pending
            && !p.extended
        {
            // The host should answer by the deadline; allow it a short grace.
            p.extended = true;
            p.deadline = p.deadline.saturating_add(self.cfg.probe_timeout);
            return;
        }
        let Some(p) = self.probe.take() else {
            return;
        };
        if p.tcp == (TcpPing::Done { acked: true }) {
            // UDP failed but TCP worked: memberlist warns about the network
            // and counts the probe as a success.
            self.stats.tcp_fallback_successes += 1;
            self.awareness.apply_delta(-1);
            self.probe_finished(now);
            return;
        }
        // Missing nacks mean *we* may be the problem (Lifeguard); without
        // nack-capable peers any failure counts against us.
        let delta = if p.expected_nacks > 0 {
            i64::from(p.expected_nacks.saturating_sub(p.nacks))
        } else {
            1
        };
        self.awareness.apply_delta(delta);
        self.stats.probe_failures += 1;
        let me = self.name.clone();
        self.suspect_node(p.target_incarnation, &p.target, &me, now);
        self.probe_finished(now);
    }

    /// An ack for `seq`: completes our probe, or is relayed for an indirect probe.
    pub(super) fn handle_ack(&mut self, seq: u32, payload: Vec<u8>, now: Duration) {
        if let Some(p) = self.probe.as_ref().filter(|p| p.seq == seq) {
            if now < p.timeout_at {
                self.effects.push(Effect::Ack {
                    node: p.target.clone(),
                    rtt: now.saturating_sub(p.sent),
                    payload,
                });
            }
            self.probe = None;
            self.awareness.apply_delta(-1);
            self.probe_finished(now);
            return;
        }
        if let Some(relay) = self.relays.remove(&seq) {
            let ack = wire::encode_message(&Message::Ack {
                seq: relay.orig_seq,
                payload: Vec::new(),
            });
            self.send_msg(relay.reply_to, ack);
        }
    }

    pub(super) fn handle_nack(&mut self, seq: u32) {
        if let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq) {
            p.nacks = p.nacks.saturating_add(1).min(p.expected_nacks);
        }
    }

    fn probe_finished(&mut self, now: Duration) {
        if std::mem::take(&mut self.probe_pending) {
            self.probe_round(now);
        }
    }

    /// memberlist `gossip()`: packs queued broadcasts for a few random members.
    pub(super) fn gossip(&mut self, now: Duration) {
        if self.broadcasts.is_empty() && self.user_broadcasts.is_empty() {
            return;
        }
        let me = self.local_slot;
        let gttd = self.cfg.gossip_to_the_dead_time;
        let targets = k_random_nodes(
            &mut self.rng,
            &self.probe_order,
            &self.members,
            self.cfg.gossip_nodes,
            |slot, ns| {
                slot != me
                    && match ns.member.state {
                        State::Alive | State::Suspect => true,
                        State::Dead => now.saturating_sub(ns.member.state_change) <= gttd,
                        State::Left => false,
                    }
            },
        );
        let avail = self.cfg.udp_buffer_size.saturating_sub(COMPOUND_HEADER);
        for (_, addr) in targets {
            let msgs = self.get_broadcasts(COMPOUND_ENTRY_OVERHEAD, avail, MAX_COMPOUND_PARTS);
            if msgs.is_empty() {
                return;
            }
            self.send_raw(addr, wire::compound_datagram(&msgs));
        }
    }

    /// memberlist `pushPull()`: full sync with one random live member.
    pub(super) fn push_pull(&mut self) {
        let me = self.local_slot;
        let peer = k_random_nodes(
            &mut self.rng,
            &self.probe_order,
            &self.members,
            1,
            |slot, ns| slot != me && ns.member.state == State::Alive,
        );
        if let Some((_, to)) = peer.into_iter().next() {
            self.effects.push(Effect::PushPull { to, join: false });
        }
    }

    /// Sends `msg` (an encoded message) with as many broadcasts piggybacked
    /// as fit in the datagram.
    pub(super) fn send_msg(&mut self, to: SocketAddr, msg: Vec<u8>) {
        let avail = self
            .cfg
            .udp_buffer_size
            .saturating_sub(COMPOUND_HEADER + COMPOUND_ENTRY_OVERHEAD + msg.len());
        let extra = self.get_broadcasts(COMPOUND_ENTRY_OVERHEAD, avail, MAX_COMPOUND_PARTS - 1);
        if extra.is_empty() {
            self.send_raw(to, wire::single_datagram(&msg));
        } else {
            let mut msgs = Vec::with_capacity(1 + extra.len());
            msgs.push(msg);
            msgs.extend(extra);
            self.send_raw(to, wire::compound_datagram(&msgs));
        }
    }

    fn send_raw(&mut self, to: SocketAddr, data: Vec<u8>) {
        self.effects.push(Effect::Udp { to, data });
    }

    /// Membership broadcasts first, then user broadcasts in the space left.
    fn get_broadcasts(&mut self, overhead: usize, limit: usize, max_count: usize) -> Vec<Vec<u8>> {
        let n = self.num_nodes();
        let mult = self.cfg.retransmit_mult;
        let mut msgs = self
            .broadcasts
            .get_broadcasts(overhead, limit, max_count, mult, n);
        if self.broadcasts.take_leave_finished() {
            self.leave_done = true;
        }
        let used: usize = msgs.iter().map(|m| m.len() + overhead).sum();
        let left = limit.saturating_sub(used);
        if left > overhead + 3 && msgs.len() < max_count && !self.user_broadcasts.is_empty() {
            let user = self.user_broadcasts.get_broadcasts(
                overhead,
                left,
                max_count - msgs.len(),
                mult,
                n,
            );
            msgs.extend(user);
        }
        msgs
    }
}

/// memberlist `kRandomNodes`: up to `k` distinct members passing `keep`,
/// chosen at random from the probe list (exhaustively for small lists).
/// Returns `(slot, address)` pairs.
pub(super) fn k_random_nodes(
    rng: &mut SmallRng,
    order: &[usize],
    members: &MemberTable,
    k: usize,
    keep: impl Fn(usize, &NodeState) -> bool,
) -> Vec<(usize, SocketAddr)> {
    let n = order.len();
    let mut out: Vec<(usize, SocketAddr)> = Vec::with_capacity(k);
    if k == 0 || n == 0 {
        return out;
    }
    let consider = |slot: usize, out: &mut Vec<(usize, SocketAddr)>| {
        if let Some(ns) = members.by_slot(slot)
            && keep(slot, ns)
            && !out.iter().any(|&(o, _)| o == slot)
        {
            out.push((slot, ns.member.addr));
        }
    };
    if n < k * 3 {
        let mut shuffled = order.to_vec();
        shuffled.shuffle(rng);
        for slot in shuffled {
            if out.len() >= k {
                break;
            }
            consider(slot, &mut out);
        }
        return out;
    }
    for _ in 0..3 * n {
        if out.len() >= k {
            break;
        }
        let idx = rng.random_range(0..n);
        consider(order[idx], &mut out);
    }
    out
}
