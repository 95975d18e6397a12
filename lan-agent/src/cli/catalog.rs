//! `cairn catalog datacenters|nodes|services`, printed as Consul's CLI prints them.

use std::collections::BTreeMap;

use cairn_shared::api::{Node, NodeServices, ServiceNode};
use clap::{ArgAction, Args, Subcommand};

use super::client::{Client, HttpFlags};
use super::fail;

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// List datacenters, nearest first
    Datacenters(DcArgs),
    /// List nodes
    Nodes(NodesArgs),
    /// List services
    Services(ServicesArgs),
}

#[derive(Debug, Args)]
pub struct DcArgs {
    #[command(flatten)]
    http: HttpFlags,
    args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct NodesArgs {
    #[command(flatten)]
    http: HttpFlags,
    /// Show the full node ID, tagged addresses and metadata
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    detailed: bool,
    /// Only nodes providing this service (ID or name)
    #[arg(long)]
    service: Option<String>,
    /// Only nodes with this metadata, key=value (repeatable)
    #[arg(long = "node-meta", action = ArgAction::Append)]
    node_meta: Vec<String>,
    /// A filter expression
    #[arg(long)]
    filter: Option<String>,
    /// Sort by round-trip time from this node
    #[arg(long)]
    near: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServicesArgs {
    #[command(flatten)]
    http: HttpFlags,
    /// Show each service's tags
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    tags: bool,
    /// Only services on this node
    #[arg(long)]
    node: Option<String>,
    /// Only services on nodes with this metadata, key=value (repeatable)
    #[arg(long = "node-meta", action = ArgAction::Append)]
    node_meta: Vec<String>,
}

pub async fn run(cmd: CatalogCommand) -> u8 {
    let result = match cmd {
        CatalogCommand::Datacenters(a) => datacenters(a).await,
        CatalogCommand::Nodes(a) => nodes(a).await,
        CatalogCommand::Services(a) => services(a).await,
    };
    result.unwrap_or_else(fail)
}

/// Columns separated by two spaces, each padded to its widest cell except the last, as
/// Consul's `columnize`.
pub(crate) fn columnize(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn meta_query(pairs: &[String]) -> Vec<(&'static str, String)> {
    pairs
        .iter()
        .map(|kv| ("node-meta", kv.replacen('=', ":", 1)))
        .collect()
}

fn map_text(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn datacenters(a: DcArgs) -> anyhow::Result<u8> {
    if !a.args.is_empty() {
        return Ok(fail(format!(
            "Too many arguments (expected 0, got {})",
            a.args.len()
        )));
    }
    let client = Client::new(&a.http)?;
    let dcs: Vec<String> = match client
        .get("/v1/catalog/datacenters", &[])
        .await
        .and_then(|r| r.ok())
    {
        Ok(r) => r.json()?,
        Err(e) => return Ok(fail(format!("Error listing datacenters: {e}"))),
    };
    for dc in dcs {
        println!("{dc}");
    }
    Ok(0)
}

async fn nodes(a: NodesArgs) -> anyhow::Result<u8> {
    let client = Client::new(&a.http)?;
    let mut q = meta_query(&a.node_meta);
    if let Some(f) = &a.filter {
        q.push(("filter", f.clone()));
    }
    if let Some(n) = &a.near {
        q.push(("near", n.clone()));
    }
    let nodes: Vec<Node> = match &a.service {
        Some(svc) => {
            let path = format!("/v1/catalog/service/{svc}");
            let list: Vec<ServiceNode> = match client.get(&path, &q).await.and_then(|r| r.ok()) {
                Ok(r) => r.json()?,
                Err(e) => return Ok(fail(format!("Error listing nodes for service: {e}"))),
            };
            let mut seen = Vec::new();
            list.into_iter()
                .filter(|s| {
                    let new = !seen.contains(&s.node);
                    seen.push(s.node.clone());
                    new
                })
                .map(|s| Node {
                    id: s.id,
                    node: s.node,
                    address: s.address,
                    datacenter: s.datacenter,
                    tagged_addresses: s.tagged_addresses,
                    meta: s.node_meta,
                    ..Node::default()
                })
                .collect()
        }
        None => match client
            .get("/v1/catalog/nodes", &q)
            .await
            .and_then(|r| r.ok())
        {
            Ok(r) => r.json()?,
            Err(e) => return Ok(fail(format!("Error listing nodes: {e}"))),
        },
    };
    if nodes.is_empty() {
        eprintln!("No nodes match the given query - try expanding your search.");
        return Ok(0);
    }
    let mut rows = vec![if a.detailed {
        ["Node", "ID", "Address", "DC", "TaggedAddresses", "Meta"]
            .map(String::from)
            .to_vec()
    } else {
        ["Node", "ID", "Address", "DC"].map(String::from).to_vec()
    }];
    for n in nodes {
        let id = if a.detailed {
            n.id.clone()
        } else {
            n.id.split('-').next().unwrap_or_default().to_string()
        };
        let mut row = vec![n.node.clone(), id, n.address.clone(), n.datacenter.clone()];
        if a.detailed {
            row.push(map_text(&n.tagged_addresses));
            row.push(map_text(&n.meta));
        }
        rows.push(row);
    }
    print!("{}", columnize(&rows));
    Ok(0)
}

async fn services(a: ServicesArgs) -> anyhow::Result<u8> {
    let client = Client::new(&a.http)?;
    let services: BTreeMap<String, Vec<String>> = match &a.node {
        Some(node) => {
            let path = format!("/v1/catalog/node/{node}");
            let found: Option<NodeServices> =
                match client.get(&path, &[]).await.and_then(|r| r.ok()) {
                    Ok(r) => r.json()?,
                    Err(e) => return Ok(fail(format!("Error listing services for node: {e}"))),
                };
            let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for s in found.map(|f| f.services).unwrap_or_default().into_values() {
                m.entry(s.service).or_default().extend(s.tags);
            }
            m
        }
        None => {
            let q = meta_query(&a.node_meta);
            match client
                .get("/v1/catalog/services", &q)
                .await
                .and_then(|r| r.ok())
            {
                Ok(r) => r.json()?,
                Err(e) => return Ok(fail(format!("Error listing services: {e}"))),
            }
        }
    };
    if services.is_empty() {
        eprintln!("No services match the given query - try expanding your search.");
        return Ok(0);
    }
    if a.tags {
        let width = services.keys().map(|k| k.len()).max().unwrap_or(0) + 6;
        for (name, mut tags) in services {
            tags.sort();
            tags.dedup();
            println!("{}", format!("{name:<width$}{}", tags.join(",")).trim_end());
        }
    } else {
        for name in services.keys() {
            println!("{name}");
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columnize_pads_all_but_the_last_column() {
        let rows = vec![
            vec!["Node".to_string(), "ID".to_string(), "DC".to_string()],
            vec![
                "a-long-name".to_string(),
                "1".to_string(),
                "dc1".to_string(),
            ],
        ];
        assert_eq!(
            columnize(&rows),
            "Node         ID  DC\na-long-name  1   dc1\n"
        );
    }
}
