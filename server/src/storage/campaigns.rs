//! Storage of campaigns and the experiment queue (the [`CampaignStorage`] port, a supertrait of
//! [`super::Storage`]).
//!
//! Invariants:
//! - every ask (new proposals) and every tell (a result) writes the optimizer state and the
//!   experiments it concerns in one transaction, guarded by the campaign's `version`, so a
//!   restarted server resumes exactly where the database says;
//! - an experiment moves forward only: `queued → leased → running → completed | failed |
//!   interrupted` (or `queued → canceled`); a `leased` experiment whose lease expired may be
//!   claimed again (the agent refuses a program id it already accepted, so a re-sent claim never
//!   runs twice on hardware); nothing else moves backwards;
//! - a claim is one statement (`UPDATE … WHERE id = (SELECT … LIMIT 1) … RETURNING`), with
//!   `FOR UPDATE SKIP LOCKED` on PostgreSQL, so two dispatchers never hold the same experiment.

use async_trait::async_trait;

use super::db::{query, SqlStorage, Tx};
#[allow(unused_imports)]
use super::ids::{CampaignId, CommandId, ExperimentId, LabId, OrganizationId, SessionId, UserId};
use super::states::{CampaignState, ExperimentState};
use super::{Backend, StorageError, StorageResult};

/// Campaign columns, in [`Campaign`] order.
const CAMPAIGN_COLS: &str = "id, organization_id, lab_id, name, recipe, space_json, objective, \
    optimizer, settings_json, seed, budget, batch_size, target, priority, state, state_detail, \
    optimizer_state, version, proposals, results, best_value, best_params_json, \
    best_experiment_id, created_by, created_at, updated_at, started_at, finished_at";

/// Experiment columns, in [`Experiment`] order.
const EXPERIMENT_COLS: &str = "id, campaign_id, organization_id, lab_id, seq, name, source, \
    params_json, proposal_json, program_json, priority, state, lease_owner, lease_until, attempts, \
    created_by, queued_at, dispatched_at, started_at, finished_at, outcome, error, features_json, \
    peaks_json, objective_value, told, trace_parent";

/// An experiment in flight and how far its program's records have come.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LiveExperiment {
    #[sqlx(flatten)]
    pub experiment: Experiment,
    /// Some record of its program arrived (the agent has it).
    pub has_records: bool,
    /// Its `program_finished` record arrived.
    pub finished: bool,
}

/// A stored campaign.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Campaign {
    pub id: CampaignId,
    pub organization_id: OrganizationId,
    pub lab_id: LabId,
    pub name: String,
    /// Recipe source (instruction language).
    pub recipe: String,
    /// The optimizer's search space (JSON of `maosic_optimizer::Space`).
    pub space_json: String,
    /// Objective expression (`maximize abs(cd_at_exciton)`).
    pub objective: String,
    /// Optimizer name (`snobfit`, `bo`, `portfolio`, `random`, `sobol`, `grid`).
    pub optimizer: String,
    /// Optimizer settings (JSON object).
    pub settings_json: String,
    pub seed: i64,
    pub budget: i64,
    pub batch_size: i64,
    /// Stop once the objective reaches this value (in the objective's direction).
    pub target: Option<f64>,
    pub priority: i64,
    /// Where it is in its life (see [`CampaignState`]).
    #[sqlx(try_from = "String")]
    pub state: CampaignState,
    /// Why it is in this state (e.g. a quota, a failure).
    pub state_detail: Option<String>,
    /// Serialised optimizer (`Optimizer::state_json`).
    pub optimizer_state: Option<String>,
    /// Bumped by every optimizer-state write.
    pub version: i64,
    /// Optimizer proposals made so far (counts against the budget).
    pub proposals: i64,
    /// Results told to the optimizer so far.
    pub results: i64,
    pub best_value: Option<f64>,
    pub best_params_json: Option<String>,
    pub best_experiment_id: Option<ExperimentId>,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// A campaign to create.
