//! The DNS interface of the real binary, queried with `dig`.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cairn_tests::{Agent, AgentOpts, dig, eventually, http_client};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// A tiny HTTP server that answers 200 to anything, for HTTP checks to probe.
struct Backend {
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    async fn start(addr: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        Self {
            addr,
            task: Some(task),
        }
    }

    async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

async fn register(agent: &Agent, body: serde_json::Value) {
    let r = http_client()
        .put(agent.url("/v1/agent/service/register"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

async fn passing_count(agent: &Agent, service: &str) -> usize {
    let v: serde_json::Value = http_client()
        .get(agent.url(&format!("/v1/health/service/{service}?passing")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v.as_array().unwrap().len()
}

#[tokio::test(flavor = "multi_thread")]
async fn http_check_moves_an_instance_in_and_out_of_dns() {
    let agent = AgentOpts::default().dns().start().await.unwrap();
    let dns = agent.dns.unwrap();
    let mut backend = Backend::start("127.0.0.1:0".parse().unwrap()).await;
    let interval = Duration::from_secs(1);
    register(
        &agent,
        json!({
            "Name": "web",
            "Port": backend.addr.port(),
            "Check": {"HTTP": format!("http://{}/health", backend.addr), "Interval": "1s"}
        }),
    )
    .await;
    let srv = eventually(Duration::from_secs(5), "web in DNS", || async {
        let d = dig(dns, "web.service.consul", "SRV", &[]);
        (d.status == "NOERROR" && !d.answer.is_empty()).then_some(d)
    })
    .await
    .unwrap();
    assert_eq!(
        srv.data_of("SRV"),
        [format!(
            "1 1 {} {}.node.dc1.consul.",
            backend.addr.port(),
            agent.node
        )]
    );
    assert_eq!(passing_count(&agent, "web").await, 1);

    backend.stop().await;
    let stopped = Instant::now();
    eventually(
        2 * interval + Duration::from_millis(500),
        "web to leave DNS",
        || async {
            (dig(dns, "web.service.consul", "SRV", &[]).status == "NXDOMAIN").then_some(())
        },
    )
    .await
    .unwrap();
    println!(
        "instance left DNS {:?} after its backend stopped",
        stopped.elapsed()
    );
    assert_eq!(passing_count(&agent, "web").await, 0);

    let _backend = Backend::start(backend.addr).await;
    eventually(
        2 * interval + Duration::from_millis(500),
        "web to return",
        || async { (dig(dns, "web.service.consul", "SRV", &[]).answer.len() == 1).then_some(()) },
    )
    .await
    .unwrap();
    assert_eq!(passing_count(&agent, "web").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn names_answer_as_consul_does() {
    let agent = AgentOpts::default()
        .dns()
        .arg("-node-meta=rack:r1")
        .start()
        .await
        .unwrap();
    let dns = agent.dns.unwrap();
    register(
        &agent,
        json!({"Name": "web", "Port": 80, "Tags": ["rails"]}),
    )
    .await;
    register(
        &agent,
        json!({"Name": "web", "ID": "web-b", "Port": 81, "Address": "10.9.8.7", "Tags": ["v2"]}),
    )
    .await;
    eventually(Duration::from_secs(5), "both instances", || async {
        (dig(dns, "web.service.consul", "A", &[]).answer.len() == 2).then_some(())
    })
    .await
    .unwrap();

    let tagged = dig(dns, "rails.web.service.consul", "A", &[]);
    assert_eq!(tagged.status, "NOERROR");
    assert!(tagged.flags.contains(&"aa".to_string()));
    assert_eq!(tagged.data_of("A"), ["127.0.0.1"]);
    assert!(tagged.answer[0].starts_with("rails.web.service.consul. 0 IN A"));

    let rfc = dig(dns, "_web._rails.service.consul", "SRV", &[]);
    assert_eq!(
        rfc.data_of("SRV"),
        [format!("1 1 80 {}.node.dc1.consul.", agent.node)]
    );
    assert!(
        rfc.additional
            .iter()
            .any(|r| r.starts_with(&format!("{}.node.dc1.consul. 0 IN A 127.0.0.1", agent.node)))
    );
    let tcp = dig(dns, "_web._tcp.service.consul", "SRV", &[]);
    assert_eq!(tcp.answer.len(), 2);
    let addr_target = dig(dns, "v2.web.service.consul", "SRV", &[]);
    assert_eq!(
        addr_target.data_of("SRV"),
        ["1 1 81 0a090807.addr.dc1.consul."]
    );
    assert!(
        addr_target
            .additional
            .contains(&"0a090807.addr.dc1.consul. 0 IN A 10.9.8.7".to_string())
    );

    let node = dig(dns, &format!("{}.node.consul", agent.node), "A", &[]);
    assert_eq!(node.status, "NOERROR");
    assert_eq!(node.data_of("A"), ["127.0.0.1"]);
    let txt = dig(dns, &format!("{}.node.dc1.consul", agent.node), "TXT", &[]);
    assert!(
        txt.data_of("TXT").contains(&"\"rack=r1\"".to_string()),
        "{txt:?}"
    );

    for unknown in ["nope.service.consul", "ghost.node.consul", "what.consul"] {
        let d = dig(dns, unknown, "A", &[]);
        assert_eq!(d.status, "NXDOMAIN", "{unknown}");
        assert!(
            d.authority[0].contains("SOA ns.consul. hostmaster.consul."),
            "{d:?}"
        );
    }
    // A known name without records of the type: NODATA (NOERROR with the SOA).
    let aaaa = dig(dns, "web.service.consul", "AAAA", &[]);
    assert_eq!(aaaa.status, "NOERROR");
    assert!(aaaa.answer.is_empty());
    assert!(aaaa.authority[0].contains(" SOA "));
    // Another datacenter is unknown until federation exists.
    assert_eq!(
        dig(dns, "web.service.dc2.consul", "A", &[]).status,
        "NXDOMAIN"
    );

    let soa = dig(dns, "consul", "SOA", &[]);
    assert_eq!(soa.answers_of("SOA").len(), 1);
    let ns = dig(dns, "consul", "NS", &[]);
    assert_eq!(
        ns.data_of("NS"),
        [format!("{}.node.dc1.consul.", agent.node)]
    );
    // Outside the domain with no recursors: refused.
    assert_eq!(dig(dns, "example.com", "A", &[]).status, "REFUSED");
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_packets_do_not_stop_the_server() {
    let agent = AgentOpts::default().dns().start().await.unwrap();
    let dns = agent.dns.unwrap();
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for len in [1usize, 5, 11, 12, 13, 40, 300, 512, 1400] {
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        udp.send_to(&junk, dns).await.unwrap();
        let mut tcp = tokio::net::TcpStream::connect(dns).await.unwrap();
        let _ = tcp.write_all(&(len as u16).to_be_bytes()).await;
        let _ = tcp.write_all(&junk).await;
        drop(tcp);
    }
    // A header-sized packet of garbage is answered FORMERR, or dropped; never a crash.
    let mut buf = [0u8; 512];
    let mut formerr = 0;
    // The first answer may be slow on a loaded machine; after it, a pause means no more.
    let mut wait = Duration::from_secs(5);
    while let Ok(Ok((n, _))) = tokio::time::timeout(wait, udp.recv_from(&mut buf)).await {
        wait = Duration::from_millis(300);
        if n >= 4 && buf[3] & 0x0f == 1 {
            formerr += 1;
        }
    }
    println!("{formerr} garbage packets answered FORMERR");
    assert!(formerr > 0);
    // Two questions in one query: FORMERR, as Consul's DNS library answers.
    let mut two = vec![0x12, 0x34, 0x01, 0x00, 0, 2, 0, 0, 0, 0, 0, 0];
    for _ in 0..2 {
        two.extend_from_slice(b"\x03web\x07service\x06consul\x00\x00\x01\x00\x01");
    }
    udp.send_to(&two, dns).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), udp.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        n >= 12 && buf[..2] == [0x12, 0x34],
        "reply to the two-question query"
    );
    assert_eq!(buf[3] & 0x0f, 1, "FORMERR");
    register(&agent, json!({"Name": "db", "Port": 5432})).await;
    eventually(
        Duration::from_secs(5),
        "a valid answer after the garbage",
        || async { (dig(dns, "db.service.consul", "SRV", &[]).answer.len() == 1).then_some(()) },
    )
    .await
    .unwrap();
    assert_eq!(
        dig(dns, "db.service.consul", "SRV", &["+tcp"]).answer.len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn udp_limits_truncation_ttls_and_recursors() {
    let dir = std::env::temp_dir().join(format!("cairn-dns-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let upstream = AgentOpts::default()
        .dns()
        .arg("-domain=upstream")
        .start()
        .await
        .unwrap();
    std::fs::write(
        dir.join("dns.json"),
        json!({
            "dns_config": {
                "enable_truncate": true,
                "node_ttl": "7s",
                "service_ttl": {"*": "5s", "web": "11s"}
            },
            "recursors": [upstream.dns.unwrap().to_string()]
        })
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
    for i in 1..=20 {
        register(
            &agent,
            json!({"Name": "web", "ID": format!("web-{i}"), "Address": format!("10.0.0.{i}"), "Port": 80}),
        )
        .await;
    }
    register(&agent, json!({"Name": "db", "Port": 5432})).await;
    eventually(Duration::from_secs(5), "all instances", || async {
        (dig(dns, "web.service.consul", "A", &["+tcp"]).answer.len() == 20).then_some(())
    })
    .await
    .unwrap();
    // Without EDNS, UDP answers stop at udp_answer_limit (3) and say so with TC.
    let plain = dig(dns, "web.service.consul", "A", &["+noedns", "+ignore"]);
    assert_eq!(plain.answer.len(), 3);
    assert!(plain.flags.contains(&"tc".to_string()), "{plain:?}");
    // With EDNS the whole set fits; shuffled between answers.
    let edns = dig(dns, "web.service.consul", "A", &[]);
    assert_eq!(edns.answer.len(), 20);
    assert!(!edns.flags.contains(&"tc".to_string()));
    let orders: std::collections::HashSet<Vec<String>> = (0..8)
        .map(|_| dig(dns, "web.service.consul", "A", &[]).data_of("A"))
        .collect();
    assert!(orders.len() > 1, "answers are not shuffled");
    // TTLs: exact service entry, the `*` pattern, node_ttl.
    assert!(edns.answer[0].starts_with("web.service.consul. 11 IN A"));
    let db = dig(dns, "db.service.consul", "SRV", &[]);
    assert!(
        db.answer[0].starts_with("db.service.consul. 5 IN SRV"),
        "{db:?}"
    );
    let node = dig(dns, &format!("{}.node.consul", agent.node), "A", &[]);
    assert!(node.answer[0].contains(" 7 IN A "), "{node:?}");
    // Names outside the domain go to the recursor; it answers from its own catalog.
    let forwarded = dig(dns, &format!("{}.node.upstream", upstream.node), "A", &[]);
    assert_eq!(forwarded.status, "NOERROR");
    assert_eq!(forwarded.data_of("A"), ["127.0.0.1"]);
    assert!(forwarded.flags.contains(&"ra".to_string()));
    let missing = dig(dns, "ghost.node.upstream", "A", &[]);
    assert_eq!(missing.status, "NXDOMAIN");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Several instances on one address: every SRV record has its own Additional A record,
/// as Consul's answers do, also after trimming (`udp_answer_limit` without EDNS), so a
/// resolver that pairs them (HAProxy's `server-template`) sees an address for each.
#[tokio::test(flavor = "multi_thread")]
async fn each_srv_record_has_its_own_additional_record() {
    let agent = AgentOpts::default().dns().start().await.unwrap();
    let dns = agent.dns.unwrap();
    for i in 0..4 {
        register(
            &agent,
            json!({"ID": format!("be-{i}"), "Name": "be", "Port": 9000 + i}),
        )
        .await;
    }
    let d = eventually(Duration::from_secs(5), "four instances in DNS", || async {
        let d = dig(dns, "be.service.consul", "SRV", &[]);
        (d.answer.len() == 4).then_some(d)
    })
    .await
    .unwrap();
    let target = format!("{}.node.dc1.consul.", agent.node);
    let a_records: Vec<&String> = d
        .additional
        .iter()
        .filter(|r| r.starts_with(&target) && r.contains(" IN A "))
        .collect();
    assert_eq!(a_records.len(), 4, "{:?}", d.additional);
    // Without EDNS, Consul's default udp_answer_limit of 3 applies to both sections.
    let plain = dig(dns, "be.service.consul", "SRV", &["+noedns"]);
    assert_eq!(plain.answer.len(), 3, "{}", plain.raw);
    let a = plain
        .additional
        .iter()
        .filter(|r| r.contains(" IN A "))
        .count();
    assert_eq!(a, 3, "{}", plain.raw);
}

/// PUT `path` with a JSON body and expect a 200.
async fn put_ok(agent: &Agent, path: &str, body: serde_json::Value) {
    let r = http_client()
        .put(agent.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}: {}", r.text().await.unwrap());
}

async fn dns_cache_hits(agent: &Agent) -> f64 {
    let text = http_client()
        .get(agent.url("/v1/agent/metrics?format=prometheus"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("cairn_dns_cache_hits_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Answers come from a cache, but never from an older catalog: right after each
/// register, deregister and health change, the next query sees it.
#[tokio::test(flavor = "multi_thread")]
async fn cached_answers_are_never_older_than_the_catalog() {
    let agent = AgentOpts::default().dns().start().await.unwrap();
    let dns = agent.dns.unwrap();
    let node = |i: u8, status: &str| {
        json!({
            "Node": format!("cache-{i}"), "Address": format!("10.9.0.{i}"),
            "Service": {"Service": "cached", "Port": 80},
            "Check": {"CheckID": "svc", "Name": "svc", "ServiceID": "cached", "Status": status}
        })
    };
    let addrs = |rtype: &str| {
        let mut v = dig(dns, "cached.service.consul", rtype, &[]).data_of(rtype);
        v.sort();
        v
    };
    put_ok(&agent, "/v1/catalog/register", node(1, "passing")).await;
    put_ok(&agent, "/v1/catalog/register", node(2, "passing")).await;
    let hits_before = dns_cache_hits(&agent).await;
    for _ in 0..3 {
        assert_eq!(addrs("A"), ["10.9.0.1", "10.9.0.2"]);
    }
    assert!(
        dns_cache_hits(&agent).await >= hits_before + 2.0,
        "answers are cached"
    );

    put_ok(&agent, "/v1/catalog/register", node(3, "passing")).await;
    assert_eq!(
        addrs("A"),
        ["10.9.0.1", "10.9.0.2", "10.9.0.3"],
        "registered"
    );
    put_ok(&agent, "/v1/catalog/register", node(2, "critical")).await;
    assert_eq!(addrs("A"), ["10.9.0.1", "10.9.0.3"], "went critical");
    put_ok(&agent, "/v1/catalog/register", node(2, "passing")).await;
    assert_eq!(
        addrs("A"),
        ["10.9.0.1", "10.9.0.2", "10.9.0.3"],
        "passing again"
    );
    put_ok(&agent, "/v1/catalog/deregister", json!({"Node": "cache-1"})).await;
    assert_eq!(addrs("A"), ["10.9.0.2", "10.9.0.3"], "deregistered");
    assert_eq!(addrs("SRV").len(), 2);
    // A node's new address reaches the answer too.
    let mut moved = node(3, "passing");
    moved["Address"] = json!("10.9.0.33");
    put_ok(&agent, "/v1/catalog/register", moved).await;
    assert_eq!(addrs("A"), ["10.9.0.2", "10.9.0.33"], "node moved");
    for n in ["cache-2", "cache-3"] {
        put_ok(&agent, "/v1/catalog/deregister", json!({"Node": n})).await;
    }
    assert_eq!(
        dig(dns, "cached.service.consul", "A", &[]).status,
        "NXDOMAIN",
        "gone"
    );
}
