//! `cairn services register|deregister`: register services with the local agent from
//! JSON files (the config file `service`/`services` blocks) or flags.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{ArgAction, Args, Subcommand};

use super::client::{Client, HttpFlags};
use super::fail;
use crate::local::definition::ServiceDefinition;

#[derive(Debug, Subcommand)]
pub enum ServicesCommand {
    /// Register services from files or flags
    Register(RegisterArgs),
    /// Deregister services named in files or by -id
    Deregister(DeregisterArgs),
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    #[command(flatten)]
    http: HttpFlags,
    /// Service ID (defaults to the name)
    #[arg(long)]
    id: Option<String>,
    /// Service name
    #[arg(long)]
    name: Option<String>,
    /// Service address
    #[arg(long)]
    address: Option<String>,
    /// Service port
    #[arg(long)]
    port: Option<u16>,
    /// A tag (repeatable)
    #[arg(long = "tag", action = ArgAction::Append)]
    tags: Vec<String>,
    /// Metadata as key=value (repeatable)
    #[arg(long = "meta", action = ArgAction::Append)]
    meta: Vec<String>,
    files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DeregisterArgs {
    #[command(flatten)]
    http: HttpFlags,
    /// Service ID to deregister
    #[arg(long)]
    id: Option<String>,
    files: Vec<PathBuf>,
}

pub async fn run(cmd: ServicesCommand) -> u8 {
    let result = match cmd {
        ServicesCommand::Register(a) => register(a).await,
        ServicesCommand::Deregister(a) => deregister(a).await,
    };
    result.unwrap_or_else(fail)
}

fn from_files(files: &[PathBuf]) -> Result<Vec<ServiceDefinition>, String> {
    let fc = crate::config::file::load(files).map_err(|e| format!("Error: {e}"))?;
    Ok(fc.services)
}

async fn register(a: RegisterArgs) -> anyhow::Result<u8> {
    if a.files.is_empty() && a.name.is_none() {
        return Ok(fail(
            "Service registration requires at least one argument or flags.",
        ));
    }
    if !a.files.is_empty() && (a.name.is_some() || a.id.is_some()) {
        return Ok(fail(
            "Service registration requires arguments or -id, not both.",
        ));
    }
    let mut services = if a.files.is_empty() {
        vec![ServiceDefinition::default()]
    } else {
        match from_files(&a.files) {
            Ok(s) => s,
            Err(e) => return Ok(fail(e)),
        }
    };
    let meta: BTreeMap<String, String> = a
        .meta
        .iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    // Flags fill what the files leave out; tags and meta are merged.
    for s in &mut services {
        if s.name.is_empty() {
            s.name = a.name.clone().unwrap_or_default();
        }
        if s.id.is_empty() {
            s.id = a.id.clone().unwrap_or_default();
        }
        if s.address.is_empty() {
            s.address = a.address.clone().unwrap_or_default();
        }
        if s.port == 0 {
            s.port = a.port.unwrap_or(0);
        }
        s.tags.extend(a.tags.iter().cloned());
        s.meta.extend(meta.clone());
    }
    let client = Client::new(&a.http)?;
    for s in services {
        let body = serde_json::to_vec(&s)?;
        let reply = client
            .put("/v1/agent/service/register", &[], body)
            .await
            .and_then(|r| r.ok());
        if let Err(e) = reply {
            return Ok(fail(format!(
                "Error registering service \"{}\": {e}",
                s.name
            )));
        }
        println!("Registered service: {}", s.name);
    }
    Ok(0)
}

async fn deregister(a: DeregisterArgs) -> anyhow::Result<u8> {
    if a.files.is_empty() && a.id.is_none() {
        return Ok(fail(
            "Service deregistration requires at least one argument or -id.",
        ));
    }
    if !a.files.is_empty() && a.id.is_some() {
        return Ok(fail(
            "Service deregistration requires arguments or -id, not both.",
        ));
    }
    let ids: Vec<String> = match &a.id {
        Some(id) => vec![id.clone()],
        None => match from_files(&a.files) {
            Ok(s) => s.into_iter().map(|s| s.node_service().id).collect(),
            Err(e) => return Ok(fail(e)),
        },
    };
    let client = Client::new(&a.http)?;
    for id in ids {
        let path = format!("/v1/agent/service/deregister/{id}");
        if let Err(e) = client
            .put(&path, &[], Vec::new())
            .await
            .and_then(|r| r.ok())
        {
            return Ok(fail(format!("Error deregistering service \"{id}\": {e}")));
        }
        println!("Deregistered service: {id}");
    }
    Ok(0)
}
