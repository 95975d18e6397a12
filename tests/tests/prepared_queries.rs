//! Prepared queries with geo-failover across three datacenters as real processes (a dev
//! agent and a WAN router each, routers behind delay proxies: dc2 at 50 ms and dc3 at
//! 150 ms from dc1), seen through HTTP and DNS at a client agent of dc1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use cairn_tests::federation::{DelayedDcs, dc_ip, three_dc_rtt_ms};
use cairn_tests::{Agent, AgentOpts, dig, eventually, http_client};

/// What a query answers at the client: (Datacenter, Failovers, instance addresses) over
/// HTTP, and the A records over DNS.
async fn observe(client: &Agent, name: &str) -> ((String, u64, Vec<String>), Vec<String>) {
    let v = client.get_json(&format!("/v1/query/{name}/execute")).await;
    let addrs = v["Nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| {
                    n["Node"]["Address"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
                .collect()
        })
        .unwrap_or_default();
    let http = (
        v["Datacenter"].as_str().unwrap_or_default().to_string(),
        v["Failovers"].as_u64().unwrap_or(99),
        addrs,
    );
    let dns = dig(
        client.dns.unwrap(),
        &format!("{name}.query.consul"),
        "A",
        &[],
    )
    .data_of("A");
    (http, dns)
}

/// Waits until `name` answers from datacenter `k` after `failovers` failovers, over HTTP
/// and DNS alike; returns how long that took.
async fn expect(client: &Agent, name: &str, k: usize, failovers: u64) -> Duration {
    let started = Instant::now();
    let want_ip = dc_ip(k, 1).to_string();
    let seen = eventually(Duration::from_secs(30), "the query's answer", || async {
        let ((dc, f, addrs), dns) = observe(client, name).await;
        (dc == format!("dc{k}") && f == failovers && addrs == [want_ip.clone()] && dns == addrs)
            .then_some(())
    })
    .await;
    if seen.is_err() {
        panic!(
            "{name}: wanted dc{k} after {failovers} failovers, got {:?}",
            observe(client, name).await
        );
    }
    started.elapsed()
}

