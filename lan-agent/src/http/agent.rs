//! `/v1/agent/self`, `/v1/agent/metrics` and `/v1/agent/monitor`: what this agent is, its
//! counters, and its log as it is written.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use tokio::sync::broadcast::error::RecvError;

use super::error::{ApiError, ApiResult};
use super::routes::Routes;
use super::{HttpState, Params, json, methods};
use crate::version;

pub(super) fn router() -> Routes {
    Routes::new()
        .route("/v1/agent/self", methods(get(agent_self), "GET"))
        .route("/v1/agent/metrics", methods(get(agent_metrics), "GET"))
        .route("/v1/agent/monitor", methods(get(monitor), "GET"))
}

/// `/v1/agent/monitor?loglevel=&logjson`: this agent's log lines from now on, streamed
/// until the client goes away.
async fn monitor(uri: Uri) -> ApiResult {
    let params = Params::parse(uri.query());
    let wanted = params.value("loglevel").unwrap_or("INFO");
    let Some(level) = crate::logs::parse_level(wanted) else {
        return Err(ApiError::bad_request(format!(
            "Unknown log level: {wanted}"
        )));
    };
    let json = params.has("logjson");
    let feed = crate::logs::hub().attach(level);
    let lines = futures_util::stream::unfold(feed, move |mut feed| async move {
        loop {
            match feed.rx.recv().await {
                Ok(line) if line.level <= feed.level => {
                    let mut text = if json { line.json() } else { line.text() };
                    text.push('\n');
                    return Some((Ok::<_, std::convert::Infallible>(Bytes::from(text)), feed));
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Ok((
        StatusCode::OK,
        [("content-type", "text/plain; charset=utf-8")],
        Body::from_stream(lines),
    )
        .into_response())
}

async fn agent_self(State(st): State<HttpState>, req: Request) -> ApiResult {
    let params = Params::parse(req.uri().query());
    let info = &st.info;
    let member = st
        .gossip
        .members()
        .iter()
        .find(|m| m.name == info.node_name)
        .map(super::members::member_json);
    let body = json!({
        "Config": {
            "Datacenter": info.datacenter,
            "PrimaryDatacenter": info.datacenter,
            "NodeName": info.node_name,
            "NodeID": info.node_id,
            "Revision": version::REVISION,
            "Server": info.server,
            "Version": version::VERSION,
            "BuildDate": version::BUILD_DATE,
        },
        "DebugConfig": info.debug_config,
        "Coord": st.gossip.coordinate(),
        "Member": member,
        "Stats": (st.stats.0)(),
        "Meta": info.node_meta,
        // Consul's xDS server feeds Envoy sidecars; Cairn runs no service mesh.
        "xDS": null,
    });
    Ok(json(&st, &params, StatusCode::OK, &body))
}

async fn agent_metrics(State(st): State<HttpState>, req: Request) -> ApiResult {
    let params = Params::parse(req.uri().query());
    let accept = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let wants_text = params.get("format") == Some("prometheus")
        || accept.contains("application/openmetrics-text");
    if wants_text {
        return Ok((
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
            st.telemetry.render_prometheus(),
        )
            .into_response());
    }
    let body = st.telemetry.render_json(go_utc_now());
    Ok(json(&st, &params, StatusCode::OK, &body))
}

/// Now, rounded to the second, as Go prints a UTC time: `2017-08-08 02:55:10 +0000 UTC`.
fn go_utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02} +0000 UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(17_386), (2017, 8, 8));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
    }
}