#[derive(Debug, Clone)]
pub struct NewCampaign {
    pub organization_id: OrganizationId,
    pub lab_id: LabId,
    pub name: String,
    pub recipe: String,
    pub space_json: String,
    pub objective: String,
    pub optimizer: String,
    pub settings_json: String,
    pub seed: i64,
    pub budget: i64,
    pub batch_size: i64,
    pub target: Option<f64>,
    pub priority: i64,
    /// The initial optimizer state.
    pub optimizer_state: String,
    pub created_by: String,
}

/// A stored experiment (one program run on a lab).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Experiment {
    /// Identifier; also the program id the agent's records carry.
    pub id: ExperimentId,
    pub campaign_id: CampaignId,
    pub organization_id: OrganizationId,
    pub lab_id: LabId,
    /// 1-based position in its campaign.
    pub seq: i64,
    pub name: String,
    /// `optimizer` or `manual`.
    pub source: String,
    /// The bound variables (`{"T": 130, "C": 0.8}`).
    pub params_json: String,
    /// The optimizer's proposal (kind, prediction), for provenance.
    pub proposal_json: Option<String>,
    /// The compiled program.
    pub program_json: String,
    pub priority: i64,
    /// Where it is in the queue (see [`ExperimentState`]).
    #[sqlx(try_from = "String")]
    pub state: ExperimentState,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    /// Times it was claimed.
    pub attempts: i64,
    pub created_by: String,
    pub queued_at: i64,
    pub dispatched_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// The agent's program outcome (`succeeded`, `failed`, …).
    pub outcome: Option<String>,
    pub error: Option<String>,
    /// Analysis features (JSON object).
    pub features_json: Option<String>,
    /// Fitted absorption peaks (JSON array).
    pub peaks_json: Option<String>,
    pub objective_value: Option<f64>,
    /// Whether its result was told to the optimizer.
    pub told: bool,
    /// The W3C trace context of whatever queued it (a GraphQL request, an engine step), which
    /// its dispatch continues; `None` when traces were off.
    pub trace_parent: Option<String>,
}

impl Experiment {
    /// Whether the experiment reached a final state.
    pub fn is_final(&self) -> bool {
        self.state.is_final()
    }
}

/// An experiment to queue.
#[derive(Debug, Clone)]
pub struct NewExperiment {
    pub id: ExperimentId,
    pub name: String,
    pub source: String,
    pub params_json: String,
    pub proposal_json: Option<String>,
    pub program_json: String,
    pub priority: i64,
    pub created_by: String,
    /// The queuing span's W3C trace context (see [`Experiment::trace_parent`]).
    pub trace_parent: Option<String>,
}

/// The end of an experiment.
#[derive(Debug, Clone)]
pub struct ExperimentResult {
    pub experiment_id: ExperimentId,
    /// `completed`, `failed` or `interrupted`.
    pub state: ExperimentState,
    pub outcome: Option<String>,
    pub error: Option<String>,
    pub features_json: Option<String>,
    pub peaks_json: Option<String>,
    pub objective_value: Option<f64>,
}

/// The campaign side of a tell: the optimizer state after it, and the best so far.
#[derive(Debug, Clone)]
pub struct CampaignTold {
    pub campaign_id: CampaignId,
    pub expected_version: i64,
    pub optimizer_state: String,
    pub best_value: Option<f64>,
    pub best_params_json: Option<String>,
    pub best_experiment_id: Option<ExperimentId>,
}

/// Filters for listing a campaign's experiments.
#[derive(Debug, Clone, Default)]
pub struct ExperimentFilter {
    /// Only this state.
    pub state: Option<ExperimentState>,
    /// Only this source (`optimizer` / `manual`).
    pub source: Option<String>,
}

