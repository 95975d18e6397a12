//! Two datacenters as real processes (3 servers, 3 WAN routers and a client agent each):
//! everything a Consul user does across datacenters, then routers and a server killed
//! while cross-datacenter reads run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cairn_tests::federation::{Federation, Shape, wan_members};
use cairn_tests::{dig, eventually, http_client, stderr, stdout};

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_datacenters_answer_each_other_and_survive_dead_routers() {
    let mut fed = Federation::start(
        2,
        Shape {
            servers: 3,
            routers: 3,
            clients: 1,
        },
    )
    .await
    .unwrap();
    let http = http_client();
    let dc1 = fed.dc("dc1").client();
    let dc2 = fed.dc("dc2").client();

    // A service registered in dc2 is found from dc1's client: HTTP, CLI and DNS.
    let r = http
        .put(dc2.url("/v1/agent/service/register"))
        .body(r#"{"Name":"web","Port":8080,"Tags":["v1"]}"#)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let entries = eventually(
        Duration::from_secs(20),
        "web in dc2, seen from dc1",
        || async {
            let v: serde_json::Value = http
                .get(dc1.url("/v1/health/service/web?dc=dc2"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v.as_array()?.len() == 1).then_some(v)
        },
    )
    .await
    .unwrap();
    assert_eq!(entries[0]["Node"]["Datacenter"], "dc2");
    assert_eq!(entries[0]["Node"]["Node"], "c1");
    assert_eq!(entries[0]["Service"]["Port"], 8080);
    let here: serde_json::Value = dc1.get_json("/v1/health/service/web").await;
    assert_eq!(here, serde_json::json!([]), "dc1 itself has no web");

    let out = dc1.run_cli(&["catalog", "services", "-datacenter=dc2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).lines().any(|l| l.trim() == "web"),
        "{}",
        stdout(&out)
    );

    let dns = dc1.dns.unwrap();
    let srv = dig(dns, "web.service.dc2.consul", "SRV", &[]);
    assert_eq!(srv.status, "NOERROR", "{}", srv.raw);
    assert_eq!(
        srv.data_of("SRV"),
        ["1 1 8080 c1.node.dc2.consul."],
        "{}",
        srv.raw
    );
    let tagged = dig(dns, "_web._v1.service.dc2.consul", "SRV", &[]);
    assert_eq!(tagged.data_of("SRV").len(), 1, "{}", tagged.raw);
    let node = dig(dns, "c1.node.dc2.consul", "A", &[]);
    assert_eq!(
        node.data_of("A"),
        [dc2.http.ip().to_string()],
        "{}",
        node.raw
    );
    let nowhere = dig(dns, "web.service.dc9.consul", "A", &[]);
    assert_eq!(nowhere.status, "NXDOMAIN", "{}", nowhere.raw);
    assert!(
        nowhere.authority.iter().any(|r| r.contains("SOA")),
        "{}",
        nowhere.raw
    );

    // Unknown datacenter: Consul's error and status.
    let r = http.get(dc1.url("/v1/kv/x?dc=dc9")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert!(r.text().await.unwrap().contains("No path to datacenter"));

    // A KV write for dc2 from dc1 lands in dc2 (and not in dc1).
    let r = http
        .put(dc1.url("/v1/kv/cross/key?dc=dc2"))
        .body("from-dc1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "true");
    let raw = http
        .get(dc2.url("/v1/kv/cross/key?raw"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(raw, "from-dc1");
    let local = http.get(dc1.url("/v1/kv/cross/key")).send().await.unwrap();
    assert_eq!(local.status(), 404);
    let out = dc1.run_cli(&["kv", "get", "-datacenter=dc2", "cross/key"]);
    assert_eq!(stdout(&out).trim(), "from-dc1", "{}", stderr(&out));

    // Transactions, catalog writes and events for dc2 from dc1 land in dc2.
    let r = http
        .put(dc1.url("/v1/txn?dc=dc2"))
        .body(r#"[{"KV":{"Verb":"set","Key":"cross/txn","Value":"eA=="}}]"#)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let raw = http
        .get(dc2.url("/v1/kv/cross/txn?raw"))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.text().await.unwrap(), "x");
    let r = http
        .put(dc1.url("/v1/catalog/register?dc=dc2"))
        .body(r#"{"Node":"ext","Address":"198.18.0.9","Service":{"Service":"ext","Port":9}}"#)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let ext = dc2.get_json("/v1/catalog/service/ext").await;
    assert_eq!(ext.as_array().map(Vec::len), Some(1), "{ext}");
    let ext1 = dc1.get_json("/v1/catalog/service/ext").await;
    assert_eq!(ext1, serde_json::json!([]), "registered in dc2, not dc1");
    let fired: serde_json::Value = http
        .put(dc1.url("/v1/event/fire/cross-deploy?dc=dc2"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = fired["ID"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(10), "the event in dc2", || async {
        let list = dc2.get_json("/v1/event/list?name=cross-deploy").await;
        list.as_array()?
            .iter()
            .any(|e| e["ID"] == id.as_str())
            .then_some(())
    })
    .await
    .unwrap();
    let here = dc1.get_json("/v1/event/list?name=cross-deploy").await;
    assert_eq!(here, serde_json::json!([]), "fired in dc2, not dc1");

    // A blocking query across datacenters waits there and carries dc2's index.
    let r = http
        .get(dc1.url("/v1/kv/cross/key?dc=dc2"))
        .send()
        .await
        .unwrap();
    let index: u64 = header(&r, "x-consul-index").parse().unwrap();
    assert_eq!(header(&r, "x-consul-knownleader"), "true");
    let url = dc1.url(&format!("/v1/kv/cross/key?dc=dc2&index={index}&wait=30s"));
    let started = std::time::Instant::now();
    let blocked = tokio::spawn({
        let http = http.clone();
        async move { http.get(url).send().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !blocked.is_finished(),
        "the blocking query waits for a change"
    );
    http.put(dc2.url("/v1/kv/cross/key"))
        .body("changed")
        .send()
        .await
        .unwrap();
    let r = blocked.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    let new_index: u64 = header(&r, "x-consul-index").parse().unwrap();
    assert!(new_index > index, "{new_index} > {index}");
    assert!(header(&r, "x-consul-lastcontact").parse::<u64>().is_ok());
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v[0]["Value"], "Y2hhbmdlZA=="); // base64("changed")

    // The WAN pool lists the six servers as NODE.DC, and WAN coordinates give an RTT.
    let server = &fed.dc("dc1").servers.servers[0];
    let out = server.run_cli(&["members", "-wan"]);
    let text = stdout(&out);
    for dc in ["dc1", "dc2"] {
        for s in ["s1", "s2", "s3"] {
            let row = text
                .lines()
                .find(|l| l.starts_with(&format!("{s}.{dc} ")))
                .unwrap_or_else(|| panic!("{s}.{dc} in\n{text}"));
            assert!(row.contains("alive"), "{row}");
        }
    }
    assert_eq!(text.lines().count(), 7, "a header and six servers:\n{text}");
    let dcs: Vec<String> =
        serde_json::from_value(dc1.get_json("/v1/catalog/datacenters").await).unwrap();
    assert_eq!(dcs, ["dc1", "dc2"]);
    let out = eventually(Duration::from_secs(30), "WAN coordinates", || async {
        let o = server.run_cli(&["rtt", "-wan", "s1.dc1", "s2.dc2"]);
        o.status.success().then_some(o)
    })
    .await
    .unwrap();
    assert!(
        stdout(&out).starts_with("Estimated s1.dc1 <-> s2.dc2 rtt: "),
        "{}",
        stdout(&out)
    );
    let me = server.get_json("/v1/agent/self").await;
    let stats = &me["Stats"];
    assert_eq!(stats["consul"]["known_datacenters"], "2", "{stats}");
    assert_eq!(stats["serf_wan"]["members"], "6", "{stats}");
    assert_eq!(stats["serf_wan"]["failed"], "0", "{stats}");
    let commit: u64 = stats["raft"]["commit_index"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let last: u64 = stats["raft"]["last_log_index"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(commit > 0 && last >= commit, "{stats}");
    let coords = dc1.get_json("/v1/coordinate/datacenters").await;
    let coords = coords.as_array().unwrap();
    assert_eq!(coords.len(), 2, "{coords:?}");
    assert!(coords.iter().all(|d| d["AreaID"] == "wan"));

    // Reads from dc1 keep running while two of dc2's routers and one of its servers die.
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let loop_task = tokio::spawn({
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        let url = dc1.url("/v1/health/service/web?dc=dc2");
        let http = http.clone();
        async move {
            while !stop.load(Ordering::Relaxed) {
                let r = http.get(&url).timeout(Duration::from_secs(30)).send().await;
                let good = match r {
                    Ok(r) if r.status().is_success() => r
                        .json::<serde_json::Value>()
                        .await
                        .is_ok_and(|v| v.as_array().is_some_and(|a| a.len() == 1)),
                    Ok(r) => {
                        eprintln!(
                            "failed read: {} {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        );
                        false
                    }
                    Err(e) => {
                        eprintln!("failed read: {e}");
                        false
                    }
                };
                if good { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = ok.load(Ordering::Relaxed);
    assert!(before > 0, "reads flow before the kills");
    {
        let dc2 = fed.dc_mut("dc2");
        dc2.routers[0].kill9(); // fronts s1
        dc2.routers[1].kill9(); // fronts s2
        // s3 dies too: the one router left must relay to another server.
        dc2.servers.servers[2].kill9();
    }
    let dc1 = fed.dc("dc1").client();
    let server = &fed.dc("dc1").servers.servers[0];
    tokio::time::sleep(Duration::from_secs(20)).await;
    stop.store(true, Ordering::Relaxed);
    loop_task.await.unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("cross-DC reads during the kills: {ok} ok, {failed} failed");
    assert_eq!(failed, 0, "no read may fail ({ok} succeeded)");
    assert!(
        ok > before + 10,
        "reads kept flowing: {before} before, {ok} in all"
    );

    // The WAN pool shows what died: two routers' members and the dead server's.
    eventually(
        Duration::from_secs(60),
        "dc2's dead members failed in the WAN pool",
        || async {
            let m = wan_members(server).await?;
            let all_failed = ["s1.dc2", "s2.dc2", "s3.dc2"]
                .iter()
                .all(|n| m.get(*n) == Some(&4));
            let dc1_alive = ["s1.dc1", "s2.dc1", "s3.dc1"]
                .iter()
                .all(|n| m.get(*n) == Some(&1));
            (all_failed && dc1_alive).then_some(())
        },
    )
    .await
    .unwrap();
    let out = server.run_cli(&["members", "-wan", "-status=failed"]);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 4, "{text}");
    // And dc2 still answers through what is left of it.
    let r = http
        .get(dc1.url("/v1/health/service/web?dc=dc2"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let router = &fed.dc("dc1").routers[0];
    assert!(
        router
            .metric_sum("router_forward_requests_total{dc=\"dc2\",outcome=\"ok\"}")
            .await
            > 0.0
    );

    // With its last router gone, dc2 is known but unreachable: Consul's other error.
    fed.dc_mut("dc2").routers[2].kill9();
    let dc1 = fed.dc("dc1").client();
    let started = std::time::Instant::now();
    let body = eventually(Duration::from_secs(60), "dc2 unreachable", || async {
        let r = http
            .get(dc1.url("/v1/kv/cross/key?dc=dc2"))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .ok()?;
        if r.status() != 500 {
            return None;
        }
        r.text().await.ok()
    })
    .await
    .unwrap();
    assert!(
        body.contains("Remote DC has no server currently reachable"),
        "{body}"
    );
    eprintln!("dc2 reported unreachable after {:?}", started.elapsed());
    let unknown = http.get(dc1.url("/v1/kv/x?dc=dc9")).send().await.unwrap();
    assert!(
        unknown
            .text()
            .await
            .unwrap()
            .contains("No path to datacenter")
    );
    // A forward may still spend its retry budget on the dead router until gossip has
    // marked it failed (longer than dig's 2 s wait on a loaded machine): ask again.
    let dns_addr = dc1.dns.unwrap();
    eventually(Duration::from_secs(30), "SERVFAIL for dc2", || async {
        let dns = dig(dns_addr, "web.service.dc2.consul", "A", &[]);
        (dns.status == "SERVFAIL").then_some(())
    })
    .await
    .unwrap();
}
