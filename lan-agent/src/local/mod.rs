//! The agent's own services and checks: registration through the API and config files,
//! check runners, persistence under `-data-dir`, maintenance mode, and the anti-entropy that
//! carries all of it into the catalog.
//!
//! [`LocalAgent`] is the one place that changes local state, so the runners, the persisted
//! files and the state never disagree: every add/remove goes through it.

pub mod definition;
pub mod persist;
pub mod state;
pub mod sync;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_shared::api::{CheckStatus, HealthCheck};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::health::Runners;
use definition::{CheckKind, CheckType, MIN_DEREGISTER_AFTER, ServiceDefinition};
use persist::{Persist, PersistError, SavedCheck, SavedService, SavedTtl};
use state::{LocalState, Source};

/// How often critical services are checked against `deregister_critical_service_after`.
const REAP_INTERVAL: Duration = Duration::from_secs(30);
/// The maintenance check IDs and names Consul uses.
pub const NODE_MAINT_ID: &str = "_node_maintenance";
pub const SERVICE_MAINT_PREFIX: &str = "_service_maintenance:";

/// Why a local operation was refused; each variant maps to Consul's HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// 400: the definition is invalid.
    #[error("{0}")]
    Invalid(String),
    /// 404: no such service or check.
    #[error("{0}")]
    NotFound(String),
    /// 500: refused by the agent's configuration or failed to persist.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Persist(#[from] PersistError),
}

fn unknown_service(id: &str) -> LocalError {
    LocalError::NotFound(format!(
        "Unknown service ID \"{id}\". Ensure that the service ID is passed, not the service name."
    ))
}

fn unknown_check(id: &str) -> LocalError {
    LocalError::NotFound(format!(
        "Unknown check ID \"{id}\". Ensure that the check ID is passed, not the check name."
    ))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub node: String,
    pub enable_script_checks: bool,
    pub enable_local_script_checks: bool,
    /// `check_update_interval`: how long an output-only change may wait before syncing.
    pub check_update_interval: Duration,
}

#[derive(Debug)]
pub struct LocalAgent {
    pub state: Arc<LocalState>,
    runners: Runners,
    persist: Option<Persist>,
    config: LocalConfig,
}

impl LocalAgent {
    pub fn new(
        config: LocalConfig,
        persist: Option<Persist>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let state = Arc::new(LocalState::new(&config.node, config.check_update_interval));
        let runners = Runners::new(state.clone(), tasks.clone(), shutdown.clone());
        let agent = Arc::new(Self {
            state,
            runners,
            persist,
            config,
        });
        let reaper = agent.clone();
        tasks.spawn(async move { reaper.reap_loop(shutdown).await });
        agent
    }

