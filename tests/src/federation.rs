//! Several datacenters as real processes: Raft servers, a `cairn-wan-router` beside each,
//! client agents, certificates made with `cairn tls`, all on distinct loopback addresses.
//!
//! Datacenter `k` (1-based) lives on `127.(10+k).0.x`: servers from `.1`, routers from
//! `.11`, clients from `.21`. Router `i` fronts server `s<i+1>` and joins the LAN through
//! it; the first router of every datacenter but the first joins the WAN through the first
//! router of `dc1`, and the other routers find the pool through their LAN (join flooding).
//! WAN gossip runs at test speed (probe 1 s) through a config file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{Agent, AgentOpts, Cluster, eventually, free_port, free_udp_tcp_port, http_client};

/// Where the `cairn-wan-router` binary is.
pub fn router_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CAIRN_ROUTER_BIN") {
        return PathBuf::from(p);
    }
    crate::sibling_bin("cairn-wan-router")
}

/// A CA and server certificates made by `cairn tls`, in a directory of their own.
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    /// A new CA.
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("cairn-certs-{}", rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = Agent::tls_cli(&dir, &["tls", "ca", "create", "-days", "2"]);
        assert!(out.status.success(), "{}", crate::stderr(&out));
        Self { dir }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("consul-agent-ca.pem")
    }

    /// A new certificate of `kind` (`server`, `client`) for `dc`: (cert, key).
    pub fn create(&self, kind: &str, dc: &str) -> (PathBuf, PathBuf) {
        let out = Agent::tls_cli(
            &self.dir,
            &[
                "tls",
                "cert",
                "create",
                &format!("-{kind}"),
                "-dc",
                dc,
                "-days",
                "2",
            ],
        );
        assert!(out.status.success(), "{}", crate::stderr(&out));
        let text = crate::stdout(&out);
        let saved: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("==> Saved "))
            .collect();
        assert_eq!(saved.len(), 2, "{text}");
        (self.dir.join(saved[0]), self.dir.join(saved[1]))
    }
}

impl Default for Certs {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A name no other directory of this or another test process has.
fn rand_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{n}-{nanos}", std::process::id())
}

impl Agent {
    /// Runs `cairn` with `args` in `dir` (where `cairn tls` writes its files).
    pub fn tls_cli(dir: &Path, args: &[&str]) -> std::process::Output {
        Command::new(crate::cairn_bin())
            .args(args)
            .current_dir(dir)
            .output()
            .expect("running cairn tls")
    }
}

/// WAN gossip at test speed: failures are found in seconds, not a minute.
pub const FAST_WAN: &str = r#"{"gossip_wan": {"probe_interval": "1s", "probe_timeout": "500ms",
  "gossip_interval": "200ms", "suspicion_mult": 4}}"#;

/// How to start a router.
#[derive(Debug, Clone)]
pub struct RouterOpts {
    pub dc: String,
    /// The server it fronts.
    pub node: String,
    pub ip: Ipv4Addr,
    pub join_lan: Option<SocketAddr>,
    pub join_wan: Vec<SocketAddr>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `-advertise-wan` (a delay proxy in front of it, say).
    pub advertise_wan: Option<SocketAddr>,
    /// The WAN port, when it must be known before the start.
    pub wan_port: Option<u16>,
    /// Config file contents (JSON), if any.
    pub config: Option<String>,
}

/// A running `cairn-wan-router` process.
pub struct Router {
    child: Child,
    /// Its WAN member name, `NODE.DC`.
    pub name: String,
    pub dc: String,
    /// The QUIC (UDP) address.
    pub wan: SocketAddr,
    /// `/metrics` and `/v1/status`.
    pub http: SocketAddr,
    args: Vec<String>,
    log: PathBuf,
    config_file: Option<PathBuf>,
}

impl RouterOpts {
    pub fn new(dc: &str, node: &str, ip: Ipv4Addr, certs: &Certs) -> Self {
        let (cert, key) = certs.create("server", dc);
        Self {
            dc: dc.into(),
            node: node.into(),
            ip,
            join_lan: None,
            join_wan: Vec::new(),
            ca: certs.ca(),
            cert,
            key,
            advertise_wan: None,
            wan_port: None,
            config: Some(FAST_WAN.into()),
        }
    }

