//! The CLI's HTTP client for an agent, with Consul's common flags and environment
//! (`-http-addr`, `CAIRN_HTTP_ADDR` then `CONSUL_HTTP_ADDR`, `-token`, `-token-file`,
//! `-datacenter`; for HTTPS, `https://` or `CONSUL_HTTP_SSL`, `-ca-file`, `-client-cert`,
//! `-client-key` and their `CONSUL_*` variables).

use std::time::Duration;

use anyhow::{Context, bail};
use clap::{ArgAction, Args};
use reqwest::{Method, StatusCode};

/// Flags every agent-talking subcommand accepts.
#[derive(Debug, Clone, Args, Default)]
pub struct HttpFlags {
    /// Address of the agent's HTTP API (env CAIRN_HTTP_ADDR or CONSUL_HTTP_ADDR)
    #[arg(long = "http-addr", value_name = "ADDR")]
    pub http_addr: Option<String>,
    /// ACL token (env CAIRN_HTTP_TOKEN or CONSUL_HTTP_TOKEN)
    #[arg(long)]
    pub token: Option<String>,
    /// File holding the ACL token (env CAIRN_HTTP_TOKEN_FILE or CONSUL_HTTP_TOKEN_FILE)
    #[arg(long = "token-file", value_name = "PATH")]
    pub token_file: Option<String>,
    /// Datacenter to query; defaults to the agent's
    #[arg(long)]
    pub datacenter: Option<String>,
    /// CA certificate to check an HTTPS agent with (env CONSUL_CACERT)
    #[arg(long = "ca-file", value_name = "PATH")]
    pub ca_file: Option<String>,
    /// Client certificate for an agent with verify_incoming (env CONSUL_CLIENT_CERT)
    #[arg(long = "client-cert", value_name = "PATH")]
    pub client_cert: Option<String>,
    /// The client certificate's key (env CONSUL_CLIENT_KEY)
    #[arg(long = "client-key", value_name = "PATH")]
    pub client_key: Option<String>,
    /// Allow any server to answer, not only the leader
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    pub stale: bool,
}

/// An answer from the agent.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_string()
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_slice(&self.body).context("decoding the agent's answer")
    }

    /// `X-Consul-Index`, 0 when absent.
    pub fn index(&self) -> u64 {
        self.headers
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Fails with Consul's `Unexpected response code: N (body)` unless 2xx.
    pub fn ok(self) -> anyhow::Result<Self> {
        if self.status.is_success() {
            Ok(self)
        } else {
            bail!(
                "Unexpected response code: {} ({})",
                self.status.as_u16(),
                self.text()
            )
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    datacenter: Option<String>,
    stale: bool,
}

fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()))
}

/// The client side of HTTPS: the CA to check the agent with and, for an agent with
/// `verify_incoming`, this client's certificate.
fn tls_config(flags: &HttpFlags) -> anyhow::Result<rustls::ClientConfig> {
    let pick = |flag: &Option<String>, env: &[&str]| {
        flag.clone()
            .or_else(|| env_first(env))
            .map(std::path::PathBuf::from)
    };
    let ca = pick(&flags.ca_file, &["CAIRN_CACERT", "CONSUL_CACERT"])
        .ok_or_else(|| anyhow::anyhow!("HTTPS needs the agent's CA: -ca-file or CONSUL_CACERT"))?;
    let cert = pick(
        &flags.client_cert,
        &["CAIRN_CLIENT_CERT", "CONSUL_CLIENT_CERT"],
    );
    let key = pick(
        &flags.client_key,
        &["CAIRN_CLIENT_KEY", "CONSUL_CLIENT_KEY"],
    );
    let roots = cairn_shared::tls::roots(&ca).map_err(anyhow::Error::msg)?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = cairn_shared::tls::certificates("client certificate", &cert)
                .map_err(anyhow::Error::msg)?;
            let key = cairn_shared::tls::private_key(&key).map_err(anyhow::Error::msg)?;
            builder.with_client_auth_cert(chain, key)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => bail!("-client-cert and -client-key go together"),
    };
    Ok(config)
}

