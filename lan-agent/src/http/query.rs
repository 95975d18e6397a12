//! `/v1/query`: prepared queries. Create (`POST /v1/query`, answering `{"ID": ...}`),
//! list, read, update and delete by ID, and `execute`/`explain` by ID or name, as Consul
//! serves them. Bodies decode with Consul's case-insensitive field matching.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use cairn_shared::api::{PreparedQuery, QueryExecuteResponse, QuerySource};
use cairn_shared::rpc::{
    Query, QueryMeta, QueryOp, QueryOptions, QueryResult, WriteOp, WriteRequest, WriteResult,
};
use serde::Serialize;
use serde_json::json;

use super::error::{ApiError, ApiResult};
use super::routes::Routes;
use super::{HttpState, Params, content_length, methods, query_json, read_body, unexpected};

pub(super) fn router() -> Routes {
    Routes::new()
        .route("/v1/query", methods(get(list).post(create), "GET,POST"))
        .route("/v1/query/", methods(get(list).post(create), "GET,POST"))
        .route("/v1/query/{*rest}", any(specific))
}

/// Consul's limit on a request body.
const MAX_BODY: usize = 512 * 1024;

async fn body_query(req: Request) -> Result<Option<PreparedQuery>, ApiError> {
    let declared = content_length(req.headers());
    let body = read_body(req.into_body(), declared, MAX_BODY, |n| {
        ApiError::too_large(format!("Request body({n} bytes) too large"))
    })
    .await?;
    if body.is_empty() {
        return Ok(None);
    }
    super::decode::from_slice(&body)
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("Request decode failed: {e}")))
}

async fn write(
    st: &HttpState,
    options: QueryOptions,
    op: QueryOp,
    query: PreparedQuery,
) -> Result<String, ApiError> {
    let result = st
        .rpc
        .write(WriteRequest {
            datacenter: options.datacenter,
            token: options.token,
            op: WriteOp::PreparedQuery {
                op,
                query: Box::new(query),
            },
        })
        .await?;
    match result {
        WriteResult::QueryId(id) => Ok(id),
        other => Err(ApiError::internal(format!(
            "unexpected answer to a prepared query write: {other:?}"
        ))),
    }
}

async fn create(State(st): State<HttpState>, req: Request) -> ApiResult {
    let params = Params::parse(req.uri().query());
    let options = params.query_options(req.headers())?;
    let query = body_query(req).await?.unwrap_or_default();
    let id = write(&st, options, QueryOp::Create, query).await?;
    Ok(super::json(
        &st,
        &params,
        StatusCode::OK,
        &json!({ "ID": id }),
    ))
}

async fn list(State(st): State<HttpState>, req: Request) -> ApiResult {
    let (params, resp) = super::read(&st, req.uri(), req.headers(), Query::PreparedQueries).await?;
    match resp.result {
        QueryResult::PreparedQueries(q) => Ok(query_json(&st, &params, &resp.meta, &q)),
        other => Err(unexpected("a prepared query listing", &other)),
    }
}

/// `/v1/query/:id`, `/v1/query/:id-or-name/execute`, `/v1/query/:id-or-name/explain`.
async fn specific(State(st): State<HttpState>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let rest = String::from_utf8_lossy(&super::percent_decode(
        path.strip_prefix("/v1/query/").unwrap_or_default(),
    ))
    .into_owned();
    let (target, action, allowed) = if let Some(id) = rest.strip_suffix("/execute") {
        (id.to_string(), "execute", "GET")
    } else if let Some(id) = rest.strip_suffix("/explain") {
        (id.to_string(), "explain", "GET")
    } else {
        (rest, "", "GET,PUT,DELETE")
    };
    let method = req.method().clone();
    if method == Method::OPTIONS {
        return (StatusCode::OK, [("allow", format!("OPTIONS,{allowed}"))]).into_response();
    }
    if !allowed.split(',').any(|m| m == method.as_str()) {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [("allow", format!("OPTIONS,{allowed}"))],
            format!("method {method} not allowed"),
        )
            .into_response();
    }
    let outcome = match (action, method) {
        ("execute", _) => execute(&st, req, &target).await,
        ("explain", _) => explain(&st, req, &target).await,
        (_, Method::GET) => get_one(&st, req, &target).await,
        (_, Method::PUT) => update(&st, req, &target).await,
        _ => delete(&st, req, &target).await,
    };
    outcome.unwrap_or_else(IntoResponse::into_response)
}

