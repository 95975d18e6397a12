//! Agent configuration: one struct with Consul's defaults in one place, built from config
//! files ([`file`]) and then flags (flags win), then checked by [`Config::validate`].

pub mod file;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::local::definition::{CheckType, ServiceDefinition};

/// `dns_config {}`, with Consul's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsConfig {
    pub allow_stale: bool,
    pub max_stale: Duration,
    pub node_ttl: Duration,
    /// Service name or `prefix*` pattern → TTL; exact names win, then the longest prefix.
    pub service_ttl: BTreeMap<String, Duration>,
    pub enable_truncate: bool,
    pub only_passing: bool,
    pub udp_answer_limit: usize,
    pub a_record_limit: usize,
    pub recursor_timeout: Duration,
    pub disable_compression: bool,
    pub enable_additional_node_meta_txt: bool,
    pub soa_refresh: u32,
    pub soa_retry: u32,
    pub soa_expire: u32,
    pub soa_min_ttl: u32,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            allow_stale: true,
            max_stale: Duration::from_secs(87_600 * 3600),
            node_ttl: Duration::ZERO,
            service_ttl: BTreeMap::new(),
            enable_truncate: false,
            only_passing: false,
            udp_answer_limit: 3,
            a_record_limit: 0,
            recursor_timeout: Duration::from_secs(2),
            disable_compression: false,
            enable_additional_node_meta_txt: true,
            soa_refresh: 3600,
            soa_retry: 600,
            soa_expire: 86_400,
            soa_min_ttl: 0,
        }
    }
}

impl DnsConfig {
    /// The TTL for a service: an exact entry, else the longest matching `prefix*`, else 0.
    pub fn service_ttl(&self, name: &str) -> Duration {
        if let Some(t) = self.service_ttl.get(name) {
            return *t;
        }
        self.service_ttl
            .iter()
            .filter_map(|(pattern, ttl)| {
                let prefix = pattern.strip_suffix('*')?;
                name.starts_with(prefix).then_some((prefix.len(), *ttl))
            })
            .max_by_key(|(len, _)| *len)
            .map_or(Duration::ZERO, |(_, t)| t)
    }
}

/// Ports the agent listens on; `-1` in Consul's config disables one, here `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports {
    pub http: Option<u16>,
    /// `ports.https` / `-https-port`: off unless set, as in Consul.
    pub https: Option<u16>,
    pub dns: Option<u16>,
    pub server: u16,
    pub serf_lan: u16,
    pub serf_wan: Option<u16>,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            http: Some(8500),
            https: None,
            dns: Some(8600),
            server: 8300,
            serf_lan: 8301,
            serf_wan: Some(8302),
        }
    }
}

/// `limits {}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `kv_max_value_size`: Raft's suggested maximum entry size.
    pub kv_max_value_size: usize,
    /// `txn_max_req_len`.
    pub txn_max_req_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            kv_max_value_size: 512 * 1024,
            txn_max_req_len: 512 * 1024,
        }
    }
}

/// Why a configuration was refused; names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("data_dir: must be set unless -dev is given")]
    MissingDataDir,
    #[error("{key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("{0}")]
    File(#[from] file::FileError),
}

/// The `acl` block of the agent's config.
#[derive(Debug, Clone)]
pub struct AclConfig {
    pub enabled: bool,
    /// `default_policy = "allow"` (Consul's default) or `"deny"`.
    pub default_allow: bool,
    /// `down_policy`: how a client agent decides while no server answers.
    pub down_policy: String,
    /// How long a client agent trusts a token it resolved (`token_ttl`).
    pub token_ttl: Duration,
    pub enable_key_list_policy: bool,
    pub enable_token_persistence: bool,
    /// In a secondary datacenter, copy the primary's global tokens too.
    pub enable_token_replication: bool,
    pub tokens: AclTokens,
}

impl Default for AclConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            default_allow: true,
            down_policy: "extend-cache".into(),
            token_ttl: Duration::from_secs(30),
            enable_key_list_policy: false,
            enable_token_persistence: false,
            enable_token_replication: false,
            tokens: AclTokens::default(),
        }
    }
}

