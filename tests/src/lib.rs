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

/// Where the `cairn` binary is.
pub fn cairn_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CAIRN_BIN") {
        return PathBuf::from(p);
    }
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
    let bin = dir.join("cairn");
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
    pub node: String,
    log: PathBuf,
}

impl Agent {
    /// `cairn agent -dev` on a free loopback port, ready to serve.
    pub async fn dev() -> anyhow::Result<Self> {
        Self::dev_with(&[]).await
    }

    /// `cairn agent -dev` plus extra flags.
    pub async fn dev_with(extra: &[&str]) -> anyhow::Result<Self> {
        let port = free_port(Ipv4Addr::LOCALHOST);
        let node = format!("node-{port}");
        let log = std::env::temp_dir().join(format!("cairn-agent-{port}.log"));
        let log_file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(cairn_bin());
        cmd.args(["agent", "-dev", "-dns-port=-1"])
            .arg(format!("-http-port={port}"))
            .arg(format!("-node={node}"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let child = cmd.spawn().context("starting cairn agent")?;
        let mut agent = Self {
            child,
            http: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            node,
            log,
        };
        agent.wait_ready(Duration::from_secs(20)).await?;
        Ok(agent)
    }

    async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let client = http_client();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("agent exited early ({status}): {}", self.log_text());
            }
            if let Ok(r) = client.get(self.url("/v1/status/leader")).send().await
                && r.status().is_success()
                && r.text().await.unwrap_or_default().len() > 2
            {
                return Ok(());
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
    }
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