async fn get_one(st: &HttpState, req: Request, id: &str) -> ApiResult {
    let q = Query::PreparedQuery { id: id.to_string() };
    let (params, resp) = super::read(st, req.uri(), req.headers(), q).await?;
    match resp.result {
        QueryResult::PreparedQueries(q) => Ok(query_json(st, &params, &resp.meta, &q)),
        other => Err(unexpected("a prepared query", &other)),
    }
}

async fn update(st: &HttpState, req: Request, id: &str) -> ApiResult {
    let params = Params::parse(req.uri().query());
    let options = params.query_options(req.headers())?;
    let mut query = body_query(req).await?.unwrap_or_default();
    // The ID is the one in the path, whatever the body says.
    query.id = id.to_string();
    write(st, options, QueryOp::Update, query).await?;
    Ok(StatusCode::OK.into_response())
}

async fn delete(st: &HttpState, req: Request, id: &str) -> ApiResult {
    let params = Params::parse(req.uri().query());
    let options = params.query_options(req.headers())?;
    let query = PreparedQuery {
        id: id.to_string(),
        ..PreparedQuery::default()
    };
    write(st, options, QueryOp::Delete, query).await?;
    Ok(StatusCode::OK.into_response())
}

/// This agent as the asker of a query.
fn agent(st: &HttpState) -> QuerySource {
    QuerySource {
        node: st.info.node_name.clone(),
        datacenter: st.info.datacenter.clone(),
        segment: String::new(),
    }
}

/// The request's source address for `near=_ip`: `X-Forwarded-For` first, as Consul.
fn source_ip(headers: &HeaderMap, peer: Option<SocketAddr>) -> Option<String> {
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .or_else(|| peer.map(|p| p.ip().to_string()))
}

/// `?limit`, with Go's `strconv.Atoi` error text as Consul answers; zero or below is none.
fn limit(params: &Params) -> Result<usize, ApiError> {
    match params.value("limit") {
        None | Some("") => Ok(0),
        Some(v) => v
            .parse::<i64>()
            .map(|n| usize::try_from(n).unwrap_or(0))
            .map_err(|_| {
                ApiError::internal(format!("strconv.Atoi: parsing \"{v}\": invalid syntax"))
            }),
    }
}

/// A query answer with Consul's query meta fields in the body after its own, as Go's
/// struct embedding puts them there.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct WithMeta<'a, T: Serialize> {
    #[serde(flatten)]
    body: &'a T,
    index: u64,
    /// Nanoseconds, as Go's `time.Duration`.
    last_contact: u64,
    known_leader: bool,
    consistency_level: &'static str,
}

fn with_meta<'a, T: Serialize>(body: &'a T, meta: &QueryMeta) -> WithMeta<'a, T> {
    WithMeta {
        body,
        index: meta.index.max(1),
        last_contact: meta.last_contact_ms.saturating_mul(1_000_000),
        known_leader: meta.known_leader,
        consistency_level: meta.consistency.header_value(),
    }
}

/// `/v1/query/:name/explain`'s body.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Explained {
    query: PreparedQuery,
}

async fn execute(st: &HttpState, req: Request, id_or_name: &str) -> ApiResult {
    let params = Params::parse(req.uri().query());
    if params.value("connect").is_some_and(|v| v != "false") {
        return Err(ApiError::bad_request(
            "Connect-capable prepared queries are not supported",
        ));
    }
    let limit = limit(&params)?;
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let query = Query::PreparedQueryExecute {
        id_or_name: id_or_name.to_string(),
        limit,
        agent: agent(st),
        source_ip: source_ip(req.headers(), peer),
    };
    let (params, resp) = super::read(st, req.uri(), req.headers(), query).await?;
    match resp.result {
        QueryResult::PreparedQueryExecute(r) => {
            let r: QueryExecuteResponse = *r;
            Ok(query_json(
                st,
                &params,
                &resp.meta,
                &with_meta(&r, &resp.meta),
            ))
        }
        other => Err(unexpected("a prepared query execution", &other)),
    }
}

async fn explain(st: &HttpState, req: Request, id_or_name: &str) -> ApiResult {
    let query = Query::PreparedQueryExplain {
        id_or_name: id_or_name.to_string(),
        agent: agent(st),
    };
    let uri = req.uri().clone();
    let (params, resp) = super::read(st, &uri, req.headers(), query).await?;
    match resp.result {
        QueryResult::PreparedQueryExplain(q) => Ok(query_json(
            st,
            &params,
            &resp.meta,
            &with_meta(&Explained { query: *q }, &resp.meta),
        )),
        other => Err(unexpected("a prepared query explanation", &other)),
    }
}
