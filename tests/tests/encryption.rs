//! Gossip encryption through the real binary: `-encrypt`, agents with the wrong key or
//! none kept out, and a key rotated across the whole pool with `cairn keyring` while it
//! keeps working, the keyring surviving a restart.

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use cairn_tests::{Agent, AgentOpts, cairn_bin, eventually, http_client, stdout};

fn keygen() -> String {
    let out = Command::new(cairn_bin()).arg("keygen").output().unwrap();
    assert!(out.status.success());
    stdout(&out).trim().to_string()
}

async fn client(last: u8, server: &Agent, key: Option<&str>, join: &str) -> anyhow::Result<Agent> {
    let mut o = AgentOpts::default()
        .ip(Ipv4Addr::new(127, 0, 0, last))
        .client()
        .node(format!("c{last}"))
        .arg(format!("-{join}={}", server.serf));
    if join == "retry-join" {
        o = o.arg("-retry-interval=200ms");
    }
    if let Some(k) = key {
        o = o.arg(format!("-encrypt={k}"));
    }
    o.start().await
}

async fn alive(agent: &Agent) -> usize {
    agent.members().await.values().filter(|s| **s == 1).count()
}

async fn pool_of(agents: &[&Agent], n: usize) {
    for a in agents {
        eventually(Duration::from_secs(15), "the pool", || async {
            (alive(a).await == n).then_some(())
        })
        .await
        .unwrap();
    }
}

fn keyring(agent: &Agent, args: &[&str]) -> (bool, String) {
    let mut all = vec!["keyring"];
    all.extend(args);
    let out = agent.run_cli(&all);
    (
        out.status.success(),
        format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_stay_out_and_keys_rotate_across_the_pool() {
    let (k1, k2) = (keygen(), keygen());
    let srv = AgentOpts::default()
        .node("srv")
        .arg(format!("-encrypt={k1}"))
        .start()
        .await
        .unwrap();
    let mut c2 = client(2, &srv, Some(&k1), "retry-join").await.unwrap();
    let c3 = client(3, &srv, Some(&k1), "join").await.unwrap();
    pool_of(&[&srv, &c2, &c3], 3).await;
    let me = c2.get_json("/v1/agent/self").await;
    assert_eq!(me["Stats"]["serf_lan"]["encrypted"], "true");

    // The wrong key, or none, cannot join; the server says why in its log.
    let wrong = client(4, &srv, Some(&k2), "join").await;
    assert!(wrong.is_err());
    let plain = client(5, &srv, None, "join").await;
    assert!(plain.is_err());
    assert!(
        srv.log_text().contains("does not decrypt"),
        "{}",
        srv.log_text()
    );
    assert_eq!(alive(&srv).await, 3);

    // Rotation: install k2 everywhere, make it primary, drop k1.
    let (ok, text) = keyring(&c2, &["-list"]);
    assert!(ok, "{text}");
    assert!(
        text.contains("==> Gathering installed encryption keys..."),
        "{text}"
    );
    assert!(text.contains("dc1 (LAN):"), "{text}");
    assert!(text.contains(&format!("  {k1} [3/3]")), "{text}");
    let (ok, text) = keyring(&c3, &["-install", &k2]);
    assert!(ok, "{text}");
    assert!(text.contains("==> Installing new gossip encryption key..."));
    let (ok, text) = keyring(&srv, &["-use", &k2]);
    assert!(ok, "{text}");
    let (ok, text) = keyring(&c2, &["-remove", &k2]);
    assert!(!ok);
    assert!(
        text.contains("Removing the primary key is not allowed"),
        "{text}"
    );
    let (ok, text) = keyring(&c2, &["-remove", &k1]);
    assert!(ok, "{text}");
    let (ok, text) = keyring(&c3, &["-list"]);
    assert!(ok, "{text}");
    assert!(text.contains(&format!("  {k2} [3/3]")), "{text}");
    assert!(!text.contains(&k1), "{text}");
    let (_, text) = keyring(&c3, &["-list-primary"]);
    assert!(text.contains(&format!("  {k2} [3/3]")), "{text}");

    // The pool keeps working on the new key.
    tokio::time::sleep(Duration::from_secs(2)).await;
    pool_of(&[&srv, &c2, &c3], 3).await;

    // The keyring file outlives a restart (it wins over -encrypt's old key).
    c2.restart().await.unwrap();
    pool_of(&[&srv, &c2, &c3], 3).await;

    // Only the new key gets in now.
    assert!(client(6, &srv, Some(&k1), "join").await.is_err());
    let c7 = client(7, &srv, Some(&k2), "join").await.unwrap();
    pool_of(&[&srv, &c7], 4).await;

    // Bad requests to the keyring API.
    let r = http_client()
        .post(srv.url("/v1/operator/keyring"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().starts_with("Request decode failed"));
    let r = http_client()
        .get(srv.url("/v1/operator/keyring?relay-factor=9"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http_client()
        .post(srv.url("/v1/operator/keyring"))
        .body(r#"{"Key":"c2hvcnQ="}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("key size must be 16, 24 or 32 bytes")
    );
}
