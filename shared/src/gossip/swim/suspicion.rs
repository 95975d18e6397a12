//! Lifeguard suspicion timers with independent confirmations.
//!
//! When a node becomes suspect we start a timer at `max`. Every *distinct*
//! peer that independently reports the same suspicion shrinks it
//! logarithmically towards `min`, reaching `min` after `k` confirmations:
//!
//! ```text
//! timeout(n) = max(min, max - (ln(n + 1) / ln(k + 1)) * (max - min))
//! ```
//!
//! truncated to whole milliseconds as in memberlist. The node that started
//! the suspicion (the `from` of the first suspect message) never counts as a
//! confirmation, so our own suspicion gossiped back to us does not speed
//! anything up. Confirmations stop being accepted once `n >= k`.
//!
//! The timer is sans-I/O: it only reports its absolute [`Suspicion::deadline`];
//! the owner schedules a wake-up and checks the deadline again when it fires.

use std::collections::HashSet;
use std::time::Duration;

/// State of one suspicion timer.
#[derive(Clone, Debug)]
pub struct Suspicion {
    n: u32,
    k: u32,
    min: Duration,
    max: Duration,
    start: Duration,
    confirmations: HashSet<String>,
}

impl Suspicion {
    /// Starts a timer at `now`; `from` is excluded from confirmations.
    pub fn new(from: &str, k: u32, min: Duration, max: Duration, now: Duration) -> Self {
        let mut confirmations = HashSet::new();
        confirmations.insert(from.to_owned());
        Self {
            n: 0,
            k,
            min,
            max: max.max(min),
            start: now,
            confirmations,
        }
    }

    /// Registers a confirmation from `from`. Returns true if it was new
    /// information (and so worth re-gossiping), false for duplicates or once
    /// enough confirmations have been seen.
    pub fn confirm(&mut self, from: &str) -> bool {
        if self.n >= self.k {
            return false;
        }
        if self.confirmations.contains(from) {
            return false;
        }
        self.confirmations.insert(from.to_owned());
        self.n += 1;
        true
    }

    /// Number of independent confirmations seen so far.
    pub fn confirmations(&self) -> u32 {
        self.n
    }

    /// Confirmations wanted to reach the minimum timeout.
    pub fn k(&self) -> u32 {
        self.k
    }

    /// Minimum timeout (reached with `k` confirmations).
    pub fn min(&self) -> Duration {
        self.min
    }

    /// Absolute time at which the suspect should be declared dead.
    pub fn deadline(&self) -> Duration {
        self.start
            .saturating_add(timeout_after(self.n, self.k, self.min, self.max))
    }
}

/// Total suspicion timeout after `n` of `k` wanted confirmations
/// (memberlist's `remainingSuspicionTime` without the elapsed part).
pub fn timeout_after(n: u32, k: u32, min: Duration, max: Duration) -> Duration {
    if n == 0 || k == 0 {
        return max;
    }
    let frac = (f64::from(n) + 1.0).ln() / (f64::from(k) + 1.0).ln();
    let raw = max.as_secs_f64() - frac * (max.as_secs_f64() - min.as_secs_f64());
    let millis = (1000.0 * raw).floor();
    if !millis.is_finite() || millis <= 0.0 {
        return min;
    }
    Duration::from_millis(millis as u64).max(min)
}

/// Remaining time given `elapsed` since the start; negative results (already
/// overdue) are reported as `None`. Mirrors memberlist's helper for tests.
pub fn remaining(
    n: u32,
    k: u32,
    elapsed: Duration,
    min: Duration,
    max: Duration,
) -> Option<Duration> {
    timeout_after(n, k, min, max).checked_sub(elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn remaining_time_table() {
        // Cases from memberlist's suspicion_test.go (min 2s, max 30s, k 3).
        // (Its timer test says "810ms" with a 25ms fudge; the formula gives 811.)
        let (min, max) = (2 * S, 30 * S);
        assert_eq!(remaining(0, 3, Duration::ZERO, min, max), Some(30 * S));
        assert_eq!(remaining(1, 3, 2 * S, min, max), Some(14 * S));
        assert_eq!(
            remaining(2, 3, 3 * S, min, max),
            Some(Duration::from_millis(4810))
        );
        assert_eq!(remaining(3, 3, 4 * S, min, max), None); // -2s
        assert_eq!(remaining(4, 3, 5 * S, min, max), None);
        assert_eq!(timeout_after(3, 3, min, max), min);
        assert_eq!(timeout_after(5, 3, min, max), min);
    }

    #[test]
    fn confirmations_shrink_the_deadline() {
        let min = Duration::from_millis(500);
        let max = 2 * S;
        let start = 10 * S;
        let mut s = Suspicion::new("me", 3, min, max, start);
        assert_eq!(s.deadline(), start + max);
        assert!(!s.confirm("me"), "originator never confirms");
        assert!(s.confirm("foo"));
        assert!(!s.confirm("foo"), "duplicates ignored");
        assert_eq!(s.deadline(), start + Duration::from_millis(1250));
        assert!(s.confirm("bar"));
        assert_eq!(s.deadline(), start + Duration::from_millis(811));
        assert!(s.confirm("baz"));
        assert_eq!(s.deadline(), start + min);
        assert!(!s.confirm("zoo"), "no more once k reached");
        assert_eq!(s.confirmations(), 3);
    }

    #[test]
    fn k_zero_uses_max() {
        let mut s = Suspicion::new("a", 0, S, 6 * S, Duration::ZERO);
        assert!(!s.confirm("b"));
        assert_eq!(s.deadline(), 6 * S);
    }
}
