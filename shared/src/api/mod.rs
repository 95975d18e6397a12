//! Consul's JSON shapes: KV entries, sessions and transactions here, the catalog (nodes,
//! services, checks) in [`catalog`].
//!
//! Field names and order follow Consul's Go structs exactly (PascalCase, `Session` omitted
//! when empty, `LockDelay` as integer nanoseconds) because clients parse them by name. The
//! same structs travel between agents in MessagePack, where byte values stay raw instead of
//! base64 (see [`bytes_b64`]).

use serde::{Deserialize, Serialize};

mod catalog;
pub use catalog::*;
mod event;
pub use event::*;
mod query;
pub use query::*;
mod operator;
pub use operator::*;
mod config_entry;
pub use config_entry::*;

/// One KV entry, Consul's `DirEntry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct KvPair {
    pub lock_index: u64,
    pub key: String,
    pub flags: u64,
    #[serde(with = "bytes_b64")]
    pub value: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub session: String,
    pub create_index: u64,
    pub modify_index: u64,
}

/// What happens to a session's locks when it is invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SessionBehavior {
    #[default]
    Release,
    Delete,
}

impl SessionBehavior {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Release => "release",
            Self::Delete => "delete",
        }
    }
}

/// A service check a session is bound to (`ServiceChecks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceCheck {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(default)]
    pub namespace: String,
}

/// A session as `/v1/session/info` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Session {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub node: String,
    /// Nanoseconds, as Consul writes it.
    pub lock_delay: u64,
    pub behavior: SessionBehavior,
    /// The TTL as the client wrote it (`""` for none), Consul keeps the string.
    #[serde(rename = "TTL")]
    pub ttl: String,
    pub node_checks: Option<Vec<String>>,
    pub service_checks: Option<Vec<ServiceCheck>>,
    /// The deprecated spelling of `NodeChecks`, shown only when it says something more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<Vec<String>>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Session {
    /// Every check whose failure invalidates this session.
    pub fn check_ids(&self) -> impl Iterator<Item = &str> {
        let node = self.node_checks.iter().flatten().map(String::as_str);
        let legacy = self.checks.iter().flatten().map(String::as_str);
        let svc = self.service_checks.iter().flatten().map(|c| c.id.as_str());
        node.chain(legacy).chain(svc)
    }
}

/// One operation of `/v1/txn`. Only KV operations exist so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    #[serde(rename = "KV")]
    Kv(KvTxnOp),
}

/// A KV verb inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct KvTxnOp {
    pub verb: KvVerb,
    pub key: String,
    #[serde(default, with = "bytes_b64")]
    pub value: Option<Vec<u8>>,
    #[serde(default)]
    pub flags: u64,
    #[serde(default)]
    pub index: u64,
    #[serde(default)]
    pub session: String,
}

/// The KV verbs Consul's transaction endpoint accepts. An unknown verb is kept as text:
/// Consul treats it as a read that fails with `unknown KV verb "…"`, not as a decode error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(from = "String", into = "String")]
pub enum KvVerb {
    #[default]
    Set,
    Cas,
    Lock,
    Unlock,
    Get,
    GetOrEmpty,
    GetTree,
    CheckIndex,
    CheckSession,
    CheckNotExists,
    Delete,
    DeleteTree,
    DeleteCas,
    Unknown(String),
}

const VERBS: &[(&str, KvVerb)] = &[
    ("set", KvVerb::Set),
    ("cas", KvVerb::Cas),
    ("lock", KvVerb::Lock),
    ("unlock", KvVerb::Unlock),
    ("get", KvVerb::Get),
    ("get-or-empty", KvVerb::GetOrEmpty),
    ("get-tree", KvVerb::GetTree),
    ("check-index", KvVerb::CheckIndex),
    ("check-session", KvVerb::CheckSession),
    ("check-not-exists", KvVerb::CheckNotExists),
    ("delete", KvVerb::Delete),
    ("delete-tree", KvVerb::DeleteTree),
    ("delete-cas", KvVerb::DeleteCas),
];

impl From<String> for KvVerb {
    fn from(s: String) -> Self {
        VERBS
            .iter()
            .find(|(name, _)| *name == s)
            .map_or(Self::Unknown(s), |(_, v)| v.clone())
    }
}

