//! The agent's link to the cloud: one event loop that owns the WebSocket and performs what the
//! protocol's state machine ([`state::LinkState`]) asks for. The loop turns I/O into
//! [`state::Event`]s (a connection came up, a frame arrived, a send completed, the lab's tasks
//! produced an answer, a timer fired) and [`state::Action`]s into I/O (connect, send, read or
//! acknowledge the spool, run a program, apply the link-loss policy). The protocol rules —
//! `hello`, heartbeats, dead-link detection, replay of unacknowledged records, answers after
//! their records, duplicate commands, reconnect backoff — live in `state.rs`, without I/O.
//!
//! Cloud requests that take time (`program.run`, `device.call`, `estop`) run on tasks that
//! answer through a queue, so heartbeats never stall behind a synthesis. The records a run
//! produces are written to the spool by the run's own task before the executor goes on
//! ([`SpoolSink`]), never held in a queue on the way, so a crash loses nothing recorded; the
//! loop only hears that there is something to send, and sends it from the spool.

pub mod state;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use maosic_lab::executor::ExecOptions;
use maosic_lab::lab::Lab;
use maosic_lab::record::{Record, RecordSink};
use maosic_schema::capability::LabDescriptor;
use maosic_schema::protocol::{error_code, AgentCredentialFile, Message, AGENT_WS_PATH};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument as _};

use crate::spool::{RecordClass, Spool, SpoolError};
use crate::transport::{BoxIo, Connector, Route};
use state::{Action, Closure, ConnectFailure, Event, Exit, Incoming, LinkState, Now, Settings};

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
    /// Notified when records were written to the spool outside the link's own tasks (an
    /// operator's fault reset on the control socket): there is something to send.
    pub spooled: Arc<tokio::sync::Notify>,
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

/// A handle that asks the link to stop: the connected link says `goodbye` first.
pub fn stop_signal() -> (watch::Sender<bool>, watch::Receiver<bool>) {
    watch::channel(false)
}

type Socket = tokio_tungstenite::WebSocketStream<BoxIo>;

type Connecting<'a> = Pin<Box<dyn Future<Output = Result<Socket, tungstenite::Error>> + Send + 'a>>;

fn now() -> Now {
    Now {
        at: tokio::time::Instant::now().into_std(),
        unix_ms: crate::now_ms(),
    }
}

/// Runs the link until `stop` turns true. Returns `Err` only for permanent failures.
pub async fn run(config: LinkConfig, mut stop: watch::Receiver<bool>) -> Result<(), LinkError> {
    let url = gateway_url(&config.server)?;
    let parsed = url::Url::parse(&url).map_err(|_| LinkError::BadUrl(url.clone()))?;
    let connector = Connector::new(&parsed, config.tls.clone(), config.route.clone())?;
    if *stop.borrow() {
        return Ok(());
    }
    let mut state = LinkState::new(
        Settings {
            epoch: config.spool.epoch().to_owned(),
            has_lab: config.lab.is_some(),
            backoff_base: config.backoff_base,
            backoff_cap: config.backoff_cap,
            connect_timeout: config.connect_timeout,
        },
        rand::random(),
    );
    let (outbound_tx, mut outbound_rx) = mpsc::channel(1024);
    let mut io = Io {
        config: &config,
        url: &url,
        connector: &connector,
        socket: None,
        connecting: None,
        outbound_tx,
        tokens: HashMap::new(),
    };
    let mut actions = state.start(now());
    let mut stop_seen = false;
    loop {
        if let Some(exit) = io.perform(&mut state, actions).await? {
            return exit;
        }
        let deadline = state.next_deadline().map(tokio::time::Instant::from_std);
        let event = tokio::select! {
            connected = next_connection(&mut io.connecting) => {
                io.connecting = None;
                match connected {
                    Ok(socket) => {
                        io.socket = Some(socket);
                        Event::Connected { descriptor: io.descriptor() }
                    }
                    Err(tungstenite::Error::Http(response)) => {
                        let status = response.status();
                        Event::ConnectFailed(ConnectFailure::Http {
                            status: status.as_u16(),
                            text: status.to_string(),
                        })
                    }
                    Err(e) => Event::ConnectFailed(ConnectFailure::Failed(format!("connect failed: {e}"))),
                }
            }
            frame = next_frame(&mut io.socket) => match frame {
                Some(Ok(WsMessage::Text(text))) => Event::Frame(Incoming::Text(text.as_str().to_owned())),
                Some(Ok(WsMessage::Close(frame))) => Event::Frame(Incoming::Close(format!("{frame:?}"))),
                Some(Ok(_)) => Event::Frame(Incoming::Other),
                Some(Err(e)) => Event::Closed(Closure::Error(e.to_string())),
                None => Event::Closed(Closure::Ended),
            },
            Some(outbound) = outbound_rx.recv() => io.outbound(outbound).await,
            () = config.spooled.notified() => Event::RecordsSpooled,
            _ = stop.changed(), if !stop_seen => {
                stop_seen = true;
                Event::Stop
            }
            () = sleep_until(deadline) => Event::Tick,
        };
        actions = state.handle(now(), event);
    }
}

