//! The server RPC port (`:8300`): client agents (and, later, other servers and WAN routers)
//! send [`ReadRequest`]s and [`WriteRequest`]s to a server over TCP.
//!
//! Wire format: a connection opens with one byte naming its protocol ([`PROTO_RPC`]; Raft
//! will get its own), then carries length-prefixed frames (4-byte big-endian length,
//! MessagePack body, at most [`MAX_FRAME`] bytes). Each request has an ID and the answers come
//! back tagged with it, so one connection carries many concurrent requests (a blocking query
//! does not hold up the others). Anything malformed closes the connection and is counted;
//! it never takes the server down.
//!
//! [`ReadRequest`]: cairn_shared::rpc::ReadRequest
//! [`WriteRequest`]: cairn_shared::rpc::WriteRequest

pub mod client;
pub mod server;

use cairn_shared::rpc::{ReadRequest, ReadResponse, RpcError, WriteRequest, WriteResult};
use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

use crate::raft::{RaftEnvelope, RaftReply};

/// First byte of a connection carrying client RPCs.
pub const PROTO_RPC: u8 = 0x01;
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
    /// A Raft message between servers.
    Raft(Box<RaftEnvelope>),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Read(ReadResponse),
    Write(WriteResult),
    Raft(Box<RaftReply>),
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

/// The frame codec both sides use.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

pub fn encode<T: Serialize>(v: &T) -> Result<bytes::Bytes, RpcError> {
    rmp_serde::to_vec_named(v)
        .map(bytes::Bytes::from)
        .map_err(|e| RpcError::internal(format!("encoding an RPC frame: {e}")))
}

pub fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, RpcError> {
    rmp_serde::from_slice(b).map_err(|e| RpcError::internal(format!("decoding an RPC frame: {e}")))
}

#[cfg(test)]
mod tests {
    use cairn_shared::rpc::{Query, QueryOptions};

    use super::*;

    #[test]
    fn frames_round_trip() {
        let r = Request {
            id: 7,
            body: Body::Read(ReadRequest {
                query: Query::KvGet { key: "a".into() },
                options: QueryOptions::default(),
            }),
        };
        let bytes = encode(&r).unwrap();
        let back: Request = decode(&bytes).unwrap();
        assert_eq!(encode(&back).unwrap(), bytes);
        assert!(decode::<Request>(b"\xff\x00garbage").is_err());
    }
}
