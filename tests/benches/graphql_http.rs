//! Load figure of issue #17: a simple GraphQL query through the real server (release build,
//! every middleware, the query budget, async-graphql's parse/validate/execute) against a bare
//! actix-web JSON handler, both driven by wrk with the same settings, interleaved round by round
//! in one run so the machine's state is the same for both. Prints a markdown table.
//!
//! ```text
//! cargo build --release -p maosic-server
//! cargo bench -p maosic-e2e --bench graphql_http -- [--rounds 3] [--seconds 5] [--connections 32] [--postgres]
//! ```
//!
//! Needs `wrk` on the PATH (Debian's package `wrk`). The server keeps its defaults except the
//! per-caller query budget, raised so that one load generator on one address is not throttled
//! (the budget is what stops one caller from saturating a replica, which is exactly what a load
//! test does).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::{anyhow, bail, Context};
use maosic_e2e::{median, Backend, BenchArgs, TestDatabase, TestServer};
use serde_json::{json, Value};

struct Options {
    rounds: usize,
    seconds: u64,
    connections: usize,
    backend: Backend,
}

fn options() -> anyhow::Result<Options> {
    let a = BenchArgs::parse(&["--rounds", "--seconds", "--connections"], &["--postgres"])?;
    Ok(Options {
        rounds: a.count("--rounds", 3)?.max(1),
        seconds: a.get("--seconds", 5).max(1),
        connections: a.count("--connections", 32)?.max(1),
        backend: if a.has("--postgres") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        },
    })
}

/// The baseline: one POST route that parses a JSON body and answers the JSON the real server
/// answers for `serverInfo`, on actix-web's defaults (a worker per core, like the server).
async fn bare(body: web::Json<Value>) -> HttpResponse {
    let ok = body.get("query").and_then(Value::as_str).is_some();
    if !ok {
        return HttpResponse::BadRequest().finish();
    }
    HttpResponse::Ok().json(json!({"data": {"serverInfo": {"name": "maosic", "version": "0.1.0"}}}))
}

fn start_bare() -> anyhow::Result<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let sys = actix_web::rt::System::new();
        sys.block_on(async move {
            let server = HttpServer::new(|| App::new().route("/graphql", web::post().to(bare)))
                .bind("127.0.0.1:0");
            let server = match server {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(anyhow!("bare server: {e}")));
                    return;
                }
            };
            let addr = server.addrs()[0];
            let _ = tx.send(Ok(addr));
            let _ = server.run().await;
        });
    });
    rx.recv()?
}

struct Load {
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// wrk's latency figures ("250.00us", "1.20ms", "2.00s") in ms.
fn ms(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1e3)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * scale)
}

fn wrk(url: &str, script: &Path, o: &Options) -> anyhow::Result<Load> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{}", o.connections),
            &format!("-d{}s", o.seconds),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .context("cannot run wrk (install Debian's package `wrk`)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    if let Some(line) = text.lines().find(|l| l.contains("Non-2xx")) {
        bail!("the load got error answers ({}):\n{text}", line.trim());
    }
    if let Some(line) = text
        .lines()
        .find(|l| l.trim_start().starts_with("Socket errors"))
    {
        bail!("the load got socket errors ({}):\n{text}", line.trim());
    }
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim_start().strip_prefix(prefix).map(str::trim))
            .ok_or_else(|| anyhow!("no {prefix:?} in wrk's output:\n{text}"))
    };
    let requests_per_s = field("Requests/sec:")?.parse::<f64>()?;
    let p50_ms = ms(field("50%")?).ok_or_else(|| anyhow!("bad 50% in {text}"))?;
    let p99_ms = ms(field("99%")?).ok_or_else(|| anyhow!("bad 99% in {text}"))?;
    Ok(Load {
        requests_per_s,
        p50_ms,
        p99_ms,
    })
}

