//! What this agent owns: its services and checks, their current check results, and which
//! of them the catalog has not seen yet.
//!
//! Every entry carries a generation that moves on each change; anti-entropy marks an entry
//! in sync only if its generation is still the one it sent, so a change racing a sync is
//! never lost. Output-only check changes are deferred by `check_update_interval` (Consul's
//! behaviour, to spare the servers); status changes go out at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cairn_shared::api::{CheckStatus, HealthCheck, NodeService};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::definition::CheckType;

/// Where an entry came from: API registrations persist across restarts, config-file ones
/// are re-read from the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Source {
    Api,
    Config,
}

#[derive(Debug, Clone)]
pub struct LocalService {
    pub service: NodeService,
    pub token: String,
    pub source: Source,
    generation: u64,
    synced: Option<u64>,
    deleted: bool,
}

#[derive(Debug, Clone)]
pub struct LocalCheck {
    pub check: HealthCheck,
    pub def: CheckType,
    pub token: String,
    pub source: Source,
    /// When the check last went critical, for `deregister_critical_service_after`.
    pub critical_since: Option<Instant>,
    generation: u64,
    synced: Option<u64>,
    deleted: bool,
    /// An output-only change waits until then before it is synced.
    defer_until: Option<Instant>,
}

impl LocalCheck {
    fn in_sync(&self) -> bool {
        self.synced == Some(self.generation)
    }
}

impl LocalService {
    fn in_sync(&self) -> bool {
        self.synced == Some(self.generation)
    }
}

#[derive(Debug, Default)]
struct Inner {
    services: BTreeMap<String, LocalService>,
    checks: BTreeMap<String, LocalCheck>,
    next_generation: u64,
}

impl Inner {
    fn bump(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }
}

/// An entry as it was when planned, with the generation to confirm on success.
pub type Versioned<T> = (T, u64);

/// The work anti-entropy has to do now.
#[derive(Debug, Default)]
pub struct SyncPlan {
    /// Services to register, each with its live checks: (service, generation, checks).
    pub services: Vec<(NodeService, u64, Vec<Versioned<HealthCheck>>)>,
    /// Checks to register on their own.
    pub checks: Vec<Versioned<HealthCheck>>,
    /// Deleted services and checks to remove from the catalog: (ID, generation).
    pub deregister_services: Vec<(String, u64)>,
    pub deregister_checks: Vec<(String, u64)>,
    /// When the next deferred output change becomes due.
    pub next_deferred: Option<Instant>,
    /// The token each planned service and check was registered with (empty: none).
    pub service_tokens: BTreeMap<String, String>,
    pub check_tokens: BTreeMap<String, String>,
}

impl SyncPlan {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.checks.is_empty()
            && self.deregister_services.is_empty()
            && self.deregister_checks.is_empty()
    }
}

#[derive(Debug)]
pub struct LocalState {
    node: String,
    inner: Mutex<Inner>,
    changed: Arc<Notify>,
    output_defer: Duration,
}

