//! Prepared queries on the server: what Consul's `PreparedQuery` endpoint does around the
//! state store.
//!
//! - Writes: a new query gets a fresh ID here, before the log (IDs must not be drawn in
//!   `apply`), and is checked for what needs no state (a service to query, `NearestN`,
//!   the DNS TTL, a name, template or session), with Consul's messages.
//! - Execution: resolve, run against the catalog, shuffle, sort by distance from the
//!   source node (the request's `?near`, else the query's `Near`; `_agent` and `_ip`
//!   resolved) with that node first, apply the limit. When nothing is left, fail over:
//!   the first `NearestN` other datacenters by WAN distance, then `Datacenters` in order,
//!   unknown and already chosen ones skipped, each asked through a WAN router to run the
//!   whole query (shuffled there, no further failover); the first that has instances
//!   answers, and `Failovers` counts every datacenter tried.

use cairn_shared::api::{PreparedQuery, QueryExecuteResponse, QuerySource};
use cairn_shared::duration;
use cairn_shared::rpc::wire::Forwarded;
use cairn_shared::rpc::{
    Query, QueryOp, QueryResult, ReadRequest, ReadResponse, RpcError, WriteOp,
};
use rand::seq::SliceRandom;

use super::Server;
use crate::catalog::prepared::QUERY_NOT_FOUND;
use crate::rpc::Reply;

/// Consul's stateless checks of a query being created or updated.
fn check_query(q: &PreparedQuery) -> Result<(), String> {
    if q.name.is_empty() && !q.is_template() && q.session.is_empty() {
        return Err("Must be bound to a session".into());
    }
    if q.token == "<hidden>" {
        return Err(
            "Bad Token '<hidden>', it looks like a query definition with a redacted token was submitted"
                .into(),
        );
    }
    if q.service.service.is_empty() {
        return Err("Must provide a Service name to query".into());
    }
    if q.service.failover.nearest_n < 0 {
        return Err(format!(
            "Bad NearestN '{}', must be >= 0",
            q.service.failover.nearest_n
        ));
    }
    if !q.dns.ttl.is_empty() {
        duration::parse(&q.dns.ttl).map_err(|e| format!("Bad DNS TTL '{}': {e}", q.dns.ttl))?;
    }
    Ok(())
}

impl Server {
    /// Readies a prepared-query write for the log: a new ID for a create, the query's
    /// existence for an update or delete, the stateless checks for creates and updates.
    pub(super) fn prepare_query(
        &self,
        op: QueryOp,
        mut query: Box<PreparedQuery>,
    ) -> Result<WriteOp, RpcError> {
        if op == QueryOp::Create {
            if !query.id.is_empty() {
                return Err(RpcError::internal(
                    "ID must be empty when creating a new prepared query",
                ));
            }
            query.id = self.state().read(|s| {
                loop {
                    let id = uuid::Uuid::new_v4().to_string();
                    if s.prepared_query(&id).is_none() {
                        break id;
                    }
                }
            });
        }
        // Consul looks the query up before it parses the new definition.
        if op != QueryOp::Create && self.state().read(|s| s.prepared_query(&query.id).is_none()) {
            return Err(RpcError::internal(format!(
                "Cannot modify non-existent prepared query: '{}'",
                query.id
            )));
        }
        if op != QueryOp::Delete {
            check_query(&query)
                .map_err(|e| RpcError::internal(format!("Invalid prepared query: {e}")))?;
        }
        Ok(WriteOp::PreparedQuery { op, query })
    }

    /// `/v1/query/:id/explain`: the query a name resolves to.
    pub(super) fn explain_query(
        &self,
        id_or_name: &str,
        agent: &QuerySource,
    ) -> Result<(u64, QueryResult), RpcError> {
        self.state().read(|s| {
            let q = s
                .resolve_query(id_or_name, agent)?
                .ok_or_else(|| RpcError::not_found(QUERY_NOT_FOUND))?;
            Ok((
                s.queries_index(),
                QueryResult::PreparedQueryExplain(Box::new(q)),
            ))
        })
    }

    /// Runs a query here without failover: what a remote datacenter does for another's.
    pub(super) fn execute_query_remote(
        &self,
        caller: &str,
        query: &PreparedQuery,
        limit: usize,
    ) -> Result<(u64, QueryResult), RpcError> {
        let (index, mut nodes) = self
            .state()
            .read(|s| (s.queries_index(), s.run_query(query)));
        self.query_entries(caller, query, &mut nodes)?;
        nodes.shuffle(&mut rand::rng());
        if limit > 0 {
            nodes.truncate(limit);
        }
        let resp = QueryExecuteResponse {
            service: query.service.service.clone(),
            nodes,
            dns: query.dns.clone(),
            datacenter: self.inner.config.datacenter.clone(),
            failovers: 0,
        };
        Ok((index, QueryResult::PreparedQueryExecute(Box::new(resp))))
    }

