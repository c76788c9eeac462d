//! Foundation end-to-end tests: presence over the real agent link on both backends, the HTTP
//! endpoints, the schema contract, and clear one-line errors for bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use maosic_e2e::{
    backends, error_code, mark_ran, run_bin, wait_for, Backend, TestAgent, TestDatabase, TestServer,
};
use serde_json::{json, Value};

const HEARTBEAT_MS: u64 = 500;

fn paper_lab() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/paper-lab.toml")
}

fn lab_state(server: &TestServer, token: &str, lab_id: &str) -> Value {
    let body = server
        .graphql_as(
            token,
            "query($id: ID!) { lab(id: $id) { online connectionGeneration lastSeenAt devices { name kind } } }",
            json!({ "id": lab_id }),
        )
        .unwrap();
    assert!(body.get("errors").is_none(), "{body}");
    body["data"]["lab"].clone()
}

fn online(server: &TestServer, token: &str, lab_id: &str) -> bool {
    lab_state(server, token, lab_id)["online"]
        .as_bool()
        .unwrap()
}

async fn presence_follows_the_agent(backend: Backend) {
    let db = TestDatabase::create(backend).await.unwrap();
    let hb = HEARTBEAT_MS.to_string();
    let server = TestServer::spawn(&db, &[("MAOSIC_AGENT__HEARTBEAT_MS", &hb)]).unwrap();
    let session = server
        .sign_up("owner@chirality.example", "Chirality Group")
        .unwrap();
    let lab = server.create_enrolled_lab(&session, "paper-lab").unwrap();
    let token = session.access_token.as_str();
    assert!(!online(&server, token, &lab.id), "no agent yet");

    // Agent starts → online, with its devices.
    let mut agent = TestAgent::spawn(&server.url(), &lab.credential, Some(&paper_lab())).unwrap();
    let (_, took) = wait_for(Duration::from_secs(15), "lab online", || {
        Ok(online(&server, token, &lab.id).then_some(()))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nagent log:\n{}\nserver log:\n{}",
            agent.log(),
            server.log()
        )
    });
    let state = lab_state(&server, token, &lab.id);
    assert_eq!(state["connectionGeneration"], 1);
    let devices = state["devices"].as_array().unwrap();
    assert!(
        devices
            .iter()
            .any(|d| d["name"] == "H" && d["kind"] == "heater"),
        "{state}"
    );
    println!(
        "[{}] online after agent start: {} ms",
        backend.name(),
        took.as_millis()
    );

    // Stays online across several heartbeat periods (heartbeats keep it alive).
    let (_, _) = wait_for(
        Duration::from_secs(5),
        "a heartbeat to move lastSeenAt",
        || {
            let seen = lab_state(&server, token, &lab.id)["lastSeenAt"].clone();
            Ok((seen != state["lastSeenAt"]).then_some(()))
        },
    )
    .unwrap();
    assert!(online(&server, token, &lab.id));

    // SIGKILL → offline within 3 heartbeat periods.
    agent.kill();
    let (_, took) = wait_for(Duration::from_secs(10), "lab offline after SIGKILL", || {
        Ok((!online(&server, token, &lab.id)).then_some(()))
    })
    .unwrap();
    println!(
        "[{}] offline after agent SIGKILL: {} ms (limit {} ms)",
        backend.name(),
        took.as_millis(),
        3 * HEARTBEAT_MS
    );
    assert!(
        took <= Duration::from_millis(3 * HEARTBEAT_MS),
        "took {took:?}"
    );

    // A new agent process → online again with a newer generation.
    let mut agent = TestAgent::spawn(&server.url(), &lab.credential, Some(&paper_lab())).unwrap();
    wait_for(Duration::from_secs(15), "lab online again", || {
        Ok(online(&server, token, &lab.id).then_some(()))
    })
    .unwrap();
    assert_eq!(
        lab_state(&server, token, &lab.id)["connectionGeneration"],
        2
    );

    // Clean stop (SIGTERM → goodbye) → offline within 1 s.
    let started = std::time::Instant::now();
    let status = agent.terminate().unwrap();
    assert!(status.success(), "agent exit {status:?}: {}", agent.log());
    let (_, _) = wait_for(
        Duration::from_secs(5),
        "lab offline after clean stop",
        || Ok((!online(&server, token, &lab.id)).then_some(())),
    )
    .unwrap();
    let took = started.elapsed();
    println!(
        "[{}] offline after clean stop: {} ms (limit 1000 ms)",
        backend.name(),
        took.as_millis()
    );
    assert!(took <= Duration::from_secs(1), "took {took:?}");
    mark_ran(backend, "presence_follows_the_agent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follows_the_agent_on_every_backend() {
    for backend in backends() {
        presence_follows_the_agent(backend).await;
    }
}

