//! Catalog shapes: nodes, services and health checks, as the catalog, health and agent
//! endpoints show them, and the registration requests that change them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A node in the catalog (`/v1/catalog/nodes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct Node {
    #[serde(rename = "ID")]
    pub id: String,
    pub node: String,
    pub address: String,
    pub datacenter: String,
    #[serde(deserialize_with = "null_as_default")]
    pub tagged_addresses: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// Check states, in Consul's spelling. An empty status reads as `critical`, Consul's default
/// for a check registered without one.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, PartialOrd, Ord, Hash,
)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum CheckStatus {
    Passing,
    Warning,
    #[default]
    Critical,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passing => "passing",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

impl TryFrom<String> for CheckStatus {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "passing" => Ok(Self::Passing),
            "warning" => Ok(Self::Warning),
            "critical" | "" => Ok(Self::Critical),
            other => Err(format!("Invalid check status: \"{other}\"")),
        }
    }
}

impl std::str::FromStr for CheckStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::try_from(s.to_string())
    }
}

/// A health check in the catalog, Consul's `HealthCheck`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct HealthCheck {
    pub node: String,
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub name: String,
    pub status: CheckStatus,
    pub notes: String,
    pub output: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    pub service_name: String,
    #[serde(deserialize_with = "null_as_default")]
    pub service_tags: Vec<String>,
    #[serde(rename = "Type")]
    pub check_type: String,
    pub interval: String,
    pub timeout: String,
    pub exposed_port: u16,
    #[serde(deserialize_with = "null_as_default")]
    pub definition: serde_json::Map<String, serde_json::Value>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// The built-in node check every agent has.
pub const SERF_CHECK_ID: &str = "serfHealth";
/// Its display name.
pub const SERF_CHECK_NAME: &str = "Serf Health Status";

/// DNS SRV weights by health (`Weights`); Consul defaults both to 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    pub passing: i32,
    pub warning: i32,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            passing: 1,
            warning: 1,
        }
    }
}

/// An address a service is reachable at under a name (`lan`, `wan`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceAddress {
    pub address: String,
    pub port: u16,
}

/// A service instance on a node, Consul's `NodeService`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct NodeService {
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    /// Never `null` on the wire.
    #[serde(default, deserialize_with = "null_as_default")]
    pub tags: Vec<String>,
    #[serde(default)]
    pub address: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub meta: BTreeMap<String, String>,
    #[serde(default)]
    pub port: u16,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub socket_path: String,
    #[serde(default)]
    pub weights: Weights,
    #[serde(default)]
    pub enable_tag_override: bool,
    #[serde(default)]
    pub create_index: u64,
    #[serde(default)]
    pub modify_index: u64,
}

/// One instance of a service with its node, as `/v1/catalog/service/:name` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceNode {
    #[serde(rename = "ID")]
    pub id: String,
    pub node: String,
    pub address: String,
    pub datacenter: String,
    pub tagged_addresses: BTreeMap<String, String>,
    pub node_meta: BTreeMap<String, String>,
    pub service_kind: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    pub service_name: String,
    pub service_tags: Vec<String>,
    pub service_address: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_tagged_addresses: BTreeMap<String, ServiceAddress>,
    pub service_weights: Weights,
    pub service_meta: BTreeMap<String, String>,
    pub service_port: u16,
    pub service_socket_path: String,
    pub service_enable_tag_override: bool,
    pub create_index: u64,
    pub modify_index: u64,
}

impl ServiceNode {
    pub fn new(node: &Node, svc: &NodeService) -> Self {
        Self {
            id: node.id.clone(),
            node: node.node.clone(),
            address: node.address.clone(),
            datacenter: node.datacenter.clone(),
            tagged_addresses: node.tagged_addresses.clone(),
            node_meta: node.meta.clone(),
            service_kind: String::new(),
            service_id: svc.id.clone(),
            service_name: svc.service.clone(),
            service_tags: svc.tags.clone(),
            service_address: svc.address.clone(),
            service_tagged_addresses: svc.tagged_addresses.clone(),
            service_weights: svc.weights,
            service_meta: svc.meta.clone(),
            service_port: svc.port,
            service_socket_path: svc.socket_path.clone(),
            service_enable_tag_override: svc.enable_tag_override,
            create_index: svc.create_index,
            modify_index: svc.modify_index,
        }
    }
}

/// A node with its services map (`/v1/catalog/node/:node`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct NodeServices {
    pub node: Node,
    pub services: BTreeMap<String, NodeService>,
}

/// A node with its services list (`/v1/catalog/node-services/:node`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct NodeServiceList {
    pub node: Node,
    pub services: Vec<NodeService>,
}

/// One healthy-or-not instance (`/v1/health/service/:name`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntry {
    pub node: Node,
    pub service: NodeService,
    pub checks: Vec<HealthCheck>,
}

impl ServiceEntry {
    /// The worst status among the instance's node and service checks.
    pub fn aggregate_status(&self) -> CheckStatus {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(CheckStatus::Passing)
    }
}

/// `PUT /v1/catalog/register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct RegisterRequest {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub datacenter: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub tagged_addresses: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub node_meta: BTreeMap<String, String>,
    #[serde(default)]
    pub service: Option<NodeService>,
    #[serde(default)]
    pub check: Option<HealthCheck>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub checks: Vec<HealthCheck>,
    #[serde(default)]
    pub skip_node_update: bool,
}

/// `PUT /v1/catalog/deregister`: the node, or one of its services or checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct DeregisterRequest {
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub datacenter: String,
    #[serde(rename = "CheckID", default)]
    pub check_id: String,
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
}

/// Reads `null` as the type's default, as Go's decoder leaves a nil slice or map.
pub fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A service as the agent that owns it shows it (`/v1/agent/services`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct AgentService {
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    pub tags: Vec<String>,
    pub meta: BTreeMap<String, String>,
    pub port: u16,
    pub address: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub socket_path: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    pub weights: Weights,
    pub enable_tag_override: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub content_hash: String,
    pub datacenter: String,
}

impl AgentService {
    pub fn new(svc: &NodeService, datacenter: &str) -> Self {
        Self {
            id: svc.id.clone(),
            service: svc.service.clone(),
            tags: svc.tags.clone(),
            meta: svc.meta.clone(),
            port: svc.port,
            address: svc.address.clone(),
            socket_path: svc.socket_path.clone(),
            tagged_addresses: svc.tagged_addresses.clone(),
            weights: svc.weights,
            enable_tag_override: svc.enable_tag_override,
            content_hash: String::new(),
            datacenter: datacenter.to_string(),
        }
    }
}

/// A node's network coordinate (`/v1/coordinate/nodes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct CoordinateEntry {
    pub node: String,
    pub segment: String,
    pub coord: Option<crate::coordinate::Coordinate>,
}
