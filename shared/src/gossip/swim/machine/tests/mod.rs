//! Unit tests driving a single [`Swim`] with hand-made datagrams and a fake clock.

use std::net::SocketAddr;
use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::SmallRng};

use super::*;
use crate::gossip::swim::wire::{
    Accusation, IndirectPing, Ping, decode_datagram, encode_message, single_datagram,
};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 8301))
}

fn name(i: u8) -> String {
    format!("n{i}")
}

fn dgram(msg: Message) -> Vec<u8> {
    single_datagram(&encode_message(&msg))
}

fn alive(i: u8, inc: u32) -> Message {
    Message::Alive(Alive {
        incarnation: inc,
        node: name(i),
        addr: addr(i),
        meta: Vec::new(),
    })
}

/// Node n0 with `peers` other alive members n1..=peers.
fn node_with_peers(peers: u8, cfg: Config) -> Swim {
    let mut s = Swim::new(name(0), addr(0), Vec::new(), cfg, 42, Duration::ZERO).expect("valid");
    for i in 1..=peers {
        s.handle_datagram(addr(i), &dgram(alive(i, 1)), Duration::ZERO)
            .expect("valid");
    }
    s.drain_effects();
    s
}

/// Every message in every datagram among `effects`, with its destination.
fn sent(effects: &[Effect]) -> Vec<(SocketAddr, Message)> {
    let mut out = Vec::new();
    for e in effects {
        if let Effect::Udp { to, data } = e {
            for m in decode_datagram(data).expect("we only send valid datagrams") {
                out.push((*to, m));
            }
        }
    }
    out
}

/// Runs timers up to `until` in small steps, collecting effects.
fn run(s: &mut Swim, from: Duration, until: Duration) -> Vec<Effect> {
    let mut out = Vec::new();
    let mut t = from;
    while t <= until {
        s.tick(t);
        out.extend(s.drain_effects());
        t += 10 * MS;
    }
    out
}

/// Ticks at `t`, then acks at once every ping sent, except those to `silent`.
fn tick_acking(s: &mut Swim, t: Duration, silent: Option<SocketAddr>) {
    s.tick(t);
    for (to, m) in sent(&s.drain_effects()) {
        if let Message::Ping(p) = m
            && Some(to) != silent
        {
            s.handle_datagram(
                to,
                &dgram(Message::Ack {
                    seq: p.seq,
                    payload: vec![],
                }),
                t,
            )
            .expect("valid");
        }
    }
}

/// Like [`run`], but every ping we send is acked at once.
fn run_acking(s: &mut Swim, from: Duration, until: Duration) {
    let mut t = from;
    while t <= until {
        tick_acking(s, t, None);
        t += 10 * MS;
    }
}

fn state_of(s: &Swim, i: u8) -> Option<State> {
    s.member(&name(i)).map(|m| m.state)
}

#[test]
fn new_node_announces_itself() {
    let mut s = Swim::new(name(0), addr(0), b"m".to_vec(), Config::lan(), 1, SEC).expect("valid");
    let effects = s.drain_effects();
    assert!(
        matches!(&effects[..], [Effect::MemberChanged(m)] if m.name == "n0" && m.state == State::Alive)
    );
    assert_eq!(s.local().incarnation, 1);
    assert_eq!(s.num_nodes(), 1);
    assert!(s.next_deadline() >= SEC && s.next_deadline() < 2 * SEC);
    assert!(Swim::new(String::new(), addr(0), vec![], Config::lan(), 1, SEC).is_err());
    assert!(Swim::new(name(0), addr(0), vec![0; 513], Config::lan(), 1, SEC).is_err());
}

#[test]
fn refutes_suspicion_and_death_about_itself() {
    let mut s = node_with_peers(3, Config::lan());
    let suspect = Message::Suspect(Accusation {
        incarnation: 1,
        node: name(0),
        from: name(1),
    });
    s.handle_datagram(addr(1), &dgram(suspect), SEC)
        .expect("valid");
    assert_eq!(s.local().incarnation, 2);
    assert_eq!(s.local().state, State::Alive);
    assert_eq!(s.health_score(), 1);
    let dead = Message::Dead(Accusation {
        incarnation: 10,
        node: name(0),
        from: name(2),
    });
    s.handle_datagram(addr(2), &dgram(dead), SEC)
        .expect("valid");
    assert_eq!(s.local().incarnation, 11);
    assert_eq!(s.stats().refutations, 2);
    // The refutation is gossiped.
    let msgs = sent(&run(&mut s, SEC, 2 * SEC));
    assert!(
        msgs.iter()
            .any(|(_, m)| matches!(m, Message::Alive(a) if a.node == "n0" && a.incarnation == 11))
    );
    // Stale alive claims about us are ignored; higher ones refuted.
    s.handle_datagram(addr(1), &dgram(alive(0, 11)), SEC)
        .expect("valid");
    assert_eq!(s.local().incarnation, 11);
    s.handle_datagram(
        addr(1),
        &dgram(Message::Alive(Alive {
            incarnation: 11,
            node: name(0),
            addr: addr(0),
            meta: b"old".to_vec(),
        })),
        SEC,
    )
    .expect("valid");
    assert_eq!(
        s.local().incarnation,
        12,
        "same incarnation with other meta is refuted"
    );
}

