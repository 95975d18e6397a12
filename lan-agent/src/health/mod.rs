//! Check runners on the agent that owns the checks.
//!
//! Each check is one tokio task, not a thread, so an agent runs thousands. Interval checks
//! (HTTP, TCP, script) start after a random stagger within their interval, then probe every
//! interval; results pass through Consul's thresholds (`success_before_passing`,
//! `failures_before_warning`, `failures_before_critical`) before they reach the local state.
//! TTL checks wait for their deadline, which `/v1/agent/check/pass|warn|fail|update` move.

pub(crate) mod probe;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_shared::api::CheckStatus;
use rand::Rng;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::local::definition::{CheckKind, CheckType};
use crate::local::state::LocalState;

/// Consul's output when a TTL runs out.
pub const TTL_EXPIRED: &str = "TTL expired";

struct Runner {
    cancel: CancellationToken,
    /// TTL checks: the deadline, moved by each update.
    ttl: Option<watch::Sender<Instant>>,
}

/// The running checks of one agent.
pub struct Runners {
    state: Arc<LocalState>,
    runners: Mutex<HashMap<String, Runner>>,
    http: reqwest::Client,
    http_insecure: reqwest::Client,
    http_no_redirect: reqwest::Client,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Runners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runners").finish_non_exhaustive()
    }
}

fn client(insecure: bool, redirects: bool) -> reqwest::Client {
    // rustls needs a process-wide provider; a second install is refused harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let policy = if redirects {
        reqwest::redirect::Policy::limited(10)
    } else {
        reqwest::redirect::Policy::none()
    };
    reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(insecure)
        .redirect(policy)
        .pool_max_idle_per_host(1)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

