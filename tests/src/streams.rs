//! Record streams for the delivery tests: programs that make many records cheaply, operator calls
//! that start and stop them, what the server stored for a lab, the state of an agent's spool
//! file, and the delivery figures per epoch.
//!
//! Definitions used in the figures, per epoch of the agent's spool:
//! - *lost*: a seq in `1..=written` (records the spool ever numbered) that is not stored;
//! - *duplicates stored*: rows sharing a delivery key `(epoch, seq)`, plus program-step rows whose
//!   body equals another row's body (the same record spooled or stored twice under two keys;
//!   events outside steps may legitimately be equal on the event clock);
//! - *out of order*: a row stored after a row of a higher seq of the same epoch, in storage
//!   order (SQLite: rowid; PostgreSQL: the inserting transaction's id, `xmin`).

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Context as _;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, SqliteConnection};

use crate::{Backend, TestDatabase, TestServer};

/// A compiled program of `steps` chained steps `method(params)` on the paper lab, each planned
/// to take `duration_ms`.
pub fn chain(steps: usize, method: &str, params: Value, duration_ms: u64) -> Value {
    let steps: Vec<Value> = (1..=steps)
        .map(|id| {
            json!({
                "id": id,
                "request": { "jsonrpc": "2.0", "id": id, "method": method, "params": params },
                "after": if id == 1 { vec![] } else { vec![id - 1] },
                "start_ms": (id as u64 - 1) * duration_ms,
                "duration_ms": duration_ms,
                "yields": [],
                "line": 1
            })
        })
        .collect();
    json!({
        "format": 1,
        "recipe": null,
        "lab": "paper-lab",
        "variables": {},
        "estimated_duration_ms": steps.len() as u64 * duration_ms,
        "steps": steps
    })
}

/// `steps` holds of `hold_s` lab seconds each: 2·steps + 2 records (started, each step's start
/// and success, finished), all events. With `hold_s` 0 the records come as fast as the agent
/// spools them, independent of the lab's timing.
pub fn hold_program(steps: usize, hold_s: f64) -> Value {
    chain(steps, "H.hold", json!({ "time": hold_s }), 0)
}

/// The body of an operator `program.run` call.
pub fn run_body(program_id: &str, program: &Value, timeout_ms: u64) -> Value {
    json!({
        "method": "program.run",
        "params": { "program_id": program_id, "program": program },
        "timeout_ms": timeout_ms
    })
}

/// An operator API call (`POST /operator/v1/labs/LAB/call` with the operator token) on
/// `server_url`: HTTP status and JSON body (`Null` when the body is not JSON).
pub fn operator_call(
    server_url: &str,
    token: &str,
    lab: &str,
    body: &Value,
) -> anyhow::Result<(u16, Value)> {
    let response = ureq::post(format!("{server_url}/operator/v1/labs/{lab}/call"))
        .header("authorization", &format!("Bearer {token}"))
        .config()
        .http_status_as_error(false)
        .build()
        .header("content-type", "application/json")
        .send(body.to_string())?;
    let status = response.status().as_u16();
    let text = response.into_body().read_to_string()?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// Starts `body` on a thread and forgets it (the answer may well be lost to the faults).
pub fn call_in_background(server: &TestServer, token: &str, lab: &str, body: Value) {
    let (url, token, lab) = (server.url(), token.to_owned(), lab.to_owned());
    std::thread::spawn(move || {
        let _ = operator_call(&url, &token, &lab, &body);
    });
}

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The spool epoch.
    pub epoch: String,
    /// Sequence number within the epoch.
    pub seq: i64,
    /// The program run it belongs to.
    pub program_id: Option<String>,
    /// `body.type` of the record.
    pub kind: String,
    /// The record as stored (JSON).
    pub body: String,
    /// Storage order (SQLite rowid; PostgreSQL xmin, shared by the records of one batch).
    pub order: i64,
}

type RawRow = (String, i64, Option<String>, String, String, i64);

/// Every record the server stored for `lab`, in storage order.
pub async fn rows(db: &TestDatabase, lab: &str) -> anyhow::Result<Vec<Row>> {
    let raw: Vec<RawRow> = match db.backend {
        Backend::Sqlite => {
            let mut conn = SqliteConnection::connect(&db.url).await?;
            sqlx::query_as(
                "SELECT epoch, seq, program_id, kind, body, rowid FROM agent_records WHERE lab_id = $1",
            )
            .bind(lab)
            .fetch_all(&mut conn)
            .await?
        }
        Backend::Postgres => {
            let mut conn = PgConnection::connect(&db.url).await?;
            sqlx::query_as(
                "SELECT epoch, seq, program_id, kind, body, xmin::text::bigint FROM agent_records WHERE lab_id = $1",
            )
            .bind(lab)
            .fetch_all(&mut conn)
            .await?
        }
    };
    let mut rows: Vec<Row> = raw
        .into_iter()
        .map(|(epoch, seq, program_id, kind, body, order)| Row {
            epoch,
            seq,
            program_id,
            kind,
            body,
            order,
        })
        .collect();
    // One transaction stores a batch of records (the same xmin on PostgreSQL): within it, the
    // agent's order, which is seq order.
    rows.sort_by(|a, b| (a.order, &a.epoch, a.seq).cmp(&(b.order, &b.epoch, b.seq)));
    Ok(rows)
}

