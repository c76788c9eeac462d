//! Presence of this replica's agent connections, written in batches. Every connection notes
//! its traffic about once per heartbeat period; one task writes whatever was noted within
//! [`FLUSH_EVERY`] in one statement (`LabStorage::agents_seen`), so 10,000 idle agents cost a
//! few statements a second, not a thousand transactions. A connection whose generation is no
//! longer current (a newer connection of its lab took over, on any replica) is cut, as the
//! per-connection write did (RELIABILITY rule 4: only the current generation changes presence).

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::state::AppState;
use crate::storage::{now_ms, tenant, LabId};

/// How long noted traffic may wait for its write.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// Starts the writer and attaches it to the gateway; until then (or without it) connections
/// write their own presence.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    state.gateway.set_presence(tx);
    tokio::spawn(tenant::system(run(state, rx)))
}

async fn run(state: AppState, mut rx: mpsc::UnboundedReceiver<(LabId, i64)>) {
    while let Some(first) = rx.recv().await {
        let mut noted = vec![first];
        let flush = tokio::time::sleep(FLUSH_EVERY);
        tokio::pin!(flush);
        loop {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(n) => noted.push(n),
                    None => break,
                },
                _ = &mut flush => break,
            }
        }
        let mut seen = HashSet::new();
        noted.retain(|n| seen.insert(n.clone()));
        match state.storage.agents_seen(&noted, now_ms()).await {
            Ok(current) => {
                for ((lab_id, generation), current) in noted.into_iter().zip(current) {
                    if !current {
                        debug!(lab.id = %lab_id, generation, "connection no longer current");
                        state.gateway.cut_generation(
                            &lab_id,
                            generation,
                            "a newer connection of the lab took over",
                        );
                    }
                }
            }
            // Presence is refreshed at the next heartbeat; nothing else depends on this write.
            Err(e) => {
                warn!(error = %e, connections = noted.len(), "could not record agent traffic")
            }
        }
    }
}
