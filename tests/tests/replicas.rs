//! Several server replicas on one PostgreSQL (issue #17): each accepts the others' access
//! tokens, a subscriber on one replica sees what happens on another (LISTEN/NOTIFY), a log-out
//! on one closes the session's sockets on the others, and a lab credential revoked through one
//! replica cuts the agent connection another replica holds; agent calls made on any replica reach
//! the agent another holds. Without a shared JWT key a server
//! on PostgreSQL refuses to start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use maosic_e2e::{
    backends, mark_ran, Backend, GraphqlWs, RawAgent, Session, TestAgent, TestDatabase, TestServer,
};
use serde_json::{json, Value};

fn paper_lab() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/paper-lab.toml")
}

fn postgres() -> bool {
    let on = backends().contains(&Backend::Postgres);
    if !on {
        eprintln!("skipped: MAOSIC_TEST_POSTGRES_URL is not set");
    }
    on
}

fn ok(server: &TestServer, s: &Session, query: &str, vars: Value) -> Value {
    let body = server.graphql_as(&s.access_token, query, vars).unwrap();
    assert!(body.get("errors").is_none(), "{query}: {body}");
    body["data"].clone()
}

/// The next `labStatus` event's `online`, within `timeout`.
fn next_status(ws: &mut GraphqlWs, timeout: Duration) -> Option<bool> {
    let deadline = Instant::now() + timeout;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let message = ws.next(left).unwrap()?;
        if message["type"] == "next" {
            return message["payload"]["data"]["labStatus"]["online"].as_bool();
        }
        assert_ne!(message["type"], "error", "{message}");
        assert_ne!(message["type"], "close", "{message}");
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_tokens_lab_status_log_outs_and_credential_revocations() {
    if !postgres() {
        return;
    }
    let db = TestDatabase::create(Backend::Postgres).await.unwrap();
    let replicas: Vec<TestServer> = (0..3)
        .map(|_| TestServer::spawn(&db, &[]).unwrap())
        .collect();
    let (r1, r2, r3) = (&replicas[0], &replicas[1], &replicas[2]);

    // A token issued by replica 1 works on every replica.
    let s = r1.sign_up("ops@replicas.example", "Org R").unwrap();
    for r in &replicas {
        let me = ok(r, &s, "query { me { email } }", json!({}));
        assert_eq!(me["me"]["email"], "ops@replicas.example");
    }

    // A subscriber on replica 3 sees the lab go online when its agent connects to replica 1.
    let lab = r1.create_enrolled_lab(&s, "Bench").unwrap();
    let (mut ws3, ack) = GraphqlWs::connect(r3, &s.access_token).unwrap();
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    ws3.subscribe(
        "status",
        "subscription($l: ID!) { labStatus(labId: $l) { online } }",
        json!({ "l": lab.id }),
    )
    .unwrap();
    // Give the subscription a moment to be registered before the agent connects.
    std::thread::sleep(Duration::from_millis(300));
    let mut agent = TestAgent::spawn(&r1.url(), &lab.credential, Some(&paper_lab())).unwrap();
    assert_eq!(
        next_status(&mut ws3, Duration::from_secs(15)),
        Some(true),
        "replica 3 saw the agent connect to replica 1\n{}\n{}",
        agent.log(),
        r3.log()
    );

    // Revoking the credential through replica 2 cuts the connection replica 1 holds; the
    // agent's reconnect is refused and it gives up; replica 3's subscriber sees it offline.
    let cred: Value =
        serde_json::from_str(&std::fs::read_to_string(&lab.credential).unwrap()).unwrap();
    let revoked_at = Instant::now();
    let revoked = ok(
        r2,
        &s,
        "mutation($l: ID!, $c: ID!) { revokeAgentCredential(labId: $l, credentialId: $c) }",
        json!({ "l": lab.id, "c": cred["credential_id"] }),
    );
    assert_eq!(revoked["revokeAgentCredential"], true);
    assert_eq!(
        next_status(&mut ws3, Duration::from_secs(10)),
        Some(false),
        "replica 3 saw the agent held by replica 1 go offline\n{}",
        r1.log()
    );
    let offline_ms = revoked_at.elapsed().as_millis();
    let status = agent.wait_exit(Duration::from_secs(10)).unwrap();
    assert!(
        status.is_some_and(|s| !s.success()),
        "the agent gives up on its revoked credential: {}",
        agent.log()
    );
    let lab_row = ok(
        r1,
        &s,
        "query($l: ID!) { lab(id: $l) { online } }",
        json!({ "l": lab.id }),
    );
    assert_eq!(lab_row["lab"]["online"], false);

    // Logging out on replica 1 closes the session's socket on replica 3.
    let (mut ws_other, ack) = GraphqlWs::connect(r2, &s.access_token).unwrap();
    assert_eq!(ack["type"], "connection_ack", "{ack}");
    let out_at = Instant::now();
    ok(r1, &s, "mutation { logOut }", json!({}));
    let closed = ws3.next(Duration::from_secs(5)).unwrap().unwrap();
    let close_ms = out_at.elapsed().as_millis();
    assert_eq!(closed["type"], "close", "{closed}");
    assert_eq!(closed["code"], 4401, "{closed}");
    let closed_other = ws_other.next(Duration::from_secs(5)).unwrap().unwrap();
    assert_eq!(closed_other["code"], 4401, "{closed_other}");
    assert!(
        close_ms < 1000,
        "socket on replica 3 closed {close_ms} ms after log-out on replica 1"
    );
    // And the revoked session's token is refused everywhere.
    for r in &replicas {
        let body = r
            .graphql_as(&s.access_token, "query { me { email } }", json!({}))
            .unwrap();
        assert!(body.get("errors").is_some(), "{body}");
    }
    println!(
        "replicas: 3 on one PostgreSQL; credential revoked on replica 2 → agent on replica 1 \
         offline seen on replica 3 after {offline_ms} ms; log-out on replica 1 → socket on \
         replica 3 closed after {close_ms} ms"
    );
    mark_ran(Backend::Postgres, "replicas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_postgres_without_a_jwt_key_refuses_to_start_with_one_clear_error() {
    if !postgres() {
        return;
    }
    let db = TestDatabase::create(Backend::Postgres).await.unwrap();
    let refused = TestServer::spawn(&db, &[("MAOSIC_AUTH__JWT_SECRET", "")]);
    let message = match refused {
        Ok(_) => panic!("a server on PostgreSQL started without auth.jwt_secret"),
        Err(e) => e.to_string(),
    };
    assert!(message.contains("auth.jwt_secret is required"), "{message}");
    // SQLite (one process) still starts with a per-process key.
    let sqlite = TestDatabase::create(Backend::Sqlite).await.unwrap();
    TestServer::spawn(&sqlite, &[("MAOSIC_AUTH__JWT_SECRET", "")]).unwrap();
    mark_ran(Backend::Postgres, "replicas_need_a_jwt_key");
}

/// Agent calls made on any replica reach the agent another replica holds (relayed over
/// PostgreSQL NOTIFY) with the answers and errors of a local call: instructions and software
/// stops through each of 3 replicas, a fault reset through another, and, once the replica
/// holding the agent is killed, a prompt "offline" from the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_calls_through_any_replica_reach_the_agent_another_holds() {
    if !postgres() {
        return;
    }
    let db = TestDatabase::create(Backend::Postgres).await.unwrap();
    let mut replicas: Vec<TestServer> = (0..3)
        .map(|_| TestServer::spawn(&db, &[]).unwrap())
        .collect();
    let s = replicas[0]
        .sign_up("ops@relay.example", "Org Relay")
        .unwrap();
    let lab = replicas[0].create_enrolled_lab(&s, "paper-lab").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = maosic_e2e::virtual_lab_config(dir.path(), 100.0, 3).unwrap();
    let mut agent =
        TestAgent::spawn_with_lab(&replicas[0].url(), &lab.credential, &config).unwrap();
    maosic_e2e::wait_for(Duration::from_secs(30), "the agent online", || {
        let d = ok(
            &replicas[2],
            &s,
            "query($l: ID!) { lab(id: $l) { online devices { name } } }",
            json!({ "l": lab.id }),
        );
        Ok((d["lab"]["online"] == true
            && d["lab"]["devices"]
                .as_array()
                .is_some_and(|a| !a.is_empty()))
        .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    const INSTRUCT: &str =
        "mutation($l: ID!) { sendInstruction(labId: $l, method: \"P1.status\") }";
    const STOP: &str = "mutation($l: ID!) { stopLab(labId: $l) }";
    let mut stops_ms: Vec<f64> = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        let status = ok(r, &s, INSTRUCT, json!({ "l": lab.id }));
        assert!(
            status["sendInstruction"]["result"]["state"].is_string(),
            "replica {}: {status}",
            i + 1
        );
    }
    for (i, r) in replicas.iter().enumerate() {
        for _ in 0..10 {
            let at = Instant::now();
            let stopped = ok(r, &s, STOP, json!({ "l": lab.id }));
            stops_ms.push(at.elapsed().as_secs_f64() * 1000.0);
            assert!(
                !stopped["stopLab"].is_null(),
                "replica {}: {stopped}",
                i + 1
            );
        }
    }
    // Latched by the stops: an instruction through another replica is refused the same way.
    let refused = replicas[1]
        .graphql_as(&s.access_token, INSTRUCT, json!({ "l": lab.id }))
        .unwrap();
    assert!(refused.to_string().contains("latched"), "{refused}");
    let reset = ok(
        &replicas[2],
        &s,
        "mutation($l: ID!, $r: String!) { resetLabFaults(labId: $l, reason: $r) }",
        json!({ "l": lab.id, "r": "relay test" }),
    );
    assert_eq!(reset["resetLabFaults"]["latched"], json!([]), "{reset}");
    assert_eq!(
        reset["resetLabFaults"]["cleared"].as_array().map(Vec::len),
        Some(30),
        "{reset}"
    );
    ok(&replicas[1], &s, INSTRUCT, json!({ "l": lab.id }));

    // The replica holding the agent dies (SIGKILL): its lab row still names it, yet the others
    // answer "offline" within the relay's 2 s receipt wait, not after the call's time-out.
    replicas[0].kill();
    let mut offline: Vec<String> = Vec::new();
    let mut slowest = Duration::ZERO;
    for r in &replicas[1..] {
        let at = Instant::now();
        let body = r
            .graphql_as(&s.access_token, STOP, json!({ "l": lab.id }))
            .unwrap();
        slowest = slowest.max(at.elapsed());
        offline.push(
            body["errors"][0]["message"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        );
    }
    assert!(offline[0].contains("offline"), "{offline:?}");
    assert!(offline.iter().all(|m| *m == offline[0]), "{offline:?}");
    assert!(
        slowest < Duration::from_secs(5),
        "offline after {slowest:?}"
    );
    agent.kill();

    stops_ms.sort_by(f64::total_cmp);
    let p50 = stops_ms[stops_ms.len() / 2];
    let worst = stops_ms[stops_ms.len() - 1];
    println!(
        "relay: agent on replica 1; status, 10 stopLab per replica (30) answered through every \
         replica: p50 {p50:.1} ms, worst {worst:.1} ms; 30 e-stop faults cleared by a reset \
         through replica 3; replica 1 killed → the others answer offline within {:.1} s",
        slowest.as_secs_f64()
    );
    assert!(worst < 1000.0, "a stopLab took {worst:.0} ms");
    mark_ran(Backend::Postgres, "relayed_agent_calls");
}

/// The same lab credential connected on two replicas (a cloned agent, or an old connection
/// still alive behind a proxy): the newer connection's hello makes the older generation stale,
/// and its replica, writing presence in batches, cuts it at its next traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_superseded_on_another_replica_is_cut_at_its_next_traffic() {
    if !postgres() {
        return;
    }
    let db = TestDatabase::create(Backend::Postgres).await.unwrap();
    let env = [("MAOSIC_AGENT__HEARTBEAT_MS", "1000")];
    let r1 = TestServer::spawn(&db, &env).unwrap();
    let r2 = TestServer::spawn(&db, &env).unwrap();
    let s = r1.sign_up("ops@superseded.example", "Org S").unwrap();
    let lab = r1.create_enrolled_lab(&s, "Bench").unwrap();
    let mut old = RawAgent::connect(r1.addr, &lab.credential).unwrap();
    let mut new = RawAgent::connect(r2.addr, &lab.credential).unwrap();
    assert_eq!(old.hello["generation"], 1, "{}", old.hello);
    assert_eq!(new.hello["generation"], 2, "{}", new.hello);
    let heartbeat = json!({"jsonrpc": "2.0", "method": "heartbeat", "params": {"time_ms": 0}});
    // The old connection keeps talking; replica 1 learns it is stale and closes it.
    let started = Instant::now();
    let closed = loop {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the superseded connection was not cut\n{}",
            r1.log()
        );
        old.send(&heartbeat).unwrap();
        new.send(&heartbeat).unwrap();
        if let Some(m) = old.next(Duration::from_millis(200)).unwrap() {
            if m["type"] == "close" {
                break m;
            }
        }
        while new.next(Duration::from_millis(1)).unwrap().is_some() {}
    };
    let took = started.elapsed();
    println!(
        "superseded connection cut after {:.2} s: {closed}",
        took.as_secs_f64()
    );
    assert_eq!(closed["code"], 1008, "policy close: {closed}");
    // The newer connection stays, and it is the lab's presence.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        new.send(&heartbeat).unwrap();
        if let Some(m) = new.next(Duration::from_millis(200)).unwrap() {
            assert_ne!(m["type"], "close", "the current connection was closed: {m}");
        }
    }
    let lab_now = ok(
        &r2,
        &s,
        "query($id: ID!) { lab(id: $id) { online connectionGeneration } }",
        json!({ "id": lab.id }),
    );
    assert_eq!(lab_now["lab"]["online"], true, "{lab_now}");
    assert_eq!(lab_now["lab"]["connectionGeneration"], 2, "{lab_now}");
    new.close();
    mark_ran(Backend::Postgres, "superseded_connection_cut");
}
