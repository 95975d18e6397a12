//! The HTTP API on `:8500`, with Consul's paths, JSON shapes, headers and status codes.
//!
//! Handlers translate requests into [`ReadRequest`]s and [`WriteRequest`]s for the agent's
//! [`Rpc`] (the local server on a server agent, a remote one on a client) and shape the
//! answers. One file per resource; this file holds the router, the Consul-wide rules
//! (method checks with `Allow`, the unprintable-path filter, `X-Consul-*` headers,
//! `?pretty`) and the response helpers.
//!
//! [`ReadRequest`]: cairn_shared::rpc::ReadRequest
//! [`WriteRequest`]: cairn_shared::rpc::WriteRequest

mod acl;
mod agent;
mod agent_local;
pub(crate) use agent::civil_from_days;
mod catalog;
mod config;
mod coordinate;
pub mod decode;
pub mod error;
mod event;
mod guard;
mod health;
mod kv;
mod members;
mod mesh;
mod operator;
pub mod params;
mod query;
mod routes;
mod session;
mod status;
pub mod tls;
mod txn;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use cairn_shared::rpc::{Query, QueryMeta, QueryResult, ReadRequest, ReadResponse};
use routes::Routes;
use serde::Serialize;

use crate::config::Limits;
use crate::server::Rpc;
use crate::telemetry::{Telemetry, names};
use error::ApiError;
pub use params::Params;

/// What the agent tells `/v1/agent/self` about itself.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub node_name: String,
    pub node_id: String,
    pub datacenter: String,
    pub server: bool,
    pub dev: bool,
    pub node_meta: BTreeMap<String, String>,
    /// Sanitized runtime configuration for `DebugConfig`.
    pub debug_config: serde_json::Value,
}

/// Everything a handler needs.
#[derive(Debug, Clone)]
pub struct HttpState {
    pub rpc: Arc<dyn Rpc>,
    /// This agent's own services and checks.
    pub local: Arc<crate::local::LocalAgent>,
    /// User events this agent keeps and fires.
    pub events: Arc<crate::events::Events>,
    /// The LAN pool: members, joins, leaves, keyring.
    pub gossip: crate::gossip::Gossip,
    /// Cancelled to stop the agent (`/v1/agent/leave`).
    pub shutdown: tokio_util::sync::CancellationToken,
    pub reload: ReloadFn,
    pub info: Arc<AgentInfo>,
    pub telemetry: Telemetry,
    pub limits: Limits,
    pub stats: StatsFn,
    pub started: Instant,
    /// The agent's ACL tokens and its checks of its own endpoints.
    pub acl: Arc<crate::acl::AgentAcl>,
}

/// Sections of `Stats` in `/v1/agent/self`, each a map of string values.
pub type Stats = BTreeMap<String, BTreeMap<String, String>>;

/// Re-reads the agent's config files (`/v1/agent/reload`, SIGHUP).
#[derive(Clone)]
pub struct ReloadFn(pub Arc<dyn Fn() -> Result<(), String> + Send + Sync>);

impl std::fmt::Debug for ReloadFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReloadFn")
    }
}

/// Produces live statistics for `/v1/agent/self` and `cairn info`.
#[derive(Clone)]
pub struct StatsFn(pub Arc<dyn Fn() -> Stats + Send + Sync>);

impl std::fmt::Debug for StatsFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatsFn")
    }
}

/// Every API route, with its path.
fn api_routes() -> Routes {
    Routes::new()
        .route("/v1/kv", methods(kv::routes(), "GET,PUT,DELETE"))
        .route("/v1/kv/", methods(kv::routes(), "GET,PUT,DELETE"))
        .route("/v1/kv/{*key}", methods(kv::routes(), "GET,PUT,DELETE"))
        .route("/v1/txn", methods(txn::routes(), "PUT"))
        .merge(catalog::router())
        .merge(health::router())
        .merge(session::router())
        .merge(status::router())
        .merge(agent::router())
        .merge(agent_local::router())
        .merge(event::router())
        .merge(coordinate::router())
        .merge(members::router())
        .merge(operator::router())
        .merge(query::router())
        .merge(config::router())
        .merge(mesh::router())
        .merge(acl::router())
        .route("/", methods(get(index), "GET"))
}

/// The path of every route the API serves, as registered (`{name}` and `{*rest}` for
/// parameters).
pub fn route_paths() -> Vec<String> {
    api_routes().into_parts().1
}

/// The full API router.
pub fn router(state: HttpState) -> Router {
    api_routes()
        .into_parts()
        .0
        .fallback(unknown_path)
        .layer(middleware::from_fn_with_state(state.clone(), guard::guard))
        .layer(middleware::from_fn_with_state(state.clone(), acl_defaults))
        .layer(middleware::from_fn(consul_rules))
        .with_state(state)
}