/// Campaign and queue storage port.
#[async_trait]
pub trait CampaignStorage {
    /// Creates a campaign in `draft`.
    async fn create_campaign(&self, c: &NewCampaign, now_ms: i64) -> StorageResult<Campaign>;
    /// One campaign (`NotFound` if absent or invisible).
    async fn campaign(&self, id: &CampaignId) -> StorageResult<Campaign>;
    /// An organisation's campaigns, newest first.
    async fn campaigns_of_organization(
        &self,
        organization_id: &OrganizationId,
    ) -> StorageResult<Vec<Campaign>>;
    /// Campaigns the engine looks after (`running` or `paused`).
    async fn active_campaigns(&self) -> StorageResult<Vec<Campaign>>;
    /// Moves a campaign from one of `from` to `to`; `false` when it was in none of them, or
    /// the transition table ([`CampaignState::can_move_to`]) allows none of those moves.
    /// Ending it (canceled, completed, failed) also cancels its queued experiments.
    async fn set_campaign_state(
        &self,
        id: &CampaignId,
        from: &[CampaignState],
        to: CampaignState,
        detail: Option<&str>,
        now_ms: i64,
    ) -> StorageResult<bool>;
    /// An ask: stores the optimizer state (if `version` still matches) and queues `experiments`
    /// in one transaction; `false` (nothing written) on a version mismatch.
    async fn enqueue_proposals(
        &self,
        campaign_id: &CampaignId,
        expected_version: i64,
        optimizer_state: &str,
        experiments: &[NewExperiment],
        now_ms: i64,
    ) -> StorageResult<bool>;
    /// Queues a person's experiment into a campaign (not counted against the budget).
    async fn enqueue_manual(
        &self,
        campaign_id: &CampaignId,
        experiment: &NewExperiment,
        now_ms: i64,
    ) -> StorageResult<Experiment>;
    /// Records an experiment's end and, when given, the campaign's optimizer state after telling
    /// it, in one transaction. `false` when the experiment had already ended.
    async fn record_result(
        &self,
        result: &ExperimentResult,
        told: Option<&CampaignTold>,
        now_ms: i64,
    ) -> StorageResult<bool>;
    /// One experiment.
    async fn experiment(&self, id: &ExperimentId) -> StorageResult<Experiment>;
    /// A campaign's experiments with `seq > after_seq`, in order, at most `limit`.
    async fn experiments_of_campaign(
        &self,
        campaign_id: &CampaignId,
        after_seq: i64,
        limit: i64,
        filter: &ExperimentFilter,
    ) -> StorageResult<Vec<Experiment>>;
    /// Experiments in flight (`leased` or `running`), each with what its program's records say
    /// so far, for the engine's pass: one query, however many labs.
    async fn live_experiments(&self) -> StorageResult<Vec<LiveExperiment>>;
    /// Labs with an experiment waiting (queued, or leased with an expired lease).
    async fn labs_with_work(&self, now_ms: i64) -> StorageResult<Vec<LabId>>;
    /// Experiments per (lab, state), for the operator's metrics (all tenants).
    async fn experiment_counts(&self) -> StorageResult<Vec<(LabId, String, i64)>>;
    /// Takes or renews the engine's lease on each lab for `owner` until `now + ttl_ms`, where
    /// the lab's lease is `owner`'s already, has expired, or is held by a replica without the
    /// lab's agent while `owner` holds it (the `bool`). Returns the labs `owner` now holds.
    async fn claim_engine_leases(
        &self,
        owner: &str,
        labs: &[(LabId, bool)],
        ttl_ms: i64,
        now_ms: i64,
    ) -> StorageResult<Vec<LabId>>;
    /// Gives up every engine lease `owner` holds (a replica shutting down).
    async fn release_engine_leases(&self, owner: &str) -> StorageResult<()>;
    /// Claims the lab's next experiment of a running campaign (paused and draft campaigns' queued
    /// experiments wait) for `owner` until `now + lease_ms`: highest priority,
    /// then the organisation served longest ago on this lab (round-robin fair share between the
    /// organisations sharing it), then the oldest.
    async fn claim_experiment(
        &self,
        lab_id: &LabId,
        owner: &str,
        lease_ms: i64,
        now_ms: i64,
    ) -> StorageResult<Option<Experiment>>;
    /// [`CampaignStorage::claim_experiment`] for dispatch, only while the lab has room: it
    /// holds (running, or leased with a lease in force) fewer than it may hold at once, the
    /// largest batch size of its running campaigns (at least 1, at most `max_in_lab`). One
    /// statement, so a dispatch is one round of the database whatever the lab holds.
    async fn claim_within_room(
        &self,
        lab_id: &LabId,
        owner: &str,
        lease_ms: i64,
        now_ms: i64,
        max_in_lab: i64,
    ) -> StorageResult<Option<Experiment>>;
    /// `leased → running` (the agent accepted it).
    async fn mark_running(&self, id: &ExperimentId, now_ms: i64) -> StorageResult<bool>;
    /// Gives a claim back (`leased → queued`) when it certainly did not reach the agent.
    async fn release_claim(&self, id: &ExperimentId, owner: &str) -> StorageResult<bool>;
    /// Ends a claim held by `owner` (`leased → state`); `false` when the lease was lost.
    async fn finish_claim(
        &self,
        id: &ExperimentId,
        owner: &str,
        state: ExperimentState,
        now_ms: i64,
    ) -> StorageResult<bool>;
    /// Experiments an organisation queued on a lab since `since_ms` (shared-lab quotas).
    async fn experiments_queued_since(
        &self,
        lab_id: &LabId,
        organization_id: &OrganizationId,
        since_ms: i64,
    ) -> StorageResult<i64>;
    /// The campaign's optimizer experiments not yet ended (queued, leased or running).
    async fn optimizer_in_flight(&self, campaign_id: &CampaignId) -> StorageResult<i64>;
    /// Number of experiments of a campaign (any state).
    async fn count_experiments(&self, campaign_id: &CampaignId) -> StorageResult<i64>;
}

