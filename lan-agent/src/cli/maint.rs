//! `cairn maint`: list, enable or disable node and service maintenance mode.

use std::collections::BTreeMap;

use cairn_shared::api::HealthCheck;
use clap::{ArgAction, Args};

use super::client::{Client, HttpFlags};
use super::fail;
use crate::local::{NODE_MAINT_ID, SERVICE_MAINT_PREFIX};

#[derive(Debug, Args)]
pub struct MaintArgs {
    #[command(flatten)]
    http: HttpFlags,
    /// Enable maintenance mode
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    enable: bool,
    /// Disable maintenance mode
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    disable: bool,
    /// Why (shown in the check's notes)
    #[arg(long, default_value = "")]
    reason: String,
    /// A service ID instead of the whole node
    #[arg(long, default_value = "")]
    service: String,
}

pub async fn run(a: MaintArgs) -> u8 {
    go(a).await.unwrap_or_else(fail)
}

async fn go(a: MaintArgs) -> anyhow::Result<u8> {
    if a.enable && a.disable {
        return Ok(fail("Only one of -enable or -disable may be provided"));
    }
    if !a.enable && !a.reason.is_empty() {
        return Ok(fail("Reason may only be provided with -enable"));
    }
    if !a.enable && !a.disable && !a.service.is_empty() {
        return Ok(fail("Service requires either -enable or -disable"));
    }
    let client = Client::new(&a.http)?;
    if !a.enable && !a.disable {
        let checks: BTreeMap<String, HealthCheck> = match client
            .get("/v1/agent/checks", &[])
            .await
            .and_then(|r| r.ok())
        {
            Ok(r) => r.json()?,
            Err(e) => return Ok(fail(format!("Error querying Cairn agent: {e}"))),
        };
        for c in checks.values() {
            if c.check_id == NODE_MAINT_ID {
                println!("Node:");
                println!("  Name:   {}", c.node);
                println!("  Reason: {}", c.notes);
                println!();
            } else if let Some(id) = c.check_id.strip_prefix(SERVICE_MAINT_PREFIX) {
                println!("Service:");
                println!("  ID:     {id}");
                println!("  Reason: {}", c.notes);
                println!();
            }
        }
        return Ok(0);
    }
    let enable = a.enable.to_string();
    let mut q = vec![("enable", enable)];
    if !a.reason.is_empty() {
        q.push(("reason", a.reason.clone()));
    }
    let verb = if a.enable { "enabling" } else { "disabling" };
    let state = if a.enable { "enabled" } else { "disabled" };
    if a.service.is_empty() {
        if let Err(e) = client
            .put("/v1/agent/maintenance", &q, Vec::new())
            .await
            .and_then(|r| r.ok())
        {
            return Ok(fail(format!("Error {verb} node maintenance: {e}")));
        }
        println!("Node maintenance is now {state}");
    } else {
        let path = format!("/v1/agent/service/maintenance/{}", a.service);
        if let Err(e) = client.put(&path, &q, Vec::new()).await.and_then(|r| r.ok()) {
            return Ok(fail(format!("Error {verb} service maintenance: {e}")));
        }
        println!("Service maintenance is now {state} for \"{}\"", a.service);
    }
    Ok(0)
}
