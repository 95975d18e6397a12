//! `/v1/operator/raft/*`, `/v1/operator/autopilot/health` and `/v1/snapshot`: looking at
//! and changing the servers' Raft configuration, and saving and restoring the whole state.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use cairn_shared::rpc::{
    Query, QueryResult, ReadRequest, RpcError, SNAPSHOT_PART, WriteOp, WriteRequest,
};
use futures_util::{StreamExt, TryStreamExt};

use super::error::{ApiError, ApiResult};
use super::routes::Routes;
use super::{
    HttpState, Params, content_length, json, methods, query_json, read, set_meta, unexpected,
};
use crate::server::MAX_RESTORE;

pub(super) fn router() -> Routes {
    Routes::new()
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
        .route("/v1/operator/usage", methods(get(usage), "GET"))
        .route(
            "/v1/operator/autopilot/configuration",
            methods(
                get(autopilot_configuration).put(set_autopilot_configuration),
                "GET,PUT",
            ),
        )
        .route(
            "/v1/operator/raft/transfer-leader",
            methods(post(transfer_leader), "POST"),
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

/// `/v1/operator/usage[?global]`: counts per datacenter, the query meta repeated in the body
/// as Consul's `structs.Usage` response carries it.
async fn usage(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let (params, resp) = read(&st, &uri, &headers, Query::Usage).await?;
    let options = params.query_options(&headers)?;
    let here = if options.datacenter.is_empty() {
        st.info.datacenter.clone()
    } else {
        options.datacenter.clone()
    };
    let mut per_dc = serde_json::Map::new();
    let mut add = |dc: &str, result: &QueryResult| match result {
        QueryResult::Usage(u) => {
            per_dc.insert(
                dc.to_string(),
                serde_json::json!({
                    "Services": u.services,
                    "ServiceInstances": u.service_instances,
                    "ConnectServiceInstances": {
                        "api-gateway": 0, "connect-native": 0, "connect-proxy": 0,
                        "ingress-gateway": 0, "mesh-gateway": 0, "terminating-gateway": 0,
                    },
                    "BillableServiceInstances": u.billable_service_instances,
                    "Nodes": u.nodes,
                }),
            );
            Ok(())
        }
        other => Err(unexpected("a usage read", other)),
    };
    add(&here, &resp.result)?;
    if params.has("global") {
        let dcs = match st
            .rpc
            .read(ReadRequest {
                query: Query::Datacenters,
                options: Default::default(),
            })
            .await?
            .result
        {
            QueryResult::Datacenters(d) => d,
            other => return Err(unexpected("a datacenter list", &other)),
        };
        for dc in dcs.iter().filter(|d| **d != here) {
            let mut o = options.clone();
            o.datacenter = dc.clone();
            o.min_index = 0;
            let r = st
                .rpc
                .read(ReadRequest {
                    query: Query::Usage,
                    options: o,
                })
                .await?;
            add(dc, &r.result)?;
        }
    }
    let m = &resp.meta;
    let body = serde_json::json!({
        "Usage": per_dc,
        "Index": m.index,
        "LastContact": m.last_contact_ms * 1_000_000,
        "KnownLeader": m.known_leader,
        "ConsistencyLevel": m.consistency.header_value(),
        "NotModified": false,
        "Backend": 0,
        "ResultsFilteredByACLs": false,
    });
    Ok(query_json(&st, &params, m, &body))
}

async fn transfer_leader(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let params = Params::parse(uri.query());
    let options = params.query_options(&headers)?;
    let id = params.value("id").map(str::to_string);
    st.rpc
        .write(WriteRequest {
            datacenter: options.datacenter,
            token: options.token,
            op: WriteOp::RaftTransferLeader { id },
        })
        .await?;
    Ok(json(
        &st,
        &params,
        StatusCode::OK,
        &serde_json::json!({"Success": true}),
    ))
}

async fn autopilot_configuration(
    State(st): State<HttpState>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult {
    let (params, resp) = read(&st, &uri, &headers, Query::AutopilotConfiguration).await?;
    match &resp.result {
        QueryResult::AutopilotConfiguration(Some(c)) => Ok(query_json(&st, &params, &resp.meta, c)),
        QueryResult::AutopilotConfiguration(None) => Err(ApiError::internal(
            "autopilot configuration not initialized yet",
        )),
        other => Err(unexpected("an autopilot configuration read", other)),
    }
}

/// A PUT body: Go's decoder leaves what is absent at zero, and durations are Go strings
/// or nanoseconds.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct AutopilotBody {
    cleanup_dead_servers: bool,
    last_contact_threshold: serde_json::Value,
    max_trailing_logs: u64,
    min_quorum: u64,
    server_stabilization_time: serde_json::Value,
    redundancy_zone_tag: String,
    disable_upgrade_migration: bool,
    upgrade_version_tag: String,
}

fn body_duration(v: &serde_json::Value) -> Result<String, ApiError> {
    let bad = |e: String| ApiError::bad_request(format!("Error parsing autopilot config: {e}"));
    let d = match v {
        serde_json::Value::Null => std::time::Duration::ZERO,
        serde_json::Value::String(s) => {
            cairn_shared::duration::parse(s).map_err(|e| bad(e.to_string()))?
        }
        serde_json::Value::Number(n) => std::time::Duration::from_nanos(
            n.as_u64().ok_or_else(|| bad(format!("bad duration {n}")))?,
        ),
        other => return Err(bad(format!("bad duration {other}"))),
    };
    Ok(cairn_shared::duration::format(d))
}

async fn set_autopilot_configuration(State(st): State<HttpState>, req: Request) -> ApiResult {
    let params = Params::parse(req.uri().query());
    let options = params.query_options(req.headers())?;
    let cas = match params.get("cas") {
        None => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "Error parsing cas value: strconv.ParseUint: parsing {v:?}: invalid syntax"
            ))
        })?),
    };
    let body: AutopilotBody = super::decode_json_body(req, st.limits.txn_max_req_len)
        .await
        .map_err(|e| {
            ApiError::bad_request(format!("Error parsing autopilot config: {}", e.message))
        })?;
    let config = cairn_shared::api::AutopilotConfig {
        cleanup_dead_servers: body.cleanup_dead_servers,
        last_contact_threshold: body_duration(&body.last_contact_threshold)?,
        max_trailing_logs: body.max_trailing_logs,
        min_quorum: body.min_quorum,
        server_stabilization_time: body_duration(&body.server_stabilization_time)?,
        redundancy_zone_tag: body.redundancy_zone_tag,
        disable_upgrade_migration: body.disable_upgrade_migration,
        upgrade_version_tag: body.upgrade_version_tag,
        create_index: 0,
        modify_index: 0,
    };
    let applied = st
        .rpc
        .write(WriteRequest {
            datacenter: options.datacenter,
            token: options.token,
            op: WriteOp::AutopilotSetConfig { config, cas },
        })
        .await?;
    // Consul answers a write without `?cas` with `true` whatever happened.
    let ok = cas.is_none() || matches!(applied, cairn_shared::rpc::WriteResult::Bool(true));
    Ok(json(&st, &params, StatusCode::OK, &ok))
}

