//! Probing, awareness, TCP fallback and suspicion tests.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;

/// Drives n0 until it probes someone, returning (target index, ping seq, time).
fn first_probe(s: &mut Swim) -> (u8, u32, Duration, Vec<(SocketAddr, Message)>) {
    loop {
        let t = s.next_deadline();
        s.tick(t);
        let msgs = sent(&s.drain_effects());
        if let Some((to, Message::Ping(p))) = msgs
            .iter()
            .find(|(_, m)| matches!(m, Message::Ping(_)))
            .cloned()
        {
            let idx = to
                .ip()
                .to_string()
                .rsplit('.')
                .next()
                .and_then(|x| x.parse().ok())
                .expect("ip");
            assert_eq!(p.target, name(idx));
            return (idx, p.seq, t, msgs);
        }
        assert!(t < 10 * SEC, "no probe");
    }
}

#[test]
fn ack_reports_rtt_and_payload_and_improves_health() {
    let mut s = node_with_peers(4, Config::lan());
    s.awareness.apply_delta(2);
    let (target, seq, t0, _) = first_probe(&mut s);
    let ack = Message::Ack {
        seq,
        payload: b"coord".to_vec(),
    };
    s.handle_datagram(addr(target), &dgram(ack), t0 + 7 * MS)
        .expect("valid");
    let effects = s.drain_effects();
    assert!(effects.contains(&Effect::Ack {
        node: name(target),
        rtt: 7 * MS,
        payload: b"coord".to_vec()
    }));
    assert_eq!(s.health_score(), 1);
    assert_eq!(s.stats().probes, 1);
}

/// LAN config without the TCP fallback, for tests of the UDP-only path.
fn udp_only() -> Config {
    Config {
        disable_tcp_pings: true,
        ..Config::lan()
    }
}

