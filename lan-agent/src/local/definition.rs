//! Service and check definitions as an agent receives them: from `/v1/agent/service/register`,
//! `/v1/agent/check/register` and `service`/`check` blocks of config files.
//!
//! Field names match Consul's in any case and in `snake_case` (the HTTP decoder folds
//! them); durations are Go strings or nanosecond numbers. [`CheckType::validate`] applies
//! Consul's rules (an interval for HTTP/TCP/script checks, a TTL otherwise, not both).

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_shared::api::{CheckStatus, HealthCheck, NodeService, ServiceAddress, Weights};
use cairn_shared::duration;
use serde::{Deserialize, Deserializer, Serialize};

/// `Option<Duration>` from a Go duration string or nanoseconds; negative values are kept
/// as an error marker so validation can name them.
mod opt_duration {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{Duration, duration};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Nanos(i64),
        Float(f64),
    }

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&duration::format(*d)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let raw: Option<Raw> = Option::deserialize(d)?;
        let nanos = match raw {
            None => return Ok(None),
            Some(Raw::Text(t)) if t.is_empty() => return Ok(None),
            Some(Raw::Text(t)) => duration::parse_nanos(&t).map_err(serde::de::Error::custom)?,
            Some(Raw::Nanos(n)) => i128::from(n),
            Some(Raw::Float(f)) => f as i128,
        };
        if nanos < 0 {
            return Err(serde::de::Error::custom(format!(
                "negative duration {} is not allowed",
                duration::format_nanos(nanos)
            )));
        }
        Ok(Some(Duration::from_nanos(nanos as u64)))
    }
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// How a check is run, Consul's `CheckType` (with `CheckDefinition`'s `ServiceID` and
/// `Token`). Unknown fields are refused, as Consul's decoder does; fields of check kinds
/// this agent does not run are accepted so `validate` can say so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct CheckType {
    #[serde(rename = "CheckID", alias = "ID")]
    pub check_id: String,
    pub name: String,
    pub status: Option<String>,
    pub notes: String,
    #[serde(alias = "Args", deserialize_with = "null_default")]
    pub script_args: Vec<String>,
    #[serde(rename = "HTTP")]
    pub http: String,
    #[serde(deserialize_with = "null_default")]
    pub header: BTreeMap<String, Vec<String>>,
    pub method: String,
    pub body: String,
    #[serde(rename = "DisableRedirects")]
    pub disable_redirects: bool,
    #[serde(rename = "TCP")]
    pub tcp: String,
    #[serde(rename = "UDP")]
    pub udp: String,
    #[serde(rename = "GRPC")]
    pub grpc: String,
    #[serde(with = "opt_duration")]
    pub interval: Option<Duration>,
    #[serde(with = "opt_duration")]
    pub timeout: Option<Duration>,
    #[serde(rename = "TTL", with = "opt_duration")]
    pub ttl: Option<Duration>,
    #[serde(rename = "TLSServerName")]
    pub tls_server_name: String,
    #[serde(rename = "TLSSkipVerify")]
    pub tls_skip_verify: bool,
    pub success_before_passing: u32,
    pub failures_before_warning: u32,
    pub failures_before_critical: u32,
    #[serde(with = "opt_duration")]
    pub deregister_critical_service_after: Option<Duration>,
    pub output_max_size: i64,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    #[serde(skip_serializing)]
    pub token: String,
    /// Check kinds Consul has and this agent does not run (gRPC, UDP, H2PING, Docker,
    /// alias, OS service, TLS-over-TCP); kept only to refuse them clearly.
    #[serde(rename = "H2PING", skip_serializing)]
    pub h2ping: String,
    #[serde(rename = "H2PingUseTLS", skip_serializing)]
    pub h2ping_use_tls: bool,
    #[serde(rename = "GRPCUseTLS", skip_serializing)]
    pub grpc_use_tls: bool,
    #[serde(rename = "TCPUseTLS", skip_serializing)]
    pub tcp_use_tls: bool,
    #[serde(rename = "DockerContainerID", skip_serializing)]
    pub docker_container_id: String,
    #[serde(skip_serializing)]
    pub shell: String,
    #[serde(skip_serializing)]
    pub alias_node: String,
    #[serde(skip_serializing)]
    pub alias_service: String,
    #[serde(rename = "OSService", skip_serializing)]
    pub os_service: String,
    #[serde(rename = "ProxyHTTP", skip_serializing)]
    pub proxy_http: String,
    #[serde(rename = "ProxyGRPC", skip_serializing)]
    pub proxy_grpc: String,
}

/// What kind of runner a check gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    Http,
    Tcp,
    Script,
    Ttl,
}

