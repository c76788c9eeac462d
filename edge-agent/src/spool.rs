//! The agent's durable outbox (docs/reliability.md rules 1–2): every record is written to an SQLite file
//! (WAL, `synchronous=FULL`) and numbered `(epoch, seq)` before it is sent, and deleted only when
//! the cloud acknowledges it. The epoch is random and created with the file, so `seq` never
//! restarts within an epoch; losing the file starts a new epoch. Capped in rows and bytes:
//! measurements are refused above 90 % of the cap (the caller raises a `buffer_full` alarm),
//! events (status, safety, results) use the reserved 10 % and are never refused.
//!
//! The file also remembers the command ids (program runs) the agent accepted and, once a run
//! ended, its result, so a command the cloud sends again is never run twice and is answered
//! with what the first run reported. The file's format version is SQLite's `user_version`;
//! [`Spool::open`] brings older files up to date in place.

use std::path::Path;
use std::str::FromStr;

use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

/// Errors of the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The spool file could not be opened or written.
    #[error("spool: {0}")]
    Database(#[from] sqlx::Error),
    /// The measurement quota is used up; events still fit.
    #[error("spool full: {rows} records, {bytes} bytes waiting for acknowledgement")]
    BufferFull {
        /// Records waiting.
        rows: u64,
        /// Bytes waiting.
        bytes: u64,
    },
}

/// What kind of record: decides the overflow policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordClass {
    /// Bulk data (spectra, temperatures): refused when the spool is 90 % full.
    Measurement,
    /// Status, safety events and program results: never refused.
    Event,
}

/// Caps of the spool.
#[derive(Debug, Clone, Copy)]
pub struct SpoolCaps {
    /// Most records waiting.
    pub max_rows: u64,
    /// Most bytes waiting.
    pub max_bytes: u64,
}

impl Default for SpoolCaps {
    fn default() -> Self {
        SpoolCaps {
            max_rows: 200_000,
            max_bytes: 1 << 30,
        }
    }
}

/// The format version of the spool file (`PRAGMA user_version`): 0 before commands kept their
/// result, 1 since.
pub const FORMAT_VERSION: i64 = 1;

/// What [`Spool::accept_command`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Acceptance {
    /// Accepted now, for the first time: run it.
    New,
    /// Accepted before: never run it again.
    Known(KnownCommand),
}

/// A command id the spool remembers.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownCommand {
    /// What the run reported when it ended (`None` while it runs, or when the agent stopped
    /// before it ended).
    pub result: Option<Value>,
}

/// One record waiting for acknowledgement.
#[derive(Debug, Clone, PartialEq)]
pub struct Spooled {
    /// Sequence number within the epoch.
    pub seq: u64,
    /// Program run, if any.
    pub program_id: Option<String>,
    /// The record.
    pub record: Value,
}

/// The durable outbox.
#[derive(Debug, Clone)]
pub struct Spool {
    pool: SqlitePool,
    epoch: String,
    caps: SpoolCaps,
}

