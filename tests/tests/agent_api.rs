//! Agent and status endpoints and the `version` command on the real binary.

#![allow(clippy::unwrap_used)]

use cairn_tests::Agent;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn self_status_and_metrics() {
    let agent = Agent::dev().await.unwrap();
    let http = cairn_tests::http_client();
    let me: Value = http
        .get(agent.url("/v1/agent/self"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["Config"]["NodeName"], agent.node.as_str());
    assert_eq!(me["Config"]["Datacenter"], "dc1");
    assert_eq!(me["Config"]["Server"], true);
    assert_eq!(me["Member"]["Name"], agent.node.as_str());
    assert_eq!(me["Member"]["Status"], 1);
    assert_eq!(me["Member"]["Tags"]["role"], "consul");
    assert_eq!(me["Stats"]["consul"]["leader"], "true");
    assert!(me["Stats"]["raft"]["applied_index"].is_string());
    let mut keys: Vec<&str> = me.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "Config",
            "Coord",
            "DebugConfig",
            "Member",
            "Meta",
            "Stats",
            "xDS"
        ]
    );

    let leader: String = http
        .get(agent.url("/v1/status/leader"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(leader, agent.rpc.unwrap().to_string());
    let peers: Vec<String> = http
        .get(agent.url("/v1/status/peers"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(peers, [leader]);

    let json: Value = http
        .get(agent.url("/v1/agent/metrics"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(json["Timestamp"].as_str().unwrap().ends_with("+0000 UTC"));
    let counters = json["Counters"].as_array().unwrap();
    assert!(
        counters
            .iter()
            .any(|c| c["Name"] == "cairn_http_requests_total" && c["Count"].as_u64() > Some(0)),
        "{json}"
    );
    let prom = http
        .get(agent.url("/v1/agent/metrics?format=prometheus"))
        .send()
        .await
        .unwrap();
    assert!(
        prom.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = prom.text().await.unwrap();
    assert!(text.contains("cairn_http_requests_total{"), "{text}");

    let opts = http
        .request(reqwest::Method::OPTIONS, agent.url("/v1/kv/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(opts.status(), 200);
    assert_eq!(opts.headers()["allow"], "OPTIONS,GET,PUT,DELETE");
}

#[test]
fn version_command() {
    let out = std::process::Command::new(cairn_tests::cairn_bin())
        .args(["version"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("Cairn v"), "{text}");
    assert!(text.contains("Protocol 2 spoken by default"));
}

/// `-advertise-wan` is the node's `wan` tagged address; without it, the LAN address is.
#[tokio::test(flavor = "multi_thread")]
async fn the_wan_address_comes_from_advertise_wan() {
    let plain = Agent::dev().await.unwrap();
    let wan = Agent::dev_with(&["-advertise-wan=198.18.0.7"])
        .await
        .unwrap();
    for (agent, expected) in [(&plain, "127.0.0.1"), (&wan, "198.18.0.7")] {
        let path = format!("/v1/catalog/node/{}", agent.node);
        let node =
            cairn_tests::eventually(std::time::Duration::from_secs(10), "the node", || async {
                let v = agent.get_json(&path).await;
                v["Node"]["TaggedAddresses"]["wan"].is_string().then_some(v)
            })
            .await
            .unwrap();
        let tagged = &node["Node"]["TaggedAddresses"];
        assert_eq!(tagged["wan"], expected, "{tagged}");
        assert_eq!(tagged["wan_ipv4"], expected, "{tagged}");
        assert_eq!(tagged["lan"], "127.0.0.1", "{tagged}");
        let me = agent.get_json("/v1/agent/self").await;
        assert_eq!(me["DebugConfig"]["AdvertiseAddrWAN"], expected);
        // Alone, the datacenter is the only one it knows.
        assert_eq!(me["Stats"]["consul"]["known_datacenters"], "1");
        assert_eq!(me["Stats"]["serf_wan"]["members"], "0");
    }
}

/// `/v1/operator/usage` counts what is registered; autopilot's settings are stored through
/// the log on the first leader, read back, and replaced with check-and-set.
#[tokio::test(flavor = "multi_thread")]
async fn usage_and_autopilot_configuration() {
    let agent = Agent::dev().await.unwrap();
    let http = cairn_tests::http_client();
    let get = |path: &'static str| {
        let url = agent.url(path);
        let http = http.clone();
        async move { http.get(url).send().await.unwrap() }
    };
    let usage: Value = get("/v1/operator/usage").await.json().await.unwrap();
    assert_eq!(usage["Usage"]["dc1"]["Services"], 1, "{usage}");
    assert_eq!(usage["Usage"]["dc1"]["BillableServiceInstances"], 0);
    for (id, port) in [("web-1", 80), ("web-2", 81)] {
        let r = http
            .put(agent.url("/v1/agent/service/register"))
            .json(&serde_json::json!({"ID": id, "Name": "web", "Port": port}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let usage = cairn_tests::eventually(
        std::time::Duration::from_secs(5),
        "the instances to be counted",
        || async {
            let u: Value = get("/v1/operator/usage").await.json().await.ok()?;
            (u["Usage"]["dc1"]["ServiceInstances"] == 3).then_some(u)
        },
    )
    .await
    .unwrap();
    let dc1 = &usage["Usage"]["dc1"];
    assert_eq!(dc1["Services"], 2, "{usage}");
    assert_eq!(dc1["BillableServiceInstances"], 2);
    assert_eq!(dc1["Nodes"], 1);
    assert_eq!(dc1["ConnectServiceInstances"]["connect-proxy"], 0);
    assert_eq!(usage["KnownLeader"], true);

    let r = get("/v1/operator/autopilot/configuration").await;
    assert_eq!(r.status(), 200);
    let config: Value = r.json().await.unwrap();
    assert_eq!(config["CleanupDeadServers"], true, "{config}");
    assert_eq!(config["LastContactThreshold"], "200ms");
    assert_eq!(config["MaxTrailingLogs"], 250);
    assert_eq!(config["ServerStabilizationTime"], "10s");
    let modify = config["ModifyIndex"].as_u64().unwrap();
    assert!(modify > 0);
    let put = |query: String, body: &'static str| {
        let url = agent.url(&format!("/v1/operator/autopilot/configuration{query}"));
        let http = http.clone();
        async move {
            let r = http.put(url).body(body).send().await.unwrap();
            (
                r.status().as_u16(),
                r.text().await.unwrap().trim().to_string(),
            )
        }
    };
    let body = r#"{"CleanupDeadServers": false, "LastContactThreshold": "1s",
        "MaxTrailingLogs": 10, "ServerStabilizationTime": "3s"}"#;
    assert_eq!(
        put(format!("?cas={}", modify + 7), body).await,
        (200, "false".into())
    );
    assert_eq!(
        put(format!("?cas={modify}"), body).await,
        (200, "true".into())
    );
    let config: Value = get("/v1/operator/autopilot/configuration")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(config["CleanupDeadServers"], false, "{config}");
    assert_eq!(config["ServerStabilizationTime"], "3s");
    assert_eq!(config["MaxTrailingLogs"], 10);
    assert!(config["ModifyIndex"].as_u64().unwrap() > modify);
    assert_eq!(config["CreateIndex"].as_u64().unwrap(), modify);
    assert_eq!(
        put("?cas=x".into(), "{}").await,
        (
            400,
            "Error parsing cas value: strconv.ParseUint: parsing \"x\": invalid syntax".into()
        )
    );
    assert_eq!(
        put(String::new(), r#"{"ServerStabilizationTime": "soon"}"#).await,
        (
            400,
            "Error parsing autopilot config: time: invalid duration \"soon\"".into()
        )
    );
    let r = http
        .post(agent.url("/v1/operator/raft/transfer-leader"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500, "a dev server has no one to hand over to");
}

/// `/v1/agent/monitor` streams log lines written after it attached, at its own level
/// (the agent here logs only warnings to stderr), as text or JSON; `cairn monitor` too.
#[tokio::test(flavor = "multi_thread")]
async fn monitor_streams_log_lines_at_its_own_level() {
    let agent = Agent::dev_with(&["-log-level=warn"]).await.unwrap();
    let http = cairn_tests::http_client();
    let bad = http
        .get(agent.url("/v1/agent/monitor?loglevel=loud"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.text().await.unwrap(), "Unknown log level: loud");

    let mut text = http
        .get(agent.url("/v1/agent/monitor?loglevel=info"))
        .send()
        .await
        .unwrap();
    assert_eq!(text.status(), 200);
    let mut cli = agent
        .cli()
        .args(["monitor", "-log-level=debug", "-log-json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let r = http
        .put(agent.url("/v1/agent/service/register"))
        .json(&serde_json::json!({"Name": "watched"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut got = String::new();
    while !got.contains("service=watched") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), text.chunk())
            .await
            .expect("a log line within 10 s")
            .unwrap()
            .expect("the stream stays open");
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
    let line = got.lines().find(|l| l.contains("service=watched")).unwrap();
    assert!(
        line.contains(" [INFO]  local.sync: Synced service: service=watched"),
        "{line}"
    );
    assert!(
        !agent.log_text().contains("Synced service"),
        "stderr stays at warn"
    );

    let stdout = cli.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("watched"))
    });
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), first)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let _ = cli.kill();
    let _ = cli.wait();
    let json: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(json["@message"], "Synced service", "{first}");
    assert_eq!(json["@level"], "info");
    assert_eq!(json["service"], "watched");
}
