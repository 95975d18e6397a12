//! Config entries: `PUT /v1/config[?cas]`, `GET /v1/config/:kind`,
//! `GET|DELETE /v1/config/:kind/:name[?cas]`, stored through Raft with blocking reads.
//! Cairn stores and serves them; it runs no service mesh that would act on them.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::{get, put};
use cairn_shared::api::{ConfigEntry, EntryError, EntryView, known_kind, unknown_kind};
use cairn_shared::rpc::{Query, QueryResult, WriteOp, WriteRequest, WriteResult};
use serde_json::Value;

use super::error::{ApiError, ApiResult};
use super::routes::Routes;
use super::{HttpState, Params, json, methods, path_tail, query_json, read, unexpected};

pub(super) fn router() -> Routes {
    Routes::new()
        .route("/v1/config", methods(put(apply), "PUT"))
        .route(
            "/v1/config/{*rest}",
            methods(get(fetch).delete(remove), "GET,DELETE"),
        )
}

/// `?cas` as Consul parses it: absent or empty is none, anything else must be a number.
fn cas(params: &Params) -> Result<Option<u64>, ApiError> {
    match params.value("cas") {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ApiError::internal(format!("strconv.ParseUint: parsing {v:?}: invalid syntax"))
        }),
    }
}

async fn write(
    st: &HttpState,
    params: &Params,
    headers: &HeaderMap,
    entry: ConfigEntry,
    delete: bool,
    cas: Option<u64>,
) -> Result<bool, ApiError> {
    let options = params.query_options(headers)?;
    let result = st
        .rpc
        .write(WriteRequest {
            datacenter: options.datacenter,
            token: options.token,
            op: WriteOp::ConfigEntry { entry, delete, cas },
        })
        .await?;
    match result {
        WriteResult::Bool(b) => Ok(b),
        other => Err(ApiError::internal(format!(
            "unexpected answer to a config entry write: {other:?}"
        ))),
    }
}

async fn apply(State(st): State<HttpState>, req: Request) -> ApiResult {
    let params = Params::parse(req.uri().query());
    let headers = req.headers().clone();
    let cas = cas(&params)?;
    let raw: Value = super::decode_json_body(req, st.limits.txn_max_req_len)
        .await
        .map_err(|e| {
            let reason = e
                .message
                .trim_start_matches("Request decode failed: ")
                .to_string();
            ApiError::bad_request(format!("Request decoding failed: {reason}"))
        })?;
    let entry = ConfigEntry::from_json(&raw).map_err(|e| match e {
        EntryError::Decode(m) => ApiError::bad_request(format!("Request decoding failed: {m}")),
        EntryError::Invalid(m) => ApiError::internal(m),
    })?;
    let ok = write(&st, &params, &headers, entry, false, cas).await?;
    Ok(json(&st, &params, StatusCode::OK, &ok))
}

/// `kind` or `kind/name` from the path.
fn kind_and_name(uri: &Uri) -> Result<(String, Option<String>), ApiError> {
    let rest = path_tail(
        uri,
        "/v1/config/",
        "Must provide either a kind or both kind and name",
    )?;
    let (kind, name) = match rest.split_once('/') {
        Some((k, n)) => (k.to_string(), Some(n.to_string())),
        None => (rest, None),
    };
    if !known_kind(&kind) {
        return Err(ApiError::internal(unknown_kind(&kind)));
    }
    Ok((kind, name))
}

async fn fetch(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let (kind, name) = kind_and_name(&uri)?;
    let query = match &name {
        Some(name) => Query::ConfigEntry {
            kind: kind.clone(),
            name: name.clone(),
        },
        None => Query::ConfigEntries { kind: kind.clone() },
    };
    let (params, resp) = read(&st, &uri, &headers, query).await?;
    let QueryResult::ConfigEntries(entries) = &resp.result else {
        return Err(unexpected("a config entry read", &resp.result));
    };
    let shown: Vec<EntryView> = entries.iter().map(ConfigEntry::view).collect();
    match name {
        None => {
            // Entries of a kind have no fixed field set, so the filter is not checked
            // against one.
            let filter = crate::filter::parse(params.get("filter").unwrap_or_default())
                .map_err(|e| ApiError::internal(e.consul_message()))?;
            let shown: Vec<&EntryView> = shown
                .iter()
                .filter(|e| serde_json::to_value(e).is_ok_and(|v| filter.matches(&v)))
                .collect();
            Ok(query_json(&st, &params, &resp.meta, &shown))
        }
        Some(name) => match shown.into_iter().next() {
            Some(one) => Ok(query_json(&st, &params, &resp.meta, &one)),
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("Config entry not found for {kind:?} / {name:?}"),
            )),
        },
    }
}

async fn remove(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let (kind, name) = kind_and_name(&uri)?;
    let Some(name) = name else {
        return Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Must specify both a kind and name to delete",
        ));
    };
    let params = Params::parse(uri.query());
    let cas = cas(&params)?;
    let entry = ConfigEntry {
        kind,
        name,
        ..ConfigEntry::default()
    };
    let deleted = write(&st, &params, &headers, entry, true, cas).await?;
    // Consul answers a plain delete with `{}` and a check-and-set one with the outcome.
    if cas.is_some() {
        return Ok(json(&st, &params, StatusCode::OK, &deleted));
    }
    Ok(json(&st, &params, StatusCode::OK, &serde_json::json!({})))
}
