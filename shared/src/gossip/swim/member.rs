//! Member records as seen by one node.
//!
//! A [`Member`] is this node's current belief about one cluster member. The
//! `(incarnation, state)` pair follows SWIM's precedence rules: a higher
//! incarnation always wins; at equal incarnation `Dead`/`Left` beat `Suspect`,
//! which beats `Alive`. Only the member itself ever raises its incarnation
//! (to refute a suspicion or to publish new metadata).

use std::net::SocketAddr;
use std::time::Duration;

/// Liveness state of a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// Responding to probes (or recently refuted a suspicion).
    Alive,
    /// Missed a probe; will be declared dead unless it refutes in time.
    Suspect,
    /// Declared failed after its suspicion timed out.
    Dead,
    /// Announced its own departure.
    Left,
}

impl State {
    /// Wire code of the state.
    pub fn code(self) -> u8 {
        match self {
            State::Alive => 0,
            State::Suspect => 1,
            State::Dead => 2,
            State::Left => 3,
        }
    }

    /// Inverse of [`State::code`].
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => State::Alive,
            1 => State::Suspect,
            2 => State::Dead,
            3 => State::Left,
            _ => return None,
        })
    }

    /// Dead or Left: not probed, not counted as live.
    pub fn is_dead_or_left(self) -> bool {
        matches!(self, State::Dead | State::Left)
    }
}

/// One member as known locally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Unique node name.
    pub name: String,
    /// Gossip (UDP and TCP) address.
    pub addr: SocketAddr,
    /// Opaque host metadata (Serf tags), at most [`crate::gossip::swim::wire::MAX_META_LEN`] bytes.
    pub meta: Vec<u8>,
    /// Incarnation number; only the member itself increases it.
    pub incarnation: u32,
    /// Current liveness state.
    pub state: State,
    /// Host time of the last state change (as passed to the state machine).
    pub state_change: Duration,
}
