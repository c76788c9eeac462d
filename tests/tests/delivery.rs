//! Nothing lost, nothing duplicated: the agent writes every record to its spool before sending
//! it, the server stores it under (lab, epoch, seq) and only then acknowledges, and a restarted
//! agent resends what was not acknowledged. Here the agent is SIGKILLed repeatedly while the
//! virtual lab streams a synthesis, and restarted with the same spool.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use maosic_e2e::{
    backends, create_lab, mark_ran, run_bin, wait_for, Backend, TestAgent, TestDatabase, TestServer,
};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, SqliteConnection};

const TOKEN: &str = "operator-test-token";
const KILLS: usize = 5;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn call(server: &TestServer, lab: &str, body: &Value) -> (u16, Value) {
    let response = ureq::post(format!("{}/operator/v1/labs/{lab}/call", server.url()))
        .header("authorization", &format!("Bearer {TOKEN}"))
        .config()
        .http_status_as_error(false)
        .build()
        .send_json(body)
        .unwrap();
    let status = response.status().as_u16();
    let text = response.into_body().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// (epoch, seq) of every record the server stored for the lab.
async fn stored(db: &TestDatabase, lab: &str) -> Vec<(String, i64)> {
    let sql = "SELECT epoch, seq FROM agent_records WHERE lab_id = $1 ORDER BY epoch, seq";
    match db.backend {
        Backend::Sqlite => {
            let mut conn = SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query_as(sql)
                .bind(lab)
                .fetch_all(&mut conn)
                .await
                .unwrap()
        }
        Backend::Postgres => {
            let mut conn = PgConnection::connect(&db.url).await.unwrap();
            sqlx::query_as(sql)
                .bind(lab)
                .fetch_all(&mut conn)
                .await
                .unwrap()
        }
    }
}

/// (epoch, records ever written, records still waiting) of a spool file.
async fn spool_state(path: &Path) -> (String, i64, i64) {
    let url = format!("sqlite://{}", path.display());
    let mut conn = SqliteConnection::connect(&url).await.unwrap();
    let (epoch, next): (String, i64) = sqlx::query_as("SELECT epoch, next_seq FROM meta")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let (waiting,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM records")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    (epoch, next - 1, waiting)
}

fn wait_online(server: &TestServer, lab: &str, agent: &TestAgent) {
    wait_for(Duration::from_secs(30), "agent connected", || {
        let probe = json!({ "method": "program.cancel", "params": { "program_id": "none" } });
        Ok((call(server, lab, &probe).0 == 200).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
}

async fn agent_kills_lose_and_duplicate_nothing(backend: Backend) {
    let db = TestDatabase::create(backend).await.unwrap();
    let lab = create_lab(&db, "Chirality Group", "paper-lab").unwrap();
    let server = TestServer::spawn(&db, &[("MAOSIC_OPERATOR_TOKEN", TOKEN)]).unwrap();
    let out = run_bin(
        "maosic-server",
        &[
            "lang",
            "compile",
            repo("examples/chirality.recipe").to_str().unwrap(),
            "--lab",
            repo("examples/paper-lab.toml").to_str().unwrap(),
            "--set",
            "T=130",
            "--set",
            "C=0.8",
        ],
        &[],
    )
    .unwrap();
    let program: Value = serde_json::from_str(&out.stdout).unwrap();
    let spool_dir = tempfile::tempdir().unwrap();
    let spool = spool_dir.path().join("spool.db");
    let lab_config = repo("examples/agent-lab-virtual.toml");
    let mut backlog_at_kill = Vec::new();

    for round in 0..KILLS {
        let mut agent = TestAgent::spawn_with_lab_and_spool(
            &server.url(),
            &lab.credential,
            &lab_config,
            Some(&spool),
        )
        .unwrap();
        wait_online(&server, &lab.id, &agent);
        let before = stored(&db, &lab.id).await.len();
        let body = json!({
            "method": "program.run",
            "params": { "program_id": format!("run-{round}"), "program": program },
            "timeout_ms": 60000
        });
        let url = server.url();
        let lab_id = lab.id.clone();
        let runner = std::thread::spawn(move || {
            let _ = ureq::post(format!("{url}/operator/v1/labs/{lab_id}/call"))
                .header("authorization", &format!("Bearer {TOKEN}"))
                .config()
                .http_status_as_error(false)
                .build()
                .send_json(&body);
        });
        // Kill while the stream is flowing, at a different point each round.
        let runtime = tokio::runtime::Handle::current();
        let kill_after = before + 1 + 4 * round;
        wait_for(Duration::from_secs(30), "records flowing", || {
            let now = tokio::task::block_in_place(|| runtime.block_on(stored(&db, &lab.id))).len();
            Ok((now >= kill_after).then_some(()))
        })
        .unwrap();
        agent.kill();
        let (_, _, waiting) = spool_state(&spool).await;
        backlog_at_kill.push(waiting);
        runner.join().unwrap();
    }

    // A last agent with the same spool delivers what is left.
    let agent = TestAgent::spawn_with_lab_and_spool(
        &server.url(),
        &lab.credential,
        &lab_config,
        Some(&spool),
    )
    .unwrap();
    wait_online(&server, &lab.id, &agent);
    let runtime = tokio::runtime::Handle::current();
    let (epoch, written, _) = wait_for(Duration::from_secs(30), "spool drained", || {
        let state = tokio::task::block_in_place(|| runtime.block_on(spool_state(&spool)));
        Ok((state.2 == 0).then_some(state))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()))
    .0;
    let rows = stored(&db, &lab.id).await;
    let seqs: Vec<i64> = rows
        .iter()
        .filter(|(e, _)| *e == epoch)
        .map(|(_, s)| *s)
        .collect();
    let lost = (1..=written)
        .filter(|s| seqs.binary_search(s).is_err())
        .count();
    let duplicates = seqs.len() - {
        let mut unique = seqs.clone();
        unique.dedup();
        unique.len()
    };
    println!(
        "[{}] {KILLS} agent SIGKILLs during streams: {written} records spooled, {} stored, lost {lost}, duplicates {duplicates}, epochs {}, unacknowledged at each kill {backlog_at_kill:?}",
        backend.name(),
        seqs.len(),
        rows.iter().map(|(e, _)| e).collect::<std::collections::BTreeSet<_>>().len()
    );
    assert!(written > 0);
    assert_eq!(lost, 0);
    assert_eq!(duplicates, 0);
    assert_eq!(
        seqs.len() as i64,
        written,
        "every stored record was spooled"
    );
    mark_ran(backend, "agent_kills_lose_and_duplicate_nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_kills_lose_and_duplicate_nothing_on_every_backend() {
    for backend in backends() {
        agent_kills_lose_and_duplicate_nothing(backend).await;
    }
}
