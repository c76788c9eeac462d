//! Several replicas on one PostgreSQL: what one replica publishes reaches the others through
//! PostgreSQL `LISTEN`/`NOTIFY` on the channel [`CHANNEL`].
//!
//! Carried: the event bus ([`crate::events::Event`]: campaign and experiment changes, lab
//! status, records stored, wake-ups) and revocations ([`crate::auth::Revocation`]: sessions,
//! API tokens, memberships, agent credentials), so a subscription on one replica sees what the
//! engine did on another, a log-out closes the user's sockets everywhere, and a revoked agent
//! credential cuts the connection whichever replica holds it. Payloads carry ids and states
//! only; readers load rows, the database stays the truth.
//!
//! Calls to agents travel the same way: a replica asked to call a lab's agent that another
//! replica holds (the lab row's `connected_replica`) sends a [`Message::Call`] addressed to that
//! replica, which calls its agent and sends the [`Message::Answer`] back; the caller waits for
//! it within the call's own time-out, so a relayed call fails with the errors of a local one
//! (offline, time-out, closed, refused). Chosen over an internal HTTP hop: PostgreSQL is the one
//! thing every replica already reaches, it needs no service discovery, no internal TLS or
//! credentials, and the round trip is a few milliseconds. Calls and answers carry their
//! parameters and results (summaries: spectra travel as records); one over the notification
//! limit is refused with a clear error.
//!
//! Each replica has a random id and skips its own notifications (it already published them
//! locally). Delivery is at most once: a notification published while a replica's listening
//! connection is down is lost to it. On reconnecting it wakes its engine (which re-reads the
//! database); events are hints by design. On SQLite (one process) nothing here runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use maosic_schema::protocol::RpcError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::agents::registry::{CallError, Relay};
use crate::auth::Revocation;
use crate::events::Event;
use crate::state::AppState;

/// The PostgreSQL notification channel.
pub const CHANNEL: &str = "maosic_cluster";

/// PostgreSQL refuses payloads of 8000 bytes or more.
const MAX_PAYLOAD: usize = 7_999;

/// Messages waiting to be sent; beyond this they are dropped (and counted as `dropped`).
const OUTBOX: usize = 8192;

/// Most messages sent in one statement.
const MAX_BATCH: usize = 256;

/// What travels between replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    /// An event of the bus.
    Event {
        /// The event.
        event: Event,
    },
    /// A revocation live connections must honour.
    Revocation {
        /// The revocation.
        revocation: Revocation,
    },
    /// A call to the agent replica `to` holds.
    Call {
        /// The call's id (the answer names it).
        id: String,
        /// The replica that made it (the answer goes there).
        reply_to: String,
        /// The replica holding the agent.
        to: String,
        /// The lab.
        lab_id: crate::storage::LabId,
        /// The agent method and its parameters.
        method: String,
        params: Value,
        /// The caller's time-out, ms.
        timeout_ms: u64,
    },
    /// The holder received a call and is working on it (a caller that hears nothing within
    /// [`ACCEPT_WAIT`] takes the holder for gone: "offline").
    Accepted {
        /// The call's id.
        id: String,
        /// The replica that made the call.
        to: String,
    },
    /// What a relayed call came to.
    Answer {
        /// The call's id.
        id: String,
        /// The replica that made the call.
        to: String,
        /// The outcome.
        answer: RelayAnswer,
    },
}

/// What a relayed call came to, as it travels back: the result or the [`CallError`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RelayAnswer {
    /// The agent's result.
    Result { value: Value },
    /// The holder no longer holds the agent.
    Offline,
    /// The agent did not answer in time.
    Timeout { ms: u64 },
    /// The connection closed before the answer.
    Closed,
    /// The agent answered with an error.
    Rejected { error: RpcError },
}

impl RelayAnswer {
    fn of(r: Result<Value, CallError>) -> Self {
        match r {
            Ok(value) => RelayAnswer::Result { value },
            Err(CallError::Offline) => RelayAnswer::Offline,
            Err(CallError::Timeout(t)) => RelayAnswer::Timeout {
                ms: u64::try_from(t.as_millis()).unwrap_or(u64::MAX),
            },
            Err(CallError::Closed) => RelayAnswer::Closed,
            Err(CallError::Rejected(error)) => RelayAnswer::Rejected { error },
        }
    }

    fn into_result(self) -> Result<Value, CallError> {
        match self {
            RelayAnswer::Result { value } => Ok(value),
            RelayAnswer::Offline => Err(CallError::Offline),
            RelayAnswer::Timeout { ms } => Err(CallError::Timeout(Duration::from_millis(ms))),
            RelayAnswer::Closed => Err(CallError::Closed),
            RelayAnswer::Rejected { error } => Err(CallError::Rejected(error)),
        }
    }
}

