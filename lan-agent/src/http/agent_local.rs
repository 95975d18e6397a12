//! The agent's own services and checks: `/v1/agent/{services,service/:id,checks}`,
//! registration and deregistration, TTL updates, maintenance, local health, reload.
//!
//! These are answered by this agent from its local state, never by the servers, as in
//! Consul; anti-entropy carries changes to the catalog.

use std::hash::{Hash, Hasher};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use cairn_shared::api::{AgentService, CheckStatus, HealthCheck};
use serde::Deserialize;

use cairn_shared::acl::{Access, Resource};

use super::error::{ApiError, ApiResult};
use super::guard::Authz;
use super::routes::Routes;
use super::{HttpState, Params, json, methods, path_tail};
use crate::filter::fields::{self, Fields};
use crate::local::definition::{CheckType, ServiceDefinition};
use crate::local::state::Source;
use crate::local::{LocalError, NODE_MAINT_ID, SERVICE_MAINT_PREFIX};

pub(super) fn router() -> Routes {
    let mut r = Routes::new()
        .route("/v1/agent/services", methods(get(services), "GET"))
        .route("/v1/agent/checks", methods(get(checks), "GET"))
        .route(
            "/v1/agent/service/register",
            methods(put(register_service), "PUT"),
        )
        .route(
            "/v1/agent/check/register",
            methods(put(register_check), "PUT"),
        )
        .route(
            "/v1/agent/maintenance",
            methods(put(node_maintenance), "PUT"),
        )
        .route("/v1/agent/reload", methods(put(reload), "PUT"));
    let prefixed = [
        (
            "/v1/agent/service/deregister",
            put(deregister_service),
            "PUT",
        ),
        (
            "/v1/agent/service/maintenance",
            put(service_maintenance),
            "PUT",
        ),
        ("/v1/agent/check/deregister", put(deregister_check), "PUT"),
        ("/v1/agent/check/pass", put(check_pass), "PUT"),
        ("/v1/agent/check/warn", put(check_warn), "PUT"),
        ("/v1/agent/check/fail", put(check_fail), "PUT"),
        ("/v1/agent/check/update", put(check_update), "PUT"),
        ("/v1/agent/health/service/id", get(health_by_id), "GET"),
        ("/v1/agent/health/service/name", get(health_by_name), "GET"),
        ("/v1/agent/service", get(service), "GET"),
    ];
    for (path, handler, allow) in prefixed {
        r = r
            .route(&format!("{path}/"), methods(handler.clone(), allow))
            .route(&format!("{path}/{{*id}}"), methods(handler, allow));
    }
    r
}

impl From<LocalError> for ApiError {
    fn from(e: LocalError) -> Self {
        let status = match &e {
            LocalError::Invalid(_) => StatusCode::BAD_REQUEST,
            LocalError::NotFound(_) => StatusCode::NOT_FOUND,
            LocalError::Refused(_) | LocalError::Persist(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// An empty 200, what Consul answers for agent writes.
fn ok() -> ApiResult {
    Ok(StatusCode::OK.into_response())
}

fn filtered<T: serde::Serialize>(
    params: &Params,
    fields: &Fields,
    items: Vec<(String, T)>,
) -> ApiResult2<T> {
    let expr = params.get("filter").unwrap_or_default();
    let filter = crate::filter::parse_for(expr, fields)
        .map_err(|e| ApiError::internal(e.consul_message()))?;
    Ok(items
        .into_iter()
        .filter(|(_, v)| serde_json::to_value(v).is_ok_and(|j| filter.matches(&j)))
        .collect())
}

type ApiResult2<T> = Result<std::collections::BTreeMap<String, T>, ApiError>;

async fn services(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let params = Params::parse(uri.query());
    let authz = Authz::of(&st, &uri, &headers).await?;
    let dc = &st.info.datacenter;
    let items = st
        .local
        .state
        .services()
        .into_iter()
        .filter(|s| authz.can(Resource::Service, &s.service.service, Access::Read))
        .map(|s| (s.service.id.clone(), AgentService::new(&s.service, dc)))
        .collect();
    let map = filtered(&params, &fields::AGENT_SERVICES, items)?;
    Ok(json(&st, &params, StatusCode::OK, &map))
}

async fn checks(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let params = Params::parse(uri.query());
    let authz = Authz::of(&st, &uri, &headers).await?;
    let items = st
        .local
        .state
        .checks()
        .into_iter()
        .filter(|c| check_readable(&authz, &c.check))
        .map(|c| (c.check.check_id.clone(), c.check))
        .collect();
    let map = filtered(&params, &fields::CHECKS, items)?;
    Ok(json(&st, &params, StatusCode::OK, &map))
}

/// A node check needs `node:read`; a service's check needs `service:read` on it.
fn check_readable(authz: &Authz, c: &HealthCheck) -> bool {
    if c.service_id.is_empty() {
        authz.can(Resource::Node, &c.node, Access::Read)
    } else {
        authz.can(Resource::Service, &c.service_name, Access::Read)
    }
}

/// A stable hash of the service as shown, for `ContentHash`.
fn content_hash(svc: &AgentService) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(svc).unwrap_or_default().hash(&mut h);
    format!("{:016x}", h.finish())
}

async fn service(State(st): State<HttpState>, uri: Uri) -> ApiResult {
    let id = path_tail(&uri, "/v1/agent/service/", "Missing service ID")?;
    let params = Params::parse(uri.query());
    let Some(s) = st.local.state.service(&id) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown service ID: {id}"),
        ));
    };
    let mut svc = AgentService::new(&s.service, &st.info.datacenter);
    svc.content_hash = content_hash(&svc);
    let mut resp = json(&st, &params, StatusCode::OK, &svc);
    if let Ok(v) = HeaderValue::from_str(&svc.content_hash) {
        resp.headers_mut().insert("x-consul-contenthash", v);
    }
    Ok(resp)
}

