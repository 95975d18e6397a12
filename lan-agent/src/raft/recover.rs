//! Outage recovery: when quorum is lost for good, an operator writes
//! `<data-dir>/raft/peers.json` on the surviving servers (Consul's format:
//! `[{"id": "<node-id>", "address": "<ip>:<port>", "non_voter": false}]`) and starts
//! them. Before Raft starts, each server appends a membership entry with exactly those
//! servers after its last log entry, so they elect a leader among themselves. The file is
//! then renamed to `peers.info` so a later restart does not apply it again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::storage::RaftLogStorage;
use openraft::{Entry, EntryPayload, LogId, Membership};
use serde::Deserialize;

use super::log_store::LogStore;
use super::{RaftNode, TypeConfig, raft_id};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Peer {
    id: String,
    address: String,
    #[serde(default)]
    non_voter: bool,
}

/// Applies `peers.json` if present. Returns the number of servers it named.
pub async fn apply_peers_json(
    raft_dir: &Path,
    log: &mut LogStore<TypeConfig>,
) -> Result<Option<usize>, String> {
    let path = raft_dir.join("peers.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let peers: Vec<Peer> = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not a valid peers file: {e}", path.display()))?;
    if peers.iter().all(|p| p.non_voter) {
        return Err(format!("{}: names no voting server", path.display()));
    }
    let mut nodes = BTreeMap::new();
    let mut voters = BTreeSet::new();
    for p in &peers {
        p.address
            .parse::<std::net::SocketAddr>()
            .map_err(|e| format!("{}: bad address {:?}: {e}", path.display(), p.address))?;
        let id = raft_id(&p.id);
        nodes.insert(
            id,
            RaftNode {
                name: p.id.clone(),
                addr: p.address.clone(),
                node_id: p.id.clone(),
            },
        );
        if !p.non_voter {
            voters.insert(id);
        }
    }
    let state = log
        .get_log_state()
        .await
        .map_err(|e| format!("reading the Raft log: {e}"))?;
    let Some(last) = state.last_log_id else {
        return Err(format!(
            "{}: this server has no Raft log to recover; start it without peers.json",
            path.display()
        ));
    };
    let entry = Entry::<TypeConfig> {
        log_id: LogId::new(last.leader_id, last.index + 1),
        payload: EntryPayload::Membership(Membership::new(vec![voters], nodes)),
    };
    log.append_raw(&entry).map_err(|e| e.to_string())?;
    let done = raft_dir.join("peers.info");
    std::fs::rename(&path, &done)
        .map_err(|e| format!("renaming {} to {}: {e}", path.display(), done.display()))?;
    tracing::warn!(
        servers = peers.len(),
        index = last.index + 1,
        "recovered the Raft configuration from peers.json"
    );
    Ok(Some(peers.len()))
}
