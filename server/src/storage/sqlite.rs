//! SQLite backend: the embedded default (a file created if missing, WAL, foreign keys on).

use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use super::{Backend, DatabaseUrl, PoolSettings, StorageError, StorageResult};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Storage on a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStorage {
    pub(super) pool: SqlitePool,
}

impl SqliteStorage {
    /// Opens (creating if missing) the SQLite database the URL names.
    pub async fn connect(url: &DatabaseUrl, settings: &PoolSettings) -> StorageResult<Self> {
        let options = SqliteConnectOptions::from_str(url.expose())
            .map_err(|e| StorageError::InvalidUrl {
                url: url.redacted(),
                reason: e.to_string(),
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options)
            .await?;
        Ok(SqliteStorage { pool })
    }

    /// The underlying pool (for backend-specific tests and tools).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// One transaction per storage call (SQLite has no row-level security: no tenant settings).
    pub(crate) async fn scoped_tx(
        pool: &SqlitePool,
    ) -> StorageResult<sqlx::Transaction<'static, sqlx::Sqlite>> {
        pool.begin().await.map_err(StorageError::from_sqlx)
    }
}

super::sql::impl_storage!(SqliteStorage, Backend::Sqlite, MIGRATOR);