/// How long a caller waits for the holder to say it received a call. A lab row can name a
/// replica that died (its rows stay `online` until the agent reconnects elsewhere): such a
/// call answers "offline" after this, not after the call's whole time-out.
const ACCEPT_WAIT: Duration = Duration::from_secs(2);

/// What a caller hears about its relayed call.
#[derive(Debug)]
enum Heard {
    Accepted,
    Answer(RelayAnswer),
}

/// Calls to agents held by other replicas, over the cluster channel.
struct ClusterRelay {
    replica: String,
    storage: Arc<dyn crate::storage::Storage>,
    outbox: mpsc::Sender<Message>,
    pending: Mutex<HashMap<String, mpsc::Sender<Heard>>>,
}

impl ClusterRelay {
    fn heard(&self, id: &str, what: Heard) {
        let waiting = self.pending.lock().ok().and_then(|p| p.get(id).cloned());
        if let Some(w) = waiting {
            let _ = w.try_send(what);
        }
    }
}

/// Removes a call from the pending ones however its wait ends.
struct Pending<'a> {
    relay: &'a ClusterRelay,
    id: String,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.relay.pending.lock() {
            p.remove(&self.id);
        }
    }
}

#[async_trait::async_trait]
impl Relay for ClusterRelay {
    async fn call(
        &self,
        lab_id: &crate::storage::LabId,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let holder = crate::storage::tenant::system(self.storage.agent_replica(lab_id))
            .await
            .map_err(|e| {
                warn!(lab.id = %lab_id, error = %e, "cannot look up the replica holding the agent");
                CallError::Offline
            })?;
        let Some(to) = holder.filter(|r| *r != self.replica) else {
            return Err(CallError::Offline);
        };
        let id = crate::storage::new_id();
        let message = Message::Call {
            id: id.clone(),
            reply_to: self.replica.clone(),
            to,
            lab_id: lab_id.clone(),
            method: method.to_owned(),
            params,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        if let Err(e) = encode(&self.replica, 0, &message) {
            return Err(CallError::Rejected(RpcError {
                code: maosic_schema::protocol::error_code::INVALID_PARAMS,
                message: format!(
                    "the call cannot be relayed to the replica holding the agent: {e}"
                ),
                data: None,
            }));
        }
        let (tx, mut rx) = mpsc::channel(2);
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id.clone(), tx);
        }
        let _pending = Pending {
            relay: self,
            id: id.clone(),
        };
        if self.outbox.try_send(message).is_err() {
            warn!(lab.id = %lab_id, "cluster outbox full: a relayed call was not sent");
            return Err(CallError::Timeout(timeout));
        }
        // First the holder's receipt: nothing means it is gone.
        match tokio::time::timeout(ACCEPT_WAIT, rx.recv()).await {
            Ok(Some(Heard::Answer(answer))) => return answer.into_result(),
            Ok(Some(Heard::Accepted)) => {}
            Ok(None) | Err(_) => {
                debug!(lab.id = %lab_id, "the replica holding the agent did not take the call");
                return Err(CallError::Offline);
            }
        }
        // Then the answer: the holder's own time-out comes first; a little more for the hops.
        loop {
            match tokio::time::timeout(timeout + Duration::from_secs(1), rx.recv()).await {
                Ok(Some(Heard::Answer(answer))) => return answer.into_result(),
                Ok(Some(Heard::Accepted)) => {}
                Ok(None) | Err(_) => return Err(CallError::Timeout(timeout)),
            }
        }
    }
}

/// A message and the replica that sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Envelope {
    from: String,
    seq: u64,
    message: Message,
}

/// Why a message could not be encoded for `NOTIFY`.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// Not serialisable (should not happen: every field is plain data).
    #[error("cannot encode: {0}")]
    Json(#[from] serde_json::Error),
    /// Longer than a notification may be.
    #[error("payload of {0} bytes is over PostgreSQL's notification limit")]
    TooLong(usize),
}

fn encode(replica: &str, seq: u64, message: &Message) -> Result<String, EncodeError> {
    let text = serde_json::to_string(&Envelope {
        from: replica.to_owned(),
        seq,
        message: message.clone(),
    })?;
    if text.len() > MAX_PAYLOAD {
        return Err(EncodeError::TooLong(text.len()));
    }
    Ok(text)
}

/// The message in a notification, unless it is this replica's own or unreadable.
fn decode(replica: &str, payload: &str) -> Option<Message> {
    match serde_json::from_str::<Envelope>(payload) {
        Ok(envelope) if envelope.from == replica => None,
        Ok(envelope) => Some(envelope.message),
        Err(e) => {
            warn!(error = %e, "unreadable cluster notification ignored");
            None
        }
    }
}

