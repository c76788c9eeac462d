//! The agent wire protocol: JSON-RPC 2.0 messages exchanged over the agent's WebSocket.
//!
//! Both sides speak JSON-RPC 2.0 (<https://www.jsonrpc.org/specification>) in both directions.
//! The agent calls the cloud (`hello`) and notifies it (`heartbeat`, `goodbye`); the cloud calls
//! the agent (`program.run`, `device.call`, `estop`, ...) and notifies it (`ping`).
//! This module holds only the message shapes and method names; transports live in the crates
//! that own sockets.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Version string every message carries.
pub const JSONRPC_VERSION: &str = "2.0";

/// Method names of the agent protocol.
pub mod method {
    /// Agent → cloud request sent once after the WebSocket opens; answered with [`super::HelloResult`].
    pub const HELLO: &str = "hello";
    /// Agent → cloud notification sent every heartbeat period.
    pub const HEARTBEAT: &str = "heartbeat";
    /// Cloud → agent notification sent every heartbeat period (pings both ways).
    pub const PING: &str = "ping";
    /// Agent → cloud notification on a clean shutdown; the cloud marks the lab offline at once.
    pub const GOODBYE: &str = "goodbye";
    /// Cloud → agent request: run a compiled program ([`super::ProgramRunParams`]); answered with
    /// the program report when the run ends. Records stream meanwhile as `record` notifications.
    pub const PROGRAM_RUN: &str = "program.run";
    /// Cloud → agent request: cancel a running program ([`super::ProgramCancelParams`]).
    pub const PROGRAM_CANCEL: &str = "program.cancel";
    /// Cloud → agent request: one low-level device call ([`super::DeviceCallParams`]).
    pub const DEVICE_CALL: &str = "device.call";
    /// Cloud → agent request: software stop of the whole lab (pumps stopped, heater off).
    pub const ESTOP: &str = "estop";
    /// Cloud → agent request: an operator fault reset ([`super::SafetyResetParams`]): the
    /// latched faults are cleared (nothing restarts); answered with the faults cleared and those
    /// latched again because their condition persists.
    pub const SAFETY_RESET: &str = "safety.reset";
    /// Agent → cloud notification: one record (measurement, status, safety event, result).
    pub const RECORD: &str = "record";
    /// Cloud → agent notification: every record of the epoch up to `seq_hi` is stored
    /// ([`super::AckParams`]); the agent may delete them from its spool.
    pub const ACK: &str = "ack";
    /// Cloud → agent notification: the lab is over its ingestion limits ([`super::ThrottleParams`]);
    /// records from the first unacknowledged one on were not stored. The agent keeps them in its
    /// spool and sends them again from there after `retry_after_ms`.
    pub const THROTTLE: &str = "throttle";
}

/// Standard JSON-RPC error codes and the protocol's own.
pub mod error_code {
    /// Invalid JSON was received.
    pub const PARSE_ERROR: i64 = -32700;
    /// The JSON sent is not a valid request object.
    pub const INVALID_REQUEST: i64 = -32600;
    /// The method does not exist or is not available.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Invalid method parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// Internal error on the answering side.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// A request arrived before `hello` completed.
    pub const NOT_READY: i64 = -32001;
    /// `program.run` for a program id the agent already accepted (it is never run twice).
    pub const ALREADY_ACCEPTED: i64 = -32010;
    /// `program.run` whose `deadline_ms` had passed when it reached the agent (never started).
    pub const DEADLINE_PASSED: i64 = -32011;
}

/// A JSON-RPC request or notification id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Id {
    /// Numeric id.
    Number(i64),
    /// String id.
    String(String),
}

/// One JSON-RPC 2.0 message: a request (with id), a notification (without) or a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Message {
    /// A call that expects a response.
    Request(Request),
    /// A response to an earlier request.
    Response(Response),
    /// A call without id; no response is sent.
    Notification(Notification),
}

/// A JSON-RPC request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// Correlates the response.
    pub id: Id,
    /// Method name, e.g. `hello` or `H.set_temperature`.
    pub method: String,
    /// Parameters (object or array); `null` when absent.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub params: Value,
}

/// A JSON-RPC notification (no id, no response).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notification {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// Method name.
    pub method: String,
    /// Parameters; `null` when absent.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub params: Value,
}

