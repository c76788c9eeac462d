//! Storage: the ports the rest of the server uses, one per domain, their rows, and the one SQL
//! implementation behind them, [`SqlStorage`], which runs on SQLite (the embedded default) or
//! PostgreSQL (the production store).
//!
//! | port | what it keeps |
//! |---|---|
//! | [`AccountStorage`] | users, the login-attempt throttle, sign-up requests, the mail outbox |
//! | [`OrganizationStorage`] | organisations, members and roles, invitations, the audit log |
//! | [`TokenStorage`] | login sessions, refresh tokens, API tokens, enrollment tokens |
//! | [`LabStorage`] | labs, agent credentials and presence, shares |
//! | [`SshKeyStorage`] | the SSH keys a lab's agent may tunnel with |
//! | [`CampaignStorage`] | campaigns and the experiment queue |
//! | [`RecordStorage`] | the records agents stream, the ingest budget |
//! | [`CommandStorage`] | lab commands (instructions, stops) and the instruction log |
//!
//! [`Storage`] is all of them. Each statement is written once ([`db`]: `$n` placeholders work on
//! both backends), every method is one scoped transaction ([`db::SqlStorage::tx`]), and each
//! backend has its own migrations under `server/migrations/<backend>/`. The conformance suite in
//! `server/tests/storage.rs` runs against both.

pub mod accounts;
pub mod campaigns;
pub mod commands;
pub mod db;
pub mod ids;
pub mod labs;
pub mod organizations;
pub mod records;
pub mod ssh_keys;
pub mod states;
pub mod tenant;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use accounts::{AccountStorage, NewMail, OutboxMail, SignupRequest, User};
pub use campaigns::{
    Campaign, CampaignStorage, CampaignTold, Experiment, ExperimentFilter, ExperimentResult,
    LiveExperiment, NewCampaign, NewExperiment,
};
pub use commands::CommandStorage;
pub use db::SqlStorage;
pub use ids::{CampaignId, CommandId, ExperimentId, LabId, OrganizationId, SessionId, UserId};
pub use labs::{AgentCredential, AgentHello, Lab, LabShare, LabStorage};
pub use organizations::{
    AuditEntry, Invitation, MemberChange, Membership, NewAuditEntry, Organization,
    OrganizationStorage, Role,
};
pub use records::{NewRecord, RecordStorage, StoredRecord};
pub use ssh_keys::{LabSshKey, NewLabSshKey, SshKeyStorage};
pub use states::{CampaignState, CommandState, ExperimentState};
pub use tokens::{ApiToken, EnrollmentToken, RefreshToken, Session, TokenStorage};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The requested row does not exist (or is not visible to the caller).
    #[error("not found")]
    NotFound,
    /// A uniqueness or reference constraint refused the write.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database URL is not one we can use.
    #[error("invalid database URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL with any password removed.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The database could not be reached or answered with an error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A stored value could not be decoded.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl StorageError {
    /// Maps constraint violations to [`StorageError::Conflict`], other errors unchanged.
    pub(crate) fn from_sqlx(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db)
                if db.is_unique_violation() || db.is_foreign_key_violation() =>
            {
                StorageError::Conflict(db.message().to_owned())
            }
            sqlx::Error::RowNotFound => StorageError::NotFound,
            _ => StorageError::Database(err),
        }
    }
}

/// Result alias of the storage layer.
pub type StorageResult<T> = Result<T, StorageError>;

/// Which backend a URL selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// A validated database URL: parsed once, at start-up, into its backend.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl {
    backend: Backend,
    url: String,
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl DatabaseUrl {
    /// Parses `sqlite://PATH`, `sqlite::memory:`, `postgres://...` or `postgresql://...`.
    pub fn parse(raw: &str) -> StorageResult<Self> {
        let invalid = |reason: &str| StorageError::InvalidUrl {
            url: redact(raw),
            reason: reason.to_owned(),
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(invalid("it is empty"));
        }
        if let Some(rest) = trimmed.strip_prefix("sqlite:") {
            let path = rest.trim_start_matches("//");
            if path.is_empty() {
                return Err(invalid("no file path after sqlite://"));
            }
            return Ok(DatabaseUrl {
                backend: Backend::Sqlite,
                url: trimmed.to_owned(),
            });
        }
        if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
            let parsed = url::Url::parse(trimmed).map_err(|e| invalid(&e.to_string()))?;
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(invalid("no host"));
            }
            return Ok(DatabaseUrl {
                backend: Backend::Postgres,
                url: trimmed.to_owned(),
            });
        }
        Err(invalid(
            "expected sqlite://PATH or postgres://USER@HOST:PORT/DATABASE",
        ))
    }

    /// The backend this URL selects.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The full URL, secrets included: pass only to the driver.
    pub fn expose(&self) -> &str {
        &self.url
    }

    /// The URL with any password replaced, for messages and logs.
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }
}

fn redact(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => raw.to_owned(),
    }
}

/// Pool settings shared by both backends.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Most connections the pool opens.
    pub max_connections: u32,
    /// How long to wait for a connection (also bounds the first connect).
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// Connects to the database the URL names (creating a missing SQLite file), without migrating.
pub async fn connect(
    url: &DatabaseUrl,
    settings: &PoolSettings,
) -> StorageResult<Arc<dyn Storage>> {
    Ok(Arc::new(SqlStorage::connect(url, settings).await?))
}

/// The whole storage port: every domain's part. [`SqlStorage`] implements it on both backends;
/// every method is one short transaction.
#[async_trait]
pub trait Storage:
    AccountStorage
    + OrganizationStorage
    + TokenStorage
    + LabStorage
    + SshKeyStorage
    + CampaignStorage
    + RecordStorage
    + CommandStorage
    + Send
    + Sync
    + 'static
{
    /// Which backend this is.
    fn backend(&self) -> Backend;
    /// Applies the embedded migrations of this backend.
    async fn migrate(&self) -> StorageResult<()>;
    /// Checks that the database answers.
    async fn ping(&self) -> StorageResult<()>;
    /// The connection pool now: (open, idle, most it opens).
    fn pool_use(&self) -> (u32, u32, u32);
}

#[async_trait]
impl Storage for SqlStorage {
    fn backend(&self) -> Backend {
        SqlStorage::backend(self)
    }

    async fn migrate(&self) -> StorageResult<()> {
        self.run_migrations().await
    }

    async fn ping(&self) -> StorageResult<()> {
        self.tx(async |tx| db::query("SELECT 1").execute(tx).await.map(drop))
            .await
    }

    fn pool_use(&self) -> (u32, u32, u32) {
        SqlStorage::pool_use(self)
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A new random identifier (UUID v7 text: time-ordered, so indexes stay compact).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
