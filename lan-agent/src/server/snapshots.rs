//! Snapshots that move in pieces: a saved file a server holds while an agent reads it
//! part by part (`GET /v1/snapshot`), and an uploaded file the leader gathers before it
//! restores it (`PUT /v1/snapshot`). Every piece is at most [`SNAPSHOT_PART`] bytes, so no
//! RPC frame grows with the state (`docs/raft.md`, "Snapshots").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_shared::rpc::{RpcError, SNAPSHOT_PART, SnapshotPart};

/// How long a file waits for its next piece before it is dropped.
const IDLE: Duration = Duration::from_secs(60);
/// Files held at once, each way; the oldest goes first.
const MAX_HELD: usize = 4;

#[derive(Debug)]
struct Held {
    touched: Instant,
    bytes: Arc<Vec<u8>>,
}

/// Saved files being read, and uploads being gathered.
#[derive(Debug, Default)]
pub(super) struct Transfers {
    saves: Mutex<HashMap<String, Held>>,
    uploads: Mutex<HashMap<String, Held>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Drops idle entries, then the oldest while there are too many.
fn prune(map: &mut HashMap<String, Held>, now: Instant) {
    map.retain(|_, h| now.duration_since(h.touched) < IDLE);
    while map.len() >= MAX_HELD {
        let Some(oldest) = map
            .iter()
            .min_by_key(|(_, h)| h.touched)
            .map(|(k, _)| k.clone())
        else {
            break;
        };
        map.remove(&oldest);
    }
}

fn part(handle: &str, bytes: &[u8], offset: u64) -> Result<SnapshotPart, RpcError> {
    let start = usize::try_from(offset)
        .ok()
        .filter(|&o| o <= bytes.len())
        .ok_or_else(|| {
            RpcError::bad_request(format!("snapshot offset {offset} is past its end"))
        })?;
    let end = bytes.len().min(start + SNAPSHOT_PART);
    Ok(SnapshotPart {
        handle: handle.to_string(),
        total: bytes.len() as u64,
        offset,
        data: bytes[start..end].to_vec(),
    })
}

impl Transfers {
    /// Holds a saved file under a new handle naming `holder`, and answers its first part.
    /// A file that fits in one part is not held.
    pub(super) fn save(&self, holder: &str, bytes: Vec<u8>) -> Result<SnapshotPart, RpcError> {
        let handle = format!("{holder}/{}", uuid::Uuid::new_v4());
        let first = part(&handle, &bytes, 0)?;
        if first.data.len() < bytes.len() {
            let now = Instant::now();
            let mut saves = lock(&self.saves);
            prune(&mut saves, now);
            saves.insert(
                handle,
                Held {
                    touched: now,
                    bytes: Arc::new(bytes),
                },
            );
        }
        Ok(first)
    }

    /// The part at `offset` of a held file, or `None` when this server does not hold it.
    /// The file is let go once its last part is read.
    pub(super) fn read(&self, handle: &str, offset: u64) -> Option<Result<SnapshotPart, RpcError>> {
        let mut saves = lock(&self.saves);
        let held = saves.get_mut(handle)?;
        held.touched = Instant::now();
        let bytes = held.bytes.clone();
        let answer = part(handle, &bytes, offset);
        if let Ok(p) = &answer
            && p.offset + p.data.len() as u64 >= p.total
        {
            saves.remove(handle);
        }
        Some(answer)
    }

    /// Adds a piece to `upload` (a new upload starts at offset 0). Returns the whole file
    /// once the piece marked `done` arrives.
    pub(super) fn upload(
        &self,
        upload: &str,
        offset: u64,
        data: &[u8],
        done: bool,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, RpcError> {
        let now = Instant::now();
        let mut uploads = lock(&self.uploads);
        if offset == 0 {
            prune(&mut uploads, now);
            uploads.insert(
                upload.to_string(),
                Held {
                    touched: now,
                    bytes: Arc::new(Vec::new()),
                },
            );
        }
        let Some(held) = uploads.get_mut(upload) else {
            return Err(RpcError::internal(
                "Snapshot restore failed: the upload was interrupted (the leader changed or it \
                 waited too long); try again",
            ));
        };
        let bytes = Arc::make_mut(&mut held.bytes);
        if bytes.len() as u64 != offset {
            uploads.remove(upload);
            return Err(RpcError::bad_request(format!(
                "Snapshot restore failed: a piece at offset {offset} arrived out of order"
            )));
        }
        if bytes.len() + data.len() > limit {
            uploads.remove(upload);
            return Err(RpcError::new(
                cairn_shared::rpc::ErrorKind::TooLarge,
                format!("Snapshot of more than {limit} bytes is too large"),
            ));
        }
        bytes.extend_from_slice(data);
        held.touched = now;
        if !done {
            return Ok(None);
        }
        let held = uploads.remove(upload).expect("present: looked up above");
        Ok(Some(Arc::unwrap_or_clone(held.bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_file_is_read_in_parts_and_let_go_after_the_last() {
        let t = Transfers::default();
        let file: Vec<u8> = (0..SNAPSHOT_PART * 2 + 10).map(|i| i as u8).collect();
        let first = t.save("127.0.0.1:8300", file.clone()).unwrap();
        assert_eq!(first.data.len(), SNAPSHOT_PART);
        assert_eq!(first.total, file.len() as u64);
        assert_eq!(
            SnapshotPart::holder(&first.handle),
            Some("127.0.0.1:8300".parse().unwrap())
        );
        let mut got = first.data.clone();
        while (got.len() as u64) < first.total {
            let p = t.read(&first.handle, got.len() as u64).unwrap().unwrap();
            got.extend(p.data);
        }
        assert_eq!(got, file);
        assert!(
            t.read(&first.handle, 0).is_none(),
            "let go after the last part"
        );
        // A small file is answered whole and not held.
        let small = t.save("127.0.0.1:8300", vec![1, 2, 3]).unwrap();
        assert_eq!(small.data, [1, 2, 3]);
        assert!(t.read(&small.handle, 0).is_none());
    }

    #[test]
    fn an_upload_is_gathered_in_order_and_bounded() {
        let t = Transfers::default();
        assert_eq!(t.upload("u", 0, b"ab", false, 10).unwrap(), None);
        assert_eq!(t.upload("u", 2, b"cd", true, 10).unwrap().unwrap(), b"abcd");
        // Out of order, unknown, and oversize uploads fail and are forgotten.
        t.upload("v", 0, b"ab", false, 10).unwrap();
        assert!(t.upload("v", 5, b"x", false, 10).is_err());
        assert!(t.upload("v", 2, b"x", false, 10).is_err(), "forgotten");
        t.upload("w", 0, b"abcdef", false, 10).unwrap();
        let e = t.upload("w", 6, b"ghijk", true, 10).unwrap_err();
        assert_eq!(e.kind, cairn_shared::rpc::ErrorKind::TooLarge);
    }
}
