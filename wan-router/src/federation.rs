//! The router's two pools and what it makes of them.
//!
//! - In its datacenter's **LAN pool** the router is a member with `role=router` (never a
//!   node of the catalog). From it the router learns the local servers (`role=consul`)
//!   and whether the one it fronts is alive; servers learn from it where the router's
//!   local API listens (`port`).
//! - In the **WAN pool** the router is the member `NODE.DC` of the server it fronts, so
//!   the pool lists servers, as Consul's does. Its tags say whether that server is alive
//!   on its LAN (`server_status`); `members -wan` shows a member whose server is down as
//!   failed, and forwarding prefers members whose server is up.
//!
//! [`Federation::follow_lan`] keeps the WAN tags in step with the LAN and joins the other
//! local routers into the WAN pool as they appear (Consul's "join flooding").

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use cairn_shared::api::CoordinateEntry;
use cairn_shared::gossip::{Gossip, MemberInfo, MemberStatus};
use cairn_shared::rpc::wire::{DatacenterMap, WanMember, WanStatus};
use tokio_util::sync::CancellationToken;

use crate::routing;
use crate::telemetry::names;

/// The `role` tag of a router in the LAN pool (servers are `consul`, clients `node`).
pub const ROLE_ROUTER: &str = "router";
/// WAN tag: the fronted server's LAN status (`alive`, `failed`, `unknown`).
pub const TAG_SERVER_STATUS: &str = "server_status";
/// WAN tag: the fronted server's node name (the member name without `.DC`).
pub const TAG_NODE: &str = "node";
/// LAN tag: where other routers reach this one over QUIC.
pub const TAG_WAN_ADDR: &str = "wan_addr";

/// A WAN member a request for its datacenter can be sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `NODE.DC`.
    pub name: String,
    pub addr: SocketAddr,
    /// Whether its router says its server is alive.
    pub server_alive: bool,
}

/// Both pools, and this router's place in them.
#[derive(Debug, Clone)]
pub struct Federation {
    pub datacenter: String,
    /// The server this router fronts.
    pub node: String,
    /// Its WAN member name, `NODE.DC`.
    pub member: String,
    pub lan: Gossip,
    pub wan: Gossip,
}

fn tag<'a>(m: &'a MemberInfo, k: &str) -> Option<&'a str> {
    m.tags.get(k).map(String::as_str)
}

/// The status `members -wan` shows: a live router whose server is down reads as failed.
fn wan_status(m: &MemberInfo) -> MemberStatus {
    match m.status {
        MemberStatus::Alive if tag(m, TAG_SERVER_STATUS) != Some("alive") => MemberStatus::Failed,
        s => s,
    }
}

impl Federation {
    /// The live servers of this datacenter in the LAN pool: node name and RPC address.
    pub fn local_servers(&self) -> Vec<(String, SocketAddr)> {
        self.lan
            .members()
            .iter()
            .filter_map(|m| m.server_rpc(&self.datacenter).map(|a| (m.name.clone(), a)))
            .collect()
    }

    /// The fronted server as the LAN pool knows it, if it is a member.
    fn fronted(&self) -> Option<MemberInfo> {
        self.lan
            .members()
            .iter()
            .find(|m| m.name == self.node && tag(m, "role") == Some("consul"))
            .cloned()
    }

    /// The fronted server's RPC address, while it is alive.
    pub fn fronted_rpc(&self) -> Option<SocketAddr> {
        self.fronted().and_then(|m| m.server_rpc(&self.datacenter))
    }

    /// Every datacenter the WAN pool has members of, this one included.
    pub fn known(&self, dc: &str) -> bool {
        dc == self.datacenter || self.wan.members().iter().any(|m| tag(m, "dc") == Some(dc))
    }

    /// The members of `dc` whose routers are alive, whichever state their servers are in.
    pub fn targets(&self, dc: &str) -> Vec<Target> {
        self.wan
            .members()
            .iter()
            .filter(|m| m.name != self.member)
            .filter(|m| tag(m, "dc") == Some(dc) && m.status == MemberStatus::Alive)
            .map(|m| Target {
                name: m.name.clone(),
                addr: m.addr,
                server_alive: tag(m, TAG_SERVER_STATUS) == Some("alive"),
            })
            .collect()
    }

    /// The WAN pool as `/v1/agent/members?wan=1` shows it.
    pub fn wan_members(&self) -> Vec<WanMember> {
        self.wan
            .members()
            .iter()
            .map(|m| WanMember {
                name: m.name.clone(),
                addr: m.addr,
                tags: m.tags.clone(),
                status: wan_status(m).code(),
            })
            .collect()
    }

