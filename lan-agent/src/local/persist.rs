//! Services and checks registered through the API, saved under `<data_dir>/local/` so a
//! restarted agent brings them back (config-file entries are re-read from the files).
//!
//! One JSON file per entry, named by the SHA-256 of its ID, written to a temporary file,
//! fsynced and renamed into place: a crash leaves either the old or the new file. TTL checks
//! also save their last status and when they expire, so a restart keeps their state until
//! the TTL would have run out, as Consul does.

use std::io::Write;
use std::path::{Path, PathBuf};

use cairn_shared::api::{CheckStatus, HealthCheck, NodeService};
use serde::{Deserialize, Serialize};

use super::definition::CheckType;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedService {
    pub service: NodeService,
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedCheck {
    pub check: HealthCheck,
    pub def: CheckType,
    pub token: String,
}

/// A TTL check's last reported state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedTtl {
    pub check_id: String,
    pub status: CheckStatus,
    pub output: String,
    /// Wall-clock milliseconds when the TTL runs out.
    pub expires_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a saved entry: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone)]
pub struct Persist {
    root: PathBuf,
}

fn file_name(id: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        + ".json"
}

impl Persist {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("local"),
        }
    }

    fn dir(&self, kind: &str) -> PathBuf {
        self.root.join(kind)
    }

    fn write<T: Serialize>(&self, kind: &str, id: &str, value: &T) -> Result<(), PersistError> {
        let dir = self.dir(kind);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PersistError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(file_name(id));
        let tmp = dir.join(format!(".{}.tmp", file_name(id)));
        let body = serde_json::to_vec_pretty(value).map_err(|source| PersistError::Corrupt {
            path: path.clone(),
            source,
        })?;
        write_via(&tmp, &path, &body).map_err(io(&path))
    }

    fn remove(&self, kind: &str, id: &str) -> Result<(), PersistError> {
        let path = self.dir(kind).join(file_name(id));
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(PersistError::Io { path, source }),
        }
    }

    fn load<T: for<'de> Deserialize<'de>>(&self, kind: &str) -> Result<Vec<T>, PersistError> {
        let dir = self.dir(kind);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(PersistError::Io { path: dir, source }),
        };
        let mut out = Vec::new();
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        for path in paths {
            let body = std::fs::read(&path).map_err(|source| PersistError::Io {
                path: path.clone(),
                source,
            })?;
            let value = serde_json::from_slice(&body)
                .map_err(|source| PersistError::Corrupt { path, source })?;
            out.push(value);
        }
        Ok(out)
    }

    pub fn save_service(&self, s: &SavedService) -> Result<(), PersistError> {
        self.write("services", &s.service.id, s)
    }

    pub fn drop_service(&self, id: &str) -> Result<(), PersistError> {
        self.remove("services", id)
    }

    pub fn services(&self) -> Result<Vec<SavedService>, PersistError> {
        self.load("services")
    }

    pub fn save_check(&self, c: &SavedCheck) -> Result<(), PersistError> {
        self.write("checks", &c.check.check_id, c)
    }

    pub fn drop_check(&self, id: &str) -> Result<(), PersistError> {
        self.remove("checks", id)?;
        self.remove("ttl", id)
    }

    pub fn checks(&self) -> Result<Vec<SavedCheck>, PersistError> {
        self.load("checks")
    }

    pub fn save_ttl(&self, t: &SavedTtl) -> Result<(), PersistError> {
        self.write("ttl", &t.check_id, t)
    }

    pub fn ttls(&self) -> Result<Vec<SavedTtl>, PersistError> {
        self.load("ttl")
    }
}

/// Writes `body` to `path` through `tmp`: fsynced, renamed, the directory fsynced, so a
/// crash leaves the old file or the new one, never half of one.
fn write_via(tmp: &Path, path: &Path, body: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// [`write_via`] with a hidden temporary file beside `path`.
pub fn write_atomic(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    write_via(&path.with_file_name(format!(".{name}.tmp")), path, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_removal() {
        let dir = std::env::temp_dir().join(format!("cairn-persist-{}", std::process::id()));
        let p = Persist::new(&dir);
        let svc = SavedService {
            service: NodeService {
                id: "web/1 with spaces".into(),
                service: "web".into(),
                ..NodeService::default()
            },
            token: "t".into(),
        };
        p.save_service(&svc).unwrap();
        let loaded = p.services().unwrap();
        assert_eq!(loaded[0].service, svc.service);
        p.drop_service("web/1 with spaces").unwrap();
        assert!(p.services().unwrap().is_empty());
        std::fs::write(p.dir("services").join("bad.json"), b"{").unwrap();
        let err = p.services().unwrap_err().to_string();
        assert!(err.contains("bad.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
