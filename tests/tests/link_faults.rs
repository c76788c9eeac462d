//! Faults on the agent link, injected by the chaos proxy (`maosic_e2e::chaos`) between a real
//! agent (virtual lab) and a real server: resets and blackholes during record streams, the
//! stale-close race of presence, duplicated commands with lost answers, and command deadlines.
//! Each test prints its figures (bench/RESULTS.md, "Reliability: agent link and presence").
//!
//! Definitions used in the figures, per epoch of the agent's spool:
//! - *lost*: a seq in `1..=written` (records the spool ever numbered) that is not stored;
//! - *duplicates stored*: rows sharing a delivery key `(epoch, seq)`, plus rows whose body equals
//!   another row's body (the same record spooled or stored twice under two keys);
//! - *out of order*: a row stored after a row of a higher seq of the same epoch, in storage
//!   order (SQLite: rowid; PostgreSQL: the inserting transaction's id, `xmin`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use maosic_e2e::chaos::ChaosProxy;
use maosic_e2e::streams::{self, chain, delivery, hold_program, run_body, Row};
use maosic_e2e::{
    backends, create_lab, mark_ran, wait_for, Backend, GraphqlWs, TestAgent, TestDatabase,
    TestServer,
};
use maosic_schema::protocol::error_code;
use serde_json::{json, Value};

const TOKEN: &str = "operator-test-token-0123456789abcdef";
const HEARTBEAT_MS: u64 = 500;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// The example virtual lab paced at 1000x the wall clock (its default is `max`): these tests
/// cut the link while a stream of records flows for seconds (a 40 s hold is 40 ms of wall time).
fn lab_config() -> PathBuf {
    maosic_e2e::paced_virtual_lab(1000.0)
}

/// Runs a future to completion from the synchronous parts of a test (the probes of `wait_for`).
fn block<F: Future>(f: F) -> F::Output {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| runtime.block_on(f))
}

fn server(db: &TestDatabase, heartbeat_ms: u64) -> TestServer {
    let hb = heartbeat_ms.to_string();
    TestServer::spawn(
        db,
        &[
            ("MAOSIC_OPERATOR_TOKEN", TOKEN),
            ("MAOSIC_AGENT__HEARTBEAT_MS", &hb),
        ],
    )
    .unwrap()
}

/// An operator call to the lab's agent: HTTP status and body.
fn call(server: &TestServer, lab: &str, body: &Value) -> (u16, Value) {
    streams::operator_call(&server.url(), TOKEN, lab, body).unwrap()
}

/// Starts a program run in a thread (its answer may well be lost to the faults).
fn start_run(server: &TestServer, lab: &str, program_id: &str, program: &Value) {
    streams::call_in_background(server, TOKEN, lab, run_body(program_id, program, 600_000));
}

fn wait_online(server: &TestServer, lab: &str, agent: &TestAgent) {
    wait_for(Duration::from_secs(30), "agent connected", || {
        let probe = json!({ "method": "program.cancel", "params": { "program_id": "none" } });
        Ok((call(server, lab, &probe).0 == 200).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
}

async fn rows(db: &TestDatabase, lab: &str) -> Vec<Row> {
    streams::rows(db, lab).await.unwrap()
}

async fn count(db: &TestDatabase, lab: &str) -> i64 {
    streams::count(db, lab).await.unwrap()
}

/// (epoch, records ever written, records still waiting) of a spool file.
async fn spool_state(path: &Path) -> (String, i64, i64) {
    let state = streams::spool_state(path).await.unwrap();
    (state.epoch, state.written, state.waiting)
}

/// How many rows of each kind.
fn kinds(rows: &[Row]) -> BTreeMap<&str, usize> {
    rows.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.kind.as_str()).or_default() += 1;
        m
    })
}

/// Waits until the spool is drained and the program's `program_finished` is stored.
fn wait_delivered(db: &TestDatabase, lab: &str, spool: &Path, agent: &TestAgent) -> (String, i64) {
    wait_for(Duration::from_secs(60), "stream delivered", || {
        let (epoch, written, waiting) = block(spool_state(spool));
        let finished = block(rows(db, lab))
            .iter()
            .any(|r| r.kind == "program_finished");
        Ok((waiting == 0 && finished).then_some((epoch, written)))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()))
    .0
}

