//! Shared application state handed to every handler: storage, configuration, metrics, the
//! gateway's registry of live agent connections and the labs' live-readings cache. Passed
//! explicitly, never global.

use std::sync::Arc;

use crate::agents::readings::TelemetryCache;
use crate::agents::registry::Gateway;
use crate::auth::AuthService;
use crate::config::Config;
use crate::events::EventBus;
use crate::metrics::Metrics;
use crate::storage::Storage;

/// Everything a request handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The storage port.
    pub storage: Arc<dyn Storage>,
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Metrics registry.
    pub metrics: Metrics,
    /// Live agent connections on this replica.
    pub gateway: Gateway,
    /// Authentication: token keys, password hashing, login throttling.
    pub auth: Arc<AuthService>,
    /// In-process events (engine wake-ups, subscriptions).
    pub events: EventBus,
    /// Labs' live readings, cached per lab for about a second.
    pub telemetry: TelemetryCache,
    /// Open SSH tunnels and the lab whose key opened each.
    pub ssh_tunnels: crate::agents::ssh::Tunnels,
    /// Failed operator-token attempts per client address (throttled).
    pub operator_failures: crate::api::operator::Failures,
    /// Wakes this process's mailer when mail was queued.
    pub mail_wake: crate::auth::mail::MailWake,
    /// Bytes of GraphQL documents each caller may still make this replica parse.
    pub query_budget: crate::api::graphql::budget::QueryBudget,
}

impl AppState {
    /// Assembles the state.
    pub fn new(storage: Arc<dyn Storage>, config: Config) -> Self {
        AppState {
            auth: Arc::new(AuthService::new(&config.auth)),
            query_budget: crate::api::graphql::budget::QueryBudget::new(
                config.graphql.query_bytes_per_second,
                config.graphql.query_burst_bytes,
            ),
            storage,
            config: Arc::new(config),
            metrics: Metrics::new(),
            gateway: Gateway::default(),
            events: EventBus::default(),
            telemetry: TelemetryCache::default(),
            ssh_tunnels: crate::agents::ssh::Tunnels::default(),
            operator_failures: crate::api::operator::Failures::default(),
            mail_wake: crate::auth::mail::MailWake::default(),
        }
    }
}
