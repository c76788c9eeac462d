//! Virtual clock: lab time that runs `speed` times faster than the wall clock (1× = real time).
//!
//! Built on `tokio::time`, so tests may pause tokio's clock instead of sleeping.

use std::sync::Arc;
use std::time::Duration;

/// Shared lab clock. Cloning is cheap; all clones see the same time.
#[derive(Clone, Debug)]
pub struct Clock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    origin: tokio::time::Instant,
    speed: f64,
}

/// A speed factor that is not a positive finite number.
#[derive(Debug, thiserror::Error)]
#[error("clock speed must be a positive finite number, got {0}")]
pub struct BadSpeed(pub f64);

impl Clock {
    /// A clock running `speed` times faster than real time.
    pub fn new(speed: f64) -> Result<Self, BadSpeed> {
        if !(speed.is_finite() && speed > 0.0) {
            return Err(BadSpeed(speed));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                origin: tokio::time::Instant::now(),
                speed,
            }),
        })
    }

    /// A real-time clock (speed 1).
    pub fn real_time() -> Self {
        Self {
            inner: Arc::new(Inner {
                origin: tokio::time::Instant::now(),
                speed: 1.0,
            }),
        }
    }

    /// The speed factor.
    pub fn speed(&self) -> f64 {
        self.inner.speed
    }

    /// Lab time elapsed since the clock was made.
    pub fn now(&self) -> Duration {
        self.inner.origin.elapsed().mul_f64(self.inner.speed)
    }

    /// Lab time in seconds.
    pub fn now_s(&self) -> f64 {
        self.now().as_secs_f64()
    }

    /// Wall time that `lab` of lab time takes.
    pub fn to_real(&self, lab: Duration) -> Duration {
        lab.div_f64(self.inner.speed)
    }

    /// Sleep for `lab` of lab time.
    pub async fn sleep(&self, lab: Duration) {
        tokio::time::sleep(self.to_real(lab)).await;
    }

    /// Sleep until lab time `t`.
    pub async fn sleep_until(&self, t: Duration) {
        let now = self.now();
        if t > now {
            self.sleep(t - now).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn lab_time_runs_at_speed() {
        let c = Clock::new(1000.0).unwrap();
        c.sleep(Duration::from_secs(300)).await;
        let t = c.now_s();
        assert!((t - 300.0).abs() < 0.01, "{t}");
        assert!(Clock::new(0.0).is_err());
        assert!(Clock::new(f64::NAN).is_err());
    }
}
