//! The router's configuration: flags (Consul's single-dash spelling) over an optional JSON
//! file (`-config-file`), checked by [`Config::validate`], which names the bad key.
//!
//! ```text
//! cairn-wan-router -dc dc1 -node server1 -bind 127.0.0.11 [-port 8302]
//!     -join-lan 127.0.0.2[:8301] [-retry-join-wan ADDR ...]
//!     -ca-file consul-agent-ca.pem -cert-file dc1-server-consul-0.pem
//!     -key-file dc1-server-consul-0-key.pem [-http-port 8501] [-lan-tls]
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use cairn_shared::gossip::{GossipTuning, GossipTuningFile};
use clap::{ArgAction, Parser};
use serde::Deserialize;

use crate::transport::tls::TlsFiles;

/// Ports, Consul's where there is one.
pub const DEFAULT_WAN_PORT: u16 = 8302;
pub const DEFAULT_LAN_PORT: u16 = 8303;
pub const DEFAULT_RPC_PORT: u16 = 8304;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub datacenter: String,
    /// The server this router fronts (its WAN member is `NODE.DC`).
    pub node: String,
    pub domain: String,
    pub bind: IpAddr,
    /// QUIC (UDP) for the WAN pool and forwarding.
    pub wan_port: u16,
    /// LAN gossip (UDP and TCP).
    pub lan_port: u16,
    /// The local API servers call (TCP).
    pub rpc_port: u16,
    /// `/metrics` and `/v1/status`; none when `None`.
    pub http_port: Option<u16>,
    /// What other routers dial (default: the bound WAN address).
    pub advertise_wan: Option<SocketAddr>,
    pub join_lan: Vec<String>,
    pub retry_join_wan: Vec<String>,
    pub retry_interval_wan: Duration,
    pub tls: TlsFiles,
    /// `-lan-tls`: the local RPC port and calls to the datacenter's servers use TLS with
    /// the same files (for servers under `verify_incoming`/`verify_outgoing`).
    pub lan_tls: bool,
    /// The LAN pool's gossip key, if it is encrypted.
    pub encrypt: Option<String>,
    pub gossip_lan: GossipTuning,
    pub gossip_wan: GossipTuning,
    pub log_level: String,
    pub log_json: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("failed to read {path}: {reason}")]
    Read { path: String, reason: String },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// The command line.
