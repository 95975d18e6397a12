//! User events (`cairn event`, `/v1/event/fire`, `/v1/event/list`): fired into LAN gossip,
//! kept by every agent whose node name, services and tags match the event's filters, the
//! newest 256 per agent, as Consul keeps them.
//!
//! Events carry a Lamport time: firing ticks this agent's clock, receiving one witnesses it,
//! so `LTime` orders events across agents. Each event is kept once, by ID, however many
//! times gossip delivers it.

use std::collections::VecDeque;
use std::sync::Mutex;

pub use cairn_shared::api::{UserEvent, event_index as index_of};
use regex::Regex;
use tokio::sync::{mpsc, watch};

/// How many events an agent keeps.
pub const KEEP: usize = 256;
/// Serf's default limit on name plus payload.
pub const SIZE_LIMIT: usize = 512;

/// What this agent is, for matching filters: its node name and (service, tags) pairs.
pub trait LocalServices: Send + Sync {
    fn node(&self) -> String;
    fn services(&self) -> Vec<(String, Vec<String>)>;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("Invalid event name: names starting with '_' are reserved")]
    Reserved,
    #[error("Missing name")]
    MissingName,
    #[error("user event exceeds configured limit of {SIZE_LIMIT} bytes before encoding")]
    TooLarge,
    #[error("Invalid {what} filter: {reason}")]
    BadFilter { what: &'static str, reason: String },
}

#[derive(Debug, Default)]
struct Inner {
    clock: u64,
    events: VecDeque<UserEvent>,
}

/// This agent's event buffer and Lamport clock.
#[derive(Debug)]
pub struct Events {
    inner: Mutex<Inner>,
    /// The index of the newest event, for blocking `/v1/event/list`.
    newest: watch::Sender<u64>,
    /// Where fired events go to be gossiped (set once gossip runs).
    outbox: Mutex<Option<mpsc::UnboundedSender<UserEvent>>>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            newest: watch::channel(0).0,
            outbox: Mutex::new(None),
        }
    }
}

fn compile(what: &'static str, re: &str) -> Result<Option<Regex>, EventError> {
    if re.is_empty() {
        return Ok(None);
    }
    Regex::new(re).map(Some).map_err(|e| EventError::BadFilter {
        what,
        reason: e.to_string(),
    })
}

impl Events {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Critical sections are single pushes and reads; a poisoned buffer is still whole.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks and stamps an event about to be fired from this agent.
    pub fn prepare(
        &self,
        name: &str,
        payload: Option<Vec<u8>>,
        filters: [String; 3],
    ) -> Result<UserEvent, EventError> {
        if name.is_empty() {
            return Err(EventError::MissingName);
        }
        if name.starts_with('_') {
            return Err(EventError::Reserved);
        }
        if name.len() + payload.as_ref().map_or(0, Vec::len) > SIZE_LIMIT {
            return Err(EventError::TooLarge);
        }
        let [node_filter, service_filter, tag_filter] = filters;
        compile("node", &node_filter)?;
        compile("service", &service_filter)?;
        compile("tag", &tag_filter)?;
        let ltime = {
            let mut inner = self.lock();
            inner.clock += 1;
            inner.clock
        };
        Ok(UserEvent {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_string(),
            payload,
            node_filter,
            service_filter,
            tag_filter,
            version: 1,
            ltime,
        })
    }

    /// An event fired in another datacenter, given a place in this pool's Lamport order.
    pub fn restamp(&self, mut event: UserEvent) -> UserEvent {
        let mut inner = self.lock();
        inner.clock += 1;
        event.ltime = inner.clock;
        event
    }

    /// Connects fired events to gossip.
    pub fn set_outbox(&self, tx: mpsc::UnboundedSender<UserEvent>) {
        *self.outbox.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    }

