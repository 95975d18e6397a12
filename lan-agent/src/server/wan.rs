//! What a server reaches beyond its state store: its datacenter's WAN routers, for
//! requests naming another datacenter, and its LAN pool, for events fired from elsewhere.
//!
//! Routers are LAN members with `role=router`; the one fronting this server (tag
//! `fronts`) is asked first, the others in random order. A router that cannot be reached
//! is passed over; a read is also sent again after a failure that left its fate unknown,
//! a write is not. With no router at all, no other datacenter is known: `No path to
//! datacenter`, as Consul answers for a datacenter it has never heard of.
//!
//! The WAN status (members, datacenters by distance) is fetched from a router and kept
//! for [`STATUS_TTL`], so `/v1/catalog/datacenters` costs one router call a second at
//! most; [`WanRoutes::cached_status`] serves synchronous readers (`/v1/agent/self`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_shared::rpc::RpcError;
use cairn_shared::rpc::timeouts::{self, HOLD_TIMEOUT, WRITE_TIMEOUT};
use cairn_shared::rpc::wire::{Forwarded, WanStatus};
use rand::seq::SliceRandom;
use tokio::time::Instant;

use crate::events::{Events, LocalServices, UserEvent};
use crate::gossip::{Gossip, MemberStatus};
use crate::rpc::{Body, CallError, Reply, RpcClient};
use crate::server::reconcile::ROLE_ROUTER;

/// How long a fetched WAN status is reused.
pub const STATUS_TTL: Duration = Duration::from_secs(1);
/// How long a router may take to answer a status request.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// The routers and the LAN pool, as a server uses them.
pub struct WanRoutes {
    gossip: Gossip,
    datacenter: String,
    node: String,
    client: RpcClient,
    events: Arc<Events>,
    local: Arc<dyn LocalServices>,
    status: Mutex<Option<(Instant, WanStatus)>>,
}

impl std::fmt::Debug for WanRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WanRoutes")
            .field("datacenter", &self.datacenter)
            .finish_non_exhaustive()
    }
}

impl WanRoutes {
    pub fn new(
        gossip: Gossip,
        datacenter: &str,
        node: &str,
        client: RpcClient,
        events: Arc<Events>,
        local: Arc<dyn LocalServices>,
    ) -> Self {
        Self {
            gossip,
            datacenter: datacenter.to_string(),
            node: node.to_string(),
            client,
            events,
            local,
            status: Mutex::new(None),
        }
    }

    /// The local API addresses of this datacenter's live routers, the one fronting this
    /// server first.
    pub fn routers(&self) -> Vec<SocketAddr> {
        let members = self.gossip.members();
        let mut mine = Vec::new();
        let mut others = Vec::new();
        for m in members.iter() {
            let tag = |k: &str| m.tags.get(k).map(String::as_str);
            if m.status != MemberStatus::Alive
                || tag("role") != Some(ROLE_ROUTER)
                || tag("dc") != Some(self.datacenter.as_str())
            {
                continue;
            }
            let Some(port) = tag("port").and_then(|p| p.parse().ok()) else {
                continue;
            };
            let addr = SocketAddr::new(m.addr.ip(), port);
            if tag("fronts") == Some(self.node.as_str()) {
                mine.push(addr);
            } else {
                others.push(addr);
            }
        }
        others.shuffle(&mut rand::rng());
        mine.extend(others);
        mine
    }

    /// Sends a request for another datacenter through a router.
    pub async fn forward(&self, fwd: Forwarded) -> Result<Reply, RpcError> {
        let timeout = match &fwd {
            // The router tries other datacenter members until the hold timeout (or the
            // wait of a blocking read) passes; give it that and the answer's margin.
            Forwarded::Read(r) => {
                timeouts::read_timeout(r.options.max_wait).max(HOLD_TIMEOUT + timeouts::READ_MARGIN)
            }
            _ => WRITE_TIMEOUT + HOLD_TIMEOUT,
        };
        let is_read = fwd.is_read();
        let routers = self.routers();
        if routers.is_empty() {
            return Err(RpcError::unknown_datacenter());
        }
        let body = Body::Forward(fwd);
        let mut last = String::new();
        for router in routers {
            match self.client.call(router, body.clone(), timeout).await {
                Ok(reply) => return Ok(reply),
                Err(CallError::Remote(e)) => return Err(e),
                Err(CallError::NotSent(e)) => last = e,
                Err(CallError::Transport(e)) if is_read => last = e,
                Err(CallError::Transport(e)) => {
                    return Err(RpcError::internal(format!(
                        "rpc error forwarding through a WAN router: {e}"
                    )));
                }
            }
            tracing::debug!(%router, error = %last, "WAN router failed; trying another");
        }
        tracing::warn!(error = %last, "no WAN router of this datacenter answered");
        Err(RpcError::unknown_datacenter())
    }

    /// The WAN pool and datacenters, fresh within [`STATUS_TTL`]; `None` without a
    /// reachable router.
    pub async fn status(&self) -> Option<WanStatus> {
        if let Some((at, s)) = self.lock_status().as_ref()
            && at.elapsed() < STATUS_TTL
        {
            return Some(s.clone());
        }
        for router in self.routers() {
            match self
                .client
                .call(router, Body::WanStatus, STATUS_TIMEOUT)
                .await
            {
                Ok(Reply::WanStatus(s)) => {
                    *self.lock_status() = Some((Instant::now(), s.clone()));
                    return Some(s);
                }
                Ok(_) => tracing::debug!(%router, "a router answered status with something else"),
                Err(e) => tracing::debug!(%router, error = ?e, "WAN status not available"),
            }
        }
        *self.lock_status() = None;
        None
    }

    /// The last status fetched, if recent enough to be worth showing.
    pub fn cached_status(&self) -> Option<WanStatus> {
        self.lock_status()
            .as_ref()
            .filter(|(at, _)| at.elapsed() < STATUS_TTL * 30)
            .map(|(_, s)| s.clone())
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, Option<(Instant, WanStatus)>> {
        // Whole-value replacements only; a poisoned cache still holds a status or none.
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Datacenter names, nearest first (this one alone without routers).
    pub async fn datacenters(&self) -> Vec<String> {
        match self.status().await {
            Some(s) if !s.datacenters.is_empty() => {
                s.datacenters.into_iter().map(|d| d.datacenter).collect()
            }
            _ => vec![self.datacenter.clone()],
        }
    }

    /// Fires an event that came from another datacenter into this one's LAN pool,
    /// stamped with this pool's Lamport clock.
    pub fn fire_here(&self, event: UserEvent) {
        let event = self.events.restamp(event);
        self.events.fire(event, self.local.as_ref());
    }
}
