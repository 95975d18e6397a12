//! `cairn event`: fires a user event through the local agent.

use clap::Args;

use super::client::{Client, HttpFlags};
use super::fail;

#[derive(Debug, Args)]
pub struct EventArgs {
    #[command(flatten)]
    http: HttpFlags,
    /// Event name
    #[arg(long, default_value = "")]
    name: String,
    /// Regular expression for the node names that should act on it
    #[arg(long, default_value = "")]
    node: String,
    /// Regular expression for the services that should act on it
    #[arg(long, default_value = "")]
    service: String,
    /// Regular expression for the service tags that should act on it (with -service)
    #[arg(long, default_value = "")]
    tag: String,
    /// The payload
    #[arg(allow_hyphen_values = true)]
    payload: Vec<String>,
}

pub async fn run(a: EventArgs) -> u8 {
    if a.name.is_empty() {
        return fail("Event name must be specified");
    }
    if !a.tag.is_empty() && a.service.is_empty() {
        return fail("Cannot provide tag filter without service filter.");
    }
    if a.payload.len() > 1 {
        return fail("Too many command line arguments.");
    }
    let client = match Client::new(&a.http) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let mut q = Vec::new();
    for (k, v) in [("node", &a.node), ("service", &a.service), ("tag", &a.tag)] {
        if !v.is_empty() {
            q.push((k, v.clone()));
        }
    }
    let body = a
        .payload
        .first()
        .map(|p| p.as_bytes().to_vec())
        .unwrap_or_default();
    let path = format!("/v1/event/fire/{}", a.name);
    match client.put(&path, &q, body).await.and_then(|r| r.ok()) {
        Ok(reply) => match reply.json::<serde_json::Value>() {
            Ok(ev) => {
                println!("Event ID: {}", ev["ID"].as_str().unwrap_or_default());
                0
            }
            Err(e) => fail(format!("Error firing event: {e}")),
        },
        Err(e) => fail(format!("Error firing event: {e}")),
    }
}
