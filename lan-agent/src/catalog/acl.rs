//! ACL state: tokens, policies, roles, auth methods and binding rules, the bootstrap
//! marker, and token resolution.
//!
//! Links from tokens and roles to policies and roles are stored by ID; names are filled in
//! when they are read, and links to something since deleted are left out, so renaming or
//! deleting a policy needs no rewrite of every token that names it.

use std::collections::BTreeMap;

use cairn_shared::acl::{
    AuthMethod, BindingRule, Identity, Link, MANAGEMENT_POLICY_ID, Policy, Role, Rules, Token,
    node_identity_rules, service_identity_rules, valid_name,
};
use cairn_shared::rpc::{AclOp, RpcError, WriteResult};
use serde::{Deserialize, Serialize};

use super::{Store, Table};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AclState {
    /// By accessor ID.
    tokens: BTreeMap<String, Token>,
    /// Secret → accessor ID.
    secrets: BTreeMap<String, String>,
    /// Accessor ID → wall-clock millisecond the token expires at.
    expires: BTreeMap<String, u64>,
    policies: BTreeMap<String, Policy>,
    roles: BTreeMap<String, Role>,
    /// The index of the bootstrap; 0 while bootstrap is allowed.
    bootstrap_index: u64,
    /// By name. Local to this datacenter, as Consul keeps them.
    #[serde(default)]
    auth_methods: BTreeMap<String, AuthMethod>,
    /// By ID.
    #[serde(default)]
    binding_rules: BTreeMap<String, BindingRule>,
}

fn internal(m: String) -> RpcError {
    RpcError::internal(m)
}

/// Links by ID, each to an existing `kind` found by ID or by name, without repeats.
fn links_by_id(
    links: &[Link],
    what: &str,
    kind: &str,
    has: impl Fn(&str) -> bool,
    named: impl Fn(&str) -> Option<String>,
) -> Result<Vec<Link>, RpcError> {
    let mut out: Vec<Link> = Vec::new();
    for l in links {
        let id = if !l.id.is_empty() {
            if !has(&l.id) {
                return Err(internal(format!(
                    "Invalid {what}: No such ACL {kind} with ID {:?}",
                    l.id
                )));
            }
            l.id.clone()
        } else {
            named(&l.name).ok_or_else(|| {
                internal(format!(
                    "Invalid {what}: No such ACL {kind} with name {:?}",
                    l.name
                ))
            })?
        };
        if !out.iter().any(|o| o.id == id) {
            out.push(Link {
                id,
                name: String::new(),
            });
        }
    }
    Ok(out)
}

impl AclState {
    /// Stores links by ID: each names an existing policy by ID or by name.
    fn policy_links(&self, links: &[Link], what: &str) -> Result<Vec<Link>, RpcError> {
        links_by_id(
            links,
            what,
            "policy",
            |id| self.policies.contains_key(id),
            |name| {
                let found = self.policies.values().find(|p| p.name == name);
                found.map(|p| p.id.clone())
            },
        )
    }

    fn role_links(&self, links: &[Link]) -> Result<Vec<Link>, RpcError> {
        links_by_id(
            links,
            "Token",
            "role",
            |id| self.roles.contains_key(id),
            |name| {
                let found = self.roles.values().find(|r| r.name == name);
                found.map(|r| r.id.clone())
            },
        )
    }

    /// Links as shown: current names, dangling ones left out.
    fn show_policies(&self, links: &[Link]) -> Vec<Link> {
        links
            .iter()
            .filter_map(|l| {
                self.policies.get(&l.id).map(|p| Link {
                    id: p.id.clone(),
                    name: p.name.clone(),
                })
            })
            .collect()
    }

    fn show_roles(&self, links: &[Link]) -> Vec<Link> {
        links
            .iter()
            .filter_map(|l| {
                self.roles.get(&l.id).map(|r| Link {
                    id: r.id.clone(),
                    name: r.name.clone(),
                })
            })
            .collect()
    }