#[tokio::test]
async fn health_readiness_metrics_and_graphiql_answer() {
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    // Production defaults: no GraphiQL unless configured.
    let plain = TestServer::spawn(&db, &[]).unwrap();
    assert_eq!(
        plain.get("/graphql").unwrap().0,
        404,
        "GraphiQL is off by default"
    );
    let (_, headers) = plain.get_with_headers("/healthz").unwrap();
    assert_eq!(
        headers.get("x-content-type-options").map(String::as_str),
        Some("nosniff")
    );
    drop(plain);
    let server = TestServer::spawn(&db, &[("MAOSIC_GRAPHQL__GRAPHIQL", "true")]).unwrap();
    assert_eq!(server.get("/healthz").unwrap(), (200, "ok\n".into()));
    assert_eq!(server.get("/readyz").unwrap(), (200, "ready\n".into()));
    let (status, page) = server.get("/graphql").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("graphiql"), "GraphiQL page expected");
    let info = server
        .graphql("{ serverInfo { name version } }", json!({}))
        .unwrap();
    assert_eq!(info["data"]["serverInfo"]["name"], "maosic");
    let (status, metrics) = server.get("/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            r#"maosic_http_requests_total{method="POST",route="/graphql",status="200"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("maosic_http_request_duration_seconds_bucket"));
    // Labs need a token; with one, an unknown lab id (malformed or absent) is null.
    let query = "{ a: lab(id: \"nope\") { id } b: lab(id: \"01a215b7-72e3-730c-9488-fc9e410f95a2\") { id } }";
    let anonymous = server.graphql(query, json!({})).unwrap();
    assert_eq!(
        error_code(&anonymous).as_deref(),
        Some("UNAUTHENTICATED"),
        "{anonymous}"
    );
    let session = server.sign_up("someone@example.org", "Some Group").unwrap();
    let none = server
        .graphql_as(&session.access_token, query, json!({}))
        .unwrap();
    assert_eq!(none["data"], json!({ "a": null, "b": null }), "{none}");
}

#[tokio::test]
async fn metrics_behind_a_token_answer_only_with_it() {
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let token = "metrics-token-0123456789abcdef0123456789";
    let server = TestServer::spawn(&db, &[("MAOSIC_METRICS_TOKEN", token)]).unwrap();
    assert_eq!(
        server.get("/metrics").unwrap().0,
        404,
        "no token, no metrics"
    );
    let (status, _) = server
        .get_as("/metrics", "Bearer wrong-token-0123456789abcdef012345")
        .unwrap();
    assert_eq!(status, 404);
    let (status, text) = server
        .get_as("/metrics", &format!("Bearer {token}"))
        .unwrap();
    assert_eq!(status, 200);
    assert!(text.contains("maosic_agents_connected"), "{text}");
}

#[test]
fn short_operator_and_metrics_tokens_are_configuration_errors() {
    for key in ["MAOSIC_OPERATOR_TOKEN", "MAOSIC_METRICS_TOKEN"] {
        let out = run_bin(
            "maosic-server",
            &["migrate", "--database", "sqlite::memory:"],
            &[(key, "short")],
        )
        .unwrap();
        assert_one_clear_error_line(&out, "at least 32 characters");
    }
}

