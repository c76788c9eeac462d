//! The in-process event bus: what the gateway, the campaign engine and the mutations publish,
//! and what the engine (to wake up) and the GraphQL subscriptions (to push to clients) listen
//! to. Every event names the organisation whose data it is, so a subscription filters by the
//! subscriber's tenant before anything leaves the server. Events are hints: the database stays
//! the truth, and a subscriber that lags simply skips ahead.
//!
//! With several replicas on one PostgreSQL, [`crate::cluster`] attaches a [`Forward`] so what
//! one replica publishes is published on the others too.

use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::storage::{
    CampaignId, CampaignState, ExperimentId, ExperimentState, LabId, OrganizationId,
};

/// Something happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// An agent record was stored (the engine wakes on program starts and ends).
    RecordStored {
        lab_id: LabId,
        program_id: Option<String>,
        kind: String,
    },
    /// An experiment changed state.
    Experiment {
        organization_id: OrganizationId,
        campaign_id: CampaignId,
        experiment_id: ExperimentId,
        state: ExperimentState,
    },
    /// A campaign changed (state, a new result, a new best).
    Campaign {
        organization_id: OrganizationId,
        campaign_id: CampaignId,
        state: CampaignState,
        kind: String,
    },
    /// A lab's agent connected or disconnected.
    LabStatus { lab_id: LabId, online: bool },
    /// Something the engine should look at now (a new campaign, a resumed one).
    Wake,
}

/// Where what this replica announces also goes, so the other replicas see it: set once (by
/// [`crate::cluster`]), a no-op until then and on a single replica.
pub struct Forward<T>(Arc<OnceLock<Sink<T>>>);

/// Where a [`Forward`] sends.
type Sink<T> = Box<dyn Fn(&T) + Send + Sync>;

impl<T> Clone for Forward<T> {
    fn clone(&self) -> Self {
        Forward(self.0.clone())
    }
}

impl<T> Default for Forward<T> {
    fn default() -> Self {
        Forward(Arc::new(OnceLock::new()))
    }
}

impl<T> Forward<T> {
    /// Sets where values go; `false` if it was already set (the first stays).
    pub fn set(&self, to: impl Fn(&T) + Send + Sync + 'static) -> bool {
        self.0.set(Box::new(to)).is_ok()
    }

    /// Passes `value` on, if a destination is set.
    pub fn send(&self, value: &T) {
        if let Some(to) = self.0.get() {
            to(value);
        }
    }
}

/// Publish/subscribe of [`Event`]s within one server process, forwarded to the other replicas
/// when a [`Forward`] is attached.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
    forward: Forward<Event>,
}

impl Default for EventBus {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(4096);
        EventBus {
            tx,
            forward: Forward::default(),
        }
    }
}

impl EventBus {
    /// Publishes here and on the other replicas (nobody listening is fine).
    pub fn publish(&self, event: Event) {
        self.forward.send(&event);
        self.publish_local(event);
    }

    /// Publishes on this replica only (what another replica published).
    pub fn publish_local(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    /// Where published events also go (see [`Forward`]).
    pub fn forward(&self) -> &Forward<Event> {
        &self.forward
    }

    /// A new subscription, seeing events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
