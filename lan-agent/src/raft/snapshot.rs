//! The snapshot file: the whole state store at a log position, checksummed.
//!
//! One format serves three purposes: the files a server keeps under
//! `<data-dir>/raft/snapshots`, what a leader streams to a far-behind follower, and what
//! `/v1/snapshot` and `cairn snapshot save` hand out. Layout: the magic `CAIRNSNP`, a
//! format version byte, the CRC32 of the body (4 bytes, big-endian), the body length
//! (8 bytes, big-endian), then the body: [`SnapshotFile`] in MessagePack. Anything that
//! does not check out is refused with the reason and, for files, the path.

use std::io::Write;
use std::path::{Path, PathBuf};

use openraft::{LogId, SnapshotMeta, StoredMembership};
use serde::{Deserialize, Serialize};

use super::{NodeId, RaftNode};
use crate::catalog::Store;

const MAGIC: &[u8; 8] = b"CAIRNSNP";
const VERSION: u8 = 1;
const HEADER: usize = 8 + 1 + 4 + 8;
/// Snapshot files kept besides the newest, in case the newest turns out bad.
const KEEP: usize = 1;

/// What a snapshot holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotFile {
    pub last_log_id: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, RaftNode>,
    pub snapshot_id: String,
    /// The datacenter the state came from, shown by `cairn snapshot inspect`.
    pub datacenter: String,
    pub store: Store,
}

impl SnapshotFile {
    pub fn meta(&self) -> SnapshotMeta<NodeId, RaftNode> {
        SnapshotMeta {
            last_log_id: self.last_log_id,
            last_membership: self.membership.clone(),
            snapshot_id: self.snapshot_id.clone(),
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let body = rmp_serde::to_vec_named(self).map_err(|e| format!("encoding snapshot: {e}"))?;
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        out.extend_from_slice(&(body.len() as u64).to_be_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Checks the header, length and checksum, then decodes.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err("not a Cairn snapshot (bad magic)".into());
        }
        if bytes[8] != VERSION {
            return Err(format!("unsupported snapshot format version {}", bytes[8]));
        }
        let crc = u32::from_be_bytes(bytes[9..13].try_into().expect("4 bytes"));
        let len = u64::from_be_bytes(bytes[13..21].try_into().expect("8 bytes"));
        let body = &bytes[HEADER..];
        if body.len() as u64 != len {
            return Err(format!(
                "snapshot is truncated or padded: header says {len} bytes, found {}",
                body.len()
            ));
        }
        if crc32fast::hash(body) != crc {
            return Err("snapshot checksum mismatch (corrupt)".into());
        }
        rmp_serde::from_slice(body).map_err(|e| format!("undecodable snapshot: {e}"))
    }
}

/// The directory of snapshot files; names sort by log position.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    dir: PathBuf,
}

impl SnapshotDir {
    pub fn open(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    fn name(last: Option<&LogId<NodeId>>) -> String {
        let (term, index) = last.map_or((0, 0), |l| (l.leader_id.term, l.index));
        format!("{index:020}-{term:020}.snap")
    }

    /// Writes a snapshot durably (temporary file, fsync, rename, fsync of the directory),
    /// then drops older ones.
    pub fn save(&self, snap: &SnapshotFile, bytes: &[u8]) -> std::io::Result<PathBuf> {
        let path = self.dir.join(Self::name(snap.last_log_id.as_ref()));
        let tmp = path.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        let mut all = self.files()?;
        while all.len() > KEEP + 1 {
            let old = all.remove(0);
            let _ = std::fs::remove_file(old);
        }
        Ok(path)
    }

    fn files(&self) -> std::io::Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "snap"))
            .collect();
        files.sort();
        Ok(files)
    }

    /// The newest snapshot, verified. A bad file is an error naming it: the log before it
    /// may already be compacted away, so silently falling back would lose data.
    pub fn load_latest(&self) -> Result<Option<(SnapshotFile, Vec<u8>)>, String> {
        let files = self
            .files()
            .map_err(|e| format!("reading {}: {e}", self.dir.display()))?;
        let Some(path) = files.last() else {
            return Ok(None);
        };
        load_file(path).map(Some)
    }
}

/// Reads and verifies one snapshot file; errors name the file.
pub fn load_file(path: &Path) -> Result<(SnapshotFile, Vec<u8>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let snap = SnapshotFile::decode(&bytes)
        .map_err(|e| format!("snapshot file {}: {e}", path.display()))?;
    Ok((snap, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SnapshotFile {
        SnapshotFile {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(3, 1), 42)),
            membership: StoredMembership::default(),
            snapshot_id: "s1".into(),
            datacenter: "dc1".into(),
            store: Store::new(),
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cairn-snap-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trips_and_detects_damage() {
        let snap = sample();
        let bytes = snap.encode().unwrap();
        let back = SnapshotFile::decode(&bytes).unwrap();
        assert_eq!(back.last_log_id, snap.last_log_id);

        let mut flipped = bytes.clone();
        let mid = HEADER + (flipped.len() - HEADER) / 2;
        flipped[mid] ^= 0x40;
        assert!(
            SnapshotFile::decode(&flipped)
                .unwrap_err()
                .contains("checksum")
        );
        let cut = &bytes[..bytes.len() - 3];
        assert!(SnapshotFile::decode(cut).unwrap_err().contains("truncated"));
        assert!(
            SnapshotFile::decode(b"hello")
                .unwrap_err()
                .contains("magic")
        );
    }

    #[test]
    fn a_corrupt_file_is_reported_with_its_path() {
        let dir = SnapshotDir::open(temp_dir("corrupt")).unwrap();
        let snap = sample();
        let path = dir.save(&snap, &snap.encode().unwrap()).unwrap();
        assert!(dir.load_latest().unwrap().is_some());
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        let err = dir.load_latest().unwrap_err();
        assert!(err.contains(&path.display().to_string()), "{err}");
    }
}
