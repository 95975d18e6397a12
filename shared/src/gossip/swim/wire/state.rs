//! Push/pull state: the full membership table exchanged over a stream.
//!
//! `version PUSH_PULL join:u8 count:u32 (name addr meta incarnation:u32 state:u8){count}`.
//! The declared count is checked against [`MAX_PUSH_NODES`] and against the
//! bytes actually present before anything is allocated.

use std::net::SocketAddr;

use super::{
    DecodeError, MAX_META_LEN, MAX_PUSH_NODES, MAX_STATE_BYTES, Reader, T_PUSH_PULL, WIRE_VERSION,
    put_addr, put_bytes, put_u32,
};
use crate::gossip::swim::member::State;

/// One member entry of a push/pull exchange.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushNode {
    /// Node name.
    pub name: String,
    /// Node address.
    pub addr: SocketAddr,
    /// Node metadata.
    pub meta: Vec<u8>,
    /// Incarnation.
    pub incarnation: u32,
    /// State as seen by the sender.
    pub state: State,
}

/// Full membership state exchanged over TCP (anti-entropy and joins).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PushPullState {
    /// True when sent as part of a join (informational for the host).
    pub join: bool,
    /// Every member the sender still tracks.
    pub members: Vec<PushNode>,
}

/// Smallest encoded member entry: empty name, v4 addr, empty meta.
const MIN_PUSH_NODE: usize = 2 + 7 + 2 + 4 + 1;

impl PushPullState {
    /// Encodes the state.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.members.len() * 48);
        out.push(WIRE_VERSION);
        out.push(T_PUSH_PULL);
        out.push(u8::from(self.join));
        put_u32(
            &mut out,
            u32::try_from(self.members.len()).unwrap_or(u32::MAX),
        );
        for m in &self.members {
            put_bytes(&mut out, m.name.as_bytes());
            put_addr(&mut out, &m.addr);
            put_bytes(&mut out, &m.meta);
            put_u32(&mut out, m.incarnation);
            out.push(m.state.code());
        }
        out
    }

    /// Decodes and validates a state blob.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.is_empty() {
            return Err(DecodeError::Empty);
        }
        if bytes.len() > MAX_STATE_BYTES {
            return Err(DecodeError::Oversized {
                len: bytes.len(),
                max: MAX_STATE_BYTES,
            });
        }
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != WIRE_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let ty = r.u8()?;
        if ty != T_PUSH_PULL {
            return Err(DecodeError::UnknownType(ty));
        }
        let join = r.bool()?;
        let count = r.u32()?;
        if count > MAX_PUSH_NODES {
            return Err(DecodeError::TooManyNodes {
                count,
                max: MAX_PUSH_NODES,
            });
        }
        let count = count as usize;
        if r.buf.len() / MIN_PUSH_NODE < count {
            return Err(DecodeError::Truncated);
        }
        let mut members = Vec::with_capacity(count);
        for _ in 0..count {
            let name = r.name("name")?;
            let addr = r.addr()?;
            let meta = r.bytes("meta", MAX_META_LEN)?.to_vec();
            let incarnation = r.u32()?;
            let code = r.u8()?;
            let state = State::from_code(code).ok_or(DecodeError::InvalidState(code))?;
            members.push(PushNode {
                name,
                addr,
                meta,
                incarnation,
                state,
            });
        }
        r.finish()?;
        Ok(Self { join, members })
    }
}
