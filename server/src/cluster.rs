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
//! Each replica has a random id and skips its own notifications (it already published them
//! locally). Delivery is at most once: a notification published while a replica's listening
//! connection is down is lost to it. On reconnecting it wakes its engine (which re-reads the
//! database); events are hints by design. On SQLite (one process) nothing here runs.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

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
    let replica = crate::storage::new_id();
    info!(replica = %replica, channel = CHANNEL, "replica joins the cluster bus");
    let (tx, rx) = mpsc::channel::<Message>(OUTBOX);
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
    let listener = tokio::spawn(listen(pool, replica, state));
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

async fn listen(pool: PgPool, replica: String, state: AppState) {
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
                        deliver(&state, message);
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

/// Publishes on this replica what another replica sent.
fn deliver(state: &AppState, message: Message) {
    match message {
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
        ]
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
