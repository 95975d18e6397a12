//! Raft servers in network namespaces the test makes (198.18.0.0/15), so a server can be
//! cut off for real: stale reads on a partitioned minority, and a linearizability check of
//! `cas` increments and `?consistent` reads while leaders are killed and servers are
//! partitioned.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_tests::linearize::{self, History, Op, Outcome};
use cairn_tests::netns::Lab;
use cairn_tests::{Agent, AgentOpts, eventually, http_client};
use rand::Rng;

/// Three servers, one per namespace, formed with `-bootstrap-expect=3`.
async fn cluster(lab: &Lab) -> Vec<Agent> {
    let mut servers: Vec<Agent> = Vec::new();
    for i in 0..3 {
        let mut opts = AgentOpts::default()
            .server()
            .ip(lab.ip(i))
            .in_namespace(lab.ns_name(i))
            .node(format!("p{i}"))
            .arg("-bootstrap-expect=3")
            .arg("-retry-interval=1s");
        if i > 0 {
            opts = opts.arg(format!("-retry-join={}", lab.ip(0)));
        }
        servers.push(opts.start().await.unwrap());
    }
    let s = &servers;
    eventually(Duration::from_secs(30), "a leader", || async {
        leader(s).await
    })
    .await
    .unwrap();
    servers
}

fn lab() -> Lab {
    Lab::try_new(3)
        .expect("creating network namespaces")
        .expect("this test needs root to make network namespaces (ip netns)")
}

/// The leader a majority of reachable servers names.
async fn leader(servers: &[Agent]) -> Option<usize> {
    let mut votes: BTreeMap<String, usize> = BTreeMap::new();
    for s in servers {
        let Ok(r) = http_client()
            .get(s.url("/v1/status/leader"))
            .timeout(Duration::from_millis(800))
            .send()
            .await
        else {
            continue;
        };
        let l = r
            .text()
            .await
            .unwrap_or_default()
            .trim_matches('"')
            .to_string();
        if !l.is_empty() {
            *votes.entry(l).or_default() += 1;
        }
    }
    let (addr, n) = votes.into_iter().max_by_key(|(_, n)| *n)?;
    if n < 2 {
        return None;
    }
    servers
        .iter()
        .position(|s| s.rpc.map(|a| a.to_string()) == Some(addr.clone()))
}