async fn remove_peer(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let params = Params::parse(uri.query());
    let options = params.query_options(&headers)?;
    let id = params.value("id").map(str::to_string);
    let address = params.value("address").map(str::to_string);
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
    let (params, resp) = read(&st, &uri, &headers, Query::Snapshot).await?;
    let first = match resp.result {
        QueryResult::SnapshotPart(p) => p,
        other => return Err(unexpected("a snapshot read", &other)),
    };
    // The rest of the file is read part by part as the client takes it, so neither this
    // agent nor any RPC frame holds more than a part.
    let mut options = params.query_options(&headers)?;
    options.min_index = 0;
    let total = first.total;
    let handle = first.handle;
    let rpc = st.rpc.clone();
    let offset = first.data.len() as u64;
    let head = futures_util::stream::once(async move { Ok(Bytes::from(first.data)) });
    let rest = futures_util::stream::try_unfold(offset, move |at| {
        let (rpc, handle, options) = (rpc.clone(), handle.clone(), options.clone());
        async move {
            if at >= total {
                return Ok(None);
            }
            let query = Query::SnapshotPart { handle, offset: at };
            let part = match rpc.read(ReadRequest { query, options }).await?.result {
                QueryResult::SnapshotPart(p) if p.offset == at && !p.data.is_empty() => p,
                _ => return Err(RpcError::internal("a snapshot part came back out of place")),
            };
            let next = at + part.data.len() as u64;
            Ok::<_, RpcError>(Some((Bytes::from(part.data), next)))
        }
    });
    let mut r = Response::new(Body::from_stream(head.chain(rest)));
    let h = r.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert("content-length", HeaderValue::from(total));
    set_meta(h, &resp.meta);
    Ok(r)
}

async fn snapshot_restore(State(st): State<HttpState>, req: Request) -> ApiResult {
    let params = Params::parse(req.uri().query());
    let options = params.query_options(req.headers())?;
    let too_large = |n: u64| ApiError::too_large(format!("Snapshot of {n} bytes is too large"));
    if let Some(n) = content_length(req.headers())
        && n > MAX_RESTORE as u64
    {
        return Err(too_large(n));
    }
    // The upload goes to the leader in parts as it arrives.
    let upload = uuid::Uuid::new_v4().to_string();
    let mut body = req.into_body().into_data_stream();
    let mut offset = 0u64;
    let mut buf = Vec::with_capacity(SNAPSHOT_PART);
    loop {
        let chunk = body
            .try_next()
            .await
            .map_err(|e| ApiError::bad_request(format!("Error reading snapshot: {e}")))?;
        let done = chunk.is_none();
        if let Some(c) = &chunk {
            if offset + (buf.len() + c.len()) as u64 > MAX_RESTORE as u64 {
                return Err(too_large(offset + (buf.len() + c.len()) as u64));
            }
            buf.extend_from_slice(c);
        }
        while buf.len() >= SNAPSHOT_PART || (done && !buf.is_empty()) || (done && offset == 0) {
            let n = buf.len().min(SNAPSHOT_PART);
            let data: Vec<u8> = buf.drain(..n).collect();
            let last = done && buf.is_empty();
            st.rpc
                .write(WriteRequest {
                    datacenter: options.datacenter.clone(),
                    token: options.token.clone(),
                    op: WriteOp::SnapshotUpload {
                        upload: upload.clone(),
                        offset,
                        data,
                        done: last,
                    },
                })
                .await?;
            offset += n as u64;
            if last {
                return Ok(StatusCode::OK.into_response());
            }
        }
    }
}
