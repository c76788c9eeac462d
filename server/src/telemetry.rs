//! Tracing set-up: env-filter directives from config (RUST_LOG wins), text or JSON logs on
//! stderr (stdout stays free for command output) and, when `log.otlp_endpoint` is set,
//! OpenTelemetry traces over OTLP/HTTP (`maosic-telemetry`).

use crate::config::{LogConfig, LogFormat};

pub use maosic_telemetry::{Guard, TelemetryError};

/// Installs the global tracing subscriber. Safe to call more than once (later calls install
/// nothing). Keep the guard for the life of the process: dropping it flushes the spans.
pub fn init(log: &LogConfig) -> Result<Guard, TelemetryError> {
    maosic_telemetry::init(&maosic_telemetry::Settings {
        service: "maosic-server",
        instance: None,
        filter: log.filter.clone(),
        json: log.format == LogFormat::Json,
        otlp_endpoint: log.otlp_endpoint.clone(),
        sample_ratio: log.trace_sample_ratio,
    })
}
