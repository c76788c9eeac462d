//! Storage of the records agents stream (measurements, step results, safety events): one row per
//! delivery key `(lab, epoch, seq)`, so a replayed record is stored once.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;

use super::db::{query, SqlStorage};
#[allow(unused_imports)]
use super::ids::{CampaignId, CommandId, ExperimentId, LabId, OrganizationId, SessionId, UserId};
use super::StorageResult;

/// A record as received from an agent.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// The lab (from the authenticated connection, never from the message).
    pub lab_id: LabId,
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
    pub lab_id: LabId,
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

/// A lab's ingestion in one UTC day (the unit of the per-lab byte budget).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, sqlx::FromRow)]
pub struct IngestUsage {
    /// Bytes of record bodies stored.
    pub bytes: i64,
    /// Records stored.
    pub records: i64,
}

/// The UTC day (days since the Unix epoch) of a time in ms.
pub fn utc_day(now_ms: i64) -> i64 {
    now_ms.div_euclid(86_400_000)
}

/// Record storage port. Every call is one transaction in the caller's tenant scope (on
/// PostgreSQL, `agent_records` has row-level security: the lab's organisation and the
/// organisation whose experiment or instruction a record belongs to may read it; only platform
/// work writes).
#[async_trait]
pub trait RecordStorage {
    /// Stores a record and counts it in the lab's usage of the day, in one transaction; `false`
    /// when its key was already stored (a replay, not counted again).
    async fn store_record(&self, record: &NewRecord, now_ms: i64) -> StorageResult<bool> {
        Ok(self
            .store_records(std::slice::from_ref(record), now_ms)
            .await?
            .first()
            .copied()
            .unwrap_or(false))
    }
    /// Stores records (a batch a connection received back to back) and counts them in their
    /// labs' usage of the day, all in one transaction (one commit, so one flush, for the lot);
    /// `stored[i]` is `false` when `records[i]`'s key was already stored, before or earlier in
    /// the batch.
    async fn store_records(&self, records: &[NewRecord], now_ms: i64) -> StorageResult<Vec<bool>>;
    /// The records of one program run of a lab, in delivery order, at most `limit` (the
    /// engine's and the exports' loads are bounded: see `campaigns.max_records_per_experiment`).
    async fn records_of_program(
        &self,
        lab_id: &LabId,
        program_id: &str,
        limit: i64,
    ) -> StorageResult<Vec<StoredRecord>>;
    /// One page of a program run's records of `kind`, in delivery order: those after the
    /// delivery key `after` (`(received_at, epoch, seq)` of the last one seen), at most `limit`.
    async fn program_records_page(
        &self,
        lab_id: &LabId,
        program_id: &str,
        kind: &str,
        after: Option<(i64, String, i64)>,
        limit: i64,
    ) -> StorageResult<Vec<StoredRecord>>;
    /// The first record of `kind` (e.g. `program_finished`) of a program run, if any.
    async fn program_record_of_kind(
        &self,
        lab_id: &LabId,
        program_id: &str,
        kind: &str,
    ) -> StorageResult<Option<StoredRecord>>;
    /// The highest seq stored for the lab under `epoch`, if any.
    async fn max_record_seq(&self, lab_id: &LabId, epoch: &str) -> StorageResult<Option<i64>>;
    /// The lab's newest stored `measurement` record whose measurement is of `measurement_kind`
    /// (e.g. `temperature`), of any program or none.
    async fn latest_measurement(
        &self,
        lab_id: &LabId,
        measurement_kind: &str,
    ) -> StorageResult<Option<StoredRecord>>;
    /// What the lab stored on the UTC day `day` (see [`utc_day`]).
    async fn ingest_usage(&self, lab_id: &LabId, day: i64) -> StorageResult<IngestUsage>;
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

/// Rows per INSERT statement in [`RecordStorage::store_records`].
const STORE_CHUNK: usize = 256;

const RECORD_COLS: &str = "lab_id, epoch, seq, program_id, kind, body, received_at";

#[async_trait]
impl RecordStorage for SqlStorage {
    async fn store_records(&self, records: &[NewRecord], now_ms: i64) -> StorageResult<Vec<bool>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        self.tx(async |tx| {
            let mut stored = vec![false; records.len()];
            // One multi-row INSERT per chunk (7 parameters a row, far below either backend's
            // limit); RETURNING names the keys that were new.
            let mut inserted: HashSet<(String, String, i64)> = HashSet::new();
            for chunk in records.chunks(STORE_CHUNK) {
                let mut text = String::from(
                    "INSERT INTO agent_records \
                     (lab_id, epoch, seq, program_id, kind, body, received_at) VALUES ",
                );
                for i in 0..chunk.len() {
                    let n = i * 7;
                    if i > 0 {
                        text.push_str(", ");
                    }
                    text.push_str(&format!(
                        "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
                        n + 1,
                        n + 2,
                        n + 3,
                        n + 4,
                        n + 5,
                        n + 6,
                        n + 7
                    ));
                }
                text.push_str(
                    " ON CONFLICT (lab_id, epoch, seq) DO NOTHING RETURNING lab_id, epoch, seq",
                );
                let mut q = query(&text);
                for r in chunk {
                    q = q
                        .bind(r.lab_id.as_str())
                        .bind(&r.epoch)
                        .bind(r.seq)
                        .bind(r.program_id.as_deref())
                        .bind(&r.kind)
                        .bind(&r.body)
                        .bind(now_ms);
                }
                let rows: Vec<(String, String, i64)> = q.fetch_all(tx).await?;
                inserted.extend(rows);
            }
            // Each new key is claimed by its first occurrence in the batch.
            let mut usage: HashMap<&str, (i64, i64)> = HashMap::new();
            for (r, s) in records.iter().zip(stored.iter_mut()) {
                if inserted.remove(&(r.lab_id.as_str().to_owned(), r.epoch.clone(), r.seq)) {
                    *s = true;
                    let u = usage.entry(r.lab_id.as_str()).or_default();
                    u.0 =
                        u.0.saturating_add(i64::try_from(r.body.len()).unwrap_or(i64::MAX));
                    u.1 += 1;
                }
            }
            for (lab_id, (bytes, count)) in usage {
                query(
                    "INSERT INTO lab_ingest_usage (lab_id, day, bytes, records) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (lab_id, day) DO UPDATE \
                     SET bytes = lab_ingest_usage.bytes + excluded.bytes, \
                     records = lab_ingest_usage.records + excluded.records",
                )
                .bind(lab_id)
                .bind(utc_day(now_ms))
                .bind(bytes)
                .bind(count)
                .execute(tx)
                .await?;
            }
            Ok(stored)
        })
        .await
    }

