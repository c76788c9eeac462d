//! Typed errors of the lab layer: what a device call can fail with, worded for an operator.

use std::time::Duration;

/// Why a device call failed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// A parameter is outside the device's local limits; nothing was sent to the device.
    #[error(
        "{device}: {param} = {value} is outside the local limit [{min}, {max}]; nothing was sent"
    )]
    OutOfRange {
        device: String,
        param: String,
        value: f64,
        min: f64,
        max: f64,
    },
    /// A parameter is missing, not a number, or otherwise malformed; nothing was sent.
    #[error("{device}: bad parameter: {message}")]
    BadParameter { device: String, message: String },
    /// The device did not send a complete reply in time (after the allowed retries).
    #[error("{device}: no complete reply within {timeout:?} after {attempts} attempt(s)")]
    Timeout {
        device: String,
        timeout: Duration,
        attempts: u32,
    },
    /// The port was closed or the device went away.
    #[error("{device}: port closed or device disconnected: {detail}")]
    Disconnected { device: String, detail: String },
    /// The device answered, but with something the protocol does not allow.
    #[error("{device}: protocol error: {detail}")]
    Protocol { device: String, detail: String },
    /// The device understood the command and refused it.
    #[error("{device}: device refused the command: {detail}")]
    Refused { device: String, detail: String },
    /// The device reports an alarm or fault.
    #[error("{device}: device fault: {detail}")]
    Fault { device: String, detail: String },
    /// The safety kernel blocked the call (latched fault, e-stop, limit).
    #[error("safety interlock: {0}")]
    Interlock(String),
    #[error("{device} is in use by program {program}; try again when it has finished")]
    InUse { device: String, program: String },
    /// No such device or method in this lab.
    #[error("unknown method {0}")]
    UnknownMethod(String),
    /// The device could not be opened.
    #[error("{device}: cannot open {port}: {detail}")]
    Open {
        device: String,
        port: String,
        detail: String,
    },
    /// The operation was canceled.
    #[error("canceled")]
    Canceled,
}

impl DeviceError {
    /// Short machine-readable code for records and the link.
    pub fn code(&self) -> &'static str {
        match self {
            DeviceError::OutOfRange { .. } => "out_of_range",
            DeviceError::BadParameter { .. } => "bad_parameter",
            DeviceError::Timeout { .. } => "timeout",
            DeviceError::Disconnected { .. } => "disconnected",
            DeviceError::Protocol { .. } => "protocol",
            DeviceError::Refused { .. } => "refused",
            DeviceError::Fault { .. } => "fault",
            DeviceError::Interlock(_) => "interlock",
            DeviceError::InUse { .. } => "in_use",
            DeviceError::UnknownMethod(_) => "unknown_method",
            DeviceError::Open { .. } => "open",
            DeviceError::Canceled => "canceled",
        }
    }
}

/// Check `value` against `[min, max]` (and finiteness) for a named parameter.
pub fn check_range(
    device: &str,
    param: &str,
    value: f64,
    min: f64,
    max: f64,
) -> Result<(), DeviceError> {
    if value.is_finite() && value >= min && value <= max {
        Ok(())
    } else {
        Err(DeviceError::OutOfRange {
            device: device.to_string(),
            param: param.to_string(),
            value,
            min,
            max,
        })
    }
}
