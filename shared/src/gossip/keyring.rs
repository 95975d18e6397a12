//! Gossip encryption: AES-GCM with 16, 24 or 32-byte keys (AES-128/192/256), as memberlist.
//!
//! A sealed packet is `[1][12-byte nonce][ciphertext + 16-byte tag]` (memberlist's version
//! 1, no padding). The primary key seals; every installed key is tried to open, which is
//! how a key is rotated across a pool without downtime: install everywhere, make it
//! primary everywhere, then remove the old one. The keyring persists under
//! `<data_dir>/serf/local.keyring` as a JSON array of base64 keys, primary first.

use std::path::{Path, PathBuf};

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::aes::Aes192;
use aes_gcm::{Aes128Gcm, Aes256Gcm, AesGcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("Invalid key: {0}")]
    Invalid(String),
    #[error("Key is not installed")]
    NotInstalled,
    #[error("Keyring is empty (encryption not enabled)")]
    Disabled,
    #[error("Removing the primary key is not allowed")]
    RemovePrimary,
    #[error("no installed key opens this message")]
    NoMatchingKey,
    #[error("message too short or of an unknown version")]
    Malformed,
    #[error("keyring file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// Decodes a base64 key and checks its length.
pub fn parse_key(b64: &str) -> Result<Vec<u8>, KeyError> {
    let key = STANDARD
        .decode(b64.trim())
        .map_err(|e| KeyError::Invalid(e.to_string()))?;
    match key.len() {
        16 | 24 | 32 => Ok(key),
        n => Err(KeyError::Invalid(format!(
            "key size must be 16, 24 or 32 bytes, got {n}"
        ))),
    }
}

pub fn encode_key(key: &[u8]) -> String {
    STANDARD.encode(key)
}

/// A new random 32-byte key, base64 (`cairn keygen`).
pub fn generate() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    encode_key(&key)
}

fn seal_with(key: &[u8], nonce: &[u8; NONCE_LEN], plain: &[u8]) -> Option<Vec<u8>> {
    let n = Nonce::from_slice(nonce);
    match key.len() {
        16 => Aes128Gcm::new_from_slice(key).ok()?.encrypt(n, plain).ok(),
        24 => AesGcm::<Aes192, U12>::new_from_slice(key)
            .ok()?
            .encrypt(n, plain)
            .ok(),
        32 => Aes256Gcm::new_from_slice(key).ok()?.encrypt(n, plain).ok(),
        _ => None,
    }
}

fn open_with(key: &[u8], nonce: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let n = Nonce::from_slice(nonce);
    match key.len() {
        16 => Aes128Gcm::new_from_slice(key).ok()?.decrypt(n, sealed).ok(),
        24 => AesGcm::<Aes192, U12>::new_from_slice(key)
            .ok()?
            .decrypt(n, sealed)
            .ok(),
        32 => Aes256Gcm::new_from_slice(key).ok()?.decrypt(n, sealed).ok(),
        _ => None,
    }
}

/// The installed keys, primary first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keyring {
    keys: Vec<Vec<u8>>,
}

impl Keyring {
    /// A keyring with one primary key.
    pub fn with_primary(key: Vec<u8>) -> Self {
        Self { keys: vec![key] }
    }

