//! Login throttling: failures are counted per account and per client address in moka caches
//! whose entries expire with the window; a key over its limit is refused without hashing.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;

/// Counts login failures per account and per address.
#[derive(Clone)]
pub struct LoginLimiter {
    failures: Cache<String, Arc<AtomicU32>>,
    max_per_account: u32,
    max_per_address: u32,
}

impl LoginLimiter {
    /// A limiter with the given thresholds and window.
    pub fn new(max_per_account: u32, max_per_address: u32, window: Duration) -> Self {
        LoginLimiter {
            failures: Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(window)
                .build(),
            max_per_account,
            max_per_address,
        }
    }

    fn account_key(email: &str) -> String {
        format!("account:{}", email.trim().to_lowercase())
    }

    fn address_key(address: &str) -> String {
        format!("address:{address}")
    }

    async fn count(&self, key: &str) -> u32 {
        self.failures
            .get(key)
            .await
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Whether a login for `email` from `address` is refused now.
    pub async fn is_limited(&self, email: &str, address: &str) -> bool {
        self.count(&Self::account_key(email)).await >= self.max_per_account
            || self.count(&Self::address_key(address)).await >= self.max_per_address
    }

    /// Records a failed login.
    pub async fn record_failure(&self, email: &str, address: &str) {
        for key in [Self::account_key(email), Self::address_key(address)] {
            let counter = self
                .failures
                .get_with(key, async { Arc::new(AtomicU32::new(0)) })
                .await;
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets an account's failures after a successful login.
    pub async fn record_success(&self, email: &str) {
        self.failures.invalidate(&Self::account_key(email)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accounts_and_addresses_lock_independently() {
        let limiter = LoginLimiter::new(3, 5, Duration::from_secs(60));
        for _ in 0..3 {
            assert!(!limiter.is_limited("a@x", "1.1.1.1").await);
            limiter.record_failure("A@x", "1.1.1.1").await;
        }
        assert!(limiter.is_limited("a@x", "2.2.2.2").await, "account locked");
        assert!(!limiter.is_limited("b@x", "2.2.2.2").await);
        for _ in 0..2 {
            limiter.record_failure("c@x", "1.1.1.1").await;
        }
        assert!(limiter.is_limited("d@x", "1.1.1.1").await, "address locked");
        limiter.record_success("a@x").await;
        assert!(!limiter.is_limited("a@x", "3.3.3.3").await);
    }
}