impl Client {
    pub fn new(flags: &HttpFlags) -> anyhow::Result<Self> {
        let addr = flags
            .http_addr
            .clone()
            .or_else(|| env_first(&["CAIRN_HTTP_ADDR", "CONSUL_HTTP_ADDR"]))
            .unwrap_or_else(|| "127.0.0.1:8500".to_string());
        let ssl = env_first(&["CAIRN_HTTP_SSL", "CONSUL_HTTP_SSL"])
            .is_some_and(|v| matches!(v.as_str(), "1" | "t" | "T" | "true" | "TRUE" | "True"));
        let base = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.trim_end_matches('/').to_string()
        } else if addr.starts_with("unix://") {
            bail!("{addr}: unix sockets are not supported by this build");
        } else {
            let scheme = if ssl { "https" } else { "http" };
            format!("{scheme}://{}", addr.trim_end_matches('/'))
        };
        // As Consul: the flag, then the file flag, then the environment, token before file.
        let file = |path: String| -> anyhow::Result<String> {
            let t = std::fs::read_to_string(&path)
                .with_context(|| format!("Error loading token file {path}"))?;
            Ok(t.trim().to_string())
        };
        let token = match (&flags.token, &flags.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(f)) => Some(file(f.clone())?),
            (None, None) => match env_first(&["CAIRN_HTTP_TOKEN", "CONSUL_HTTP_TOKEN"]) {
                Some(t) => Some(t),
                None => env_first(&["CAIRN_HTTP_TOKEN_FILE", "CONSUL_HTTP_TOKEN_FILE"])
                    .map(file)
                    .transpose()?,
            },
        };
        // Blocking queries wait up to 10 minutes plus jitter.
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(660));
        if base.starts_with("https://") {
            builder = builder.use_preconfigured_tls(tls_config(flags)?);
        }
        let http = builder.build().context("building the HTTP client")?;
        Ok(Self {
            http,
            base,
            token,
            datacenter: flags.datacenter.clone(),
            stale: flags.stale,
        })
    }

    /// Sends a request to `path` (which starts with `/v1/`) with `query` parameters; a
    /// parameter with an empty value is sent bare (`?recurse`).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Reply> {
        let url = self.url(&method, path, query);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("Error connecting to Cairn agent at {}", self.base))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .context("reading the agent's answer")?
            .to_vec();
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// The full URL of a request, with the client's `dc` and `stale` settings.
    fn url(&self, method: &Method, path: &str, query: &[(&str, String)]) -> String {
        let mut url = format!("{}{}", self.base, encode_path(path));
        let mut pairs: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect();
        if let Some(dc) = &self.datacenter {
            pairs.push(("dc".into(), dc.clone()));
        }
        if self.stale && *method == Method::GET {
            pairs.push(("stale".into(), String::new()));
        }
        if !pairs.is_empty() {
            let q: Vec<String> = pairs
                .iter()
                .map(|(k, v)| {
                    if v.is_empty() {
                        k.clone()
                    } else {
                        form_urlencoded::Serializer::new(String::new())
                            .append_pair(k, v)
                            .finish()
                    }
                })
                .collect();
            url.push('?');
            url.push_str(&q.join("&"));
        }
        url
    }

    /// A GET whose answer is read as it arrives (`/v1/agent/monitor`), with no time limit.
    pub async fn stream(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<reqwest::Response> {
        let url = self.url(&Method::GET, path, query);
        let mut req = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(10 * 365 * 86_400));
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t);
        }
        req.send()
            .await
            .with_context(|| format!("Error connecting to Cairn agent at {}", self.base))
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Reply> {
        self.call(Method::GET, path, query, None).await
    }

    pub async fn put(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: Vec<u8>,
    ) -> anyhow::Result<Reply> {
        self.call(Method::PUT, path, query, Some(body)).await
    }

    pub async fn post(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Reply> {
        self.call(Method::POST, path, query, None).await
    }

    pub async fn delete(&self, path: &str, query: &[(&str, String)]) -> anyhow::Result<Reply> {
        self.call(Method::DELETE, path, query, None).await
    }
}

/// Percent-encodes what a URL path cannot carry, keeping `/`.
fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
