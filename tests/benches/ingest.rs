//! Load figure of issue #17: durable record ingestion through the real agent gateway against a
//! raw batched `INSERT` on the same PostgreSQL, interleaved round by round in one run.
//!
//! - **Gateway:** `--labs` agents (raw WebSocket clients speaking the agent protocol, one thread
//!   each) stream `--records` measurement records apiece, at most `--window` unacknowledged (the
//!   agent keeps a window the same way: it sends spool batches ahead of the acks). A record
//!   counts when the server's `ack` covers it, i.e. once its transaction committed. The time is
//!   from the first record sent to the last ack.
//! - **Baseline:** the same rows, from `--labs` connections at once, each inserting its lab's
//!   records with one multi-row `INSERT … ON CONFLICT DO NOTHING` of `--window` rows per
//!   statement (each its own committed transaction), as the database owner: no gateway, no
//!   tenant scope, no usage accounting.
//!
//! ```text
//! cargo build --release -p maosic-server
//! cargo bench -p maosic-e2e --bench ingest -- [--rounds 3] [--labs 8] [--records 20000] [--window 512]
//! ```
//!
//! Needs `MAOSIC_TEST_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/postgres`). The
//! server's per-lab ingestion rate limit is raised for the run (it exists to stop one lab from
//! saturating a replica, which is what a load test does); everything else keeps its defaults.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use maosic_e2e::{
    create_lab, median, Backend, BenchArgs, RawAgent, TestDatabase, TestLab, TestServer,
};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, QueryBuilder};

#[derive(Clone, Copy)]
struct Options {
    rounds: usize,
    labs: usize,
    records: u64,
    window: u64,
}

fn options() -> anyhow::Result<Options> {
    let a = BenchArgs::parse(&["--rounds", "--labs", "--records", "--window"], &[])?;
    Ok(Options {
        rounds: a.count("--rounds", 3)?.max(1),
        labs: a.count("--labs", 8)?.max(1),
        records: a.get("--records", 20_000).max(1),
        window: a.get("--window", 512).max(1),
    })
}

/// A temperature reading as the agent's executor records it (about 200 bytes of JSON).
fn record_body(seq: u64) -> Value {
    json!({
        "program": "bench-program",
        "step": 3,
        "method": "H.read_temperature",
        "lab_time_s": seq as f64 * 0.5,
        "unix_ms": 1_800_000_000_000_u64 + seq,
        "body": {
            "type": "measurement",
            "name": "block",
            "measurement": { "kind": "temperature", "celsius": 120.0 + (seq % 100) as f64 / 100.0 },
        },
    })
}

/// Streams `o.records` records of a new epoch through `socket`, keeping at most `o.window`
/// unacknowledged; returns when the last one is acknowledged.
fn stream_records(agent: &mut RawAgent, o: Options) -> anyhow::Result<()> {
    let epoch = uuid::Uuid::new_v4().to_string();
    let (mut sent, mut acked) = (0u64, 0u64);
    while acked < o.records {
        let mut wrote = false;
        while sent < o.records && sent - acked < o.window {
            sent += 1;
            let note = json!({"jsonrpc": "2.0", "method": "record", "params": {
                "epoch": epoch, "seq": sent, "program_id": "bench-program", "record": record_body(sent)}});
            agent.write(&note)?;
            wrote = true;
        }
        if wrote {
            agent.flush()?;
        }
        let m = agent
            .next(Duration::from_secs(60))?
            .ok_or_else(|| anyhow!("no ack for 60 s"))?;
        match m["method"].as_str() {
            Some("ack") if m["params"]["epoch"] == json!(epoch) => {
                acked = acked.max(m["params"]["seq_hi"].as_u64().unwrap_or(0));
            }
            Some("throttle") => bail!("the server throttled the bench agent: {m}"),
            _ if m["type"] == "close" => bail!("the server closed the agent link: {m}"),
            _ => {}
        }
    }
    Ok(())
}

