//! `/v1/kv/*`: get (one key, `?recurse`, `?keys` with `?separator`, `?raw`), put (`?flags`,
//! `?cas`, `?acquire`, `?release`) and delete (`?recurse`, `?cas`).
//!
//! Consul quirks kept on purpose: a missing key is a 404 with an empty body that still
//! carries `X-Consul-Index`; a malformed `?flags` or `?cas` is a 500 with Go's parse error;
//! conflicting flags list the whole query string.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get};
use cairn_shared::api::{KvTxnOp, KvVerb};
use cairn_shared::rpc::{Query, QueryResult, ReadRequest, WriteOp, WriteRequest, WriteResult};

use super::error::{ApiError, ApiResult};
use super::{HttpState, Params, content_length, json, query_json, query_not_found, read_body};

pub(super) fn routes() -> MethodRouter<HttpState> {
    get(kv_get).put(kv_put).delete(kv_delete)
}

/// The key is the decoded path after `/v1/kv/`, as Consul takes it.
fn key_of(req: &Request) -> Result<String, ApiError> {
    let path = req.uri().path();
    let raw = path
        .strip_prefix("/v1/kv/")
        .or_else(|| path.strip_prefix("/v1/kv"))
        .unwrap_or_default();
    String::from_utf8(super::percent_decode(raw))
        .map_err(|_| ApiError::bad_request("Invalid key: not valid UTF-8"))
}

/// Go's `strconv.ParseUint(s, 10, 64)`, with its error text.
pub(crate) fn parse_uint(s: &str) -> Result<u64, ApiError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::internal(format!(
            "strconv.ParseUint: parsing \"{s}\": invalid syntax"
        )));
    }
    s.parse().map_err(|_| {
        ApiError::internal(format!(
            "strconv.ParseUint: parsing \"{s}\": value out of range"
        ))
    })
}

/// A present parameter parsed as `u64` the way Consul's KV endpoint does.
fn uint_param(params: &Params, name: &str) -> Result<Option<u64>, ApiError> {
    params.get(name).map(parse_uint).transpose()
}

/// 400 when more than one of `names` is present, listing the query like Consul.
fn conflicting(params: &Params, names: &[&str]) -> Result<(), ApiError> {
    if names.iter().filter(|n| params.has(n)).count() > 1 {
        return Err(ApiError::bad_request(format!(
            "Conflicting flags: {}",
            params.encode_sorted()
        )));
    }
    Ok(())
}

async fn kv_get(State(st): State<HttpState>, req: Request) -> ApiResult {
    let key = key_of(&req)?;
    let params = Params::parse(req.uri().query());
    let options = params.query_options(req.headers())?;
    let query = if params.has("keys") {
        let separator = params
            .value("separator")
            .or_else(|| params.value("seperator"))
            .unwrap_or_default();
        Query::KvKeys {
            prefix: key.clone(),
            separator: separator.to_string(),
        }
    } else if params.has("recurse") {
        Query::KvList {
            prefix: key.clone(),
        }
    } else if key.is_empty() {
        return Err(ApiError::bad_request("Missing key name"));
    } else {
        Query::KvGet { key: key.clone() }
    };
    let resp = st.rpc.read(ReadRequest { query, options }).await?;
    match resp.result {
        QueryResult::Keys(keys) if keys.is_empty() && !key.is_empty() => {
            Ok(query_not_found(&resp.meta))
        }
        QueryResult::Keys(keys) => Ok(query_json(&st, &params, &resp.meta, &keys)),
        QueryResult::Kv(entries) if entries.is_empty() => Ok(query_not_found(&resp.meta)),
        QueryResult::Kv(entries) if params.has("raw") && !params.has("recurse") => {
            let value = entries
                .into_iter()
                .next()
                .and_then(|e| e.value)
                .unwrap_or_default();
            let mut r = (StatusCode::OK, value).into_response();
            let h = r.headers_mut();
            h.insert("content-type", HeaderValue::from_static("text/plain"));
            h.insert(
                "x-content-type-options",
                HeaderValue::from_static("nosniff"),
            );
            h.insert(
                "content-security-policy",
                HeaderValue::from_static("sandbox"),
            );
            super::set_meta(h, &resp.meta);
            Ok(r)
        }
        QueryResult::Kv(entries) => Ok(query_json(&st, &params, &resp.meta, &entries)),
        other => Err(unexpected(&other)),
    }
}

