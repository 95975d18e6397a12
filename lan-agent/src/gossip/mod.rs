//! LAN gossip for the agent: the shared SWIM pool ([`cairn_shared::gossip`]) with the
//! agent's own part, user events kept by [`Events`] when they match this agent's node and
//! services.
//!
//! The membership protocol, its driver, transports, keyring and encryption live in the
//! shared crate, because the WAN router is a member of the same LAN pool.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use cairn_shared::gossip::*;

use crate::events::{Events, LocalServices, UserEvent};

/// Keeps the events that match this agent.
struct AgentEvents {
    events: Arc<Events>,
    local: Arc<dyn LocalServices>,
}

impl EventSink for AgentEvents {
    fn deliver(&self, event: UserEvent) {
        self.events.deliver(event, self.local.as_ref());
    }
}

/// Starts the agent's LAN gossip over `transport`. User events received are delivered to
/// `events` (filtered by what `local` runs); events fired on `events` are gossiped.
pub fn start(
    config: GossipConfig,
    transport: Arc<dyn GossipTransport>,
    events: Arc<Events>,
    local: Arc<dyn LocalServices>,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<Gossip, GossipError> {
    let sink = Arc::new(AgentEvents {
        events: events.clone(),
        local,
    });
    let gossip = Gossip::start(config, transport, sink, tasks, shutdown)?;
    events.set_outbox(gossip.event_outbox());
    Ok(gossip)
}

#[cfg(test)]
mod tests;
