//! ACLs on the real binary: bootstrap once (and again through the reset file), tokens,
//! policies in HCL and JSON, roles and identities; default deny enforced by the servers on
//! KV and the catalog and by the agent on its own endpoints; Consul's errors for bad input;
//! and a walk of every route the HTTP router registers, as anonymous under default deny.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cairn_tests::{Agent, AgentOpts, dig, eventually, http_client};
use serde_json::{Value, json};

const MGMT: &str = "11111111-2222-3333-4444-555555555555";

struct Reply {
    status: u16,
    text: String,
    headers: reqwest::header::HeaderMap,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    fn filtered(&self) -> bool {
        self.headers
            .get("x-consul-results-filtered-by-acls")
            .is_some_and(|v| v == "true")
    }
}

async fn call(agent: &Agent, method: &str, path: &str, token: &str, body: Option<Value>) -> Reply {
    let c = http_client();
    let url = agent.url(path);
    let mut req = match method {
        "GET" => c.get(url),
        "PUT" => c.put(url),
        "DELETE" => c.delete(url),
        "POST" => c.post(url),
        _ => unreachable!(),
    };
    if !token.is_empty() {
        req = req.header("X-Consul-Token", token);
    }
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    Reply {
        status,
        text: r.text().await.unwrap().trim().to_string(),
        headers,
    }
}

async fn put_raw(agent: &Agent, path: &str, token: &str, body: &str) -> Reply {
    let r = http_client()
        .put(agent.url(path))
        .header("X-Consul-Token", token)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    Reply {
        status,
        text: r.text().await.unwrap().trim().to_string(),
        headers,
    }
}

/// A dev agent with ACLs on, `default_policy` deny, a known management token that the
/// agent also uses for its own writes.
async fn deny_agent(extra: Value) -> (Agent, std::path::PathBuf) {
    deny_agent_with(extra, false).await
}

async fn deny_agent_with(extra: Value, dns: bool) -> (Agent, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("cairn-acl-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut acl = json!({"enabled": true, "default_policy": "deny",
        "tokens": {"initial_management": MGMT, "agent": MGMT}});
    if let (Value::Object(a), Value::Object(e)) = (&mut acl, extra) {
        a.extend(e);
    }
    let cfg = dir.join("acl.json");
    std::fs::write(&cfg, json!({ "acl": acl }).to_string()).unwrap();
    let mut opts = AgentOpts::default()
        .arg("-config-file")
        .arg(cfg.to_str().unwrap());
    if dns {
        opts = opts.dns();
    }
    (opts.start().await.unwrap(), dir)
}

/// A new token with one new policy `name` of `rules`.
async fn token_with(agent: &Agent, name: &str, rules: &str) -> String {
    let p = call(
        agent,
        "PUT",
        "/v1/acl/policy",
        MGMT,
        Some(json!({"Name": name, "Rules": rules})),
    )
    .await;
    assert_eq!(p.status, 200, "{}", p.text);
    let body = json!({"Policies": [{"Name": name}]});
    let t = call(agent, "PUT", "/v1/acl/token", MGMT, Some(body)).await;
    assert_eq!(t.status, 200, "{}", t.text);
    t.json()["SecretID"].as_str().unwrap().to_string()
}

/// A new token that may read service `web` and every node.
async fn web_reader(agent: &Agent) -> String {
    let rules = "service \"web\" { policy = \"read\" }\nnode_prefix \"\" { policy = \"read\" }";
    token_with(agent, "web-read", rules).await
}

/// Waits until `token` sees one instance of `web` in the catalog.
async fn web_listed(agent: &Agent, token: &str) {
    eventually(Duration::from_secs(10), "web in the catalog", || async {
        let r = call(agent, "GET", "/v1/catalog/service/web", token, None).await;
        let one = r.json().as_array().is_some_and(|a| a.len() == 1);
        one.then_some(())
    })
    .await
    .unwrap();
}

fn uuid_like() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn with_acls_off_every_acl_endpoint_says_so() {
    let agent = Agent::dev().await.unwrap();
    for (method, path) in [
        ("PUT", "/v1/acl/bootstrap"),
        ("GET", "/v1/acl/tokens"),
        ("GET", "/v1/acl/token/self"),
        ("GET", "/v1/acl/policies"),
        ("PUT", "/v1/agent/token/default"),
    ] {
        let r = call(&agent, method, path, "", Some(json!({"Token": "x"}))).await;
        assert_eq!(
            (r.status, r.text.as_str()),
            (401, "ACL support disabled"),
            "{path}"
        );
    }
    let r = call(&agent, "GET", "/v1/kv/?recurse", "", None).await;
    assert_eq!(r.headers["x-consul-default-acl-policy"], "allow");
}

