//! Attempt throttling for log-in, password change and sign-up, kept in the database so that
//! every replica shares one count (issue 15).
//!
//! An attempt is *reserved* before any argon2 work: one atomic upsert per key
//! ([`crate::storage::AuthStorage::reserve_attempts`]) returns the attempt's number in the
//! window, and only attempts within the limit go on to hash. So N concurrent wrong passwords
//! against a limit L cost at most L verifications, whichever replicas they reach (the old
//! in-memory counter checked before the argon2 wait and counted after it, which a burst could
//! race past). A success clears the account's key and gives the address its attempt back.
//! Keys are stored as SHA-256 hex, so the table holds no e-mail addresses. The table is
//! platform data: every call runs in [`system`] scope whatever the request's tenant.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::storage::tenant::system;
use crate::storage::{now_ms, Storage, StorageResult};

/// Limits and window of one kind of attempt.
#[derive(Debug, Clone, Copy)]
struct Limits {
    per_subject: i64,
    per_address: i64,
    window_ms: i64,
}

/// Attempt throttling over the shared database.
#[derive(Debug, Clone)]
pub struct LoginLimiter {
    login: Limits,
    signup: Limits,
}

/// The limits [`LoginLimiter::new`] takes.
#[derive(Debug, Clone, Copy)]
pub struct LimiterSettings {
    /// Failed log-ins (and failed current-password checks) per account within the window.
    pub max_failures_per_account: u32,
    /// Failed log-ins per client address within the window.
    pub max_failures_per_address: u32,
    /// The log-in window.
    pub failure_window: Duration,
    /// Sign-ups per e-mail address within the sign-up window.
    pub max_signups_per_email: u32,
    /// Sign-ups per client address within the sign-up window.
    pub max_signups_per_address: u32,
    /// The sign-up window.
    pub signup_window: Duration,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

fn key(kind: &str, subject: &str) -> String {
    hex::encode(Sha256::digest(format!("{kind}:{subject}").as_bytes()))
}

fn account_key(email: &str) -> String {
    key("login:account", &email.trim().to_lowercase())
}

fn address_key(address: &str) -> String {
    key("login:address", address)
}

fn password_key(user_id: &str) -> String {
    key("password:user", user_id)
}

impl LoginLimiter {
    /// A limiter with the given limits.
    pub fn new(settings: LimiterSettings) -> Self {
        LoginLimiter {
            login: Limits {
                per_subject: i64::from(settings.max_failures_per_account),
                per_address: i64::from(settings.max_failures_per_address),
                window_ms: millis(settings.failure_window),
            },
            signup: Limits {
                per_subject: i64::from(settings.max_signups_per_email),
                per_address: i64::from(settings.max_signups_per_address),
                window_ms: millis(settings.signup_window),
            },
        }
    }

    /// Reserves a log-in attempt for `email` from `address`; false = refuse without hashing.
    pub async fn reserve_login(
        &self,
        storage: &dyn Storage,
        email: &str,
        address: &str,
    ) -> StorageResult<bool> {
        system(storage.reserve_attempts(
            &[
                (&account_key(email), self.login.per_subject),
                (&address_key(address), self.login.per_address),
            ],
            self.login.window_ms,
            now_ms(),
        ))
        .await
    }

    /// A log-in succeeded: the account's count restarts and the address gets its attempt back.
    pub async fn login_succeeded(
        &self,
        storage: &dyn Storage,
        email: &str,
        address: &str,
    ) -> StorageResult<()> {
        system(async {
            storage.clear_attempts(&account_key(email)).await?;
            storage.refund_attempt(&address_key(address)).await
        })
        .await
    }

    /// Reserves a current-password check of `changePassword` (counted per user, with the
    /// account limit); false = refuse without hashing.
    pub async fn reserve_password_check(
        &self,
        storage: &dyn Storage,
        user_id: &str,
    ) -> StorageResult<bool> {
        system(storage.reserve_attempts(
            &[(&password_key(user_id), self.login.per_subject)],
            self.login.window_ms,
            now_ms(),
        ))
        .await
    }

    /// The current password was right: the user's count restarts.
    pub async fn password_check_succeeded(
        &self,
        storage: &dyn Storage,
        user_id: &str,
    ) -> StorageResult<()> {
        system(storage.clear_attempts(&password_key(user_id))).await
    }

    /// Reserves a sign-up for `email` from `address` (every sign-up counts, successful or
    /// not: each one hashes a password and sends a mail); false = refuse.
    pub async fn reserve_signup(
        &self,
        storage: &dyn Storage,
        email: &str,
        address: &str,
    ) -> StorageResult<bool> {
        system(storage.reserve_attempts(
            &[
                (
                    &key("signup:email", &email.trim().to_lowercase()),
                    self.signup.per_subject,
                ),
                (&key("signup:address", address), self.signup.per_address),
            ],
            self.signup.window_ms,
            now_ms(),
        ))
        .await
    }

    /// The longest window, for pruning old rows.
    pub fn longest_window_ms(&self) -> i64 {
        self.login.window_ms.max(self.signup.window_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_hashed_and_normalise_the_address() {
        assert_eq!(account_key("A@x.example "), account_key("a@x.example"));
        assert_ne!(account_key("a@x.example"), address_key("a@x.example"));
        assert_eq!(account_key("a@x.example").len(), 64);
        assert!(!account_key("a@x.example").contains('@'));
    }
}
