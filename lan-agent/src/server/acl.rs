//! ACL enforcement on the server: every read and write that reaches a server, from its
//! own agent, a client agent, another server or another datacenter, passes
//! [`Server::authorize_write`] or [`Server::authorize_read`] and then
//! [`Server::filter_read`] before it is answered.
//!
//! The checks are exhaustive matches over [`WriteOp`] and [`Query`], so a new operation
//! does not compile until someone decides what it needs. Tokens resolve from this server's
//! replicated state; compiled authorizers are cached until the ACL tables move.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cairn_shared::acl::{
    ACL_NOT_FOUND, ANONYMOUS_ACCESSOR, ANONYMOUS_SECRET, Access, Authorizer, Identity, Link,
    MANAGEMENT_POLICY_ID, MANAGEMENT_POLICY_NAME, PERMISSION_DENIED, Policy, Resource, Token,
};
use cairn_shared::api::{HealthCheck, KvVerb, PreparedQuery, ServiceEntry, TxnOp};
use cairn_shared::rpc::{AclOp, Query, QueryResult, ReadResponse, RpcError, WriteOp};

use super::Server;
use crate::catalog::{Store, Table};

/// What a server knows of the `acl` config block.
#[derive(Debug, Clone, Default)]
pub struct AclSettings {
    pub enabled: bool,
    pub default_allow: bool,
    pub enable_key_list_policy: bool,
    /// `acl.tokens.initial_management`: made a management token at leadership.
    pub initial_management: String,
    /// Where `acl-bootstrap-reset` is looked for.
    pub data_dir: Option<std::path::PathBuf>,
    /// `primary_datacenter`: empty or this datacenter's name in the primary.
    pub primary_datacenter: String,
    /// `acl.tokens.replication`: what a secondary reads the primary's ACLs with.
    pub replication_token: String,
    /// `acl.enable_token_replication`: copy global tokens too, not only policies and roles.
    pub enable_token_replication: bool,
}

/// Compiled authorizers by secret, valid while the ACL tables stay at `index`.
#[derive(Debug, Default)]
pub(super) struct AuthzCache {
    entries: Mutex<HashMap<String, Cached>>,
}

#[derive(Debug, Clone)]
struct Cached {
    index: u64,
    authz: Arc<Authorizer>,
}

fn denied() -> RpcError {
    RpcError::permission_denied(PERMISSION_DENIED)
}

fn need(ok: bool) -> Result<(), RpcError> {
    if ok { Ok(()) } else { Err(denied()) }
}

fn acl_index(s: &Store) -> u64 {
    [Table::AclTokens, Table::AclPolicies, Table::AclRoles]
        .into_iter()
        .map(|t| s.table_index(t))
        .max()
        .unwrap_or(0)
}

/// The built-in policy every datacenter has.
pub(super) fn management_policy() -> Policy {
    Policy {
        id: MANAGEMENT_POLICY_ID.into(),
        name: MANAGEMENT_POLICY_NAME.into(),
        description: "Builtin Policy that grants unlimited access".into(),
        rules: String::new(),
        ..Policy::default()
    }
}

impl Server {
    pub(super) fn acl_enabled(&self) -> bool {
        self.inner.config.acl.enabled
    }