impl LocalState {
    pub fn new(node: &str, output_defer: Duration) -> Self {
        Self {
            node: node.to_string(),
            inner: Mutex::new(Inner::default()),
            changed: Arc::new(Notify::new()),
            output_defer,
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Each critical section is a few map updates that cannot be left half done.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves when something needs syncing.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    fn wake(&self) {
        self.changed.notify_one();
    }

    pub fn add_service(&self, service: NodeService, token: String, source: Source) {
        let mut inner = self.lock();
        let generation = inner.bump();
        let id = service.id.clone();
        inner.services.insert(
            id,
            LocalService {
                service,
                token,
                source,
                generation,
                synced: None,
                deleted: false,
            },
        );
        drop(inner);
        self.wake();
    }

    /// Marks a service (and its checks) for deregistration; false if unknown.
    pub fn remove_service(&self, id: &str) -> bool {
        let mut inner = self.lock();
        let generation = inner.bump();
        let Some(s) = inner.services.get_mut(id).filter(|s| !s.deleted) else {
            return false;
        };
        s.deleted = true;
        s.generation = generation;
        let owned: Vec<String> = inner
            .checks
            .iter()
            .filter(|(_, c)| c.check.service_id == id && !c.deleted)
            .map(|(k, _)| k.clone())
            .collect();
        for k in owned {
            if let Some(c) = inner.checks.get_mut(&k) {
                c.deleted = true;
                c.generation = generation;
            }
        }
        drop(inner);
        self.wake();
        true
    }

    pub fn add_check(&self, check: HealthCheck, def: CheckType, token: String, source: Source) {
        let mut inner = self.lock();
        let generation = inner.bump();
        let critical_since = (check.status == CheckStatus::Critical).then(Instant::now);
        inner.checks.insert(
            check.check_id.clone(),
            LocalCheck {
                check,
                def,
                token,
                source,
                critical_since,
                generation,
                synced: None,
                deleted: false,
                defer_until: None,
            },
        );
        drop(inner);
        self.wake();
    }

    pub fn remove_check(&self, id: &str) -> bool {
        let mut inner = self.lock();
        let generation = inner.bump();
        let Some(c) = inner.checks.get_mut(id).filter(|c| !c.deleted) else {
            return false;
        };
        c.deleted = true;
        c.generation = generation;
        drop(inner);
        self.wake();
        true
    }

    /// Records a check result. Returns false if the check is unknown.
    pub fn update_check(&self, id: &str, status: CheckStatus, output: &str) -> bool {
        let mut inner = self.lock();
        let generation = inner.bump();
        let Some(c) = inner.checks.get_mut(id).filter(|c| !c.deleted) else {
            return false;
        };
        let status_changed = c.check.status != status;
        if !status_changed && c.check.output == output {
            return true;
        }
        if status_changed {
            c.critical_since = (status == CheckStatus::Critical).then(Instant::now);
            c.defer_until = None;
        } else if c.defer_until.is_none() && c.in_sync() {
            c.defer_until = Some(Instant::now() + self.output_defer);
        }
        c.check.status = status;
        c.check.output = output.to_string();
        c.generation = generation;
        drop(inner);
        self.wake();
        true
    }

    pub fn service(&self, id: &str) -> Option<LocalService> {
        self.lock().services.get(id).filter(|s| !s.deleted).cloned()
    }

    pub fn services(&self) -> Vec<LocalService> {
        self.lock()
            .services
            .values()
            .filter(|s| !s.deleted)
            .cloned()
            .collect()
    }

    pub fn check(&self, id: &str) -> Option<LocalCheck> {
        self.lock().checks.get(id).filter(|c| !c.deleted).cloned()
    }

    pub fn checks(&self) -> Vec<LocalCheck> {
        self.lock()
            .checks
            .values()
            .filter(|c| !c.deleted)
            .cloned()
            .collect()
    }

    /// What must be sent to the catalog now.
    pub fn plan(&self, now: Instant) -> SyncPlan {
        let inner = self.lock();
        let mut plan = SyncPlan::default();
        for (id, s) in &inner.services {
            if s.in_sync() {
                continue;
            }
            plan.service_tokens.insert(id.clone(), s.token.clone());
            if s.deleted {
                plan.deregister_services.push((id.clone(), s.generation));
                continue;
            }
            let checks = inner
                .checks
                .values()
                .filter(|c| !c.deleted && c.check.service_id == *id)
                .map(|c| (c.check.clone(), c.generation))
                .collect();
            plan.services
                .push((s.service.clone(), s.generation, checks));
        }
        for (id, c) in &inner.checks {
            if c.in_sync() {
                continue;
            }
            if c.deleted {
                // A deleted service takes its checks with it.
                let with_service = inner
                    .services
                    .get(&c.check.service_id)
                    .is_some_and(|s| s.deleted && !s.in_sync());
                if !with_service {
                    plan.check_tokens.insert(id.clone(), c.token.clone());
                    plan.deregister_checks.push((id.clone(), c.generation));
                }
                continue;
            }
            if plan
                .services
                .iter()
                .any(|(s, _, _)| s.id == c.check.service_id)
            {
                continue;
            }
            if let Some(at) = c.defer_until
                && at > now
            {
                plan.next_deferred = Some(plan.next_deferred.map_or(at, |n| n.min(at)));
                continue;
            }
            plan.check_tokens.insert(id.clone(), c.token.clone());
            plan.checks.push((c.check.clone(), c.generation));
        }
        plan
    }

    /// Records that the catalog has a service at `generation`; a deleted one is forgotten.
    pub fn service_synced(&self, id: &str, generation: u64) {
        let mut inner = self.lock();
        if let Some(s) = inner.services.get_mut(id)
            && s.generation == generation
        {
            if s.deleted {
                inner.services.remove(id);
                inner
                    .checks
                    .retain(|_, c| !(c.deleted && c.check.service_id == id));
            } else {
                s.synced = Some(generation);
            }
        }
    }

    pub fn check_synced(&self, id: &str, generation: u64) {
        let mut inner = self.lock();
        if let Some(c) = inner.checks.get_mut(id)
            && c.generation == generation
        {
            if c.deleted {
                inner.checks.remove(id);
            } else {
                c.synced = Some(generation);
                c.defer_until = None;
            }
        }
    }

    /// Full sync: compares with what the catalog holds for this node and marks every
    /// difference out of sync. Returns catalog entries this agent does not own, to remove.
    pub fn reconcile(
        &self,
        remote_services: &[NodeService],
        remote_checks: &[HealthCheck],
        keep_services: &[&str],
        keep_checks: &[&str],
    ) -> (Vec<String>, Vec<String>) {
        let mut inner = self.lock();
        let strip_s = |s: &NodeService| NodeService {
            create_index: 0,
            modify_index: 0,
            ..s.clone()
        };
        let strip_c = |c: &HealthCheck| HealthCheck {
            create_index: 0,
            modify_index: 0,
            ..c.clone()
        };
        let mut stale_services = Vec::new();
        for r in remote_services {
            match inner.services.get_mut(&r.id) {
                Some(l) if !l.deleted => {
                    if strip_s(&l.service) != strip_s(r) {
                        l.synced = None;
                    }
                }
                Some(_) => {}
                None if keep_services.contains(&r.id.as_str()) => {}
                None => stale_services.push(r.id.clone()),
            }
        }
        for l in inner.services.values_mut() {
            if !l.deleted && !remote_services.iter().any(|r| r.id == l.service.id) {
                l.synced = None;
            }
        }
        let mut stale_checks = Vec::new();
        for r in remote_checks {
            match inner.checks.get_mut(&r.check_id) {
                Some(l) if !l.deleted => {
                    if strip_c(&l.check) != strip_c(r) {
                        l.synced = None;
                    }
                }
                Some(_) => {}
                None if keep_checks.contains(&r.check_id.as_str()) => {}
                None if stale_services.contains(&r.service_id) => {}
                None => stale_checks.push(r.check_id.clone()),
            }
        }
        for l in inner.checks.values_mut() {
            if !l.deleted && !remote_checks.iter().any(|r| r.check_id == l.check.check_id) {
                l.synced = None;
            }
        }
        (stale_services, stale_checks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(id: &str) -> NodeService {
        NodeService {
            id: id.into(),
            service: id.into(),
            ..NodeService::default()
        }
    }

    fn check(id: &str, service: &str) -> HealthCheck {
        HealthCheck {
            check_id: id.into(),
            service_id: service.into(),
            ..HealthCheck::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_during_sync_is_not_lost() {
        let s = LocalState::new("n", Duration::from_secs(300));
        s.add_service(svc("web"), String::new(), Source::Api);
        let plan = s.plan(Instant::now());
        let (_, generation, _) = &plan.services[0];
        s.add_service(svc("web"), String::new(), Source::Api);
        s.service_synced("web", *generation);
        assert_eq!(
            s.plan(Instant::now()).services.len(),
            1,
            "newer change lost"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn output_only_changes_are_deferred_status_changes_are_not() {
        let s = LocalState::new("n", Duration::from_secs(300));
        s.add_check(
            check("c", ""),
            CheckType::default(),
            String::new(),
            Source::Api,
        );
        let plan = s.plan(Instant::now());
        s.check_synced("c", plan.checks[0].1);
        s.update_check("c", CheckStatus::Critical, "new output");
        let plan = s.plan(Instant::now());
        assert!(plan.checks.is_empty());
        assert!(plan.next_deferred.is_some());
        s.update_check("c", CheckStatus::Passing, "ok");
        assert_eq!(s.plan(Instant::now()).checks.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn removing_a_service_takes_its_checks() {
        let s = LocalState::new("n", Duration::from_secs(300));
        s.add_service(svc("web"), String::new(), Source::Api);
        s.add_check(
            check("c", "web"),
            CheckType::default(),
            String::new(),
            Source::Api,
        );
        let plan = s.plan(Instant::now());
        let (_, g, checks) = &plan.services[0];
        s.service_synced("web", *g);
        s.check_synced("c", checks[0].1);
        assert!(s.remove_service("web"));
        let plan = s.plan(Instant::now());
        assert_eq!(plan.deregister_services[0].0, "web");
        assert!(plan.deregister_checks.is_empty());
        assert!(s.check("c").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn reconcile_finds_strangers_and_drift() {
        let s = LocalState::new("n", Duration::from_secs(300));
        s.add_service(svc("web"), String::new(), Source::Api);
        let plan = s.plan(Instant::now());
        s.service_synced("web", plan.services[0].1);
        let mut drifted = svc("web");
        drifted.port = 9;
        let (stale, _) = s.reconcile(
            &[drifted, svc("ghost"), svc("consul")],
            &[],
            &["consul"],
            &[],
        );
        assert_eq!(stale, ["ghost"]);
        assert_eq!(s.plan(Instant::now()).services.len(), 1);
    }
}
