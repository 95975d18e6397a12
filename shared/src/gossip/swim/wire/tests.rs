//! Round trips, limits and a fuzz-like loop over the wire format.

use super::*;
use crate::gossip::swim::member::State;
use rand::{Rng, SeedableRng, rngs::SmallRng};

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test addr")
}

fn samples() -> Vec<Message> {
    vec![
        Message::Ping(Ping {
            seq: 7,
            target: "b".into(),
            source_addr: addr("10.0.0.1:8301"),
            source_name: "a".into(),
        }),
        Message::IndirectPing(IndirectPing {
            seq: 9,
            target_addr: addr("[::1]:8301"),
            target_name: "c".into(),
            nack: true,
            source_addr: addr("10.0.0.1:8301"),
            source_name: "a".into(),
        }),
        Message::Ack {
            seq: 7,
            payload: vec![1, 2, 3],
        },
        Message::Nack { seq: 9 },
        Message::Suspect(Accusation {
            incarnation: 3,
            node: "c".into(),
            from: "a".into(),
        }),
        Message::Alive(Alive {
            incarnation: 4,
            node: "c".into(),
            addr: addr("10.0.0.3:8301"),
            meta: b"role=server".to_vec(),
        }),
        Message::Dead(Accusation {
            incarnation: 4,
            node: "c".into(),
            from: "c".into(),
        }),
        Message::User(b"event".to_vec()),
    ]
}

#[test]
fn round_trip_single_and_compound() {
    let msgs = samples();
    let encoded: Vec<Vec<u8>> = msgs.iter().map(encode_message).collect();
    for (m, e) in msgs.iter().zip(&encoded) {
        assert_eq!(
            decode_datagram(&single_datagram(e)).as_ref(),
            Ok(&vec![m.clone()])
        );
    }
    assert_eq!(decode_datagram(&compound_datagram(&encoded)), Ok(msgs));
}

#[test]
fn rejects_malformed() {
    let ping = encode_message(&samples()[0]);
    assert_eq!(decode_datagram(&[]), Err(DecodeError::Empty));
    assert_eq!(
        decode_datagram(&[9, T_PING]),
        Err(DecodeError::UnsupportedVersion(9))
    );
    assert_eq!(
        decode_datagram(&[WIRE_VERSION, 200]),
        Err(DecodeError::UnknownType(200))
    );
    let mut d = single_datagram(&ping);
    d.push(0);
    assert_eq!(decode_datagram(&d), Err(DecodeError::TrailingBytes(1)));
    let d = single_datagram(&ping);
    assert_eq!(
        decode_datagram(&d[..d.len() - 1]),
        Err(DecodeError::Truncated)
    );
    let big = vec![WIRE_VERSION; MAX_DATAGRAM + 1];
    assert!(matches!(
        decode_datagram(&big),
        Err(DecodeError::Oversized { .. })
    ));
    let nested = compound_datagram(&[
        ping.clone(),
        compound_datagram(&[ping.clone(), ping.clone()])[1..].to_vec(),
    ]);
    assert_eq!(decode_datagram(&nested), Err(DecodeError::NestedCompound));
    assert_eq!(
        decode_datagram(&[WIRE_VERSION, T_COMPOUND, 0]),
        Err(DecodeError::EmptyCompound)
    );
    // Meta longer than the limit.
    let mut alive = vec![T_ALIVE, 0, 0, 0, 1, 0, 1, b'x', 4, 1, 2, 3, 4, 0, 1];
    alive.extend_from_slice(&(MAX_META_LEN as u16 + 1).to_be_bytes());
    alive.extend(std::iter::repeat_n(0, MAX_META_LEN + 1));
    assert!(matches!(
        decode_datagram(&single_datagram(&alive)),
        Err(DecodeError::TooLong { field: "meta", .. })
    ));
    // Empty names.
    let dead = encode_message(&Message::Dead(Accusation {
        incarnation: 1,
        node: String::new(),
        from: "x".into(),
    }));
    assert_eq!(
        decode_datagram(&single_datagram(&dead)),
        Err(DecodeError::EmptyName("node"))
    );
}

#[test]
fn push_pull_round_trip_and_limits() {
    let st = PushPullState {
        join: true,
        members: vec![PushNode {
            name: "n1".into(),
            addr: addr("10.0.0.1:8301"),
            meta: vec![1],
            incarnation: 5,
            state: State::Left,
        }],
    };
    assert_eq!(PushPullState::decode(&st.encode()), Ok(st.clone()));
    // Huge declared count with no bytes behind it: rejected without allocating.
    let mut b = vec![WIRE_VERSION, T_PUSH_PULL, 0];
    b.extend_from_slice(&(MAX_PUSH_NODES).to_be_bytes());
    assert_eq!(PushPullState::decode(&b), Err(DecodeError::Truncated));
    b[3..7].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        PushPullState::decode(&b),
        Err(DecodeError::TooManyNodes { .. })
    ));
    let mut enc = st.encode();
    let last = enc.len() - 1;
    enc[last] = 9;
    assert_eq!(
        PushPullState::decode(&enc),
        Err(DecodeError::InvalidState(9))
    );
}

/// Fuzz-like loop: random and mutated inputs never panic.
#[test]
fn garbage_never_panics() {
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    let valid: Vec<Vec<u8>> = samples().iter().map(encode_message).collect();
    let compound = compound_datagram(&valid);
    let state = PushPullState {
        join: false,
        members: vec![PushNode {
            name: "a".into(),
            addr: addr("10.0.0.1:1"),
            meta: vec![],
            incarnation: 1,
            state: State::Alive,
        }],
    }
    .encode();
    let mut accepted = 0;
    for i in 0..50_000 {
        let buf: Vec<u8> = match i % 3 {
            0 => {
                let len = rng.random_range(0..64);
                let mut b: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                if !b.is_empty() && rng.random_bool(0.7) {
                    b[0] = WIRE_VERSION;
                }
                b
            }
            1 => {
                let mut b = compound.clone();
                for _ in 0..rng.random_range(1..4) {
                    let idx = rng.random_range(0..b.len());
                    b[idx] = rng.random();
                }
                b.truncate(rng.random_range(0..=b.len()));
                b
            }
            _ => {
                let mut b = state.clone();
                let idx = rng.random_range(0..b.len());
                b[idx] = rng.random();
                b
            }
        };
        if decode_datagram(&buf).is_ok() {
            accepted += 1;
        }
        let _ = PushPullState::decode(&buf);
    }
    // Most garbage must be rejected.
    assert!(accepted < 50_000 / 2, "accepted {accepted}");
}
