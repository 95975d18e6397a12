//! Prepared queries in the store: stored by ID with unique (case-insensitive) names,
//! resolved by ID, exact name or the longest template prefix, and run against the
//! catalog here without failover (the server does that, see `server/prepared.rs`).
//!
//! The checks that need the state are made at apply, deterministically, with Consul's
//! messages: a name used by another query or equal to another query's ID, a second
//! template without a name, a session that does not exist, a template that does not
//! compile. A query bound to a session goes with it.

use cairn_shared::api::{
    CheckStatus, PreparedQuery, QuerySource, ServiceEntry, TEMPLATE_NAME_PREFIX_MATCH,
};
use cairn_shared::rpc::{QueryOp, QueryResult, RpcError, WriteResult};

use super::{Store, Table, Undo, template};

/// Consul's answer for an unknown query.
pub const QUERY_NOT_FOUND: &str = "Query not found";

/// Whether `s` is shaped like a UUID (only those are looked up as IDs).
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::parse_str(s).is_ok()
}

impl Store {
    pub(super) fn put_query(&mut self, q: PreparedQuery) {
        let id = q.id.clone();
        let old = self.prepared_queries.insert(id.clone(), q);
        self.record(|| Undo::Query(id, old));
    }

    pub(super) fn remove_query(&mut self, id: &str) -> Option<PreparedQuery> {
        let old = self.prepared_queries.remove(id)?;
        self.record(|| Undo::Query(id.to_string(), Some(old.clone())));
        Some(old)
    }

    /// Creates, updates or deletes a query.
    pub(super) fn query_apply(
        &mut self,
        idx: u64,
        op: QueryOp,
        query: &PreparedQuery,
    ) -> Result<WriteResult, RpcError> {
        let existing = self.prepared_queries.get(&query.id).cloned();
        match op {
            QueryOp::Create if query.id.is_empty() => {
                return Err(RpcError::internal(
                    "invariant: a query's ID is set by the leader",
                ));
            }
            QueryOp::Update | QueryOp::Delete if existing.is_none() => {
                return Err(RpcError::internal(format!(
                    "Cannot modify non-existent prepared query: '{}'",
                    query.id
                )));
            }
            QueryOp::Delete => {
                self.remove_query(&query.id);
                self.bump(Table::PreparedQueries, idx);
                return Ok(WriteResult::QueryId(query.id.clone()));
            }
            _ => {}
        }
        let mut q = query.clone();
        q.create_index = existing.as_ref().map_or(idx, |e| e.create_index);
        q.modify_index = idx;
        let other_named = |s: &Store, name: &str| {
            s.prepared_queries
                .values()
                .find(|o| o.id != q.id && o.name.eq_ignore_ascii_case(name))
                .is_some()
        };
        if !q.name.is_empty() {
            if other_named(self, &q.name) {
                return Err(RpcError::internal(format!(
                    "name '{}' aliases an existing query name",
                    q.name
                )));
            }
        } else if q.is_template() && other_named(self, "") {
            return Err(RpcError::internal(
                "a query template with an empty name already exists",
            ));
        }
        if is_uuid(&q.name) && self.prepared_queries.contains_key(&q.name) {
            return Err(RpcError::internal(format!(
                "name '{}' aliases an existing query ID",
                q.name
            )));
        }
        if !q.session.is_empty() && !self.sessions.contains_key(&q.session) {
            return Err(RpcError::internal(format!(
                "invalid session \"{}\"",
                q.session
            )));
        }
        if q.is_template() {
            template::compile(&q)
                .map_err(|e| RpcError::internal(format!("failed compiling template: {e}")))?;
        }
        let id = q.id.clone();
        self.put_query(q);
        self.bump(Table::PreparedQueries, idx);
        Ok(WriteResult::QueryId(id))
    }

    /// Deletes the queries bound to a session that ended.
    pub(super) fn remove_queries_of_session(&mut self, idx: u64, session: &str) {
        let bound: Vec<String> = self
            .prepared_queries
            .values()
            .filter(|q| q.session == session)
            .map(|q| q.id.clone())
            .collect();
        if bound.is_empty() {
            return;
        }
        for id in bound {
            self.remove_query(&id);
        }
        self.bump(Table::PreparedQueries, idx);
    }

    pub fn prepared_queries(&self) -> impl Iterator<Item = &PreparedQuery> {
        self.prepared_queries.values()
    }

