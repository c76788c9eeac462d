//! Storage of user accounts and their guards (the [`AccountStorage`] port): users and password
//! hashes, the attempt throttle that every replica shares, sign-up requests awaiting e-mail
//! verification, and the mail outbox.
//!
//! Invariants:
//! - a reservation ([`AccountStorage::reserve_attempts`]) is one atomic upsert per key, so N
//!   concurrent attempts against a limit L get the counts 1..=N and at most L pass, whichever
//!   replica they reach;
//! - the throttle, sign-up and outbox tables are platform tables (no tenant-role grant on
//!   PostgreSQL): call these methods in [`super::tenant::system`].

use async_trait::async_trait;

use super::db::{query, SqlStorage, Tx};
#[allow(unused_imports)]
use super::ids::{CampaignId, CommandId, ExperimentId, LabId, OrganizationId, SessionId, UserId};
use super::{new_id, Organization, StorageResult};

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct User {
    /// Identifier (UUID text).
    pub id: UserId,
    /// Unique e-mail address (lower-cased).
    pub email: String,
    /// Name shown to others.
    pub display_name: String,
    /// argon2id PHC string; `None` for accounts that cannot log in with a password.
    pub password_hash: Option<String>,
    /// Creation time, ms since the Unix epoch.
    pub created_at: i64,
}

/// A sign-up waiting for its e-mail to be verified.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SignupRequest {
    /// Identifier, the public half of the verification token.
    pub id: String,
    /// The address to verify (lower-cased).
    pub email: String,
    /// Display name of the account to create.
    pub display_name: String,
    /// Name of the organisation to create with it.
    pub organization_name: String,
    /// argon2id PHC string of the chosen password.
    pub password_hash: String,
    /// Hex SHA-256 of the token's secret half.
    pub token_hash: String,
    /// Creation time, ms since the Unix epoch.
    pub created_at: i64,
    /// Expiry time.
    pub expires_at: i64,
    /// When it became an account.
    pub used_at: Option<i64>,
}

/// A mail to queue.
#[derive(Debug, Clone)]
pub struct NewMail {
    /// Recipient address.
    pub recipient: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
}

/// A claimed mail of the outbox.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxMail {
    /// Identifier.
    pub id: String,
    /// Recipient address.
    pub recipient: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
    /// When it was queued.
    pub created_at: i64,
    /// Delivery attempts so far (this one included).
    pub attempts: i64,
}

/// Columns of [`SignupRequest`], in order.
const SIGNUP_COLS: &str = "id, email, display_name, organization_name, password_hash, \
                           token_hash, created_at, expires_at, used_at";

impl SqlStorage {
    /// Inserts one outbox row inside a transaction.
    async fn insert_mail(tx: &mut Tx, mail: &NewMail, now_ms: i64) -> StorageResult<()> {
        query(
            "INSERT INTO mail_outbox (id, recipient, subject, body, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(super::new_id())
        .bind(&mail.recipient)
        .bind(&mail.subject)
        .bind(&mail.body)
        .bind(now_ms)
        .execute(tx)
        .await?;
        Ok(())
    }
}

/// The storage port of user accounts.
#[async_trait]
pub trait AccountStorage {
    /// Creates a user; the e-mail must be unused.
    async fn create_user(
        &self,
        email: &str,
        display_name: &str,
        password_hash: Option<&str>,
        now_ms: i64,
    ) -> StorageResult<User>;
    /// Reads a user by e-mail (case-insensitive).
    async fn user_by_email(&self, email: &str) -> StorageResult<Option<User>>;
    /// Reads a user by id.
    async fn user(&self, id: &UserId) -> StorageResult<Option<User>>;
    /// Replaces a user's password hash.
    async fn set_password_hash(&self, user_id: &UserId, password_hash: &str) -> StorageResult<()>;

    /// Counts one attempt under each `(key, limit)` in one transaction and returns whether
    /// every key is still within its limit. Windows are fixed: a key's count restarts once
    /// `window_ms` has passed since its window began. Refused attempts count too.
    async fn reserve_attempts(
        &self,
        keys: &[(&str, i64)],
        window_ms: i64,
        now_ms: i64,
    ) -> StorageResult<bool>;
    /// Gives one reserved attempt back (a successful log-in from an address).
    async fn refund_attempt(&self, key: &str) -> StorageResult<()>;
    /// Forgets a key (a successful log-in forgets its account's failures).
    async fn clear_attempts(&self, key: &str) -> StorageResult<()>;
    /// Deletes throttle rows whose window began before `before_ms`, and expired sign-up
    /// requests; returns how many rows went.
    async fn prune_auth(&self, before_ms: i64, now_ms: i64) -> StorageResult<u64>;

