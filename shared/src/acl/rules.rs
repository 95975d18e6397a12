//! The ACL rules language and the authorizer built from it.
//!
//! A policy's rules are HCL (`key_prefix "app/" { policy = "read" }`, `operator = "read"`)
//! or the same shape in JSON. Rules of several policies merge per resource and name; where
//! two give the same name different access, deny beats write, write beats list, list beats
//! read. A lookup takes the exact rule for the name, else the longest prefix rule, else the
//! default policy.

use std::collections::BTreeMap;

use serde_json::Value;

/// An access level a rule grants, or what a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    /// Keys only: listing (with `enable_key_list_policy`) and reading.
    List,
    Write,
    Deny,
}

impl Access {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Self::Read),
            "list" => Some(Self::List),
            "write" => Some(Self::Write),
            "deny" => Some(Self::Deny),
            _ => None,
        }
    }

    /// Which of two rules for one name wins when policies merge.
    fn rank(self) -> u8 {
        match self {
            Self::Read => 0,
            Self::List => 1,
            Self::Write => 2,
            Self::Deny => 3,
        }
    }

    /// Whether a rule at this level grants `need`.
    fn grants(self, need: Access) -> bool {
        match self {
            Self::Write => need != Self::Deny,
            Self::List => matches!(need, Self::List | Self::Read),
            Self::Read => need == Self::Read,
            Self::Deny => false,
        }
    }
}

/// What a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Acl,
    Agent,
    Event,
    Key,
    Keyring,
    Mesh,
    Node,
    Operator,
    Peering,
    Query,
    Service,
    Session,
}

/// Resources ruled by name (`key "a"`, `key_prefix "a/"`), with their rule keywords.
const SCOPED: &[(&str, Resource)] = &[
    ("agent", Resource::Agent),
    ("event", Resource::Event),
    ("key", Resource::Key),
    ("node", Resource::Node),
    ("query", Resource::Query),
    ("service", Resource::Service),
    ("session", Resource::Session),
];

