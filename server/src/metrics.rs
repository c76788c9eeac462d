//! Prometheus metrics, exposed in the text exposition format on `GET /metrics`: HTTP request
//! counts and latencies by route; agents, their record lag and gaps; the campaign engine's pass,
//! step, ask, tell and analysis durations, dispatch delay and discarded (duplicate) asks; and,
//! read from the database at scrape time, queue depth per lab, experiments by state and pool use.

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

/// Labels of an optimizer computation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OptimizerLabels {
    /// `ask` (model fits included) or `tell`.
    pub phase: &'static str,
}

/// Labels of engine work thrown away.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkLabels {
    /// `ask` or `tell` (a tell includes the experiment's analysis).
    pub work: &'static str,
}

/// Labels of the engine's conclusions: what concluded the experiment.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ByLabels {
    /// `record` (its `program_finished` record, as it was stored) or `pass` (an engine pass).
    pub by: &'static str,
}

/// Labels of a per-lab gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LabLabels {
    /// The lab's id.
    pub lab: String,
}

/// Labels of a per-state gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// The experiment state (`queued`, `leased`, `running`, `completed`, ...).
    pub state: String,
}

/// Labels of the connection-pool gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// `busy` or `idle`.
    pub state: &'static str,
}

/// What the database holds, read at scrape time.
#[derive(Clone, Debug, Default)]
pub struct StoreSnapshot {
    /// Experiments per (lab, state).
    pub experiments: Vec<(String, String, i64)>,
    /// Connections open in the pool, idle among them, and the most it opens.
    pub pool_size: u32,
    pub pool_idle: u32,
    pub pool_max: u32,
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
    /// Seconds from an agent's record (its wall clock) to its storage here.
    pub agent_record_lag: Histogram,
    /// Records stored per transaction by the agent gateway (its group commit).
    pub agent_record_batch: Histogram,
    /// Duration of one engine pass (observe, advance, dispatch), s.
    pub engine_pass: Histogram,
    /// Duration of one campaign step (load, ask, compile, enqueue), s.
    pub campaign_step: Histogram,
    optimizer: Family<OptimizerLabels, Histogram, fn() -> Histogram>,
    /// Duration of one experiment's spectrum analysis (the peak fits), s.
    pub analysis: Histogram,
    /// Seconds from queued to dispatched (claimed for the agent).
    pub dispatch_delay: Histogram,
    discarded: Family<WorkLabels, Counter>,
    concluded: Family<ByLabels, Counter>,
    /// Labs whose campaigns this replica's engine holds the lease of.
    pub engine_labs_held: Gauge,
    queue_depth: Family<LabLabels, Gauge>,
    experiments: Family<StateLabels, Gauge>,
    pool_connections: Family<PoolLabels, Gauge>,
    pool_max: Gauge,
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
        let agent_record_lag = Histogram::new(exponential_buckets(0.001, 2.0, 20));
        let agent_record_batch = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        let engine_pass = latency_histogram();
        let campaign_step = latency_histogram();
        let optimizer =
            Family::<OptimizerLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            );
        let analysis = latency_histogram();
        let dispatch_delay = latency_histogram();
        let discarded = Family::<WorkLabels, Counter>::default();
        let concluded = Family::<ByLabels, Counter>::default();
        registry.register(
            "engine_concluded",
            "Experiments concluded (analysed, told, stored), by what concluded them: their \
             program_finished record as it was stored, or an engine pass (the catch-all)",
            concluded.clone(),
        );
        let engine_labs_held = Gauge::default();
        registry.register(
            "engine_labs_held",
            "Labs whose campaigns this replica's engine advances (engine leases held)",
            engine_labs_held.clone(),
        );
        let queue_depth = Family::<LabLabels, Gauge>::default();
        let experiments = Family::<StateLabels, Gauge>::default();
        let pool_connections = Family::<PoolLabels, Gauge>::default();
        let pool_max = Gauge::default();
        registry.register(
            "agent_record_lag_seconds",
            "Seconds from an agent's record (agent wall clock) to its storage on this replica",
            agent_record_lag.clone(),
        );
        registry.register(
            "agent_record_batch_size",
            "Records the agent gateway stored in one transaction (records received back to back)",
            agent_record_batch.clone(),
        );
        registry.register(
            "engine_pass_duration_seconds",
            "Duration of one campaign-engine pass (observe, advance, dispatch)",
            engine_pass.clone(),
        );
        registry.register(
            "engine_campaign_step_duration_seconds",
            "Duration of one campaign step (load, ask, compile, enqueue)",
            campaign_step.clone(),
        );
        registry.register(
            "optimizer_duration_seconds",
            "Duration of optimizer computations by phase (ask includes model fits)",
            optimizer.clone(),
        );
        registry.register(
            "analysis_duration_seconds",
            "Duration of one experiment's spectrum analysis (peak fits)",
            analysis.clone(),
        );
        registry.register(
            "experiment_dispatch_delay_seconds",
            "Seconds from queued to dispatched to the agent",
            dispatch_delay.clone(),
        );
        registry.register(
            "engine_discarded",
            "Asks and tells computed and thrown away because another writer changed the \
             campaign or the experiment first: work done twice (0 in steady state)",
            discarded.clone(),
        );
        registry.register(
            "lab_queue_depth",
            "Experiments queued per lab (read from the database at scrape time)",
            queue_depth.clone(),
        );
        registry.register(
            "experiments",
            "Experiments by state (read from the database at scrape time)",
            experiments.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Database pool connections by state (busy, idle)",
            pool_connections.clone(),
        );
        registry.register(
            "db_pool_max_connections",
            "Most connections the database pool opens",
            pool_max.clone(),
        );
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
            agent_record_lag,
            agent_record_batch,
            engine_pass,
            campaign_step,
            optimizer,
            analysis,
            dispatch_delay,
            discarded,
            concluded,
            engine_labs_held,
            queue_depth,
            experiments,
            pool_connections,
            pool_max,
        }
    }

    /// Counts one ask or tell computed for nothing (another writer was first).
    pub fn discarded(&self, work: &'static str) {
        self.discarded.get_or_create(&WorkLabels { work }).inc();
    }

    /// Counts an experiment concluded by `by` (`record` or `pass`).
    pub fn concluded(&self, by: &'static str) {
        self.concluded.get_or_create(&ByLabels { by }).inc();
    }

    /// Records one optimizer computation (`ask` or `tell`).
    pub fn optimizer(&self, phase: &'static str, seconds: f64) {
        self.optimizer
            .get_or_create(&OptimizerLabels { phase })
            .observe(seconds);
    }

    /// Sets the gauges read from the database (labs and states no longer present disappear).
    pub fn set_store(&self, snapshot: &StoreSnapshot) {
        self.queue_depth.clear();
        self.experiments.clear();
        let mut by_state: std::collections::BTreeMap<&str, i64> = Default::default();
        for (lab, state, n) in &snapshot.experiments {
            *by_state.entry(state).or_default() += n;
            if state == "queued" {
                self.queue_depth
                    .get_or_create(&LabLabels { lab: lab.clone() })
                    .set(*n);
            }
        }
        for (state, n) in by_state {
            self.experiments
                .get_or_create(&StateLabels {
                    state: state.to_owned(),
                })
                .set(n);
        }
        let busy = snapshot.pool_size.saturating_sub(snapshot.pool_idle);
        self.pool_connections
            .get_or_create(&PoolLabels { state: "busy" })
            .set(i64::from(busy));
        self.pool_connections
            .get_or_create(&PoolLabels { state: "idle" })
            .set(i64::from(snapshot.pool_idle));
        self.pool_max.set(i64::from(snapshot.pool_max));
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
