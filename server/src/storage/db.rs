//! Where SQL meets the two backends: one [`SqlStorage`] over a SQLite or a PostgreSQL pool, one
//! scoped transaction type [`Tx`], and one query type [`Sql`] with owned arguments.
//!
//! SQLite and PostgreSQL both accept `$n` placeholders, `RETURNING`, `TRUE`/`FALSE`, and decode
//! our column types (TEXT, 64-bit integers, reals, booleans) the same way, so each statement is
//! written once, as plain Rust, and runs on either. Where the dialects differ (row locks), the
//! code asks [`SqlStorage::backend`].
//!
//! Every storage method runs in one transaction opened by [`SqlStorage::tx`] (or
//! [`SqlStorage::begin`] for the rare caller that commits itself): on PostgreSQL it carries the
//! tenant scope of the calling task to row-level security (see [`super::tenant`]).

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Arguments, Connection, PgConnection, PgPool, SqlitePool};

use super::tenant::{self, TenantScope};
use super::{Backend, DatabaseUrl, PoolSettings, StorageError, StorageResult};

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The connection pool of one backend.
#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Storage on SQL: the one implementation of every storage port, for both backends.
#[derive(Debug, Clone)]
pub struct SqlStorage {
    pool: Pool,
}

impl SqlStorage {
    /// Connects to the database the URL names (creating a missing SQLite file), without
    /// migrating.
    pub async fn connect(url: &DatabaseUrl, settings: &PoolSettings) -> StorageResult<Self> {
        let invalid = |reason: String| StorageError::InvalidUrl {
            url: url.redacted(),
            reason,
        };
        let pool = match url.backend() {
            Backend::Sqlite => {
                let options = SqliteConnectOptions::from_str(url.expose())
                    .map_err(|e| invalid(e.to_string()))?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .foreign_keys(true)
                    .busy_timeout(std::time::Duration::from_secs(10));
                Pool::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(settings.max_connections)
                        .acquire_timeout(settings.acquire_timeout)
                        .connect_with(options)
                        .await?,
                )
            }
            Backend::Postgres => {
                let options: PgConnectOptions = url
                    .expose()
                    .parse()
                    .map_err(|e: sqlx::Error| invalid(e.to_string()))?;
                // One direct connection first: a pool's timeout would hide the real cause
                // (connection refused, unknown database, authentication failed).
                let probe = tokio::time::timeout(
                    settings.acquire_timeout,
                    PgConnection::connect_with(&options),
                )
                .await
                .map_err(|_| StorageError::Database(sqlx::Error::PoolTimedOut))??;
                probe.close().await?;
                Pool::Postgres(
                    PgPoolOptions::new()
                        .max_connections(settings.max_connections)
                        .acquire_timeout(settings.acquire_timeout)
                        .connect_with(options)
                        .await?,
                )
            }
        };
        Ok(SqlStorage { pool })
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// The connection pool now: (open, idle, most it opens).
    pub fn pool_use(&self) -> (u32, u32, u32) {
        let idle = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        match &self.pool {
            Pool::Sqlite(p) => (
                p.size(),
                idle(p.num_idle()),
                p.options().get_max_connections(),
            ),
            Pool::Postgres(p) => (
                p.size(),
                idle(p.num_idle()),
                p.options().get_max_connections(),
            ),
        }
    }

