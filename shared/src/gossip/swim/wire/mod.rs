//! Compact, versioned binary encoding of gossip datagrams and push/pull state.
//!
//! Every datagram starts with a version byte ([`WIRE_VERSION`]) followed by
//! one message (`type byte + body`) or a compound message:
//!
//! ```text
//! datagram  = version:u8 message
//! message   = type:u8 body            (type != COMPOUND)
//!           | COMPOUND count:u8 len:u16{count} message{count}   (no nesting)
//! string    = len:u16 utf8-bytes      (bounded per field)
//! bytes     = len:u16 raw-bytes       (bounded per field)
//! addr      = 4 ip:[u8;4] port:u16 | 6 ip:[u8;16] port:u16
//! ```
//!
//! All integers are big-endian. Decoding is strict: unknown versions or
//! types, truncation, trailing bytes, over-long fields, invalid UTF-8 and
//! nested compounds are all rejected with a [`DecodeError`]. Nothing is
//! allocated before the bytes backing it have been seen, so hostile input can
//! never make us allocate more than a small multiple of its own size.
//!
//! Push/pull state (sent over TCP by the host) uses the same primitives:
//! `version PUSH_PULL join:u8 count:u32 (name addr meta incarnation:u32 state:u8){count}`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

/// Version byte leading every datagram and state blob.
pub const WIRE_VERSION: u8 = 1;
/// Largest datagram we accept or build (max IPv4 UDP payload).
pub const MAX_DATAGRAM: usize = 65_507;
/// Smallest `udp_buffer_size` accepted by [`crate::gossip::swim::Config::validate`].
pub const MIN_UDP_BUFFER: usize = 576;
/// Longest node name accepted.
pub const MAX_NAME_LEN: usize = 512;
/// Largest node metadata accepted (memberlist's `MetaMaxSize`).
pub const MAX_META_LEN: usize = 512;
/// Most member entries accepted in one push/pull state.
pub const MAX_PUSH_NODES: u32 = 1 << 20;
/// Largest push/pull state blob accepted.
pub const MAX_STATE_BYTES: usize = 20 * 1024 * 1024;
/// Fixed bytes of a compound datagram: version, type and count.
pub const COMPOUND_HEADER: usize = 3;
/// Per-message overhead inside a compound (the u16 length).
pub const COMPOUND_ENTRY_OVERHEAD: usize = 2;
/// Most messages in one compound.
pub const MAX_COMPOUND_PARTS: usize = 255;

pub(crate) const T_PING: u8 = 0;
pub(crate) const T_INDIRECT_PING: u8 = 1;
pub(crate) const T_ACK: u8 = 2;
pub(crate) const T_SUSPECT: u8 = 3;
pub(crate) const T_ALIVE: u8 = 4;
pub(crate) const T_DEAD: u8 = 5;
pub(crate) const T_PUSH_PULL: u8 = 6;
pub(crate) const T_COMPOUND: u8 = 7;
pub(crate) const T_USER: u8 = 8;
pub(crate) const T_NACK: u8 = 11;

/// Why an input was rejected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Zero-length input.
    #[error("empty input")]
    Empty,
    /// Input larger than allowed.
    #[error("input of {len} bytes exceeds the {max} byte limit")]
    Oversized {
        /// Input length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Version byte we do not speak.
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u8),
    /// Message type byte we do not know.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// Input ended in the middle of a field.
    #[error("truncated input")]
    Truncated,
    /// Bytes left over after a complete message.
    #[error("{0} trailing bytes after message")]
    TrailingBytes(usize),
    /// A length-prefixed field is longer than its limit.
    #[error("field `{field}` is {len} bytes, limit {max}")]
    TooLong {
        /// Field name.
        field: &'static str,
        /// Declared length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A string field is not UTF-8.
    #[error("field `{0}` is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// Unknown address family tag.
    #[error("invalid address tag {0}")]
    InvalidAddrTag(u8),
    /// Boolean byte other than 0 or 1.
    #[error("invalid boolean byte {0}")]
    InvalidBool(u8),
    /// Unknown member state code.
    #[error("invalid member state {0}")]
    InvalidState(u8),
    /// A node name field that must be set is empty.
    #[error("empty node name in `{0}`")]
    EmptyName(&'static str),
    /// A compound message inside a compound message.
    #[error("nested compound message")]
    NestedCompound,
    /// A compound message with no parts.
    #[error("compound message with no parts")]
    EmptyCompound,
    /// Push/pull state claims too many members.
    #[error("push/pull state has {count} members, limit {max}")]
    TooManyNodes {
        /// Declared count.
        count: u32,
        /// Limit.
        max: u32,
    },
}

/// Direct probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ping {
    /// Sequence number echoed in the ack.
    pub seq: u32,
    /// Intended target's name ("" = anyone); a node ignores pings for other names.
    pub target: String,
    /// Where to send the ack.
    pub source_addr: SocketAddr,
    /// Sender's name.
    pub source_name: String,
}

