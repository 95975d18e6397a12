//! The catalog and health HTTP API on the real binary, through `rs-consul` and raw HTTP.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cairn_tests::Agent;
use rs_consul::{
    Config, Consul, DeregisterEntityPayload, GetServiceNodesRequest, RegisterEntityCheck,
    RegisterEntityPayload, RegisterEntityService,
};
use serde_json::{Value, json};

fn consul(agent: &Agent) -> Consul {
    Consul::new(Config {
        address: agent.base(),
        token: None,
        ..Default::default()
    })
}

fn entity(node: &str, service: &str, id: &str, status: &str) -> RegisterEntityPayload {
    RegisterEntityPayload {
        ID: None,
        Node: node.to_string(),
        Address: "10.1.2.3".to_string(),
        Datacenter: None,
        TaggedAddresses: Default::default(),
        NodeMeta: [("rack".to_string(), node.to_string())].into(),
        Service: Some(RegisterEntityService {
            ID: Some(id.to_string()),
            Service: service.to_string(),
            Tags: vec!["v1".to_string()],
            TaggedAddresses: Default::default(),
            Meta: Default::default(),
            Port: Some(8080),
            Namespace: None,
        }),
        Checks: vec![RegisterEntityCheck {
            Node: None,
            CheckID: Some(format!("{id}-check")),
            Name: format!("{id} health"),
            Notes: None,
            Status: Some(status.to_string()),
            ServiceID: Some(id.to_string()),
            Definition: Default::default(),
        }],
        SkipNodeUpdate: None,
    }
}

