//! ACL checks for what an agent answers itself (`/v1/agent/...`, `/v1/event/...`, the
//! built-in templated policies), in one
//! place: [`requirement`] names what each such route needs, and the [`guard`] middleware
//! refuses the request before its handler runs. What the servers answer is checked there
//! (`server/acl.rs`), so every other route maps to [`Need::Servers`].
//!
//! Two kinds of route need more than the path: registrations (the service or check is in
//! the body; the handler calls [`require`]) and lists (the handler keeps what the token may
//! read, through [`Authz`]).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cairn_shared::acl::{Access, Authorizer, Resource};

use super::error::ApiError;
use super::{HttpState, Params, percent_decode};

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Need {
    /// Answered by the servers, which check it.
    Servers,
    One(Resource, String, Access),
    /// The handler checks, from the body or per listed item.
    Handler,
}

/// The decoded path after `prefix`, if the path has it.
fn tail<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix)
}

/// What a route this agent answers needs, from its method and path.
pub(crate) fn requirement(st: &HttpState, method: &Method, path: &str) -> Need {
    let node = st.info.node_name.clone();
    let write = method != Method::GET && method != Method::HEAD;
    let agent = |a| Need::One(Resource::Agent, node.clone(), a);
    let service_of = |id: &str| {
        st.local
            .state
            .service(id)
            .map(|s| s.service.service)
            .unwrap_or_else(|| id.to_string())
    };
    let check_needs = |id: &str| match st.local.state.check(id) {
        Some(c) if !c.check.service_id.is_empty() => Need::One(
            Resource::Service,
            c.check.service_name.clone(),
            Access::Write,
        ),
        _ => Need::One(Resource::Node, node.clone(), Access::Write),
    };
    // The built-in templates are the agent's own; reading them needs acl:read.
    if path == "/v1/acl/templated-policies" || path.starts_with("/v1/acl/templated-policy/") {
        return Need::One(Resource::Acl, String::new(), Access::Read);
    }
    if !path.starts_with("/v1/agent/")
        && !path.starts_with("/v1/event/")
        && path != "/v1/operator/keyring"
    {
        return Need::Servers;
    }
    match path {
        "/v1/agent/self" | "/v1/agent/metrics" | "/v1/agent/monitor" | "/v1/agent/version" => {
            agent(Access::Read)
        }
        "/v1/agent/host" => Need::One(Resource::Operator, String::new(), Access::Read),
        "/v1/agent/reload" | "/v1/agent/leave" => agent(Access::Write),
        "/v1/agent/keyring" | "/v1/operator/keyring" => Need::One(
            Resource::Keyring,
            String::new(),
            if write { Access::Write } else { Access::Read },
        ),
        "/v1/agent/maintenance" => Need::One(Resource::Node, node.clone(), Access::Write),
        "/v1/agent/services"
        | "/v1/agent/checks"
        | "/v1/agent/members"
        | "/v1/agent/service/register"
        | "/v1/agent/check/register"
        | "/v1/event/list" => Need::Handler,
        _ => {
            if tail(path, "/v1/agent/join/").is_some() {
                return agent(Access::Write);
            }
            if tail(path, "/v1/agent/force-leave/").is_some() {
                return Need::One(Resource::Operator, String::new(), Access::Write);
            }
            if tail(path, "/v1/agent/token/").is_some() {
                return Need::One(Resource::Acl, String::new(), Access::Write);
            }
            if let Some(id) = tail(path, "/v1/agent/service/deregister/")
                .or_else(|| tail(path, "/v1/agent/service/maintenance/"))
            {
                return Need::One(Resource::Service, service_of(id), Access::Write);
            }
            for verb in ["deregister", "pass", "warn", "fail", "update"] {
                if let Some(id) = tail(path, &format!("/v1/agent/check/{verb}/")) {
                    return check_needs(id);
                }
            }
            if let Some(name) = tail(path, "/v1/agent/health/service/name/") {
                return Need::One(Resource::Service, name.to_string(), Access::Read);
            }
            if let Some(id) = tail(path, "/v1/agent/health/service/id/")
                .or_else(|| tail(path, "/v1/agent/service/"))
            {
                return Need::One(Resource::Service, service_of(id), Access::Read);
            }
            if let Some(name) = tail(path, "/v1/event/fire/") {
                return Need::One(Resource::Event, name.to_string(), Access::Write);
            }
            // An agent route not named above: only a management token.
            Need::One(Resource::Acl, String::new(), Access::Write)
        }
    }
}

/// The request's token: `?token`, `X-Consul-Token`, `Authorization: Bearer` (the agent's
/// default token was filled in by the layer outside this one).
pub(crate) fn token_of(uri: &Uri, headers: &HeaderMap) -> String {
    super::params::token(&Params::parse(uri.query()), headers)
}

/// The middleware: refuses what the token may not do before the handler runs.
pub(crate) async fn guard(State(st): State<HttpState>, req: Request, next: Next) -> Response {
    if !st.acl.enabled() {
        return next.run(req).await;
    }
    let path = String::from_utf8_lossy(&percent_decode(req.uri().path())).into_owned();
    let Need::One(res, name, access) = requirement(&st, req.method(), &path) else {
        return next.run(req).await;
    };
    let token = token_of(req.uri(), req.headers());
    match st.acl.require(&*st.rpc, &token, res, &name, access).await {
        Ok(()) => next.run(req).await,
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// A token's authorizer for a handler that filters or checks its body.
#[derive(Clone)]
pub(crate) struct Authz(pub Arc<Authorizer>);

impl Authz {
    pub(crate) async fn of(
        st: &HttpState,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Self, ApiError> {
        let token = token_of(uri, headers);
        Ok(Self(st.acl.authorizer(&*st.rpc, &token).await?))
    }

    pub(crate) fn can(&self, res: Resource, name: &str, need: Access) -> bool {
        self.0.allowed(res, name, need)
    }

    pub(crate) fn require(&self, res: Resource, name: &str, need: Access) -> Result<(), ApiError> {
        if self.can(res, name, need) {
            Ok(())
        } else {
            Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                cairn_shared::acl::PERMISSION_DENIED,
            ))
        }
    }
}