    pub fn show_token(&self, t: &Token) -> Token {
        let mut t = t.clone();
        t.policies = self.show_policies(&t.policies);
        t.roles = self.show_roles(&t.roles);
        t
    }

    pub fn show_role(&self, r: &Role) -> Role {
        let mut r = r.clone();
        r.policies = self.show_policies(&r.policies);
        r
    }

    fn insert_token(&mut self, t: Token, expires_ms: Option<u64>) {
        if let Some(old) = self.tokens.get(&t.accessor_id) {
            self.secrets.remove(&old.secret_id);
        }
        self.secrets
            .insert(t.secret_id.clone(), t.accessor_id.clone());
        match expires_ms {
            Some(ms) => self.expires.insert(t.accessor_id.clone(), ms),
            None => self.expires.remove(&t.accessor_id),
        };
        self.tokens.insert(t.accessor_id.clone(), t);
    }

    fn remove_token(&mut self, accessor: &str) -> bool {
        let Some(t) = self.tokens.remove(accessor) else {
            return false;
        };
        self.secrets.remove(&t.secret_id);
        self.expires.remove(accessor);
        true
    }

    fn live(&self, accessor: &str, now_ms: u64) -> bool {
        self.expires.get(accessor).is_none_or(|e| *e > now_ms)
    }

    /// When the token with this secret expires, if it does.
    pub fn expiry_of(&self, secret: &str) -> Option<u64> {
        self.expires.get(self.secrets.get(secret)?).copied()
    }

    pub fn token_by_secret(&self, secret: &str, now_ms: u64) -> Option<&Token> {
        let acc = self.secrets.get(secret)?;
        self.live(acc, now_ms)
            .then(|| self.tokens.get(acc))
            .flatten()
    }

    /// What a secret resolves to in `datacenter` at wall-clock `now_ms`.
    pub fn resolve(&self, secret: &str, datacenter: &str, now_ms: u64) -> Identity {
        let Some(t) = self.token_by_secret(secret, now_ms) else {
            return Identity::NotFound;
        };
        let mut rules = Vec::new();
        let mut management = false;
        let mut policy = |id: &str, rules: &mut Vec<String>| {
            if let Some(p) = self.policies.get(id)
                && (p.datacenters.is_empty() || p.datacenters.iter().any(|d| d == datacenter))
            {
                management |= p.id == MANAGEMENT_POLICY_ID;
                rules.push(p.rules.clone());
            }
        };
        let mut services = t.service_identities.clone();
        let mut nodes = t.node_identities.clone();
        let mut templated = t.templated_policies.clone();
        for l in &t.policies {
            policy(&l.id, &mut rules);
        }
        for r in t.roles.iter().filter_map(|l| self.roles.get(&l.id)) {
            for l in &r.policies {
                policy(&l.id, &mut rules);
            }
            services.extend(r.service_identities.iter().cloned());
            nodes.extend(r.node_identities.iter().cloned());
            templated.extend(r.templated_policies.iter().cloned());
        }
        // Validated when stored, so one that no longer renders grants nothing.
        for tp in templated {
            if (tp.datacenters.is_empty() || tp.datacenters.iter().any(|d| d == datacenter))
                && let Ok(r) = cairn_shared::acl::templates::render(&tp)
            {
                rules.push(r);
            }
        }
        for s in services {
            if s.datacenters.is_empty() || s.datacenters.iter().any(|d| d == datacenter) {
                rules.push(service_identity_rules(&s.service_name));
            }
        }
        for n in nodes.into_iter().filter(|n| n.datacenter == datacenter) {
            rules.push(node_identity_rules(&n.node_name));
        }
        Identity::Token {
            accessor_id: t.accessor_id.clone(),
            management,
            rules,
        }
    }

