//! Forming the cluster and keeping its membership in step with gossip.
//!
//! Before a server has Raft state it waits for `-bootstrap-expect` servers of its
//! datacenter to show up in gossip; then the one with the lowest Raft ID initialises the
//! cluster with all of them, after asking each that none already belongs to a cluster, so
//! a rebuilt server never starts a second cluster. Once formed, the leader (autopilot):
//! adds servers it sees in gossip as learners, promotes them to voters once they have kept
//! up for the stabilisation time, and removes servers that left the pool. With
//! `CleanupDeadServers` it also removes failed voters once a healthy server waits to take
//! a place, never below a quorum of the voters or `MinQuorum`; a failed server alone is
//! kept, since a crashed server that restarts should find its seat.
//! The settings come from the log (`/v1/operator/autopilot/configuration`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ChangeMembers;
use tokio_util::sync::CancellationToken;

use super::network::send;
use super::{NodeId, RaftConsensus, RaftMsg, RaftNode, RaftReply, raft_id};
use crate::gossip::{Gossip, MemberStatus};
use crate::rpc::RpcClient;

const TICK: Duration = Duration::from_secs(1);

/// A server of this datacenter as gossip sees it.
#[derive(Debug, Clone)]
pub struct SeenServer {
    pub id: NodeId,
    pub node: RaftNode,
    pub status: MemberStatus,
}

/// Servers of `dc` in the gossip pool, by Raft ID.
pub fn servers(gossip: &Gossip, dc: &str) -> BTreeMap<NodeId, SeenServer> {
    gossip
        .members()
        .iter()
        .filter(|m| m.tags.get("role").map(String::as_str) == Some("consul"))
        .filter(|m| m.tags.get("dc").map(String::as_str) == Some(dc))
        .filter_map(|m| {
            let node_id = m.tags.get("id")?.clone();
            let id = raft_id(&node_id);
            let port: u16 = m.tags.get("port")?.parse().ok()?;
            Some((
                id,
                SeenServer {
                    id,
                    node: RaftNode {
                        name: m.name.clone(),
                        addr: std::net::SocketAddr::new(m.addr.ip(), port).to_string(),
                        node_id,
                    },
                    status: m.status,
                },
            ))
        })
        .collect()
}

pub async fn run(c: Arc<RaftConsensus>, gossip: Gossip, shutdown: CancellationToken) {
    let client = RpcClient::from_ip(c.settings.advertise.ip()).with_tls(c.settings.rpc_tls.clone());
    let mut healthy_since: HashMap<NodeId, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    let mut warned_other_dc = BTreeSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        for m in gossip.members().iter() {
            let dc = m.tags.get("dc").cloned().unwrap_or_default();
            if m.tags.get("role").map(String::as_str) == Some("consul")
                && dc != c.settings.datacenter
                && warned_other_dc.insert(m.name.clone())
            {
                tracing::warn!(member = %m.name, datacenter = %dc, "a server of another datacenter is in the LAN pool; it is ignored for Raft");
            }
        }
        let seen = servers(&gossip, &c.settings.datacenter);
        if !c.is_initialized().await {
            bootstrap(&c, &client, &seen).await;
            continue;
        }
        if c.raft.metrics().borrow().state != openraft::ServerState::Leader {
            healthy_since.clear();
            continue;
        }
        manage(&c, &seen, &mut healthy_since).await;
    }
}

async fn bootstrap(c: &RaftConsensus, client: &RpcClient, seen: &BTreeMap<NodeId, SeenServer>) {
    if c.settings.bootstrap {
        let me = BTreeMap::from([(c.id(), c.node.clone())]);
        match c.initialize(me).await {
            Ok(()) => tracing::info!("bootstrapped a single-server cluster"),
            Err(e) => tracing::error!(error = %e, "bootstrap failed"),
        }
        return;
    }
    let Some(expect) = c.settings.bootstrap_expect else {
        return;
    };
    let alive: BTreeMap<NodeId, RaftNode> = seen
        .values()
        .filter(|s| s.status == MemberStatus::Alive)
        .map(|s| (s.id, s.node.clone()))
        .collect();
    if alive.len() < expect as usize || alive.keys().next() != Some(&c.id()) {
        return;
    }
    // Someone may already run a cluster (this server was rebuilt): then wait to be added.
    for (id, node) in &alive {
        if *id == c.id() {
            continue;
        }
        let Ok(addr) = node.addr.parse() else {
            return;
        };
        match send(
            client,
            &c.shared,
            addr,
            RaftMsg::Status,
            Duration::from_secs(2),
        )
        .await
        {
            Ok(RaftReply::Status { cluster_id, voters }) if cluster_id.is_none() && voters == 0 => {
            }
            Ok(RaftReply::Status { .. }) => {
                tracing::info!(server = %node, "a cluster already exists; waiting to be added to it");
                return;
            }
            other => {
                tracing::debug!(server = %node, ?other, "cannot ask a server before bootstrapping");
                return;
            }
        }
    }
    tracing::info!(
        servers = alive.len(),
        "found the expected servers; bootstrapping the cluster"
    );
    if let Err(e) = c.initialize(alive).await {
        tracing::error!(error = %e, "bootstrap failed");
    }
}