    /// Whether gossip is encrypted at all.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    pub fn primary(&self) -> Option<&[u8]> {
        self.keys.first().map(Vec::as_slice)
    }

    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.keys.iter().map(Vec::as_slice)
    }

    pub fn install(&mut self, key: Vec<u8>) {
        if !self.keys.contains(&key) {
            self.keys.push(key);
        }
    }

    pub fn use_key(&mut self, key: &[u8]) -> Result<(), KeyError> {
        let pos = self
            .keys
            .iter()
            .position(|k| k == key)
            .ok_or(KeyError::NotInstalled)?;
        let k = self.keys.remove(pos);
        self.keys.insert(0, k);
        Ok(())
    }

    pub fn remove(&mut self, key: &[u8]) -> Result<(), KeyError> {
        if self.primary() == Some(key) {
            return Err(KeyError::RemovePrimary);
        }
        let before = self.keys.len();
        self.keys.retain(|k| k != key);
        if self.keys.len() == before {
            return Err(KeyError::NotInstalled);
        }
        Ok(())
    }

    /// Seals with the primary key; without keys the packet goes as is.
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let Some(key) = self.primary() else {
            return plain.to_vec();
        };
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let Some(sealed) = seal_with(key, &nonce, plain) else {
            // Keys are checked on install, so this cannot happen; never send plaintext.
            return Vec::new();
        };
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens with whichever installed key sealed it.
    pub fn open(&self, packet: &[u8]) -> Result<Vec<u8>, KeyError> {
        if !self.enabled() {
            return Ok(packet.to_vec());
        }
        if packet.len() < 1 + NONCE_LEN + TAG_LEN || packet[0] != VERSION {
            return Err(KeyError::Malformed);
        }
        let (nonce, sealed) = packet[1..].split_at(NONCE_LEN);
        self.keys
            .iter()
            .find_map(|k| open_with(k, nonce, sealed))
            .ok_or(KeyError::NoMatchingKey)
    }

    /// `<data_dir>/serf/local.keyring`.
    pub fn file(data_dir: &Path) -> PathBuf {
        data_dir.join("serf").join("local.keyring")
    }

    pub fn load(path: &Path) -> Result<Option<Self>, KeyError> {
        let err = |reason: String| KeyError::File {
            path: path.to_path_buf(),
            reason,
        };
        let body = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(e.to_string())),
        };
        let list: Vec<String> = serde_json::from_slice(&body).map_err(|e| err(e.to_string()))?;
        let keys = list
            .iter()
            .map(|k| parse_key(k))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?;
        Ok(Some(Self { keys }))
    }

    /// Writes the keyring atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let err = |reason: String| KeyError::File {
            path: path.to_path_buf(),
            reason,
        };
        let list: Vec<String> = self.keys.iter().map(|k| encode_key(k)).collect();
        let body = serde_json::to_vec(&list).map_err(|e| err(e.to_string()))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &body)
            .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| err(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_with_every_key_size() {
        for len in [16, 24, 32] {
            let ring = Keyring::with_primary(vec![7u8; len]);
            let sealed = ring.seal(b"hello");
            assert_eq!(sealed[0], VERSION);
            assert_eq!(sealed.len(), 1 + NONCE_LEN + 5 + TAG_LEN);
            assert_eq!(ring.open(&sealed).unwrap(), b"hello");
        }
    }

    #[test]
    fn wrong_key_and_garbage_are_refused() {
        let a = Keyring::with_primary(vec![1u8; 32]);
        let b = Keyring::with_primary(vec![2u8; 32]);
        assert_eq!(b.open(&a.seal(b"x")), Err(KeyError::NoMatchingKey));
        assert_eq!(a.open(b"short"), Err(KeyError::Malformed));
        let mut tampered = a.seal(b"payload");
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(a.open(&tampered), Err(KeyError::NoMatchingKey));
    }

    #[test]
    fn rotation_keeps_old_packets_readable_until_removal() {
        let old = vec![1u8; 32];
        let new = vec![2u8; 32];
        let mut ring = Keyring::with_primary(old.clone());
        let before = ring.seal(b"old");
        ring.install(new.clone());
        ring.use_key(&new).unwrap();
        assert_eq!(ring.open(&before).unwrap(), b"old");
        assert_eq!(ring.remove(&new), Err(KeyError::RemovePrimary));
        ring.remove(&old).unwrap();
        assert!(ring.open(&before).is_err());
        assert_eq!(ring.use_key(&old), Err(KeyError::NotInstalled));
    }

    #[test]
    fn keys_parse_and_persist() {
        assert!(parse_key(&generate()).is_ok());
        assert!(parse_key("c2hvcnQ=").is_err());
        let dir = std::env::temp_dir().join(format!("cairn-keyring-{}", std::process::id()));
        let path = Keyring::file(&dir);
        let ring = Keyring::with_primary(parse_key(&generate()).unwrap());
        ring.save(&path).unwrap();
        assert_eq!(Keyring::load(&path).unwrap(), Some(ring));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