/// `future`'s output, or `None` when `deadline` passes first.
async fn until<F: Future>(deadline: Option<tokio::time::Instant>, future: F) -> Option<F::Output> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, future).await.ok(),
        None => Some(future.await),
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn next_connection(
    connecting: &mut Option<Connecting<'_>>,
) -> Result<Socket, tungstenite::Error> {
    match connecting {
        Some(connecting) => connecting.await,
        None => std::future::pending().await,
    }
}

async fn next_frame(socket: &mut Option<Socket>) -> Option<Result<WsMessage, tungstenite::Error>> {
    match socket {
        Some(socket) => socket.next().await,
        None => std::future::pending().await,
    }
}

/// What the lab's tasks tell the loop.
#[derive(Debug)]
enum Outbound {
    /// Records were written to the spool: there is something to send.
    Spooled,
    /// The answer to a request; `finished` names a program run that ended with it.
    Reply {
        message: Message,
        finished: Option<String>,
    },
}

/// The I/O side of the link: the connection, the lab, the spool and the tasks running the
/// cloud's requests.
struct Io<'a> {
    config: &'a LinkConfig,
    url: &'a str,
    connector: &'a Connector,
    socket: Option<Socket>,
    connecting: Option<Connecting<'a>>,
    outbound_tx: mpsc::Sender<Outbound>,
    /// Cancel tokens of the program runs executing now.
    tokens: HashMap<String, CancellationToken>,
}

impl<'a> Io<'a> {
    fn descriptor(&self) -> Option<LabDescriptor> {
        match &self.config.lab {
            Some(lab) => Some(lab.descriptor()),
            None => self.config.descriptor.clone(),
        }
    }

    /// Takes one item from the lab's tasks: a record goes to the spool (the state sends it
    /// from there); an answer goes to the state.
    async fn outbound(&mut self, outbound: Outbound) -> Event {
        match outbound {
            Outbound::Spooled => Event::RecordsSpooled,
            Outbound::Reply { message, finished } => {
                if let Some(program_id) = &finished {
                    self.tokens.remove(program_id);
                }
                Event::Reply { message, finished }
            }
        }
    }

