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
    /// The auth method whose login made this token (`/v1/acl/login`); only such tokens
    /// may log out.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub auth_method: String,
}

/// Consul's `ACLAuthMethod`: how `/v1/acl/login` checks a bearer token (Cairn knows the
/// `jwt` type), and what the tokens it makes look like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct AuthMethod {
    pub name: String,
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub display_name: String,
    pub description: String,
    /// A Go duration ("10m0s"); empty when tokens do not expire.
    #[serde(
        rename = "MaxTokenTTL",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub max_token_ttl: String,
    /// `local` (the default) or `global`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token_locality: String,
    /// The type's settings, kept as given (JSON text, so any encoding stores it).
    #[serde(with = "json_text", default)]
    pub config: serde_json::Value,
    pub create_index: u64,
    pub modify_index: u64,
}

/// Consul's `ACLBindingRule`: which logins of an auth method get what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct BindingRule {
    #[serde(rename = "ID")]
    pub id: String,
    pub description: String,
    pub auth_method: String,
    /// A filter expression over the verified claims (`value.x`, `list.y`); empty matches all.
    pub selector: String,
    /// `service`, `node`, `role`, `policy` or `templated-policy`.
    pub bind_type: String,
    /// The name bound, with `${value.x}` filled in from the claims.
    pub bind_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind_vars: Option<TemplateVariables>,
    pub create_index: u64,
    pub modify_index: u64,
}

/// A JSON value stored as its text: the state is MessagePack, which has no "any" type a
/// snapshot could read back without knowing the shape.
mod json_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &serde_json::Value, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            serde::Serialize::serialize(v, s)
        } else {
            s.serialize_str(&v.to_string())
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<serde_json::Value, D::Error> {
        if d.is_human_readable() {
            serde_json::Value::deserialize(d)
        } else {
            let text = String::deserialize(d)?;
            serde_json::from_str(&text).map_err(serde::de::Error::custom)
        }
    }
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