async fn decode<T: serde::de::DeserializeOwned>(
    st: &HttpState,
    req: Request,
) -> Result<T, ApiError> {
    super::decode_json_body(req, st.limits.txn_max_req_len).await
}

async fn register_service(State(st): State<HttpState>, req: Request) -> ApiResult {
    let params = Params::parse(req.uri().query());
    let token = super::params::token(&params, req.headers());
    let authz = Authz::of(&st, req.uri(), req.headers()).await?;
    let replace = matches!(
        params.get("replace-existing-checks"),
        Some("" | "true" | "1")
    );
    let def: ServiceDefinition = decode(&st, req).await?;
    authz.require(Resource::Service, &def.name, Access::Write)?;
    let token = if def.token.is_empty() {
        token
    } else {
        def.token.clone()
    };
    st.local.add_service(&def, &token, Source::Api, replace)?;
    ok()
}

async fn deregister_service(State(st): State<HttpState>, uri: Uri) -> ApiResult {
    let id = path_tail(&uri, "/v1/agent/service/deregister/", "Missing service ID")?;
    st.local.remove_service(&id)?;
    ok()
}

async fn register_check(State(st): State<HttpState>, req: Request) -> ApiResult {
    let params = Params::parse(req.uri().query());
    let token = super::params::token(&params, req.headers());
    let authz = Authz::of(&st, req.uri(), req.headers()).await?;
    let def: CheckType = decode(&st, req).await?;
    match def.service_id.as_str() {
        "" => authz.require(Resource::Node, &st.info.node_name, Access::Write)?,
        id => {
            let name = st
                .local
                .state
                .service(id)
                .map_or_else(|| id.to_string(), |s| s.service.service);
            authz.require(Resource::Service, &name, Access::Write)?;
        }
    }
    let token = if def.token.is_empty() {
        token
    } else {
        def.token.clone()
    };
    st.local.add_check(&def, &token, Source::Api)?;
    ok()
}

async fn deregister_check(State(st): State<HttpState>, uri: Uri) -> ApiResult {
    let id = path_tail(&uri, "/v1/agent/check/deregister/", "Missing check ID")?;
    st.local.remove_check(&id)?;
    ok()
}

async fn ttl(st: &HttpState, uri: &Uri, verb: &str, status: CheckStatus) -> ApiResult {
    let id = path_tail(uri, &format!("/v1/agent/check/{verb}/"), "Missing check ID")?;
    let note = Params::parse(uri.query())
        .get("note")
        .unwrap_or_default()
        .to_string();
    st.local.update_ttl(&id, status, &note)?;
    ok()
}

async fn check_pass(State(st): State<HttpState>, uri: Uri) -> ApiResult {
    ttl(&st, &uri, "pass", CheckStatus::Passing).await
}

async fn check_warn(State(st): State<HttpState>, uri: Uri) -> ApiResult {
    ttl(&st, &uri, "warn", CheckStatus::Warning).await
}

