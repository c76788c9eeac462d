//! Load figure of issue #17: idle agents held by one server replica, against a bare
//! tokio-tungstenite server holding as many WebSockets, measured in the same run.
//!
//! Each agent is a raw client speaking the agent protocol: it connects with its own credential,
//! says `hello`, waits for the answer, then only sends a `heartbeat` every heartbeat period
//! (as the real agent does when idle) and reads what comes. The real server authenticates every
//! upgrade, records presence, pings every heartbeat period and writes presence once a period;
//! the bare server (this program run with `--bare-server`, a separate process) accepts the
//! WebSocket, answers any request with an empty result, pings every heartbeat period and keeps
//! nothing else. For both: resident memory before and after the agents connect (per agent),
//! and CPU while they idle.
//!
//! ```text
//! cargo build --release -p maosic-server
//! cargo bench -p maosic-e2e --bench idle_agents -- [--agents 10000] [--idle-seconds 30]
//! ```
//!
//! Needs `MAOSIC_TEST_POSTGRES_URL`, and a file-descriptor limit above the agent count in both
//! processes (`ulimit -n`). Labs and credentials are seeded straight into the database (SQL
//! `generate_series`), as an operator would migrate a fleet, so setting up 10,000 labs takes
//! seconds.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use maosic_e2e::{process_cpu_seconds, Backend, BenchArgs, TestDatabase, TestServer};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Copy)]
struct Options {
    agents: usize,
    idle_seconds: u64,
    heartbeat_ms: u64,
    /// Connections opened at once while the fleet connects.
    concurrency: usize,
}

enum Mode {
    Bench(Options),
    BareServer { heartbeat_ms: u64 },
}

fn options() -> anyhow::Result<Mode> {
    let a = BenchArgs::parse(
        &[
            "--agents",
            "--idle-seconds",
            "--heartbeat-ms",
            "--concurrency",
        ],
        &["--bare-server"],
    )?;
    let o = Options {
        agents: a.count("--agents", 10_000)?.max(1),
        idle_seconds: a.get("--idle-seconds", 30).max(1),
        heartbeat_ms: a.get("--heartbeat-ms", 10_000).max(100),
        concurrency: a.count("--concurrency", 200)?.max(1),
    };
    Ok(if a.has("--bare-server") {
        Mode::BareServer {
            heartbeat_ms: o.heartbeat_ms,
        }
    } else {
        Mode::Bench(o)
    })
}

// ---- the baseline: a bare tokio-tungstenite server ---------------------------------------------

async fn bare_connection(tcp: tokio::net::TcpStream, heartbeat: Duration) -> anyhow::Result<()> {
    let mut ws = tokio_tungstenite::accept_async(tcp).await?;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t)?;
                    if let Some(id) = v.get("id") {
                        let reply = json!({"jsonrpc": "2.0", "id": id, "result": {}});
                        ws.send(Message::text(reply.to_string())).await?;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
            _ = ping.tick() => {
                let note = json!({"jsonrpc": "2.0", "method": "ping", "params": {"time_ms": 0}});
                ws.send(Message::text(note.to_string())).await?;
            }
        }
    }
}

async fn bare_server(heartbeat_ms: u64) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("bare listening on {}", listener.local_addr()?);
    let heartbeat = Duration::from_millis(heartbeat_ms);
    loop {
        let (tcp, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = bare_connection(tcp, heartbeat).await;
        });
    }
}

fn spawn_bare(heartbeat_ms: u64) -> anyhow::Result<(Child, SocketAddr)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--bare-server", "--heartbeat-ms", &heartbeat_ms.to_string()])
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout from the bare server"))?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    let addr = line
        .trim()
        .strip_prefix("bare listening on ")
        .ok_or_else(|| anyhow!("bare server said {line:?}"))?
        .parse()?;
    Ok((child, addr))
}

// ---- measuring a process -----------------------------------------------------------------------

/// Resident memory of a process, bytes (`VmRSS` in `/proc/<pid>/status`).
fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .ok_or_else(|| anyhow!("no VmRSS for {pid}"))?
        .trim()
        .parse::<u64>()?;
    Ok(kb * 1024)
}

/// CPU time of every PostgreSQL process on this machine (the database the server writes
/// presence to), seconds.
fn postgres_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .filter_map(|pid| process_cpu_seconds(pid).ok())
        .sum()
}

// ---- the fleet of idle agents ------------------------------------------------------------------