/// Consul's method handling: `OPTIONS` answers with `Allow`, anything not listed is a 405
/// with `Allow: OPTIONS,<methods>` and the body `method X not allowed`.
pub(crate) fn methods(
    router: MethodRouter<HttpState>,
    allowed: &'static str,
) -> MethodRouter<HttpState> {
    let allow = format!("OPTIONS,{allowed}");
    let allow2 = allow.clone();
    router
        .options(move || {
            let allow = allow.clone();
            async move { (StatusCode::OK, [("allow", allow)]).into_response() }
        })
        .fallback(move |method: Method| {
            let allow = allow2.clone();
            async move {
                (
                    StatusCode::METHOD_NOT_ALLOWED,
                    [("allow", allow)],
                    format!("method {method} not allowed"),
                )
                    .into_response()
            }
        })
}

/// `GET /`: Consul redirects to its UI; until Cairn has one, a small page that answers 200,
/// so an HTTP check pointed at the agent itself passes as it does on Consul.
async fn index(State(st): State<HttpState>) -> Response {
    let info = &st.info;
    // No node name: the page needs no token, and with ACLs on that name is protected.
    let body = format!(
        "<!doctype html>\n<title>Cairn</title>\n<h1>Cairn agent</h1>\n\
         <p>Datacenter {dc}, version {version}. The web UI is not part of this build; \
         the HTTP API is under <a href=\"/v1/agent/self\">/v1/</a>.</p>\n",
        dc = html_escape(&info.datacenter),
        version = crate::version::VERSION,
    );
    (
        StatusCode::OK,
        [("content-type", "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn unknown_path(req: Request) -> Response {
    let body = if req.uri().path().contains("/v1/") {
        "Invalid URL path: not a recognized HTTP API endpoint\n"
    } else {
        "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n"
    };
    (StatusCode::NOT_FOUND, body).into_response()
}

/// A request without a token acts as the agent's `default` token; every answer says
/// which default policy applies (`X-Consul-Default-ACL-Policy`, sent with ACLs off too).
async fn acl_defaults(State(st): State<HttpState>, mut req: Request, next: Next) -> Response {
    let given = params::token(&Params::parse(req.uri().query()), req.headers());
    if given.is_empty() {
        let default = st.acl.default_token();
        if let Ok(v) = HeaderValue::from_str(&default)
            && !default.is_empty()
        {
            req.headers_mut().insert("x-consul-token", v);
        }
    }
    let mut resp = next.run(req).await;
    let policy = if !st.acl.enabled() || st.acl.settings.default_allow {
        "allow"
    } else {
        "deny"
    };
    resp.headers_mut().insert(
        "x-consul-default-acl-policy",
        HeaderValue::from_static(policy),
    );
    resp
}

/// Rules Consul applies to every request: paths with unprintable characters (after
/// percent-decoding, so `%0a` counts) get an empty 400;
/// requests are counted and timed.
async fn consul_rules(req: Request, next: Next) -> Response {
    if has_unprintable(req.uri().path()) {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let method = req.method().clone();
    let started = Instant::now();
    let mut resp = next.run(req).await;
    // A refused oversize body was not read to the end; the connection cannot be reused.
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
        resp.headers_mut()
            .insert("connection", HeaderValue::from_static("close"));
    }
    let status = resp.status().as_u16().to_string();
    metrics::counter!(names::HTTP_REQUESTS, "method" => method.to_string(), "code" => status)
        .increment(1);
    metrics::histogram!(names::HTTP_REQUEST_SECONDS, "method" => method.to_string())
        .record(started.elapsed().as_secs_f64());
    resp
}

fn has_unprintable(raw_path: &str) -> bool {
    let decoded = percent_decode(raw_path);
    String::from_utf8_lossy(&decoded)
        .chars()
        .any(|c| c.is_control() || (c.is_whitespace() && c != ' '))
}

fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Whether JSON answers are indented: `?pretty` anywhere, or always on a dev agent, as Consul.
fn pretty(state: &HttpState, params: &Params) -> bool {
    state.info.dev || params.has("pretty")
}

/// Serialises `body` as Consul does: compact, or indented with four spaces plus a newline.
pub(crate) fn json_body<T: Serialize + ?Sized>(body: &T, pretty: bool) -> Vec<u8> {
    if !pretty {
        return serde_json::to_vec(body).unwrap_or_default();
    }
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    if body.serialize(&mut ser).is_err() {
        return Vec::new();
    }
    out.push(b'\n');
    out
}

/// A JSON answer with the given status.
pub(crate) fn json<T: Serialize + ?Sized>(
    state: &HttpState,
    params: &Params,
    status: StatusCode,
    body: &T,
) -> Response {
    (
        status,
        [("content-type", "application/json")],
        json_body(body, pretty(state, params)),
    )
        .into_response()
}

/// Adds the `X-Consul-*` headers every read answers with.
pub(crate) fn set_meta(headers: &mut HeaderMap, meta: &QueryMeta) {
    let put = |h: &mut HeaderMap, k: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    put(headers, "x-consul-index", meta.index.max(1).to_string());
    put(
        headers,
        "x-consul-knownleader",
        meta.known_leader.to_string(),
    );
    put(
        headers,
        "x-consul-lastcontact",
        meta.last_contact_ms.to_string(),
    );
    put(
        headers,
        "x-consul-effective-consistency",
        meta.consistency.header_value().to_string(),
    );
    if meta.filtered_by_acls {
        put(
            headers,
            "x-consul-results-filtered-by-acls",
            "true".to_string(),
        );
    }
}

/// A read's answer: JSON plus its meta headers.
pub(crate) fn query_json<T: Serialize + ?Sized>(
    state: &HttpState,
    params: &Params,
    meta: &QueryMeta,
    body: &T,
) -> Response {
    let mut resp = json(state, params, StatusCode::OK, body);
    set_meta(resp.headers_mut(), meta);
    resp
}

/// A read that found nothing: 404 with an empty body, but still with its index so the
/// client can block on it.
pub(crate) fn query_not_found(meta: &QueryMeta) -> Response {
    let mut resp = StatusCode::NOT_FOUND.into_response();
    set_meta(resp.headers_mut(), meta);
    resp
}

/// The decoded path after `prefix` (`/v1/session/info/` → the session ID); `missing` is
/// the 400 message when it is empty.
pub(crate) fn path_tail(uri: &Uri, prefix: &str, missing: &str) -> Result<String, ApiError> {
    let raw = uri.path().strip_prefix(prefix).unwrap_or_default();
    let tail = String::from_utf8_lossy(&percent_decode(raw)).into_owned();
    if tail.is_empty() {
        return Err(ApiError::bad_request(missing));
    }
    Ok(tail)
}

/// Runs a read for a request: parses the common query options, asks the agent's RPC.
pub(crate) async fn read(
    st: &HttpState,
    uri: &Uri,
    headers: &HeaderMap,
    query: Query,
) -> Result<(Params, ReadResponse), ApiError> {
    let params = Params::parse(uri.query());
    let mut options = params.query_options(headers)?;
    if options.near == "_agent" {
        options.near = st.info.node_name.clone();
    }
    let mut resp = st.rpc.read(ReadRequest { query, options }).await?;
    if params.value("peer").is_some() {
        without_peer_data(&mut resp.result);
    }
    Ok((params, resp))
}

/// `?peer=NAME` asks for what a cluster peer exported; Cairn has no peerings, so there is
/// nothing, as Consul answers for a peer that exported nothing (the index still blocks).
fn without_peer_data(result: &mut QueryResult) {
    match result {
        QueryResult::Nodes(v) => v.clear(),
        QueryResult::ServiceTags(v) => v.clear(),
        QueryResult::ServiceNodes(v) => v.clear(),
        QueryResult::ServiceEntries(v) => v.clear(),
        QueryResult::Checks(v) => v.clear(),
        QueryResult::NodeServices(v) => *v = None,
        QueryResult::NodeServiceList(v) => *v = None,
        _ => {}
    }
}

/// An answer of the wrong kind from the server: a bug, reported as a 500.
pub(crate) fn unexpected(what: &str, result: &QueryResult) -> ApiError {
    ApiError::internal(format!("unexpected answer to {what}: {result:?}"))
}

/// Reads a request body up to `limit` bytes; beyond it, `too_large` builds the 413 from the
/// size (the declared `Content-Length`, or what had arrived when the limit was crossed).
pub(crate) async fn read_body(
    body: Body,
    declared: Option<u64>,
    limit: usize,
    too_large: impl Fn(u64) -> ApiError,
) -> Result<Bytes, ApiError> {
    if let Some(len) = declared
        && len > limit as u64
    {
        return Err(too_large(len));
    }
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large(declared.unwrap_or(limit as u64 + 1)))
}

/// The `Content-Length` a request declared, if any.
/// Reads a JSON body of at most `limit` bytes and decodes it the way Consul's Go decoder
/// would, with Consul's `Request decode failed` 400 for bad JSON.
pub(crate) async fn decode_json_body<T: serde::de::DeserializeOwned>(
    req: Request,
    limit: usize,
) -> Result<T, ApiError> {
    let declared = content_length(req.headers());
    let body = read_body(req.into_body(), declared, limit, |n| {
        ApiError::too_large(format!("Request body({n} bytes) too large"))
    })
    .await?;
    decode::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("Request decode failed: {}", decode::go_message(&e)))
    })
}

pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unprintable_paths_are_detected_after_decoding() {
        assert!(has_unprintable("/v1/kv/a%0ab"));
        assert!(has_unprintable("/v1/kv/a%0Ab"));
        assert!(has_unprintable("/v1/kv/%09"));
        assert!(has_unprintable("/v1/kv/%C2%A0"));
        assert!(!has_unprintable("/v1/kv/a%20b"));
        assert!(!has_unprintable("/v1/kv/caf%C3%A9"));
        assert!(!has_unprintable("/v1/kv/100%"));
    }

    #[test]
    fn pretty_json_uses_four_spaces_and_a_newline() {
        let body = json_body(&serde_json::json!({"A": [1]}), true);
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "{\n    \"A\": [\n        1\n    ]\n}\n"
        );
        assert_eq!(json_body(&serde_json::json!({"A": 1}), false), b"{\"A\":1}");
    }
}