impl CheckKind {
    /// The `Type` field Consul shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Tcp => "tcp",
            Self::Script => "script",
            Self::Ttl => "ttl",
        }
    }
}

/// Consul's default `check_output_max_size`.
pub const DEFAULT_OUTPUT_MAX: usize = 4096;
/// Consul's default HTTP/TCP check timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Consul's default script check timeout.
pub const DEFAULT_SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Consul's floor for `deregister_critical_service_after`.
pub const MIN_DEREGISTER_AFTER: Duration = Duration::from_secs(60);

impl CheckType {
    /// The runner this definition needs; `None` when it names no kind (caught by `validate`).
    pub fn kind(&self) -> Option<CheckKind> {
        if !self.script_args.is_empty() {
            Some(CheckKind::Script)
        } else if !self.http.is_empty() {
            Some(CheckKind::Http)
        } else if !self.tcp.is_empty() {
            Some(CheckKind::Tcp)
        } else if self.ttl.is_some_and(|t| !t.is_zero()) {
            Some(CheckKind::Ttl)
        } else {
            None
        }
    }

    /// Consul's `CheckType.Validate`, plus a refusal of ambiguous definitions (more than one
    /// of HTTP, TCP and args), which Consul would silently resolve by precedence.
    pub fn validate(&self) -> Result<(), String> {
        let unsupported = [
            ("UDP", !self.udp.is_empty()),
            ("GRPC", !self.grpc.is_empty() || self.grpc_use_tls),
            ("H2PING", !self.h2ping.is_empty() || self.h2ping_use_tls),
            ("TCPUseTLS", self.tcp_use_tls),
            ("DockerContainerID", !self.docker_container_id.is_empty()),
            ("AliasNode", !self.alias_node.is_empty()),
            ("AliasService", !self.alias_service.is_empty()),
            ("OSService", !self.os_service.is_empty()),
        ];
        if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
            return Err(format!("{field} checks are not supported by this agent"));
        }
        let targets = [
            !self.script_args.is_empty(),
            !self.http.is_empty(),
            !self.tcp.is_empty(),
        ];
        if targets.iter().filter(|t| **t).count() > 1 {
            return Err("Only one of Args, HTTP or TCP may be given".into());
        }
        let interval_check = targets.iter().any(|t| *t);
        let interval = self.interval.unwrap_or_default();
        let ttl = self.ttl.unwrap_or_default();
        if !interval.is_zero() && !ttl.is_zero() {
            return Err("Interval and TTL cannot both be specified".into());
        }
        if interval_check && interval.is_zero() {
            return Err(
                "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"
                    .into(),
            );
        }
        if !interval_check && ttl.is_zero() {
            return Err("TTL must be > 0 for TTL checks".into());
        }
        if self.output_max_size < 0 {
            return Err("MaxOutputMaxSize must be positive".into());
        }
        if self.failures_before_warning > self.failures_before_critical {
            return Err("FailuresBeforeWarning can't be higher than FailuresBeforeCritical".into());
        }
        if let Some(status) = &self.status
            && !status.is_empty()
            && status.parse::<CheckStatus>().is_err()
        {
            return Err("Status for checks must 'passing', 'warning', 'critical'".into());
        }
        Ok(())
    }

    pub fn timeout_or_default(&self) -> Duration {
        let default = match self.kind() {
            Some(CheckKind::Script) => DEFAULT_SCRIPT_TIMEOUT,
            _ => DEFAULT_TIMEOUT,
        };
        self.timeout.filter(|t| !t.is_zero()).unwrap_or(default)
    }

    pub fn output_max(&self) -> usize {
        match self.output_max_size {
            n if n > 0 => n as usize,
            _ => DEFAULT_OUTPUT_MAX,
        }
    }

    /// The initial status: the one given, else critical (Consul's default).
    pub fn initial_status(&self) -> CheckStatus {
        self.status
            .as_deref()
            .and_then(|s| s.parse().ok())
            .unwrap_or(CheckStatus::Critical)
    }

    /// Consul's `Definition` object, with only the fields that are set.
    pub fn definition(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        let mut put = |k: &str, v: serde_json::Value| {
            m.insert(k.to_string(), v);
        };
        if !self.http.is_empty() {
            put("HTTP", self.http.clone().into());
            if !self.method.is_empty() {
                put("Method", self.method.clone().into());
            }
            if !self.header.is_empty() {
                put("Header", serde_json::json!(self.header));
            }
            if !self.body.is_empty() {
                put("Body", self.body.clone().into());
            }
            if self.tls_skip_verify {
                put("TLSSkipVerify", true.into());
            }
            if !self.tls_server_name.is_empty() {
                put("TLSServerName", self.tls_server_name.clone().into());
            }
        }
        if !self.tcp.is_empty() {
            put("TCP", self.tcp.clone().into());
        }
        if !self.script_args.is_empty() {
            put("ScriptArgs", serde_json::json!(self.script_args));
        }
        for (key, d) in [
            ("Interval", self.interval),
            ("Timeout", self.timeout),
            ("TTL", self.ttl),
            (
                "DeregisterCriticalServiceAfter",
                self.deregister_critical_service_after,
            ),
        ] {
            if let Some(d) = d.filter(|d| !d.is_zero()) {
                put(key, duration::format(d).into());
            }
        }
        m
    }

    /// The catalog check this definition starts as.
    pub fn to_health_check(&self, node: &str, service: Option<&NodeService>) -> HealthCheck {
        // Consul shows unset durations as "0s" on agent checks.
        let fmt = |d: Option<Duration>| duration::format(d.unwrap_or_default());
        HealthCheck {
            node: node.to_string(),
            check_id: self.check_id.clone(),
            name: self.name.clone(),
            status: self.initial_status(),
            notes: self.notes.clone(),
            output: String::new(),
            service_id: service.map(|s| s.id.clone()).unwrap_or_default(),
            service_name: service.map(|s| s.service.clone()).unwrap_or_default(),
            service_tags: service.map(|s| s.tags.clone()).unwrap_or_default(),
            check_type: self.kind().map(CheckKind::as_str).unwrap_or("").to_string(),
            interval: fmt(self.interval),
            // Except an HTTP check's timeout, which Consul shows with its 10 s default.
            timeout: match self.kind() {
                Some(CheckKind::Http) => duration::format(self.timeout_or_default()),
                _ => fmt(self.timeout),
            },
            definition: self.definition(),
            ..HealthCheck::default()
        }
    }
}

