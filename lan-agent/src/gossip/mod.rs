//! LAN gossip: membership, failure detection, user events and encryption.

pub mod keyring;
pub mod swim;
