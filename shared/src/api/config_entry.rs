//! Config entries (`/v1/config`): named, kinded documents stored through Raft. Cairn keeps
//! each entry's body as the JSON it was given (top-level keys in Consul's spelling) and
//! checks what Consul checks before it stores one: a known kind, the keys that kind has,
//! and the name rules of each kind.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ConfigEntry {
    pub kind: String,
    pub name: String,
    /// The entry's other top-level fields, as a JSON object's text.
    pub body: String,
    pub create_index: u64,
    pub modify_index: u64,
}

/// Top-level keys common to every kind.
const COMMON: &[&str] = &[
    "Kind",
    "Name",
    "Partition",
    "Namespace",
    "Meta",
    "CreateIndex",
    "ModifyIndex",
];

/// The kinds Consul knows, with the other top-level keys each one's Go struct has.
const KINDS: &[(&str, &[&str])] = &[
    (
        "service-defaults",
        &[
            "Protocol",
            "Mode",
            "TransparentProxy",
            "MutualTLSMode",
            "MeshGateway",
            "Expose",
            "ExternalSNI",
            "UpstreamConfig",
            "Destination",
            "MaxInboundConnections",
            "LocalConnectTimeoutMs",
            "LocalRequestTimeoutMs",
            "BalanceInboundConnections",
            "RateLimits",
            "EnvoyExtensions",
        ],
    ),
    (
        "proxy-defaults",
        &[
            "Config",
            "Mode",
            "TransparentProxy",
            "MutualTLSMode",
            "MeshGateway",
            "Expose",
            "AccessLogs",
            "EnvoyExtensions",
            "FailoverPolicy",
            "PrioritizeByLocality",
        ],
    ),
    (
        "service-resolver",
        &[
            "DefaultSubset",
            "Subsets",
            "Redirect",
            "Failover",
            "ConnectTimeout",
            "RequestTimeout",
            "LoadBalancer",
            "PrioritizeByLocality",
        ],
    ),
    ("service-router", &["Routes"]),
    ("service-splitter", &["Splits"]),
    ("ingress-gateway", &["TLS", "Listeners", "Defaults"]),
    ("terminating-gateway", &["Services"]),
    ("service-intentions", &["Sources", "JWT"]),
    (
        "mesh",
        &[
            "TransparentProxy",
            "AllowEnablingPermissiveMutualTLS",
            "ValidateClusters",
            "TLS",
            "HTTP",
            "Peering",
        ],
    ),
    ("exported-services", &["Services"]),
];

/// Whether `kind` is one Consul knows.
pub fn known_kind(kind: &str) -> bool {
    KINDS.iter().any(|(k, _)| *k == kind)
}

/// Consul's message for an unknown kind.
pub fn unknown_kind(kind: &str) -> String {
    format!("invalid config entry kind: {kind}")
}

/// Go's decoder matches keys ignoring case, and Consul's config decoder also takes
/// `snake_case`.
fn fold(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// A decoding failure (Consul answers 400) or a validation failure (500).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryError {
    Decode(String),
    Invalid(String),
}

impl ConfigEntry {
    /// Reads a `PUT /v1/config` body: keys respelled as Consul's, unknown ones refused,
    /// the kind's name rules applied.
    pub fn from_json(raw: &Value) -> Result<Self, EntryError> {
        let Some(obj) = raw.as_object() else {
            return Err(EntryError::Decode("payload is not a JSON object".into()));
        };
        let kind = obj
            .iter()
            .find(|(k, _)| fold(k) == "kind")
            .and_then(|(_, v)| v.as_str())
            .ok_or_else(|| {
                EntryError::Decode(
                    "Payload does not contain a kind/Kind key at the top level".into(),
                )
            })?
            .to_string();
        let Some((_, fields)) = KINDS.iter().find(|(k, _)| *k == kind) else {
            return Err(EntryError::Decode(unknown_kind(&kind)));
        };
        let mut body = Map::new();
        let mut unknown = Vec::new();
        for (key, value) in obj {
            let folded = fold(key);
            match COMMON
                .iter()
                .chain(fields.iter())
                .find(|f| fold(f) == folded)
            {
                Some(name) => {
                    body.insert((*name).to_string(), value.clone());
                }
                None => unknown.push(key.clone()),
            }
        }
        if !unknown.is_empty() {
            let items: String = unknown
                .iter()
                .map(|k| format!("\t* invalid config key \"{k}\"\n"))
                .collect();
            let n = unknown.len();
            let noun = if n == 1 { "error" } else { "errors" };
            return Err(EntryError::Decode(format!(
                "{n} {noun} occurred:\n{items}\n"
            )));
        }
        let name = match body.remove("Name") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(EntryError::Decode(format!(
                    "'Name' expected type 'string', got '{}'",
                    json_type(&other)
                )));
            }
        };
        for drop in ["Kind", "CreateIndex", "ModifyIndex"] {
            body.remove(drop);
        }
        let name = validate_name(&kind, name)?;
        Ok(Self {
            kind,
            name,
            body: Value::Object(body).to_string(),
            create_index: 0,
            modify_index: 0,
        })
    }

    /// The entry as Consul shows it: `Kind`, `Name`, its fields, then its indexes.
    pub fn view(&self) -> EntryView {
        let body = match serde_json::from_str::<Value>(&self.body) {
            Ok(Value::Object(body)) => body,
            _ => Map::new(),
        };
        EntryView {
            kind: self.kind.clone(),
            name: self.name.clone(),
            body,
            create_index: self.create_index,
            modify_index: self.modify_index,
        }
    }
}

