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
    error_code, method, AckParams, AgentCredentialFile, DeviceCallParams, DeviceSummary,
    GoodbyeParams, HeartbeatParams, HelloParams, HelloResult, Id, Message, ProgramCancelParams,
    ProgramRunParams, RecordParams, Request, ThrottleParams, AGENT_WS_PATH,
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
use crate::spool::{RecordClass, Spool, SpoolError};
use crate::transport::{BoxIo, Connector, Route};

/// Most spooled records sent per turn of the event loop, so a backlog drains at a bounded rate
/// and heartbeats and live traffic are not starved (RELIABILITY rule 3).
const DRAIN_BATCH: u32 = 128;

/// Errors that end the link for good (retrying cannot help).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The server URL is unusable.
    #[error("invalid server URL {0:?}: expected http(s)://HOST[:PORT] or ws(s)://HOST[:PORT]")]
    BadUrl(String),
    /// The transport settings do not fit the URL.
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    /// The server refused the credential.
    #[error("the server refused this agent's credential (HTTP {0}); re-enroll the agent")]
    Refused(u16),
    /// The credential file holds characters that cannot travel in an HTTP header.
    #[error("the agent's credential is malformed (not a valid header value); re-enroll the agent")]
    BadCredential,
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
    /// The durable outbox.
    pub spool: Spool,
    /// First reconnect delay.
    pub backoff_base: Duration,
    /// Largest reconnect delay.
    pub backoff_cap: Duration,
    /// Time allowed for connect + hello.
    pub connect_timeout: Duration,
    /// TLS client settings; required for https:// and wss:// servers, refused for plain ones.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The path connections take (direct TCP, or an SSH tunnel).
    pub route: Route,
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

fn hello_params(descriptor: Option<&LabDescriptor>, running: Vec<String>) -> HelloParams {
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
        running,
    }
}

/// A handle that asks the link to stop: the connected link says `goodbye` first.
pub fn stop_signal() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}

/// Runs the link until `stop` turns true. Returns `Err` only for permanent failures.
pub async fn run(config: LinkConfig, mut stop: watch::Receiver<bool>) -> Result<(), LinkError> {
    let url = gateway_url(&config.server)?;
    let parsed = url::Url::parse(&url).map_err(|_| LinkError::BadUrl(url.clone()))?;
    let connector = Connector::new(&parsed, config.tls.clone(), config.route.clone())?;
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_cap);
    let mut rng = rand::rng();
    let mut work = Work::new(config.lab.clone(), config.spool.clone());
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let ended = connect_and_serve(
            &url,
            &connector,
            &config,
            &mut backoff,
            &mut work,
            stop.clone(),
        )
        .await?;
        if let Some(lab) = &work.lab {
            // Local safety applies the running programs' link-loss policies.
            let _ = lab.link_lost().await;
        }
        match ended {
            Ended::Shutdown => return Ok(()),
            Ended::Lost(reason) => {
                let delay = backoff.next_delay(&mut rng);
                warn!(%reason, delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "link lost; reconnecting");
                // Offline, the lab's records still go to the spool (RELIABILITY rule 2): the
                // program neither stalls on the in-memory queue nor loses it to a crash.
                let wake = tokio::time::sleep(delay);
                tokio::pin!(wake);
                loop {
                    tokio::select! {
                        () = &mut wake => break,
                        _ = stop.changed() => return Ok(()),
                        Some(outbound) = work.outbound_rx.recv() => work.spool_offline(outbound).await,
                    }
                }
            }
        }
    }
}

type Socket = tokio_tungstenite::WebSocketStream<BoxIo>;

async fn send(socket: &mut Socket, message: &Message) -> Result<(), tungstenite::Error> {
    socket.send(WsMessage::text(message.to_json())).await
}

