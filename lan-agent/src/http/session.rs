//! `/v1/session/*`: create, destroy, renew, info, node, list.
//!
//! Create fills Consul's defaults (this agent's node, the `serfHealth` check, a 15s
//! lock-delay, `release`) and reads `LockDelay` the way Consul does: a number is
//! nanoseconds, a string is a duration, and anything under 1000 means seconds.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::{HeaderMap, Uri};
use axum::routing::{get, put};
use cairn_shared::api::{ServiceCheck, Session, SessionBehavior};
use cairn_shared::duration;
use cairn_shared::rpc::{Query, QueryResult, WriteOp, WriteRequest, WriteResult};
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::routes::Routes;
use super::{HttpState, Params, content_length, json, methods, query_json, read_body};
use crate::server::default_session;

pub(super) fn router() -> Routes {
    let mut r = Routes::new().route("/v1/session/create", methods(put(create), "PUT"));
    for (path, handler) in [("destroy", put(destroy)), ("renew", put(renew))] {
        r = r
            .route(
                &format!("/v1/session/{path}/"),
                methods(handler.clone(), "PUT"),
            )
            .route(
                &format!("/v1/session/{path}/{{*id}}"),
                methods(handler, "PUT"),
            );
    }
    for (path, handler) in [("info", get(info)), ("node", get(node))] {
        r = r
            .route(
                &format!("/v1/session/{path}/"),
                methods(handler.clone(), "GET"),
            )
            .route(
                &format!("/v1/session/{path}/{{*id}}"),
                methods(handler, "GET"),
            );
    }
    r.route("/v1/session/list", methods(get(list), "GET"))
}

/// The body of `/v1/session/create`. Unknown fields are ignored, as in Consul.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateBody {
    name: Option<String>,
    node: Option<String>,
    lock_delay: Option<serde_json::Value>,
    behavior: Option<String>,
    #[serde(rename = "TTL")]
    ttl: Option<String>,
    node_checks: Option<Vec<String>>,
    service_checks: Option<Vec<ServiceCheck>>,
    checks: Option<Vec<String>>,
}

/// Consul's `lockDelayMinThreshold`: smaller values are taken as seconds.
const LOCK_DELAY_SECONDS_BELOW: u64 = 1000;

fn lock_delay_nanos(v: &serde_json::Value) -> Result<u64, ApiError> {
    let nanos = match v {
        serde_json::Value::Number(n) => n.as_f64().map_or(0, |f| f.max(0.0) as u64),
        serde_json::Value::String(s) => {
            let d = duration::parse_nanos(s)
                .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?;
            d.max(0) as u64
        }
        _ => 0,
    };
    Ok(if nanos < LOCK_DELAY_SECONDS_BELOW {
        nanos.saturating_mul(1_000_000_000)
    } else {
        nanos
    })
}

fn build_session(st: &HttpState, body: CreateBody) -> Result<Session, ApiError> {
    let mut s = default_session(&st.info.node_name);
    // Consul also defaults the deprecated `Checks` to serfHealth and reconciles the two.
    let mut checks = Some(vec![cairn_shared::api::SERF_CHECK_ID.to_string()]);
    if let Some(name) = body.name {
        s.name = name;
    }
    if let Some(node) = body.node {
        s.node = node;
    }
    if let Some(v) = body.lock_delay.as_ref().filter(|v| !v.is_null()) {
        s.lock_delay = lock_delay_nanos(v)?;
    }
    s.behavior = match body.behavior.as_deref().unwrap_or("") {
        "" | "release" => SessionBehavior::Release,
        "delete" => SessionBehavior::Delete,
        other => {
            return Err(ApiError::internal(format!(
                "Invalid Behavior setting '{other}'"
            )));
        }
    };
    if let Some(ttl) = body.ttl {
        s.ttl = ttl;
    }
    if let Some(nc) = body.node_checks {
        s.node_checks = Some(nc);
    }
    s.service_checks = body.service_checks;
    if let Some(c) = body.checks {
        checks = Some(c);
    }
    // fixupEmptySessionChecks: an explicit empty `Checks` clears the default node check;
    // the default `Checks` defers to `NodeChecks`.
    let legacy = checks.unwrap_or_default();
    let node_checks_empty = s.node_checks.as_ref().is_none_or(Vec::is_empty);
    if legacy.is_empty() {
        s.node_checks = Some(Vec::new());
        s.checks = None;
    } else if legacy == [cairn_shared::api::SERF_CHECK_ID] || node_checks_empty {
        s.checks = None;
    } else {
        s.checks = Some(legacy);
    }
    Ok(s)
}