    /// Performs `actions` in order; what an action reports goes to the state at once, and the
    /// actions it returns are performed before the rest. `Some` when the link ended.
    async fn perform(
        &mut self,
        state: &mut LinkState,
        actions: Vec<Action>,
    ) -> Result<Option<Result<(), LinkError>>, LinkError> {
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            if let Action::Exit(exit) = action {
                return Ok(Some(match exit {
                    Exit::Stopped => Ok(()),
                    Exit::Refused(status) => Err(LinkError::Refused(status)),
                }));
            }
            let send_deadline = state.send_deadline().map(tokio::time::Instant::from_std);
            if let Some(event) = self.perform_one(action, send_deadline).await? {
                let more = state.handle(now(), event);
                for action in more.into_iter().rev() {
                    queue.push_front(action);
                }
            }
        }
        Ok(None)
    }

    /// Performs one action; a send or close blocked past `send_deadline` is abandoned (a peer
    /// that stops reading must not stall the loop: docs/reliability.md rule 3).
    async fn perform_one(
        &mut self,
        action: Action,
        send_deadline: Option<tokio::time::Instant>,
    ) -> Result<Option<Event>, LinkError> {
        let spool = &self.config.spool;
        Ok(match action {
            Action::Connect => {
                self.connecting = Some(self.connect()?);
                None
            }
            Action::Send { id, message } => match &mut self.socket {
                Some(socket) => {
                    let send = socket.send(WsMessage::text(message.to_json()));
                    Some(match until(send_deadline, send).await {
                        Some(Ok(())) => Event::SendCompleted(id),
                        Some(Err(e)) => Event::SendFailed(id, e.to_string()),
                        None => Event::SendTimedOut(id),
                    })
                }
                None => None,
            },
            Action::Disconnect => {
                self.socket = None;
                self.connecting = None;
                None
            }
            Action::Close => {
                if let Some(socket) = &mut self.socket {
                    let _ = until(send_deadline, socket.close(None)).await;
                }
                None
            }
            Action::ReadSpool { after, limit } => Some(Event::SpoolRead(
                spool.after(after, limit).await.map_err(|e| e.to_string()),
            )),
            Action::AckSpool { seq_hi } => {
                if let Err(e) = spool.ack(seq_hi).await {
                    warn!(error = %e, "acknowledged records not deleted from the spool");
                }
                None
            }
            Action::LookUpCommand { program_id } => {
                let known = spool
                    .known_command(&program_id)
                    .await
                    .map_err(|e| e.to_string());
                Some(Event::CommandLookedUp { program_id, known })
            }
            Action::AcceptCommand { program_id, at_ms } => {
                let acceptance = spool
                    .accept_command(&program_id, at_ms)
                    .await
                    .map_err(|e| e.to_string());
                Some(Event::CommandAccepted {
                    program_id,
                    acceptance,
                })
            }
            Action::RunProgram {
                request,
                program_id,
                program,
                link_loss,
                traceparent,
            } => {
                if let Some(lab) = &self.config.lab {
                    let cancel = CancellationToken::new();
                    self.tokens.insert(program_id.clone(), cancel.clone());
                    info!(program.id = %program_id, steps = program.steps.len(), "program run requested");
                    let options = ExecOptions {
                        program_id: Some(program_id.clone()),
                        link_loss,
                    };
                    let run = Run {
                        request,
                        program_id,
                        program,
                        options,
                        cancel,
                    };
                    let span = info_span!("agent.program.run", program.id = %run.program_id, steps = run.program.steps.len());
                    continue_trace(&span, traceparent.as_deref());
                    tokio::spawn(
                        run_program(lab.clone(), spool.clone(), self.outbound_tx.clone(), run)
                            .instrument(span),
                    );
                }
                None
            }
            Action::CancelProgram { program_id } => {
                if let Some(token) = self.tokens.get(&program_id) {
                    token.cancel();
                }
                None
            }
            Action::CancelAll => {
                for token in self.tokens.values() {
                    token.cancel();
                }
                None
            }
            Action::DeviceCall { request, params } => {
                if let Some(lab) = &self.config.lab {
                    let (lab, out) = (lab.clone(), self.outbound_tx.clone());
                    let span = info_span!("agent.device.call", method = %params.method);
                    continue_trace(&span, params.traceparent.as_deref());
                    tokio::spawn(
                        async move {
                            let message = device_call(&lab, request, &params).await;
                            let _ = out
                                .send(Outbound::Reply {
                                    message,
                                    finished: None,
                                })
                                .await;
                        }
                        .instrument(span),
                    );
                }
                None
            }
            Action::Estop { request } => {
                if let Some(lab) = &self.config.lab {
                    let (lab, out) = (lab.clone(), self.outbound_tx.clone());
                    tokio::spawn(async move {
                        let report = lab.estop().await;
                        warn!("software stop requested by the cloud");
                        let _ = out
                            .send(Outbound::Reply {
                                message: Message::result(request, report),
                                finished: None,
                            })
                            .await;
                    });
                }
                None
            }
            Action::SafetyReset { request, params } => {
                if let Some(lab) = &self.config.lab {
                    let (lab, spool, out) = (lab.clone(), spool.clone(), self.outbound_tx.clone());
                    let spooled = self.config.spooled.clone();
                    tokio::spawn(async move {
                        let by = format!("{}: {}", params.actor, params.reason.trim());
                        let message =
                            match crate::control::reset_faults(&lab, &spool, &spooled, &by).await {
                                Ok(reset) => Message::result(request, reset),
                                Err(e) => Message::error(
                                    Some(request),
                                    error_code::INTERNAL_ERROR,
                                    format!("the reset failed: {e}"),
                                ),
                            };
                        let _ = out
                            .send(Outbound::Reply {
                                message,
                                finished: None,
                            })
                            .await;
                    });
                }
                None
            }
            Action::LinkRestored => {
                if let Some(lab) = &self.config.lab {
                    lab.link_restored();
                }
                None
            }
            Action::ApplyLinkLoss => {
                if let Some(lab) = &self.config.lab {
                    // Local safety applies the running programs' link-loss policies.
                    let _ = lab.link_lost().await;
                }
                Some(Event::LinkLossApplied)
            }
            // Handled by `perform`.
            Action::Exit(_) => None,
        })
    }

    /// Starts a connection attempt: transport, then the WebSocket upgrade with the credential.
    fn connect(&self) -> Result<Connecting<'a>, LinkError> {
        let mut request = self
            .url
            .into_client_request()
            .map_err(|_| LinkError::BadUrl(self.url.to_owned()))?;
        let token =
            HeaderValue::from_str(&format!("Bearer {}", self.config.credential.bearer_token()))
                .map_err(|_| LinkError::BadCredential)?;
        request.headers_mut().insert("authorization", token);
        let connector = self.connector;
        Ok(Box::pin(async move {
            let stream = connector.connect().await.map_err(tungstenite::Error::Io)?;
            tokio_tungstenite::client_async(request, stream)
                .await
                .map(|(socket, _)| socket)
        }))
    }
}