/// Attaches the event bus and the revocations of `state` to the other replicas on `pool`'s
/// database: a task sends what this replica publishes, another publishes locally what the
/// others sent. Returns both tasks.
pub fn spawn(state: AppState, pool: PgPool) -> (JoinHandle<()>, JoinHandle<()>) {
    let replica = state.gateway.replica().to_owned();
    info!(replica = %replica, channel = CHANNEL, "replica joins the cluster bus");
    let (tx, rx) = mpsc::channel::<Message>(OUTBOX);
    let relay = Arc::new(ClusterRelay {
        replica: replica.clone(),
        storage: state.storage.clone(),
        outbox: tx.clone(),
        pending: Mutex::default(),
    });
    state.gateway.set_relay(relay.clone());
    let metrics = state.metrics.clone();
    let to_cluster = move |message: Message| {
        if tx.try_send(message).is_err() {
            metrics.cluster_message("dropped");
            warn!("cluster outbox full: a message to the other replicas was dropped");
        }
    };
    let send = to_cluster.clone();
    state.events.forward().set(move |event: &Event| {
        send(Message::Event {
            event: event.clone(),
        })
    });
    state.auth.forward().set(move |revocation: &Revocation| {
        to_cluster(Message::Revocation {
            revocation: revocation.clone(),
        })
    });
    let notifier = tokio::spawn(notify(pool.clone(), replica.clone(), rx, state.clone()));
    let listener = tokio::spawn(listen(pool, replica, state, relay));
    (notifier, listener)
}

/// Sends what this replica publishes, batched: whatever waits is sent in one statement (in
/// order; PostgreSQL delivers a transaction's notifications in order).
async fn notify(pool: PgPool, replica: String, mut rx: mpsc::Receiver<Message>, state: AppState) {
    let mut seq: u64 = 0;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let mut payloads = Vec::with_capacity(batch.len());
        for message in &batch {
            // The sequence number keeps equal messages distinct (PostgreSQL folds identical
            // payloads of one transaction into one notification).
            seq += 1;
            match encode(&replica, seq, message) {
                Ok(p) => payloads.push(p),
                Err(e) => {
                    state.metrics.cluster_message("failed");
                    warn!(error = %e, ?message, "message not sent to the other replicas");
                }
            }
        }
        if payloads.is_empty() {
            continue;
        }
        let mut attempt = 0u32;
        loop {
            let sent = sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
                .bind(CHANNEL)
                .bind(&payloads)
                .execute(&pool)
                .await;
            match sent {
                Ok(_) => {
                    for _ in &payloads {
                        state.metrics.cluster_message("sent");
                    }
                    break;
                }
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    debug!(error = %e, attempt, "cluster notify failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
                Err(e) => {
                    for _ in &payloads {
                        state.metrics.cluster_message("failed");
                    }
                    warn!(error = %e, n = payloads.len(), "messages not sent to the other replicas");
                    break;
                }
            }
        }
    }
}

