//! `/v1/acl/...`: bootstrap, tokens, policies, roles, auth methods and binding rules,
//! login and logout; `PUT /v1/agent/token/:type`.
//! Every endpoint answers 401 `ACL support disabled` while ACLs are off, as Consul's do.
//! Missing tokens, policies and roles are Consul's 403 `ACL not found`.

use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use cairn_shared::acl::{
    ACL_DISABLED, ACL_NOT_FOUND, AuthMethod, BindingRule, Link, NodeIdentity, Policy, Role,
    ServiceIdentity, TemplateVariables, TemplatedPolicy, Token, templates,
};
use cairn_shared::rpc::{AclOp, Query, QueryResult, WriteOp, WriteRequest, WriteResult};
use serde::Deserialize;
use serde_json::Value;

use super::error::{ApiError, ApiResult};
use super::routes::Routes;
use super::{HttpState, Params, json, methods, query_json, read, unexpected};

pub(super) fn router() -> Routes {
    Routes::new()
        .route("/v1/acl/bootstrap", methods(put(bootstrap), "PUT"))
        .route("/v1/acl/replication", methods(get(replication), "GET"))
        .route("/v1/acl/token", methods(put(token_create), "PUT"))
        .route("/v1/acl/token/self", methods(get(token_self), "GET"))
        .route(
            "/v1/acl/token/{id}",
            methods(
                get(token_read).put(token_update).delete(token_delete),
                "GET,PUT,DELETE",
            ),
        )
        .route("/v1/acl/token/{id}/clone", methods(put(token_clone), "PUT"))
        .route("/v1/acl/tokens", methods(get(token_list), "GET"))
        .route(
            "/v1/acl/policy",
            methods(put(object_create::<Policy>), "PUT"),
        )
        .route(
            "/v1/acl/policy/{id}",
            methods(
                get(object_read::<Policy>)
                    .put(object_update::<Policy>)
                    .delete(object_delete::<Policy>),
                "GET,PUT,DELETE",
            ),
        )
        .route(
            "/v1/acl/policy/name/{name}",
            methods(get(object_by_name::<Policy>), "GET"),
        )
        .route("/v1/acl/policies", methods(get(policy_list), "GET"))
        .route("/v1/acl/role", methods(put(object_create::<Role>), "PUT"))
        .route(
            "/v1/acl/role/{id}",
            methods(
                get(object_read::<Role>)
                    .put(object_update::<Role>)
                    .delete(object_delete::<Role>),
                "GET,PUT,DELETE",
            ),
        )
        .route(
            "/v1/acl/role/name/{name}",
            methods(get(object_by_name::<Role>), "GET"),
        )
        .route("/v1/acl/roles", methods(get(role_list), "GET"))
        .route(
            "/v1/acl/templated-policies",
            methods(get(templated_list), "GET"),
        )
        .route(
            "/v1/acl/templated-policy/name/{*name}",
            methods(get(templated_read), "GET"),
        )
        .route(
            "/v1/acl/templated-policy/preview/{*name}",
            methods(post(templated_preview), "POST"),
        )
        .route(
            "/v1/acl/auth-method",
            methods(put(object_create::<AuthMethod>), "PUT"),
        )
        .route(
            "/v1/acl/auth-method/{name}",
            methods(
                get(object_read::<AuthMethod>)
                    .put(object_update::<AuthMethod>)
                    .delete(object_delete::<AuthMethod>),
                "GET,PUT,DELETE",
            ),
        )
        .route(
            "/v1/acl/auth-methods",
            methods(get(auth_method_list), "GET"),
        )
        .route(
            "/v1/acl/binding-rule",
            methods(put(object_create::<BindingRule>), "PUT"),
        )
        .route(
            "/v1/acl/binding-rule/{id}",
            methods(
                get(object_read::<BindingRule>)
                    .put(object_update::<BindingRule>)
                    .delete(object_delete::<BindingRule>),
                "GET,PUT,DELETE",
            ),
        )
        .route(
            "/v1/acl/binding-rules",
            methods(get(binding_rule_list), "GET"),
        )
        .route("/v1/acl/login", methods(post(login), "POST"))
        .route("/v1/acl/logout", methods(post(logout), "POST"))
        .route("/v1/agent/token/{kind}", methods(put(agent_token), "PUT"))
}