/// `curl -i` from inside host `i`'s namespace: (status, headers+body).
fn curl_inside(lab: &Lab, i: usize, url: &str, max_secs: u32) -> (u16, String) {
    let out = lab
        .command(i, "curl")
        .args(["-s", "-i", "-m", &max_secs.to_string(), url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_minority_serves_flagged_stale_reads_but_no_consistent_ones() {
    let lab = lab();
    let servers = cluster(&lab).await;
    let put = |s: &Agent, v: &'static str| {
        let url = s.url("/v1/kv/cfg");
        async move {
            http_client()
                .put(url)
                .body(v)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()
        }
    };
    let l = leader(&servers).await.unwrap();
    assert_eq!(put(&servers[l], "one").await.as_deref(), Some("true"));
    let f = (l + 1) % 3;
    let url = format!("http://{}/v1/kv/cfg", servers[f].http);
    eventually(
        Duration::from_secs(10),
        "the follower to have the write",
        || async {
            let (st, _) = curl_inside(&lab, f, &format!("{url}?stale"), 2);
            (st == 200).then_some(())
        },
    )
    .await
    .unwrap();

    lab.isolate(f).unwrap();
    // The majority goes on without it.
    let other = (f + 1) % 3;
    eventually(
        Duration::from_secs(15),
        "a write on the majority side",
        || async { (put(&servers[other], "two").await.as_deref() == Some("true")).then_some(()) },
    )
    .await
    .unwrap();

    // Once its election timer fires, the cut-off server knows it has no leader: stale
    // reads still answer, flagged; consistent reads fail rather than return old data.
    let stale = eventually(
        Duration::from_secs(15),
        "a stale read flagged leaderless",
        || async {
            let (st, text) = curl_inside(&lab, f, &format!("{url}?stale"), 3);
            (st == 200 && text.to_lowercase().contains("x-consul-knownleader: false"))
                .then_some(text)
        },
    )
    .await
    .unwrap();
    assert!(stale.contains("\"Value\":\"b25l\""), "{stale}"); // "one"
    let (st, text) = curl_inside(&lab, f, &format!("{url}?consistent"), 20);
    assert_eq!(st, 500, "{text}");
    assert!(text.contains("No cluster leader"), "{text}");

    lab.heal(f).unwrap();
    eventually(
        Duration::from_secs(20),
        "the healed server to catch up",
        || async {
            let (st, text) = curl_inside(&lab, f, &format!("{url}?stale"), 3);
            (st == 200
                && text.contains("\"Value\":\"dHdv\"")
                && text.to_lowercase().contains("x-consul-knownleader: true"))
            .then_some(())
        },
    )
    .await
    .unwrap();
}

/// Reads `key` with `?consistent`: (value, modify index); a missing key is 0 at index 0.
async fn read(base: &str, key: &str) -> Result<(u64, u64), ()> {
    let r = http_client()
        .get(format!("{base}/v1/kv/{key}?consistent"))
        .timeout(Duration::from_secs(4))
        .send()
        .await
        .map_err(|_| ())?;
    match r.status().as_u16() {
        404 => Ok((0, 0)),
        200 => {
            let v: Vec<serde_json::Value> = r.json().await.map_err(|_| ())?;
            let raw = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                v[0]["Value"].as_str().unwrap_or_default(),
            )
            .map_err(|_| ())?;
            let value = String::from_utf8_lossy(&raw).parse().map_err(|_| ())?;
            Ok((value, v[0]["ModifyIndex"].as_u64().unwrap_or(0)))
        }
        _ => Err(()),
    }
}

/// `?cas=index` put of `value`: Some(applied) or None when the outcome is unknown.
async fn cas(base: &str, key: &str, index: u64, value: u64) -> Option<bool> {
    let r = http_client()
        .put(format!("{base}/v1/kv/{key}?cas={index}"))
        .body(value.to_string())
        .timeout(Duration::from_secs(4))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    match r.text().await.ok()?.trim() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// Clients increment counters with read + `cas` on every server while the test kills
/// leaders and cuts servers off; the recorded history must be linearizable. Values only
/// grow by one, so a value names one version of its key and Consul's index-based `cas`
/// is the model's compare-and-set on the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cas_and_consistent_reads_stay_linearizable_through_kills_and_partitions() {
    let lab = lab();
    let mut servers = cluster(&lab).await;
    let bases: Vec<String> = servers
        .iter()
        .map(|s| format!("http://{}", s.http))
        .collect();
    let history = Arc::new(History::new());
    let stop = Arc::new(AtomicBool::new(false));
    let keys = ["lin/a", "lin/b", "lin/c"];
    let mut clients = Vec::new();
    for client in 0..6 {
        let base = bases[client % 3].clone();
        let (history, stop) = (history.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let key = keys[rand::rng().random_range(0..keys.len())];
                let t = history.begin(client, Op::Read { key: key.into() });
                let Ok((value, index)) = read(&base, key).await else {
                    history.end(t, Outcome::Unknown);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                history.end(t, Outcome::Read(value));
                let op = Op::Cas {
                    key: key.into(),
                    expect: value,
                    new: value + 1,
                };
                let t = history.begin(client, op);
                match cas(&base, key, index, value + 1).await {
                    Some(ok) => history.end(t, Outcome::Cas(ok)),
                    None => {
                        history.end(t, Outcome::Unknown);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
    }

    let mut faults = Vec::new();
    for round in 0..4 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Some(l) = leader(&servers).await else {
            continue;
        };
        if round % 2 == 0 {
            // Cut the leader off: the majority elects another; the old one must not
            // acknowledge anything on its own.
            lab.isolate(l).unwrap();
            tokio::time::sleep(Duration::from_secs(4)).await;
            lab.heal(l).unwrap();
            faults.push(format!("isolated leader p{l}"));
        } else {
            servers[l].kill9();
            tokio::time::sleep(Duration::from_secs(3)).await;
            servers[l].respawn().unwrap();
            faults.push(format!("killed leader p{l}"));
        }
        let f = (l + 1) % 3;
        lab.isolate(f).unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        lab.heal(f).unwrap();
        faults.push(format!("isolated p{f}"));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let events = Arc::try_unwrap(history).ok().unwrap().into_events();
    let known = events
        .iter()
        .filter(|e| !matches!(e.outcome, Outcome::Unknown))
        .count();
    let applied = events
        .iter()
        .filter(|e| matches!(e.outcome, Outcome::Cas(true)))
        .count();
    let verdict = linearize::check(&events);
    println!(
        "linearizability: checked {} operations ({known} with known outcome, {applied} successful cas) on {} keys under faults {faults:?}: {verdict}",
        verdict.ops, verdict.keys
    );
    assert!(verdict.is_linearizable(), "{verdict}");
    assert!(applied > 20, "too few increments got through: {applied}");
}
