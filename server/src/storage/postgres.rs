//! PostgreSQL backend: the production store.

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use super::{Backend, DatabaseUrl, PoolSettings, StorageError, StorageResult};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Storage on a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStorage {
    pub(super) pool: PgPool,
}

impl PgStorage {
    /// Connects to the PostgreSQL database the URL names.
    pub async fn connect(url: &DatabaseUrl, settings: &PoolSettings) -> StorageResult<Self> {
        let options: PgConnectOptions =
            url.expose()
                .parse()
                .map_err(|e: sqlx::Error| StorageError::InvalidUrl {
                    url: url.redacted(),
                    reason: e.to_string(),
                })?;
        // One direct connection first: a pool's timeout would hide the real cause
        // (connection refused, unknown database, authentication failed).
        let probe = tokio::time::timeout(
            settings.acquire_timeout,
            PgConnection::connect_with(&options),
        )
        .await
        .map_err(|_| StorageError::Database(sqlx::Error::PoolTimedOut))??;
        probe.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_with(options)
            .await?;
        Ok(PgStorage { pool })
    }

    /// The underlying pool (for backend-specific tests and tools).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

super::sql::impl_storage!(PgStorage, Backend::Postgres, MIGRATOR);
