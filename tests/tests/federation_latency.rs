//! Three datacenters whose routers reach each other through user-space delay proxies
//! (dc1–dc2 50 ms, dc1–dc3 150 ms, dc2–dc3 120 ms round trips): WAN coordinates learn the
//! distances, and datacenters sort by them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn_tests::federation::{DelayedDcs, three_dc_rtt_ms};
use cairn_tests::{eventually, stdout};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datacenters_sort_by_wan_round_trip() {
    let fed = DelayedDcs::start(3, three_dc_rtt_ms).await.unwrap();
    let estimate = |a: &str, b: &str| fed.estimate(a, b);
    let order = |k: usize| fed.order(k);
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
    let out = fed.agents[0].run_cli(&["catalog", "datacenters"]);
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        ["dc1", "dc2", "dc3"]
    );

    let maps = fed.agents[0].get_json("/v1/coordinate/datacenters").await;
    let names: Vec<&str> = maps
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["Datacenter"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dc1", "dc2", "dc3"]);
    let gauge = fed.routers[0]
        .metric_sum("router_datacenter_rtt_seconds{dc=\"dc3\"}")
        .await;
    assert!(gauge > 0.05, "the router publishes its estimate: {gauge}");
}