impl SqlStorage {
    /// The lab's next experiment claimed for `owner` (see
    /// [`CampaignStorage::claim_experiment`]); with `max_in_lab`, only while the lab has room
    /// ([`CampaignStorage::claim_within_room`]).
    async fn claim(
        &self,
        lab_id: &LabId,
        owner: &str,
        lease_ms: i64,
        now_ms: i64,
        max_in_lab: Option<i64>,
    ) -> StorageResult<Option<Experiment>> {
        let lock = match SqlStorage::backend(self) {
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        // Room: what the lab holds now against the deepest batch of its running campaigns.
        let room = if max_in_lab.is_some() {
            "AND (SELECT COUNT(*) FROM experiments o WHERE o.lab_id = $4 \
                  AND (o.state = 'running' OR (o.state = 'leased' AND o.lease_until >= $3))) \
                < (SELECT CASE WHEN MAX(c.batch_size) IS NULL OR MAX(c.batch_size) < 1 THEN 1 \
                               WHEN MAX(c.batch_size) > $5 THEN $5 \
                               ELSE MAX(c.batch_size) END \
                   FROM campaigns c WHERE c.lab_id = $4 AND c.state = 'running')"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE experiments SET state = 'leased', lease_owner = $1, \
             lease_until = $2, dispatched_at = $3, attempts = attempts + 1 \
             WHERE id = (SELECT e.id FROM experiments e \
                WHERE e.lab_id = $4 AND e.state IN ('queued', 'leased') \
                  AND (e.state = 'queued' OR e.lease_until < $3) \
                  AND e.campaign_id IN (SELECT c.id FROM campaigns c \
                                        WHERE c.state = 'running') \
                ORDER BY e.priority DESC, \
                  COALESCE((SELECT MAX(d.dispatched_at) FROM experiments d \
                     WHERE d.lab_id = e.lab_id \
                     AND d.organization_id = e.organization_id), 0) ASC, \
                  e.queued_at, e.seq \
                LIMIT 1 {lock}) \
             AND (state = 'queued' OR (state = 'leased' AND lease_until < $3)) {room} \
             RETURNING {EXPERIMENT_COLS}"
        );
        self.tx(async |tx| {
            let claim = query(&sql)
                .bind(owner)
                .bind(now_ms.saturating_add(lease_ms))
                .bind(now_ms)
                .bind(lab_id);
            match max_in_lab {
                Some(max) => claim.bind(max.max(1)),
                None => claim,
            }
            .fetch_optional(tx)
            .await
        })
        .await
    }
}

#[async_trait]
impl CampaignStorage for SqlStorage {
    async fn create_campaign(&self, c: &NewCampaign, now_ms: i64) -> StorageResult<Campaign> {
        let sql = format!(
            "INSERT INTO campaigns (id, organization_id, lab_id, name, recipe, space_json, \
             objective, optimizer, settings_json, seed, budget, batch_size, target, \
             priority, state, optimizer_state, created_by, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 'draft', \
             $15, $16, $17, $17) RETURNING {CAMPAIGN_COLS}"
        );
        self.tx(async |tx| {
            query(&sql)
                .bind(crate::storage::new_id())
                .bind(&c.organization_id)
                .bind(&c.lab_id)
                .bind(&c.name)
                .bind(&c.recipe)
                .bind(&c.space_json)
                .bind(&c.objective)
                .bind(&c.optimizer)
                .bind(&c.settings_json)
                .bind(c.seed)
                .bind(c.budget)
                .bind(c.batch_size)
                .bind(c.target)
                .bind(c.priority)
                .bind(&c.optimizer_state)
                .bind(&c.created_by)
                .bind(now_ms)
                .fetch_one(tx)
                .await
        })
        .await
    }