    fn check_scripts(&self, def: &CheckType, source: Source) -> Result<(), LocalError> {
        if def.kind() != Some(CheckKind::Script) {
            return Ok(());
        }
        match source {
            Source::Api if !self.config.enable_script_checks => Err(LocalError::Refused(
                "Scripts are disabled on this agent from remote calls; to enable, configure 'enable_script_checks' to true".into(),
            )),
            Source::Config
                if !self.config.enable_script_checks && !self.config.enable_local_script_checks =>
            {
                Err(LocalError::Refused(
                    "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' or 'enable_local_script_checks' to true".into(),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Registers a service and its checks. With `replace_checks`, checks of the service that
    /// the new definition does not list are removed.
    pub fn add_service(
        &self,
        def: &ServiceDefinition,
        token: &str,
        source: Source,
        replace_checks: bool,
    ) -> Result<(), LocalError> {
        def.validate().map_err(LocalError::Invalid)?;
        let checks = def.check_types();
        for c in &checks {
            self.check_scripts(c, source)?;
        }
        let mut svc = def.node_service();
        add_ip_tagged_addresses(&mut svc);
        if replace_checks {
            let keep: Vec<&str> = checks.iter().map(|c| c.check_id.as_str()).collect();
            for old in self.state.checks() {
                if old.check.service_id == svc.id && !keep.contains(&old.check.check_id.as_str()) {
                    self.remove_check_inner(&old.check.check_id)?;
                }
            }
        }
        if let (Some(p), Source::Api) = (&self.persist, source) {
            p.save_service(&SavedService {
                service: svc.clone(),
                token: token.to_string(),
            })?;
        }
        self.state
            .add_service(svc.clone(), token.to_string(), source);
        for c in checks {
            let mut health = c.to_health_check(&self.config.node, Some(&svc));
            // A re-registered check keeps its last result, as Consul's snapshot does.
            if let Some(prev) = self.state.check(&c.check_id) {
                health.status = prev.check.status;
                health.output = prev.check.output;
            }
            self.install_check(health, c, token, source)?;
        }
        Ok(())
    }

    pub fn remove_service(&self, id: &str) -> Result<(), LocalError> {
        let Some(svc) = self.state.service(id) else {
            return Err(unknown_service(id));
        };
        for c in self.state.checks() {
            if c.check.service_id == id {
                self.runners.stop(&c.check.check_id);
                if let Some(p) = &self.persist {
                    p.drop_check(&c.check.check_id)?;
                }
            }
        }
        if let Some(p) = &self.persist {
            p.drop_service(&svc.service.id)?;
        }
        self.state.remove_service(id);
        Ok(())
    }

    /// Registers a standalone check (`/v1/agent/check/register`, `check` config blocks).
    pub fn add_check(
        &self,
        def: &CheckType,
        token: &str,
        source: Source,
    ) -> Result<(), LocalError> {
        if def.name.is_empty() {
            return Err(LocalError::Invalid("Missing check name".into()));
        }
        if let Some(s) = def.status.as_deref().filter(|s| !s.is_empty())
            && s.parse::<CheckStatus>().is_err()
        {
            return Err(LocalError::Invalid("Bad check status".into()));
        }
        def.validate()
            .map_err(|e| LocalError::Invalid(format!("Invalid check: {e}")))?;
        let mut def = def.clone();
        if def.check_id.is_empty() {
            def.check_id = def.name.clone();
        }
        let service = if def.service_id.is_empty() {
            None
        } else {
            match self.state.service(&def.service_id) {
                Some(s) => Some(s.service),
                None => {
                    return Err(LocalError::NotFound(format!(
                        "ServiceID \"{}\" does not exist",
                        def.service_id
                    )));
                }
            }
        };
        self.check_scripts(&def, source)?;
        let mut health = def.to_health_check(&self.config.node, service.as_ref());
        if let Some(prev) = self.state.check(&def.check_id) {
            health.status = prev.check.status;
            health.output = prev.check.output;
        }
        self.install_check(health, def, token, source)
    }

    fn install_check(
        &self,
        health: HealthCheck,
        def: CheckType,
        token: &str,
        source: Source,
    ) -> Result<(), LocalError> {
        if let (Some(p), Source::Api) = (&self.persist, source) {
            p.save_check(&SavedCheck {
                check: health.clone(),
                def: def.clone(),
                token: token.to_string(),
            })?;
        }
        let id = health.check_id.clone();
        self.state
            .add_check(health, def.clone(), token.to_string(), source);
        self.runners.start(&id, &def);
        Ok(())
    }

    pub fn remove_check(&self, id: &str) -> Result<(), LocalError> {
        if self.state.check(id).is_none() {
            return Err(unknown_check(id));
        }
        self.remove_check_inner(id)
    }

    fn remove_check_inner(&self, id: &str) -> Result<(), LocalError> {
        self.runners.stop(id);
        if let Some(p) = &self.persist {
            p.drop_check(id)?;
        }
        self.state.remove_check(id);
        Ok(())
    }

    /// `/v1/agent/check/pass|warn|fail|update`: sets a TTL check and restarts its TTL.
    pub fn update_ttl(
        &self,
        id: &str,
        status: CheckStatus,
        output: &str,
    ) -> Result<(), LocalError> {
        let Some(c) = self.state.check(id) else {
            return Err(unknown_check(id));
        };
        let ttl = match (c.def.kind(), c.def.ttl) {
            (Some(CheckKind::Ttl), Some(ttl)) => ttl,
            _ => {
                return Err(LocalError::Refused(format!(
                    "CheckID \"{id}\" does not have associated TTL"
                )));
            }
        };
        let max = c.def.output_max();
        let output = if output.len() > max {
            let mut end = max;
            while !output.is_char_boundary(end) {
                end -= 1;
            }
            format!(
                "{} ... (captured {max} of {} bytes)",
                &output[..end],
                output.len()
            )
        } else {
            output.to_string()
        };
        self.state.update_check(id, status, &output);
        self.runners.touch_ttl(id, ttl);
        if let Some(p) = &self.persist {
            p.save_ttl(&SavedTtl {
                check_id: id.to_string(),
                status,
                output,
                expires_ms: now_ms() + ttl.as_millis() as u64,
            })?;
        }
        Ok(())
    }

    /// Node maintenance: a critical `_node_maintenance` check while enabled.
    pub fn node_maintenance(&self, enable: bool, reason: &str) -> Result<(), LocalError> {
        let notes = if reason.is_empty() {
            "Maintenance mode is enabled for this node, but no reason was provided. This is a default message."
        } else {
            reason
        };
        self.maintenance(NODE_MAINT_ID, "Node Maintenance Mode", None, enable, notes)
    }

    /// Service maintenance: a critical `_service_maintenance:<id>` check while enabled.
    pub fn service_maintenance(
        &self,
        id: &str,
        enable: bool,
        reason: &str,
    ) -> Result<(), LocalError> {
        let Some(svc) = self.state.service(id) else {
            return Err(unknown_service(id));
        };
        let notes = if reason.is_empty() {
            "Maintenance mode is enabled for this service, but no reason was provided. This is a default message."
        } else {
            reason
        };
        let check_id = format!("{SERVICE_MAINT_PREFIX}{id}");
        self.maintenance(
            &check_id,
            "Service Maintenance Mode",
            Some(&svc.service),
            enable,
            notes,
        )
    }

    fn maintenance(
        &self,
        check_id: &str,
        name: &str,
        service: Option<&cairn_shared::api::NodeService>,
        enable: bool,
        notes: &str,
    ) -> Result<(), LocalError> {
        let present = self.state.check(check_id).is_some();
        match (enable, present) {
            (true, false) => {
                let health = HealthCheck {
                    node: self.config.node.clone(),
                    check_id: check_id.to_string(),
                    name: name.to_string(),
                    status: CheckStatus::Critical,
                    notes: notes.to_string(),
                    service_id: service.map(|s| s.id.clone()).unwrap_or_default(),
                    service_name: service.map(|s| s.service.clone()).unwrap_or_default(),
                    service_tags: service.map(|s| s.tags.clone()).unwrap_or_default(),
                    check_type: "maintenance".to_string(),
                    ..HealthCheck::default()
                };
                // Maintenance survives restarts, as in Consul.
                self.install_check(health, CheckType::default(), "", Source::Api)
            }
            (false, true) => self.remove_check_inner(check_id),
            _ => Ok(()),
        }
    }

    /// Restores API-registered services and checks saved under the data directory, skipping
    /// any that config files now define.
    pub fn restore(&self) -> Result<usize, LocalError> {
        let Some(p) = &self.persist else {
            return Ok(0);
        };
        let mut restored = 0;
        for saved in p.services()? {
            if self
                .state
                .service(&saved.service.id)
                .is_some_and(|s| s.source == Source::Config)
            {
                p.drop_service(&saved.service.id)?;
                continue;
            }
            self.state
                .add_service(saved.service, saved.token, Source::Api);
            restored += 1;
        }
        let ttls = p.ttls()?;
        let now = now_ms();
        for saved in p.checks()? {
            let id = saved.check.check_id.clone();
            if self
                .state
                .check(&id)
                .is_some_and(|c| c.source == Source::Config)
            {
                p.drop_check(&id)?;
                continue;
            }
            let mut check = saved.check;
            let def = saved.def;
            // A restored check starts critical unless it is maintenance or its TTL state
            // is still valid.
            if check.check_type != "maintenance" {
                check.status = CheckStatus::Critical;
                check.output.clear();
            }
            let ttl_left = ttls
                .iter()
                .find(|t| t.check_id == id && t.expires_ms > now)
                .map(|t| {
                    check.status = t.status;
                    check.output = t.output.clone();
                    Duration::from_millis(t.expires_ms - now)
                });
            self.state
                .add_check(check, def.clone(), saved.token, Source::Api);
            self.runners.start(&id, &def);
            if let Some(left) = ttl_left {
                self.runners.touch_ttl(&id, left);
            }
            restored += 1;
        }
        Ok(restored)
    }

    /// Replaces every config-file service and check with `services` and `checks`; API
    /// registrations are untouched. Check results carry over for IDs that remain.
    pub fn load_config(
        &self,
        services: &[ServiceDefinition],
        checks: &[CheckType],
    ) -> Result<(), LocalError> {
        for s in services {
            s.validate()
                .map_err(|e| LocalError::Invalid(format!("Failed reloading services: {e}")))?;
            for c in s.check_types() {
                self.check_scripts(&c, Source::Config)?;
            }
        }
        for c in checks {
            c.validate()
                .map_err(|e| LocalError::Invalid(format!("Failed reloading checks: {e}")))?;
            self.check_scripts(c, Source::Config)?;
        }
        let new_services: Vec<String> = services.iter().map(|s| s.node_service().id).collect();
        let new_checks: Vec<String> = checks
            .iter()
            .map(|c| {
                if c.check_id.is_empty() {
                    c.name.clone()
                } else {
                    c.check_id.clone()
                }
            })
            .chain(
                services
                    .iter()
                    .flat_map(|s| s.check_types())
                    .map(|c| c.check_id),
            )
            .collect();
        for old in self.state.checks() {
            if old.source == Source::Config && !new_checks.contains(&old.check.check_id) {
                self.remove_check_inner(&old.check.check_id)?;
            }
        }
        for old in self.state.services() {
            if old.source == Source::Config && !new_services.contains(&old.service.id) {
                self.remove_service(&old.service.id)?;
            }
        }
        for s in services {
            if let Some(p) = &self.persist {
                p.drop_service(&s.node_service().id)?;
            }
            self.add_service(s, &s.token, Source::Config, true)?;
        }
        for c in checks {
            self.add_check(c, "", Source::Config)?;
        }
        Ok(())
    }

    /// Removes services whose check has been critical longer than its
    /// `deregister_critical_service_after` (at least one minute), every 30 seconds.
    async fn reap_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(REAP_INTERVAL);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.reap(Instant::now());
        }
    }

    fn reap(&self, now: Instant) {
        for c in self.state.checks() {
            let (Some(after), Some(since)) =
                (c.def.deregister_critical_service_after, c.critical_since)
            else {
                continue;
            };
            if c.check.service_id.is_empty()
                || now.duration_since(since) < after.max(MIN_DEREGISTER_AFTER)
            {
                continue;
            }
            tracing::info!(service = %c.check.service_id, check = %c.check.check_id,
                "deregistering service: check critical longer than deregister_critical_service_after");
            if let Err(e) = self.remove_service(&c.check.service_id) {
                tracing::warn!(error = %e, "failed to deregister critical service");
            }
        }
    }

    pub fn running_checks(&self) -> usize {
        self.runners.len()
    }
}

impl crate::events::LocalServices for LocalAgent {
    fn node(&self) -> String {
        self.config.node.clone()
    }

    fn services(&self) -> Vec<(String, Vec<String>)> {
        self.state
            .services()
            .into_iter()
            .map(|s| (s.service.service, s.service.tags))
            .collect()
    }
}

/// Consul adds `lan_ipv4`/`wan_ipv4` (or `_ipv6`) tagged addresses for a service whose
/// address is an IP, unless it set them itself.
fn add_ip_tagged_addresses(svc: &mut cairn_shared::api::NodeService) {
    let Ok(ip) = svc.address.parse::<std::net::IpAddr>() else {
        return;
    };
    let family = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
    for scope in ["lan", "wan"] {
        svc.tagged_addresses
            .entry(format!("{scope}_{family}"))
            .or_insert_with(|| cairn_shared::api::ServiceAddress {
                address: svc.address.clone(),
                port: svc.port,
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::decode;

    fn agent() -> Arc<LocalAgent> {
        LocalAgent::new(
            LocalConfig {
                node: "n1".into(),
                enable_script_checks: false,
                enable_local_script_checks: false,
                check_update_interval: Duration::from_secs(300),
            },
            None,
            &TaskTracker::new(),
            CancellationToken::new(),
        )
    }

    fn service(after: &str) -> ServiceDefinition {
        decode::from_slice(
            format!(
                r#"{{"Name":"web","Check":{{"TTL":"10s","DeregisterCriticalServiceAfter":"{after}"}}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn critical_services_are_reaped_after_their_deadline() {
        let local = agent();
        local
            .add_service(&service("90s"), "", Source::Api, false)
            .unwrap();
        let start = Instant::now();
        local.reap(start + Duration::from_secs(89));
        assert!(local.state.service("web").is_some());
        local.reap(start + Duration::from_secs(91));
        assert!(local.state.service("web").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn reap_deadline_is_at_least_a_minute_and_passing_resets_it() {
        let local = agent();
        local
            .add_service(&service("5s"), "", Source::Api, false)
            .unwrap();
        let start = Instant::now();
        local.reap(start + Duration::from_secs(30));
        assert!(local.state.service("web").is_some(), "floor of one minute");
        tokio::time::advance(Duration::from_secs(40)).await;
        local
            .update_ttl("service:web", CheckStatus::Passing, "")
            .unwrap();
        local.reap(start + Duration::from_secs(120));
        assert!(
            local.state.service("web").is_some(),
            "not critical any more"
        );
    }
}
