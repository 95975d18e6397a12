//! Logging setup and the metrics behind `/v1/agent/metrics`.
//!
//! Code records metrics with the `metrics` macros. The process installs one recorder that
//! fans out to the Prometheus exporter (`?format=prometheus`) and to [`JsonSink`], which keeps
//! running aggregates for Consul's JSON shape (`Gauges`, `Counters`, `Samples`). Aggregates
//! are cumulative since start, where Consul's are per 10-second interval.
//!
//! Metric names are Prometheus style with a `cairn_` prefix; see [`names`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use metrics_util::layers::FanoutBuilder;
use serde::Serialize;

/// Metric names used across the agent.
pub mod names {
    pub const HTTP_REQUESTS: &str = "cairn_http_requests_total";
    pub const HTTP_REQUEST_SECONDS: &str = "cairn_http_request_seconds";
    pub const APPLY_SECONDS: &str = "cairn_state_apply_seconds";
    pub const BLOCKING_QUERIES: &str = "cairn_blocking_queries";
    pub const KV_ENTRIES: &str = "cairn_kv_entries";
    pub const SESSIONS: &str = "cairn_sessions";
}

/// Handles on the installed recorder, for rendering.
#[derive(Clone, Default)]
pub struct Telemetry {
    prometheus: Option<PrometheusHandle>,
    json: Option<Arc<JsonSink>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("installed", &self.json.is_some())
            .finish()
    }
}

impl Telemetry {
    /// Installs the process-wide recorder. Call once, from `main`; in-process test nodes use
    /// [`Telemetry::default`], which records nothing.
    pub fn install() -> anyhow::Result<Self> {
        let prom = PrometheusBuilder::new().build_recorder();
        let handle = prom.handle();
        let json = Arc::new(JsonSink::default());
        let fanout = FanoutBuilder::default()
            .add_recorder(prom)
            .add_recorder(JsonRecorder(json.clone()))
            .build();
        metrics::set_global_recorder(fanout)
            .map_err(|e| anyhow::anyhow!("installing the metrics recorder: {e}"))?;
        Ok(Self {
            prometheus: Some(handle),
            json: Some(json),
        })
    }

