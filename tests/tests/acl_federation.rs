//! ACLs across two datacenters as real processes: dc1 is the primary, dc2 replicates its
//! policies and global tokens through the WAN router; writes made in dc2 land in dc1;
//! local tokens stay in dc2; a request forwarded to another datacenter is checked there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn_tests::federation::{Federation, Shape};
use cairn_tests::{Agent, eventually, http_client};
use serde_json::{Value, json};

const MGMT: &str = "11111111-2222-3333-4444-555555555555";

async fn call(
    a: &Agent,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value, String) {
    let c = http_client();
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = c.request(m, a.url(path)).header("X-Consul-Token", token);
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_owns_acls_and_secondaries_replicate_them() {
    let dir = std::env::temp_dir().join(format!("cairn-acl-fed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = |dc: &str| {
        let mut acl = json!({"enabled": true, "default_policy": "deny",
            "tokens": {"agent": MGMT, "default": MGMT}});
        if dc == "dc1" {
            acl["tokens"]["initial_management"] = json!(MGMT);
        } else {
            acl["enable_token_replication"] = json!(true);
            acl["tokens"]["replication"] = json!(MGMT);
        }
        let path = dir.join(format!("{dc}.json"));
        let body = json!({"primary_datacenter": "dc1", "acl": acl});
        std::fs::write(&path, body.to_string()).unwrap();
        vec![format!("-config-file={}", path.display())]
    };
    let shape = Shape {
        servers: 1,
        routers: 1,
        clients: 1,
    };
    let fed = Federation::start_with(2, shape, config).await.unwrap();
    let (s1, c1) = (&fed.dc("dc1").servers.servers[0], fed.dc("dc1").client());
    let (s2, c2) = (&fed.dc("dc2").servers.servers[0], fed.dc("dc2").client());

    // dc2 copies dc1's tokens: the management token works there.
    let status = eventually(Duration::from_secs(30), "replication running", || async {
        let (_, v, _) = call(s2, "GET", "/v1/acl/replication", MGMT, None).await;
        (v["Running"] == true && v["ReplicatedTokenIndex"].as_u64() > Some(0)).then_some(v)
    })
    .await
    .unwrap();
    assert_eq!(status["Enabled"], true, "{status}");
    assert_eq!(status["SourceDatacenter"], "dc1", "{status}");
    assert_eq!(status["ReplicationType"], "tokens", "{status}");
    assert_ne!(status["LastSuccess"], "0001-01-01T00:00:00Z", "{status}");
    let (_, primary, _) = call(s1, "GET", "/v1/acl/replication", MGMT, None).await;
    assert_eq!(primary["Enabled"], false, "{primary}");
    let (code, me, text) = call(c2, "GET", "/v1/acl/token/self", MGMT, None).await;
    assert_eq!(code, 200, "{text}");
    assert_eq!(me["Policies"][0]["Name"], "global-management");

    // A policy and a global token written in dc2 are the primary's at once.
    let rules = "key_prefix \"app/\" { policy = \"write\" }";
    let p = json!({"Name": "app", "Rules": rules});
    let (code, _, text) = call(c2, "PUT", "/v1/acl/policy", MGMT, Some(p)).await;
    assert_eq!(code, 200, "{text}");
    let (code, _, text) = call(s1, "GET", "/v1/acl/policy/name/app", MGMT, None).await;
    assert_eq!(code, 200, "the primary holds it: {text}");
    let t = json!({"Description": "global", "Policies": [{"Name": "app"}]});
    let (code, global, text) = call(c2, "PUT", "/v1/acl/token", MGMT, Some(t)).await;
    assert_eq!(code, 200, "{text}");
    let (g_accessor, g_secret) = (
        global["AccessorID"].as_str().unwrap().to_string(),
        global["SecretID"].as_str().unwrap().to_string(),
    );
    let path = format!("/v1/acl/token/{g_accessor}");
    assert_eq!(call(s1, "GET", &path, MGMT, None).await.0, 200);

    // Once replicated, dc2 enforces it.
    eventually(
        Duration::from_secs(20),
        "the global token in dc2",
        || async {
            let (code, _, _) = call(c2, "PUT", "/v1/kv/app/x", &g_secret, Some(json!(1))).await;
            (code == 200).then_some(())
        },
    )
    .await
    .unwrap();
    let (code, _, text) = call(c2, "PUT", "/v1/kv/other/x", &g_secret, Some(json!(1))).await;
    assert_eq!((code, text.as_str()), (403, "Permission denied"));

    // A local token stays in dc2, through replication rounds.
    let t = json!({"Description": "local", "Local": true, "Policies": [{"Name": "app"}]});
    let (code, local, text) = call(c2, "PUT", "/v1/acl/token", MGMT, Some(t)).await;
    assert_eq!(code, 200, "{text}");
    let l_accessor = local["AccessorID"].as_str().unwrap().to_string();
    let l_secret = local["SecretID"].as_str().unwrap().to_string();
    let path = format!("/v1/acl/token/{l_accessor}");
    let (code, _, text) = call(s1, "GET", &path, MGMT, None).await;
    assert_eq!(
        (code, text.as_str()),
        (403, "ACL not found"),
        "not in the primary"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        call(s2, "GET", &path, MGMT, None).await.0,
        200,
        "still in dc2"
    );

    // A request forwarded to dc2 is checked there, with the caller's token: dc1 does not
    // know the local token, dc2 does.
    let (code, _, text) = call(c1, "PUT", "/v1/kv/app/y?dc=dc2", &l_secret, Some(json!(2))).await;
    assert_eq!(code, 200, "{text}");
    let (code, _, text) = call(c1, "PUT", "/v1/kv/app/y", &l_secret, Some(json!(2))).await;
    assert_eq!((code, text.as_str()), (403, "ACL not found"));
    let (code, _, _) = call(
        c1,
        "PUT",
        "/v1/kv/other/y?dc=dc2",
        &l_secret,
        Some(json!(2)),
    )
    .await;
    assert_eq!(code, 403);

    // Deleting the global token in the primary ends it in dc2 too.
    let path = format!("/v1/acl/token/{g_accessor}");
    assert_eq!(call(c1, "DELETE", &path, MGMT, None).await.0, 200);
    eventually(
        Duration::from_secs(20),
        "the deleted token gone from dc2",
        || async {
            let (code, _, text) = call(c2, "GET", "/v1/kv/app/x", &g_secret, None).await;
            (code == 403 && text == "ACL not found").then_some(())
        },
    )
    .await
    .unwrap();
    drop(fed);
    let _ = std::fs::remove_dir_all(&dir);
}
