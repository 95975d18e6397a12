//! `cairn config write|read|list|delete`: config entries over `/v1/config`.

use anyhow::Context;
use clap::{Args, Subcommand};

use super::client::{Client, HttpFlags, Reply};
use super::fail;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Create or update a config entry from a JSON file (`-` reads standard input)
    Write(WriteArgs),
    /// Show one config entry
    Read(EntryArgs),
    /// List the names of the config entries of a kind
    List(ListArgs),
    /// Delete a config entry
    Delete(EntryArgs),
}

#[derive(Debug, Args)]
pub struct WriteArgs {
    #[command(flatten)]
    http: HttpFlags,
    /// Only write if the entry's modify index is still -modify-index
    #[arg(long)]
    cas: bool,
    #[arg(long = "modify-index", default_value_t = 0)]
    modify_index: u64,
    file: String,
}

#[derive(Debug, Args)]
pub struct EntryArgs {
    #[command(flatten)]
    http: HttpFlags,
    #[arg(long)]
    kind: Option<String>,
    #[arg(long)]
    name: Option<String>,
    /// (delete) Only delete if the entry's modify index is still -modify-index
    #[arg(long)]
    cas: bool,
    #[arg(long = "modify-index", default_value_t = 0)]
    modify_index: u64,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    http: HttpFlags,
    #[arg(long)]
    kind: Option<String>,
}

pub async fn run(cmd: ConfigCommand) -> u8 {
    let result = match cmd {
        ConfigCommand::Write(a) => write(a).await,
        ConfigCommand::Read(a) => read(a).await,
        ConfigCommand::List(a) => list(a).await,
        ConfigCommand::Delete(a) => delete(a).await,
    };
    result.unwrap_or_else(|e| fail(format!("Error: {e:#}")))
}

/// A failed request, as Consul's CLI reports it.
fn refused(what: &str, reply: &Reply) -> u8 {
    fail(format!(
        "{what}: Unexpected response code: {} ({})",
        reply.status.as_u16(),
        reply.text()
    ))
}

fn cas_query(cas: bool, modify_index: u64) -> Vec<(&'static str, String)> {
    if cas {
        vec![("cas", modify_index.to_string())]
    } else {
        Vec::new()
    }
}

async fn write(a: WriteArgs) -> anyhow::Result<u8> {
    let text = if a.file == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file))?
    };
    let entry: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => return Ok(fail(format!("Failed to decode config entry input: {e}"))),
    };
    let field = |k: &str| {
        entry
            .as_object()
            .and_then(|o| o.iter().find(|(key, _)| key.eq_ignore_ascii_case(k)))
            .and_then(|(_, v)| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let (kind, name) = (field("Kind"), field("Name"));
    let client = Client::new(&a.http)?;
    let reply = client
        .put(
            "/v1/config",
            &cas_query(a.cas, a.modify_index),
            text.into_bytes(),
        )
        .await?;
    if !reply.status.is_success() {
        return Ok(refused(
            &format!("Error writing config entry {kind}/{name}"),
            &reply,
        ));
    }
    if reply.json::<bool>()? {
        println!("Config entry written: {kind}/{name}");
        Ok(0)
    } else {
        Ok(fail(format!("Config entry not updated: {kind}/{name}")))
    }
}

fn kind_name(a: &EntryArgs) -> Result<(String, String), String> {
    match (&a.kind, &a.name) {
        (None, _) => Err("Must specify the -kind parameter".into()),
        (_, None) => Err("Must specify the -name parameter".into()),
        (Some(k), Some(n)) => Ok((k.clone(), n.clone())),
    }
}

async fn read(a: EntryArgs) -> anyhow::Result<u8> {
    let (kind, name) = match kind_name(&a) {
        Ok(kn) => kn,
        Err(e) => return Ok(fail(e)),
    };
    let client = Client::new(&a.http)?;
    let reply = client
        .get(
            &format!("/v1/config/{kind}/{name}"),
            &[("pretty", String::new())],
        )
        .await?;
    if !reply.status.is_success() {
        return Ok(refused(
            &format!("Error reading config entry {kind}/{name}"),
            &reply,
        ));
    }
    // The agent's pretty form is Consul's: four-space indents, fields in order.
    println!("{}", reply.text());
    Ok(0)
}

async fn list(a: ListArgs) -> anyhow::Result<u8> {
    let Some(kind) = a.kind else {
        return Ok(fail("Must specify the -kind parameter"));
    };
    let client = Client::new(&a.http)?;
    let reply = client.get(&format!("/v1/config/{kind}"), &[]).await?;
    if !reply.status.is_success() {
        return Ok(refused(
            &format!("Error listing config entries for kind {kind:?}"),
            &reply,
        ));
    }
    let entries: Vec<serde_json::Value> = reply.json()?;
    for e in entries {
        println!("{}", e["Name"].as_str().unwrap_or_default());
    }
    Ok(0)
}

async fn delete(a: EntryArgs) -> anyhow::Result<u8> {
    let (kind, name) = match kind_name(&a) {
        Ok(kn) => kn,
        Err(e) => return Ok(fail(e)),
    };
    let client = Client::new(&a.http)?;
    let reply = client
        .delete(
            &format!("/v1/config/{kind}/{name}"),
            &cas_query(a.cas, a.modify_index),
        )
        .await?;
    if !reply.status.is_success() {
        return Ok(refused(
            &format!("Error deleting config entry {kind}/{name}"),
            &reply,
        ));
    }
    if a.cas && !reply.json::<bool>()? {
        return Ok(fail(format!("Config entry not deleted: {kind}/{name}")));
    }
    println!("Config entry deleted: {kind}/{name}");
    Ok(0)
}
