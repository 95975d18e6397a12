//! Protocol tunables and the cluster-size scaling formulas that go with them.
//!
//! The presets mirror memberlist's `DefaultLANConfig`, `DefaultWANConfig` and
//! `DefaultLocalConfig`, which is what Consul's Serf uses for its LAN and WAN
//! pools. Only the knobs that affect the protocol state machine are kept; I/O
//! knobs (TCP timeouts, bind addresses, encryption) belong to the host.
//!
//! The free functions at the bottom reproduce memberlist's scaling math
//! exactly (same rounding), because that math decides failure-detection
//! latency and gossip fan-out:
//!
//! * [`suspicion_timeout`]: `mult * max(1, log10(max(1, n))) * interval`
//! * [`retransmit_limit`]: `mult * ceil(log10(n + 1))`
//! * [`push_pull_scale`]: the push/pull interval, multiplied by
//!   `ceil(log2(n) - log2(32)) + 1` once the cluster has more than 32 nodes.

use std::time::Duration;

use thiserror::Error;

/// Number of nodes above which the push/pull interval starts to grow.
pub const PUSH_PULL_SCALE_THRESHOLD: usize = 32;

/// Protocol configuration. All durations are simulated or real time alike:
/// the state machine never reads a clock, the host passes `now` in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Interval between failure-detection probes (scaled by awareness).
    pub probe_interval: Duration,
    /// How long to wait for a direct ack before asking peers to probe indirectly.
    pub probe_timeout: Duration,
    /// Interval between gossip rounds (only sent when there is something queued).
    pub gossip_interval: Duration,
    /// Number of random peers each gossip round sends to.
    pub gossip_nodes: usize,
    /// Multiplier for the minimum suspicion timeout (see [`suspicion_timeout`]).
    pub suspicion_mult: u32,
    /// Maximum suspicion timeout as a multiple of the minimum.
    pub suspicion_max_timeout_mult: u32,
    /// Multiplier for the per-broadcast retransmit limit (see [`retransmit_limit`]).
    pub retransmit_mult: u32,
    /// Upper bound (exclusive) of the local health score; the probe interval is
    /// multiplied by `score + 1`.
    pub awareness_max_multiplier: u32,
    /// Number of peers asked to probe a node that missed its direct ack.
    pub indirect_checks: usize,
    /// Base interval of full-state push/pull syncs (scaled by cluster size);
    /// zero disables periodic push/pull.
    pub push_pull_interval: Duration,
    /// How long dead nodes keep receiving gossip (so they can refute) and stay
    /// in the probe list before being reaped from protocol bookkeeping.
    pub gossip_to_the_dead_time: Duration,
    /// Maximum size of a datagram we build (compound messages are packed up to it).
    pub udp_buffer_size: usize,
    /// When false (memberlist's default), a probe whose UDP ack is late also
    /// asks the host for a ping over TCP ([`crate::gossip::swim::Effect::TcpPing`]), which
    /// keeps nodes with broken UDP but working TCP from being declared dead.
    pub disable_tcp_pings: bool,
    /// How long a `Dead` member must have been dead before an alive claim for
    /// its name from a *different* address may take the name over; zero
    /// (memberlist's default) means never, which makes such claims conflicts.
    pub dead_node_reclaim_time: Duration,
}

/// A configuration value that would make the state machine misbehave.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The named field must be non-zero.
    #[error("config field `{0}` must be non-zero")]
    Zero(&'static str),
    /// `probe_timeout` must be strictly shorter than `probe_interval`.
    #[error("probe_timeout ({timeout:?}) must be shorter than probe_interval ({interval:?})")]
    ProbeTimeout {
        /// Configured probe timeout.
        timeout: Duration,
        /// Configured probe interval.
        interval: Duration,
    },
    /// `udp_buffer_size` is outside the range a datagram can carry.
    #[error("udp_buffer_size {0} must be between {min} and {max}", min = crate::gossip::swim::wire::MIN_UDP_BUFFER, max = crate::gossip::swim::wire::MAX_DATAGRAM)]
    UdpBufferSize(usize),
}

