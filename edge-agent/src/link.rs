//! The agent's link to the cloud: one event loop that owns the WebSocket. It connects with the
//! lab credential, says `hello` (version + the lab's devices), sends a heartbeat every period,
//! treats three silent periods as a dead link, reconnects with jittered exponential backoff, and
//! says `goodbye` on a clean shutdown.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use maosic_lab::config::LinkLossPolicy;
use maosic_lab::executor::ExecOptions;
use maosic_lab::lab::Lab;
use maosic_schema::capability::LabDescriptor;
use maosic_schema::program::Program;
use maosic_schema::protocol::{
    error_code, method, AgentCredentialFile, DeviceCallParams, DeviceSummary, GoodbyeParams,
    HeartbeatParams, HelloParams, HelloResult, Id, Message, ProgramCancelParams, ProgramRunParams,
    RecordParams, Request, AGENT_WS_PATH,
};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;

/// Errors that end the link for good (retrying cannot help).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The server URL is unusable.
    #[error("invalid server URL {0:?}: expected http(s)://HOST[:PORT] or ws(s)://HOST[:PORT]")]
    BadUrl(String),
    /// The server refused the credential.
    #[error("the server refused this agent's credential (HTTP {0}); re-enroll the agent")]
    Refused(u16),
}

/// Why one connection ended.
#[derive(Debug)]
enum Ended {
    /// Shutdown requested; goodbye sent.
    Shutdown,
    /// The link failed; reconnect.
    Lost(String),
}

/// Settings of the link.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Server base URL (http(s):// or ws(s)://).
    pub server: String,
    /// The lab credential.
    pub credential: AgentCredentialFile,
    /// The lab's capability descriptor, announced in `hello` (from the lab when one is given).
    pub descriptor: Option<LabDescriptor>,
    /// The lab this agent runs; without one, the agent only keeps presence.
    pub lab: Option<Arc<Lab>>,
    /// First reconnect delay.
    pub backoff_base: Duration,
    /// Largest reconnect delay.
    pub backoff_cap: Duration,
    /// Time allowed for connect + hello.
    pub connect_timeout: Duration,
}

/// Turns the configured server URL into the gateway's WebSocket URL.
pub fn gateway_url(server: &str) -> Result<String, LinkError> {
    let bad = || LinkError::BadUrl(server.to_owned());
    let mut url = url::Url::parse(server.trim()).map_err(|_| bad())?;
    let scheme = match url.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        _ => return Err(bad()),
    };
    if url.host_str().is_none() {
        return Err(bad());
    }
    url.set_scheme(scheme).map_err(|_| bad())?;
    url.set_path(AGENT_WS_PATH);
    url.set_query(None);
    Ok(url.to_string())
}

fn hello_params(descriptor: Option<&LabDescriptor>) -> HelloParams {
    let devices = descriptor
        .map(|d| {
            d.devices
                .iter()
                .map(|dev| DeviceSummary {
                    name: dev.symbol.clone(),
                    kind: dev.kind.as_str().to_owned(),
                })
                .collect()
        })
        .unwrap_or_default();
    HelloParams {
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        devices,
        descriptor: descriptor
            .and_then(|d| serde_json::to_value(d).ok())
            .unwrap_or(serde_json::Value::Null),
    }
}

/// A handle that asks the link to stop: the connected link says `goodbye` first.
pub fn stop_signal() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}

/// Runs the link until `stop` turns true. Returns `Err` only for permanent failures.
pub async fn run(config: LinkConfig, mut stop: watch::Receiver<bool>) -> Result<(), LinkError> {
    let url = gateway_url(&config.server)?;
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_cap);
    let mut rng = rand::rng();
    let mut work = Work::new(config.lab.clone());
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let ended = connect_and_serve(&url, &config, &mut backoff, &mut work, stop.clone()).await?;
        if let Some(lab) = &work.lab {
            // Local safety applies the running programs' link-loss policies.
            let _ = lab.link_lost().await;
        }
        match ended {
            Ended::Shutdown => return Ok(()),
            Ended::Lost(reason) => {
                let delay = backoff.next_delay(&mut rng);
                warn!(%reason, delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "link lost; reconnecting");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => return Ok(()),
                }
            }
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn send(socket: &mut Socket, message: &Message) -> Result<(), tungstenite::Error> {
    socket.send(WsMessage::text(message.to_json())).await
}