/// A service as an agent registers it, Consul's `ServiceDefinition`. Unknown fields are
/// refused, as Consul's decoder does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
pub struct ServiceDefinition {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub kind: String,
    #[serde(deserialize_with = "null_default")]
    pub tags: Vec<String>,
    pub address: String,
    #[serde(deserialize_with = "null_default")]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    #[serde(deserialize_with = "null_default")]
    pub meta: BTreeMap<String, String>,
    pub port: u16,
    pub socket_path: String,
    pub check: Option<CheckType>,
    #[serde(deserialize_with = "null_default")]
    pub checks: Vec<CheckType>,
    pub weights: Option<Weights>,
    pub token: String,
    pub enable_tag_override: bool,
    /// Mesh and enterprise fields Consul's clients may send; accepted, and refused by
    /// `validate` when they ask for something.
    #[serde(skip_serializing)]
    pub proxy: Option<serde_json::Value>,
    #[serde(skip_serializing)]
    pub connect: Option<serde_json::Value>,
    #[serde(skip_serializing)]
    pub namespace: Option<serde_json::Value>,
    #[serde(skip_serializing)]
    pub partition: Option<serde_json::Value>,
    #[serde(skip_serializing)]
    pub locality: Option<serde_json::Value>,
}

impl ServiceDefinition {
    /// Consul's request validation for `/v1/agent/service/register`; the message is the
    /// whole 400 body.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("Missing service name".into());
        }
        if !self.kind.is_empty() {
            return Err(format!(
                "Invalid service kind: \"{}\" (mesh gateways and proxies are not supported)",
                self.kind
            ));
        }
        let asks = |v: &Option<serde_json::Value>| {
            v.as_ref().is_some_and(|v| match v {
                serde_json::Value::Null => false,
                serde_json::Value::Object(m) => !m.is_empty(),
                serde_json::Value::String(s) => !s.is_empty(),
                _ => true,
            })
        };
        if asks(&self.proxy) || asks(&self.connect) {
            return Err("Connect proxies and sidecars are not supported by this agent".into());
        }
        if matches!(self.address.as_str(), "0.0.0.0" | "::" | "[::]") {
            return Err("Invalid service address".into());
        }
        if let Some(w) = self.weights {
            if w.passing < 1 {
                return Err("Invalid Weights: Passing must be greater than 0".into());
            }
            if w.warning < 0 {
                return Err("Invalid Weights: Warning must be greater or equal than 0".into());
            }
            if w.passing > 65535 || w.warning > 65535 {
                return Err("Invalid Weights: weights must be lower than 65536".into());
            }
        }
        validate_meta(&self.meta).map_err(|e| format!("Invalid Service Meta: {e}"))?;
        for check in self.check_types() {
            check
                .validate()
                .map_err(|e| format!("Invalid check: {e}"))?;
        }
        Ok(())
    }

    /// The service as the catalog holds it.
    pub fn node_service(&self) -> NodeService {
        NodeService {
            id: if self.id.is_empty() {
                self.name.clone()
            } else {
                self.id.clone()
            },
            service: self.name.clone(),
            tags: self.tags.clone(),
            address: self.address.clone(),
            tagged_addresses: self.tagged_addresses.clone(),
            meta: self.meta.clone(),
            port: self.port,
            socket_path: self.socket_path.clone(),
            weights: self.weights.unwrap_or_default(),
            enable_tag_override: self.enable_tag_override,
            create_index: 0,
            modify_index: 0,
        }
    }

    /// The service's checks with Consul's generated IDs and names: `service:<id>` for one,
    /// `service:<id>:<n>` (from 1) for several, named `Service '<name>' check`.
    pub fn check_types(&self) -> Vec<CheckType> {
        let id = if self.id.is_empty() {
            &self.name
        } else {
            &self.id
        };
        let all: Vec<&CheckType> = self.check.iter().chain(&self.checks).collect();
        let many = all.len() > 1;
        all.into_iter()
            .enumerate()
            .map(|(i, c)| {
                let mut c = c.clone();
                if c.check_id.is_empty() {
                    c.check_id = if many {
                        format!("service:{id}:{}", i + 1)
                    } else {
                        format!("service:{id}")
                    };
                }
                if c.name.is_empty() {
                    c.name = format!("Service '{}' check", self.name);
                }
                c.service_id = id.clone();
                c
            })
            .collect()
    }
}