impl Config {
    /// memberlist `DefaultLANConfig`: tuned for a single datacenter.
    pub fn lan() -> Self {
        Self {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            gossip_interval: Duration::from_millis(200),
            gossip_nodes: 3,
            suspicion_mult: 4,
            suspicion_max_timeout_mult: 6,
            retransmit_mult: 4,
            awareness_max_multiplier: 8,
            indirect_checks: 3,
            push_pull_interval: Duration::from_secs(30),
            gossip_to_the_dead_time: Duration::from_secs(30),
            udp_buffer_size: 1400,
            disable_tcp_pings: false,
            dead_node_reclaim_time: Duration::ZERO,
        }
    }

    /// memberlist `DefaultWANConfig`: slower probes and longer suspicion for
    /// links between datacenters.
    pub fn wan() -> Self {
        Self {
            suspicion_mult: 6,
            push_pull_interval: Duration::from_secs(60),
            probe_timeout: Duration::from_secs(3),
            probe_interval: Duration::from_secs(5),
            gossip_nodes: 4,
            gossip_interval: Duration::from_millis(500),
            gossip_to_the_dead_time: Duration::from_secs(60),
            ..Self::lan()
        }
    }

    /// memberlist `DefaultLocalConfig`: loopback / dev clusters, faster and
    /// with less redundancy.
    pub fn local() -> Self {
        Self {
            indirect_checks: 1,
            retransmit_mult: 2,
            suspicion_mult: 3,
            push_pull_interval: Duration::from_secs(15),
            probe_timeout: Duration::from_millis(200),
            probe_interval: Duration::from_secs(1),
            gossip_interval: Duration::from_millis(100),
            gossip_to_the_dead_time: Duration::from_secs(15),
            ..Self::lan()
        }
    }

    /// Checks the invariants the state machine relies on.
    ///
    /// `push_pull_interval` and `gossip_interval`/`gossip_nodes` may be zero
    /// (that disables the feature, as in memberlist); the probe settings may not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.probe_interval.is_zero() {
            return Err(ConfigError::Zero("probe_interval"));
        }
        if self.probe_timeout.is_zero() {
            return Err(ConfigError::Zero("probe_timeout"));
        }
        if self.probe_timeout >= self.probe_interval {
            return Err(ConfigError::ProbeTimeout {
                timeout: self.probe_timeout,
                interval: self.probe_interval,
            });
        }
        if self.suspicion_mult == 0 {
            return Err(ConfigError::Zero("suspicion_mult"));
        }
        if self.suspicion_max_timeout_mult == 0 {
            return Err(ConfigError::Zero("suspicion_max_timeout_mult"));
        }
        if self.retransmit_mult == 0 {
            return Err(ConfigError::Zero("retransmit_mult"));
        }
        if self.awareness_max_multiplier == 0 {
            return Err(ConfigError::Zero("awareness_max_multiplier"));
        }
        if !(crate::gossip::swim::wire::MIN_UDP_BUFFER..=crate::gossip::swim::wire::MAX_DATAGRAM)
            .contains(&self.udp_buffer_size)
        {
            return Err(ConfigError::UdpBufferSize(self.udp_buffer_size));
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::lan()
    }
}

/// Minimum suspicion timeout for a cluster of `n` nodes:
/// `mult * max(1, log10(max(1, n))) * interval`, with the node scale kept to
/// three decimals as memberlist does.
pub fn suspicion_timeout(suspicion_mult: u32, n: usize, interval: Duration) -> Duration {
    let node_scale = (n.max(1) as f64).log10().max(1.0);
    let scale_milli = (node_scale * 1000.0) as u128;
    let nanos = u128::from(suspicion_mult) * scale_milli * interval.as_nanos() / 1000;
    duration_from_nanos(nanos)
}