    pub async fn start(self) -> anyhow::Result<Router> {
        let ip = self.ip;
        let wan_port = self.wan_port.unwrap_or_else(|| free_udp_tcp_port(ip));
        let http_port = free_port(ip);
        let mut args: Vec<String> = vec![
            "-dc".into(),
            self.dc.clone(),
            "-node".into(),
            self.node.clone(),
            format!("-bind={ip}"),
            format!("-port={wan_port}"),
            format!("-lan-port={}", free_udp_tcp_port(ip)),
            format!("-rpc-port={}", free_port(ip)),
            format!("-http-port={http_port}"),
            "-retry-interval-wan=1s".into(),
            "-ca-file".into(),
            self.ca.display().to_string(),
            "-cert-file".into(),
            self.cert.display().to_string(),
            "-key-file".into(),
            self.key.display().to_string(),
        ];
        if let Some(a) = self.join_lan {
            args.push(format!("-join-lan={a}"));
        }
        for a in &self.join_wan {
            args.push(format!("-retry-join-wan={a}"));
        }
        if let Some(a) = self.advertise_wan {
            args.push(format!("-advertise-wan={a}"));
        }
        let tag = format!("{ip}-{wan_port}");
        let config_file = self.config.as_ref().map(|body| {
            let p = std::env::temp_dir().join(format!("cairn-router-{tag}.json"));
            std::fs::write(&p, body).unwrap();
            p
        });
        if let Some(p) = &config_file {
            args.push(format!("-config-file={}", p.display()));
        }
        let log = std::env::temp_dir().join(format!("cairn-router-{tag}.log"));
        let _ = std::fs::remove_file(&log);
        let mut r = Router {
            child: spawn_router(&args, &log)?,
            name: format!("{}.{}", self.node, self.dc),
            dc: self.dc,
            wan: SocketAddr::from((ip, wan_port)),
            http: SocketAddr::from((ip, http_port)),
            args,
            log,
            config_file,
        };
        r.wait_ready(Duration::from_secs(20)).await?;
        Ok(r)
    }
}

fn spawn_router(args: &[String], log: &Path) -> anyhow::Result<Child> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Command::new(router_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()
        .context("starting cairn-wan-router")
}

impl Router {
    async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("router exited early ({status}): {}", self.log_text());
            }
            if self.status().await.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("router not ready in {within:?}: {}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/v1/status`, if the router answers.
    pub async fn status(&self) -> Option<serde_json::Value> {
        let r = http_client()
            .get(format!("http://{}/v1/status", self.http))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// `/metrics` as text ("" if the router does not answer).
    pub async fn metrics(&self) -> String {
        let Ok(r) = http_client()
            .get(format!("http://{}/metrics", self.http))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        else {
            return String::new();
        };
        r.text().await.unwrap_or_default()
    }

    /// The sum of a metric's samples whose line starts with `prefix`.
    pub async fn metric_sum(&self, prefix: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Starts the process again with the same flags.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9();
        self.child = spawn_router(&self.args, &self.log)?;
        self.wait_ready(Duration::from_secs(20)).await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- log of router {} ---\n{}", self.name, self.log_text());
        }
        self.kill9();
        let _ = std::fs::remove_file(&self.log);
        if let Some(p) = &self.config_file {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// One datacenter.
pub struct Datacenter {
    pub name: String,
    pub servers: Cluster,
    pub routers: Vec<Router>,
    pub clients: Vec<Agent>,
}

impl Datacenter {
    pub fn client(&self) -> &Agent {
        &self.clients[0]
    }
}

/// How big each datacenter is.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub servers: usize,
    pub routers: usize,
    pub clients: usize,
}

/// Which agents of a datacenter extra arguments are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Server,
    Client,
}

/// Several datacenters joined through their routers.
pub struct Federation {
    pub dcs: Vec<Datacenter>,
    pub certs: Certs,
}

/// `127.(10+k).0.host` for datacenter `k` (1-based).
pub fn dc_ip(k: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 10 + k as u8, 0, host)
}

impl Federation {
    /// Starts `count` datacenters `dc1..` of `shape` and waits until every server sees every
    /// server of every datacenter alive in the WAN pool.
    pub async fn start(count: usize, shape: Shape) -> anyhow::Result<Self> {
        Self::start_with(count, shape, |_| Vec::new()).await
    }

    /// As [`Federation::start`], with `extra(dc)` added to the arguments of every agent
    /// (servers and clients) of datacenter `dc`.
    pub async fn start_with(
        count: usize,
        shape: Shape,
        extra: impl Fn(&str) -> Vec<String>,
    ) -> anyhow::Result<Self> {
        Self::start_roles(count, shape, Certs::new(), |dc, _| extra(dc), false).await
    }

