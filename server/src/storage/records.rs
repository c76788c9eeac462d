//! Storage of the records agents stream (measurements, step results, safety events): one row per
//! delivery key `(lab, epoch, seq)`, so a replayed record is stored once.

use async_trait::async_trait;

use super::{PgStorage, SqliteStorage, StorageError, StorageResult};

/// A record as received from an agent.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// The lab (from the authenticated connection, never from the message).
    pub lab_id: String,
    /// The agent's record-stream epoch.
    pub epoch: String,
    /// Sequence number within the epoch.
    pub seq: i64,
    /// Program run id, if any.
    pub program_id: Option<String>,
    /// Record kind (the body's `type`, e.g. `measurement`).
    pub kind: String,
    /// The record JSON.
    pub body: String,
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredRecord {
    /// The lab.
    pub lab_id: String,
    /// Epoch.
    pub epoch: String,
    /// Sequence number.
    pub seq: i64,
    /// Program run id.
    pub program_id: Option<String>,
    /// Kind.
    pub kind: String,
    /// JSON body.
    pub body: String,
    /// When the server stored it, ms since the Unix epoch.
    pub received_at: i64,
}

/// Record storage port.
#[async_trait]
pub trait RecordStorage {
    /// Stores a record; `false` when its key was already stored (a replay).
    async fn store_record(&self, record: &NewRecord, now_ms: i64) -> StorageResult<bool>;
    /// The records of one program run of a lab, in delivery order.
    async fn records_of_program(
        &self,
        lab_id: &str,
        program_id: &str,
    ) -> StorageResult<Vec<StoredRecord>>;
    /// The first record of `kind` (e.g. `program_finished`) of a program run, if any.
    async fn program_record_of_kind(
        &self,
        lab_id: &str,
        program_id: &str,
        kind: &str,
    ) -> StorageResult<Option<StoredRecord>>;
    /// Whether any record of a program run arrived.
    async fn program_has_records(&self, lab_id: &str, program_id: &str) -> StorageResult<bool>;
    /// The highest seq stored for the lab under `epoch`, if any.
    async fn max_record_seq(&self, lab_id: &str, epoch: &str) -> StorageResult<Option<i64>>;
    /// The lab's newest stored `measurement` record whose measurement is of `measurement_kind`
    /// (e.g. `temperature`), of any program or none.
    async fn latest_measurement(
        &self,
        lab_id: &str,
        measurement_kind: &str,
    ) -> StorageResult<Option<StoredRecord>>;
}

/// The `LIKE` pattern (escape character `!`) matching a record body that contains a
/// measurement of `kind`: bodies are compact JSON, so the tag is written `"kind":"<kind>"`.
fn measurement_pattern(kind: &str) -> String {
    let mut escaped = String::with_capacity(kind.len() + 4);
    for c in kind.chars() {
        if matches!(c, '!' | '%' | '_') {
            escaped.push('!');
        }
        escaped.push(c);
    }
    format!("%\"kind\":\"{escaped}\"%")
}

macro_rules! impl_record_storage {
    ($ty:ident) => {
        #[async_trait]
        impl RecordStorage for $ty {
            async fn store_record(&self, r: &NewRecord, now_ms: i64) -> StorageResult<bool> {
                let done = sqlx::query(
                    "INSERT INTO agent_records \
                     (lab_id, epoch, seq, program_id, kind, body, received_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (lab_id, epoch, seq) DO NOTHING",
                )
                .bind(&r.lab_id)
                .bind(&r.epoch)
                .bind(r.seq)
                .bind(r.program_id.as_deref())
                .bind(&r.kind)
                .bind(&r.body)
                .bind(now_ms)
                .execute(&self.pool)
                .await
                .map_err(StorageError::from_sqlx)?;
                Ok(done.rows_affected() == 1)
            }

            async fn records_of_program(
                &self,
                lab_id: &str,
                program_id: &str,
            ) -> StorageResult<Vec<StoredRecord>> {
                sqlx::query_as(
                    "SELECT lab_id, epoch, seq, program_id, kind, body, received_at \
                     FROM agent_records WHERE lab_id = $1 AND program_id = $2 \
                     ORDER BY received_at, epoch, seq",
                )
                .bind(lab_id)
                .bind(program_id)
                .fetch_all(&self.pool)
                .await
                .map_err(StorageError::from_sqlx)
            }

            async fn program_record_of_kind(
                &self,
                lab_id: &str,
                program_id: &str,
                kind: &str,
            ) -> StorageResult<Option<StoredRecord>> {
                sqlx::query_as(
                    "SELECT lab_id, epoch, seq, program_id, kind, body, received_at \
                     FROM agent_records WHERE lab_id = $1 AND program_id = $2 AND kind = $3 \
                     ORDER BY received_at, epoch, seq LIMIT 1",
                )
                .bind(lab_id)
                .bind(program_id)
                .bind(kind)
                .fetch_optional(&self.pool)
                .await
                .map_err(StorageError::from_sqlx)
            }

            async fn program_has_records(
                &self,
                lab_id: &str,
                program_id: &str,
            ) -> StorageResult<bool> {
                let row: Option<(i64,)> = sqlx::query_as(
                    "SELECT seq FROM agent_records WHERE lab_id = $1 AND program_id = $2 LIMIT 1",
                )
                .bind(lab_id)
                .bind(program_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(StorageError::from_sqlx)?;
                Ok(row.is_some())
            }

            async fn max_record_seq(
                &self,
                lab_id: &str,
                epoch: &str,
            ) -> StorageResult<Option<i64>> {
                let row: (Option<i64>,) = sqlx::query_as(
                    "SELECT MAX(seq) FROM agent_records WHERE lab_id = $1 AND epoch = $2",
                )
                .bind(lab_id)
                .bind(epoch)
                .fetch_one(&self.pool)
                .await
                .map_err(StorageError::from_sqlx)?;
                Ok(row.0)
            }

            async fn latest_measurement(
                &self,
                lab_id: &str,
                measurement_kind: &str,
            ) -> StorageResult<Option<StoredRecord>> {
                // Walks `agent_records_recent` from the newest measurement down to the first
                // match; the body is checked again by the caller when it parses it.
                sqlx::query_as(
                    "SELECT lab_id, epoch, seq, program_id, kind, body, received_at \
                     FROM agent_records WHERE lab_id = $1 AND kind = 'measurement' \
                     AND body LIKE $2 ESCAPE '!' ORDER BY received_at DESC LIMIT 1",
                )
                .bind(lab_id)
                .bind(measurement_pattern(measurement_kind))
                .fetch_optional(&self.pool)
                .await
                .map_err(StorageError::from_sqlx)
            }
        }
    };
}

impl_record_storage!(SqliteStorage);
impl_record_storage!(PgStorage);

#[cfg(test)]
mod tests {
    use super::measurement_pattern;

    #[test]
    fn measurement_patterns_escape_like_wildcards() {
        assert_eq!(
            measurement_pattern("temperature"),
            "%\"kind\":\"temperature\"%"
        );
        assert_eq!(
            measurement_pattern("cd_spectrum"),
            "%\"kind\":\"cd!_spectrum\"%"
        );
        assert_eq!(measurement_pattern("a%!"), "%\"kind\":\"a!%!!\"%");
    }
}