impl Runners {
    pub fn new(state: Arc<LocalState>, tasks: TaskTracker, shutdown: CancellationToken) -> Self {
        Self {
            state,
            runners: Mutex::new(HashMap::new()),
            http: client(false, true),
            http_insecure: client(true, true),
            http_no_redirect: client(false, false),
            tasks,
            shutdown,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Runner>> {
        self.runners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts (or restarts) the runner for a check.
    pub fn start(&self, id: &str, def: &CheckType) {
        self.stop(id);
        let Some(kind) = def.kind() else {
            return;
        };
        let cancel = self.shutdown.child_token();
        let mut runner = Runner {
            cancel: cancel.clone(),
            ttl: None,
        };
        let state = self.state.clone();
        let id_owned = id.to_string();
        match kind {
            CheckKind::Ttl => {
                let ttl = def.ttl.unwrap_or_default();
                let (tx, rx) = watch::channel(Instant::now() + ttl);
                runner.ttl = Some(tx);
                self.tasks.spawn(ttl_loop(state, id_owned, rx, cancel));
            }
            _ => {
                let client = if def.tls_skip_verify {
                    self.http_insecure.clone()
                } else if def.disable_redirects {
                    self.http_no_redirect.clone()
                } else {
                    self.http.clone()
                };
                self.tasks.spawn(interval_loop(
                    state,
                    id_owned,
                    def.clone(),
                    kind,
                    client,
                    cancel,
                ));
            }
        }
        self.lock().insert(id.to_string(), runner);
    }

    pub fn stop(&self, id: &str) {
        if let Some(r) = self.lock().remove(id) {
            r.cancel.cancel();
        }
    }

    /// Moves a TTL check's deadline one TTL ahead; false if it is not a TTL check.
    pub fn touch_ttl(&self, id: &str, ttl: Duration) -> bool {
        match self.lock().get(id).and_then(|r| r.ttl.as_ref()) {
            Some(tx) => {
                let _ = tx.send(Instant::now() + ttl);
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Consul's threshold logic between raw probe results and reported status. The counters
/// start at their thresholds, so the first result is reported at once.
#[derive(Debug)]
struct Thresholds {
    successes: u32,
    failures: u32,
    before_passing: u32,
    before_warning: u32,
    before_critical: u32,
}

impl Thresholds {
    fn new(def: &CheckType) -> Self {
        // `failures_before_warning` defaults to `failures_before_critical`.
        let before_warning = if def.failures_before_warning == 0 {
            def.failures_before_critical
        } else {
            def.failures_before_warning
        };
        Self {
            successes: def.success_before_passing,
            failures: def.failures_before_critical,
            before_passing: def.success_before_passing,
            before_warning,
            before_critical: def.failures_before_critical,
        }
    }

    /// The status to report for this result, or `None` to keep the current one.
    fn next(&mut self, status: CheckStatus) -> Option<CheckStatus> {
        if status != CheckStatus::Critical {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
            (self.successes >= self.before_passing).then_some(status)
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
            if self.failures >= self.before_critical {
                Some(CheckStatus::Critical)
            } else if self.failures >= self.before_warning {
                Some(CheckStatus::Warning)
            } else {
                None
            }
        }
    }
}

/// Consul raises intervals below one second to one second.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

async fn interval_loop(
    state: Arc<LocalState>,
    id: String,
    def: CheckType,
    kind: CheckKind,
    client: reqwest::Client,
    cancel: CancellationToken,
) {
    let interval = def
        .interval
        .unwrap_or(Duration::from_secs(10))
        .max(MIN_INTERVAL);
    let timeout = def.timeout_or_default();
    let stagger_ms = rand::rng().random_range(0..=interval.as_millis().max(1) as u64);
    let mut next = Instant::now() + Duration::from_millis(stagger_ms);
    let mut thresholds = Thresholds::new(&def);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        next = Instant::now() + interval;
        let run = async {
            match kind {
                CheckKind::Http => probe::http(&client, &def, timeout).await,
                CheckKind::Tcp => probe::tcp(&def.tcp, timeout).await,
                CheckKind::Script => {
                    probe::script(&def.script_args, timeout, def.output_max()).await
                }
                CheckKind::Ttl => (CheckStatus::Critical, String::new()),
            }
        };
        let (status, output) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = run => r,
        };
        match thresholds.next(status) {
            Some(s) => {
                if !state.update_check(&id, s, &output) {
                    return;
                }
            }
            None => tracing::debug!(check = %id, ?status, "result below threshold, not reported"),
        }
    }
}

async fn ttl_loop(
    state: Arc<LocalState>,
    id: String,
    mut deadline: watch::Receiver<Instant>,
    cancel: CancellationToken,
) {
    loop {
        let at = *deadline.borrow_and_update();
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = deadline.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            _ = tokio::time::sleep_until(at) => {}
        }
        let last = state.check(&id).map(|c| c.check.output).unwrap_or_default();
        let output = if last.is_empty() {
            TTL_EXPIRED.to_string()
        } else {
            format!("{TTL_EXPIRED} (last output before timeout follows): {last}")
        };
        if !state.update_check(&id, CheckStatus::Critical, &output) {
            return;
        }
        // Stay expired until the next update moves the deadline.
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = deadline.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_follow_consul() {
        let def = CheckType {
            success_before_passing: 2,
            failures_before_warning: 1,
            failures_before_critical: 3,
            ..CheckType::default()
        };
        let mut t = Thresholds::new(&def);
        // The first result is reported whatever the thresholds.
        assert_eq!(t.next(CheckStatus::Passing), Some(CheckStatus::Passing));
        assert_eq!(t.next(CheckStatus::Critical), Some(CheckStatus::Warning));
        assert_eq!(t.next(CheckStatus::Critical), Some(CheckStatus::Warning));
        assert_eq!(t.next(CheckStatus::Critical), Some(CheckStatus::Critical));
        assert_eq!(t.next(CheckStatus::Passing), None);
        assert_eq!(t.next(CheckStatus::Passing), Some(CheckStatus::Passing));
        let plain = CheckType::default();
        let mut t = Thresholds::new(&plain);
        assert_eq!(t.next(CheckStatus::Critical), Some(CheckStatus::Critical));
        assert_eq!(t.next(CheckStatus::Passing), Some(CheckStatus::Passing));
        // Without failures_before_warning, failures below the critical threshold are silent.
        let only_critical = CheckType {
            failures_before_critical: 2,
            ..CheckType::default()
        };
        let mut t = Thresholds::new(&only_critical);
        assert_eq!(t.next(CheckStatus::Passing), Some(CheckStatus::Passing));
        assert_eq!(t.next(CheckStatus::Critical), None);
        assert_eq!(t.next(CheckStatus::Critical), Some(CheckStatus::Critical));
    }
}