#[test]
fn conflicting_address_is_reported_and_ignored() {
    let mut s = node_with_peers(2, Config::lan());
    let claim = Message::Alive(Alive {
        incarnation: 5,
        node: name(1),
        addr: addr(9),
        meta: vec![],
    });
    s.handle_datagram(addr(9), &dgram(claim.clone()), SEC)
        .expect("valid");
    let effects = s.drain_effects();
    assert!(effects.contains(&Effect::Conflict {
        name: name(1),
        existing: addr(1),
        other: addr(9)
    }));
    assert_eq!(
        s.member(&name(1)).map(|m| (m.addr, m.incarnation)),
        Some((addr(1), 1))
    );
    // Someone else claiming our own name is a conflict too, not a refutation.
    let me = Message::Alive(Alive {
        incarnation: 7,
        node: name(0),
        addr: addr(9),
        meta: vec![],
    });
    s.handle_datagram(addr(9), &dgram(me), SEC).expect("valid");
    assert_eq!(s.local().incarnation, 1);
    assert_eq!(s.stats().conflicts, 2);
}

#[test]
fn left_versus_dead() {
    let mut s = node_with_peers(3, Config::lan());
    let leave = Message::Dead(Accusation {
        incarnation: 1,
        node: name(1),
        from: name(1),
    });
    let dead = Message::Dead(Accusation {
        incarnation: 1,
        node: name(2),
        from: name(3),
    });
    s.handle_datagram(addr(1), &dgram(leave), SEC)
        .expect("valid");
    s.handle_datagram(addr(3), &dgram(dead), SEC)
        .expect("valid");
    assert_eq!(state_of(&s, 1), Some(State::Left));
    assert_eq!(state_of(&s, 2), Some(State::Dead));
    let changed: Vec<_> = s
        .drain_effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::MemberChanged(m) => Some((m.name, m.state)),
            _ => None,
        })
        .collect();
    assert_eq!(
        changed,
        vec![(name(1), State::Left), (name(2), State::Dead)]
    );
    // A left node may come back under a new address, even at a low incarnation.
    let back = Message::Alive(Alive {
        incarnation: 1,
        node: name(1),
        addr: addr(7),
        meta: vec![],
    });
    s.handle_datagram(addr(7), &dgram(back), 2 * SEC)
        .expect("valid");
    assert_eq!(
        s.member(&name(1)).map(|m| (m.state, m.addr)),
        Some((State::Alive, addr(7)))
    );
    // A dead one keeps its address (conflict) unless reclaim is configured...
    let moved = Message::Alive(Alive {
        incarnation: 9,
        node: name(2),
        addr: addr(8),
        meta: vec![],
    });
    s.handle_datagram(addr(8), &dgram(moved.clone()), 40 * SEC)
        .expect("valid");
    assert_eq!(s.member(&name(2)).map(|m| m.addr), Some(addr(2)));
    let mut r = node_with_peers(
        3,
        Config {
            dead_node_reclaim_time: 30 * SEC,
            ..Config::lan()
        },
    );
    r.handle_datagram(
        addr(3),
        &dgram(Message::Dead(Accusation {
            incarnation: 1,
            node: name(2),
            from: name(3),
        })),
        SEC,
    )
    .expect("valid");
    r.handle_datagram(addr(8), &dgram(moved.clone()), 20 * SEC)
        .expect("valid");
    assert_eq!(
        r.member(&name(2)).map(|m| m.addr),
        Some(addr(2)),
        "too early"
    );
    r.handle_datagram(addr(8), &dgram(moved), 40 * SEC)
        .expect("valid");
    assert_eq!(
        r.member(&name(2)).map(|m| (m.addr, m.state)),
        Some((addr(8), State::Alive))
    );
    // ...and otherwise needs a higher incarnation at the same address.
    s.handle_datagram(addr(2), &dgram(alive(2, 1)), 2 * SEC)
        .expect("valid");
    assert_eq!(state_of(&s, 2), Some(State::Dead));
    s.handle_datagram(addr(2), &dgram(alive(2, 2)), 2 * SEC)
        .expect("valid");
    assert_eq!(state_of(&s, 2), Some(State::Alive));
}

