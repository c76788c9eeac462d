//! Prometheus metrics: HTTP request counts and latencies by route, and connected agents,
//! exposed in the text exposition format on `GET /metrics`.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// HTTP method.
    pub method: String,
    /// Route pattern (not the raw path, so ids do not explode the label set).
    pub route: String,
    /// Status code.
    pub status: u16,
}

/// Labels of a message between replicas.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// `sent`, `received`, `failed` or `dropped`.
    pub outcome: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The server's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    requests: Family<HttpLabels, Counter>,
    latency: Family<HttpLabels, Histogram, fn() -> Histogram>,
    /// Agent connections open on this replica.
    pub agents_connected: Gauge,
    /// Record seqs an agent skipped (never stored): gaps in a delivery stream.
    pub agent_record_gaps: Counter,
    /// Records refused over a lab's ingestion limits (held in the agent's spool, sent again).
    pub agent_records_throttled: Counter,
    cluster_messages: Family<ClusterLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers all metrics.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("maosic");
        let requests = Family::<HttpLabels, Counter>::default();
        let latency = Family::<HttpLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let agents_connected = Gauge::default();
        let agent_record_gaps = Counter::default();
        let agent_records_throttled = Counter::default();
        let cluster_messages = Family::<ClusterLabels, Counter>::default();
        registry.register(
            "cluster_messages",
            "Messages between replicas over PostgreSQL NOTIFY, by outcome",
            cluster_messages.clone(),
        );
        registry.register(
            "agent_records_throttled",
            "Records refused over a lab's ingestion limits (they wait in the agent's spool)",
            agent_records_throttled.clone(),
        );
        registry.register(
            "agent_record_gap_seqs",
            "Record sequence numbers missing from agents' streams (gaps detected at ingestion)",
            agent_record_gaps.clone(),
        );
        registry.register("http_requests", "HTTP requests served", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            latency.clone(),
        );
        registry.register(
            "agents_connected",
            "Agent WebSocket connections open on this replica",
            agents_connected.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            requests,
            latency,
            agents_connected,
            agent_record_gaps,
            agent_records_throttled,
            cluster_messages,
        }
    }

    /// Counts one message between replicas (`sent`, `received`, `failed`, `dropped`).
    pub fn cluster_message(&self, outcome: &'static str) {
        self.cluster_messages
            .get_or_create(&ClusterLabels { outcome })
            .inc();
    }

    /// Records one served request.
    pub fn observe(&self, labels: HttpLabels, seconds: f64) {
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(seconds);
    }

    /// Renders the registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
