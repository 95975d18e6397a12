//! The `gossip_lan` and `gossip_wan` configuration blocks: Consul's keys, each replacing
//! the preset's value when set.

use std::time::Duration;

use serde::Deserialize;

use super::swim;

/// Overrides of a pool's timing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GossipTuning {
    pub gossip_interval: Option<Duration>,
    pub gossip_nodes: Option<usize>,
    pub probe_interval: Option<Duration>,
    pub probe_timeout: Option<Duration>,
    pub suspicion_mult: Option<u32>,
    pub retransmit_mult: Option<u32>,
}

/// The block as a config file spells it (durations as Go strings).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GossipTuningFile {
    pub gossip_interval: Option<String>,
    pub gossip_nodes: Option<usize>,
    pub probe_interval: Option<String>,
    pub probe_timeout: Option<String>,
    pub suspicion_mult: Option<u32>,
    pub retransmit_mult: Option<u32>,
}

/// A value the block cannot take: the full key (`gossip_wan.probe_interval`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct TuningError {
    pub key: String,
    pub reason: String,
}

impl GossipTuningFile {
    /// Lays this block over `into`; `block` names it in errors (`gossip_lan`).
    pub fn merge_into(self, block: &str, into: &mut GossipTuning) -> Result<(), TuningError> {
        for (key, value, slot) in [
            (
                "gossip_interval",
                self.gossip_interval,
                &mut into.gossip_interval,
            ),
            (
                "probe_interval",
                self.probe_interval,
                &mut into.probe_interval,
            ),
            ("probe_timeout", self.probe_timeout, &mut into.probe_timeout),
        ] {
            if let Some(v) = value {
                let d = crate::duration::parse(&v).map_err(|e| TuningError {
                    key: format!("{block}.{key}"),
                    reason: e.to_string(),
                })?;
                *slot = Some(d);
            }
        }
        into.gossip_nodes = self.gossip_nodes.or(into.gossip_nodes);
        into.suspicion_mult = self.suspicion_mult.or(into.suspicion_mult);
        into.retransmit_mult = self.retransmit_mult.or(into.retransmit_mult);
        Ok(())
    }
}

impl GossipTuning {
    /// Applies the overrides to a preset.
    pub fn apply(&self, swim: &mut swim::Config) {
        if let Some(v) = self.gossip_interval {
            swim.gossip_interval = v;
        }
        if let Some(v) = self.gossip_nodes {
            swim.gossip_nodes = v;
        }
        if let Some(v) = self.probe_interval {
            swim.probe_interval = v;
        }
        if let Some(v) = self.probe_timeout {
            swim.probe_timeout = v;
        }
        if let Some(v) = self.suspicion_mult {
            swim.suspicion_mult = v;
        }
        if let Some(v) = self.retransmit_mult {
            swim.retransmit_mult = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_overrides_only_what_it_names() {
        let file: GossipTuningFile =
            serde_json::from_str(r#"{"probe_interval":"500ms","suspicion_mult":3}"#).unwrap();
        let mut t = GossipTuning::default();
        file.merge_into("gossip_wan", &mut t).unwrap();
        let mut c = swim::Config::wan();
        t.apply(&mut c);
        assert_eq!(c.probe_interval, Duration::from_millis(500));
        assert_eq!(c.suspicion_mult, 3);
        assert_eq!(c.probe_timeout, swim::Config::wan().probe_timeout);
        let bad: GossipTuningFile = serde_json::from_str(r#"{"probe_timeout":"soon"}"#).unwrap();
        let e = bad.merge_into("gossip_wan", &mut t).unwrap_err();
        assert_eq!(e.key, "gossip_wan.probe_timeout");
        assert!(serde_json::from_str::<GossipTuningFile>(r#"{"probe":"1s"}"#).is_err());
    }
}
