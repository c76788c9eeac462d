//! Load figure of issue #17: dispatch latency, from an experiment queued to it running on its
//! lab's agent, with many labs busy at once.
//!
//! `--labs` labs (default 100) in one organisation, each with an agent and a running SNOBFIT
//! campaign of `--budget` experiments on the paper's recipe (`examples/chirality.recipe`). The
//! agents are raw agent-protocol clients (one tokio task each): `hello` with the paper lab's
//! descriptor; on `program.run` they record `program_started` at once, hold for `--run-ms`
//! (the lab's work; `--jitter-ms J` adds 0–J ms per run, spread by program id, so the labs
//! finish at different times instead of all at once), record `program_finished` (outcome
//! `failed`: no spectra are made, so each experiment ends failed and the optimizer is told so)
//! and answer. The engine runs as deployed
//! (defaults: one pass at least every 500 ms, woken by mutations and program records).
//!
//! For each experiment the database has `queued_at` and `dispatched_at` (claimed, `program.run`
//! sent), and the agent's `program_started` record its `received_at` (stored: the experiment
//! runs on the agent), in ms. The figure is the time from queued to that record, for
//! experiments queued while their lab was idle (with a batch size
//! of 1, every optimizer experiment but the first is queued after the one before concluded);
//! the **baseline** is the agent link's own round trip, `hello` sent to its answer.
//!
//! ```text
//! cargo build --release -p maosic-server
//! cargo bench -p maosic-e2e --bench dispatch -- [--labs 100] [--budget 10] [--run-ms 50] [--jitter-ms 0]
//! ```
//!
//! Needs `MAOSIC_TEST_POSTGRES_URL`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use maosic_e2e::{
    agent_token, median, repo_root, wait_for, Backend, BenchArgs, Session, TestDatabase, TestServer,
};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Copy)]
struct Options {
    labs: usize,
    budget: u64,
    run_ms: u64,
    /// Each run lasts `run_ms` plus up to this much more (spread by the program id), so labs
    /// finish at different times instead of all together.
    jitter_ms: u64,
}

fn options() -> anyhow::Result<Options> {
    let a = BenchArgs::parse(&["--labs", "--budget", "--run-ms", "--jitter-ms"], &[])?;
    Ok(Options {
        labs: a.count("--labs", 100)?.max(1),
        budget: a.get("--budget", 10).max(2),
        run_ms: a.get("--run-ms", 50),
        jitter_ms: a.get("--jitter-ms", 0),
    })
}

/// A duration in `0..=jitter`, uniform over program ids (their hash), the same in every run.
fn spread(program_id: &str, jitter: Duration) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    program_id.hash(&mut h);
    let ms = u64::try_from(jitter.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(h.finish() % ms.saturating_add(1))
}

fn record(epoch: &str, seq: u64, program_id: &str, body: Value) -> Message {
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Message::text(
        json!({"jsonrpc": "2.0", "method": "record", "params": {
            "epoch": epoch, "seq": seq, "program_id": program_id,
            "record": {"program": program_id, "lab_time_s": 0.0, "unix_ms": unix_ms, "body": body}}})
        .to_string(),
    )
}

