//! The in-process event bus: what the gateway, the campaign engine and the mutations publish,
//! and what the engine (to wake up) and the GraphQL subscriptions (to push to clients) listen
//! to. Every event names the organisation whose data it is, so a subscription filters by the
//! subscriber's tenant before anything leaves the server. Events are hints: the database stays
//! the truth, and a subscriber that lags simply skips ahead.

use tokio::sync::broadcast;

use crate::storage::{
    CampaignId, CampaignState, ExperimentId, ExperimentState, LabId, OrganizationId,
};

/// Something happened.
#[derive(Debug, Clone, PartialEq)]
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

/// Publish/subscribe of [`Event`]s within one server process.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
}

impl Default for EventBus {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(4096);
        EventBus { tx }
    }
}

impl EventBus {
    /// Publishes (nobody listening is fine).
    pub fn publish(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    /// A new subscription, seeing events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
