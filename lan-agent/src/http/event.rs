//! `/v1/event/fire/:name` and `/v1/event/list`: user events, answered by this agent.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::{get, put};
use cairn_shared::acl::{Access, Resource};
use cairn_shared::rpc::{Consistency, QueryMeta, timeouts};

use super::error::{ApiError, ApiResult};
use super::routes::Routes;
use super::{HttpState, Params, json, methods, path_tail, query_json, read_body};

pub(super) fn router() -> Routes {
    Routes::new()
        .route("/v1/event/fire/", methods(put(fire), "PUT"))
        .route("/v1/event/fire/{*name}", methods(put(fire), "PUT"))
        .route("/v1/event/list", methods(get(list), "GET"))
}

async fn fire(State(st): State<HttpState>, req: Request) -> ApiResult {
    let name = path_tail(req.uri(), "/v1/event/fire/", "Missing name")?;
    let params = Params::parse(req.uri().query());
    let filters = ["node", "service", "tag"].map(|k| params.get(k).unwrap_or_default().to_string());
    let declared = super::content_length(req.headers());
    let body = read_body(req.into_body(), declared, 9 * 1024, |n| {
        ApiError::too_large(format!("Request body({n} bytes) too large"))
    })
    .await?;
    let payload = (!body.is_empty()).then(|| body.to_vec());
    let event = st
        .events
        .prepare(&name, payload, filters)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let dc = params.get("dc").unwrap_or_default();
    if dc.is_empty() || dc == st.info.datacenter {
        st.events.fire(event.clone(), st.local.as_ref());
    } else {
        // Another datacenter's servers fire it into their pool.
        st.rpc.fire_event(dc.to_string(), event.clone()).await?;
    }
    Ok(json(&st, &params, StatusCode::OK, &event))
}

async fn list(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let params = Params::parse(uri.query());
    let options = params.query_options(&headers)?;
    let name = params.value("name").map(str::to_string);
    let mut changes = st.events.subscribe();
    let (mut index, mut events) = st.events.list(name.as_deref());
    // Blocking: wait until the newest event differs from the one the client saw.
    if options.min_index > 0 && index == options.min_index {
        let wait = options
            .max_wait
            .unwrap_or(timeouts::DEFAULT_QUERY_TIME)
            .min(timeouts::MAX_QUERY_TIME);
        let deadline = tokio::time::Instant::now() + wait + wait / timeouts::JITTER_FRACTION;
        while index == options.min_index {
            tokio::select! {
                r = changes.changed() => if r.is_err() { break },
                _ = tokio::time::sleep_until(deadline) => break,
            }
            (index, events) = st.events.list(name.as_deref());
        }
    }
    let authz = super::guard::Authz::of(&st, &uri, &headers).await?;
    let before = events.len();
    events.retain(|e| authz.can(Resource::Event, &e.name, Access::Read));
    let meta = QueryMeta {
        index,
        known_leader: true,
        last_contact_ms: 0,
        consistency: Consistency::Default,
        filtered_by_acls: events.len() < before,
    };
    Ok(query_json(&st, &params, &meta, &events))
}
