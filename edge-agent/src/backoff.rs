//! Reconnect backoff: full-jitter exponential (docs/reliability.md rule 3), pure and seedable.

use std::time::Duration;

use rand::Rng;

/// Full-jitter exponential backoff with a floor: the n-th wait is uniform in
/// `[base, min(cap, base·2ⁿ)]`, so a fleet of agents spreads over the interval and no agent
/// ever retries faster than the base period.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base` and growing to at most `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            attempt: 0,
        }
    }

    /// Forgets earlier failures (after a successful connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The ceiling of the next wait.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next wait, drawn with `rng`; the ceiling doubles each time up to the cap.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let spread = ceiling.saturating_sub(self.base);
        let jitter_ms = rng.random_range(0..=u64::try_from(spread.as_millis()).unwrap_or(u64::MAX));
        self.base + Duration::from_millis(jitter_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_grow_to_the_cap_and_stay_within_bounds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut last_ceiling = Duration::ZERO;
        for _ in 0..30 {
            let ceiling = b.ceiling();
            assert!(ceiling >= last_ceiling);
            let d = b.next_delay(&mut rng);
            assert!(
                d <= ceiling && d >= Duration::from_secs(1),
                "{d:?} vs {ceiling:?}"
            );
            last_ceiling = ceiling;
        }
        assert_eq!(last_ceiling, Duration::from_secs(60));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_secs(1));
    }
}