fn enabled(st: &HttpState) -> Result<(), ApiError> {
    if st.acl.enabled() {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::UNAUTHORIZED, ACL_DISABLED))
    }
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, ACL_NOT_FOUND)
}

async fn write(
    st: &HttpState,
    uri: &Uri,
    headers: &HeaderMap,
    op: AclOp,
) -> Result<WriteResult, ApiError> {
    let params = Params::parse(uri.query());
    let options = params.query_options(headers)?;
    Ok(st
        .rpc
        .write(WriteRequest {
            datacenter: options.datacenter,
            token: options.token,
            op: WriteOp::Acl(op),
        })
        .await?)
}

async fn body<T: serde::de::DeserializeOwned + Default>(
    st: &HttpState,
    req: Request,
    what: &str,
) -> Result<T, ApiError> {
    let limit = st.limits.txn_max_req_len;
    let declared = super::content_length(req.headers());
    let bytes = super::read_body(req.into_body(), declared, limit, |n| {
        ApiError::too_large(format!("Request body({n} bytes) too large"))
    })
    .await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    super::decode::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "{what} decoding failed: {}",
            super::decode::go_message(&e)
        ))
    })
}

async fn bootstrap(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    enabled(&st)?;
    let params = Params::parse(uri.query());
    let op = AclOp::Bootstrap {
        token: Box::default(),
        policy: Box::default(),
        reset_index: None,
    };
    match write(&st, &uri, &headers, op).await? {
        WriteResult::AclToken(t) => {
            // Consul's bootstrap answer also carries the secret as the legacy `ID`.
            let mut v = serde_json::to_value(&*t).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("ID".into(), Value::String(t.secret_id.clone()));
            }
            Ok(json(&st, &params, StatusCode::OK, &v))
        }
        other => Err(ApiError::internal(format!(
            "unexpected answer to a bootstrap: {other:?}"
        ))),
    }
}

/// `GET /v1/acl/replication`: how this datacenter's copy of the primary's ACLs stands.
async fn replication(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    enabled(&st)?;
    let (params, resp) = read(&st, &uri, &headers, Query::AclReplication).await?;
    let QueryResult::AclReplication(status) = &resp.result else {
        return Err(unexpected("a replication status read", &resp.result));
    };
    Ok(query_json(&st, &params, &resp.meta, status))
}

/// A token as `PUT /v1/acl/token` takes it.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct TokenBody {
    #[serde(rename = "AccessorID")]
    accessor_id: String,
    #[serde(rename = "SecretID")]
    secret_id: String,
    description: String,
    policies: Vec<Link>,
    roles: Vec<Link>,
    service_identities: Vec<ServiceIdentity>,
    node_identities: Vec<NodeIdentity>,
    templated_policies: Vec<TemplatedPolicy>,
    local: bool,
    expiration_time: Option<String>,
    #[serde(rename = "ExpirationTTL")]
    expiration_ttl: Option<Value>,
    /// Output fields a client may send back unchanged.
    create_index: u64,
    modify_index: u64,
    hash: String,
    create_time: String,
}

const MIN_TTL: Duration = Duration::from_secs(60);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// A duration field as Consul's decoder takes it: a Go duration string or nanoseconds;
/// absent, null or empty is none. `what` names the body in the error, as Consul's does.
fn duration_field(v: &Option<Value>, what: &str) -> Result<Option<Duration>, ApiError> {
    let bad = |reason: String| ApiError::bad_request(format!("{what} decoding failed: {reason}"));
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => cairn_shared::duration::parse(s)
            .map(Some)
            .map_err(|e| bad(e.to_string())),
        Some(Value::Number(n)) => Ok(Some(Duration::from_nanos(n.as_u64().unwrap_or(0)))),
        Some(other) => Err(bad(format!("invalid duration {other}"))),
    }
}

