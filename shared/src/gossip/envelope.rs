//! What rides SWIM's opaque user messages: events, leave intents and keyring queries.
//!
//! Encoded as MessagePack with a version byte; anything that does not decode is dropped and
//! counted by the caller.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::KeyOp;
use crate::api::UserEvent;

const VERSION: u8 = 1;

/// A `force-leave`, for the member as it was at `incarnation` (a later rejoin voids it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct LeaveIntent {
    pub node: String,
    pub incarnation: u32,
    pub prune: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) enum Envelope {
    /// A user event (gossiped).
    Event(UserEvent),
    /// `force-leave`: the named failed member is to be treated as left (or forgotten).
    LeaveIntent(LeaveIntent),
    /// A keyring operation every member runs and answers directly.
    Query {
        id: u64,
        reply_to: SocketAddr,
        op: KeyOp,
    },
    /// One member's answer to a query.
    QueryReply {
        id: u64,
        node: String,
        keys: Vec<String>,
        primary: Option<String>,
        error: Option<String>,
    },
}

impl Envelope {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        if rmp_serde::encode::write(&mut out, self).is_err() {
            out.clear();
        }
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
        match bytes.split_first() {
            Some((&VERSION, rest)) => rmp_serde::from_slice(rest).ok(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let e = Envelope::LeaveIntent(LeaveIntent {
            node: "n1".into(),
            incarnation: 3,
            prune: true,
        });
        assert_eq!(Envelope::decode(&e.encode()), Some(e));
        assert_eq!(Envelope::decode(b"\x01\xff\xff"), None);
        assert_eq!(Envelope::decode(b""), None);
        assert_eq!(Envelope::decode(b"\x09abc"), None);
    }
}
