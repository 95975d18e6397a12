//! JSON config files (`-config-file`, `-config-dir`), merged like Consul's: files in the
//! order given, a directory's `*.json` files in name order; later scalars replace earlier
//! ones, lists accumulate, and `service`/`check` blocks join `services`/`checks`. Keys are
//! Consul's `snake_case`; `PascalCase` works too. Unknown keys are an error naming the file.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::Config;
use crate::http::decode;
use crate::local::definition::{CheckType, ServiceDefinition};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to parse {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("file {0} has unknown extension; must be .json (HCL config files are not supported)")]
    Extension(PathBuf),
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

/// Every key a config file may hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub datacenter: Option<String>,
    pub node_name: Option<String>,
    pub node_id: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub server: Option<bool>,
    pub bootstrap: Option<bool>,
    pub bootstrap_expect: Option<u32>,
    pub bind_addr: Option<IpAddr>,
    pub advertise_addr: Option<IpAddr>,
    pub advertise_addr_wan: Option<IpAddr>,
    pub client_addr: Option<String>,
    pub domain: Option<String>,
    pub log_level: Option<String>,
    pub log_json: Option<bool>,
    pub enable_script_checks: Option<bool>,
    pub enable_local_script_checks: Option<bool>,
    pub node_meta: Option<BTreeMap<String, String>>,
    pub ports: Option<PortsFile>,
    pub limits: Option<LimitsFile>,
    pub default_query_time: Option<String>,
    pub max_query_time: Option<String>,
    pub session_ttl_min: Option<String>,
    pub check_update_interval: Option<String>,
    pub recursors: Vec<String>,
    pub dns_config: Option<DnsFile>,
    pub services: Vec<ServiceDefinition>,
    pub checks: Vec<CheckType>,
    pub start_join: Vec<String>,
    pub retry_join: Vec<String>,
    pub retry_interval: Option<String>,
    pub retry_max: Option<u32>,
    pub rejoin_after_leave: Option<bool>,
    pub encrypt: Option<String>,
    pub reconnect_timeout: Option<String>,
    pub leave_on_terminate: Option<bool>,
    pub skip_leave_on_interrupt: Option<bool>,
    pub gossip_lan: Option<cairn_shared::gossip::GossipTuningFile>,
    pub performance: Option<PerformanceFile>,
    pub raft_snapshot_threshold: Option<u64>,
    pub autopilot: Option<AutopilotFile>,
    pub acl: Option<AclFile>,
    pub primary_datacenter: Option<String>,
    /// Consul's older name for `primary_datacenter`.
    pub acl_datacenter: Option<String>,
    pub tls: Option<TlsFile>,
    // Consul's older top-level TLS keys.
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub verify_incoming: Option<bool>,
    pub verify_incoming_https: Option<bool>,
    pub verify_incoming_rpc: Option<bool>,
    pub verify_outgoing: Option<bool>,
    pub verify_server_hostname: Option<bool>,
}

/// The `tls` block: `defaults`, then per-interface overrides.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFile {
    pub defaults: Option<TlsPartFile>,
    pub https: Option<TlsPartFile>,
    pub internal_rpc: Option<TlsPartFile>,
    pub grpc: Option<TlsPartFile>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsPartFile {
    pub ca_file: Option<PathBuf>,
    pub ca_path: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub verify_incoming: Option<bool>,
    pub verify_outgoing: Option<bool>,
    pub verify_server_hostname: Option<bool>,
    pub tls_min_version: Option<String>,
    pub tls_cipher_suites: Option<String>,
}