    /// The authorizer for a token secret; empty means anonymous.
    pub fn authorizer(&self, secret: &str) -> Result<Arc<Authorizer>, RpcError> {
        let settings = &self.inner.config.acl;
        if !settings.enabled {
            return Ok(Arc::new(Authorizer::disabled()));
        }
        let secret = if secret.is_empty() {
            ANONYMOUS_SECRET
        } else {
            secret
        };
        let now = self.inner.clock.now_ms();
        let (index, expiry, cached, identity) = self.inner.state.read(|s| {
            let index = acl_index(s);
            let acl = s.acl();
            let cached = lock(&self.inner.authz.entries)
                .get(secret)
                .filter(|c| c.index == index)
                .map(|c| c.authz.clone());
            let identity = cached
                .is_none()
                .then(|| acl.resolve(secret, &self.inner.config.datacenter, now));
            (index, acl.expiry_of(secret), cached, identity)
        });
        if expiry.is_some_and(|e| e <= now) {
            return Err(RpcError::permission_denied(ACL_NOT_FOUND));
        }
        if let Some(a) = cached {
            return Ok(a);
        }
        let Some(identity) = identity else {
            return Err(RpcError::internal("invariant: resolved when not cached"));
        };
        let authz = match identity {
            Identity::Disabled => Authorizer::disabled(),
            Identity::NotFound => return Err(RpcError::permission_denied(ACL_NOT_FOUND)),
            Identity::Token {
                management: true, ..
            } => Authorizer::management(),
            Identity::Token { rules, .. } => Authorizer::from_texts(&rules, settings.default_allow)
                .map_err(|e| RpcError::internal(format!("a stored policy does not parse: {e}")))?,
        };
        let authz = Arc::new(authz);
        let mut cache = lock(&self.inner.authz.entries);
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(
            secret.to_string(),
            Cached {
                index,
                authz: authz.clone(),
            },
        );
        Ok(authz)
    }

    /// What the request's token resolves to, for `/v1/acl/token/self` and client agents.
    pub(super) fn acl_self(&self, secret: &str) -> Result<(u64, QueryResult), RpcError> {
        let secret = if secret.is_empty() {
            ANONYMOUS_SECRET
        } else {
            secret
        };
        let now = self.inner.clock.now_ms();
        self.inner.state.read(|s| {
            let index = s.table_index(Table::AclTokens).max(1);
            let acl = s.acl();
            Ok((
                index,
                match acl.token_by_secret(secret, now) {
                    Some(t) => QueryResult::AclTokens(vec![acl.show_token(t)]),
                    None => return Err(RpcError::permission_denied(ACL_NOT_FOUND)),
                },
            ))
        })
    }

    pub(super) fn acl_resolve(&self, secret: &str) -> QueryResult {
        if !self.acl_enabled() {
            return QueryResult::AclIdentity(Identity::Disabled);
        }
        let secret = if secret.is_empty() {
            ANONYMOUS_SECRET
        } else {
            secret
        };
        let now = self.inner.clock.now_ms();
        QueryResult::AclIdentity(
            self.inner
                .state
                .read(|s| s.acl().resolve(secret, &self.inner.config.datacenter, now)),
        )
    }