/// Writes one record of the lab to the spool; a measurement refused by the spool's cap is
/// replaced by a `buffer_full` safety event (events are never refused).
pub(crate) async fn spool_record(spool: &Spool, program_id: Option<&str>, record: &Value) {
    let class = if record["body"]["type"] == "measurement" {
        RecordClass::Measurement
    } else {
        RecordClass::Event
    };
    match spool.append(program_id, class, record).await {
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
            if let Err(e) = spool.append(program_id, RecordClass::Event, &alarm).await {
                warn!(error = %e, "spool alarm not written");
            }
        }
        Err(e) => warn!(error = %e, "record not spooled"),
    }
}

/// The records of one program run: each written to the spool (a measurement over the cap
/// replaced by a `buffer_full` alarm) before the executor goes on, then the loop told.
struct SpoolSink {
    spool: Spool,
    program_id: String,
    notify: mpsc::Sender<Outbound>,
}

impl RecordSink for SpoolSink {
    async fn record(&self, record: Record) {
        let record = serde_json::to_value(record).unwrap_or(Value::Null);
        spool_record(&self.spool, Some(&self.program_id), &record).await;
        // Only a wake-up: when the queue is full, the loop has wake-ups enough (and the record
        // is on disk whatever happens to this one).
        let _ = self.notify.try_send(Outbound::Spooled);
    }
}

/// One accepted program run, handed to its task.
struct Run {
    request: maosic_schema::protocol::Id,
    program_id: String,
    program: maosic_schema::program::Program,
    options: ExecOptions,
    cancel: CancellationToken,
}

/// Runs one program on the lab; its records go through the outbound queue (every one before
/// the answer), its result to the spool (a re-sent run is answered with it), then the answer.
async fn run_program(lab: Arc<Lab>, spool: Spool, out: mpsc::Sender<Outbound>, run: Run) {
    let Run {
        request,
        program_id,
        program,
        options,
        cancel,
    } = run;
    let sink = SpoolSink {
        spool: spool.clone(),
        program_id: program_id.clone(),
        notify: out.clone(),
    };
    // Every record is in the spool when this returns, before the answer exists.
    let report = lab.run_program(&program, options, sink, cancel).await;
    info!(program.id = %program_id, outcome = ?report.outcome, "program run ended");
    let result = serde_json::to_value(&report).unwrap_or(Value::Null);
    if let Err(e) = spool.finish_command(&program_id, &result).await {
        // The run stays accepted: a re-send is refused, never run again.
        warn!(program.id = %program_id, error = %e, "program result not stored in the spool");
    }
    let _ = out
        .send(Outbound::Reply {
            message: Message::result(request, result),
            finished: Some(program_id),
        })
        .await;
}