struct Fleet {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Agents whose link ended before the fleet was dropped.
    ended: Arc<AtomicUsize>,
    connect_seconds: f64,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn idle_agent(
    addr: SocketAddr,
    token: Option<String>,
    heartbeat: Duration,
    connected: tokio::sync::oneshot::Sender<anyhow::Result<()>>,
    ended: Arc<AtomicUsize>,
) {
    let hello = async {
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{addr}{}", maosic_schema::protocol::AGENT_WS_PATH),
            )?;
        if let Some(token) = &token {
            request.headers_mut().insert(
                "authorization",
                tokio_tungstenite::tungstenite::http::HeaderValue::from_str(&format!(
                    "Bearer {token}"
                ))?,
            );
        }
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        let (mut ws, _) = tokio_tungstenite::client_async(request, tcp).await?;
        let hello = json!({"jsonrpc": "2.0", "id": 1, "method": "hello",
            "params": {"agent_version": "bench", "devices": []}});
        ws.send(Message::text(hello.to_string())).await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t)?;
                    if v["id"] == json!(1) {
                        if v.get("result").is_none() {
                            bail!("hello refused: {v}");
                        }
                        return Ok(ws);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => bail!("closed before answering hello"),
            }
        }
    };
    let mut ws = match tokio::time::timeout(Duration::from_secs(60), hello).await {
        Ok(Ok(ws)) => {
            let _ = connected.send(Ok(()));
            ws
        }
        Ok(Err(e)) => {
            let _ = connected.send(Err(e));
            return;
        }
        Err(_) => {
            let _ = connected.send(Err(anyhow!("hello took over 60 s")));
            return;
        }
    };
    // Heartbeats start at a random phase, as a fleet started over time would have them.
    let phase = Duration::from_millis(rand_phase(heartbeat));
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + phase, heartbeat);
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(_)) => {}
                _ => break,
            },
            _ = beat.tick() => {
                let note = json!({"jsonrpc": "2.0", "method": "heartbeat", "params": {"time_ms": 0}});
                if ws.send(Message::text(note.to_string())).await.is_err() {
                    break;
                }
            }
        }
    }
    ended.fetch_add(1, Ordering::Relaxed);
}

fn rand_phase(heartbeat: Duration) -> u64 {
    let n = uuid::Uuid::new_v4().as_u128();
    let span = u64::try_from(heartbeat.as_millis()).unwrap_or(1).max(1);
    u64::try_from(n % u128::from(span)).unwrap_or(0)
}

/// Connects `tokens.len()` agents, `concurrency` at a time; fails if any does not get through.
async fn connect_fleet(
    addr: SocketAddr,
    tokens: Vec<Option<String>>,
    o: Options,
) -> anyhow::Result<Fleet> {
    let heartbeat = Duration::from_millis(o.heartbeat_ms);
    let ended = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(tokens.len());
    let t0 = Instant::now();
    for wave in tokens.chunks(o.concurrency) {
        let mut waiting = Vec::with_capacity(wave.len());
        for token in wave {
            let (tx, rx) = tokio::sync::oneshot::channel();
            tasks.push(tokio::spawn(idle_agent(
                addr,
                token.clone(),
                heartbeat,
                tx,
                ended.clone(),
            )));
            waiting.push(rx);
        }
        for rx in waiting {
            rx.await
                .map_err(|_| anyhow!("an agent task died"))?
                .context("an agent could not connect")?;
        }
    }
    Ok(Fleet {
        tasks,
        ended,
        connect_seconds: t0.elapsed().as_secs_f64(),
    })
}

struct Held {
    rss_before: u64,
    rss_after: u64,
    idle_cpu: f64,
    /// PostgreSQL's CPU over the same window, share of a core.
    idle_db_cpu: f64,
    connect_seconds: f64,
}

/// Connects the fleet to the process `pid` listening on `addr`, lets it idle, measures.
async fn hold(
    pid: u32,
    addr: SocketAddr,
    tokens: Vec<Option<String>>,
    o: Options,
) -> anyhow::Result<(Held, Fleet)> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_bytes(pid)?;
    let fleet = connect_fleet(addr, tokens, o).await?;
    // one heartbeat period for the connection burst to settle
    tokio::time::sleep(Duration::from_millis(o.heartbeat_ms)).await;
    let (cpu0, db0) = (process_cpu_seconds(pid)?, postgres_cpu_seconds());
    tokio::time::sleep(Duration::from_secs(o.idle_seconds)).await;
    let idle_cpu = (process_cpu_seconds(pid)? - cpu0) / o.idle_seconds as f64;
    let idle_db_cpu = (postgres_cpu_seconds() - db0).max(0.0) / o.idle_seconds as f64;
    let rss_after = rss_bytes(pid)?;
    let ended = fleet.ended.load(Ordering::Relaxed);
    if ended > 0 {
        bail!("{ended} agents lost their link while idle");
    }
    Ok((
        Held {
            rss_before,
            rss_after,
            idle_cpu,
            idle_db_cpu,
            connect_seconds: fleet.connect_seconds,
        },
        fleet,
    ))
}