#[test]
fn failed_probe_goes_indirect_then_suspect_then_dead() {
    let cfg = udp_only();
    let mut s = node_with_peers(9, cfg.clone()); // n = 10
    let (target, seq, t0, _) = first_probe(&mut s);
    // At probe_timeout, indirect pings go to 3 other live peers.
    s.tick(t0 + cfg.probe_timeout);
    let msgs = sent(&s.drain_effects());
    let ind: Vec<_> = msgs
        .iter()
        .filter_map(|(to, m)| match m {
            Message::IndirectPing(p) => Some((*to, p.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(ind.len(), 3);
    assert!(ind.iter().all(|(to, p)| p.seq == seq
        && p.target_name == name(target)
        && p.nack
        && *to != addr(target)));
    // Two of three relays nack: awareness +1 when the probe fails.
    s.handle_datagram(ind[0].0, &dgram(Message::Nack { seq }), t0 + 600 * MS)
        .expect("valid");
    s.handle_datagram(ind[1].0, &dgram(Message::Nack { seq }), t0 + 600 * MS)
        .expect("valid");
    s.tick(t0 + cfg.probe_interval);
    assert_eq!(state_of(&s, target), Some(State::Suspect));
    assert_eq!(s.health_score(), 1);
    assert_eq!(s.stats().probe_failures, 1);
    // n = 10: min = 4 * 1 * 1s = 4s, max = 24s, k = 2. Nobody confirms → max.
    let suspected_at = t0 + cfg.probe_interval;
    let mut t = suspected_at;
    while state_of(&s, target) == Some(State::Suspect) {
        t = s.next_deadline().max(t);
        // Keep acking everyone else so nothing else fails.
        tick_acking(&mut s, t, Some(addr(target)));
        assert!(t < suspected_at + 60 * SEC);
    }
    assert_eq!(state_of(&s, target), Some(State::Dead));
    assert_eq!(t - suspected_at, 24 * SEC);
    assert_eq!(s.stats().deaths_declared, 1);
}

#[test]
fn confirmations_shorten_suspicion() {
    let mut s = node_with_peers(9, Config::lan());
    let t0 = SEC;
    let sus = |from: u8| {
        Message::Suspect(Accusation {
            incarnation: 1,
            node: name(5),
            from: name(from),
        })
    };
    s.handle_datagram(addr(1), &dgram(sus(1)), t0)
        .expect("valid");
    assert_eq!(state_of(&s, 5), Some(State::Suspect));
    s.handle_datagram(addr(1), &dgram(sus(1)), t0)
        .expect("valid"); // originator: no confirmation
    s.handle_datagram(addr(2), &dgram(sus(2)), t0)
        .expect("valid");
    s.handle_datagram(addr(3), &dgram(sus(3)), t0)
        .expect("valid");
    // k = 2 reached: minimum timeout 4s.
    s.tick(t0 + 4 * SEC - MS);
    assert_eq!(state_of(&s, 5), Some(State::Suspect));
    s.tick(t0 + 4 * SEC);
    assert_eq!(state_of(&s, 5), Some(State::Dead));
}

#[test]
fn alive_with_higher_incarnation_clears_suspicion() {
    let mut s = node_with_peers(3, Config::lan());
    let sus = Message::Suspect(Accusation {
        incarnation: 1,
        node: name(2),
        from: name(1),
    });
    s.handle_datagram(addr(1), &dgram(sus), SEC).expect("valid");
    assert_eq!(state_of(&s, 2), Some(State::Suspect));
    s.handle_datagram(addr(2), &dgram(alive(2, 2)), SEC)
        .expect("valid");
    assert_eq!(state_of(&s, 2), Some(State::Alive));
    // The old suspicion timer (24s at most) must not fire.
    run_acking(&mut s, SEC, 60 * SEC);
    assert_eq!(state_of(&s, 2), Some(State::Alive));
    assert_eq!(s.stats().deaths_declared, 0);
}

#[test]
fn awareness_penalises_failures_without_nack_peers() {
    let cfg = udp_only();
    let mut s = node_with_peers(1, cfg.clone()); // only one peer: no indirect helpers
    let (_, _, t0, _) = first_probe(&mut s);
    s.tick(t0 + cfg.probe_interval);
    assert_eq!(s.health_score(), 1);
    // The next probe deadline is scaled by score + 1.
    let (_, _, t1, _) = first_probe(&mut s);
    s.tick(t1 + cfg.probe_interval);
    assert_eq!(s.stats().probe_failures, 1, "deadline stretched to 2s");
    s.tick(t1 + 2 * cfg.probe_interval);
    assert_eq!(s.stats().probe_failures, 2);
}

#[test]
fn pings_for_other_names_are_ignored_and_relays_work() {
    let mut s = node_with_peers(2, Config::lan());
    s.set_ack_payload(b"xyz".to_vec()).expect("fits");
    let ping = |target: &str| {
        dgram(Message::Ping(Ping {
            seq: 3,
            target: target.into(),
            source_addr: addr(1),
            source_name: name(1),
        }))
    };
    s.handle_datagram(addr(1), &ping("someone-else"), SEC)
        .expect("valid");
    assert!(sent(&s.drain_effects()).is_empty());
    s.handle_datagram(addr(1), &ping("n0"), SEC).expect("valid");
    let msgs = sent(&s.drain_effects());
    assert!(msgs.contains(&(
        addr(1),
        Message::Ack {
            seq: 3,
            payload: b"xyz".to_vec()
        }
    )));

    // Indirect probe: we ping n2 for n1, relay its ack, no nack afterwards.
    let req = |seq| {
        dgram(Message::IndirectPing(IndirectPing {
            seq,
            target_addr: addr(2),
            target_name: name(2),
            nack: true,
            source_addr: addr(1),
            source_name: name(1),
        }))
    };
    s.handle_datagram(addr(1), &req(77), SEC).expect("valid");
    let msgs = sent(&s.drain_effects());
    let Some((_, Message::Ping(p))) = msgs
        .iter()
        .find(|(to, m)| *to == addr(2) && matches!(m, Message::Ping(_)))
        .cloned()
    else {
        panic!("no relayed ping: {msgs:?}");
    };
    s.handle_datagram(
        addr(2),
        &dgram(Message::Ack {
            seq: p.seq,
            payload: vec![],
        }),
        SEC + MS,
    )
    .expect("valid");
    let msgs = sent(&s.drain_effects());
    assert!(msgs.contains(&(
        addr(1),
        Message::Ack {
            seq: 77,
            payload: vec![]
        }
    )));
    // Unanswered indirect probe: nack after probe_timeout.
    s.handle_datagram(addr(1), &req(78), 2 * SEC)
        .expect("valid");
    s.drain_effects();
    s.tick(2 * SEC + 500 * MS);
    let msgs = sent(&s.drain_effects());
    assert!(msgs.contains(&(addr(1), Message::Nack { seq: 78 })));
    assert!(
        !msgs
            .iter()
            .any(|(_, m)| matches!(m, Message::Nack { seq: 77 }))
    );
}

#[test]
fn tcp_fallback_rescues_a_probe() {
    let cfg = Config::lan();
    let mut s = node_with_peers(5, cfg.clone());
    let (target, seq, t0, _) = first_probe(&mut s);
    s.tick(t0 + cfg.probe_timeout);
    let effects = s.drain_effects();
    let Some((to, data, deadline)) = effects.iter().find_map(|e| match e {
        Effect::TcpPing {
            to,
            seq: sq,
            data,
            deadline,
        } if *sq == seq => Some((*to, data.clone(), *deadline)),
        _ => None,
    }) else {
        panic!("no TCP ping: {effects:?}");
    };
    assert_eq!((to, deadline), (addr(target), t0 + cfg.probe_interval));
    // The target's host answers the stream ping; names are checked.
    let mut peer =
        Swim::new(name(target), addr(target), vec![], Config::lan(), 9, t0).expect("valid");
    peer.set_ack_payload(b"p".to_vec()).expect("fits");
    let answer = peer
        .answer_stream_ping(&data)
        .expect("valid")
        .expect("for this node");
    let other = Swim::new(name(99), addr(99), vec![], Config::lan(), 9, t0).expect("valid");
    assert_eq!(other.answer_stream_ping(&data), Ok(None));
    assert!(other.answer_stream_ping(b"junk").is_err());
    s.tcp_ping_result(seq, Some(&answer), t0 + 600 * MS);
    s.tick(deadline);
    assert_eq!(state_of(&s, target), Some(State::Alive));
    assert_eq!(s.stats().tcp_fallback_successes, 1);
    assert_eq!(s.stats().probe_failures, 0);
}

#[test]
fn tcp_fallback_failure_or_silence_still_suspects() {
    let cfg = Config::lan();
    // Explicit failure: decided at the normal deadline.
    let mut s = node_with_peers(5, cfg.clone());
    let (target, seq, t0, _) = first_probe(&mut s);
    s.tick(t0 + cfg.probe_timeout);
    s.tcp_ping_result(seq, None, t0 + 700 * MS);
    s.tick(t0 + cfg.probe_interval);
    assert_eq!(state_of(&s, target), Some(State::Suspect));
    // Silent host: one grace period of probe_timeout, then suspect.
    let mut s = node_with_peers(5, cfg.clone());
    let (target, _, t0, _) = first_probe(&mut s);
    s.tick(t0 + cfg.probe_timeout);
    s.tick(t0 + cfg.probe_interval);
    assert_eq!(state_of(&s, target), Some(State::Alive));
    s.tick(t0 + cfg.probe_interval + cfg.probe_timeout);
    assert_eq!(state_of(&s, target), Some(State::Suspect));
}

#[test]
fn stale_accusations_get_our_current_alive_back() {
    let mut s = node_with_peers(3, Config::lan());
    let sus = |inc| {
        dgram(Message::Suspect(Accusation {
            incarnation: inc,
            node: name(0),
            from: name(1),
        }))
    };
    s.handle_datagram(addr(1), &sus(1), SEC).expect("valid"); // refuted: now at 2
    s.drain_effects();
    s.handle_datagram(addr(2), &sus(1), SEC).expect("valid"); // stale copy via n2
    let msgs = sent(&s.drain_effects());
    assert!(msgs.iter().any(|(to, m)| *to == addr(2)
        && matches!(m, Message::Alive(a) if a.node == "n0" && a.incarnation == 2)));
    assert_eq!(
        s.local().incarnation,
        2,
        "no new refutation for a stale claim"
    );
    assert_eq!(s.stats().reassertions, 1);
}

#[test]
fn suspicions_are_rechecked_with_the_suspect() {
    let mut s = node_with_peers(9, Config::lan());
    let sus = Message::Suspect(Accusation {
        incarnation: 1,
        node: name(5),
        from: name(1),
    });
    s.handle_datagram(addr(1), &dgram(sus), SEC).expect("valid");
    s.drain_effects();
    // min = 4s: re-checks every second until the 24s deadline.
    s.tick(SEC + SEC);
    let msgs = sent(&s.drain_effects());
    assert!(msgs.iter().any(|(to, m)| *to == addr(5)
        && matches!(m, Message::Suspect(a) if a.node == "n5" && a.from == "n0")));
    assert_eq!(s.stats().rechecks, 1);
    // The suspect answers with a newer alive (it had refuted): suspicion over.
    s.handle_datagram(addr(5), &dgram(alive(5, 2)), 2 * SEC)
        .expect("valid");
    assert_eq!(state_of(&s, 5), Some(State::Alive));
    s.tick(10 * SEC);
    assert_eq!(s.stats().rechecks, 1);
}

#[test]
fn newer_suspicion_replaces_a_stale_one() {
    let mut s = node_with_peers(9, Config::lan());
    let sus = |inc, from| {
        dgram(Message::Suspect(Accusation {
            incarnation: inc,
            node: name(5),
            from: name(from),
        }))
    };
    s.handle_datagram(addr(1), &sus(1, 1), SEC).expect("valid");
    // Much later, a suspicion at incarnation 2 (we missed the refutation to 2).
    s.handle_datagram(addr(2), &sus(2, 2), 20 * SEC)
        .expect("valid");
    assert_eq!(
        s.member(&name(5)).map(|m| (m.state, m.incarnation)),
        Some((State::Suspect, 2))
    );
    // memberlist would count it as a confirmation and kill n5 at once.
    s.tick(20 * SEC);
    assert_eq!(state_of(&s, 5), Some(State::Suspect));
    s.tick(44 * SEC);
    assert_eq!(
        state_of(&s, 5),
        Some(State::Dead),
        "fresh 24s timer from the new suspicion"
    );
}
