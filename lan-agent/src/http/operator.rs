//! `/v1/operator/raft/*`, `/v1/operator/autopilot/health` and `/v1/snapshot`: looking at
//! and changing the servers' Raft configuration, and saving and restoring the whole state.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use cairn_shared::rpc::{Query, QueryResult, WriteOp, WriteRequest};

use super::error::{ApiError, ApiResult};
use super::{
    HttpState, Params, content_length, json, methods, query_json, read, read_body, set_meta,
    unexpected,
};

/// Largest snapshot accepted by `PUT /v1/snapshot`.
const MAX_SNAPSHOT: usize = 512 * 1024 * 1024;

pub(super) fn router() -> Router<HttpState> {
    Router::new()
        .route(
            "/v1/operator/raft/configuration",
            methods(get(configuration), "GET"),
        )
        .route(
            "/v1/operator/raft/peer",
            methods(delete(remove_peer), "DELETE"),
        )
        .route(
            "/v1/operator/autopilot/health",
            methods(get(autopilot_health), "GET"),
        )
        .route(
            "/v1/snapshot",
            methods(get(snapshot_save).put(snapshot_restore), "GET,PUT"),
        )
}

async fn configuration(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let (params, resp) = read(&st, &uri, &headers, Query::RaftConfiguration).await?;
    match &resp.result {
        QueryResult::RaftConfiguration(c) => Ok(query_json(&st, &params, &resp.meta, c)),
        other => Err(unexpected("a Raft configuration read", other)),
    }
}

async fn autopilot_health(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let (params, resp) = read(&st, &uri, &headers, Query::AutopilotHealth).await?;
    match &resp.result {
        // Consul answers 429 when the cluster is unhealthy, so load balancers can tell.
        QueryResult::AutopilotHealth(h) => {
            let status = if h.healthy {
                StatusCode::OK
            } else {
                StatusCode::TOO_MANY_REQUESTS
            };
            Ok(json(&st, &params, status, h))
        }
        other => Err(unexpected("an autopilot health read", other)),
    }
}

async fn remove_peer(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let params = Params::parse(uri.query());
    let options = params.query_options(&headers)?;
    let id = params
        .get("id")
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let address = params
        .get("address")
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    if id.is_some() == address.is_some() {
        return Err(ApiError::bad_request(
            "Must specify either ?id with the server's ID or ?address with IP:port of peer to remove",
        ));
    }
    st.rpc
        .write(WriteRequest {
            datacenter: options.datacenter,
            token: options.token,
            op: WriteOp::RaftRemovePeer { id, address },
        })
        .await?;
    Ok(StatusCode::OK.into_response())
}

async fn snapshot_save(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let (_, resp) = read(&st, &uri, &headers, Query::Snapshot).await?;
    match resp.result {
        QueryResult::Snapshot(bytes) => {
            let mut r: Response = (
                StatusCode::OK,
                [("content-type", "application/octet-stream")],
                bytes,
            )
                .into_response();
            set_meta(r.headers_mut(), &resp.meta);
            Ok(r)
        }
        other => Err(unexpected("a snapshot read", &other)),
    }
}

async fn snapshot_restore(State(st): State<HttpState>, req: Request) -> ApiResult {
    let params = Params::parse(req.uri().query());
    let options = params.query_options(req.headers())?;
    let declared = content_length(req.headers());
    let data = read_body(req.into_body(), declared, MAX_SNAPSHOT, |n| {
        ApiError::too_large(format!("Snapshot of {n} bytes is too large"))
    })
    .await?;
    st.rpc
        .write(WriteRequest {
            datacenter: options.datacenter,
            token: options.token,
            op: WriteOp::SnapshotRestore {
                data: data.to_vec(),
            },
        })
        .await?;
    Ok(StatusCode::OK.into_response())
}
