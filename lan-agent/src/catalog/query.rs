//! Reads of the store: each [`Query`] answers with its data and the index a blocking query
//! compares against, and names what it watches ([`Store::watch_keys`]).

use std::collections::{BTreeMap, BTreeSet};

use cairn_shared::api::{
    CheckStatus, CoordinateEntry, HealthCheck, Node, NodeService, NodeServiceList, NodeServices,
    ServiceEntry, ServiceNode,
};
use cairn_shared::rpc::{Query, QueryResult, RpcError, Select};
use serde::Serialize;

use super::watch::WatchKey;
use super::{Store, Table};
use crate::filter::fields::{self, Fields};
use crate::filter::{self, Filter};

/// A [`Select`] made ready to apply: tags lower-cased, the filter parsed.
pub(crate) struct Selector {
    tags: Vec<String>,
    node_meta: Vec<(String, String)>,
    filter: Option<Filter>,
}

impl Selector {
    pub(crate) fn new(select: &Select, fields: &Fields) -> Result<Self, RpcError> {
        let filter = if select.filter.trim().is_empty() {
            None
        } else {
            // Consul answers a bad filter with a 500 carrying go-bexpr's message.
            Some(
                filter::parse_for(&select.filter, fields)
                    .map_err(|e| RpcError::internal(e.consul_message()))?,
            )
        };
        Ok(Self {
            tags: select.tags.iter().map(|t| t.to_lowercase()).collect(),
            node_meta: select.node_meta.clone(),
            filter,
        })
    }

    /// Every `?node-meta` pair must be on the node.
    fn node(&self, node: &Node) -> bool {
        self.node_meta
            .iter()
            .all(|(k, v)| node.meta.get(k) == Some(v))
    }

    /// Every `?tag` must be among the service's tags, ignoring case, as Consul.
    fn tags(&self, tags: &[String]) -> bool {
        self.tags
            .iter()
            .all(|want| tags.iter().any(|t| t.to_lowercase() == *want))
    }

    /// The `?filter` expression over the element as the API would show it.
    fn keep<T: Serialize>(&self, item: &T) -> bool {
        match &self.filter {
            None => true,
            Some(f) => serde_json::to_value(item).is_ok_and(|v| f.matches(&v)),
        }
    }
}