    pub fn prepared_query(&self, id: &str) -> Option<&PreparedQuery> {
        self.prepared_queries.get(id)
    }

    /// The index of the prepared-query table.
    pub fn queries_index(&self) -> u64 {
        self.table(Table::PreparedQueries)
    }

    /// The query an ID or name stands for, a template rendered for the name: by ID first
    /// (templates only by name), then an exact name, then the template with the longest
    /// name that prefixes it. `None` when nothing matches.
    pub fn resolve_query(
        &self,
        id_or_name: &str,
        agent: &QuerySource,
    ) -> Result<Option<PreparedQuery>, RpcError> {
        if id_or_name.is_empty() {
            return Err(RpcError::internal("Missing query ID"));
        }
        if is_uuid(id_or_name)
            && let Some(q) = self.prepared_queries.get(id_or_name)
        {
            if q.is_template() {
                return Err(RpcError::internal(
                    "prepared query templates can only be resolved up by name, not by ID",
                ));
            }
            return Ok(Some(q.clone()));
        }
        let render = |q: &PreparedQuery| {
            if q.is_template() {
                template::render(q, id_or_name, agent).map_err(RpcError::internal)
            } else {
                Ok(q.clone())
            }
        };
        if let Some(q) = self
            .prepared_queries
            .values()
            .find(|q| !q.name.is_empty() && q.name.eq_ignore_ascii_case(id_or_name))
        {
            return render(q).map(Some);
        }
        let wanted = id_or_name.to_lowercase();
        let best = self
            .prepared_queries
            .values()
            .filter(|q| q.template.kind == TEMPLATE_NAME_PREFIX_MATCH)
            .filter(|q| wanted.starts_with(&q.name.to_lowercase()))
            .max_by_key(|q| q.name.len());
        best.map(render).transpose()
    }

    /// The instances a query selects here, unsorted: critical ones out (warning ones too
    /// with `OnlyPassing`) but for the checks it ignores, then its node-meta, service-meta
    /// and tag filters (`!tag` excludes), as Consul's `execute`.
    pub fn run_query(&self, q: &PreparedQuery) -> Vec<ServiceEntry> {
        let s = &q.service;
        let ignored = s.ignore_check_ids.as_deref().unwrap_or_default();
        let (mut must, mut not) = (Vec::new(), Vec::new());
        for t in s.tags.iter().flatten() {
            let t = t.to_lowercase();
            match t.strip_prefix('!') {
                Some(forbidden) => not.push(forbidden.to_string()),
                None => must.push(t),
            }
        }
        let meta_ok =
            |have: &std::collections::BTreeMap<String, String>,
             want: &Option<std::collections::BTreeMap<String, String>>| {
                want.iter().flatten().all(|(k, v)| have.get(k) == Some(v))
            };
        self.instances(&s.service)
            .map(|(n, svc)| self.entry(n, svc))
            .filter(|e| {
                e.checks
                    .iter()
                    .filter(|c| !ignored.contains(&c.check_id))
                    .all(|c| match c.status {
                        CheckStatus::Critical => false,
                        CheckStatus::Warning => !s.only_passing,
                        CheckStatus::Passing => true,
                    })
            })
            .filter(|e| meta_ok(&e.node.meta, &s.node_meta))
            .filter(|e| meta_ok(&e.service.meta, &s.service_meta))
            .filter(|e| {
                let tags: Vec<String> = e.service.tags.iter().map(|t| t.to_lowercase()).collect();
                must.iter().all(|t| tags.contains(t)) && !not.iter().any(|t| tags.contains(t))
            })
            .collect()
    }

    /// The node whose address is `ip` (`near=_ip`).
    pub fn node_at_address(&self, ip: &str) -> Option<String> {
        self.nodes
            .values()
            .find(|n| n.address == ip)
            .map(|n| n.node.clone())
    }

    /// Sorts instances by estimated round trip from `near`, that node first.
    pub fn sort_entries_near(&self, entries: Vec<ServiceEntry>, near: &str) -> Vec<ServiceEntry> {
        let mut result = QueryResult::ServiceEntries(entries);
        self.sort_near(&mut result, near);
        let QueryResult::ServiceEntries(sorted) = result else {
            return Vec::new(); // sorting keeps the kind of result
        };
        sorted
    }
}
