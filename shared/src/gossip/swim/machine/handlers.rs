//! Message dispatch and the alive / suspect / dead state transitions.
//!
//! These follow memberlist's `aliveNode`, `suspectNode` and `deadNode`:
//!
//! * an alive claim wins over our view only with a strictly higher
//!   incarnation (except when it re-addresses a `Left` member, or a `Dead`
//!   one after `dead_node_reclaim_time`); any other claim for a known name
//!   from another address is a conflict;
//! * a suspicion applies to `Alive` members only; for an already suspect
//!   member it counts as a confirmation that shortens the timer;
//! * a death needs an incarnation at least as new as ours; `from == node`
//!   marks a voluntary leave (`Left`);
//! * any suspect/dead claim about ourselves (unless we are leaving) is
//!   refuted by gossiping an alive message with a higher incarnation.

use std::net::SocketAddr;
use std::time::Duration;

use super::table::NodeState;
use super::{Effect, MAX_RELAYS, Relay, Swim, Timer};
use crate::gossip::swim::config::suspicion_timeout;
use crate::gossip::swim::member::{Member, State};
use crate::gossip::swim::suspicion::Suspicion;
use crate::gossip::swim::wire::{self, Accusation, Alive, IndirectPing, Message, Ping};

impl Swim {
    pub(super) fn handle_message(&mut self, from: SocketAddr, msg: Message, now: Duration) {
        match msg {
            Message::Ping(p) => self.handle_ping(p),
            Message::IndirectPing(p) => self.handle_indirect_ping(p, now),
            Message::Ack { seq, payload } => self.handle_ack(seq, payload, now),
            Message::Nack { seq } => self.handle_nack(seq),
            Message::Suspect(a) => {
                self.reassert_self(from, a.incarnation, &a.node);
                self.suspect_node(a.incarnation, &a.node, &a.from, now);
            }
            Message::Alive(a) => self.alive_node(a, false, now),
            Message::Dead(a) => {
                self.reassert_self(from, a.incarnation, &a.node);
                self.dead_node(a.incarnation, &a.node, &a.from, now);
            }
            Message::User(payload) => self.effects.push(Effect::User { from, payload }),
        }
    }

    /// Deviation from memberlist: an accusation about *us* at an incarnation
    /// we already refuted means its sender missed our refutation. memberlist
    /// ignores it; we send the sender our current alive message directly, so
    /// a lost refutation cannot leave it holding a stale suspicion that later
    /// times out into a false `Dead`. Paired with the suspicion re-check
    /// (see `suspicion_recheck`), which makes such a sender ask us.
    fn reassert_self(&mut self, from: SocketAddr, incarnation: u32, node: &str) {
        if node != self.name || self.left {
            return;
        }
        let me = self.local();
        if incarnation >= me.incarnation {
            return;
        }
        let alive = Message::Alive(Alive {
            incarnation: me.incarnation,
            node: me.name.clone(),
            addr: me.addr,
            meta: me.meta.clone(),
        });
        self.stats.reassertions += 1;
        self.send_msg(from, wire::encode_message(&alive));
    }

    fn handle_ping(&mut self, p: Ping) {
        // A ping meant for another name (e.g. an address reused by a new node)
        // must not be acked, or the prober would think the old node is alive.
        if !p.target.is_empty() && p.target != self.name {
            return;
        }
        let ack = wire::encode_message(&Message::Ack {
            seq: p.seq,
            payload: self.ack_payload.clone(),
        });
        self.send_msg(p.source_addr, ack);
    }

    fn handle_indirect_ping(&mut self, p: IndirectPing, now: Duration) {
        if self.relays.len() >= MAX_RELAYS {
            return;
        }
        let seq = self.next_seq();
        self.relays.insert(
            seq,
            Relay {
                orig_seq: p.seq,
                reply_to: p.source_addr,
                nack: p.nack,
            },
        );
        self.push_timer(
            now.saturating_add(self.cfg.probe_timeout),
            Timer::Relay { seq },
        );
        self.stats.relays += 1;
        let ping = wire::encode_message(&Message::Ping(Ping {
            seq,
            target: p.target_name,
            source_addr: self.addr,
            source_name: self.name.clone(),
        }));
        self.send_msg(p.target_addr, ping);
    }

    fn queue_broadcast(&mut self, node: &str, msg: &Message) {
        self.broadcasts.queue(Some(node), wire::encode_message(msg));
    }

    /// Gossips a fresh alive message for ourselves with an incarnation above
    /// `accused`, and counts the refutation against our health.
    fn refute(&mut self, accused: u32) {
        let Some(me) = self.members.get_mut(&self.name) else {
            return;
        };
        let mut inc = me.member.incarnation.saturating_add(1);
        if accused >= inc {
            inc = accused.saturating_add(1);
        }
        me.member.incarnation = inc;
        let alive = Alive {
            incarnation: inc,
            node: me.member.name.clone(),
            addr: me.member.addr,
            meta: me.member.meta.clone(),
        };
        self.awareness.apply_delta(1);
        self.stats.refutations += 1;
        let name = self.name.clone();
        self.queue_broadcast(&name, &Message::Alive(alive));
    }

