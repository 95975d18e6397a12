//! `/v1/health/*`: checks of a node, of a service, by state, and service instances with
//! their checks (`?passing` keeps instances whose every check passes). All blocking.

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::routing::get;
use cairn_shared::api::CheckStatus;
use cairn_shared::rpc::{Query, QueryResult};

use super::catalog::select;
use super::error::{ApiError, ApiResult};
use super::routes::Routes;
use super::{HttpState, Params, methods, path_tail, query_json, read, unexpected};

pub(super) fn router() -> Routes {
    let mut r = Routes::new();
    for (path, handler) in [
        ("node", get(node)),
        ("checks", get(checks)),
        ("service", get(service)),
        ("state", get(state)),
    ] {
        r = r
            .route(
                &format!("/v1/health/{path}/"),
                methods(handler.clone(), "GET"),
            )
            .route(
                &format!("/v1/health/{path}/{{*name}}"),
                methods(handler, "GET"),
            );
    }
    r
}

/// A presence-or-boolean flag (`?passing`, `?passing=false`).
fn flag(params: &Params, name: &str) -> Result<bool, ApiError> {
    match params.get(name) {
        None => Ok(false),
        Some("" | "1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(_) => Err(ApiError::bad_request(format!("Invalid value for ?{name}"))),
    }
}

async fn checks_answer(st: &HttpState, uri: &Uri, headers: &HeaderMap, q: Query) -> ApiResult {
    let (params, resp) = read(st, uri, headers, q).await?;
    match resp.result {
        QueryResult::Checks(c) => Ok(query_json(st, &params, &resp.meta, &c)),
        other => Err(unexpected("a health read", &other)),
    }
}

async fn node(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let node = path_tail(&uri, "/v1/health/node/", "Missing node name")?;
    let select = select(&Params::parse(uri.query()));
    checks_answer(&st, &uri, &headers, Query::HealthNode { node, select }).await
}

async fn checks(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let service = path_tail(&uri, "/v1/health/checks/", "Missing service name")?;
    let select = select(&Params::parse(uri.query()));
    checks_answer(&st, &uri, &headers, Query::HealthChecks { service, select }).await
}

async fn state(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let raw = path_tail(&uri, "/v1/health/state/", "Missing check state")?;
    let state = match raw.as_str() {
        "any" => None,
        "passing" | "warning" | "critical" => raw.parse::<CheckStatus>().ok(),
        _ => return Err(ApiError::bad_request(format!("Invalid check state: {raw}"))),
    };
    let select = select(&Params::parse(uri.query()));
    checks_answer(&st, &uri, &headers, Query::HealthState { state, select }).await
}

async fn service(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let service = path_tail(&uri, "/v1/health/service/", "Missing service name")?;
    let p = Params::parse(uri.query());
    let passing = flag(&p, "passing")?;
    let query = Query::HealthService {
        service,
        passing,
        select: select(&p),
    };
    let (params, resp) = read(&st, &uri, &headers, query).await?;
    match resp.result {
        QueryResult::ServiceEntries(e) => Ok(query_json(&st, &params, &resp.meta, &e)),
        other => Err(unexpected("a health read", &other)),
    }
}