/// Connects, says hello, and serves the connection until it is lost or `stop` turns true.
async fn connect_and_serve(
    url: &str,
    connector: &Connector,
    config: &LinkConfig,
    backoff: &mut Backoff,
    work: &mut Work,
    mut stop: watch::Receiver<bool>,
) -> Result<Ended, LinkError> {
    let mut request = url
        .into_client_request()
        .map_err(|_| LinkError::BadUrl(url.to_owned()))?;
    let token = HeaderValue::from_str(&format!("Bearer {}", config.credential.bearer_token()))
        .map_err(|_| LinkError::BadCredential)?;
    request.headers_mut().insert("authorization", token);

    let connecting = tokio::time::timeout(config.connect_timeout, async {
        let stream = connector.connect().await.map_err(tungstenite::Error::Io)?;
        tokio_tungstenite::client_async(request, stream).await
    });
    tokio::pin!(connecting);
    // While connecting, the lab's records still go to the spool (as while waiting to retry).
    let connect = loop {
        tokio::select! {
            connect = &mut connecting => break connect,
            _ = stop.changed() => return Ok(Ended::Shutdown),
            Some(outbound) = work.outbound_rx.recv() => work.spool_offline(outbound).await,
        }
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
        hello_params(descriptor.as_ref(), work.running.keys().cloned().collect()),
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
    // Answers that could not be sent on the previous connection go first; then every record
    // the cloud has not acknowledged is sent again, in order (the cloud stores each once).
    while let Some(message) = work.unsent.pop_front() {
        if let Err(e) = send(socket, &message).await {
            work.unsent.push_front(message);
            return Ok(Ended::Lost(format!("send failed: {e}")));
        }
    }
    work.sent_hi = 0;
    let mut drain = tokio::time::interval(Duration::from_millis(20));
    let mut backlog = true;
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
                        if let Some(reply) = work.handle_text(text.as_str()).await {
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
                if let Some(message) = work.accept(outbound).await {
                    // Records go before the answer that ends their program.
                    loop {
                        match work.drain(socket).await {
                            Ok(true) => {}
                            Ok(false) => break,
                            Err(reason) => {
                                work.unsent.push_back(message);
                                return Ok(Ended::Lost(reason));
                            }
                        }
                    }
                    if let Err(e) = send(socket, &message).await {
                        work.unsent.push_back(message);
                        return Ok(Ended::Lost(format!("send failed: {e}")));
                    }
                }
                backlog = true;
            }
            _ = drain.tick(), if backlog || work.throttled() => {
                match work.drain(socket).await {
                    Ok(more) => backlog = more,
                    Err(reason) => return Ok(Ended::Lost(reason)),
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
                    // The server's close frame completes the handshake; no need to wait for
                    // it to tear down TCP.
                    while let Some(Ok(frame)) = socket.next().await {
                        if frame.is_close() {
                            break;
                        }
                    }
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

/// The agent's work that outlives a connection: the lab, running programs, the durable spool
/// of records, and answers waiting to be sent.
struct Work {
    lab: Option<Arc<Lab>>,
    running: HashMap<String, CancellationToken>,
    outbound_tx: mpsc::Sender<Outbound>,
    outbound_rx: mpsc::Receiver<Outbound>,
    unsent: VecDeque<Message>,
    spool: Spool,
    /// Highest seq sent on the current connection.
    sent_hi: u64,
    /// The cloud throttled the lab: no records are sent before this instant (they wait in the
    /// spool, and are sent again from the first unacknowledged one).
    paused_until: Option<Instant>,
}

impl Work {
    fn new(lab: Option<Arc<Lab>>, spool: Spool) -> Self {
        let (outbound_tx, outbound_rx) = mpsc::channel(1024);
        Work {
            lab,
            running: HashMap::new(),
            outbound_tx,
            outbound_rx,
            unsent: VecDeque::new(),
            spool,
            sent_hi: 0,
            paused_until: None,
        }
    }

    /// Whether the cloud asked to hold records back (a pause not yet over).
    fn throttled(&self) -> bool {
        self.paused_until.is_some()
    }

    /// Takes one item from the lab's tasks: a record goes to the spool (it is sent by
    /// [`Work::drain`]); an answer is returned to be sent now.
    /// Takes the lab's output while there is no connection: records go to the spool, answers
    /// wait for the next connection.
    async fn spool_offline(&mut self, outbound: Outbound) {
        if let Some(message) = self.accept(outbound).await {
            self.unsent.push_back(message);
        }
    }

    async fn accept(&mut self, outbound: Outbound) -> Option<Message> {
        match outbound {
            Outbound::Record { program_id, record } => {
                let class = if record["body"]["type"] == "measurement" {
                    RecordClass::Measurement
                } else {
                    RecordClass::Event
                };
                match self
                    .spool
                    .append(program_id.as_deref(), class, &record)
                    .await
                {
                    Ok(_) => {}
                    Err(SpoolError::BufferFull { rows, bytes }) => {
                        warn!(rows, bytes, "spool full: measurement refused");
                        let alarm = json!({
                            "unix_ms": crate::now_ms(),
                            "body": {
                                "type": "safety",
                                "event": "buffer_full",
                                "detail": format!("measurement refused: {rows} records / {bytes} bytes await acknowledgement"),
                            },
                        });
                        if let Err(e) = self
                            .spool
                            .append(program_id.as_deref(), RecordClass::Event, &alarm)
                            .await
                        {
                            warn!(error = %e, "spool alarm not written");
                        }
                    }
                    Err(e) => warn!(error = %e, "record not spooled"),
                }
                None
            }
            Outbound::Reply { message, finished } => {
                if let Some(program_id) = finished {
                    self.running.remove(&program_id);
                }
                Some(message)
            }
        }
    }

    /// Sends the next batch of unsent spooled records; `Ok(true)` when more are waiting.
    async fn drain(&mut self, socket: &mut Socket) -> Result<bool, String> {
        if let Some(until) = self.paused_until {
            if Instant::now() < until {
                return Ok(false);
            }
            self.paused_until = None;
        }
        let batch = self
            .spool
            .after(self.sent_hi, DRAIN_BATCH)
            .await
            .map_err(|e| format!("spool unreadable: {e}"))?;
        let full = batch.len() == DRAIN_BATCH as usize;
        for spooled in batch {
            let message = Message::notification(
                method::RECORD,
                RecordParams {
                    epoch: self.spool.epoch().to_owned(),
                    seq: spooled.seq,
                    program_id: spooled.program_id,
                    record: spooled.record,
                },
            );
            send(socket, &message)
                .await
                .map_err(|e| format!("send failed: {e}"))?;
            self.sent_hi = spooled.seq;
        }
        Ok(full)
    }

    /// Answers one text frame from the cloud; returns an immediate reply, if any. Long work
    /// (programs, device calls) runs on tasks that answer through the outbound queue.
    async fn handle_text(&mut self, text: &str) -> Option<Message> {
        match Message::parse(text) {
            Ok(Message::Request(r)) => self.handle_request(r).await,
            Ok(Message::Notification(n)) if n.method == method::ACK => {
                match serde_json::from_value::<AckParams>(n.params) {
                    Ok(ack) if ack.epoch == self.spool.epoch() => {
                        if let Err(e) = self.spool.ack(ack.seq_hi).await {
                            warn!(error = %e, "acknowledged records not deleted from the spool");
                        }
                    }
                    Ok(ack) => debug!(epoch = %ack.epoch, "acknowledgement for another epoch"),
                    Err(e) => debug!(error = %e, "malformed acknowledgement"),
                }
                None
            }
            Ok(Message::Notification(n)) if n.method == method::THROTTLE => {
                match serde_json::from_value::<ThrottleParams>(n.params) {
                    Ok(t) => {
                        // Everything not acknowledged is sent again, from the first, after
                        // the pause: the cloud stored nothing past its last acknowledgement.
                        let pause = Duration::from_millis(t.retry_after_ms.clamp(10, 3_600_000));
                        info!(reason = %t.reason, pause_ms = pause.as_millis() as u64,
                              "the cloud throttled this lab's records; they wait in the spool");
                        self.sent_hi = 0;
                        self.paused_until = Some(Instant::now() + pause);
                    }
                    Err(e) => debug!(error = %e, "malformed throttle"),
                }
                None
            }
            Ok(Message::Notification(_)) | Ok(Message::Response(_)) => None,
            Err(e) => {
                debug!(error = %e, "malformed message from the cloud");
                Some(Message::error(None, error_code::PARSE_ERROR, e.to_string()))
            }
        }
    }

    async fn handle_request(&mut self, request: Request) -> Option<Message> {
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
                        error_code::ALREADY_ACCEPTED,
                        format!("program {} is already running", params.program_id),
                    ));
                }
                // A run past its deadline never starts (and is not remembered as accepted) —
                // unless it was accepted before the deadline, which the re-send must learn.
                if let Some(deadline) = params.deadline_ms.filter(|d| crate::now_ms() > *d) {
                    if matches!(self.spool.was_accepted(&params.program_id).await, Ok(true)) {
                        return Some(Message::error(
                            Some(id),
                            error_code::ALREADY_ACCEPTED,
                            format!("program {} was already accepted", params.program_id),
                        ));
                    }
                    return Some(Message::error(
                        Some(id),
                        error_code::DEADLINE_PASSED,
                        format!(
                            "program {} arrived after its deadline ({deadline} ms since the epoch)",
                            params.program_id
                        ),
                    ));
                }
                // Remembered durably before anything moves: a re-sent run is refused.
                match self
                    .spool
                    .accept_command(&params.program_id, crate::now_ms())
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        return Some(Message::error(
                            Some(id),
                            error_code::ALREADY_ACCEPTED,
                            format!("program {} was already accepted", params.program_id),
                        ))
                    }
                    Err(e) => {
                        warn!(error = %e, "command not recorded; refusing to run it");
                        return Some(Message::error(
                            Some(id),
                            error_code::INTERNAL_ERROR,
                            "the agent could not record the command durably",
                        ));
                    }
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

    async fn work() -> (Work, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool.db"), Default::default())
            .await
            .unwrap();
        (Work::new(None, spool), dir)
    }

    #[tokio::test]
    async fn requests_without_a_lab_get_an_error_reply() {
        let (mut work, _dir) = work().await;
        let reply = work
            .handle_text(r#"{"jsonrpc":"2.0","id":3,"method":"program.run","params":{}}"#)
            .await
            .unwrap();
        assert!(matches!(reply, Message::Response(r) if r.error.is_some()));
        assert!(work
            .handle_text(r#"{"jsonrpc":"2.0","method":"ping"}"#)
            .await
            .is_none());
        assert!(matches!(
            work.handle_text("{").await.unwrap(),
            Message::Response(r) if r.error.is_some()
        ));
    }

    #[tokio::test]
    async fn records_are_spooled_and_acknowledgements_of_this_epoch_delete_them() {
        let (mut work, _dir) = work().await;
        for i in 0..3 {
            let record = json!({ "body": { "type": "measurement" }, "i": i });
            assert!(work
                .accept(Outbound::Record {
                    program_id: None,
                    record
                })
                .await
                .is_none());
        }
        assert_eq!(work.spool.backlog().await.unwrap().0, 3);
        let other = r#"{"jsonrpc":"2.0","method":"ack","params":{"epoch":"ffff","seq_hi":3}}"#;
        work.handle_text(other).await;
        assert_eq!(
            work.spool.backlog().await.unwrap().0,
            3,
            "another epoch's ack"
        );
        let ack = Message::notification(
            method::ACK,
            AckParams {
                epoch: work.spool.epoch().to_owned(),
                seq_hi: 2,
            },
        );
        work.handle_text(&ack.to_json()).await;
        let left: Vec<u64> = work
            .spool
            .after(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(left, [3]);
    }
}
