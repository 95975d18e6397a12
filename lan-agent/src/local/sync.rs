//! Anti-entropy: keeps the catalog's view of this node equal to the agent's own.
//!
//! Changes are pushed as they happen (each registration, status change, removal); output-only
//! check changes wait for `check_update_interval`. A full sync on start and every
//! `sync_interval` compares the catalog with the local state and repairs any drift, which is
//! how a restarted agent, or one whose node was wiped from the catalog, heals. On a server,
//! the RPC is the local endpoint; on a client agent it goes to a server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_shared::api::{DeregisterRequest, HealthCheck, NodeService, RegisterRequest};
use cairn_shared::rpc::{
    Query, QueryOptions, QueryResult, ReadRequest, RpcError, WriteOp, WriteRequest,
};
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::state::LocalState;
use crate::server::Rpc;

/// The node fields every registration carries.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub id: String,
    pub node: String,
    pub address: String,
    pub datacenter: String,
    pub tagged_addresses: BTreeMap<String, String>,
    pub meta: BTreeMap<String, String>,
}

/// Catalog entries the agent does not own and must leave alone.
const KEEP_SERVICES: &[&str] = &["consul"];
const KEEP_CHECKS: &[&str] = &[cairn_shared::api::SERF_CHECK_ID];

pub struct AntiEntropy {
    pub state: Arc<LocalState>,
    pub rpc: Arc<dyn Rpc>,
    pub node: NodeInfo,
    /// How often to compare with the catalog in full.
    pub sync_interval: Duration,
    /// The node's writes carry the agent's token; a service's or check's, the token it
    /// was registered with (the agent's when it had none), as Consul syncs them.
    pub acl: Arc<crate::acl::AgentAcl>,
}

impl AntiEntropy {
    /// The token a planned entry syncs with.
    fn token_of(&self, tokens: &BTreeMap<String, String>, id: &str) -> String {
        match tokens.get(id) {
            Some(t) if !t.is_empty() => t.clone(),
            _ => self.acl.agent_token(),
        }
    }

    fn register(
        &self,
        service: Option<NodeService>,
        checks: Vec<HealthCheck>,
        token: String,
    ) -> WriteRequest {
        let n = &self.node;
        WriteRequest {
            datacenter: String::new(),
            token,
            op: WriteOp::CatalogRegister(Box::new(RegisterRequest {
                id: n.id.clone(),
                node: n.node.clone(),
                address: n.address.clone(),
                datacenter: n.datacenter.clone(),
                tagged_addresses: n.tagged_addresses.clone(),
                node_meta: n.meta.clone(),
                service,
                check: None,
                checks,
                skip_node_update: true,
            })),
        }
    }

    fn deregister(&self, service_id: &str, check_id: &str, token: String) -> WriteRequest {
        WriteRequest {
            datacenter: String::new(),
            token,
            op: WriteOp::CatalogDeregister(DeregisterRequest {
                node: self.node.node.clone(),
                datacenter: String::new(),
                check_id: check_id.to_string(),
                service_id: service_id.to_string(),
            }),
        }
    }

    /// Pushes every pending change; returns when the next deferred change is due.
    pub async fn sync_changes(&self) -> Result<Option<Instant>, RpcError> {
        let plan = self.state.plan(Instant::now());
        let service_token = |id: &str| self.token_of(&plan.service_tokens, id);
        let check_token = |id: &str| self.token_of(&plan.check_tokens, id);
        for (id, generation) in &plan.deregister_services {
            self.rpc
                .write(self.deregister(id, "", service_token(id)))
                .await?;
            self.state.service_synced(id, *generation);
            tracing::info!(service = %id, "Deregistered service");
        }
        for (id, generation) in &plan.deregister_checks {
            self.rpc
                .write(self.deregister("", id, check_token(id)))
                .await?;
            self.state.check_synced(id, *generation);
        }
        for (svc, generation, checks) in &plan.services {
            let list = checks.iter().map(|(c, _)| c.clone()).collect();
            self.rpc
                .write(self.register(Some(svc.clone()), list, service_token(&svc.id)))
                .await?;
            self.state.service_synced(&svc.id, *generation);
            tracing::info!(service = %svc.id, "Synced service");
            for (c, g) in checks {
                self.state.check_synced(&c.check_id, *g);
            }
        }
        for (check, generation) in &plan.checks {
            self.rpc
                .write(self.register(None, vec![check.clone()], check_token(&check.check_id)))
                .await?;
            self.state.check_synced(&check.check_id, *generation);
            tracing::debug!(check = %check.check_id, "Synced check");
        }
        Ok(plan.next_deferred)
    }

    /// Compares the catalog with the local state and removes what the agent does not own.
    pub async fn full_sync(&self) -> Result<(), RpcError> {
        // Make sure the node exists and is current before comparing.
        let mut node = self.register(None, Vec::new(), self.acl.agent_token());
        if let WriteOp::CatalogRegister(r) = &mut node.op {
            r.skip_node_update = false;
        }
        self.rpc.write(node).await?;
        let read = |query| ReadRequest {
            query,
            options: QueryOptions::default(),
        };
        let services = match self
            .rpc
            .read(read(Query::CatalogNodeServices {
                node: self.node.node.clone(),
                select: Default::default(),
            }))
            .await?
            .result
        {
            QueryResult::NodeServiceList(list) => list.map(|l| l.services).unwrap_or_default(),
            _ => Vec::new(),
        };
        let checks = match self
            .rpc
            .read(read(Query::HealthNode {
                node: self.node.node.clone(),
                select: Default::default(),
            }))
            .await?
            .result
        {
            QueryResult::Checks(c) => c,
            _ => Vec::new(),
        };
        let (stale_services, stale_checks) =
            self.state
                .reconcile(&services, &checks, KEEP_SERVICES, KEEP_CHECKS);
        // What the agent no longer owns has no token of its own left.
        for id in stale_services {
            let token = self.acl.agent_token();
            self.rpc.write(self.deregister(&id, "", token)).await?;
        }
        for id in stale_checks {
            let token = self.acl.agent_token();
            self.rpc.write(self.deregister("", &id, token)).await?;
        }
        Ok(())
    }

    /// Runs until shutdown: a full sync first and every `sync_interval` (plus stagger),
    /// change syncs in between, retrying with backoff after failures.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut next_full = Instant::now();
        let mut backoff = Duration::from_millis(200);
        loop {
            let now = Instant::now();
            let mut result = Ok(None);
            if now >= next_full {
                result = self.full_sync().await.map(|_| None);
                if result.is_ok() {
                    let stagger =
                        rand::rng().random_range(0..=self.sync_interval.as_millis() as u64 / 8);
                    next_full = now + self.sync_interval + Duration::from_millis(stagger);
                }
            }
            if result.is_ok() {
                result = self.sync_changes().await;
            }
            let wake = match result {
                Ok(deferred) => {
                    backoff = Duration::from_millis(200);
                    deferred.map_or(next_full, |d| d.min(next_full))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "anti-entropy sync failed; will retry");
                    backoff = (backoff * 2).min(Duration::from_secs(15));
                    Instant::now() + backoff
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.state.changed() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}
