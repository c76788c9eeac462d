//! The agent's link against fake servers that misbehave in ways the real server does not: the
//! link runs in-process (`maosic_agent::link::run`) against a WebSocket server in the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use maosic_agent::link::{self, LinkConfig};
use maosic_agent::spool::{RecordClass, Spool, SpoolCaps};
use maosic_agent::transport::Route;
use maosic_schema::protocol::{AgentCredentialFile, Id, Message};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const HEARTBEAT_MS: u64 = 200;

fn config(server: &str, spool: Spool) -> LinkConfig {
    LinkConfig {
        server: server.to_owned(),
        credential: AgentCredentialFile {
            lab_id: "lab-1".into(),
            credential_id: "cred".into(),
            secret: "secret".into(),
        },
        descriptor: None,
        lab: None,
        spool,
        backoff_base: Duration::from_millis(50),
        backoff_cap: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(5),
        tls: None,
        route: Route::Direct,
        spooled: Default::default(),
    }
}

/// Accepts the WebSocket, answers `hello`, then never reads again — while it keeps sending
/// heartbeats, so the link is not silent. Reports each welcomed connection.
async fn deaf_server(tcp: TcpStream, number: usize, welcomed: mpsc::UnboundedSender<usize>) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    while let Some(Ok(frame)) = ws.next().await {
        let WsMessage::Text(text) = frame else {
            continue;
        };
        if matches!(Message::parse(text.as_str()), Ok(Message::Request(r)) if r.id == Id::Number(1))
        {
            break;
        }
    }
    let welcome = Message::result(
        Id::Number(1),
        json!({ "lab_id": "lab-1", "generation": number, "heartbeat_ms": HEARTBEAT_MS }),
    );
    if ws.send(WsMessage::text(welcome.to_json())).await.is_err() {
        return;
    }
    let _ = welcomed.send(number);
    let heartbeat = json!({ "jsonrpc": "2.0", "method": "heartbeat", "params": { "time_ms": 0 } });
    loop {
        tokio::time::sleep(Duration::from_millis(HEARTBEAT_MS / 2)).await;
        if ws
            .send(WsMessage::text(heartbeat.to_string()))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// docs/reliability.md rule 3: a peer that stops reading fills the socket's buffers and a send
/// blocks. Without a send timeout the event loop stalled in that send for ever: no dead-link
/// timer, no reconnect, no shutdown. Now the link is declared lost, the agent reconnects, and
/// the spool keeps every record for the next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_reading_is_a_lost_link_not_a_stalled_loop() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(&dir.path().join("spool.db"), SpoolCaps::default())
        .await
        .unwrap();
    // About 40 MB waiting: far more than the socket buffers between agent and server hold.
    let pad = "x".repeat(100_000);
    for i in 0..400 {
        let record = json!({ "body": { "type": "status", "i": i }, "pad": pad });
        spool
            .append(None, RecordClass::Event, &record)
            .await
            .unwrap();
    }

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (welcomed_tx, mut welcomed) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut number = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            number += 1;
            tokio::spawn(deaf_server(tcp, number, welcomed_tx.clone()));
        }
    });

    let (stop_tx, stop_rx) = link::stop_signal();
    let agent = tokio::spawn(link::run(
        config(&format!("http://{addr}"), spool.clone()),
        stop_rx,
    ));
    let first = tokio::time::timeout(Duration::from_secs(10), welcomed.recv())
        .await
        .expect("the agent connects");
    assert_eq!(first, Some(1));
    // Lost within the dead-link window (3 heartbeat periods) of the last progress, then back
    // after the backoff (at most 200 ms).
    let second = tokio::time::timeout(Duration::from_secs(10), welcomed.recv())
        .await
        .expect("the stalled link is declared lost and the agent reconnects");
    assert_eq!(second, Some(2));

    // The loop is not stalled: a stop is honoured promptly (goodbye is best effort here).
    stop_tx.send(true).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), agent)
        .await
        .expect("the agent stops promptly");
    assert!(matches!(ended, Ok(Ok(()))), "{ended:?}");
    // Nothing was acknowledged: every record still waits in the spool.
    assert_eq!(spool.backlog().await.unwrap().0, 400);
}

// ---------------------------------------------------------------------------------------------
// spool first: what the lab records is on disk before anything else holds it

/// A compiled program of `steps` holds of `hold_s` lab seconds each (40 lab-s = 40 ms wall in
/// the virtual lab at 1000×): two records a step.
fn hold_program(steps: usize, hold_s: f64) -> serde_json::Value {
    let steps: Vec<serde_json::Value> = (1..=steps)
        .map(|id| {
            json!({
                "id": id,
                "request": { "jsonrpc": "2.0", "id": id, "method": "H.hold", "params": { "time": hold_s } },
                "after": if id == 1 { vec![] } else { vec![id - 1] },
                "start_ms": 0, "duration_ms": 0, "yields": [], "line": 1
            })
        })
        .collect();
    json!({ "format": 1, "recipe": null, "lab": "paper-lab", "variables": {},
            "estimated_duration_ms": 0, "steps": steps })
}