    /// The PostgreSQL pool, for backend-specific tests and tools; `None` on SQLite.
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match &self.pool {
            Pool::Postgres(pool) => Some(pool),
            Pool::Sqlite(_) => None,
        }
    }

    /// The SQLite pool, for backend-specific tests and tools; `None` on PostgreSQL.
    pub fn sqlite_pool(&self) -> Option<&SqlitePool> {
        match &self.pool {
            Pool::Sqlite(pool) => Some(pool),
            Pool::Postgres(_) => None,
        }
    }

    /// Applies the embedded migrations of this backend.
    pub(crate) async fn run_migrations(&self) -> StorageResult<()> {
        match &self.pool {
            Pool::Sqlite(pool) => SQLITE_MIGRATOR.run(pool).await?,
            Pool::Postgres(pool) => POSTGRES_MIGRATOR.run(pool).await?,
        }
        Ok(())
    }

    /// Opens a transaction in the calling task's tenant scope. On PostgreSQL a principal's
    /// transaction runs as the non-owner role `maosic_app` with the organisations it may see
    /// (`maosic.org_ids`, ...) for row-level security; platform work sets `maosic.bypass`.
    /// SQLite has no row-level security: a plain transaction. Dropped without
    /// [`Tx::commit`], it rolls back.
    pub(crate) async fn begin(&self) -> StorageResult<Tx> {
        match &self.pool {
            Pool::Sqlite(pool) => Ok(Tx::Sqlite(
                pool.begin().await.map_err(StorageError::from_sqlx)?,
            )),
            Pool::Postgres(pool) => {
                // The scope goes out with `BEGIN` in one simple-query message (one round trip
                // instead of two) when its values are plain identifiers, as ours are; anything
                // else is bound as parameters by a second statement.
                let scope = tenant::current();
                if let Some(begin) = begin_statement(&scope) {
                    let tx = pool
                        .begin_with(begin)
                        .await
                        .map_err(StorageError::from_sqlx)?;
                    return Ok(Tx::Postgres(tx));
                }
                let tx = pool.begin().await.map_err(StorageError::from_sqlx)?;
                let mut tx = Tx::Postgres(tx);
                let scope = match scope {
                    TenantScope::System => Sql::new(SYSTEM_SCOPE),
                    TenantScope::Principal {
                        user_id,
                        org_ids,
                        admin_org_ids,
                        shared_lab_ids,
                    } => Sql::new(
                        "SELECT set_config('role', 'maosic_app', true), \
                         set_config('maosic.bypass', 'off', true), \
                         set_config('maosic.user_id', $1, true), \
                         set_config('maosic.org_ids', $2, true), \
                         set_config('maosic.admin_org_ids', $3, true), \
                         set_config('maosic.lab_ids', $4, true)",
                    )
                    .bind(&user_id)
                    .bind(org_ids.join(","))
                    .bind(admin_org_ids.join(","))
                    .bind(shared_lab_ids.join(",")),
                };
                scope.execute(&mut tx).await?;
                Ok(tx)
            }
        }
    }

    /// Runs `work` in one scoped transaction ([`SqlStorage::begin`]) and commits when it
    /// returns `Ok`; an error rolls everything back. The one transaction helper of the storage
    /// layer: every storage method is one call of it.
    pub(crate) async fn tx<T, F>(&self, work: F) -> StorageResult<T>
    where
        F: AsyncFnOnce(&mut Tx) -> StorageResult<T>,
    {
        let mut tx = self.begin().await?;
        let out = work(&mut tx).await?;
        tx.commit().await?;
        Ok(out)
    }
}

/// The platform's scope: row-level security lets it through.
const SYSTEM_SCOPE: &str = "SELECT set_config('maosic.bypass', 'on', true)";

/// Whether `value` can be written inside a SQL string literal as it is: identifiers and
/// comma-separated lists of them (no quote, no backslash, nothing a setting could read
/// differently), so no escaping rule of the server's settings matters.
fn plain(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b',' | b'.' | b':'))
}

/// `BEGIN` and the tenant scope's settings as one simple query (a single round trip), or
/// `None` when a value is not [`plain`] and must be bound as a parameter instead.
fn begin_statement(scope: &TenantScope) -> Option<String> {
    match scope {
        TenantScope::System => Some(format!("BEGIN; {SYSTEM_SCOPE}")),
        TenantScope::Principal {
            user_id,
            org_ids,
            admin_org_ids,
            shared_lab_ids,
        } => {
            let (orgs, admins, labs) = (
                org_ids.join(","),
                admin_org_ids.join(","),
                shared_lab_ids.join(","),
            );
            [user_id.as_str(), &orgs, &admins, &labs]
                .iter()
                .all(|v| plain(v))
                .then(|| {
                    format!(
                        "BEGIN; SELECT set_config('role', 'maosic_app', true), \
                         set_config('maosic.bypass', 'off', true), \
                         set_config('maosic.user_id', '{user_id}', true), \
                         set_config('maosic.org_ids', '{orgs}', true), \
                         set_config('maosic.admin_org_ids', '{admins}', true), \
                         set_config('maosic.lab_ids', '{labs}', true)"
                    )
                })
        }
    }
}