/// A config entry in its JSON form, fields in Consul's order.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EntryView {
    pub kind: String,
    pub name: String,
    #[serde(flatten)]
    pub body: Map<String, Value>,
    pub create_index: u64,
    pub modify_index: u64,
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "bool",
        Value::Number(_) => "float64",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
        Value::String(_) => "string",
        Value::Null => "nil",
    }
}

/// Each kind's rules for its name, with Consul's messages.
fn validate_name(kind: &str, name: String) -> Result<String, EntryError> {
    let only = |want: &str| {
        if name == want {
            Ok(name.clone())
        } else {
            Err(EntryError::Invalid(format!(
                "invalid name ({name:?}), only {want:?} is supported"
            )))
        }
    };
    match kind {
        "proxy-defaults" => only("global"),
        // The mesh entry has one name whatever was sent.
        "mesh" => Ok("mesh".into()),
        "exported-services" => only("default"),
        _ if name.is_empty() => Err(EntryError::Invalid("Name is required".into())),
        "service-intentions" => Ok(name),
        _ if name == "*" => Err(EntryError::Invalid(format!(
            "{kind} name must be the name of a service, and not a wildcard"
        ))),
        _ => Ok(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_respelled_and_unknown_ones_refused() {
        let e = ConfigEntry::from_json(
            &json!({"kind": "service-defaults", "name": "web", "protocol": "http"}),
        )
        .unwrap();
        assert_eq!(
            (e.kind.as_str(), e.name.as_str()),
            ("service-defaults", "web")
        );
        assert_eq!(e.view().body["Protocol"], "http");
        assert_eq!(
            ConfigEntry::from_json(&json!({"Kind": "service-defaults", "Name": "web", "Foo": 1})),
            Err(EntryError::Decode(
                "1 error occurred:\n\t* invalid config key \"Foo\"\n\n".into()
            ))
        );
        assert_eq!(
            ConfigEntry::from_json(&json!({"Kind": "nope", "Name": "x"})),
            Err(EntryError::Decode("invalid config entry kind: nope".into()))
        );
        assert!(matches!(
            ConfigEntry::from_json(&json!({"Name": "x"})),
            Err(EntryError::Decode(_))
        ));
    }

    #[test]
    fn names_follow_each_kinds_rules() {
        let name = |v: Value| ConfigEntry::from_json(&v).map(|e| e.name);
        assert_eq!(
            name(json!({"Kind": "proxy-defaults", "Name": "global"})),
            Ok("global".into())
        );
        assert_eq!(
            name(json!({"Kind": "proxy-defaults", "Name": "web"})),
            Err(EntryError::Invalid(
                "invalid name (\"web\"), only \"global\" is supported".into()
            ))
        );
        assert_eq!(name(json!({"Kind": "mesh"})), Ok("mesh".into()));
        assert_eq!(
            name(json!({"Kind": "service-router"})),
            Err(EntryError::Invalid("Name is required".into()))
        );
        assert_eq!(
            name(json!({"Kind": "service-intentions", "Name": "*"})),
            Ok("*".into())
        );
        assert!(name(json!({"Kind": "service-defaults", "Name": "*"})).is_err());
    }
}