async fn check_fail(State(st): State<HttpState>, uri: Uri) -> ApiResult {
    ttl(&st, &uri, "fail", CheckStatus::Critical).await
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct UpdateBody {
    status: String,
    output: String,
}

async fn check_update(State(st): State<HttpState>, req: Request) -> ApiResult {
    let id = path_tail(req.uri(), "/v1/agent/check/update/", "Missing check ID")?;
    let body: UpdateBody = decode(&st, req).await?;
    let status = match body.status.as_str() {
        "passing" | "warning" | "critical" => body.status.parse().unwrap_or_default(),
        other => {
            return Err(ApiError::bad_request(format!(
                "Invalid check status: '{other}'"
            )));
        }
    };
    st.local.update_ttl(&id, status, &body.output)?;
    ok()
}

/// `?enable=` as Go's `strconv.ParseBool` reads it, with Consul's messages.
fn enable_param(params: &Params) -> Result<bool, ApiError> {
    match params.get("enable") {
        None | Some("") => Err(ApiError::bad_request("Missing value for enable")),
        Some("1" | "t" | "T" | "TRUE" | "true" | "True") => Ok(true),
        Some("0" | "f" | "F" | "FALSE" | "false" | "False") => Ok(false),
        Some(v) => Err(ApiError::bad_request(format!(
            "Invalid value for enable: \"{v}\""
        ))),
    }
}

async fn node_maintenance(State(st): State<HttpState>, uri: Uri) -> ApiResult {
    let params = Params::parse(uri.query());
    let enable = enable_param(&params)?;
    st.local
        .node_maintenance(enable, params.get("reason").unwrap_or_default())?;
    ok()
}

async fn service_maintenance(State(st): State<HttpState>, uri: Uri) -> ApiResult {
    let id = path_tail(&uri, "/v1/agent/service/maintenance/", "Missing service ID")?;
    let params = Params::parse(uri.query());
    let enable = enable_param(&params)?;
    st.local
        .service_maintenance(&id, enable, params.get("reason").unwrap_or_default())?;
    ok()
}

async fn reload(State(st): State<HttpState>) -> ApiResult {
    (st.reload.0)().map_err(ApiError::internal)?;
    ok()
}

/// Consul's aggregate: maintenance over critical over warning over passing.
fn aggregate(checks: &[HealthCheck]) -> &'static str {
    if checks
        .iter()
        .any(|c| c.check_id == NODE_MAINT_ID || c.check_id.starts_with(SERVICE_MAINT_PREFIX))
    {
        return "maintenance";
    }
    match checks.iter().map(|c| c.status).max() {
        Some(CheckStatus::Critical) => "critical",
        Some(CheckStatus::Warning) => "warning",
        _ => "passing",
    }
}

fn code_for(status: &str) -> StatusCode {
    match status {
        "passing" => StatusCode::OK,
        "warning" => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn wants_text(params: &Params, headers: &HeaderMap) -> bool {
    params.get("format") == Some("text")
        || headers
            .get("accept")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.starts_with("text/plain"))
}

fn health_entry(st: &HttpState, id: &str) -> Option<(&'static str, serde_json::Value)> {
    let svc = st.local.state.service(id)?;
    let checks: Vec<HealthCheck> = st
        .local
        .state
        .checks()
        .into_iter()
        .map(|c| c.check)
        .filter(|c| c.service_id.is_empty() || c.service_id == id)
        .collect();
    let status = aggregate(&checks);
    let body = serde_json::json!({
        "AggregatedStatus": status,
        "Service": AgentService::new(&svc.service, &st.info.datacenter),
        "Checks": checks,
    });
    Some((status, body))
}

fn health_answer(
    st: &HttpState,
    params: &Params,
    headers: &HeaderMap,
    status: &str,
    code: StatusCode,
    body: &serde_json::Value,
) -> Response {
    let mut resp = if wants_text(params, headers) {
        (code, [("content-type", "text/plain")], status.to_string()).into_response()
    } else {
        json(st, params, code, body)
    };
    if let Ok(v) = HeaderValue::from_str(status) {
        resp.headers_mut().insert("x-consul-reason", v);
    }
    resp
}

async fn health_by_id(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let id = path_tail(&uri, "/v1/agent/health/service/id/", "Missing serviceID")?;
    let params = Params::parse(uri.query());
    match health_entry(&st, &id) {
        Some((status, body)) => Ok(health_answer(
            &st,
            &params,
            &headers,
            status,
            code_for(status),
            &body,
        )),
        None => {
            let reason = format!("ServiceId {id} not found");
            let body = serde_json::json!({"AggregatedStatus": "critical", "Service": null, "Checks": null});
            let mut r = if wants_text(&params, &headers) {
                (StatusCode::NOT_FOUND, reason.clone()).into_response()
            } else {
                json(&st, &params, StatusCode::NOT_FOUND, &body)
            };
            if let Ok(v) = HeaderValue::from_str(&reason) {
                r.headers_mut().insert("x-consul-reason", v);
            }
            Ok(r)
        }
    }
}

async fn health_by_name(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let name = path_tail(
        &uri,
        "/v1/agent/health/service/name/",
        "Missing service Name",
    )?;
    let params = Params::parse(uri.query());
    let entries: Vec<(&'static str, serde_json::Value)> = st
        .local
        .state
        .services()
        .into_iter()
        .filter(|s| s.service.service == name)
        .filter_map(|s| health_entry(&st, &s.service.id))
        .collect();
    if entries.is_empty() {
        let reason = format!("ServiceName {name} Not Found");
        let mut r = if wants_text(&params, &headers) {
            (StatusCode::NOT_FOUND, reason.clone()).into_response()
        } else {
            json(&st, &params, StatusCode::NOT_FOUND, &serde_json::json!([]))
        };
        if let Ok(v) = HeaderValue::from_str(&reason) {
            r.headers_mut().insert("x-consul-reason", v);
        }
        return Ok(r);
    }
    let worst = entries
        .iter()
        .map(|(s, _)| *s)
        .max_by_key(|s| code_for(s).as_u16())
        .unwrap_or("passing");
    let bodies: Vec<serde_json::Value> = entries.into_iter().map(|(_, b)| b).collect();
    Ok(health_answer(
        &st,
        &params,
        &headers,
        worst,
        code_for(worst),
        &serde_json::Value::Array(bodies),
    ))
}