/// Request to probe `target` on the sender's behalf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndirectPing {
    /// Requester's sequence number.
    pub seq: u32,
    /// Address to probe.
    pub target_addr: SocketAddr,
    /// Name to probe.
    pub target_name: String,
    /// Whether the requester wants a nack if the target stays silent.
    pub nack: bool,
    /// Where to relay the ack / nack.
    pub source_addr: SocketAddr,
    /// Requester's name.
    pub source_name: String,
}

/// Gossip claim that a node is alive (also used for joins and metadata updates).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alive {
    /// Incarnation of the claim.
    pub incarnation: u32,
    /// Node name.
    pub node: String,
    /// Node address.
    pub addr: SocketAddr,
    /// Node metadata.
    pub meta: Vec<u8>,
}

/// Gossip claim that a node is suspect (`from` = who suspects) or dead
/// (`from == node` means it left voluntarily).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accusation {
    /// Incarnation being accused.
    pub incarnation: u32,
    /// Accused node.
    pub node: String,
    /// Accuser.
    pub from: String,
}

/// One protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Direct probe.
    Ping(Ping),
    /// Indirect probe request.
    IndirectPing(IndirectPing),
    /// Probe answer with the responder's ack payload.
    Ack {
        /// Echoed sequence number.
        seq: u32,
        /// Opaque payload (Vivaldi coordinate in Consul).
        payload: Vec<u8>,
    },
    /// Indirect-probe relay reporting that the target did not answer.
    Nack {
        /// Requester's sequence number.
        seq: u32,
    },
    /// Suspicion.
    Suspect(Accusation),
    /// Liveness claim.
    Alive(Alive),
    /// Death or leave.
    Dead(Accusation),
    /// Opaque host message (user event, query, query response).
    User(Vec<u8>),
}

// ---------------------------------------------------------------- encoding

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Writes a u16-prefixed field; callers guarantee `b.len() <= u16::MAX`
/// (names and metadata are validated on entry, payloads are bounded by the API).
fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
    put_u16(out, len);
    out.extend_from_slice(&b[..usize::from(len)]);
}

fn put_addr(out: &mut Vec<u8>, a: &SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    put_u16(out, a.port());
}

fn put_accusation(out: &mut Vec<u8>, a: &Accusation) {
    put_u32(out, a.incarnation);
    put_bytes(out, a.node.as_bytes());
    put_bytes(out, a.from.as_bytes());
}

/// Encodes one message as `type + body` (no version byte).
pub fn encode_message(msg: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    match msg {
        Message::Ping(p) => {
            out.push(T_PING);
            put_u32(&mut out, p.seq);
            put_bytes(&mut out, p.target.as_bytes());
            put_addr(&mut out, &p.source_addr);
            put_bytes(&mut out, p.source_name.as_bytes());
        }
        Message::IndirectPing(p) => {
            out.push(T_INDIRECT_PING);
            put_u32(&mut out, p.seq);
            put_addr(&mut out, &p.target_addr);
            put_bytes(&mut out, p.target_name.as_bytes());
            out.push(u8::from(p.nack));
            put_addr(&mut out, &p.source_addr);
            put_bytes(&mut out, p.source_name.as_bytes());
        }
        Message::Ack { seq, payload } => {
            out.push(T_ACK);
            put_u32(&mut out, *seq);
            put_bytes(&mut out, payload);
        }
        Message::Nack { seq } => {
            out.push(T_NACK);
            put_u32(&mut out, *seq);
        }
        Message::Suspect(a) => {
            out.push(T_SUSPECT);
            put_accusation(&mut out, a);
        }
        Message::Alive(a) => {
            out.push(T_ALIVE);
            put_u32(&mut out, a.incarnation);
            put_bytes(&mut out, a.node.as_bytes());
            put_addr(&mut out, &a.addr);
            put_bytes(&mut out, &a.meta);
        }
        Message::Dead(a) => {
            out.push(T_DEAD);
            put_accusation(&mut out, a);
        }
        Message::User(payload) => {
            out.push(T_USER);
            put_bytes(&mut out, payload);
        }
    }
    out
}

/// Frames one encoded message as a datagram.
pub fn single_datagram(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + msg.len());
    out.push(WIRE_VERSION);
    out.extend_from_slice(msg);
    out
}