/// TLS for one interface (HTTPS, or the RPC port).
pub use cairn_shared::tls::TlsSettings as TlsConfig;

/// `acl.tokens`: secrets the agent itself uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclTokens {
    /// Created as a management token when the first leader sets ACLs up.
    pub initial_management: String,
    /// Used for requests that carry none, and for DNS.
    pub default: String,
    /// The agent's own catalog and coordinate writes.
    pub agent: String,
    /// Allows the agent endpoints while the servers are unreachable.
    pub agent_recovery: String,
    pub replication: String,
}

/// Consul refuses shorter reconnect timeouts.
const MIN_RECONNECT_TIMEOUT: Duration = Duration::from_secs(8 * 3600);

#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    /// Empty means generate one (and persist it under `data_dir`).
    pub node_id: String,
    pub datacenter: String,
    pub data_dir: Option<PathBuf>,
    pub dev: bool,
    pub server: bool,
    pub bootstrap: bool,
    pub bootstrap_expect: Option<u32>,
    /// `performance.raft_multiplier`: scales Raft's timers (1 is fastest; Consul's default 5).
    pub raft_multiplier: u32,
    /// `raft_snapshot_threshold`: log entries between snapshots.
    pub raft_snapshot_threshold: u64,
    /// `autopilot.server_stabilization_time`: how long a new server must be healthy before
    /// it may vote.
    pub server_stabilization_time: Duration,
    /// The `autopilot` block: what the first leader stores as autopilot's settings.
    pub autopilot: cairn_shared::api::AutopilotConfig,
    /// The `acl` block.
    pub acl: AclConfig,
    /// The `tls` block and Consul's older top-level TLS keys.
    pub tls: TlsConfig,
    /// TLS on the server RPC port: `tls.defaults` overlaid by `tls.internal_rpc`.
    pub rpc_tls: TlsConfig,
    /// `primary_datacenter`: the datacenter that owns ACL policies, roles and global
    /// tokens; empty means this one.
    pub primary_datacenter: String,
    pub bind_addr: IpAddr,
    pub advertise_addr: Option<IpAddr>,
    /// `advertise_addr_wan` / `-advertise-wan`: the node's `wan` tagged address.
    pub advertise_addr_wan: Option<IpAddr>,
    /// Where HTTP and DNS listen (`client_addr` takes several, space-separated; the first
    /// is the one the agent reports).
    pub client_addrs: Vec<IpAddr>,
    pub ports: Ports,
    pub domain: String,
    pub log_level: String,
    pub log_json: bool,
    pub limits: Limits,
    pub default_query_time: Duration,
    pub max_query_time: Duration,
    pub session_ttl_min: Duration,
    pub node_meta: BTreeMap<String, String>,
    pub enable_script_checks: bool,
    pub enable_local_script_checks: bool,
    /// `check_update_interval`: output-only check changes wait this long to sync.
    pub check_update_interval: Duration,
    pub dns: DnsConfig,
    /// Upstream DNS servers for names outside the domain.
    pub recursors: Vec<SocketAddr>,
    /// Services and checks from config files.
    pub services: Vec<ServiceDefinition>,
    pub checks: Vec<CheckType>,
    /// `-config-file`/`-config-dir` sources, re-read on reload.
    pub config_sources: Vec<PathBuf>,
    /// `-join`/`start_join`: joined at start; failing to join any is fatal.
    pub start_join: Vec<String>,
    /// `-retry-join`: joined at start, retried every `retry_interval` until one answers.
    pub retry_join: Vec<String>,
    pub retry_interval: Duration,
    /// Attempts before giving up (and stopping the agent); 0 is unlimited.
    pub retry_max: u32,
    /// `-rejoin`: rejoin the previously known members even after a graceful leave.
    pub rejoin_after_leave: bool,
    /// `-encrypt`: the gossip key (base64), used when no keyring file exists yet.
    pub encrypt: Option<String>,
    /// Failed members are forgotten after this long (Consul: 72h, at least 8h).
    pub reconnect_timeout: Duration,
    /// Leave gracefully on SIGTERM (Consul: clients yes, servers no).
    pub leave_on_terminate: Option<bool>,
    /// Skip the graceful leave on SIGINT (Consul: servers skip, clients leave).
    pub skip_leave_on_interrupt: Option<bool>,
    /// `gossip_lan`: overrides of the LAN pool's timing.
    pub gossip_lan: GossipTuning,
}

