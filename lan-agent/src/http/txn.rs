//! `/v1/txn`: up to 128 operations applied atomically. All-read transactions are served as
//! reads (and may be stale); any write sends the whole transaction through the log. A
//! transaction that fails answers 409 with every failing operation in `Errors`.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::routing::{MethodRouter, put};
use cairn_shared::api::{KvTxnOp, KvVerb, TxnOp, TxnResponse};
use cairn_shared::rpc::{Query, QueryResult, ReadRequest, WriteOp, WriteRequest, WriteResult};
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::{HttpState, Params, content_length, json, read_body, set_meta};

/// Consul's `maxTxnOps`.
pub(super) const MAX_TXN_OPS: usize = 128;

pub(super) fn routes() -> MethodRouter<HttpState> {
    put(txn)
}

/// One element of the request array. Unknown fields are refused, as Consul's decoder does.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpBody {
    #[serde(rename = "KV")]
    kv: Option<KvBody>,
    #[serde(rename = "Node")]
    node: Option<serde_json::Value>,
    #[serde(rename = "Service")]
    service: Option<serde_json::Value>,
    #[serde(rename = "Check")]
    check: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct KvBody {
    #[serde(default)]
    verb: KvVerb,
    #[serde(default)]
    key: String,
    #[serde(default, with = "cairn_shared::api::bytes_b64")]
    value: Option<Vec<u8>>,
    #[serde(default)]
    flags: u64,
    #[serde(default)]
    index: u64,
    #[serde(default)]
    session: String,
    /// Enterprise fields Consul's client may send; accepted and ignored.
    #[serde(default, rename = "Namespace")]
    _namespace: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "Partition")]
    _partition: Option<serde::de::IgnoredAny>,
}

async fn txn(State(st): State<HttpState>, req: Request) -> ApiResult {
    let params = Params::parse(req.uri().query());
    let options = params.query_options(req.headers())?;
    let limit = st.limits.txn_max_req_len.max(st.limits.kv_max_value_size);
    let declared = content_length(req.headers());
    let raw = read_body(req.into_body(), declared, limit, |n| {
        ApiError::too_large(format!(
            "Request body({n} bytes) too large, max size: {limit} bytes. See txn_max_req_len in the agent configuration."
        ))
    })
    .await?;
    let bodies: Vec<OpBody> = super::decode::from_slice(&raw).map_err(|e| {
        ApiError::bad_request(format!(
            "Failed to parse body: {}",
            super::decode::go_message(&e)
        ))
    })?;
    if bodies.len() > MAX_TXN_OPS {
        return Err(ApiError::too_large(format!(
            "Transaction contains too many operations ({} > {MAX_TXN_OPS})",
            bodies.len()
        )));
    }
    let mut ops = Vec::with_capacity(bodies.len());
    for body in bodies {
        if body.node.is_some() || body.service.is_some() || body.check.is_some() {
            return Err(ApiError::bad_request(
                "Failed to parse body: Node, Service and Check operations are not supported yet",
            ));
        }
        // Consul drops elements that name no operation at all.
        let Some(kv) = body.kv else { continue };
        if let Some(v) = &kv.value
            && v.len() > st.limits.kv_max_value_size
        {
            return Err(ApiError::too_large(format!(
                "Value for key \"{}\" is too large ({} > {} bytes)",
                kv.key,
                v.len(),
                st.limits.kv_max_value_size
            )));
        }
        ops.push(TxnOp::Kv(KvTxnOp {
            verb: kv.verb,
            key: kv.key,
            value: kv.value,
            flags: kv.flags,
            index: kv.index,
            session: kv.session,
        }));
    }
    let read_only = ops.iter().all(|TxnOp::Kv(op)| op.verb.is_read());
    if read_only {
        let resp = st
            .rpc
            .read(ReadRequest {
                query: Query::TxnRead(ops),
                options,
            })
            .await?;
        let QueryResult::Txn(body) = resp.result else {
            return Err(ApiError::internal(
                "unexpected answer to a read transaction",
            ));
        };
        let mut r = answer(&st, &params, &body);
        set_meta(r.headers_mut(), &resp.meta);
        r.headers_mut().remove("x-consul-index");
        return Ok(r);
    }
    let result = st
        .rpc
        .write(WriteRequest {
            datacenter: options.datacenter,
            token: options.token,
            op: WriteOp::Txn(ops),
        })
        .await?;
    match result {
        WriteResult::Txn(body) => Ok(answer(&st, &params, &body)),
        other => Err(ApiError::internal(format!(
            "unexpected answer to a transaction: {other:?}"
        ))),
    }
}

fn answer(st: &HttpState, params: &Params, body: &TxnResponse) -> axum::response::Response {
    let status = if body.errors.as_ref().is_some_and(|e| !e.is_empty()) {
        StatusCode::CONFLICT
    } else {
        StatusCode::OK
    };
    json(st, params, status, body)
}