    async fn campaign(&self, id: &CampaignId) -> StorageResult<Campaign> {
        let sql = format!("SELECT {CAMPAIGN_COLS} FROM campaigns WHERE id = $1");
        self.tx(async |tx| {
            query(&sql)
                .bind(id)
                .fetch_optional(tx)
                .await?
                .ok_or(StorageError::NotFound)
        })
        .await
    }

    async fn campaigns_of_organization(
        &self,
        organization_id: &OrganizationId,
    ) -> StorageResult<Vec<Campaign>> {
        let sql = format!(
            "SELECT {CAMPAIGN_COLS} FROM campaigns WHERE organization_id = $1 \
             ORDER BY created_at DESC, id"
        );
        self.tx(async |tx| query(&sql).bind(organization_id).fetch_all(tx).await)
            .await
    }

    async fn active_campaigns(&self) -> StorageResult<Vec<Campaign>> {
        let sql = format!(
            "SELECT {CAMPAIGN_COLS} FROM campaigns WHERE state IN ('running', 'paused') \
             ORDER BY priority DESC, created_at, id"
        );
        self.tx(async |tx| query(&sql).fetch_all(tx).await).await
    }

    async fn set_campaign_state(
        &self,
        id: &CampaignId,
        from: &[CampaignState],
        to: CampaignState,
        detail: Option<&str>,
        now_ms: i64,
    ) -> StorageResult<bool> {
        let from = CampaignState::allowed_sql(from, to);
        if from.is_empty() {
            return Ok(false);
        }
        let finished = to.is_final();
        let sql = format!(
            "UPDATE campaigns SET state = $1, state_detail = $2, updated_at = $3, \
             started_at = CASE WHEN $1 = 'running' THEN COALESCE(started_at, $3) ELSE started_at END, \
             finished_at = CASE WHEN $4 THEN $3 ELSE finished_at END \
             WHERE id = $5 AND state IN ({from})"
        );
        self.tx(async |tx| {
            let done = query(&sql)
                .bind(to)
                .bind(detail)
                .bind(now_ms)
                .bind(finished)
                .bind(id)
                .execute(tx)
                .await?;
            // A campaign that ends (canceled, completed on its target, failed) runs
            // nothing more: what was still queued is canceled.
            if done == 1 && finished {
                query(
                    "UPDATE experiments SET state = 'canceled', finished_at = $1 \
                     WHERE campaign_id = $2 AND state = 'queued'",
                )
                .bind(now_ms)
                .bind(id)
                .execute(tx)
                .await?;
            }
            Ok(done == 1)
        })
        .await
    }

    async fn enqueue_proposals(
        &self,
        campaign_id: &CampaignId,
        expected_version: i64,
        optimizer_state: &str,
        experiments: &[NewExperiment],
        now_ms: i64,
    ) -> StorageResult<bool> {
        let proposals = i64::try_from(experiments.len()).unwrap_or(i64::MAX);
        self.tx(async |tx| {
            // The campaign row first: it takes the write lock (SQLite) / row lock (PG).
            let done = query(
                "UPDATE campaigns SET optimizer_state = $1, version = version + 1, \
                 proposals = proposals + $2, updated_at = $3 \
                 WHERE id = $4 AND version = $5 AND state = 'running'",
            )
            .bind(optimizer_state)
            .bind(proposals)
            .bind(now_ms)
            .bind(campaign_id)
            .bind(expected_version)
            .execute(tx)
            .await?;
            if done != 1 {
                return Ok(false);
            }
            for e in experiments {
                insert_experiment(tx, campaign_id, e, now_ms).await?;
            }
            Ok(true)
        })
        .await
    }