/// A JSON-RPC response: exactly one of `result` and `error` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// The id of the request answered (null when the request could not be parsed).
    pub id: Option<Id>,
    /// The result on success (`Some(Value::Null)` for an explicit `"result": null`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub result: Option<Value>,
    /// The error on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RpcError>,
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("JSON-RPC error {code}: {message}")]
pub struct RpcError {
    /// Error code (see [`error_code`]).
    pub code: i64,
    /// Short human-readable message.
    pub message: String,
    /// Optional structured detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// Errors decoding a protocol message.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The text is not a JSON-RPC 2.0 message.
    #[error("not a JSON-RPC 2.0 message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The `jsonrpc` member is not `"2.0"`.
    #[error("unsupported JSON-RPC version {0:?}")]
    Version(String),
    /// A response carried both or neither of `result` and `error`.
    #[error("a response must carry exactly one of result and error")]
    AmbiguousResponse,
}

/// Deserialises a member that is present (even when `null`) as `Some`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl Message {
    /// Parses one message from its JSON text, checking the version and response shape.
    pub fn parse(text: &str) -> Result<Self, ProtocolError> {
        let message: Message = serde_json::from_str(text)?;
        let version = match &message {
            Message::Request(r) => &r.jsonrpc,
            Message::Response(r) => &r.jsonrpc,
            Message::Notification(n) => &n.jsonrpc,
        };
        if version != JSONRPC_VERSION {
            return Err(ProtocolError::Version(version.clone()));
        }
        if let Message::Response(r) = &message {
            if r.result.is_some() == r.error.is_some() {
                return Err(ProtocolError::AmbiguousResponse);
            }
        }
        Ok(message)
    }

    /// Serialises the message to JSON text.
    pub fn to_json(&self) -> String {
        // Serialising these plain trees of strings and JSON values cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A request with typed parameters.
    pub fn request(id: Id, method: &str, params: impl Serialize) -> Self {
        Message::Request(Request {
            jsonrpc: JSONRPC_VERSION.to_owned(),
            id,
            method: method.to_owned(),
            params: serde_json::to_value(params).unwrap_or(Value::Null),
        })
    }

    /// A notification with typed parameters.
    pub fn notification(method: &str, params: impl Serialize) -> Self {
        Message::Notification(Notification {
            jsonrpc: JSONRPC_VERSION.to_owned(),
            method: method.to_owned(),
            params: serde_json::to_value(params).unwrap_or(Value::Null),
        })
    }

    /// A success response.
    pub fn result(id: Id, result: impl Serialize) -> Self {
        Message::Response(Response {
            jsonrpc: JSONRPC_VERSION.to_owned(),
            id: Some(id),
            result: Some(serde_json::to_value(result).unwrap_or(Value::Null)),
            error: None,
        })
    }

    /// An error response.
    pub fn error(id: Option<Id>, code: i64, message: impl Into<String>) -> Self {
        Message::Response(Response {
            jsonrpc: JSONRPC_VERSION.to_owned(),
            id,
            result: None,
            error: Some(RpcError {
                code,
                message: message.into(),
                data: None,
            }),
        })
    }
}

/// One device as announced in `hello`: enough for presence and listings. The full capability
/// descriptor travels beside it in [`HelloParams::descriptor`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceSummary {
    /// The device's symbol in the instruction language (e.g. `H`, `P1`).
    pub name: String,
    /// The device kind (e.g. `heater`, `pump`).
    pub kind: String,
}

/// Parameters of the agent's `hello` request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloParams {
    /// The agent's software version.
    pub agent_version: String,
    /// The devices the lab has.
    pub devices: Vec<DeviceSummary>,
    /// The lab's full capability descriptor (JSON form of the lab descriptor), if known.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub descriptor: Value,
    /// Program runs the agent is executing now (so the cloud can tell an interrupted experiment
    /// from one still running after a reconnect).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub running: Vec<String>,
}

/// The cloud's answer to `hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloResult {
    /// The lab this agent's credential belongs to.
    pub lab_id: String,
    /// The connection generation the cloud assigned to this connection (rule 4).
    pub generation: i64,
    /// The heartbeat period both sides use, in milliseconds.
    pub heartbeat_ms: u64,
}

/// Parameters of `heartbeat` and `ping` notifications.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatParams {
    /// Sender's clock in milliseconds since the Unix epoch (informational).
    pub time_ms: i64,
}

/// Parameters of `goodbye`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GoodbyeParams {
    /// Why the agent is leaving.
    pub reason: String,
}

