//! Consul's ACL model: tokens, policies and roles as stored and shown (`/v1/acl/...`),
//! the rules language ([`rules`], HCL or JSON) and the [`Authorizer`] that answers "may
//! this token read or write that".
//!
//! A token resolves to an [`Identity`]: the rule texts of its policies, of its roles'
//! policies and of its service and node identities, or management. Servers resolve from
//! their replicated state; client agents ask a server and cache the answer.

use serde::{Deserialize, Serialize};

pub mod rules;
pub mod templates;
pub use rules::{Access, Authorizer, Resource, Rules, RulesError};

/// The built-in `global-management` policy.
pub const MANAGEMENT_POLICY_ID: &str = "00000000-0000-0000-0000-000000000001";
pub const MANAGEMENT_POLICY_NAME: &str = "global-management";
/// The anonymous token: what a request without a token (and no agent default) acts as.
pub const ANONYMOUS_ACCESSOR: &str = "00000000-0000-0000-0000-000000000002";
pub const ANONYMOUS_SECRET: &str = "anonymous";
/// Consul's wording for a refused request (403).
pub const PERMISSION_DENIED: &str = "Permission denied";
/// A token secret no token has (403).
pub const ACL_NOT_FOUND: &str = "ACL not found";
/// What every ACL endpoint answers while ACLs are off (401).
pub const ACL_DISABLED: &str = "ACL support disabled";

/// A policy or role named by a token or role, by ID or by name (either may be given; the
/// server fills in both).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Link {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(rename = "Name", default)]
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceIdentity {
    pub service_name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datacenters: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct NodeIdentity {
    pub node_name: String,
    pub datacenter: String,
}

/// A built-in policy template and the variables that fill it in, on a token or role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct TemplatedPolicy {
    pub template_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_variables: Option<TemplateVariables>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datacenters: Vec<String>,
}

/// Consul writes the variable as `name` and reads it in any case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TemplateVariables {
    #[serde(rename = "name", alias = "Name", default)]
    pub name: String,
}

/// Consul's `ACLToken`, as stored and as `/v1/acl/token` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Token {
    #[serde(rename = "AccessorID")]
    pub accessor_id: String,
    #[serde(rename = "SecretID")]
    pub secret_id: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<Link>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Link>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_identities: Vec<ServiceIdentity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_identities: Vec<NodeIdentity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templated_policies: Vec<TemplatedPolicy>,
    pub local: bool,
    /// RFC 3339; after it the token no longer works and the leader deletes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<String>,
    pub create_time: String,
    pub hash: String,
    pub create_index: u64,
    pub modify_index: u64,
}

/// Consul's `ACLPolicy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Policy {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub description: String,
    pub rules: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datacenters: Vec<String>,
    pub hash: String,
    pub create_index: u64,
    pub modify_index: u64,
}

/// Consul's `ACLRole`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Role {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<Link>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_identities: Vec<ServiceIdentity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_identities: Vec<NodeIdentity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templated_policies: Vec<TemplatedPolicy>,
    pub hash: String,
    pub create_index: u64,
    pub modify_index: u64,
}

/// What a token secret resolves to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Identity {
    /// ACLs are off: everything is allowed.
    Disabled,
    /// The secret names no live token.
    NotFound,
    Token {
        accessor_id: String,
        management: bool,
        /// Rule texts of every policy that applies, identities' rules included.
        rules: Vec<String>,
    },
}

/// The rules Consul synthesises for a service identity.
pub fn service_identity_rules(service: &str) -> String {
    format!(
        "service \"{service}\" {{ policy = \"write\" }}\n\
         service \"{service}-sidecar-proxy\" {{ policy = \"write\" }}\n\
         service_prefix \"\" {{ policy = \"read\" }}\n\
         node_prefix \"\" {{ policy = \"read\" }}\n"
    )
}

/// The rules Consul synthesises for a node identity.
pub fn node_identity_rules(node: &str) -> String {
    format!(
        "node \"{node}\" {{ policy = \"write\" }}\n\
         service_prefix \"\" {{ policy = \"read\" }}\n"
    )
}

/// Whether `s` is a UUID as Consul writes them (lowercase or not, with dashes).
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

/// Policy and role names: `^[A-Za-z0-9\-_]{1,128}$`, as Consul validates them.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