/// Answers `hello`, asks for `program`, reads (never acknowledging) until a record of the run
/// arrives, reports it, then stops reading for good (heartbeats keep the link from looking
/// silent).
async fn run_then_go_deaf(
    tcp: TcpStream,
    program: serde_json::Value,
    deaf: mpsc::UnboundedSender<()>,
) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let mut welcomed = false;
    while let Some(Ok(frame)) = ws.next().await {
        let WsMessage::Text(text) = frame else {
            continue;
        };
        let message = Message::parse(text.as_str());
        if !welcomed && matches!(&message, Ok(Message::Request(r)) if r.id == Id::Number(1)) {
            welcomed = true;
            let welcome = Message::result(
                Id::Number(1),
                json!({ "lab_id": "lab-1", "generation": 1, "heartbeat_ms": 10_000 }),
            );
            let run = json!({ "jsonrpc": "2.0", "id": 2, "method": "program.run",
                "params": { "program_id": "run-1", "program": program } });
            if ws.send(WsMessage::text(welcome.to_json())).await.is_err()
                || ws.send(WsMessage::text(run.to_string())).await.is_err()
            {
                return;
            }
        }
        if matches!(&message, Ok(Message::Notification(n)) if n.params["program_id"] == "run-1") {
            break;
        }
    }
    let _ = deaf.send(());
    let heartbeat = json!({ "jsonrpc": "2.0", "method": "heartbeat", "params": { "time_ms": 0 } });
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if ws
            .send(WsMessage::text(heartbeat.to_string()))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// The issue: records waited in in-memory channels (the executor's, then the link's outbound
/// queue) until the link's loop, busy or blocked in a send, took them to the spool; a SIGKILL
/// lost whatever waited there. Now the program's task writes each record to the spool before
/// the executor goes on, and the loop learns from a notification. Here the loop is blocked in
/// a send for seconds (a peer that stopped reading, 40 MB to send) while the lab keeps
/// recording; the agent is then SIGKILLed: the spool holds the run's records up to the kill,
/// with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_reach_the_spool_while_the_link_is_blocked_so_a_sigkill_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let spool_path = dir.path().join("spool.db");
    let credential = dir.path().join("credential.json");
    std::fs::write(
        &credential,
        json!({ "lab_id": "lab-1", "credential_id": "cred", "secret": "secret" }).to_string(),
    )
    .unwrap();
    let lab = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("examples/agent-lab-virtual.toml");

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (deaf_tx, mut deaf) = mpsc::unbounded_channel();
    let program = hold_program(5000, 40.0);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(run_then_go_deaf(tcp, program.clone(), deaf_tx.clone()));
        }
    });
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_maosic-agent"))
        .args(["run", "--server", &format!("http://{addr}"), "--credential"])
        .arg(&credential)
        .arg("--lab")
        .arg(&lab)
        .arg("--spool")
        .arg(&spool_path)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let agent_log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();

    tokio::time::timeout(Duration::from_secs(30), deaf.recv())
        .await
        .unwrap_or_else(|_| panic!("the run started\n{}", agent_log()));
    // 40 MB land in the spool: the link's next drain blocks in a send to the deaf peer (for up
    // to its 30 s window), while the lab keeps recording.
    let spool = Spool::open(&spool_path, SpoolCaps::default())
        .await
        .unwrap();
    let pad = "x".repeat(100_000);
    for i in 0..400 {
        let record = json!({ "body": { "type": "status", "i": i }, "pad": pad });
        spool
            .append(None, RecordClass::Event, &record)
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let killed_ms = maosic_agent::now_ms();
    agent.kill().unwrap();
    agent.wait().unwrap();

    let log = agent_log();
    assert!(!log.contains("link lost"), "the link stayed blocked: {log}");
    let records = spool.after(0, 100_000).await.unwrap();
    let of_run: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r.program_id.as_deref() == Some("run-1"))
        .map(|r| &r.record)
        .collect();
    let last_ms = of_run
        .iter()
        .filter_map(|r| r["unix_ms"].as_i64())
        .max()
        .unwrap();
    // Steps 1..=k each started and succeeded, in order, nothing missing.
    let steps: Vec<(u64, &str)> = of_run
        .iter()
        .filter_map(|r| Some((r["step"].as_u64()?, r["body"]["type"].as_str()?)))
        .collect();
    let last_step = steps.last().map_or(0, |s| s.0);
    let expected: Vec<(u64, &str)> = (1..=last_step)
        .flat_map(|s| [(s, "step_started"), (s, "step_succeeded")])
        .take(steps.len())
        .collect();
    println!(
        "SIGKILL after the link had been blocked ~4 s: {} records of the run in the spool (steps 1..={last_step}), \
         the last recorded {} ms before the kill",
        of_run.len(),
        killed_ms - last_ms
    );
    assert_eq!(steps, expected, "the run's records, gapless");
    assert!(
        killed_ms - last_ms < 1000,
        "the lab recorded until the kill, but the spool stops {} ms before it",
        killed_ms - last_ms
    );
}