impl Spool {
    /// Opens the spool file, creating it (and a new epoch) when missing.
    pub async fn open(path: &Path, caps: SpoolCaps) -> Result<Spool, SpoolError> {
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        // One connection: the agent is the only writer and the order of writes is the order of seq.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 1), \
             epoch TEXT NOT NULL, next_seq INTEGER NOT NULL, \
             rows INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0)",
        )
        .execute(&pool)
        .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS records (seq INTEGER PRIMARY KEY, program_id TEXT, \
             class TEXT NOT NULL, body TEXT NOT NULL, bytes INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS commands (id TEXT PRIMARY KEY, accepted_at INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await?;
        migrate(&pool).await?;
        let fresh: [u8; 8] = rand::random();
        let fresh: String = fresh.iter().map(|b| format!("{b:02x}")).collect();
        sqlx::query("INSERT OR IGNORE INTO meta (id, epoch, next_seq) VALUES (1, $1, 1)")
            .bind(&fresh)
            .execute(&pool)
            .await?;
        let (epoch,): (String,) = sqlx::query_as("SELECT epoch FROM meta WHERE id = 1")
            .fetch_one(&pool)
            .await?;
        Ok(Spool { pool, epoch, caps })
    }

    /// The epoch of this spool file.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Records and bytes waiting for acknowledgement (counters kept in `meta` by every append
    /// and acknowledgement, so the cap check costs one row read, not a table scan).
    pub async fn backlog(&self) -> Result<(u64, u64), SpoolError> {
        let (rows, bytes): (i64, i64) = sqlx::query_as("SELECT rows, bytes FROM meta WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok((rows.unsigned_abs(), bytes.unsigned_abs()))
    }

    /// Writes a record durably and returns its sequence number.
    pub async fn append(
        &self,
        program_id: Option<&str>,
        class: RecordClass,
        record: &Value,
    ) -> Result<u64, SpoolError> {
        let body = record.to_string();
        if class == RecordClass::Measurement {
            let (rows, bytes) = self.backlog().await?;
            let pending_bytes = bytes + body.len() as u64;
            if rows + 1 > self.caps.max_rows / 10 * 9
                || pending_bytes > self.caps.max_bytes / 10 * 9
            {
                return Err(SpoolError::BufferFull { rows, bytes });
            }
        }
        let mut tx = self.pool.begin().await?;
        let size = i64::try_from(body.len()).unwrap_or(i64::MAX);
        let (seq,): (i64,) = sqlx::query_as(
            "UPDATE meta SET next_seq = next_seq + 1, rows = rows + 1, bytes = bytes + $1 \
             WHERE id = 1 RETURNING next_seq - 1",
        )
        .bind(size)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO records (seq, program_id, class, body, bytes) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(seq)
        .bind(program_id)
        .bind(match class {
            RecordClass::Measurement => "measurement",
            RecordClass::Event => "event",
        })
        .bind(&body)
        .bind(size)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(seq.unsigned_abs())
    }

    /// Up to `limit` unacknowledged records after `after_seq`, in order.
    pub async fn after(&self, after_seq: u64, limit: u32) -> Result<Vec<Spooled>, SpoolError> {
        let rows: Vec<(i64, Option<String>, String)> = sqlx::query_as(
            "SELECT seq, program_id, body FROM records WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(i64::try_from(after_seq).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(seq, program_id, body)| Spooled {
                seq: seq.unsigned_abs(),
                program_id,
                record: serde_json::from_str(&body).unwrap_or(Value::Null),
            })
            .collect())
    }

    /// Deletes every record up to and including `seq_hi` (the cloud stored them).
    pub async fn ack(&self, seq_hi: u64) -> Result<u64, SpoolError> {
        let hi = i64::try_from(seq_hi).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await?;
        let (rows, bytes): (i64, i64) =
            sqlx::query_as("SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM records WHERE seq <= $1")
                .bind(hi)
                .fetch_one(&mut *tx)
                .await?;
        if rows > 0 {
            sqlx::query("DELETE FROM records WHERE seq <= $1")
                .bind(hi)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE meta SET rows = rows - $1, bytes = bytes - $2 WHERE id = 1")
                .bind(rows)
                .bind(bytes)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        // The agent's view of what the cloud has stored (the server-kill tests read it).
        tracing::debug!(epoch = %self.epoch, seq_hi, deleted = rows, "acknowledged by the cloud");
        Ok(rows.unsigned_abs())
    }

    /// Remembers a command id (a program run) durably before it is executed; when it was
    /// accepted before, says so with its stored result, so a command the cloud re-sends is
    /// never executed twice.
    pub async fn accept_command(&self, id: &str, now_ms: i64) -> Result<Acceptance, SpoolError> {
        let done = sqlx::query("INSERT OR IGNORE INTO commands (id, accepted_at) VALUES ($1, $2)")
            .bind(id)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 1 {
            return Ok(Acceptance::New);
        }
        // Ignored, so the id is there: never run it again, whatever the read says.
        let known = self.known_command(id).await?;
        Ok(Acceptance::Known(
            known.unwrap_or(KnownCommand { result: None }),
        ))
    }

    /// The command id if it was accepted before (without accepting it), with its result.
    pub async fn known_command(&self, id: &str) -> Result<Option<KnownCommand>, SpoolError> {
        let found: Option<(Option<String>,)> =
            sqlx::query_as("SELECT result FROM commands WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.map(|(result,)| KnownCommand {
            // A result that no longer parses is treated as unknown, never as another answer.
            result: result.and_then(|r| serde_json::from_str(&r).ok()),
        }))
    }

    /// Stores what an accepted command's run reported when it ended (before the answer is
    /// sent, so a re-send whose first answer was lost gets the same answer).
    pub async fn finish_command(&self, id: &str, result: &Value) -> Result<(), SpoolError> {
        sqlx::query("UPDATE commands SET result = $2 WHERE id = $1")
            .bind(id)
            .bind(result.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The next sequence number to be assigned (so `next_seq - 1` records were ever written).
    pub async fn next_seq(&self) -> Result<u64, SpoolError> {
        let (next,): (i64,) = sqlx::query_as("SELECT next_seq FROM meta WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(next.unsigned_abs())
    }
}

/// Brings a spool file written by an older agent up to [`FORMAT_VERSION`], in one transaction
/// per step (a crash leaves the file at the old or the new version, never between).
async fn migrate(pool: &SqlitePool) -> Result<(), SpoolError> {
    let (version,): (i64,) = sqlx::query_as("PRAGMA user_version")
        .fetch_one(pool)
        .await?;
    if version < 1 {
        let mut tx = pool.begin().await?;
        sqlx::query("ALTER TABLE commands ADD COLUMN result TEXT")
            .execute(&mut *tx)
            .await?;
        sqlx::query("PRAGMA user_version = 1")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn accepted_command_ids_and_their_results_are_remembered_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let spool = Spool::open(&path, SpoolCaps::default()).await.unwrap();
        assert_eq!(spool.known_command("cmd-1").await.unwrap(), None);
        assert_eq!(
            spool.accept_command("cmd-1", 1).await.unwrap(),
            Acceptance::New
        );
        let running = KnownCommand { result: None };
        assert_eq!(
            spool.accept_command("cmd-1", 2).await.unwrap(),
            Acceptance::Known(running.clone())
        );
        assert_eq!(spool.known_command("cmd-1").await.unwrap(), Some(running));
        let report = json!({ "outcome": "succeeded", "steps_total": 2 });
        spool.finish_command("cmd-1", &report).await.unwrap();
        drop(spool);
        let spool = Spool::open(&path, SpoolCaps::default()).await.unwrap();
        let ended = KnownCommand {
            result: Some(report),
        };
        assert_eq!(
            spool.known_command("cmd-1").await.unwrap(),
            Some(ended.clone())
        );
        assert_eq!(
            spool.accept_command("cmd-1", 3).await.unwrap(),
            Acceptance::Known(ended)
        );
        assert_eq!(spool.known_command("cmd-2").await.unwrap(), None);
    }

    /// A spool file of an agent before commands kept their result (format 0) opens with its
    /// epoch, records and accepted ids, and keeps results from then on.
    #[tokio::test]
    async fn a_spool_file_of_the_previous_format_is_migrated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let options = SqliteConnectOptions::from_str("sqlite://")
                .unwrap()
                .filename(&path)
                .create_if_missing(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .unwrap();
            for sql in [
                "CREATE TABLE meta (id INTEGER PRIMARY KEY CHECK (id = 1), epoch TEXT NOT NULL, \
                 next_seq INTEGER NOT NULL, rows INTEGER NOT NULL DEFAULT 0, \
                 bytes INTEGER NOT NULL DEFAULT 0)",
                "CREATE TABLE records (seq INTEGER PRIMARY KEY, program_id TEXT, \
                 class TEXT NOT NULL, body TEXT NOT NULL, bytes INTEGER NOT NULL)",
                "CREATE TABLE commands (id TEXT PRIMARY KEY, accepted_at INTEGER NOT NULL)",
                "INSERT INTO meta (id, epoch, next_seq, rows, bytes) VALUES (1, 'old-epoch', 2, 1, 2)",
                "INSERT INTO records (seq, program_id, class, body, bytes) \
                 VALUES (1, 'cmd-old', 'event', '{}', 2)",
                "INSERT INTO commands (id, accepted_at) VALUES ('cmd-old', 5)",
            ] {
                sqlx::query(sql).execute(&pool).await.unwrap();
            }
            pool.close().await;
        }
        for _ in 0..2 {
            // Opened twice: the migration runs once.
            let spool = Spool::open(&path, SpoolCaps::default()).await.unwrap();
            assert_eq!(spool.epoch(), "old-epoch");
            assert_eq!(spool.after(0, 10).await.unwrap().len(), 1);
            assert_eq!(spool.next_seq().await.unwrap(), 2);
            assert!(matches!(
                spool.accept_command("cmd-old", 9).await.unwrap(),
                Acceptance::Known(_)
            ));
            let (version,): (i64,) = sqlx::query_as("PRAGMA user_version")
                .fetch_one(&spool.pool)
                .await
                .unwrap();
            assert_eq!(version, FORMAT_VERSION);
        }
        let spool = Spool::open(&path, SpoolCaps::default()).await.unwrap();
        assert_eq!(
            spool.known_command("cmd-old").await.unwrap(),
            Some(KnownCommand { result: None }),
            "accepted by the old agent, result unknown"
        );
        spool
            .finish_command("cmd-old", &json!({ "outcome": "failed" }))
            .await
            .unwrap();
        assert_eq!(
            spool.known_command("cmd-old").await.unwrap(),
            Some(KnownCommand {
                result: Some(json!({ "outcome": "failed" }))
            })
        );
    }

    #[tokio::test]
    async fn records_survive_reopen_keep_their_epoch_and_leave_only_when_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.db");
        let spool = Spool::open(&path, SpoolCaps::default()).await.unwrap();
        let epoch = spool.epoch().to_owned();
        for i in 0..5 {
            let seq = spool
                .append(Some("p"), RecordClass::Measurement, &json!({ "i": i }))
                .await
                .unwrap();
            assert_eq!(seq, i + 1);
        }
        assert_eq!(spool.ack(2).await.unwrap(), 2);
        drop(spool);
        let spool = Spool::open(&path, SpoolCaps::default()).await.unwrap();
        assert_eq!(spool.epoch(), epoch, "the epoch belongs to the file");
        let left: Vec<u64> = spool
            .after(0, 100)
            .await
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(left, [3, 4, 5]);
        // seq continues after a full acknowledgement and a reopen: never reused in an epoch
        spool.ack(5).await.unwrap();
        let seq = spool
            .append(None, RecordClass::Event, &json!({}))
            .await
            .unwrap();
        assert_eq!(seq, 6);
        // a lost file is a new epoch
        drop(spool);
        std::fs::remove_file(&path).unwrap();
        let spool = Spool::open(&path, SpoolCaps::default()).await.unwrap();
        assert_ne!(spool.epoch(), epoch);
        assert_eq!(spool.next_seq().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn measurements_are_refused_at_ninety_percent_but_events_always_fit() {
        let dir = tempfile::tempdir().unwrap();
        let caps = SpoolCaps {
            max_rows: 10,
            max_bytes: 1 << 20,
        };
        let spool = Spool::open(&dir.path().join("s.db"), caps).await.unwrap();
        for _ in 0..9 {
            spool
                .append(None, RecordClass::Measurement, &json!({}))
                .await
                .unwrap();
        }
        assert!(matches!(
            spool
                .append(None, RecordClass::Measurement, &json!({}))
                .await,
            Err(SpoolError::BufferFull { rows: 9, .. })
        ));
        for _ in 0..5 {
            spool
                .append(None, RecordClass::Event, &json!({}))
                .await
                .unwrap();
        }
        assert_eq!(spool.backlog().await.unwrap().0, 14);
        // the counters follow acknowledgements
        spool.ack(9).await.unwrap();
        assert_eq!(spool.backlog().await.unwrap(), (5, 10));
        spool
            .append(None, RecordClass::Measurement, &json!({}))
            .await
            .unwrap();
    }
}