/// An open transaction on one backend, in the tenant scope it was opened in.
pub(crate) enum Tx {
    /// On SQLite.
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    /// On PostgreSQL.
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

impl Tx {
    /// Commits the transaction.
    pub(crate) async fn commit(self) -> StorageResult<()> {
        match self {
            Tx::Sqlite(tx) => tx.commit().await,
            Tx::Postgres(tx) => tx.commit().await,
        }
        .map_err(StorageError::from_sqlx)
    }
}

/// A value bound to a `$n` placeholder. Nulls keep their type, which PostgreSQL needs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Arg {
    /// TEXT.
    Text(Option<String>),
    /// 64-bit integer.
    Int(Option<i64>),
    /// Double-precision real.
    Real(Option<f64>),
    /// Boolean.
    Bool(Option<bool>),
}

macro_rules! arg_from {
    ($variant:ident: $($t:ty => $conv:expr),* $(,)?) => {
        $(impl From<$t> for Arg {
            fn from(v: $t) -> Arg {
                #[allow(clippy::redundant_closure_call)]
                Arg::$variant(($conv)(v))
            }
        })*
    };
}

arg_from!(Text:
    &str => |v: &str| Some(v.to_owned()),
    String => Some,
    &String => |v: &String| Some(v.clone()),
    Option<&str> => |v: Option<&str>| v.map(str::to_owned),
    Option<String> => |v| v,
    &Option<String> => |v: &Option<String>| v.clone(),
);
arg_from!(Int:
    i64 => Some,
    &i64 => |v: &i64| Some(*v),
    Option<i64> => |v| v,
);
arg_from!(Real:
    f64 => Some,
    Option<f64> => |v| v,
);
arg_from!(Bool:
    bool => Some,
    Option<bool> => |v| v,
);

/// A row type both backends decode (what `#[derive(sqlx::FromRow)]` and tuples give).
pub(crate) trait FromRow:
    for<'r> sqlx::FromRow<'r, SqliteRow> + for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin
{
}

impl<T> FromRow for T where
    T: for<'r> sqlx::FromRow<'r, SqliteRow> + for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin
{
}

/// One statement and its arguments, run on whichever backend the transaction is on.
#[derive(Debug, Clone)]
#[must_use = "a statement does nothing until it is executed or fetched"]
pub(crate) struct Sql<'s> {
    text: &'s str,
    args: Vec<Arg>,
}

/// Binds the owned arguments into a backend's argument buffer.
fn arguments<'q, DB>(args: Vec<Arg>) -> StorageResult<DB::Arguments<'q>>
where
    DB: sqlx::Database,
    Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<f64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<bool>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut out = DB::Arguments::<'q>::default();
    for arg in args {
        match arg {
            Arg::Text(v) => out.add(v),
            Arg::Int(v) => out.add(v),
            Arg::Real(v) => out.add(v),
            Arg::Bool(v) => out.add(v),
        }
        .map_err(|e| StorageError::Database(sqlx::Error::Encode(e)))?;
    }
    Ok(out)
}

impl<'s> Sql<'s> {
    /// A statement with no arguments yet.
    pub(crate) fn new(text: &'s str) -> Self {
        Sql {
            text,
            args: Vec::new(),
        }
    }

    /// Binds the next `$n`.
    pub(crate) fn bind(mut self, value: impl Into<Arg>) -> Self {
        self.args.push(value.into());
        self
    }

    /// Runs the statement; returns how many rows it changed.
    pub(crate) async fn execute(self, tx: &mut Tx) -> StorageResult<u64> {
        let Sql { text, args } = self;
        match tx {
            Tx::Sqlite(tx) => sqlx::query_with(text, arguments::<sqlx::Sqlite>(args)?)
                .execute(&mut **tx)
                .await
                .map(|done| done.rows_affected()),
            Tx::Postgres(tx) => sqlx::query_with(text, arguments::<sqlx::Postgres>(args)?)
                .execute(&mut **tx)
                .await
                .map(|done| done.rows_affected()),
        }
        .map_err(StorageError::from_sqlx)
    }