    /// memberlist `aliveNode`. `bootstrap` is set for our own announcements
    /// (creation, metadata updates), which are applied rather than refuted.
    pub(super) fn alive_node(&mut self, a: Alive, bootstrap: bool, now: Duration) {
        let is_local = a.node == self.name;
        if self.left && is_local {
            return;
        }
        let mut updates_node = false;
        let mut is_new = false;
        match self.members.get_mut(&a.node) {
            Some(ns) if !ns.reaped => {
                if ns.member.addr != a.addr {
                    let reclaim = self.cfg.dead_node_reclaim_time;
                    let reclaimable = ns.member.state == State::Dead
                        && !reclaim.is_zero()
                        && now.saturating_sub(ns.member.state_change) > reclaim;
                    if ns.member.state == State::Left || reclaimable {
                        updates_node = true;
                    } else {
                        self.stats.conflicts += 1;
                        self.effects.push(Effect::Conflict {
                            name: a.node,
                            existing: ns.member.addr,
                            other: a.addr,
                        });
                        return;
                    }
                }
            }
            existing => {
                // Unknown (or reaped, which memberlist would have forgotten).
                if a.incarnation == 0 {
                    return;
                }
                let fresh = Member {
                    name: a.node.clone(),
                    addr: a.addr,
                    meta: a.meta.clone(),
                    incarnation: 0,
                    state: State::Dead,
                    state_change: now,
                };
                let slot = match existing {
                    Some(ns) => {
                        ns.reaped = false;
                        ns.suspicion = None;
                        ns.member.incarnation = 0;
                        ns.member.addr = a.addr;
                        self.members.slot(&a.node)
                    }
                    None => {
                        is_new = true;
                        Some(self.members.insert(NodeState {
                            member: fresh,
                            reaped: false,
                            suspicion: None,
                        }))
                    }
                };
                if let Some(slot) = slot {
                    self.insert_probe_order(slot);
                }
            }
        }
        let Some(ns) = self.members.get_mut(&a.node) else {
            return;
        };
        let cur = ns.member.incarnation;
        if a.incarnation <= cur && !is_local && !updates_node {
            return;
        }
        if a.incarnation < cur && is_local {
            return;
        }
        ns.suspicion = None;
        let (old_state, old_meta, old_addr) =
            (ns.member.state, ns.member.meta.clone(), ns.member.addr);

        if !bootstrap && is_local {
            // Someone gossips about us: identical news is an echo, anything
            // else (stale meta after a restart, a higher incarnation) is refuted.
            if a.incarnation == cur && a.meta == ns.member.meta {
                return;
            }
            self.refute(a.incarnation);
            return;
        }
        ns.member.incarnation = a.incarnation;
        ns.member.meta = a.meta.clone();
        ns.member.addr = a.addr;
        if ns.member.state != State::Alive {
            ns.member.state = State::Alive;
            ns.member.state_change = now;
        }
        let changed = is_new
            || old_state != State::Alive
            || old_meta != ns.member.meta
            || old_addr != ns.member.addr;
        let node = a.node.clone();
        self.queue_broadcast(&node, &Message::Alive(a));
        if changed {
            self.emit_changed(&node);
        }
    }

    /// memberlist `suspectNode`.
    pub(super) fn suspect_node(&mut self, incarnation: u32, node: &str, from: &str, now: Duration) {
        let n = self.num_nodes();
        let Some(ns) = self.members.get_mut(node).filter(|ns| !ns.reaped) else {
            return;
        };
        if incarnation < ns.member.incarnation {
            return;
        }
        let accusation = Message::Suspect(Accusation {
            incarnation,
            node: node.to_owned(),
            from: from.to_owned(),
        });
        if let Some((id, s)) = ns.suspicion.as_mut() {
            if incarnation == ns.member.incarnation {
                // Already suspect: this may be an independent confirmation.
                if s.confirm(from) {
                    let (id, deadline) = (*id, s.deadline());
                    self.queue_broadcast(node, &accusation);
                    self.push_timer(
                        deadline,
                        Timer::Suspicion {
                            name: node.to_owned(),
                            id,
                        },
                    );
                }
                return;
            }
            // Deviation from memberlist, which would count this as a
            // confirmation of the older suspicion (and could then declare the
            // member dead at once, at an incarnation everyone else has moved
            // past). A suspicion at a newer incarnation proves the member
            // refuted the one we hold, so it replaces it and restarts the timer.
            ns.suspicion = None;
        } else if ns.member.state != State::Alive {
            return;
        }
        if node == self.name {
            self.refute(incarnation);
            return;
        }
        ns.member.incarnation = incarnation;
        ns.member.state = State::Suspect;
        ns.member.state_change = now;

        // Aim to reach the minimum timeout with k confirmations; with too few
        // other nodes to confirm (n minus us and the suspect), expect none.
        let k = i64::from(self.cfg.suspicion_mult) - 2;
        let k = if (n as i64) - 2 < k { 0 } else { k.max(0) };
        let k = u32::try_from(k).unwrap_or(0);
        let min = suspicion_timeout(self.cfg.suspicion_mult, n, self.cfg.probe_interval);
        let max = min.saturating_mul(self.cfg.suspicion_max_timeout_mult);
        self.suspicion_gen += 1;
        let id = self.suspicion_gen;
        let suspicion = Suspicion::new(from, k, min, max, now);
        let deadline = suspicion.deadline();
        ns.suspicion = Some((id, suspicion));
        self.stats.suspicions += 1;
        self.queue_broadcast(node, &accusation);
        self.push_timer(
            deadline,
            Timer::Suspicion {
                name: node.to_owned(),
                id,
            },
        );
        let first_check = now.saturating_add(recheck_interval(min));
        if first_check < deadline {
            self.push_timer(
                first_check,
                Timer::Recheck {
                    name: node.to_owned(),
                    id,
                },
            );
        }
        self.emit_changed(node);
    }