    /// Whether `token` may make the change `op`.
    pub fn authorize_write(&self, token: &str, op: &WriteOp) -> Result<(), RpcError> {
        if !self.acl_enabled() {
            return Ok(());
        }
        // Bootstrap is how the first token comes to be: it needs none. A login proves
        // itself with its bearer token, a logout with the token it ends.
        if matches!(
            op,
            WriteOp::Acl(AclOp::Bootstrap { .. } | AclOp::Login { .. } | AclOp::Logout { .. })
        ) {
            return Ok(());
        }
        let a = self.authorizer(token)?;
        if a.is_management() {
            return Ok(());
        }
        let node = |n: &str| a.allowed(Resource::Node, n, Access::Write);
        let service = |s: &str| a.allowed(Resource::Service, s, Access::Write);
        let operator = || a.allowed(Resource::Operator, "", Access::Write);
        match op {
            WriteOp::Kv(k) => need(kv_write(&a, &k.verb, &k.key)),
            WriteOp::Txn(ops) => need(ops.iter().all(|TxnOp::Kv(k)| {
                if is_kv_read(&k.verb) {
                    a.allowed(Resource::Key, &k.key, Access::Read)
                } else {
                    kv_write(&a, &k.verb, &k.key)
                }
            })),
            WriteOp::SessionCreate(s) => need(a.allowed(Resource::Session, &s.node, Access::Write)),
            WriteOp::SessionDestroy { id } | WriteOp::SessionRenew { id } => {
                let owner = self
                    .inner
                    .state
                    .read(|s| s.session(id).map(|x| x.node.clone()));
                // An unknown session: the write itself reports it.
                need(owner.is_none_or(|n| a.allowed(Resource::Session, &n, Access::Write)))
            }
            WriteOp::CatalogRegister(r) => {
                let names = self.inner.state.read(|s| {
                    r.check
                        .iter()
                        .chain(&r.checks)
                        .map(|c| check_service(s, &r.node, c, r.service.as_ref()))
                        .collect::<Vec<_>>()
                });
                let node_ok = r.skip_node_update || node(&r.node);
                let svc_ok = r.service.as_ref().is_none_or(|s| service(&s.service));
                let checks_ok = names.iter().all(|n| match n {
                    Some(svc) => service(svc),
                    None => node(&r.node),
                });
                need(node_ok && svc_ok && checks_ok)
            }
            WriteOp::CatalogDeregister(d) => {
                let svc = self.inner.state.read(|s| {
                    if !d.service_id.is_empty() {
                        Some(
                            s.service_of(&d.node, &d.service_id)
                                .map(|x| x.service.clone()),
                        )
                    } else if !d.check_id.is_empty() {
                        s.check_of(&d.node, &d.check_id)
                            .filter(|c| !c.service_id.is_empty())
                            .map(|c| Some(c.service_name.clone()))
                    } else {
                        None
                    }
                });
                match svc {
                    Some(Some(name)) => need(service(&name)),
                    // The service or check does not exist: the write reports that.
                    Some(None) => Ok(()),
                    None => need(node(&d.node)),
                }
            }
            WriteOp::CoordinateUpdate(e) => need(node(&e.node)),
            WriteOp::CoordinateBatchUpdate(es) => need(es.iter().all(|e| node(&e.node))),
            WriteOp::RaftRemovePeer { .. }
            | WriteOp::RaftTransferLeader { .. }
            | WriteOp::AutopilotSetConfig { .. } => need(operator()),
            WriteOp::ConfigEntry { entry, .. } => {
                need(config_entry(&a, &entry.kind, &entry.name, Access::Write))
            }
            WriteOp::PreparedQuery { query, .. } => {
                let stored = self
                    .inner
                    .state
                    .read(|s| s.prepared_query(&query.id).map(|q| q.name.clone()));
                let names = [Some(query.name.clone()), stored];
                need(names.iter().flatten().all(|n| {
                    // Unnamed queries are guarded by their ID alone, as in Consul.
                    n.is_empty() || a.allowed(Resource::Query, n, Access::Write)
                }))
            }
            WriteOp::Acl(_) => need(a.allowed(Resource::Acl, "", Access::Write)),
            WriteOp::SnapshotUpload { .. } => Err(denied()),
        }
    }