    /// The one row the statement returns (an error when there is none).
    pub(crate) async fn fetch_one<T: FromRow>(self, tx: &mut Tx) -> StorageResult<T> {
        let Sql { text, args } = self;
        match tx {
            Tx::Sqlite(tx) => {
                sqlx::query_as_with::<_, T, _>(text, arguments::<sqlx::Sqlite>(args)?)
                    .fetch_one(&mut **tx)
                    .await
            }
            Tx::Postgres(tx) => {
                sqlx::query_as_with::<_, T, _>(text, arguments::<sqlx::Postgres>(args)?)
                    .fetch_one(&mut **tx)
                    .await
            }
        }
        .map_err(StorageError::from_sqlx)
    }

    /// The first row the statement returns, if any.
    pub(crate) async fn fetch_optional<T: FromRow>(self, tx: &mut Tx) -> StorageResult<Option<T>> {
        let Sql { text, args } = self;
        match tx {
            Tx::Sqlite(tx) => {
                sqlx::query_as_with::<_, T, _>(text, arguments::<sqlx::Sqlite>(args)?)
                    .fetch_optional(&mut **tx)
                    .await
            }
            Tx::Postgres(tx) => {
                sqlx::query_as_with::<_, T, _>(text, arguments::<sqlx::Postgres>(args)?)
                    .fetch_optional(&mut **tx)
                    .await
            }
        }
        .map_err(StorageError::from_sqlx)
    }

    /// Every row the statement returns.
    pub(crate) async fn fetch_all<T: FromRow>(self, tx: &mut Tx) -> StorageResult<Vec<T>> {
        let Sql { text, args } = self;
        match tx {
            Tx::Sqlite(tx) => {
                sqlx::query_as_with::<_, T, _>(text, arguments::<sqlx::Sqlite>(args)?)
                    .fetch_all(&mut **tx)
                    .await
            }
            Tx::Postgres(tx) => {
                sqlx::query_as_with::<_, T, _>(text, arguments::<sqlx::Postgres>(args)?)
                    .fetch_all(&mut **tx)
                    .await
            }
        }
        .map_err(StorageError::from_sqlx)
    }
}

/// A statement: `query("SELECT … WHERE id = $1").bind(id).fetch_one(tx)`.
pub(crate) fn query(text: &str) -> Sql<'_> {
    Sql::new(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_goes_out_with_begin_only_when_its_values_need_no_escaping() {
        let principal = |user: &str, org: &str| TenantScope::Principal {
            user_id: user.into(),
            org_ids: vec![org.into(), "org_2".into()],
            admin_org_ids: vec![],
            shared_lab_ids: vec!["lab-1".into()],
        };
        let sql = begin_statement(&principal("usr_01H", "org_1")).unwrap();
        assert!(sql.starts_with("BEGIN; SELECT set_config('role', 'maosic_app', true)"));
        assert!(sql.contains("set_config('maosic.org_ids', 'org_1,org_2', true)"));
        assert!(sql.contains("set_config('maosic.admin_org_ids', '', true)"));
        assert!(sql.contains("set_config('maosic.lab_ids', 'lab-1', true)"));
        // Anything that would need quoting falls back to bound parameters.
        for bad in ["o'; SELECT 1; --", "a\\b", "a b", "é"] {
            assert_eq!(begin_statement(&principal("u", bad)), None, "{bad}");
            assert_eq!(begin_statement(&principal(bad, "o")), None, "{bad}");
        }
        assert_eq!(
            begin_statement(&TenantScope::System).as_deref(),
            Some("BEGIN; SELECT set_config('maosic.bypass', 'on', true)")
        );
    }

    #[test]
    fn nulls_keep_their_type() {
        assert_eq!(Arg::from(None::<&str>), Arg::Text(None));
        assert_eq!(Arg::from(None::<i64>), Arg::Int(None));
        assert_eq!(Arg::from(None::<f64>), Arg::Real(None));
        assert_eq!(Arg::from(None::<bool>), Arg::Bool(None));
        assert_eq!(Arg::from("a"), Arg::Text(Some("a".into())));
    }
}