async fn manage(
    c: &RaftConsensus,
    seen: &BTreeMap<NodeId, SeenServer>,
    healthy_since: &mut HashMap<NodeId, Instant>,
) {
    let (config, _, _) = c.configuration();
    let in_config: BTreeMap<NodeId, (RaftNode, bool)> = config
        .into_iter()
        .map(|(id, node, voter)| (id, (node, voter)))
        .collect();

    // Servers that left the pool go (a crashed one stays: it may come back).
    let gone: BTreeSet<NodeId> = in_config
        .iter()
        .filter(|(id, (node, _))| {
            **id != c.id()
                && (seen.get(id).is_some_and(|s| s.status == MemberStatus::Left)
                    // The same address under a new ID: the server was rebuilt.
                    || seen.values().any(|s| s.node.addr == node.addr && s.id != **id && s.status == MemberStatus::Alive))
        })
        .map(|(id, _)| *id)
        .collect();
    if !gone.is_empty() {
        tracing::info!(
            ?gone,
            "removing servers that left from the Raft configuration"
        );
        let voters: BTreeSet<NodeId> = gone.iter().filter(|id| in_config[id].1).copied().collect();
        if !voters.is_empty()
            && let Err(e) = c
                .raft
                .change_membership(ChangeMembers::RemoveVoters(voters), false)
                .await
        {
            tracing::warn!(error = %e, "removing servers failed");
            return;
        }
        let learners: BTreeSet<NodeId> =
            gone.iter().filter(|id| !in_config[id].1).copied().collect();
        if !learners.is_empty()
            && let Err(e) = c
                .raft
                .change_membership(ChangeMembers::RemoveNodes(learners), false)
                .await
        {
            tracing::warn!(error = %e, "removing learners failed");
        }
        return;
    }

    let ap = c.autopilot_config();
    if ap.cleanup_dead_servers {
        let voters: Vec<NodeId> = in_config
            .iter()
            .filter(|(_, (_, voter))| *voter)
            .map(|(id, _)| *id)
            .collect();
        let failed: Vec<NodeId> = voters
            .iter()
            .filter(|id| **id != c.id())
            .filter(|id| {
                seen.get(id)
                    .is_some_and(|s| s.status == MemberStatus::Failed)
            })
            .copied()
            .collect();
        let waiting = seen.values().any(|s| {
            s.status == MemberStatus::Alive && !in_config.get(&s.id).is_some_and(|(_, v)| *v)
        });
        let keep = (ap.min_quorum as usize).max(voters.len() / 2 + 1);
        let remove: BTreeSet<NodeId> = failed
            .into_iter()
            .take(voters.len().saturating_sub(keep))
            .collect();
        if waiting && !remove.is_empty() {
            tracing::info!(?remove, "removing failed servers a new server can replace");
            if let Err(e) = c
                .raft
                .change_membership(ChangeMembers::RemoveVoters(remove), false)
                .await
            {
                tracing::warn!(error = %e, "removing failed servers failed");
            }
            return;
        }
    }

    let now = Instant::now();
    healthy_since.retain(|id, _| {
        seen.get(id)
            .is_some_and(|s| s.status == MemberStatus::Alive)
    });
    for s in seen.values().filter(|s| s.status == MemberStatus::Alive) {
        healthy_since.entry(s.id).or_insert(now);
        if !in_config.contains_key(&s.id) {
            tracing::info!(server = %s.node, "adding a new server as a learner");
            if let Err(e) = c.raft.add_learner(s.id, s.node.clone(), false).await {
                tracing::warn!(server = %s.node, error = %e, "adding a learner failed");
            }
        }
    }

    let metrics = c.raft.metrics().borrow().clone();
    let last = metrics.last_log_index.unwrap_or(0);
    let caught_up = |id: &NodeId| {
        metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(id).cloned().flatten())
            .is_some_and(|m| m.index + ap.max_trailing_logs >= last)
    };
    let promote: BTreeSet<NodeId> = in_config
        .iter()
        .filter(|(id, (_, voter))| !voter && caught_up(id))
        .filter(|(id, _)| {
            healthy_since
                .get(id)
                .is_some_and(|t| now.duration_since(*t) >= ap.stabilization)
        })
        .map(|(id, _)| *id)
        .collect();
    if !promote.is_empty() {
        tracing::info!(?promote, "promoting caught-up servers to voters");
        if let Err(e) = c
            .raft
            .change_membership(ChangeMembers::AddVoterIds(promote), false)
            .await
        {
            tracing::warn!(error = %e, "promoting servers failed");
        }
    }
}