/// A fake lab: answers `program.run` as described above, heartbeats, never fails on its own.
/// Returns the link's `hello` round trip, then runs until the task is aborted.
async fn fake_agent(
    addr: SocketAddr,
    credential: std::path::PathBuf,
    hello: Value,
    run: Duration,
    jitter: Duration,
    rtt: tokio::sync::oneshot::Sender<anyhow::Result<Duration>>,
) {
    let connected = async {
        let token = agent_token(&credential)?;
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{addr}{}", maosic_schema::protocol::AGENT_WS_PATH),
            )?;
        request.headers_mut().insert(
            "authorization",
            tokio_tungstenite::tungstenite::http::HeaderValue::from_str(&format!(
                "Bearer {token}"
            ))?,
        );
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (mut ws, _) = tokio_tungstenite::client_async(request, tcp).await?;
        let sent = Instant::now();
        ws.send(Message::text(
            json!({"jsonrpc": "2.0", "id": "hello", "method": "hello", "params": hello})
                .to_string(),
        ))
        .await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t)?;
                    if v["id"] == json!("hello") {
                        if v.get("result").is_none() {
                            bail!("hello refused: {v}");
                        }
                        return Ok((ws, sent.elapsed()));
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("closed before answering hello"),
            }
        }
    };
    let (ws, took) = match connected.await {
        Ok(c) => c,
        Err(e) => {
            let _ = rtt.send(Err(e));
            return;
        }
    };
    let _ = rtt.send(Ok(took));
    let (mut tx, mut rx) = ws.split();
    let (out, mut outgoing) = tokio::sync::mpsc::unbounded_channel::<Message>();
    tokio::spawn(async move {
        while let Some(m) = outgoing.recv().await {
            if tx.send(m).await.is_err() {
                return;
            }
        }
    });
    let epoch = uuid::Uuid::new_v4().to_string();
    let seq = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut beat = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            m = rx.next() => {
                let Some(Ok(Message::Text(t))) = m else {
                    match m {
                        Some(Ok(_)) => continue,
                        _ => return,
                    }
                };
                let Ok(v) = serde_json::from_str::<Value>(&t) else { continue };
                if v["method"] != "program.run" {
                    continue;
                }
                let id = v["id"].clone();
                let program_id = v["params"]["program_id"].as_str().unwrap_or_default().to_owned();
                let steps = v["params"]["program"]["steps"].as_array().map_or(0, Vec::len);
                let (out, seq, epoch) = (out.clone(), seq.clone(), epoch.clone());
                let run = run + spread(&program_id, jitter);
                tokio::spawn(async move {
                    let next = || seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    let _ = out.send(record(&epoch, next(), &program_id,
                        json!({"type": "program_started", "steps": steps})));
                    tokio::time::sleep(run).await;
                    let _ = out.send(record(&epoch, next(), &program_id,
                        json!({"type": "program_finished", "outcome": "failed",
                               "steps_succeeded": 0, "lab_duration_s": run.as_secs_f64()})));
                    let _ = out.send(Message::text(
                        json!({"jsonrpc": "2.0", "id": id, "result": {"outcome": "failed"}}).to_string(),
                    ));
                });
            }
            _ = beat.tick() => {
                let note = json!({"jsonrpc": "2.0", "method": "heartbeat", "params": {"time_ms": 0}});
                if out.send(Message::text(note.to_string())).is_err() {
                    return;
                }
            }
        }
    }
}