#[tokio::test(flavor = "multi_thread")]
async fn bootstrap_works_once_and_again_after_the_reset_file() {
    let dir = std::env::temp_dir().join(format!("cairn-acl-boot-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("acl.json");
    std::fs::write(
        &cfg,
        r#"{"acl": {"enabled": true, "default_policy": "deny"}}"#,
    )
    .unwrap();
    let data = dir.join("data");
    let agent = Agent::dev_with(&[
        "-config-file",
        cfg.to_str().unwrap(),
        "-data-dir",
        data.to_str().unwrap(),
    ])
    .await
    .unwrap();
    let first = call(&agent, "PUT", "/v1/acl/bootstrap", "", None).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let t = first.json();
    assert_eq!(t["Description"], "Bootstrap Token (Global Management)");
    assert_eq!(t["ID"], t["SecretID"]);
    assert_eq!(t["Policies"][0]["Name"], "global-management");
    let secret = t["SecretID"].as_str().unwrap().to_string();

    let again = call(&agent, "PUT", "/v1/acl/bootstrap", "", None).await;
    assert_eq!(again.status, 403, "{}", again.text);
    let prefix = "Permission denied: ACL bootstrap no longer allowed (reset index: ";
    let index: u64 = again
        .text
        .strip_prefix(prefix)
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{}", again.text))
        .parse()
        .unwrap();
    // A wrong index in the reset file changes nothing.
    std::fs::write(data.join("acl-bootstrap-reset"), format!("{}", index + 1)).unwrap();
    let wrong = call(&agent, "PUT", "/v1/acl/bootstrap", "", None).await;
    assert_eq!(wrong.status, 403, "{}", wrong.text);
    std::fs::write(data.join("acl-bootstrap-reset"), format!("{index}\n")).unwrap();
    let reset = call(&agent, "PUT", "/v1/acl/bootstrap", "", None).await;
    assert_eq!(reset.status, 200, "{}", reset.text);
    assert_ne!(reset.json()["SecretID"].as_str().unwrap(), secret);
    assert!(!data.join("acl-bootstrap-reset").exists());
    let after = call(&agent, "PUT", "/v1/acl/bootstrap", "", None).await;
    assert_eq!(after.status, 403, "{}", after.text);
    // Both bootstrap tokens manage.
    for s in [
        &secret,
        &reset.json()["SecretID"].as_str().unwrap().to_string(),
    ] {
        let r = call(&agent, "GET", "/v1/acl/tokens", s, None).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn default_deny_is_enforced_and_policies_open_what_they_name() {
    let (agent, dir) = deny_agent(json!({})).await;
    // Anonymous: refused on KV, nothing protected in lists.
    let r = call(&agent, "GET", "/v1/kv/app/x", "", None).await;
    assert_eq!((r.status, r.text.as_str()), (403, "Permission denied"));
    assert_eq!(r.headers["x-consul-default-acl-policy"], "deny");
    let r = call(&agent, "PUT", "/v1/kv/app/x", "", Some(json!("v"))).await;
    assert_eq!(r.status, 403);
    let r = call(&agent, "GET", "/v1/catalog/services", "", None).await;
    assert_eq!((r.status, r.json()), (200, json!({})));
    let r = call(&agent, "GET", "/v1/agent/self", "", None).await;
    assert_eq!(r.status, 403);
    // A secret nobody holds.
    let r = call(
        &agent,
        "GET",
        "/v1/kv/app/x",
        "6d5cbb9e-0e23-4b19-9f1b-5f8a3a2a9a11",
        None,
    )
    .await;
    assert_eq!((r.status, r.text.as_str()), (403, "ACL not found"));

    for (k, v) in [("app/x", "1"), ("app/secret/y", "2"), ("other/z", "3")] {
        let r = put_raw(&agent, &format!("/v1/kv/{k}"), MGMT, v).await;
        assert_eq!((r.status, r.text.as_str()), (200, "true"));
    }
    // A policy in HCL and one in JSON, linked by name.
    let hcl = call(&agent, "PUT", "/v1/acl/policy", MGMT, Some(json!({
        "Name": "app-rw",
        "Rules": "key_prefix \"app/\" { policy = \"write\" }\nkey_prefix \"app/secret/\" { policy = \"deny\" }",
    }))).await;
    assert_eq!(hcl.status, 200, "{}", hcl.text);
    assert_eq!(hcl.json()["Name"], "app-rw");
    let js = call(&agent, "PUT", "/v1/acl/policy", MGMT, Some(json!({
        "Name": "web-read",
        "Rules": r#"{"service": {"web": {"policy": "read"}}, "node_prefix": {"": {"policy": "read"}}}"#,
    }))).await;
    assert_eq!(js.status, 200, "{}", js.text);
    let tok = call(
        &agent,
        "PUT",
        "/v1/acl/token",
        MGMT,
        Some(json!({
            "Description": "app",
            "Policies": [{"Name": "app-rw"}, {"ID": js.json()["ID"]}],
        })),
    )
    .await;
    assert_eq!(tok.status, 200, "{}", tok.text);
    let t = tok.json();
    assert_eq!(t["Policies"].as_array().unwrap().len(), 2, "{t}");
    let secret = t["SecretID"].as_str().unwrap().to_string();

    // The token writes and reads what its policy names, and nothing else.
    let r = put_raw(&agent, "/v1/kv/app/new", &secret, "n").await;
    assert_eq!((r.status, r.text.as_str()), (200, "true"));
    let r = put_raw(&agent, "/v1/kv/other/new", &secret, "n").await;
    assert_eq!(r.status, 403);
    let r = call(&agent, "GET", "/v1/kv/app/secret/y", &secret, None).await;
    assert_eq!(r.status, 403);
    let r = call(&agent, "GET", "/v1/kv/?recurse", &secret, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let listed = r.json();
    let keys: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["app/new", "app/x"]);
    assert!(r.filtered(), "a filtered list says so");
    // Deleting the tree under app/ would touch a denied key.
    let r = call(&agent, "DELETE", "/v1/kv/app/?recurse", &secret, None).await;
    assert_eq!(r.status, 403);
    // Its own token, with its secret; the agent's own endpoints stay closed.
    let r = call(&agent, "GET", "/v1/acl/token/self", &secret, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["SecretID"], secret.as_str());
    let r = call(&agent, "GET", "/v1/agent/self", &secret, None).await;
    assert_eq!(r.status, 403);
    let r = call(&agent, "GET", "/v1/acl/tokens", &secret, None).await;
    assert_eq!(r.status, 403);
    let r = call(&agent, "GET", "/v1/agent/self", MGMT, None).await;
    assert_eq!(r.status, 200);

    // A policy renamed keeps its tokens; one deleted drops out of them.
    let id = hcl.json()["ID"].as_str().unwrap().to_string();
    let mut p = hcl.json();
    p["Name"] = json!("app-rw2");
    let r = call(
        &agent,
        "PUT",
        &format!("/v1/acl/policy/{id}"),
        MGMT,
        Some(p),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = call(
        &agent,
        "GET",
        &format!("/v1/acl/token/{}", t["AccessorID"].as_str().unwrap()),
        MGMT,
        None,
    )
    .await;
    assert!(r.text.contains("app-rw2"), "{}", r.text);
    let r = call(&agent, "GET", "/v1/acl/policy/name/app-rw2", MGMT, None).await;
    assert_eq!(r.json()["ID"], id.as_str());
    let r = call(
        &agent,
        "DELETE",
        &format!("/v1/acl/policy/{id}"),
        MGMT,
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let r = put_raw(&agent, "/v1/kv/app/after", &secret, "n").await;
    assert_eq!(r.status, 403, "its policy is gone");
    let r = call(&agent, "GET", "/v1/acl/policy/name/app-rw2", MGMT, None).await;
    assert_eq!((r.status, r.text.as_str()), (403, "ACL not found"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_and_nothing_is_stored() {
    let (agent, dir) = deny_agent(json!({})).await;
    let policies = || async {
        call(&agent, "GET", "/v1/acl/policies", MGMT, None)
            .await
            .json()
    };
    let before = policies().await;
    for (rules, want) in [
        (
            "key_prefix \"\" { policy = ",
            "Invalid Policy: Failed to parse ACL rules",
        ),
        (
            "key \"a\" { policy = \"sometimes\" }",
            "Invalid Policy: Invalid key policy",
        ),
        ("{\"key\": ", "Invalid Policy: Failed to parse ACL rules"),
        (
            "kee \"a\" { policy = \"read\" }",
            "Invalid Policy: Failed to parse ACL rules: invalid key",
        ),
    ] {
        let r = call(
            &agent,
            "PUT",
            "/v1/acl/policy",
            MGMT,
            Some(json!({"Name": "p", "Rules": rules})),
        )
        .await;
        assert_eq!(r.status, 500, "{rules}: {}", r.text);
        assert!(r.text.starts_with(want), "{rules}: {}", r.text);
    }
    let r = call(
        &agent,
        "PUT",
        "/v1/acl/policy",
        MGMT,
        Some(json!({"Name": "bad name!"})),
    )
    .await;
    assert_eq!(r.status, 500);
    assert!(r.text.contains("invalid Name"), "{}", r.text);
    let r = put_raw(&agent, "/v1/acl/policy", MGMT, "{not json").await;
    assert_eq!(r.status, 400);
    assert!(r.text.starts_with("Policy decoding failed"), "{}", r.text);
    assert_eq!(policies().await, before);

    let tokens = || async {
        call(&agent, "GET", "/v1/acl/tokens", MGMT, None)
            .await
            .json()
    };
    let before = tokens().await;
    for (body, want) in [
        (
            json!({"Policies": [{"Name": "nope"}]}),
            "No such ACL policy with name \"nope\"",
        ),
        (
            json!({"Policies": [{"ID": "9a8b8f8e-1111-2222-3333-444444444444"}]}),
            "No such ACL policy with ID",
        ),
        (
            json!({"SecretID": "not-a-uuid"}),
            "SecretID is not a valid UUID",
        ),
        (
            json!({"ExpirationTTL": "30s"}),
            "ExpirationTTL cannot be less than 1m0s",
        ),
        (json!({"SecretID": MGMT}), "SecretID is already in use"),
    ] {
        let r = call(&agent, "PUT", "/v1/acl/token", MGMT, Some(body.clone())).await;
        assert_eq!(r.status, 500, "{body}: {}", r.text);
        assert!(r.text.contains(want), "{body}: {}", r.text);
    }
    assert_eq!(tokens().await, before);
    // The built-in policy and the anonymous token stay.
    let r = call(
        &agent,
        "DELETE",
        "/v1/acl/policy/00000000-0000-0000-0000-000000000001",
        MGMT,
        None,
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.text);
    let r = call(
        &agent,
        "DELETE",
        "/v1/acl/token/00000000-0000-0000-0000-000000000002",
        MGMT,
        None,
    )
    .await;
    assert_eq!(r.status, 500, "{}", r.text);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn service_identities_roles_clones_and_expiry() {
    let (agent, dir) = deny_agent(json!({})).await;
    // A role granting a service identity; a token holding the role.
    let role = call(
        &agent,
        "PUT",
        "/v1/acl/role",
        MGMT,
        Some(json!({
            "Name": "web-role", "ServiceIdentities": [{"ServiceName": "web"}],
        })),
    )
    .await;
    assert_eq!(role.status, 200, "{}", role.text);
    let tok = call(
        &agent,
        "PUT",
        "/v1/acl/token",
        MGMT,
        Some(json!({
            "Roles": [{"Name": "web-role"}],
        })),
    )
    .await;
    assert_eq!(tok.status, 200, "{}", tok.text);
    let web = tok.json()["SecretID"].as_str().unwrap().to_string();
    // It registers web through the agent, not db.
    let r = call(
        &agent,
        "PUT",
        "/v1/agent/service/register",
        &web,
        Some(json!({"Name": "web", "Port": 80})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = call(
        &agent,
        "PUT",
        "/v1/agent/service/register",
        &web,
        Some(json!({"Name": "db", "Port": 5432})),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text);
    // Anti-entropy carries web to the catalog with the agent's token; anonymous sees
    // nothing of it, the web token does.
    eventually(Duration::from_secs(10), "web in the catalog", || async {
        let r = call(&agent, "GET", "/v1/catalog/service/web", MGMT, None).await;
        (r.json().as_array().is_some_and(|a| a.len() == 1)).then_some(())
    })
    .await
    .unwrap();
    let r = call(&agent, "GET", "/v1/catalog/service/web", "", None).await;
    assert_eq!(r.json(), json!([]));
    let r = call(&agent, "GET", "/v1/health/service/web", &web, None).await;
    assert_eq!(r.json().as_array().unwrap().len(), 1, "{}", r.text);
    let r = call(&agent, "GET", "/v1/agent/services", &web, None).await;
    assert!(r.json().get("web").is_some(), "{}", r.text);
    let role_id = role.json()["ID"].as_str().unwrap().to_string();
    let r = call(
        &agent,
        "GET",
        &format!("/v1/acl/tokens?role={role_id}"),
        MGMT,
        None,
    )
    .await;
    assert_eq!(r.json().as_array().unwrap().len(), 1, "{}", r.text);

    // A clone works like the original, with a secret of its own.
    let accessor = tok.json()["AccessorID"].as_str().unwrap().to_string();
    let c = call(
        &agent,
        "PUT",
        &format!("/v1/acl/token/{accessor}/clone"),
        MGMT,
        Some(json!({"Description": "copy"})),
    )
    .await;
    assert_eq!(c.status, 200, "{}", c.text);
    assert_eq!(c.json()["Description"], "copy");
    assert_ne!(c.json()["SecretID"], web.as_str());
    assert_eq!(c.json()["Roles"][0]["Name"], "web-role");

    // A token that expires stops working, then is deleted.
    let soon = time_in(Duration::from_secs(2));
    let e = call(
        &agent,
        "PUT",
        "/v1/acl/token",
        MGMT,
        Some(json!({
            "Roles": [{"ID": role_id}], "ExpirationTime": soon,
        })),
    )
    .await;
    assert_eq!(e.status, 200, "{}", e.text);
    let short = e.json()["SecretID"].as_str().unwrap().to_string();
    let r = call(&agent, "GET", "/v1/agent/service/web", &short, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    eventually(
        Duration::from_secs(10),
        "the expired token refused",
        || async {
            let r = call(&agent, "GET", "/v1/catalog/service/web", &short, None).await;
            (r.status == 403 && r.text == "ACL not found").then_some(())
        },
    )
    .await
    .unwrap();
    let gone = e.json()["AccessorID"].as_str().unwrap().to_string();
    eventually(
        Duration::from_secs(10),
        "the expired token reaped",
        || async {
            let r = call(&agent, "GET", "/v1/acl/tokens", MGMT, None).await;
            (!r.text.contains(&gone)).then_some(())
        },
    )
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// RFC 3339 for now plus `d`.
fn time_in(d: Duration) -> String {
    (time::OffsetDateTime::now_utc() + d)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_answers_what_the_agent_default_token_may_read() {
    let (agent, dir) = deny_agent_with(json!({}), true).await;
    let dns = agent.dns.unwrap();
    for (name, port) in [("web", 80), ("db", 5432)] {
        let r = call(
            &agent,
            "PUT",
            "/v1/agent/service/register",
            MGMT,
            Some(json!({"Name": name, "Port": port})),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    eventually(Duration::from_secs(10), "both in the catalog", || async {
        let r = call(&agent, "GET", "/v1/catalog/services", MGMT, None).await;
        (r.json().get("web").is_some() && r.json().get("db").is_some()).then_some(())
    })
    .await
    .unwrap();
    // No default token: DNS acts as anonymous and sees nothing.
    assert_eq!(dig(dns, "web.service.consul", "A", &[]).status, "NXDOMAIN");
    let secret = web_reader(&agent).await;
    // Setting the default token needs acl:write.
    let r = call(
        &agent,
        "PUT",
        "/v1/agent/token/default",
        &secret,
        Some(json!({"Token": secret})),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = call(
        &agent,
        "PUT",
        "/v1/agent/token/default",
        MGMT,
        Some(json!({"Token": secret})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let web = dig(dns, "web.service.consul", "A", &[]);
    assert_eq!(
        (web.status.as_str(), web.answer.len()),
        ("NOERROR", 1),
        "{}",
        web.raw
    );
    assert_eq!(dig(dns, "db.service.consul", "A", &[]).status, "NXDOMAIN");
    // HTTP requests without a token act as the default token too.
    let r = call(&agent, "GET", "/v1/catalog/services", "", None).await;
    let listed = r.json();
    assert!(
        listed.get("web").is_some() && listed.get("db").is_none(),
        "{listed}"
    );
    let r = call(
        &agent,
        "PUT",
        "/v1/agent/token/nonsense",
        MGMT,
        Some(json!({"Token": "x"})),
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.text);
    let _ = std::fs::remove_dir_all(&dir);
}

/// On three servers, ACL writes through a follower reach the leader, every server enforces
/// the replicated state, and default allow still never allows managing ACLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_server_enforces_the_replicated_acls() {
    let dir = std::env::temp_dir().join(format!("cairn-acl-c-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("acl.json");
    std::fs::write(
        &cfg,
        json!({"acl": {"enabled": true, "default_policy": "allow",
            "tokens": {"initial_management": MGMT}}})
        .to_string(),
    )
    .unwrap();
    let cfg_arg = format!("-config-file={}", cfg.display());
    let c = cairn_tests::Cluster::start(3, 140, &[cfg_arg.as_str()])
        .await
        .unwrap();
    let l = c.wait_leader(Duration::from_secs(10)).await.unwrap();
    let leader = &c.servers[l];
    let follower = &c.servers[(l + 1) % 3];
    let other = &c.servers[(l + 2) % 3];
    // The management token exists once the leader set ACLs up.
    eventually(Duration::from_secs(10), "the management token", || async {
        (call(follower, "GET", "/v1/acl/token/self", MGMT, None)
            .await
            .status
            == 200)
            .then_some(())
    })
    .await
    .unwrap();
    let r = call(
        follower,
        "PUT",
        "/v1/acl/policy",
        "",
        Some(json!({"Name": "x"})),
    )
    .await;
    assert_eq!(r.status, 403, "anonymous never manages ACLs: {}", r.text);
    let p = call(
        follower,
        "PUT",
        "/v1/acl/policy",
        MGMT,
        Some(json!({
            "Name": "lock", "Rules": "key_prefix \"locked/\" { policy = \"deny\" }",
        })),
    )
    .await;
    assert_eq!(p.status, 200, "{}", p.text);
    let r = call(
        follower,
        "PUT",
        "/v1/acl/token/00000000-0000-0000-0000-000000000002",
        MGMT,
        Some(json!({"Description": "Anonymous Token", "Policies": [{"Name": "lock"}]})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    for s in [leader, follower, other] {
        eventually(Duration::from_secs(10), "the lock enforced", || async {
            (put_raw(s, "/v1/kv/locked/x", "", "v").await.status == 403).then_some(())
        })
        .await
        .unwrap();
        let r = put_raw(s, "/v1/kv/open/x", "", "v").await;
        assert_eq!((r.status, r.text.as_str()), (200, "true"));
        let r = put_raw(s, "/v1/kv/locked/x", MGMT, "v").await;
        assert_eq!(r.status, 200);
    }
    let r = call(other, "GET", "/v1/kv/locked/x?stale", "", None).await;
    assert_eq!(r.status, 403, "stale reads are checked too");
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Under default deny, an anonymous call to every route the HTTP router registers, with
/// every method and every seeded name in its parameters, is refused or answers nothing
/// protected, and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn anonymous_calls_to_every_route_are_refused_or_see_nothing() {
    let (agent, dir) = deny_agent(json!({})).await;
    let node = agent.node.clone();
    // Something of every kind, each named "protected...", written by management.
    let seed = |method: &'static str, path: &'static str, body: Value| {
        let agent = &agent;
        async move {
            let r = call(agent, method, path, MGMT, Some(body)).await;
            assert_eq!(r.status, 200, "{path}: {}", r.text);
            r.json()
        }
    };
    let id = |v: Value, field: &str| v[field].as_str().unwrap().to_string();
    let r = put_raw(&agent, "/v1/kv/protected/x", MGMT, "protected-value").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let svc = json!({"Name": "protected-svc", "Port": 80,
        "Check": {"CheckID": "protected-check", "TTL": "10m"}});
    seed("PUT", "/v1/agent/service/register", svc).await;
    let s = seed(
        "PUT",
        "/v1/session/create",
        json!({"Name": "protected-session"}),
    )
    .await;
    let session = id(s, "ID");
    let q = json!({"Name": "protected-query", "Service": {"Service": "protected-svc"}});
    let query = id(seed("POST", "/v1/query", q).await, "ID");
    let entry = json!({"Kind": "service-defaults", "Name": "protected-entry", "Protocol": "http"});
    seed("PUT", "/v1/config", entry).await;
    let p = seed("PUT", "/v1/acl/policy", json!({"Name": "protected-policy"})).await;
    let policy = id(p, "ID");
    let t = json!({"Description": "protected-token", "Policies": [{"ID": policy}]});
    let accessor = id(seed("PUT", "/v1/acl/token", t).await, "AccessorID");
    let r = put_raw(
        &agent,
        "/v1/event/fire/protected-event",
        MGMT,
        "protected-payload",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The service reaches the catalog, and the agent's own coordinate (sent with its
    // token) arrives, before the walk starts.
    for (what, path) in [
        (
            "the service in the catalog",
            "/v1/catalog/service/protected-svc",
        ),
        ("the agent's coordinate", "/v1/coordinate/nodes"),
    ] {
        eventually(Duration::from_secs(30), what, || async {
            let r = call(&agent, "GET", path, MGMT, None).await;
            let listed = r.json().as_array().is_some_and(|a| !a.is_empty());
            listed.then_some(())
        })
        .await
        .unwrap();
    }

    // What management sees; the walk must leave it as it is.
    let views = [
        "/v1/kv/?recurse",
        "/v1/catalog/services",
        "/v1/catalog/nodes",
        "/v1/agent/services",
        "/v1/agent/checks",
        "/v1/session/list",
        "/v1/query",
        "/v1/config/service-defaults",
        "/v1/acl/policies",
        "/v1/acl/tokens",
        "/v1/event/list",
        "/v1/agent/members",
        "/v1/coordinate/nodes",
    ];
    let seen = || async {
        let mut out = Vec::new();
        for v in views {
            let r = call(&agent, "GET", v, MGMT, None).await;
            let mut j = r.json();
            // Coordinates and member liveness move on their own.
            if v.contains("coordinate") || v.contains("members") {
                j = json!(j.as_array().map(Vec::len));
            }
            out.push((v, r.status, j));
        }
        out
    };
    let before = seen().await;

    // Names a route parameter may take.
    let values = [
        "protected/x".to_string(),
        "protected-svc".into(),
        "protected-check".into(),
        node.clone(),
        session.clone(),
        query.clone(),
        format!("{query}/execute"),
        format!("{query}/explain"),
        "service-defaults".into(),
        "service-defaults/protected-entry".into(),
        policy.clone(),
        "protected-policy".into(),
        accessor.clone(),
        "pass/protected-check".into(),
        "protected-event".into(),
        "default".into(),
        "127.0.0.1".into(),
    ];
    let body = json!({
        "Name": "intruder", "ID": "intruder", "Node": "intruder", "Address": "127.0.0.9",
        "Service": {"Service": "intruder"}, "Token": MGMT, "Value": "aW50cnVkZXI=",
    });
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let routes = cairn_lan_agent::http::route_paths();
    assert!(routes.len() > 80, "{routes:?}");
    let mut calls = 0;
    for route in &routes {
        let paths: Vec<String> = if route.contains('{') {
            values
                .iter()
                .map(|v| {
                    let (head, rest) = route.split_once('{').unwrap();
                    let tail = rest.split_once('}').unwrap().1;
                    format!("{head}{v}{tail}")
                })
                .collect()
        } else {
            vec![route.clone()]
        };
        for path in &paths {
            for method in ["GET", "PUT", "POST", "DELETE"] {
                for with_body in [false, true] {
                    if with_body && method == "GET" {
                        continue;
                    }
                    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                    let mut req = client.request(m, agent.url(path));
                    if with_body {
                        req = req.body(body.to_string());
                    }
                    let r = req.send().await.unwrap_or_else(|e| {
                        panic!(
                            "{method} {path}: no answer ({e}); log: {}",
                            agent.log_text()
                        )
                    });
                    calls += 1;
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    // Consul answers these without a token; none shows a name.
                    let open = path == "/v1/coordinate/datacenters";
                    if status.is_success()
                        && route == "/v1/query/{*rest}"
                        && path.ends_with("/execute")
                    {
                        // As in Consul, an execute by ID names the query's service but
                        // answers only the instances the token may read.
                        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                        assert_eq!(v["Nodes"], json!([]), "anonymous {method} {path}: {text}");
                    } else if status.is_success() && !open {
                        assert!(
                            !text.contains("protected") && !text.contains(node.as_str()),
                            "anonymous {method} {path} saw: {text}"
                        );
                    }
                }
            }
        }
    }
    for (after, before) in seen().await.into_iter().zip(before) {
        assert_eq!(after, before, "anonymous calls changed {}", before.0);
    }
    let alive = call(&agent, "GET", "/v1/agent/self", MGMT, None).await;
    assert_eq!(
        alive.status, 200,
        "the agent still runs after {calls} calls"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `cairn acl ...` against a real agent: bootstrap, policies from a rules file, roles,
/// tokens (create, read by prefix and `-self`, update, clone, delete), `-token-file` and
/// `CONSUL_HTTP_TOKEN`, and the refusal of a token without `acl:write`.
#[tokio::test(flavor = "multi_thread")]
async fn the_acl_cli_manages_tokens_policies_and_roles() {
    let dir = std::env::temp_dir().join(format!("cairn-acl-cli-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("acl.json");
    std::fs::write(
        &cfg,
        json!({"acl": {"enabled": true, "default_policy": "deny"}}).to_string(),
    )
    .unwrap();
    // At the most verbose level, so the log check at the end means something.
    let agent = AgentOpts::default()
        .arg(format!("-config-file={}", cfg.display()))
        .arg("-log-level=trace")
        .start()
        .await
        .unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = agent.cli();
        cmd.env_remove("CONSUL_HTTP_TOKEN").args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let json_of = |s: &str| -> Value { serde_json::from_str(s).unwrap() };

    let (code, out, err) = run(&["acl", "bootstrap", "-format=json"], &[]);
    assert_eq!(code, 0, "{err}");
    let root = json_of(&out)["SecretID"].as_str().unwrap().to_string();
    let (code, _, err) = run(&["acl", "bootstrap"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("ACL bootstrap no longer allowed"), "{err}");
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{root}\n")).unwrap();
    let tf = format!("-token-file={}", token_file.display());
    let env = [("CONSUL_HTTP_TOKEN", root.as_str())];
    let path = token_file.to_str().unwrap();
    let (code, out, err) = run(
        &["acl", "token", "read", "-self", "-format=json"],
        &[("CONSUL_HTTP_TOKEN_FILE", path)],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(json_of(&out)["SecretID"], root.as_str());

    // A policy from a rules file, read back by name.
    let rules = dir.join("rules.hcl");
    std::fs::write(&rules, "key_prefix \"app/\" { policy = \"write\" }\n").unwrap();
    let rules_arg = format!("-rules=@{}", rules.display());
    let (code, out, err) = run(
        &[
            "acl",
            "policy",
            "create",
            "-name=app",
            rules_arg.as_str(),
            tf.as_str(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Name:         app"), "{out}");
    assert!(out.contains("key_prefix \"app/\""), "{out}");
    let (code, out, _) = run(
        &["acl", "policy", "read", "-name=app", "-format=json"],
        &env,
    );
    assert_eq!(code, 0);
    let policy_id = json_of(&out)["ID"].as_str().unwrap().to_string();
    let (code, out, err) = run(
        &[
            "acl",
            "policy",
            "update",
            "-name=app",
            "-description=for the app",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Description:  for the app"), "{out}");
    assert!(out.contains("key_prefix"), "the rules stay: {out}");

    // A role holding it, and a token holding the role.
    let (code, out, err) = run(
        &[
            "acl",
            "role",
            "create",
            "-name=app-role",
            "-policy-name=app",
            "-service-identity=web:dc1",
            "-format=json",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let role = json_of(&out);
    assert_eq!(role["Policies"][0]["Name"], "app");
    assert_eq!(role["ServiceIdentities"][0]["Datacenters"], json!(["dc1"]));
    let (code, out, err) = run(
        &[
            "acl",
            "token",
            "create",
            "-description=app token",
            "-role-name=app-role",
            "-format=json",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let token = json_of(&out);
    let accessor = token["AccessorID"].as_str().unwrap().to_string();
    let secret = token["SecretID"].as_str().unwrap().to_string();

    // The token works where its policy says, and reads itself.
    let (code, _, err) = run(
        &["kv", "put", "app/x", "1"],
        &[("CONSUL_HTTP_TOKEN", &secret)],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = run(
        &["kv", "put", "other/x", "1"],
        &[("CONSUL_HTTP_TOKEN", &secret)],
    );
    assert_eq!(code, 1);
    let (code, out, err) = run(
        &["acl", "token", "read", "-self"],
        &[("CONSUL_HTTP_TOKEN", &secret)],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("AccessorID:       {accessor}")),
        "{out}"
    );
    assert!(out.contains("Roles:\n"), "{out}");
    // It may not manage ACLs.
    let (code, _, err) = run(
        &["acl", "policy", "create", "-name=sneaky"],
        &[("CONSUL_HTTP_TOKEN", &secret)],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("403") && err.contains("Permission denied"),
        "{err}"
    );

    // Read by a prefix of its accessor; update appends a policy; clone; delete.
    let prefix = &accessor[..8];
    let (code, out, err) = run(&["acl", "token", "read", "-id", prefix], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Description:      app token"), "{out}");
    let (code, out, err) = run(
        &[
            "acl",
            "token",
            "update",
            "-id",
            prefix,
            "-append-policy-id",
            &policy_id,
            "-format=json",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let updated = json_of(&out);
    assert_eq!(updated["SecretID"], secret.as_str(), "the secret stays");
    assert_eq!(updated["Policies"][0]["Name"], "app");
    assert_eq!(updated["Roles"][0]["Name"], "app-role", "roles stay");
    let (code, out, err) = run(
        &[
            "acl",
            "token",
            "clone",
            "-id",
            &accessor,
            "-description=copy",
            "-format=json",
        ],
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let copy = json_of(&out)["AccessorID"].as_str().unwrap().to_string();
    let (code, out, _) = run(&["acl", "token", "list"], &env);
    assert_eq!(code, 0);
    assert!(out.contains(&copy) && out.contains(&accessor), "{out}");
    let (code, out, err) = run(&["acl", "token", "delete", "-id", &copy], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deleted successfully"), "{out}");
    let (code, _, err) = run(&["acl", "token", "read", "-id", &copy], &env);
    assert_eq!(code, 1);
    assert!(err.contains("ACL not found"), "{err}");
    let (code, _, err) = run(&["acl", "role", "delete", "-name=app-role"], &env);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = run(&["acl", "role", "list", "-format=json"], &env);
    assert_eq!((code, json_of(&out)), (0, json!([])));
    let (code, _, err) = run(&["acl", "token", "read", "-id", "zzzz"], &env);
    assert_eq!(code, 1);
    assert!(err.contains("No such token ID with prefix: zzzz"), "{err}");
    let log = agent.log_text();
    for s in [&root, &secret] {
        assert!(
            !log.contains(s.as_str()),
            "a token secret in the log:\n{log}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A prepared query with a token of its own answers with what that token may read, for
/// any caller and over DNS; one without answers with what the caller may read.
#[tokio::test(flavor = "multi_thread")]
async fn a_prepared_query_runs_with_its_own_token() {
    let (agent, dir) = deny_agent_with(json!({}), true).await;
    let r = call(
        &agent,
        "PUT",
        "/v1/agent/service/register",
        MGMT,
        Some(json!({"Name": "web", "Port": 80})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let reader = web_reader(&agent).await;
    let create = |body: Value| {
        let agent = &agent;
        async move {
            let r = call(agent, "POST", "/v1/query", MGMT, Some(body)).await;
            assert_eq!(r.status, 200, "{}", r.text);
            r.json()["ID"].as_str().unwrap().to_string()
        }
    };
    let plain = create(json!({"Name": "web-plain", "Service": {"Service": "web"}})).await;
    let owned = create(json!({"Name": "web-owned", "Service": {"Service": "web"},
        "Token": reader}))
    .await;
    web_listed(&agent, MGMT).await;
    let nodes = |r: Reply| r.json()["Nodes"].as_array().map_or(0, Vec::len);
    let path = |id: &str| format!("/v1/query/{id}/execute");
    assert_eq!(nodes(call(&agent, "GET", &path(&plain), "", None).await), 0);
    assert_eq!(
        nodes(call(&agent, "GET", &path(&plain), &reader, None).await),
        1
    );
    assert_eq!(nodes(call(&agent, "GET", &path(&owned), "", None).await), 1);
    let dns = agent.dns.unwrap();
    let d = dig(dns, "web-owned.query.consul", "A", &[]);
    assert_eq!(
        (d.status.as_str(), d.answer.len()),
        ("NOERROR", 1),
        "{}",
        d.raw
    );
    let d = dig(dns, &format!("{plain}.query.consul"), "A", &[]);
    assert_eq!(d.answer.len(), 0, "{}", d.raw);
    // Its token is shown to management only.
    let r = call(&agent, "GET", &format!("/v1/query/{owned}"), &reader, None).await;
    assert_eq!(r.status, 403, "{}", r.text);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Templated policies: listed, read and previewed with acl:read; on a token (here through
/// the CLI) and on a role they grant what their template renders; bad ones are refused.
#[tokio::test(flavor = "multi_thread")]
async fn templated_policies_grant_what_their_template_renders() {
    let (agent, dir) = deny_agent(json!({})).await;
    let r = call(&agent, "GET", "/v1/acl/templated-policies", MGMT, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut names: Vec<String> = r.json().as_object().unwrap().keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["builtin/dns", "builtin/node", "builtin/service"]);
    let r = call(
        &agent,
        "GET",
        "/v1/acl/templated-policy/name/builtin/service",
        MGMT,
        None,
    )
    .await;
    assert!(
        r.json()["Template"].as_str().unwrap().contains("{{.Name}}"),
        "{}",
        r.text
    );
    let r = call(
        &agent,
        "GET",
        "/v1/acl/templated-policy/name/builtin/nope",
        MGMT,
        None,
    )
    .await;
    assert_eq!(
        (r.status, r.text.as_str()),
        (400, "Invalid templated policy Name: builtin/nope")
    );
    let preview = "/v1/acl/templated-policy/preview/builtin/service";
    let r = call(&agent, "POST", preview, MGMT, Some(json!({"Name": "api"}))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.json()["Rules"]
            .as_str()
            .unwrap()
            .contains("service \"api\""),
        "{}",
        r.text
    );
    assert!(
        r.json()["Name"]
            .as_str()
            .unwrap()
            .starts_with("synthetic-policy-")
    );
    let r = call(&agent, "POST", preview, MGMT, Some(json!({}))).await;
    assert_eq!(r.status, 400);
    assert!(r.text.contains("name is required"), "{}", r.text);
    let r = call(&agent, "GET", "/v1/acl/templated-policies", "", None).await;
    assert_eq!(r.status, 403, "anonymous may not read them: {}", r.text);

    // A token made by the CLI with builtin/service for web.
    let out = agent
        .cli()
        .env("CONSUL_HTTP_TOKEN", MGMT)
        .args([
            "acl",
            "token",
            "create",
            "-templated-policy=builtin/service",
            "-var=name:web",
            "-format=json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        t["TemplatedPolicies"][0]["TemplateVariables"]["name"],
        "web"
    );
    let web = t["SecretID"].as_str().unwrap().to_string();
    let register = |name: &'static str| {
        let (agent, web) = (&agent, web.clone());
        async move {
            let body = json!({"Name": name, "Port": 80});
            call(agent, "PUT", "/v1/agent/service/register", &web, Some(body))
                .await
                .status
        }
    };
    assert_eq!(register("web").await, 200);
    assert_eq!(register("db").await, 403);

    // A role with builtin/dns reads every service but writes none.
    let role = json!({"Name": "dns", "TemplatedPolicies": [{"TemplateName": "builtin/dns"}]});
    let r = call(&agent, "PUT", "/v1/acl/role", MGMT, Some(role)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let body = json!({"Roles": [{"Name": "dns"}]});
    let t = call(&agent, "PUT", "/v1/acl/token", MGMT, Some(body)).await;
    let dns = t.json()["SecretID"].as_str().unwrap().to_string();
    web_listed(&agent, &dns).await;
    let r = put_raw(&agent, "/v1/kv/x", &dns, "v").await;
    assert_eq!(r.status, 403);

    // Bad templated policies store nothing.
    let before = call(&agent, "GET", "/v1/acl/tokens", MGMT, None)
        .await
        .json();
    for (tp, want) in [
        (
            json!({"TemplateName": "builtin/nope"}),
            "invalid templated name",
        ),
        (
            json!({"TemplateName": "builtin/service"}),
            "name is required",
        ),
        (json!({"TemplateName": ""}), "missing the template name"),
    ] {
        let body = json!({"TemplatedPolicies": [tp]});
        let r = call(&agent, "PUT", "/v1/acl/token", MGMT, Some(body)).await;
        assert_eq!(r.status, 500, "{}", r.text);
        assert!(r.text.contains(want), "{want}: {}", r.text);
    }
    assert_eq!(
        call(&agent, "GET", "/v1/acl/tokens", MGMT, None)
            .await
            .json(),
        before
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each `(body, reason)` PUT to `path` is refused, saying `reason`.
async fn refused_with(agent: &Agent, path: &str, cases: Vec<(Value, &str)>) {
    for (body, why) in cases {
        let r = call(agent, "PUT", path, MGMT, Some(body)).await;
        assert!(
            r.status >= 400 && r.text.contains(why),
            "{why}: {} {}",
            r.status,
            r.text
        );
    }
}

/// A signing key for test JWTs and its public half as a PEM.
fn jwt_key() -> (jsonwebtoken::EncodingKey, String) {
    let pair = rcgen::KeyPair::generate().unwrap();
    let private = jsonwebtoken::EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    (private, pair.public_key_pem())
}

/// A JWT from the test issuer for `service` in `groups`, issued now and valid for `valid`.
fn jwt(key: &jsonwebtoken::EncodingKey, service: &str, groups: &[&str], valid: i64) -> String {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = json!({"iss": "https://issuer.test", "aud": ["cairn"], "iat": now - 5,
        "exp": now + valid, "service": service, "groups": groups});
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

/// Auth methods of the `jwt` type and binding rules: CRUD under `acl:write`, logins that
/// get what the matching rules bind (service identities filled in from claims, roles by
/// name) and expire at `MaxTokenTTL`, Consul's refusals for an unknown method, a bad
/// signature, an expired token and a login that binds nothing; logout only of a login's
/// token; deleting the method takes its rules and tokens with it.
#[tokio::test(flavor = "multi_thread")]
async fn jwt_logins_get_what_binding_rules_bind() {
    let (agent, dir) = deny_agent(json!({})).await;
    let (key, public) = jwt_key();
    let method = json!({"Name": "ci-jwt", "Type": "jwt", "MaxTokenTTL": "10m",
        "Description": "CI", "Config": {"JWTValidationPubKeys": [public],
        "BoundIssuer": "https://issuer.test", "BoundAudiences": ["cairn"],
        "ClaimMappings": {"service": "service"}, "ListClaimMappings": {"groups": "groups"}}});
    let anon = call(
        &agent,
        "PUT",
        "/v1/acl/auth-method",
        "",
        Some(method.clone()),
    )
    .await;
    assert_eq!(anon.status, 403, "{}", anon.text);
    let made = call(
        &agent,
        "PUT",
        "/v1/acl/auth-method",
        MGMT,
        Some(method.clone()),
    )
    .await;
    assert_eq!(made.status, 200, "{}", made.text);
    assert_eq!(made.json()["MaxTokenTTL"], "10m0s");
    let again = call(
        &agent,
        "PUT",
        "/v1/acl/auth-method",
        MGMT,
        Some(method.clone()),
    )
    .await;
    assert_eq!(again.status, 500, "{}", again.text);
    assert!(again.text.contains("already exists"), "{}", again.text);
    let list = call(&agent, "GET", "/v1/acl/auth-methods", MGMT, None).await;
    assert_eq!(list.json()[0]["Name"], "ci-jwt");
    assert!(list.json()[0].get("Config").is_none(), "{}", list.text);
    let one = call(&agent, "GET", "/v1/acl/auth-method/ci-jwt", MGMT, None).await;
    assert_eq!(one.json()["Config"]["BoundIssuer"], "https://issuer.test");
    let gone = call(&agent, "GET", "/v1/acl/auth-method/nope", MGMT, None).await;
    assert_eq!((gone.status, gone.text.as_str()), (403, "ACL not found"));
    // Bad methods are refused with the reason.
    let cases = vec![
        (
            json!({"Name": "x", "Type": "kubernetes"}),
            "Type should be one of",
        ),
        (json!({"Name": "bad name!", "Type": "jwt"}), "invalid Name"),
        (
            json!({"Name": "x", "Type": "jwt", "Config": {"JWTValidationPubKeys": ["junk"]}}),
            "error parsing public key",
        ),
        (
            json!({"Name": "x", "Type": "jwt", "MaxTokenTTL": "5s",
                "Config": {"JWTValidationPubKeys": [public]}}),
            "MaxTokenTTL",
        ),
    ];
    refused_with(&agent, "/v1/acl/auth-method", cases).await;

    // A role the rules bind by name, and two rules.
    let p = call(
        &agent,
        "PUT",
        "/v1/acl/policy",
        MGMT,
        Some(json!({
        "Name": "app-read", "Rules": "key_prefix \"app/\" { policy = \"read\" }"})),
    )
    .await;
    assert_eq!(p.status, 200, "{}", p.text);
    let role = call(
        &agent,
        "PUT",
        "/v1/acl/role",
        MGMT,
        Some(json!({
        "Name": "readers", "Policies": [{"Name": "app-read"}]})),
    )
    .await;
    assert_eq!(role.status, 200, "{}", role.text);
    let rule = |selector: &str, bind_type: &str, name: &str| {
        json!({"AuthMethod": "ci-jwt", "Selector": selector, "BindType": bind_type,
               "BindName": name, "Description": "ci"})
    };
    let r1 = call(
        &agent,
        "PUT",
        "/v1/acl/binding-rule",
        MGMT,
        Some(rule(
            "\"dev\" in list.groups",
            "service",
            "${value.service}",
        )),
    )
    .await;
    assert_eq!(r1.status, 200, "{}", r1.text);
    let r1_id = r1.json()["ID"].as_str().unwrap().to_string();
    let r2 = call(
        &agent,
        "PUT",
        "/v1/acl/binding-rule",
        MGMT,
        Some(rule("value.service == \"web\"", "role", "readers")),
    )
    .await;
    assert_eq!(r2.status, 200, "{}", r2.text);
    let cases = vec![
        (
            json!({"AuthMethod": "nope", "BindType": "service", "BindName": "x"}),
            "unknown AuthMethod",
        ),
        (rule("", "service", "${value.missing}"), "unknown variable"),
        (rule("", "bogus", "x"), "unknown BindType"),
        (
            rule("value.service ==", "service", "x"),
            "Selector is invalid",
        ),
    ];
    refused_with(&agent, "/v1/acl/binding-rule", cases).await;
    let rules = call(
        &agent,
        "GET",
        "/v1/acl/binding-rules?authmethod=ci-jwt",
        MGMT,
        None,
    )
    .await;
    assert_eq!(
        rules.json().as_array().map(Vec::len),
        Some(2),
        "{}",
        rules.text
    );
    let upd = call(
        &agent,
        "PUT",
        &format!("/v1/acl/binding-rule/{r1_id}"),
        MGMT,
        Some(json!({
        "AuthMethod": "ci-jwt", "Selector": "\"dev\" in list.groups", "BindType": "service",
        "BindName": "${value.service}", "Description": "updated"})),
    )
    .await;
    assert_eq!(upd.json()["Description"], "updated", "{}", upd.text);

    // A login: no token needed, and what the rules bind comes back as a new local token.
    let login = |bearer: String| json!({"AuthMethod": "ci-jwt", "BearerToken": bearer, "Meta": {"pod": "p1"}});
    let ok = call(
        &agent,
        "POST",
        "/v1/acl/login",
        "",
        Some(login(jwt(&key, "web", &["dev"], 300))),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let t = ok.json();
    assert_eq!(t["AuthMethod"], "ci-jwt");
    assert_eq!(t["Local"], true);
    assert_eq!(
        t["Description"],
        "token created via login: {\"pod\":\"p1\"}"
    );
    assert_eq!(t["ServiceIdentities"][0]["ServiceName"], "web", "{t}");
    assert_eq!(t["Roles"][0]["Name"], "readers", "{t}");
    assert!(t["ExpirationTime"].is_string(), "{t}");
    let secret = t["SecretID"].as_str().unwrap().to_string();
    // It may register web and read app/, and no more.
    let reg = |name: &str| json!({"Name": name, "Port": 80});
    let web = call(
        &agent,
        "PUT",
        "/v1/agent/service/register",
        &secret,
        Some(reg("web")),
    )
    .await;
    assert_eq!(web.status, 200, "{}", web.text);
    let db = call(
        &agent,
        "PUT",
        "/v1/agent/service/register",
        &secret,
        Some(reg("db")),
    )
    .await;
    assert_eq!(db.status, 403, "{}", db.text);
    let kv = call(&agent, "PUT", "/v1/kv/app/x", &secret, Some(json!(1))).await;
    assert_eq!(kv.status, 403, "{}", kv.text);
    let by_method = call(
        &agent,
        "GET",
        "/v1/acl/tokens?authmethod=ci-jwt",
        MGMT,
        None,
    )
    .await;
    assert_eq!(
        by_method.json().as_array().map(Vec::len),
        Some(1),
        "{}",
        by_method.text
    );
    let none = call(&agent, "GET", "/v1/acl/tokens?authmethod=other", MGMT, None).await;
    assert_eq!(none.json(), json!([]));

    // Refusals, as Consul words them.
    let (other, _) = jwt_key();
    let unknown = json!({"AuthMethod": "nope", "BearerToken": jwt(&key, "web", &["dev"], 300)});
    let refusals = vec![
        (
            unknown,
            403,
            "ACL not found: auth method \"nope\" not found",
        ),
        (
            login(jwt(&other, "web", &["dev"], 300)),
            500,
            "no known key successfully validated",
        ),
        (
            login(jwt(&key, "web", &["dev"], -600)),
            500,
            "token is expired",
        ),
        (login("garbage".into()), 500, "error parsing token"),
        (
            login(jwt(&key, "api", &["ops"], 300)),
            403,
            "Permission denied",
        ),
        (json!({"AuthMethod": 7}), 400, "Login decoding failed"),
    ];
    for (body, status, why) in refusals {
        let r = call(&agent, "POST", "/v1/acl/login", "", Some(body)).await;
        assert!(
            r.status == status && r.text.contains(why),
            "{why}: {} {}",
            r.status,
            r.text
        );
    }

    // Logout: only a login's token, only with that token.
    let r = call(&agent, "POST", "/v1/acl/logout", MGMT, None).await;
    assert_eq!((r.status, r.text.as_str()), (403, "Permission denied"));
    let r = call(&agent, "POST", "/v1/acl/logout", "", None).await;
    assert_eq!((r.status, r.text.as_str()), (403, "ACL not found"));
    let r = call(&agent, "POST", "/v1/acl/logout", &secret, None).await;
    assert_eq!((r.status, r.text.as_str()), (200, "true"));
    let r = call(&agent, "GET", "/v1/acl/token/self", &secret, None).await;
    assert_eq!((r.status, r.text.as_str()), (403, "ACL not found"));

    // The CLI: `cairn login` writes the secret to the sink, `cairn logout` ends it.
    let bearer = dir.join("bearer.jwt");
    let sink = dir.join("token");
    std::fs::write(&bearer, jwt(&key, "web", &["dev"], 300)).unwrap();
    let out = agent
        .cli()
        .args(["login", "-method=ci-jwt", "-meta", "via=cli"])
        .arg(format!("-bearer-token-file={}", bearer.display()))
        .arg(format!("-token-sink-file={}", sink.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", cairn_tests::stderr(&out));
    let cli_secret = std::fs::read_to_string(&sink).unwrap();
    let me = call(&agent, "GET", "/v1/acl/token/self", &cli_secret, None).await;
    assert_eq!(
        me.json()["Description"],
        "token created via login: {\"via\":\"cli\"}"
    );
    let out = agent
        .cli()
        .args(["logout", &format!("-token={cli_secret}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", cairn_tests::stderr(&out));
    let me = call(&agent, "GET", "/v1/acl/token/self", &cli_secret, None).await;
    assert_eq!(me.status, 403);
    let out = agent
        .cli()
        .args(["login", "-method=ci-jwt"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(cairn_tests::stderr(&out).contains("-bearer-token-file"));
    let out = agent
        .cli()
        .args(["logout", &format!("-token={MGMT}")])
        .output()
        .unwrap();
    assert!(
        cairn_tests::stderr(&out).contains("403 (Permission denied)"),
        "{}",
        cairn_tests::stderr(&out)
    );

    // Deleting the method takes its rules and the tokens its logins made.
    let again = call(
        &agent,
        "POST",
        "/v1/acl/login",
        "",
        Some(login(jwt(&key, "web", &["dev"], 300))),
    )
    .await;
    let secret = again.json()["SecretID"].as_str().unwrap().to_string();
    let del = call(&agent, "DELETE", "/v1/acl/auth-method/ci-jwt", MGMT, None).await;
    assert_eq!((del.status, del.text.as_str()), (200, "true"));
    let rules = call(&agent, "GET", "/v1/acl/binding-rules", MGMT, None).await;
    assert_eq!(rules.json(), json!([]));
    let r = call(&agent, "GET", "/v1/acl/token/self", &secret, None).await;
    assert_eq!(r.status, 403, "{}", r.text);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Anti-entropy syncs a service with the token it was registered with, not the agent's:
/// an agent token that may only write nodes still gets `web`, registered with a token for
/// `web`, into the catalog and out of it again.
#[tokio::test(flavor = "multi_thread")]
async fn services_sync_with_the_token_they_were_registered_with() {
    let (agent, dir) = deny_agent(json!({})).await;
    let node_only = token_with(
        &agent,
        "node-only",
        "node_prefix \"\" { policy = \"write\" }",
    )
    .await;
    let web = token_with(
        &agent,
        "web-write",
        "service \"web\" { policy = \"write\" }",
    )
    .await;
    let set = call(
        &agent,
        "PUT",
        "/v1/agent/token/agent",
        MGMT,
        Some(json!({"Token": node_only})),
    )
    .await;
    assert_eq!(set.status, 200, "{}", set.text);
    let reg = call(
        &agent,
        "PUT",
        "/v1/agent/service/register",
        &web,
        Some(json!({"Name": "web", "Port": 80})),
    )
    .await;
    assert_eq!(reg.status, 200, "{}", reg.text);
    let count = || async {
        let r = call(&agent, "GET", "/v1/catalog/service/web", MGMT, None).await;
        r.json().as_array().map_or(0, Vec::len)
    };
    eventually(
        Duration::from_secs(10),
        "web synced with its own token",
        || async { (count().await == 1).then_some(()) },
    )
    .await
    .unwrap();
    let dereg = call(
        &agent,
        "PUT",
        "/v1/agent/service/deregister/web",
        &web,
        None,
    )
    .await;
    assert_eq!(dereg.status, 200, "{}", dereg.text);
    eventually(
        Duration::from_secs(10),
        "web removed with its own token",
        || async { (count().await == 0).then_some(()) },
    )
    .await
    .unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}
