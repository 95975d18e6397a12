//! The agent's log as `/v1/agent/monitor` streams it: a `tracing` layer hands every event,
//! captured once, to the monitors attached at that moment, each at its own level (up to
//! `debug`, whatever level the agent itself logs at). With no monitor attached the layer's
//! filter turns events away at one atomic load.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// Lines a slow monitor may fall behind by before it skips ahead.
const BACKLOG: usize = 1024;

/// One log event.
#[derive(Debug, Clone)]
pub struct LogLine {
    pub level: Level,
    /// `server`, `raft.autopilot`, ... (the Rust module, without the crate).
    pub module: String,
    pub message: String,
    pub fields: Vec<(String, String)>,
    pub time: SystemTime,
}

/// Where events go to the monitors.
pub struct LogHub {
    tx: broadcast::Sender<Arc<LogLine>>,
    /// Monitors attached per level (trace, debug, info, warn, error).
    counts: Mutex<[usize; 5]>,
    /// The most verbose level any monitor wants, as an index into `counts` + 1; 0: none.
    wanted: AtomicUsize,
}

fn index(level: Level) -> usize {
    match level {
        Level::TRACE => 0,
        Level::DEBUG => 1,
        Level::INFO => 2,
        Level::WARN => 3,
        Level::ERROR => 4,
    }
}

/// The process's hub.
pub fn hub() -> &'static LogHub {
    static HUB: OnceLock<LogHub> = OnceLock::new();
    HUB.get_or_init(|| LogHub {
        tx: broadcast::channel(BACKLOG).0,
        counts: Mutex::new([0; 5]),
        wanted: AtomicUsize::new(0),
    })
}

/// A monitor's feed; detaches when dropped.
pub struct Monitor {
    pub rx: broadcast::Receiver<Arc<LogLine>>,
    pub level: Level,
}

impl LogHub {
    /// Attaches a monitor for `level` and more severe.
    pub fn attach(&'static self, level: Level) -> Monitor {
        let rx = self.tx.subscribe();
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts[index(level)] += 1;
        self.recompute(&counts);
        Monitor { rx, level }
    }

    fn recompute(&self, counts: &[usize; 5]) {
        let wanted = counts.iter().position(|n| *n > 0).map_or(0, |i| i + 1);
        self.wanted.store(wanted, Ordering::Relaxed);
    }

    fn wants(&self, level: Level) -> bool {
        let w = self.wanted.load(Ordering::Relaxed);
        w != 0 && index(level) + 1 >= w
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let hub = hub();
        let mut counts = hub.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts[index(self.level)] = counts[index(self.level)].saturating_sub(1);
        hub.recompute(&counts);
    }
}

/// Cairn's own modules at any level, others at `warn` and above, as the stderr log.
fn ours(target: &str) -> bool {
    target.starts_with("cairn")
}

/// The layer to install beside the stderr formatter.
pub fn layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    MonitorLayer.with_filter(
        tracing_subscriber::filter::filter_fn(|meta| {
            let hub = hub();
            hub.wants(*meta.level()) && (ours(meta.target()) || *meta.level() <= Level::WARN)
        })
        .with_max_level_hint(Level::DEBUG),
    )
}

struct MonitorLayer;

#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields
                .push((field.name().to_string(), value.to_string()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields.push((field.name().to_string(), text));
        }
    }
}

impl<S: Subscriber> Layer<S> for MonitorLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let target = event.metadata().target();
        let module = target
            .split_once("::")
            .map_or(target, |(_, rest)| rest)
            .replace("::", ".");
        let line = LogLine {
            level: *event.metadata().level(),
            module,
            message: f.message,
            fields: f.fields,
            time: SystemTime::now(),
        };
        // No receiver: the last monitor left between the filter and here.
        let _ = hub().tx.send(Arc::new(line));
    }
}

/// `2026-12-04T03:39:45.123Z`.
fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, mo, day) = crate::http::civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{mo:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

impl LogLine {
    /// hclog's text form: `TIME [INFO]  module: message: key=value`.
    pub fn text(&self) -> String {
        let level = format!("[{}]", self.level);
        let mut out = format!(
            "{} {level:<7} {}: {}",
            timestamp(self.time),
            self.module,
            self.message
        );
        if !self.fields.is_empty() {
            out.push(':');
            for (k, v) in &self.fields {
                let _ = write!(out, " {k}={v}");
            }
        }
        out
    }

    /// hclog's JSON form: `@level`, `@message`, `@module`, `@timestamp`, then the fields.
    pub fn json(&self) -> String {
        let mut m = serde_json::Map::new();
        m.insert(
            "@level".into(),
            self.level.to_string().to_lowercase().into(),
        );
        m.insert("@message".into(), self.message.clone().into());
        m.insert("@module".into(), self.module.clone().into());
        m.insert("@timestamp".into(), timestamp(self.time).into());
        for (k, v) in &self.fields {
            m.insert(k.clone(), v.clone().into());
        }
        serde_json::Value::Object(m).to_string()
    }
}

/// hclog's level names, as `?loglevel` takes them.
pub fn parse_level(s: &str) -> Option<Level> {
    match s.to_ascii_lowercase().as_str() {
        "trace" => Some(Level::TRACE),
        "debug" => Some(Level::DEBUG),
        "info" => Some(Level::INFO),
        "warn" => Some(Level::WARN),
        "err" | "error" => Some(Level::ERROR),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_as_hclog_writes_them() {
        let line = LogLine {
            level: Level::INFO,
            module: "local.sync".into(),
            message: "Synced service".into(),
            fields: vec![("service".into(), "web".into())],
            time: UNIX_EPOCH + std::time::Duration::from_millis(1_764_819_585_123),
        };
        assert_eq!(
            line.text(),
            "2025-12-04T03:39:45.123Z [INFO]  local.sync: Synced service: service=web"
        );
        let json: serde_json::Value = serde_json::from_str(&line.json()).unwrap();
        assert_eq!(json["@level"], "info");
        assert_eq!(json["@module"], "local.sync");
        assert_eq!(json["service"], "web");
        assert_eq!(parse_level("WARN"), Some(Level::WARN));
        assert_eq!(parse_level("loud"), None);
    }
}
