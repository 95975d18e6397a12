//! `cairn watch -type=...`: blocking queries in a loop; on every change the handler runs with
//! the JSON answer on its stdin and `CONSUL_INDEX` set, or, without a handler, the answer is
//! printed once.

use std::process::Stdio;

use anyhow::bail;
use clap::{ArgAction, Args};
use tokio::io::AsyncWriteExt;

use super::client::{Client, HttpFlags};
use super::fail;

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    http: HttpFlags,
    /// key, keyprefix, services, nodes, service, checks or event
    #[arg(long = "type", default_value = "")]
    kind: String,
    /// Key for -type=key
    #[arg(long, default_value = "")]
    key: String,
    /// Prefix for -type=keyprefix
    #[arg(long, default_value = "")]
    prefix: String,
    /// Service for -type=service and -type=checks
    #[arg(long, default_value = "")]
    service: String,
    /// Tag for -type=service
    #[arg(long, default_value = "")]
    tag: String,
    /// Only passing instances for -type=service
    #[arg(long = "passingonly", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    passing_only: bool,
    /// Check state for -type=checks
    #[arg(long, default_value = "")]
    state: String,
    /// Event name for -type=event
    #[arg(long, default_value = "")]
    name: String,
    /// Run the handler through a shell
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "true", action = ArgAction::Set)]
    shell: bool,
    /// The handler command
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    handler: Vec<String>,
}

/// What a watch blocks on: the path, its query, and whether the answer is one key's entry
/// (unwrapped from the list the KV API returns).
type Target = (String, Vec<(&'static str, String)>, bool);

impl WatchArgs {
    fn target(&self) -> anyhow::Result<Target> {
        let need = |v: &str, flag: &str| -> anyhow::Result<()> {
            if v.is_empty() {
                bail!("Must specify a single {flag} to watch");
            }
            Ok(())
        };
        Ok(match self.kind.as_str() {
            "key" => {
                need(&self.key, "key")?;
                (format!("/v1/kv/{}", self.key), vec![], true)
            }
            "keyprefix" => {
                need(&self.prefix, "prefix")?;
                (
                    format!("/v1/kv/{}", self.prefix),
                    vec![("recurse", String::new())],
                    false,
                )
            }
            "services" => ("/v1/catalog/services".into(), vec![], false),
            "nodes" => ("/v1/catalog/nodes".into(), vec![], false),
            "service" => {
                need(&self.service, "service")?;
                let mut q = vec![];
                if !self.tag.is_empty() {
                    q.push(("tag", self.tag.clone()));
                }
                if self.passing_only {
                    q.push(("passing", String::new()));
                }
                (format!("/v1/health/service/{}", self.service), q, false)
            }
            "checks" => match (self.service.is_empty(), self.state.is_empty()) {
                (false, true) => (format!("/v1/health/checks/{}", self.service), vec![], false),
                (true, false) => (format!("/v1/health/state/{}", self.state), vec![], false),
                (true, true) => ("/v1/health/state/any".into(), vec![], false),
                (false, false) => bail!("Cannot specify service and state"),
            },
            "event" => {
                let q = if self.name.is_empty() {
                    vec![]
                } else {
                    vec![("name", self.name.clone())]
                };
                ("/v1/event/list".into(), q, false)
            }
            "" => bail!("Watch type must be specified"),
            other => bail!("Unsupported watch type: {other}"),
        })
    }
}

pub async fn run(a: WatchArgs) -> u8 {
    go(a).await.unwrap_or_else(fail)
}

async fn go(a: WatchArgs) -> anyhow::Result<u8> {
    let (path, query, single) = a.target()?;
    let client = Client::new(&a.http)?;
    let mut index = 0u64;
    loop {
        let mut q = query.clone();
        if index > 0 {
            q.push(("index", index.to_string()));
        }
        let reply = match client.get(&path, &q).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("Error querying Cairn agent: {e}");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let new_index = reply.index();
        let data: serde_json::Value = if reply.status == 404 {
            serde_json::Value::Null
        } else {
            let v: serde_json::Value = reply.ok()?.json()?;
            if single {
                v.get(0).cloned().unwrap_or(serde_json::Value::Null)
            } else {
                v
            }
        };
        if new_index == index && index != 0 {
            continue;
        }
        // An index that goes backwards means the servers restarted their count: start over.
        index = if new_index < index { 0 } else { new_index };
        let body = serde_json::to_vec_pretty(&data)?;
        if a.handler.is_empty() {
            println!("{}", String::from_utf8_lossy(&body));
            return Ok(0);
        }
        run_handler(&a, &body, new_index).await?;
    }
}

async fn run_handler(a: &WatchArgs, body: &[u8], index: u64) -> anyhow::Result<()> {
    let mut cmd = if a.shell {
        let mut c = tokio::process::Command::new("/bin/sh");
        c.arg("-c").arg(a.handler.join(" "));
        c
    } else {
        let mut c = tokio::process::Command::new(&a.handler[0]);
        c.args(&a.handler[1..]);
        c
    };
    let mut child = cmd
        .env("CONSUL_INDEX", index.to_string())
        .stdin(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(body).await;
    }
    let status = child.wait().await?;
    if !status.success() {
        eprintln!("Error executing handler: {status}");
    }
    Ok(())
}
