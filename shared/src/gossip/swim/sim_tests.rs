//! Whole-cluster behaviour in the deterministic simulator.
//!
//! The 200-node scenarios print their measurements (run with `--nocapture`).
//! They take a few seconds in release and well under a minute in debug.

use std::time::Duration;

use super::sim::Sim;
use super::{Config, State};

const SEC: Duration = Duration::from_secs(1);

fn up(sim: &Sim) -> Vec<usize> {
    (0..sim.len()).filter(|&i| sim.is_up(i)).collect()
}

/// Every running node sees `j` in `state`.
fn all_see(sim: &Sim, j: usize, state: State) -> bool {
    up(sim)
        .into_iter()
        .filter(|&i| i != j)
        .all(|i| sim.view(i, j) == Some(state))
}

fn converge(sim: &mut Sim, limit: Duration) -> Duration {
    sim.run_until_pred(|s| s.all_alive_converged(), limit)
        .expect("cluster should converge")
}

#[derive(Default, Debug)]
struct Totals {
    probe_failures: u64,
    refutations: u64,
    tcp_rescues: u64,
    rechecks: u64,
}

fn totals(sim: &Sim) -> Totals {
    let mut t = Totals::default();
    for i in 0..sim.len() {
        let s = sim.node(i).stats();
        t.probe_failures += s.probe_failures;
        t.refutations += s.refutations;
        t.tcp_rescues += s.tcp_fallback_successes;
        t.rechecks += s.rechecks;
    }
    t
}

#[test]
fn small_cluster_lifecycle() {
    let mut sim = Sim::new(10, Config::lan(), 11);
    sim.join_all_to(0);
    converge(&mut sim, 60 * SEC);

    // Failure: everyone marks node 3 dead.
    sim.kill(3);
    let t0 = sim.now();
    let t = sim.run_until_pred(|s| all_see(s, 3, State::Dead), t0 + 120 * SEC);
    assert!(t.is_some(), "node 3 never declared dead");
    assert!(sim.false_positives().is_empty());

    // Voluntary leave: Left, not Dead, and no false positive.
    sim.with_node(5, |s, now| s.leave(now));
    let t0 = sim.now();
    assert!(
        sim.run_until_pred(|s| all_see(s, 5, State::Left), t0 + 30 * SEC)
            .is_some()
    );
    assert_eq!(
        sim.with_node(5, |s, _| s.leave_broadcast_done()),
        Some(true)
    );
    sim.kill(5);

    // Restart node 3 and rejoin: it refutes its old death and is alive everywhere.
    sim.restart(3);
    sim.join(3, 0);
    let t0 = sim.now();
    assert!(
        sim.run_until_pred(|s| all_see(s, 3, State::Alive), t0 + 30 * SEC)
            .is_some()
    );
    assert!(sim.node(3).local().incarnation > 1);
    assert!(sim.false_positives().is_empty());
    assert_eq!(sim.stats().decode_errors, 0);
}

#[test]
fn user_broadcasts_reach_everyone() {
    let mut sim = Sim::new(30, Config::lan(), 5);
    sim.join_all_to(0);
    converge(&mut sim, 60 * SEC);
    sim.set_rebroadcast_user(true);
    sim.with_node(7, |s, _| s.broadcast_user(b"deploy v2".to_vec()))
        .expect("node up")
        .expect("fits");
    sim.run_until(sim.now() + 5 * SEC);
    // With Serf-style re-broadcast on first sight, everyone hears it.
    for i in (0..30).filter(|&i| i != 7) {
        assert_eq!(sim.user_messages_seen(i), 1, "node {i}: {:?}", sim.stats());
    }
}

#[test]
fn simulation_is_deterministic() {
    let run = |seed| {
        let mut sim = Sim::new(40, Config::lan(), seed);
        sim.set_loss(0.05);
        sim.join_all_to(0);
        sim.run_until(20 * SEC);
        sim.kill(9);
        sim.run_until(60 * SEC);
        let views: Vec<Option<State>> = (0..40).map(|i| sim.view(i, 9)).collect();
        (
            format!("{:?}", sim.stats()),
            views,
            sim.node(0).local().incarnation,
        )
    };
    assert_eq!(run(3), run(3));
    assert_ne!(run(3).0, run(4).0);
}