impl From<KvVerb> for String {
    fn from(v: KvVerb) -> Self {
        v.as_str().to_string()
    }
}

impl KvVerb {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Unknown(s) => s,
            known => VERBS
                .iter()
                .find(|(_, v)| v == known)
                .map_or("", |(name, _)| name),
        }
    }

    /// Verbs that change nothing; a transaction of these alone is served as a read.
    /// Unknown verbs count as reads, as in Consul.
    pub fn is_read(&self) -> bool {
        !matches!(
            self,
            Self::Set
                | Self::Cas
                | Self::Lock
                | Self::Unlock
                | Self::Delete
                | Self::DeleteTree
                | Self::DeleteCas
        )
    }
}

/// One entry of a transaction's `Results`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnResult {
    #[serde(rename = "KV")]
    Kv(KvPair),
}

/// One entry of a transaction's `Errors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnError {
    pub op_index: usize,
    pub what: String,
}

/// The body `/v1/txn` answers with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct TxnResponse {
    pub results: Option<Vec<TxnResult>>,
    pub errors: Option<Vec<TxnError>>,
}

/// `Option<Vec<u8>>` as base64 text in JSON and as raw bytes in binary formats.
pub mod bytes_b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_none(),
            Some(b) if s.is_human_readable() => s.serialize_some(&STANDARD.encode(b)),
            Some(b) => s.serialize_some(&serde_bytes_ref(b)),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        if d.is_human_readable() {
            let text: Option<String> = Option::deserialize(d)?;
            text.map(|t| STANDARD.decode(t.as_bytes()).map_err(D::Error::custom))
                .transpose()
        } else {
            let raw: Option<ByteBuf> = Option::deserialize(d)?;
            Ok(raw.map(|b| b.0))
        }
    }

    fn serde_bytes_ref(b: &[u8]) -> ByteRef<'_> {
        ByteRef(b)
    }

    struct ByteRef<'a>(&'a [u8]);

    impl serde::Serialize for ByteRef<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    struct ByteBuf(Vec<u8>);

    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<ByteBuf, A::Error> {
                    let mut out = Vec::new();
                    while let Some(b) = seq.next_element()? {
                        out.push(b);
                    }
                    Ok(ByteBuf(out))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_pair_json_matches_consul() {
        let kv = KvPair {
            key: "foo".into(),
            value: Some(b"bar".to_vec()),
            create_index: 13,
            modify_index: 13,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&kv).unwrap(),
            r#"{"LockIndex":0,"Key":"foo","Flags":0,"Value":"YmFy","CreateIndex":13,"ModifyIndex":13}"#
        );
        let empty = KvPair {
            key: "k".into(),
            session: "s".into(),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&empty).unwrap(),
            r#"{"LockIndex":0,"Key":"k","Flags":0,"Value":null,"Session":"s","CreateIndex":0,"ModifyIndex":0}"#
        );
    }

    #[test]
    fn kv_pair_msgpack_keeps_raw_bytes() {
        let kv = KvPair {
            key: "k".into(),
            value: Some(vec![0, 255, 7]),
            ..Default::default()
        };
        let bin = rmp_serde::to_vec_named(&kv).unwrap();
        assert!(bin.windows(3).any(|w| w == [0, 255, 7]));
        let back: KvPair = rmp_serde::from_slice(&bin).unwrap();
        assert_eq!(back, kv);
    }

    #[test]
    fn txn_op_json_matches_consul() {
        let op: TxnOp = serde_json::from_str(
            r#"{"KV":{"Verb":"delete-tree","Key":"a/","Value":null,"Flags":0,"Index":0,"Session":""}}"#,
        )
        .unwrap();
        let TxnOp::Kv(kv) = op;
        assert_eq!(kv.verb, KvVerb::DeleteTree);
        let odd: KvTxnOp = serde_json::from_str(r#"{"Verb":"frob","Key":"k"}"#).unwrap();
        assert_eq!(odd.verb, KvVerb::Unknown("frob".into()));
        assert!(odd.verb.is_read());
        assert_eq!(
            serde_json::to_string(&KvVerb::GetOrEmpty).unwrap(),
            "\"get-or-empty\""
        );
        assert_eq!(
            serde_json::to_string(&TxnError {
                op_index: 2,
                what: "x".into()
            })
            .unwrap(),
            r#"{"OpIndex":2,"What":"x"}"#
        );
    }
}