    /// Drains the Prometheus exporter's histogram buckets now and then, which its HTTP
    /// listener would otherwise do.
    pub async fn upkeep(self, shutdown: tokio_util::sync::CancellationToken) {
        let Some(handle) = self.prometheus else {
            return;
        };
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => handle.run_upkeep(),
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn render_prometheus(&self) -> String {
        self.prometheus
            .as_ref()
            .map(PrometheusHandle::render)
            .unwrap_or_default()
    }

    /// Consul's JSON metrics shape.
    pub fn render_json(&self, timestamp: String) -> JsonMetrics {
        let mut out = JsonMetrics {
            timestamp,
            ..JsonMetrics::default()
        };
        if let Some(sink) = &self.json {
            sink.fill(&mut out);
        }
        out
    }
}

/// `/v1/agent/metrics` in Consul's JSON format.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct JsonMetrics {
    pub timestamp: String,
    pub gauges: Vec<JsonGauge>,
    pub points: Vec<serde_json::Value>,
    pub counters: Vec<JsonSample>,
    pub samples: Vec<JsonSample>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct JsonGauge {
    pub name: String,
    pub value: f64,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct JsonSample {
    pub name: String,
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
    pub stddev: f64,
    pub labels: BTreeMap<String, String>,
}

/// Running count, sum, min, max and sum of squares of recorded values.
#[derive(Debug, Default, Clone, Copy)]
struct Aggregate {
    count: u64,
    sum: f64,
    sum_sq: f64,
    min: f64,
    max: f64,
}

impl Aggregate {
    fn add(&mut self, v: f64) {
        if self.count == 0 {
            self.min = v;
            self.max = v;
        } else {
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
        self.count += 1;
        self.sum += v;
        self.sum_sq += v * v;
    }

    fn sample(&self, key: &Key) -> JsonSample {
        let n = self.count.max(1) as f64;
        let mean = self.sum / n;
        let var = if self.count > 1 {
            ((self.sum_sq - self.sum * self.sum / n) / (n - 1.0)).max(0.0)
        } else {
            0.0
        };
        JsonSample {
            name: key.name().to_string(),
            count: self.count,
            sum: self.sum,
            min: self.min,
            max: self.max,
            mean,
            stddev: var.sqrt(),
            labels: labels(key),
        }
    }
}

fn labels(key: &Key) -> BTreeMap<String, String> {
    key.labels()
        .map(|l| (l.key().to_string(), l.value().to_string()))
        .collect()
}

/// Aggregates for the JSON format.
#[derive(Debug, Default)]
pub struct JsonSink {
    counters: Mutex<BTreeMap<Key, Arc<Mutex<Aggregate>>>>,
    gauges: Mutex<BTreeMap<Key, Arc<Mutex<f64>>>>,
    samples: Mutex<BTreeMap<Key, Arc<Mutex<Aggregate>>>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each critical section is a single arithmetic update; poisoning cannot corrupt it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl JsonSink {
    fn fill(&self, out: &mut JsonMetrics) {
        out.gauges = locked(&self.gauges)
            .iter()
            .map(|(k, v)| JsonGauge {
                name: k.name().to_string(),
                value: *locked(v),
                labels: labels(k),
            })
            .collect();
        out.counters = locked(&self.counters)
            .iter()
            .map(|(k, a)| locked(a).sample(k))
            .collect();
        out.samples = locked(&self.samples)
            .iter()
            .map(|(k, a)| locked(a).sample(k))
            .collect();
    }
}

struct JsonRecorder(Arc<JsonSink>);

struct AggregateHandle(Arc<Mutex<Aggregate>>);

impl metrics::CounterFn for AggregateHandle {
    fn increment(&self, value: u64) {
        locked(&self.0).add(value as f64);
    }
    fn absolute(&self, value: u64) {
        let mut a = locked(&self.0);
        *a = Aggregate::default();
        a.add(value as f64);
    }
}

impl metrics::HistogramFn for AggregateHandle {
    fn record(&self, value: f64) {
        locked(&self.0).add(value);
    }
}

struct GaugeHandle(Arc<Mutex<f64>>);

impl metrics::GaugeFn for GaugeHandle {
    fn increment(&self, value: f64) {
        *locked(&self.0) += value;
    }
    fn decrement(&self, value: f64) {
        *locked(&self.0) -= value;
    }
    fn set(&self, value: f64) {
        *locked(&self.0) = value;
    }
}

impl Recorder for JsonRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let cell = locked(&self.0.counters)
            .entry(key.clone())
            .or_default()
            .clone();
        Counter::from_arc(Arc::new(AggregateHandle(cell)))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let cell = locked(&self.0.gauges)
            .entry(key.clone())
            .or_default()
            .clone();
        Gauge::from_arc(Arc::new(GaugeHandle(cell)))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let cell = locked(&self.0.samples)
            .entry(key.clone())
            .or_default()
            .clone();
        Histogram::from_arc(Arc::new(AggregateHandle(cell)))
    }
}

/// Sets up `tracing` output on stderr at the given level (`trace`..`error`), honouring
/// `RUST_LOG` when set, and the feed of `/v1/agent/monitor` beside it.
pub fn init_logging(level: &str, json: bool) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level_filter(level)));
    // Colours only on a terminal: a log file or journal gets plain text.
    let stderr = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(crate::logs::layer());
    // A second init (tests) is harmless; ignore it.
    let _ = if json {
        registry.with(stderr.json().with_filter(filter)).try_init()
    } else {
        registry.with(stderr.with_filter(filter)).try_init()
    };
}

fn level_filter(level: &str) -> String {
    let l = match level.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "warn" | "warning" => "warn",
        "err" | "error" => "error",
        _ => "info",
    };
    // openraft logs every failed heartbeat to a down server as an error; what matters of
    // it surfaces through Cairn's own messages, so it speaks only at debug and trace.
    let raft = if matches!(l, "trace" | "debug") {
        "info"
    } else {
        "off"
    };
    format!("cairn_lan_agent={l},cairn={l},openraft={raft},warn")
}