async fn set_health(agent: &Agent, status: &str) {
    let r = http_client()
        .put(agent.url(&format!("/v1/agent/check/{status}/service:web")))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_fail_over_to_the_nearest_datacenter_with_healthy_instances() {
    let fed = DelayedDcs::start(3, three_dc_rtt_ms).await.unwrap();
    let http = http_client();
    let client = AgentOpts::default()
        .client()
        .dns()
        .ip(dc_ip(1, 21))
        .node("c1")
        .arg("-datacenter=dc1")
        .arg(format!("-retry-join={}", fed.agents[0].serf))
        .arg("-retry-interval=1s")
        .start()
        .await
        .unwrap();
    for agent in &fed.agents {
        let r = http
            .put(agent.url("/v1/agent/service/register"))
            .body(r#"{"Name":"web","Port":8080,"Check":{"TTL":"10m","Status":"passing"}}"#)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    // NearestN needs the WAN distances: dc2 before dc3 from dc1.
    eventually(
        Duration::from_secs(120),
        "dc1 sorts dc2 before dc3",
        || async {
            let near = fed.estimate("s1.dc1", "s1.dc2")?;
            let far = fed.estimate("s1.dc1", "s1.dc3")?;
            (far > near * 1.5 && fed.order(0).await == ["dc1", "dc2", "dc3"]).then_some(())
        },
    )
    .await
    .unwrap();

    let create = |body: &'static str, dc: &'static str| {
        let http = http.clone();
        let url = client.url(&format!("/v1/query{dc}"));
        async move {
            let r = http.post(url).body(body).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        }
    };
    create(
        r#"{"Name":"web-geo","Service":{"Service":"web","Failover":{"NearestN":2}}}"#,
        "",
    )
    .await;
    create(
        r#"{"name":"geo-","template":{"type":"name_prefix_match"},
            "service":{"service":"${name.suffix}","failover":{"nearestn":2}},"dns":{"ttl":"5s"}}"#,
        "",
    )
    .await;
    create(
        r#"{"Name":"web-geo","Service":{"Service":"web"}}"#,
        "?dc=dc2",
    )
    .await;

    let mut switches = Vec::new();
    switches.push(expect(&client, "web-geo", 1, 0).await);
    expect(&client, "geo-web", 1, 0).await;

    set_health(&fed.agents[0], "fail").await;
    switches.push(expect(&client, "web-geo", 2, 1).await);
    expect(&client, "geo-web", 2, 1).await;

    set_health(&fed.agents[1], "fail").await;
    switches.push(expect(&client, "web-geo", 3, 2).await);
    expect(&client, "geo-web", 3, 2).await;

    set_health(&fed.agents[0], "pass").await;
    switches.push(expect(&client, "web-geo", 1, 0).await);
    expect(&client, "geo-web", 1, 0).await;
    eprintln!("answers switched after {switches:?}");

    // DNS details: the template's TTL, SRV with targets in the answering datacenter, the
    // query of another datacenter by NAME.query.DC, and an unknown name.
    let dns = client.dns.unwrap();
    let a = dig(dns, "geo-web.query.consul", "A", &[]);
    assert!(
        a.answer
            .iter()
            .all(|r| r.split_whitespace().nth(1) == Some("5")),
        "{}",
        a.raw
    );
    set_health(&fed.agents[0], "fail").await;
    expect(&client, "web-geo", 3, 2).await;
    let srv = dig(dns, "_web-geo._tcp.query.consul", "SRV", &[]);
    assert_eq!(
        srv.data_of("SRV"),
        ["1 1 8080 s1.node.dc3.consul."],
        "{}",
        srv.raw
    );
    set_health(&fed.agents[1], "pass").await;
    let dc2 = dig(dns, "web-geo.query.dc2.consul", "A", &[]);
    assert_eq!(dc2.data_of("A"), [dc_ip(2, 1).to_string()], "{}", dc2.raw);
    let none = dig(dns, "no-such-query.query.consul", "A", &[]);
    assert_eq!(none.status, "NXDOMAIN", "{}", none.raw);

    // What the query was: explain shows the template rendered; all of dc3 down as well
    // leaves nothing anywhere, every datacenter tried.
    let explained = client.get_json("/v1/query/geo-web/explain").await;
    assert_eq!(explained["Query"]["Service"]["Service"], "web");
    assert_eq!(explained["Query"]["Name"], "geo-");
    set_health(&fed.agents[1], "fail").await;
    set_health(&fed.agents[2], "fail").await;
    eventually(Duration::from_secs(30), "nothing anywhere", || async {
        let v = client.get_json("/v1/query/web-geo/execute").await;
        (v["Failovers"] == 2 && v["Nodes"] == serde_json::json!([])).then_some(())
    })
    .await
    .unwrap();
    let empty = dig(dns, "web-geo.query.consul", "A", &[]);
    assert_eq!(empty.status, "NXDOMAIN", "{}", empty.raw);
}

/// `cairn query`: create, list, read, execute and delete through the CLI, and a refused
/// query named with Consul's message and a failing exit code.
#[tokio::test(flavor = "multi_thread")]
async fn the_query_cli_mirrors_the_api() {
    let agent = Agent::dev().await.unwrap();
    let out = agent.run_cli(&["services", "register", "-name", "web", "-port", "80"]);
    assert!(out.status.success(), "{}", cairn_tests::stderr(&out));
    let out = agent.run_cli(&[
        "query",
        "create",
        "-name",
        "web-geo",
        "-service",
        "web",
        "-nearest-n",
        "2",
        "-failover-dc",
        "dc9",
        "-ttl",
        "5s",
    ]);
    assert!(out.status.success(), "{}", cairn_tests::stderr(&out));
    let id = cairn_tests::stdout(&out).trim().to_string();
    assert_eq!(id.len(), 36, "a UUID: {id}");

    let list = cairn_tests::stdout(&agent.run_cli(&["query", "list"]));
    assert!(
        list.lines().any(|l| l.contains(&id)
            && l.contains("web-geo")
            && l.ends_with("nearest 2, then dc9")),
        "{list}"
    );
    let read: serde_json::Value = serde_json::from_str(&cairn_tests::stdout(
        &agent.run_cli(&["query", "read", &id]),
    ))
    .unwrap();
    assert_eq!(read["DNS"]["TTL"], "5s");
    assert_eq!(read["Service"]["Failover"]["Datacenters"][0], "dc9");

    let ran = cairn_tests::stdout(&agent.run_cli(&["query", "execute", "web-geo"]));
    assert!(
        ran.contains("Service web from dc1 after 0 failovers"),
        "{ran}"
    );
    assert!(ran.lines().any(|l| l.contains(" 80 ")), "{ran}");

    let bad = agent.run_cli(&["query", "create", "-name", "nothing"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        cairn_tests::stderr(&bad).contains("Must provide a Service name to query"),
        "{}",
        cairn_tests::stderr(&bad)
    );

    let out = agent.run_cli(&["query", "delete", &id]);
    assert!(out.status.success(), "{}", cairn_tests::stderr(&out));
    assert_eq!(agent.get_json("/v1/query").await, serde_json::json!([]));
    let gone = agent.run_cli(&["query", "read", &id]);
    assert_eq!(gone.status.code(), Some(1));
    assert!(cairn_tests::stderr(&gone).contains("Query not found"));
}