/// Consul's limits on service and node metadata, with its messages.
pub fn validate_meta(meta: &BTreeMap<String, String>) -> Result<(), String> {
    if meta.len() > 64 {
        return Err("Node metadata cannot contain more than 64 key/value pairs".into());
    }
    for (k, v) in meta {
        let problem = if k.is_empty() {
            Some("Key cannot be blank")
        } else if !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            Some("Key contains invalid characters")
        } else if k.len() > 128 {
            Some("Key is too long (limit: 128 characters)")
        } else if k.starts_with("consul-") {
            Some("Key prefix 'consul-' is reserved for internal use")
        } else if v.len() > 512 {
            Some("Value is too long (limit: 512 characters)")
        } else {
            None
        };
        if let Some(p) = problem {
            return Err(format!("Couldn't load metadata pair ('{k}', '{v}'): {p}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::decode;

    #[test]
    fn decodes_consul_and_snake_case_spellings() {
        let d: ServiceDefinition = decode::from_slice(
            br#"{"name":"web","port":80,"tags":["a"],
                 "check":{"http":"http://127.0.0.1/health","interval":"10s","timeout":"1s"},
                 "Checks":[{"Args":["/bin/true"],"Interval":5000000000,
                            "deregister_critical_service_after":"90s"}]}"#,
        )
        .unwrap();
        assert_eq!(d.name, "web");
        let checks = d.check_types();
        assert_eq!(checks[0].check_id, "service:web:1");
        assert_eq!(checks[0].name, "Service 'web' check");
        assert_eq!(checks[0].kind(), Some(CheckKind::Http));
        assert_eq!(checks[0].interval, Some(Duration::from_secs(10)));
        assert_eq!(checks[1].kind(), Some(CheckKind::Script));
        assert_eq!(checks[1].interval, Some(Duration::from_secs(5)));
        assert_eq!(
            checks[1].deregister_critical_service_after,
            Some(Duration::from_secs(90))
        );
        d.validate().unwrap();
    }

    #[test]
    fn validation_follows_consul() {
        let check = |json: &str| {
            decode::from_slice::<CheckType>(json.as_bytes())
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate())
        };
        assert_eq!(
            check(r#"{"Interval":"10s"}"#).unwrap_err(),
            "TTL must be > 0 for TTL checks"
        );
        assert_eq!(
            check(r#"{"HTTP":"http://x"}"#).unwrap_err(),
            "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"
        );
        assert_eq!(
            check(r#"{"HTTP":"http://x","TCP":"x:1","Interval":"1s"}"#).unwrap_err(),
            "Only one of Args, HTTP or TCP may be given"
        );
        assert_eq!(
            check(r#"{"TTL":"10s","Interval":"1s"}"#).unwrap_err(),
            "Interval and TTL cannot both be specified"
        );
        assert!(
            check(r#"{"TCP":"x:1","Interval":"-5s"}"#)
                .unwrap_err()
                .contains("negative")
        );
        check(r#"{"TTL":"30s"}"#).unwrap();
        let svc = ServiceDefinition::default();
        assert_eq!(svc.validate().unwrap_err(), "Missing service name");
    }
}
