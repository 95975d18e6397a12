//! `cairn rtt [-wan] NODE1 [NODE2]`: the round-trip time two nodes' coordinates predict,
//! computed here from `/v1/coordinate/nodes` as Consul's CLI does.

use cairn_shared::api::CoordinateEntry;
use clap::{ArgAction, Args};

use super::client::{Client, HttpFlags};
use super::fail;

#[derive(Debug, Args)]
pub struct RttArgs {
    #[command(flatten)]
    http: HttpFlags,
    /// Use WAN coordinates (node names as NODE.DC)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", action = ArgAction::Set)]
    wan: bool,
    nodes: Vec<String>,
}

pub async fn run(a: RttArgs) -> u8 {
    go(a).await.unwrap_or_else(fail)
}

async fn go(a: RttArgs) -> anyhow::Result<u8> {
    if a.nodes.is_empty() || a.nodes.len() > 2 {
        return Ok(fail("One or two node names must be specified"));
    }
    let client = Client::new(&a.http)?;
    let (first, second) = match a.nodes.as_slice() {
        [one] => {
            let me: serde_json::Value = client.get("/v1/agent/self", &[]).await?.ok()?.json()?;
            let mut name = me["Config"]["NodeName"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if a.wan {
                name = format!(
                    "{name}.{}",
                    me["Config"]["Datacenter"].as_str().unwrap_or_default()
                );
            }
            (one.clone(), name)
        }
        [one, two] => (one.clone(), two.clone()),
        _ => unreachable!("argument count checked above"),
    };
    let (entries, kind) = if a.wan {
        for n in [&first, &second] {
            if n.split('.').count() != 2 {
                return Ok(fail(
                    "Node names must be specified as <node name>.<datacenter> with -wan",
                ));
            }
        }
        let dcs: Vec<serde_json::Value> = client
            .get("/v1/coordinate/datacenters", &[])
            .await?
            .ok()?
            .json()?;
        let mut entries = Vec::new();
        for dc in dcs {
            let name = dc["Datacenter"].as_str().unwrap_or_default().to_string();
            let coords: Vec<CoordinateEntry> =
                serde_json::from_value(dc["Coordinates"].clone()).unwrap_or_default();
            entries.extend(coords.into_iter().map(|mut c| {
                c.node = format!("{}.{name}", c.node);
                c
            }));
        }
        (entries, "WAN")
    } else {
        let entries: Vec<CoordinateEntry> = client
            .get("/v1/coordinate/nodes", &[])
            .await?
            .ok()?
            .json()?;
        (entries, "LAN")
    };
    let find = |name: &str| {
        entries
            .iter()
            .find(|e| e.node.eq_ignore_ascii_case(name))
            .and_then(|e| e.coord.clone())
    };
    let Some(c1) = find(&first) else {
        return Ok(fail(format!(
            "Could not find a coordinate for node {first:?}"
        )));
    };
    let Some(c2) = find(&second) else {
        return Ok(fail(format!(
            "Could not find a coordinate for node {second:?}"
        )));
    };
    let ms = c1.distance_to_secs(&c2) * 1000.0;
    println!("Estimated {first} <-> {second} rtt: {ms:.3} ms (using {kind} coordinates)");
    Ok(0)
}
