//! Exponential backoff with jitter, for reconnecting to the coordinator.
//!
//! Jitter keeps a farm of agents that lost the coordinator together from hammering it in lockstep
//! when it comes back.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Delays of `base * 2^attempt`, capped at `cap`, each randomised into its upper half.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Default for Backoff {
    /// 500 ms doubling up to 10 s.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(500), Duration::from_secs(10))
    }
}

impl Backoff {
    /// A backoff starting at `base` and never waiting longer than `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// How many delays have been handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay to wait.
    pub fn next_delay(&mut self) -> Duration {
        let d = delay(self.base, self.cap, self.attempt, random_unit());
        self.attempt = self.attempt.saturating_add(1);
        d
    }
}

/// The delay for `attempt` given a random `unit` in [0, 1): "equal jitter", so the delay still grows
/// visibly while no two agents wait exactly as long.
pub fn delay(base: Duration, cap: Duration, attempt: u32, unit: f64) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(attempt.min(30)));
    let full = exp.min(cap);
    let half = full / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

/// A number in [0, 1) from the standard library's randomly keyed hasher; no RNG crate needed for
/// jitter.
fn random_unit() -> f64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        let (b, c) = (Duration::from_millis(500), Duration::from_secs(10));
        let hi: Vec<u128> = (0..8).map(|a| delay(b, c, a, 1.0).as_millis()).collect();
        assert_eq!(hi, [500, 1000, 2000, 4000, 8000, 10000, 10000, 10000]);
        let lo: Vec<u128> = (0..3).map(|a| delay(b, c, a, 0.0).as_millis()).collect();
        assert_eq!(lo, [250, 500, 1000]);
        assert_eq!(delay(b, c, u32::MAX, 0.5), Duration::from_millis(7500));
    }

    #[test]
    fn jittered_within_bounds_and_resettable() {
        let mut bo = Backoff::default();
        for attempt in 0..20 {
            let d = bo.next_delay();
            let full = Duration::from_millis(500)
                .saturating_mul(1 << attempt.min(20))
                .min(Duration::from_secs(10));
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?}");
        }
        assert_eq!(bo.attempts(), 20);
        bo.reset();
        assert!(bo.next_delay() <= Duration::from_millis(500));
    }

    #[test]
    fn jitter_varies() {
        let samples: Vec<f64> = (0..16).map(|_| random_unit()).collect();
        assert!(samples.iter().all(|u| (0.0..1.0).contains(u)));
        assert!(samples.windows(2).any(|w| w[0] != w[1]));
    }
}
