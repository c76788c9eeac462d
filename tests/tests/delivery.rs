//! Nothing lost, nothing duplicated: the agent writes every record to its spool before sending
//! it, the server stores it under (lab, epoch, seq) and only then acknowledges, and a restarted
//! agent resends what was not acknowledged. The docs/reliability.md, "delivery" rows that kill processes
//! or lose files: agent SIGKILLs during 10,000 records, server kill -9s during a stream, a
//! deleted spool (new epoch), an agent offline for twice its spool cap, and 200 agents
//! reconnecting after a server restart. Each test prints its figures (bench/RESULTS.md,
//! "Reliability: agent link and presence"); the definitions of *lost*, *duplicates* and *out of
//! order* are those of `maosic_e2e::streams`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use maosic_e2e::streams::{
    self, call_in_background, chain, delivery, hold_program, logged_acks, operator_call,
    remove_spool, run_body, spool_state, Row, SpoolState,
};
use maosic_e2e::{
    backends, create_lab, mark_ran, wait_for, AgentOptions, Backend, TestAgent, TestDatabase,
    TestLab, TestServer,
};
use serde_json::{json, Value};

const TOKEN: &str = "operator-test-token-0123456789abcdef";

/// Runs a future to completion from the synchronous parts of a test (the probes of `wait_for`).
fn block<F: Future>(f: F) -> F::Output {
    let runtime = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| runtime.block_on(f))
}

fn rows(db: &TestDatabase, lab: &str) -> Vec<Row> {
    block(streams::rows(db, lab)).unwrap()
}

fn count(db: &TestDatabase, lab: &str) -> i64 {
    block(streams::count(db, lab)).unwrap()
}

fn spool(path: &Path) -> SpoolState {
    block(spool_state(path)).unwrap()
}

fn call(server: &TestServer, lab: &str, body: &Value) -> (u16, Value) {
    operator_call(&server.url(), TOKEN, lab, body).unwrap()
}

fn start_run(server: &TestServer, lab: &str, program_id: &str, program: &Value) {
    call_in_background(server, TOKEN, lab, run_body(program_id, program, 600_000));
}

fn cancel(server: &TestServer, lab: &str, program_id: &str) {
    let (status, answer) = call(
        server,
        lab,
        &json!({ "method": "program.cancel", "params": { "program_id": program_id } }),
    );
    assert_eq!(
        (status, &answer["result"]["canceled"]),
        (200, &json!(true)),
        "cancel {program_id}: {answer}"
    );
}

