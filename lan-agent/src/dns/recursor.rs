//! Forwarding questions outside the domain to the configured recursors, in order: the first
//! NOERROR or NXDOMAIN answer is relayed; if every recursor fails or times out, SERVFAIL.

use std::net::SocketAddr;

use hickory_proto::op::{Message, ResponseCode};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::DnsSettings;
use super::records::Answer;

async fn udp_exchange(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(local).await?;
    sock.connect(upstream).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65_535];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Ignore anything that is not the answer to this query.
        if n >= 2 && query.len() >= 2 && buf[..2] == query[..2] {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn tcp_exchange(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = tokio::net::TcpStream::connect(upstream).await?;
    let len = u16::try_from(query.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "query too long"))?;
    stream.write_all(&len.to_be_bytes()).await?;
    stream.write_all(query).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

pub(super) async fn forward(request: &Request, settings: &DnsSettings) -> Answer {
    let query = request.as_slice();
    let tcp = request.protocol() == Protocol::Tcp;
    for &upstream in &settings.recursors {
        let exchange = async {
            if tcp {
                tcp_exchange(upstream, query).await
            } else {
                udp_exchange(upstream, query).await
            }
        };
        let bytes = match tokio::time::timeout(settings.config.recursor_timeout, exchange).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                tracing::debug!(%upstream, error = %e, "recursor failed");
                continue;
            }
            Err(_) => {
                tracing::debug!(%upstream, "recursor timed out");
                continue;
            }
        };
        let Ok(msg) = Message::from_vec(&bytes) else {
            continue;
        };
        let rcode = msg.metadata.response_code;
        if rcode != ResponseCode::NoError && rcode != ResponseCode::NXDomain {
            continue;
        }
        let mut a = Answer::code(rcode);
        a.authoritative = false;
        a.recursion_available = true;
        a.truncated = msg.metadata.truncation;
        a.answers = msg.answers;
        a.authority = msg.authorities;
        a.additional = msg.additionals;
        return a;
    }
    let mut a = Answer::code(ResponseCode::ServFail);
    a.recursion_available = true;
    a
}
