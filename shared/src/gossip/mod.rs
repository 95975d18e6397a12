//! Gossip membership both binaries use: the LAN pool every agent (and each WAN router) is a
//! member of, and the WAN pool of routers.
//!
//! [`swim`] is the sans-I/O SWIM + Lifeguard state machine and its simulator: bytes and a
//! clock in, effects out. It needs no runtime.

pub mod swim;
