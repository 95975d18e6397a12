//! `cairn monitor [-log-level=info] [-log-json]`: prints the agent's log lines as they
//! are written, until interrupted.

use std::io::Write;

use clap::Args;

use super::client::{Client, HttpFlags};
use super::fail;

#[derive(Debug, Args)]
pub struct MonitorArgs {
    #[command(flatten)]
    http: HttpFlags,
    /// trace, debug, info, warn or err
    #[arg(long = "log-level", default_value = "info")]
    log_level: String,
    /// Lines as JSON objects
    #[arg(long = "log-json")]
    log_json: bool,
}

pub async fn run(a: MonitorArgs) -> u8 {
    stream(a)
        .await
        .unwrap_or_else(|e| fail(format!("Error starting monitor: {e:#}")))
}

async fn stream(a: MonitorArgs) -> anyhow::Result<u8> {
    let client = Client::new(&a.http)?;
    let mut query = vec![("loglevel", a.log_level.clone())];
    if a.log_json {
        query.push(("logjson", String::new()));
    }
    let mut resp = client.stream("/v1/agent/monitor", &query).await?;
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        return Ok(fail(format!(
            "Error starting monitor: Unexpected response code: {status} ({})",
            text.trim()
        )));
    }
    let mut out = std::io::stdout();
    while let Some(chunk) = resp.chunk().await? {
        // A closed pipe (`| head`) ends the monitor quietly.
        if out.write_all(&chunk).and_then(|()| out.flush()).is_err() {
            return Ok(0);
        }
    }
    Ok(0)
}
