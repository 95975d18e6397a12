//! How routers reach each other: QUIC ([`quic`]) with mutual TLS ([`tls`]).

pub mod quic;
pub mod tls;

pub use quic::{ForwardStream, Peer, Quic, STREAM_FORWARD};
