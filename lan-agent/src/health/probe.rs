//! One run of an HTTP, TCP or script check, with Consul's result mapping and output text.

use std::process::Stdio;
use std::time::Duration;

use cairn_shared::api::CheckStatus;
use tokio::io::AsyncReadExt;

use crate::local::definition::CheckType;

/// Keeps the last `max` bytes of output (on a character boundary), as Consul's circular
/// buffers do.
pub(crate) fn tail(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.len() <= max {
        return text.into_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

/// `2xx` passing, `429` warning, anything else critical; the output is Consul's
/// `HTTP GET <url>: <status> Output: <body>`.
pub(crate) async fn http(
    client: &reqwest::Client,
    def: &CheckType,
    timeout: Duration,
) -> (CheckStatus, String) {
    let method = if def.method.is_empty() {
        "GET"
    } else {
        def.method.as_str()
    };
    let Ok(m) = reqwest::Method::from_bytes(method.as_bytes()) else {
        return (
            CheckStatus::Critical,
            format!("invalid HTTP method {method:?}"),
        );
    };
    let mut req = client.request(m, &def.http).timeout(timeout);
    let mut has_ua = false;
    for (name, values) in &def.header {
        has_ua |= name.eq_ignore_ascii_case("user-agent");
        for v in values {
            req = req.header(name, v);
        }
    }
    if !has_ua {
        req = req.header("User-Agent", "Cairn Health Check");
    }
    if !def.header.keys().any(|k| k.eq_ignore_ascii_case("accept")) {
        req = req.header("Accept", "text/plain, text/*, */*");
    }
    if !def.body.is_empty() {
        req = req.body(def.body.clone());
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            let verb = capitalised(method);
            return (
                CheckStatus::Critical,
                format!("{verb} \"{}\": {}", def.http, error_chain(&e)),
            );
        }
    };
    let status = resp.status();
    let max = def.output_max();
    let mut body = Vec::new();
    let mut stream = resp;
    while let Ok(Some(chunk)) = stream.chunk().await {
        body.extend_from_slice(&chunk);
        // Only the tail is kept; drop what can no longer be shown.
        if body.len() > 2 * max {
            body.drain(..body.len() - max);
        }
    }
    let text = tail(&body, max);
    let reason = status.canonical_reason().unwrap_or("");
    let output = format!(
        "HTTP {method} {}: {} {reason} Output: {text}",
        def.http,
        status.as_u16()
    );
    let result = if status.is_success() {
        CheckStatus::Passing
    } else if status.as_u16() == 429 {
        CheckStatus::Warning
    } else {
        CheckStatus::Critical
    };
    (result, output)
}

/// `Get` for `GET`, as Go's client names the request in its errors.
fn capitalised(method: &str) -> String {
    let lower = method.to_ascii_lowercase();
    let mut chars = lower.chars();
    match chars.next() {
        Some(c) => c.to_ascii_uppercase().to_string() + chars.as_str(),
        None => String::new(),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// Passing if a TCP connection opens within the timeout.
pub(crate) async fn tcp(addr: &str, timeout: Duration) -> (CheckStatus, String) {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => (CheckStatus::Passing, format!("TCP connect {addr}: Success")),
        Ok(Err(e)) => (CheckStatus::Critical, format!("dial tcp {addr}: {e}")),
        Err(_) => (
            CheckStatus::Critical,
            format!("dial tcp {addr}: i/o timeout"),
        ),
    }
}

/// Exit 0 passing, 1 warning, anything else critical; output is stdout and stderr.
pub(crate) async fn script(
    args: &[String],
    timeout: Duration,
    max: usize,
) -> (CheckStatus, String) {
    let Some((prog, rest)) = args.split_first() else {
        return (CheckStatus::Critical, "no command given".into());
    };
    let mut child = match tokio::process::Command::new(prog)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return (CheckStatus::Critical, format!("Failed to invoke: {e}")),
    };
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let collect = async {
        let mut buf = Vec::new();
        let mut ebuf = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut buf).await;
        }
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_end(&mut ebuf).await;
        }
        buf.extend_from_slice(&ebuf);
        let status = child.wait().await;
        (buf, status)
    };
    match tokio::time::timeout(timeout, collect).await {
        Err(_) => (
            CheckStatus::Critical,
            format!(
                "Timed out ({}) running check",
                cairn_shared::duration::format(timeout)
            ),
        ),
        Ok((buf, status)) => {
            let output = if buf.len() > max {
                format!(
                    "Captured {max} of {} bytes\n...\n{}",
                    buf.len(),
                    tail(&buf, max)
                )
            } else {
                String::from_utf8_lossy(&buf).into_owned()
            };
            let code = status.ok().and_then(|s| s.code());
            let result = match code {
                Some(0) => CheckStatus::Passing,
                Some(1) => CheckStatus::Warning,
                _ => CheckStatus::Critical,
            };
            (result, output)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end_on_char_boundaries() {
        assert_eq!(tail(b"abc", 5), "abc");
        assert_eq!(tail(b"abcdef", 3), "def");
        assert_eq!(tail("ééé".as_bytes(), 3), "é");
    }

    #[tokio::test]
    async fn script_exit_codes_map_to_states() {
        let sh = |s: &str| vec!["/bin/sh".to_string(), "-c".to_string(), s.to_string()];
        let t = Duration::from_secs(5);
        assert_eq!(
            script(&sh("echo ok"), t, 100).await,
            (CheckStatus::Passing, "ok\n".into())
        );
        assert_eq!(script(&sh("exit 1"), t, 100).await.0, CheckStatus::Warning);
        assert_eq!(script(&sh("exit 2"), t, 100).await.0, CheckStatus::Critical);
        let (s, o) = script(&sh("sleep 5"), Duration::from_millis(100), 100).await;
        assert_eq!(s, CheckStatus::Critical);
        assert!(o.starts_with("Timed out"), "{o}");
    }

    #[tokio::test]
    async fn tcp_success_and_refusal() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        assert_eq!(
            tcp(&addr, Duration::from_secs(1)).await,
            (CheckStatus::Passing, format!("TCP connect {addr}: Success"))
        );
        drop(l);
        assert_eq!(
            tcp(&addr, Duration::from_secs(1)).await.0,
            CheckStatus::Critical
        );
    }
}