async fn seed_labs(db: &TestDatabase, n: usize) -> anyhow::Result<Vec<Option<String>>> {
    let mut conn = PgConnection::connect(&db.url).await?;
    let n = i64::try_from(n)?;
    sqlx::query("INSERT INTO organizations (id, name, created_at) VALUES ($1, 'Fleet', 0)")
        .bind(uuid::Uuid::new_v4().to_string())
        .execute(&mut conn)
        .await?;
    sqlx::query(
        "INSERT INTO labs (id, organization_id, name, created_at) \
         SELECT md5('lab' || i)::uuid::text, (SELECT id FROM organizations WHERE name = 'Fleet'), \
                'lab ' || i, 0 FROM generate_series(1, $1) AS i",
    )
    .bind(n)
    .execute(&mut conn)
    .await?;
    sqlx::query(
        "INSERT INTO agent_credentials (id, lab_id, secret_hash, created_at) \
         SELECT md5('credential' || i)::uuid::text, md5('lab' || i)::uuid::text, \
                encode(sha256(convert_to('secret-' || i, 'UTF8')), 'hex'), 0 \
         FROM generate_series(1, $1) AS i",
    )
    .bind(n)
    .execute(&mut conn)
    .await?;
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT md5('credential' || i)::uuid::text, i FROM generate_series(1, $1) AS i",
    )
    .bind(n)
    .fetch_all(&mut conn)
    .await?;
    conn.close().await?;
    Ok(rows
        .into_iter()
        .map(|(id, i)| Some(format!("{id}.secret-{i}")))
        .collect())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn bench(o: Options) -> anyhow::Result<()> {
    let db = TestDatabase::create(Backend::Postgres)
        .await
        .context("the idle-agent figure is measured on PostgreSQL")?;
    let heartbeat = o.heartbeat_ms.to_string();
    let server = tokio::task::block_in_place(|| {
        TestServer::spawn(
            &db,
            &[
                ("MAOSIC_AGENT__HEARTBEAT_MS", heartbeat.as_str()),
                ("RUST_LOG", "warn"),
            ],
        )
    })?;
    let tokens = seed_labs(&db, o.agents).await?;

    let (bare_child, bare_addr) = spawn_bare(o.heartbeat_ms)?;
    let bare_child = KillOnDrop(bare_child);
    let (bare, fleet) = hold(bare_child.0.id(), bare_addr, vec![None; o.agents], o).await?;
    drop(fleet);
    drop(bare_child);

    let (real, fleet) = hold(server.pid(), server.addr, tokens, o).await?;
    let metrics = tokio::task::block_in_place(|| server.metrics())?;
    let connected = metrics
        .get("maosic_agents_connected")
        .copied()
        .unwrap_or(-1.0);
    if connected != o.agents as f64 {
        bail!(
            "the server counts {connected} agents connected, {} expected",
            o.agents
        );
    }
    drop(fleet);

    println!(
        "\n{} idle agents, heartbeat {} ms, {} s idle measured, PostgreSQL, {} cores\n",
        o.agents,
        o.heartbeat_ms,
        o.idle_seconds,
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
    );
    println!("| server | agents held | connect time (s) | RSS before (MiB) | RSS with agents (MiB) | memory per agent (KiB) | CPU while idle (% of a core) | PostgreSQL CPU meanwhile (% of a core) |");
    println!("|---|---|---|---|---|---|---|---|");
    let per_agent =
        |h: &Held| h.rss_after.saturating_sub(h.rss_before) as f64 / 1024.0 / o.agents as f64;
    for (name, h) in [("bare tokio-tungstenite", &bare), ("maosic-server", &real)] {
        println!(
            "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            o.agents,
            h.connect_seconds,
            mib(h.rss_before),
            mib(h.rss_after),
            per_agent(h),
            h.idle_cpu * 100.0,
            h.idle_db_cpu * 100.0
        );
    }
    println!(
        "\nmemory per agent: maosic-server / bare = {:.1}",
        per_agent(&real) / per_agent(&bare).max(f64::EPSILON)
    );
    Ok(())
}

/// Kills the bare server when the bench ends early.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match options()? {
        Mode::Bench(o) => runtime.block_on(bench(o)),
        // the bench kills this process when it is done with it
        Mode::BareServer { heartbeat_ms } => runtime.block_on(bare_server(heartbeat_ms)),
    }
}