impl Store {
    /// Answers a read and says which index it is at. The index is never 0. With `near`,
    /// list answers are sorted by estimated round-trip time from that node.
    pub fn query(&self, q: &Query, near: &str) -> Result<(u64, QueryResult), RpcError> {
        let (index, mut result) = match q {
            Query::KvGet { key } => {
                let hit = self.kv.get(key).cloned();
                let index = hit
                    .as_ref()
                    .map_or(self.kv_table_index(), |e| e.modify_index);
                (index, QueryResult::Kv(hit.into_iter().collect()))
            }
            Query::KvList { prefix } => (
                self.kv_prefix_index(prefix),
                QueryResult::Kv(self.kv_range(prefix).cloned().collect()),
            ),
            Query::KvKeys { prefix, separator } => (
                self.kv_prefix_index(prefix),
                QueryResult::Keys(self.kv_keys(prefix, separator)),
            ),
            Query::SessionInfo { id } => (
                self.table(Table::Sessions),
                QueryResult::Sessions(self.sessions.get(id).cloned().into_iter().collect()),
            ),
            Query::SessionList => (
                self.table(Table::Sessions),
                QueryResult::Sessions(self.sessions.values().cloned().collect()),
            ),
            Query::SessionNode { node } => (
                self.table(Table::Sessions),
                QueryResult::Sessions(
                    self.sessions
                        .values()
                        .filter(|s| &s.node == node)
                        .cloned()
                        .collect(),
                ),
            ),
            Query::TxnRead(ops) => (self.kv_table_index(), QueryResult::Txn(self.txn_read(ops))),
            Query::CatalogNodes { select } => {
                let sel = Selector::new(select, &fields::NODES)?;
                let nodes = self
                    .nodes
                    .values()
                    .filter(|n| sel.node(n) && sel.keep(n))
                    .cloned()
                    .collect();
                (self.table(Table::Nodes), QueryResult::Nodes(nodes))
            }
            Query::CatalogServices { select } => {
                let sel = Selector::new(select, &fields::SERVICE_NODES)?;
                let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
                for ((node, _), svc) in &self.services {
                    let Some(n) = self.nodes.get(node) else {
                        continue;
                    };
                    if !sel.node(n) || !sel.keep(&ServiceNode::new(n, svc)) {
                        continue;
                    }
                    out.entry(svc.service.clone())
                        .or_default()
                        .extend(svc.tags.iter().cloned());
                }
                let out = out
                    .into_iter()
                    .map(|(k, v)| (k, v.into_iter().collect()))
                    .collect();
                (self.table(Table::Services), QueryResult::ServiceTags(out))
            }
            Query::CatalogService { service, select } => {
                let sel = Selector::new(select, &fields::SERVICE_NODES)?;
                let list = self
                    .instances(service)
                    .filter(|(n, s)| sel.node(n) && sel.tags(&s.tags))
                    .map(|(n, s)| ServiceNode::new(n, s))
                    .filter(|sn| sel.keep(sn))
                    .collect();
                (
                    self.service_index_or(service, &[Table::Services]),
                    QueryResult::ServiceNodes(list),
                )
            }
            Query::CatalogNode { node, select } => {
                let sel = Selector::new(select, &fields::NODE_SERVICES)?;
                let found = self.node_named(node).map(|n| NodeServices {
                    node: n.clone(),
                    services: self
                        .services_on(&n.node)
                        .filter(|s| sel.keep(s))
                        .map(|s| (s.id.clone(), s.clone()))
                        .collect(),
                });
                (
                    self.node_index_or(node, &[Table::Nodes, Table::Services]),
                    QueryResult::NodeServices(found),
                )
            }
            Query::CatalogNodeServices { node, select } => {
                let sel = Selector::new(select, &fields::NODE_SERVICES)?;
                let found = self.nodes.get(node).map(|n| NodeServiceList {
                    node: n.clone(),
                    services: self
                        .services_on(node)
                        .filter(|s| sel.keep(s))
                        .cloned()
                        .collect(),
                });
                (
                    self.node_index_or(node, &[Table::Nodes, Table::Services]),
                    QueryResult::NodeServiceList(found),
                )
            }
            Query::HealthNode { node, select } => {
                let sel = Selector::new(select, &fields::CHECKS)?;
                let checks = self
                    .checks_on(node)
                    .filter(|c| sel.keep(c))
                    .cloned()
                    .collect();
                (
                    self.node_index_or(node, &[Table::Checks]),
                    QueryResult::Checks(checks),
                )
            }
            Query::HealthChecks { service, select } => {
                let sel = Selector::new(select, &fields::CHECKS)?;
                let mut checks = Vec::new();
                for (n, s) in self.instances(service) {
                    if !sel.node(n) {
                        continue;
                    }
                    checks.extend(
                        self.checks_on(&n.node)
                            .filter(|c| c.service_id == s.id && sel.keep(c))
                            .cloned(),
                    );
                }
                (
                    self.service_index_or(service, &[Table::Checks]),
                    QueryResult::Checks(checks),
                )
            }
            Query::HealthService {
                service,
                passing,
                select,
            } => {
                let sel = Selector::new(select, &fields::SERVICE_HEALTH)?;
                let entries = self
                    .instances(service)
                    .filter(|(n, s)| sel.node(n) && sel.tags(&s.tags))
                    .map(|(n, s)| self.entry(n, s))
                    .filter(|e| {
                        !passing || e.checks.iter().all(|c| c.status == CheckStatus::Passing)
                    })
                    .filter(|e| sel.keep(e))
                    .collect();
                (
                    self.service_index_or(service, &[Table::Services, Table::Checks]),
                    QueryResult::ServiceEntries(entries),
                )
            }
            Query::HealthState { state, select } => {
                let sel = Selector::new(select, &fields::CHECKS)?;
                let checks = self
                    .checks
                    .values()
                    .filter(|c| state.is_none_or(|s| c.status == s))
                    .filter(|c| self.nodes.get(&c.node).is_some_and(|n| sel.node(n)))
                    .filter(|c| sel.keep(c))
                    .cloned()
                    .collect();
                (self.table(Table::Checks), QueryResult::Checks(checks))
            }
            Query::CoordinateNodes => (
                self.table(Table::Coordinates),
                QueryResult::Coordinates(
                    self.coordinates
                        .iter()
                        .map(|(node, c)| CoordinateEntry {
                            node: node.clone(),
                            segment: String::new(),
                            coord: Some(c.clone()),
                        })
                        .collect(),
                ),
            ),
            Query::CoordinateNode { node } => (
                self.table(Table::Coordinates),
                QueryResult::Coordinates(
                    self.coordinates
                        .get(node)
                        .map(|c| CoordinateEntry {
                            node: node.clone(),
                            segment: String::new(),
                            coord: Some(c.clone()),
                        })
                        .into_iter()
                        .collect(),
                ),
            ),
            Query::Usage => {
                let names: BTreeSet<&str> =
                    self.services.values().map(|s| s.service.as_str()).collect();
                let instances = self.services.len() as u64;
                let consul = self
                    .services
                    .values()
                    .filter(|s| s.service == "consul")
                    .count() as u64;
                let usage = cairn_shared::rpc::Usage {
                    services: names.len() as u64,
                    service_instances: instances,
                    billable_service_instances: instances - consul,
                    nodes: self.nodes.len() as u64,
                };
                (
                    self.table(Table::Services).max(self.table(Table::Nodes)),
                    QueryResult::Usage(usage),
                )
            }
            Query::ConfigEntries { kind } => (
                self.table(Table::ConfigEntries),
                QueryResult::ConfigEntries(
                    self.config_entries
                        .get(kind)
                        .map(|m| m.values().cloned().collect())
                        .unwrap_or_default(),
                ),
            ),
            Query::ConfigEntry { kind, name } => (
                self.table(Table::ConfigEntries),
                QueryResult::ConfigEntries(
                    self.config_entries
                        .get(kind)
                        .and_then(|m| m.get(name))
                        .cloned()
                        .into_iter()
                        .collect(),
                ),
            ),
            Query::AclTokens {
                policy,
                role,
                auth_method,
            } => (
                self.table(Table::AclTokens),
                QueryResult::AclTokens(
                    self.acl
                        .tokens()
                        .filter(|t| policy.is_empty() || t.policies.iter().any(|l| &l.id == policy))
                        .filter(|t| role.is_empty() || t.roles.iter().any(|l| &l.id == role))
                        .filter(|t| auth_method.is_empty() || &t.auth_method == auth_method)
                        .map(|t| self.acl.show_token(t))
                        .collect(),
                ),
            ),
            Query::AclToken { accessor_id } => (
                self.table(Table::AclTokens),
                QueryResult::AclTokens(
                    self.acl
                        .token(accessor_id)
                        .map(|t| self.acl.show_token(t))
                        .into_iter()
                        .collect(),
                ),
            ),
            Query::AclPolicies => (
                self.table(Table::AclPolicies),
                QueryResult::AclPolicies(self.acl.policies().cloned().collect()),
            ),
            Query::AclPolicy { id, by_name } => (
                self.table(Table::AclPolicies),
                QueryResult::AclPolicies(
                    self.acl.policy(id, *by_name).cloned().into_iter().collect(),
                ),
            ),
            Query::AclRoles { policy } => (
                self.table(Table::AclRoles),
                QueryResult::AclRoles(
                    self.acl
                        .roles()
                        .filter(|r| policy.is_empty() || r.policies.iter().any(|l| &l.id == policy))
                        .map(|r| self.acl.show_role(r))
                        .collect(),
                ),
            ),
            Query::AclRole { id, by_name } => (
                self.table(Table::AclRoles),
                QueryResult::AclRoles(
                    self.acl
                        .role(id, *by_name)
                        .map(|r| self.acl.show_role(r))
                        .into_iter()
                        .collect(),
                ),
            ),
            Query::AclAuthMethods => (
                self.table(Table::AclAuthMethods),
                QueryResult::AclAuthMethods(self.acl.auth_methods().cloned().collect()),
            ),
            Query::AclAuthMethod { name } => (
                self.table(Table::AclAuthMethods),
                QueryResult::AclAuthMethods(
                    self.acl.auth_method(name).cloned().into_iter().collect(),
                ),
            ),
            Query::AclBindingRules { auth_method } => (
                self.table(Table::AclBindingRules),
                QueryResult::AclBindingRules(
                    self.acl
                        .binding_rules()
                        .filter(|r| auth_method.is_empty() || &r.auth_method == auth_method)
                        .cloned()
                        .collect(),
                ),
            ),
            Query::AclBindingRule { id } => (
                self.table(Table::AclBindingRules),
                QueryResult::AclBindingRules(
                    self.acl.binding_rule(id).cloned().into_iter().collect(),
                ),
            ),
            Query::AclTokenSelf | Query::AclResolve | Query::AclReplication => {
                return Err(RpcError::internal(
                    "invariant: the token's own reads and replication are answered by the server",
                ));
            }
            Query::AutopilotConfiguration => (
                self.table(Table::Autopilot),
                QueryResult::AutopilotConfiguration(self.autopilot.clone()),
            ),
            Query::PreparedQueries => (
                self.table(Table::PreparedQueries),
                QueryResult::PreparedQueries(self.prepared_queries.values().cloned().collect()),
            ),
            Query::PreparedQuery { id } => {
                let Some(q) = self.prepared_queries.get(id) else {
                    return Err(RpcError::not_found(super::prepared::QUERY_NOT_FOUND));
                };
                (
                    self.table(Table::PreparedQueries),
                    QueryResult::PreparedQueries(vec![q.clone()]),
                )
            }
            Query::Leader
            | Query::Peers
            | Query::Datacenters
            | Query::WanMembers
            | Query::WanCoordinates
            | Query::PreparedQueryExecute { .. }
            | Query::PreparedQueryExplain { .. }
            | Query::PreparedQueryExecuteRemote { .. }
            | Query::RaftConfiguration
            | Query::AutopilotHealth
            | Query::Snapshot
            | Query::SnapshotPart { .. } => {
                return Err(RpcError::internal(
                    "invariant: status queries are answered by the server, not the store",
                ));
            }
        };
        if !near.is_empty() {
            self.sort_near(&mut result, near);
        }
        Ok((index.max(1), result))
    }