#[test]
fn local_leave_broadcasts_left_and_stops_refuting() {
    let mut s = node_with_peers(3, Config::lan());
    s.leave(SEC);
    assert_eq!(s.local().state, State::Left);
    assert!(!s.leave_broadcast_done());
    let msgs = sent(&run(&mut s, SEC, 10 * SEC));
    assert!(
        msgs.iter()
            .any(|(_, m)| matches!(m, Message::Dead(d) if d.node == "n0" && d.from == "n0"))
    );
    assert!(s.leave_broadcast_done());
    let suspect = Message::Suspect(Accusation {
        incarnation: 1,
        node: name(0),
        from: name(1),
    });
    s.handle_datagram(addr(1), &dgram(suspect), 11 * SEC)
        .expect("valid");
    s.handle_datagram(addr(1), &dgram(alive(0, 9)), 11 * SEC)
        .expect("valid");
    assert_eq!(s.local().incarnation, 1);
    assert_eq!(s.local().state, State::Left);
    // Alone: leaving is immediately done.
    let mut lone = Swim::new(name(5), addr(5), vec![], Config::lan(), 1, SEC).expect("valid");
    lone.leave(SEC);
    assert!(lone.leave_broadcast_done());
}

#[test]
fn merge_downgrades_dead_to_suspect_and_keeps_left() {
    let mut s = node_with_peers(3, Config::lan());
    let mut remote = s.local_state();
    for m in &mut remote.members {
        m.state = match m.name.as_str() {
            "n1" => State::Dead,
            "n2" => State::Left,
            _ => m.state,
        };
    }
    remote.members.push(PushNode {
        name: name(9),
        addr: addr(9),
        meta: vec![1],
        incarnation: 3,
        state: State::Alive,
    });
    let bytes = remote.encode();
    s.merge_remote_state(Swim::decode_state(&bytes).expect("valid"), SEC);
    assert_eq!(state_of(&s, 1), Some(State::Suspect));
    assert_eq!(state_of(&s, 2), Some(State::Left));
    assert_eq!(
        s.member(&name(9))
            .map(|m| (m.state, m.incarnation, m.meta.clone())),
        Some((State::Alive, 3, vec![1]))
    );
    assert_eq!(s.num_nodes(), 5);
}

#[test]
fn restarted_node_refutes_its_old_incarnation() {
    let mut s = node_with_peers(1, Config::lan());
    let remote = PushPullState {
        join: true,
        members: vec![PushNode {
            name: name(0),
            addr: addr(0),
            meta: vec![],
            incarnation: 5,
            state: State::Dead,
        }],
    };
    s.merge_remote_state(remote, SEC);
    assert_eq!(s.local().incarnation, 6);
    assert_eq!(s.local().state, State::Alive);
}

#[test]
fn dead_members_are_reaped_from_probing_then_can_rejoin() {
    let cfg = Config::lan();
    let mut s = node_with_peers(3, cfg.clone());
    let dead = Message::Dead(Accusation {
        incarnation: 4,
        node: name(3),
        from: name(1),
    });
    s.handle_datagram(addr(1), &dgram(dead), SEC)
        .expect("valid");
    assert_eq!(s.num_nodes(), 4);
    // Ack every probe until the probe list wraps after gossip_to_the_dead_time.
    let mut t = SEC;
    while s.num_nodes() == 4 {
        t = s.next_deadline().max(t);
        tick_acking(&mut s, t, None);
        assert!(t < 40 * SEC);
    }
    assert!(t > SEC + cfg.gossip_to_the_dead_time);
    assert_eq!(state_of(&s, 3), Some(State::Dead), "the host still sees it");
    assert!(s.local_state().members.iter().all(|m| m.name != name(3)));
    // Reaped means forgotten by the protocol: a restarted n3 (incarnation 1) is accepted.
    s.handle_datagram(addr(3), &dgram(alive(3, 1)), t)
        .expect("valid");
    assert_eq!(state_of(&s, 3), Some(State::Alive));
    assert_eq!(s.num_nodes(), 4);
    assert!(s.remove_member(&name(3)));
    assert!(!s.remove_member(&name(0)));
    assert_eq!(s.num_nodes(), 3);
}

