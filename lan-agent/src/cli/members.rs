//! The LAN pool from the command line: `cairn members`, `join`, `leave`, `force-leave`
//! and `keyring`, each a client of the agent's HTTP API with Consul's output.

use std::collections::BTreeMap;

use clap::{ArgAction, Args};
use regex::Regex;
use reqwest::Method;
use serde::Deserialize;

use super::catalog::columnize;
use super::client::{Client, HttpFlags};
use super::fail;

#[derive(Debug, Args)]
pub struct MembersArgs {
    #[command(flatten)]
    http: HttpFlags,
    /// Show every tag of each member
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    detailed: bool,
    /// Only members whose status matches this regular expression
    #[arg(long, default_value = ".*")]
    status: String,
    /// List the WAN pool instead
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    wan: bool,
    /// Only members matching this filter expression
    #[arg(long)]
    filter: Option<String>,
    /// Network segment (accepted for compatibility; there is one)
    #[arg(long)]
    segment: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Member {
    name: String,
    addr: String,
    port: u16,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    status: u8,
}

fn status_name(code: u8) -> &'static str {
    match code {
        1 => "alive",
        2 => "leaving",
        3 => "left",
        4 => "failed",
        _ => "none",
    }
}

pub async fn members(a: MembersArgs) -> u8 {
    go_members(a).await.unwrap_or_else(fail)
}

async fn go_members(a: MembersArgs) -> anyhow::Result<u8> {
    let status = match Regex::new(&a.status) {
        Ok(r) => r,
        Err(e) => return Ok(fail(format!("Failed to compile status regexp: {e}"))),
    };
    let client = Client::new(&a.http)?;
    let mut query = Vec::new();
    if a.wan {
        query.push(("wan", String::new()));
    }
    if let Some(f) = &a.filter {
        query.push(("filter", f.clone()));
    }
    let reply = client.get("/v1/agent/members", &query).await?;
    if !reply.status.is_success() {
        return Ok(fail(format!(
            "Error retrieving members: Unexpected response code: {} ({})",
            reply.status.as_u16(),
            reply.text()
        )));
    }
    let mut list: Vec<Member> = reply.json()?;
    list.retain(|m| status.is_match(status_name(m.status)));
    if list.is_empty() {
        // Consul's exit code for "nothing matched".
        return Ok(2);
    }
    let is_server = |m: &Member| m.tags.get("role").map(String::as_str) == Some("consul");
    // Servers first, then by name (one partition and segment here).
    list.sort_by(|x, y| {
        is_server(y)
            .cmp(&is_server(x))
            .then_with(|| x.name.cmp(&y.name))
    });
    let addr = |m: &Member| {
        if m.addr.contains(':') {
            format!("[{}]:{}", m.addr, m.port)
        } else {
            format!("{}:{}", m.addr, m.port)
        }
    };
    let mut rows = Vec::new();
    if a.detailed {
        rows.push(
            ["Node", "Address", "Status", "Tags"]
                .map(String::from)
                .to_vec(),
        );
        for m in &list {
            let tags: Vec<String> = m.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
            rows.push(vec![
                m.name.clone(),
                addr(m),
                status_name(m.status).to_string(),
                tags.join(","),
            ]);
        }
    } else {
        rows.push(
            [
                "Node",
                "Address",
                "Status",
                "Type",
                "Build",
                "Protocol",
                "DC",
                "Partition",
                "Segment",
            ]
            .map(String::from)
            .to_vec(),
        );
        for m in &list {
            let tag = |k: &str| m.tags.get(k).cloned().unwrap_or_default();
            let (kind, segment) = match m.tags.get("role").map(String::as_str) {
                Some("consul") => ("server", "<all>".to_string()),
                Some("router") => ("router", "<all>".to_string()),
                Some("node") => (
                    "client",
                    match tag("segment").as_str() {
                        "" => "<default>".to_string(),
                        s => s.to_string(),
                    },
                ),
                _ => ("unknown", String::new()),
            };
            let build = tag("build")
                .split(':')
                .next()
                .unwrap_or_default()
                .to_string();
            let known = kind != "unknown";
            rows.push(vec![
                m.name.clone(),
                addr(m),
                status_name(m.status).to_string(),
                kind.to_string(),
                if known { build } else { String::new() },
                if known { tag("vsn") } else { String::new() },
                if known { tag("dc") } else { String::new() },
                if known {
                    "default".to_string()
                } else {
                    String::new()
                },
                segment,
            ]);
        }
    }
    print!("{}", columnize(&rows));
    Ok(0)
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    #[command(flatten)]
    http: HttpFlags,
    /// Join the WAN pool (servers only)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    wan: bool,
    /// Gossip addresses to join (host[:port], port 8301 by default)
    addresses: Vec<String>,
}

pub async fn join(a: JoinArgs) -> u8 {
    go_join(a).await.unwrap_or_else(fail)
}

async fn go_join(a: JoinArgs) -> anyhow::Result<u8> {
    if a.addresses.is_empty() {
        return Ok(fail("At least one address to join must be specified."));
    }
    let client = Client::new(&a.http)?;
    let query: Vec<(&str, String)> = if a.wan {
        vec![("wan", String::new())]
    } else {
        Vec::new()
    };
    let mut joined = 0;
    for addr in &a.addresses {
        let reply = client
            .call(Method::PUT, &format!("/v1/agent/join/{addr}"), &query, None)
            .await?;
        if reply.status.is_success() {
            joined += 1;
        } else {
            eprintln!(
                "Error joining address '{addr}': Unexpected response code: {} ({})",
                reply.status.as_u16(),
                reply.text()
            );
        }
    }
    if joined == 0 {
        return Ok(fail("Failed to join any nodes."));
    }
    println!("Successfully joined cluster by contacting {joined} nodes.");
    Ok(0)
}