    async fn enqueue_manual(
        &self,
        campaign_id: &CampaignId,
        experiment: &NewExperiment,
        now_ms: i64,
    ) -> StorageResult<Experiment> {
        self.tx(async |tx| {
            let done = query(
                "UPDATE campaigns SET updated_at = $1 WHERE id = $2 \
                 AND state IN ('draft', 'running', 'paused')",
            )
            .bind(now_ms)
            .bind(campaign_id)
            .execute(tx)
            .await?;
            if done != 1 {
                return Err(StorageError::NotFound);
            }
            insert_experiment(tx, campaign_id, experiment, now_ms).await
        })
        .await
    }

    async fn record_result(
        &self,
        r: &ExperimentResult,
        told: Option<&CampaignTold>,
        now_ms: i64,
    ) -> StorageResult<bool> {
        let from = ExperimentState::sources_sql(r.state);
        if !r.state.is_final() || from.is_empty() {
            return Ok(false);
        }
        let sql = format!(
            "UPDATE experiments SET state = $1, outcome = $2, error = $3, \
             features_json = $4, peaks_json = $5, objective_value = $6, \
             finished_at = $7, told = $8, lease_owner = NULL, lease_until = NULL \
             WHERE id = $9 AND state IN ({from})"
        );
        self.tx(async |tx| {
            let done = query(&sql)
                .bind(r.state)
                .bind(r.outcome.as_deref())
                .bind(r.error.as_deref())
                .bind(r.features_json.as_deref())
                .bind(r.peaks_json.as_deref())
                .bind(r.objective_value)
                .bind(now_ms)
                .bind(told.is_some())
                .bind(&r.experiment_id)
                .execute(tx)
                .await?;
            if done != 1 {
                return Ok(false);
            }
            if let Some(t) = told {
                let done = query(
                    "UPDATE campaigns SET optimizer_state = $1, version = version + 1, \
                     results = results + 1, best_value = $2, best_params_json = $3, \
                     best_experiment_id = $4, updated_at = $5 \
                     WHERE id = $6 AND version = $7",
                )
                .bind(&t.optimizer_state)
                .bind(t.best_value)
                .bind(t.best_params_json.as_deref())
                .bind(t.best_experiment_id.as_deref())
                .bind(now_ms)
                .bind(&t.campaign_id)
                .bind(t.expected_version)
                .execute(tx)
                .await?;
                if done != 1 {
                    // Roll the experiment back too: the caller reloads and retries.
                    return Err(StorageError::Conflict(
                        "campaign version changed during a tell".into(),
                    ));
                }
            }
            Ok(true)
        })
        .await
    }

    async fn experiment(&self, id: &ExperimentId) -> StorageResult<Experiment> {
        let sql = format!("SELECT {EXPERIMENT_COLS} FROM experiments WHERE id = $1");
        self.tx(async |tx| {
            query(&sql)
                .bind(id)
                .fetch_optional(tx)
                .await?
                .ok_or(StorageError::NotFound)
        })
        .await
    }

    async fn experiments_of_campaign(
        &self,
        campaign_id: &CampaignId,
        after_seq: i64,
        limit: i64,
        filter: &ExperimentFilter,
    ) -> StorageResult<Vec<Experiment>> {
        let sql = format!(
            "SELECT {EXPERIMENT_COLS} FROM experiments WHERE campaign_id = $1 AND seq > $2 \
             AND ($3 = '' OR state = $3) AND ($4 = '' OR source = $4) \
             ORDER BY seq LIMIT $5"
        );
        self.tx(async |tx| {
            query(&sql)
                .bind(campaign_id)
                .bind(after_seq)
                .bind(filter.state.map_or("", ExperimentState::as_str))
                .bind(filter.source.as_deref().unwrap_or(""))
                .bind(limit)
                .fetch_all(tx)
                .await
        })
        .await
    }

