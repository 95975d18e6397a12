//! The LAN pool over HTTP: `/v1/agent/members`, `join`, `leave`, `force-leave`, and
//! `/v1/operator/keyring`.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, put};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::routes::Routes;
use super::{HttpState, Params, json, methods, path_tail};
use cairn_shared::acl::{Access, Resource};
use cairn_shared::rpc::{Query, QueryOptions, QueryResult, ReadRequest};

use crate::gossip::{GossipError, KeyOp, KeyringReport, MemberInfo};

pub(super) fn router() -> Routes {
    Routes::new()
        .route("/v1/agent/members", methods(get(members), "GET"))
        .route(
            "/v1/agent/join/{*addr}",
            methods(put(join).post(join), "PUT,POST"),
        )
        .route(
            "/v1/agent/leave",
            methods(put(leave).post(leave), "PUT,POST"),
        )
        .route(
            "/v1/agent/force-leave/{*node}",
            methods(put(force_leave).post(force_leave), "PUT,POST"),
        )
        .route(
            "/v1/operator/keyring",
            methods(
                get(keyring).post(keyring).put(keyring).delete(keyring),
                "GET,POST,PUT,DELETE",
            ),
        )
}

/// A member as Consul's `/v1/agent/members` shows it (Serf's protocol and delegate
/// versions included, for clients that read them).
pub(crate) fn member_json(m: &MemberInfo) -> Value {
    member_json_parts(&m.name, m.addr, &m.tags, m.status.code())
}

fn member_json_parts(
    name: &str,
    addr: std::net::SocketAddr,
    tags: &std::collections::BTreeMap<String, String>,
    status: u8,
) -> Value {
    json!({
        "Name": name,
        "Addr": addr.ip().to_string(),
        "Port": addr.port(),
        "Tags": tags,
        "Status": status,
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    })
}

async fn members(State(st): State<HttpState>, uri: Uri, headers: HeaderMap) -> ApiResult {
    let params = Params::parse(uri.query());
    let authz = super::guard::Authz::of(&st, &uri, &headers).await?;
    let readable = |m: &Value| {
        m["Name"]
            .as_str()
            .is_some_and(|n| authz.can(Resource::Node, n, Access::Read))
    };
    let expr = params.get("filter").unwrap_or_default();
    let filter = crate::filter::parse_for(expr, &crate::filter::fields::MEMBERS)
        .map_err(|e| ApiError::internal(e.consul_message()))?;
    // The WAN pool is the routers'; a server asks one, a client is in no WAN pool (Consul
    // answers an empty list there too).
    let list: Vec<Value> = if params.has("wan") {
        if !st.info.server {
            Vec::new()
        } else {
            let req = ReadRequest {
                query: Query::WanMembers,
                options: QueryOptions::default(),
            };
            match st.rpc.read(req).await?.result {
                QueryResult::WanMembers(members) => members
                    .iter()
                    .map(|m| member_json_parts(&m.name, m.addr, &m.tags, m.status))
                    .filter(|m| filter.matches(m) && readable(m))
                    .collect(),
                _ => Vec::new(),
            }
        }
    } else {
        st.gossip
            .members()
            .iter()
            .map(member_json)
            .filter(|m| filter.matches(m) && readable(m))
            .collect()
    };
    Ok(json(&st, &params, StatusCode::OK, &list))
}

async fn join(State(st): State<HttpState>, uri: Uri) -> ApiResult {
    let params = Params::parse(uri.query());
    let addr = path_tail(&uri, "/v1/agent/join/", "Missing address")?;
    if params.has("wan") {
        return Err(ApiError::internal(if st.info.server {
            "WAN joins are made by cairn-wan-router (-retry-join-wan), not by servers".to_string()
        } else {
            "Must be a server to join WAN cluster".to_string()
        }));
    }
    let joined = st
        .gossip
        .join(std::slice::from_ref(&addr))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if joined == 0 {
        return Err(ApiError::internal(format!(
            "1 error occurred:\n\t* Failed to join {addr}: no answer\n\n"
        )));
    }
    Ok(StatusCode::OK.into_response())
}

async fn leave(State(st): State<HttpState>) -> ApiResult {
    st.gossip
        .leave()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    // Consul's agent shuts down after a leave; answer first.
    let stop = st.shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        stop.cancel();
    });
    Ok(StatusCode::OK.into_response())
}

async fn force_leave(State(st): State<HttpState>, uri: Uri) -> ApiResult {
    let params = Params::parse(uri.query());
    let node = path_tail(&uri, "/v1/agent/force-leave/", "Missing node name")?;
    match st.gossip.force_leave(&node, params.has("prune")).await {
        Ok(()) => Ok(StatusCode::OK.into_response()),
        Err(GossipError::NoMember(n)) => Err(ApiError::internal(format!(
            "agent: No node found with name '{n}'"
        ))),
        Err(e) => Err(ApiError::internal(e.to_string())),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct KeyringArgs {
    key: String,
}

async fn keyring(State(st): State<HttpState>, req: Request) -> ApiResult {
    let params = Params::parse(req.uri().query());
    if let Some(f) = params.get("relay-factor") {
        match f.parse::<u8>() {
            Ok(0..=5) => {}
            _ => {
                return Err(ApiError::bad_request(
                    "Relay factor must be in range: [0, 5]",
                ));
            }
        }
    }
    let method = req.method().clone();
    let args: KeyringArgs = if method == axum::http::Method::GET {
        KeyringArgs::default()
    } else {
        super::decode_json_body(req, 64 * 1024).await?
    };
    let op = match method.as_str() {
        "POST" => KeyOp::Install(args.key),
        "PUT" => KeyOp::Use(args.key),
        "DELETE" => KeyOp::Remove(args.key),
        _ => KeyOp::List,
    };
    let listing = op == KeyOp::List;
    let report = st
        .gossip
        .keyring(op)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if !report.errors.is_empty() || report.responses < report.num_nodes {
        return Err(ApiError::internal(keyring_errors(
            &st.info.datacenter,
            &report,
        )));
    }
    if !listing {
        return Ok(StatusCode::OK.into_response());
    }
    let body = json!([{
        "WAN": false,
        "Datacenter": st.info.datacenter,
        "Segment": "",
        "Messages": {},
        "Keys": report.keys,
        "PrimaryKeys": report.primary_keys,
        "NumNodes": report.num_nodes,
    }]);
    Ok(json(&st, &params, StatusCode::OK, &body))
}

/// Consul's multi-error text: the pool's failure count (or, when some members did not
/// answer in time, how many did), then each member's message.
fn keyring_errors(datacenter: &str, report: &KeyringReport) -> String {
    let summary = if report.errors.is_empty() {
        format!(
            "{}/{} nodes responded success",
            report.responses, report.num_nodes
        )
    } else {
        format!(
            "{}/{} nodes reported failure",
            report.errors.len(),
            report.num_nodes
        )
    };
    let mut lines = vec![format!("{datacenter} (LAN) error: {summary}")];
    lines.extend(report.errors.iter().map(|(node, e)| format!("{node}: {e}")));
    let n = lines.len();
    let mut out = format!("{n} errors occurred:\n");
    for l in lines {
        out.push_str(&format!("\t* {l}\n"));
    }
    out.push('\n');
    out
}