    /// `/v1/query/:id/execute`, failover included.
    pub(super) async fn execute_query(
        &self,
        req: &ReadRequest,
        id_or_name: &str,
        limit: usize,
        agent: &QuerySource,
        source_ip: Option<&str>,
    ) -> Result<(u64, QueryResult), RpcError> {
        let here = &self.inner.config.datacenter;
        let (index, query, mut nodes) = self.state().read(|s| {
            let q = s
                .resolve_query(id_or_name, agent)?
                .ok_or_else(|| RpcError::not_found(QUERY_NOT_FOUND))?;
            let nodes = s.run_query(&q);
            Ok::<_, RpcError>((s.queries_index(), q, nodes))
        })?;
        if query.service.connect.enabled {
            return Err(RpcError::bad_request(
                "Connect-capable prepared queries are not supported",
            ));
        }
        // What the token may not read is gone before failover is considered, as in Consul.
        self.query_entries(&req.options.token, &query, &mut nodes)?;
        nodes.shuffle(&mut rand::rng());
        // The request's source wins over the query's Near, as in Consul.
        let mut near = req.options.near.clone();
        if near.is_empty() {
            near = query.service.near.clone();
        }
        if near == "_agent" {
            near = agent.node.clone();
        } else if near == "_ip" {
            near = source_ip
                .and_then(|ip| self.state().read(|s| s.node_at_address(ip)))
                .unwrap_or_default();
        }
        if !near.is_empty() {
            nodes = self.state().read(|s| s.sort_entries_near(nodes, &near));
        }
        if limit > 0 {
            nodes.truncate(limit);
        }
        let mut resp = QueryExecuteResponse {
            service: query.service.service.clone(),
            nodes,
            dns: query.dns.clone(),
            datacenter: here.clone(),
            failovers: 0,
        };
        if resp.nodes.is_empty() {
            self.fail_over(req, &query, limit, &mut resp).await;
        }
        Ok((index, QueryResult::PreparedQueryExecute(Box::new(resp))))
    }

    /// The datacenters a query with nothing here tries, in order.
    async fn failover_targets(&self, query: &PreparedQuery) -> Vec<String> {
        let here = &self.inner.config.datacenter;
        let nearest: Vec<String> = match self.wan() {
            Some(w) => w
                .datacenters()
                .await
                .into_iter()
                .filter(|dc| dc != here)
                .collect(),
            None => Vec::new(),
        };
        let n = usize::try_from(query.service.failover.nearest_n).unwrap_or(0);
        let mut dcs: Vec<String> = nearest.iter().take(n).cloned().collect();
        for dc in query.service.failover.datacenters.iter().flatten() {
            if !nearest.contains(dc) {
                tracing::debug!(datacenter = %dc, "skipping an unknown datacenter in a prepared query");
                continue;
            }
            if !dcs.contains(dc) {
                dcs.push(dc.clone());
            }
        }
        dcs
    }

    async fn fail_over(
        &self,
        req: &ReadRequest,
        query: &PreparedQuery,
        limit: usize,
        resp: &mut QueryExecuteResponse,
    ) {
        let mut failovers = 0;
        for dc in self.failover_targets(query).await {
            failovers += 1;
            let remote = ReadRequest {
                query: Query::PreparedQueryExecuteRemote {
                    query: Box::new(query.clone()),
                    limit,
                },
                options: cairn_shared::rpc::QueryOptions {
                    datacenter: dc.clone(),
                    consistency: req.options.consistency,
                    token: req.options.token.clone(),
                    ..Default::default()
                },
            };
            let answer = match self.forward_dc(Forwarded::Read(remote)).await {
                Ok(Reply::Read(ReadResponse {
                    result: QueryResult::PreparedQueryExecute(r),
                    ..
                })) => *r,
                Ok(_) => {
                    tracing::warn!(datacenter = %dc, "a prepared query failover got another answer");
                    continue;
                }
                Err(e) => {
                    tracing::warn!(service = %query.service.service, datacenter = %dc, error = %e,
                        "failed querying for service in datacenter");
                    continue;
                }
            };
            let found = !answer.nodes.is_empty();
            *resp = answer;
            if found {
                break;
            }
        }
        resp.failovers = failovers;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(service: &str) -> PreparedQuery {
        let mut q = PreparedQuery {
            name: "q".into(),
            ..PreparedQuery::default()
        };
        q.service.service = service.into();
        q
    }

    #[test]
    fn stateless_checks_speak_consuls_words() {
        assert!(check_query(&query("web")).is_ok());
        assert_eq!(
            check_query(&query("")).unwrap_err(),
            "Must provide a Service name to query"
        );
        let mut q = query("web");
        q.service.failover.nearest_n = -1;
        assert_eq!(
            check_query(&q).unwrap_err(),
            "Bad NearestN '-1', must be >= 0"
        );
        let mut q = query("web");
        q.dns.ttl = "soon".into();
        assert!(
            check_query(&q)
                .unwrap_err()
                .starts_with("Bad DNS TTL 'soon'")
        );
        let mut q = query("web");
        q.name.clear();
        assert_eq!(check_query(&q).unwrap_err(), "Must be bound to a session");
        q.session = "s".into();
        assert!(check_query(&q).is_ok());
    }
}
