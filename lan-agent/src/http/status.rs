//! `/v1/status/leader` and `/v1/status/peers`: the Raft leader's and voters' RPC addresses.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::get;
use cairn_shared::rpc::{Query, QueryResult, ReadRequest};

use super::error::{ApiError, ApiResult};
use super::routes::Routes;
use super::{HttpState, Params, json, methods};

pub(super) fn router() -> Routes {
    Routes::new()
        .route("/v1/status/leader", methods(get(leader), "GET"))
        .route("/v1/status/peers", methods(get(peers), "GET"))
}

async fn status(st: &HttpState, uri: &Uri, headers: &HeaderMap, query: Query) -> ApiResult {
    let params = Params::parse(uri.query());
    let options = params.query_options(headers)?;
    let resp = st.rpc.read(ReadRequest { query, options }).await?;
    match resp.result {
        QueryResult::Leader(addr) => Ok(json(st, &params, StatusCode::OK, &addr)),
        QueryResult::Peers(peers) => Ok(json(st, &params, StatusCode::OK, &peers)),
        other => Err(ApiError::internal(format!(
            "unexpected answer to a status read: {other:?}"
        ))),
    }
}

async fn leader(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    status(&st, &uri, &headers, Query::Leader).await
}

async fn peers(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    status(&st, &uri, &headers, Query::Peers).await
}
