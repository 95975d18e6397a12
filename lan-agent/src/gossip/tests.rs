//! Several agents' gossip in one process over the in-memory [`Fabric`] (with tokio's clock
//! paused, so minutes of protocol time take moments), plus one pair over real sockets.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::events::{Events, LocalServices};

struct Runs {
    node: String,
    services: Vec<(String, Vec<String>)>,
}

impl LocalServices for Runs {
    fn node(&self) -> String {
        self.node.clone()
    }
    fn services(&self) -> Vec<(String, Vec<String>)> {
        self.services.clone()
    }
}

struct Node {
    gossip: Gossip,
    events: Arc<Events>,
    local: Arc<Runs>,
    shutdown: CancellationToken,
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(127, 0, 0, i as u8 + 1), 8301))
}

fn name(i: usize) -> String {
    format!("node-{i}")
}

fn start(fabric: &Fabric, i: usize, tune: impl FnOnce(&mut GossipConfig)) -> Node {
    let mut config = GossipConfig::dev(&name(i));
    config.seed = i as u64;
    config.tags.insert("role".into(), "node".into());
    tune(&mut config);
    let local = Arc::new(Runs {
        node: name(i),
        services: if i.is_multiple_of(2) {
            vec![("web".into(), vec!["v1".into()])]
        } else {
            vec![("db".into(), vec![])]
        },
    });
    let events = Arc::new(Events::default());
    let shutdown = CancellationToken::new();
    let gossip = super::start(
        config,
        Arc::new(fabric.transport(addr(i))),
        events.clone(),
        local.clone(),
        &TaskTracker::new(),
        shutdown.clone(),
    )
    .expect("gossip starts");
    Node {
        gossip,
        events,
        local,
        shutdown,
    }
}

/// Polls `f` every 100ms of (paused) time until it holds or `limit` passes.
async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let until = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < until {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f()
}

fn status_of(n: &Node, of: usize) -> Option<MemberStatus> {
    n.gossip
        .members()
        .iter()
        .find(|m| m.name == name(of))
        .map(|m| m.status)
}

fn all_see(nodes: &[Node], of: usize, status: MemberStatus, skip: &[usize]) -> bool {
    nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| !skip.contains(i))
        .all(|(_, n)| status_of(n, of) == Some(status))
}

async fn cluster(fabric: &Fabric, n: usize) -> Vec<Node> {
    cluster_with(fabric, n, |_| {}).await
}

async fn cluster_with(
    fabric: &Fabric,
    n: usize,
    tune: impl Fn(&mut GossipConfig) + Copy,
) -> Vec<Node> {
    let nodes: Vec<Node> = (0..n).map(|i| start(fabric, i, tune)).collect();
    for node in &nodes[1..] {
        let joined = node.gossip.join(&[addr(0).to_string()]).await.unwrap();
        assert_eq!(joined, 1);
    }
    let converged = eventually(Duration::from_secs(30), || {
        nodes.iter().all(|x| {
            let m = x.gossip.members();
            m.len() == n && m.iter().all(|m| m.status == MemberStatus::Alive)
        })
    })
    .await;
    assert!(converged, "cluster of {n} did not converge");
    nodes
}

