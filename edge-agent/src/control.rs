//! The agent's local control socket: an operator at the lab's machine lists the latched safety
//! faults and resets them without restarting the agent (`maosic-agent faults`,
//! `maosic-agent reset-faults --reason ...`), as a lab admin can through the cloud
//! (`resetLabFaults`, which reaches the agent as `safety.reset`). Both go through
//! [`reset_faults`]: the kernel clears its latches (nothing restarts), and the reset is written to
//! the spool as a safety record naming who and why, so the cloud's record of the lab has it.
//!
//! The socket is a Unix domain socket next to the spool, mode 0600, and a connection is served
//! only when the peer runs as the socket's owner (the agent's user) or as root. One request per
//! connection: a JSON line in, a JSON line out.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use maosic_lab::error::DeviceError;
use maosic_lab::lab::Lab;
use maosic_lab::record::{Record, RecordBody};
use maosic_lab::safety::{Fault, FaultReset};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::spool::Spool;

/// Longest request line accepted.
const MAX_LINE: u64 = 4096;

/// A request on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum ControlRequest {
    /// The latched faults.
    Faults,
    /// An operator fault reset.
    Reset {
        /// Why, in the operator's words (kept in the record stream).
        reason: String,
    },
}

/// The answer to a [`ControlRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum ControlReply {
    /// The latched faults.
    Faults {
        /// Latched now.
        latched: Vec<Fault>,
    },
    /// What the reset did.
    Reset(FaultReset),
    /// The request was refused or failed.
    Error {
        /// Why.
        message: String,
    },
}

/// Errors of the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another agent answers on the socket.
    #[error("another agent serves the control socket {0} (one agent per spool)")]
    InUse(PathBuf),
    /// The socket could not be created, reached, read or written.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The agent's answer was not understood.
    #[error("unexpected answer on the control socket: {0}")]
    Protocol(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ControlError + '_ {
    move |source| ControlError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The control socket of an agent whose spool is `spool`: the same path with `.sock`.
pub fn default_path(spool: &Path) -> PathBuf {
    spool.with_extension("sock")
}

/// Creates the socket at `path` (mode 0600). A socket file left by an agent that died is
/// replaced; one another agent still answers on is refused.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io_error(path))?;
    }
    let listener = UnixListener::bind(path).map_err(io_error(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_error(path))?;
    Ok(listener)
}

/// Resets the lab's faults for `by`, then writes the safety kernel's pending events (the reset
/// among them) to the spool as records and wakes the link to send them.
pub async fn reset_faults(
    lab: &Lab,
    spool: &Spool,
    spooled: &Notify,
    by: &str,
) -> Result<FaultReset, DeviceError> {
    let reset = lab.reset_faults(by).await?;
    warn!(by, cleared = ?reset.cleared, latched = ?reset.latched, "operator fault reset");
    for event in lab.kernel().drain_events() {
        let record = Record {
            program: None,
            step: None,
            method: None,
            lab_time_s: event.lab_time_s,
            unix_ms: u64::try_from(crate::now_ms()).unwrap_or(0),
            body: RecordBody::Safety {
                event: event.event,
                detail: event.detail,
            },
        };
        let value = serde_json::to_value(record).unwrap_or(serde_json::Value::Null);
        crate::link::spool_record(spool, None, &value).await;
    }
    spooled.notify_one();
    Ok(reset)
}

/// Serves the control socket until the task is dropped.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    lab: Arc<Lab>,
    spool: Spool,
    spooled: Arc<Notify>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (lab, spool, spooled, path) =
            (lab.clone(), spool.clone(), spooled.clone(), path.clone());
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &path, &lab, &spool, &spooled).await {
                warn!(error = %e, "control socket request failed");
            }
        });
    }
}

async fn answer(
    stream: UnixStream,
    path: &Path,
    lab: &Lab,
    spool: &Spool,
    spooled: &Notify,
) -> Result<(), ControlError> {
    let peer = stream.peer_cred().map_err(io_error(path))?.uid();
    let owner = std::fs::metadata(path).map_err(io_error(path))?.uid();
    let (read, mut write) = stream.into_split();
    let reply = if peer != owner && peer != 0 {
        warn!(
            peer_uid = peer,
            "control socket: refused a user other than the agent's"
        );
        ControlReply::Error {
            message: "only the agent's user or root may use the control socket".into(),
        }
    } else {
        let mut line = String::new();
        BufReader::new(read.take(MAX_LINE))
            .read_line(&mut line)
            .await
            .map_err(io_error(path))?;
        match serde_json::from_str::<ControlRequest>(&line) {
            Ok(ControlRequest::Faults) => ControlReply::Faults {
                latched: lab.kernel().faults(),
            },
            Ok(ControlRequest::Reset { reason }) if reason.trim().is_empty() => {
                ControlReply::Error {
                    message: "a reset needs a reason".into(),
                }
            }
            Ok(ControlRequest::Reset { reason }) => {
                let by = format!("local operator (uid {peer}): {}", reason.trim());
                info!(by, "fault reset requested on the control socket");
                match reset_faults(lab, spool, spooled, &by).await {
                    Ok(reset) => ControlReply::Reset(reset),
                    Err(e) => ControlReply::Error {
                        message: format!("the reset failed: {e}"),
                    },
                }
            }
            Err(e) => ControlReply::Error {
                message: format!("not a control request: {e}"),
            },
        }
    };
    let mut text =
        serde_json::to_string(&reply).map_err(|e| ControlError::Protocol(e.to_string()))?;
    text.push('\n');
    write
        .write_all(text.as_bytes())
        .await
        .map_err(io_error(path))?;
    write.shutdown().await.map_err(io_error(path))?;
    Ok(())
}

/// Sends one request to the agent serving `path` and returns its answer.
pub async fn request(path: &Path, request: &ControlRequest) -> Result<ControlReply, ControlError> {
    let stream = UnixStream::connect(path).await.map_err(io_error(path))?;
    let (read, mut write) = stream.into_split();
    let mut text =
        serde_json::to_string(request).map_err(|e| ControlError::Protocol(e.to_string()))?;
    text.push('\n');
    write
        .write_all(text.as_bytes())
        .await
        .map_err(io_error(path))?;
    let mut line = String::new();
    BufReader::new(read.take(1 << 20))
        .read_line(&mut line)
        .await
        .map_err(io_error(path))?;
    serde_json::from_str(&line).map_err(|e| ControlError::Protocol(format!("{e}: {line:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_are_one_json_line_each() {
        let r = serde_json::to_string(&ControlRequest::Reset {
            reason: "thermocouple replaced".into(),
        })
        .unwrap();
        assert_eq!(r, r#"{"method":"reset","reason":"thermocouple replaced"}"#);
        let back: ControlRequest = serde_json::from_str(r#"{"method":"faults"}"#).unwrap();
        assert_eq!(back, ControlRequest::Faults);
        assert_eq!(
            default_path(Path::new("/var/lib/maosic/spool.db")),
            PathBuf::from("/var/lib/maosic/spool.sock")
        );
    }

    #[tokio::test]
    async fn a_socket_another_agent_answers_on_is_refused_and_a_stale_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let live = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(bind(&path), Err(ControlError::InUse(_))));
        drop(live);
        // The file stays behind, nobody answers: replaced.
        assert!(path.exists());
        let _again = bind(&path).unwrap();
    }
}