/// How many records the server stored for `lab`.
pub async fn count(db: &TestDatabase, lab: &str) -> anyhow::Result<i64> {
    let sql = "SELECT COUNT(*) FROM agent_records WHERE lab_id = $1";
    let (n,): (i64,) = match db.backend {
        Backend::Sqlite => {
            let mut conn = SqliteConnection::connect(&db.url).await?;
            sqlx::query_as(sql).bind(lab).fetch_one(&mut conn).await?
        }
        Backend::Postgres => {
            let mut conn = PgConnection::connect(&db.url).await?;
            sqlx::query_as(sql).bind(lab).fetch_one(&mut conn).await?
        }
    };
    Ok(n)
}

/// What an agent's spool file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolState {
    /// The file's epoch.
    pub epoch: String,
    /// Records ever numbered (`next_seq - 1`).
    pub written: i64,
    /// Records waiting for acknowledgement.
    pub waiting: i64,
    /// The spool's own counters, which its cap checks read: rows and bytes waiting.
    pub counted_rows: i64,
    /// See `counted_rows`.
    pub counted_bytes: i64,
    /// Waiting measurements (the class the cap refuses) and their bytes.
    pub measurements: (i64, i64),
    /// Every seq up to this one was acknowledged by the cloud: the agent deletes records only
    /// on an acknowledgement, and always every record up to the acknowledged seq.
    pub acked_hi: i64,
}

/// Reads an agent's spool file (SQLite, WAL: readable while the agent writes).
pub async fn spool_state(path: &Path) -> anyhow::Result<SpoolState> {
    let url = format!("sqlite://{}", path.display());
    let mut conn = SqliteConnection::connect(&url)
        .await
        .with_context(|| format!("spool {}", path.display()))?;
    let (epoch, next, counted_rows, counted_bytes): (String, i64, i64, i64) =
        sqlx::query_as("SELECT epoch, next_seq, rows, bytes FROM meta")
            .fetch_one(&mut conn)
            .await?;
    let (waiting, lowest): (i64, Option<i64>) =
        sqlx::query_as("SELECT COUNT(*), MIN(seq) FROM records")
            .fetch_one(&mut conn)
            .await?;
    let measurements: (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM records WHERE class = 'measurement'",
    )
    .fetch_one(&mut conn)
    .await?;
    conn.close().await?;
    let written = next - 1;
    Ok(SpoolState {
        epoch,
        written,
        waiting,
        counted_rows,
        counted_bytes,
        measurements,
        acked_hi: lowest.map_or(written, |s| s - 1),
    })
}

/// Removes a spool file with its WAL and shared-memory files.
pub fn remove_spool(path: &Path) -> anyhow::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let file = path.with_file_name(format!(
            "{}{suffix}",
            path.file_name()
                .and_then(|n| n.to_str())
                .context("spool path without a file name")?
        ));
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", file.display())),
        }
    }
    Ok(())
}

/// What a stream delivered, by the definitions at the top of this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Records the spool numbered in the epoch.
    pub written: i64,
    /// Rows stored for the epoch.
    pub stored: usize,
    /// Seqs in `1..=written` not stored.
    pub lost: usize,
    /// Rows sharing a key or a body.
    pub duplicates: usize,
    /// Rows stored after a row of a higher seq.
    pub out_of_order: usize,
    /// Distinct epochs among all rows.
    pub epochs: usize,
}

/// The delivery figures of `epoch` (with `written` records numbered) among `rows`.
pub fn delivery(rows: &[Row], epoch: &str, written: i64) -> Delivery {
    let mine: Vec<&Row> = rows.iter().filter(|r| r.epoch == epoch).collect();
    let keys: BTreeSet<i64> = mine.iter().map(|r| r.seq).collect();
    // A record stored twice under two keys shows as two equal bodies. Only a program step's
    // records are unique by content (each step reports once); events outside steps (a link
    // lost and restored again within one tick of the event clock) can be equal and distinct.
    let steps: Vec<&str> = rows
        .iter()
        .map(|r| r.body.as_str())
        .filter(|b| b.contains("\"step\":"))
        .collect();
    let bodies: BTreeSet<&str> = steps.iter().copied().collect();
    let key_dups = mine.len() - keys.len();
    let body_dups = steps.len() - bodies.len();
    let mut highest = 0;
    let mut out_of_order = 0;
    for r in &mine {
        if r.seq < highest {
            out_of_order += 1;
        }
        highest = highest.max(r.seq);
    }
    Delivery {
        written,
        stored: mine.len(),
        lost: (1..=written).filter(|s| !keys.contains(s)).count(),
        duplicates: key_dups + body_dups,
        out_of_order,
        epochs: rows.iter().map(|r| &r.epoch).collect::<BTreeSet<_>>().len(),
    }
}

/// The records of an agent log's `acknowledged by the cloud` lines (the spool's debug log):
/// `(epoch, seq_hi)` in log order.
pub fn logged_acks(log: &str) -> Vec<(String, i64)> {
    log.lines()
        .filter(|l| l.contains("acknowledged by the cloud"))
        .filter_map(|l| {
            let field = |name: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .map(str::to_owned)
            };
            Some((field("epoch=")?, field("seq_hi=")?.parse().ok()?))
        })
        .collect()
}
