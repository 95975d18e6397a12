//! Sessions and KV locks on the real binary: defaults, renew, destroy, TTL expiry,
//! release/delete behaviors and lock-delay; locking through `rs-consul`; a session
//! through a leader's `kill -9` on three servers.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cairn_tests::{Agent, eventually};
use rs_consul::{Config, Consul, LockRequest};
use serde_json::{Value, json};

async fn create(http: &reqwest::Client, agent: &Agent, body: Value) -> String {
    let r: Value = http
        .put(agent.url("/v1/session/create"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["ID"].as_str().unwrap().to_string()
}

async fn put(http: &reqwest::Client, agent: &Agent, path_and_query: &str, body: &str) -> String {
    http.put(agent.url(&format!("/v1/kv/{path_and_query}")))
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .trim()
        .to_string()
}

async fn entry(http: &reqwest::Client, agent: &Agent, key: &str) -> Option<Value> {
    let r = http
        .get(agent.url(&format!("/v1/kv/{key}")))
        .send()
        .await
        .unwrap();
    if r.status() == 404 {
        return None;
    }
    let v: Value = r.json().await.unwrap();
    Some(v[0].clone())
}

async fn session_exists(http: &reqwest::Client, agent: &Agent, id: &str) -> bool {
    let v: Value = http
        .get(agent.url(&format!("/v1/session/info/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v.as_array().is_some_and(|a| !a.is_empty())
}

#[tokio::test(flavor = "multi_thread")]
async fn session_lifecycle_and_defaults() {
    let agent = Agent::dev().await.unwrap();
    let http = cairn_tests::http_client();
    let id = create(&http, &agent, json!({"Name": "web-lock"})).await;
    let info: Value = http
        .get(agent.url(&format!("/v1/session/info/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let s = &info[0];
    assert_eq!(s["Name"], "web-lock");
    assert_eq!(s["Node"], agent.node.as_str());
    assert_eq!(s["LockDelay"], 15_000_000_000u64);
    assert_eq!(s["Behavior"], "release");
    assert_eq!(s["TTL"], "");
    assert_eq!(s["NodeChecks"], json!(["serfHealth"]));
    assert_eq!(s["ServiceChecks"], Value::Null);

    let by_node: Value = http
        .get(agent.url(&format!("/v1/session/node/{}", agent.node)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(by_node.as_array().unwrap().len(), 1);
    let renewed = http
        .put(agent.url(&format!("/v1/session/renew/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(renewed.status(), 200);
    let destroyed = http
        .put(agent.url(&format!("/v1/session/destroy/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(destroyed.text().await.unwrap().trim(), "true");
    assert!(!session_exists(&http, &agent, &id).await);
    let r = http
        .put(agent.url(&format!("/v1/session/renew/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.text().await.unwrap(),
        format!("Session id '{id}' not found")
    );
    // LockDelay as a number under 1000 means seconds, as in Consul.
    let id = create(&http, &agent, json!({"LockDelay": 5, "Behavior": "delete"})).await;
    let info: Value = http
        .get(agent.url(&format!("/v1/session/info/{id}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info[0]["LockDelay"], 5_000_000_000u64);
    assert_eq!(info[0]["Behavior"], "delete");
}

#[tokio::test(flavor = "multi_thread")]
async fn acquire_release_and_lock_delay() {
    let agent = Agent::dev().await.unwrap();
    let http = cairn_tests::http_client();
    let s1 = create(&http, &agent, json!({"LockDelay": "2s"})).await;
    let s2 = create(&http, &agent, json!({})).await;
    assert_eq!(
        put(&http, &agent, &format!("svc/leader?acquire={s1}"), "me").await,
        "true"
    );
    let e = entry(&http, &agent, "svc/leader").await.unwrap();
    assert_eq!(
        (e["Session"].as_str(), e["LockIndex"].as_u64()),
        (Some(s1.as_str()), Some(1))
    );
    assert_eq!(
        put(&http, &agent, &format!("svc/leader?acquire={s2}"), "you").await,
        "false"
    );
    assert_eq!(
        put(&http, &agent, &format!("svc/leader?release={s2}"), "").await,
        "false"
    );

    // Destroying the holder releases the key and starts its 2s lock-delay. The delay
    // starts when the server applies the destroy, so time it from before the request.
    let destroyed = Instant::now();
    http.put(agent.url(&format!("/v1/session/destroy/{s1}")))
        .send()
        .await
        .unwrap();
    let e = entry(&http, &agent, "svc/leader").await.unwrap();
    assert!(e.get("Session").is_none());
    assert_eq!(
        put(&http, &agent, &format!("svc/leader?acquire={s2}"), "you").await,
        "false"
    );
    eventually(Duration::from_secs(5), "lock-delay to pass", || async {
        (put(&http, &agent, &format!("svc/leader?acquire={s2}"), "you").await == "true")
            .then_some(())
    })
    .await
    .unwrap();
    assert!(destroyed.elapsed() >= Duration::from_secs(2));
    let e = entry(&http, &agent, "svc/leader").await.unwrap();
    assert_eq!(e["LockIndex"], 2);
    assert_eq!(
        put(&http, &agent, &format!("svc/leader?release={s2}"), "").await,
        "true"
    );
    let e = entry(&http, &agent, "svc/leader").await.unwrap();
    assert!(e.get("Session").is_none());
    assert_eq!(e["LockIndex"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_session_on_acquire_is_an_error_and_changes_nothing() {
    let agent = Agent::dev().await.unwrap();
    let http = cairn_tests::http_client();
    let r = http
        .put(agent.url("/v1/kv/k?acquire=00000000-0000-0000-0000-000000000000"))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert_eq!(
        r.text().await.unwrap(),
        "raft apply failed: invalid session \"00000000-0000-0000-0000-000000000000\""
    );
    assert!(entry(&http, &agent, "k").await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn ttl_sessions_expire_unless_renewed() {
    let agent = Agent::dev().await.unwrap();
    let http = cairn_tests::http_client();
    let idle = create(
        &http,
        &agent,
        json!({"TTL": "10s", "Behavior": "delete", "LockDelay": 0}),
    )
    .await;
    let kept = create(&http, &agent, json!({"TTL": "10s"})).await;
    assert_eq!(
        put(&http, &agent, &format!("ttl/idle?acquire={idle}"), "x").await,
        "true"
    );
    let start = Instant::now();
    // Renew one session every 4 s; leave the other alone.
    let renewer = tokio::spawn({
        let http = http.clone();
        let url = agent.url(&format!("/v1/session/renew/{kept}"));
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(4)).await;
                http.put(&url).send().await.unwrap();
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(
        session_exists(&http, &agent, &idle).await,
        "expired before its TTL"
    );
    eventually(
        Duration::from_secs(20),
        "idle session to expire",
        || async { (!session_exists(&http, &agent, &idle).await).then_some(()) },
    )
    .await
    .unwrap();
    let lived = start.elapsed();
    println!("unrenewed 10s session expired after {lived:?}");
    assert!(
        lived <= Duration::from_secs(22),
        "Consul allows up to 2x TTL"
    );
    assert!(
        entry(&http, &agent, "ttl/idle").await.is_none(),
        "delete behavior"
    );
    assert!(session_exists(&http, &agent, &kept).await);
    renewer.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn rs_consul_lock_is_exclusive() {
    let agent = Agent::dev().await.unwrap();
    let c = Consul::new(Config {
        address: agent.base(),
        token: None,
        ..Default::default()
    });
    let req = LockRequest {
        key: "leader",
        timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let lock = c.get_lock(req, b"node-a").await.unwrap();
    let second = c.get_lock(req, b"node-b").await;
    assert!(second.is_err(), "a second session must not get the lock");
    let http = cairn_tests::http_client();
    let e = entry(&http, &agent, "leader").await.unwrap();
    assert_eq!(e["Session"].as_str(), Some(lock.session_id.as_str()));
}

/// The first answer `path` gets from `agent` once a leader answers again (a 200), with
/// the time it came.
async fn first_answer(http: &reqwest::Client, agent: &Agent, path: &str) -> (Value, Instant) {
    eventually(Duration::from_secs(20), "a leader to answer", || async {
        let r = http
            .get(agent.url(path))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        if r.status() != 200 {
            return None;
        }
        Some((r.json::<Value>().await.ok()?, Instant::now()))
    })
    .await
    .unwrap()
}

/// A session created through a follower survives the leader's `kill -9`: the first
/// answer under the new leader has it, the new leader arms its TTL timer (it expires
/// unrenewed), and the lock it held keeps its lock-delay when it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_survives_leader_failover_and_its_ttl_and_lock_delay_hold() {
    let cfg = std::env::temp_dir().join(format!("cairn-sess-failover-{}.json", std::process::id()));
    std::fs::write(&cfg, r#"{"session_ttl_min": "1s"}"#).unwrap();
    let cfg_arg = format!("-config-file={}", cfg.display());
    let mut c = cairn_tests::Cluster::start(3, 100, &[cfg_arg.as_str()])
        .await
        .unwrap();
    let http = cairn_tests::http_client();
    let leader = c.wait_leader(Duration::from_secs(10)).await.unwrap();
    let f = (leader + 1) % 3;
    let id = create(
        &http,
        &c.servers[f],
        json!({"Name": "failover", "TTL": "3s", "LockDelay": "4s"}),
    )
    .await;
    // Killed right after the acknowledgement, before the followers may have applied it.
    c.servers[leader].kill9();
    let killed = Instant::now();

    // The first answer under the new leader has the session.
    let (info, _) = first_answer(&http, &c.servers[f], &format!("/v1/session/info/{id}")).await;
    assert_eq!(info[0]["ID"], id.as_str(), "{info}");
    assert_eq!(
        put(
            &http,
            &c.servers[f],
            &format!("svc/leader?acquire={id}"),
            "me"
        )
        .await,
        "true"
    );

    // Never renewed, it expires on the new leader, no sooner than its TTL.
    eventually(Duration::from_secs(30), "the session to expire", || async {
        (!session_exists(&http, &c.servers[f], &id).await).then_some(())
    })
    .await
    .unwrap();
    let lived = killed.elapsed();
    println!("the session expired {lived:?} after the leader was killed");
    assert!(lived >= Duration::from_secs(3), "expired after {lived:?}");
    // The lock was released, and another session cannot take it during the delay.
    let other = create(&http, &c.servers[f], json!({})).await;
    let e = entry(&http, &c.servers[f], "svc/leader").await.unwrap();
    assert!(e.get("Session").is_none(), "{e}");
    assert_eq!(
        put(
            &http,
            &c.servers[f],
            &format!("svc/leader?acquire={other}"),
            "you"
        )
        .await,
        "false",
        "lock-delay must hold"
    );
    eventually(Duration::from_secs(10), "lock-delay to pass", || async {
        (put(
            &http,
            &c.servers[f],
            &format!("svc/leader?acquire={other}"),
            "you",
        )
        .await
            == "true")
            .then_some(())
    })
    .await
    .unwrap();
    let _ = std::fs::remove_file(&cfg);
}
