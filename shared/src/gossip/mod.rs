//! Gossip membership both binaries use: the LAN pool every agent (and each WAN router) is a
//! member of, and the WAN pool of routers.
//!
//! - [`swim`]: the sans-I/O SWIM + Lifeguard state machine and its simulator: bytes and a
//!   clock in, effects out. It needs no runtime.
//! - [`keyring`]: AES-GCM sealing of packets and the keyring file (pure).
//! - [`tuning`]: the `gossip_lan`/`gossip_wan` config blocks.
//! - With the `net` feature, [`Gossip::start`] runs one task that owns the state machine and
//!   drives it over a [`GossipTransport`]: datagrams in and out (sealed with the keyring),
//!   streams for push/pull state sync and fallback pings, timers, and the host side of
//!   what SWIM leaves to its host (Serf's part): tags, leave intents (`force-leave`),
//!   reaping failed members after `reconnect_timeout` and left ones after
//!   `tombstone_timeout`, user events (re-gossiped; kept or not by an [`EventSink`]),
//!   queries that change the keyring on every member, and Vivaldi coordinates fed by
//!   probe RTTs. Callers see a [`Gossip`] handle: the member list (a `watch`), commands,
//!   and this node's coordinate.

pub mod keyring;
pub mod swim;
pub mod tuning;

#[cfg(feature = "net")]
mod driver;
#[cfg(feature = "net")]
mod envelope;
#[cfg(feature = "net")]
pub mod transport;

pub use keyring::Keyring;
pub use tuning::{GossipTuning, GossipTuningFile};
#[cfg(feature = "net")]
mod handle;

#[cfg(feature = "net")]
pub use driver::Snapshot;
#[cfg(feature = "net")]
pub use handle::*;
#[cfg(feature = "net")]
pub(crate) use handle::{Cmd, decode_tags, encode_tags};
#[cfg(feature = "net")]
pub use transport::{Fabric, GossipTransport, NetTransport};