/// Checks what Consul checks of a token before it asks the servers.
fn token_of(body: TokenBody, create: bool, now_ms: u64) -> Result<(Token, Option<u64>), ApiError> {
    let bad = |m: &str| ApiError::internal(format!("Invalid Token: {m}"));
    for (what, id) in [
        ("AccessorID", &body.accessor_id),
        ("SecretID", &body.secret_id),
    ] {
        if !id.is_empty() && !cairn_shared::acl::is_uuid(id) {
            return Err(bad(&format!("{what} is not a valid UUID")));
        }
    }
    for s in &body.service_identities {
        if !templates::valid_service_name(&s.service_name) {
            return Err(bad(&format!(
                "Service identity {:?} has an invalid name. Only lowercase alphanumeric characters, '-' and '_' are allowed",
                s.service_name
            )));
        }
    }
    for n in &body.node_identities {
        if n.node_name.is_empty() || n.datacenter.is_empty() {
            return Err(bad(
                "Node identities must have both a NodeName and a Datacenter",
            ));
        }
    }
    check_templated(&body.templated_policies, body.local).map_err(|e| bad(&e))?;
    let ttl = duration_field(&body.expiration_ttl, "Token")?;
    let mut expires = None;
    if create {
        if let Some(ttl) = ttl.filter(|t| !t.is_zero()) {
            if body.expiration_time.is_some() {
                return Err(bad("Expiration TTL and Expiration Time cannot both be set"));
            }
            if ttl < MIN_TTL {
                return Err(bad("ExpirationTTL cannot be less than 1m0s"));
            }
            if ttl > MAX_TTL {
                return Err(bad("ExpirationTTL cannot be more than 24h0m0s"));
            }
            expires = Some(now_ms + ttl.as_millis() as u64);
        } else if let Some(t) = body.expiration_time.as_deref().filter(|t| !t.is_empty()) {
            let at = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .map_err(|e| ApiError::bad_request(format!("Token decoding failed: {e}")))?;
            let ms = (at.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
            if ms <= now_ms {
                return Err(bad("ExpirationTime cannot be in the past"));
            }
            expires = Some(ms);
        }
    }
    let token = Token {
        accessor_id: body.accessor_id,
        secret_id: body.secret_id,
        description: body.description,
        policies: body.policies,
        roles: body.roles,
        service_identities: body.service_identities,
        node_identities: body.node_identities,
        templated_policies: dedup_templated(body.templated_policies),
        local: body.local,
        expiration_time: expires.map(crate::server::rfc3339),
        ..Token::default()
    };
    Ok((token, expires))
}

/// Templated policies as Consul checks them on a token or role: a known template, with the
/// variables its schema asks for, and no datacenters on a local token.
fn check_templated(list: &[TemplatedPolicy], local: bool) -> Result<(), String> {
    for tp in list {
        if tp.template_name.is_empty() {
            return Err("templated policy is missing the template name field".into());
        }
        let Some(t) = templates::find(&tp.template_name) else {
            return Err(format!(
                "templated policy with an invalid templated name: {}",
                tp.template_name
            ));
        };
        templates::validate(t, tp)?;
        if local && !tp.datacenters.is_empty() {
            return Err(format!(
                "cannot set datacenters on templated policy {:?} of a local token",
                tp.template_name
            ));
        }
    }
    Ok(())
}

/// The list without repeats of a template and its variables.
fn dedup_templated(list: Vec<TemplatedPolicy>) -> Vec<TemplatedPolicy> {
    let mut out: Vec<TemplatedPolicy> = Vec::new();
    for tp in list {
        let same = |o: &TemplatedPolicy| {
            o.template_name == tp.template_name
                && o.template_variables.as_ref().map(|v| &v.name)
                    == tp.template_variables.as_ref().map(|v| &v.name)
        };
        if !out.iter().any(same) {
            out.push(tp);
        }
    }
    out
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn set_token(
    st: &HttpState,
    uri: &Uri,
    headers: &HeaderMap,
    token: Token,
    create: bool,
    expires_ms: Option<u64>,
) -> ApiResult {
    let params = Params::parse(uri.query());
    match write(
        st,
        uri,
        headers,
        AclOp::TokenSet {
            token: Box::new(token),
            create,
            expires_ms,
        },
    )
    .await?
    {
        WriteResult::AclToken(t) => Ok(json(st, &params, StatusCode::OK, &*t)),
        other => Err(ApiError::internal(format!(
            "unexpected answer to a token write: {other:?}"
        ))),
    }
}

async fn token_create(State(st): State<HttpState>, req: Request) -> ApiResult {
    enabled(&st)?;
    let (uri, headers) = (req.uri().clone(), req.headers().clone());
    let b: TokenBody = body(&st, req, "Token").await?;
    let (token, expires) = token_of(b, true, now_ms())?;
    set_token(&st, &uri, &headers, token, true, expires).await
}

async fn token_update(
    State(st): State<HttpState>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult {
    enabled(&st)?;
    let (uri, headers) = (req.uri().clone(), req.headers().clone());
    let mut b: TokenBody = body(&st, req, "Token").await?;
    if !b.accessor_id.is_empty() && b.accessor_id != id {
        return Err(ApiError::bad_request(
            "Token Accessor ID in URL and payload do not match",
        ));
    }
    b.accessor_id = id;
    let (token, _) = token_of(b, false, now_ms())?;
    set_token(&st, &uri, &headers, token, false, None).await
}

async fn one_token(
    st: &HttpState,
    uri: &Uri,
    headers: &HeaderMap,
    query: Query,
) -> Result<(Params, cairn_shared::rpc::QueryMeta, Token), ApiError> {
    let (params, resp) = read(st, uri, headers, query).await?;
    let QueryResult::AclTokens(mut v) = resp.result else {
        return Err(unexpected("a token read", &resp.result));
    };
    let t = v.pop().ok_or_else(not_found)?;
    Ok((params, resp.meta, t))
}

async fn token_read(
    State(st): State<HttpState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult {
    enabled(&st)?;
    let (params, meta, t) =
        one_token(&st, &uri, &headers, Query::AclToken { accessor_id: id }).await?;
    Ok(query_json(&st, &params, &meta, &t))
}

async fn token_self(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    enabled(&st)?;
    let (params, meta, t) = one_token(&st, &uri, &headers, Query::AclTokenSelf).await?;
    Ok(query_json(&st, &params, &meta, &t))
}

async fn token_clone(
    State(st): State<HttpState>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult {
    enabled(&st)?;
    let (uri, headers) = (req.uri().clone(), req.headers().clone());
    #[derive(Debug, Default, Deserialize)]
    #[serde(default, rename_all = "PascalCase")]
    struct CloneBody {
        description: Option<String>,
    }
    let b: CloneBody = body(&st, req, "Token").await?;
    let (_, _, src) = one_token(&st, &uri, &headers, Query::AclToken { accessor_id: id }).await?;
    if src.expiration_time.is_some() {
        return Err(ApiError::internal(
            "Invalid Token: cannot clone a token that expires",
        ));
    }
    let token = Token {
        accessor_id: String::new(),
        secret_id: String::new(),
        description: b.description.unwrap_or(src.description),
        create_index: 0,
        modify_index: 0,
        hash: String::new(),
        create_time: String::new(),
        ..src
    };
    set_token(&st, &uri, &headers, token, true, None).await
}

async fn token_delete(
    State(st): State<HttpState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult {
    enabled(&st)?;
    let params = Params::parse(uri.query());
    write(&st, &uri, &headers, AclOp::TokenDelete { accessor_id: id }).await?;
    Ok(json(&st, &params, StatusCode::OK, &true))
}

async fn token_list(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    enabled(&st)?;
    let p = Params::parse(uri.query());
    let query = Query::AclTokens {
        policy: p.value("policy").unwrap_or_default().to_string(),
        role: p.value("role").unwrap_or_default().to_string(),
        auth_method: p.value("authmethod").unwrap_or_default().to_string(),
    };
    let (params, resp) = read(&st, &uri, &headers, query).await?;
    let QueryResult::AclTokens(v) = &resp.result else {
        return Err(unexpected("a token list", &resp.result));
    };
    // The list shows each token's links and secret, not its rules.
    Ok(query_json(&st, &params, &resp.meta, v))
}

/// What policies and roles share: a body as `PUT` takes it, an ID, a name, and the Raft
/// operations and queries that store and find them.
trait Object: serde::Serialize + Sized + Send + 'static {
    type Body: serde::de::DeserializeOwned + Default + Send;
    /// `Policy` or `Role`, as Consul's messages name it.
    const WHAT: &'static str;
    /// What the URL names it by.
    const KEY: &'static str = "ID";
    fn body_id(b: &mut Self::Body) -> &mut String;
    fn of_body(b: Self::Body) -> Result<Self, ApiError>;
    fn set(self, create: bool) -> AclOp;
    fn delete(id: String) -> AclOp;
    fn find(id: String, by_name: bool) -> Query;
    fn written(r: WriteResult) -> Option<Self>;
    fn found(r: QueryResult) -> Option<Vec<Self>>;
}

/// A policy as `PUT /v1/acl/policy` takes it.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct PolicyBody {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    description: String,
    rules: String,
    datacenters: Vec<String>,
    hash: String,
    create_index: u64,
    modify_index: u64,
}

impl Object for Policy {
    type Body = PolicyBody;
    const WHAT: &'static str = "Policy";
    fn body_id(b: &mut PolicyBody) -> &mut String {
        &mut b.id
    }
    fn of_body(b: PolicyBody) -> Result<Self, ApiError> {
        Ok(Policy {
            id: b.id,
            name: b.name,
            description: b.description,
            rules: b.rules,
            datacenters: b.datacenters,
            ..Policy::default()
        })
    }
    fn set(self, create: bool) -> AclOp {
        AclOp::PolicySet {
            policy: Box::new(self),
            create,
        }
    }
    fn delete(id: String) -> AclOp {
        AclOp::PolicyDelete { id }
    }
    fn find(id: String, by_name: bool) -> Query {
        Query::AclPolicy { id, by_name }
    }
    fn written(r: WriteResult) -> Option<Self> {
        match r {
            WriteResult::AclPolicy(p) => Some(*p),
            _ => None,
        }
    }
    fn found(r: QueryResult) -> Option<Vec<Self>> {
        match r {
            QueryResult::AclPolicies(v) => Some(v),
            _ => None,
        }
    }
}

/// A role as `PUT /v1/acl/role` takes it.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct RoleBody {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    description: String,
    policies: Vec<Link>,
    service_identities: Vec<ServiceIdentity>,
    node_identities: Vec<NodeIdentity>,
    templated_policies: Vec<TemplatedPolicy>,
    hash: String,
    create_index: u64,
    modify_index: u64,
}

impl Object for Role {
    type Body = RoleBody;
    const WHAT: &'static str = "Role";
    fn body_id(b: &mut RoleBody) -> &mut String {
        &mut b.id
    }
    fn of_body(b: RoleBody) -> Result<Self, ApiError> {
        check_templated(&b.templated_policies, false)
            .map_err(|e| ApiError::internal(format!("Invalid Role: {e}")))?;
        Ok(Role {
            id: b.id,
            name: b.name,
            description: b.description,
            policies: b.policies,
            service_identities: b.service_identities,
            node_identities: b.node_identities,
            templated_policies: dedup_templated(b.templated_policies),
            ..Role::default()
        })
    }
    fn set(self, create: bool) -> AclOp {
        AclOp::RoleSet {
            role: Box::new(self),
            create,
        }
    }
    fn delete(id: String) -> AclOp {
        AclOp::RoleDelete { id }
    }
    fn find(id: String, by_name: bool) -> Query {
        Query::AclRole { id, by_name }
    }
    fn written(r: WriteResult) -> Option<Self> {
        match r {
            WriteResult::AclRole(r) => Some(*r),
            _ => None,
        }
    }
    fn found(r: QueryResult) -> Option<Vec<Self>> {
        match r {
            QueryResult::AclRoles(v) => Some(v),
            _ => None,
        }
    }
}

async fn set_object<O: Object>(
    st: &HttpState,
    uri: &Uri,
    headers: &HeaderMap,
    b: O::Body,
    create: bool,
) -> ApiResult {
    let params = Params::parse(uri.query());
    let r = write(st, uri, headers, O::of_body(b)?.set(create)).await?;
    let what = O::WHAT;
    let o = O::written(r)
        .ok_or_else(|| ApiError::internal(format!("unexpected answer to a {what} write")))?;
    Ok(json(st, &params, StatusCode::OK, &o))
}

async fn object_create<O: Object>(State(st): State<HttpState>, req: Request) -> ApiResult {
    enabled(&st)?;
    let (uri, headers) = (req.uri().clone(), req.headers().clone());
    let b: O::Body = body(&st, req, O::WHAT).await?;
    set_object::<O>(&st, &uri, &headers, b, true).await
}

async fn object_update<O: Object>(
    State(st): State<HttpState>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult {
    enabled(&st)?;
    let (uri, headers) = (req.uri().clone(), req.headers().clone());
    let mut b: O::Body = body(&st, req, O::WHAT).await?;
    let given = O::body_id(&mut b);
    if !given.is_empty() && *given != id {
        return Err(ApiError::bad_request(format!(
            "{} {} in URL and payload do not match",
            O::WHAT,
            O::KEY
        )));
    }
    *given = id;
    set_object::<O>(&st, &uri, &headers, b, false).await
}

async fn one_object<O: Object>(
    st: &HttpState,
    uri: &Uri,
    headers: &HeaderMap,
    id: String,
    by_name: bool,
) -> ApiResult {
    enabled(st)?;
    let (params, resp) = read(st, uri, headers, O::find(id, by_name)).await?;
    let what = O::WHAT;
    let found = O::found(resp.result)
        .ok_or_else(|| ApiError::internal(format!("unexpected answer to a {what} read")))?;
    let o = found.first().ok_or_else(not_found)?;
    Ok(query_json(st, &params, &resp.meta, o))
}

async fn object_read<O: Object>(
    State(st): State<HttpState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult {
    one_object::<O>(&st, &uri, &headers, id, false).await
}

async fn object_by_name<O: Object>(
    State(st): State<HttpState>,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult {
    one_object::<O>(&st, &uri, &headers, name, true).await
}

async fn object_delete<O: Object>(
    State(st): State<HttpState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult {
    enabled(&st)?;
    let params = Params::parse(uri.query());
    write(&st, &uri, &headers, O::delete(id)).await?;
    Ok(json(&st, &params, StatusCode::OK, &true))
}

async fn policy_list(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    enabled(&st)?;
    let (params, resp) = read(&st, &uri, &headers, Query::AclPolicies).await?;
    let QueryResult::AclPolicies(v) = &resp.result else {
        return Err(unexpected("a policy list", &resp.result));
    };
    // Consul's list leaves the rules out.
    let listed: Vec<Value> = v
        .iter()
        .map(|p| {
            let mut j = serde_json::to_value(p).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut j {
                m.remove("Rules");
            }
            j
        })
        .collect();
    Ok(query_json(&st, &params, &resp.meta, &listed))
}

async fn role_list(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    enabled(&st)?;
    let p = Params::parse(uri.query());
    let query = Query::AclRoles {
        policy: p.value("policy").unwrap_or_default().to_string(),
    };
    let (params, resp) = read(&st, &uri, &headers, query).await?;
    let QueryResult::AclRoles(v) = &resp.result else {
        return Err(unexpected("a role list", &resp.result));
    };
    Ok(query_json(&st, &params, &resp.meta, v))
}

/// An auth method as `PUT /v1/acl/auth-method` takes it.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct AuthMethodBody {
    name: String,
    #[serde(rename = "Type")]
    kind: String,
    display_name: String,
    description: String,
    #[serde(rename = "MaxTokenTTL")]
    max_token_ttl: Option<Value>,
    token_locality: String,
    config: Value,
    create_index: u64,
    modify_index: u64,
}

impl Object for AuthMethod {
    type Body = AuthMethodBody;
    const WHAT: &'static str = "AuthMethod";
    const KEY: &'static str = "Name";
    fn body_id(b: &mut AuthMethodBody) -> &mut String {
        &mut b.name
    }
    fn of_body(b: AuthMethodBody) -> Result<Self, ApiError> {
        let bad = |m: &str| ApiError::internal(format!("Invalid Auth Method: {m}"));
        if b.name.is_empty() {
            return Err(bad("no Name is set"));
        }
        if !cairn_shared::acl::valid_name(&b.name) {
            return Err(bad(
                "invalid Name. Only alphanumeric characters, '-' and '_' are allowed",
            ));
        }
        if !matches!(b.token_locality.as_str(), "" | "local" | "global") {
            return Err(bad("TokenLocality should be one of 'local' or 'global'"));
        }
        let ttl = duration_field(&b.max_token_ttl, "AuthMethod")?.unwrap_or_default();
        if !ttl.is_zero() && ttl < MIN_TTL {
            return Err(bad("MaxTokenTTL cannot be less than 1m0s"));
        }
        if ttl > MAX_TTL {
            return Err(bad("MaxTokenTTL cannot be more than 24h0m0s"));
        }
        Ok(AuthMethod {
            name: b.name,
            kind: b.kind,
            display_name: b.display_name,
            description: b.description,
            max_token_ttl: if ttl.is_zero() {
                String::new()
            } else {
                cairn_shared::duration::format(ttl)
            },
            token_locality: b.token_locality,
            config: b.config,
            ..AuthMethod::default()
        })
    }
    fn set(self, create: bool) -> AclOp {
        AclOp::AuthMethodSet {
            method: Box::new(self),
            create,
        }
    }
    fn delete(name: String) -> AclOp {
        AclOp::AuthMethodDelete { name }
    }
    fn find(name: String, _: bool) -> Query {
        Query::AclAuthMethod { name }
    }
    fn written(r: WriteResult) -> Option<Self> {
        match r {
            WriteResult::AclAuthMethod(m) => Some(*m),
            _ => None,
        }
    }
    fn found(r: QueryResult) -> Option<Vec<Self>> {
        match r {
            QueryResult::AclAuthMethods(v) => Some(v),
            _ => None,
        }
    }
}

/// A binding rule as `PUT /v1/acl/binding-rule` takes it.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct BindingRuleBody {
    #[serde(rename = "ID")]
    id: String,
    description: String,
    auth_method: String,
    selector: String,
    bind_type: String,
    bind_name: String,
    bind_vars: Option<TemplateVariables>,
    create_index: u64,
    modify_index: u64,
}

impl Object for BindingRule {
    type Body = BindingRuleBody;
    const WHAT: &'static str = "BindingRule";
    fn body_id(b: &mut BindingRuleBody) -> &mut String {
        &mut b.id
    }
    fn of_body(b: BindingRuleBody) -> Result<Self, ApiError> {
        if !b.id.is_empty() && !cairn_shared::acl::is_uuid(&b.id) {
            return Err(ApiError::internal(
                "Invalid Binding Rule: ID is not a valid UUID",
            ));
        }
        Ok(BindingRule {
            id: b.id,
            description: b.description,
            auth_method: b.auth_method,
            selector: b.selector,
            bind_type: b.bind_type,
            bind_name: b.bind_name,
            bind_vars: b.bind_vars,
            ..BindingRule::default()
        })
    }
    fn set(self, create: bool) -> AclOp {
        AclOp::BindingRuleSet {
            rule: Box::new(self),
            create,
        }
    }
    fn delete(id: String) -> AclOp {
        AclOp::BindingRuleDelete { id }
    }
    fn find(id: String, _: bool) -> Query {
        Query::AclBindingRule { id }
    }
    fn written(r: WriteResult) -> Option<Self> {
        match r {
            WriteResult::AclBindingRule(r) => Some(*r),
            _ => None,
        }
    }
    fn found(r: QueryResult) -> Option<Vec<Self>> {
        match r {
            QueryResult::AclBindingRules(v) => Some(v),
            _ => None,
        }
    }
}

async fn auth_method_list(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    enabled(&st)?;
    let (params, resp) = read(&st, &uri, &headers, Query::AclAuthMethods).await?;
    let QueryResult::AclAuthMethods(v) = &resp.result else {
        return Err(unexpected("an auth method list", &resp.result));
    };
    // Consul lists stubs, without the settings.
    let listed: Vec<Value> = v
        .iter()
        .map(|m| {
            let mut j = serde_json::to_value(m).unwrap_or(Value::Null);
            if let Value::Object(o) = &mut j {
                o.remove("Config");
            }
            j
        })
        .collect();
    Ok(query_json(&st, &params, &resp.meta, &listed))
}

async fn binding_rule_list(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    enabled(&st)?;
    let p = Params::parse(uri.query());
    let query = Query::AclBindingRules {
        auth_method: p.value("authmethod").unwrap_or_default().to_string(),
    };
    let (params, resp) = read(&st, &uri, &headers, query).await?;
    let QueryResult::AclBindingRules(v) = &resp.result else {
        return Err(unexpected("a binding rule list", &resp.result));
    };
    Ok(query_json(&st, &params, &resp.meta, v))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct LoginBody {
    auth_method: String,
    bearer_token: String,
    meta: std::collections::BTreeMap<String, String>,
}

/// `POST /v1/acl/login`: a bearer token for a new ACL token. Needs no token of its own.
async fn login(State(st): State<HttpState>, req: Request) -> ApiResult {
    enabled(&st)?;
    let (uri, headers) = (req.uri().clone(), req.headers().clone());
    let b: LoginBody = body(&st, req, "Login").await?;
    let params = Params::parse(uri.query());
    let op = AclOp::Login {
        auth_method: b.auth_method,
        bearer_token: b.bearer_token,
        meta: b.meta,
    };
    match write(&st, &uri, &headers, op).await? {
        WriteResult::AclToken(t) => Ok(json(&st, &params, StatusCode::OK, &*t)),
        other => Err(ApiError::internal(format!(
            "unexpected answer to a login: {other:?}"
        ))),
    }
}

/// `POST /v1/acl/logout`: deletes the request's own token, if a login made it.
async fn logout(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    enabled(&st)?;
    let params = Params::parse(uri.query());
    let secret = params.query_options(&headers)?.token;
    write(&st, &uri, &headers, AclOp::Logout { secret }).await?;
    Ok(json(&st, &params, StatusCode::OK, &true))
}

/// `PUT /v1/agent/token/:type` with `{"Token": "..."}`: needs `acl:write`.
async fn agent_token(
    State(st): State<HttpState>,
    Path(kind): Path<String>,
    req: Request,
) -> ApiResult {
    enabled(&st)?;
    let (uri, headers) = (req.uri().clone(), req.headers().clone());
    let params = Params::parse(uri.query());
    let caller = params.query_options(&headers)?.token;
    st.acl
        .require(
            &*st.rpc,
            &caller,
            cairn_shared::acl::Resource::Acl,
            "",
            cairn_shared::acl::Access::Write,
        )
        .await?;
    #[derive(Debug, Default, Deserialize)]
    #[serde(default, rename_all = "PascalCase")]
    struct TokenValue {
        token: String,
    }
    let b: TokenValue = body(&st, req, "Request").await?;
    st.acl.set_token(&kind, b.token).map_err(|e| {
        if e.contains("unknown") {
            ApiError::new(StatusCode::NOT_FOUND, e)
        } else {
            ApiError::internal(e)
        }
    })?;
    let _ = params;
    Ok(StatusCode::OK.into_response())
}

/// A built-in template as Consul's `/v1/acl/templated-polic...` endpoints show it.
fn template_json(t: &templates::Template) -> Value {
    serde_json::json!({
        "TemplateName": t.name,
        "Schema": t.schema,
        "Template": t.template,
        "Description": t.description,
    })
}

fn template_named(name: &str) -> Result<&'static templates::Template, ApiError> {
    templates::find(name)
        .ok_or_else(|| ApiError::bad_request(format!("Invalid templated policy Name: {name}")))
}

/// `GET /v1/acl/templated-policies`: every built-in template by name.
async fn templated_list(State(st): State<HttpState>, uri: Uri) -> ApiResult {
    enabled(&st)?;
    let all: serde_json::Map<String, Value> = templates::TEMPLATES
        .iter()
        .map(|t| (t.name.to_string(), template_json(t)))
        .collect();
    Ok(json(&st, &Params::parse(uri.query()), StatusCode::OK, &all))
}

async fn templated_read(
    State(st): State<HttpState>,
    Path(name): Path<String>,
    uri: Uri,
) -> ApiResult {
    enabled(&st)?;
    let t = template_named(&name)?;
    Ok(json(
        &st,
        &Params::parse(uri.query()),
        StatusCode::OK,
        &template_json(t),
    ))
}

/// `POST /v1/acl/templated-policy/preview/:name` with the variables: the synthetic policy
/// the template renders to.
async fn templated_preview(
    State(st): State<HttpState>,
    Path(name): Path<String>,
    req: Request,
) -> ApiResult {
    enabled(&st)?;
    let params = Params::parse(req.uri().query());
    let t = template_named(&name)?;
    let vars: TemplateVariables = body(&st, req, "Templated policy variables").await?;
    let tp = TemplatedPolicy {
        template_name: t.name.to_string(),
        template_variables: Some(vars),
        datacenters: Vec::new(),
    };
    let policy = templates::synthetic_policy(&tp).map_err(ApiError::bad_request)?;
    Ok(json(&st, &params, StatusCode::OK, &policy))
}