#[tokio::test(start_paused = true)]
async fn members_join_fail_and_leave() {
    let fabric = Fabric::default();
    let nodes = cluster(&fabric, 5).await;
    // Tags travel with membership.
    let seen = nodes[4].gossip.members();
    assert_eq!(seen[0].tags.get("role").map(String::as_str), Some("node"));
    assert_eq!(seen[0].addr, addr(0));

    // A machine that vanishes is failed everywhere.
    fabric.isolate(addr(3));
    nodes[3].shutdown.cancel();
    assert!(
        eventually(Duration::from_secs(30), || all_see(
            &nodes,
            3,
            MemberStatus::Failed,
            &[3]
        ))
        .await
    );

    // A graceful leave is `left`, not failed.
    nodes[2].gossip.leave().await.unwrap();
    nodes[2].shutdown.cancel();
    assert!(
        eventually(Duration::from_secs(10), || all_see(
            &nodes,
            2,
            MemberStatus::Left,
            &[2, 3]
        ))
        .await
    );

    // force-leave turns the failed member into left everywhere.
    nodes[0].gossip.force_leave(&name(3), false).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || all_see(
            &nodes,
            3,
            MemberStatus::Left,
            &[2, 3]
        ))
        .await
    );
    assert!(matches!(
        nodes[0].gossip.force_leave("nobody", false).await,
        Err(GossipError::NoMember(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn failed_members_are_reaped_and_prune_forgets_at_once() {
    let fabric = Fabric::default();
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..4 {
        nodes.push(start(&fabric, i, |c| {
            c.reconnect_timeout = Duration::from_secs(60);
        }));
    }
    for n in &nodes[1..] {
        n.gossip.join(&[addr(0).to_string()]).await.unwrap();
    }
    assert!(
        eventually(Duration::from_secs(20), || nodes.iter().all(|n| n
            .gossip
            .members()
            .len()
            == 4))
        .await
    );
    fabric.isolate(addr(1));
    fabric.isolate(addr(2));
    assert!(
        eventually(Duration::from_secs(30), || all_see(
            &nodes,
            1,
            MemberStatus::Failed,
            &[1, 2]
        ))
        .await
    );
    // Prune: gone from every list straight away.
    nodes[0].gossip.force_leave(&name(2), true).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || [0, 3]
            .iter()
            .all(|&i| status_of(&nodes[i], 2).is_none()))
        .await,
        "{:?} {:?}",
        status_of(&nodes[0], 2),
        status_of(&nodes[3], 2)
    );
    // Reconnect timeout: the failed member is forgotten after a minute.
    assert!(status_of(&nodes[0], 1).is_some());
    assert!(
        eventually(Duration::from_secs(90), || [0, 3]
            .iter()
            .all(|&i| status_of(&nodes[i], 1).is_none()))
        .await
    );
}

#[tokio::test(start_paused = true)]
async fn events_reach_every_matching_member_once() {
    let fabric = Fabric::default();
    let nodes = cluster(&fabric, 6).await;
    let fire = |n: &Node, filters: [&str; 3]| {
        let ev = n
            .events
            .prepare("deploy", Some(b"v2".to_vec()), filters.map(String::from))
            .unwrap();
        n.events.fire(ev, n.local.as_ref());
    };
    fire(&nodes[1], ["", "", ""]);
    fire(&nodes[3], ["", "web", "v1"]);
    // Everyone gets the unfiltered event; only web members (even nodes) the filtered one.
    let expect = |i: usize| if i.is_multiple_of(2) { 2 } else { 1 };
    assert!(
        eventually(Duration::from_secs(10), || nodes
            .iter()
            .enumerate()
            .all(|(i, n)| n.events.list(Some("deploy")).1.len() == expect(i)))
        .await
    );
    // Nothing more arrives later (duplicates are dropped).
    tokio::time::sleep(Duration::from_secs(10)).await;
    for (i, n) in nodes.iter().enumerate() {
        let (_, list) = n.events.list(None);
        assert_eq!(list.len(), expect(i), "node {i}");
        assert_eq!(list[0].payload.as_deref(), Some(&b"v2"[..]));
    }
}

#[tokio::test(start_paused = true)]
async fn an_event_missed_by_gossip_arrives_by_push_pull() {
    let fabric = Fabric::default();
    let nodes = cluster(&fabric, 4).await;
    let others: Vec<SocketAddr> = (0..3).map(addr).collect();
    // Node 3 is cut off while the event spreads, and back before anyone suspects it.
    fabric.partition(&others, &[addr(3)]);
    let ev = nodes[0]
        .events
        .prepare("release", None, Default::default())
        .unwrap();
    nodes[0].events.fire(ev, nodes[0].local.as_ref());
    assert!(
        eventually(Duration::from_millis(400), || nodes[..3].iter().all(|n| n
            .events
            .list(None)
            .1
            .len()
            == 1))
        .await
    );
    fabric.heal();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Gossip has given up on it (retransmit limit), but the next push/pull carries it.
    assert!(
        eventually(Duration::from_secs(15), || nodes[3]
            .events
            .list(None)
            .1
            .len()
            == 1)
        .await
    );
}

fn key(b: u8) -> String {
    keyring::encode_key(&[b; 32])
}

#[tokio::test(start_paused = true)]
async fn encryption_refuses_strangers_and_keys_rotate_everywhere() {
    let fabric = Fabric::default();
    let with = |k: &str| {
        let k = keyring::parse_key(k).unwrap();
        move |c: &mut GossipConfig| c.keyring = Keyring::with_primary(k)
    };
    let nodes: Vec<Node> = (0..3).map(|i| start(&fabric, i, with(&key(1)))).collect();
    for n in &nodes[1..] {
        assert_eq!(n.gossip.join(&[addr(0).to_string()]).await.unwrap(), 1);
    }
    assert!(
        eventually(Duration::from_secs(20), || nodes.iter().all(|n| n
            .gossip
            .members()
            .len()
            == 3))
        .await
    );

    // A node with another key, or none, cannot join.
    let stranger = start(&fabric, 5, with(&key(9)));
    assert_eq!(
        stranger.gossip.join(&[addr(0).to_string()]).await.unwrap(),
        0
    );
    let plain = start(&fabric, 6, |_| {});
    assert_eq!(plain.gossip.join(&[addr(0).to_string()]).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(nodes.iter().all(|n| n.gossip.members().len() == 3));

    // Rotate: install everywhere, switch primary, remove the old key.
    let r = nodes[1]
        .gossip
        .keyring(KeyOp::Install(key(2)))
        .await
        .unwrap();
    assert_eq!((r.num_nodes, r.responses), (3, 3));
    assert_eq!(r.keys.get(&key(2)), Some(&3));
    nodes[2].gossip.keyring(KeyOp::Use(key(2))).await.unwrap();
    let err = nodes[0]
        .gossip
        .keyring(KeyOp::Remove(key(2)))
        .await
        .unwrap();
    assert_eq!(err.errors.len(), 3, "the primary key cannot be removed");
    let r = nodes[0]
        .gossip
        .keyring(KeyOp::Remove(key(1)))
        .await
        .unwrap();
    assert!(r.errors.is_empty(), "{r:?}");
    let r = nodes[0].gossip.keyring(KeyOp::List).await.unwrap();
    assert_eq!(r.keys, [(key(2), 3)].into());
    assert_eq!(r.primary_keys, [(key(2), 3)].into());

    // The cluster still works on the new key: a failure is still detected.
    fabric.isolate(addr(2));
    assert!(
        eventually(Duration::from_secs(30), || all_see(
            &nodes,
            2,
            MemberStatus::Failed,
            &[2]
        ))
        .await
    );
    // And a node with only the old key is now a stranger.
    let old = start(&fabric, 7, with(&key(1)));
    assert_eq!(old.gossip.join(&[addr(0).to_string()]).await.unwrap(), 0);
}

#[tokio::test(start_paused = true)]
async fn coordinates_learn_the_latency() {
    let fabric = Fabric::default();
    // Two sites 40ms apart (80ms round trip), 1ms inside each.
    for i in 0..6 {
        for j in 0..6 {
            if i < j {
                let d = if (i < 3) == (j < 3) { 1 } else { 40 };
                fabric.set_latency(addr(i), addr(j), Duration::from_millis(d));
            }
        }
    }
    let nodes = cluster(&fabric, 6).await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    let c: Vec<_> = nodes.iter().map(|n| n.gossip.coordinate()).collect();
    let near = c[0].distance_to_secs(&c[1]) * 1e3;
    let far = c[0].distance_to_secs(&c[4]) * 1e3;
    println!("coordinates: same site {near:.1}ms, other site {far:.1}ms (true RTT 2ms / 80ms)");
    assert!(near < 20.0, "same site estimated {near:.1}ms");
    assert!(
        (40.0..160.0).contains(&far),
        "other site estimated {far:.1}ms"
    );
}

/// Nodes at points of a plane with per-node access delays (a known ground truth), LAN
/// timing: the coordinates learned from probe round trips predict the true RTTs, and
/// `?near` (the catalog's sort over those coordinates) finds each node's true nearest.
#[tokio::test(start_paused = true)]
async fn coordinates_recover_a_known_latency_matrix() {
    use rand::{Rng, SeedableRng};

    use crate::catalog::{Command, CommandOp, Store};
    use cairn_shared::api::{CoordinateEntry, RegisterRequest};
    use cairn_shared::rpc::{Query, QueryResult, WriteOp};

    const N: usize = 24;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let pos: Vec<(f64, f64)> = (0..N)
        .map(|_| (rng.random_range(0.0..40.0), rng.random_range(0.0..40.0)))
        .collect();
    let access: Vec<f64> = (0..N).map(|_| rng.random_range(0.5..4.0)).collect();
    // One-way milliseconds; a round trip is twice that.
    let one_way = |i: usize, j: usize| {
        let (dx, dy) = (pos[i].0 - pos[j].0, pos[i].1 - pos[j].1);
        (dx * dx + dy * dy).sqrt() + access[i] + access[j]
    };
    let fabric = Fabric::default();
    for i in 0..N {
        for j in i + 1..N {
            fabric.set_latency(
                addr(i),
                addr(j),
                Duration::from_secs_f64(one_way(i, j) / 1e3),
            );
        }
    }
    let nodes = cluster_with(&fabric, N, |c| c.swim = swim::Config::lan()).await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    let coords: Vec<_> = nodes.iter().map(|n| n.gossip.coordinate()).collect();

    let mut errors = Vec::new();
    for i in 0..N {
        for j in i + 1..N {
            let truth = 2.0 * one_way(i, j);
            let est = coords[i].distance_to_secs(&coords[j]) * 1e3;
            errors.push((est - truth).abs() / truth);
        }
    }
    errors.sort_by(f64::total_cmp);
    let median = errors[errors.len() / 2];
    let p90 = errors[errors.len() * 9 / 10];

    // ?near through the catalog: register the nodes, store the coordinates, sort.
    let mut store = Store::new();
    let mut index = 0;
    let mut apply = |store: &mut Store, op: WriteOp| {
        index += 1;
        let cmd = Command {
            now_ms: 0,
            op: CommandOp::Client(op),
        };
        store.apply(index, &cmd).unwrap();
    };
    for i in 0..N {
        let req = RegisterRequest {
            node: name(i),
            address: addr(i).ip().to_string(),
            ..RegisterRequest::default()
        };
        apply(&mut store, WriteOp::CatalogRegister(Box::new(req)));
    }
    let entries = (0..N)
        .map(|i| CoordinateEntry {
            node: name(i),
            segment: String::new(),
            coord: Some(coords[i].clone()),
        })
        .collect();
    apply(&mut store, WriteOp::CoordinateBatchUpdate(entries));
    let mut hits = 0;
    for i in 0..N {
        let q = Query::CatalogNodes {
            select: Default::default(),
        };
        let QueryResult::Nodes(list) = store.query(&q, &name(i)).unwrap().1 else {
            panic!("nodes query answered with something else");
        };
        assert_eq!(list[0].node, name(i), "a node is nearest to itself");
        let truly_nearest = (0..N)
            .filter(|&j| j != i)
            .min_by(|&a, &b| one_way(i, a).total_cmp(&one_way(i, b)))
            .unwrap();
        if list[1].node == name(truly_nearest) {
            hits += 1;
        }
    }
    println!(
        "coordinates, {N} nodes, 10 simulated minutes: median relative RTT error {:.1}%, \
         90th percentile {:.1}%; ?near picks the true nearest node for {hits}/{N}",
        median * 100.0,
        p90 * 100.0
    );
    assert!(median < 0.15, "median relative error {median}");
    assert!(hits * 2 > N, "?near right for only {hits}/{N}");
}

#[tokio::test]
async fn real_sockets_shrug_off_garbage() {
    use tokio::io::AsyncWriteExt;
    let bind = |ip: u8| SocketAddr::from((Ipv4Addr::new(127, 0, 0, ip), 0));
    let mut nodes = Vec::new();
    for (i, ip) in [(0, 21u8), (1, 22)] {
        let transport = NetTransport::bind(bind(ip), None).await.unwrap();
        let mut config = GossipConfig::dev(&name(i));
        config.keyring = Keyring::with_primary(vec![3; 16]);
        let local = Arc::new(Runs {
            node: name(i),
            services: vec![],
        });
        let shutdown = CancellationToken::new();
        let gossip = super::start(
            config,
            Arc::new(transport),
            Arc::new(Events::default()),
            local,
            &TaskTracker::new(),
            shutdown.clone(),
        )
        .unwrap();
        nodes.push((gossip, shutdown));
    }
    let target = nodes[0].0.local_addr();
    assert_eq!(nodes[1].0.join(&[target.to_string()]).await.unwrap(), 1);
    // Garbage datagrams and streams at the first node.
    let udp = tokio::net::UdpSocket::bind(bind(23)).await.unwrap();
    for len in [0usize, 1, 7, 100, 1400] {
        udp.send_to(&vec![0xAB; len], target).await.unwrap();
    }
    for junk in [
        &b"P\xff\xff\xff\xff"[..],
        b"T\x00\x00\x00\x05hello",
        b"GET / HTTP/1.1\r\n\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(target).await.unwrap();
        let _ = s.write_all(junk).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (g, _) in &nodes {
        let m = g.members();
        assert_eq!(m.len(), 2);
        assert!(m.iter().all(|m| m.status == MemberStatus::Alive), "{m:?}");
    }
    for (_, s) in nodes {
        s.cancel();
    }
}