/// Connects, says hello, and serves the connection until it is lost or `stop` turns true.
async fn connect_and_serve(
    url: &str,
    config: &LinkConfig,
    backoff: &mut Backoff,
    work: &mut Work,
    mut stop: watch::Receiver<bool>,
) -> Result<Ended, LinkError> {
    let mut request = url
        .into_client_request()
        .map_err(|_| LinkError::BadUrl(url.to_owned()))?;
    let token = HeaderValue::from_str(&format!("Bearer {}", config.credential.bearer_token()))
        .map_err(|_| LinkError::Refused(401))?;
    request.headers_mut().insert("authorization", token);

    let connect = tokio::select! {
        connect = tokio::time::timeout(
            config.connect_timeout,
            tokio_tungstenite::connect_async(request),
        ) => connect,
        _ = stop.changed() => return Ok(Ended::Shutdown),
    };
    let mut socket = match connect {
        Err(_) => return Ok(Ended::Lost("connect timed out".into())),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(LinkError::Refused(status.as_u16()));
            }
            return Ok(Ended::Lost(format!("server answered HTTP {status}")));
        }
        Ok(Err(e)) => return Ok(Ended::Lost(format!("connect failed: {e}"))),
        Ok(Ok((socket, _))) => socket,
    };

    let descriptor = match &config.lab {
        Some(lab) => Some(lab.descriptor()),
        None => config.descriptor.clone(),
    };
    let hello = Message::request(
        Id::Number(1),
        method::HELLO,
        hello_params(descriptor.as_ref()),
    );
    if let Err(e) = send(&mut socket, &hello).await {
        return Ok(Ended::Lost(format!("hello not sent: {e}")));
    }
    let welcome = match tokio::time::timeout(config.connect_timeout, wait_hello(&mut socket)).await
    {
        Ok(Ok(welcome)) => welcome,
        Ok(Err(reason)) => return Ok(Ended::Lost(reason)),
        Err(_) => return Ok(Ended::Lost("no answer to hello".into())),
    };
    backoff.reset();
    info!(
        lab.id = %welcome.lab_id,
        generation = welcome.generation,
        heartbeat_ms = welcome.heartbeat_ms,
        "connected to the cloud"
    );
    if let Some(lab) = &work.lab {
        lab.link_restored();
    }
    serve(&mut socket, &welcome, work, stop).await
}

async fn wait_hello(socket: &mut Socket) -> Result<HelloResult, String> {
    while let Some(frame) = socket.next().await {
        let frame = frame.map_err(|e| format!("link error before hello: {e}"))?;
        let WsMessage::Text(text) = frame else {
            continue;
        };
        match Message::parse(text.as_str()) {
            Ok(Message::Response(r)) if r.id == Some(Id::Number(1)) => {
                if let Some(err) = r.error {
                    return Err(format!("hello refused: {}", err.message));
                }
                return serde_json::from_value(r.result.unwrap_or_default())
                    .map_err(|e| format!("malformed hello result: {e}"));
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "ignoring malformed message before hello"),
        }
    }
    Err("connection closed before hello".into())
}

async fn serve(
    socket: &mut Socket,
    welcome: &HelloResult,
    work: &mut Work,
    mut stop: watch::Receiver<bool>,
) -> Result<Ended, LinkError> {
    // What could not be sent on the previous connection goes first.
    while let Some(message) = work.unsent.pop_front() {
        if let Err(e) = send(socket, &message).await {
            work.unsent.push_front(message);
            return Ok(Ended::Lost(format!("send failed: {e}")));
        }
    }
    let period = Duration::from_millis(welcome.heartbeat_ms.max(50));
    let dead_after = period * 3;
    let mut heartbeat = tokio::time::interval_at(Instant::now() + period, period);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            frame = socket.next() => {
                last_heard = Instant::now();
                match frame {
                    Some(Ok(WsMessage::Text(text))) => {
                        if let Some(reply) = work.handle_text(text.as_str()) {
                            if let Err(e) = send(socket, &reply).await {
                                return Ok(Ended::Lost(format!("send failed: {e}")));
                            }
                        }
                    }
                    Some(Ok(WsMessage::Close(frame))) => {
                        return Ok(Ended::Lost(format!("server closed the link: {frame:?}")));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Ok(Ended::Lost(format!("link error: {e}"))),
                    None => return Ok(Ended::Lost("link closed".into())),
                }
            }
            Some(outbound) = work.outbound_rx.recv() => {
                let message = work.envelope(outbound);
                if let Err(e) = send(socket, &message).await {
                    work.unsent.push_back(message);
                    return Ok(Ended::Lost(format!("send failed: {e}")));
                }
            }
            _ = heartbeat.tick() => {
                let note = Message::notification(method::HEARTBEAT, HeartbeatParams { time_ms: crate::now_ms() });
                if let Err(e) = send(socket, &note).await {
                    return Ok(Ended::Lost(format!("heartbeat not sent: {e}")));
                }
            }
            () = tokio::time::sleep_until(last_heard + dead_after) => {
                return Ok(Ended::Lost(format!("no traffic from the server for {} ms", dead_after.as_millis())));
            }
            _ = stop.changed() => {
                let bye = Message::notification(method::GOODBYE, GoodbyeParams { reason: "agent shutting down".into() });
                let _ = send(socket, &bye).await;
                let _ = socket.close(None).await;
                // Drain until the server closes so the goodbye is processed before we exit.
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while let Some(Ok(_)) = socket.next().await {}
                }).await;
                info!("said goodbye to the cloud");
                return Ok(Ended::Shutdown);
            }
        }
    }
}

