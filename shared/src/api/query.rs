//! Prepared queries (`/v1/query`) as Consul's API shows them and the state store keeps
//! them.
//!
//! Every struct takes defaults for missing fields, so a partial body (py-consul sends only
//! what it was given) decodes. Lists and maps a client left out stay `null` on output, as
//! Consul's nil slices do.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ServiceEntry;

/// The one template type Consul has.
pub const TEMPLATE_NAME_PREFIX_MATCH: &str = "name_prefix_match";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct PreparedQuery {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub session: String,
    pub token: String,
    pub template: QueryTemplate,
    pub service: ServiceQuery,
    #[serde(rename = "DNS")]
    pub dns: QueryDns,
    pub create_index: u64,
    pub modify_index: u64,
}

impl PreparedQuery {
    pub fn is_template(&self) -> bool {
        !self.template.kind.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct QueryTemplate {
    /// `name_prefix_match`, or empty for a plain query.
    #[serde(rename = "Type")]
    pub kind: String,
    pub regexp: String,
    pub remove_empty_tags: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceQuery {
    pub service: String,
    pub failover: QueryFailover,
    pub only_passing: bool,
    #[serde(rename = "IgnoreCheckIDs")]
    pub ignore_check_ids: Option<Vec<String>>,
    /// A node to sort near (`_agent`: the asking agent, `_ip`: the node at the source IP).
    pub near: String,
    /// Required tags, and `!tag` for forbidden ones (case-insensitive).
    pub tags: Option<Vec<String>>,
    pub node_meta: Option<BTreeMap<String, String>>,
    pub service_meta: Option<BTreeMap<String, String>>,
    pub connect: QueryConnect,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct QueryFailover {
    /// Fail over to this many other datacenters, nearest first.
    #[serde(rename = "NearestN")]
    pub nearest_n: i64,
    /// Then to these, in order.
    pub datacenters: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct QueryConnect {
    pub enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct QueryDns {
    #[serde(rename = "TTL")]
    pub ttl: String,
}

/// Who asks: the agent that received the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct QuerySource {
    pub node: String,
    pub datacenter: String,
    pub segment: String,
}

/// What executing a query found (`/v1/query/:id/execute`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct QueryExecuteResponse {
    pub service: String,
    pub nodes: Vec<ServiceEntry>,
    #[serde(rename = "DNS")]
    pub dns: QueryDns,
    /// The datacenter that produced the nodes.
    pub datacenter: String,
    /// How many other datacenters were tried.
    pub failovers: u32,
}
