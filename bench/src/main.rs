//! `cairn-bench`: closed-loop load generators for Cairn's benchmarks.
//!
//! - `kv`: PUT then GET of distinct keys through the Consul KV API (or etcd's v3 JSON
//!   gateway with `--etcd`), at a given concurrency.
//! - `http`: GETs of one path (e.g. `/v1/health/service/web?passing`).
//! - `dns`: UDP queries for one name.
//! - `blocking`: many idle blocking queries on one key, the agent's RSS per query, the
//!   wake-up latency of a write to that key, and the RSS after they close.
//!
//! Each prints one line: operations, throughput and p50/p99 latency. `bench/run.sh` starts
//! the systems under test and drives these; see its header for the figures it prints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
struct Cli {
    /// Concurrent clients
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long to run
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// KV puts and gets against http://ADDR
    Kv {
        addr: String,
        /// Talk to etcd's v3 JSON gateway instead of the Consul API
        #[arg(long)]
        etcd: bool,
        /// Value size in bytes
        #[arg(long, default_value_t = 128)]
        value_size: usize,
    },
    /// GET http://ADDR/PATH repeatedly
    Http { addr: String, path: String },
    /// Idle blocking queries against http://ADDR (the agent's PID, for its RSS)
    Blocking {
        addr: SocketAddr,
        #[arg(long)]
        pid: u32,
        #[arg(long, default_value_t = 10_000)]
        watchers: usize,
    },
    /// UDP DNS queries to ADDR for NAME
    Dns {
        addr: SocketAddr,
        name: String,
        #[arg(long, default_value = "A")]
        qtype: String,
    },
}

/// Latencies in microseconds, merged from all workers.
#[derive(Default)]
struct Stats {
    ok: u64,
    errors: u64,
    micros: Vec<u64>,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.ok += other.ok;
        self.errors += other.errors;
        self.micros.extend(other.micros);
    }

    fn report(mut self, label: &str, elapsed: Duration) {
        self.micros.sort_unstable();
        let pct = |p: f64| {
            if self.micros.is_empty() {
                0.0
            } else {
                let i = ((self.micros.len() as f64 - 1.0) * p).round() as usize;
                self.micros[i] as f64 / 1000.0
            }
        };
        println!(
            "{label}: {} ok, {} errors, {:.0} ops/s, p50 {:.3} ms, p99 {:.3} ms",
            self.ok,
            self.errors,
            self.ok as f64 / elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99)
        );
    }
}

async fn run_workers<F, Fut>(concurrency: usize, seconds: u64, work: F) -> (Stats, Duration)
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let work = Arc::new(work);
    let start = Instant::now();
    let mut handles = Vec::new();
    for w in 0..concurrency {
        let stop = stop.clone();
        let work = work.clone();
        handles.push(tokio::spawn(async move {
            let mut s = Stats::default();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if work(w, n).await {
                    s.ok += 1;
                    s.micros.push(t.elapsed().as_micros() as u64);
                } else {
                    s.errors += 1;
                }
                n += 1;
            }
            s
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Stats::default();
    for h in handles {
        if let Ok(s) = h.await {
            total.merge(s);
        }
    }
    (total, start.elapsed())
}

fn client(concurrency: usize) -> anyhow::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .context("building the HTTP client")
}

async fn kv(cli: &Cli, addr: &str, etcd: bool, value_size: usize) -> anyhow::Result<()> {
    let http = client(cli.concurrency)?;
    let value = "v".repeat(value_size);
    let base = format!("http://{addr}");
    let label = if etcd { "etcd" } else { "cairn" };
    for phase in ["put", "get"] {
        let (http, value, base) = (http.clone(), value.clone(), base.clone());
        let put = phase == "put";
        let (stats, elapsed) = run_workers(cli.concurrency, cli.seconds, move |w, n| {
            let (http, value, base) = (http.clone(), value.clone(), base.clone());
            async move {
                // Gets read the keys the puts wrote (workers wrote at least n=0..).
                let key = format!("bench/{w}/{}", if put { n } else { n % 64 });
                let req = if etcd {
                    let b64 = |s: &str| STANDARD.encode(s.as_bytes());
                    if put {
                        http.post(format!("{base}/v3/kv/put"))
                            .json(&serde_json::json!({"key": b64(&key), "value": b64(&value)}))
                    } else {
                        http.post(format!("{base}/v3/kv/range"))
                            .json(&serde_json::json!({"key": b64(&key)}))
                    }
                } else if put {
                    http.put(format!("{base}/v1/kv/{key}")).body(value)
                } else {
                    http.get(format!("{base}/v1/kv/{key}"))
                };
                matches!(req.send().await, Ok(r) if r.status().is_success() || r.status() == 404)
            }
        })
        .await;
        stats.report(
            &format!("{label} kv {phase} c={}", cli.concurrency),
            elapsed,
        );
    }
    Ok(())
}

async fn http_reads(cli: &Cli, addr: &str, path: &str) -> anyhow::Result<()> {
    let http = client(cli.concurrency)?;
    let url = format!("http://{addr}{path}");
    let (stats, elapsed) = run_workers(cli.concurrency, cli.seconds, move |_, _| {
        let (http, url) = (http.clone(), url.clone());
        async move { matches!(http.get(&url).send().await, Ok(r) if r.status().is_success()) }
    })
    .await;
    stats.report(&format!("http GET {path} c={}", cli.concurrency), elapsed);
    Ok(())
}

async fn dns(cli: &Cli, addr: SocketAddr, name: &str, qtype: &str) -> anyhow::Result<()> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};
    let rtype: RecordType = qtype.parse().context("query type")?;
    let qname = Name::from_ascii(name).context("query name")?;
    let (stats, elapsed) = run_workers(cli.concurrency, cli.seconds, move |w, n| {
        let qname = qname.clone();
        async move {
            let Ok(sock) = tokio::net::UdpSocket::bind("127.0.0.1:0").await else {
                return false;
            };
            let id = ((w as u64 * 7919 + n) & 0xffff) as u16;
            let mut m = Message::query();
            m.metadata.id = id;
            m.add_query(Query::query(qname, rtype));
            let Ok(bytes) = m.to_vec() else { return false };
            if sock.send_to(&bytes, addr).await.is_err() {
                return false;
            }
            let mut buf = [0u8; 4096];
            matches!(
                tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf)).await,
                Ok(Ok((len, _))) if len >= 12 && buf[..2] == id.to_be_bytes() && buf[3] & 0x0f == 0
            )
        }
    })
    .await;
    stats.report(
        &format!("dns {name} {qtype} c={}", cli.concurrency),
        elapsed,
    );
    Ok(())
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// A raw HTTP/1.1 GET whose answer is awaited by reading the socket, so thousands of
/// them cost the client one socket each and nothing else.
async fn open_blocking(addr: SocketAddr, path: &str) -> anyhow::Result<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    Ok(s)
}

