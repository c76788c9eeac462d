//! The agent gateway: the WebSocket endpoint agents connect to. It authenticates the lab
//! credential on upgrade, waits for `hello`, assigns the connection a generation (docs/reliability.md
//! rule 4), pings every heartbeat period, declares the peer dead after three silent periods
//! (rule 3), and records presence in storage. Only the current generation may change presence.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{
    AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, ProtocolError, Session,
};
use futures_util::{FutureExt, StreamExt};
use maosic_schema::protocol::{
    self, error_code, method, AckParams, AgentCredentialFile, HeartbeatParams, HelloParams,
    HelloResult, Message, RecordParams, RpcError, ThrottleParams,
};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::hash_secret;
use super::registry::HelloInfo;
use crate::state::AppState;
use crate::storage::{now_ms, tenant, AgentHello, LabId, NewRecord, StorageError};

/// Errors authenticating an agent.
#[derive(Debug, thiserror::Error)]
enum AuthError {
    #[error("missing or malformed Authorization header")]
    Missing,
    #[error("invalid or revoked agent credential")]
    Invalid,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

async fn authenticate(state: &AppState, req: &HttpRequest) -> Result<LabId, AuthError> {
    let token = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(AuthError::Missing)?;
    let (id, secret) = AgentCredentialFile::split_token(token.trim()).ok_or(AuthError::Missing)?;
    if uuid::Uuid::parse_str(id).is_err() {
        return Err(AuthError::Invalid);
    }
    let credential = state
        .storage
        .agent_credential(id)
        .await?
        .ok_or(AuthError::Invalid)?;
    if credential.revoked_at.is_some() || credential.secret_hash != hash_secret(secret) {
        return Err(AuthError::Invalid);
    }
    Ok(credential.lab_id)
}

/// `GET /agent/v1/ws`: authenticate, then upgrade and run the session.
pub async fn agent_ws(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    // Agent traffic is platform work, explicitly (a task outside any scope sees nothing).
    let lab_id = match tenant::system(authenticate(&state, &req)).await {
        Ok(lab_id) => lab_id,
        Err(AuthError::Storage(e)) => {
            warn!(error = %e, "agent authentication could not reach storage");
            return Ok(HttpResponse::ServiceUnavailable()
                .json(serde_json::json!({"error": "unavailable"})));
        }
        Err(e) => {
            info!(peer = ?req.peer_addr(), reason = %e, "agent connection refused");
            return Ok(HttpResponse::Unauthorized()
                .json(serde_json::json!({"error": "invalid agent credential"})));
        }
    };
    // Through an SSH tunnel, the credential must be of the lab whose key opened the tunnel.
    if let Some(tunnel_lab) = req.peer_addr().and_then(|p| state.ssh_tunnels.lab_of(&p)) {
        if tunnel_lab != lab_id {
            warn!(lab.id = %lab_id, ssh.lab = %tunnel_lab,
                "agent connection refused: its SSH tunnel was opened with another lab's key");
            return Ok(HttpResponse::Forbidden().json(serde_json::json!({
                "error": "this SSH tunnel was opened with another lab's key"
            })));
        }
    }
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let max = state.config.agent.max_message_bytes;
    let stream = stream
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max);
    let state = state.into_inner();
    let peer = req.peer_addr().map(|a| a.to_string());
    actix_web::rt::spawn(async move {
        tenant::system(run_session((*state).clone(), lab_id, session, stream, peer)).await;
    });
    Ok(response)
}

async fn send(session: &mut Session, message: &Message) -> bool {
    session.text(message.to_json()).await.is_ok()
}

