//! `/v1/txn` on the real binary: atomic writes, read-only transactions, Consul's answer
//! shape.

#![allow(clippy::unwrap_used)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cairn_tests::Agent;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread")]
async fn write_and_read_transactions() {
    let agent = Agent::dev().await.unwrap();
    let http = cairn_tests::http_client();
    let b64 = |s: &str| STANDARD.encode(s);
    let r = http
        .put(agent.url("/v1/txn"))
        .json(&json!([
            {"KV": {"Verb": "set", "Key": "t/a", "Value": b64("1"), "Flags": 3}},
            {"KV": {"Verb": "set", "Key": "t/b", "Value": b64("2")}},
            {"KV": {"Verb": "cas", "Key": "t/new", "Value": b64("n"), "Index": 0}},
            {"KV": {"Verb": "get", "Key": "t/a"}},
            {"KV": {"Verb": "delete", "Key": "t/b"}},
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["Errors"], Value::Null);
    let results = body["Results"].as_array().unwrap();
    assert_eq!(results.len(), 4, "deletes produce no result: {body}");
    assert_eq!(results[0]["KV"]["Value"], Value::Null);
    assert_eq!(results[0]["KV"]["Flags"], 3);
    assert_eq!(results[3]["KV"]["Value"], b64("1"));
    let a_index = results[0]["KV"]["ModifyIndex"].as_u64().unwrap();

    // Read-only: served as a read, no index header.
    let r = http
        .put(agent.url("/v1/txn"))
        .json(&json!([
            {"KV": {"Verb": "get-tree", "Key": "t/"}},
            {"KV": {"Verb": "check-index", "Key": "t/a", "Index": a_index}},
            {"KV": {"Verb": "check-not-exists", "Key": "t/b"}},
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-consul-index").is_none());
    assert_eq!(r.headers()["x-consul-knownleader"], "true");
    let body: Value = r.json().await.unwrap();
    let keys: Vec<&str> = body["Results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["KV"]["Key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["t/a", "t/new", "t/a"]);

    // A failing check rolls back the whole transaction.
    let r = http
        .put(agent.url("/v1/txn"))
        .json(&json!([
            {"KV": {"Verb": "delete-tree", "Key": "t/"}},
            {"KV": {"Verb": "check-index", "Key": "t/a", "Index": a_index + 1000}},
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["Errors"][0]["What"],
        format!("failed to check index, key \"t/a\" doesn't exist")
    );
    let still: Value = http
        .get(agent.url("/v1/kv/t/?recurse"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(still.as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn txn_locks_follow_sessions() {
    let agent = Agent::dev().await.unwrap();
    let http = cairn_tests::http_client();
    let s: Value = http
        .put(agent.url("/v1/session/create"))
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = s["ID"].as_str().unwrap();
    let r = http
        .put(agent.url("/v1/txn"))
        .json(&json!([
            {"KV": {"Verb": "lock", "Key": "l", "Value": "eA==", "Session": id}},
            {"KV": {"Verb": "check-session", "Key": "l", "Session": id}},
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["Results"][0]["KV"]["LockIndex"], 1);
    assert_eq!(body["Results"][0]["KV"]["Session"], id);
    let r = http
        .put(agent.url("/v1/txn"))
        .json(&json!([{"KV": {"Verb": "unlock", "Key": "l", "Session": "someone-else"}}]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["Errors"][0]["What"],
        "failed to unlock key \"l\", lock isn't held, or is held by another session"
    );
}
