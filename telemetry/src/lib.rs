//! Tracing set-up shared by `maosic-server` and `maosic-agent`.
//!
//! Logs always go to stderr (text or JSON; stdout stays free for command output). When an OTLP
//! endpoint is configured, the same `tracing` spans are also exported as OpenTelemetry traces
//! over OTLP/HTTP (protobuf), batched by the SDK on its own thread. Off by default: without an
//! endpoint no exporter, no layer and no cost beyond the logs.
//!
//! One trace follows a piece of work across processes with W3C trace context: [`traceparent`]
//! reads the current span's context as a `traceparent` string (carried in the agent protocol's
//! `program.run` and `device.call` parameters and stored with queued experiments), and
//! [`set_parent`] makes a span a child of such a string on the other side.

#[cfg(feature = "otlp")]
mod otlp;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// What [`init`] sets up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `service.name` of the exported spans, e.g. `maosic-server`.
    pub service: &'static str,
    /// `service.instance.id` (a replica id, a lab id), if known.
    pub instance: Option<String>,
    /// tracing env-filter directives (RUST_LOG wins when set).
    pub filter: String,
    /// One JSON object per log line instead of text.
    pub json: bool,
    /// Base URL of an OTLP/HTTP collector (`http://collector:4318`); `/v1/traces` is appended
    /// unless the URL has a path. `None`: traces are off.
    pub otlp_endpoint: Option<String>,
    /// Fraction of new traces sampled (0–1); a trace started elsewhere follows its parent's
    /// decision.
    pub sample_ratio: f64,
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The endpoint is not an http(s) URL.
    #[error("bad OTLP endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// The endpoint as configured.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The sample ratio is outside 0–1.
    #[error("trace sample ratio must be within 0 and 1, got {0}")]
    SampleRatio(f64),
    /// The exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    /// This binary was built without the `otlp` feature.
    #[error("an OTLP endpoint is configured but this build has no OpenTelemetry support (feature `otlp`)")]
    NotBuilt,
}

/// Keeps the exporter alive; dropping it flushes the spans not yet sent (bounded by the
/// exporter's time-out).
#[must_use = "dropping the guard stops trace export"]
#[derive(Default)]
pub struct Guard {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("exporting", &self.exporting())
            .finish()
    }
}

impl Guard {
    /// Whether traces are being exported.
    pub fn exporting(&self) -> bool {
        #[cfg(feature = "otlp")]
        {
            self.provider.is_some()
        }
        #[cfg(not(feature = "otlp"))]
        {
            false
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("trace export did not flush: {e}");
            }
        }
    }
}

fn filter(directives: &str) -> EnvFilter {
    EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(directives))
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global tracing subscriber: logs on stderr and, with an endpoint, the
/// OpenTelemetry layer. A second call installs nothing (the first subscriber stays) and returns
/// a guard that exports nothing.
pub fn init(settings: &Settings) -> Result<Guard, TelemetryError> {
    if !(0.0..=1.0).contains(&settings.sample_ratio) {
        return Err(TelemetryError::SampleRatio(settings.sample_ratio));
    }
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if settings.json {
        fmt.json().flatten_event(true).boxed()
    } else {
        fmt.boxed()
    };
    let logs = fmt.with_filter(filter(&settings.filter));
    let Some(endpoint) = settings
        .otlp_endpoint
        .as_deref()
        .filter(|e| !e.trim().is_empty())
    else {
        let _ = tracing_subscriber::registry().with(logs).try_init();
        return Ok(Guard::default());
    };
    #[cfg(feature = "otlp")]
    {
        let (provider, layer) = otlp::layer(settings, endpoint)?;
        let traces = layer.with_filter(filter(&settings.filter));
        if tracing_subscriber::registry()
            .with(logs)
            .with(traces)
            .try_init()
            .is_err()
        {
            let _ = provider.shutdown();
            return Ok(Guard::default());
        }
        tracing::info!(
            endpoint,
            service = settings.service,
            "exporting traces over OTLP"
        );
        Ok(Guard {
            provider: Some(provider),
        })
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = (logs, endpoint);
        Err(TelemetryError::NotBuilt)
    }
}

/// The current span's trace context as a W3C `traceparent` (`00-<trace>-<span>-<flags>`), or
/// `None` when traces are off or the span is not recorded.
pub fn traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// `span`'s trace context as a W3C `traceparent`, or `None` (see [`traceparent`]).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    #[cfg(feature = "otlp")]
    {
        otlp::traceparent_of(span)
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = span;
        None
    }
}

/// Makes `span` a child of the remote context in `traceparent` (W3C). Returns whether it took:
/// `false` when the string is not a valid traceparent, traces are off, or the span has
/// already started recording under another parent.
pub fn set_parent(span: &tracing::Span, traceparent: &str) -> bool {
    #[cfg(feature = "otlp")]
    {
        otlp::set_parent(span, traceparent)
    }
    #[cfg(not(feature = "otlp"))]
    {
        let _ = (span, traceparent);
        false
    }
}

/// Whether `text` is a well-formed W3C `traceparent` of version 00 with non-zero ids. Used to
/// refuse junk before storing or forwarding a client-supplied value.
pub fn is_traceparent(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    matches!(parts.as_slice(), [v, t, s, f]
        if *v == "00" && hex(t, 32) && hex(s, 16) && hex(f, 2) && nonzero(t) && nonzero(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_must_be_version_00_lowercase_hex_with_nonzero_ids() {
        assert!(is_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(!is_traceparent(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn without_an_endpoint_nothing_is_exported_and_no_traceparent_exists() {
        let guard = init(&Settings {
            service: "test",
            instance: None,
            filter: "info".into(),
            json: false,
            otlp_endpoint: None,
            sample_ratio: 1.0,
        })
        .expect("init without endpoint");
        assert!(!guard.exporting());
        let span = tracing::info_span!("work");
        let _entered = span.enter();
        assert_eq!(traceparent(), None);
        assert!(!set_parent(
            &span,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
    }

    #[test]
    fn a_sample_ratio_outside_zero_to_one_is_refused() {
        let err = init(&Settings {
            service: "test",
            instance: None,
            filter: "info".into(),
            json: false,
            otlp_endpoint: None,
            sample_ratio: 1.5,
        })
        .expect_err("ratio 1.5");
        assert!(matches!(err, TelemetryError::SampleRatio(_)));
    }
}
