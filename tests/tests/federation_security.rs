//! Who may enter the WAN pool, and what a hostile or broken peer on a router's port can do:
//! real router processes, certificates from `cairn tls`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn_tests::federation::{
    Certs, Federation, RouterOpts, Shape, dc_ip, quic_client, wan_members,
};
use cairn_tests::{eventually, http_client};

const SMALL: Shape = Shape {
    servers: 1,
    routers: 1,
    clients: 0,
};

/// Whether the router refused the handshake: under TLS 1.3 the client may believe it is
/// connected until the refusal arrives, so a connection that closes at once counts too.
async fn refused(conn: Result<quinn::Connection, quinn::ConnectionError>) -> bool {
    let Ok(conn) = conn else { return true };
    tokio::time::timeout(Duration::from_secs(3), conn.closed())
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_are_refused_at_the_handshake_and_garbage_changes_nothing() {
    let fed = Federation::start(2, SMALL).await.unwrap();
    let dc1 = fed.dc("dc1");
    let dc2 = fed.dc("dc2");
    let server = &dc1.servers.servers[0];
    let target = &dc2.routers[0];
    let http = http_client();
    let cross_read = || async {
        http.get(server.url("/v1/catalog/nodes?dc=dc2"))
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    };
    assert!(cross_read().await);
    let rejected = || target.metric_sum("router_rejected_handshakes_total{side=\"accept\"}");
    let rejected_before = rejected().await;

    // A router whose certificate comes from another CA never joins.
    let other = Certs::new();
    let mut opts = RouterOpts::new("dc3", "s1", dc_ip(3, 11), &other);
    opts.join_wan = vec![target.wan];
    let stranger = opts.start().await.unwrap();
    // A QUIC client with no certificate at all.
    let anonymous = quic_client(None);
    let conn = anonymous
        .connect(target.wan, "server.consul")
        .unwrap()
        .await;
    assert!(
        refused(conn).await,
        "a client without a certificate is refused"
    );
    // A client certificate of the right CA is not a server's.
    let (cert, key) = fed.certs.create("client", "dc1");
    let client_cert = quic_client(Some((&cert, &key)));
    let conn = client_cert
        .connect(target.wan, "server.consul")
        .unwrap()
        .await;
    assert!(refused(conn).await, "a client certificate is refused");

    eventually(Duration::from_secs(20), "refusals counted", || async {
        (rejected().await >= rejected_before + 3.0).then_some(())
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let members = wan_members(server).await.unwrap();
    assert_eq!(
        members.keys().map(String::as_str).collect::<Vec<_>>(),
        ["s1.dc1", "s1.dc2"],
        "the stranger is not in the pool"
    );
    let status = stranger.status().await.unwrap();
    assert_eq!(
        status["WANMembers"].as_array().unwrap().len(),
        1,
        "{status}"
    );
    assert!(
        stranger
            .metric_sum("router_rejected_handshakes_total{side=\"dial\"}")
            .await
            > 0.0,
        "the stranger saw its handshakes refused"
    );

    // Garbage datagrams on the QUIC port.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..3000 {
        let len = (next() % 1500) as usize + 1;
        let mut d: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 3 == 0 {
            d[0] = 0xc0; // a QUIC long header, to reach further into the parser
        }
        let _ = sock.send_to(&d, target.wan).await;
    }

    // A peer with a valid server certificate that misbehaves on its streams: requests
    // never finished, absurd frame lengths, unknown stream kinds, all left hanging.
    let (cert, key) = fed.certs.create("server", "dc1");
    let rude = quic_client(Some((&cert, &key)));
    let conn = rude
        .connect(target.wan, "server.consul")
        .unwrap()
        .await
        .expect("a server certificate of the CA is let in");
    let mut held = Vec::new();
    for i in 0..200u32 {
        let Ok((mut send, recv)) = conn.open_bi().await else {
            break;
        };
        let bytes: Vec<u8> = match i % 4 {
            0 => vec![b'F'],                                      // a forward that never comes
            1 => [&[b'F'][..], &u32::MAX.to_be_bytes()].concat(), // an absurd length
            2 => [&[b'F'][..], &40u32.to_be_bytes(), b"short"].concat(), // half a frame
            _ => vec![b'Z', 1, 2, 3],                             // an unknown kind
        };
        let _ = send.write_all(&bytes).await;
        held.push((send, recv));
    }
    let mut uni = conn.open_uni().await.unwrap();
    let _ = uni.write_all(b"D").await; // a packet stream that never finishes

    // The pool and forwarding carry on, while all of that is still open.
    for _ in 0..20 {
        assert!(cross_read().await, "forwarding still works");
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let members = wan_members(server).await.unwrap();
    assert!(members.values().all(|s| *s == 1), "{members:?}");
    assert!(cross_read().await);
    assert!(target.metric_sum("router_bad_packets_total").await > 0.0);
    drop(held);
}