    /// As [`Federation::start`], with TLS required on every RPC port: servers present a
    /// server certificate and check names (`verify_incoming`, `verify_outgoing`,
    /// `verify_server_hostname`), client agents a client certificate, routers `-lan-tls`.
    pub async fn start_tls(count: usize, shape: Shape) -> anyhow::Result<Self> {
        let certs = Certs::new();
        let mut files = std::collections::HashMap::new();
        for k in 1..=count {
            let dc = format!("dc{k}");
            for role in [Role::Server, Role::Client] {
                let kind = if role == Role::Server {
                    "server"
                } else {
                    "client"
                };
                let (cert, key) = certs.create(kind, &dc);
                let body = serde_json::json!({"tls": {
                    "defaults": {"ca_file": certs.ca(), "cert_file": cert, "key_file": key,
                                 "verify_incoming": true, "verify_outgoing": true},
                    "internal_rpc": {"verify_server_hostname": true}}});
                let path = certs.dir.join(format!("rpc-tls-{dc}-{kind}.json"));
                std::fs::write(&path, body.to_string())?;
                files.insert(
                    (dc.clone(), role),
                    format!("-config-file={}", path.display()),
                );
            }
        }
        Self::start_roles(
            count,
            shape,
            certs,
            |dc, role| vec![files[&(dc.to_string(), role)].clone()],
            true,
        )
        .await
    }

    async fn start_roles(
        count: usize,
        shape: Shape,
        certs: Certs,
        extra: impl Fn(&str, Role) -> Vec<String>,
        lan_tls: bool,
    ) -> anyhow::Result<Self> {
        let mut dcs: Vec<Datacenter> = Vec::new();
        for k in 1..=count {
            let name = format!("dc{k}");
            let dc_arg = format!("-datacenter={name}");
            let ip = dc_ip(k, 0);
            let more = extra(&name, Role::Server);
            let mut args: Vec<&str> = vec![&dc_arg];
            args.extend(more.iter().map(String::as_str));
            let servers =
                Cluster::start_on(shape.servers, [127, ip.octets()[1], 0], 1, "s", &args).await?;
            let mut routers = Vec::new();
            for i in 0..shape.routers {
                let server = &servers.servers[i % servers.servers.len()];
                let mut opts = RouterOpts::new(&name, &server.node, dc_ip(k, 11 + i as u8), &certs);
                opts.join_lan = Some(server.serf);
                if i == 0 && k > 1 {
                    opts.join_wan = vec![dcs[0].routers[0].wan];
                }
                if lan_tls {
                    let mut config: serde_json::Value = serde_json::from_str(FAST_WAN)?;
                    config["lan_tls"] = true.into();
                    opts.config = Some(config.to_string());
                }
                routers.push(opts.start().await?);
            }
            let client_args = extra(&name, Role::Client);
            let mut clients = Vec::new();
            for i in 0..shape.clients {
                clients.push(
                    AgentOpts::default()
                        .client()
                        .dns()
                        .ip(dc_ip(k, 21 + i as u8))
                        .node(format!("c{}", i + 1))
                        .arg(dc_arg.clone())
                        .args(client_args.iter().cloned())
                        .arg(format!("-retry-join={}", servers.servers[0].serf))
                        .arg("-retry-interval=1s")
                        .start()
                        .await?,
                );
            }
            dcs.push(Datacenter {
                name,
                servers,
                routers,
                clients,
            });
        }
        let f = Self { dcs, certs };
        let expected = count * shape.servers.min(shape.routers);
        f.wait_wan(expected, Duration::from_secs(60)).await?;
        for dc in &f.dcs {
            for c in &dc.clients {
                eventually(Duration::from_secs(30), "client agents join", || async {
                    (c.members().await.len() > shape.servers).then_some(())
                })
                .await?;
            }
        }
        Ok(f)
    }

    /// Waits until every live server lists `n` alive WAN members.
    pub async fn wait_wan(&self, n: usize, within: Duration) -> anyhow::Result<()> {
        eventually(
            within,
            "every server sees the whole WAN pool alive",
            || async {
                for dc in &self.dcs {
                    for s in &dc.servers.servers {
                        let alive = wan_members(s)
                            .await?
                            .values()
                            .filter(|st| **st == 1)
                            .count();
                        if alive != n {
                            return None;
                        }
                    }
                }
                Some(())
            },
        )
        .await
    }

    pub fn dc(&self, name: &str) -> &Datacenter {
        self.dcs
            .iter()
            .find(|d| d.name == name)
            .expect("a datacenter of the federation")
    }

    pub fn dc_mut(&mut self, name: &str) -> &mut Datacenter {
        self.dcs
            .iter_mut()
            .find(|d| d.name == name)
            .expect("a datacenter of the federation")
    }
}

