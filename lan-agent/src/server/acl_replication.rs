//! ACLs across datacenters: the primary datacenter owns policies, roles and global tokens.
//! A secondary forwards writes of them to the primary, and its leader copies what the
//! primary holds through the WAN router about once a second (`/v1/acl/replication`
//! reports how that stands). Local tokens are written and kept in their own datacenter.

use std::time::Duration;

use cairn_shared::acl::{ANONYMOUS_SECRET, Policy, Role, Token};
use cairn_shared::rpc::wire::Forwarded;
use cairn_shared::rpc::{
    AclOp, AclReplicationStatus, Query, QueryOptions, QueryResult, ReadRequest, ReadResponse,
    RpcError, WriteOp,
};

use super::Server;
use crate::catalog::CommandOp;
use crate::rpc::Reply;

/// How often a secondary's leader compares its copy with the primary's.
const INTERVAL: Duration = Duration::from_secs(1);

/// Go's zero time, which Consul shows for "never".
const NEVER: &str = "0001-01-01T00:00:00Z";

/// A token and the millisecond it expires at.
type Expiring = (Token, Option<u64>);

/// What one round fetched from the primary, with the index of each list.
struct Fetched {
    policies: (u64, Vec<Policy>),
    roles: (u64, Vec<Role>),
    tokens: Option<(u64, Vec<Expiring>)>,
}

impl Server {
    /// The primary datacenter when this one is a secondary with ACLs on.
    pub(super) fn acl_primary(&self) -> Option<&str> {
        let acl = &self.inner.config.acl;
        let primary = acl.primary_datacenter.as_str();
        (acl.enabled && !primary.is_empty() && primary != self.inner.config.datacenter)
            .then_some(primary)
    }

    /// Whether an ACL write belongs to the primary: all but local tokens.
    pub(super) fn acl_write_is_global(&self, op: &WriteOp) -> bool {
        let WriteOp::Acl(op) = op else {
            return false;
        };
        match op {
            AclOp::TokenSet { token, .. } => !token.local,
            AclOp::TokenDelete { accessor_id } => self
                .inner
                .state
                .read(|s| s.acl().token(accessor_id).is_none_or(|t| !t.local)),
            AclOp::Bootstrap { .. }
            | AclOp::PolicySet { .. }
            | AclOp::PolicyDelete { .. }
            | AclOp::RoleSet { .. }
            | AclOp::RoleDelete { .. } => true,
            // A logout of a global token is the primary's to carry out.
            AclOp::Logout { secret } => self
                .inner
                .state
                .read(|s| s.acl().token_by_secret(secret, 0).is_some_and(|t| !t.local)),
            // The leader's own upkeep of what this datacenter holds; auth methods, binding
            // rules and the logins they allow are each datacenter's own, as in Consul.
            AclOp::Init { .. }
            | AclOp::ReapExpired
            | AclOp::Replicate { .. }
            | AclOp::AuthMethodSet { .. }
            | AclOp::AuthMethodDelete { .. }
            | AclOp::BindingRuleSet { .. }
            | AclOp::BindingRuleDelete { .. }
            | AclOp::Login { .. } => false,
        }
    }

    pub(super) fn replication_status(&self) -> AclReplicationStatus {
        let mut st = self
            .inner
            .acl_replication
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        st.running &= self.status().is_leader;
        for t in [&mut st.last_success, &mut st.last_error] {
            if t.is_empty() {
                *t = NEVER.into();
            }
        }
        st
    }

    fn set_status(&self, f: impl FnOnce(&mut AclReplicationStatus)) {
        let mut st = self
            .inner
            .acl_replication
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        f(&mut st);
    }