async fn create(State(st): State<HttpState>, req: Request) -> ApiResult {
    let params = Params::parse(req.uri().query());
    let options = params.query_options(req.headers())?;
    let declared = content_length(req.headers());
    let raw = read_body(req.into_body(), declared, st.limits.txn_max_req_len, |n| {
        ApiError::too_large(format!("Request body({n} bytes) too large"))
    })
    .await?;
    let body: CreateBody = if raw.is_empty() {
        CreateBody::default()
    } else {
        super::decode::from_slice(&raw)
            .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?
    };
    let session = build_session(&st, body)?;
    let result = st
        .rpc
        .write(WriteRequest {
            datacenter: options.datacenter,
            token: options.token,
            op: WriteOp::SessionCreate(session),
        })
        .await?;
    match result {
        WriteResult::SessionId(id) => Ok(json(
            &st,
            &params,
            StatusCode::OK,
            &serde_json::json!({ "ID": id }),
        )),
        other => Err(ApiError::internal(format!(
            "unexpected answer to session create: {other:?}"
        ))),
    }
}

fn tail(uri: &Uri, verb: &str, missing: &str) -> Result<String, ApiError> {
    super::path_tail(uri, &format!("/v1/session/{verb}/"), missing)
}

async fn destroy(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let params = Params::parse(uri.query());
    let options = params.query_options(&headers)?;
    let id = tail(&uri, "destroy", "Missing session")?;
    st.rpc
        .write(WriteRequest {
            datacenter: options.datacenter,
            token: options.token,
            op: WriteOp::SessionDestroy { id },
        })
        .await?;
    Ok(json(&st, &params, StatusCode::OK, &true))
}

async fn renew(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let params = Params::parse(uri.query());
    let options = params.query_options(&headers)?;
    let id = tail(&uri, "renew", "Missing session")?;
    let result = st
        .rpc
        .write(WriteRequest {
            datacenter: options.datacenter,
            token: options.token,
            op: WriteOp::SessionRenew { id },
        })
        .await?;
    match result {
        WriteResult::Sessions(s) => Ok(json(&st, &params, StatusCode::OK, &s)),
        other => Err(ApiError::internal(format!(
            "unexpected answer to session renew: {other:?}"
        ))),
    }
}

async fn read_sessions(st: &HttpState, uri: &Uri, headers: &HeaderMap, query: Query) -> ApiResult {
    let (params, resp) = super::read(st, uri, headers, query).await?;
    match resp.result {
        QueryResult::Sessions(s) => Ok(query_json(st, &params, &resp.meta, &s)),
        other => Err(super::unexpected("a session read", &other)),
    }
}

async fn info(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let id = tail(&uri, "info", "Missing session")?;
    read_sessions(&st, &uri, &headers, Query::SessionInfo { id }).await
}

async fn node(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let node = tail(&uri, "node", "Missing node name")?;
    read_sessions(&st, &uri, &headers, Query::SessionNode { node }).await
}

async fn list(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    read_sessions(&st, &uri, &headers, Query::SessionList).await
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lock_delay_numbers_below_1000_are_seconds() {
        let s = 1_000_000_000;
        assert_eq!(lock_delay_nanos(&json!(15)).unwrap(), 15 * s);
        assert_eq!(lock_delay_nanos(&json!(15_000_000_000u64)).unwrap(), 15 * s);
        assert_eq!(lock_delay_nanos(&json!("15s")).unwrap(), 15 * s);
        assert_eq!(lock_delay_nanos(&json!("500ns")).unwrap(), 500 * s);
        assert_eq!(lock_delay_nanos(&json!("0s")).unwrap(), 0);
        assert_eq!(lock_delay_nanos(&json!(true)).unwrap(), 0);
        assert_eq!(
            lock_delay_nanos(&json!("abc")).unwrap_err().message,
            "Request decode failed: time: invalid duration \"abc\""
        );
    }
}