/// Something the lab's tasks want sent to the cloud.
#[derive(Debug)]
enum Outbound {
    /// A record of a program run (or of the lab).
    Record {
        program_id: Option<String>,
        record: Value,
    },
    /// The answer to a request; `finished` names a program run that ended with it.
    Reply {
        message: Message,
        finished: Option<String>,
    },
}

/// The agent's work that outlives a connection: the lab, running programs, and what waits to
/// be sent. Records are numbered `(epoch, seq)` as they leave.
struct Work {
    lab: Option<Arc<Lab>>,
    running: HashMap<String, CancellationToken>,
    outbound_tx: mpsc::Sender<Outbound>,
    outbound_rx: mpsc::Receiver<Outbound>,
    unsent: VecDeque<Message>,
    epoch: String,
    seq: u64,
}

impl Work {
    fn new(lab: Option<Arc<Lab>>) -> Self {
        let (outbound_tx, outbound_rx) = mpsc::channel(1024);
        let epoch: [u8; 8] = rand::random();
        Work {
            lab,
            running: HashMap::new(),
            outbound_tx,
            outbound_rx,
            unsent: VecDeque::new(),
            epoch: hex_string(&epoch),
            seq: 0,
        }
    }

    /// Wraps an outbound item into its wire message.
    fn envelope(&mut self, outbound: Outbound) -> Message {
        match outbound {
            Outbound::Record { program_id, record } => {
                self.seq += 1;
                Message::notification(
                    method::RECORD,
                    RecordParams {
                        epoch: self.epoch.clone(),
                        seq: self.seq,
                        program_id,
                        record,
                    },
                )
            }
            Outbound::Reply { message, finished } => {
                if let Some(program_id) = finished {
                    self.running.remove(&program_id);
                }
                message
            }
        }
    }

    /// Answers one text frame from the cloud; returns an immediate reply, if any. Long work
    /// (programs, device calls) runs on tasks that answer through the outbound queue.
    fn handle_text(&mut self, text: &str) -> Option<Message> {
        match Message::parse(text) {
            Ok(Message::Request(r)) => self.handle_request(r),
            Ok(Message::Notification(_)) | Ok(Message::Response(_)) => None,
            Err(e) => {
                debug!(error = %e, "malformed message from the cloud");
                Some(Message::error(None, error_code::PARSE_ERROR, e.to_string()))
            }
        }
    }

