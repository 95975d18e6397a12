//! `cairn query create|list|read|delete|execute`: a thin client of `/v1/query` (Consul has
//! no such command; this mirrors the API and prints what it answers).

use clap::{ArgAction, Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use super::catalog::columnize;
use super::client::{Client, HttpFlags};
use super::fail;

#[derive(Debug, Subcommand)]
pub enum QueryCommand {
    /// Create a prepared query; prints its ID
    Create(CreateArgs),
    /// List prepared queries
    List(HttpOnly),
    /// Print one prepared query as JSON
    Read(WithId),
    /// Delete a prepared query
    Delete(WithId),
    /// Run a prepared query (by ID or name) and list the instances it picks
    Execute(ExecuteArgs),
}

#[derive(Debug, Args)]
pub struct HttpOnly {
    #[command(flatten)]
    http: HttpFlags,
}

#[derive(Debug, Args)]
pub struct WithId {
    #[command(flatten)]
    http: HttpFlags,
    id: String,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    http: HttpFlags,
    /// The query's name (DNS: NAME.query.consul)
    #[arg(long, default_value = "")]
    name: String,
    /// The service it selects
    #[arg(long, default_value = "")]
    service: String,
    /// Required tags, `!tag` to exclude (repeatable)
    #[arg(long)]
    tag: Vec<String>,
    /// Leave out instances with warning checks too
    #[arg(long = "only-passing", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    only_passing: bool,
    /// Sort near this node (`_agent`, `_ip`)
    #[arg(long, default_value = "")]
    near: String,
    /// Fail over to this many nearest other datacenters
    #[arg(long = "nearest-n", default_value_t = 0)]
    nearest_n: i64,
    /// Then to these datacenters, in order (repeatable)
    #[arg(long = "failover-dc")]
    failover_dc: Vec<String>,
    /// DNS TTL for its answers
    #[arg(long, default_value = "")]
    ttl: String,
    /// Make it a name-prefix template
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    template: bool,
    /// The template's regexp (`${match(N)}`)
    #[arg(long, default_value = "")]
    regexp: String,
    /// A whole definition as JSON (the API's body) instead of the flags above
    #[arg(long, default_value = "")]
    json: String,
}

#[derive(Debug, Args)]
pub struct ExecuteArgs {
    #[command(flatten)]
    http: HttpFlags,
    id_or_name: String,
    /// Sort near this node (`_agent`, `_ip`)
    #[arg(long, default_value = "")]
    near: String,
    /// At most this many instances
    #[arg(long, default_value_t = 0)]
    limit: u32,
}

pub async fn run(cmd: QueryCommand) -> u8 {
    go(cmd).await.unwrap_or_else(fail)
}

fn definition(a: &CreateArgs) -> anyhow::Result<Value> {
    if !a.json.is_empty() {
        return serde_json::from_str(&a.json)
            .map_err(|e| anyhow::anyhow!("-json is not valid JSON: {e}"));
    }
    let mut service = json!({
        "Service": a.service,
        "OnlyPassing": a.only_passing,
        "Near": a.near,
        "Failover": {"NearestN": a.nearest_n},
    });
    if !a.tag.is_empty() {
        service["Tags"] = json!(a.tag);
    }
    if !a.failover_dc.is_empty() {
        service["Failover"]["Datacenters"] = json!(a.failover_dc);
    }
    let mut q = json!({"Name": a.name, "Service": service, "DNS": {"TTL": a.ttl}});
    if a.template || !a.regexp.is_empty() {
        q["Template"] = json!({"Type": "name_prefix_match", "Regexp": a.regexp});
    }
    Ok(q)
}

async fn go(cmd: QueryCommand) -> anyhow::Result<u8> {
    match cmd {
        QueryCommand::Create(a) => {
            let client = Client::new(&a.http)?;
            let body = serde_json::to_vec(&definition(&a)?)?;
            let reply = client
                .call(Method::POST, "/v1/query", &[], Some(body))
                .await?;
            if !reply.status.is_success() {
                return Ok(fail(format!("Error creating query: {}", reply.text())));
            }
            let v: Value = reply.json()?;
            println!("{}", v["ID"].as_str().unwrap_or_default());
            Ok(0)
        }
        QueryCommand::List(a) => {
            let client = Client::new(&a.http)?;
            let list: Vec<Value> = client.get("/v1/query", &[]).await?.ok()?.json()?;
            let mut rows = vec![
                ["ID", "Name", "Service", "Failover"]
                    .map(String::from)
                    .to_vec(),
            ];
            for q in &list {
                let f = &q["Service"]["Failover"];
                let dcs: Vec<&str> = f["Datacenters"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                rows.push(vec![
                    q["ID"].as_str().unwrap_or_default().to_string(),
                    q["Name"].as_str().unwrap_or_default().to_string(),
                    q["Service"]["Service"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    failover_summary(f["NearestN"].as_i64().unwrap_or(0), &dcs),
                ]);
            }
            print!("{}", columnize(&rows));
            Ok(0)
        }
        QueryCommand::Read(a) => {
            let client = Client::new(&a.http)?;
            let reply = client.get(&format!("/v1/query/{}", a.id), &[]).await?;
            if !reply.status.is_success() {
                return Ok(fail(format!("Error reading query: {}", reply.text())));
            }
            let v: Value = reply.json()?;
            println!("{}", serde_json::to_string_pretty(&v[0])?);
            Ok(0)
        }
        QueryCommand::Delete(a) => {
            let client = Client::new(&a.http)?;
            let reply = client.delete(&format!("/v1/query/{}", a.id), &[]).await?;
            if !reply.status.is_success() {
                return Ok(fail(format!("Error deleting query: {}", reply.text())));
            }
            println!("Deleted query {}", a.id);
            Ok(0)
        }
        QueryCommand::Execute(a) => {
            let client = Client::new(&a.http)?;
            let mut q = Vec::new();
            if !a.near.is_empty() {
                q.push(("near", a.near.clone()));
            }
            if a.limit > 0 {
                q.push(("limit", a.limit.to_string()));
            }
            let path = format!("/v1/query/{}/execute", a.id_or_name);
            let reply = client.get(&path, &q).await?;
            if !reply.status.is_success() {
                return Ok(fail(format!("Error executing query: {}", reply.text())));
            }
            let v: Value = reply.json()?;
            let mut rows = vec![
                ["Node", "Address", "Port", "Datacenter"]
                    .map(String::from)
                    .to_vec(),
            ];
            for n in v["Nodes"].as_array().into_iter().flatten() {
                let address = match n["Service"]["Address"].as_str() {
                    Some(a) if !a.is_empty() => a,
                    _ => n["Node"]["Address"].as_str().unwrap_or_default(),
                };
                rows.push(vec![
                    n["Node"]["Node"].as_str().unwrap_or_default().to_string(),
                    address.to_string(),
                    n["Service"]["Port"].to_string(),
                    n["Node"]["Datacenter"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                ]);
            }
            print!("{}", columnize(&rows));
            println!(
                "Service {} from {} after {} failovers",
                v["Service"].as_str().unwrap_or_default(),
                v["Datacenter"].as_str().unwrap_or_default(),
                v["Failovers"]
            );
            Ok(0)
        }
    }
}

/// `nearest 2, then dc3,dc4`; `-` for a query that never fails over.
fn failover_summary(nearest_n: i64, dcs: &[&str]) -> String {
    let mut parts = Vec::new();
    if nearest_n > 0 {
        parts.push(format!("nearest {nearest_n}"));
    }
    if !dcs.is_empty() {
        parts.push(dcs.join(","));
    }
    if parts.is_empty() {
        "-".to_string()
    } else {
        parts.join(", then ")
    }
}

#[cfg(test)]
mod tests {
    use super::failover_summary;

    #[test]
    fn failover_reads_in_the_order_it_is_tried() {
        assert_eq!(failover_summary(0, &[]), "-");
        assert_eq!(failover_summary(2, &[]), "nearest 2");
        assert_eq!(failover_summary(0, &["dc3"]), "dc3");
        assert_eq!(
            failover_summary(1, &["dc3", "dc4"]),
            "nearest 1, then dc3,dc4"
        );
    }
}