    /// Whether this copy already holds exactly the primary's policies, roles and (when
    /// given) global tokens with their expiry.
    pub fn same_as(
        &self,
        policies: &[Policy],
        roles: &[Role],
        tokens: Option<&[(Token, Option<u64>)]>,
    ) -> bool {
        let same_policies = self.policies.len() == policies.len()
            && policies.iter().all(|p| self.policies.get(&p.id) == Some(p));
        let same_roles = self.roles.len() == roles.len()
            && roles.iter().all(|r| self.roles.get(&r.id) == Some(r));
        let same_tokens = tokens.is_none_or(|list| {
            let global = self.tokens.values().filter(|t| !t.local).count();
            global == list.len()
                && list.iter().all(|(t, e)| {
                    self.tokens.get(&t.accessor_id) == Some(t)
                        && self.expires.get(&t.accessor_id) == e.as_ref()
                })
        });
        same_policies && same_roles && same_tokens
    }

    pub fn tokens(&self) -> impl Iterator<Item = &Token> {
        self.tokens.values()
    }

    pub fn token(&self, accessor: &str) -> Option<&Token> {
        self.tokens.get(accessor)
    }

    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.values()
    }

    pub fn policy(&self, id: &str, by_name: bool) -> Option<&Policy> {
        if by_name {
            self.policies.values().find(|p| p.name == id)
        } else {
            self.policies.get(id)
        }
    }

    pub fn roles(&self) -> impl Iterator<Item = &Role> {
        self.roles.values()
    }

    pub fn role(&self, id: &str, by_name: bool) -> Option<&Role> {
        if by_name {
            self.roles.values().find(|r| r.name == id)
        } else {
            self.roles.get(id)
        }
    }

    pub fn auth_methods(&self) -> impl Iterator<Item = &AuthMethod> {
        self.auth_methods.values()
    }

    pub fn auth_method(&self, name: &str) -> Option<&AuthMethod> {
        self.auth_methods.get(name)
    }

    pub fn binding_rules(&self) -> impl Iterator<Item = &BindingRule> {
        self.binding_rules.values()
    }

    pub fn binding_rule(&self, id: &str) -> Option<&BindingRule> {
        self.binding_rules.get(id)
    }

    /// Tokens that expire at or before `now_ms`.
    pub fn expired(&self, now_ms: u64) -> impl Iterator<Item = &str> {
        self.expires
            .iter()
            .filter(move |(_, e)| **e <= now_ms)
            .map(|(a, _)| a.as_str())
    }
}

impl Store {
    pub fn acl(&self) -> &AclState {
        &self.acl
    }

