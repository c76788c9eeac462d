//! The registry of the agent connections open on this replica, and calls from the cloud to a
//! lab's agent through it. The gateway ([`super::gateway`]) registers each accepted connection
//! under its generation (docs/reliability.md rule 4); everything else (the engine, the API, the
//! command dispatcher) calls agents through [`Gateway::call`]. No I/O of its own: it hands calls
//! to the connection's task and waits for the answer. A lab whose agent another replica holds
//! is reached through the [`Relay`] the cluster attaches (PostgreSQL `NOTIFY`, see
//! `crate::cluster`), with the same errors and time-outs as a local call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use maosic_schema::protocol::{method, RpcError};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

use crate::storage::LabId;

struct LiveConnection {
    generation: i64,
    hello: HelloInfo,
    cut: oneshot::Sender<&'static str>,
    commands: mpsc::Sender<Outgoing>,
}

/// What the current connection of a lab said in its `hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloInfo {
    /// When the connection was accepted, ms since the Unix epoch.
    pub connected_at: i64,
    /// Program runs the agent was executing at that moment.
    pub running: Vec<String>,
}

/// A call from the cloud to an agent, waiting for the agent's answer.
pub(crate) struct Outgoing {
    pub(crate) method: String,
    pub(crate) params: Value,
    pub(crate) reply: oneshot::Sender<Result<Value, RpcError>>,
}

/// Calls to agents held by other replicas.
#[async_trait::async_trait]
pub trait Relay: Send + Sync {
    /// Calls `method` on the lab's agent through the replica holding it; `Offline` when no
    /// replica holds it.
    async fn call(
        &self,
        lab_id: &LabId,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, CallError>;
}

/// Why a call to an agent did not return a result.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The lab's agent is not connected to this replica.
    #[error("the lab's agent is not connected")]
    Offline,
    /// The agent did not answer in time.
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    /// The connection closed before the answer.
    #[error("the connection closed before the agent answered")]
    Closed,
    /// The agent answered with an error.
    #[error("the agent refused: {0}")]
    Rejected(RpcError),
}

/// Registry of the agent connections open on this replica, by lab.
#[derive(Clone)]
pub struct Gateway {
    live: Arc<Mutex<HashMap<LabId, LiveConnection>>>,
    /// This replica's id (recorded on the lab rows of the agents it holds).
    replica: Arc<str>,
    /// Calls to agents held elsewhere, once the cluster is attached.
    relay: Arc<OnceLock<Arc<dyn Relay>>>,
    /// Request ids, unique across connections: an agent re-sends answers left over from a lost
    /// connection, and they must never match a different call on the new one.
    pub(crate) next_id: Arc<std::sync::atomic::AtomicI64>,
    /// The batched presence writer, once started (see [`super::presence`]).
    presence: Arc<OnceLock<mpsc::UnboundedSender<(LabId, i64)>>>,
}

impl Default for Gateway {
    fn default() -> Self {
        Gateway {
            live: Arc::default(),
            replica: Arc::from(crate::storage::new_id()),
            relay: Arc::default(),
            next_id: Arc::default(),
            presence: Arc::default(),
        }
    }
}

impl Gateway {
    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// Attaches the relay to other replicas (once; later calls are ignored).
    pub fn set_relay(&self, relay: Arc<dyn Relay>) {
        let _ = self.relay.set(relay);
    }

    /// Registers a connection; an older connection of the same lab is told to close.
    pub(crate) fn register(
        &self,
        lab_id: &LabId,
        generation: i64,
        hello: HelloInfo,
    ) -> (oneshot::Receiver<&'static str>, mpsc::Receiver<Outgoing>) {
        let (cut, cut_rx) = oneshot::channel();
        let (commands, commands_rx) = mpsc::channel(64);
        let connection = LiveConnection {
            generation,
            hello,
            cut,
            commands,
        };
        let previous = self
            .live
            .lock()
            .map(|mut live| live.insert(lab_id.clone(), connection))
            .ok()
            .flatten();
        if let Some(previous) = previous {
            let _ = previous.cut.send("superseded by a newer connection");
        }
        (cut_rx, commands_rx)
    }

