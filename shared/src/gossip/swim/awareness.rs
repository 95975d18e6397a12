//! Lifeguard "local health awareness" (LHA).
//!
//! A node that keeps failing to hear acks, or keeps having to refute
//! suspicions about itself, is more likely to be the slow/partitioned party
//! than its peers. The health score counts such evidence and stretches the
//! probe interval (and so the probe deadline) by `score + 1`, which keeps an
//! unhealthy node from flooding the cluster with false suspicions.
//!
//! Invariant: `0 <= score <= max - 1`.

use std::time::Duration;

/// Health score bounded to `0..max`.
#[derive(Clone, Debug)]
pub struct Awareness {
    max: u32,
    score: u32,
}

impl Awareness {
    /// A healthy (score 0) tracker; `max` is `Config::awareness_max_multiplier`.
    pub fn new(max: u32) -> Self {
        Self {
            max: max.max(1),
            score: 0,
        }
    }

    /// Adds `delta` (negative = healthier), clamping into `0..max`.
    pub fn apply_delta(&mut self, delta: i64) {
        let upper = i64::from(self.max - 1);
        let next = (i64::from(self.score) + delta).clamp(0, upper);
        // `next` is within 0..=u32::MAX by the clamp above.
        self.score = u32::try_from(next).unwrap_or(self.max - 1);
    }

    /// Current health score; 0 is healthy.
    pub fn score(&self) -> u32 {
        self.score
    }

    /// Scales `timeout` by `score + 1`.
    pub fn scale_timeout(&self, timeout: Duration) -> Duration {
        timeout.saturating_mul(self.score + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_is_clamped_and_scales() {
        // Same sequence as memberlist's awareness_test.go.
        let cases: [(i64, u32, u64); 14] = [
            (0, 0, 1),
            (-1, 0, 1),
            (-10, 0, 1),
            (1, 1, 2),
            (-1, 0, 1),
            (10, 7, 8),
            (-1, 6, 7),
            (-1, 5, 6),
            (-1, 4, 5),
            (-1, 3, 4),
            (-1, 2, 3),
            (-1, 1, 2),
            (-1, 0, 1),
            (-1, 0, 1),
        ];
        let mut a = Awareness::new(8);
        for (i, (delta, score, secs)) in cases.into_iter().enumerate() {
            a.apply_delta(delta);
            assert_eq!(a.score(), score, "case {i}");
            assert_eq!(
                a.scale_timeout(Duration::from_secs(1)),
                Duration::from_secs(secs),
                "case {i}"
            );
        }
    }

    #[test]
    fn max_one_never_scales() {
        let mut a = Awareness::new(1);
        a.apply_delta(5);
        assert_eq!(a.score(), 0);
        assert_eq!(
            a.scale_timeout(Duration::from_secs(1)),
            Duration::from_secs(1)
        );
    }
}
