//! Config entries on the real binary: `/v1/config` writes with check-and-set, reads by
//! kind and name with blocking, Consul's errors for bad input, the `cairn config` CLI,
//! and entries kept in snapshots.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cairn_tests::{Agent, http_client, stderr, stdout};
use serde_json::{Value, json};

async fn put(agent: &Agent, query: &str, body: &str) -> (u16, String) {
    let r = http_client()
        .put(agent.url(&format!("/v1/config{query}")))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (
        r.status().as_u16(),
        r.text().await.unwrap().trim().to_string(),
    )
}

async fn get(agent: &Agent, path: &str) -> (u16, String, u64) {
    let r = http_client().get(agent.url(path)).send().await.unwrap();
    let index = r
        .headers()
        .get("x-consul-index")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    (
        r.status().as_u16(),
        r.text().await.unwrap().trim().to_string(),
        index,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn entries_are_written_read_listed_and_deleted() {
    let agent = Agent::dev().await.unwrap();
    // Keys match without regard to case or snake_case, as Consul's decoder does.
    let (s, b) = put(
        &agent,
        "",
        r#"{"kind": "service-defaults", "name": "web", "protocol": "http"}"#,
    )
    .await;
    assert_eq!((s, b.as_str()), (200, "true"));
    let (s, body, index) = get(&agent, "/v1/config/service-defaults/web").await;
    assert_eq!(s, 200, "{body}");
    let entry: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(entry["Kind"], "service-defaults");
    assert_eq!(entry["Name"], "web");
    assert_eq!(entry["Protocol"], "http");
    let modify = entry["ModifyIndex"].as_u64().unwrap();
    assert_eq!(entry["CreateIndex"].as_u64().unwrap(), modify);
    assert!(index >= modify);

    // Check-and-set: a stale index is refused, the current one accepted; 0 only creates.
    let body = r#"{"Kind": "service-defaults", "Name": "web", "Protocol": "grpc"}"#;
    assert_eq!(put(&agent, "?cas=0", body).await, (200, "false".into()));
    assert_eq!(
        put(&agent, &format!("?cas={}", modify + 5), body).await,
        (200, "false".into())
    );
    assert_eq!(
        put(&agent, &format!("?cas={modify}"), body).await,
        (200, "true".into())
    );
    let (_, body, _) = get(&agent, "/v1/config/service-defaults/web").await;
    let entry: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(entry["Protocol"], "grpc");
    assert_eq!(entry["CreateIndex"].as_u64().unwrap(), modify);

    for e in [
        json!({"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}}),
        json!({"Kind": "service-resolver", "Name": "web", "ConnectTimeout": "5s"}),
        json!({"Kind": "service-router", "Name": "web", "Routes": []}),
        json!({"Kind": "service-splitter", "Name": "web", "Splits": [{"Weight": 100}]}),
        json!({"Kind": "ingress-gateway", "Name": "in", "Listeners": []}),
        json!({"Kind": "terminating-gateway", "Name": "out", "Services": []}),
        json!({"Kind": "service-intentions", "Name": "*", "Sources": []}),
        json!({"Kind": "mesh"}),
        json!({"Kind": "exported-services", "Name": "default", "Services": []}),
    ] {
        assert_eq!(
            put(&agent, "", &e.to_string()).await,
            (200, "true".into()),
            "{e}"
        );
    }
    let (_, mesh, _) = get(&agent, "/v1/config/mesh/mesh").await;
    assert!(mesh.contains("\"Name\": \"mesh\""), "{mesh}");

    // Bad input: Consul's codes and messages, and nothing stored.
    let cases = [
        (
            r#"{"Kind": "nope", "Name": "x"}"#,
            400,
            "Request decoding failed: invalid config entry kind: nope",
        ),
        (
            r#"{"Name": "x"}"#,
            400,
            "Request decoding failed: Payload does not contain a kind/Kind key at the top level",
        ),
        (
            r#"{"Kind": "service-defaults", "Name": "x", "Bogus": 1}"#,
            400,
            "Request decoding failed: 1 error occurred:\n\t* invalid config key \"Bogus\"",
        ),
        (
            r#"{"Kind": "proxy-defaults", "Name": "x"}"#,
            500,
            "invalid name (\"x\"), only \"global\" is supported",
        ),
        (r#"{"Kind": "service-router"}"#, 500, "Name is required"),
    ];
    for (body, status, message) in cases {
        assert_eq!(
            put(&agent, "", body).await,
            (status, message.into()),
            "{body}"
        );
    }
    let (s, b) = put(&agent, "", "{bad").await;
    assert_eq!(s, 400);
    assert!(b.starts_with("Request decoding failed: "), "{b}");
    assert_eq!(
        get(&agent, "/v1/config/nope").await.0,
        500,
        "an unknown kind is an error"
    );
    let (s, b, _) = get(&agent, "/v1/config/service-defaults/zzz").await;
    assert_eq!(
        (s, b.as_str()),
        (
            404,
            "Config entry not found for \"service-defaults\" / \"zzz\""
        )
    );
    let (_, list, _) = get(&agent, "/v1/config/service-defaults").await;
    let list: Vec<Value> = serde_json::from_str(&list).unwrap();
    assert_eq!(list.len(), 1, "{list:?}");

    // Delete: plain answers {}, check-and-set answers the outcome.
    let del = |q: &'static str| {
        let url = agent.url(&format!("/v1/config/service-router/web{q}"));
        async move {
            let r = http_client().delete(url).send().await.unwrap();
            (
                r.status().as_u16(),
                r.text().await.unwrap().trim().to_string(),
            )
        }
    };
    assert_eq!(del("?cas=1").await, (200, "false".into()));
    assert_eq!(del("").await, (200, "{}".into()));
    assert_eq!(get(&agent, "/v1/config/service-router/web").await.0, 404);
    assert_eq!(get(&agent, "/v1/config/service-router").await.1, "[]");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blocking_read_wakes_on_a_write() {
    let agent = Agent::dev().await.unwrap();
    let (_, _, index) = get(&agent, "/v1/config/service-defaults").await;
    let url = agent.url(&format!(
        "/v1/config/service-defaults?index={index}&wait=20s"
    ));
    let waiter = tokio::spawn(async move {
        let r = http_client().get(url).send().await.unwrap();
        r.text().await.unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "returned before any change");
    let (s, _) = put(&agent, "", r#"{"Kind": "service-defaults", "Name": "db"}"#).await;
    assert_eq!(s, 200);
    let body = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(body.contains("\"db\""), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_writes_reads_lists_and_deletes_and_snapshots_keep_entries() {
    let agent = Agent::dev().await.unwrap();
    let dir = std::env::temp_dir().join(format!("cairn-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("web.json");
    std::fs::write(
        &file,
        r#"{"Kind": "service-defaults", "Name": "web", "Protocol": "http"}"#,
    )
    .unwrap();
    let out = agent.run_cli(&["config", "write", file.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout(&out).trim(),
        "Config entry written: service-defaults/web"
    );
    let out = agent.run_cli(&[
        "config",
        "read",
        "-kind",
        "service-defaults",
        "-name",
        "web",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.starts_with("{\n    \"Kind\": \"service-defaults\",\n    \"Name\": \"web\",\n"),
        "{text}"
    );
    let out = agent.run_cli(&["config", "list", "-kind=service-defaults"]);
    assert_eq!(stdout(&out), "web\n");
    let out = agent.run_cli(&["config", "read", "-kind", "service-defaults"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Must specify the -name parameter"),
        "{out:?}"
    );

    let snap = dir.join("state.snap");
    let out = agent.run_cli(&["snapshot", "save", snap.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let out = agent.run_cli(&[
        "config",
        "delete",
        "-kind",
        "service-defaults",
        "-name",
        "web",
    ]);
    assert_eq!(
        stdout(&out).trim(),
        "Config entry deleted: service-defaults/web"
    );
    assert_eq!(
        stdout(&agent.run_cli(&["config", "list", "-kind", "service-defaults"])),
        ""
    );
    let out = agent.run_cli(&["snapshot", "restore", snap.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout(&agent.run_cli(&["config", "list", "-kind", "service-defaults"])),
        "web\n"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