// ---------------------------------------------------------------------------------------------
// delivery: 50 resets during a 1,000-record stream

const RESETS: usize = 50;

async fn resets_during_a_stream(backend: Backend) {
    let db = TestDatabase::create(backend).await.unwrap();
    let lab = create_lab(&db, "Chirality Group", "paper-lab").unwrap();
    let server = server(&db, HEARTBEAT_MS);
    let proxy = ChaosProxy::start(server.addr).unwrap();
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = spool_dir.path().join("spool.db");
    let agent = TestAgent::spawn_with_lab_and_spool(
        &proxy.url(),
        &lab.credential,
        &lab_config(),
        Some(&spool),
    )
    .unwrap();
    wait_online(&server, &lab.id, &agent);

    // 499 holds of 40 ms wall each: 1,000 records over about 20 s.
    let program = hold_program(499, 40.0);
    let started = Instant::now();
    start_run(&server, &lab.id, "stream-1", &program);
    let (mut hit, mut accepted_at_reset) = (Vec::new(), 0);
    for i in 0..RESETS {
        // Each reset hits a flowing stream: the agent is back on a new connection and a
        // record was stored since.
        wait_for(Duration::from_secs(30), "a new connection", || {
            let accepted = proxy.stats().connections;
            Ok((accepted > accepted_at_reset && proxy.open_connections() > 0).then_some(()))
        })
        .unwrap();
        let before = block(count(&db, &lab.id));
        wait_for(Duration::from_secs(30), "records flowing", || {
            Ok((block(count(&db, &lab.id)) > before).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e} (reset {i})\n{}", agent.log()));
        // Pacing only: vary the point of the stream the reset hits.
        std::thread::sleep(Duration::from_millis((i as u64 * 37) % 90));
        accepted_at_reset = proxy.stats().connections;
        hit.push(proxy.reset());
    }
    let (epoch, written) = wait_delivered(&db, &lab.id, &spool, &agent);
    let took = started.elapsed();
    let rows = block(rows(&db, &lab.id));
    let d = delivery(&rows, &epoch, written);
    let finished = rows.iter().find(|r| r.kind == "program_finished").unwrap();
    let outcome = serde_json::from_str::<Value>(&finished.body).unwrap()["body"]["outcome"].clone();
    // The program's own records; the safety kernel adds link-loss events to its run.
    let of_program = rows
        .iter()
        .filter(|r| r.program_id.as_deref() == Some("stream-1") && r.kind != "safety")
        .count();
    println!(
        "[{}] {RESETS} link resets ({} connections reset, {} accepted by the proxy) during a {of_program}-record \
         program stream ({} records spooled with the link events, kinds {:?}): {} stored, lost {}, \
         duplicates stored {}, out of order {}, epochs {}, program {outcome}, {:.1} s",
        backend.name(),
        hit.iter().sum::<usize>(),
        proxy.stats().connections,
        d.written,
        kinds(&rows),
        d.stored,
        d.lost,
        d.duplicates,
        d.out_of_order,
        d.epochs,
        took.as_secs_f64()
    );
    assert!(
        hit.iter().all(|n| *n >= 1),
        "every reset hit a connection: {hit:?}"
    );
    assert_eq!(of_program, 1000, "records of the program");
    assert_eq!(d.lost, 0);
    assert_eq!(d.duplicates, 0);
    assert_eq!(d.out_of_order, 0);
    assert_eq!(d.stored as i64, d.written);
    assert_eq!(outcome, "succeeded");
    mark_ran(backend, "resets_during_a_stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_during_a_stream_lose_duplicate_and_reorder_nothing_on_every_backend() {
    for backend in backends() {
        resets_during_a_stream(backend).await;
    }
}

// ---------------------------------------------------------------------------------------------
// delivery: the link blackholed (no close) 20×

const BLACKHOLES: usize = 20;

fn occurrences(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

async fn blackholes_during_a_stream(backend: Backend) {
    let db = TestDatabase::create(backend).await.unwrap();
    let lab = create_lab(&db, "Chirality Group", "paper-lab").unwrap();
    let server = server(&db, HEARTBEAT_MS);
    let proxy = ChaosProxy::start(server.addr).unwrap();
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = spool_dir.path().join("spool.db");
    let agent = TestAgent::spawn_with_lab_and_spool(
        &proxy.url(),
        &lab.credential,
        &lab_config(),
        Some(&spool),
    )
    .unwrap();
    wait_online(&server, &lab.id, &agent);
    // Longer than the blackholes take; canceled once they are done.
    start_run(&server, &lab.id, "stream-1", &hold_program(2000, 100.0));

    let limit = Duration::from_millis(3 * HEARTBEAT_MS + 1000);
    let agent_saw = "no traffic from the server";
    let server_saw = "end=Dead";
    let (mut agent_ms, mut server_ms) = (Vec::new(), Vec::new());
    for i in 0..BLACKHOLES {
        let before = block(count(&db, &lab.id));
        wait_for(Duration::from_secs(30), "records flowing", || {
            Ok((block(count(&db, &lab.id)) > before).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e} (blackhole {i})\n{}", agent.log()));
        let (a0, s0) = (
            occurrences(&agent.log(), agent_saw),
            occurrences(&server.log(), server_saw),
        );
        let t0 = Instant::now();
        proxy.blackhole(true);
        let (mut a, mut s) = (None, None);
        let ((a, s), _) = wait_for(
            Duration::from_secs(10),
            "both sides detect the blackhole",
            || {
                if a.is_none() && occurrences(&agent.log(), agent_saw) > a0 {
                    a = Some(t0.elapsed());
                }
                if s.is_none() && occurrences(&server.log(), server_saw) > s0 {
                    s = Some(t0.elapsed());
                }
                Ok(a.zip(s))
            },
        )
        .unwrap_or_else(|e| panic!("{e} (blackhole {i})\n{}\n{}", agent.log(), server.log()));
        agent_ms.push(a.as_millis());
        server_ms.push(s.as_millis());
        proxy.heal();
    }
    wait_online(&server, &lab.id, &agent);
    let (status, answer) = call(
        &server,
        &lab.id,
        &json!({ "method": "program.cancel", "params": { "program_id": "stream-1" } }),
    );
    assert_eq!(
        (status, &answer["result"]["canceled"]),
        (200, &json!(true)),
        "{answer}"
    );
    let (epoch, written) = wait_delivered(&db, &lab.id, &spool, &agent);
    let rows = block(rows(&db, &lab.id));
    let d = delivery(&rows, &epoch, written);
    let max = |v: &[u128]| v.iter().copied().max().unwrap_or(0);
    println!(
        "[{}] link blackholed {BLACKHOLES}× (heartbeat {HEARTBEAT_MS} ms, limit {} ms): detected by the agent in max {} ms, \
         by the server in max {} ms; {} records spooled, {} stored, lost {}, duplicates stored {}, out of order {}",
        backend.name(),
        limit.as_millis(),
        max(&agent_ms),
        max(&server_ms),
        d.written,
        d.stored,
        d.lost,
        d.duplicates,
        d.out_of_order
    );
    assert!(max(&agent_ms) <= limit.as_millis(), "agent: {agent_ms:?}");
    assert!(
        max(&server_ms) <= limit.as_millis(),
        "server: {server_ms:?}"
    );
    assert_eq!(d.lost, 0);
    assert_eq!(d.duplicates, 0);
    assert_eq!(d.out_of_order, 0);
    assert_eq!(d.stored as i64, d.written);
    mark_ran(backend, "blackholes_during_a_stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholes_are_detected_on_both_sides_and_lose_nothing_on_every_backend() {
    for backend in backends() {
        blackholes_during_a_stream(backend).await;
    }
}

// ---------------------------------------------------------------------------------------------
// presence: the stale-close race

const SWAPS: usize = 10;

fn generation(server: &TestServer, token: &str, lab: &str) -> (bool, i64) {
    let body = server
        .graphql_as(
            token,
            "query($id: ID!) { lab(id: $id) { online connectionGeneration } }",
            json!({ "id": lab }),
        )
        .unwrap();
    let l = &body["data"]["lab"];
    (
        l["online"].as_bool().unwrap(),
        l["connectionGeneration"].as_i64().unwrap(),
    )
}

/// `labStatus` events received so far (`true` = online).
fn status_events(ws: &mut GraphqlWs, into: &mut Vec<bool>, wait: Duration) {
    while let Some(msg) = ws.next(wait).unwrap() {
        if let Some(online) = msg["payload"]["data"]["labStatus"]["online"].as_bool() {
            into.push(online);
            return;
        }
    }
}

async fn stale_close_race(backend: Backend) {
    let db = TestDatabase::create(backend).await.unwrap();
    // Long heartbeat: the held old connection must not be declared dead during a swap.
    let server = server(&db, 2000);
    let session = server
        .sign_up("owner@chirality.example", "Chirality Group")
        .unwrap();
    let lab = server.create_enrolled_lab(&session, "paper-lab").unwrap();
    let token = session.access_token.as_str();
    let proxy = ChaosProxy::start(server.addr).unwrap();
    let (mut ws, ack) = GraphqlWs::connect(&server, token).unwrap();
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    ws.subscribe(
        "1",
        "subscription($l: ID!) { labStatus(labId: $l) { online } }",
        json!({ "l": lab.id }),
    )
    .unwrap();
    let descriptor = repo("examples/paper-lab.toml");
    let mut agent = TestAgent::spawn(&proxy.url(), &lab.credential, Some(&descriptor)).unwrap();
    let (_, _) = wait_for(Duration::from_secs(15), "lab online", || {
        Ok((generation(&server, token, &lab.id) == (true, 1)).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let mut events = Vec::new();
    let mut offline_seen = Vec::new();
    for round in 0..SWAPS {
        let (_, gen) = generation(&server, token, &lab.id);
        // The old connection freezes in the proxy, its agent dies: its close arrives late.
        assert_eq!(proxy.hold_current(), 1);
        agent.kill();
        agent = TestAgent::spawn(&proxy.url(), &lab.credential, Some(&descriptor)).unwrap();
        wait_for(
            Duration::from_secs(15),
            "the new connection's hello",
            || Ok((generation(&server, token, &lab.id).1 > gen).then_some(())),
        )
        .unwrap_or_else(|e| panic!("{e} (round {round})\n{}", agent.log()));
        // Now the old connection's close reaches the server.
        proxy.heal();
        wait_for(Duration::from_secs(15), "the old connection closed", || {
            Ok((proxy.open_connections() == 1).then_some(()))
        })
        .unwrap();
        offline_seen.push(!generation(&server, token, &lab.id).0);
    }
    let (_, last_gen) = generation(&server, token, &lab.id);
    // A clean stop makes the one right offline transition; every earlier one was wrong.
    agent.terminate().unwrap();
    wait_for(Duration::from_secs(10), "the final offline event", || {
        status_events(&mut ws, &mut events, Duration::from_millis(50));
        Ok(events.contains(&false).then_some(()))
    })
    .unwrap();
    let wrong = events.iter().filter(|online| !**online).count() - 1
        + offline_seen.iter().filter(|o| **o).count();
    println!(
        "[{}] stale close after a new hello, {SWAPS} swaps (generations 1 → {last_gen}): wrong offline transitions {wrong}, \
         labStatus events {events:?}, server saw {} stale closes",
        backend.name(),
        occurrences(&server.log(), "end=Cut")
    );
    assert_eq!(last_gen, 1 + SWAPS as i64);
    assert_eq!(wrong, 0, "{events:?} {offline_seen:?}");
    mark_ran(backend, "stale_close_race");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_close_never_marks_the_lab_offline_on_every_backend() {
    for backend in backends() {
        stale_close_race(backend).await;
    }
}

// ---------------------------------------------------------------------------------------------
// commands: duplicated deliveries and lost answers, each executed exactly once

const COMMANDS: usize = 500;
const RESET_EVERY: usize = 10;

/// What an answer to `program.run` says: `Some(report)` the run's report (its first answer,
/// or the one the agent stored for a re-send), `None` no answer yet (link reset, agent
/// offline) or still running (refused as already accepted while it runs).
fn verdict(status: u16, answer: &Value) -> Option<Value> {
    match status {
        200 => Some(answer["result"].clone()),
        422 if answer["error"]["code"] == error_code::ALREADY_ACCEPTED
            && answer["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("already running")) =>
        {
            None
        }
        409 | 504 => None,
        _ => panic!("unexpected answer {status}: {answer}"),
    }
}

async fn commands_exactly_once(backend: Backend) {
    let db = TestDatabase::create(backend).await.unwrap();
    let lab = create_lab(&db, "Chirality Group", "paper-lab").unwrap();
    let server = server(&db, HEARTBEAT_MS);
    let proxy = ChaosProxy::start(server.addr).unwrap();
    let agent = TestAgent::spawn_with_lab(&proxy.url(), &lab.credential, &lab_config()).unwrap();
    wait_online(&server, &lab.id, &agent);

    let quick = chain(1, "P1.stop", json!({}), 200);
    // Runs 0.3 s wall, so a reset lands while it runs and its answer is lost.
    let slow = hold_program(1, 300.0);
    let started = Instant::now();
    let (mut lost_answers, mut sends, mut dup_answered, mut resets) = (0, 0, 0, 0);
    for i in 0..COMMANDS {
        let id = format!("cmd-{i}");
        let victim = i % RESET_EVERY == RESET_EVERY - 1;
        if victim {
            let first = {
                let (server_url, lab_id, body) =
                    (server.url(), lab.id.clone(), run_body(&id, &slow, 10_000));
                std::thread::spawn(move || {
                    let response =
                        ureq::post(format!("{server_url}/operator/v1/labs/{lab_id}/call"))
                            .header("authorization", &format!("Bearer {TOKEN}"))
                            .config()
                            .http_status_as_error(false)
                            .build()
                            .send_json(&body)
                            .unwrap();
                    let status = response.status().as_u16();
                    let text = response.into_body().read_to_string().unwrap();
                    (
                        status,
                        serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
                    )
                })
            };
            sends += 1;
            wait_for(Duration::from_secs(30), "the victim running", || {
                Ok(block(rows(&db, &lab.id))
                    .iter()
                    .any(|r| r.program_id.as_deref() == Some(id.as_str()))
                    .then_some(()))
            })
            .unwrap();
            resets += proxy.reset();
            let (status, answer) = first.join().unwrap();
            if verdict(status, &answer).is_none() {
                lost_answers += 1;
            }
        }
        // At least once: send until an answer carries the run's report.
        let program = if victim { &slow } else { &quick };
        let body = run_body(&id, program, 10_000);
        let (report, _) = wait_for(Duration::from_secs(30), "a definitive answer", || {
            let (status, answer) = call(&server, &lab.id, &body);
            sends += 1;
            Ok(verdict(status, &answer))
        })
        .unwrap_or_else(|e| panic!("{e} ({id})\n{}", agent.log()));
        assert!(report["outcome"].is_string(), "a report for {id}: {report}");
        // The duplicate delivery: answered with the report the agent stored, not run again.
        let (status, answer) = call(&server, &lab.id, &body);
        sends += 1;
        assert_eq!(status, 200, "duplicate of {id}: {answer}");
        assert_eq!(
            answer["result"], report,
            "duplicate of {id}: the stored report"
        );
        dup_answered += 1;
    }
    // Every program's records are stored before its answer, so the count is final.
    let rows = block(rows(&db, &lab.id));
    let mut executions: HashMap<&str, usize> = HashMap::new();
    for r in rows.iter().filter(|r| r.kind == "program_started") {
        *executions
            .entry(r.program_id.as_deref().unwrap_or(""))
            .or_default() += 1;
    }
    let histogram: BTreeMap<usize, usize> = (0..COMMANDS)
        .map(|i| {
            executions
                .get(format!("cmd-{i}").as_str())
                .copied()
                .unwrap_or(0)
        })
        .fold(BTreeMap::new(), |mut h, n| {
            *h.entry(n).or_default() += 1;
            h
        });
    println!(
        "[{}] {COMMANDS} program.run commands, each delivered at least twice ({} sends; {lost_answers} answers lost \
         to {resets} resets while the command ran): executions per command {histogram:?} (count → commands), duplicates answered \
         with the stored report {dup_answered}/{COMMANDS}, {:.1} s",
        backend.name(),
        sends,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        histogram,
        BTreeMap::from([(1, COMMANDS)]),
        "each executed exactly once"
    );
    assert_eq!(executions.len(), COMMANDS, "nothing else ran");
    mark_ran(backend, "commands_exactly_once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_commands_with_lost_answers_run_exactly_once_on_every_backend() {
    for backend in backends() {
        commands_exactly_once(backend).await;
    }
}

// ---------------------------------------------------------------------------------------------
// commands: a command past its deadline never starts

async fn deadline(backend: Backend) {
    let db = TestDatabase::create(backend).await.unwrap();
    let lab = create_lab(&db, "Chirality Group", "paper-lab").unwrap();
    let server = server(&db, HEARTBEAT_MS);
    let agent = TestAgent::spawn_with_lab(&server.url(), &lab.credential, &lab_config()).unwrap();
    wait_online(&server, &lab.id, &agent);
    let now_ms = || {
        i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap()
    };
    let program = chain(1, "P1.stop", json!({}), 200);
    let send = |id: &str, deadline_ms: i64| {
        call(
            &server,
            &lab.id,
            &json!({
                "method": "program.run",
                "params": { "program_id": id, "program": program, "deadline_ms": deadline_ms },
                "timeout_ms": 30000
            }),
        )
    };
    let (status, late) = send("late", now_ms() - 1_000);
    assert_eq!(status, 422, "{late}");
    assert_eq!(late["error"]["code"], error_code::DEADLINE_PASSED, "{late}");
    let (status, timely) = send("timely", now_ms() + 60_000);
    assert_eq!(status, 200, "{timely}");
    assert_eq!(timely["result"]["outcome"], "succeeded", "{timely}");
    // The timely run's records are stored before its answer, and any record of the late one
    // would have been spooled before them.
    let rows = block(rows(&db, &lab.id));
    let of = |id: &str| {
        rows.iter()
            .filter(|r| r.program_id.as_deref() == Some(id))
            .count()
    };
    println!(
        "[{}] program.run past its deadline: refused with {} ({}), records stored {}; \
         with a deadline 60 s ahead: {}, records stored {}",
        backend.name(),
        late["error"]["code"],
        late["error"]["message"].as_str().unwrap_or(""),
        of("late"),
        timely["result"]["outcome"],
        of("timely")
    );
    let kinds: Vec<&str> = rows
        .iter()
        .filter(|r| r.program_id.as_deref() == Some("timely"))
        .map(|r| r.kind.as_str())
        .collect();
    assert_eq!(of("late"), 0, "never executed");
    assert_eq!(kinds.first(), Some(&"program_started"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"program_finished"), "{kinds:?}");
    mark_ran(backend, "command_deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_past_its_deadline_never_starts_on_every_backend() {
    for backend in backends() {
        deadline(backend).await;
    }
}

// ---------------------------------------------------------------------------------------------
// transport: oversized WebSocket frames on the agent gateway and on /graphql/ws

/// The agent gateway's message cap in this test (`agent.max_message_bytes`; default 16 MiB).
const AGENT_MAX_BYTES: usize = 1 << 20;

type Socket = tungstenite::WebSocket<std::net::TcpStream>;

/// Opens a WebSocket to `path` on the server with extra request headers.
fn websocket(server: &TestServer, path: &str, headers: &[(&'static str, String)]) -> Socket {
    let stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}{path}",
        server.addr
    ))
    .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            *name,
            tungstenite::http::HeaderValue::from_str(value).unwrap(),
        );
    }
    tungstenite::client(request, stream).unwrap().0
}

/// How the server ended the connection after `frame`: `Ok(code)` of its close frame, or
/// `Err(what)` when the connection ended without one.
fn refusal(socket: &mut Socket, frame: String) -> Result<u16, String> {
    if let Err(e) = socket.send(tungstenite::Message::text(frame)) {
        return Err(format!("send failed: {e}"));
    }
    socket
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    loop {
        match socket.read() {
            Ok(tungstenite::Message::Close(frame)) => {
                return Ok(frame.map_or(1005, |f| u16::from(f.code)))
            }
            Ok(_) => {}
            Err(e) => return Err(format!("{e}")),
        }
    }
}

async fn oversized_frames(backend: Backend) {
    let db = TestDatabase::create(backend).await.unwrap();
    let lab = create_lab(&db, "Chirality Group", "paper-lab").unwrap();
    let max = AGENT_MAX_BYTES.to_string();
    let server = TestServer::spawn(
        &db,
        &[
            ("MAOSIC_OPERATOR_TOKEN", TOKEN),
            ("MAOSIC_AGENT__MAX_MESSAGE_BYTES", &max),
        ],
    )
    .unwrap();
    let session = server
        .sign_up("owner@chirality.example", "Chirality Group")
        .unwrap();

    // The agent gateway: an authenticated connection past its hello, then one text frame of a
    // byte over the cap.
    let credential: maosic_schema::protocol::AgentCredentialFile =
        serde_json::from_str(&std::fs::read_to_string(&lab.credential).unwrap()).unwrap();
    let mut agent_ws = websocket(
        &server,
        maosic_schema::protocol::AGENT_WS_PATH,
        &[(
            "authorization",
            format!("Bearer {}", credential.bearer_token()),
        )],
    );
    let hello = json!({ "jsonrpc": "2.0", "id": 1, "method": "hello",
        "params": { "agent_version": "test", "devices": [], "descriptor": null, "running": [] } });
    agent_ws
        .send(tungstenite::Message::text(hello.to_string()))
        .unwrap();
    loop {
        if let tungstenite::Message::Text(t) = agent_ws.read().unwrap() {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == 1 {
                assert!(v["result"]["generation"].is_i64(), "{v}");
                break;
            }
        }
    }
    let heartbeat = |pad: usize| {
        let frame = json!({ "jsonrpc": "2.0", "method": "heartbeat", "params": { "time_ms": 0, "pad": "" } })
            .to_string();
        frame.replace("\"pad\":\"\"", &format!("\"pad\":\"{}\"", "x".repeat(pad)))
    };
    let base = heartbeat(0).len();
    let at_cap = heartbeat(AGENT_MAX_BYTES - base);
    assert_eq!(at_cap.len(), AGENT_MAX_BYTES);
    // A frame of exactly the cap passes: the connection still answers a request after it.
    agent_ws.send(tungstenite::Message::text(at_cap)).unwrap();
    let probe = json!({ "jsonrpc": "2.0", "id": 2, "method": "no.such.method" });
    agent_ws
        .send(tungstenite::Message::text(probe.to_string()))
        .unwrap();
    loop {
        if let tungstenite::Message::Text(t) = agent_ws.read().unwrap() {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == 2 {
                assert!(v["error"]["code"].is_i64(), "{v}");
                break;
            }
        }
    }
    let t0 = Instant::now();
    let agent_refusal = refusal(&mut agent_ws, heartbeat(AGENT_MAX_BYTES + 1 - base));
    let agent_took = t0.elapsed();

    // /graphql/ws: an authenticated graphql-ws session, then one frame over the request body
    // limit (graphql.max_body_bytes, 256 KiB).
    let graphql_max = 262_144;
    let mut graphql_ws = websocket(
        &server,
        "/graphql/ws",
        &[("sec-websocket-protocol", "graphql-transport-ws".into())],
    );
    graphql_ws
        .send(tungstenite::Message::text(
            json!({ "type": "connection_init", "payload": { "authorization": format!("Bearer {}", session.access_token) } })
                .to_string(),
        ))
        .unwrap();
    loop {
        if let tungstenite::Message::Text(t) = graphql_ws.read().unwrap() {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            assert_eq!(v["type"], "connection_ack", "{v}");
            break;
        }
    }
    let big = json!({ "type": "ping", "payload": { "pad": "x".repeat(graphql_max) } }).to_string();
    let big_len = big.len();
    let t0 = Instant::now();
    let graphql_refusal = refusal(&mut graphql_ws, big);
    let graphql_took = t0.elapsed();

    // Healthy afterwards: /healthz answers, a normal agent connects and is called.
    let (health, _) = server.get("/healthz").unwrap();
    let agent = TestAgent::spawn_with_lab(&server.url(), &lab.credential, &lab_config()).unwrap();
    wait_online(&server, &lab.id, &agent);
    println!(
        "[{}] oversized WebSocket frames: agent gateway (cap {AGENT_MAX_BYTES} bytes; a frame of exactly the cap passed) \
         frame of cap + 1 → {agent_refusal:?} in {} ms; /graphql/ws (cap {graphql_max} bytes) frame of {} bytes → \
         {graphql_refusal:?} in {} ms; afterwards /healthz {health}, a new agent connected and answered",
        backend.name(),
        agent_took.as_millis(),
        big_len,
        graphql_took.as_millis()
    );
    assert_eq!(
        agent_refusal,
        Ok(1009),
        "the gateway refuses with 1009 (message too big)"
    );
    assert_eq!(
        graphql_refusal,
        Ok(1009),
        "/graphql/ws refuses with 1009 too: {graphql_refusal:?}"
    );
    assert_eq!(health, 200);
    mark_ran(backend, "oversized_frames");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_websocket_frames_are_refused_and_the_server_stays_healthy_on_every_backend() {
    for backend in backends() {
        oversized_frames(backend).await;
    }
}

// ---------------------------------------------------------------------------------------------
// delivery: gap detection at ingestion

/// Says hello on a fresh agent connection of `lab` and returns the socket.
fn hello_as(server: &TestServer, credential: &Path) -> Socket {
    let credential: maosic_schema::protocol::AgentCredentialFile =
        serde_json::from_str(&std::fs::read_to_string(credential).unwrap()).unwrap();
    let mut ws = websocket(
        server,
        maosic_schema::protocol::AGENT_WS_PATH,
        &[(
            "authorization",
            format!("Bearer {}", credential.bearer_token()),
        )],
    );
    let hello = json!({ "jsonrpc": "2.0", "id": 1, "method": "hello",
        "params": { "agent_version": "test", "devices": [], "descriptor": null, "running": [] } });
    ws.send(tungstenite::Message::text(hello.to_string()))
        .unwrap();
    loop {
        if let tungstenite::Message::Text(t) = ws.read().unwrap() {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"] == 1 {
                return ws;
            }
        }
    }
}

/// Sends record `seq` of `epoch` and waits for its acknowledgement.
fn send_record(ws: &mut Socket, epoch: &str, seq: u64) {
    let record = json!({ "jsonrpc": "2.0", "method": "record", "params": {
        "epoch": epoch, "seq": seq, "program_id": null,
        "record": { "unix_ms": 1, "body": { "type": "safety_event", "event": "test", "seq": seq } } } });
    ws.send(tungstenite::Message::text(record.to_string()))
        .unwrap();
    loop {
        if let tungstenite::Message::Text(t) = ws.read().unwrap() {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["method"] == "ack" && v["params"]["seq_hi"] == seq {
                return;
            }
        }
    }
}

/// `maosic_agent_record_gap_seqs_total` from /metrics.
fn gap_metric(server: &TestServer) -> u64 {
    let (_, text) = server.get("/metrics").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("maosic_agent_record_gap_seqs_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no gap metric in:\n{text}"))
}

async fn gaps_detected(backend: Backend) {
    let db = TestDatabase::create(backend).await.unwrap();
    let lab = create_lab(&db, "Chirality Group", "paper-lab").unwrap();
    let server = TestServer::spawn(&db, &[]).unwrap();
    assert_eq!(gap_metric(&server), 0);
    let mut ws = hello_as(&server, &lab.credential);
    for seq in [1, 2, 2, 3] {
        send_record(&mut ws, "epoch-a", seq);
    }
    assert_eq!(gap_metric(&server), 0, "in order and replays: no gap");
    send_record(&mut ws, "epoch-a", 6);
    assert_eq!(gap_metric(&server), 2, "4 and 5 never arrived");
    drop(ws);
    // A new connection learns the highest stored seq from storage; a new epoch starts at 1.
    let mut ws = hello_as(&server, &lab.credential);
    send_record(&mut ws, "epoch-a", 9);
    send_record(&mut ws, "epoch-b", 1);
    send_record(&mut ws, "epoch-c", 3);
    let gaps = gap_metric(&server);
    let log = server.log();
    println!(
        "[{}] gap detection: seqs 1,2,2,3,6 then (new connection) 9, new epochs from 1 and from 3 → \
         {gaps} missing seqs counted, {} gap warnings logged",
        backend.name(),
        log.matches("gap in the agent's record stream").count()
    );
    assert_eq!(gaps, 2 + 2 + 2, "7-8 across connections, 1-2 of epoch-c");
    assert_eq!(log.matches("gap in the agent's record stream").count(), 3);
    assert_eq!(count(&db, &lab.id).await, 7, "every record stored once");
    mark_ran(backend, "record_gaps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_in_an_agent_stream_are_detected_at_ingestion_on_every_backend() {
    for backend in backends() {
        gaps_detected(backend).await;
    }
}