/// Packs 1..=255 encoded messages into one compound datagram. A single
/// message is framed without the compound header. Callers keep the part
/// count within [`MAX_COMPOUND_PARTS`] and each part under 64 KiB.
pub fn compound_datagram(msgs: &[Vec<u8>]) -> Vec<u8> {
    if let [only] = msgs {
        return single_datagram(only);
    }
    let body: usize = msgs.iter().map(|m| m.len() + COMPOUND_ENTRY_OVERHEAD).sum();
    let mut out = Vec::with_capacity(COMPOUND_HEADER + body);
    out.push(WIRE_VERSION);
    out.push(T_COMPOUND);
    out.push(u8::try_from(msgs.len()).unwrap_or(u8::MAX));
    for m in msgs.iter().take(MAX_COMPOUND_PARTS) {
        put_u16(&mut out, u16::try_from(m.len()).unwrap_or(u16::MAX));
    }
    for m in msgs.iter().take(MAX_COMPOUND_PARTS) {
        out.extend_from_slice(m);
    }
    out
}

// ---------------------------------------------------------------- decoding

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(DecodeError::InvalidBool(b)),
        }
    }

    fn bytes(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        self.take(len)
    }

    fn string(&mut self, field: &'static str, max: usize) -> Result<String, DecodeError> {
        let b = self.bytes(field, max)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8(field))
    }

    fn name(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let s = self.string(field, MAX_NAME_LEN)?;
        if s.is_empty() {
            return Err(DecodeError::EmptyName(field));
        }
        Ok(s)
    }

    fn addr(&mut self) -> Result<SocketAddr, DecodeError> {
        let ip = match self.u8()? {
            4 => {
                let b = self.take(4)?;
                IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
            }
            6 => {
                let b = self.take(16)?;
                let mut o = [0u8; 16];
                o.copy_from_slice(b);
                IpAddr::V6(Ipv6Addr::from(o))
            }
            t => return Err(DecodeError::InvalidAddrTag(t)),
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }

    fn accusation(&mut self) -> Result<Accusation, DecodeError> {
        Ok(Accusation {
            incarnation: self.u32()?,
            node: self.name("node")?,
            from: self.name("from")?,
        })
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len()))
        }
    }
}

/// Decodes one `type + body` message, rejecting compounds.
pub fn decode_message(buf: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader::new(buf);
    let ty = r.u8()?;
    let msg = match ty {
        T_PING => Message::Ping(Ping {
            seq: r.u32()?,
            target: r.string("target", MAX_NAME_LEN)?,
            source_addr: r.addr()?,
            source_name: r.name("source_name")?,
        }),
        T_INDIRECT_PING => Message::IndirectPing(IndirectPing {
            seq: r.u32()?,
            target_addr: r.addr()?,
            target_name: r.name("target_name")?,
            nack: r.bool()?,
            source_addr: r.addr()?,
            source_name: r.name("source_name")?,
        }),
        T_ACK => Message::Ack {
            seq: r.u32()?,
            payload: r.bytes("payload", MAX_DATAGRAM)?.to_vec(),
        },
        T_NACK => Message::Nack { seq: r.u32()? },
        T_SUSPECT => Message::Suspect(r.accusation()?),
        T_DEAD => Message::Dead(r.accusation()?),
        T_ALIVE => Message::Alive(Alive {
            incarnation: r.u32()?,
            node: r.name("node")?,
            addr: r.addr()?,
            meta: r.bytes("meta", MAX_META_LEN)?.to_vec(),
        }),
        T_USER => Message::User(r.bytes("payload", MAX_DATAGRAM)?.to_vec()),
        T_COMPOUND => return Err(DecodeError::NestedCompound),
        t => return Err(DecodeError::UnknownType(t)),
    };
    r.finish()?;
    Ok(msg)
}

/// Decodes a whole datagram into its messages. All-or-nothing: one bad part
/// rejects the datagram.
pub fn decode_datagram(data: &[u8]) -> Result<Vec<Message>, DecodeError> {
    if data.is_empty() {
        return Err(DecodeError::Empty);
    }
    if data.len() > MAX_DATAGRAM {
        return Err(DecodeError::Oversized {
            len: data.len(),
            max: MAX_DATAGRAM,
        });
    }
    let mut r = Reader::new(data);
    let version = r.u8()?;
    if version != WIRE_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let rest = r.buf;
    if rest.first() != Some(&T_COMPOUND) {
        return Ok(vec![decode_message(rest)?]);
    }
    r.u8()?;
    let count = usize::from(r.u8()?);
    if count == 0 {
        return Err(DecodeError::EmptyCompound);
    }
    let mut lens = Vec::with_capacity(count);
    for _ in 0..count {
        lens.push(usize::from(r.u16()?));
    }
    let mut msgs = Vec::with_capacity(count);
    for len in lens {
        msgs.push(decode_message(r.take(len)?)?);
    }
    r.finish()?;
    Ok(msgs)
}

mod state;

pub use state::{PushNode, PushPullState};

#[cfg(test)]
mod tests;