    fn handle_request(&mut self, request: Request) -> Option<Message> {
        let id = request.id;
        let Some(lab) = self.lab.clone() else {
            return Some(Message::error(
                Some(id),
                error_code::METHOD_NOT_FOUND,
                format!(
                    "this agent runs no lab, so it does not offer {}",
                    request.method
                ),
            ));
        };
        let invalid = |id, e: serde_json::Error| {
            Some(Message::error(
                Some(id),
                error_code::INVALID_PARAMS,
                e.to_string(),
            ))
        };
        let out = self.outbound_tx.clone();
        match request.method.as_str() {
            method::PROGRAM_RUN => {
                let params: ProgramRunParams = match serde_json::from_value(request.params) {
                    Ok(p) => p,
                    Err(e) => return invalid(id, e),
                };
                let program: Program = match serde_json::from_value(params.program) {
                    Ok(p) => p,
                    Err(e) => return invalid(id, e),
                };
                let link_loss = match params.link_loss.as_deref() {
                    None => None,
                    Some("continue") => Some(LinkLossPolicy::Continue),
                    Some("hold") => Some(LinkLossPolicy::Hold),
                    Some("safe_stop") => Some(LinkLossPolicy::SafeStop),
                    Some(other) => {
                        return Some(Message::error(
                            Some(id),
                            error_code::INVALID_PARAMS,
                            format!("unknown link_loss {other:?}: continue, hold or safe_stop"),
                        ))
                    }
                };
                if self.running.contains_key(&params.program_id) {
                    return Some(Message::error(
                        Some(id),
                        error_code::INVALID_REQUEST,
                        format!("program {} is already running", params.program_id),
                    ));
                }
                let cancel = CancellationToken::new();
                self.running
                    .insert(params.program_id.clone(), cancel.clone());
                let program_id = params.program_id;
                info!(program.id = %program_id, steps = program.steps.len(), "program run requested");
                tokio::spawn(async move {
                    let (records_tx, mut records_rx) = mpsc::channel(64);
                    let forward_out = out.clone();
                    let forward_id = program_id.clone();
                    let forward = tokio::spawn(async move {
                        while let Some(record) = records_rx.recv().await {
                            let record = serde_json::to_value(record).unwrap_or(Value::Null);
                            let item = Outbound::Record {
                                program_id: Some(forward_id.clone()),
                                record,
                            };
                            if forward_out.send(item).await.is_err() {
                                break;
                            }
                        }
                    });
                    let options = ExecOptions {
                        program_id: Some(program_id.clone()),
                        link_loss,
                    };
                    let report = lab.run_program(&program, options, records_tx, cancel).await;
                    // Every record is queued before the answer.
                    let _ = forward.await;
                    info!(program.id = %program_id, outcome = ?report.outcome, "program run ended");
                    let _ = out
                        .send(Outbound::Reply {
                            message: Message::result(id, report),
                            finished: Some(program_id),
                        })
                        .await;
                });
                None
            }
            method::PROGRAM_CANCEL => {
                let params: ProgramCancelParams = match serde_json::from_value(request.params) {
                    Ok(p) => p,
                    Err(e) => return invalid(id, e),
                };
                let found = self
                    .running
                    .get(&params.program_id)
                    .map(CancellationToken::cancel);
                Some(Message::result(id, json!({ "canceled": found.is_some() })))
            }
            method::DEVICE_CALL => {
                let params: DeviceCallParams = match serde_json::from_value(request.params) {
                    Ok(p) => p,
                    Err(e) => return invalid(id, e),
                };
                tokio::spawn(async move {
                    let message = match lab.call(&params.method, &params.params).await {
                        Ok(output) => {
                            let measurements: Vec<Value> = output
                                .measurements
                                .iter()
                                .map(|(name, m)| json!({ "name": name, "measurement": m }))
                                .collect();
                            Message::result(
                                id,
                                json!({ "result": output.result, "measurements": measurements }),
                            )
                        }
                        Err(e) => {
                            let mut reply =
                                Message::error(Some(id), error_code::INVALID_PARAMS, e.to_string());
                            if let Message::Response(r) = &mut reply {
                                if let Some(err) = &mut r.error {
                                    err.data = Some(json!({ "code": e.code() }));
                                }
                            }
                            reply
                        }
                    };
                    let _ = out
                        .send(Outbound::Reply {
                            message,
                            finished: None,
                        })
                        .await;
                });
                None
            }
            method::ESTOP => {
                for token in self.running.values() {
                    token.cancel();
                }
                tokio::spawn(async move {
                    let report = lab.estop().await;
                    warn!("software stop requested by the cloud");
                    let _ = out
                        .send(Outbound::Reply {
                            message: Message::result(id, report),
                            finished: None,
                        })
                        .await;
                });
                None
            }
            other => Some(Message::error(
                Some(id),
                error_code::METHOD_NOT_FOUND,
                format!("this agent does not offer {other}"),
            )),
        }
    }
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_map_to_the_gateway() {
        assert_eq!(
            gateway_url("http://127.0.0.1:8080").unwrap(),
            "ws://127.0.0.1:8080/agent/v1/ws"
        );
        assert_eq!(
            gateway_url("https://lab.example.org/").unwrap(),
            "wss://lab.example.org/agent/v1/ws"
        );
        assert!(gateway_url("ftp://x").is_err());
        assert!(gateway_url("not a url").is_err());
    }

    #[tokio::test]
    async fn requests_without_a_lab_get_an_error_reply() {
        let mut work = Work::new(None);
        let reply = work
            .handle_text(r#"{"jsonrpc":"2.0","id":3,"method":"program.run","params":{}}"#)
            .unwrap();
        assert!(matches!(reply, Message::Response(r) if r.error.is_some()));
        assert!(work
            .handle_text(r#"{"jsonrpc":"2.0","method":"ping"}"#)
            .is_none());
        assert!(matches!(
            work.handle_text("{").unwrap(),
            Message::Response(r) if r.error.is_some()
        ));
    }

    #[test]
    fn records_are_numbered_densely_within_one_epoch() {
        let mut work = Work::new(None);
        let seqs: Vec<u64> = (0..3)
            .map(|_| {
                let m = work.envelope(Outbound::Record {
                    program_id: None,
                    record: Value::Null,
                });
                match m {
                    Message::Notification(n) => n.params["seq"].as_u64().unwrap(),
                    _ => panic!("record is a notification"),
                }
            })
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(work.epoch.len(), 16);
    }
}