    /// Stores a sign-up request and queues its verification mail, in one transaction.
    async fn create_signup_request(
        &self,
        request: &SignupRequest,
        mail: &NewMail,
    ) -> StorageResult<()>;
    /// Reads a sign-up request.
    async fn signup_request(&self, id: &str) -> StorageResult<Option<SignupRequest>>;
    /// Turns an unused, unexpired sign-up request into a user, their organisation and the
    /// owner membership, in one transaction. `None` when the request is used, expired or
    /// absent; `Conflict` when the address got an account meanwhile (nothing is written).
    async fn complete_signup(
        &self,
        id: &str,
        now_ms: i64,
    ) -> StorageResult<Option<(User, Organization)>>;

    /// Queues a mail.
    async fn enqueue_mail(&self, mail: &NewMail, now_ms: i64) -> StorageResult<()>;
    /// Claims the oldest unsent mail whose lease has run out, leasing it until
    /// `now_ms + lease_ms`.
    async fn claim_mail(&self, now_ms: i64, lease_ms: i64) -> StorageResult<Option<OutboxMail>>;
    /// Marks a mail sent and blanks its body (it may hold a token).
    async fn mark_mail_sent(&self, id: &str, now_ms: i64) -> StorageResult<()>;
}

#[async_trait]
impl AccountStorage for SqlStorage {
    async fn create_user(
        &self,
        email: &str,
        display_name: &str,
        password_hash: Option<&str>,
        now_ms: i64,
    ) -> StorageResult<User> {
        self.tx(async |tx| {
            query(
                "INSERT INTO users (id, email, display_name, password_hash, created_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 RETURNING id, email, display_name, password_hash, created_at",
            )
            .bind(new_id())
            .bind(email.trim().to_lowercase())
            .bind(display_name)
            .bind(password_hash)
            .bind(now_ms)
            .fetch_one(tx)
            .await
        })
        .await
    }

    async fn user_by_email(&self, email: &str) -> StorageResult<Option<User>> {
        self.tx(async |tx| {
            query(
                "SELECT id, email, display_name, password_hash, created_at FROM users \
                 WHERE email = $1",
            )
            .bind(email.trim().to_lowercase())
            .fetch_optional(tx)
            .await
        })
        .await
    }