/// Parameters of `program.run`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramRunParams {
    /// The cloud's id for this run; records carry it.
    pub program_id: String,
    /// The compiled program (the JSON form of `crate::program::Program`).
    pub program: Value,
    /// Link-loss policy for this run: `continue`, `hold` or `safe_stop` (default: the lab's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_loss: Option<String>,
    /// Latest start, ms since the Unix epoch: past it the agent refuses the run with
    /// [`error_code::DEADLINE_PASSED`] and never starts it (docs/reliability.md rule 5). None: no deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<i64>,
    /// The cloud's trace context (W3C `traceparent`), so the agent's spans of this run join the
    /// cloud's trace. Agents that predate it ignore the member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// Parameters of `program.cancel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgramCancelParams {
    /// The run to cancel.
    pub program_id: String,
}

/// Parameters of `device.call`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceCallParams {
    /// `"<SYMBOL>.<method>"`, e.g. `H.set_temperature`.
    pub method: String,
    /// Named numeric parameters in the units of the capability descriptor.
    #[serde(default)]
    pub params: std::collections::BTreeMap<String, f64>,
    /// The cloud's trace context (W3C `traceparent`), as for `program.run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// Parameters of `safety.reset`: who resets and why (kept in the lab's record stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafetyResetParams {
    /// Who asks, e.g. `user:<id>` for a lab admin acting through the cloud.
    pub actor: String,
    /// Why, in the operator's words.
    pub reason: String,
}

/// Parameters of `record`: one record with its delivery key `(epoch, seq)` (docs/reliability.md rule 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordParams {
    /// Random id of the agent's record stream; a new epoch restarts `seq`.
    pub epoch: String,
    /// Dense sequence number within the epoch, from 1.
    pub seq: u64,
    /// The program run the record belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_id: Option<String>,
    /// The record (the agent's `Record` JSON: step, method, times and a typed body).
    pub record: Value,
}

/// Parameters of `ack`: the cloud stored every record of `epoch` up to and including `seq_hi`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckParams {
    /// The record stream's epoch.
    pub epoch: String,
    /// Highest sequence number stored (records arrive in order on one connection).
    pub seq_hi: u64,
}

/// Parameters of `throttle`: wait this long, then resend from the first unacknowledged record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleParams {
    /// How long to hold records back, ms.
    pub retry_after_ms: u64,
    /// Which limit: `records_per_second` or `bytes_per_day`.
    pub reason: String,
}

/// The agent's credential file: which lab it is and the secret it authenticates with.
/// Written once (by enrollment or `maosic-server admin create-lab`), read by `maosic-agent`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCredentialFile {
    /// The lab the credential belongs to.
    pub lab_id: String,
    /// Public id of the credential.
    pub credential_id: String,
    /// The secret half; never logged.
    pub secret: String,
}

impl std::fmt::Debug for AgentCredentialFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCredentialFile")
            .field("lab_id", &self.lab_id)
            .field("credential_id", &self.credential_id)
            .field("secret", &"***")
            .finish()
    }
}

impl AgentCredentialFile {
    /// The bearer token the agent presents: `<credential_id>.<secret>`.
    pub fn bearer_token(&self) -> String {
        format!("{}.{}", self.credential_id, self.secret)
    }

    /// Splits a bearer token into credential id and secret.
    pub fn split_token(token: &str) -> Option<(&str, &str)> {
        let (id, secret) = token.split_once('.')?;
        (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
    }
}

/// The WebSocket path of the agent gateway.
pub const AGENT_WS_PATH: &str = "/agent/v1/ws";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips_and_is_told_apart_from_notification() {
        let hello = Message::request(
            Id::Number(1),
            method::HELLO,
            HelloParams {
                agent_version: "0.1.0".into(),
                devices: vec![DeviceSummary {
                    name: "H".into(),
                    kind: "heater".into(),
                }],
                descriptor: Value::Null,
                running: Vec::new(),
            },
        );
        let text = hello.to_json();
        assert_eq!(Message::parse(&text).unwrap(), hello);
        let note = Message::notification(method::HEARTBEAT, HeartbeatParams { time_ms: 5 });
        assert!(matches!(
            Message::parse(&note.to_json()).unwrap(),
            Message::Notification(_)
        ));
    }

    #[test]
    fn malformed_and_wrong_version_messages_are_rejected() {
        assert!(Message::parse("{").is_err());
        assert!(Message::parse(r#"{"jsonrpc":"1.0","method":"x"}"#).is_err());
        assert!(Message::parse(r#"{"jsonrpc":"2.0","id":1}"#).is_err());
        assert!(Message::parse(
            r#"{"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1,"message":"x"}}"#
        )
        .is_err());
        assert!(matches!(
            Message::parse(r#"{"jsonrpc":"2.0","id":1,"result":null}"#).unwrap(),
            Message::Response(Response {
                result: Some(Value::Null),
                ..
            })
        ));
    }
}
