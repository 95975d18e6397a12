//! The server RPC port's wire protocol (`:8300`), which client agents, servers and WAN
//! routers all speak.
//!
//! A connection opens with one byte naming its protocol ([`PROTO_RPC`], or [`PROTO_TLS`]
//! and a TLS session that opens with [`PROTO_RPC`]), then carries
//! length-prefixed frames (4-byte big-endian length, MessagePack body, at most
//! [`MAX_FRAME`] bytes). Each [`Request`] has an ID and its [`Response`] comes back tagged
//! with it, so one connection carries many concurrent requests (a blocking query does not
//! hold up the others). Raft messages are opaque bytes here: their types belong to the
//! agent's consensus engine, which encodes and decodes them itself.

use serde::{Deserialize, Serialize};

use super::{ReadRequest, ReadResponse, RpcError, WriteRequest, WriteResult};
use crate::api::{CoordinateEntry, UserEvent};

/// First byte of a connection carrying RPCs.
pub const PROTO_RPC: u8 = 0x01;
/// First byte of a connection that runs a TLS handshake and then opens with [`PROTO_RPC`]
/// inside it (Consul's `RPCTLS` byte).
pub const PROTO_TLS: u8 = 0x03;
/// Largest frame either side accepts: a 512 KiB value plus headroom; blocking answers of
/// big catalogs fit too.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Metric: frames or connections refused as malformed.
pub const METRIC_BAD_FRAMES: &str = "cairn_rpc_bad_frames_total";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Body {
    Read(ReadRequest),
    Write(WriteRequest),
    /// A read a server forwards to the leader; the leader does not forward it again.
    LeaderRead(ReadRequest),
    /// A write a server forwards to the leader.
    LeaderWrite(WriteRequest),
    /// A Raft message between servers, encoded by the consensus engine.
    Raft(#[serde(with = "serde_bytes")] Vec<u8>),
    /// To a WAN router: a request for another datacenter (named in the request).
    Forward(Forwarded),
    /// To a WAN router: the WAN pool and the datacenters by distance.
    WanStatus,
    /// To a server: fire a user event into the LAN pool of `datacenter` (its own, or
    /// another through a WAN router): `/v1/event/fire?dc=`.
    FireEvent {
        datacenter: String,
        event: UserEvent,
    },
}

/// A request that crosses datacenters: what a server hands its WAN router, and what the
/// router delivers to a server of the target datacenter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Forwarded {
    Read(ReadRequest),
    Write(WriteRequest),
    FireEvent {
        datacenter: String,
        event: UserEvent,
    },
}

impl Forwarded {
    /// The datacenter the request is for.
    pub fn datacenter(&self) -> &str {
        match self {
            Self::Read(r) => &r.options.datacenter,
            Self::Write(w) => &w.datacenter,
            Self::FireEvent { datacenter, .. } => datacenter,
        }
    }

    /// Reads may be sent again after a failure that left their fate unknown; writes may
    /// not (they could be carried out twice).
    pub fn is_read(&self) -> bool {
        matches!(self, Self::Read(_))
    }

    /// The request as a server of the target datacenter answers it.
    pub fn into_body(self) -> Body {
        match self {
            Self::Read(r) => Body::Read(r),
            Self::Write(w) => Body::Write(w),
            Self::FireEvent { datacenter, event } => Body::FireEvent { datacenter, event },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reply {
    Read(ReadResponse),
    Write(WriteResult),
    Raft(#[serde(with = "serde_bytes")] Vec<u8>),
    WanStatus(WanStatus),
}

/// A member of the WAN pool as `/v1/agent/members?wan=1` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WanMember {
    /// `NODE.DC`.
    pub name: String,
    pub addr: std::net::SocketAddr,
    pub tags: std::collections::BTreeMap<String, String>,
    /// Serf's status code: 1 alive, 2 leaving, 3 left, 4 failed.
    pub status: u8,
}

/// One datacenter's servers and their WAN coordinates (`/v1/coordinate/datacenters`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatacenterMap {
    pub datacenter: String,
    /// Median estimated round trip from the asking router's server, in seconds
    /// (`f64::INFINITY` when nothing is known; 0 for its own datacenter).
    pub rtt_secs: f64,
    /// Server node names (without the datacenter) and their WAN coordinates.
    pub coordinates: Vec<CoordinateEntry>,
}

/// What a WAN router knows: the pool, and every datacenter nearest first.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct WanStatus {
    /// The router's own member name (`NODE.DC`).
    pub name: String,
    pub members: Vec<WanMember>,
    pub datacenters: Vec<DatacenterMap>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub body: Body,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    pub result: Result<Reply, RpcError>,
}

/// Encodes a frame's body.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, RpcError> {
    rmp_serde::to_vec_named(v)
        .map_err(|e| RpcError::internal(format!("encoding an RPC frame: {e}")))
}

pub fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, RpcError> {
    rmp_serde::from_slice(b).map_err(|e| RpcError::internal(format!("decoding an RPC frame: {e}")))
}

/// The frame codec every side uses.
#[cfg(feature = "net")]
pub fn codec() -> tokio_util::codec::LengthDelimitedCodec {
    tokio_util::codec::LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// Writes `first` and every frame already queued behind it, then flushes once: under load
/// one system call carries many frames instead of one each.
#[cfg(feature = "net")]
pub async fn write_batch<S>(
    sink: &mut S,
    queue: &mut tokio::sync::mpsc::Receiver<bytes::Bytes>,
    first: bytes::Bytes,
) -> Result<(), S::Error>
where
    S: futures_util::Sink<bytes::Bytes> + Unpin,
{
    use futures_util::SinkExt;
    sink.feed(first).await?;
    // A bounded batch, so one busy connection cannot starve the flush.
    for _ in 0..64 {
        match queue.try_recv() {
            Ok(more) => sink.feed(more).await?,
            Err(_) => break,
        }
    }
    sink.flush().await
}

#[cfg(test)]
mod tests {
    use super::super::{Query, QueryOptions};
    use super::*;

    #[test]
    fn frames_round_trip() {
        let r = Request {
            id: 7,
            body: Body::Forward(Forwarded::Read(ReadRequest {
                query: Query::KvGet { key: "a".into() },
                options: QueryOptions {
                    datacenter: "dc2".into(),
                    ..QueryOptions::default()
                },
            })),
        };
        let bytes = encode(&r).unwrap();
        let back: Request = decode(&bytes).unwrap();
        assert_eq!(encode(&back).unwrap(), bytes);
        let Body::Forward(f) = back.body else {
            panic!("not a forward")
        };
        assert_eq!(f.datacenter(), "dc2");
        assert!(f.is_read());
        assert!(decode::<Request>(b"\xff\x00garbage").is_err());
    }

    #[test]
    fn raft_bodies_stay_opaque_bytes() {
        let r = Request {
            id: 1,
            body: Body::Raft(vec![0, 1, 2, 255]),
        };
        let back: Request = decode(&encode(&r).unwrap()).unwrap();
        assert!(matches!(back.body, Body::Raft(b) if b == [0, 1, 2, 255]));
    }
}
