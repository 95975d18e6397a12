//! Operator shapes: the Raft configuration and autopilot health, as Consul's
//! `/v1/operator/raft/configuration` and `/v1/operator/autopilot/health` return them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RaftConfiguration {
    pub servers: Vec<RaftServer>,
    /// The log index of the configuration.
    pub index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RaftServer {
    #[serde(rename = "ID")]
    pub id: String,
    pub node: String,
    pub address: String,
    pub leader: bool,
    pub protocol_version: String,
    pub voter: bool,
    pub last_index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AutopilotHealth {
    pub healthy: bool,
    pub failure_tolerance: u64,
    pub servers: Vec<AutopilotServer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AutopilotServer {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub address: String,
    pub serf_status: String,
    pub version: String,
    pub leader: bool,
    /// Go duration text, as Consul prints it (`"0s"`, `"12.5ms"`).
    pub last_contact: String,
    pub last_term: u64,
    pub last_index: u64,
    pub healthy: bool,
    pub voter: bool,
    pub stable_since: String,
}

/// Autopilot's settings (`/v1/operator/autopilot/configuration`), kept in the Raft log so
/// every server's autopilot follows the same ones. Durations are Go duration strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AutopilotConfig {
    /// Remove failed servers once a healthy server is waiting to take a place.
    pub cleanup_dead_servers: bool,
    /// A server not heard from for longer is unhealthy.
    pub last_contact_threshold: String,
    /// A server further behind the leader than this is unhealthy (and not promoted).
    pub max_trailing_logs: u64,
    /// Never remove dead servers below this many voters.
    pub min_quorum: u64,
    /// How long a new server must be healthy before it becomes a voter.
    pub server_stabilization_time: String,
    pub redundancy_zone_tag: String,
    pub disable_upgrade_migration: bool,
    pub upgrade_version_tag: String,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Default for AutopilotConfig {
    /// Consul's defaults.
    fn default() -> Self {
        Self {
            cleanup_dead_servers: true,
            last_contact_threshold: "200ms".into(),
            max_trailing_logs: 250,
            min_quorum: 0,
            server_stabilization_time: "10s".into(),
            redundancy_zone_tag: String::new(),
            disable_upgrade_migration: false,
            upgrade_version_tag: String::new(),
            create_index: 0,
            modify_index: 0,
        }
    }
}
