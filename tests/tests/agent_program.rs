//! The agent runs what the cloud asks: a compiled program sent as `program.run` to an agent
//! driving the virtual lab (real drivers on pseudo-terminals), its records streamed back and
//! stored once each, on both database backends; device calls checked by the agent's own limits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use maosic_e2e::{
    backends, create_lab, mark_ran, run_bin, wait_for, Backend, TestAgent, TestDatabase, TestServer,
};
use serde_json::{json, Value};

const TOKEN: &str = "operator-test-token-0123456789abcdef";

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn operator(server: &TestServer, token: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let url = format!("{}/operator/v1/{path}", server.url());
    let auth = format!("Bearer {token}");
    let response = match body {
        Some(body) => ureq::post(&url)
            .header("authorization", &auth)
            .config()
            .http_status_as_error(false)
            .build()
            .send_json(&body),
        None => ureq::get(&url)
            .header("authorization", &auth)
            .config()
            .http_status_as_error(false)
            .build()
            .call(),
    }
    .unwrap();
    let status = response.status().as_u16();
    let text = response.into_body().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn compile_paper_recipe(t: f64, c: f64) -> Value {
    let out = run_bin(
        "maosic-server",
        &[
            "lang",
            "compile",
            repo("examples/chirality.recipe").to_str().unwrap(),
            "--lab",
            repo("examples/paper-lab.toml").to_str().unwrap(),
            "--set",
            &format!("T={t}"),
            "--set",
            &format!("C={c}"),
        ],
        &[],
    )
    .unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap()
}

async fn cloud_runs_a_program_on_the_virtual_lab(backend: Backend) {
    let db = TestDatabase::create(backend).await.unwrap();
    let lab = create_lab(&db, "Chirality Group", "paper-lab").unwrap();
    let server = TestServer::spawn(&db, &[("MAOSIC_OPERATOR_TOKEN", TOKEN)]).unwrap();
    let agent = TestAgent::spawn_with_lab(
        &server.url(),
        &lab.credential,
        &repo("examples/agent-lab-virtual.toml"),
    )
    .unwrap();
    // The lab is reachable once the operator API stops answering LAB_OFFLINE.
    wait_for(Duration::from_secs(30), "virtual lab online", || {
        let (status, _) = operator(
            &server,
            TOKEN,
            &format!("labs/{}/call", lab.id),
            Some(json!({ "method": "program.cancel", "params": { "program_id": "none" } })),
        );
        Ok((status == 200).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    let program = compile_paper_recipe(130.0, 0.8);
    let started = std::time::Instant::now();
    let (status, answer) = operator(
        &server,
        TOKEN,
        &format!("labs/{}/call", lab.id),
        Some(json!({
            "method": "program.run",
            "params": { "program_id": "run-1", "program": program },
            "timeout_ms": 120000
        })),
    );
    assert_eq!(status, 200, "{answer}\nagent:\n{}", agent.log());
    let report = &answer["result"];
    assert_eq!(report["outcome"], "succeeded", "{answer}");
    assert_eq!(report["steps_succeeded"], report["steps_total"]);
    println!(
        "[{}] paper recipe at (130 °C, 0.8): {} steps, {:.0} s lab time in {} ms wall",
        backend.name(),
        report["steps_total"],
        report["lab_duration_s"].as_f64().unwrap(),
        started.elapsed().as_millis()
    );

    // Every record arrived, once, in order: seq is dense from 1.
    let (status, stored) = operator(
        &server,
        TOKEN,
        &format!("labs/{}/programs/run-1/records", lab.id),
        None,
    );
    assert_eq!(status, 200);
    let records = stored["records"].as_array().unwrap();
    let seqs: Vec<i64> = records.iter().map(|r| r["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=records.len() as i64).collect::<Vec<_>>());
    assert_eq!(records.first().unwrap()["kind"], "program_started");
    assert_eq!(records.last().unwrap()["kind"], "program_finished");
    let measurement = |kind: &str| {
        records
            .iter()
            .find(|r| r["record"]["body"]["measurement"]["kind"] == kind)
            .map(|r| r["record"]["body"]["measurement"].clone())
            .unwrap_or_else(|| panic!("no {kind} record among {}", records.len()))
    };
    let absorption = measurement("absorption_spectrum");
    assert_eq!(absorption["absorbance"].as_array().unwrap().len(), 2048);
    let cd = measurement("cd_spectrum");
    let peak_cd = cd["cd_mdeg"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap().abs())
        .fold(0.0, f64::max);
    println!(
        "[{}] largest |CD| in the scan: {peak_cd:.3} mdeg",
        backend.name()
    );
    assert!(peak_cd > 0.5 && peak_cd < 2.0, "{peak_cd}");

    // The agent enforces its own limits on manual calls, whatever the cloud sends.
    let (status, refused) = operator(
        &server,
        TOKEN,
        &format!("labs/{}/call", lab.id),
        Some(
            json!({ "method": "device.call", "params": { "method": "H.set_temperature", "params": { "T": 450.0 } } }),
        ),
    );
    assert_eq!(status, 422, "{refused}");
    assert_eq!(
        refused["error"]["data"]["code"], "out_of_range",
        "{refused}"
    );

    // Software stop answers with the safe-state report.
    let (status, stop) = operator(
        &server,
        TOKEN,
        &format!("labs/{}/call", lab.id),
        Some(json!({ "method": "estop" })),
    );
    assert_eq!(status, 200, "{stop}");
    assert_eq!(stop["result"]["failures"], json!([]));
    mark_ran(backend, "cloud_runs_a_program_on_the_virtual_lab");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_runs_a_program_on_the_virtual_lab_on_every_backend() {
    for backend in backends() {
        cloud_runs_a_program_on_the_virtual_lab(backend).await;
    }
}

#[tokio::test]
async fn operator_api_refuses_missing_or_wrong_tokens_and_is_off_without_one() {
    let db = TestDatabase::create(Backend::Sqlite).await.unwrap();
    let lab = create_lab(&db, "G", "lab").unwrap();
    let server = TestServer::spawn(&db, &[("MAOSIC_OPERATOR_TOKEN", TOKEN)]).unwrap();
    let path = format!("labs/{}/call", lab.id);
    let body = json!({ "method": "estop" });
    assert_eq!(operator(&server, "wrong", &path, Some(body.clone())).0, 401);
    assert_eq!(operator(&server, "", &path, Some(body.clone())).0, 401);
    // Right token, but the agent is not connected.
    let (status, answer) = operator(&server, TOKEN, &path, Some(body.clone()));
    assert_eq!(
        (status, answer["code"].as_str()),
        (409, Some("LAB_OFFLINE"))
    );
    drop(server);
    let server = TestServer::spawn(&db, &[]).unwrap();
    assert_eq!(operator(&server, TOKEN, &path, Some(body)).0, 404);
}
