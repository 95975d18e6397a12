//! Raft servers as real processes: cluster formation, replication through any server,
//! crash safety under repeated `kill -9`, snapshots, outage recovery and refusal of
//! foreign or damaged state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_tests::{AgentOpts, Cluster, eventually, http_client, stdout};
use tokio::sync::Mutex;

async fn put(http: &str, key: &str, value: &str) -> Option<bool> {
    let r = http_client()
        .put(format!("http://{http}/v1/kv/{key}"))
        .body(value.to_string())
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    Some(r.text().await.ok()?.trim() == "true")
}

/// Key → value of everything under `prefix`, and the `X-Consul-Index`.
async fn list(http: &str, prefix: &str, mode: &str) -> Option<(BTreeMap<String, String>, u64)> {
    let r = http_client()
        .get(format!("http://{http}/v1/kv/{prefix}?recurse&{mode}"))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    let index = r
        .headers()
        .get("x-consul-index")?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    let entries: Vec<serde_json::Value> = r.json().await.ok()?;
    let map = entries
        .iter()
        .map(|e| {
            let v = e["Value"].as_str().unwrap_or_default();
            let raw =
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, v).unwrap();
            (
                e["Key"].as_str().unwrap().to_string(),
                String::from_utf8(raw).unwrap(),
            )
        })
        .collect();
    Some((map, index))
}

