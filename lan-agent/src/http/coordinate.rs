//! `/v1/coordinate/*`: the network coordinates servers keep for every node.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::{get, put};
use cairn_shared::api::CoordinateEntry;
use cairn_shared::rpc::{Query, QueryResult, WriteOp, WriteRequest};

use super::error::{ApiError, ApiResult};
use super::routes::Routes;
use super::{
    HttpState, Params, json, methods, path_tail, query_json, query_not_found, read, unexpected,
};

pub(super) fn router() -> Routes {
    Routes::new()
        .route("/v1/coordinate/nodes", methods(get(nodes), "GET"))
        .route("/v1/coordinate/node/", methods(get(node), "GET"))
        .route("/v1/coordinate/node/{*node}", methods(get(node), "GET"))
        .route("/v1/coordinate/update", methods(put(update), "PUT"))
        .route(
            "/v1/coordinate/datacenters",
            methods(get(datacenters), "GET"),
        )
}

async fn nodes(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let (params, resp) = read(&st, &uri, &headers, Query::CoordinateNodes).await?;
    match resp.result {
        QueryResult::Coordinates(c) => Ok(query_json(&st, &params, &resp.meta, &c)),
        other => Err(unexpected("a coordinate read", &other)),
    }
}

async fn node(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let node = path_tail(&uri, "/v1/coordinate/node/", "Missing node name")?;
    let (params, resp) = read(&st, &uri, &headers, Query::CoordinateNode { node }).await?;
    match resp.result {
        QueryResult::Coordinates(c) if c.is_empty() => Ok(query_not_found(&resp.meta)),
        QueryResult::Coordinates(c) => Ok(query_json(&st, &params, &resp.meta, &c)),
        other => Err(unexpected("a coordinate read", &other)),
    }
}

async fn update(State(st): State<HttpState>, req: Request) -> ApiResult {
    let params = Params::parse(req.uri().query());
    let options = params.query_options(req.headers())?;
    let declared = super::content_length(req.headers());
    let body = super::read_body(req.into_body(), declared, 64 * 1024, |n| {
        ApiError::too_large(format!("Request body({n} bytes) too large"))
    })
    .await?;
    let entry: CoordinateEntry = super::decode::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?;
    st.rpc
        .write(WriteRequest {
            datacenter: options.datacenter,
            token: options.token,
            op: WriteOp::CoordinateUpdate(entry),
        })
        .await?;
    Ok(json(&st, &params, StatusCode::OK, &true))
}

/// Every datacenter with its servers' WAN coordinates, as the WAN routers know them.
async fn datacenters(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let (params, resp) = read(&st, &uri, &headers, Query::WanCoordinates).await?;
    match resp.result {
        QueryResult::DatacenterMaps(maps) => {
            let body: Vec<serde_json::Value> = maps
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "Datacenter": m.datacenter,
                        "AreaID": "wan",
                        "Coordinates": m.coordinates,
                    })
                })
                .collect();
            Ok(json(&st, &params, StatusCode::OK, &body))
        }
        other => Err(unexpected("a WAN coordinate read", &other)),
    }
}