    /// Deviation from memberlist ("suspicion re-check"). A refutation normally
    /// reaches every node within a second or two, but with packet loss a node
    /// can miss every copy and then time out into a false `Dead` (memberlist
    /// leaves this to the next push/pull). So while a suspicion is pending we
    /// send our accusation straight to the suspect every `min / 4`
    /// (Lifeguard's buddy system, repeated): a live suspect either refutes
    /// it or, if it already did, re-asserts its newer incarnation to us
    /// (`reassert_self`). Checking a dead suspect costs one lost datagram.
    pub(super) fn suspicion_recheck(&mut self, node: &str, id: u64, now: Duration) {
        let Some(ns) = self.members.get(node) else {
            return;
        };
        let Some((sid, s)) = ns.suspicion.as_ref() else {
            return;
        };
        if *sid != id || ns.member.state != State::Suspect || s.deadline() <= now {
            return;
        }
        let (addr, deadline, next) = (
            ns.member.addr,
            s.deadline(),
            now.saturating_add(recheck_interval(s.min())),
        );
        let accusation = Message::Suspect(Accusation {
            incarnation: ns.member.incarnation,
            node: node.to_owned(),
            from: self.name.clone(),
        });
        self.stats.rechecks += 1;
        self.send_msg(addr, wire::encode_message(&accusation));
        if next < deadline {
            self.push_timer(
                next,
                Timer::Recheck {
                    name: node.to_owned(),
                    id,
                },
            );
        }
    }

    /// A suspicion timer fired; declare the member dead if it is still the
    /// same suspicion and its (possibly shortened) deadline has passed.
    pub(super) fn suspicion_expired(&mut self, node: &str, id: u64, now: Duration) {
        let Some(ns) = self.members.get(node) else {
            return;
        };
        let Some((sid, s)) = ns.suspicion.as_ref() else {
            return;
        };
        if *sid != id || ns.member.state != State::Suspect {
            return;
        }
        let deadline = s.deadline();
        if deadline > now {
            self.push_timer(
                deadline,
                Timer::Suspicion {
                    name: node.to_owned(),
                    id,
                },
            );
            return;
        }
        let incarnation = ns.member.incarnation;
        self.stats.deaths_declared += 1;
        let me = self.name.clone();
        self.dead_node(incarnation, node, &me, now);
    }

    /// memberlist `deadNode`.
    pub(super) fn dead_node(&mut self, incarnation: u32, node: &str, from: &str, now: Duration) {
        let is_local = node == self.name;
        let Some(ns) = self.members.get_mut(node).filter(|ns| !ns.reaped) else {
            return;
        };
        if incarnation < ns.member.incarnation {
            return;
        }
        ns.suspicion = None;
        if ns.member.state.is_dead_or_left() {
            return;
        }
        let msg = Message::Dead(Accusation {
            incarnation,
            node: node.to_owned(),
            from: from.to_owned(),
        });
        if is_local {
            if !self.left {
                self.refute(incarnation);
                return;
            }
            self.broadcasts
                .queue_leave(node, wire::encode_message(&msg));
        } else {
            self.queue_broadcast(node, &msg);
        }
        let Some(ns) = self.members.get_mut(node) else {
            return;
        };
        ns.member.incarnation = incarnation;
        ns.member.state = if node == from {
            State::Left
        } else {
            State::Dead
        };
        ns.member.state_change = now;
        self.emit_changed(node);
    }
}

/// Spacing of suspicion re-checks: a quarter of the minimum suspicion timeout.
fn recheck_interval(min: Duration) -> Duration {
    (min / 4).max(Duration::from_millis(1))
}
