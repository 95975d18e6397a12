//! The service-mesh reads of Consul, for a datacenter that has no mesh: Cairn refuses to
//! register sidecar proxies and gateways, so `/v1/catalog/connect/:s`,
//! `/v1/health/connect/:s`, `/v1/health/ingress/:s` and
//! `/v1/catalog/gateway-services/:g` answer what Consul answers when none exist: `[]`,
//! with the index of the service they name, blocking on it, `?filter` checked against
//! the listed type.

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::routing::get;
use cairn_shared::rpc::{Query, Select};

use super::catalog::select;
use super::error::{ApiError, ApiResult};
use super::routes::Routes;
use super::{HttpState, Params, methods, path_tail, query_json, read};
use crate::filter::fields;

pub(super) fn router() -> Routes {
    let mut r = Routes::new();
    for (path, handler) in [
        ("/v1/catalog/connect", get(catalog_connect)),
        ("/v1/health/connect", get(health_connect)),
        ("/v1/health/ingress", get(health_ingress)),
        ("/v1/catalog/gateway-services", get(gateway_services)),
    ] {
        r = r
            .route(&format!("{path}/"), methods(handler.clone(), "GET"))
            .route(&format!("{path}/{{*name}}"), methods(handler, "GET"));
    }
    r
}

/// Runs `query` for its index and blocking, and answers an empty list.
async fn empty(st: &HttpState, uri: &Uri, headers: &HeaderMap, query: Query) -> ApiResult {
    let (params, resp) = read(st, uri, headers, query).await?;
    Ok(query_json(st, &params, &resp.meta, &[(); 0]))
}

async fn catalog_connect(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let service = path_tail(&uri, "/v1/catalog/connect/", "Missing service name")?;
    let select = select(&Params::parse(uri.query()));
    empty(
        &st,
        &uri,
        &headers,
        Query::CatalogService { service, select },
    )
    .await
}

async fn health_connect(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let service = path_tail(&uri, "/v1/health/connect/", "Missing service name")?;
    health(&st, &uri, &headers, service).await
}

async fn health_ingress(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let service = path_tail(&uri, "/v1/health/ingress/", "Missing service name")?;
    health(&st, &uri, &headers, service).await
}

async fn health(st: &HttpState, uri: &Uri, headers: &HeaderMap, service: String) -> ApiResult {
    let query = Query::HealthService {
        service,
        passing: false,
        select: select(&Params::parse(uri.query())),
    };
    empty(st, uri, headers, query).await
}

async fn gateway_services(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let gateway = path_tail(
        &uri,
        "/v1/catalog/gateway-services/",
        "Missing gateway name",
    )?;
    let params = Params::parse(uri.query());
    crate::filter::parse_for(
        params.get("filter").unwrap_or_default(),
        &fields::GATEWAY_SERVICES,
    )
    .map_err(|e| ApiError::internal(e.consul_message()))?;
    let query = Query::CatalogService {
        service: gateway,
        select: Select::default(),
    };
    empty(&st, &uri, &headers, query).await
}