async fn listen(pool: PgPool, replica: String, state: AppState, relay: Arc<ClusterRelay>) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot open the cluster listener; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            warn!(error = %e, "cannot LISTEN on the cluster channel; retrying in 1 s");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Whatever was published while not listening is lost to this replica: look again.
        state.events.publish_local(Event::Wake);
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    if let Some(message) = decode(&replica, notification.payload()) {
                        state.metrics.cluster_message("received");
                        deliver(&state, &relay, message);
                    }
                }
                Ok(None) => {
                    warn!("cluster listener lost its connection; notifications may be lost");
                    state.events.publish_local(Event::Wake);
                }
                Err(e) => {
                    warn!(error = %e, "cluster listener failed; reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    }
}

/// Publishes on this replica what another replica sent; runs the calls addressed to it and
/// hands over the answers to its own.
fn deliver(state: &AppState, relay: &Arc<ClusterRelay>, message: Message) {
    match message {
        Message::Call {
            id,
            reply_to,
            to,
            lab_id,
            method,
            params,
            timeout_ms,
        } if to == relay.replica => {
            let accepted = Message::Accepted {
                id: id.clone(),
                to: reply_to.clone(),
            };
            if relay.outbox.try_send(accepted).is_err() {
                warn!("cluster outbox full: a relayed call's receipt was dropped");
            }
            let (state, relay) = (state.clone(), relay.clone());
            tokio::spawn(crate::storage::tenant::system(async move {
                let timeout = Duration::from_millis(timeout_ms);
                let r = state
                    .gateway
                    .call_local(&lab_id, &method, params, timeout)
                    .await;
                debug!(lab.id = %lab_id, method, ok = r.is_ok(), "relayed call answered");
                let mut answer = Message::Answer {
                    id: id.clone(),
                    to: reply_to.clone(),
                    answer: RelayAnswer::of(r),
                };
                if let Err(e) = encode(&relay.replica, 0, &answer) {
                    answer = Message::Answer {
                        id,
                        to: reply_to,
                        answer: RelayAnswer::Rejected {
                            error: RpcError {
                                code: maosic_schema::protocol::error_code::INTERNAL_ERROR,
                                message: format!("the agent's answer cannot be relayed back: {e}"),
                                data: None,
                            },
                        },
                    };
                }
                if relay.outbox.try_send(answer).is_err() {
                    warn!("cluster outbox full: a relayed call's answer was dropped");
                }
            }));
        }
        Message::Accepted { id, to } if to == relay.replica => relay.heard(&id, Heard::Accepted),
        Message::Answer { id, to, answer } if to == relay.replica => {
            relay.heard(&id, Heard::Answer(answer));
        }
        Message::Call { .. } | Message::Accepted { .. } | Message::Answer { .. } => {}
        Message::Event { event } => state.events.publish_local(event),
        Message::Revocation { revocation } => {
            if let Revocation::AgentCredential { lab_id } = &revocation {
                if state.gateway.cut(lab_id, "agent credential revoked") {
                    info!(lab.id = %lab_id, "agent connection cut: its credential was revoked on another replica");
                }
            }
            state.auth.announce_local(revocation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{CampaignId, CampaignState, LabId, OrganizationId, SessionId};

    fn messages() -> Vec<Message> {
        vec![
            Message::Event {
                event: Event::Campaign {
                    organization_id: OrganizationId::from("o"),
                    campaign_id: CampaignId::from("c"),
                    state: CampaignState::Running,
                    kind: "state".into(),
                },
            },
            Message::Event {
                event: Event::LabStatus {
                    lab_id: LabId::from("l"),
                    online: true,
                },
            },
            Message::Event { event: Event::Wake },
            Message::Revocation {
                revocation: Revocation::Session {
                    session_id: SessionId::from("s"),
                },
            },
            Message::Revocation {
                revocation: Revocation::AgentCredential {
                    lab_id: LabId::from("l"),
                },
            },
            Message::Call {
                id: "c1".into(),
                reply_to: "a".into(),
                to: "b".into(),
                lab_id: LabId::from("l"),
                method: "estop".into(),
                params: serde_json::json!({ "reason": "test" }),
                timeout_ms: 10_000,
            },
            Message::Accepted {
                id: "c1".into(),
                to: "a".into(),
            },
            Message::Answer {
                id: "c1".into(),
                to: "a".into(),
                answer: RelayAnswer::Rejected {
                    error: RpcError {
                        code: -32000,
                        message: "busy".into(),
                        data: None,
                    },
                },
            },
        ]
    }

    #[test]
    fn a_relayed_answer_is_the_local_calls_result_or_error() {
        let cases: Vec<Result<Value, CallError>> = vec![
            Ok(serde_json::json!({ "stopped": true })),
            Err(CallError::Offline),
            Err(CallError::Timeout(Duration::from_millis(1500))),
            Err(CallError::Closed),
            Err(CallError::Rejected(RpcError {
                code: -32001,
                message: "no".into(),
                data: None,
            })),
        ];
        for case in cases {
            let shown = format!("{case:?}");
            let wire = serde_json::to_string(&RelayAnswer::of(case)).expect("encodes");
            let back: RelayAnswer = serde_json::from_str(&wire).expect("decodes");
            assert_eq!(format!("{:?}", back.into_result()), shown);
        }
    }

    #[test]
    fn a_message_from_another_replica_decodes_to_itself() {
        for m in messages() {
            let payload = encode("a", 1, &m).expect("encodes");
            assert_eq!(decode("b", &payload), Some(m));
        }
    }

    #[test]
    fn a_replica_skips_its_own_messages() {
        for m in messages() {
            let payload = encode("a", 1, &m).expect("encodes");
            assert_eq!(decode("a", &payload), None);
        }
    }

    #[test]
    fn garbage_and_oversized_payloads_are_refused_not_panicked_on() {
        assert_eq!(decode("a", "not json"), None);
        assert_eq!(
            decode("a", r#"{"from":"b","seq":1,"message":{"kind":"nope"}}"#),
            None
        );
        let long = Message::Event {
            event: Event::Campaign {
                organization_id: OrganizationId::from("o"),
                campaign_id: CampaignId::from("c"),
                state: CampaignState::Running,
                kind: "x".repeat(MAX_PAYLOAD),
            },
        };
        assert!(matches!(
            encode("a", 1, &long),
            Err(EncodeError::TooLong(_))
        ));
    }
}