    async fn records_of_program(
        &self,
        lab_id: &LabId,
        program_id: &str,
        limit: i64,
    ) -> StorageResult<Vec<StoredRecord>> {
        let sql = format!(
            "SELECT {RECORD_COLS} FROM agent_records WHERE lab_id = $1 AND program_id = $2 \
             ORDER BY received_at, epoch, seq LIMIT $3"
        );
        self.tx(async |tx| {
            query(&sql)
                .bind(lab_id)
                .bind(program_id)
                .bind(limit.max(0))
                .fetch_all(tx)
                .await
        })
        .await
    }

    async fn program_records_page(
        &self,
        lab_id: &LabId,
        program_id: &str,
        kind: &str,
        after: Option<(i64, String, i64)>,
        limit: i64,
    ) -> StorageResult<Vec<StoredRecord>> {
        let (at, epoch, seq) = after.unwrap_or((i64::MIN, String::new(), i64::MIN));
        let sql = format!(
            "SELECT {RECORD_COLS} FROM agent_records \
             WHERE lab_id = $1 AND program_id = $2 AND kind = $3 \
             AND (received_at > $4 OR (received_at = $4 AND epoch > $5) \
                  OR (received_at = $4 AND epoch = $5 AND seq > $6)) \
             ORDER BY received_at, epoch, seq LIMIT $7"
        );
        self.tx(async |tx| {
            query(&sql)
                .bind(lab_id)
                .bind(program_id)
                .bind(kind)
                .bind(at)
                .bind(&epoch)
                .bind(seq)
                .bind(limit.max(0))
                .fetch_all(tx)
                .await
        })
        .await
    }

    async fn program_record_of_kind(
        &self,
        lab_id: &LabId,
        program_id: &str,
        kind: &str,
    ) -> StorageResult<Option<StoredRecord>> {
        let sql = format!(
            "SELECT {RECORD_COLS} FROM agent_records \
             WHERE lab_id = $1 AND program_id = $2 AND kind = $3 \
             ORDER BY received_at, epoch, seq LIMIT 1"
        );
        self.tx(async |tx| {
            query(&sql)
                .bind(lab_id)
                .bind(program_id)
                .bind(kind)
                .fetch_optional(tx)
                .await
        })
        .await
    }

    async fn max_record_seq(&self, lab_id: &LabId, epoch: &str) -> StorageResult<Option<i64>> {
        self.tx(async |tx| {
            let row: (Option<i64>,) =
                query("SELECT MAX(seq) FROM agent_records WHERE lab_id = $1 AND epoch = $2")
                    .bind(lab_id)
                    .bind(epoch)
                    .fetch_one(tx)
                    .await?;
            Ok(row.0)
        })
        .await
    }

    async fn latest_measurement(
        &self,
        lab_id: &LabId,
        measurement_kind: &str,
    ) -> StorageResult<Option<StoredRecord>> {
        // Walks `agent_records_recent` from the newest measurement down to the first
        // match; the body is checked again by the caller when it parses it.
        let sql = format!(
            "SELECT {RECORD_COLS} FROM agent_records WHERE lab_id = $1 \
             AND kind = 'measurement' AND body LIKE $2 ESCAPE '!' \
             ORDER BY received_at DESC LIMIT 1"
        );
        self.tx(async |tx| {
            query(&sql)
                .bind(lab_id)
                .bind(measurement_pattern(measurement_kind))
                .fetch_optional(tx)
                .await
        })
        .await
    }

    async fn ingest_usage(&self, lab_id: &LabId, day: i64) -> StorageResult<IngestUsage> {
        self.tx(async |tx| {
            let row: Option<IngestUsage> =
                query("SELECT bytes, records FROM lab_ingest_usage WHERE lab_id = $1 AND day = $2")
                    .bind(lab_id)
                    .bind(day)
                    .fetch_optional(tx)
                    .await?;
            Ok(row.unwrap_or_default())
        })
        .await
    }
}

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