/// Records per second through the gateway, all labs at once.
fn gateway_round(server: &TestServer, labs: &[TestLab], o: Options) -> anyhow::Result<f64> {
    let mut sockets = labs
        .iter()
        .map(|lab| RawAgent::connect(server.addr, &lab.credential))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let start = Arc::new(Barrier::new(labs.len() + 1));
    let threads: Vec<_> = sockets
        .drain(..)
        .map(|mut socket| {
            let start = start.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                start.wait();
                stream_records(&mut socket, o)?;
                socket.close();
                Ok(())
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    for t in threads {
        t.join()
            .map_err(|_| anyhow!("an agent thread panicked"))??;
    }
    Ok(o.records as f64 * labs.len() as f64 / t0.elapsed().as_secs_f64())
}

/// Rows per second by raw batched `INSERT`s, one connection per lab, all at once.
async fn raw_round(db: &TestDatabase, labs: &[TestLab], o: Options) -> anyhow::Result<f64> {
    let mut conns = Vec::new();
    for _ in labs {
        conns.push(PgConnection::connect(&db.url).await?);
    }
    let t0 = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .zip(labs.iter().map(|l| l.id.clone()))
        .map(|(mut conn, lab)| {
            tokio::spawn(async move {
                let epoch = uuid::Uuid::new_v4().to_string();
                let mut seq = 0u64;
                while seq < o.records {
                    let hi = (seq + o.window).min(o.records);
                    let rows: Vec<(i64, String)> = (seq + 1..=hi)
                        .map(|s| (s as i64, record_body(s).to_string()))
                        .collect();
                    let mut q = QueryBuilder::<sqlx::Postgres>::new(
                        "INSERT INTO agent_records \
                         (lab_id, epoch, seq, program_id, kind, body, received_at) ",
                    );
                    q.push_values(rows, |mut b, (s, body)| {
                        b.push_bind(&lab)
                            .push_bind(&epoch)
                            .push_bind(s)
                            .push_bind("bench-program")
                            .push_bind("measurement")
                            .push_bind(body)
                            .push_bind(1_800_000_000_000_i64);
                    });
                    q.push(" ON CONFLICT (lab_id, epoch, seq) DO NOTHING");
                    q.build().execute(&mut conn).await?;
                    seq = hi;
                }
                conn.close().await?;
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(o.records as f64 * labs.len() as f64 / t0.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let o = options()?;
    let db = TestDatabase::create(Backend::Postgres)
        .await
        .context("the ingestion figure is measured on PostgreSQL")?;
    let server = tokio::task::block_in_place(|| {
        TestServer::spawn(
            &db,
            &[
                ("MAOSIC_AGENT__MAX_RECORDS_PER_SECOND", "100000000"),
                ("MAOSIC_AGENT__RECORD_BURST", "100000000"),
                ("RUST_LOG", "warn"),
            ],
        )
    })?;
    let labs = tokio::task::block_in_place(|| {
        (0..o.labs)
            .map(|i| create_lab(&db, &format!("bench-org-{i}"), &format!("bench-lab-{i}")))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    // warm-up, not counted: a short stream each way
    let warm = Options {
        records: o.window.min(o.records),
        ..o
    };
    tokio::task::block_in_place(|| gateway_round(&server, &labs, warm))?;
    raw_round(&db, &labs, warm).await?;
    let (mut gateway, mut raw) = (Vec::new(), Vec::new());
    for round in 0..o.rounds {
        let g = tokio::task::block_in_place(|| gateway_round(&server, &labs, o))?;
        let r = raw_round(&db, &labs, o).await?;
        eprintln!(
            "round {}: gateway {g:.0} records/s, raw INSERT {r:.0} rows/s, ratio {:.2}",
            round + 1,
            g / r
        );
        gateway.push(g);
        raw.push(r);
    }
    // every record the gateway acknowledged is in the table exactly once
    let mut conn = PgConnection::connect(&db.url).await?;
    let (stored,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM agent_records WHERE kind = 'measurement' \
         AND epoch IN (SELECT DISTINCT epoch FROM agent_records WHERE received_at <> 1800000000000)",
    )
    .fetch_one(&mut conn)
    .await?;
    let expected = (o.records * (o.rounds as u64) + warm.records) * o.labs as u64;
    if stored != i64::try_from(expected)? {
        bail!("the gateway stored {stored} records, expected {expected}");
    }
    conn.close().await?;
    let metrics = tokio::task::block_in_place(|| server.metrics())?;
    let batch = |k: &str| {
        metrics
            .get(&format!("maosic_agent_record_batch_size_{k}"))
            .copied()
            .unwrap_or(0.0)
    };
    let mean_batch = batch("sum") / batch("count").max(1.0);
    let ratios: Vec<f64> = gateway.iter().zip(&raw).map(|(g, r)| g / r).collect();
    println!(
        "\n{} rounds, {} labs × {} records (window {}), PostgreSQL, {} cores\n",
        o.rounds,
        o.labs,
        o.records,
        o.window,
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
    );
    println!("records per gateway transaction (mean): {mean_batch:.1}\n");
    println!("| path | records/s (median) | worst round | ratio to raw INSERT (median, worst) |");
    println!("|---|---|---|---|");
    let worst = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "| raw batched INSERT ({} rows per statement) | {:.0} | {:.0} | 1.00 |",
        o.window,
        median(raw.clone()),
        worst(&raw)
    );
    println!(
        "| agent gateway, acknowledged (durable) | {:.0} | {:.0} | {:.2}, {:.2} |",
        median(gateway.clone()),
        worst(&gateway),
        median(ratios.clone()),
        worst(&ratios)
    );
    Ok(())
}