#[test]
fn partition_then_rejoin() {
    let mut sim = Sim::new(20, Config::lan(), 21);
    // Two racks: 0.2ms inside, 5ms across.
    sim.set_latency(|a, b| {
        if (a < 10) == (b < 10) {
            Duration::from_micros(200)
        } else {
            Duration::from_millis(5)
        }
    });
    sim.join_all_to(0);
    converge(&mut sim, 60 * SEC);
    let (a, b): (Vec<usize>, Vec<usize>) = (0..20).partition(|&i| i < 10);
    sim.partition(&a, &b);
    let t0 = sim.now();
    let split = sim.run_until_pred(
        |s| {
            a.iter().all(|&i| {
                b.iter().all(|&j| {
                    s.view(i, j) == Some(State::Dead) && s.view(j, i) == Some(State::Dead)
                })
            })
        },
        t0 + 120 * SEC,
    );
    assert!(split.is_some(), "each side should declare the other dead");
    // Within a side nobody was harmed.
    assert!(
        a.iter()
            .all(|&i| a.iter().all(|&j| sim.view(i, j) == Some(State::Alive)))
    );
    sim.heal();
    // memberlist does not reconnect on its own; the host (Serf) re-joins.
    sim.join(0, 10);
    let t1 = sim.now();
    let healed = sim.run_until_pred(|s| s.all_alive_converged(), t1 + 120 * SEC);
    println!(
        "partition: split after {:?}, healed {:?} after rejoin",
        split.map(|t| t - t0),
        healed.map(|t| t - t1)
    );
    assert!(
        healed.is_some(),
        "cluster should re-merge after a host-level rejoin"
    );
}

#[test]
fn wan_config_detects_failures() {
    let mut sim = Sim::new(15, Config::wan(), 8);
    sim.set_latency(|a, b| Duration::from_millis(20 + 5 * ((a + b) % 7) as u64));
    sim.join_all_to(0);
    converge(&mut sim, 120 * SEC);
    sim.kill(4);
    let t0 = sim.now();
    let t = sim.run_until_pred(|s| all_see(s, 4, State::Dead), t0 + 300 * SEC);
    println!(
        "wan (15 nodes): failure detected everywhere after {:?}",
        t.map(|t| t - t0)
    );
    assert!(t.is_some());
    assert!(sim.false_positives().is_empty());
}

/// Serf's convergence estimate (the model behind its convergence simulator): each gossip
/// interval every informed node tells `fanout` random others; the time until the expected
/// number of uninformed nodes drops below half a node.
fn serf_convergence(n: usize, cfg: &Config) -> Duration {
    let (n, fanout) = (n as f64, cfg.gossip_nodes as f64);
    let mut informed = 1.0_f64;
    let mut rounds = 0u32;
    while n - informed >= 0.5 {
        informed += (n - informed) * (1.0 - (1.0 - fanout / (n - 1.0)).powf(informed));
        rounds += 1;
    }
    cfg.gossip_interval * rounds
}