#[test]
fn print_schema_matches_the_committed_sdl() {
    let out = run_bin("maosic-server", &["print-schema"], &[]).unwrap();
    assert!(out.status.success());
    let committed = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schema/schema.graphql"),
    )
    .unwrap();
    assert_eq!(
        out.stdout, committed,
        "run `maosic-server print-schema > schema/schema.graphql`"
    );
}

fn assert_one_clear_error_line(out: &maosic_e2e::Finished, needle: &str) {
    assert!(
        !out.status.success(),
        "expected failure, got {:?}",
        out.status
    );
    assert!(!out.stderr.contains("panicked"), "panic: {}", out.stderr);
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one error line, got:\n{}",
        out.stderr
    );
    assert!(
        lines[0].contains(needle),
        "{:?} does not mention {needle:?}",
        lines[0]
    );
}

#[test]
fn malformed_database_url_is_one_clear_error() {
    for url in ["mysql://localhost/x", "", "sqlite://", "postgres://"] {
        let out = run_bin(
            "maosic-server",
            &["serve", "--bind", "127.0.0.1:0", "--database", url],
            &[],
        )
        .unwrap();
        assert_one_clear_error_line(&out, "database");
    }
}

#[test]
fn unreachable_postgres_is_one_clear_error() {
    // Port 1 on loopback: nothing listens there.
    let out = run_bin(
        "maosic-server",
        &[
            "migrate",
            "--database",
            "postgres://postgres@127.0.0.1:1/maosic",
        ],
        &[("MAOSIC_CONNECT_TIMEOUT_SECS", "2")],
    )
    .unwrap();
    assert_one_clear_error_line(
        &out,
        "cannot open database postgres://postgres@127.0.0.1:1/maosic",
    );
}

#[tokio::test]
async fn wrong_agent_credential_is_refused_with_one_clear_error() {
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let server = TestServer::spawn(&db, &[]).unwrap();
    let session = server.sign_up("owner@group.example", "Group").unwrap();
    let lab = server.create_enrolled_lab(&session, "lab").unwrap();
    let token = session.access_token.as_str();
    let mut cred: Value =
        serde_json::from_str(&std::fs::read_to_string(&lab.credential).unwrap()).unwrap();
    cred["secret"] = json!("0".repeat(64));
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.json");
    std::fs::write(&wrong, cred.to_string()).unwrap();
    let mut agent = TestAgent::spawn(&server.url(), &wrong, None).unwrap();
    let status = agent
        .wait_exit(Duration::from_secs(10))
        .unwrap()
        .expect("agent should give up on a refused credential");
    assert!(!status.success());
    let log = agent.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(
        errors[0].contains("refused this agent's credential"),
        "{log}"
    );
    assert!(!log.contains("panicked"));
    assert!(!online(&server, token, &lab.id));
    // A malformed credential file is also one clear line.
    std::fs::write(&wrong, "{not json").unwrap();
    let out = run_bin(
        "maosic-agent",
        &[
            "run",
            "--server",
            &server.url(),
            "--credential",
            wrong.to_str().unwrap(),
        ],
        &[],
    )
    .unwrap();
    assert_one_clear_error_line(&out, "malformed");
}

#[tokio::test]
async fn operator_token_guesses_are_throttled_per_address() {
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let token = "operator-token-0123456789abcdef0123456789";
    let server = TestServer::spawn(&db, &[("MAOSIC_OPERATOR_TOKEN", token)]).unwrap();
    let path = "/operator/v1/labs/x/programs/y/records";
    let mut codes = Vec::new();
    for i in 0..12 {
        let (status, _) = server
            .get_as(
                path,
                &format!("Bearer guess-{i}-0123456789abcdef0123456789"),
            )
            .unwrap();
        codes.push(status);
    }
    assert_eq!(&codes[..10], &[401; 10], "{codes:?}");
    assert_eq!(&codes[10..], &[429, 429], "{codes:?}");
    // Even the right token waits out the window from that address.
    assert_eq!(
        server.get_as(path, &format!("Bearer {token}")).unwrap().0,
        429
    );
}