pub use cairn_shared::gossip::GossipTuning;

impl Default for Config {
    fn default() -> Self {
        Self {
            node_name: default_node_name(),
            node_id: String::new(),
            datacenter: "dc1".to_string(),
            data_dir: None,
            dev: false,
            server: false,
            bootstrap: false,
            bootstrap_expect: None,
            raft_multiplier: 5,
            raft_snapshot_threshold: 16_384,
            server_stabilization_time: Duration::from_secs(10),
            autopilot: Default::default(),
            acl: AclConfig::default(),
            primary_datacenter: String::new(),
            tls: TlsConfig::default(),
            rpc_tls: TlsConfig::default(),
            bind_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            advertise_addr: None,
            advertise_addr_wan: None,
            client_addrs: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            ports: Ports::default(),
            domain: "consul.".to_string(),
            log_level: "info".to_string(),
            log_json: false,
            limits: Limits::default(),
            default_query_time: cairn_shared::rpc::timeouts::DEFAULT_QUERY_TIME,
            max_query_time: cairn_shared::rpc::timeouts::MAX_QUERY_TIME,
            session_ttl_min: Duration::from_secs(10),
            node_meta: BTreeMap::new(),
            enable_script_checks: false,
            enable_local_script_checks: false,
            check_update_interval: Duration::from_secs(300),
            dns: DnsConfig::default(),
            recursors: Vec::new(),
            services: Vec::new(),
            checks: Vec::new(),
            config_sources: Vec::new(),
            start_join: Vec::new(),
            retry_join: Vec::new(),
            retry_interval: Duration::from_secs(30),
            retry_max: 0,
            rejoin_after_leave: false,
            encrypt: None,
            reconnect_timeout: Duration::from_secs(72 * 3600),
            leave_on_terminate: None,
            skip_leave_on_interrupt: None,
            gossip_lan: GossipTuning::default(),
        }
    }
}

impl Config {
    /// `-dev`: an in-memory server bound to loopback, as Consul's dev mode.
    pub fn dev() -> Self {
        Self {
            dev: true,
            server: true,
            bootstrap: true,
            bind_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            log_level: "debug".to_string(),
            ..Self::default()
        }
    }

