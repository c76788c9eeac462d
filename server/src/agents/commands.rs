//! The command dispatcher: instructions queued for a lab (`queueInstruction`) are sent to its
//! agent when it is connected, before their deadline, as a one-step program whose program id
//! is the command id — so the agent's durable memory of accepted ids makes a re-send (after a
//! lost answer or a server restart) harmless, and the agent refuses a command that reaches it
//! after the deadline (`DEADLINE_PASSED`). A command still queued at its deadline becomes
//! `timed_out` here and is never sent. States are in [`crate::storage::commands`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use maosic_schema::protocol::error_code;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::agents::registry::CallError;
use crate::events::Event;
use crate::state::AppState;
use crate::storage::commands::{CommandEnd, LabCommand};
use crate::storage::{now_ms, tenant, CommandId, StorageError};

/// How often the dispatcher looks at open commands without an event.
const TICK: Duration = Duration::from_millis(200);
/// Least time between two sends of the same `sent` command.
const RESEND_AFTER_MS: i64 = 1_000;
/// Time for the agent to answer beyond the program's nominal duration.
const ANSWER_MARGIN: Duration = Duration::from_secs(60);

/// Starts the dispatcher.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(tenant::system(run(state)))
}

/// Commands being sent by this process, with the time of the last send.
type InFlight = Arc<Mutex<HashMap<CommandId, Option<i64>>>>;

