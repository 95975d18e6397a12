//! TLS on the server RPC port with the real binaries: Raft, forwarding and client agents
//! over TLS with `server.<dc>.<domain>` names checked; a caller without TLS, without a
//! certificate, or with another CA's is refused; routers under `-lan-tls` carry `?dc=`
//! requests between datacenters whose servers accept nothing else.

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::time::Duration;

use cairn_shared::rpc::client::{CallError, RpcClient};
use cairn_shared::rpc::tls::ClientTls;
use cairn_shared::rpc::wire::{Body, Reply};
use cairn_shared::rpc::{Query, QueryOptions, ReadRequest};
use cairn_shared::tls::TlsSettings;
use cairn_tests::federation::{Certs, Federation, Shape};
use cairn_tests::{AgentOpts, Cluster, eventually, http_client};
use serde_json::json;

/// A config file requiring TLS on the RPC port, with a new certificate of `kind`
/// (`server`, `client`) from the CA, or none.
fn tls_config(certs: &Certs, kind: Option<&str>, name: &str) -> String {
    let mut defaults = json!({"ca_file": certs.ca(), "verify_incoming": true,
        "verify_outgoing": true});
    if let Some(kind) = kind {
        let (cert, key) = certs.create(kind, "dc1");
        defaults["cert_file"] = json!(cert);
        defaults["key_file"] = json!(key);
    }
    let body = json!({"tls": {"defaults": defaults,
        "internal_rpc": {"verify_server_hostname": true}}});
    let path = certs.dir.join(format!("{name}.json"));
    std::fs::write(&path, body.to_string()).unwrap();
    format!("-config-file={}", path.display())
}

fn kv_read(key: &str) -> Body {
    Body::Read(ReadRequest {
        query: Query::KvGet { key: key.into() },
        options: QueryOptions::default(),
    })
}

/// A KV read over TLS trusting `certs`' CA, with the client certificate `pair`.
async fn tls_call(
    certs: &Certs,
    (cert, key): (std::path::PathBuf, std::path::PathBuf),
    rpc: std::net::SocketAddr,
) -> Result<Reply, CallError> {
    let settings = TlsSettings {
        ca_file: Some(certs.ca()),
        cert_file: Some(cert),
        key_file: Some(key),
        verify_outgoing: true,
        verify_server_hostname: true,
        ..TlsSettings::default()
    };
    let tls = ClientTls::from_settings(&settings, "dc1", "consul").unwrap();
    RpcClient::default()
        .with_tls(tls)
        .call(rpc, kv_read("secure/a"), Duration::from_secs(5))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_and_clients_speak_tls_on_the_rpc_port_and_nothing_else_gets_in() {
    let certs = Certs::new();
    let server_cfg = tls_config(&certs, Some("server"), "server");
    // Three servers elect, replicate and forward over TLS only.
    let c = Cluster::start_on(3, [127, 0, 1], 1, "t", &[&server_cfg])
        .await
        .unwrap();
    let put = http_client()
        .put(c.servers[1].url("/v1/kv/secure/a"))
        .body("1")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200, "{}", put.text().await.unwrap());
    for s in &c.servers {
        eventually(Duration::from_secs(10), "replicated over TLS", || async {
            let r = http_client()
                .get(s.url("/v1/kv/secure/a?stale&raw"))
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(())
        })
        .await
        .unwrap();
    }
    let log = c.servers[0].log_text();
    assert!(
        log.contains("TLS on the server RPC port") && log.contains("requires_tls=true"),
        "{log}"
    );

    // A client agent with a client certificate reads and writes through its servers.
    let client_cfg = tls_config(&certs, Some("client"), "client");
    let join = format!("-retry-join={}", c.servers[0].serf);
    let client = AgentOpts::default()
        .client()
        .ip(Ipv4Addr::new(127, 0, 1, 21))
        .node("tls-client")
        .arg(&join)
        .arg("-retry-interval=1s")
        .arg(client_cfg)
        .start()
        .await
        .unwrap();
    let value = eventually(
        Duration::from_secs(20),
        "a read through the client",
        || async {
            let r = http_client()
                .get(client.url("/v1/kv/secure/a?raw"))
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(r.text().await.ok()?)
        },
    )
    .await
    .unwrap();
    assert_eq!(value, "1");

    // A client agent that trusts the CA but has no certificate of its own is refused by
    // the servers (verify_incoming): its reads fail, and say why.
    let bare_cfg = tls_config(&certs, None, "bare");
    let bare = AgentOpts::default()
        .client()
        .ip(Ipv4Addr::new(127, 0, 1, 22))
        .node("bare-client")
        .arg(&join)
        .arg("-retry-interval=1s")
        .arg(bare_cfg)
        .start()
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "the bare client joins", || async {
        (bare.members().await.len() >= 4).then_some(())
    })
    .await
    .unwrap();
    let r = http_client()
        .get(bare.url("/v1/kv/secure/a"))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.text().await.unwrap();
    assert_ne!(status, 200, "a client without a certificate read {body}");
    assert!(!body.contains("secure/a"), "{body}");

    let rpc = c.servers[0].rpc.unwrap();
    // Plain RPC to a port that requires TLS gets no answer.
    let plain = RpcClient::default()
        .call(rpc, kv_read("secure/a"), Duration::from_secs(5))
        .await;
    assert!(
        matches!(plain, Err(CallError::NotSent(_) | CallError::Transport(_))),
        "plain RPC: {plain:?}"
    );
    // TLS with a client certificate from another CA fails the handshake.
    let other = Certs::new();
    let answer = tls_call(&certs, other.create("client", "dc1"), rpc).await;
    assert!(
        matches!(answer, Err(CallError::NotSent(_) | CallError::Transport(_))),
        "another CA's certificate: {answer:?}"
    );
    // The same call with a certificate from the CA is answered: the refusals were about
    // the caller, not the request.
    let answer = tls_call(&certs, certs.create("client", "dc1"), rpc).await;
    assert!(matches!(answer, Ok(Reply::Read(_))), "{answer:?}");
}

/// Two datacenters whose servers accept only TLS on their RPC ports: routers under
/// `-lan-tls` carry `?dc=` reads and writes, and the client agents' requests too.
#[tokio::test(flavor = "multi_thread")]
async fn routers_carry_cross_datacenter_requests_to_servers_that_require_tls() {
    let shape = Shape {
        servers: 1,
        routers: 1,
        clients: 1,
    };
    let fed = Federation::start_tls(2, shape).await.unwrap();
    let dc1 = fed.dc("dc1");
    let dc2 = fed.dc("dc2");
    let put = http_client()
        .put(dc1.client().url("/v1/kv/over/tls?dc=dc2"))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200, "{}", put.text().await.unwrap());
    let got = http_client()
        .get(dc2.servers.servers[0].url("/v1/kv/over/tls?raw"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.text().await.unwrap(), "v");
    let dcs = dc2.client().get_json("/v1/catalog/datacenters").await;
    assert_eq!(dcs.as_array().map(Vec::len), Some(2), "{dcs}");
}