fn script(
    dir: &Path,
    name: &str,
    query: &str,
    token: Option<&str>,
) -> anyhow::Result<std::path::PathBuf> {
    let body = serde_json::to_string(&json!({ "query": query }))?;
    let mut lua = format!(
        "wrk.method = \"POST\"\nwrk.body = {}\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
        serde_json::to_string(&body)?
    );
    if let Some(t) = token {
        lua.push_str(&format!(
            "wrk.headers[\"Authorization\"] = \"Bearer {t}\"\n"
        ));
    }
    let path = dir.join(format!("{name}.lua"));
    std::fs::write(&path, lua)?;
    Ok(path)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let o = options()?;
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is not installed: `apt-get install wrk` (Debian's package)");
    }
    let db = TestDatabase::create(o.backend).await?;
    let server = tokio::task::block_in_place(|| {
        TestServer::spawn(
            &db,
            &[
                ("MAOSIC_GRAPHQL__QUERY_BYTES_PER_SECOND", "1000000000"),
                ("MAOSIC_GRAPHQL__QUERY_BURST_BYTES", "1000000000"),
            ],
        )
    })?;
    let session = tokio::task::block_in_place(|| server.sign_up("bench@example.org", "Bench"))?;
    let bare_addr = start_bare()?;
    let dir = tempfile::tempdir()?;
    let info = "{ serverInfo { name version } }";
    let me = "{ me { id email } }";
    // each query answers what it should before it is loaded
    let check = tokio::task::block_in_place(|| server.graphql(info, json!({})))?;
    if check.pointer("/data/serverInfo/name") != Some(&json!("maosic")) {
        bail!("serverInfo answered {check}");
    }
    let check =
        tokio::task::block_in_place(|| server.graphql_as(&session.access_token, me, json!({})))?;
    if check.pointer("/data/me/email") != Some(&json!("bench@example.org")) {
        bail!("me answered {check}");
    }
    let cases = [
        (
            "bare actix-web JSON handler",
            format!("http://{bare_addr}/graphql"),
            script(dir.path(), "bare", info, None)?,
        ),
        (
            "GraphQL `serverInfo` (no account)",
            format!("{}/graphql", server.url()),
            script(dir.path(), "info", info, None)?,
        ),
        (
            "GraphQL `me` (JWT + one row read)",
            format!("{}/graphql", server.url()),
            script(dir.path(), "me", me, Some(&session.access_token))?,
        ),
    ];
    let mut runs: Vec<Vec<Load>> = cases.iter().map(|_| Vec::new()).collect();
    // warm-up: one short pass each, not counted
    let warm = Options { seconds: 1, ..o };
    for (_, url, s) in &cases {
        tokio::task::block_in_place(|| wrk(url, s, &warm))?;
    }
    for round in 0..o.rounds {
        for (i, (name, url, s)) in cases.iter().enumerate() {
            let l = tokio::task::block_in_place(|| wrk(url, s, &o))?;
            eprintln!(
                "round {}: {name}: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
                round + 1,
                l.requests_per_s,
                l.p50_ms,
                l.p99_ms
            );
            runs[i].push(l);
        }
    }
    println!(
        "\n{} rounds of {} s per case, wrk -t1 -c{}, server on {}, {} cores\n",
        o.rounds,
        o.seconds,
        o.connections,
        o.backend.name(),
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
    );
    println!(
        "| case | requests/s (median) | ratio to bare | p50 latency (ms) | p99 latency (ms) |"
    );
    println!("|---|---|---|---|---|");
    let base = median(runs[0].iter().map(|l| l.requests_per_s).collect());
    for ((name, _, _), r) in cases.iter().zip(&runs) {
        let rps = median(r.iter().map(|l| l.requests_per_s).collect());
        println!(
            "| {name} | {rps:.0} | {:.2} | {:.2} | {:.2} |",
            rps / base,
            median(r.iter().map(|l| l.p50_ms).collect()),
            median(r.iter().map(|l| l.p99_ms).collect())
        );
    }
    Ok(())
}
