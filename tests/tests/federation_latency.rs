//! Three datacenters whose routers reach each other through user-space delay proxies
//! (dc1–dc2 50 ms, dc1–dc3 150 ms, dc2–dc3 120 ms round trips): WAN coordinates learn the
//! distances, and datacenters sort by them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use cairn_tests::delay::DelayProxy;
use cairn_tests::federation::{Certs, RouterOpts, dc_ip};
use cairn_tests::{AgentOpts, eventually, free_udp_tcp_port, stdout};

/// Round trips between datacenters, in milliseconds.
fn rtt_ms(a: usize, b: usize) -> u64 {
    match (a.min(b), a.max(b)) {
        (x, y) if x == y => 0,
        (1, 2) => 50,
        (1, 3) => 150,
        (2, 3) => 120,
        _ => unreachable!("three datacenters"),
    }
}

/// The datacenter of a router's address (`127.(10+k).0.x`).
fn dc_of(ip: IpAddr) -> usize {
    match ip {
        IpAddr::V4(v4) => v4.octets()[1] as usize - 10,
        IpAddr::V6(_) => 0,
    }
}

/// WAN probes twice a second, so coordinates settle within the test.
const PROBES: &str = r#"{"gossip_wan": {"probe_interval": "500ms", "probe_timeout": "400ms",
  "gossip_interval": "200ms", "suspicion_mult": 6}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datacenters_sort_by_wan_round_trip() {
    let certs = Certs::new();
    let mut agents = Vec::new();
    let mut routers = Vec::new();
    let mut proxies = Vec::new();
    let mut first_proxy: Option<SocketAddr> = None;
    for k in 1..=3 {
        let dc = format!("dc{k}");
        let agent = AgentOpts::default()
            .ip(dc_ip(k, 1))
            .node("s1")
            .arg(format!("-datacenter={dc}"))
            .start()
            .await
            .unwrap();
        let router_ip = dc_ip(k, 11);
        let wan_port = free_udp_tcp_port(router_ip);
        let delay: cairn_tests::delay::DelayFn =
            Arc::new(move |from| Duration::from_millis(rtt_ms(k, dc_of(from)) / 2));
        let proxy = DelayProxy::start(
            SocketAddr::new(IpAddr::V4(dc_ip(k, 111)), 0),
            SocketAddr::new(IpAddr::V4(router_ip), wan_port),
            delay,
        )
        .await;
        let mut opts = RouterOpts::new(&dc, "s1", router_ip, &certs);
        opts.wan_port = Some(wan_port);
        opts.advertise_wan = Some(proxy.addr);
        opts.join_lan = Some(agent.serf);
        opts.join_wan = first_proxy.into_iter().collect();
        opts.config = Some(PROBES.into());
        first_proxy.get_or_insert(proxy.addr);
        routers.push(opts.start().await.unwrap());
        proxies.push(proxy);
        agents.push(agent);
    }

    // The estimates settle near the truth (Vivaldi needs a few dozen probes).
    let estimate = |a: &str, b: &str| {
        let out = agents[0].run_cli(&["rtt", "-wan", a, b]);
        let text = stdout(&out);
        text.split("rtt: ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|ms| ms.parse::<f64>().ok())
    };
    let order = |i: usize| {
        let a = &agents[i];
        async move {
            let v = a.get_json("/v1/catalog/datacenters").await;
            serde_json::from_value::<Vec<String>>(v).unwrap_or_default()
        }
    };
    let started = std::time::Instant::now();
    let settled = eventually(
        Duration::from_secs(120),
        "WAN estimates near the truth",
        || async {
            let near = estimate("s1.dc1", "s1.dc2")?;
            let far = estimate("s1.dc1", "s1.dc3")?;
            let mid = estimate("s1.dc2", "s1.dc3")?;
            let close = |est: f64, truth: f64| (est - truth).abs() <= truth * 0.25;
            if !(close(near, 50.0) && close(far, 150.0) && close(mid, 120.0)) {
                return None;
            }
            // Every datacenter sorts the others by those distances.
            (order(0).await == ["dc1", "dc2", "dc3"]
                && order(1).await == ["dc2", "dc1", "dc3"]
                && order(2).await == ["dc3", "dc2", "dc1"])
            .then_some((near, far, mid))
        },
    )
    .await;
    let (near, far, mid) = settled.unwrap_or_else(|e| {
        panic!(
            "{e}: dc1-dc2 {:?}, dc1-dc3 {:?}, dc2-dc3 {:?}",
            estimate("s1.dc1", "s1.dc2"),
            estimate("s1.dc1", "s1.dc3"),
            estimate("s1.dc2", "s1.dc3")
        )
    });
    eprintln!(
        "after {:?}: dc1-dc2 {near:.1} ms (50), dc1-dc3 {far:.1} ms (150), dc2-dc3 {mid:.1} ms (120)",
        started.elapsed()
    );
    let out = agents[0].run_cli(&["catalog", "datacenters"]);
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["dc1", "dc2", "dc3"]
    );

    let maps = agents[0].get_json("/v1/coordinate/datacenters").await;
    let names: Vec<&str> = maps
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["Datacenter"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dc1", "dc2", "dc3"]);
    let gauge = routers[0]
        .metric_sum("router_datacenter_rtt_seconds{dc=\"dc3\"}")
        .await;
    assert!(gauge > 0.05, "the router publishes its estimate: {gauge}");
}