#[derive(Debug, Args)]
pub struct LeaveArgs {
    #[command(flatten)]
    http: HttpFlags,
}

pub async fn leave(a: LeaveArgs) -> u8 {
    go_leave(a).await.unwrap_or_else(fail)
}

async fn go_leave(a: LeaveArgs) -> anyhow::Result<u8> {
    let client = Client::new(&a.http)?;
    let reply = client
        .call(Method::PUT, "/v1/agent/leave", &[], None)
        .await?;
    if !reply.status.is_success() {
        return Ok(fail(format!(
            "Error leaving: Unexpected response code: {} ({})",
            reply.status.as_u16(),
            reply.text()
        )));
    }
    println!("Graceful leave complete");
    Ok(0)
}

#[derive(Debug, Args)]
pub struct ForceLeaveArgs {
    #[command(flatten)]
    http: HttpFlags,
    /// Forget the member entirely instead of marking it left
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    prune: bool,
    /// The member in the WAN pool (servers only)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    wan: bool,
    node: Vec<String>,
}

pub async fn force_leave(a: ForceLeaveArgs) -> u8 {
    go_force_leave(a).await.unwrap_or_else(fail)
}

async fn go_force_leave(a: ForceLeaveArgs) -> anyhow::Result<u8> {
    let [node] = a.node.as_slice() else {
        return Ok(fail("A node name must be specified to force leave."));
    };
    let client = Client::new(&a.http)?;
    let mut query = Vec::new();
    if a.prune {
        query.push(("prune", String::new()));
    }
    if a.wan {
        query.push(("wan", String::new()));
    }
    let reply = client
        .call(
            Method::PUT,
            &format!("/v1/agent/force-leave/{node}"),
            &query,
            None,
        )
        .await?;
    if !reply.status.is_success() {
        return Ok(fail(format!(
            "Error force leaving: Unexpected response code: {} ({})",
            reply.status.as_u16(),
            reply.text()
        )));
    }
    Ok(0)
}

#[derive(Debug, Args)]
pub struct KeyringArgs {
    #[command(flatten)]
    http: HttpFlags,
    /// List the installed keys
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    list: bool,
    /// List the primary keys
    #[arg(long = "list-primary", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    list_primary: bool,
    /// Install a new key on every member
    #[arg(long)]
    install: Option<String>,
    /// Make an installed key the primary one everywhere
    #[arg(long = "use")]
    use_key: Option<String>,
    /// Remove a key from every member
    #[arg(long)]
    remove: Option<String>,
    /// Accepted for compatibility: answers come straight back to the asking agent
    #[arg(long = "relay-factor")]
    relay_factor: Option<u8>,
    /// Accepted for compatibility: this agent's LAN pool only is what is queried
    #[arg(long = "local-only", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    local_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KeyringResponse {
    #[serde(rename = "WAN")]
    wan: bool,
    datacenter: String,
    #[serde(default)]
    keys: BTreeMap<String, usize>,
    #[serde(default)]
    primary_keys: BTreeMap<String, usize>,
    num_nodes: usize,
}

pub async fn keyring(a: KeyringArgs) -> u8 {
    go_keyring(a).await.unwrap_or_else(fail)
}

async fn go_keyring(a: KeyringArgs) -> anyhow::Result<u8> {
    let chosen = [
        a.list,
        a.list_primary,
        a.install.is_some(),
        a.use_key.is_some(),
        a.remove.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if chosen != 1 {
        return Ok(fail("Exactly one operation must be provided"));
    }
    if a.relay_factor.is_some_and(|r| r > 5) {
        return Ok(fail("Relay factor must be in range: [0, 5]"));
    }
    let client = Client::new(&a.http)?;
    let query: Vec<(&str, String)> = a
        .relay_factor
        .map(|r| vec![("relay-factor", r.to_string())])
        .unwrap_or_default();
    if a.list || a.list_primary {
        println!("==> Gathering installed encryption keys...");
        let reply = client.get("/v1/operator/keyring", &query).await?;
        if !reply.status.is_success() {
            return Ok(fail(format!("error: {}", reply.text())));
        }
        let pools: Vec<KeyringResponse> = reply.json()?;
        for p in pools {
            println!();
            let name = if p.wan {
                "WAN".to_string()
            } else {
                format!("{} (LAN)", p.datacenter)
            };
            println!("{name}:");
            let keys = if a.list_primary {
                &p.primary_keys
            } else {
                &p.keys
            };
            for (key, n) in keys {
                println!("  {key} [{n}/{}]", p.num_nodes);
            }
        }
        return Ok(0);
    }
    let (method, banner, key) = if let Some(k) = a.install {
        (
            Method::POST,
            "==> Installing new gossip encryption key...",
            k,
        )
    } else if let Some(k) = a.use_key {
        (
            Method::PUT,
            "==> Changing primary gossip encryption key...",
            k,
        )
    } else if let Some(k) = a.remove {
        (Method::DELETE, "==> Removing gossip encryption key...", k)
    } else {
        unreachable!("exactly one operation was checked above")
    };
    println!("{banner}");
    let body = serde_json::to_vec(&serde_json::json!({ "Key": key }))?;
    let reply = client
        .call(method, "/v1/operator/keyring", &query, Some(body))
        .await?;
    if !reply.status.is_success() {
        return Ok(fail(format!("error: {}", reply.text())));
    }
    Ok(0)
}