    pub(super) fn acl_apply(
        &mut self,
        idx: u64,
        now: u64,
        op: &AclOp,
    ) -> Result<WriteResult, RpcError> {
        match op {
            AclOp::Init {
                policy,
                anonymous,
                management,
            } => {
                let a = &mut self.acl;
                if !a.policies.contains_key(&policy.id) {
                    let mut p = (**policy).clone();
                    (p.create_index, p.modify_index) = (idx, idx);
                    a.policies.insert(p.id.clone(), p);
                    self.bump(Table::AclPolicies, idx);
                }
                let a = &mut self.acl;
                if !a.tokens.contains_key(&anonymous.accessor_id) {
                    let mut t = (**anonymous).clone();
                    (t.create_index, t.modify_index) = (idx, idx);
                    a.insert_token(t, None);
                    self.bump(Table::AclTokens, idx);
                }
                let a = &mut self.acl;
                if let Some(m) = management
                    && !a.secrets.contains_key(&m.secret_id)
                {
                    let mut t = (**m).clone();
                    (t.create_index, t.modify_index) = (idx, idx);
                    a.insert_token(t, None);
                    // Consul counts the configured management token as the bootstrap.
                    if a.bootstrap_index == 0 {
                        a.bootstrap_index = idx;
                    }
                    self.bump(Table::AclTokens, idx);
                }
                Ok(WriteResult::Bool(true))
            }
            AclOp::Replicate {
                policies,
                roles,
                tokens,
            } => {
                let a = &mut self.acl;
                let policies: BTreeMap<String, Policy> =
                    policies.iter().map(|p| (p.id.clone(), p.clone())).collect();
                let roles: BTreeMap<String, Role> =
                    roles.iter().map(|r| (r.id.clone(), r.clone())).collect();
                let policies_changed = a.policies != policies;
                let roles_changed = a.roles != roles;
                a.policies = policies;
                a.roles = roles;
                let mut tokens_changed = false;
                if let Some(tokens) = tokens {
                    let global: Vec<String> = a
                        .tokens
                        .values()
                        .filter(|t| !t.local)
                        .map(|t| t.accessor_id.clone())
                        .collect();
                    let wanted: BTreeMap<&str, &(Token, Option<u64>)> = tokens
                        .iter()
                        .filter(|(t, _)| !t.local)
                        .map(|e| (e.0.accessor_id.as_str(), e))
                        .collect();
                    for id in &global {
                        if !wanted.contains_key(id.as_str()) {
                            tokens_changed |= a.remove_token(id);
                        }
                    }
                    for (id, (t, expires)) in wanted {
                        let same =
                            a.tokens.get(id) == Some(t) && a.expires.get(id) == expires.as_ref();
                        // A local token never gives way to a replicated one of its secret.
                        let clash = a.secrets.get(&t.secret_id).is_some_and(|owner| owner != id);
                        if !same && !clash {
                            a.insert_token(t.clone(), *expires);
                            tokens_changed = true;
                        }
                    }
                }
                // Only a change wakes the blocking queries of a table.
                for (changed, table) in [
                    (policies_changed, Table::AclPolicies),
                    (roles_changed, Table::AclRoles),
                    (tokens_changed, Table::AclTokens),
                ] {
                    if changed {
                        self.bump(table, idx);
                    }
                }
                Ok(WriteResult::Bool(true))
            }
            AclOp::Bootstrap {
                token,
                policy,
                reset_index,
            } => {
                let done = self.acl.bootstrap_index;
                if done != 0 && *reset_index != Some(done) {
                    return Err(RpcError::permission_denied(format!(
                        "Permission denied: ACL bootstrap no longer allowed (reset index: {done})"
                    )));
                }
                if !self.acl.policies.contains_key(&policy.id) {
                    let mut p = (**policy).clone();
                    (p.create_index, p.modify_index) = (idx, idx);
                    self.acl.policies.insert(p.id.clone(), p);
                    self.bump(Table::AclPolicies, idx);
                }
                let mut t = (**token).clone();
                (t.create_index, t.modify_index) = (idx, idx);
                self.acl.insert_token(t.clone(), None);
                self.acl.bootstrap_index = idx;
                self.bump(Table::AclTokens, idx);
                Ok(WriteResult::AclToken(Box::new(self.acl.show_token(&t))))
            }
            AclOp::TokenSet {
                token,
                create,
                expires_ms,
            } => {
                let a = &self.acl;
                let mut t = (**token).clone();
                let mut expires = *expires_ms;
                match (a.tokens.get(&t.accessor_id), create) {
                    (Some(_), true) => {
                        return Err(internal(
                            "Invalid Token: AccessorID is already in use".into(),
                        ));
                    }
                    (None, true) => {
                        if a.secrets.contains_key(&t.secret_id) {
                            return Err(internal(
                                "Invalid Token: SecretID is already in use".into(),
                            ));
                        }
                        t.create_index = idx;
                    }
                    (None, false) => {
                        return Err(internal(format!("Cannot find token {:?}", t.accessor_id)));
                    }
                    (Some(old), false) => {
                        if t.secret_id.is_empty() {
                            t.secret_id = old.secret_id.clone();
                        } else if t.secret_id != old.secret_id {
                            return Err(internal(
                                "Changing a tokens SecretID is not permitted".into(),
                            ));
                        }
                        if t.local != old.local {
                            return Err(internal(format!(
                                "Cannot toggle local mode of {}",
                                t.accessor_id
                            )));
                        }
                        t.create_index = old.create_index;
                        t.create_time = old.create_time.clone();
                        t.auth_method = old.auth_method.clone();
                        t.expiration_time = old.expiration_time.clone();
                        expires = a.expires.get(&t.accessor_id).copied();
                    }
                }
                t.policies = a.policy_links(&t.policies, "Token")?;
                t.roles = a.role_links(&t.roles)?;
                if expires.is_some_and(|e| e <= now) {
                    return Err(internal(
                        "Invalid Token: ExpirationTime cannot be in the past".into(),
                    ));
                }
                t.modify_index = idx;
                self.acl.insert_token(t.clone(), expires);
                self.bump(Table::AclTokens, idx);
                Ok(WriteResult::AclToken(Box::new(self.acl.show_token(&t))))
            }
            AclOp::TokenDelete { accessor_id } => {
                if accessor_id == cairn_shared::acl::ANONYMOUS_ACCESSOR {
                    return Err(internal(
                        "Delete operation not permitted on the anonymous token".into(),
                    ));
                }
                if self.acl.remove_token(accessor_id) {
                    self.bump(Table::AclTokens, idx);
                }
                Ok(WriteResult::Bool(true))
            }
            AclOp::ReapExpired => {
                let gone: Vec<String> = self.acl.expired(now).map(str::to_string).collect();
                for a in &gone {
                    self.acl.remove_token(a);
                }
                if !gone.is_empty() {
                    self.bump(Table::AclTokens, idx);
                }
                Ok(WriteResult::Bool(true))
            }
            AclOp::PolicySet { policy, create } => {
                let a = &self.acl;
                let mut p = (**policy).clone();
                if !valid_name(&p.name) {
                    return Err(internal(
                        "Invalid Policy: invalid Name. Only alphanumeric characters, '-' and '_' are allowed"
                            .into(),
                    ));
                }
                if a.policies
                    .values()
                    .any(|o| o.name == p.name && o.id != p.id)
                {
                    return Err(internal(format!(
                        "Invalid Policy: A Policy with Name {:?} already exists",
                        p.name
                    )));
                }
                Rules::parse(&p.rules).map_err(|e| internal(format!("Invalid Policy: {e}")))?;
                match (a.policies.get(&p.id), create) {
                    (Some(_), true) => {
                        return Err(internal("Invalid Policy: ID is already in use".into()));
                    }
                    (None, false) => {
                        return Err(internal(format!("Cannot find policy {:?}", p.id)));
                    }
                    (Some(old), false) => {
                        if old.id == MANAGEMENT_POLICY_ID && old.rules != p.rules {
                            return Err(internal(
                                "Changing the Rules for the builtin global-management policy is not permitted"
                                    .into(),
                            ));
                        }
                        p.create_index = old.create_index;
                    }
                    (None, true) => p.create_index = idx,
                }
                p.modify_index = idx;
                self.acl.policies.insert(p.id.clone(), p.clone());
                self.bump(Table::AclPolicies, idx);
                Ok(WriteResult::AclPolicy(Box::new(p)))
            }
            AclOp::PolicyDelete { id } => {
                if id == MANAGEMENT_POLICY_ID {
                    return Err(internal(
                        "Delete operation not permitted on the builtin global-management policy"
                            .into(),
                    ));
                }
                if self.acl.policies.remove(id).is_some() {
                    self.bump(Table::AclPolicies, idx);
                }
                Ok(WriteResult::Bool(true))
            }
            AclOp::RoleSet { role, create } => {
                let a = &self.acl;
                let mut r = (**role).clone();
                if !valid_name(&r.name) {
                    return Err(internal(
                        "Invalid Role: invalid Name. Only alphanumeric characters, '-' and '_' are allowed"
                            .into(),
                    ));
                }
                if a.roles.values().any(|o| o.name == r.name && o.id != r.id) {
                    return Err(internal(format!(
                        "Invalid Role: A Role with Name {:?} already exists",
                        r.name
                    )));
                }
                match (a.roles.get(&r.id), create) {
                    (Some(_), true) => {
                        return Err(internal("Invalid Role: ID is already in use".into()));
                    }
                    (None, false) => {
                        return Err(internal(format!("Cannot find role {:?}", r.id)));
                    }
                    (Some(old), false) => r.create_index = old.create_index,
                    (None, true) => r.create_index = idx,
                }
                r.policies = a.policy_links(&r.policies, "Role")?;
                r.modify_index = idx;
                self.acl.roles.insert(r.id.clone(), r.clone());
                self.bump(Table::AclRoles, idx);
                Ok(WriteResult::AclRole(Box::new(self.acl.show_role(&r))))
            }
            AclOp::RoleDelete { id } => {
                if self.acl.roles.remove(id).is_some() {
                    self.bump(Table::AclRoles, idx);
                }
                Ok(WriteResult::Bool(true))
            }
            AclOp::AuthMethodSet { method, create } => {
                let mut m = (**method).clone();
                match (self.acl.auth_methods.get(&m.name), create) {
                    (Some(_), true) => {
                        return Err(internal(format!(
                            "Invalid Auth Method: An Auth Method with Name {:?} already exists",
                            m.name
                        )));
                    }
                    (None, false) => {
                        return Err(internal(format!("Cannot find auth method {:?}", m.name)));
                    }
                    (Some(old), false) => {
                        if old.kind != m.kind {
                            return Err(internal(format!(
                                "the Type field is immutable: {:?} != {:?}",
                                m.kind, old.kind
                            )));
                        }
                        m.create_index = old.create_index;
                    }
                    (None, true) => m.create_index = idx,
                }
                m.modify_index = idx;
                self.acl.auth_methods.insert(m.name.clone(), m.clone());
                self.bump(Table::AclAuthMethods, idx);
                Ok(WriteResult::AclAuthMethod(Box::new(m)))
            }
            AclOp::AuthMethodDelete { name } => {
                if self.acl.auth_methods.remove(name).is_none() {
                    return Ok(WriteResult::Bool(true));
                }
                self.bump(Table::AclAuthMethods, idx);
                let before = self.acl.binding_rules.len();
                self.acl.binding_rules.retain(|_, r| &r.auth_method != name);
                if self.acl.binding_rules.len() != before {
                    self.bump(Table::AclBindingRules, idx);
                }
                let made: Vec<String> = self
                    .acl
                    .tokens
                    .values()
                    .filter(|t| &t.auth_method == name)
                    .map(|t| t.accessor_id.clone())
                    .collect();
                for a in &made {
                    self.acl.remove_token(a);
                }
                if !made.is_empty() {
                    self.bump(Table::AclTokens, idx);
                }
                Ok(WriteResult::Bool(true))
            }
            AclOp::BindingRuleSet { rule, create } => {
                let mut r = (**rule).clone();
                if !self.acl.auth_methods.contains_key(&r.auth_method) {
                    return Err(internal(format!(
                        "Invalid Binding Rule: unknown AuthMethod {:?}",
                        r.auth_method
                    )));
                }
                match (self.acl.binding_rules.get(&r.id), create) {
                    (Some(_), true) => {
                        return Err(internal(
                            "Invalid Binding Rule: ID is already in use".into(),
                        ));
                    }
                    (None, false) => {
                        return Err(internal(format!("Cannot find binding rule {:?}", r.id)));
                    }
                    (Some(old), false) => {
                        if old.auth_method != r.auth_method {
                            return Err(internal(format!(
                                "the AuthMethod field is immutable: {:?} != {:?}",
                                r.auth_method, old.auth_method
                            )));
                        }
                        r.create_index = old.create_index;
                    }
                    (None, true) => r.create_index = idx,
                }
                r.modify_index = idx;
                self.acl.binding_rules.insert(r.id.clone(), r.clone());
                self.bump(Table::AclBindingRules, idx);
                Ok(WriteResult::AclBindingRule(Box::new(r)))
            }
            AclOp::BindingRuleDelete { id } => {
                if self.acl.binding_rules.remove(id).is_some() {
                    self.bump(Table::AclBindingRules, idx);
                }
                Ok(WriteResult::Bool(true))
            }
            AclOp::Login { .. } | AclOp::Logout { .. } => Err(internal(
                "invariant: the leader turns a login or logout into a token write".into(),
            )),
        }
    }
}
