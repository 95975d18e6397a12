//! The leader's reconciliation of LAN membership into the catalog, as Consul's leader does:
//! an alive member's node is registered with a passing `serfHealth` check (servers also
//! get the `consul` service), a failed member's `serfHealth` goes critical (which
//! invalidates its sessions and drops its services from DNS), and a member that left or was
//! reaped is deregistered.
//!
//! Runs on every membership change and, to repair anything missed, every minute. Writes
//! only what differs, so a steady pool costs nothing.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use cairn_shared::api::{
    self, CheckStatus, DeregisterRequest, HealthCheck, NodeService, RegisterRequest,
};
use cairn_shared::rpc::WriteOp;
use tokio_util::sync::CancellationToken;

use super::Server;
use crate::catalog::CommandOp;
use crate::gossip::{Gossip, MemberInfo, MemberStatus};

/// The `role` tag of a WAN router in the LAN pool.
pub const ROLE_ROUTER: &str = "router";
const FULL_EVERY: Duration = Duration::from_secs(60);
/// How long a new leader's first pass waits for it to hold its lease.
const LEASE_WAIT: Duration = Duration::from_secs(10);
const ALIVE_OUTPUT: &str = "Agent alive and reachable";
const FAILED_OUTPUT: &str = "Agent not live or unreachable";

pub async fn reconcile_loop(
    server: Server,
    gossip: Gossip,
    dc: String,
    shutdown: CancellationToken,
) {
    let mut members = gossip.subscribe();
    let mut leadership = server.consensus().leadership();
    let mut full = tokio::time::interval(FULL_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = members.changed() => if changed.is_err() { return },
            // A new leader reconciles at once rather than at the next full pass.
            changed = leadership.changed() => if changed.is_err() { return },
            _ = full.tick() => {}
        }
        // A new leader holds its lease once a quorum has answered a heartbeat.
        let since = tokio::time::Instant::now();
        while *leadership.borrow() && !server.status().is_leader && since.elapsed() < LEASE_WAIT {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        if !server.status().is_leader {
            continue;
        }
        let list = members.borrow_and_update().clone();
        reconcile(&server, &list, &dc).await;
    }
}

async fn write(server: &Server, op: WriteOp) {
    if let Err(e) = server.propose(CommandOp::Client(op)).await.and_then(|a| a) {
        tracing::warn!(error = %e, "reconciling membership into the catalog failed");
    }
}

fn serf_check(status: CheckStatus) -> HealthCheck {
    HealthCheck {
        check_id: api::SERF_CHECK_ID.to_string(),
        name: api::SERF_CHECK_NAME.to_string(),
        status,
        output: match status {
            CheckStatus::Critical => FAILED_OUTPUT,
            _ => ALIVE_OUTPUT,
        }
        .to_string(),
        ..HealthCheck::default()
    }
}

pub(super) async fn reconcile(server: &Server, members: &[MemberInfo], dc: &str) {
    let ours: Vec<&MemberInfo> = members
        .iter()
        .filter(|m| m.tags.get("dc").is_none_or(|d| d == dc))
        // WAN routers are members of the pool but not nodes of the catalog.
        .filter(|m| m.tags.get("role").map(String::as_str) != Some(ROLE_ROUTER))
        .collect();
    for m in &ours {
        match m.status {
            MemberStatus::Alive => alive(server, m).await,
            MemberStatus::Failed => failed(server, m).await,
            MemberStatus::Left => deregister(server, &m.name).await,
            MemberStatus::Leaving => {}
        }
    }
    // Nodes whose member was reaped: registered by us (they have serfHealth) but gone.
    let names: HashSet<&str> = ours.iter().map(|m| m.name.as_str()).collect();
    let orphans: Vec<String> = server.state().read(|s| {
        s.nodes_with_check(api::SERF_CHECK_ID)
            .filter(|n| !names.contains(n.as_str()))
            .collect()
    });
    for node in orphans {
        deregister(server, &node).await;
    }
}

async fn alive(server: &Server, m: &MemberInfo) {
    let address = m.addr.ip().to_string();
    let is_server = m.tags.get("role").map(String::as_str) == Some("consul");
    let port: u16 = m
        .tags
        .get("port")
        .and_then(|p| p.parse().ok())
        .unwrap_or(8300);
    let (node, passing, has_service) = server.state().read(|s| {
        (
            s.node(&m.name).cloned(),
            s.check(&m.name, api::SERF_CHECK_ID)
                .is_some_and(|c| c.status == CheckStatus::Passing),
            s.has_service(&m.name, "consul"),
        )
    });
    let same_node = node.as_ref().is_some_and(|n| n.address == address);
    if same_node && passing && (!is_server || has_service) {
        return;
    }
    let existing = node.unwrap_or_default();
    let tagged = if existing.tagged_addresses.is_empty() {
        BTreeMap::from([
            ("lan".to_string(), address.clone()),
            ("wan".to_string(), address.clone()),
        ])
    } else {
        existing.tagged_addresses.clone()
    };
    let req = RegisterRequest {
        id: m.tags.get("id").cloned().unwrap_or(existing.id),
        node: m.name.clone(),
        address,
        datacenter: m.tags.get("dc").cloned().unwrap_or_default(),
        tagged_addresses: tagged,
        node_meta: existing.meta,
        service: is_server.then(|| NodeService {
            id: "consul".to_string(),
            service: "consul".to_string(),
            port,
            ..NodeService::default()
        }),
        check: Some(serf_check(CheckStatus::Passing)),
        ..RegisterRequest::default()
    };
    write(server, WriteOp::CatalogRegister(Box::new(req))).await;
}

async fn failed(server: &Server, m: &MemberInfo) {
    let (exists, critical) = server.state().read(|s| {
        (
            s.node(&m.name).is_some(),
            s.check(&m.name, api::SERF_CHECK_ID)
                .is_some_and(|c| c.status == CheckStatus::Critical),
        )
    });
    if critical {
        return;
    }
    let req = RegisterRequest {
        node: m.name.clone(),
        address: m.addr.ip().to_string(),
        id: if exists {
            String::new()
        } else {
            m.tags.get("id").cloned().unwrap_or_default()
        },
        check: Some(serf_check(CheckStatus::Critical)),
        skip_node_update: exists,
        ..RegisterRequest::default()
    };
    write(server, WriteOp::CatalogRegister(Box::new(req))).await;
}

async fn deregister(server: &Server, node: &str) {
    if server.state().read(|s| s.node(node).is_none()) {
        return;
    }
    let req = DeregisterRequest {
        node: node.to_string(),
        ..DeregisterRequest::default()
    };
    write(server, WriteOp::CatalogDeregister(req)).await;
}
