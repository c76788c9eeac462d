//! Instructions queued for an offline lab (docs/reliability.md, "commands": a command with a deadline to
//! an offline agent that returns after it ends `TIMED_OUT` and is never executed), on every
//! backend: the real server's dispatcher, a real agent with the virtual lab stopped and
//! restarted, and the records the agent streams as the evidence of what ran.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use maosic_e2e::streams;
use maosic_e2e::{
    backends, error_code, mark_ran, virtual_lab_config, wait_for, Backend, Session, TestAgent,
    TestDatabase, TestServer,
};
use serde_json::{json, Value};

/// The deadline of the command that must time out (the docs/reliability.md row's 30 s, scaled).
const DEADLINE_S: u64 = 3;

fn ok(server: &TestServer, s: &Session, query: &str, vars: Value) -> Value {
    let body = server.graphql_as(&s.access_token, query, vars).unwrap();
    assert!(body.get("errors").is_none(), "{query}: {body}");
    body["data"].clone()
}

const QUEUE: &str = "mutation($l: ID!, $m: String!, $p: JSON, $d: Int!) { queueInstruction(labId: $l, method: $m, params: $p, deadlineSeconds: $d) { id state } }";
const ONE: &str =
    "query($c: ID!) { labCommand(id: $c) { id state attempts error sentAt finishedAt result } }";

fn command(server: &TestServer, s: &Session, id: &str) -> Value {
    ok(server, s, ONE, json!({ "c": id }))["labCommand"].clone()
}

/// (kind, program id) of every record stored for the lab.
async fn stored(db: &TestDatabase, lab: &str) -> Vec<(String, Option<String>)> {
    streams::rows(db, lab)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.kind, r.program_id))
        .collect()
}