/// Resources with one rule each (`operator = "read"`).
const SINGLE: &[(&str, Resource)] = &[
    ("acl", Resource::Acl),
    ("keyring", Resource::Keyring),
    ("mesh", Resource::Mesh),
    ("operator", Resource::Operator),
    ("peering", Resource::Peering),
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RulesError {
    #[error("Failed to parse ACL rules: {0}")]
    Syntax(String),
    #[error("Invalid {resource} policy: {value}")]
    Access { resource: String, value: String },
    #[error("Failed to parse ACL rules: invalid key {0:?}")]
    UnknownKey(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Named {
    exact: BTreeMap<String, Access>,
    prefix: BTreeMap<String, Access>,
}

/// The rules of one or more policies, merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    named: BTreeMap<Resource, Named>,
    single: BTreeMap<Resource, Access>,
}

fn merge(map: &mut BTreeMap<String, Access>, name: &str, access: Access) {
    map.entry(name.to_string())
        .and_modify(|a| {
            if access.rank() > a.rank() {
                *a = access;
            }
        })
        .or_insert(access);
}

/// Rule text as a JSON value: JSON as it is, HCL through the `hcl` crate (whose blocks
/// become objects keyed by label).
fn to_value(text: &str) -> Result<Value, RulesError> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    if text.trim_start().starts_with('{') {
        return serde_json::from_str(text).map_err(|e| RulesError::Syntax(e.to_string()));
    }
    hcl::from_str::<Value>(text).map_err(|e| RulesError::Syntax(e.to_string()))
}

/// The `policy` of a rule body (`{ policy = "read" }`), or a bare string.
fn access_of(resource: &str, body: &Value) -> Result<Access, RulesError> {
    let bad = |v: &Value| RulesError::Access {
        resource: resource.to_string(),
        value: v.to_string(),
    };
    let policy = match body {
        Value::String(_) => body,
        Value::Object(m) => {
            if let Some(k) = m
                .keys()
                .find(|k| !matches!(k.as_str(), "policy" | "intentions"))
            {
                return Err(RulesError::UnknownKey(format!("{resource}.{k}")));
            }
            m.get("policy").ok_or_else(|| bad(body))?
        }
        // A block given twice: HCL's decoder keeps every copy.
        Value::Array(items) if items.len() == 1 => return access_of(resource, &items[0]),
        _ => return Err(bad(body)),
    };
    let access = policy
        .as_str()
        .and_then(Access::parse)
        .ok_or_else(|| bad(policy))?;
    // `list` exists for keys only.
    if access == Access::List && !resource.starts_with("key") {
        return Err(bad(policy));
    }
    Ok(access)
}

impl Rules {
    /// Parses one policy's rules.
    pub fn parse(text: &str) -> Result<Self, RulesError> {
        let value = to_value(text)?;
        let Value::Object(top) = value else {
            return Err(RulesError::Syntax("rules must be an object".into()));
        };
        let mut rules = Rules::default();
        for (key, body) in &top {
            if let Some((_, res)) = SINGLE.iter().find(|(k, _)| k == key) {
                let access = access_of(key, body)?;
                let slot = rules.single.entry(*res).or_insert(access);
                if access.rank() > slot.rank() {
                    *slot = access;
                }
                continue;
            }
            let (word, prefix) = match key.strip_suffix("_prefix") {
                Some(w) => (w, true),
                None => (key.as_str(), false),
            };
            let Some((_, res)) = SCOPED.iter().find(|(k, _)| *k == word) else {
                return Err(RulesError::UnknownKey(key.clone()));
            };
            let named = rules.named.entry(*res).or_default();
            let map = if prefix {
                &mut named.prefix
            } else {
                &mut named.exact
            };
            let blocks: Vec<&serde_json::Map<String, Value>> = match body {
                Value::Object(m) => vec![m],
                Value::Array(items) => items.iter().filter_map(Value::as_object).collect(),
                _ => {
                    return Err(RulesError::Access {
                        resource: key.clone(),
                        value: body.to_string(),
                    });
                }
            };
            for block in blocks {
                for (name, rule) in block {
                    merge(map, name, access_of(key, rule)?);
                }
            }
        }
        Ok(rules)
    }

    /// Merges another policy's rules into these.
    pub fn merge(&mut self, other: &Rules) {
        for (res, named) in &other.named {
            let mine = self.named.entry(*res).or_default();
            for (n, a) in &named.exact {
                merge(&mut mine.exact, n, *a);
            }
            for (n, a) in &named.prefix {
                merge(&mut mine.prefix, n, *a);
            }
        }
        for (res, a) in &other.single {
            let slot = self.single.entry(*res).or_insert(*a);
            if a.rank() > slot.rank() {
                *slot = *a;
            }
        }
    }

    /// The rule that decides `name`: exact, else the longest prefix.
    fn rule_for(&self, res: Resource, name: &str) -> Option<Access> {
        let named = self.named.get(&res)?;
        if let Some(a) = named.exact.get(name) {
            return Some(*a);
        }
        named
            .prefix
            .iter()
            .filter(|(p, _)| name.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, a)| *a)
    }

    fn single_rule(&self, res: Resource) -> Option<Access> {
        match self.single.get(&res) {
            Some(a) => Some(*a),
            // Without a rule of their own, mesh and peering follow operator.
            None if matches!(res, Resource::Mesh | Resource::Peering) => {
                self.single.get(&Resource::Operator).copied()
            }
            None => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Kind {
    /// ACLs off.
    Disabled,
    Management,
    Rules {
        rules: Rules,
        default_allow: bool,
    },
}

/// Answers what a resolved token may do.
#[derive(Debug, Clone)]
pub struct Authorizer {
    kind: Kind,
}

impl Authorizer {
    /// ACLs are off: everything is allowed and nothing is filtered.
    pub fn disabled() -> Self {
        Self {
            kind: Kind::Disabled,
        }
    }

    pub fn management() -> Self {
        Self {
            kind: Kind::Management,
        }
    }

    /// A token's merged rules over the agent's `default_policy`.
    pub fn new(rules: Rules, default_allow: bool) -> Self {
        Self {
            kind: Kind::Rules {
                rules,
                default_allow,
            },
        }
    }

    /// Compiles rule texts (already validated when their policies were stored).
    pub fn from_texts(texts: &[String], default_allow: bool) -> Result<Self, RulesError> {
        let mut merged = Rules::default();
        for t in texts {
            merged.merge(&Rules::parse(t)?);
        }
        Ok(Self::new(merged, default_allow))
    }

    pub fn enabled(&self) -> bool {
        !matches!(self.kind, Kind::Disabled)
    }

    pub fn is_management(&self) -> bool {
        matches!(self.kind, Kind::Disabled | Kind::Management)
    }

    /// Whether the token may `need` the resource named `name` (ignored for single
    /// resources such as `operator`).
    pub fn allowed(&self, res: Resource, name: &str, need: Access) -> bool {
        match &self.kind {
            Kind::Disabled | Kind::Management => true,
            Kind::Rules {
                rules,
                default_allow,
            } => {
                let rule = if SINGLE.iter().any(|(_, r)| *r == res) {
                    rules.single_rule(res)
                } else {
                    rules.rule_for(res, name)
                };
                match rule {
                    Some(a) => a.grants(need),
                    // The default policy never manages ACLs; only a rule or management does.
                    None => *default_allow && res != Resource::Acl,
                }
            }
        }
    }

    /// Write on every key under `prefix` (a recursive delete): write on the prefix itself,
    /// and no rule for anything under it that withholds write.
    pub fn key_write_prefix(&self, prefix: &str) -> bool {
        if !self.allowed(Resource::Key, prefix, Access::Write) {
            return false;
        }
        let Kind::Rules { rules, .. } = &self.kind else {
            return true;
        };
        let Some(named) = rules.named.get(&Resource::Key) else {
            return true;
        };
        named
            .exact
            .iter()
            .chain(named.prefix.iter())
            .filter(|(n, _)| n.starts_with(prefix) && n.len() > prefix.len())
            .all(|(_, a)| *a == Access::Write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authz(text: &str, default_allow: bool) -> Authorizer {
        Authorizer::new(Rules::parse(text).unwrap(), default_allow)
    }

    #[test]
    fn hcl_and_json_say_the_same() {
        let hcl = r#"
            key_prefix "app/" { policy = "read" }
            key_prefix "app/secret/" { policy = "deny" }
            key "app/config" { policy = "write" }
            service "web" { policy = "write" }
            operator = "read"
        "#;
        let json = r#"{"key_prefix": {"app/": {"policy": "read"}, "app/secret/": {"policy": "deny"}},
            "key": {"app/config": {"policy": "write"}}, "service": {"web": {"policy": "write"}},
            "operator": "read"}"#;
        assert_eq!(Rules::parse(hcl).unwrap(), Rules::parse(json).unwrap());
    }

    #[test]
    fn exact_beats_longest_prefix_which_beats_default() {
        let a = authz(
            r#"key_prefix "" { policy = "read" }
               key_prefix "app/" { policy = "write" }
               key_prefix "app/secret/" { policy = "deny" }
               key "app/secret/shared" { policy = "read" }"#,
            false,
        );
        assert!(a.allowed(Resource::Key, "other", Access::Read));
        assert!(!a.allowed(Resource::Key, "other", Access::Write));
        assert!(a.allowed(Resource::Key, "app/x", Access::Write));
        assert!(!a.allowed(Resource::Key, "app/secret/x", Access::Read));
        assert!(a.allowed(Resource::Key, "app/secret/shared", Access::Read));
        assert!(!a.allowed(Resource::Key, "app/secret/shared", Access::Write));
        assert!(!a.allowed(Resource::Service, "web", Access::Read));
        assert!(!a.key_write_prefix("app/"));
        assert!(a.key_write_prefix("app/x/"));
    }

    #[test]
    fn deny_wins_when_policies_merge() {
        let mut r = Rules::parse(r#"service "web" { policy = "write" }"#).unwrap();
        r.merge(&Rules::parse(r#"service "web" { policy = "deny" }"#).unwrap());
        r.merge(&Rules::parse(r#"service "web" { policy = "read" }"#).unwrap());
        let a = Authorizer::new(r, true);
        assert!(!a.allowed(Resource::Service, "web", Access::Read));
        assert!(a.allowed(Resource::Service, "db", Access::Write));
    }

    #[test]
    fn default_allow_never_manages_acls_and_mesh_follows_operator() {
        let a = authz(r#"operator = "write""#, true);
        assert!(!a.allowed(Resource::Acl, "", Access::Read));
        assert!(a.allowed(Resource::Mesh, "", Access::Write));
        let b = authz(r#"operator = "read""#, false);
        assert!(b.allowed(Resource::Mesh, "", Access::Read));
        assert!(!b.allowed(Resource::Mesh, "", Access::Write));
        assert!(!b.allowed(Resource::Keyring, "", Access::Read));
    }

    #[test]
    fn list_grants_read_but_not_write() {
        let a = authz(r#"key_prefix "" { policy = "list" }"#, false);
        assert!(a.allowed(Resource::Key, "a", Access::List));
        assert!(a.allowed(Resource::Key, "a", Access::Read));
        assert!(!a.allowed(Resource::Key, "a", Access::Write));
    }

    #[test]
    fn malformed_rules_are_errors() {
        assert!(matches!(
            Rules::parse(r#"key_prefix "" { policy = "#),
            Err(RulesError::Syntax(_))
        ));
        assert!(matches!(
            Rules::parse(r#"key "a" { policy = "sometimes" }"#),
            Err(RulesError::Access { .. })
        ));
        assert!(matches!(
            Rules::parse(r#"service "a" { policy = "list" }"#),
            Err(RulesError::Access { .. })
        ));
        assert!(matches!(
            Rules::parse(r#"kee "a" { policy = "read" }"#),
            Err(RulesError::UnknownKey(_))
        ));
        assert!(matches!(
            Rules::parse(r#"{"key": "#),
            Err(RulesError::Syntax(_))
        ));
        assert!(Rules::parse("").is_ok());
    }

    #[test]
    fn service_identity_rules_parse() {
        let a =
            Authorizer::from_texts(&[crate::acl::service_identity_rules("web")], false).unwrap();
        assert!(a.allowed(Resource::Service, "web", Access::Write));
        assert!(a.allowed(Resource::Service, "db", Access::Read));
        assert!(!a.allowed(Resource::Service, "db", Access::Write));
        assert!(a.allowed(Resource::Node, "n1", Access::Read));
    }
}