#[derive(Debug, Parser, Default)]
#[command(
    name = "cairn-wan-router",
    about = "Joins a datacenter's LAN pool and the WAN pool of routers (QUIC, mutual TLS) and forwards requests between datacenters"
)]
pub struct Flags {
    /// Datacenter of this router and the server it fronts
    #[arg(long = "dc", alias = "datacenter")]
    pub datacenter: Option<String>,
    /// The server this router fronts (WAN member NODE.DC)
    #[arg(long)]
    pub node: Option<String>,
    #[arg(long)]
    pub domain: Option<String>,
    /// Address to bind every port to
    #[arg(long)]
    pub bind: Option<IpAddr>,
    /// WAN port (UDP, QUIC)
    #[arg(long)]
    pub port: Option<u16>,
    /// LAN gossip port (UDP and TCP)
    #[arg(long = "lan-port")]
    pub lan_port: Option<u16>,
    /// Port of the local API that servers call (TCP)
    #[arg(long = "rpc-port")]
    pub rpc_port: Option<u16>,
    /// Port for /metrics and /v1/status
    #[arg(long = "http-port")]
    pub http_port: Option<u16>,
    /// Address other routers dial, IP[:PORT]
    #[arg(long = "advertise-wan")]
    pub advertise_wan: Option<String>,
    /// A LAN agent to join through, HOST[:PORT] (repeatable; retried until one answers)
    #[arg(long = "join-lan")]
    pub join_lan: Vec<String>,
    /// A router of the WAN pool to join through (repeatable; retried until one answers)
    #[arg(long = "retry-join-wan")]
    pub retry_join_wan: Vec<String>,
    /// How long between WAN join attempts
    #[arg(long = "retry-interval-wan")]
    pub retry_interval_wan: Option<String>,
    #[arg(long = "ca-file")]
    pub ca_file: Option<PathBuf>,
    #[arg(long = "cert-file")]
    pub cert_file: Option<PathBuf>,
    #[arg(long = "key-file")]
    pub key_file: Option<PathBuf>,
    /// Speak TLS to the datacenter's servers and require it on the local RPC port
    #[arg(long = "lan-tls", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", action = ArgAction::Set)]
    pub lan_tls: Option<bool>,
    /// The LAN pool's gossip encryption key
    #[arg(long)]
    pub encrypt: Option<String>,
    /// A JSON config file (flags win over it)
    #[arg(long = "config-file")]
    pub config_file: Vec<PathBuf>,
    #[arg(long = "log-level")]
    pub log_level: Option<String>,
    #[arg(long = "log-json", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", action = ArgAction::Set)]
    pub log_json: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PortsFile {
    serf_wan: Option<u16>,
    serf_lan: Option<u16>,
    rpc: Option<u16>,
    http: Option<i32>,
}

/// Every key a config file may hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    datacenter: Option<String>,
    node_name: Option<String>,
    domain: Option<String>,
    bind_addr: Option<IpAddr>,
    advertise_addr_wan: Option<String>,
    ports: Option<PortsFile>,
    retry_join: Vec<String>,
    retry_join_wan: Vec<String>,
    retry_interval_wan: Option<String>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    lan_tls: Option<bool>,
    encrypt: Option<String>,
    gossip_lan: Option<GossipTuningFile>,
    gossip_wan: Option<GossipTuningFile>,
    log_level: Option<String>,
    log_json: Option<bool>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            datacenter: "dc1".into(),
            node: String::new(),
            domain: "consul".into(),
            bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            wan_port: DEFAULT_WAN_PORT,
            lan_port: DEFAULT_LAN_PORT,
            rpc_port: DEFAULT_RPC_PORT,
            http_port: None,
            advertise_wan: None,
            join_lan: Vec::new(),
            retry_join_wan: Vec::new(),
            retry_interval_wan: Duration::from_secs(30),
            tls: TlsFiles {
                ca_file: PathBuf::new(),
                cert_file: PathBuf::new(),
                key_file: PathBuf::new(),
            },
            lan_tls: false,
            encrypt: None,
            gossip_lan: GossipTuning::default(),
            gossip_wan: GossipTuning::default(),
            log_level: "info".into(),
            log_json: false,
        }
    }
}

fn duration(key: &str, v: &str) -> Result<Duration, ConfigError> {
    cairn_shared::duration::parse(v).map_err(|e| invalid(key, e.to_string()))
}

/// `IP[:PORT]`, the port defaulting to `port`.
fn advertise(key: &str, v: &str, port: u16) -> Result<SocketAddr, ConfigError> {
    if let Ok(a) = v.parse::<SocketAddr>() {
        return Ok(a);
    }
    v.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, port))
        .map_err(|_| invalid(key, format!("{v:?} is not an IP address or IP:port")))
}

