//! Agent-owned services and checks on the real binary: registration rules, TTL and script
//! checks, maintenance, persistence across a `kill -9`, config files with reload, and the
//! catalog CLI.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cairn_tests::{Agent, AgentOpts, eventually, http_client, stderr, stdout};
use serde_json::{Value, json};

async fn put(agent: &Agent, path: &str, body: Value) -> (u16, String) {
    let r = http_client()
        .put(agent.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn get(agent: &Agent, path: &str) -> Value {
    http_client()
        .get(agent.url(path))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn check_status(agent: &Agent, id: &str) -> Option<(String, String)> {
    let checks = get(agent, "/v1/agent/checks").await;
    let c = checks.get(id)?;
    Some((
        c["Status"].as_str()?.to_string(),
        c["Output"].as_str()?.to_string(),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_definitions_are_refused_and_nothing_is_registered() {
    let agent = Agent::dev().await.unwrap();
    let cases: &[(&str, Value, u16, &str)] = &[
        (
            "/v1/agent/service/register",
            json!({"Port": 80}),
            400,
            "Missing service name",
        ),
        (
            "/v1/agent/service/register",
            json!({"Name": "web", "Check": {"Interval": "10s"}}),
            400,
            "Invalid check: TTL must be > 0 for TTL checks",
        ),
        (
            "/v1/agent/service/register",
            json!({"Name": "web", "Check": {"HTTP": "http://127.0.0.1:1/", "TCP": "127.0.0.1:1", "Interval": "1s"}}),
            400,
            "Invalid check: Only one of Args, HTTP or TCP may be given",
        ),
        (
            "/v1/agent/service/register",
            json!({"Name": "web", "Check": {"TCP": "127.0.0.1:1", "Interval": "-5s"}}),
            400,
            "Request decode failed:",
        ),
        (
            "/v1/agent/service/register",
            json!({"Name": "web", "Check": {"Args": ["/bin/true"], "Interval": "5s"}}),
            500,
            "Scripts are disabled on this agent from remote calls",
        ),
        (
            "/v1/agent/service/register",
            json!({"Name": "web", "Bogus": 1}),
            400,
            "Request decode failed: json: unknown field \"Bogus\"",
        ),
        (
            "/v1/agent/service/register",
            json!({"Name": "web", "Meta": {"consul-x": "y"}}),
            400,
            "Invalid Service Meta:",
        ),
        (
            "/v1/agent/check/register",
            json!({"TTL": "10s"}),
            400,
            "Missing check name",
        ),
        (
            "/v1/agent/check/register",
            json!({"Name": "c", "TTL": "10s", "Status": "happy"}),
            400,
            "Bad check status",
        ),
        (
            "/v1/agent/check/register",
            json!({"Name": "c", "TTL": "10s", "ServiceID": "nope"}),
            404,
            "ServiceID \"nope\" does not exist",
        ),
    ];
    for (path, body, status, message) in cases {
        let (got, text) = put(&agent, path, body.clone()).await;
        assert_eq!(got, *status, "{path} {body}: {text}");
        assert!(text.starts_with(message), "{path} {body}: {text}");
    }
    assert_eq!(get(&agent, "/v1/agent/services").await, json!({}));
    assert_eq!(get(&agent, "/v1/agent/checks").await, json!({}));
    let r = http_client()
        .get(agent.url("/v1/agent/services?filter=Service%20%3D%3D"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
}

#[tokio::test(flavor = "multi_thread")]
async fn ttl_checks_expire_and_take_updates() {
    let agent = Agent::dev().await.unwrap();
    let (s, _) = put(
        &agent,
        "/v1/agent/service/register",
        json!({"Name": "api", "Check": {"CheckID": "api-ttl", "TTL": "1s"}}),
    )
    .await;
    assert_eq!(s, 200);
    let pass = http_client()
        .put(agent.url("/v1/agent/check/pass/api-ttl?note=all%20good"))
        .send()
        .await
        .unwrap();
    assert_eq!(pass.status(), 200);
    assert_eq!(
        check_status(&agent, "api-ttl").await.unwrap(),
        ("passing".into(), "all good".into())
    );
    let expired = eventually(Duration::from_secs(5), "the TTL to run out", || async {
        check_status(&agent, "api-ttl")
            .await
            .filter(|(s, _)| s == "critical")
    })
    .await
    .unwrap();
    assert_eq!(
        expired.1,
        "TTL expired (last output before timeout follows): all good"
    );
    // The catalog follows (anti-entropy).
    eventually(
        Duration::from_secs(5),
        "catalog to see critical",
        || async {
            let h = get(&agent, "/v1/health/checks/api").await;
            (h[0]["Status"] == "critical").then_some(())
        },
    )
    .await
    .unwrap();
    let (s, _) = put(
        &agent,
        "/v1/agent/check/update/api-ttl",
        json!({"Status": "warning", "Output": "slow"}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(check_status(&agent, "api-ttl").await.unwrap().0, "warning");
    let (s, text) = put(
        &agent,
        "/v1/agent/check/update/api-ttl",
        json!({"Status": "meh"}),
    )
    .await;
    assert_eq!((s, text.as_str()), (400, "Invalid check status: 'meh'"));
    let unknown = http_client()
        .put(agent.url("/v1/agent/check/fail/ghost"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        unknown.text().await.unwrap(),
        "Unknown check ID \"ghost\". Ensure that the check ID is passed, not the check name."
    );
    let health = http_client()
        .get(agent.url("/v1/agent/health/service/name/api?format=text"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 429);
    assert_eq!(health.text().await.unwrap(), "warning");
}

#[tokio::test(flavor = "multi_thread")]
async fn script_checks_run_when_enabled() {
    let agent = Agent::dev_with(&["-enable-script-checks"]).await.unwrap();
    let (s, text) = put(
        &agent,
        "/v1/agent/check/register",
        json!({"Name": "script", "Args": ["/bin/sh", "-c", "echo degraded; exit 1"], "Interval": "1s"}),
    )
    .await;
    assert_eq!(s, 200, "{text}");
    let (status, output) = eventually(Duration::from_secs(5), "the script to run", || async {
        check_status(&agent, "script")
            .await
            .filter(|(s, _)| s != "critical")
    })
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), output.as_str()),
        ("warning", "degraded\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn maintenance_mode_marks_node_and_service_critical() {
    let agent = Agent::dev().await.unwrap();
    put(
        &agent,
        "/v1/agent/service/register",
        json!({"Name": "web", "Port": 80}),
    )
    .await;
    let out = agent.run_cli(&["maint", "-enable", "-reason", "patching"]);
    assert_eq!(stdout(&out), "Node maintenance is now enabled\n");
    let out = agent.run_cli(&["maint", "-enable", "-service", "web"]);
    assert_eq!(
        stdout(&out),
        "Service maintenance is now enabled for \"web\"\n"
    );
    let listed = stdout(&agent.run_cli(&["maint"]));
    assert!(
        listed.contains("Node:\n") && listed.contains("  Reason: patching\n"),
        "{listed}"
    );
    assert!(listed.contains("Service:\n  ID:     web\n"), "{listed}");
    eventually(
        Duration::from_secs(5),
        "maintenance in the catalog",
        || async {
            let v = get(&agent, "/v1/health/state/critical").await;
            (v.as_array().unwrap().len() == 2).then_some(())
        },
    )
    .await
    .unwrap();
    let out = agent.run_cli(&["maint", "-enable", "-service", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("Unknown service ID \"nope\""));
    agent.run_cli(&["maint", "-disable"]);
    agent.run_cli(&["maint", "-disable", "-service", "web"]);
    assert_eq!(stdout(&agent.run_cli(&["maint"])), "");
}

#[tokio::test(flavor = "multi_thread")]
async fn api_registrations_survive_a_kill_with_a_data_dir() {
    let dir = std::env::temp_dir().join(format!("cairn-persist-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut agent = Agent::dev_with(&[&format!("-data-dir={}", dir.display())])
        .await
        .unwrap();
    put(
        &agent,
        "/v1/agent/service/register",
        json!({"Name": "cache", "ID": "cache-1", "Port": 6379, "Check": {"CheckID": "cache-ttl", "TTL": "60s"}}),
    )
    .await;
    http_client()
        .put(agent.url("/v1/agent/check/pass/cache-ttl?note=warm"))
        .send()
        .await
        .unwrap();
    let node_id = get(&agent, "/v1/agent/self").await["Config"]["NodeID"].clone();
    agent.restart().await.unwrap();
    let services = get(&agent, "/v1/agent/services").await;
    assert_eq!(services["cache-1"]["Port"], 6379);
    // The TTL check's last state is kept until its TTL would have run out.
    assert_eq!(
        check_status(&agent, "cache-ttl").await.unwrap(),
        ("passing".into(), "warm".into())
    );
    assert_eq!(
        get(&agent, "/v1/agent/self").await["Config"]["NodeID"],
        node_id
    );
    eventually(
        Duration::from_secs(5),
        "restored service in the catalog",
        || async {
            let v = get(&agent, "/v1/catalog/service/cache").await;
            (v.as_array().unwrap().len() == 1).then_some(())
        },
    )
    .await
    .unwrap();
    let out = agent.run_cli(&["services", "deregister", "-id", "cache-1"]);
    assert_eq!(stdout(&out), "Deregistered service: cache-1\n");
    agent.restart().await.unwrap();
    assert_eq!(get(&agent, "/v1/agent/services").await, json!({}));
    drop(agent);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn config_dir_services_and_reload() {
    let dir = std::env::temp_dir().join(format!("cairn-cfgdir-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("web.json");
    std::fs::write(
        &file,
        json!({"service": {"name": "web", "port": 8080, "tags": ["v1"],
                           "check": {"id": "web-ttl", "ttl": "30s", "status": "passing"}}})
        .to_string(),
    )
    .unwrap();
    let agent = AgentOpts::default()
        .dns()
        .arg(format!("-config-dir={}", dir.display()))
        .start()
        .await
        .unwrap();
    let dns = agent.dns.unwrap();
    eventually(
        Duration::from_secs(5),
        "web from the config file in DNS",
        || async {
            let d = cairn_tests::dig(dns, "v1.web.service.consul", "SRV", &[]);
            (d.data_of("SRV").len() == 1 && d.data_of("SRV")[0].starts_with("1 1 8080 "))
                .then_some(())
        },
    )
    .await
    .unwrap();
    std::fs::write(
        &file,
        json!({"services": [{"name": "web", "port": 9090, "tags": ["v2"]},
                            {"name": "admin", "port": 9091}]})
        .to_string(),
    )
    .unwrap();
    let out = agent.run_cli(&["reload"]);
    assert_eq!(stdout(&out), "Configuration reload triggered\n");
    eventually(
        Duration::from_secs(5),
        "the edited file to be served",
        || async {
            let d = cairn_tests::dig(dns, "v2.web.service.consul", "SRV", &[]);
            let admin = cairn_tests::dig(dns, "admin.service.consul", "SRV", &[]);
            (d.data_of("SRV").len() == 1
                && d.data_of("SRV")[0].starts_with("1 1 9090 ")
                && admin.answer.len() == 1)
                .then_some(())
        },
    )
    .await
    .unwrap();
    // The old check went with the old definition.
    assert!(check_status(&agent, "web-ttl").await.is_none());
    // SIGHUP reloads too.
    std::fs::remove_file(&file).unwrap();
    agent.signal(libc::SIGHUP);
    eventually(
        Duration::from_secs(5),
        "services gone after SIGHUP",
        || async { (get(&agent, "/v1/agent/services").await == json!({})).then_some(()) },
    )
    .await
    .unwrap();
    // A broken file is refused with its name; the running services stay.
    std::fs::write(dir.join("bad.json"), r#"{"servce": {}}"#).unwrap();
    let out = agent.run_cli(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("invalid config key servce"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn catalog_and_services_cli() {
    let agent = Agent::dev().await.unwrap();
    let out = agent.run_cli(&[
        "services", "register", "-name", "web", "-port", "80", "-tag", "a", "-tag", "b",
    ]);
    assert_eq!(
        stdout(&out),
        "Registered service: web\n",
        "{}",
        stderr(&out)
    );
    let out = agent.run_cli(&["services", "register"]);
    assert_eq!(
        stderr(&out),
        "Service registration requires at least one argument or flags.\n"
    );
    eventually(Duration::from_secs(5), "web in the catalog", || async {
        stdout(&agent.run_cli(&["catalog", "services"]))
            .contains("web")
            .then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        stdout(&agent.run_cli(&["catalog", "services"])),
        "consul\nweb\n"
    );
    assert_eq!(
        stdout(&agent.run_cli(&["catalog", "services", "-tags"])),
        "consul\nweb         a,b\n"
    );
    assert_eq!(stdout(&agent.run_cli(&["catalog", "datacenters"])), "dc1\n");
    let nodes = stdout(&agent.run_cli(&["catalog", "nodes"]));
    let lines: Vec<&str> = nodes.lines().collect();
    assert!(
        lines[0].starts_with("Node") && lines[0].ends_with("Address    DC"),
        "{nodes}"
    );
    assert!(lines[1].starts_with(&agent.node) && lines[1].ends_with("127.0.0.1  dc1"));
    let detailed = stdout(&agent.run_cli(&["catalog", "nodes", "-detailed"]));
    assert!(detailed.contains("consul-network-segment="), "{detailed}");
    let none = agent.run_cli(&["catalog", "nodes", "-service", "ghost"]);
    assert_eq!(
        stderr(&none),
        "No nodes match the given query - try expanding your search.\n"
    );
    assert_eq!(none.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_checks_run_without_a_thread_each() {
    let agent = Agent::dev().await.unwrap();
    let http = http_client();
    let bodies: Vec<Value> = (0..2000)
        .map(|i| json!({"Name": format!("ttl-{i}"), "TTL": "300s"}))
        .collect();
    for chunk in bodies.chunks(100) {
        let futs = chunk.iter().map(|b| {
            http.put(agent.url("/v1/agent/check/register"))
                .json(b)
                .send()
        });
        for r in futures_join(futs).await {
            assert_eq!(r.unwrap().status(), 200);
        }
    }
    let checks = get(&agent, "/v1/agent/checks").await;
    assert_eq!(checks.as_object().unwrap().len(), 2000);
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).unwrap();
    let threads: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    println!("agent runs 2000 checks on {threads} threads");
    assert!(threads < 64, "{threads} threads for 2000 checks");
}

/// Awaits a batch of futures concurrently.
async fn futures_join<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// An HTTP check without a timeout shows Consul's 10 s default on `/v1/agent/checks`.
#[tokio::test(flavor = "multi_thread")]
async fn an_http_check_shows_its_default_timeout() {
    let agent = Agent::dev().await.unwrap();
    let r = http_client()
        .put(agent.url("/v1/agent/check/register"))
        .json(&json!({"Name": "h", "HTTP": "http://127.0.0.1:1/", "Interval": "30s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let checks = get(&agent, "/v1/agent/checks").await;
    assert_eq!(checks["h"]["Timeout"], "10s", "{checks}");
    assert_eq!(checks["h"]["Interval"], "30s", "{checks}");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_notes_reach_the_catalog() {
    let agent = Agent::dev().await.unwrap();
    let (s, _) = put(
        &agent,
        "/v1/agent/service/register",
        json!({"Name": "db", "Check": {"CheckID": "db-ttl", "TTL": "30s"}}),
    )
    .await;
    assert_eq!(s, 200);
    let catalog_output = |want: &'static str| {
        let agent = &agent;
        async move {
            eventually(Duration::from_secs(5), want, || async {
                let checks = get(agent, "/v1/health/checks/db").await;
                let entries = get(agent, "/v1/health/service/db").await;
                let a = checks[0]["Output"].as_str() == Some(want);
                let b = entries[0]["Checks"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["Output"] == want));
                (a && b).then_some(())
            })
            .await
            .unwrap()
        }
    };
    for (verb, note, status) in [
        ("pass", "all%20good", "passing"),
        ("warn", "slow", "warning"),
        ("fail", "broken", "critical"),
    ] {
        let r = http_client()
            .put(agent.url(&format!("/v1/agent/check/{verb}/db-ttl?note={note}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        catalog_output(if verb == "pass" { "all good" } else { note }).await;
        let h = get(&agent, "/v1/health/checks/db").await;
        assert_eq!(h[0]["Status"], status, "{h}");
    }
    let (s, _) = put(
        &agent,
        "/v1/agent/check/update/db-ttl",
        json!({"Status": "passing", "Output": "recovered"}),
    )
    .await;
    assert_eq!(s, 200);
    catalog_output("recovered").await;
}

/// A note that leaves the status as it was waits for `check_update_interval`, as in
/// Consul (5 minutes by default); at `0s` it goes to the catalog at once.
#[tokio::test(flavor = "multi_thread")]
async fn output_only_changes_follow_check_update_interval() {
    let cfg = std::env::temp_dir().join(format!("cairn-cui-{}.json", std::process::id()));
    std::fs::write(&cfg, r#"{"check_update_interval": "0s"}"#).unwrap();
    let agent = Agent::dev_with(&[&format!("-config-file={}", cfg.display())])
        .await
        .unwrap();
    let (s, _) = put(
        &agent,
        "/v1/agent/service/register",
        json!({"Name": "db", "Check": {"CheckID": "db-ttl", "TTL": "30s"}}),
    )
    .await;
    assert_eq!(s, 200);
    for note in ["broken", "still%20broken"] {
        let r = http_client()
            .put(agent.url(&format!("/v1/agent/check/fail/db-ttl?note={note}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let want = note.replace("%20", " ");
        eventually(
            Duration::from_secs(5),
            "the note in the catalog",
            || async {
                let h = get(&agent, "/v1/health/checks/db").await;
                (h[0]["Output"] == want.as_str() && h[0]["Status"] == "critical").then_some(())
            },
        )
        .await
        .unwrap();
    }
    let _ = std::fs::remove_file(&cfg);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_check_of_the_agent_itself_passes() {
    // `-client` takes several addresses, as Consul's does; the last `-client` wins.
    let agent = Agent::dev_with(&["-client=127.0.0.1 [::1]"]).await.unwrap();
    let port = agent.http.port();
    let index = http_client().get(agent.url("/")).send().await.unwrap();
    assert_eq!(index.status(), 200);
    // The page needs no token, so it names the datacenter but not the node.
    let page = index.text().await.unwrap();
    assert!(
        page.contains("Datacenter dc1") && !page.contains(&agent.node),
        "{page}"
    );
    let v6 = http_client()
        .get(format!("http://[::1]:{port}/v1/agent/self"))
        .send()
        .await
        .unwrap();
    assert_eq!(v6.status(), 200, "the agent answers on [::1] too");
    let me: Value = v6.json().await.unwrap();
    assert_eq!(
        me["DebugConfig"]["ClientAddrs"],
        json!(["127.0.0.1", "::1"]),
        "{me}"
    );
    let r = http_client()
        .put(agent.url("/v1/agent/check/register"))
        .json(
            &json!({"Name": "self", "HTTP": format!("http://localhost:{port}"), "Interval": "1s"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, output) = eventually(
        Duration::from_secs(10),
        "the self check to pass",
        || async {
            check_status(&agent, "self")
                .await
                .filter(|(s, _)| s == "passing")
        },
    )
    .await
    .unwrap();
    assert!(output.contains("200 OK"), "{status}: {output}");
}