    /// The secondary leader's loop; returns at once in a primary.
    pub(super) async fn replicate_acls(&self, shutdown: tokio_util::sync::CancellationToken) {
        let Some(primary) = self.acl_primary().map(str::to_string) else {
            return;
        };
        let acl = &self.inner.config.acl;
        let token = acl.replication_token.clone();
        let with_tokens = acl.enable_token_replication;
        self.set_status(|st| {
            *st = AclReplicationStatus {
                enabled: !token.is_empty(),
                source_datacenter: primary.clone(),
                replication_type: if with_tokens { "tokens" } else { "policies" }.into(),
                last_success: NEVER.into(),
                last_error: NEVER.into(),
                ..AclReplicationStatus::default()
            }
        });
        if token.is_empty() {
            tracing::warn!("ACL replication is off: acl.tokens.replication is not set");
            return;
        }
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let leading = self.status().is_leader;
            self.set_status(|st| st.running = leading);
            if !leading {
                continue;
            }
            let now = crate::server::rfc3339(self.inner.clock.now_ms());
            match self.replicate_once(&primary, &token, with_tokens).await {
                Ok(f) => self.set_status(|st| {
                    st.replicated_index = f.policies.0;
                    st.replicated_role_index = f.roles.0;
                    st.replicated_token_index = f.tokens.as_ref().map_or(0, |t| t.0);
                    st.last_success = now;
                }),
                Err(e) => {
                    tracing::warn!(error = %e, datacenter = %primary, "ACL replication failed");
                    self.set_status(|st| {
                        st.last_error = now;
                        st.last_error_message = e.message;
                    });
                }
            }
        }
    }

    /// Fetches the primary's ACLs and, if this datacenter's copy differs, stores them.
    async fn replicate_once(
        &self,
        primary: &str,
        token: &str,
        with_tokens: bool,
    ) -> Result<Fetched, RpcError> {
        let policies = match self
            .read_primary(primary, token, Query::AclPolicies)
            .await?
        {
            (i, QueryResult::AclPolicies(v)) => (i, v),
            (_, other) => return Err(unexpected(&other)),
        };
        let roles = Query::AclRoles {
            policy: String::new(),
        };
        let roles = match self.read_primary(primary, token, roles).await? {
            (i, QueryResult::AclRoles(v)) => (i, v),
            (_, other) => return Err(unexpected(&other)),
        };
        let tokens = if with_tokens {
            let q = Query::AclTokens {
                policy: String::new(),
                role: String::new(),
                auth_method: String::new(),
            };
            match self.read_primary(primary, token, q).await? {
                (i, QueryResult::AclTokens(v)) => {
                    Some((i, global_tokens(v, self.inner.clock.now_ms())?))
                }
                (_, other) => return Err(unexpected(&other)),
            }
        } else {
            None
        };
        let same = self.inner.state.read(|s| {
            s.acl().same_as(
                &policies.1,
                &roles.1,
                tokens.as_ref().map(|t| t.1.as_slice()),
            )
        });
        if !same {
            let op = WriteOp::Acl(AclOp::Replicate {
                policies: policies.1.clone(),
                roles: roles.1.clone(),
                tokens: tokens.as_ref().map(|t| t.1.clone()),
            });
            self.propose(CommandOp::Client(op)).await??;
        }
        Ok(Fetched {
            policies,
            roles,
            tokens,
        })
    }

    async fn read_primary(
        &self,
        primary: &str,
        token: &str,
        query: Query,
    ) -> Result<(u64, QueryResult), RpcError> {
        let req = ReadRequest {
            query,
            options: QueryOptions {
                datacenter: primary.to_string(),
                token: token.to_string(),
                ..QueryOptions::default()
            },
        };
        match self.forward_dc(Forwarded::Read(req)).await? {
            Reply::Read(ReadResponse { meta, result }) => Ok((meta.index, result)),
            _ => Err(RpcError::internal(
                "the primary datacenter answered a read with something else",
            )),
        }
    }
}

fn unexpected(r: &QueryResult) -> RpcError {
    RpcError::internal(format!("unexpected answer from the primary: {r:?}"))
}

/// The primary's live global tokens with their expiry (an expired one is left for both
/// datacenters' reapers); refused when the replication token may not see secrets (it needs
/// `acl = "write"`, as in Consul).
fn global_tokens(list: Vec<Token>, now_ms: u64) -> Result<Vec<Expiring>, RpcError> {
    let mut out = Vec::new();
    for t in list.into_iter().filter(|t| !t.local) {
        if !cairn_shared::acl::is_uuid(&t.secret_id) && t.secret_id != ANONYMOUS_SECRET {
            return Err(RpcError::permission_denied(
                "the replication token may not read token secrets: it needs acl = \"write\"",
            ));
        }
        let expires = t.expiration_time.as_deref().and_then(|e| {
            time::OffsetDateTime::parse(e, &time::format_description::well_known::Rfc3339)
                .ok()
                .map(|at| (at.unix_timestamp_nanos() / 1_000_000).max(0) as u64)
        });
        if expires.is_none_or(|e| e > now_ms) {
            out.push((t, expires));
        }
    }
    Ok(out)
}