/// Scenario (1) and (2): 200 LAN nodes join through node 0; a new member then joins and
/// must be known everywhere; then one member dies.
#[test]
fn lan_200_join_and_failure_detection() {
    let cfg = Config::lan();
    let mut sim = Sim::new(201, cfg.clone(), 1);
    let newcomer = 200;
    sim.kill(newcomer);
    sim.join_all_to(0);
    let joined = converge(&mut sim, 180 * SEC);
    println!("lan-200: every node knows every other node alive after {joined:?}");
    // Push/pull (every 2 min at this size) bounds the dissemination tail.
    assert!(joined < 150 * SEC);

    // One new member, joining through a random one, is known to all 200 others.
    sim.restart(newcomer);
    sim.join(newcomer, 17);
    let t0 = sim.now();
    let known = sim
        .run_until_pred(|s| all_see(s, newcomer, State::Alive), t0 + 120 * SEC)
        .expect("the new member becomes known everywhere")
        - t0;
    let model = serf_convergence(200, &cfg);
    println!(
        "lan-200: a new member known to every node after {known:?} (Serf's model for 200 \
         nodes, {:?} gossip to {}: {model:?})",
        cfg.gossip_interval, cfg.gossip_nodes
    );
    // The model ignores retransmit limits and timer phases; allow twice its figure.
    assert!(known <= model * 2, "{known:?} vs model {model:?}");
    sim.kill(newcomer);
    let gone = sim.now();
    sim.run_until_pred(|s| all_see(s, newcomer, State::Dead), gone + 120 * SEC)
        .expect("the newcomer's death is noticed");

    let victim = 57;
    sim.kill(victim);
    let t0 = sim.now();
    let first = sim
        .run_until_pred(
            |s| {
                up(s)
                    .iter()
                    .any(|&i| s.view(i, victim) == Some(State::Dead))
            },
            t0 + 180 * SEC,
        )
        .expect("someone declares the victim dead");
    let all = sim
        .run_until_pred(|s| all_see(s, victim, State::Dead), t0 + 180 * SEC)
        .expect("everyone declares the victim dead");
    println!(
        "lan-200: killed node first declared dead after {:?}, by every live node after {:?}",
        first - t0,
        all - t0
    );
    // Serf's figures: the suspicion timeout at n=200 runs from its minimum (9.2s, with
    // enough confirmations) to 6x that; before it, a probe round (interval plus indirect
    // timeout); after it, the dead message's dissemination.
    let min = super::config::suspicion_timeout(cfg.suspicion_mult, 200, cfg.probe_interval);
    let max = min * cfg.suspicion_max_timeout_mult;
    let bound = cfg.probe_interval * 2 + max + model;
    println!("lan-200: Serf's bounds for failure detection: {min:?} .. {bound:?}");
    assert!(all - t0 >= min && all - t0 <= bound, "{:?}", all - t0);
    assert!(
        sim.false_positives().is_empty(),
        "{:?}",
        sim.false_positives()
    );
}

fn lossy_ten_minutes(cfg: Config, label: &str) {
    let mut sim = Sim::new(200, cfg, 2);
    sim.join_all_to(0);
    converge(&mut sim, 180 * SEC);
    sim.set_loss(0.10);
    let t0 = sim.now();
    sim.run_until(t0 + 600 * SEC);
    let t = totals(&sim);
    println!(
        "{label}: 10 min at 10% loss: {} suspicions raised by failed probes, {} refuted, \
         {} probes rescued by TCP, {} re-checks, {} false Dead verdicts; {:?}",
        t.probe_failures,
        t.refutations,
        t.tcp_rescues,
        t.rechecks,
        sim.false_positives().len(),
        sim.stats()
    );
    assert!(
        t.probe_failures > 0,
        "10% loss should cause some suspicions"
    );
    assert!(
        sim.false_positives().is_empty(),
        "{:?}",
        sim.false_positives()
    );
    // Suspicions come and go under loss, but nobody is believed dead.
    assert!((0..200).all(|i| (0..200).all(|j| sim.view(i, j) != Some(State::Dead))));
}

/// Scenario (3): memberlist defaults (TCP fallback on).
#[test]
fn lan_200_ten_percent_loss_no_false_positives() {
    lossy_ten_minutes(Config::lan(), "lan-200");
}

/// Scenario (3) without the TCP fallback: three times the suspicions, all refuted.
#[test]
fn lan_200_ten_percent_loss_udp_only_no_false_positives() {
    lossy_ten_minutes(
        Config {
            disable_tcp_pings: true,
            ..Config::lan()
        },
        "lan-200 udp-only",
    );
}