    async fn user(&self, id: &UserId) -> StorageResult<Option<User>> {
        self.tx(async |tx| {
            query(
                "SELECT id, email, display_name, password_hash, created_at FROM users \
                 WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(tx)
            .await
        })
        .await
    }

    async fn set_password_hash(&self, user_id: &UserId, password_hash: &str) -> StorageResult<()> {
        self.tx(async |tx| {
            query("UPDATE users SET password_hash = $2 WHERE id = $1")
                .bind(user_id)
                .bind(password_hash)
                .execute(tx)
                .await?;
            Ok(())
        })
        .await
    }

    async fn reserve_attempts(
        &self,
        keys: &[(&str, i64)],
        window_ms: i64,
        now_ms: i64,
    ) -> StorageResult<bool> {
        self.tx(async |tx| {
            let mut allowed = true;
            for (key, limit) in keys {
                let (attempts,): (i64,) = query(
                    "INSERT INTO auth_throttle (key, window_start, attempts) \
                     VALUES ($1, $2, 1) \
                     ON CONFLICT (key) DO UPDATE SET \
                     window_start = CASE WHEN auth_throttle.window_start <= $2 - $3 \
                         THEN $2 ELSE auth_throttle.window_start END, \
                     attempts = CASE WHEN auth_throttle.window_start <= $2 - $3 \
                         THEN 1 ELSE auth_throttle.attempts + 1 END \
                     RETURNING attempts",
                )
                .bind(*key)
                .bind(now_ms)
                .bind(window_ms)
                .fetch_one(tx)
                .await?;
                allowed &= attempts <= *limit;
            }
            Ok(allowed)
        })
        .await
    }

    async fn refund_attempt(&self, key: &str) -> StorageResult<()> {
        self.tx(async |tx| {
            query(
                "UPDATE auth_throttle SET attempts = attempts - 1 \
                 WHERE key = $1 AND attempts > 0",
            )
            .bind(key)
            .execute(tx)
            .await?;
            Ok(())
        })
        .await
    }

    async fn clear_attempts(&self, key: &str) -> StorageResult<()> {
        self.tx(async |tx| {
            query("DELETE FROM auth_throttle WHERE key = $1")
                .bind(key)
                .execute(tx)
                .await?;
            Ok(())
        })
        .await
    }

    async fn prune_auth(&self, before_ms: i64, now_ms: i64) -> StorageResult<u64> {
        self.tx(async |tx| {
            let throttle = query("DELETE FROM auth_throttle WHERE window_start < $1")
                .bind(before_ms)
                .execute(tx)
                .await?;
            let signups = query("DELETE FROM signup_requests WHERE expires_at < $1")
                .bind(now_ms)
                .execute(tx)
                .await?;
            Ok(throttle + signups)
        })
        .await
    }

    async fn create_signup_request(&self, r: &SignupRequest, mail: &NewMail) -> StorageResult<()> {
        let sql = format!(
            "INSERT INTO signup_requests ({SIGNUP_COLS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        );
        self.tx(async |tx| {
            query(&sql)
                .bind(&r.id)
                .bind(&r.email)
                .bind(&r.display_name)
                .bind(&r.organization_name)
                .bind(&r.password_hash)
                .bind(&r.token_hash)
                .bind(r.created_at)
                .bind(r.expires_at)
                .bind(r.used_at)
                .execute(tx)
                .await?;
            Self::insert_mail(tx, mail, r.created_at).await
        })
        .await
    }

    async fn signup_request(&self, id: &str) -> StorageResult<Option<SignupRequest>> {
        let sql = format!("SELECT {SIGNUP_COLS} FROM signup_requests WHERE id = $1");
        self.tx(async |tx| query(&sql).bind(id).fetch_optional(tx).await)
            .await
    }

    async fn complete_signup(
        &self,
        id: &str,
        now_ms: i64,
    ) -> StorageResult<Option<(User, Organization)>> {
        let sql = format!(
            "UPDATE signup_requests SET used_at = $2 \
             WHERE id = $1 AND used_at IS NULL AND expires_at > $2 \
             RETURNING {SIGNUP_COLS}"
        );
        self.tx(async |tx| {
            let Some(r) = query(&sql)
                .bind(id)
                .bind(now_ms)
                .fetch_optional::<SignupRequest>(tx)
                .await?
            else {
                return Ok(None);
            };
            let user: User = query(
                "INSERT INTO users (id, email, display_name, password_hash, created_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 RETURNING id, email, display_name, password_hash, created_at",
            )
            .bind(super::new_id())
            .bind(&r.email)
            .bind(&r.display_name)
            .bind(&r.password_hash)
            .bind(now_ms)
            .fetch_one(tx)
            .await?;
            let org: Organization = query(
                "INSERT INTO organizations (id, name, created_at) VALUES ($1, $2, $3) \
                 RETURNING id, name, created_at",
            )
            .bind(super::new_id())
            .bind(&r.organization_name)
            .bind(now_ms)
            .fetch_one(tx)
            .await?;
            query(
                "INSERT INTO memberships (organization_id, user_id, role, created_at) \
                 VALUES ($1, $2, 'owner', $3)",
            )
            .bind(&org.id)
            .bind(&user.id)
            .bind(now_ms)
            .execute(tx)
            .await?;
            Ok(Some((user, org)))
        })
        .await
    }

    async fn enqueue_mail(&self, mail: &NewMail, now_ms: i64) -> StorageResult<()> {
        self.tx(async |tx| Self::insert_mail(tx, mail, now_ms).await)
            .await
    }

    async fn claim_mail(&self, now_ms: i64, lease_ms: i64) -> StorageResult<Option<OutboxMail>> {
        self.tx(async |tx| {
            query(
                "UPDATE mail_outbox SET lease_until = $2, attempts = attempts + 1 \
                 WHERE id = (SELECT id FROM mail_outbox WHERE sent_at IS NULL \
                             AND (lease_until IS NULL OR lease_until < $1) \
                             ORDER BY created_at, id LIMIT 1) \
                 AND sent_at IS NULL AND (lease_until IS NULL OR lease_until < $1) \
                 RETURNING id, recipient, subject, body, created_at, attempts",
            )
            .bind(now_ms)
            .bind(now_ms.saturating_add(lease_ms))
            .fetch_optional(tx)
            .await
        })
        .await
    }

    async fn mark_mail_sent(&self, id: &str, now_ms: i64) -> StorageResult<()> {
        self.tx(async |tx| {
            query("UPDATE mail_outbox SET sent_at = $2, body = '' WHERE id = $1")
                .bind(id)
                .bind(now_ms)
                .execute(tx)
                .await?;
            Ok(())
        })
        .await
    }
}