    /// Fires an event from this agent: kept here if it matches, and gossiped to the pool.
    pub fn fire(&self, event: UserEvent, local: &dyn LocalServices) {
        self.deliver(event.clone(), local);
        if let Some(tx) = self
            .outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = tx.send(event);
        }
    }

    /// Whether an event is for this agent.
    pub fn matches(event: &UserEvent, local: &dyn LocalServices) -> bool {
        let Ok(node) = compile("node", &event.node_filter) else {
            return false;
        };
        if node.is_some_and(|re| !re.is_match(&local.node())) {
            return false;
        }
        let (Ok(service), Ok(tag)) = (
            compile("service", &event.service_filter),
            compile("tag", &event.tag_filter),
        ) else {
            return false;
        };
        let Some(service) = service else {
            return true;
        };
        local.services().iter().any(|(name, tags)| {
            service.is_match(name)
                && tag
                    .as_ref()
                    .is_none_or(|t| tags.iter().any(|x| t.is_match(x)))
        })
    }

    /// Records an event (fired here or received by gossip) if it matches and is new.
    pub fn deliver(&self, event: UserEvent, local: &dyn LocalServices) -> bool {
        let mut inner = self.lock();
        inner.clock = inner.clock.max(event.ltime);
        if inner.events.iter().any(|e| e.id == event.id) || !Self::matches(&event, local) {
            return false;
        }
        let index = index_of(&event.id);
        inner.events.push_back(event);
        while inner.events.len() > KEEP {
            inner.events.pop_front();
        }
        drop(inner);
        self.newest.send_replace(index);
        true
    }

    /// Events, oldest first, optionally only those named `name`, and the list's index.
    pub fn list(&self, name: Option<&str>) -> (u64, Vec<UserEvent>) {
        let inner = self.lock();
        let events = inner
            .events
            .iter()
            .filter(|e| name.is_none_or(|n| e.name == n))
            .cloned()
            .collect();
        let index = inner.events.back().map_or(0, |e| index_of(&e.id));
        (index, events)
    }

    /// Changes whenever a new event is kept.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.newest.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Here;

    impl LocalServices for Here {
        fn node(&self) -> String {
            "web-1".into()
        }
        fn services(&self) -> Vec<(String, Vec<String>)> {
            vec![("web".into(), vec!["v1".into()])]
        }
    }

    fn ev(events: &Events, filters: [&str; 3]) -> UserEvent {
        events
            .prepare("deploy", Some(b"x".to_vec()), filters.map(String::from))
            .unwrap()
    }

    #[test]
    fn filters_select_agents() {
        let e = Events::default();
        assert!(Events::matches(&ev(&e, ["", "", ""]), &Here));
        assert!(Events::matches(&ev(&e, ["^web", "", ""]), &Here));
        assert!(!Events::matches(&ev(&e, ["^db", "", ""]), &Here));
        assert!(Events::matches(&ev(&e, ["", "web", "v1"]), &Here));
        assert!(!Events::matches(&ev(&e, ["", "web", "v2"]), &Here));
        assert!(!Events::matches(&ev(&e, ["", "db", ""]), &Here));
    }

    #[test]
    fn keeps_each_event_once_and_the_newest_256() {
        let e = Events::default();
        let first = ev(&e, ["", "", ""]);
        assert!(e.deliver(first.clone(), &Here));
        assert!(!e.deliver(first.clone(), &Here));
        for _ in 0..300 {
            let x = ev(&e, ["", "", ""]);
            e.deliver(x, &Here);
        }
        let (index, all) = e.list(None);
        assert_eq!(all.len(), KEEP);
        assert_eq!(index, index_of(&all[KEEP - 1].id));
        assert!(!all.iter().any(|x| x.id == first.id));
    }

    #[test]
    fn lamport_clock_witnesses_received_events() {
        let e = Events::default();
        let remote = UserEvent {
            id: uuid::Uuid::new_v4().to_string(),
            name: "x".into(),
            ltime: 41,
            version: 1,
            ..UserEvent::default()
        };
        e.deliver(remote, &Here);
        assert_eq!(ev(&e, ["", "", ""]).ltime, 42);
    }

    #[test]
    fn refuses_reserved_oversize_and_bad_filters() {
        let e = Events::default();
        let none = || [String::new(), String::new(), String::new()];
        assert_eq!(e.prepare("_x", None, none()), Err(EventError::Reserved));
        assert_eq!(
            e.prepare("x", Some(vec![0; 600]), none()),
            Err(EventError::TooLarge)
        );
        assert!(matches!(
            e.prepare("x", None, ["(".into(), String::new(), String::new()]),
            Err(EventError::BadFilter { .. })
        ));
    }
}