#[test]
fn update_meta_bumps_incarnation() {
    let mut s = node_with_peers(2, Config::lan());
    s.update_meta(b"tags".to_vec(), SEC).expect("fits");
    assert_eq!(s.local().incarnation, 2);
    assert_eq!(s.local().meta, b"tags");
    assert!(
        s.drain_effects()
            .iter()
            .any(|e| matches!(e, Effect::MemberChanged(m) if m.name == "n0" && m.meta == b"tags"))
    );
    assert!(s.update_meta(vec![0; 600], SEC).is_err());
}

#[test]
fn user_broadcasts_ride_gossip() {
    let mut s = node_with_peers(3, Config::lan());
    s.broadcast_user(b"event-1".to_vec()).expect("fits");
    assert!(s.broadcast_user(vec![0; 2000]).is_err());
    let msgs = sent(&run(&mut s, Duration::ZERO, 5 * SEC));
    let copies = msgs
        .iter()
        .filter(|(_, m)| *m == Message::User(b"event-1".to_vec()))
        .count();
    // retransmit_limit(4, 4 nodes) = 4.
    assert_eq!(copies, 4);
    s.handle_datagram(addr(2), &dgram(Message::User(b"hi".to_vec())), SEC)
        .expect("valid");
    assert!(s.drain_effects().contains(&Effect::User {
        from: addr(2),
        payload: b"hi".to_vec()
    }));
    s.send_user(addr(1), b"resp".to_vec()).expect("fits");
    assert_eq!(
        sent(&s.drain_effects()),
        vec![(addr(1), Message::User(b"resp".to_vec()))]
    );
}

#[test]
fn datagrams_respect_udp_buffer_size() {
    let mut s = node_with_peers(3, Config::lan());
    for i in 10..250u8 {
        s.handle_datagram(addr(i), &dgram(alive(i, 1)), Duration::ZERO)
            .expect("valid");
    }
    let effects = run(&mut s, Duration::ZERO, 5 * SEC);
    let sizes: Vec<usize> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Udp { data, .. } => Some(data.len()),
            _ => None,
        })
        .collect();
    assert!(!sizes.is_empty());
    assert!(sizes.iter().all(|&n| n <= 1400), "{sizes:?}");
    assert!(
        sizes.iter().any(|&n| n > 1200),
        "packs compound messages: {sizes:?}"
    );
}

#[test]
fn garbage_datagrams_are_rejected_without_panic() {
    let mut s = node_with_peers(3, Config::lan());
    let mut rng = SmallRng::seed_from_u64(7);
    let good = encode_message(&alive(4, 1));
    let mut errors = 0;
    for i in 0..20_000 {
        let data: Vec<u8> = if i % 2 == 0 {
            (0..rng.random_range(0..200))
                .map(|_| rng.random())
                .collect()
        } else {
            let mut d = single_datagram(&good);
            let idx = rng.random_range(0..d.len());
            d[idx] = rng.random();
            d.truncate(rng.random_range(1..=d.len()));
            d
        };
        if s.handle_datagram(addr(1), &data, SEC).is_err() {
            errors += 1;
        }
        s.tick(SEC);
    }
    assert!(errors > 15_000, "{errors}");
    assert!(s.handle_datagram(addr(1), &vec![1u8; 70_000], SEC).is_err());
    assert!(Swim::decode_state(&[1, 6, 0, 255, 255, 255, 255]).is_err());
}

#[test]
fn deterministic_for_a_seed() {
    let trace = |seed| {
        let mut s = Swim::new(
            name(0),
            addr(0),
            vec![],
            Config::lan(),
            seed,
            Duration::ZERO,
        )
        .expect("valid");
        for i in 1..20 {
            s.handle_datagram(addr(i), &dgram(alive(i, 1)), Duration::ZERO)
                .expect("valid");
        }
        run(&mut s, Duration::ZERO, 30 * SEC)
    };
    assert_eq!(trace(5), trace(5));
    assert_ne!(trace(5), trace(6));
}

#[test]
fn next_tick_skips_missed_ticks() {
    assert_eq!(next_tick(SEC, SEC, SEC), 2 * SEC);
    assert_eq!(next_tick(SEC, SEC, 2 * SEC), 3 * SEC);
    assert_eq!(next_tick(SEC, SEC, 5 * SEC + MS), 6 * SEC);
}

mod probe;