    /// Whether `token` may make the read at all (point reads); lists are filtered later.
    /// Whether `token` may make the read `q`; returns the authorizer it used, so the
    /// filter of the answer need not resolve the token again.
    pub fn authorize_read(
        &self,
        token: &str,
        q: &Query,
    ) -> Result<Option<Arc<Authorizer>>, RpcError> {
        // What Consul answers without looking at the token at all, so that a token not
        // (yet) known here does not turn them into errors.
        let open = matches!(
            q,
            Query::Leader
                | Query::Peers
                | Query::Datacenters
                | Query::WanCoordinates
                | Query::AclReplication
        );
        if !self.acl_enabled() || open {
            return Ok(None);
        }
        let a = self.authorizer(token)?;
        if a.is_management() {
            return Ok(Some(a));
        }
        let operator = || a.allowed(Resource::Operator, "", Access::Read);
        let acl = || a.allowed(Resource::Acl, "", Access::Read);
        let allowed: Result<(), RpcError> = match q {
            Query::KvGet { key } => need(a.allowed(Resource::Key, key, Access::Read)),
            Query::KvList { prefix } | Query::KvKeys { prefix, .. } => need(
                !self.inner.config.acl.enable_key_list_policy
                    || a.allowed(Resource::Key, prefix, Access::List),
            ),
            Query::TxnRead(ops) => need(
                ops.iter()
                    .all(|TxnOp::Kv(k)| a.allowed(Resource::Key, &k.key, Access::Read)),
            ),
            Query::RaftConfiguration
            | Query::AutopilotHealth
            | Query::AutopilotConfiguration
            | Query::Usage => need(operator()),
            Query::Snapshot | Query::SnapshotPart { .. } => Err(denied()),
            Query::AclTokens { .. }
            | Query::AclToken { .. }
            | Query::AclPolicies
            | Query::AclPolicy { .. }
            | Query::AclRoles { .. }
            | Query::AclRole { .. }
            | Query::AclAuthMethods
            | Query::AclAuthMethod { .. }
            | Query::AclBindingRules { .. }
            | Query::AclBindingRule { .. } => need(acl()),
            // Any valid token may read itself and what it may do.
            // As Consul: replication status needs no token.
            Query::AclTokenSelf | Query::AclResolve | Query::AclReplication => Ok(()),
            Query::ConfigEntry { kind, name } => need(config_entry(&a, kind, name, Access::Read)),
            Query::PreparedQueryExplain { .. } | Query::PreparedQuery { .. } => Ok(()),
            Query::SessionInfo { .. }
            | Query::SessionList
            | Query::SessionNode { .. }
            | Query::Datacenters
            | Query::CatalogNodes { .. }
            | Query::CatalogServices { .. }
            | Query::CatalogService { .. }
            | Query::CatalogNode { .. }
            | Query::CatalogNodeServices { .. }
            | Query::HealthNode { .. }
            | Query::HealthChecks { .. }
            | Query::HealthService { .. }
            | Query::HealthState { .. }
            | Query::CoordinateNodes
            | Query::CoordinateNode { .. }
            | Query::WanMembers
            | Query::WanCoordinates
            | Query::PreparedQueries
            | Query::PreparedQueryExecute { .. }
            | Query::PreparedQueryExecuteRemote { .. }
            | Query::Leader
            | Query::Peers
            | Query::ConfigEntries { .. } => Ok(()),
        };
        allowed.map(|()| Some(a))
    }

    /// Keeps the instances a prepared query may answer: those its own token may read, or,
    /// when it has none, those of the caller's token, as Consul runs queries.
    pub(super) fn query_entries(
        &self,
        caller: &str,
        query: &PreparedQuery,
        entries: &mut Vec<ServiceEntry>,
    ) -> Result<(), RpcError> {
        if !self.acl_enabled() {
            return Ok(());
        }
        let token = if query.token.is_empty() {
            caller
        } else {
            &query.token
        };
        let a = self.authorizer(token)?;
        if !a.is_management() {
            entries.retain(|e| {
                a.allowed(Resource::Node, &e.node.node, Access::Read)
                    && a.allowed(Resource::Service, &e.service.service, Access::Read)
            });
        }
        Ok(())
    }