async fn offline_deadline(backend: Backend) {
    let db = TestDatabase::create(backend).await.unwrap();
    let env = [
        ("MAOSIC_AGENT__HEARTBEAT_MS", "500"),
        // Fixed, so sessions outlive the server restart below.
        (
            "MAOSIC_AUTH__JWT_SECRET",
            "commands-test-secret-0123456789abcdef",
        ),
    ];
    let mut server = TestServer::spawn(&db, &env).unwrap();
    let a = server.sign_up("owner@a.example", "Org A").unwrap();
    let b = server.sign_up("outsider@b.example", "Org B").unwrap();
    let lab = server.create_enrolled_lab(&a, "paper-lab").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = virtual_lab_config(dir.path(), 1000.0, 7).unwrap();
    let spool = dir.path().join("spool.db");
    let online = |want: bool| {
        wait_for(Duration::from_secs(30), "lab presence", || {
            let d = ok(
                &server,
                &a,
                "query($l: ID!) { lab(id: $l) { online devices { name } } }",
                json!({ "l": lab.id }),
            );
            Ok((d["lab"]["online"] == want).then_some(()))
        })
        .unwrap();
    };
    // The agent announces its descriptor once, then goes away (clean stop).
    let mut agent =
        TestAgent::spawn_with_lab_and_spool(&server.url(), &lab.credential, &config, Some(&spool))
            .unwrap();
    online(true);
    agent.terminate().unwrap();
    online(false);

    let queued_at = Instant::now();
    let queue = |method: &str, params: Value, deadline: u64| {
        ok(
            &server,
            &a,
            QUEUE,
            json!({ "l": lab.id, "m": method, "p": params, "d": deadline }),
        )["queueInstruction"]
            .clone()
    };
    let late = queue("H.read", json!({}), DEADLINE_S);
    let timely = queue("P1.set_rate", json!({ "rate": 10.0, "volume": 20.0 }), 120);
    let canceled = queue("H.read", json!({}), 120);
    assert_eq!(late["state"], "QUEUED");
    let late_id = late["id"].as_str().unwrap().to_owned();
    let timely_id = timely["id"].as_str().unwrap().to_owned();
    let canceled_id = canceled["id"].as_str().unwrap().to_owned();
    let c = ok(
        &server,
        &a,
        "mutation($c: ID!) { cancelLabCommand(id: $c) { state } }",
        json!({ "c": canceled_id }),
    );
    assert_eq!(c["cancelLabCommand"]["state"], "CANCELED");

    // Bad input changes nothing; another organisation sees nothing.
    for (method, params, deadline) in [
        ("H.set_temperature", json!({ "T": 500 }), 10),
        ("H.read", json!({}), 0),
    ] {
        let body = server
            .graphql_as(
                &a.access_token,
                QUEUE,
                json!({ "l": lab.id, "m": method, "p": params, "d": deadline }),
            )
            .unwrap();
        assert_eq!(
            error_code(&body).as_deref(),
            Some("BAD_USER_INPUT"),
            "{body}"
        );
    }
    let body = server
        .graphql_as(&b.access_token, ONE, json!({ "c": timely_id }))
        .unwrap();
    assert_eq!(error_code(&body).as_deref(), Some("NOT_FOUND"), "{body}");
    let body = server
        .graphql_as(
            &b.access_token,
            QUEUE,
            json!({ "l": lab.id, "m": "H.read", "p": {}, "d": 10 }),
        )
        .unwrap();
    assert_eq!(error_code(&body).as_deref(), Some("NOT_FOUND"), "{body}");

    // The short deadline passes while the agent is away.
    wait_for(Duration::from_secs(30), "TIMED_OUT", || {
        Ok((command(&server, &a, &late_id)["state"] == "TIMED_OUT").then_some(()))
    })
    .unwrap();
    let timed_out_after = queued_at.elapsed();
    assert!(timed_out_after >= Duration::from_secs(DEADLINE_S));
    assert_eq!(command(&server, &a, &timely_id)["state"], "QUEUED");

    // The agent returns at twice the deadline (the row's "returns at 60 s" for 30 s).
    let back_at = Duration::from_secs(2 * DEADLINE_S);
    wait_for(Duration::from_secs(30), "twice the deadline", || {
        Ok((queued_at.elapsed() >= back_at).then_some(()))
    })
    .unwrap();
    let mut agent =
        TestAgent::spawn_with_lab_and_spool(&server.url(), &lab.credential, &config, Some(&spool))
            .unwrap();
    online(true);
    wait_for(Duration::from_secs(60), "the timely command done", || {
        let c = command(&server, &a, &timely_id);
        Ok((c["state"] != "QUEUED" && c["state"] != "SENT").then_some(c))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let timely_done = command(&server, &a, &timely_id);
    assert_eq!(
        timely_done["state"],
        "SUCCEEDED",
        "{timely_done}\n{}",
        agent.log()
    );

    let late_end = command(&server, &a, &late_id);
    let records = stored(&db, &lab.id).await;
    let ran = |id: &str| {
        records
            .iter()
            .filter(|(kind, p)| kind == "program_started" && p.as_deref() == Some(id))
            .count()
    };
    let touched = |id: &str| {
        records
            .iter()
            .filter(|(_, p)| p.as_deref() == Some(id))
            .count()
    };
    println!(
        "[{}] commands queued while the agent was offline: deadline {DEADLINE_S} s → {} after {:.1} s \
         (attempts {}), agent back at {:.1} s: executed {} (records {}); deadline 120 s → {} (attempts {}, executed {}); \
         canceled → CANCELED (executed {})",
        backend.name(),
        late_end["state"],
        timed_out_after.as_secs_f64(),
        late_end["attempts"],
        back_at.as_secs_f64(),
        ran(&late_id),
        touched(&late_id),
        timely_done["state"],
        timely_done["attempts"],
        ran(&timely_id),
        ran(&canceled_id),
    );
    assert_eq!(late_end["state"], "TIMED_OUT");
    assert_eq!(late_end["attempts"], 0, "never sent");
    assert_eq!(touched(&late_id), 0, "never executed");
    assert_eq!(touched(&canceled_id), 0, "never executed");
    assert_eq!(ran(&timely_id), 1, "executed once");
    assert_eq!(
        command(&server, &a, &canceled_id)["state"],
        "CANCELED",
        "terminal states never change"
    );
    let listed = ok(
        &server,
        &a,
        "query($l: ID!) { labCommands(labId: $l) { id state } }",
        json!({ "l": lab.id }),
    );
    assert_eq!(listed["labCommands"].as_array().unwrap().len(), 3);

    // The server is killed while a command runs (a 3,000 s hold: 3 s at 1000×) and restarted:
    // the dispatcher sends it again with the same id, the agent answers that it already has it,
    // and the command ends from its `program_finished` record — executed once.
    let long = ok(
        &server,
        &a,
        QUEUE,
        json!({ "l": lab.id, "m": "H.hold", "p": { "time": 3000.0 }, "d": 120 }),
    )["queueInstruction"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let db_ref = &db;
    let lab_id = lab.id.clone();
    wait_for(Duration::from_secs(30), "the long command running", || {
        let started = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(stored(db_ref, &lab_id))
        })
        .iter()
        .any(|(kind, p)| kind == "program_started" && p.as_deref() == Some(long.as_str()));
        Ok(started.then_some(()))
    })
    .unwrap();
    let addr = server.addr.to_string();
    server.kill();
    let server = TestServer::spawn_on(&db, &addr, &env).unwrap();
    let long_end = wait_for(Duration::from_secs(60), "the long command done", || {
        let c = command(&server, &a, &long);
        Ok((c["state"] != "QUEUED" && c["state"] != "SENT").then_some(c))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", agent.log(), server.log()))
    .0;
    let records = stored(&db, &lab.id).await;
    let started = records
        .iter()
        .filter(|(kind, p)| kind == "program_started" && p.as_deref() == Some(long.as_str()))
        .count();
    println!(
        "[{}] server SIGKILLed while a queued command ran, restarted: {} after {} sends, executed {started}",
        backend.name(),
        long_end["state"],
        long_end["attempts"]
    );
    assert_eq!(long_end["state"], "SUCCEEDED", "{long_end}");
    assert!(long_end["attempts"].as_i64().unwrap() >= 2, "{long_end}");
    assert_eq!(started, 1, "executed once");
    agent.terminate().unwrap();
    mark_ran(backend, "command_deadline_offline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_deadline_passes_while_the_agent_is_offline_never_runs_on_every_backend() {
    for backend in backends() {
        offline_deadline(backend).await;
    }
}