    /// Sorts list answers by estimated RTT from `near`; nodes without a coordinate go last,
    /// and nothing moves when `near` itself has none (Consul's rules).
    pub(super) fn sort_near(&self, result: &mut QueryResult, near: &str) {
        let Some(origin) = self.coordinates.get(near) else {
            return;
        };
        // The node itself always comes first, even when another sits at the same point
        // (fresh coordinates all start at the origin).
        let dist = |node: &str| {
            if node == near {
                return -1.0;
            }
            self.coordinates
                .get(node)
                .map_or(f64::INFINITY, |c| origin.distance_to_secs(c))
        };
        let by = |a: f64, b: f64| a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal);
        match result {
            QueryResult::Nodes(v) => v.sort_by(|a, b| by(dist(&a.node), dist(&b.node))),
            QueryResult::ServiceNodes(v) => v.sort_by(|a, b| by(dist(&a.node), dist(&b.node))),
            QueryResult::ServiceEntries(v) => {
                v.sort_by(|a, b| by(dist(&a.node.node), dist(&b.node.node)))
            }
            QueryResult::Checks(v) => v.sort_by(|a, b| by(dist(&a.node), dist(&b.node))),
            _ => {}
        }
    }

    /// The index [`Store::query`] would answer `q` with, without building the answer; only
    /// for the lookups DNS repeats (`None` for the rest).
    pub fn query_index(&self, q: &Query) -> Option<u64> {
        let index = match q {
            Query::HealthService { service, .. } => {
                self.service_index_or(service, &[Table::Services, Table::Checks])
            }
            Query::CatalogNode { node, .. } => {
                self.node_index_or(node, &[Table::Nodes, Table::Services])
            }
            _ => return None,
        };
        Some(index.max(1))
    }

    /// What a blocking query must watch to see its answer change; empty for queries that
    /// do not block.
    pub fn watch_keys(q: &Query) -> Vec<WatchKey> {
        match q {
            Query::KvGet { key } => vec![WatchKey::KvKey(key.clone())],
            Query::KvList { prefix } | Query::KvKeys { prefix, .. } => {
                vec![WatchKey::KvPrefix(prefix.clone())]
            }
            Query::SessionInfo { .. } | Query::SessionList | Query::SessionNode { .. } => {
                vec![WatchKey::Table(Table::Sessions)]
            }
            Query::CatalogNodes { .. } => vec![WatchKey::Table(Table::Nodes)],
            Query::Usage => vec![
                WatchKey::Table(Table::Nodes),
                WatchKey::Table(Table::Services),
            ],
            Query::AclTokenSelf | Query::AclResolve | Query::AclReplication => Vec::new(),
            Query::AutopilotConfiguration => vec![WatchKey::Table(Table::Autopilot)],
            Query::AclTokens { .. } | Query::AclToken { .. } => {
                vec![WatchKey::Table(Table::AclTokens)]
            }
            Query::AclPolicies | Query::AclPolicy { .. } => {
                vec![WatchKey::Table(Table::AclPolicies)]
            }
            Query::AclRoles { .. } | Query::AclRole { .. } => {
                vec![WatchKey::Table(Table::AclRoles)]
            }
            Query::AclAuthMethods | Query::AclAuthMethod { .. } => {
                vec![WatchKey::Table(Table::AclAuthMethods)]
            }
            Query::AclBindingRules { .. } | Query::AclBindingRule { .. } => {
                vec![WatchKey::Table(Table::AclBindingRules)]
            }
            Query::ConfigEntries { .. } | Query::ConfigEntry { .. } => {
                vec![WatchKey::Table(Table::ConfigEntries)]
            }
            Query::CatalogServices { .. } => vec![WatchKey::Table(Table::Services)],
            Query::CatalogService { service, .. }
            | Query::HealthChecks { service, .. }
            | Query::HealthService { service, .. } => {
                vec![WatchKey::Service(service.to_lowercase())]
            }
            Query::CatalogNode { node, .. }
            | Query::CatalogNodeServices { node, .. }
            | Query::HealthNode { node, .. } => vec![WatchKey::Node(node.clone())],
            Query::HealthState { .. } => vec![WatchKey::Table(Table::Checks)],
            Query::CoordinateNodes | Query::CoordinateNode { .. } => {
                vec![WatchKey::Table(Table::Coordinates)]
            }
            Query::PreparedQueries | Query::PreparedQuery { .. } => {
                vec![WatchKey::Table(Table::PreparedQueries)]
            }
            Query::TxnRead(_)
            | Query::Leader
            | Query::Peers
            | Query::Datacenters
            | Query::WanMembers
            | Query::WanCoordinates
            | Query::PreparedQueryExecute { .. }
            | Query::PreparedQueryExplain { .. }
            | Query::PreparedQueryExecuteRemote { .. }
            | Query::RaftConfiguration
            | Query::AutopilotHealth
            | Query::Snapshot
            | Query::SnapshotPart { .. } => Vec::new(),
        }
    }

    /// An instance with its node-level and own checks, in check-ID order as Consul lists.
    pub(super) fn entry(&self, node: &Node, svc: &NodeService) -> ServiceEntry {
        ServiceEntry {
            node: node.clone(),
            service: svc.clone(),
            checks: self
                .checks_on(&node.node)
                .filter(|c| c.service_id.is_empty() || c.service_id == svc.id)
                .cloned()
                .collect::<Vec<HealthCheck>>(),
        }
    }

    /// A node by name, falling back to a match that ignores case (DNS lower-cases names).
    fn node_named(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name).or_else(|| {
            self.nodes
                .values()
                .find(|n| n.node.eq_ignore_ascii_case(name))
        })
    }

    fn service_index_or(&self, name: &str, tables: &[Table]) -> u64 {
        self.service_index
            .get(&name.to_lowercase())
            .copied()
            .unwrap_or_else(|| self.max_table(tables))
    }

    fn node_index_or(&self, node: &str, tables: &[Table]) -> u64 {
        self.node_index
            .get(node)
            .copied()
            .unwrap_or_else(|| self.max_table(tables))
    }

    fn max_table(&self, tables: &[Table]) -> u64 {
        tables.iter().map(|t| self.table(*t)).max().unwrap_or(0)
    }
}