    async fn live_experiments(&self) -> StorageResult<Vec<LiveExperiment>> {
        // Both look-ups use the index on agent_records (lab_id, program_id, kind).
        let sql = format!(
            "SELECT {EXPERIMENT_COLS}, \
             EXISTS (SELECT 1 FROM agent_records r \
                     WHERE r.lab_id = e.lab_id AND r.program_id = e.id) AS has_records, \
             EXISTS (SELECT 1 FROM agent_records r WHERE r.lab_id = e.lab_id \
                     AND r.program_id = e.id AND r.kind = 'program_finished') AS finished \
             FROM experiments e \
             WHERE e.state IN ('leased', 'running') ORDER BY e.queued_at, e.seq"
        );
        self.tx(async |tx| query(&sql).fetch_all(tx).await).await
    }

    async fn labs_with_work(&self, now_ms: i64) -> StorageResult<Vec<LabId>> {
        self.tx(async |tx| {
            let rows: Vec<(LabId,)> = query(
                "SELECT DISTINCT lab_id FROM experiments \
                 WHERE state IN ('queued', 'leased') \
                 AND (state = 'queued' OR lease_until < $1)",
            )
            .bind(now_ms)
            .fetch_all(tx)
            .await?;
            Ok(rows.into_iter().map(|r| r.0).collect())
        })
        .await
    }

    async fn experiment_counts(&self) -> StorageResult<Vec<(LabId, String, i64)>> {
        self.tx(async |tx| {
            query("SELECT lab_id, state, COUNT(*) FROM experiments GROUP BY lab_id, state")
                .fetch_all(tx)
                .await
        })
        .await
    }

    async fn claim_engine_leases(
        &self,
        owner: &str,
        labs: &[(LabId, bool)],
        ttl_ms: i64,
        now_ms: i64,
    ) -> StorageResult<Vec<LabId>> {
        self.tx(async |tx| {
            let mut held = Vec::new();
            for (lab_id, holds_agent) in labs {
                // SET reads the row as it was: the fence grows only when the owner changes.
                let row: Option<(LabId,)> = query(
                    "INSERT INTO engine_leases (lab_id, owner, holds_agent, until_ms, fence) \
                     VALUES ($1, $2, $3, $4, 1) \
                     ON CONFLICT (lab_id) DO UPDATE SET \
                     fence = CASE WHEN engine_leases.owner = excluded.owner \
                         THEN engine_leases.fence ELSE engine_leases.fence + 1 END, \
                     owner = excluded.owner, holds_agent = excluded.holds_agent, \
                     until_ms = excluded.until_ms \
                     WHERE engine_leases.owner = excluded.owner \
                        OR engine_leases.until_ms < $5 \
                        OR (excluded.holds_agent = 1 AND engine_leases.holds_agent = 0) \
                     RETURNING lab_id",
                )
                .bind(lab_id)
                .bind(owner)
                .bind(i64::from(*holds_agent))
                .bind(now_ms.saturating_add(ttl_ms))
                .bind(now_ms)
                .fetch_optional(tx)
                .await?;
                held.extend(row.map(|r| r.0));
            }
            Ok(held)
        })
        .await
    }

    async fn release_engine_leases(&self, owner: &str) -> StorageResult<()> {
        self.tx(async |tx| {
            query("DELETE FROM engine_leases WHERE owner = $1")
                .bind(owner)
                .execute(tx)
                .await
                .map(drop)
        })
        .await
    }

    async fn claim_experiment(
        &self,
        lab_id: &LabId,
        owner: &str,
        lease_ms: i64,
        now_ms: i64,
    ) -> StorageResult<Option<Experiment>> {
        self.claim(lab_id, owner, lease_ms, now_ms, None).await
    }

    async fn claim_within_room(
        &self,
        lab_id: &LabId,
        owner: &str,
        lease_ms: i64,
        now_ms: i64,
        max_in_lab: i64,
    ) -> StorageResult<Option<Experiment>> {
        self.claim(lab_id, owner, lease_ms, now_ms, Some(max_in_lab))
            .await
    }

    async fn mark_running(&self, id: &ExperimentId, now_ms: i64) -> StorageResult<bool> {
        self.tx(async |tx| {
            let done = query(
                "UPDATE experiments SET state = 'running', \
                 started_at = COALESCE(started_at, $1), lease_until = NULL \
                 WHERE id = $2 AND state = 'leased'",
            )
            .bind(now_ms)
            .bind(id)
            .execute(tx)
            .await?;
            Ok(done == 1)
        })
        .await
    }