/// Waits for the agent's `hello` request and returns its id and parameters.
async fn receive_hello(
    session: &mut Session,
    stream: &mut AggregatedMessageStream,
) -> Option<(protocol::Id, HelloParams)> {
    while let Some(frame) = stream.next().await {
        match frame {
            Ok(AggregatedMessage::Text(text)) => match Message::parse(&text) {
                Ok(Message::Request(req)) if req.method == method::HELLO => {
                    match serde_json::from_value::<HelloParams>(req.params) {
                        Ok(params) => return Some((req.id, params)),
                        Err(e) => {
                            let reply = Message::error(
                                Some(req.id),
                                error_code::INVALID_PARAMS,
                                format!("invalid hello: {e}"),
                            );
                            send(session, &reply).await;
                            return None;
                        }
                    }
                }
                Ok(Message::Request(req)) => {
                    let reply =
                        Message::error(Some(req.id), error_code::NOT_READY, "send hello first");
                    if !send(session, &reply).await {
                        return None;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let reply = Message::error(None, error_code::PARSE_ERROR, e.to_string());
                    if !send(session, &reply).await {
                        return None;
                    }
                }
            },
            Ok(AggregatedMessage::Ping(bytes)) => {
                if session.pong(&bytes).await.is_err() {
                    return None;
                }
            }
            Ok(AggregatedMessage::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    None
}

/// What became of one `record` notification.
enum Ingested {
    /// Stored (or a replay of a stored one): acknowledge it.
    Ack(AckParams),
    /// Over the lab's limits: not stored; tell the agent to hold back and resend.
    Throttle(ThrottleParams),
    /// Not stored, and the agent was already told (it resends from its spool).
    Held,
    /// Could not be stored: close, so the agent resends it.
    Failed,
}

/// A lab's ingestion limits on one connection: a token bucket for records per second, and the
/// bytes stored on the current UTC day (read from storage once per day, so every replica and
/// every reconnection counts the same day). After a throttle, nothing past the first record
/// refused is stored until the agent sends that one again: acknowledgements stay contiguous
/// (an ack of `seq_hi` means every record up to it is stored).
struct Ingest {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
    max_bytes_per_day: i64,
    /// The UTC day, the lab's bytes stored that day, and when that figure was read from
    /// storage (re-read every few seconds: other connections and replicas store too).
    day: Option<(i64, i64, Instant)>,
    /// Epoch and seq of the first record refused: the next stored record of that epoch.
    resume: Option<(String, i64)>,
    /// No second throttle notification before this.
    quiet_until: Option<Instant>,
}

impl Ingest {
    fn new(cfg: &crate::config::AgentConfig) -> Self {
        let rate = f64::from(cfg.max_records_per_second.max(1));
        let burst = f64::from(cfg.record_burst.max(1));
        Ingest {
            rate,
            burst,
            tokens: burst,
            refilled: Instant::now(),
            max_bytes_per_day: i64::try_from(cfg.max_bytes_per_day).unwrap_or(i64::MAX),
            day: None,
            resume: None,
            quiet_until: None,
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let dt = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.refilled = now;
    }

    /// Refuses the record `(epoch, seq)`: remembers where to resume, and says whether to tell
    /// the agent (once per pause).
    fn refuse(&mut self, epoch: &str, seq: i64, pause: Duration, reason: &str) -> Ingested {
        if self.resume.is_none() {
            self.resume = Some((epoch.to_owned(), seq));
        }
        let now = Instant::now();
        if self.quiet_until.is_some_and(|q| now < q) {
            return Ingested::Held;
        }
        self.quiet_until = Some(now + pause);
        Ingested::Throttle(ThrottleParams {
            retry_after_ms: u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
            reason: reason.to_owned(),
        })
    }
}

/// Why a measurement is not stored as data: an array longer than the spectrum cap.
fn oversized_measurement(record: &Value, max_points: usize) -> Option<String> {
    let m = record["body"]["measurement"].as_object()?;
    m.iter().find_map(|(name, v)| {
        let n = v.as_array()?.len();
        (n > max_points).then(|| {
            format!("the measurement's {name} has {n} points; at most {max_points} are stored")
        })
    })
}

/// A record admitted within the lab's limits, waiting for its batch's commit.
struct Admitted {
    record: NewRecord,
    /// The agent's wall clock when it recorded it (for the lag metric).
    measured_ms: Option<i64>,
}

/// The `record` notifications a connection received back to back, stored in one transaction
/// and acknowledged with one `ack` per epoch (acks are cumulative: "everything up to `seq_hi`").
#[derive(Default)]
struct Batch {
    /// Admitted records, in the order received (stored as they are).
    records: Vec<NewRecord>,
    /// Each record's [`Admitted::measured_ms`].
    measured_ms: Vec<Option<i64>>,
    bytes: usize,
    /// What the agent is told after the acks (a throttle), or that storing failed.
    after: Option<Ingested>,
}

/// At most this many records, or this many bytes of them, go into one transaction.
const BATCH_RECORDS: usize = 256;
const BATCH_BYTES: usize = 4 << 20;

impl Batch {
    fn full(&self) -> bool {
        self.records.len() >= BATCH_RECORDS || self.bytes >= BATCH_BYTES || self.failed()
    }

    fn failed(&self) -> bool {
        matches!(self.after, Some(Ingested::Failed))
    }

    /// Takes one `record` notification: admitted into the batch, or an outcome for after it.
    async fn take(
        &mut self,
        state: &AppState,
        lab_id: &LabId,
        params: Value,
        highest: &mut HashMap<String, i64>,
        ingest: &mut Ingest,
    ) {
        if self.failed() {
            return;
        }
        match admit_record(state, lab_id, params, highest, ingest).await {
            Ok(a) => {
                self.bytes += a.record.body.len();
                self.records.push(a.record);
                self.measured_ms.push(a.measured_ms);
            }
            // a later throttle replaces an earlier one (same pause); `Held` adds nothing
            Err(Ingested::Held) => {}
            Err(outcome) => self.after = Some(outcome),
        }
    }

    /// Stores the admitted records; returns what to send the agent, in order.
    async fn commit(self, state: &AppState, lab_id: &LabId, ingest: &mut Ingest) -> Vec<Ingested> {
        let mut out = Vec::new();
        let Batch {
            records,
            measured_ms,
            after,
            ..
        } = self;
        if !records.is_empty() {
            let now = now_ms();
            state
                .metrics
                .agent_record_batch
                .observe(records.len() as f64);
            match state.storage.store_records(&records, now).await {
                Ok(stored) => {
                    let mut acks: Vec<AckParams> = Vec::new();
                    for ((record, measured_ms), new) in
                        records.into_iter().zip(measured_ms).zip(stored)
                    {
                        let seq_hi = u64::try_from(record.seq).unwrap_or(0);
                        match acks.last_mut() {
                            Some(ack) if ack.epoch == record.epoch => {
                                ack.seq_hi = ack.seq_hi.max(seq_hi);
                            }
                            _ => acks.push(AckParams {
                                epoch: record.epoch.clone(),
                                seq_hi,
                            }),
                        }
                        if new {
                            if let Some(at) = measured_ms {
                                // Lag by the agent's clock: a skewed clock shows as lag (or as 0,
                                // never negative).
                                let lag_ms = now.saturating_sub(at).max(0);
                                state
                                    .metrics
                                    .agent_record_lag
                                    .observe(lag_ms as f64 / 1000.0);
                            }
                            state.events.publish(crate::events::Event::RecordStored {
                                lab_id: record.lab_id,
                                program_id: record.program_id,
                                kind: record.kind,
                            });
                        } else {
                            // a replay: not stored again, so it used no budget
                            debug!(lab.id = %lab_id, seq = record.seq, "replayed record acknowledged again");
                            ingest.tokens += 1.0;
                            if let Some((_, used, _)) = ingest.day.as_mut() {
                                let bytes = i64::try_from(record.body.len()).unwrap_or(i64::MAX);
                                *used = used.saturating_sub(bytes);
                            }
                        }
                    }
                    out.extend(acks.into_iter().map(Ingested::Ack));
                }
                Err(e) => {
                    warn!(lab.id = %lab_id, records = records.len(), error = %e, "records not stored");
                    return vec![Ingested::Failed];
                }
            }
        }
        out.extend(after);
        out
    }
}

/// Checks one `record` notification against the lab's ingestion limits and the stream's
/// order, and makes the row to store under the connection's lab; `Err` says what to do instead.
/// The limits are charged here (a batch's replays are refunded after its commit); a failed
/// commit closes the connection, so nothing charged for it outlives it.
async fn admit_record(
    state: &AppState,
    lab_id: &LabId,
    params: Value,
    highest: &mut HashMap<String, i64>,
    ingest: &mut Ingest,
) -> Result<Admitted, Ingested> {
    let params: RecordParams = match serde_json::from_value(params) {
        Ok(p) => p,
        Err(e) => {
            warn!(lab.id = %lab_id, error = %e, "malformed record refused");
            return Err(Ingested::Failed);
        }
    };
    let seq = i64::try_from(params.seq).unwrap_or(i64::MAX);
    // After a refusal, only the first refused record (or an earlier replay) may be stored next.
    if let Some((epoch, first)) = &ingest.resume {
        if *epoch == params.epoch && seq > *first {
            return Err(Ingested::Held);
        }
    }
    let mut kind = params.record["body"]["type"]
        .as_str()
        .unwrap_or("unknown")
        .to_owned();
    let mut body = params.record.to_string();
    // A spectrum over the documented cap is never stored as data: a `rejected` record in its
    // place (same delivery key, so the stream stays contiguous) says what arrived and why.
    let too_big_for_a_day = (body.len() as u64 > state.config.agent.max_bytes_per_day)
        .then(|| "the record alone is larger than the lab's daily byte budget".to_owned());
    if let Some(why) = too_big_for_a_day
        .or_else(|| oversized_measurement(&params.record, state.config.agent.max_spectrum_points))
    {
        warn!(lab.id = %lab_id, seq, why, "oversized measurement rejected");
        body = json!({
            "step": params.record["step"],
            "unix_ms": params.record["unix_ms"],
            "body": { "type": "rejected", "reason": why, "original_type": kind, "original_bytes": body.len() },
        })
        .to_string();
        kind = "rejected".into();
    }
    let bytes = i64::try_from(body.len()).unwrap_or(i64::MAX);
    // Ingestion limits: the day's bytes (from storage once per UTC day), then the rate.
    let now = now_ms();
    let today = crate::storage::records::utc_day(now);
    let fresh = |read: &Instant| read.elapsed() < Duration::from_secs(5);
    let used = match ingest.day {
        Some((day, used, read)) if day == today && fresh(&read) => used,
        _ => match state.storage.ingest_usage(lab_id, today).await {
            Ok(u) => {
                ingest.day = Some((today, u.bytes, Instant::now()));
                u.bytes
            }
            Err(e) => {
                warn!(lab.id = %lab_id, seq, error = %e, "record not stored");
                return Err(Ingested::Failed);
            }
        },
    };
    if used.saturating_add(bytes) > ingest.max_bytes_per_day {
        let to_midnight = (today + 1) * 86_400_000 - now;
        let pause = Duration::from_millis(
            u64::try_from(to_midnight.clamp(1_000, 60_000)).unwrap_or(60_000),
        );
        state.metrics.agent_records_throttled.inc();
        return Err(ingest.refuse(&params.epoch, seq, pause, "bytes_per_day"));
    }
    ingest.refill();
    if ingest.tokens < 1.0 {
        // Long enough for a good part of the burst to refill, so the agent resends in batches.
        let pause = Duration::from_secs_f64((ingest.burst / 2.0 / ingest.rate).clamp(0.05, 5.0));
        state.metrics.agent_records_throttled.inc();
        return Err(ingest.refuse(&params.epoch, seq, pause, "records_per_second"));
    }
    let record = NewRecord {
        lab_id: lab_id.to_owned(),
        epoch: params.epoch,
        seq,
        program_id: params.program_id,
        kind,
        body,
    };
    // Gap detection: the agent sends each epoch in seq order from its lowest unacknowledged
    // record, so a seq above the highest stored + 1 means records it never delivered.
    let before = match highest.get(&record.epoch) {
        Some(h) => Some(*h),
        None => match state.storage.max_record_seq(lab_id, &record.epoch).await {
            Ok(h) => h,
            Err(e) => {
                warn!(lab.id = %lab_id, seq = record.seq, error = %e, "record not stored");
                return Err(Ingested::Failed);
            }
        },
    };
    let expected = before.map_or(1, |h| h.saturating_add(1));
    if record.seq > expected {
        let missing = record.seq - expected;
        warn!(lab.id = %lab_id, epoch = %record.epoch, first_missing = expected,
            last_missing = record.seq - 1, missing, "gap in the agent's record stream");
        state
            .metrics
            .agent_record_gaps
            .inc_by(u64::try_from(missing).unwrap_or(0));
    }
    highest.insert(record.epoch.clone(), before.unwrap_or(0).max(record.seq));
    if ingest
        .resume
        .as_ref()
        .is_some_and(|(epoch, first)| *epoch == record.epoch && record.seq >= *first)
    {
        ingest.resume = None;
        ingest.quiet_until = None;
    }
    ingest.tokens -= 1.0;
    if let Some((_, used, _)) = ingest.day.as_mut() {
        *used = used.saturating_add(bytes);
    }
    Ok(Admitted {
        measured_ms: params.record["unix_ms"].as_i64(),
        record,
    })
}

/// One read from the agent's stream.
type Frame = Option<Result<AggregatedMessage, ProtocolError>>;

/// The frame read ahead, if any, else the next one from the stream.
async fn next_frame(stashed: &mut Option<Frame>, stream: &mut AggregatedMessageStream) -> Frame {
    match stashed.take() {
        Some(frame) => frame,
        None => stream.next().await,
    }
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Goodbye,
    Closed,
    Dead,
    Cut,
    Stale,
    ProtocolError,
    /// A frame over `agent.max_message_bytes`.
    TooBig,
    StorageFailed,
}

async fn run_session(
    state: AppState,
    lab_id: LabId,
    mut session: Session,
    mut stream: AggregatedMessageStream,
    peer: Option<String>,
) {
    let agent_cfg = state.config.agent.clone();
    let hello_timeout = Duration::from_secs(agent_cfg.hello_timeout_secs);
    let Ok(Some((hello_id, hello))) =
        tokio::time::timeout(hello_timeout, receive_hello(&mut session, &mut stream)).await
    else {
        info!(lab.id = %lab_id, "agent did not complete hello");
        let _ = session
            .close(Some(CloseReason {
                code: CloseCode::Policy,
                description: Some("hello expected".into()),
            }))
            .await;
        return;
    };
    let record = AgentHello {
        agent_version: hello.agent_version.clone(),
        devices_json: serde_json::to_string(&hello.devices).unwrap_or_else(|_| "[]".into()),
        descriptor_json: (!hello.descriptor.is_null()).then(|| hello.descriptor.to_string()),
    };
    let generation = match state
        .storage
        .agent_connected(&lab_id, &record, state.gateway.replica(), now_ms())
        .await
    {
        Ok(g) => g,
        Err(e) => {
            warn!(lab.id = %lab_id, error = %e, "could not record agent connection");
            let reply = Message::error(Some(hello_id), error_code::INTERNAL_ERROR, "unavailable");
            send(&mut session, &reply).await;
            let _ = session.close(None).await;
            return;
        }
    };
    let info = HelloInfo {
        connected_at: now_ms(),
        running: hello.running.clone(),
    };
    let (mut cut, mut commands) = state.gateway.register(&lab_id, generation, info);
    state.events.publish(crate::events::Event::LabStatus {
        lab_id: lab_id.clone(),
        online: true,
    });
    let mut pending: HashMap<i64, oneshot::Sender<Result<Value, RpcError>>> = HashMap::new();
    state.metrics.agents_connected.inc();
    info!(lab.id = %lab_id, generation, peer = ?peer, agent.version = %hello.agent_version, "agent connected");
    let reply = Message::result(
        hello_id,
        HelloResult {
            lab_id: lab_id.to_string(),
            generation,
            heartbeat_ms: agent_cfg.heartbeat_ms,
        },
    );
    let mut end = if send(&mut session, &reply).await {
        None
    } else {
        Some(End::Closed)
    };

    let heartbeat = agent_cfg.heartbeat();
    let dead_after = agent_cfg.dead_after();
    let mut ping = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    let mut last_heard = Instant::now();
    let mut last_recorded = Instant::now();
    // Highest seq stored per epoch (gap detection), learnt from storage once per epoch.
    let mut highest: HashMap<String, i64> = HashMap::new();
    let mut ingest = Ingest::new(&agent_cfg);
    // A frame read ahead while batching records, handled before the next one is read.
    let mut stashed: Option<Frame> = None;
    while end.is_none() {
        tokio::select! {
            frame = next_frame(&mut stashed, &mut stream) => {
                last_heard = Instant::now();
                match frame {
                    Some(Ok(AggregatedMessage::Text(text))) => {
                        match Message::parse(&text) {
                            Ok(Message::Notification(n)) if n.method == method::GOODBYE => {
                                end = Some(End::Goodbye);
                            }
                            Ok(Message::Notification(n)) if n.method == method::HEARTBEAT => {}
                            Ok(Message::Notification(n)) if n.method == method::RECORD => {
                                // Records the agent sent back to back (its spool drains ahead
                                // of the acks) are stored in one transaction: the frames
                                // already received join the batch; the first other frame waits
                                // for the next turn of the loop.
                                let mut batch = Batch::default();
                                batch.take(&state, &lab_id, n.params, &mut highest, &mut ingest).await;
                                while !batch.full() {
                                    let Some(next) = stream.next().now_or_never() else { break };
                                    let text = match next {
                                        Some(Ok(AggregatedMessage::Text(text))) => text,
                                        other => {
                                            stashed = Some(other);
                                            break;
                                        }
                                    };
                                    match Message::parse(&text) {
                                        Ok(Message::Notification(n)) if n.method == method::RECORD => {
                                            batch.take(&state, &lab_id, n.params, &mut highest, &mut ingest).await;
                                        }
                                        _ => {
                                            stashed = Some(Some(Ok(AggregatedMessage::Text(text))));
                                            break;
                                        }
                                    }
                                }
                                for outcome in batch.commit(&state, &lab_id, &mut ingest).await {
                                    let note = match outcome {
                                        Ingested::Ack(ack) => Message::notification(method::ACK, ack),
                                        Ingested::Throttle(t) => {
                                            info!(lab.id = %lab_id, reason = %t.reason,
                                                  pause_ms = t.retry_after_ms, "agent throttled");
                                            Message::notification(method::THROTTLE, t)
                                        }
                                        Ingested::Held => continue,
                                        // Not stored: close, so the agent resends from its spool.
                                        Ingested::Failed => {
                                            end = Some(End::StorageFailed);
                                            break;
                                        }
                                    };
                                    if !send(&mut session, &note).await {
                                        end = Some(End::Closed);
                                        break;
                                    }
                                }
                            }
                            Ok(Message::Response(r)) => {
                                let waiting = match r.id {
                                    Some(protocol::Id::Number(id)) => pending.remove(&id),
                                    _ => None,
                                };
                                if let Some(waiting) = waiting {
                                    let answer = match r.error {
                                        Some(error) => Err(error),
                                        None => Ok(r.result.unwrap_or(Value::Null)),
                                    };
                                    let _ = waiting.send(answer);
                                }
                            }
                            Ok(Message::Request(r)) => {
                                let reply = Message::error(
                                    Some(r.id),
                                    error_code::METHOD_NOT_FOUND,
                                    format!("unknown method {}", r.method),
                                );
                                if !send(&mut session, &reply).await {
                                    end = Some(End::Closed);
                                }
                            }
                            Ok(_) => {}
                            Err(e) => {
                                debug!(lab.id = %lab_id, error = %e, "unparseable agent message");
                                let reply = Message::error(None, error_code::PARSE_ERROR, e.to_string());
                                if !send(&mut session, &reply).await {
                                    end = Some(End::Closed);
                                }
                            }
                        }
                    }
                    Some(Ok(AggregatedMessage::Ping(bytes))) => {
                        if session.pong(&bytes).await.is_err() {
                            end = Some(End::Closed);
                        }
                    }
                    Some(Ok(AggregatedMessage::Pong(_))) => {}
                    Some(Ok(AggregatedMessage::Binary(_))) => end = Some(End::ProtocolError),
                    Some(Ok(AggregatedMessage::Close(_))) | None => end = Some(End::Closed),
                    Some(Err(ProtocolError::Overflow)) => {
                        info!(
                            lab.id = %lab_id,
                            max_bytes = agent_cfg.max_message_bytes,
                            "agent frame over the size limit refused"
                        );
                        end = Some(End::TooBig);
                    }
                    Some(Err(e)) => {
                        info!(lab.id = %lab_id, error = %e, "agent connection error");
                        end = Some(End::ProtocolError);
                    }
                }
                // Presence writes are bounded to one per heartbeat period per connection.
                // Written in batches by the presence writer when it runs (a stale generation
                // is then cut through the registry).
                if end.is_none() && last_recorded.elapsed() >= heartbeat / 2 {
                    last_recorded = Instant::now();
                    if !state.gateway.note_seen(&lab_id, generation) {
                        match state.storage.agent_seen(&lab_id, generation, now_ms()).await {
                            Ok(true) => {}
                            Ok(false) => end = Some(End::Stale),
                            Err(e) => warn!(lab.id = %lab_id, error = %e, "could not record agent traffic"),
                        }
                    }
                }
            }
            Some(call) = commands.recv() => {
                let id = state.gateway.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let request = Message::request(protocol::Id::Number(id), &call.method, call.params);
                if send(&mut session, &request).await {
                    pending.insert(id, call.reply);
                } else {
                    end = Some(End::Closed);
                }
            }
            _ = ping.tick() => {
                let note = Message::notification(method::PING, HeartbeatParams { time_ms: now_ms() });
                if !send(&mut session, &note).await {
                    end = Some(End::Closed);
                }
            }
            _ = tokio::time::sleep_until(last_heard + dead_after) => end = Some(End::Dead),
            reason = &mut cut => {
                debug!(lab.id = %lab_id, reason = ?reason.ok(), "connection cut by the server");
                end = Some(End::Cut);
            }
        }
    }
    let end = end.unwrap_or(End::Closed);
    state.gateway.unregister(&lab_id, generation);
    state.metrics.agents_connected.dec();
    let changed = match state
        .storage
        .agent_disconnected(&lab_id, generation, now_ms())
        .await
    {
        Ok(changed) => changed,
        Err(e) => {
            warn!(lab.id = %lab_id, error = %e, "could not record agent disconnect");
            false
        }
    };
    info!(lab.id = %lab_id, generation, end = ?end, presence_changed = changed, "agent disconnected");
    if changed {
        state.events.publish(crate::events::Event::LabStatus {
            lab_id: lab_id.clone(),
            online: false,
        });
    }
    let code = match end {
        End::Goodbye | End::Closed => CloseCode::Normal,
        End::Dead => CloseCode::Away,
        End::Cut | End::Stale => CloseCode::Policy,
        End::ProtocolError => CloseCode::Protocol,
        End::TooBig => CloseCode::Size,
        End::StorageFailed => CloseCode::Error,
    };
    let _ = session
        .close(Some(CloseReason {
            code,
            description: None,
        }))
        .await;
}