/// WAN member name → status as a server (or any agent) lists `/v1/agent/members?wan=1`.
pub async fn wan_members(a: &Agent) -> Option<std::collections::BTreeMap<String, u64>> {
    let r = http_client()
        .get(a.url("/v1/agent/members?wan=1"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let list: Vec<serde_json::Value> = r.json().await.ok()?;
    Some(
        list.iter()
            .map(|m| {
                (
                    m["Name"].as_str().unwrap_or_default().to_string(),
                    m["Status"].as_u64().unwrap_or_default(),
                )
            })
            .collect(),
    )
}

/// A QUIC endpoint that speaks to routers the way a router does (ALPN, TLS 1.3) but trusts
/// any server and presents `identity` (cert and key PEM files), or nothing: for tests that
/// play a hostile or broken peer.
pub fn quic_client(identity: Option<(&Path, &Path)>) -> quinn::Endpoint {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(TrustAll(provider)));
    let mut c = match identity {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(key).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    c.alpn_protocols = vec![b"cairn-wan/1".to_vec()];
    let qc = quinn::crypto::rustls::QuicClientConfig::try_from(c).unwrap();
    let mut e = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    e.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(qc)));
    e
}

#[derive(Debug)]
struct TrustAll(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for TrustAll {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// WAN probes twice a second, so coordinates settle within a test.
pub const FAST_PROBES: &str = r#"{"gossip_wan": {"probe_interval": "500ms", "probe_timeout": "400ms",
  "gossip_interval": "200ms", "suspicion_mult": 6}}"#;

/// Round trips between three datacenters, in milliseconds, as the latency tests lay them
/// out: dc1–dc2 50 ms, dc1–dc3 150 ms, dc2–dc3 120 ms.
pub fn three_dc_rtt_ms(a: usize, b: usize) -> u64 {
    match (a.min(b), a.max(b)) {
        (x, y) if x == y => 0,
        (1, 2) => 50,
        (1, 3) => 150,
        (2, 3) => 120,
        _ => unreachable!("three datacenters"),
    }
}

/// Datacenters of one dev agent (`s1`) and its router each, the routers reaching each
/// other through delay proxies: `rtt_ms(a, b)` is the round trip between datacenters `a`
/// and `b` (1-based).
pub struct DelayedDcs {
    pub agents: Vec<Agent>,
    pub routers: Vec<Router>,
    pub proxies: Vec<crate::delay::DelayProxy>,
    pub certs: Certs,
}

/// The datacenter of a router's address (`127.(10+k).0.x`).
pub fn dc_of(ip: std::net::IpAddr) -> usize {
    match ip {
        std::net::IpAddr::V4(v4) => usize::from(v4.octets()[1]).saturating_sub(10),
        std::net::IpAddr::V6(_) => 0,
    }
}

impl DelayedDcs {
    pub async fn start(count: usize, rtt_ms: fn(usize, usize) -> u64) -> anyhow::Result<Self> {
        use std::net::IpAddr;
        let certs = Certs::new();
        let (mut agents, mut routers, mut proxies) = (Vec::new(), Vec::new(), Vec::new());
        let mut first_proxy: Option<SocketAddr> = None;
        for k in 1..=count {
            let dc = format!("dc{k}");
            let agent = AgentOpts::default()
                .ip(dc_ip(k, 1))
                .node("s1")
                .dns()
                .arg(format!("-datacenter={dc}"))
                .start()
                .await?;
            let router_ip = dc_ip(k, 11);
            let wan_port = free_udp_tcp_port(router_ip);
            let delay: crate::delay::DelayFn =
                std::sync::Arc::new(move |from| Duration::from_millis(rtt_ms(k, dc_of(from)) / 2));
            let proxy = crate::delay::DelayProxy::start(
                SocketAddr::new(IpAddr::V4(dc_ip(k, 111)), 0),
                SocketAddr::new(IpAddr::V4(router_ip), wan_port),
                delay,
            )
            .await;
            let mut opts = RouterOpts::new(&dc, "s1", router_ip, &certs);
            opts.wan_port = Some(wan_port);
            opts.advertise_wan = Some(proxy.addr);
            opts.join_lan = Some(agent.serf);
            opts.join_wan = first_proxy.into_iter().collect();
            opts.config = Some(FAST_PROBES.into());
            first_proxy.get_or_insert(proxy.addr);
            routers.push(opts.start().await?);
            proxies.push(proxy);
            agents.push(agent);
        }
        Ok(Self {
            agents,
            routers,
            proxies,
            certs,
        })
    }

    /// `cairn rtt -wan a b` in milliseconds, as the first agent estimates it.
    pub fn estimate(&self, a: &str, b: &str) -> Option<f64> {
        let out = self.agents[0].run_cli(&["rtt", "-wan", a, b]);
        crate::stdout(&out)
            .split("rtt: ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|ms| ms.parse::<f64>().ok())
    }

    /// `/v1/catalog/datacenters` as datacenter `k`'s agent answers it (0-based).
    pub async fn order(&self, k: usize) -> Vec<String> {
        let v = self.agents[k].get_json("/v1/catalog/datacenters").await;
        serde_json::from_value(v).unwrap_or_default()
    }
}
