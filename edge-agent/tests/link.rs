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