    async fn release_claim(&self, id: &ExperimentId, owner: &str) -> StorageResult<bool> {
        self.tx(async |tx| {
            let done = query(
                "UPDATE experiments SET state = 'queued', lease_owner = NULL, \
                 lease_until = NULL WHERE id = $1 AND state = 'leased' AND lease_owner = $2",
            )
            .bind(id)
            .bind(owner)
            .execute(tx)
            .await?;
            Ok(done == 1)
        })
        .await
    }

    async fn finish_claim(
        &self,
        id: &ExperimentId,
        owner: &str,
        state: ExperimentState,
        now_ms: i64,
    ) -> StorageResult<bool> {
        if !state.is_final() || !ExperimentState::Leased.can_move_to(state) {
            return Ok(false);
        }
        self.tx(async |tx| {
            let done = query(
                "UPDATE experiments SET state = $1, finished_at = $2, lease_until = NULL \
                 WHERE id = $3 AND state = 'leased' AND lease_owner = $4",
            )
            .bind(state)
            .bind(now_ms)
            .bind(id)
            .bind(owner)
            .execute(tx)
            .await?;
            Ok(done == 1)
        })
        .await
    }

    async fn experiments_queued_since(
        &self,
        lab_id: &LabId,
        organization_id: &OrganizationId,
        since_ms: i64,
    ) -> StorageResult<i64> {
        self.tx(async |tx| {
            let (n,): (i64,) = query(
                "SELECT COUNT(*) FROM experiments WHERE lab_id = $1 \
                 AND organization_id = $2 AND queued_at >= $3",
            )
            .bind(lab_id)
            .bind(organization_id)
            .bind(since_ms)
            .fetch_one(tx)
            .await?;
            Ok(n)
        })
        .await
    }

    async fn optimizer_in_flight(&self, campaign_id: &CampaignId) -> StorageResult<i64> {
        self.tx(async |tx| {
            let (n,): (i64,) = query(
                "SELECT COUNT(*) FROM experiments WHERE campaign_id = $1 \
                 AND source = 'optimizer' AND state IN ('queued', 'leased', 'running')",
            )
            .bind(campaign_id)
            .fetch_one(tx)
            .await?;
            Ok(n)
        })
        .await
    }

    async fn count_experiments(&self, campaign_id: &CampaignId) -> StorageResult<i64> {
        self.tx(async |tx| {
            let (n,): (i64,) = query("SELECT COUNT(*) FROM experiments WHERE campaign_id = $1")
                .bind(campaign_id)
                .fetch_one(tx)
                .await?;
            Ok(n)
        })
        .await
    }
}

/// Inserts one experiment of a campaign (its organisation and lab come from the campaign row)
/// with the next `seq`. Runs inside the caller's transaction, after it locked the campaign row.
async fn insert_experiment(
    tx: &mut Tx,
    campaign_id: &CampaignId,
    e: &NewExperiment,
    now_ms: i64,
) -> StorageResult<Experiment> {
    let sql = format!(
        "INSERT INTO experiments (id, campaign_id, organization_id, lab_id, seq, name, \
         source, params_json, proposal_json, program_json, priority, state, created_by, \
         queued_at, trace_parent) \
         SELECT $1, c.id, c.organization_id, c.lab_id, \
           (SELECT COALESCE(MAX(x.seq), 0) + 1 FROM experiments x WHERE x.campaign_id = c.id), \
           $2, $3, $4, $5, $6, $7, 'queued', $8, $9, $11 FROM campaigns c WHERE c.id = $10 \
         RETURNING {EXPERIMENT_COLS}"
    );
    query(&sql)
        .bind(&e.id)
        .bind(&e.name)
        .bind(&e.source)
        .bind(&e.params_json)
        .bind(e.proposal_json.as_deref())
        .bind(&e.program_json)
        .bind(e.priority)
        .bind(&e.created_by)
        .bind(now_ms)
        .bind(campaign_id)
        .bind(e.trace_parent.as_deref())
        .fetch_optional(tx)
        .await?
        .ok_or(StorageError::NotFound)
}
