//! Blocking queries against the real binary: a watcher of `a` wakes when `a` changes and
//! not when `b` does, and `X-Consul-Index` behaves as Consul clients expect.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cairn_tests::Agent;
use rs_consul::{Config, Consul, ReadKeyRequest};

fn index_of(r: &reqwest::Response) -> u64 {
    r.headers()["x-consul-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn watcher_wakes_on_its_key_only_and_promptly() {
    let agent = Agent::dev().await.unwrap();
    let http = cairn_tests::http_client();
    http.put(agent.url("/v1/kv/a"))
        .body("1")
        .send()
        .await
        .unwrap();
    let first = http.get(agent.url("/v1/kv/a")).send().await.unwrap();
    let n = index_of(&first);

    // A write to `b` while someone blocks on `a` must not end the block.
    let url = agent.url(&format!("/v1/kv/a?index={n}&wait=3s"));
    let waiter = tokio::spawn({
        let http = http.clone();
        async move {
            let start = Instant::now();
            let r = http.get(url).send().await.unwrap();
            (start.elapsed(), index_of(&r))
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    http.put(agent.url("/v1/kv/b"))
        .body("x")
        .send()
        .await
        .unwrap();
    http.put(agent.url("/v1/kv/ab"))
        .body("x")
        .send()
        .await
        .unwrap();
    let (elapsed, index) = waiter.await.unwrap();
    assert!(
        elapsed >= Duration::from_secs(3),
        "returned after {elapsed:?}: woken by an unrelated write"
    );
    assert_eq!(index, n, "unchanged key keeps its index");

    // A write to `a` ends the block within 100 ms of the write's acknowledgement.
    let url = agent.url(&format!("/v1/kv/a?index={n}&wait=30s"));
    let waiter = tokio::spawn({
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            (Instant::now(), index_of(&r), r.text().await.unwrap())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let put = http
        .put(agent.url("/v1/kv/a"))
        .body("2")
        .send()
        .await
        .unwrap();
    let acked = Instant::now();
    assert_eq!(put.text().await.unwrap().trim(), "true");
    let (returned, index, body) = waiter.await.unwrap();
    let latency = returned.saturating_duration_since(acked);
    println!("blocking query returned {latency:?} after the write was acknowledged");
    assert!(latency < Duration::from_millis(100), "took {latency:?}");
    assert!(index > n);
    assert!(body.contains("\"Value\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn prefix_watch_sees_deletes_and_index_never_goes_back() {
    let agent = Agent::dev().await.unwrap();
    let http = cairn_tests::http_client();
    http.put(agent.url("/v1/kv/dir/x"))
        .body("1")
        .send()
        .await
        .unwrap();
    http.put(agent.url("/v1/kv/dir/y"))
        .body("1")
        .send()
        .await
        .unwrap();
    let list = http
        .get(agent.url("/v1/kv/dir/?recurse"))
        .send()
        .await
        .unwrap();
    let n = index_of(&list);

    let url = agent.url(&format!("/v1/kv/dir/?recurse&index={n}&wait=30s"));
    let waiter = tokio::spawn({
        let http = http.clone();
        async move { index_of(&http.get(url).send().await.unwrap()) }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Deleting the newest key must still move the prefix forward (tombstone).
    http.delete(agent.url("/v1/kv/dir/y")).send().await.unwrap();
    let after = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("delete woke the prefix watcher")
        .unwrap();
    assert!(after > n, "prefix index went from {n} to {after}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rs_consul_watch_returns_on_change() {
    let agent = Agent::dev().await.unwrap();
    let c = Consul::new(Config {
        address: agent.base(),
        token: None,
        ..Default::default()
    });
    let http = cairn_tests::http_client();
    http.put(agent.url("/v1/kv/w"))
        .body("1")
        .send()
        .await
        .unwrap();
    let first = c
        .read_key(ReadKeyRequest {
            key: "w",
            ..Default::default()
        })
        .await
        .unwrap();
    let index = first.index;
    let watch = tokio::spawn(async move {
        c.read_key(ReadKeyRequest {
            key: "w",
            index: Some(index),
            wait: Duration::from_secs(20),
            ..Default::default()
        })
        .await
        .map(|r| r.index)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    http.put(agent.url("/v1/kv/w"))
        .body("2")
        .send()
        .await
        .unwrap();
    let new_index = tokio::time::timeout(Duration::from_secs(5), watch)
        .await
        .expect("watch returned")
        .unwrap()
        .unwrap();
    assert!(new_index > index);
}

#[tokio::test(flavor = "multi_thread")]
async fn consistency_flags_and_headers() {
    let agent = Agent::dev().await.unwrap();
    let http = cairn_tests::http_client();
    http.put(agent.url("/v1/kv/c"))
        .body("1")
        .send()
        .await
        .unwrap();
    for (query, mode) in [
        ("", "leader"),
        ("?stale", "stale"),
        ("?consistent", "consistent"),
    ] {
        let r = http
            .get(agent.url(&format!("/v1/kv/c{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-consul-effective-consistency"], mode);
        assert_eq!(r.headers()["x-consul-knownleader"], "true");
        assert_eq!(r.headers()["x-consul-lastcontact"], "0");
    }
    let r = http
        .get(agent.url("/v1/kv/c?stale&consistent"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.text().await.unwrap(),
        "Cannot specify ?stale with ?consistent, conflicting semantics."
    );
}