/// Makes `span` continue the cloud's trace when the request carried one; a malformed value is
/// logged and the span starts its own trace.
fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(tp) = traceparent {
        if !maosic_telemetry::set_parent(span, tp) && !maosic_telemetry::is_traceparent(tp) {
            debug!(traceparent = tp, "ignoring a malformed traceparent");
        }
    }
}

/// Calls one device method on the lab and makes the answer.
async fn device_call(
    lab: &Lab,
    request: maosic_schema::protocol::Id,
    params: &maosic_schema::protocol::DeviceCallParams,
) -> Message {
    match lab.call_manual(&params.method, &params.params).await {
        Ok(output) => {
            let measurements: Vec<Value> = output
                .measurements
                .iter()
                .map(|(name, m)| json!({ "name": name, "measurement": m }))
                .collect();
            Message::result(
                request,
                json!({ "result": output.result, "measurements": measurements }),
            )
        }
        Err(e) => {
            let mut reply =
                Message::error(Some(request), error_code::INVALID_PARAMS, e.to_string());
            if let Message::Response(r) = &mut reply {
                if let Some(err) = &mut r.error {
                    err.data = Some(json!({ "code": e.code() }));
                }
            }
            reply
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use maosic_schema::protocol::{method, AckParams, HelloResult, Id};

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

    /// The state's spool actions carried out on a real spool: records written by
    /// [`spool_record`] are read in order, and an acknowledgement of this epoch deletes exactly
    /// the records up to its `seq_hi` (another epoch's deletes nothing).
    #[tokio::test]
    async fn records_are_spooled_and_acknowledgements_of_this_epoch_delete_them() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool.db"), Default::default())
            .await
            .unwrap();
        for i in 0..3 {
            let record = json!({ "body": { "type": "measurement" }, "i": i });
            spool_record(&spool, None, &record).await;
        }
        assert_eq!(spool.backlog().await.unwrap().0, 3);
        let mut state = LinkState::new(
            Settings {
                epoch: spool.epoch().to_owned(),
                has_lab: false,
                backoff_base: Duration::from_millis(100),
                backoff_cap: Duration::from_secs(1),
                connect_timeout: Duration::from_secs(10),
            },
            1,
        );
        state.start(now());
        state.handle(now(), Event::Connected { descriptor: None });
        let welcome = Message::result(
            Id::Number(1),
            HelloResult {
                lab_id: "lab".into(),
                generation: 1,
                heartbeat_ms: 1000,
            },
        );
        state.handle(now(), Event::Frame(Incoming::Text(welcome.to_json())));
        assert!(state.is_up());
        let apply = |actions: Vec<Action>| {
            let spool = spool.clone();
            async move {
                for action in actions {
                    if let Action::AckSpool { seq_hi } = action {
                        spool.ack(seq_hi).await.unwrap();
                    }
                }
            }
        };
        let other = r#"{"jsonrpc":"2.0","method":"ack","params":{"epoch":"ffff","seq_hi":3}}"#;
        apply(state.handle(now(), Event::Frame(Incoming::Text(other.into())))).await;
        assert_eq!(spool.backlog().await.unwrap().0, 3, "another epoch's ack");
        let ack = Message::notification(
            method::ACK,
            AckParams {
                epoch: spool.epoch().to_owned(),
                seq_hi: 2,
            },
        );
        apply(state.handle(now(), Event::Frame(Incoming::Text(ack.to_json())))).await;
        let left: Vec<u64> = spool
            .after(0, 10)
            .await
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(left, [3]);
    }

    #[tokio::test]
    async fn a_measurement_over_the_cap_is_replaced_by_a_buffer_full_alarm() {
        let dir = tempfile::tempdir().unwrap();
        let caps = crate::spool::SpoolCaps {
            max_rows: 10,
            max_bytes: 1 << 20,
        };
        let spool = Spool::open(&dir.path().join("spool.db"), caps)
            .await
            .unwrap();
        for i in 0..10 {
            let record = json!({ "body": { "type": "measurement" }, "i": i });
            spool_record(&spool, Some("p"), &record).await;
        }
        let kept = spool.after(0, 100).await.unwrap();
        assert_eq!(kept.len(), 10);
        assert!(kept[..9]
            .iter()
            .all(|r| r.record["body"]["type"] == "measurement"));
        assert_eq!(kept[9].record["body"]["event"], "buffer_full");
        assert_eq!(kept[9].program_id.as_deref(), Some("p"));
    }
}