impl Config {
    /// The configuration the flags (over their config files) describe.
    pub fn from_flags(flags: Flags) -> Result<Self, ConfigError> {
        let mut c = Self::default();
        let mut advertise_raw = None;
        for path in &flags.config_file {
            let body = std::fs::read(path).map_err(|e| ConfigError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            let f: FileConfig = serde_json::from_slice(&body).map_err(|e| ConfigError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            c.apply_file(f, &mut advertise_raw)?;
        }
        let set = |slot: &mut String, v: Option<String>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        set(&mut c.datacenter, flags.datacenter);
        set(&mut c.node, flags.node);
        set(&mut c.domain, flags.domain);
        set(&mut c.log_level, flags.log_level);
        if let Some(b) = flags.bind {
            c.bind = b;
        }
        c.wan_port = flags.port.unwrap_or(c.wan_port);
        c.lan_port = flags.lan_port.unwrap_or(c.lan_port);
        c.rpc_port = flags.rpc_port.unwrap_or(c.rpc_port);
        c.http_port = flags.http_port.or(c.http_port);
        if flags.advertise_wan.is_some() {
            advertise_raw = flags.advertise_wan;
        }
        c.join_lan.extend(flags.join_lan);
        c.retry_join_wan.extend(flags.retry_join_wan);
        if let Some(v) = flags.retry_interval_wan {
            c.retry_interval_wan = duration("retry_interval_wan", &v)?;
        }
        if let Some(p) = flags.ca_file {
            c.tls.ca_file = p;
        }
        if let Some(p) = flags.cert_file {
            c.tls.cert_file = p;
        }
        if let Some(p) = flags.key_file {
            c.tls.key_file = p;
        }
        c.lan_tls = flags.lan_tls.unwrap_or(c.lan_tls);
        if flags.encrypt.is_some() {
            c.encrypt = flags.encrypt;
        }
        c.log_json = flags.log_json.unwrap_or(c.log_json);
        if let Some(v) = advertise_raw {
            c.advertise_wan = Some(advertise("advertise_addr_wan", &v, c.wan_port)?);
        }
        c.validate()?;
        Ok(c)
    }

    fn apply_file(
        &mut self,
        f: FileConfig,
        advertise_raw: &mut Option<String>,
    ) -> Result<(), ConfigError> {
        let c = self;
        if let Some(v) = f.datacenter {
            c.datacenter = v;
        }
        if let Some(v) = f.node_name {
            c.node = v;
        }
        if let Some(v) = f.domain {
            c.domain = v;
        }
        if let Some(v) = f.bind_addr {
            c.bind = v;
        }
        if f.advertise_addr_wan.is_some() {
            *advertise_raw = f.advertise_addr_wan;
        }
        if let Some(p) = f.ports {
            c.wan_port = p.serf_wan.unwrap_or(c.wan_port);
            c.lan_port = p.serf_lan.unwrap_or(c.lan_port);
            c.rpc_port = p.rpc.unwrap_or(c.rpc_port);
            match p.http {
                Some(n) if n < 0 => c.http_port = None,
                Some(n) => {
                    c.http_port =
                        Some(u16::try_from(n).map_err(|_| invalid("ports.http", "not a port"))?)
                }
                None => {}
            }
        }
        c.join_lan.extend(f.retry_join);
        c.retry_join_wan.extend(f.retry_join_wan);
        if let Some(v) = f.retry_interval_wan {
            c.retry_interval_wan = duration("retry_interval_wan", &v)?;
        }
        if let Some(p) = f.ca_file {
            c.tls.ca_file = p;
        }
        if let Some(p) = f.cert_file {
            c.tls.cert_file = p;
        }
        if let Some(p) = f.key_file {
            c.tls.key_file = p;
        }
        c.lan_tls = f.lan_tls.unwrap_or(c.lan_tls);
        if f.encrypt.is_some() {
            c.encrypt = f.encrypt;
        }
        let tuning =
            |block: &str, file: Option<GossipTuningFile>, into: &mut GossipTuning| match file {
                Some(f) => f.merge_into(block, into).map_err(|e| ConfigError::Invalid {
                    key: e.key,
                    reason: e.reason,
                }),
                None => Ok(()),
            };
        tuning("gossip_lan", f.gossip_lan, &mut c.gossip_lan)?;
        tuning("gossip_wan", f.gossip_wan, &mut c.gossip_wan)?;
        if let Some(v) = f.log_level {
            c.log_level = v;
        }
        if let Some(v) = f.log_json {
            c.log_json = v;
        }
        Ok(())
    }

    /// Checks what the router cannot run without, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if !name_ok(&self.datacenter) {
            return Err(invalid(
                "datacenter",
                format!("{:?} must be letters, digits, '-' or '_'", self.datacenter),
            ));
        }
        if self.node.is_empty() {
            return Err(invalid(
                "node_name",
                "the router needs -node: the server it fronts",
            ));
        }
        if self.node.contains('.') {
            return Err(invalid(
                "node_name",
                format!(
                    "{:?}: a node name with a dot cannot be told apart from NODE.DC",
                    self.node
                ),
            ));
        }
        if self.domain.is_empty() || self.domain.contains("..") {
            return Err(invalid(
                "domain",
                format!("{:?} is not a domain", self.domain),
            ));
        }
        for (key, p) in [
            ("ca_file", &self.tls.ca_file),
            ("cert_file", &self.tls.cert_file),
            ("key_file", &self.tls.key_file),
        ] {
            if p.as_os_str().is_empty() {
                return Err(invalid(
                    key,
                    "the WAN needs mutual TLS: give -ca-file, -cert-file and -key-file (see `cairn tls`)",
                ));
            }
        }
        if self.retry_interval_wan.is_zero() {
            return Err(invalid("retry_interval_wan", "must be more than zero"));
        }
        for (block, t) in [
            ("gossip_lan", &self.gossip_lan),
            ("gossip_wan", &self.gossip_wan),
        ] {
            let mut swim = if block == "gossip_lan" {
                cairn_shared::gossip::swim::Config::lan()
            } else {
                cairn_shared::gossip::swim::Config::wan()
            };
            t.apply(&mut swim);
            swim.validate().map_err(|e| invalid(block, e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let argv: Vec<String> = std::iter::once("cairn-wan-router")
            .chain(args.iter().copied())
            .map(str::to_string)
            .collect();
        use clap::CommandFactory;
        let argv = cairn_shared::argv::normalise(Flags::command(), argv);
        Config::from_flags(Flags::try_parse_from(argv).expect("flags parse"))
    }

    const TLS: [&str; 6] = [
        "-ca-file",
        "ca.pem",
        "-cert-file",
        "c.pem",
        "-key-file",
        "k.pem",
    ];

    #[test]
    fn consul_style_flags() {
        let mut args = vec![
            "-dc",
            "dc2",
            "-node",
            "server1",
            "-bind",
            "127.0.0.11",
            "-port=9302",
            "-join-lan",
            "127.0.0.2",
            "-retry-join-wan",
            "127.0.0.21:8302",
            "-advertise-wan",
            "198.18.0.5",
            "-http-port",
            "8501",
        ];
        args.extend(TLS);
        let c = parse(&args).unwrap();
        assert_eq!(c.datacenter, "dc2");
        assert_eq!(c.node, "server1");
        assert_eq!(c.wan_port, 9302);
        assert_eq!(c.advertise_wan, Some("198.18.0.5:9302".parse().unwrap()));
        assert_eq!(c.join_lan, ["127.0.0.2"]);
        assert_eq!(c.http_port, Some(8501));
        assert_eq!(c.tls.cert_file, PathBuf::from("c.pem"));
    }

    #[test]
    fn the_example_config_in_deploy_is_valid() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/examples/router.json"
        );
        let c = parse(&["-config-file", path]).unwrap();
        assert_eq!(c.node, "server1");
        assert_eq!(c.retry_join_wan.len(), 2);
        assert_eq!(c.advertise_wan, Some("203.0.113.11:8302".parse().unwrap()));
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = parse(&["-node", "s1"]).unwrap_err();
        assert!(
            matches!(e, ConfigError::Invalid { ref key, .. } if key == "ca_file"),
            "{e}"
        );
        let mut args = vec!["-dc", "dc 2", "-node", "s1"];
        args.extend(TLS);
        assert!(
            matches!(parse(&args), Err(ConfigError::Invalid { key, .. }) if key == "datacenter")
        );
        let mut args = vec!["-node", "a.b"];
        args.extend(TLS);
        assert!(
            matches!(parse(&args), Err(ConfigError::Invalid { key, .. }) if key == "node_name")
        );
    }

    #[test]
    fn a_config_file_with_gossip_timing_and_unknown_keys_refused() {
        let dir = std::env::temp_dir().join(format!("cairn-router-cfg-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("r.json");
        std::fs::write(
            &good,
            r#"{"datacenter":"dc3","node_name":"s9","ports":{"serf_wan":7302,"http":-1},
                "ca_file":"a","cert_file":"b","key_file":"c",
                "gossip_wan":{"probe_interval":"1s","probe_timeout":"500ms"}}"#,
        )
        .unwrap();
        let c = parse(&["-config-file", good.to_str().unwrap(), "-dc", "dc4"]).unwrap();
        assert_eq!(c.datacenter, "dc4", "flags win over the file");
        assert_eq!(c.node, "s9");
        assert_eq!(c.wan_port, 7302);
        assert_eq!(c.gossip_wan.probe_interval, Some(Duration::from_secs(1)));
        let bad = dir.join("bad.json");
        std::fs::write(&bad, r#"{"node_name":"s9","acl":{}}"#).unwrap();
        let e = parse(&["-config-file", bad.to_str().unwrap()]).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let slow = dir.join("slow.json");
        std::fs::write(&slow, r#"{"gossip_wan":{"probe_timeout":"9s"}}"#).unwrap();
        let mut args = vec!["-node", "s1", "-config-file", slow.to_str().unwrap()];
        args.extend(TLS);
        assert!(
            matches!(parse(&args), Err(ConfigError::Invalid { key, .. }) if key == "gossip_wan")
        );
    }
}