async fn kv_put(State(st): State<HttpState>, req: Request) -> ApiResult {
    let key = key_of(&req)?;
    let params = Params::parse(req.uri().query());
    let options = params.query_options(req.headers())?;
    if key.is_empty() {
        return Err(ApiError::bad_request("Missing key name"));
    }
    conflicting(&params, &["cas", "acquire", "release"])?;
    let flags = uint_param(&params, "flags")?.unwrap_or(0);
    let cas = uint_param(&params, "cas")?;
    let (verb, index, session) = if let Some(s) = params.get("acquire") {
        (KvVerb::Lock, 0, s.to_string())
    } else if let Some(s) = params.get("release") {
        (KvVerb::Unlock, 0, s.to_string())
    } else if let Some(index) = cas {
        (KvVerb::Cas, index, String::new())
    } else {
        (KvVerb::Set, 0, String::new())
    };
    let limit = st.limits.kv_max_value_size;
    let declared = content_length(req.headers());
    let body = read_body(req.into_body(), declared, limit, |n| {
        ApiError::too_large(format!(
            "Request body({n} bytes) too large, max size: {limit} bytes. See kv_max_value_size in the agent configuration."
        ))
    })
    .await?;
    let op = KvTxnOp {
        verb,
        key,
        // Consul stores an empty body as no value at all: it reads back as `null`.
        value: (!body.is_empty()).then(|| body.to_vec()),
        flags,
        index,
        session,
    };
    write_bool(&st, &params, options.datacenter, options.token, op).await
}

async fn kv_delete(State(st): State<HttpState>, req: Request) -> ApiResult {
    let key = key_of(&req)?;
    let params = Params::parse(req.uri().query());
    let options = params.query_options(req.headers())?;
    conflicting(&params, &["recurse", "cas"])?;
    let (verb, index) = if params.has("recurse") {
        (KvVerb::DeleteTree, 0)
    } else if key.is_empty() {
        return Err(ApiError::bad_request("Missing key name"));
    } else if let Some(index) = uint_param(&params, "cas")? {
        (KvVerb::DeleteCas, index)
    } else {
        (KvVerb::Delete, 0)
    };
    let op = KvTxnOp {
        verb,
        key,
        index,
        ..KvTxnOp::default()
    };
    write_bool(&st, &params, options.datacenter, options.token, op).await
}

async fn write_bool(
    st: &HttpState,
    params: &Params,
    datacenter: String,
    token: String,
    op: KvTxnOp,
) -> ApiResult {
    let result = st
        .rpc
        .write(WriteRequest {
            datacenter,
            token,
            op: WriteOp::Kv(op),
        })
        .await?;
    match result {
        WriteResult::Bool(b) => Ok(json(st, params, StatusCode::OK, &b)),
        other => Err(ApiError::internal(format!(
            "unexpected answer to a KV write: {other:?}"
        ))),
    }
}

fn unexpected(result: &QueryResult) -> ApiError {
    ApiError::internal(format!("unexpected answer to a KV read: {result:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_parse_uint_errors() {
        assert_eq!(parse_uint("42"), Ok(42));
        let e = parse_uint("abc").unwrap_err();
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            e.message,
            "strconv.ParseUint: parsing \"abc\": invalid syntax"
        );
        assert!(parse_uint("-1").is_err());
        assert!(parse_uint("").is_err());
        assert_eq!(
            parse_uint("99999999999999999999").unwrap_err().message,
            "strconv.ParseUint: parsing \"99999999999999999999\": value out of range"
        );
    }

    #[test]
    fn conflicting_flags_list_the_query() {
        let p = Params::parse(Some("cas=0&acquire=x"));
        assert_eq!(
            conflicting(&p, &["cas", "acquire", "release"])
                .unwrap_err()
                .message,
            "Conflicting flags: acquire=x&cas=0"
        );
        assert!(conflicting(&Params::parse(Some("cas=1")), &["cas", "acquire"]).is_ok());
    }
}
