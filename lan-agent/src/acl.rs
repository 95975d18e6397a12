//! The agent's side of ACLs: the tokens it holds (`acl.tokens`, `PUT /v1/agent/token/:type`),
//! and authorizers for its own endpoints (`/v1/agent/...`), resolved by a server and trusted
//! for `token_ttl`. Everything that reaches the catalog is checked by the servers instead
//! (`server/acl.rs`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use cairn_shared::acl::{ACL_NOT_FOUND, Access, Authorizer, Identity, Resource};
use cairn_shared::rpc::{ErrorKind, Query, QueryOptions, QueryResult, ReadRequest, RpcError};
use serde::{Deserialize, Serialize};

use crate::config::{AclConfig, AclTokens};
use crate::server::Rpc;

/// Tokens an agent keeps across restarts with `enable_token_persistence`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    #[serde(default)]
    default: String,
    #[serde(default)]
    agent: String,
    #[serde(default)]
    agent_recovery: String,
    #[serde(default)]
    replication: String,
}

#[derive(Debug)]
pub struct AgentAcl {
    pub settings: AclConfig,
    tokens: RwLock<AclTokens>,
    cache: Mutex<HashMap<String, (Instant, Arc<Authorizer>)>>,
    /// `<data-dir>/acl-tokens.json` when tokens persist.
    persist: Option<PathBuf>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AgentAcl {
    pub fn new(settings: AclConfig, data_dir: Option<&std::path::Path>) -> Self {
        let mut tokens = settings.tokens.clone();
        let persist = data_dir
            .filter(|_| settings.enable_token_persistence)
            .map(|d| d.join("acl-tokens.json"));
        // Tokens set through the API outlive the config's, as in Consul.
        if let Some(p) = &persist
            && let Ok(text) = std::fs::read_to_string(p)
            && let Ok(saved) = serde_json::from_str::<Persisted>(&text)
        {
            for (slot, v) in [
                (&mut tokens.default, saved.default),
                (&mut tokens.agent, saved.agent),
                (&mut tokens.agent_recovery, saved.agent_recovery),
                (&mut tokens.replication, saved.replication),
            ] {
                if !v.is_empty() {
                    *slot = v;
                }
            }
        }
        Self {
            settings,
            tokens: RwLock::new(tokens),
            cache: Mutex::default(),
            persist,
        }
    }

    /// ACLs off, as every agent without an `acl` block.
    pub fn disabled() -> Self {
        Self::new(AclConfig::default(), None)
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    fn tokens(&self) -> AclTokens {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What a request without a token acts as (empty: the anonymous token).
    pub fn default_token(&self) -> String {
        self.tokens().default
    }

    /// What the agent's own writes (anti-entropy, coordinates) carry.
    pub fn agent_token(&self) -> String {
        let t = self.tokens();
        if t.agent.is_empty() {
            t.default
        } else {
            t.agent
        }
    }

    /// `PUT /v1/agent/token/:type`, with Consul's older names for the types.
    pub fn set_token(&self, kind: &str, value: String) -> Result<(), String> {
        {
            let mut t = self.tokens.write().unwrap_or_else(|p| p.into_inner());
            let slot = match kind {
                "default" | "acl_token" => &mut t.default,
                "agent" | "acl_agent_token" => &mut t.agent,
                "agent_recovery" | "agent_master" | "acl_agent_master_token" => {
                    &mut t.agent_recovery
                }
                "replication" | "acl_replication_token" => &mut t.replication,
                other => return Err(format!("Token {other:?} is unknown")),
            };
            *slot = value;
        }
        if let Some(p) = &self.persist {
            let t = self.tokens();
            let saved = Persisted {
                default: t.default,
                agent: t.agent,
                agent_recovery: t.agent_recovery,
                replication: t.replication,
            };
            let text = serde_json::to_string(&saved).map_err(|e| e.to_string())?;
            crate::local::persist::write_atomic(p, text.as_bytes())
                .map_err(|e| format!("Failed to persist tokens: {e}"))?;
        }
        Ok(())
    }

    /// The authorizer for `token` on this agent's own endpoints.
    pub async fn authorizer(
        &self,
        rpc: &dyn Rpc,
        token: &str,
    ) -> Result<Arc<Authorizer>, RpcError> {
        if !self.enabled() {
            return Ok(Arc::new(Authorizer::disabled()));
        }
        let recovery = self.tokens().agent_recovery;
        if !token.is_empty() && token == recovery {
            return Ok(Arc::new(Authorizer::management()));
        }
        let fresh = lock(&self.cache)
            .get(token)
            .filter(|(at, _)| at.elapsed() < self.settings.token_ttl)
            .map(|(_, a)| a.clone());
        if let Some(a) = fresh {
            return Ok(a);
        }
        let req = ReadRequest {
            query: Query::AclResolve,
            options: QueryOptions {
                token: token.to_string(),
                ..QueryOptions::default()
            },
        };
        let identity = match rpc.read(req).await {
            Ok(r) => match r.result {
                QueryResult::AclIdentity(i) => i,
                other => {
                    return Err(RpcError::internal(format!(
                        "unexpected answer to a token resolution: {other:?}"
                    )));
                }
            },
            // No server answers: `down_policy` decides.
            Err(e)
                if matches!(
                    e.kind,
                    ErrorKind::NoLeader | ErrorKind::NoServer | ErrorKind::Internal
                ) =>
            {
                return self.down(token, e);
            }
            Err(e) => return Err(e),
        };
        let authz = Arc::new(match identity {
            Identity::Disabled => Authorizer::disabled(),
            Identity::NotFound => return Err(RpcError::permission_denied(ACL_NOT_FOUND)),
            Identity::Token {
                management: true, ..
            } => Authorizer::management(),
            Identity::Token { rules, .. } => {
                Authorizer::from_texts(&rules, self.settings.default_allow)
                    .map_err(|e| RpcError::internal(e.to_string()))?
            }
        });
        let mut cache = lock(&self.cache);
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(token.to_string(), (Instant::now(), authz.clone()));
        Ok(authz)
    }

    fn down(&self, token: &str, e: RpcError) -> Result<Arc<Authorizer>, RpcError> {
        match self.settings.down_policy.as_str() {
            "allow" => Ok(Arc::new(Authorizer::disabled())),
            "deny" => Err(e),
            // extend-cache and async-cache: what was known last, however old.
            _ => lock(&self.cache)
                .get(token)
                .map(|(_, a)| a.clone())
                .ok_or(e),
        }
    }

    /// Refuses unless `token` may `need` the resource.
    pub async fn require(
        &self,
        rpc: &dyn Rpc,
        token: &str,
        res: Resource,
        name: &str,
        need: Access,
    ) -> Result<(), RpcError> {
        let a = self.authorizer(rpc, token).await?;
        if a.allowed(res, name, need) {
            Ok(())
        } else {
            Err(RpcError::permission_denied(
                cairn_shared::acl::PERMISSION_DENIED,
            ))
        }
    }
}