async fn blocking(addr: SocketAddr, pid: u32, watchers: usize) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let http = client(1)?;
    // A new value each time: a write of the same value changes no index, as in Consul.
    let put = |key: &'static str| {
        let http = http.clone();
        let value = format!("{:?}", Instant::now());
        async move {
            http.put(format!("http://{addr}/v1/kv/{key}"))
                .body(value)
                .send()
                .await?
                .error_for_status()?;
            anyhow::Ok(())
        }
    };
    put("bench/watched").await?;
    put("bench/other").await?;
    let index_of = |key: &'static str| {
        let http = http.clone();
        async move {
            let r = http
                .get(format!("http://{addr}/v1/kv/{key}"))
                .send()
                .await?;
            r.headers()
                .get("x-consul-index")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .context("no X-Consul-Index")
        }
    };
    let (watched, other) = (
        index_of("bench/watched").await?,
        index_of("bench/other").await?,
    );
    let before = rss_kib(pid)?;
    // A tenth watch another key: the write must not wake them.
    let others = watchers / 10;
    let mut socks = Vec::with_capacity(watchers);
    for i in 0..watchers {
        let (key, index) = if i < others {
            ("other", other)
        } else {
            ("watched", watched)
        };
        let path = format!("/v1/kv/bench/{key}?index={index}&wait=5m");
        socks.push(open_blocking(addr, &path).await?);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = rss_kib(pid)?;
    let per = (idle.saturating_sub(before)) as f64 / watchers as f64;
    println!(
        "blocking idle: {watchers} queries, agent RSS {before} KiB -> {idle} KiB, {per:.1} KiB per query"
    );
    let mut tasks = Vec::new();
    for (i, mut s) in socks.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut byte = [0u8; 1];
            let wait = Duration::from_secs(if i < others { 2 } else { 30 });
            let woke = matches!(
                tokio::time::timeout(wait, s.read(&mut byte)).await,
                Ok(Ok(1))
            );
            (i < others, woke.then(Instant::now))
        }));
    }
    // Every watcher is reading before the write is sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    put("bench/watched").await?;
    let mut wakeups = Stats::default();
    let mut wrong = 0;
    for t in tasks {
        match t.await? {
            (true, Some(_)) => wrong += 1,
            (false, Some(at)) => {
                wakeups.ok += 1;
                wakeups.micros.push((at - start).as_micros() as u64);
            }
            (false, None) => wakeups.errors += 1,
            (true, None) => {}
        }
    }
    let woken = wakeups.ok;
    wakeups.report(
        &format!("blocking wake-up of {woken} watchers of one key ({wrong} of {others} on another key woke)"),
        start.elapsed(),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(pid)?;
    println!("blocking closed: agent RSS {after} KiB ({before} KiB before the queries)");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.what {
        What::Kv {
            addr,
            etcd,
            value_size,
        } => kv(&cli, addr, *etcd, *value_size).await,
        What::Http { addr, path } => http_reads(&cli, addr, path).await,
        What::Dns { addr, name, qtype } => dns(&cli, *addr, name, qtype).await,
        What::Blocking {
            addr,
            pid,
            watchers,
        } => blocking(*addr, *pid, *watchers).await,
    }
}
