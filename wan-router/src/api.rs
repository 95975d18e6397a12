//! What the router offers its own datacenter.
//!
//! - [`LocalApi`]: the RPC-port protocol (the same frames servers speak) on `-rpc-port`.
//!   Servers send `Forward` (a request for another datacenter) and `WanStatus` (the WAN
//!   pool and the datacenters by distance, for `members -wan`, `/v1/catalog/datacenters`
//!   and `/v1/coordinate/datacenters`).
//! - An HTTP port (`-http-port`) with `/metrics` (Prometheus text) and `/v1/status` (the
//!   same status as JSON, plus the local servers), for operators and the deploy scripts.

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use cairn_shared::rpc::server::Handler;
use cairn_shared::rpc::wire::{Body, Reply};
use cairn_shared::rpc::{ErrorKind, RpcError};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::forward::Forwarder;

/// Answers the local servers.
#[derive(Debug)]
pub struct LocalApi(pub Arc<Forwarder>);

#[async_trait]
impl Handler for LocalApi {
    async fn handle(&self, _peer: IpAddr, body: Body) -> Result<Reply, RpcError> {
        match body {
            Body::Forward(f) => self.0.forward(f).await,
            Body::WanStatus => Ok(Reply::WanStatus(self.0.fed.status())),
            _ => Err(RpcError::new(
                ErrorKind::BadRequest,
                "this is a WAN router: it forwards requests for other datacenters and answers WAN status only",
            )),
        }
    }
}

#[derive(Clone)]
struct HttpState {
    forwarder: Arc<Forwarder>,
    prometheus: Option<PrometheusHandle>,
}

/// The HTTP port's routes.
pub fn http(forwarder: Arc<Forwarder>, prometheus: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/v1/status", get(status))
        .with_state(HttpState {
            forwarder,
            prometheus,
        })
}

async fn metrics_text(State(st): State<HttpState>) -> impl IntoResponse {
    st.forwarder.fed.record_gauges();
    let body = st
        .prometheus
        .as_ref()
        .map(PrometheusHandle::render)
        .unwrap_or_default();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body,
    )
}

async fn status(State(st): State<HttpState>) -> impl IntoResponse {
    let fed = &st.forwarder.fed;
    let s = fed.status();
    let members: Vec<serde_json::Value> = s
        .members
        .iter()
        .map(|m| {
            serde_json::json!({
                "Name": m.name,
                "Addr": m.addr.ip().to_string(),
                "Port": m.addr.port(),
                "Tags": m.tags,
                "Status": m.status,
            })
        })
        .collect();
    let dcs: Vec<serde_json::Value> = s
        .datacenters
        .iter()
        .map(|d| {
            serde_json::json!({
                "Datacenter": d.datacenter,
                "RTTMillis": d.rtt_secs.is_finite().then_some(d.rtt_secs * 1000.0),
                "Servers": d.coordinates.iter().map(|c| c.node.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let local: Vec<serde_json::Value> = fed
        .local_servers()
        .into_iter()
        .map(|(name, addr)| serde_json::json!({"Node": name, "Addr": addr.to_string()}))
        .collect();
    axum::Json(serde_json::json!({
        "Name": s.name,
        "Datacenter": fed.datacenter,
        "Fronts": fed.node,
        "FrontedServerAlive": fed.fronted_rpc().is_some(),
        "LocalServers": local,
        "WANMembers": members,
        "Datacenters": dcs,
    }))
}