async fn run(state: AppState) {
    let in_flight: InFlight = Arc::default();
    let mut events = state.events.subscribe();
    info!("command dispatcher started");
    loop {
        if let Err(e) = tenant::system(pass(&state, &in_flight)).await {
            warn!(error = %e, "command dispatcher pass failed; retrying");
        }
        let sleep = tokio::time::sleep(TICK);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                ev = events.recv() => match ev {
                    Ok(Event::LabStatus { online: true, .. }) | Ok(Event::Wake) => break,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

async fn pass(state: &AppState, in_flight: &InFlight) -> Result<(), StorageError> {
    let now = now_ms();
    for c in state.storage.expire_commands(now).await? {
        info!(command.id = %c.id, lab.id = %c.lab_id, "command timed out before it could be sent");
    }
    // One command per lab at a time, oldest first: instructions run in the order queued.
    let mut busy_labs = HashSet::new();
    for c in state.storage.open_commands().await? {
        if !busy_labs.insert(c.lab_id.clone()) || !state.gateway.is_connected(&c.lab_id) {
            continue;
        }
        {
            let Ok(mut flying) = in_flight.lock() else {
                return Ok(());
            };
            match flying.get(&c.id) {
                // Being sent now.
                Some(None) => continue,
                // Sent before; its answer was lost or its end is awaited: again after a pause
                // (same id, so the agent refuses it if it had accepted it).
                Some(Some(at)) if now - at < RESEND_AFTER_MS => continue,
                _ => {}
            }
            flying.insert(c.id.clone(), None);
        }
        let Some(claimed) = state.storage.claim_command(&c.id, now).await? else {
            if let Ok(mut flying) = in_flight.lock() {
                flying.remove(&c.id);
            }
            continue;
        };
        let (state, in_flight) = (state.clone(), in_flight.clone());
        tokio::spawn(tenant::system(async move {
            let id = claimed.id.clone();
            let ended = match send(&state, &claimed).await {
                Ok(ended) => ended,
                Err(e) => {
                    warn!(command.id = %id, error = %e, "command state not stored; will retry");
                    false
                }
            };
            if let Ok(mut flying) = in_flight.lock() {
                if ended {
                    flying.remove(&id);
                } else {
                    flying.insert(id, Some(now_ms()));
                }
            }
        }));
    }
    Ok(())
}

/// The outcome in a stored `program_finished` record (the agent's record: `{kind, body}`).
fn finished_outcome(record_body: &str) -> String {
    let record: Value = serde_json::from_str(record_body).unwrap_or(Value::Null);
    record["body"]["outcome"]
        .as_str()
        .unwrap_or("unknown")
        .to_owned()
}

/// Sends one claimed command; true when it reached a final state.
async fn send(state: &AppState, c: &LabCommand) -> Result<bool, StorageError> {
    let program: Value = serde_json::from_str(&c.program_json).unwrap_or(Value::Null);
    let nominal = program["estimated_duration_ms"].as_u64().unwrap_or(0);
    let params = json!({
        "program_id": c.id,
        "program": program,
        "deadline_ms": c.deadline_at,
    });
    info!(command.id = %c.id, lab.id = %c.lab_id, method = %c.method, attempt = c.attempts, "sending command");
    let answer = state
        .gateway
        .call(
            &c.lab_id,
            "program.run",
            params,
            Duration::from_millis(nominal) + ANSWER_MARGIN,
        )
        .await;
    let finish = |end: CommandEnd, result: Option<String>, error: Option<String>| async move {
        state
            .storage
            .finish_command(&c.id, end, result.as_deref(), error.as_deref(), now_ms())
            .await
    };
    match answer {
        Ok(report) => {
            let succeeded = report["outcome"] == "succeeded";
            // (A direct answer is the agent's report itself, not a record.)
            let error = report["error"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| (!succeeded).then(|| format!("program ended {}", report["outcome"])));
            let end = if succeeded {
                CommandEnd::Succeeded
            } else {
                CommandEnd::Failed
            };
            finish(end, Some(report.to_string()), error).await?;
            Ok(true)
        }
        Err(CallError::Rejected(rpc)) if rpc.code == error_code::DEADLINE_PASSED => {
            finish(CommandEnd::TimedOut, None, Some(rpc.message)).await?;
            Ok(true)
        }
        Err(CallError::Rejected(rpc)) if rpc.code == error_code::ALREADY_ACCEPTED => {
            // Accepted on an earlier send: its end arrives as the program's records.
            let finished = state
                .storage
                .program_record_of_kind(&c.lab_id, &c.id, "program_finished")
                .await?;
            if let Some(record) = finished {
                let outcome = finished_outcome(&record.body);
                let (end, error) = if outcome == "succeeded" {
                    (CommandEnd::Succeeded, None)
                } else {
                    (CommandEnd::Failed, Some(format!("program ended {outcome}")))
                };
                finish(end, Some(record.body), error).await?;
                return Ok(true);
            }
            // Still running on the agent (its refusal says so): wait for the end.
            if rpc.message.contains("already running") {
                return Ok(false);
            }
            // Accepted, no longer running, no end reported: the agent restarted mid-run. Once
            // its backlog had time to arrive, the command ends interrupted — never re-run.
            let grace = i64::try_from(state.config.campaigns.interrupted_grace_ms).unwrap_or(0);
            let connected_at = state
                .gateway
                .hello_of(&c.lab_id)
                .map_or(i64::MAX, |h| h.connected_at);
            if now_ms() - connected_at > grace {
                warn!(command.id = %c.id, lab.id = %c.lab_id, "command interrupted on the agent");
                finish(
                    CommandEnd::Failed,
                    None,
                    Some(
                        "interrupted: the agent accepted it but restarted without finishing it; \
                         what it measured is kept, nothing was re-run"
                            .into(),
                    ),
                )
                .await?;
                return Ok(true);
            }
            Ok(false)
        }
        Err(CallError::Rejected(rpc)) => {
            finish(
                CommandEnd::Failed,
                None,
                Some(format!("the agent refused: {}", rpc.message)),
            )
            .await?;
            Ok(true)
        }
        // Offline, link closed, no answer in time: still `sent`; sent again when connected.
        Err(e) => {
            warn!(command.id = %c.id, error = ?e, "command answer lost; will re-send");
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::finished_outcome;

    #[test]
    fn the_outcome_is_read_from_the_record_body() {
        let record = r#"{"kind":"program_finished","unix_ms":1,"body":{"outcome":"succeeded"}}"#;
        assert_eq!(finished_outcome(record), "succeeded");
        assert_eq!(finished_outcome("{}"), "unknown");
        assert_eq!(finished_outcome("not json"), "unknown");
    }
}
