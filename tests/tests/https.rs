//! The HTTPS API on the real binary: certificates from `cairn tls`, `verify_incoming`
//! refusing clients without a certificate from the CA, the CLI over HTTPS with Consul's
//! flags and environment, and an agent that refuses to start without its certificate.

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::time::Duration;

use cairn_tests::federation::Certs;
use cairn_tests::{AgentOpts, eventually, free_port, stderr, stdout};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn the_api_answers_over_https_to_clients_with_a_certificate() {
    let certs = Certs::new();
    let (cert, key) = certs.create("server", "dc1");
    let (client_cert, client_key) = certs.create("client", "dc1");
    let port = free_port(Ipv4Addr::LOCALHOST);
    let cfg = certs.dir.join("https.json");
    let tls = json!({"ca_file": certs.ca(), "cert_file": cert, "key_file": key,
        "verify_incoming": true});
    let body = json!({"ports": {"https": port}, "tls": {"defaults": tls}});
    std::fs::write(&cfg, body.to_string()).unwrap();
    let agent = AgentOpts::default()
        .arg(format!("-config-file={}", cfg.display()))
        .start()
        .await
        .unwrap();
    // The banner is printed once start-up returns, which can be after HTTP answers.
    let banner = format!("HTTPS: {port}");
    let printed = eventually(
        Duration::from_secs(10),
        "the banner names HTTPS",
        || async { agent.log_text().contains(&banner).then_some(()) },
    )
    .await;
    assert!(printed.is_ok(), "{}", agent.log_text());
    let https = format!("https://127.0.0.1:{port}");
    let ca = format!("-ca-file={}", certs.ca().display());
    let cc = format!("-client-cert={}", client_cert.display());
    let ck = format!("-client-key={}", client_key.display());

    // Flags: the CA and a client certificate.
    let addr = format!("-http-addr={https}");
    let out = agent
        .cli()
        .args(["kv", "put", &addr, &ca, &cc, &ck, "secure/x", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Environment: CONSUL_HTTP_SSL with a plain address, CONSUL_CACERT and the client pair.
    let out = agent
        .cli()
        .env("CONSUL_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env_remove("CAIRN_HTTP_ADDR")
        .env("CONSUL_HTTP_SSL", "true")
        .env("CONSUL_CACERT", certs.ca())
        .env("CONSUL_CLIENT_CERT", &client_cert)
        .env("CONSUL_CLIENT_KEY", &client_key)
        .args(["kv", "get", "secure/x"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "1");

    // Without a client certificate, or trusting another CA, nothing gets through.
    let out = agent
        .cli()
        .args(["kv", "get", &addr, &ca, "secure/x"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "no client certificate: {}",
        stdout(&out)
    );
    let other = Certs::new();
    let other_ca = format!("-ca-file={}", other.ca().display());
    let out = agent
        .cli()
        .args(["kv", "get", &addr, &other_ca, &cc, &ck, "secure/x"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "another CA: {}", stdout(&out));
    let out = agent
        .cli()
        .args(["kv", "get", &addr, "secure/x"])
        .output()
        .unwrap();
    assert!(stderr(&out).contains("-ca-file"), "{}", stderr(&out));

    // Plain HTTP still answers on its own port.
    let out = agent
        .cli()
        .args(["kv", "get", "secure/x"])
        .output()
        .unwrap();
    assert_eq!(stdout(&out).trim(), "1", "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_port_without_a_certificate_stops_the_agent() {
    let dir = std::env::temp_dir().join(format!("cairn-https-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("bad.json");
    std::fs::write(&cfg, json!({"ports": {"https": 0}}).to_string()).unwrap();
    let err = AgentOpts::default()
        .arg(format!("-config-file={}", cfg.display()))
        .start()
        .await
        .err()
        .expect("the agent must refuse to start");
    assert!(
        format!("{err:#}").contains("HTTPS needs tls.defaults.cert_file"),
        "{err:#}"
    );
    let missing = dir.join("missing.json");
    let tls = json!({"cert_file": dir.join("nope.pem"), "key_file": dir.join("nope.key")});
    std::fs::write(
        &missing,
        json!({"ports": {"https": 0}, "tls": {"defaults": tls}}).to_string(),
    )
    .unwrap();
    let err = AgentOpts::default()
        .arg(format!("-config-file={}", missing.display()))
        .start()
        .await
        .err()
        .expect("the agent must refuse to start");
    assert!(format!("{err:#}").contains("nope.pem"), "{err:#}");
    let _ = std::fs::remove_dir_all(&dir);
}