fn gql(server: &TestServer, s: &Session, query: &str, vars: Value) -> anyhow::Result<Value> {
    let body = server.graphql_as(&s.access_token, query, vars)?;
    if body.get("errors").is_some() {
        bail!("{query}: {body}");
    }
    Ok(body["data"].clone())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let o = options()?;
    let db = TestDatabase::create(Backend::Postgres)
        .await
        .context("the dispatch figure is measured on PostgreSQL")?;
    let server = tokio::task::block_in_place(|| {
        TestServer::spawn(
            &db,
            &[
                ("RUST_LOG", "warn"),
                // one caller sets up every lab and campaign
                ("MAOSIC_GRAPHQL__QUERY_BURST_BYTES", "100000000"),
            ],
        )
    })?;
    let session = tokio::task::block_in_place(|| server.sign_up("bench@example.org", "Bench"))?;
    let descriptor_toml = std::fs::read_to_string(repo_root().join("examples/paper-lab.toml"))?;
    let descriptor = maosic_schema::capability::LabDescriptor::from_toml_str(&descriptor_toml)
        .map_err(|e| anyhow!("paper-lab.toml: {e}"))?;
    let descriptor = serde_json::to_value(&descriptor)?;
    let devices: Vec<Value> = descriptor["devices"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|d| json!({"name": d["symbol"], "kind": d["kind"]}))
                .collect()
        })
        .unwrap_or_default();
    let hello = json!({"agent_version": "bench", "devices": devices, "descriptor": descriptor});
    let labs = tokio::task::block_in_place(|| {
        (0..o.labs)
            .map(|i| server.create_enrolled_lab(&session, &format!("lab {i}")))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let mut agents = Vec::new();
    let mut rtts = Vec::new();
    for lab in &labs {
        let (tx, rx) = tokio::sync::oneshot::channel();
        agents.push(tokio::spawn(fake_agent(
            server.addr,
            lab.credential.clone(),
            hello.clone(),
            Duration::from_millis(o.run_ms),
            Duration::from_millis(o.jitter_ms),
            tx,
        )));
        rtts.push(rx.await.map_err(|_| anyhow!("agent task died"))??);
    }
    let recipe = std::fs::read_to_string(repo_root().join("examples/chirality.recipe"))?;
    let started = Instant::now();
    let mut campaigns = Vec::new();
    for lab in &labs {
        let d = tokio::task::block_in_place(|| {
            gql(
                &server,
                &session,
                "mutation($o: ID!, $l: ID!, $r: String!, $b: Int!) { createCampaign(organizationId: $o, \
                   labId: $l, name: \"dispatch\", recipe: $r, objective: \"maximize abs(cd_at_exciton)\", \
                   optimizer: \"snobfit\", seed: 1, budget: $b, start: true) { id } }",
                json!({ "o": session.organization_id, "l": lab.id, "r": recipe, "b": o.budget }),
            )
        })?;
        campaigns.push(
            d["createCampaign"]["id"]
                .as_str()
                .ok_or_else(|| anyhow!("no campaign id: {d}"))?
                .to_owned(),
        );
    }
    let mut conn = PgConnection::connect(&db.url).await?;
    let total = i64::try_from(o.budget * o.labs as u64)?;
    let deadline = Duration::from_secs(60 + o.budget * o.labs as u64);
    tokio::task::block_in_place(|| {
        wait_for(deadline, "every campaign's experiments concluded", || {
            let done: i64 = tokio::runtime::Handle::current().block_on(async {
                sqlx::query_scalar(
                    "SELECT COUNT(*) FROM experiments WHERE state IN ('failed', 'completed')",
                )
                .fetch_one(&mut conn)
                .await
            })?;
            Ok((done >= total).then_some(()))
        })
    })
    .map_err(|e| anyhow!("{e}\n{}", server.log()))?;
    let took = started.elapsed();
    // Experiments queued while their lab had nothing else queued or in flight.
    let rows: Vec<(i64, Option<i64>, Option<i64>, i64)> = sqlx::query_as(
        "SELECT e.queued_at, e.dispatched_at, \
                (SELECT MIN(r.received_at) FROM agent_records r WHERE r.lab_id = e.lab_id \
                   AND r.program_id = e.id AND r.kind = 'program_started'), \
                (SELECT COUNT(*) FROM experiments o WHERE o.lab_id = e.lab_id AND o.id <> e.id \
                   AND o.queued_at <= e.queued_at \
                   AND COALESCE(o.finished_at, 9223372036854775807) > e.queued_at) \
         FROM experiments e",
    )
    .fetch_all(&mut conn)
    .await?;
    // Batch size 1: a lab never held two experiments at once (the pass and a campaign step
    // both dispatch, one at a time per lab).
    let spans: Vec<(String, Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT lab_id, dispatched_at, finished_at FROM experiments ORDER BY lab_id, dispatched_at",
    )
    .fetch_all(&mut conn)
    .await?;
    let overlaps = spans
        .windows(2)
        .filter(|w| w[0].0 == w[1].0 && w[1].1 < w[0].2)
        .count();
    if overlaps > 0 {
        bail!("{overlaps} experiments were dispatched to a lab still holding one");
    }
    conn.close().await?;
    let metrics = tokio::task::block_in_place(|| server.metrics())?;
    let metric = |k: &str| metrics.get(k).copied().unwrap_or(0.0);
    let passes = metric("maosic_engine_pass_duration_seconds_count");
    let mean_pass_ms = 1e3 * metric("maosic_engine_pass_duration_seconds_sum") / passes.max(1.0);
    for a in agents {
        a.abort();
    }
    let idle: Vec<_> = rows.iter().filter(|r| r.3 == 0).collect();
    let mut to_running: Vec<f64> = idle
        .iter()
        .filter_map(|r| Some((r.2? - r.0) as f64))
        .collect();
    let mut to_dispatch: Vec<f64> = idle
        .iter()
        .filter_map(|r| Some((r.1? - r.0) as f64))
        .collect();
    to_running.sort_by(f64::total_cmp);
    to_dispatch.sort_by(f64::total_cmp);
    let mut rtt_ms: Vec<f64> = rtts.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    rtt_ms.sort_by(f64::total_cmp);
    println!(
        "\n{} labs × {} experiments ({} queued on an idle lab, of {}), agent run {}–{} ms, PostgreSQL, {} cores, {:.1} s\n",
        o.labs,
        o.budget,
        idle.len(),
        rows.len(),
        o.run_ms,
        o.run_ms + o.jitter_ms,
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1),
        took.as_secs_f64()
    );
    println!("| interval | p50 (ms) | p90 (ms) | p99 (ms) | worst (ms) |");
    println!("|---|---|---|---|---|");
    for (name, v) in [
        ("baseline: agent link round trip (`hello`)", &rtt_ms),
        (
            "queued → dispatched (claimed, `program.run` sent)",
            &to_dispatch,
        ),
        (
            "queued → running (the agent's `program_started` stored)",
            &to_running,
        ),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
            percentile(v, 0.5),
            percentile(v, 0.9),
            percentile(v, 0.99),
            v.last().copied().unwrap_or(f64::NAN)
        );
    }
    println!(
        "\nengine passes: {passes:.0}, mean {mean_pass_ms:.1} ms; \
         median queued → running / median link round trip: {:.1}",
        median(to_running.clone()) / median(rtt_ms.clone()).max(f64::EPSILON)
    );
    Ok(())
}
