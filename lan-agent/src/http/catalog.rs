//! `/v1/catalog/*`: register and deregister, and the node and service listings with
//! `?tag`, `?node-meta` and `?filter`, all blocking.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::{get, put};
use cairn_shared::api::{DeregisterRequest, RegisterRequest};
use cairn_shared::rpc::{Query, QueryOptions, QueryResult, Select, WriteOp, WriteRequest};

use super::error::{ApiError, ApiResult};
use super::routes::Routes;
use super::{HttpState, Params, json, methods, path_tail, query_json, read, read_body, unexpected};

pub(super) fn router() -> Routes {
    let mut r = Routes::new()
        .route("/v1/catalog/register", methods(put(register), "PUT"))
        .route("/v1/catalog/deregister", methods(put(deregister), "PUT"))
        .route("/v1/catalog/datacenters", methods(get(datacenters), "GET"))
        .route("/v1/catalog/nodes", methods(get(nodes), "GET"))
        .route("/v1/catalog/services", methods(get(services), "GET"));
    for (path, handler) in [
        ("service", get(service)),
        ("node", get(node)),
        ("node-services", get(node_services)),
    ] {
        r = r
            .route(
                &format!("/v1/catalog/{path}/"),
                methods(handler.clone(), "GET"),
            )
            .route(
                &format!("/v1/catalog/{path}/{{*name}}"),
                methods(handler, "GET"),
            );
    }
    r
}

/// `?tag` (repeatable), `?node-meta=k:v` (repeatable) and `?filter`.
pub(super) fn select(params: &Params) -> Select {
    Select {
        tags: params.all("tag").map(str::to_string).collect(),
        node_meta: params
            .all("node-meta")
            .map(|kv| match kv.split_once(':') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.to_string(), String::new()),
            })
            .collect(),
        filter: params.get("filter").unwrap_or_default().to_string(),
    }
}

async fn decode_write<T: serde::de::DeserializeOwned>(
    st: &HttpState,
    req: Request,
) -> Result<(Params, QueryOptions, T), ApiError> {
    let params = Params::parse(req.uri().query());
    let options = params.query_options(req.headers())?;
    let declared = super::content_length(req.headers());
    let body = read_body(req.into_body(), declared, st.limits.txn_max_req_len, |n| {
        ApiError::too_large(format!("Request body({n} bytes) too large"))
    })
    .await?;
    let value: T = super::decode::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?;
    Ok((params, options, value))
}

/// The datacenter a catalog write is for, as Consul's `parseDC` picks it: `?dc` over the
/// body's `Datacenter` over the agent's own.
fn write_dc(st: &HttpState, options: &QueryOptions, body_dc: &str) -> String {
    [options.datacenter.as_str(), body_dc]
        .into_iter()
        .find(|d| !d.is_empty())
        .unwrap_or(&st.info.datacenter)
        .to_string()
}

/// Cairn runs no service mesh: a proxy, gateway or sidecar registration is refused rather
/// than stored as a plain service.
fn refuse_mesh(raw: &serde_json::Value) -> Result<(), ApiError> {
    let field = |obj: &serde_json::Value, name: &str| -> Option<serde_json::Value> {
        obj.as_object()?
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let Some(svc) = field(raw, "Service").filter(|s| s.is_object()) else {
        return Ok(());
    };
    if let Some(kind) = field(&svc, "Kind").and_then(|k| k.as_str().map(str::to_string))
        && !kind.is_empty()
    {
        return Err(ApiError::bad_request(format!(
            "Invalid service kind: \"{kind}\" (mesh gateways and proxies are not supported)"
        )));
    }
    let asks = |v: Option<serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Object(m)) => !m.is_empty(),
        Some(_) => true,
    };
    if asks(field(&svc, "Proxy")) || asks(field(&svc, "Connect")) {
        return Err(ApiError::bad_request(
            "Connect proxies and sidecars are not supported by this agent",
        ));
    }
    Ok(())
}

async fn register(State(st): State<HttpState>, req: Request) -> ApiResult {
    let (params, options, raw): (_, _, serde_json::Value) = decode_write(&st, req).await?;
    refuse_mesh(&raw)?;
    let mut body: RegisterRequest = super::decode::from_value(raw)
        .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))?;
    body.datacenter = write_dc(&st, &options, &body.datacenter);
    let datacenter = body.datacenter.clone();
    st.rpc
        .write(WriteRequest {
            datacenter,
            token: options.token,
            op: WriteOp::CatalogRegister(Box::new(body)),
        })
        .await?;
    Ok(json(&st, &params, StatusCode::OK, &true))
}

async fn deregister(State(st): State<HttpState>, req: Request) -> ApiResult {
    let (params, options, mut body): (_, _, DeregisterRequest) = decode_write(&st, req).await?;
    body.datacenter = write_dc(&st, &options, &body.datacenter);
    st.rpc
        .write(WriteRequest {
            datacenter: body.datacenter.clone(),
            token: options.token,
            op: WriteOp::CatalogDeregister(body),
        })
        .await?;
    Ok(json(&st, &params, StatusCode::OK, &true))
}

async fn datacenters(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let (params, resp) = read(&st, &uri, &headers, Query::Datacenters).await?;
    match resp.result {
        QueryResult::Datacenters(dcs) => Ok(json(&st, &params, StatusCode::OK, &dcs)),
        other => Err(unexpected("a datacenter listing", &other)),
    }
}

async fn nodes(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let select = select(&Params::parse(uri.query()));
    let (params, resp) = read(&st, &uri, &headers, Query::CatalogNodes { select }).await?;
    match resp.result {
        QueryResult::Nodes(n) => Ok(query_json(&st, &params, &resp.meta, &n)),
        other => Err(unexpected("a node listing", &other)),
    }
}

async fn services(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let select = select(&Params::parse(uri.query()));
    let (params, resp) = read(&st, &uri, &headers, Query::CatalogServices { select }).await?;
    match resp.result {
        QueryResult::ServiceTags(m) => Ok(query_json(&st, &params, &resp.meta, &m)),
        other => Err(unexpected("a service listing", &other)),
    }
}

async fn service(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let service = path_tail(&uri, "/v1/catalog/service/", "Missing service name")?;
    let select = select(&Params::parse(uri.query()));
    let (params, resp) = read(
        &st,
        &uri,
        &headers,
        Query::CatalogService { service, select },
    )
    .await?;
    match resp.result {
        QueryResult::ServiceNodes(n) => Ok(query_json(&st, &params, &resp.meta, &n)),
        other => Err(unexpected("a service read", &other)),
    }
}

async fn node(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let node = path_tail(&uri, "/v1/catalog/node/", "Missing node name")?;
    let select = select(&Params::parse(uri.query()));
    let (params, resp) = read(&st, &uri, &headers, Query::CatalogNode { node, select }).await?;
    match resp.result {
        QueryResult::NodeServices(n) => Ok(query_json(&st, &params, &resp.meta, &n)),
        other => Err(unexpected("a node read", &other)),
    }
}

async fn node_services(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let node = path_tail(&uri, "/v1/catalog/node-services/", "Missing node name")?;
    let select = select(&Params::parse(uri.query()));
    let query = Query::CatalogNodeServices { node, select };
    let (params, resp) = read(&st, &uri, &headers, query).await?;
    match resp.result {
        QueryResult::NodeServiceList(n) => Ok(query_json(&st, &params, &resp.meta, &n)),
        other => Err(unexpected("a node read", &other)),
    }
}