    /// Leaves out of a read's answer what `token` may not read, and says so in the meta.
    /// A read of `one` prepared query by ID or name (and an explain) that the token may not
    /// see is refused instead, as Consul's are.
    pub fn filter_read(
        &self,
        token: &str,
        resolved: Option<Arc<Authorizer>>,
        one: bool,
        resp: &mut ReadResponse,
    ) -> Result<(), RpcError> {
        let open = matches!(
            resp.result,
            QueryResult::Leader(_)
                | QueryResult::Peers(_)
                | QueryResult::Datacenters(_)
                | QueryResult::DatacenterMaps(_)
                | QueryResult::AclReplication(_)
        );
        if !self.acl_enabled() || open {
            return Ok(());
        }
        let a = match resolved {
            Some(a) => a,
            None => self.authorizer(token)?,
        };
        if a.is_management() {
            return Ok(());
        }
        let node = |n: &str| a.allowed(Resource::Node, n, Access::Read);
        let service = |s: &str| a.allowed(Resource::Service, s, Access::Read);
        let check = |c: &HealthCheck| {
            if c.service_id.is_empty() {
                node(&c.node)
            } else {
                service(&c.service_name)
            }
        };
        let entry = |e: &ServiceEntry| node(&e.node.node) && service(&e.service.service);
        // A query without a name is for management alone, as in Consul.
        let readable = |q: &PreparedQuery| {
            !q.name.is_empty() && a.allowed(Resource::Query, &q.name, Access::Read)
        };
        let mut dropped = false;
        let mut keep = |ok: bool| {
            dropped |= !ok;
            ok
        };
        match &mut resp.result {
            QueryResult::Kv(v) => {
                v.retain(|k| keep(a.allowed(Resource::Key, &k.key, Access::Read)))
            }
            QueryResult::Keys(v) => v.retain(|k| keep(a.allowed(Resource::Key, k, Access::Read))),
            QueryResult::Sessions(v) => {
                v.retain(|s| keep(a.allowed(Resource::Session, &s.node, Access::Read)))
            }
            QueryResult::Nodes(v) => v.retain(|n| keep(node(&n.node))),
            QueryResult::ServiceTags(m) => m.retain(|s, _| keep(service(s))),
            QueryResult::ServiceNodes(v) => {
                v.retain(|s| keep(node(&s.node) && service(&s.service_name)))
            }
            QueryResult::NodeServices(ns) => {
                if let Some(n) = ns {
                    if keep(node(&n.node.node)) {
                        n.services.retain(|_, s| keep(service(&s.service)));
                    } else {
                        *ns = None;
                    }
                }
            }
            QueryResult::NodeServiceList(ns) => {
                if let Some(n) = ns {
                    if keep(node(&n.node.node)) {
                        n.services.retain(|s| keep(service(&s.service)));
                    } else {
                        *ns = None;
                    }
                }
            }
            QueryResult::Checks(v) => v.retain(|c| keep(check(c))),
            QueryResult::ServiceEntries(v) => v.retain(|e| keep(entry(e))),
            QueryResult::Coordinates(v) => v.retain(|c| keep(node(&c.node))),
            QueryResult::PreparedQueries(v) => {
                let before = v.len();
                v.retain(|q| keep(readable(q)));
                if one && v.len() < before {
                    return Err(denied());
                }
                // A query's token is for running it, not for reading.
                for q in v.iter_mut().filter(|q| !q.token.is_empty()) {
                    q.token = "<hidden>".into();
                }
            }
            // Filtered where it ran, before any failover, with the query's token.
            QueryResult::PreparedQueryExecute(_) => {}
            QueryResult::PreparedQueryExplain(q) => {
                if !readable(q) {
                    return Err(denied());
                }
                if !q.token.is_empty() {
                    q.token = "<hidden>".into();
                }
            }
            QueryResult::ConfigEntries(v) => {
                v.retain(|e| keep(config_entry(&a, &e.kind, &e.name, Access::Read)))
            }
            QueryResult::AclTokens(v) => {
                // Secrets are shown only to those who may change ACLs.
                if !a.allowed(Resource::Acl, "", Access::Write) {
                    for t in v.iter_mut() {
                        // The caller already holds its own secret.
                        if t.accessor_id != ANONYMOUS_ACCESSOR && t.secret_id != token {
                            t.secret_id = "<hidden>".into();
                        }
                    }
                }
            }
            QueryResult::Txn(_)
            | QueryResult::Leader(_)
            | QueryResult::Peers(_)
            | QueryResult::Datacenters(_)
            | QueryResult::RaftConfiguration(_)
            | QueryResult::AutopilotHealth(_)
            | QueryResult::SnapshotPart(_)
            | QueryResult::WanMembers(_)
            | QueryResult::DatacenterMaps(_)
            | QueryResult::Usage(_)
            | QueryResult::AutopilotConfiguration(_)
            | QueryResult::AclPolicies(_)
            | QueryResult::AclRoles(_)
            | QueryResult::AclAuthMethods(_)
            | QueryResult::AclBindingRules(_)
            | QueryResult::AclIdentity(_)
            | QueryResult::AclReplication(_) => {}
        }
        // Consul says so only to a caller with a token of its own.
        let anonymous = token.is_empty() || token == ANONYMOUS_SECRET;
        resp.meta.filtered_by_acls |= dropped && !anonymous;
        Ok(())
    }