/// How many times a broadcast is retransmitted in a cluster of `n` nodes:
/// `mult * ceil(log10(n + 1))`.
pub fn retransmit_limit(retransmit_mult: u32, n: usize) -> u32 {
    let node_scale = ((n as f64) + 1.0).log10().ceil();
    retransmit_mult.saturating_mul(node_scale as u32)
}

/// Push/pull interval scaled for a cluster of `n` nodes: unchanged up to 32
/// nodes, then multiplied by `ceil(log2(n) - log2(32)) + 1` (33 nodes double it,
/// 65 triple it).
pub fn push_pull_scale(interval: Duration, n: usize) -> Duration {
    if n <= PUSH_PULL_SCALE_THRESHOLD {
        return interval;
    }
    let multiplier = ((n as f64).log2() - (PUSH_PULL_SCALE_THRESHOLD as f64).log2()).ceil() + 1.0;
    interval.saturating_mul(multiplier as u32)
}

pub(crate) fn duration_from_nanos(nanos: u128) -> Duration {
    let secs = nanos / 1_000_000_000;
    let sub = (nanos % 1_000_000_000) as u32;
    match u64::try_from(secs) {
        Ok(secs) => Duration::new(secs, sub),
        Err(_) => Duration::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate() {
        for c in [Config::lan(), Config::wan(), Config::local()] {
            c.validate().expect("preset must be valid");
        }
        let bad = Config {
            probe_timeout: Duration::from_secs(2),
            ..Config::lan()
        };
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::ProbeTimeout { .. })
        ));
        let bad = Config {
            udp_buffer_size: 10,
            ..Config::lan()
        };
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::UdpBufferSize(10))
        ));
    }

    #[test]
    fn suspicion_timeout_matches_memberlist() {
        // Values from memberlist's util_test.go TestSuspicionTimeout
        // (suspicion_mult 3, interval 1s).
        let s = Duration::from_secs(1);
        let cases = [
            (5, 3_000),
            (10, 3_000),
            (50, 5_094),
            (100, 6_000),
            (500, 8_094),
            (1000, 9_000),
        ];
        for (n, ms) in cases {
            let got = suspicion_timeout(3, n, s);
            assert_eq!(got, Duration::from_millis(ms), "n={n}");
        }
        // Degenerate sizes clamp the scale to 1.
        assert_eq!(suspicion_timeout(4, 0, s), Duration::from_secs(4));
        assert_eq!(suspicion_timeout(4, 1, s), Duration::from_secs(4));
        // LAN, 200 nodes: 4 * 2.301 s.
        assert_eq!(suspicion_timeout(4, 200, s), Duration::from_millis(9_204));
    }

    #[test]
    fn retransmit_limit_matches_memberlist() {
        assert_eq!(retransmit_limit(3, 0), 0);
        assert_eq!(retransmit_limit(3, 1), 3);
        assert_eq!(retransmit_limit(3, 9), 3);
        assert_eq!(retransmit_limit(3, 10), 6);
        assert_eq!(retransmit_limit(3, 99), 6);
        assert_eq!(retransmit_limit(3, 100), 9);
        assert_eq!(retransmit_limit(4, 200), 12);
    }

    #[test]
    fn push_pull_scale_matches_memberlist() {
        let sec = Duration::from_secs(1);
        for i in 0..=32 {
            assert_eq!(push_pull_scale(sec, i), sec, "n={i}");
        }
        for i in 33..=64 {
            assert_eq!(push_pull_scale(sec, i), 2 * sec, "n={i}");
        }
        for i in 65..=128 {
            assert_eq!(push_pull_scale(sec, i), 3 * sec, "n={i}");
        }
        assert_eq!(
            push_pull_scale(Duration::from_secs(30), 200),
            Duration::from_secs(120)
        );
    }
}