    /// A dev agent on ephemeral loopback ports, for in-process tests.
    pub fn for_test() -> Self {
        let mut c = Self::dev();
        c.node_name = "test-node".to_string();
        c.ports.http = Some(0);
        c.ports.dns = None;
        c.ports.server = 0;
        c.ports.serf_lan = 0;
        c.log_level = "warn".to_string();
        c
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.dev && self.data_dir.is_none() {
            return Err(ConfigError::MissingDataDir);
        }
        if self.node_name.is_empty() {
            return Err(ConfigError::Invalid {
                key: "node_name",
                reason: "must not be empty".into(),
            });
        }
        if self.datacenter.is_empty()
            || !self
                .datacenter
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::Invalid {
                key: "datacenter",
                reason: format!(
                    "{:?} must be alphanumeric with - or _ only",
                    self.datacenter
                ),
            });
        }
        if self.bootstrap && self.bootstrap_expect.is_some() {
            return Err(ConfigError::Invalid {
                key: "bootstrap_expect",
                reason: "cannot be combined with bootstrap".into(),
            });
        }
        if self.bootstrap_expect.is_some() && !self.server {
            return Err(ConfigError::Invalid {
                key: "bootstrap_expect",
                reason: "requires server mode".into(),
            });
        }
        crate::local::definition::validate_meta(&self.node_meta).map_err(|reason| {
            ConfigError::Invalid {
                key: "node_meta",
                reason,
            }
        })?;
        if self.reconnect_timeout < MIN_RECONNECT_TIMEOUT {
            return Err(ConfigError::Invalid {
                key: "reconnect_timeout",
                reason: "must be at least 8h".into(),
            });
        }
        if let Some(k) = &self.encrypt {
            crate::gossip::keyring::parse_key(k).map_err(|e| ConfigError::Invalid {
                key: "encrypt",
                reason: e.to_string(),
            })?;
        }
        if self.max_query_time < self.default_query_time {
            return Err(ConfigError::Invalid {
                key: "max_query_time",
                reason: "must not be below default_query_time".into(),
            });
        }
        Ok(())
    }

    /// Whether SIGTERM makes the agent leave the pool first.
    pub fn leaves_on_terminate(&self) -> bool {
        self.leave_on_terminate.unwrap_or(!self.server)
    }

    /// Whether SIGINT makes the agent leave the pool first.
    pub fn leaves_on_interrupt(&self) -> bool {
        !self.skip_leave_on_interrupt.unwrap_or(self.server)
    }

    /// The address other agents reach this one at.
    pub fn advertise(&self) -> IpAddr {
        match self.advertise_addr {
            Some(a) => a,
            None if self.bind_addr.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            None => self.bind_addr,
        }
    }

    /// The address other datacenters reach this one at (the `wan` tagged address).
    pub fn advertise_wan(&self) -> IpAddr {
        self.advertise_addr_wan.unwrap_or_else(|| self.advertise())
    }

    /// This server's RPC address as `/v1/status/leader` shows it.
    pub fn rpc_addr(&self) -> SocketAddr {
        SocketAddr::new(self.advertise(), self.ports.server)
    }

    /// The first client address.
    pub fn client_addr(&self) -> IpAddr {
        self.client_addrs
            .first()
            .copied()
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// The client addresses after the first; HTTP and DNS listen there too, on the port
    /// the first one got.
    pub fn more_client_addrs(&self) -> &[IpAddr] {
        self.client_addrs.get(1..).unwrap_or_default()
    }

    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.ports
            .https
            .map(|p| SocketAddr::new(self.client_addr(), p))
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.ports
            .http
            .map(|p| SocketAddr::new(self.client_addr(), p))
    }

    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.ports
            .dns
            .map(|p| SocketAddr::new(self.client_addr(), p))
    }
}

/// `-client`'s value, for clap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddrs(pub Vec<IpAddr>);

impl std::str::FromStr for ClientAddrs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_client_addrs(s).map(ClientAddrs)
    }
}

/// `client_addr` / `-client`: IP addresses separated by spaces (`[::1]` may keep its
/// brackets), at least one.
pub fn parse_client_addrs(s: &str) -> Result<Vec<IpAddr>, String> {
    let addrs = s
        .split_whitespace()
        .map(|a| {
            let bare = a
                .strip_prefix('[')
                .and_then(|x| x.strip_suffix(']'))
                .unwrap_or(a);
            bare.parse::<IpAddr>()
                .map_err(|_| format!("{a:?} is not an IP address"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err("no address given".into());
    }
    Ok(addrs)
}

fn default_node_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        if let Ok(name) = std::str::from_utf8(&buf[..end])
            && !name.is_empty()
        {
            return name.to_string();
        }
    }
    "cairn".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_config_is_valid_and_server_without_data_dir_is_not() {
        Config::dev().validate().unwrap();
        let c = Config {
            server: true,
            ..Config::default()
        };
        assert!(matches!(c.validate(), Err(ConfigError::MissingDataDir)));
    }

    #[test]
    fn bootstrap_expect_needs_server() {
        let c = Config {
            bootstrap_expect: Some(3),
            data_dir: Some("/tmp/x".into()),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("server"));
    }
}

#[cfg(test)]
mod ttl_tests {
    use super::*;

    #[test]
    fn service_ttl_prefers_exact_then_longest_prefix() {
        let mut d = DnsConfig::default();
        d.service_ttl.insert("*".into(), Duration::from_secs(5));
        d.service_ttl.insert("db-*".into(), Duration::from_secs(10));
        d.service_ttl
            .insert("db-primary".into(), Duration::from_secs(1));
        assert_eq!(d.service_ttl("db-primary"), Duration::from_secs(1));
        assert_eq!(d.service_ttl("db-replica"), Duration::from_secs(10));
        assert_eq!(d.service_ttl("web"), Duration::from_secs(5));
        assert_eq!(DnsConfig::default().service_ttl("web"), Duration::ZERO);
    }
}