/// Percent-encodes a query value.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn get(http: &reqwest::Client, agent: &Agent, path: &str) -> reqwest::Response {
    http.get(agent.url(path)).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn register_read_and_deregister_through_rs_consul() {
    let agent = Agent::dev().await.unwrap();
    let c = consul(&agent);
    c.register_entity(&entity("n1", "web", "web-1", "passing"))
        .await
        .unwrap();
    c.register_entity(&entity("n2", "web", "web-2", "critical"))
        .await
        .unwrap();
    c.register_entity(&entity("n3", "db", "db-1", "passing"))
        .await
        .unwrap();

    let names = c.get_all_registered_service_names(None).await.unwrap();
    let mut names = names.response;
    names.sort();
    assert_eq!(names, ["consul", "db", "web"]);

    let all = c
        .get_service_nodes(
            GetServiceNodesRequest {
                service: "web",
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(all.response.len(), 2);
    let healthy = c
        .get_service_addresses_and_ports("web", None)
        .await
        .unwrap();
    assert_eq!(healthy, [("10.1.2.3".to_string(), 8080)]);

    c.deregister_entity(&DeregisterEntityPayload {
        Node: Some("n1".to_string()),
        Datacenter: None,
        CheckID: None,
        ServiceID: Some("web-1".to_string()),
        Namespace: None,
    })
    .await
    .unwrap();
    let http = cairn_tests::http_client();
    let left: Value = get(&http, &agent, "/v1/catalog/service/web")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(left.as_array().unwrap().len(), 1);
    assert_eq!(left[0]["ServiceID"], "web-2");
    // The node stays, with no services.
    let n1: Value = get(&http, &agent, "/v1/catalog/node/n1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(n1["Node"]["Node"], "n1");
    assert_eq!(n1["Services"], json!({}));
}

#[tokio::test(flavor = "multi_thread")]
async fn consul_shapes_and_quirks() {
    let agent = Agent::dev().await.unwrap();
    let http = cairn_tests::http_client();
    let missing = get(&http, &agent, "/v1/catalog/node/ghost").await;
    assert_eq!(missing.status(), 200);
    assert!(missing.headers().contains_key("x-consul-index"));
    assert_eq!(missing.text().await.unwrap().trim(), "null");
    let none: Value = get(&http, &agent, "/v1/catalog/service/ghost")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(none, json!([]));
    let dcs: Value = get(&http, &agent, "/v1/catalog/datacenters")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(dcs, json!(["dc1"]));
    // A server registers itself and the `consul` service with serfHealth.
    let me: Value = get(&http, &agent, &format!("/v1/health/node/{}", agent.node))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me[0]["CheckID"], "serfHealth");
    assert_eq!(me[0]["Status"], "passing");
    let consul: Value = get(&http, &agent, "/v1/catalog/service/consul")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(consul[0]["ServicePort"], agent.rpc.unwrap().port());
    assert_eq!(consul[0]["ServiceTags"], json!([]));

    let bad_state = get(&http, &agent, "/v1/health/state/sleepy").await;
    assert_eq!(bad_state.status(), 400);
    let bad_filter = get(&http, &agent, "/v1/catalog/nodes?filter=Node%20%3D%3D").await;
    assert_eq!(bad_filter.status(), 500);
    assert!(
        bad_filter
            .text()
            .await
            .unwrap()
            .starts_with("Failed to create boolean expression evaluator: ")
    );
    let r = http
        .put(agent.url("/v1/catalog/register"))
        .body(r#"{"Node":"x","Address":"1.2.3.4","Service":{"Service":""}}"#)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error() || r.status().is_server_error());
    let nodes: Value = get(&http, &agent, "/v1/catalog/nodes")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        nodes.as_array().unwrap().len(),
        1,
        "nothing registered: {nodes}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_tags_and_node_meta() {
    let agent = Agent::dev().await.unwrap();
    let c = consul(&agent);
    c.register_entity(&entity("n1", "web", "web-1", "passing"))
        .await
        .unwrap();
    c.register_entity(&entity("n2", "web", "web-2", "warning"))
        .await
        .unwrap();
    let http = cairn_tests::http_client();
    let ids = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e.get("ServiceID")
                    .or_else(|| e["Service"].get("ID"))
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let by_meta: Value = get(&http, &agent, "/v1/catalog/service/web?node-meta=rack:n2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(by_meta), ["web-2"]);
    let by_filter: Value = get(
        &http,
        &agent,
        "/v1/health/service/web?filter=Service.ID%20%3D%3D%20%22web-1%22",
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(ids(by_filter), ["web-1"]);
    // A selector the listed type lacks is go-bexpr's error, on every filtered list.
    for (path, selector) in [
        ("/v1/health/service/web", "Service.Nope"),
        ("/v1/catalog/service/web", "Service"),
        ("/v1/catalog/nodes", "ServiceName"),
        ("/v1/catalog/services", "NodeMeta.rack.deeper"),
        ("/v1/catalog/node/n1", "ServiceName"),
        ("/v1/health/checks/web", "Checks"),
        ("/v1/health/node/n1", "Nope"),
        ("/v1/health/state/any", "Nope"),
        ("/v1/agent/services", "ServiceName"),
        ("/v1/agent/checks", "Nope"),
        ("/v1/agent/members", "Nope"),
    ] {
        let url = format!("{path}?filter={}", urlencode(&format!("{selector} == x")));
        let r = get(&http, &agent, &url).await;
        assert_eq!(r.status(), 500, "{url}");
        let want = format!(
            "Failed to create boolean expression evaluator: Selector \"{selector}\" is not valid"
        );
        assert_eq!(r.text().await.unwrap().trim(), want, "{url}");
    }
    let valid: Value = get(
        &http,
        &agent,
        &format!(
            "/v1/catalog/service/web?filter={}",
            urlencode(
                r#"NodeMeta.rack == n2 and RaftIndex.CreateIndex != 0 or ServiceID == "nope""#
            )
        ),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(ids(valid), ["web-2"]);
    let passing: Value = get(&http, &agent, "/v1/health/service/web?passing")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(passing), ["web-1"]);
    let by_tag: Value = get(&http, &agent, "/v1/catalog/service/web?tag=V1&tag=nope")
        .await
        .json()
        .await
        .unwrap();
    assert!(ids(by_tag).is_empty());
    let warning: Value = get(&http, &agent, "/v1/health/state/warning")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(warning[0]["CheckID"], "web-2-check");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_to_db_does_not_wake_watchers_of_web() {
    let agent = Agent::dev().await.unwrap();
    let c = consul(&agent);
    c.register_entity(&entity("n1", "web", "web-1", "passing"))
        .await
        .unwrap();
    let http = cairn_tests::http_client();
    let first = get(&http, &agent, "/v1/health/service/web").await;
    let index: u64 = first.headers()["x-consul-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let url = agent.url(&format!("/v1/health/service/web?index={index}&wait=3s"));
    let waiter = tokio::spawn({
        let http = http.clone();
        async move {
            let start = Instant::now();
            let r = http.get(url).send().await.unwrap();
            (start.elapsed(), r.headers()["x-consul-index"].clone())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.register_entity(&entity("n9", "db", "db-1", "passing"))
        .await
        .unwrap();
    let (elapsed, idx) = waiter.await.unwrap();
    assert!(elapsed >= Duration::from_secs(3), "woken after {elapsed:?}");
    assert_eq!(idx.to_str().unwrap(), index.to_string());

    // A check of web's instance does wake it.
    let url = agent.url(&format!("/v1/health/service/web?index={index}&wait=30s"));
    let waiter = tokio::spawn(async move { http.get(url).send().await.unwrap().status() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.register_entity(&entity("n1", "web", "web-1", "critical"))
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woken by web's own check")
        .unwrap();
    assert_eq!(status, 200);
}

/// Without a service mesh or peerings, the mesh-shaped reads and `?peer=` answer what
/// Consul answers when there is nothing: empty, with an index, blocking, `?filter`
/// checked; registering a proxy or gateway is refused.
#[tokio::test(flavor = "multi_thread")]
async fn mesh_reads_and_peers_answer_empty() {
    let agent = Agent::dev().await.unwrap();
    let c = consul(&agent);
    c.register_entity(&entity("n1", "web", "web-1", "passing"))
        .await
        .unwrap();
    let http = cairn_tests::http_client();
    for path in [
        "/v1/catalog/connect/web",
        "/v1/health/connect/web",
        "/v1/health/ingress/web",
        "/v1/catalog/gateway-services/gw",
        "/v1/catalog/service/web?peer=other",
        "/v1/catalog/nodes?peer=other",
        "/v1/health/service/web?peer=other",
        "/v1/health/checks/web?peer=other",
    ] {
        let r = get(&http, &agent, path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers().contains_key("x-consul-index"), "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body, json!([]), "{path}");
    }
    let services: Value = get(&http, &agent, "/v1/catalog/services?peer=other")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(services, json!({}));
    for (path, selector) in [
        ("/v1/catalog/connect/web", "Nope"),
        ("/v1/health/connect/web", "Service.Nope"),
        ("/v1/catalog/gateway-services/gw", "Gateway.Nope"),
    ] {
        let url = format!("{path}?filter={}", urlencode(&format!("{selector} == x")));
        let r = get(&http, &agent, &url).await;
        assert_eq!(r.status(), 500, "{url}");
        assert!(r.text().await.unwrap().contains("is not valid"), "{url}");
    }
    let ok = get(
        &http,
        &agent,
        &format!(
            "/v1/catalog/gateway-services/gw?filter={}",
            urlencode("GatewayKind == x")
        ),
    )
    .await;
    assert_eq!(ok.status(), 200);

    // Blocking: a read at the current index waits, and returns when the service changes.
    let r = get(&http, &agent, "/v1/health/connect/web").await;
    let index: u64 = r.headers()["x-consul-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let url = agent.url(&format!("/v1/health/connect/web?index={index}&wait=20s"));
    let waiter = tokio::spawn(async move {
        let r = cairn_tests::http_client().get(url).send().await.unwrap();
        r.headers()["x-consul-index"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    c.register_entity(&entity("n2", "web", "web-2", "passing"))
        .await
        .unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(woke > index);

    for body in [
        json!({"Node": "n3", "Address": "10.0.0.3", "Service": {"Service": "gw", "Kind": "ingress-gateway"}}),
        json!({"Node": "n3", "Address": "10.0.0.3", "Service": {"Service": "p", "Proxy": {"DestinationServiceName": "web"}}}),
    ] {
        let r = http
            .put(agent.url("/v1/catalog/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        assert!(r.text().await.unwrap().contains("not supported"));
    }
    let nodes: Value = get(&http, &agent, "/v1/catalog/nodes")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        nodes.as_array().unwrap().iter().all(|n| n["Node"] != "n3"),
        "nothing registered: {nodes}"
    );
}
