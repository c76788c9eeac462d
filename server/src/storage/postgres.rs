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

    /// One transaction per storage call, carrying the tenant scope to row-level security:
    /// a principal's calls run as the non-owner role `maosic_app` with the organisations it
    /// may see (`maosic.org_ids`, ...); platform work sets `maosic.bypass`.
    pub(crate) async fn scoped_tx(
        pool: &PgPool,
    ) -> StorageResult<sqlx::Transaction<'static, sqlx::Postgres>> {
        let mut tx = pool.begin().await.map_err(StorageError::from_sqlx)?;
        match super::tenant::current() {
            super::tenant::TenantScope::System => {
                sqlx::query("SELECT set_config('maosic.bypass', 'on', true)")
                    .execute(&mut *tx)
                    .await
                    .map_err(StorageError::from_sqlx)?;
            }
            super::tenant::TenantScope::Principal {
                user_id,
                org_ids,
                admin_org_ids,
                shared_lab_ids,
            } => {
                sqlx::query(
                    "SELECT set_config('role', 'maosic_app', true), \
                     set_config('maosic.bypass', 'off', true), \
                     set_config('maosic.user_id', $1, true), \
                     set_config('maosic.org_ids', $2, true), \
                     set_config('maosic.admin_org_ids', $3, true), \
                     set_config('maosic.lab_ids', $4, true)",
                )
                .bind(user_id)
                .bind(org_ids.join(","))
                .bind(admin_org_ids.join(","))
                .bind(shared_lab_ids.join(","))
                .execute(&mut *tx)
                .await
                .map_err(StorageError::from_sqlx)?;
            }
        }
        Ok(tx)
    }
}

super::sql::impl_storage!(PgStorage, Backend::Postgres, MIGRATOR);