    /// Every datacenter with its servers' WAN coordinates, nearest first (this one first),
    /// by the median estimated round trip from this router's coordinate.
    pub fn datacenters(&self) -> Vec<DatacenterMap> {
        let mine = self.wan.coordinate();
        let peers = self.wan.peer_coordinates();
        let mut by_dc: BTreeMap<String, Vec<CoordinateEntry>> = BTreeMap::new();
        let mut rtts: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        by_dc.entry(self.datacenter.clone()).or_default();
        for m in self.wan.members().iter() {
            let Some(dc) = tag(m, "dc") else { continue };
            if matches!(m.status, MemberStatus::Left | MemberStatus::Leaving) {
                continue;
            }
            let coord = if m.name == self.member {
                Some(mine.clone())
            } else {
                peers.get(&m.name).cloned()
            };
            let node = tag(m, TAG_NODE)
                .map(str::to_string)
                .unwrap_or_else(|| m.name.trim_end_matches(&format!(".{dc}")).to_string());
            let distance = coord
                .as_ref()
                .filter(|c| c.is_compatible_with(&mine))
                .map_or(f64::INFINITY, |c| mine.distance_to_secs(c));
            rtts.entry(dc.to_string()).or_default().push(distance);
            let entries = by_dc.entry(dc.to_string()).or_default();
            if let Some(coord) = coord {
                entries.push(CoordinateEntry {
                    node,
                    segment: String::new(),
                    coord: Some(coord),
                });
            }
        }
        let mut list: Vec<DatacenterMap> = by_dc
            .into_iter()
            .map(|(dc, mut coordinates)| {
                coordinates.sort_by(|a, b| a.node.cmp(&b.node));
                let rtt_secs = if dc == self.datacenter {
                    0.0
                } else {
                    routing::median(rtts.remove(&dc).unwrap_or_default())
                };
                DatacenterMap {
                    datacenter: dc,
                    rtt_secs,
                    coordinates,
                }
            })
            .collect();
        routing::sort_datacenters(&mut list, &self.datacenter);
        list
    }

    pub fn status(&self) -> WanStatus {
        WanStatus {
            name: self.member.clone(),
            members: self.wan_members(),
            datacenters: self.datacenters(),
        }
    }

    /// The WAN tags this router publishes, given the fronted server as the LAN sees it.
    pub fn wan_tags(&self, fronted: Option<&MemberInfo>, build: &str) -> BTreeMap<String, String> {
        let status = match fronted.map(|m| m.status) {
            Some(MemberStatus::Alive) => "alive",
            Some(_) => "failed",
            None => "unknown",
        };
        let mut t: BTreeMap<String, String> = [
            ("role", "consul"),
            ("dc", self.datacenter.as_str()),
            ("segment", ""),
            (TAG_NODE, self.node.as_str()),
            (TAG_SERVER_STATUS, status),
            ("vsn", "2"),
            ("vsn_min", "2"),
            ("vsn_max", "3"),
            ("build", build),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        if let Some(m) = fronted {
            for k in ["id", "port"] {
                if let Some(v) = m.tags.get(k) {
                    t.insert(k.to_string(), v.clone());
                }
            }
        }
        t
    }

    /// Keeps the WAN tags in step with the fronted server's LAN status, and joins local
    /// routers into the WAN pool as they appear in the LAN pool.
    pub async fn follow_lan(self, build: String, shutdown: CancellationToken) {
        let mut lan = self.lan.subscribe();
        let mut published = BTreeMap::new();
        let mut tried: HashSet<SocketAddr> = HashSet::new();
        let mut retry = tokio::time::interval(Duration::from_secs(30));
        loop {
            let fronted = self.fronted();
            let tags = self.wan_tags(fronted.as_ref(), &build);
            if tags != published {
                tracing::info!(
                    server = %self.node,
                    status = %tags[TAG_SERVER_STATUS],
                    "the fronted server's state changed"
                );
                self.wan.set_tags(tags.clone());
                published = tags;
            }
            let alive = fronted.is_some_and(|m| m.status == MemberStatus::Alive);
            metrics::gauge!(names::SERVER_ALIVE).set(if alive { 1.0 } else { 0.0 });
            self.flood(&mut tried);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = lan.changed() => if r.is_err() { return },
                _ = retry.tick() => tried.clear(),
            }
        }
    }

    /// Joins the WAN addresses of local routers not yet in the WAN pool (each once, until
    /// the next retry round).
    fn flood(&self, tried: &mut HashSet<SocketAddr>) {
        let in_wan: HashSet<SocketAddr> = self.wan.members().iter().map(|m| m.addr).collect();
        let fresh: Vec<String> = self
            .lan
            .members()
            .iter()
            .filter(|m| m.status == MemberStatus::Alive && tag(m, "role") == Some(ROLE_ROUTER))
            .filter(|m| tag(m, "dc") == Some(self.datacenter.as_str()))
            .filter_map(|m| tag(m, TAG_WAN_ADDR)?.parse::<SocketAddr>().ok())
            .filter(|a| !in_wan.contains(a) && tried.insert(*a))
            .map(|a| a.to_string())
            .collect();
        if fresh.is_empty() {
            return;
        }
        let wan = self.wan.clone();
        tokio::spawn(async move {
            match wan.join(&fresh).await {
                Ok(n) => tracing::debug!(joined = n, "joined local routers into the WAN pool"),
                Err(e) => tracing::debug!(error = %e, "joining local routers into the WAN pool"),
            }
        });
    }

    /// Publishes WAN membership and distances as gauges.
    pub fn record_gauges(&self) {
        let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
        for s in ["alive", "leaving", "left", "failed"] {
            counts.insert(s, 0);
        }
        for m in self.wan.members().iter() {
            *counts.entry(wan_status(m).as_str()).or_default() += 1;
        }
        for (state, n) in counts {
            metrics::gauge!(names::WAN_MEMBERS, "state" => state).set(n as f64);
        }
        for dc in self.datacenters() {
            if dc.rtt_secs.is_finite() {
                metrics::gauge!(names::DC_RTT_SECONDS, "dc" => dc.datacenter).set(dc.rtt_secs);
            }
        }
    }
}