impl TlsPartFile {
    fn apply(self, t: &mut super::TlsConfig) {
        t.ca_file = self.ca_file.or(t.ca_file.take());
        t.cert_file = self.cert_file.or(t.cert_file.take());
        t.key_file = self.key_file.or(t.key_file.take());
        for (slot, v) in [
            (&mut t.verify_incoming, self.verify_incoming),
            (&mut t.verify_outgoing, self.verify_outgoing),
            (&mut t.verify_server_hostname, self.verify_server_hostname),
        ] {
            if let Some(v) = v {
                *slot = v;
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AclFile {
    pub enabled: Option<bool>,
    pub default_policy: Option<String>,
    pub down_policy: Option<String>,
    pub policy_ttl: Option<String>,
    pub role_ttl: Option<String>,
    pub token_ttl: Option<String>,
    pub enable_key_list_policy: Option<bool>,
    pub enable_token_persistence: Option<bool>,
    pub enable_token_replication: Option<bool>,
    pub tokens: Option<AclTokensFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AclTokensFile {
    pub initial_management: Option<String>,
    /// Consul's older name for `initial_management`.
    pub master: Option<String>,
    pub default: Option<String>,
    pub agent: Option<String>,
    pub agent_recovery: Option<String>,
    /// Consul's older name for `agent_recovery`.
    pub agent_master: Option<String>,
    pub replication: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerformanceFile {
    pub raft_multiplier: Option<u32>,
    pub leave_drain_time: Option<String>,
    pub rpc_hold_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutopilotFile {
    pub cleanup_dead_servers: Option<bool>,
    pub last_contact_threshold: Option<String>,
    pub max_trailing_logs: Option<u64>,
    pub min_quorum: Option<u64>,
    pub server_stabilization_time: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortsFile {
    pub http: Option<i32>,
    pub dns: Option<i32>,
    pub server: Option<u16>,
    pub serf_lan: Option<u16>,
    pub serf_wan: Option<i32>,
    pub https: Option<i32>,
    pub grpc: Option<i32>,
    pub grpc_tls: Option<i32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsFile {
    pub kv_max_value_size: Option<usize>,
    pub txn_max_req_len: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsFile {
    pub allow_stale: Option<bool>,
    pub max_stale: Option<String>,
    pub node_ttl: Option<String>,
    pub service_ttl: Option<BTreeMap<String, String>>,
    pub enable_truncate: Option<bool>,
    pub only_passing: Option<bool>,
    pub udp_answer_limit: Option<usize>,
    pub a_record_limit: Option<usize>,
    pub recursor_timeout: Option<String>,
    pub disable_compression: Option<bool>,
    pub enable_additional_node_meta_txt: Option<bool>,
    pub soa: Option<SoaFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SoaFile {
    pub refresh: Option<u32>,
    pub retry: Option<u32>,
    pub expire: Option<u32>,
    pub min_ttl: Option<u32>,
}

/// The files a list of `-config-file`/`-config-dir` sources names, in load order.
fn files_of(sources: &[PathBuf]) -> Result<Vec<PathBuf>, FileError> {
    let mut out = Vec::new();
    for src in sources {
        let meta = std::fs::metadata(src).map_err(|source| FileError::Read {
            path: src.clone(),
            source,
        })?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(src)
                .map_err(|source| FileError::Read {
                    path: src.clone(),
                    source,
                })?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            entries.sort();
            for p in entries {
                if p.extension().is_some_and(|e| e == "json") {
                    out.push(p);
                } else {
                    tracing::warn!(file = %p.display(),
                        "skipping file, extension must be .json");
                }
            }
        } else if src.extension().is_some_and(|e| e == "json") {
            out.push(src.clone());
        } else {
            return Err(FileError::Extension(src.clone()));
        }
    }
    Ok(out)
}

/// Reads one file, folding `service`/`check` into their list forms.
fn read_one(path: &Path) -> Result<Map<String, Value>, FileError> {
    let parse = |message: String| FileError::Parse {
        path: path.to_path_buf(),
        message,
    };
    let body = std::fs::read(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let Value::Object(mut map) = serde_json::from_slice(&body).map_err(|e| parse(e.to_string()))?
    else {
        return Err(parse("the top level must be an object".into()));
    };
    for (one, many) in [("service", "services"), ("check", "checks")] {
        let key = map.keys().find(|k| k.eq_ignore_ascii_case(one)).cloned();
        if let Some(v) = key.and_then(|k| map.remove(&k)) {
            let list = map
                .entry(many.to_string())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(items) = list {
                items.push(v);
            }
        }
    }
    // Validate this file alone so an error can name it.
    decode::from_value::<FileConfig>(Value::Object(map.clone())).map_err(|e| {
        let text = decode::go_message(&e);
        match text.strip_prefix("json: unknown field ") {
            Some(key) => parse(format!("invalid config key {}", key.trim_matches('"'))),
            None => parse(text),
        }
    })?;
    Ok(map)
}

/// Sections whose own keys are config keys (matched loosely), unlike user maps such as
/// `node_meta` whose keys are kept exactly.
const SECTIONS: &[&str] = &["ports", "limits", "dnsconfig", "soa", "tls"];

fn fold(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Later values replace earlier scalars; objects merge; lists accumulate. Config keys are
/// matched the way the decoder matches them (`Datacenter` is `datacenter`).
fn merge(into: &mut Map<String, Value>, from: Map<String, Value>, loose: bool) {
    for (k, v) in from {
        let key = if loose {
            into.keys()
                .find(|e| fold(e) == fold(&k))
                .cloned()
                .unwrap_or(k)
        } else {
            k
        };
        let section = loose && SECTIONS.contains(&fold(&key).as_str());
        match (into.get_mut(&key), v) {
            (Some(Value::Object(a)), Value::Object(b)) => merge(a, b, section),
            (Some(Value::Array(a)), Value::Array(b)) => a.extend(b),
            (_, v) => {
                into.insert(key, v);
            }
        }
    }
}

/// Loads and merges every source.
pub fn load(sources: &[PathBuf]) -> Result<FileConfig, FileError> {
    let mut merged = Map::new();
    for path in files_of(sources)? {
        merge(&mut merged, read_one(&path)?, true);
    }
    decode::from_value(Value::Object(merged)).map_err(|e| FileError::Parse {
        path: PathBuf::from("merged configuration"),
        message: e.to_string(),
    })
}

fn dur(key: &str, v: &str) -> Result<Duration, FileError> {
    cairn_shared::duration::parse(v).map_err(|e| FileError::Invalid {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

fn apply_acl(acl: &mut super::AclConfig, a: AclFile) -> Result<(), FileError> {
    if let Some(b) = a.enabled {
        acl.enabled = b;
    }
    if let Some(p) = a.default_policy {
        acl.default_allow = match p.as_str() {
            "allow" => true,
            "deny" => false,
            _ => {
                return Err(FileError::Invalid {
                    key: "acl.default_policy".into(),
                    reason: format!("must be \"allow\" or \"deny\", got {p:?}"),
                });
            }
        };
    }
    if let Some(p) = a.down_policy {
        if !matches!(
            p.as_str(),
            "allow" | "deny" | "extend-cache" | "async-cache"
        ) {
            return Err(FileError::Invalid {
                key: "acl.down_policy".into(),
                reason: format!("must be one of allow, deny, extend-cache, async-cache, got {p:?}"),
            });
        }
        acl.down_policy = p;
    }
    if let Some(t) = a.token_ttl {
        acl.token_ttl = dur("acl.token_ttl", &t)?;
    }
    for (key, v) in [
        ("acl.policy_ttl", a.policy_ttl),
        ("acl.role_ttl", a.role_ttl),
    ] {
        if let Some(t) = v {
            dur(key, &t)?;
        }
    }
    if let Some(b) = a.enable_key_list_policy {
        acl.enable_key_list_policy = b;
    }
    if let Some(b) = a.enable_token_persistence {
        acl.enable_token_persistence = b;
    }
    if let Some(b) = a.enable_token_replication {
        acl.enable_token_replication = b;
    }
    if let Some(t) = a.tokens {
        let tk = &mut acl.tokens;
        // The newer names win over Consul's older ones.
        let pick = |new: Option<String>, old: Option<String>| new.or(old);
        if let Some(v) = pick(t.initial_management, t.master) {
            tk.initial_management = v;
        }
        if let Some(v) = pick(t.agent_recovery, t.agent_master) {
            tk.agent_recovery = v;
        }
        for (slot, v) in [
            (&mut tk.default, t.default),
            (&mut tk.agent, t.agent),
            (&mut tk.replication, t.replication),
        ] {
            if let Some(v) = v {
                *slot = v;
            }
        }
    }
    Ok(())
}

fn port(key: &str, v: i32) -> Result<Option<u16>, FileError> {
    match v {
        -1 => Ok(None),
        0..=65535 => Ok(Some(v as u16)),
        _ => Err(FileError::Invalid {
            key: key.to_string(),
            reason: format!("{v} is not a port"),
        }),
    }
}

impl FileConfig {
    /// Applies what the files set on top of `c`.
    pub fn apply(self, c: &mut Config) -> Result<(), FileError> {
        macro_rules! set {
            ($($field:ident),*) => {$(
                if let Some(v) = self.$field { c.$field = v; }
            )*};
        }
        set!(
            datacenter,
            node_name,
            node_id,
            server,
            bootstrap,
            bind_addr,
            domain,
            log_level,
            log_json,
            enable_script_checks,
            enable_local_script_checks,
            node_meta,
            retry_max,
            rejoin_after_leave
        );
        c.start_join.extend(self.start_join);
        c.retry_join.extend(self.retry_join);
        if self.encrypt.is_some() {
            c.encrypt = self.encrypt;
        }
        if self.leave_on_terminate.is_some() {
            c.leave_on_terminate = self.leave_on_terminate;
        }
        if self.skip_leave_on_interrupt.is_some() {
            c.skip_leave_on_interrupt = self.skip_leave_on_interrupt;
        }
        if let Some(g) = self.gossip_lan {
            g.merge_into("gossip_lan", &mut c.gossip_lan)
                .map_err(|e| FileError::Invalid {
                    key: e.key,
                    reason: e.reason,
                })?;
        }
        if let Some(d) = self.data_dir {
            c.data_dir = Some(d);
        }
        if let Some(p) = self.primary_datacenter.or(self.acl_datacenter) {
            c.primary_datacenter = p;
        }
        // The older top-level keys first; the `tls` block overrides them.
        let top = TlsPartFile {
            ca_file: self.ca_file,
            cert_file: self.cert_file,
            key_file: self.key_file,
            verify_outgoing: self.verify_outgoing,
            verify_server_hostname: self.verify_server_hostname,
            ..TlsPartFile::default()
        };
        TlsPartFile {
            verify_incoming: self.verify_incoming_https.or(self.verify_incoming),
            ..top.clone()
        }
        .apply(&mut c.tls);
        TlsPartFile {
            verify_incoming: self.verify_incoming_rpc.or(self.verify_incoming),
            ..top
        }
        .apply(&mut c.rpc_tls);
        if let Some(t) = self.tls {
            for part in [&t.defaults, &t.https].into_iter().flatten() {
                part.clone().apply(&mut c.tls);
            }
            for part in [t.defaults, t.internal_rpc].into_iter().flatten() {
                part.apply(&mut c.rpc_tls);
            }
        }
        if self.bootstrap_expect.is_some() {
            c.bootstrap_expect = self.bootstrap_expect;
        }
        if let Some(m) = self.performance.and_then(|p| p.raft_multiplier) {
            if !(1..=10).contains(&m) {
                return Err(FileError::Invalid {
                    key: "performance.raft_multiplier".into(),
                    reason: format!("must be between 1 and 10, got {m}"),
                });
            }
            c.raft_multiplier = m;
        }
        if let Some(n) = self.raft_snapshot_threshold {
            c.raft_snapshot_threshold = n.max(1);
        }
        if let Some(a) = self.autopilot {
            let ap = &mut c.autopilot;
            if let Some(t) = a.server_stabilization_time {
                c.server_stabilization_time = dur("autopilot.server_stabilization_time", &t)?;
                ap.server_stabilization_time =
                    cairn_shared::duration::format(c.server_stabilization_time);
            }
            if let Some(t) = a.last_contact_threshold {
                let d = dur("autopilot.last_contact_threshold", &t)?;
                ap.last_contact_threshold = cairn_shared::duration::format(d);
            }
            if let Some(b) = a.cleanup_dead_servers {
                ap.cleanup_dead_servers = b;
            }
            if let Some(n) = a.max_trailing_logs {
                ap.max_trailing_logs = n;
            }
            if let Some(n) = a.min_quorum {
                ap.min_quorum = n;
            }
        }
        if let Some(a) = self.acl {
            apply_acl(&mut c.acl, a)?;
        }
        if self.advertise_addr.is_some() {
            c.advertise_addr = self.advertise_addr;
        }
        if self.advertise_addr_wan.is_some() {
            c.advertise_addr_wan = self.advertise_addr_wan;
        }
        if let Some(a) = self.client_addr {
            c.client_addrs =
                super::parse_client_addrs(&a).map_err(|reason| FileError::Invalid {
                    key: "client_addr".into(),
                    reason,
                })?;
        }
        if !c.domain.ends_with('.') {
            c.domain.push('.');
        }
        if let Some(p) = self.ports {
            if let Some(v) = p.http {
                c.ports.http = port("ports.http", v)?;
            }
            if let Some(v) = p.https {
                c.ports.https = port("ports.https", v)?;
            }
            if let Some(v) = p.dns {
                c.ports.dns = port("ports.dns", v)?;
            }
            if let Some(v) = p.server {
                c.ports.server = v;
            }
            if let Some(v) = p.serf_lan {
                c.ports.serf_lan = v;
            }
            if let Some(v) = p.serf_wan {
                c.ports.serf_wan = port("ports.serf_wan", v)?;
            }
        }
        if let Some(l) = self.limits {
            if let Some(v) = l.kv_max_value_size {
                c.limits.kv_max_value_size = v;
            }
            if let Some(v) = l.txn_max_req_len {
                c.limits.txn_max_req_len = v;
            }
        }
        for (key, value, slot) in [
            (
                "default_query_time",
                self.default_query_time,
                &mut c.default_query_time,
            ),
            ("max_query_time", self.max_query_time, &mut c.max_query_time),
            (
                "session_ttl_min",
                self.session_ttl_min,
                &mut c.session_ttl_min,
            ),
            (
                "check_update_interval",
                self.check_update_interval,
                &mut c.check_update_interval,
            ),
            ("retry_interval", self.retry_interval, &mut c.retry_interval),
            (
                "reconnect_timeout",
                self.reconnect_timeout,
                &mut c.reconnect_timeout,
            ),
        ] {
            if let Some(v) = value {
                *slot = dur(key, &v)?;
            }
        }
        for r in self.recursors {
            c.recursors.push(parse_recursor(&r)?);
        }
        if let Some(d) = self.dns_config {
            apply_dns(d, &mut c.dns)?;
        }
        c.services.extend(self.services);
        c.checks.extend(self.checks);
        Ok(())
    }
}

fn apply_dns(d: DnsFile, dns: &mut super::DnsConfig) -> Result<(), FileError> {
    macro_rules! set {
        ($($field:ident),*) => {$(
            if let Some(v) = d.$field { dns.$field = v; }
        )*};
    }
    set!(
        allow_stale,
        enable_truncate,
        only_passing,
        udp_answer_limit,
        a_record_limit,
        disable_compression,
        enable_additional_node_meta_txt
    );
    if let Some(v) = d.max_stale {
        dns.max_stale = dur("dns_config.max_stale", &v)?;
    }
    if let Some(v) = d.node_ttl {
        dns.node_ttl = dur("dns_config.node_ttl", &v)?;
    }
    if let Some(v) = d.recursor_timeout {
        dns.recursor_timeout = dur("dns_config.recursor_timeout", &v)?;
    }
    if let Some(m) = d.service_ttl {
        for (k, v) in m {
            dns.service_ttl
                .insert(k, dur("dns_config.service_ttl", &v)?);
        }
    }
    if let Some(s) = d.soa {
        dns.soa_refresh = s.refresh.unwrap_or(dns.soa_refresh);
        dns.soa_retry = s.retry.unwrap_or(dns.soa_retry);
        dns.soa_expire = s.expire.unwrap_or(dns.soa_expire);
        dns.soa_min_ttl = s.min_ttl.unwrap_or(dns.soa_min_ttl);
    }
    Ok(())
}

/// A recursor address; port 53 when none is given, as Consul.
pub fn parse_recursor(s: &str) -> Result<SocketAddr, FileError> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| FileError::Invalid {
            key: "recursors".into(),
            reason: format!("{s:?} is not an IP address with an optional port"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn the_example_configs_in_deploy_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        for (file, server) in [("server.json", true), ("client.json", false)] {
            let fc = load(&[dir.join(file)]).unwrap();
            let mut c = Config::default();
            fc.apply(&mut c).unwrap();
            c.validate().unwrap();
            assert_eq!(c.server, server, "{file}");
        }
        let fc = load(&[dir.join("server.json")]).unwrap();
        let mut c = Config::default();
        fc.apply(&mut c).unwrap();
        assert_eq!(c.advertise_wan().to_string(), "203.0.113.11");
    }

    #[test]
    fn merges_in_name_order_and_collects_services() {
        let dir = std::env::temp_dir().join(format!("cairn-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write(
            &dir,
            "a.json",
            r#"{"datacenter":"one","service":{"name":"web","port":80}}"#,
        );
        write(
            &dir,
            "b.json",
            r#"{"Datacenter":"two","services":[{"Name":"db"}],
                "check":{"name":"disk","ttl":"30s"},"dns_config":{"node_ttl":"5s"}}"#,
        );
        write(&dir, "ignored.txt", "not json");
        let fc = load(std::slice::from_ref(&dir)).unwrap();
        let mut c = Config::default();
        fc.apply(&mut c).unwrap();
        assert_eq!(c.datacenter, "two");
        let names: Vec<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "db"]);
        assert_eq!(c.checks[0].ttl, Some(Duration::from_secs(30)));
        assert_eq!(c.dns.node_ttl, Duration::from_secs(5));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_keys_name_the_file() {
        let dir = std::env::temp_dir().join(format!("cairn-cfg-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = write(&dir, "x.json", r#"{"datacentre":"dc1"}"#);
        let err = load(&[p]).unwrap_err().to_string();
        assert!(
            err.contains("x.json") && err.contains("invalid config key datacentre"),
            "{err}"
        );
        let hcl = write(&dir, "x.hcl", "");
        assert!(
            load(&[hcl])
                .unwrap_err()
                .to_string()
                .contains("unknown extension")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tls_block_overrides_the_older_top_level_keys_and_primary_datacenter_is_read() {
        let dir = std::env::temp_dir().join(format!("cairn-cfg-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = write(
            &dir,
            "t.json",
            r#"{"ca_file":"/old/ca.pem","cert_file":"/old/c.pem","verify_incoming":true,
                "ports":{"https":8501},"acl_datacenter":"dc9",
                "tls":{"defaults":{"cert_file":"/new/c.pem","key_file":"/new/k.pem",
                       "verify_incoming":false},
                       "https":{"verify_incoming":true},
                       "internal_rpc":{"verify_server_hostname":true}}}"#,
        );
        let mut c = Config::default();
        load(&[p]).unwrap().apply(&mut c).unwrap();
        assert_eq!(c.ports.https, Some(8501));
        assert_eq!(c.tls.ca_file.as_deref(), Some(Path::new("/old/ca.pem")));
        assert_eq!(c.tls.cert_file.as_deref(), Some(Path::new("/new/c.pem")));
        assert_eq!(c.tls.key_file.as_deref(), Some(Path::new("/new/k.pem")));
        assert!(c.tls.verify_incoming && !c.tls.verify_server_hostname);
        // The RPC port: the same defaults, its own overrides.
        assert_eq!(c.rpc_tls.ca_file.as_deref(), Some(Path::new("/old/ca.pem")));
        assert_eq!(
            c.rpc_tls.cert_file.as_deref(),
            Some(Path::new("/new/c.pem"))
        );
        assert!(!c.rpc_tls.verify_incoming && c.rpc_tls.verify_server_hostname);
        assert_eq!(c.primary_datacenter, "dc9");
        let bad = write(&dir, "b.json", r#"{"tls":{"defaults":{"cert":"x"}}}"#);
        let err = load(&[bad]).unwrap_err().to_string();
        assert!(err.contains("invalid config key"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