    /// The leader deletes expired tokens (they stop working at expiry either way).
    pub(super) async fn reap_expired_tokens(&self, shutdown: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !self.acl_enabled() || !self.status().is_leader {
                continue;
            }
            let now = self.inner.clock.now_ms();
            if self
                .inner
                .state
                .read(|s| s.acl().expired(now).next().is_none())
            {
                continue;
            }
            let op = crate::catalog::CommandOp::Client(WriteOp::Acl(AclOp::ReapExpired));
            if let Err(e) = self.propose(op).await.and_then(|a| a) {
                tracing::warn!(error = %e, "failed to delete expired ACL tokens");
            }
        }
    }

    /// Sets ACLs up when this server becomes leader (idempotent).
    pub(super) async fn store_acl_defaults(&self) -> bool {
        let acl = &self.inner.config.acl;
        if !acl.enabled {
            return true;
        }
        let now = self.inner.clock.now_ms();
        // A secondary gets its management token from the primary.
        let is_primary = self.acl_primary().is_none();
        let management = (is_primary && !acl.initial_management.is_empty()).then(|| {
            new_token(
                uuid::Uuid::new_v4().to_string(),
                acl.initial_management.clone(),
                "Initial Management Token",
                now,
            )
        });
        let anonymous = Token {
            policies: Vec::new(),
            ..new_token(
                ANONYMOUS_ACCESSOR.into(),
                ANONYMOUS_SECRET.into(),
                "Anonymous Token",
                now,
            )
        };
        let op = WriteOp::Acl(AclOp::Init {
            policy: Box::new(hashed_policy(management_policy())),
            anonymous: Box::new(hashed_token(anonymous)),
            management: management.map(|m| Box::new(hashed_token(m))),
        });
        match self.propose(crate::catalog::CommandOp::Client(op)).await {
            Err(e) => {
                tracing::debug!(error = %e, "could not set ACLs up yet");
                false
            }
            Ok(_) => true,
        }
    }

    /// The leader's part of an ACL write: what is decided once.
    pub(super) fn prepare_acl(&self, op: AclOp) -> Result<AclOp, RpcError> {
        let now = self.inner.clock.now_ms();
        Ok(match op {
            AclOp::Bootstrap { .. } => {
                let token = new_token(
                    uuid::Uuid::new_v4().to_string(),
                    uuid::Uuid::new_v4().to_string(),
                    "Bootstrap Token (Global Management)",
                    now,
                );
                AclOp::Bootstrap {
                    token: Box::new(hashed_token(token)),
                    policy: Box::new(hashed_policy(management_policy())),
                    reset_index: self.bootstrap_reset_index(),
                }
            }
            AclOp::TokenSet {
                mut token,
                create,
                expires_ms,
            } => {
                if create {
                    if token.accessor_id.is_empty() {
                        token.accessor_id = uuid::Uuid::new_v4().to_string();
                    }
                    if token.secret_id.is_empty() {
                        token.secret_id = uuid::Uuid::new_v4().to_string();
                    }
                    token.create_time = rfc3339(now);
                }
                AclOp::TokenSet {
                    token: Box::new(hashed_token(*token)),
                    create,
                    expires_ms,
                }
            }
            AclOp::PolicySet { mut policy, create } => {
                if create {
                    policy.id = uuid::Uuid::new_v4().to_string();
                }
                AclOp::PolicySet {
                    policy: Box::new(hashed_policy(*policy)),
                    create,
                }
            }
            AclOp::RoleSet { mut role, create } => {
                if create {
                    role.id = uuid::Uuid::new_v4().to_string();
                }
                role.hash = hash_of(&(&role.name, &role.description, &role.policies));
                AclOp::RoleSet { role, create }
            }
            AclOp::AuthMethodSet { method, create } => {
                super::login::JwtMethod::parse(&method)?;
                AclOp::AuthMethodSet { method, create }
            }
            AclOp::BindingRuleSet { mut rule, create } => {
                if rule.auth_method.is_empty() {
                    return Err(RpcError::internal(
                        "Invalid Binding Rule: no AuthMethod is set",
                    ));
                }
                let method = self
                    .inner
                    .state
                    .read(|s| s.acl().auth_method(&rule.auth_method).cloned())
                    .ok_or_else(|| {
                        RpcError::internal(format!(
                            "Invalid Binding Rule: unknown AuthMethod {:?}",
                            rule.auth_method
                        ))
                    })?;
                super::login::check_rule(&rule, &method)?;
                if create {
                    rule.id = uuid::Uuid::new_v4().to_string();
                }
                AclOp::BindingRuleSet { rule, create }
            }
            AclOp::Login {
                auth_method,
                bearer_token,
                meta,
            } => {
                let token = self.login(&auth_method, &bearer_token, &meta, now)?;
                return self.prepare_acl(token);
            }
            AclOp::Logout { secret } => {
                let token = self
                    .inner
                    .state
                    .read(|s| s.acl().token_by_secret(&secret, now).cloned())
                    .filter(|_| !secret.is_empty())
                    .ok_or_else(|| RpcError::permission_denied(ACL_NOT_FOUND))?;
                if token.auth_method.is_empty() {
                    // Only a token a login made can log out.
                    return Err(RpcError::permission_denied(PERMISSION_DENIED));
                }
                AclOp::TokenDelete {
                    accessor_id: token.accessor_id,
                }
            }
            other => other,
        })
    }

    /// The token a login with `bearer` against `method_name` gets, as the write that
    /// creates it; refused as Consul refuses it.
    fn login(
        &self,
        method_name: &str,
        bearer: &str,
        meta: &std::collections::BTreeMap<String, String>,
        now: u64,
    ) -> Result<AclOp, RpcError> {
        let (method, rules) = self.inner.state.read(|s| {
            let acl = s.acl();
            let method = acl.auth_method(method_name).cloned();
            let rules: Vec<_> = acl
                .binding_rules()
                .filter(|r| r.auth_method == method_name)
                .cloned()
                .collect();
            (method, rules)
        });
        let method = method.ok_or_else(|| {
            RpcError::permission_denied(format!(
                "{ACL_NOT_FOUND}: auth method {method_name:?} not found"
            ))
        })?;
        let verified = super::login::JwtMethod::parse(&method)?.verify(bearer, now / 1000)?;
        let bound = super::login::bind(rules.iter(), &verified);
        let global = method.token_locality == "global";
        if global && self.acl_primary().is_some() {
            return Err(RpcError::internal(
                "creating global tokens via auth methods is only permitted in the primary datacenter",
            ));
        }
        let dc = self.inner.config.datacenter.clone();
        // Roles and policies are bound by name, and only those that exist.
        let (roles, policies) = self.inner.state.read(|s| {
            let acl = s.acl();
            let link = |id: &String| Link {
                id: id.clone(),
                name: String::new(),
            };
            let roles: Vec<Link> = (bound.roles.iter())
                .filter_map(|n| acl.role(n, true).map(|r| link(&r.id)))
                .collect();
            let policies: Vec<Link> = (bound.policies.iter())
                .filter_map(|n| acl.policy(n, true).map(|p| link(&p.id)))
                .collect();
            (roles, policies)
        });
        if bound.services.is_empty()
            && bound.nodes.is_empty()
            && bound.templated.is_empty()
            && roles.is_empty()
            && policies.is_empty()
        {
            return Err(RpcError::permission_denied(PERMISSION_DENIED));
        }
        let mut description = "token created via login".to_string();
        if !meta.is_empty() {
            description.push_str(": ");
            description.push_str(&serde_json::to_string(meta).unwrap_or_default());
        }
        let ttl = match method.max_token_ttl.as_str() {
            "" => None,
            t => Some(cairn_shared::duration::parse(t).map_err(|e| {
                RpcError::internal(format!("Invalid Auth Method: MaxTokenTTL: {e}"))
            })?),
        }
        .filter(|t| !t.is_zero());
        let expires_ms = ttl.map(|t| now + t.as_millis() as u64);
        let token = Token {
            description,
            policies,
            roles,
            service_identities: bound
                .services
                .into_iter()
                .map(|service_name| cairn_shared::acl::ServiceIdentity {
                    service_name,
                    datacenters: Vec::new(),
                })
                .collect(),
            node_identities: bound
                .nodes
                .into_iter()
                .map(|node_name| cairn_shared::acl::NodeIdentity {
                    node_name,
                    datacenter: dc.clone(),
                })
                .collect(),
            templated_policies: bound.templated,
            local: !global,
            expiration_time: expires_ms.map(rfc3339),
            auth_method: method.name.clone(),
            ..Token::default()
        };
        Ok(AclOp::TokenSet {
            token: Box::new(token),
            create: true,
            expires_ms,
        })
    }

    /// The index an operator wrote to `<data-dir>/acl-bootstrap-reset`, if any.
    fn bootstrap_reset_index(&self) -> Option<u64> {
        let dir = self.inner.config.acl.data_dir.as_ref()?;
        let text = std::fs::read_to_string(dir.join("acl-bootstrap-reset")).ok()?;
        text.trim().parse().ok()
    }

    /// After a bootstrap that used the reset file, the file has done its job.
    pub(super) fn bootstrap_done(&self) {
        if let Some(dir) = &self.inner.config.acl.data_dir {
            let _ = std::fs::remove_file(dir.join("acl-bootstrap-reset"));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn is_kv_read(v: &KvVerb) -> bool {
    matches!(
        v,
        KvVerb::Get
            | KvVerb::GetOrEmpty
            | KvVerb::GetTree
            | KvVerb::CheckIndex
            | KvVerb::CheckSession
            | KvVerb::CheckNotExists
            | KvVerb::Unknown(_)
    )
}

fn kv_write(a: &Authorizer, verb: &KvVerb, key: &str) -> bool {
    match verb {
        KvVerb::DeleteTree => a.key_write_prefix(key),
        _ => a.allowed(Resource::Key, key, Access::Write),
    }
}

/// The service a registered check belongs to (`None`: a node check).
fn check_service(
    s: &Store,
    node: &str,
    c: &HealthCheck,
    registering: Option<&cairn_shared::api::NodeService>,
) -> Option<String> {
    if c.service_id.is_empty() {
        return None;
    }
    if let Some(svc) = registering.filter(|x| x.id == c.service_id) {
        return Some(svc.service.clone());
    }
    Some(
        s.service_of(node, &c.service_id)
            .map(|x| x.service.clone())
            .unwrap_or_else(|| c.service_id.clone()),
    )
}

/// Config entries of a service are guarded by that service; the rest by `mesh`.
fn config_entry(a: &Authorizer, kind: &str, name: &str, need: Access) -> bool {
    match kind {
        "service-defaults" | "service-resolver" | "service-router" | "service-splitter"
        | "service-intentions" => a.allowed(Resource::Service, name, need),
        _ => a.allowed(Resource::Mesh, "", need),
    }
}

fn new_token(accessor: String, secret: String, description: &str, now: u64) -> Token {
    Token {
        accessor_id: accessor,
        secret_id: secret,
        description: description.into(),
        policies: vec![Link {
            id: MANAGEMENT_POLICY_ID.into(),
            name: MANAGEMENT_POLICY_NAME.into(),
        }],
        create_time: rfc3339(now),
        ..Token::default()
    }
}

/// Wall-clock milliseconds as RFC 3339, as Go marshals a `time.Time`.
pub fn rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A content hash, base64, as Consul shows in `Hash`.
fn hash_of<T: serde::Serialize>(v: &T) -> String {
    use base64::Engine as _;
    let bytes = serde_json::to_vec(v).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

fn hashed_token(mut t: Token) -> Token {
    t.hash = hash_of(&(
        &t.description,
        &t.policies,
        &t.roles,
        &t.service_identities,
        &t.node_identities,
        t.local,
    ));
    t
}

fn hashed_policy(mut p: Policy) -> Policy {
    p.hash = hash_of(&(&p.name, &p.description, &p.rules, &p.datacenters));
    p
}