fn wait_online(server: &TestServer, lab: &str, agent: &TestAgent) {
    wait_for(Duration::from_secs(30), "agent connected", || {
        let probe = json!({ "method": "program.cancel", "params": { "program_id": "none" } });
        Ok((call(server, lab, &probe).0 == 200).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
}

fn lab_agent(server: &TestServer, lab: &TestLab, spool: &Path) -> TestAgent {
    lab_agent_with(server, lab, spool, AgentOptions::default())
}

fn lab_agent_with(
    server: &TestServer,
    lab: &TestLab,
    spool: &Path,
    options: AgentOptions,
) -> TestAgent {
    // paced at 1000x: kills and outages must land in the middle of a flowing stream (at the
    // default `max` a stream is over in a moment, and its records can be identical but for
    // their sequence numbers, which the body-duplicate check below would count)
    let options = AgentOptions {
        lab: Some(maosic_e2e::paced_virtual_lab(1000.0)),
        spool: Some(spool.to_path_buf()),
        ..options
    };
    let agent = TestAgent::start(&server.url(), &lab.credential, &options).unwrap();
    wait_online(server, &lab.id, &agent);
    agent
}

/// Waits until the spool is drained and `program_id`'s `program_finished` is stored.
fn wait_delivered(
    db: &TestDatabase,
    lab: &str,
    spool_path: &Path,
    program_id: &str,
    agent: &TestAgent,
) -> SpoolState {
    wait_for(Duration::from_secs(120), "stream delivered", || {
        let state = spool(spool_path);
        let finished = state.waiting == 0
            && rows(db, lab).iter().any(|r| {
                r.kind == "program_finished" && r.program_id.as_deref() == Some(program_id)
            });
        Ok(finished.then_some(state))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()))
    .0
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// delivery: agent SIGKILL 20× during 10,000 records, restarted with the same spool

const AGENT_KILLS: usize = 20;

async fn agent_kills_lose_and_duplicate_nothing(backend: Backend) {
    let records = env_count("MAOSIC_TEST_AGENT_KILL_RECORDS", 10_000) as i64;
    let db = TestDatabase::create(backend).await.unwrap();
    let lab = create_lab(&db, "Chirality Group", "paper-lab").unwrap();
    let server = TestServer::spawn(&db, &[("MAOSIC_OPERATOR_TOKEN", TOKEN)]).unwrap();
    let spool_dir = tempfile::tempdir().unwrap();
    let spool_path = spool_dir.path().join("spool.db");
    // Holds of 0 s: records as fast as the agent spools them, whatever the lab's timing; one
    // run alone could make every record, so each kill lands in a flowing stream.
    let program = hold_program(records as usize / 2, 0.0);
    let started = Instant::now();
    let mut at_kill = Vec::new();
    for round in 0..AGENT_KILLS {
        let mut agent = lab_agent(&server, &lab, &spool_path);
        start_run(&server, &lab.id, &format!("run-{round}"), &program);
        // Kill points spread over the stream, each a little off the even split.
        let target =
            (round as i64 + 1) * records / (AGENT_KILLS as i64 + 1) + (round as i64 * 7) % 13;
        wait_for(Duration::from_secs(60), "records written", || {
            Ok((spool(&spool_path).written >= target).then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e} (round {round})\n{}", agent.log()));
        agent.kill();
        let state = spool(&spool_path);
        at_kill.push(state.waiting);
    }
    // A last agent with the same spool runs a program of the records still missing to the
    // count, to its end, and delivers what is left.
    let agent = lab_agent(&server, &lab, &spool_path);
    let last = format!("run-{AGENT_KILLS}");
    let missing = records - spool(&spool_path).written;
    start_run(
        &server,
        &lab.id,
        &last,
        &hold_program(((missing - 1) / 2).max(1) as usize, 0.0),
    );
    let state = wait_delivered(&db, &lab.id, &spool_path, &last, &agent);
    let took = started.elapsed();
    let rows = rows(&db, &lab.id);
    let d = delivery(&rows, &state.epoch, state.written);
    println!(
        "[{}] {AGENT_KILLS} agent SIGKILLs during a {records}-record stream (holds of 0 s), restarted on the same spool: \
         {} records spooled, {} stored, lost {}, duplicates stored {}, out of order {}, epochs {}; \
         unacknowledged at each kill min {} / max {} (all {at_kill:?}); {:.1} s",
        backend.name(),
        d.written,
        d.stored,
        d.lost,
        d.duplicates,
        d.out_of_order,
        d.epochs,
        at_kill.iter().min().unwrap(),
        at_kill.iter().max().unwrap(),
        took.as_secs_f64()
    );
    assert!(d.written >= records);
    assert_eq!(d.lost, 0);
    assert_eq!(d.duplicates, 0);
    assert_eq!(d.epochs, 1);
    assert_eq!(
        d.stored as i64, d.written,
        "every stored record was spooled"
    );
    assert!(
        at_kill.iter().filter(|w| **w > 0).count() > AGENT_KILLS / 2,
        "most kills left records unacknowledged: {at_kill:?}"
    );
    mark_ran(backend, "agent_kills_lose_and_duplicate_nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kills_lose_and_duplicate_nothing_on_every_backend() {
    for backend in backends() {
        agent_kills_lose_and_duplicate_nothing(backend).await;
    }
}

// ---------------------------------------------------------------------------------------------
// delivery: server kill -9 10× during a stream; what the agent saw acknowledged is stored

const SERVER_KILLS: usize = 10;

async fn server_kills_lose_nothing_acknowledged(backend: Backend) {
    let db = TestDatabase::create(backend).await.unwrap();
    let lab = create_lab(&db, "Chirality Group", "paper-lab").unwrap();
    let env = [("MAOSIC_OPERATOR_TOKEN", TOKEN)];
    let mut server = TestServer::spawn(&db, &env).unwrap();
    let addr = server.addr.to_string();
    let spool_dir = tempfile::tempdir().unwrap();
    let spool_path = spool_dir.path().join("spool.db");
    let agent = lab_agent_with(
        &server,
        &lab,
        &spool_path,
        AgentOptions {
            log_filter: Some("info,maosic_agent::spool=debug".into()),
            ..AgentOptions::default()
        },
    );
    // Holds of 0 s, records as fast as the agent spools them: a stream that has records in
    // flight at each kill.
    let program = hold_program(4_000, 0.0);
    start_run(&server, &lab.id, "stream-1", &program);
    let started = Instant::now();
    let (mut acked_at_kill, mut logged_at_kill, mut missing, mut waiting_at_kill) =
        (Vec::new(), Vec::new(), 0usize, Vec::new());
    for kill in 0..SERVER_KILLS {
        // Each kill hits a flowing stream on the current server, after it acknowledged some
        // of it (records are stored and acknowledged in batches: a commit lands in the
        // database a moment before its ack reaches the agent's spool).
        let before = count(&db, &lab.id);
        let acked_before = acked_at_kill.last().copied().unwrap_or(0);
        wait_for(Duration::from_secs(30), "records flowing", || {
            Ok((count(&db, &lab.id) >= before + 20 + 11 * kill as i64
                && spool(&spool_path).acked_hi > acked_before)
                .then_some(()))
        })
        .unwrap_or_else(|e| panic!("{e} (kill {kill})\n{}\n{}", agent.log(), server.log()));
        server.kill();
        // The agent's view: acknowledged = logged and deleted from its spool (acks the dead
        // server had sent may still arrive, so the log is read first, the spool second).
        let log = agent.log();
        let state = spool(&spool_path);
        let logged = logged_acks(&log)
            .iter()
            .filter(|(e, _)| *e == state.epoch)
            .map(|(_, s)| *s)
            .max()
            .unwrap_or(0);
        assert!(logged <= state.acked_hi, "{logged} > {}", state.acked_hi);
        let stored: BTreeSet<i64> = rows(&db, &lab.id)
            .iter()
            .filter(|r| r.epoch == state.epoch)
            .map(|r| r.seq)
            .collect();
        missing += (1..=state.acked_hi).filter(|s| !stored.contains(s)).count();
        acked_at_kill.push(state.acked_hi);
        logged_at_kill.push(logged);
        waiting_at_kill.push(state.waiting);
        // The same database and port: the agent reconnects with its backoff.
        server = TestServer::spawn_on(&db, &addr, &env).unwrap();
    }
    wait_online(&server, &lab.id, &agent);
    // Canceled after the kills, or (on a slow machine, where the kills take longer than the
    // stream) already finished: each kill above waited for records flowing, so either way
    // every kill hit a live stream.
    let (status, answer) = call(
        &server,
        &lab.id,
        &json!({ "method": "program.cancel", "params": { "program_id": "stream-1" } }),
    );
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["result"]["canceled"] == true || answer["result"]["outcome"] == "succeeded",
        "cancel stream-1: {answer}"
    );
    let state = wait_delivered(&db, &lab.id, &spool_path, "stream-1", &agent);
    let took = started.elapsed();
    let rows = rows(&db, &lab.id);
    let d = delivery(&rows, &state.epoch, state.written);
    println!(
        "[{}] {SERVER_KILLS} server kill -9s during a stream, restarted on the same database and port: \
         acknowledged-then-missing {missing} (acknowledged at each kill, from the agent's spool {acked_at_kill:?}, \
         from its ack log {logged_at_kill:?}; unacknowledged at each kill {waiting_at_kill:?}); \
         at the end {} spooled, {} stored, lost {}, duplicates stored {}, out of order {}; {:.1} s",
        backend.name(),
        d.written,
        d.stored,
        d.lost,
        d.duplicates,
        d.out_of_order,
        took.as_secs_f64()
    );
    assert_eq!(missing, 0, "acknowledged then missing");
    assert!(
        acked_at_kill.windows(2).all(|w| w[1] > w[0]),
        "acknowledgements advanced between kills: {acked_at_kill:?}"
    );
    assert_eq!(d.lost, 0);
    assert_eq!(d.duplicates, 0);
    assert_eq!(d.stored as i64, d.written);
    mark_ran(backend, "server_kills_lose_nothing_acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_kills_lose_nothing_acknowledged_on_every_backend() {
    for backend in backends() {
        server_kills_lose_nothing_acknowledged(backend).await;
    }
}

// ---------------------------------------------------------------------------------------------
// delivery: the spool deleted (a new epoch) while the server keeps its dedup state

async fn spool_loss_starts_a_new_epoch(backend: Backend) {
    let db = TestDatabase::create(backend).await.unwrap();
    let lab = create_lab(&db, "Chirality Group", "paper-lab").unwrap();
    let server = TestServer::spawn(&db, &[("MAOSIC_OPERATOR_TOKEN", TOKEN)]).unwrap();
    let spool_dir = tempfile::tempdir().unwrap();
    let spool_path = spool_dir.path().join("spool.db");
    let program = hold_program(250, 0.0);

    let mut agent = lab_agent(&server, &lab, &spool_path);
    start_run(&server, &lab.id, "before", &program);
    let old = wait_delivered(&db, &lab.id, &spool_path, "before", &agent);
    let old_rows: Vec<Row> = rows(&db, &lab.id);
    agent.terminate().unwrap();
    remove_spool(&spool_path).unwrap();

    // The same lab, a fresh spool file: seq starts at 1 again, in a new epoch.
    let agent = lab_agent(&server, &lab, &spool_path);
    start_run(&server, &lab.id, "after", &program);
    let new = wait_delivered(&db, &lab.id, &spool_path, "after", &agent);
    let all = rows(&db, &lab.id);
    let d = delivery(&all, &new.epoch, new.written);
    let old_now: Vec<&Row> = all.iter().filter(|r| r.epoch == old.epoch).collect();
    let untouched =
        old_now.len() == old_rows.len() && old_now.iter().zip(&old_rows).all(|(a, b)| *a == b);
    let overlap = all
        .iter()
        .filter(|r| r.epoch == new.epoch && r.seq <= old.written)
        .count();
    println!(
        "[{}] spool deleted between two streams (epoch {} → {}): old epoch {} records, {} stored before and after, untouched {untouched}; \
         new epoch {} spooled, {} stored (seqs 1..={} reused under the new epoch: {overlap}), lost {}, duplicates stored {}",
        backend.name(),
        old.epoch,
        new.epoch,
        old.written,
        old_rows.len(),
        d.written,
        d.stored,
        old.written.min(new.written),
        d.lost,
        d.duplicates
    );
    assert_ne!(old.epoch, new.epoch, "a new spool file is a new epoch");
    assert_eq!(old_rows.len() as i64, old.written);
    assert!(untouched, "the old epoch's rows are unchanged");
    assert_eq!(d.stored as i64, d.written, "new records stored = sent");
    assert_eq!(d.lost, 0);
    assert_eq!(d.duplicates, 0);
    assert_eq!(d.epochs, 2);
    mark_ran(backend, "spool_loss_starts_a_new_epoch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_spool_starts_a_new_epoch_that_is_stored_in_full_on_every_backend() {
    for backend in backends() {
        spool_loss_starts_a_new_epoch(backend).await;
    }
}

// ---------------------------------------------------------------------------------------------
// delivery: offline for twice the spool cap

/// The spool's byte cap in this test; measurements are refused above 90 % of it.
const CAP_BYTES: i64 = 2 * 1024 * 1024;
const CAP_ROWS: i64 = 2_000;

async fn offline_for_twice_the_spool_cap(backend: Backend) {
    let db = TestDatabase::create(backend).await.unwrap();
    let lab = create_lab(&db, "Chirality Group", "paper-lab").unwrap();
    let env = [("MAOSIC_OPERATOR_TOKEN", TOKEN)];
    let mut server = TestServer::spawn(&db, &env).unwrap();
    let addr = server.addr.to_string();
    let spool_dir = tempfile::tempdir().unwrap();
    let spool_path = spool_dir.path().join("spool.db");
    let agent = lab_agent_with(
        &server,
        &lab,
        &spool_path,
        AgentOptions {
            args: vec![
                "--spool-max-bytes".into(),
                CAP_BYTES.to_string(),
                "--spool-max-rows".into(),
                CAP_ROWS.to_string(),
            ],
            ..AgentOptions::default()
        },
    );
    // Full-range absorption spectra (801 points, ~80 kB of JSON each): the measurements fill
    // the spool, the step events (~0.2 kB) are small.
    let program = chain(
        5_000,
        "UV.acquire",
        json!({ "from": 200.0, "to": 1000.0, "integration": 10.0, "averages": 1.0 }),
        0,
    );
    let refused_log = "spool full: measurement refused";
    start_run(&server, &lab.id, "offline", &program);
    wait_for(Duration::from_secs(30), "spectra stored", || {
        Ok((count(&db, &lab.id) >= 10).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    // The server becomes unreachable; the lab keeps producing (link-loss policy "continue").
    server.kill();
    let offline_at = Instant::now();
    let before = spool(&spool_path);
    let measurement_bytes = |s: &SpoolState| s.measurements.1 / s.measurements.0.max(1);
    let (full, _) = wait_for(
        Duration::from_secs(120),
        "the lab produced twice the cap while offline",
        || {
            let s = spool(&spool_path);
            let refused = agent.log().matches(refused_log).count() as i64;
            let produced = s.counted_bytes - before.counted_bytes + refused * measurement_bytes(&s);
            Ok((produced >= 2 * CAP_BYTES).then_some((s, refused, produced)))
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let (offline, refused_offline, produced) = full;
    let offline_for = offline_at.elapsed();

    // The link returns; the backlog drains; the stream is stopped.
    server = TestServer::spawn_on(&db, &addr, &env).unwrap();
    wait_online(&server, &lab.id, &agent);
    cancel(&server, &lab.id, "offline");
    let state = wait_delivered(&db, &lab.id, &spool_path, "offline", &agent);
    let rows = rows(&db, &lab.id);
    let d = delivery(&rows, &state.epoch, state.written);
    let refused = agent.log().matches(refused_log).count();
    let alarms = rows
        .iter()
        .filter(|r| r.kind == "safety" && r.body.contains("\"buffer_full\""))
        .count();
    let events_stored = rows.iter().filter(|r| r.kind != "measurement").count();
    let measurements_stored = rows.len() - events_stored;
    println!(
        "[{}] offline {:.1} s for twice the spool cap ({CAP_BYTES} bytes, {CAP_ROWS} rows; lab produced ~{produced} bytes while offline, \
         spectra of ~{} bytes): spool at the end of the outage {} rows / {} bytes (measurements {} / {} bytes), \
         {refused_offline} measurements refused while offline, {refused} in all; buffer_full alarms stored {alarms}; \
         stored {} ({measurements_stored} measurements, {events_stored} events), lost {}, duplicates stored {}",
        backend.name(),
        offline_for.as_secs_f64(),
        measurement_bytes(&offline),
        offline.counted_rows,
        offline.counted_bytes,
        offline.measurements.0,
        offline.measurements.1,
        d.stored,
        d.lost,
        d.duplicates
    );
    assert!(offline.counted_bytes <= CAP_BYTES, "spool ≤ cap in bytes");
    assert!(offline.counted_rows <= CAP_ROWS, "spool ≤ cap in rows");
    assert!(
        offline.measurements.1 <= CAP_BYTES / 10 * 9,
        "measurements ≤ 90 %"
    );
    assert!(refused_offline > 0, "the outage filled the spool");
    assert_eq!(alarms, refused, "every refusal reported");
    // Every spooled record (all events: status, safety, results) reached the server.
    assert_eq!(d.lost, 0, "audit-class records lost");
    assert_eq!(d.duplicates, 0);
    assert_eq!(d.stored as i64, d.written);
    mark_ran(backend, "offline_for_twice_the_spool_cap");
}

// Offline (waiting to retry, or connecting), the agent's link still takes the lab's records
// into the spool: the cap and the overflow policy apply, nothing waits in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_for_twice_the_spool_cap_keeps_the_cap_and_loses_no_event_on_every_backend() {
    for backend in backends() {
        offline_for_twice_the_spool_cap(backend).await;
    }
}

// ---------------------------------------------------------------------------------------------
// delivery: 200 agents reconnect after a server restart

const AGENTS: usize = 200;
const BASE_MS: u64 = 250;
const CAP_MS: u64 = 2_000;

/// Milliseconds since the Unix epoch of a log line's leading RFC 3339 UTC timestamp
/// (`2026-12-02T04:50:01.123456Z ...`).
fn log_time_ms(line: &str) -> Option<i64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let s: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + min) * 60_000 + (s * 1000.0) as i64)
}

/// The `maosic_agents_connected` gauge of the server's `/metrics`.
fn agents_connected(server: &TestServer) -> Option<i64> {
    let (_, text) = server.get("/metrics").ok()?;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix("maosic_agents_connected "))
        .and_then(|v| v.trim().parse().ok())
}

async fn reconnect_storm(backend: Backend) {
    let db = TestDatabase::create(backend).await.unwrap();
    let mut server = TestServer::spawn(&db, &[]).unwrap();
    let addr = server.addr.to_string();
    let started = Instant::now();
    let labs: Vec<TestLab> = (0..AGENTS)
        .map(|i| create_lab(&db, "Storm Group", &format!("lab-{i}")).unwrap())
        .collect();
    let made_labs = started.elapsed();
    let options = AgentOptions {
        backoff_ms: (BASE_MS, CAP_MS),
        ..AgentOptions::default()
    };
    let agents: Vec<TestAgent> = labs
        .iter()
        .map(|lab| TestAgent::start(&server.url(), &lab.credential, &options).unwrap())
        .collect();
    wait_for(Duration::from_secs(60), "all agents online", || {
        Ok((agents_connected(&server) == Some(AGENTS as i64)).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}: {:?} connected", agents_connected(&server)));
    let all_online = started.elapsed();

    server.kill();
    // Down until every agent has failed at least 4 reconnects: its backoff ceiling is at the cap.
    let lost = "link lost; reconnecting";
    let (_, down_for) = wait_for(Duration::from_secs(60), "agents backing off", || {
        Ok(agents
            .iter()
            .all(|a| a.log().matches(lost).count() >= 5)
            .then_some(()))
    })
    .unwrap();
    server = TestServer::spawn_on(&db, &addr, &[]).unwrap();
    let (_, back_in) = wait_for(Duration::from_secs(60), "all agents back", || {
        Ok((agents_connected(&server) == Some(AGENTS as i64)).then_some(()))
    })
    .unwrap();

    // Every retry of every agent: the delay it drew, and the time between two attempts.
    let (mut delays, mut spacings, mut retries) = (Vec::new(), Vec::new(), 0usize);
    for agent in &agents {
        let log = agent.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(lost)).collect();
        retries += lines.len();
        for line in &lines {
            let delay = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("delay_ms="))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no delay in {line}"));
            delays.push(delay);
        }
        let times: Vec<i64> = lines.iter().filter_map(|l| log_time_ms(l)).collect();
        assert_eq!(times.len(), lines.len(), "timestamps in {log}");
        spacings.extend(times.windows(2).map(|w| w[1] - w[0]));
        assert!(
            log.matches("connected to the cloud").count() >= 2,
            "reconnected: {log}"
        );
    }
    let min_delay = delays.iter().copied().min().unwrap();
    let max_delay = delays.iter().copied().max().unwrap();
    let min_spacing = spacings.iter().copied().min().unwrap();
    // The drawn delays must never be below the base. The spacing is measured between two log
    // lines' timestamps, each taken when the line is written: with 200 agents and the server on
    // two cores, writing one line can lag its failure by a few ms and shorten the next spacing
    // by as much (a CI run saw 240 ms after a 250 ms delay; on a VM 1.8× slower, 218 ms), so
    // spacings get a 25 % allowance — a retry without backoff would still show as ~0 ms.
    let faster = delays.iter().filter(|d| **d < BASE_MS).count()
        + spacings
            .iter()
            .filter(|s| **s < (BASE_MS - BASE_MS / 4) as i64)
            .count();
    println!(
        "[{}] {AGENTS} presence-only agents (backoff {BASE_MS} ms → {CAP_MS} ms): {AGENTS} labs made in {:.1} s, all online after {:.1} s; \
         server down {:.1} s ({retries} failed attempts), restarted on the same port: all {AGENTS} back online in {} ms \
         (limit 2 × cap = {} ms); retries faster than the base backoff {faster} (delays drawn {min_delay}–{max_delay} ms, \
         shortest time between two attempts of one agent {min_spacing} ms)",
        backend.name(),
        made_labs.as_secs_f64(),
        all_online.as_secs_f64(),
        down_for.as_secs_f64(),
        back_in.as_millis(),
        2 * CAP_MS
    );
    assert_eq!(faster, 0);
    assert!(max_delay <= CAP_MS);
    assert!(
        back_in <= Duration::from_millis(2 * CAP_MS),
        "back in {back_in:?}"
    );
    drop(agents);
    mark_ran(backend, "reconnect_storm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_agents_reconnect_with_backoff_after_a_server_restart_on_every_backend() {
    for backend in backends() {
        reconnect_storm(backend).await;
    }
}

// ---------------------------------------------------------------------------------------------
// ingestion limits (issue 15): over the records/s or bytes/day budget the agent is throttled;
// its records wait in its spool and arrive later, none lost, none duplicated

fn throttled_count(server: &TestServer) -> i64 {
    let (_, text) = server.get("/metrics").unwrap();
    text.lines()
        .find(|l| l.starts_with("maosic_agent_records_throttled_total"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as i64)
}

async fn ingestion_limits(backend: Backend) {
    let db = TestDatabase::create(backend).await.unwrap();
    let lab = create_lab(&db, "Chirality Group", "paper-lab").unwrap();
    let spool_dir = tempfile::tempdir().unwrap();
    let spool_path = spool_dir.path().join("spool.db");

    // 1. The rate: 1,002 records as fast as the agent spools them, against 200 records/s.
    let rate_env = [
        ("MAOSIC_OPERATOR_TOKEN", TOKEN),
        ("MAOSIC_AGENT__MAX_RECORDS_PER_SECOND", "200"),
        ("MAOSIC_AGENT__RECORD_BURST", "100"),
    ];
    let mut server = TestServer::spawn(&db, &rate_env).unwrap();
    let mut agent = lab_agent(&server, &lab, &spool_path);
    let started = Instant::now();
    start_run(&server, &lab.id, "rate", &hold_program(500, 0.0));
    let state = wait_delivered(&db, &lab.id, &spool_path, "rate", &agent);
    let took = started.elapsed();
    let d = delivery(&rows(&db, &lab.id), &state.epoch, state.written);
    let throttled = throttled_count(&server);
    println!(
        "[{}] ingestion at 200 records/s (burst 100): {} records spooled, {} stored, lost {}, \
         duplicates {}, out of order {}, refusals {throttled}, {:.1} s",
        backend.name(),
        d.written,
        d.stored,
        d.lost,
        d.duplicates,
        d.out_of_order,
        took.as_secs_f64()
    );
    assert!(
        throttled > 0,
        "the stream outran 200 records/s and was throttled"
    );
    assert_eq!((d.lost, d.duplicates, d.out_of_order), (0, 0, 0));
    assert_eq!(d.stored as i64, d.written);
    assert!(
        took >= Duration::from_secs_f64((d.written as f64 - 100.0) / 200.0 * 0.9),
        "the rate held: {took:?} for {} records",
        d.written
    );
    agent.kill();
    server.kill();

    // 2. The day's bytes: a budget a little over what is stored; the next stream stops at it,
    //    waits in the spool, and arrives in full once the budget allows it.
    let stored_bytes: usize = rows(&db, &lab.id).iter().map(|r| r.body.len()).sum();
    let budget = (stored_bytes + 20_000).to_string();
    let bytes_env = [
        ("MAOSIC_OPERATOR_TOKEN", TOKEN),
        ("MAOSIC_AGENT__MAX_BYTES_PER_DAY", budget.as_str()),
    ];
    let mut server = TestServer::spawn(&db, &bytes_env).unwrap();
    let agent = lab_agent(&server, &lab, &spool_path);
    start_run(&server, &lab.id, "bytes", &hold_program(500, 0.0));
    wait_for(Duration::from_secs(60), "the day's budget reached", || {
        let s = spool(&spool_path);
        Ok((throttled_count(&server) > 0 && s.waiting > 0 && s.written >= 1_000).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let held: usize = rows(&db, &lab.id).iter().map(|r| r.body.len()).sum();
    assert!(
        held <= stored_bytes + 20_000,
        "the budget held: {held} bytes"
    );
    // The operator raises the budget (a restart on the same address); the same agent, its
    // program run to its end meanwhile, reconnects and delivers what waited in its spool.
    let addr = server.addr.to_string();
    server.kill();
    let server = TestServer::spawn_on(&db, &addr, &[("MAOSIC_OPERATOR_TOKEN", TOKEN)]).unwrap();
    let state = wait_delivered(&db, &lab.id, &spool_path, "bytes", &agent);
    let d = delivery(&rows(&db, &lab.id), &state.epoch, state.written);
    println!(
        "[{}] ingestion over the day's bytes: held at {held} of {budget} bytes; the budget raised: \
         {} spooled, {} stored, lost {}, duplicates {}",
        backend.name(), d.written, d.stored, d.lost, d.duplicates
    );
    assert_eq!((d.lost, d.duplicates, d.out_of_order), (0, 0, 0));
    assert_eq!(d.stored as i64, d.written);
    drop(server);
    mark_ran(backend, "ingestion_limits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingestion_limits_hold_records_in_the_spool_and_lose_nothing_on_every_backend() {
    for backend in backends() {
        ingestion_limits(backend).await;
    }
}
