//! `cairn operator raft list-peers|remove-peer|transfer-leader`, `cairn operator usage
//! instances` and `cairn snapshot save|restore|inspect`.

use clap::{Args, Subcommand};
use reqwest::Method;

use super::catalog::columnize;
use super::client::{Client, HttpFlags};
use super::fail;
use cairn_shared::api::RaftConfiguration;

#[derive(Debug, Subcommand)]
pub enum OperatorCommand {
    /// Raft operations
    #[command(subcommand)]
    Raft(RaftCommand),
}

#[derive(Debug, Subcommand)]
pub enum RaftCommand {
    /// Show the servers of the Raft configuration
    ListPeers(ListPeersArgs),
    /// Remove a server from the Raft configuration
    RemovePeer(RemovePeerArgs),
    /// Hand leadership to another voter
    TransferLeader(TransferLeaderArgs),
}

#[derive(Debug, Args)]
pub struct TransferLeaderArgs {
    #[command(flatten)]
    http: HttpFlags,
    /// The node ID of the server to take over (any up-to-date voter when absent)
    #[arg(long)]
    id: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListPeersArgs {
    #[command(flatten)]
    http: HttpFlags,
}

#[derive(Debug, Args)]
pub struct RemovePeerArgs {
    #[command(flatten)]
    http: HttpFlags,
    /// The server's RPC address (ip:port)
    #[arg(long)]
    address: Option<String>,
    /// The server's node ID
    #[arg(long)]
    id: Option<String>,
}

pub async fn run(cmd: OperatorCommand) -> u8 {
    let result = match cmd {
        OperatorCommand::Raft(RaftCommand::ListPeers(a)) => list_peers(a).await,
        OperatorCommand::Raft(RaftCommand::RemovePeer(a)) => remove_peer(a).await,
        OperatorCommand::Raft(RaftCommand::TransferLeader(a)) => transfer_leader(a).await,
    };
    result.unwrap_or_else(|e| fail(format!("Error: {e:#}")))
}

async fn list_peers(a: ListPeersArgs) -> anyhow::Result<u8> {
    let client = Client::new(&a.http)?;
    let reply = client.get("/v1/operator/raft/configuration", &[]).await?;
    if !reply.status.is_success() {
        return Ok(fail(format!(
            "Error getting peers: Failed to retrieve raft configuration: {}",
            reply.text()
        )));
    }
    let config: RaftConfiguration = reply.json()?;
    let leader_index = config
        .servers
        .iter()
        .find(|s| s.leader)
        .map_or(0, |s| s.last_index);
    let mut rows = vec![
        [
            "Node",
            "ID",
            "Address",
            "State",
            "Voter",
            "RaftProtocol",
            "Commit Index",
            "Trails Leader By",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for s in &config.servers {
        let state = if s.leader { "leader" } else { "follower" };
        let trails = leader_index.saturating_sub(s.last_index);
        rows.push(vec![
            s.node.clone(),
            s.id.clone(),
            s.address.clone(),
            state.to_string(),
            s.voter.to_string(),
            s.protocol_version.clone(),
            s.last_index.to_string(),
            if s.leader {
                "-".to_string()
            } else {
                format!("{trails} commits")
            },
        ]);
    }
    println!("{}", columnize(&rows));
    Ok(0)
}

async fn remove_peer(a: RemovePeerArgs) -> anyhow::Result<u8> {
    let (key, value) = match (&a.address, &a.id) {
        (Some(addr), None) => ("address", addr.clone()),
        (None, Some(id)) => ("id", id.clone()),
        _ => {
            return Ok(fail(
                "Error removing peer: Must specify either -address or -id",
            ));
        }
    };
    let client = Client::new(&a.http)?;
    let reply = client
        .delete("/v1/operator/raft/peer", &[(key, value.clone())])
        .await?;
    if !reply.status.is_success() {
        return Ok(fail(format!("Error removing peer: {}", reply.text())));
    }
    println!("Removed peer with {key} \"{value}\"");
    Ok(0)
}

async fn transfer_leader(a: TransferLeaderArgs) -> anyhow::Result<u8> {
    let client = Client::new(&a.http)?;
    let query: Vec<(&str, String)> = a.id.iter().map(|id| ("id", id.clone())).collect();
    let reply = client
        .post("/v1/operator/raft/transfer-leader", &query)
        .await?;
    if !reply.status.is_success() {
        return Ok(fail(format!(
            "Error transferring leadership: {}",
            reply.text()
        )));
    }
    println!("Success");
    Ok(0)
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save a snapshot of the whole state to a file
    Save(SnapshotFileArgs),
    /// Replace the whole state with a snapshot file
    Restore(SnapshotFileArgs),
    /// Show what a snapshot file holds
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
pub struct SnapshotFileArgs {
    #[command(flatten)]
    http: HttpFlags,
    /// The snapshot file
    file: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The snapshot file
    file: std::path::PathBuf,
}

pub async fn snapshot(cmd: SnapshotCommand) -> u8 {
    let result = match cmd {
        SnapshotCommand::Save(a) => save(a).await,
        SnapshotCommand::Restore(a) => restore(a).await,
        SnapshotCommand::Inspect(a) => inspect(&a.file),
    };
    result.unwrap_or_else(|e| fail(format!("Error: {e:#}")))
}

async fn save(a: SnapshotFileArgs) -> anyhow::Result<u8> {
    let client = Client::new(&a.http)?;
    let reply = client.get("/v1/snapshot", &[]).await?;
    if !reply.status.is_success() {
        return Ok(fail(format!("Error saving snapshot: {}", reply.text())));
    }
    // Verify before keeping it, as Consul does.
    let snap = crate::raft::snapshot::SnapshotFile::decode(&reply.body)
        .map_err(|e| anyhow::anyhow!("Error verifying snapshot file: {e}"))?;
    let tmp = a.file.with_extension("tmp");
    std::fs::write(&tmp, &reply.body)?;
    std::fs::rename(&tmp, &a.file)?;
    println!(
        "Saved and verified snapshot to index {}",
        snap.store.last_index()
    );
    Ok(0)
}

async fn restore(a: SnapshotFileArgs) -> anyhow::Result<u8> {
    let data =
        std::fs::read(&a.file).map_err(|e| anyhow::anyhow!("Error opening snapshot file: {e}"))?;
    let client = Client::new(&a.http)?;
    let reply = client
        .call(Method::PUT, "/v1/snapshot", &[], Some(data))
        .await?;
    if !reply.status.is_success() {
        return Ok(fail(format!("Error restoring snapshot: {}", reply.text())));
    }
    println!("Restored snapshot");
    Ok(0)
}

fn inspect(path: &std::path::Path) -> anyhow::Result<u8> {
    let (snap, bytes) = crate::raft::snapshot::load_file(path).map_err(|e| anyhow::anyhow!(e))?;
    let c = snap.store.counts();
    let term = snap.last_log_id.map_or(0, |l| l.leader_id.term);
    let rows: Vec<Vec<String>> = [
        ("ID", snap.snapshot_id.clone()),
        ("Size", bytes.len().to_string()),
        ("Index", snap.store.last_index().to_string()),
        ("Term", term.to_string()),
        ("Version", "1".to_string()),
        ("Datacenter", snap.datacenter.clone()),
        ("Nodes", c.nodes.to_string()),
        ("Services", c.services.to_string()),
        ("Checks", c.checks.to_string()),
        ("KV entries", c.kv.to_string()),
        ("Sessions", c.sessions.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| vec![format!(" {k}"), v])
    .collect();
    println!("{}", columnize(&rows));
    Ok(0)
}
