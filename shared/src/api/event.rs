//! User events (`/v1/event/fire`, `/v1/event/list`) as the API shows them and gossip
//! carries them.

use serde::{Deserialize, Serialize};

/// A user event as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct UserEvent {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    #[serde(with = "super::bytes_b64")]
    pub payload: Option<Vec<u8>>,
    pub node_filter: String,
    pub service_filter: String,
    pub tag_filter: String,
    pub version: u32,
    #[serde(rename = "LTime")]
    pub ltime: u64,
}

/// Consul derives `/v1/event/list`'s index from the newest event ID: the two halves of the
/// UUID XORed. Gossip uses the same number to recognise an event it has seen.
pub fn event_index(id: &str) -> u64 {
    uuid::Uuid::parse_str(id).map_or(0, |u| {
        let (hi, lo) = u.as_u64_pair();
        hi ^ lo
    })
}