    /// Calls `method` on the lab's agent and waits up to `timeout` for its answer: on this
    /// replica when it holds the agent, else through the replica that does.
    ///
    /// The call is a span (`gateway.call`); `program.run` and `device.call` carry its trace
    /// context to the agent (`traceparent` in their parameters, kept when the caller set one),
    /// so the agent's execution joins the trace.
    pub async fn call(
        &self,
        lab_id: &LabId,
        method: &str,
        mut params: Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let span = tracing::info_span!("gateway.call", lab.id = %lab_id, method, relayed = false);
        async {
            carry_trace(method, &mut params);
            if !self.is_connected(lab_id) {
                if let Some(relay) = self.relay.get() {
                    tracing::Span::current().record("relayed", true);
                    return relay.call(lab_id, method, params, timeout).await;
                }
            }
            self.call_local(lab_id, method, params, timeout).await
        }
        .instrument(span)
        .await
    }

    /// Calls `method` on the lab's agent if this replica holds it (`Offline` otherwise).
    pub async fn call_local(
        &self,
        lab_id: &LabId,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let commands = self
            .live
            .lock()
            .ok()
            .and_then(|live| live.get(lab_id).map(|c| c.commands.clone()))
            .ok_or(CallError::Offline)?;
        let (reply, answer) = oneshot::channel();
        let outgoing = Outgoing {
            method: method.to_owned(),
            params,
            reply,
        };
        commands
            .send(outgoing)
            .await
            .map_err(|_| CallError::Offline)?;
        match tokio::time::timeout(timeout, answer).await {
            Err(_) => Err(CallError::Timeout(timeout)),
            Ok(Err(_)) => Err(CallError::Closed),
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(rpc))) => Err(CallError::Rejected(rpc)),
        }
    }

    pub(crate) fn unregister(&self, lab_id: &LabId, generation: i64) {
        if let Ok(mut live) = self.live.lock() {
            if live.get(lab_id).is_some_and(|c| c.generation == generation) {
                live.remove(lab_id);
            }
        }
    }

    /// Closes the lab's live connection on this replica, if any (e.g. after revocation).
    pub fn cut(&self, lab_id: &LabId, reason: &'static str) -> bool {
        let removed = self
            .live
            .lock()
            .ok()
            .and_then(|mut live| live.remove(lab_id));
        match removed {
            Some(conn) => conn.cut.send(reason).is_ok(),
            None => false,
        }
    }

    /// Attaches the batched presence writer (once; later calls are ignored).
    pub(crate) fn set_presence(&self, writer: mpsc::UnboundedSender<(LabId, i64)>) {
        let _ = self.presence.set(writer);
    }

    /// Notes traffic on a connection for the presence writer; `false` when there is no writer
    /// (the caller writes presence itself).
    pub(crate) fn note_seen(&self, lab_id: &LabId, generation: i64) -> bool {
        self.presence
            .get()
            .is_some_and(|w| w.send((lab_id.clone(), generation)).is_ok())
    }

    /// Closes the lab's connection of `generation` on this replica, if it is the live one.
    pub fn cut_generation(&self, lab_id: &LabId, generation: i64, reason: &'static str) -> bool {
        let removed = self.live.lock().ok().and_then(|mut live| {
            if live.get(lab_id).is_some_and(|c| c.generation == generation) {
                live.remove(lab_id)
            } else {
                None
            }
        });
        match removed {
            Some(conn) => conn.cut.send(reason).is_ok(),
            None => false,
        }
    }

    /// Whether the lab's agent is connected to this replica.
    pub fn is_connected(&self, lab_id: &LabId) -> bool {
        self.live
            .lock()
            .map(|live| live.contains_key(lab_id))
            .unwrap_or(false)
    }

    /// What the lab's current connection said in its `hello`, if it is connected here.
    pub fn hello_of(&self, lab_id: &LabId) -> Option<HelloInfo> {
        self.live
            .lock()
            .ok()
            .and_then(|live| live.get(lab_id).map(|c| c.hello.clone()))
    }

    /// Number of open agent connections on this replica.
    pub fn len(&self) -> usize {
        self.live.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// Whether no agent is connected to this replica.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Puts the current span's trace context into the parameters of the two agent methods whose
/// parameters take it (agents that predate it ignore the member), unless one is already there
/// (a call relayed from another replica keeps its caller's).
fn carry_trace(method: &str, params: &mut Value) {
    if method != method::PROGRAM_RUN && method != method::DEVICE_CALL {
        return;
    }
    if let Value::Object(map) = params {
        if !map.contains_key("traceparent") {
            if let Some(tp) = maosic_telemetry::traceparent() {
                map.insert("traceparent".into(), Value::String(tp));
            }
        }
    }
}
