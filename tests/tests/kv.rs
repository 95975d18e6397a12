//! KV through the real `cairn agent -dev`: driven by the `rs-consul` client where it covers
//! the call, raw HTTP for Consul's edge cases.

#![allow(clippy::unwrap_used)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cairn_tests::Agent;
use rs_consul::{Config, Consul, CreateOrUpdateKeyRequest, DeleteKeyRequest, ReadKeyRequest};
use serde_json::Value;

fn consul(agent: &Agent) -> Consul {
    Consul::new(Config {
        address: agent.base(),
        token: None,
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn rs_consul_put_get_list_cas_delete() {
    let agent = Agent::dev().await.unwrap();
    let c = consul(&agent);
    let put = |key: &'static str, cas: Option<i64>| CreateOrUpdateKeyRequest {
        key,
        check_and_set: cas,
        ..Default::default()
    };
    let (ok, _) = c
        .create_or_update_key(put("app/config/a", None), b"one".to_vec())
        .await
        .unwrap();
    assert!(ok);
    c.create_or_update_key(put("app/config/b", None), b"two".to_vec())
        .await
        .unwrap();

    let got = c
        .read_key(ReadKeyRequest {
            key: "app/config/a",
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(got.response.len(), 1);
    let entry = &got.response[0];
    // rs-consul decodes the base64 value for us.
    assert_eq!(entry.value.as_deref(), Some("one"));
    let first_index = entry.modify_index;

    let all = c
        .read_key(ReadKeyRequest {
            key: "app/",
            recurse: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let keys: Vec<&str> = all.response.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["app/config/a", "app/config/b"]);

    // CAS with a stale index fails, with the current index succeeds, 0 only creates.
    let (ok, _) = c
        .create_or_update_key(put("app/config/a", Some(first_index + 100)), b"x".to_vec())
        .await
        .unwrap();
    assert!(!ok);
    let (ok, _) = c
        .create_or_update_key(put("app/config/a", Some(first_index)), b"three".to_vec())
        .await
        .unwrap();
    assert!(ok);
    let (ok, _) = c
        .create_or_update_key(put("app/config/a", Some(0)), b"x".to_vec())
        .await
        .unwrap();
    assert!(!ok, "cas=0 must not overwrite an existing key");

    assert!(
        c.delete_key(DeleteKeyRequest {
            key: "app/config/b",
            ..Default::default()
        })
        .await
        .unwrap()
    );
    assert!(
        c.delete_key(DeleteKeyRequest {
            key: "app/",
            recurse: true,
            ..Default::default()
        })
        .await
        .unwrap()
    );
    let gone = c
        .read_key(ReadKeyRequest {
            key: "app/",
            recurse: true,
            ..Default::default()
        })
        .await;
    assert!(gone.is_err(), "an emptied prefix reads as 404");
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_key_is_404_with_index_and_raw_and_keys_work() {
    let agent = Agent::dev().await.unwrap();
    let http = cairn_tests::http_client();
    let r = http.get(agent.url("/v1/kv/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let index: u64 = r.headers()["x-consul-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(index >= 1);
    assert_eq!(r.headers()["x-consul-knownleader"], "true");
    assert_eq!(r.headers()["x-consul-default-acl-policy"], "allow");
    assert!(r.text().await.unwrap().is_empty());

    for (k, v) in [
        ("web/a", "1"),
        ("web/b/c", "2"),
        ("web/b/d", "3"),
        ("zzz", "4"),
    ] {
        let r = http
            .put(agent.url(&format!("/v1/kv/{k}?flags=42")))
            .body(v)
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap().trim(), "true");
    }
    let raw = http
        .get(agent.url("/v1/kv/web/a?raw"))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.headers()["content-type"], "text/plain");
    assert_eq!(raw.text().await.unwrap(), "1");

    let keys: Vec<String> = http
        .get(agent.url("/v1/kv/web/?keys&separator=/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys, ["web/a", "web/b/"]);
    let none = http
        .get(agent.url("/v1/kv/nothing/?keys"))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 404);
    let root: Vec<String> = http
        .get(agent.url("/v1/kv/?keys"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(root.len(), 4);

    let entries: Value = http
        .get(agent.url("/v1/kv/web/a"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(entries[0]["Flags"], 42);
    assert_eq!(entries[0]["LockIndex"], 0);
    assert!(entries[0].get("Session").is_none());

    // An empty body is stored as no value: `"Value": null`, as Consul's; `?raw` is empty.
    let r = http.put(agent.url("/v1/kv/empty")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap().trim(), "true");
    let entries: Value = http
        .get(agent.url("/v1/kv/empty"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(entries[0]["Value"].is_null(), "{entries}");
    let raw = http
        .get(agent.url("/v1/kv/empty?raw"))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 200);
    assert!(raw.text().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn values_over_512_kib_are_refused_with_413() {
    let agent = Agent::dev().await.unwrap();
    let http = cairn_tests::http_client();
    let at_limit = vec![b'x'; 512 * 1024];
    let r = http
        .put(agent.url("/v1/kv/big"))
        .body(at_limit)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "exactly 512 KiB is allowed");
    let r = http
        .put(agent.url("/v1/kv/big"))
        .body(vec![b'y'; 600 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let text = r.text().await.unwrap();
    assert!(
        text.starts_with("Request body(614400 bytes) too large, max size: 524288 bytes."),
        "{text}"
    );
    let stored = http.get(agent.url("/v1/kv/big?raw")).send().await.unwrap();
    assert_eq!(stored.bytes().await.unwrap().len(), 512 * 1024);
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_kv_round_trip() {
    let agent = Agent::dev().await.unwrap();
    let out = agent.run_cli(&["kv", "put", "-flags=7", "cfg/name", "cairn"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        cairn_tests::stdout(&out),
        "Success! Data written to: cfg/name\n"
    );
    let out = agent.run_cli(&["kv", "get", "cfg/name"]);
    assert_eq!(cairn_tests::stdout(&out), "cairn\n");
    let out = agent.run_cli(&["kv", "get", "-detailed", "cfg/name"]);
    let text = cairn_tests::stdout(&out);
    assert!(text.contains("Flags            7\n"), "{text}");
    assert!(text.contains("Session          -\n"), "{text}");

    let out = agent.run_cli(&["kv", "put", "-cas", "-modify-index=1", "cfg/name", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        cairn_tests::stderr(&out),
        "Error! Did not write to cfg/name: CAS failed\n"
    );

    let exported = agent.run_cli(&["kv", "export", "cfg/"]);
    let json: Value = serde_json::from_slice(&exported.stdout).unwrap();
    assert_eq!(json[0]["key"], "cfg/name");
    assert_eq!(json[0]["flags"], 7);
    assert_eq!(json[0]["value"], STANDARD.encode("cairn"));

    let out = agent.run_cli(&["kv", "delete", "-recurse", "cfg/"]);
    assert_eq!(
        cairn_tests::stdout(&out),
        "Success! Deleted keys with prefix: cfg/\n"
    );
    let out = agent.run_cli(&["kv", "get", "cfg/name"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        cairn_tests::stderr(&out),
        "Error! No key exists at: cfg/name\n"
    );

    let file = std::env::temp_dir().join(format!("cairn-import-{}.json", agent.http.port()));
    std::fs::write(&file, &exported.stdout).unwrap();
    let out = agent.run_cli(&["kv", "import", &format!("@{}", file.display())]);
    assert_eq!(cairn_tests::stdout(&out), "Imported: cfg/name\n");
    std::fs::remove_file(&file).unwrap();
    let out = agent.run_cli(&["kv", "get", "cfg/name"]);
    assert_eq!(cairn_tests::stdout(&out), "cairn\n");
}