/// A `-bootstrap` server on 127.0.0.<octet>, once it accepts writes.
async fn single_server(octet: u8, name: &str, extra: &[String]) -> cairn_tests::Agent {
    let mut opts = AgentOpts::default()
        .server()
        .ip(std::net::Ipv4Addr::new(127, 0, 0, octet))
        .node(name)
        .arg("-bootstrap");
    for a in extra {
        opts = opts.arg(a.clone());
    }
    let s = opts.start().await.unwrap();
    eventually(
        Duration::from_secs(15),
        "a single server to lead",
        || async { put(&s.addr(), "probe", "x").await.filter(|ok| *ok) },
    )
    .await
    .unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_servers_form_one_cluster_replicate_and_snapshot() {
    let c = Cluster::start(3, 30, &[]).await.unwrap();
    // Every server lists the same three voters.
    let peers = stdout(&c.servers[1].run_cli(&["operator", "raft", "list-peers"]));
    assert_eq!(peers.matches("true").count(), 3, "{peers}");
    assert_eq!(peers.matches("leader").count(), 1, "{peers}");

    // Writes through any server reach all of them.
    for (i, s) in c.servers.iter().enumerate() {
        assert_eq!(
            put(&s.addr(), &format!("app/k{i}"), &format!("v{i}")).await,
            Some(true)
        );
    }
    for s in &c.servers {
        let (m, _) = eventually(Duration::from_secs(10), "replication", || async {
            list(&s.addr(), "app/", "stale")
                .await
                .filter(|(m, _)| m.len() == 3)
        })
        .await
        .unwrap();
        assert_eq!(m["app/k2"], "v2");
    }
    // A stale read on a follower is flagged with its leader contact.
    let leader = c.wait_leader(Duration::from_secs(5)).await.unwrap();
    let follower = &c.servers[(leader + 1) % 3];
    let r = http_client()
        .get(follower.url("/v1/kv/app/k0?stale"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-consul-knownleader"], "true");
    assert!(r.headers().contains_key("x-consul-lastcontact"));

    // Snapshot save, inspect, and restore onto a fresh single-server cluster.
    let dir = std::env::temp_dir().join(format!("cairn-snap-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("backup.snap");
    let out = follower.run_cli(&["snapshot", "save", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("Saved and verified snapshot to index"));
    let inspect = stdout(&follower.run_cli(&["snapshot", "inspect", file.to_str().unwrap()]));
    assert!(inspect.contains("KV entries"), "{inspect}");
    assert!(inspect.contains(" 3"), "{inspect}");

    let fresh = single_server(36, "fresh", &[]).await;
    let out = fresh.run_cli(&["snapshot", "restore", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let (m, _) = list(&fresh.addr(), "app/", "consistent").await.unwrap();
    assert_eq!(m.len(), 3);
    assert_eq!(m["app/k1"], "v1");
    // The catalog came back too: the three servers' nodes.
    let nodes = fresh.get_json("/v1/catalog/nodes").await;
    let names: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["Node"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"s30") && names.contains(&"s32"),
        "{names:?}"
    );

    // A damaged snapshot is refused with the reason and nothing changes.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let bad = dir.join("bad.snap");
    std::fs::write(&bad, &bytes).unwrap();
    let out = fresh.run_cli(&["snapshot", "restore", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(cairn_tests::stderr(&out).contains("checksum"), "{out:?}");
    assert_eq!(
        list(&fresh.addr(), "app/", "consistent")
            .await
            .unwrap()
            .0
            .len(),
        3
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A state larger than one RPC frame (16 MiB) is saved through a follower and a client
/// agent, and restored through a client agent onto all three servers: both ways it
/// moves in bounded parts, and the restore replicates as a run of log entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_20_mib_snapshot_saves_through_a_follower_and_restores() {
    let c = Cluster::start(3, 90, &[]).await.unwrap();
    let client = AgentOpts::default()
        .client()
        .ip(std::net::Ipv4Addr::new(127, 0, 0, 94))
        .node("c94")
        .arg(format!("-retry-join={}", c.servers[0].serf))
        .start()
        .await
        .unwrap();
    let leader = c.wait_leader(Duration::from_secs(5)).await.unwrap();
    let follower = &c.servers[(leader + 1) % 3];
    // 42 values of 500 KiB, each different: 21 MiB of state.
    let value = |i: usize| format!("{i:03}-").repeat(500 * 1024 / 4);
    for i in 0..42 {
        let key = format!("big/k{i:02}");
        assert_eq!(
            put(&follower.addr(), &key, &value(i)).await,
            Some(true),
            "{key}"
        );
    }
    let dir = std::env::temp_dir().join(format!("cairn-bigsnap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("big.snap");
    let out = follower.run_cli(&["snapshot", "save", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size > 20 * 1024 * 1024, "{size} bytes");
    let via_client = dir.join("client.snap");
    let out = client.run_cli(&["snapshot", "save", via_client.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(std::fs::metadata(&via_client).unwrap().len() > 20 * 1024 * 1024);

    // Forget the tree, then bring it back from the follower's file.
    let r = http_client()
        .delete(client.url("/v1/kv/big?recurse"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert!(
        list(&client.addr(), "big/", "consistent").await.is_none(),
        "deleted"
    );
    let out = client.run_cli(&["snapshot", "restore", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    for s in &c.servers {
        let (m, _) = eventually(Duration::from_secs(20), "the restored tree", || async {
            list(&s.addr(), "big/", "stale")
                .await
                .filter(|(m, _)| m.len() == 42)
        })
        .await
        .unwrap();
        for i in [0, 17, 41] {
            assert!(m[&format!("big/k{i:02}")] == value(i), "k{i} on {}", s.node);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The issue's crash test: writers on all three servers while the leader, then another
/// server, is killed with -9 and restarted, five rounds. Every acknowledged write must be
/// on every server afterwards, and all servers must agree on the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_five_rounds_of_kill_9() {
    let mut c = Cluster::start(3, 40, &[]).await.unwrap();
    let addrs: Vec<String> = c.servers.iter().map(|s| s.addr()).collect();
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (w, addr) in addrs.iter().enumerate() {
        let (addr, acked, stop) = (addr.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut seq = 0u64;
            let mut attempts = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                attempts += 1;
                let (key, value) = (format!("crash/w{w}/{seq:06}"), format!("value-{w}-{seq}"));
                if put(&addr, &key, &value).await == Some(true) {
                    acked.lock().await.insert(key, value);
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            attempts
        }));
    }
    for round in 0..5 {
        let leader = c.wait_leader(Duration::from_secs(30)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        c.servers[leader].kill9();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.servers[leader].respawn().unwrap();
        c.wait_leader(Duration::from_secs(30)).await.unwrap();
        let other = (leader + 1 + round % 2) % 3;
        tokio::time::sleep(Duration::from_millis(700)).await;
        c.servers[other].kill9();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.servers[other].respawn().unwrap();
    }
    c.wait_leader(Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut attempts = 0;
    for w in writers {
        attempts += w.await.unwrap();
    }
    let acked = acked.lock().await.clone();
    println!(
        "crash test: {} writes acknowledged of {attempts} attempted over 5 rounds",
        acked.len()
    );
    assert!(
        acked.len() > 50,
        "too few writes got through: {}",
        acked.len()
    );

    for (i, addr) in addrs.iter().enumerate() {
        for mode in ["consistent", "stale"] {
            let found = eventually(Duration::from_secs(20), "every acked key", || async {
                list(addr, "crash/", mode)
                    .await
                    .filter(|(m, _)| acked.iter().all(|(k, v)| m.get(k) == Some(v)))
            })
            .await;
            let (m, _) = match found {
                Ok(found) => found,
                Err(e) => {
                    let (m, _) = list(addr, "crash/", mode).await.unwrap_or_default();
                    let missing: Vec<_> = acked
                        .keys()
                        .filter(|k| !m.contains_key(*k))
                        .take(5)
                        .collect();
                    panic!("server {i} ({mode}): {e}; missing e.g. {missing:?}");
                }
            };
            assert!(m.len() >= acked.len());
        }
    }
    // All three settle on the same index for the whole keyspace.
    eventually(
        Duration::from_secs(20),
        "the same X-Consul-Index everywhere",
        || async {
            let mut seen = Vec::new();
            for addr in &addrs {
                seen.push(list(addr, "", "stale").await?.1);
            }
            seen.windows(2).all(|w| w[0] == w[1]).then_some(())
        },
    )
    .await
    .unwrap();
}

/// Quorum lost for good: two of three servers are gone. The survivor is stopped, given a
/// `peers.json` naming only itself, and started: it leads alone with every write kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outage_recovery_with_peers_json() {
    let mut c = Cluster::start(3, 50, &[]).await.unwrap();
    for i in 0..10 {
        assert_eq!(
            put(&c.servers[0].addr(), &format!("keep/{i}"), "x").await,
            Some(true)
        );
    }
    let survivor = c.wait_leader(Duration::from_secs(10)).await.unwrap();
    let dead: Vec<usize> = (0..3).filter(|i| *i != survivor).collect();
    for d in &dead {
        c.servers[*d].kill9();
    }
    // Without quorum the leader steps down (its lease runs out) and writes fail after
    // the hold time with Consul's message.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = http_client()
        .put(c.servers[survivor].url("/v1/kv/keep/lost"))
        .body("y")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert!(r.text().await.unwrap().contains("No cluster leader"));

    let s = &mut c.servers[survivor];
    s.kill9();
    let data = s.data_dir.clone().unwrap();
    let id = std::fs::read_to_string(data.join("node-id")).unwrap();
    let peers = serde_json::json!([{ "id": id.trim(), "address": s.rpc.unwrap().to_string(), "non_voter": false }]);
    std::fs::write(data.join("raft/peers.json"), peers.to_string()).unwrap();
    s.restart().await.unwrap();
    eventually(
        Duration::from_secs(20),
        "the survivor to lead alone",
        || async { put(&s.addr(), "keep/after", "z").await.filter(|ok| *ok) },
    )
    .await
    .unwrap();
    let (m, _) = list(&s.addr(), "keep/", "consistent").await.unwrap();
    assert_eq!(m.len(), 11, "{m:?}");
    assert!(!data.join("raft/peers.json").exists());
    assert!(data.join("raft/peers.info").exists());
    let peers = stdout(&s.run_cli(&["operator", "raft", "list-peers"]));
    assert_eq!(peers.matches("leader").count(), 1, "{peers}");
    assert_eq!(peers.matches(" true ").count(), 1, "{peers}");
}

/// A damaged log or snapshot stops the server at start with the file named.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_log_or_snapshot_is_reported_at_start() {
    let cfg = std::env::temp_dir().join(format!("cairn-snapcfg-{}.json", std::process::id()));
    std::fs::write(&cfg, r#"{"raft_snapshot_threshold": 20}"#).unwrap();
    let mut s = single_server(56, "lonely", &[format!("-config-file={}", cfg.display())]).await;
    for i in 0..60 {
        assert_eq!(
            put(&s.addr(), &format!("fill/{i}"), "data").await,
            Some(true)
        );
    }
    let data = s.data_dir.clone().unwrap();
    let snaps = data.join("raft/snapshots");
    let snap = eventually(Duration::from_secs(10), "a snapshot file", || async {
        std::fs::read_dir(&snaps)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "snap"))
            .max()
    })
    .await
    .unwrap();

    // A clean restart keeps everything (snapshot plus log tail).
    s.restart().await.unwrap();
    let (m, _) = eventually(Duration::from_secs(15), "data after restart", || async {
        list(&s.addr(), "fill/", "consistent").await
    })
    .await
    .unwrap();
    assert_eq!(m.len(), 60);

    s.kill9();
    let newest = std::fs::read_dir(&snaps)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .max()
        .unwrap_or(snap);
    let len = std::fs::metadata(&newest).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    s.respawn().unwrap();
    let status = s
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the server must refuse to start");
    assert!(!status.success());
    let log = s.log_text();
    assert!(log.contains(&newest.display().to_string()), "{log}");

    // Now the log: overwrite everything after the redb header's first page, so the damage
    // hits live pages whatever the file's layout (garbage in free pages is harmless).
    std::fs::remove_dir_all(&snaps).unwrap();
    let db = data.join("raft/raft.redb");
    let mut bytes = std::fs::read(&db).unwrap();
    for b in &mut bytes[4096..] {
        *b = 0xA5;
    }
    std::fs::write(&db, &bytes).unwrap();
    s.respawn().unwrap();
    let status = s
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the server must refuse to start");
    assert!(!status.success());
    assert!(
        s.log_text().contains(&db.display().to_string()),
        "{}",
        s.log_text()
    );
    let _ = std::fs::remove_file(&cfg);
}

/// Servers of another datacenter, or with another cluster's data directory, never enter
/// the configuration, and say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn foreign_servers_are_refused() {
    let c = Cluster::start(3, 60, &[]).await.unwrap();
    let other_dc = AgentOpts::default()
        .server()
        .ip(std::net::Ipv4Addr::new(127, 0, 0, 66))
        .node("dc2-server")
        .arg("-datacenter=dc2")
        .arg("-bootstrap")
        .arg(format!("-retry-join={}", c.servers[0].serf))
        .start()
        .await
        .unwrap();
    // A server from another cluster: bootstrapped alone, then pointed at this pool.
    let mut foreign = single_server(67, "foreign", &[]).await;
    foreign.kill9();
    foreign.push_arg(format!("-retry-join={}", c.servers[0].serf));
    foreign.respawn().unwrap();
    let leader = c.wait_leader(Duration::from_secs(10)).await.unwrap();
    let l = &c.servers[leader];
    eventually(
        Duration::from_secs(20),
        "the foreign server to be refused",
        || async { foreign.log_text().contains("another cluster").then_some(()) },
    )
    .await
    .unwrap();
    assert!(
        l.log_text().contains("another datacenter"),
        "{}",
        l.log_text()
    );
    let config = l.get_json("/v1/operator/raft/configuration").await;
    let voters: Vec<&str> = config["Servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["Voter"].as_bool().unwrap())
        .map(|s| s["Node"].as_str().unwrap())
        .collect();
    assert_eq!(voters.len(), 3, "{config}");
    assert!(!voters.contains(&"foreign") && !voters.contains(&"dc2-server"));
    drop(other_dc);
}

/// Voters and non-voters in the leader's configuration, by node name.
async fn configuration(s: &cairn_tests::Agent) -> (Vec<String>, Vec<String>) {
    let config = s.get_json("/v1/operator/raft/configuration").await;
    let mut voters = Vec::new();
    let mut others = Vec::new();
    for srv in config["Servers"].as_array().cloned().unwrap_or_default() {
        let name = srv["Node"].as_str().unwrap_or_default().to_string();
        if srv["Voter"].as_bool() == Some(true) {
            voters.push(name);
        } else {
            others.push(name);
        }
    }
    voters.sort();
    (voters, others)
}

/// A server added later becomes a voter once it has been healthy for the stabilisation
/// time; one that leaves is removed; a dead one can be removed by the operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn autopilot_promotes_new_servers_and_removes_departed_ones() {
    let cfg = std::env::temp_dir().join(format!("cairn-autopilot-{}.json", std::process::id()));
    std::fs::write(
        &cfg,
        r#"{"autopilot": {"server_stabilization_time": "2s"}}"#,
    )
    .unwrap();
    let cfg_arg = format!("-config-file={}", cfg.display());
    let mut c = Cluster::start(3, 70, &[cfg_arg.as_str()]).await.unwrap();
    let fourth = AgentOpts::default()
        .server()
        .ip(std::net::Ipv4Addr::new(127, 0, 0, 73))
        .node("s73")
        .arg(format!("-retry-join={}", c.servers[0].serf))
        .arg(cfg_arg.clone())
        .start()
        .await
        .unwrap();
    let l = c.wait_leader(Duration::from_secs(10)).await.unwrap();
    let voters = eventually(
        Duration::from_secs(30),
        "the new server to vote",
        || async {
            let (v, _) = configuration(&c.servers[l]).await;
            (v.len() == 4).then_some(v)
        },
    )
    .await
    .unwrap();
    assert!(voters.contains(&"s73".to_string()), "{voters:?}");
    let health = c.servers[l].get_json("/v1/operator/autopilot/health").await;
    assert_eq!(health["FailureTolerance"], 1, "{health}");

    // A graceful leave takes it out of the configuration.
    let out = fourth.run_cli(&["leave"]);
    assert!(out.status.success(), "{out:?}");
    eventually(
        Duration::from_secs(30),
        "the leaver to be removed",
        || async {
            let (v, o) = configuration(&c.servers[l]).await;
            (v.len() == 3 && !v.contains(&"s73".to_string()) && o.is_empty()).then_some(())
        },
    )
    .await
    .unwrap();

    // A crashed follower stays until an operator removes it.
    let victim = (l + 1) % 3;
    let addr = c.servers[victim].rpc.unwrap().to_string();
    c.servers[victim].kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(configuration(&c.servers[l]).await.0.len(), 3);
    let out = c.servers[l].run_cli(&[
        "operator",
        "raft",
        "remove-peer",
        &format!("-address={addr}"),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains(&format!("Removed peer with address \"{addr}\"")));
    assert_eq!(configuration(&c.servers[l]).await.0.len(), 2);
    let _ = std::fs::remove_file(&cfg);
}

/// A follower that fell behind by more than one RPC frame of entries (40 values of 450 KiB,
/// 18 MiB against the 16 MiB frame limit) catches up: the leader splits the batch by bytes.
#[tokio::test(flavor = "multi_thread")]
async fn a_follower_behind_by_more_than_a_frame_catches_up() {
    let c = Cluster::start(3, 80, &[]).await.unwrap();
    let leader = c.wait_leader(Duration::from_secs(10)).await.unwrap();
    let follower = &c.servers[(leader + 1) % 3];
    let addr = c.servers[leader].addr();
    assert_eq!(put(&addr, "big/warm", "x").await, Some(true));
    follower.signal(libc::SIGSTOP);
    let value = "v".repeat(450 * 1024);
    for i in 0..40 {
        assert_eq!(put(&addr, &format!("big/{i:02}"), &value).await, Some(true));
    }
    follower.signal(libc::SIGCONT);
    let (m, _) = eventually(
        Duration::from_secs(60),
        "the follower to catch up",
        || async {
            list(&follower.addr(), "big/", "stale")
                .await
                .filter(|(m, _)| m.len() == 41)
        },
    )
    .await
    .unwrap();
    assert!(m.values().filter(|v| v.len() == value.len()).count() == 40);
    let splits = counter(&c.servers[leader], "cairn_raft_append_splits_total").await;
    assert!(splits >= 1.0, "the leader never split a batch");
}

/// A counter from an agent's Prometheus metrics (0 when it was never incremented).
async fn counter(agent: &cairn_tests::Agent, name: &str) -> f64 {
    let metrics = http_client()
        .get(agent.url("/v1/agent/metrics?format=prometheus"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `?consistent` reads that arrive together share leadership confirmations (read-index
/// batching), and each still sees every write acknowledged before it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consistent_reads_that_arrive_together_share_read_index_rounds() {
    let c = Cluster::start(3, 110, &[]).await.unwrap();
    let leader = &c.servers[c.wait_leader(Duration::from_secs(10)).await.unwrap()];
    // Each read sees the write acknowledged just before it.
    let mut writers = Vec::new();
    for w in 0..16 {
        let addr = leader.addr();
        writers.push(tokio::spawn(async move {
            for i in 0..5 {
                let key = format!("ri/{w}/{i}");
                assert_eq!(put(&addr, &key, "x").await, Some(true));
                let r = http_client()
                    .get(format!("http://{addr}/v1/kv/{key}?consistent"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{key} written before the read");
                assert_eq!(r.headers()["x-consul-effective-consistency"], "consistent");
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    // A burst of reads from 32 clients at once.
    let rounds_before = counter(leader, "cairn_raft_read_index_rounds_total").await;
    let reads_before = counter(leader, "cairn_raft_read_index_reads_total").await;
    let start = Arc::new(tokio::sync::Barrier::new(32));
    let mut readers = Vec::new();
    for w in 0..32 {
        let (addr, start) = (leader.addr(), start.clone());
        readers.push(tokio::spawn(async move {
            let http = http_client();
            start.wait().await;
            for _ in 0..10 {
                let r = http
                    .get(format!("http://{addr}/v1/kv/ri/{}/0?consistent", w % 16))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
            }
        }));
    }
    for r in readers {
        r.await.unwrap();
    }
    let rounds = counter(leader, "cairn_raft_read_index_rounds_total").await - rounds_before;
    let reads = counter(leader, "cairn_raft_read_index_reads_total").await - reads_before;
    println!("{reads} consistent reads in {rounds} read-index rounds");
    assert!(reads >= 320.0, "{reads}");
    assert!(
        rounds < reads,
        "{rounds} rounds for {reads} reads: nothing shared"
    );
}

/// A well-formed Raft message sent to a server's RPC port from an address that is no
/// server of its datacenter is refused, counted, and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_raft_message_from_a_non_server_address_is_refused() {
    use cairn_shared::rpc::client::{CallError, RpcClient};
    use cairn_shared::rpc::wire::{Body, Reply};

    let s = single_server(57, "guarded", &[]).await;
    let before = s.get_json("/v1/operator/raft/configuration").await;
    // The envelope as a server encodes it: named MessagePack, a status probe.
    #[derive(serde::Serialize)]
    struct Envelope {
        datacenter: &'static str,
        cluster_id: Option<String>,
        from: u64,
        msg: &'static str,
    }
    let forged = rmp_serde::to_vec_named(&Envelope {
        datacenter: "dc1",
        cluster_id: None,
        from: 7,
        msg: "Status",
    })
    .unwrap();
    let client = RpcClient::from_ip(std::net::Ipv4Addr::new(127, 0, 0, 99).into());
    let answer = client
        .call(
            s.rpc.unwrap(),
            Body::Raft(forged.clone()),
            Duration::from_secs(5),
        )
        .await;
    match answer {
        Err(CallError::Remote(e)) => {
            assert_eq!(e.message, "Raft messages are accepted only from servers")
        }
        other => panic!("a forged Raft message got {other:?}"),
    }
    // The same bytes from the server's own address are understood: the refusal was about
    // the sender, not the encoding.
    let own = RpcClient::from_ip(std::net::Ipv4Addr::new(127, 0, 0, 57).into());
    let answer = own
        .call(s.rpc.unwrap(), Body::Raft(forged), Duration::from_secs(5))
        .await;
    assert!(matches!(answer, Ok(Reply::Raft(_))), "{answer:?}");
    assert_eq!(s.get_json("/v1/operator/raft/configuration").await, before);
    let metrics = s.get_json("/v1/agent/metrics").await.to_string();
    assert!(metrics.contains("cairn_rpc_bad_frames_total"), "{metrics}");
}

/// `transfer-leader` hands leadership to the named voter, or to any, over HTTP and the
/// CLI; writes go on through the new leader, and a name that is no voter is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leadership_moves_to_the_named_server_on_request() {
    let c = Cluster::start(3, 120, &[]).await.unwrap();
    let first = c.wait_leader(Duration::from_secs(10)).await.unwrap();
    let target = (first + 1) % 3;
    let target_id = c.servers[target].get_json("/v1/agent/self").await["Config"]["NodeID"]
        .as_str()
        .unwrap()
        .to_string();
    // Asked of a follower: the request goes to the leader.
    let other = (first + 2) % 3;
    let r = http_client()
        .post(c.servers[other].url(&format!("/v1/operator/raft/transfer-leader?id={target_id}")))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    if status != 200 {
        for s in &c.servers {
            eprintln!("=== {}\n{}", s.node, s.log_text());
        }
    }
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body, serde_json::json!({"Success": true}));
    let now = c.wait_leader(Duration::from_secs(10)).await.unwrap();
    assert_eq!(now, target, "leadership went to the named server");
    assert_eq!(
        put(&c.servers[first].addr(), "moved", "1").await,
        Some(true)
    );

    // Without an ID, through the CLI: someone else takes over.
    let out = c.servers[now].run_cli(&["operator", "raft", "transfer-leader"]);
    if !out.status.success() {
        for s in &c.servers {
            eprintln!("=== {}\n{}", s.node, s.log_text());
        }
    }
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out).trim(), "Success");
    let after = c.wait_leader(Duration::from_secs(10)).await.unwrap();
    assert_ne!(after, now);

    let r = http_client()
        .post(c.servers[0].url("/v1/operator/raft/transfer-leader?id=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(
        r.text().await.unwrap(),
        "Failed to transfer leadership: cannot find peer nope"
    );
    let r = http_client()
        .get(c.servers[0].url("/v1/operator/raft/transfer-leader"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

/// Autopilot follows the settings stored through `/v1/operator/autopilot/configuration`:
/// with promotion held back by the config file, the stored `ServerStabilizationTime` and
/// `CleanupDeadServers` let a new server replace a crashed one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn autopilot_follows_its_stored_configuration() {
    let cfg = std::env::temp_dir().join(format!("cairn-ap-{}.json", std::process::id()));
    std::fs::write(
        &cfg,
        r#"{"autopilot": {"server_stabilization_time": "1h"}}"#,
    )
    .unwrap();
    let cfg_arg = format!("-config-file={}", cfg.display());
    let mut c = Cluster::start(3, 124, &[cfg_arg.as_str()]).await.unwrap();
    let l = c.wait_leader(Duration::from_secs(10)).await.unwrap();
    let stored = c.servers[l]
        .get_json("/v1/operator/autopilot/configuration")
        .await;
    assert_eq!(stored["ServerStabilizationTime"], "1h0m0s", "{stored}");
    let body = r#"{"CleanupDeadServers": true, "LastContactThreshold": "200ms",
        "MaxTrailingLogs": 250, "ServerStabilizationTime": "1s"}"#;
    let r = http_client()
        .put(c.servers[(l + 1) % 3].url("/v1/operator/autopilot/configuration"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let victim = (l + 1) % 3;
    let victim_name = c.servers[victim].node.clone();
    c.servers[victim].kill9();
    // A failed server alone keeps its seat (it may restart); a replacement takes it.
    eventually(
        Duration::from_secs(30),
        "the crash to be noticed",
        || async {
            let members = c.servers[l].get_json("/v1/agent/members").await;
            members
                .as_array()?
                .iter()
                .any(|m| m["Name"] == victim_name.as_str() && m["Status"] == 4)
                .then_some(())
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(configuration(&c.servers[l]).await.0.len(), 3);
    let _fourth = AgentOpts::default()
        .server()
        .ip(std::net::Ipv4Addr::new(127, 0, 0, 127))
        .node("s127")
        .arg(format!("-retry-join={}", c.servers[l].serf))
        .arg(cfg_arg.clone())
        .start()
        .await
        .unwrap();
    let voters = eventually(
        Duration::from_secs(60),
        "the new server to replace the crashed one",
        || async {
            let (v, o) = configuration(&c.servers[l]).await;
            (v.len() == 3 && v.contains(&"s127".to_string()) && o.is_empty()).then_some(v)
        },
    )
    .await;
    if voters.is_err() {
        eprintln!("{:?}", configuration(&c.servers[l]).await);
        eprintln!(
            "{}",
            c.servers[l]
                .get_json("/v1/operator/autopilot/configuration")
                .await
        );
        eprintln!("{}", c.servers[l].get_json("/v1/agent/members").await);
        eprintln!("{}", c.servers[l].log_text());
    }
    let voters = voters.unwrap();
    assert!(!voters.contains(&victim_name), "{voters:?}");
    let _ = std::fs::remove_file(&cfg);
}

/// Autopilot health follows `LastContactThreshold`: a follower that stops answering is
/// unhealthy as soon as the leader has not heard from it for that long (before gossip
/// calls it failed), and healthy again once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn autopilot_health_follows_last_contact() {
    let c = Cluster::start(3, 130, &[]).await.unwrap();
    let l = c.wait_leader(Duration::from_secs(10)).await.unwrap();
    let leader = &c.servers[l];
    let r = http_client()
        .put(leader.url("/v1/operator/autopilot/configuration"))
        .body(
            r#"{"CleanupDeadServers": true, "LastContactThreshold": "300ms",
            "MaxTrailingLogs": 250, "ServerStabilizationTime": "10s"}"#,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let follower = &c.servers[(l + 1) % 3];
    let health = |want: bool| async move {
        eventually(Duration::from_secs(10), "the follower's health", || async {
            let h = leader.get_json("/v1/operator/autopilot/health").await;
            let s = h["Servers"]
                .as_array()?
                .iter()
                .find(|s| s["Name"] == follower.node.as_str())?
                .clone();
            (s["Healthy"] == want).then_some(s)
        })
        .await
        .unwrap()
    };
    let ok = health(true).await;
    assert!(!ok["LastContact"].as_str().unwrap().is_empty(), "{ok}");
    follower.signal(libc::SIGSTOP);
    let lost = health(false).await;
    follower.signal(libc::SIGCONT);
    assert_eq!(
        lost["SerfStatus"], "alive",
        "contact, not gossip, made it unhealthy: {lost}"
    );
    health(true).await;
}
