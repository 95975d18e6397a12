//! Harness for end-to-end tests: starts real `cairn` processes on free loopback ports and
//! talks to them over HTTP, as users and Consul clients do.
//!
//! The binary is `$CAIRN_BIN` if set, else `target/<profile>/cairn` next to the test
//! executable; build it first (`cargo build --bins`, which the README's test command does).
//! Each agent is killed when its handle drops, so a failing test leaves no process behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub mod delay;
pub mod federation;
pub mod linearize;
pub mod netns;

/// Where the `cairn` binary is.
pub fn cairn_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CAIRN_BIN") {
        return PathBuf::from(p);
    }
    sibling_bin("cairn")
}

/// A binary of the workspace next to the test executable (`target/<profile>/<name>`).
pub fn sibling_bin(name: &str) -> PathBuf {
    // target/<profile>/deps/<test-binary> → target/<profile>/cairn
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("target directory");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bins` before the tests",
        bin.display()
    );
    bin
}

/// An HTTP client for tests. The workspace's reqwest is built with rustls but no default
/// crypto provider, so the ring provider is installed first (once per process).
pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// A TCP port that was free on `ip` a moment ago.
pub fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

/// A running `cairn agent` process.
pub struct Agent {
    child: Child,
    pub http: SocketAddr,
    /// The DNS address (UDP and TCP), when the agent serves DNS.
    pub dns: Option<SocketAddr>,
    /// The LAN gossip address, for `-join`.
    pub serf: SocketAddr,
    /// The server RPC address (dev agents and servers).
    pub rpc: Option<SocketAddr>,
    pub node: String,
    /// A client's or server's data directory, removed with the handle.
    pub data_dir: Option<PathBuf>,
    client: bool,
    wrapper: Vec<String>,
    args: Vec<String>,
    log: PathBuf,
}

/// How to start an agent: `-dev` (or a client agent) on free ports of a loopback address,
/// plus extra flags.
#[derive(Debug, Clone)]
pub struct AgentOpts {
    /// Serve DNS on a free port.
    pub dns: bool,
    pub args: Vec<String>,
    /// The loopback address everything binds to.
    pub ip: Ipv4Addr,
    /// A client agent (no `-dev`), with a data directory of its own.
    pub client: bool,
    /// A Raft server (`-server`, no `-dev`), with a data directory of its own.
    pub server: bool,
    pub node: Option<String>,
    /// Runs the agent under this prefix (`ip netns exec <ns>`).
    pub wrapper: Vec<String>,
}

impl Default for AgentOpts {
    fn default() -> Self {
        Self {
            dns: false,
            args: Vec::new(),
            ip: Ipv4Addr::LOCALHOST,
            client: false,
            server: false,
            node: None,
            wrapper: Vec::new(),
        }
    }
}

impl AgentOpts {
    pub fn dns(mut self) -> Self {
        self.dns = true;
        self
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args(mut self, args: impl IntoIterator<Item = String>) -> Self {
        self.args.extend(args);
        self
    }

    /// Binds to this loopback address (127.0.0.2, ...) instead of 127.0.0.1.
    pub fn ip(mut self, ip: Ipv4Addr) -> Self {
        self.ip = ip;
        self
    }

    /// A client agent rather than `-dev`.
    pub fn client(mut self) -> Self {
        self.client = true;
        self
    }

    pub fn node(mut self, name: impl Into<String>) -> Self {
        self.node = Some(name.into());
        self
    }

    /// A Raft server with its own data directory and the fastest Raft timing.
    pub fn server(mut self) -> Self {
        self.server = true;
        self
    }

    /// Runs the process inside a network namespace the test made (`ip netns exec`), on
    /// Consul's default ports: the namespace has its own port space.
    pub fn in_namespace(mut self, ns: &str) -> Self {
        self.wrapper = ["ip", "netns", "exec", ns].map(String::from).to_vec();
        self
    }

    pub async fn start(self) -> anyhow::Result<Agent> {
        // A port found free can be taken before the agent binds it (by another test's
        // outgoing connection from the same address); then try again on fresh ports.
        for _ in 0..2 {
            match self.clone().start_once().await {
                Err(e)
                    if self.wrapper.is_empty()
                        && format!("{e:#}").contains("Address already in use") =>
                {
                    eprintln!("retrying an agent start on new ports: {e:#}");
                }
                other => return other,
            }
        }
        self.start_once().await
    }

    async fn start_once(self) -> anyhow::Result<Agent> {
        let ip = self.ip;
        let (port, serf, rpc) = if self.wrapper.is_empty() {
            (free_port(ip), free_udp_tcp_port(ip), free_port(ip))
        } else {
            (8500, 8301, 8300)
        };
        let node = self.node.unwrap_or_else(|| format!("node-{port}"));
        let mut args: Vec<String> = vec!["agent".into()];
        if self.server {
            args.extend(["-server".into(), "-raft-multiplier=1".into()]);
        } else if !self.client {
            args.push("-dev".into());
        }
        args.extend([
            format!("-bind={ip}"),
            format!("-client={ip}"),
            format!("-http-port={port}"),
            format!("-serf-lan-port={serf}"),
            format!("-server-port={rpc}"),
            format!("-node={node}"),
        ]);
        let data_dir = (self.client || self.server).then(|| {
            let d = std::env::temp_dir().join(format!("cairn-data-{ip}-{port}"));
            let _ = std::fs::remove_dir_all(&d);
            d
        });
        if let Some(d) = &data_dir {
            args.push(format!("-data-dir={}", d.display()));
        }
        let dns = if self.dns {
            let p = free_udp_tcp_port(ip);
            args.push(format!("-dns-port={p}"));
            Some(SocketAddr::from((ip, p)))
        } else {
            args.push("-dns-port=-1".into());
            None
        };
        args.extend(self.args);
        let log = std::env::temp_dir().join(format!("cairn-agent-{ip}-{port}.log"));
        let _ = std::fs::remove_file(&log);
        let mut agent = Agent {
            child: spawn(&self.wrapper, &args, &log)?,
            wrapper: self.wrapper,
            http: SocketAddr::from((ip, port)),
            dns,
            serf: SocketAddr::from((ip, serf)),
            rpc: (!self.client).then(|| SocketAddr::from((ip, rpc))),
            node,
            data_dir,
            client: self.client || self.server,
            args,
            log,
        };
        agent.wait_ready(Duration::from_secs(20)).await?;
        Ok(agent)
    }
}

/// A port free for both UDP and TCP on `ip` a moment ago.
pub fn free_udp_tcp_port(ip: Ipv4Addr) -> u16 {
    loop {
        let p = free_port(ip);
        if std::net::UdpSocket::bind((ip, p)).is_ok() {
            return p;
        }
    }
}

fn spawn(wrapper: &[String], args: &[String], log: &PathBuf) -> anyhow::Result<Child> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(cairn_bin());
            c
        }
        None => Command::new(cairn_bin()),
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .context("starting cairn agent")
}

impl Agent {
    /// `cairn agent -dev` on a free loopback port, ready to serve.
    pub async fn dev() -> anyhow::Result<Self> {
        AgentOpts::default().start().await
    }

    /// `cairn agent -dev` plus extra flags.
    pub async fn dev_with(extra: &[&str]) -> anyhow::Result<Self> {
        let mut opts = AgentOpts::default();
        for a in extra {
            opts = opts.arg(*a);
        }
        opts.start().await
    }

    /// Kills the process (`kill -9`) if it still runs and starts it again with the same
    /// flags and ports.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(&self.wrapper, &self.args, &self.log)?;
        self.wait_ready(Duration::from_secs(20)).await
    }

    /// Starts the process again after [`Self::kill9`] or an exit, without waiting.
    pub fn respawn(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(&self.wrapper, &self.args, &self.log)?;
        Ok(())
    }

    /// Adds a flag for the next [`Self::restart`].
    pub fn push_arg(&mut self, a: impl Into<String>) {
        self.args.push(a.into());
    }

    /// The agent's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: the agent vanishes without a word to the pool.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `within` for the process to exit by itself; its status if it did.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a signal to the agent process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let client = http_client();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("agent exited early ({status}): {}", self.log_text());
            }
            // A dev agent is ready once it leads; a client once it answers (it may not
            // have joined anyone yet).
            let probe = if self.client {
                "/v1/agent/self"
            } else {
                "/v1/status/leader"
            };
            // DNS binds after HTTP answers; a test that asks DNS waits for it too.
            let dns_up = match self.dns {
                Some(addr) => tokio::net::TcpStream::connect(addr).await.is_ok(),
                None => true,
            };
            // Under ACLs a refusal also proves the agent answers.
            if let Ok(r) = client.get(self.url(probe)).send().await
                && dns_up
            {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                if (status.is_success() && body.len() > 2)
                    || (status == reqwest::StatusCode::FORBIDDEN && self.client)
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("agent not ready in {within:?}: {}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// `host:port` for `CAIRN_HTTP_ADDR`.
    pub fn addr(&self) -> String {
        self.http.to_string()
    }

    /// What the agent has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// A `cairn` CLI command pointed at this agent.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(cairn_bin());
        cmd.env("CAIRN_HTTP_ADDR", self.addr())
            .env_remove("CONSUL_HTTP_ADDR");
        cmd
    }

    /// Runs a `cairn` CLI command against this agent and collects its output.
    pub fn run_cli(&self, args: &[&str]) -> Output {
        self.cli().args(args).output().expect("running cairn")
    }

    /// GETs `path` and decodes the JSON answer.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        http_client()
            .get(self.url(path))
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("a JSON answer")
    }

    /// Member name → Serf status (1 alive, 2 leaving, 3 left, 4 failed) as this agent sees
    /// its pool; empty when the agent does not answer.
    pub async fn members(&self) -> std::collections::BTreeMap<String, u64> {
        let Ok(r) = http_client()
            .get(self.url("/v1/agent/members"))
            .send()
            .await
        else {
            return Default::default();
        };
        let list: Vec<serde_json::Value> = r.json().await.unwrap_or_default();
        list.iter()
            .map(|m| {
                (
                    m["Name"].as_str().unwrap_or_default().to_string(),
                    m["Status"].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    }

    /// An `rs-consul`-style base address.
    pub fn base(&self) -> String {
        format!("http://{}", self.http)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- log of agent {} ---\n{}", self.node, self.log_text());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
        if let Some(d) = &self.data_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// One `dig` run against an agent's DNS: the header status, flags and records by section.
#[derive(Debug, Clone, Default)]
pub struct Dig {
    pub status: String,
    pub flags: Vec<String>,
    pub answer: Vec<String>,
    pub authority: Vec<String>,
    pub additional: Vec<String>,
    pub raw: String,
}

impl Dig {
    /// Records of a section as `name ttl class type data` strings, whitespace collapsed.
    pub fn answers_of(&self, rtype: &str) -> Vec<String> {
        self.answer
            .iter()
            .filter(|r| r.split_whitespace().nth(3) == Some(rtype))
            .cloned()
            .collect()
    }

    /// The data part (after the type) of each answer of a type.
    pub fn data_of(&self, rtype: &str) -> Vec<String> {
        self.answers_of(rtype)
            .iter()
            .map(|r| r.split_whitespace().skip(4).collect::<Vec<_>>().join(" "))
            .collect()
    }
}

/// Runs `dig @addr name type` with extra options (e.g. `+tcp`, `+noedns`).
pub fn dig(addr: SocketAddr, name: &str, rtype: &str, opts: &[&str]) -> Dig {
    let out = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string()])
        .args([
            "+noall",
            "+answer",
            "+authority",
            "+additional",
            "+comments",
        ])
        .args(["+time=2", "+tries=1"])
        .args(opts)
        .arg(name)
        .arg(rtype)
        .output()
        .expect("dig is missing: install bind9-dnsutils (bash .ci/run does)");
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut d = Dig {
        raw: raw.clone(),
        ..Dig::default()
    };
    let mut section = "";
    for line in raw.lines() {
        if let Some(rest) = line.strip_prefix(";; ->>HEADER<<-") {
            d.status = rest
                .split("status: ")
                .nth(1)
                .and_then(|s| s.split(',').next())
                .unwrap_or_default()
                .to_string();
        } else if let Some(rest) = line.strip_prefix(";; flags: ") {
            d.flags = rest
                .split(';')
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect();
        } else if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if line.starts_with(";; ADDITIONAL SECTION") {
            section = "additional";
        } else if !line.starts_with(';') && !line.trim().is_empty() {
            let rec = line.split_whitespace().collect::<Vec<_>>().join(" ");
            match section {
                "answer" => d.answer.push(rec),
                "authority" => d.authority.push(rec),
                "additional" => d.additional.push(rec),
                _ => {}
            }
        }
    }
    d
}

/// Stdout of a CLI run as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr of a CLI run as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Polls `f` every 50 ms until it returns `Some`, or fails after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Raft servers as real processes on 127.0.0.<first>.., formed with `-bootstrap-expect`.
pub struct Cluster {
    pub servers: Vec<Agent>,
}

impl Cluster {
    /// Starts `n` servers on consecutive loopback addresses from `first` and waits until
    /// they agree on a leader.
    pub async fn start(n: usize, first: u8, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_on(n, [127, 0, 0], first, "s", extra).await
    }

    /// Like [`Self::start`] on `127.<net>.<first>..`, servers named `<prefix><first+i>`.
    pub async fn start_on(
        n: usize,
        net: [u8; 3],
        first: u8,
        prefix: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut servers: Vec<Agent> = Vec::new();
        for i in 0..n {
            let ip = Ipv4Addr::new(net[0], net[1], net[2], first + i as u8);
            let mut opts = AgentOpts::default()
                .server()
                .ip(ip)
                .node(format!("{prefix}{}", first as usize + i))
                .arg(format!("-bootstrap-expect={n}"))
                .arg("-retry-interval=1s");
            if let Some(s0) = servers.first() {
                opts = opts.arg(format!("-retry-join={}", s0.serf));
            }
            for a in extra {
                opts = opts.arg(*a);
            }
            servers.push(opts.start().await?);
        }
        let c = Self { servers };
        c.wait_leader(Duration::from_secs(30)).await?;
        Ok(c)
    }

    /// The index of the server every live server names as leader.
    pub async fn wait_leader(&self, within: Duration) -> anyhow::Result<usize> {
        eventually(within, "one leader known to every server", || async {
            let mut seen = Vec::new();
            for s in &self.servers {
                let r = http_client()
                    .get(s.url("/v1/status/leader"))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .ok()?;
                seen.push(r.text().await.ok()?.trim_matches('"').to_string());
            }
            let first = seen.first()?.clone();
            if first.is_empty() || seen.iter().any(|l| *l != first) {
                return None;
            }
            self.servers
                .iter()
                .position(|s| s.rpc.map(|a| a.to_string()) == Some(first.clone()))
        })
        .await
    }
}
