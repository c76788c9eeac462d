//! The campaign engine: one background task per server that closes the loop.
//!
//! Each pass, as platform work:
//! 1. **observe** experiments in flight: a `leased` one with records from the agent becomes
//!    `running`; one whose `program_finished` record is stored is analysed, its objective told to
//!    the optimizer, and the result and the new optimizer state written in one transaction; one
//!    whose agent came back without it (and did not replay its end within the grace period) is
//!    `interrupted` — reported with what was measured, never re-run;
//! 2. **advance** running campaigns: ask the optimizer for as many points as the batch size
//!    leaves room for (within the budget and a shared lab's daily quota), bind and compile each
//!    against the lab's capability descriptor, and queue them with the new optimizer state in one
//!    transaction; finish campaigns whose budget is spent or whose target is reached;
//! 3. **dispatch**: for every idle lab whose agent is connected here, claim the next experiment
//!    (priority, then fair share between organisations, then age) and send `program.run`.
//!
//! Between passes, a program's records are acted on as they are stored, for that experiment
//! alone (`on_program_record`): its start marks it running; its end concludes it, advances its
//! campaign and dispatches its lab, so a loop's next experiment does not wait for a pass that
//! reads every lab. The pass (every `tick_ms`, or woken by mutations) is the catch-all: what the
//! record path could not do, interruptions, expired claims, new campaigns.
//!
//! Everything the loop needs is in the database after every step, so a restarted server
//! continues where it was.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use maosic_optimizer::{Observation, Optimizer};
use maosic_schema::capability::LabDescriptor;
use serde_json::{json, Value};
use tracing::{debug, info, info_span, warn, Instrument as _};

use super::{
    bindings_of, compile_point, evaluate, measured, params_json, parse_objective, point_of,
};
use crate::agents::registry::CallError;
use crate::events::Event;
use crate::state::AppState;
use crate::storage::{
    now_ms, tenant, Campaign, CampaignId, CampaignState, CampaignTold, Experiment, ExperimentId,
    ExperimentResult, ExperimentState, LabId, LiveExperiment, NewExperiment, OrganizationId,
    StorageError,
};

use maosic_schema::protocol::error_code::ALREADY_ACCEPTED;

const DAY_MS: i64 = 86_400_000;

/// A lab shared with `organization_id`: its daily quota and what is left of it in the last 24 h
/// (experiments queued, instructions sent and instructions queued all count); `None` when the
/// lab is not shared with that organisation. Counted as platform work, so the figure is exact
/// whatever the caller may read.
pub async fn daily_quota(
    storage: &dyn crate::storage::Storage,
    lab_id: &LabId,
    organization_id: &OrganizationId,
    now: i64,
) -> Result<Option<(i64, i64)>, StorageError> {
    let Some(quota) = storage
        .shares_of_lab(lab_id)
        .await?
        .into_iter()
        .find(|s| s.organization_id == organization_id)
        .map(|s| s.daily_quota)
    else {
        return Ok(None);
    };
    let since = now - DAY_MS;
    let (experiments, instructions) = tenant::system(async {
        Ok::<_, StorageError>((
            storage
                .experiments_queued_since(lab_id, organization_id, since)
                .await?,
            storage
                .instructions_since(lab_id, organization_id, since)
                .await?,
        ))
    })
    .await?;
    Ok(Some((quota, quota - experiments - instructions)))
}

/// Starts the engine on the current tokio runtime.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(tenant::system(run(state)))
}

async fn run(state: AppState) {
    let owner = format!("server-{}", uuid::Uuid::new_v4());
    let tick = Duration::from_millis(state.config.campaigns.tick_ms.max(10));
    let mut events = state.events.subscribe();
    let steps = Steps::default();
    steps.set_lease_ms(state.config.campaigns.engine_lease_ms);
    info!(owner = %owner, "campaign engine started");
    loop {
        let started = std::time::Instant::now();
        if let Err(e) = tenant::system(pass(&state, &owner, &steps)).await {
            warn!(error = %e, "campaign engine pass failed; retrying");
        }
        state
            .metrics
            .engine_pass
            .observe(started.elapsed().as_secs_f64());
        // Sleep until the tick or an event worth a pass.
        let deadline = tokio::time::sleep(tick);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                ev = events.recv() => match ev {
                    // A program's start or end is acted on at once, for that experiment alone
                    // (the pass reads every lab: at 100 labs it takes tens of ms).
                    Ok(Event::RecordStored { lab_id, program_id: Some(program_id), kind })
                        if kind == "program_finished" || kind == "program_started" =>
                    {
                        let (state, owner, steps) = (state.clone(), owner.clone(), steps.clone());
                        let finished = kind == "program_finished";
                        tokio::spawn(tenant::system(async move {
                            let id = ExperimentId::from(program_id);
                            on_program_record(&state, &owner, &steps, &lab_id, &id, finished).await;
                        }));
                    }
                    Ok(Event::Wake) => break,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        // Shutting down: another replica may take this one's labs at once.
                        let _ = tenant::system(state.storage.release_engine_leases(&owner)).await;
                        return;
                    }
                },
            }
        }
    }
}

/// Why a campaign step did not complete.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The store failed (transient for the platform; not counted against the campaign).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The campaign's own step failed: an error, a panic or a timeout in its ask or analysis,
    /// or a stored optimizer state that no longer loads. Counted; enough in a row pause it.
    #[error("{0}")]
    Campaign(String),
}

/// The labs whose campaigns this replica's engine advances: held through `engine_leases`
/// rows, renewed every fifth of the lease, and asked for again at once when a lab with work
/// appears. Only the holder observes, concludes and asks for a lab's campaigns, so no tell or
/// ask is computed twice; the campaign version each write checks stays the fence that makes a
/// late write from a replica that lost its lease harmless.
#[derive(Default)]
struct Leases {
    /// Lease length, ms.
    ttl_ms: u64,
    /// Labs held, and until when this replica may act on them without renewing.
    held: HashSet<LabId>,
    valid_until: Option<std::time::Instant>,
    /// Labs asked for and held by another replica, as of the last claim.
    others: HashSet<LabId>,
    renew_at: Option<std::time::Instant>,
}

impl Leases {
    /// Whether this replica may act on the lab now (as of the last claim; never claims).
    fn holds(&self, lab_id: &LabId) -> bool {
        self.held.contains(lab_id)
            && self
                .valid_until
                .is_some_and(|until| std::time::Instant::now() < until)
    }

    /// The labs among `wanted` this replica holds now, claiming or renewing as due.
    async fn hold(
        &mut self,
        state: &AppState,
        owner: &str,
        wanted: &HashSet<LabId>,
    ) -> Result<HashSet<LabId>, StorageError> {
        let now = std::time::Instant::now();
        let ttl = Duration::from_millis(self.ttl_ms.max(500));
        let unknown = wanted
            .iter()
            .any(|l| !self.held.contains(l) && !self.others.contains(l));
        let due = self.renew_at.is_none_or(|at| now >= at);
        if unknown || due {
            let labs: Vec<(LabId, bool)> = wanted
                .iter()
                .map(|l| (l.clone(), state.gateway.is_connected(l)))
                .collect();
            let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            let held = match state
                .storage
                .claim_engine_leases(owner, &labs, ttl_ms, now_ms())
                .await
            {
                Ok(held) => held,
                Err(e) => {
                    // Not knowing what is held, hold nothing.
                    self.held.clear();
                    self.valid_until = None;
                    return Err(e);
                }
            };
            let held: HashSet<LabId> = held.into_iter().collect();
            for gained in held.difference(&self.held) {
                debug!(lab.id = %gained, "engine lease taken");
            }
            state
                .metrics
                .engine_labs_held
                .set(i64::try_from(held.len()).unwrap_or(i64::MAX));
            self.others = wanted.difference(&held).cloned().collect();
            self.held = held;
            self.renew_at = Some(now + ttl / 5);
            // A margin for the clocks of the replicas (the rows hold wall-clock times).
            self.valid_until = Some(now + ttl.mul_f64(0.6));
        }
        if self.valid_until.is_none_or(|until| now >= until) {
            return Ok(HashSet::new());
        }
        Ok(self.held.intersection(wanted).cloned().collect())
    }
}

/// What the engine remembers about campaign steps between passes (in memory: a restarted
/// server starts counting again, and validated settings keep a stored state from crashing it).
#[derive(Clone, Default)]
pub struct Steps {
    /// The labs this replica's engine holds.
    leases: Arc<tokio::sync::Mutex<Leases>>,
    /// Campaigns with a step in progress (possibly a blocking computation past its budget,
    /// which cannot be cancelled): no second step starts until it ends.
    busy: Arc<Mutex<HashSet<CampaignId>>>,
    /// Consecutive failed steps per campaign.
    failures: Arc<Mutex<HashMap<CampaignId, u32>>>,
    /// One dispatcher per lab at a time (the pass, or a campaign step that just queued).
    dispatching: Arc<Mutex<HashMap<LabId, Arc<tokio::sync::Mutex<()>>>>>,
}

/// Removes a campaign from [`Steps::busy`] when its step ends, however it ends.
struct BusyGuard {
    busy: Arc<Mutex<HashSet<CampaignId>>>,
    campaign_id: CampaignId,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if let Ok(mut busy) = self.busy.lock() {
            busy.remove(&self.campaign_id);
        }
    }
}

impl Steps {
    fn set_lease_ms(&self, ms: u64) {
        if let Ok(mut l) = self.leases.try_lock() {
            l.ttl_ms = ms;
        }
    }

    /// Marks the campaign busy; `None` when a step of it is still in progress.
    fn enter(&self, campaign_id: &CampaignId) -> Option<BusyGuard> {
        let mut busy = self.busy.lock().ok()?;
        busy.insert(campaign_id.clone()).then(|| BusyGuard {
            busy: self.busy.clone(),
            campaign_id: campaign_id.clone(),
        })
    }

    /// The lab's dispatch lock.
    fn dispatch_lock(&self, lab_id: &LabId) -> Arc<tokio::sync::Mutex<()>> {
        match self.dispatching.lock() {
            Ok(mut locks) => locks.entry(lab_id.clone()).or_default().clone(),
            // A poisoned map cannot hand out the shared lock: dispatch unserialised rather
            // than not at all (the claim itself is atomic).
            Err(_) => Arc::default(),
        }
    }

    fn succeeded(&self, campaign_id: &CampaignId) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(campaign_id);
        }
    }

    /// Counts a failed step; `true` when the campaign has now failed too often in a row.
    fn failed(&self, campaign_id: &CampaignId, max: u32) -> bool {
        let Ok(mut f) = self.failures.lock() else {
            return false;
        };
        let n = f.entry(campaign_id.clone()).or_insert(0);
        *n += 1;
        if *n >= max.max(1) {
            f.remove(campaign_id);
            true
        } else {
            false
        }
    }
}

/// Runs CPU work of one campaign on the blocking pool within the step's time budget. A panic
/// or an overrun is the campaign's failure, never the server's; a computation past its budget
/// keeps its thread until it ends, but the engine goes on without it.
async fn bounded<T: Send + 'static>(
    state: &AppState,
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StepError> {
    let budget = Duration::from_millis(state.config.campaigns.step_timeout_ms.max(1));
    let task = tokio::task::spawn_blocking(work);
    match tokio::time::timeout(budget, task).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(join)) if join.is_panic() => {
            let payload = join.into_panic();
            let why = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            warn!(what, panic = %why, "campaign step panicked");
            Err(StepError::Campaign(format!(
                "{what} failed with an internal error"
            )))
        }
        Ok(Err(_)) => Err(StepError::Campaign(format!("{what} was cancelled"))),
        Err(_) => Err(StepError::Campaign(format!(
            "{what} took longer than its {} ms budget",
            budget.as_millis()
        ))),
    }
}

/// One pass of the engine (observe, advance, dispatch). One experiment's or one campaign's
/// failure never stops the others: each is logged (and counted against its campaign) on its
/// own, and campaign steps run as their own tasks.
pub async fn pass(state: &AppState, owner: &str, steps: &Steps) -> Result<(), StorageError> {
    let live = state.storage.live_experiments().await?;
    let campaigns = state.storage.active_campaigns().await?;
    let wanted: HashSet<LabId> = live
        .iter()
        .map(|l| l.experiment.lab_id.clone())
        .chain(campaigns.iter().map(|c| c.lab_id.clone()))
        .collect();
    let mine = steps
        .leases
        .lock()
        .await
        .hold(state, owner, &wanted)
        .await?;
    let mut busy: HashSet<LabId> = HashSet::new();
    // Optimizer experiments still in flight per campaign after this pass looked at them: a
    // campaign with its whole batch in flight has nothing to ask (its best and its budget
    // change only when one concludes), so the pass does not step it.
    let mut in_flight: HashMap<CampaignId, i64> = HashMap::new();
    for live in live {
        let e = &live.experiment;
        if e.source == "optimizer" {
            *in_flight.entry(e.campaign_id.clone()).or_default() += 1;
        }
        if !mine.contains(&e.lab_id) {
            // Another replica's engine looks after this lab; its agent may still be here.
            busy.insert(e.lab_id.clone());
            continue;
        }
        // One step at a time per campaign: a conclusion waits for an ask in progress (both
        // write the campaign; the second would be computed for nothing).
        let Some(_step) = steps.enter(&e.campaign_id) else {
            busy.insert(e.lab_id.clone());
            continue;
        };
        // Whether it still occupies its lab is read back at dispatch (`fill_lab`).
        match observe(state, &live).await {
            Ok(true) => {}
            Ok(false) => {
                // Concluded, or a claim that may be sent again: its campaign may have room.
                if let Some(n) = in_flight.get_mut(&e.campaign_id) {
                    *n -= i64::from(e.source == "optimizer");
                }
            }
            Err(err) => {
                // Its lab stays occupied until the experiment can be looked at again.
                busy.insert(e.lab_id.clone());
                warn!(experiment.id = %e.id, campaign.id = %e.campaign_id, error = %err,
                      "experiment step failed");
                if let StepError::Campaign(why) = err {
                    step_failed(state, steps, &e.campaign_id, &why).await;
                }
            }
        }
    }
    // Read again: a conclusion above moved its campaign on (an ask from the older row would
    // be computed for nothing).
    let campaigns = state.storage.active_campaigns().await?;
    for c in campaigns {
        if c.state != CampaignState::Running || !mine.contains(&c.lab_id) {
            continue;
        }
        if in_flight.get(&c.id).is_some_and(|&n| n >= c.batch_size) {
            continue; // No room: the end of one of them steps it (its record, or a pass).
        }
        let Some(guard) = steps.enter(&c.id) else {
            continue; // Its previous step is still running.
        };
        let (state, steps, owner) = (state.clone(), steps.clone(), owner.to_owned());
        // The campaign stays busy until its step's task and its blocking computation both end
        // (a computation past its budget cannot be cancelled: no second one starts meanwhile).
        let guard = Arc::new(guard);
        let span = info_span!("engine.step", campaign.id = %c.id, lab.id = %c.lab_id);
        tokio::spawn(tenant::system(
            async move {
                // Read again now that the step is this task's: a program record may have
                // concluded and advanced the campaign since the pass read it (an ask from
                // the older row would be computed for nothing).
                let c = match state.storage.campaign(&c.id).await {
                    Ok(c) if c.state == CampaignState::Running => c,
                    Ok(_) => return,
                    Err(e) => {
                        warn!(campaign.id = %c.id, error = %e, "campaign step failed (storage)");
                        return;
                    }
                };
                step_campaign(&state, &owner, &steps, &c, guard).await;
            }
            .instrument(span),
        ));
    }
    let now = now_ms();
    for lab_id in state.storage.labs_with_work(now).await? {
        if busy.contains(&lab_id) || !state.gateway.is_connected(&lab_id) {
            continue;
        }
        if let Err(e) = fill_lab(state, owner, steps, &lab_id).await {
            warn!(lab.id = %lab_id, error = %e, "dispatch failed");
        }
    }
    Ok(())
}

/// Dispatches the lab's next experiments while it has room: as many at once as the largest
/// batch of its running campaigns (the agent queues them for their devices in order, so a
/// pipelined recipe synthesises one while the one before is measured), counting those running
/// or leased. Called by the pass for every lab with work, and by a campaign step right after
/// it queued (so a new experiment on an idle lab starts without waiting for a pass); one
/// dispatcher per lab at a time, so the two never overfill it.
async fn fill_lab(
    state: &AppState,
    owner: &str,
    steps: &Steps,
    lab_id: &LabId,
) -> Result<(), StorageError> {
    let lock = steps.dispatch_lock(lab_id);
    let _held = lock.lock().await;
    // Each claim checks the lab's room itself; the first is sent before the next is tried.
    for _ in 0..MAX_IN_LAB {
        if !dispatch(state, owner, lab_id).await? {
            break;
        }
    }
    Ok(())
}

/// Advances a running campaign (its step is this caller's: `guard`) and dispatches what it
/// queued at once rather than at the next pass.
async fn step_campaign(
    state: &AppState,
    owner: &str,
    steps: &Steps,
    c: &Campaign,
    guard: Arc<BusyGuard>,
) {
    let started = std::time::Instant::now();
    let stepped = advance(state, c, guard).await;
    state
        .metrics
        .campaign_step
        .observe(started.elapsed().as_secs_f64());
    match stepped {
        Ok(Some(queued)) => {
            steps.succeeded(&c.id);
            if queued {
                if state.gateway.is_connected(&c.lab_id) {
                    if let Err(e) = fill_lab(state, owner, steps, &c.lab_id).await {
                        warn!(lab.id = %c.lab_id, error = %e, "dispatch failed");
                    }
                } else {
                    // The lab's agent is held by another replica: its engine dispatches.
                    state.events.publish(Event::Wake);
                }
            }
        }
        Ok(None) => {}
        Err(StepError::Campaign(why)) => {
            warn!(campaign.id = %c.id, error = %why, "campaign step failed");
            step_failed(state, steps, &c.id, &why).await;
        }
        Err(StepError::Storage(e)) => {
            warn!(campaign.id = %c.id, error = %e, "campaign step failed (storage)");
        }
    }
}

/// How long a program record's step waits for a campaign step in progress before leaving the
/// experiment to the next pass.
const RECORD_STEP_WAIT: Duration = Duration::from_secs(1);

/// Acts on one experiment's program record as it is stored, without waiting for a pass: its
/// `program_started` marks it running; its `program_finished` concludes it, advances its
/// campaign and dispatches its lab, so the next experiment is queued and sent within
/// milliseconds of the last one's end however many labs the pass has to read. Only on labs
/// this replica's engine holds, and only through the campaign's step guard (the pass and this
/// never conclude or ask twice); anything it cannot do now (a lab not held yet, a step that
/// stays busy, a storage error) the next pass does.
async fn on_program_record(
    state: &AppState,
    owner: &str,
    steps: &Steps,
    lab_id: &LabId,
    id: &ExperimentId,
    finished: bool,
) {
    if !steps.leases.lock().await.holds(lab_id) {
        return;
    }
    let read = |id: &ExperimentId| {
        let id = id.clone();
        async move {
            match state.storage.experiment(&id).await {
                // Records name their program; only an experiment of this lab is this one's.
                Ok(e) if e.lab_id == *lab_id => Ok(Some(e)),
                Ok(_) | Err(StorageError::NotFound) => Ok(None),
                Err(err) => Err(err),
            }
        }
    };
    let e = match read(id).await {
        Ok(Some(e)) => e,
        Ok(None) => return, // Not an experiment (an instruction's program), or another lab's.
        Err(err) => {
            debug!(experiment.id = %id, error = %err, "program record left to the next pass");
            return;
        }
    };
    if !finished {
        if e.state == ExperimentState::Leased {
            match state.storage.mark_running(&e.id, now_ms()).await {
                Ok(true) => publish_experiment(state, &e, ExperimentState::Running),
                Ok(false) => {}
                Err(err) => debug!(experiment.id = %e.id, error = %err, "not marked running"),
            }
        }
        return;
    }
    // The campaign's step: a step in progress (an ask, or the pass looking at another of its
    // experiments) ends within its budget; past the wait, the next pass concludes this one.
    let waited = std::time::Instant::now();
    let guard = loop {
        if let Some(guard) = steps.enter(&e.campaign_id) {
            break guard;
        }
        if waited.elapsed() >= RECORD_STEP_WAIT {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // Read again under the guard: the pass may have concluded it meanwhile.
    let e = match read(id).await {
        Ok(Some(e)) if matches!(e.state, ExperimentState::Leased | ExperimentState::Running) => e,
        Ok(_) => return,
        Err(err) => {
            debug!(experiment.id = %id, error = %err, "program record left to the next pass");
            return;
        }
    };
    match conclude(state, &e, None).await {
        Ok(true) => state.metrics.concluded("record"),
        Ok(false) => {}
        Err(err) => {
            warn!(experiment.id = %e.id, campaign.id = %e.campaign_id, error = %err,
                  "experiment step failed");
            if let StepError::Campaign(why) = err {
                step_failed(state, steps, &e.campaign_id, &why).await;
            }
            return;
        }
    }
    match state.storage.campaign(&e.campaign_id).await {
        Ok(c) if c.state == CampaignState::Running => {
            let span = info_span!("engine.step", campaign.id = %c.id, lab.id = %c.lab_id);
            step_campaign(state, owner, steps, &c, Arc::new(guard))
                .instrument(span)
                .await;
        }
        Ok(_) => drop(guard),
        Err(err) => warn!(campaign.id = %e.campaign_id, error = %err, "campaign not advanced"),
    }
    // The experiment left its lab: the lab's next one (of any campaign) goes now.
    if state.gateway.is_connected(lab_id) {
        if let Err(err) = fill_lab(state, owner, steps, lab_id).await {
            warn!(lab.id = %lab_id, error = %err, "dispatch failed");
        }
    }
}

/// Counts a failed step of the campaign and pauses it, with the reason, once it failed
/// `max_step_failures` times in a row.
async fn step_failed(state: &AppState, steps: &Steps, campaign_id: &CampaignId, why: &str) {
    if !steps.failed(campaign_id, state.config.campaigns.max_step_failures) {
        return;
    }
    let detail = format!(
        "paused: its step failed {} times in a row ({why}); change what causes it, then resume",
        state.config.campaigns.max_step_failures.max(1)
    );
    let paused = async {
        let c = state.storage.campaign(campaign_id).await?;
        let moved = state
            .storage
            .set_campaign_state(
                campaign_id,
                &[CampaignState::Running],
                CampaignState::Paused,
                Some(&detail),
                now_ms(),
            )
            .await?;
        Ok::<_, StorageError>(moved.then_some(c))
    };
    match paused.await {
        Ok(Some(c)) => {
            warn!(campaign.id = %campaign_id, why, "campaign paused: its steps keep failing");
            state.events.publish(Event::Campaign {
                organization_id: c.organization_id,
                campaign_id: c.id,
                state: CampaignState::Paused,
                kind: "state".into(),
            });
        }
        Ok(None) => {}
        Err(e) => warn!(campaign.id = %campaign_id, error = %e, "campaign not paused"),
    }
}

/// Looks at one experiment in flight, with what its records said when the pass read it (no
/// query of its own unless something moved); `true` while it occupies its lab.
async fn observe(state: &AppState, live: &LiveExperiment) -> Result<bool, StepError> {
    let now = now_ms();
    let e = &live.experiment;
    if live.finished {
        // Its record may have concluded it since the pass read it (`on_program_record`).
        let now_e = state.storage.experiment(&e.id).await?;
        if matches!(
            now_e.state,
            ExperimentState::Leased | ExperimentState::Running
        ) && conclude(state, &now_e, None).await?
        {
            state.metrics.concluded("pass");
        }
        return Ok(false);
    }
    if e.state == ExperimentState::Leased {
        if live.has_records {
            if state.storage.mark_running(&e.id, now).await? {
                publish_experiment(state, e, ExperimentState::Running);
            }
            return Ok(true);
        }
        // A claim that expired without a word from the agent may be claimed again.
        return Ok(e.lease_until.is_some_and(|until| until >= now));
    }
    // Running: gone from a reconnected agent (and its end not replayed in time)?
    let grace = i64::try_from(state.config.campaigns.interrupted_grace_ms).unwrap_or(i64::MAX);
    if let Some(hello) = state.gateway.hello_of(&e.lab_id) {
        let dispatched = e.dispatched_at.unwrap_or(0);
        if hello.connected_at > dispatched
            && !hello.running.iter().any(|id| *id == e.id)
            && now - hello.connected_at > grace
        {
            let why = "the agent reconnected without this program (restarted or lost it); \
                       what it measured is kept, nothing was re-run";
            warn!(experiment.id = %e.id, lab.id = %e.lab_id, "experiment interrupted");
            if conclude(state, e, Some(why.to_owned())).await? {
                state.metrics.concluded("pass");
            }
            return Ok(false);
        }
    }
    Ok(true)
}

/// Ends an experiment: analyses its records (unless `interrupted` says why it ended without
/// them), tells the campaign's optimizer, and stores both in one transaction. `false` when
/// another writer concluded it or moved its campaign first (nothing stored).
async fn conclude(
    state: &AppState,
    e: &Experiment,
    interrupted: Option<String>,
) -> Result<bool, StepError> {
    // The end of the experiment's trace: analysis, fit and tell.
    let span = info_span!("engine.conclude", experiment.id = %e.id, campaign.id = %e.campaign_id);
    if let Some(tp) = &e.trace_parent {
        maosic_telemetry::set_parent(&span, tp);
    }
    conclude_in_span(state, e, interrupted)
        .instrument(span)
        .await
}

async fn conclude_in_span(
    state: &AppState,
    e: &Experiment,
    interrupted: Option<String>,
) -> Result<bool, StepError> {
    // Bounded: an agent cannot make the engine load an unbounded experiment into memory.
    let cap = state.config.campaigns.max_records_per_experiment.max(1);
    let records = state
        .storage
        .records_of_program(&e.lab_id, &e.id, i64::try_from(cap).unwrap_or(i64::MAX))
        .await?;
    let truncated = records.len() >= cap;
    let m = measured(&records);
    let campaign = state.storage.campaign(&e.campaign_id).await?;
    let objective = parse_objective(&campaign.objective).ok();
    let mut result = ExperimentResult {
        experiment_id: e.id.clone(),
        state: ExperimentState::Completed,
        outcome: m.outcome.clone(),
        error: None,
        features_json: None,
        peaks_json: None,
        objective_value: None,
    };
    match (&interrupted, m.outcome.as_deref()) {
        (Some(why), _) => {
            result.state = ExperimentState::Interrupted;
            result.error = Some(why.clone());
        }
        (None, Some("succeeded")) => {}
        (None, outcome) => {
            result.state = ExperimentState::Failed;
            result.error = Some(m.step_error.clone().unwrap_or_else(|| {
                format!(
                    "the program ended {}",
                    outcome.unwrap_or("without an outcome")
                )
            }));
        }
    }
    if truncated && result.error.is_none() {
        result.error = Some(format!(
            "the experiment streamed more than {cap} records; only the first {cap} were read"
        ));
    }
    // Whatever was measured is analysed (an interrupted run may still have its spectra).
    if let Some(objective) = &objective {
        if m.absorption.is_some() {
            let measured_copy = m.clone();
            let objective = objective.clone();
            // The analysis runs within the step's budget; a panic or an overrun is this
            // experiment's analysis error (concluded, never retried forever).
            let metrics = state.metrics.clone();
            let evaluated = bounded(state, "the analysis", move || {
                let started = std::time::Instant::now();
                let evaluated = evaluate(&measured_copy, &objective);
                metrics.analysis.observe(started.elapsed().as_secs_f64());
                evaluated
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match evaluated {
                Ok(ev) => {
                    result.features_json = Some(ev.features.to_string());
                    result.peaks_json = Some(ev.peaks.to_string());
                    if result.state == ExperimentState::Completed {
                        result.objective_value = ev.objective;
                        if result.error.is_none() {
                            result.error = ev.error;
                        }
                    }
                }
                Err(why) if result.state == ExperimentState::Completed => result.error = Some(why),
                Err(_) => {}
            }
        } else if result.state == ExperimentState::Completed {
            result.error = Some("no absorption spectrum was measured".into());
        }
    }
    let started = std::time::Instant::now();
    let told = tell(&campaign, e, result.objective_value)
        .map_err(|err| StepError::Campaign(err.to_string()))?;
    state
        .metrics
        .optimizer("tell", started.elapsed().as_secs_f64());
    match state
        .storage
        .record_result(&result, told.as_ref(), now_ms())
        .await
    {
        Ok(true) => {
            info!(
                experiment.id = %e.id, campaign.id = %campaign.id, seq = e.seq,
                state = %result.state, objective = ?result.objective_value,
                "experiment concluded"
            );
            if m.outcome.as_deref() == Some("refused") {
                let why = result
                    .error
                    .as_deref()
                    .unwrap_or("the lab refused the program");
                pause_for_lab(state, &campaign, why).await?;
            }
            publish_experiment(state, e, result.state);
            state.events.publish(Event::Campaign {
                organization_id: campaign.organization_id.clone(),
                campaign_id: campaign.id.clone(),
                state: campaign.state,
                kind: "result".into(),
            });
            Ok(true)
        }
        Ok(false) => {
            // Concluded already (by another writer): this analysis and tell were for nothing.
            state.metrics.discarded("tell");
            Ok(false)
        }
        // The campaign moved under us (another writer): the next pass retries.
        Err(StorageError::Conflict(why)) => {
            debug!(experiment.id = %e.id, why, "tell conflicted; retrying next pass");
            state.metrics.discarded("tell");
            Ok(false)
        }
        Err(other) => Err(other.into()),
    }
}

/// The campaign's optimizer after telling it this experiment's value (`None` = failed).
fn tell(
    campaign: &Campaign,
    e: &Experiment,
    value: Option<f64>,
) -> Result<Option<CampaignTold>, StorageError> {
    let Some(state_json) = &campaign.optimizer_state else {
        return Ok(None);
    };
    let mut optimizer = Optimizer::from_state_json(state_json)
        .map_err(|err| StorageError::Corrupt(format!("optimizer state: {err}")))?;
    let params: Value = serde_json::from_str(&e.params_json)
        .map_err(|err| StorageError::Corrupt(format!("experiment params: {err}")))?;
    let Some(x) = point_of(&optimizer.spec().space, &params) else {
        return Ok(None);
    };
    let observation = value.map_or_else(Observation::failed, Observation::new);
    optimizer
        .tell(&x, observation)
        .map_err(|err| StorageError::Corrupt(format!("tell: {err}")))?;
    let better = match (value, campaign.best_value) {
        (Some(_), None) => true,
        (Some(v), Some(b)) => match optimizer.spec().goal {
            maosic_optimizer::Goal::Maximize => v > b,
            maosic_optimizer::Goal::Minimize => v < b,
        },
        (None, _) => false,
    };
    let (best_value, best_params, best_experiment) = if better {
        (value, Some(e.params_json.clone()), Some(e.id.clone()))
    } else {
        (
            campaign.best_value,
            campaign.best_params_json.clone(),
            campaign.best_experiment_id.clone(),
        )
    };
    Ok(Some(CampaignTold {
        campaign_id: campaign.id.clone(),
        expected_version: campaign.version,
        optimizer_state: optimizer
            .state_json()
            .map_err(|err| StorageError::Corrupt(err.to_string()))?,
        best_value,
        best_params_json: best_params,
        best_experiment_id: best_experiment,
    }))
}

/// Asks for new points, finishes a campaign whose budget or target is reached. `Some(queued)`
/// when an ask ran (`queued`: it queued experiments), `None` when none was due.
async fn advance(
    state: &AppState,
    c: &Campaign,
    busy: Arc<BusyGuard>,
) -> Result<Option<bool>, StepError> {
    let now = now_ms();
    let objective = match parse_objective(&c.objective) {
        Ok(o) => o,
        Err(e) => {
            fail_campaign(state, c, &e.to_string()).await?;
            return Ok(None);
        }
    };
    if let (Some(target), Some(best)) = (c.target, c.best_value) {
        if super::reaches(objective.direction(), best, target) {
            finish_campaign(state, c, CampaignState::Completed, "target reached").await?;
            return Ok(None);
        }
    }
    let in_flight = state.storage.optimizer_in_flight(&c.id).await?;
    let remaining = c.budget - c.proposals;
    if remaining <= 0 {
        if in_flight == 0 {
            finish_campaign(state, c, CampaignState::Completed, "budget used").await?;
        }
        return Ok(None);
    }
    let mut room = (c.batch_size - in_flight).min(remaining);
    if room <= 0 {
        return Ok(None);
    }
    let lab = state.storage.lab(&c.lab_id).await?;
    if lab.organization_id != c.organization_id {
        let Some((_, left)) =
            daily_quota(state.storage.as_ref(), &lab.id, &c.organization_id, now).await?
        else {
            fail_campaign(
                state,
                c,
                "the lab is no longer shared with this organisation",
            )
            .await?;
            return Ok(None);
        };
        room = room.min(left);
        if room <= 0 {
            let detail = "the shared lab's daily quota is used up; it continues as quota frees";
            if c.state_detail.as_deref() != Some(detail) {
                state
                    .storage
                    .set_campaign_state(
                        &c.id,
                        &[CampaignState::Running],
                        CampaignState::Running,
                        Some(detail),
                        now,
                    )
                    .await?;
            }
            return Ok(None);
        }
    }
    let Some(descriptor_json) = &lab.descriptor else {
        return Ok(None); // The agent has not announced its devices yet.
    };
    let descriptor = match LabDescriptor::from_json_str(descriptor_json) {
        Ok(d) => d,
        Err(e) => {
            warn!(lab.id = %lab.id, error = %e, "stored capability descriptor does not parse");
            return Ok(None);
        }
    };
    let Some(state_json) = &c.optimizer_state else {
        fail_campaign(state, c, "the campaign has no optimizer state").await?;
        return Ok(None);
    };
    // A stored state is validated again as it loads (its settings' bounds).
    let mut optimizer = Optimizer::from_state_json(state_json)
        .map_err(|e| StepError::Campaign(format!("the stored optimizer does not load: {e}")))?;
    let n = usize::try_from(room).unwrap_or(0);
    let recipe = c.recipe.clone();
    let campaign = c.clone();
    let metrics = state.metrics.clone();
    // Asking (model fits) and compiling are CPU work: on the blocking pool, within the step's
    // time budget.
    // The campaign stays busy until the blocking ask ends (even past its budget) and until
    // this step has stored what it asked (a conclusion in between would discard the ask).
    let busy_while_asking = Arc::clone(&busy);
    // The experiments keep this step's trace context: their dispatch and run join its trace.
    let trace_parent = maosic_telemetry::traceparent();
    let planned = bounded(state, "the optimizer's ask", move || {
        let _busy = busy_while_asking;
        let started = std::time::Instant::now();
        let proposals = optimizer.ask(n);
        metrics.optimizer("ask", started.elapsed().as_secs_f64());
        let space = optimizer.spec().space.clone();
        let mut experiments = Vec::new();
        for (i, p) in proposals.iter().enumerate() {
            let bindings = bindings_of(&space, &p.x);
            let program = compile_point(&recipe, &descriptor, &bindings)?;
            let seq_hint = campaign.proposals + i as i64 + 1;
            experiments.push(NewExperiment {
                id: ExperimentId::generate(),
                name: format!("{} #{seq_hint}", campaign.name),
                source: "optimizer".into(),
                params_json: params_json(&space, &p.x).to_string(),
                proposal_json: Some(
                    json!({
                        "proposal": seq_hint,
                        "kind": p.kind,
                        "predicted": p.predicted,
                        "optimizer": campaign.optimizer,
                        "seed": campaign.seed,
                        "told_before": optimizer.observations(),
                    })
                    .to_string(),
                ),
                program_json: serde_json::to_string(&program).unwrap_or_default(),
                priority: campaign.priority,
                created_by: campaign.created_by.clone(),
                trace_parent: trace_parent.clone(),
            });
        }
        let state_json = optimizer
            .state_json()
            .map_err(|e| super::CampaignError::Optimizer(e.to_string()))?;
        Ok::<_, super::CampaignError>((state_json, experiments))
    })
    .await?;
    let (new_state, experiments) = match planned {
        Ok(p) => p,
        Err(e) => {
            fail_campaign(state, c, &e.to_string()).await?;
            return Ok(None);
        }
    };
    if experiments.is_empty() {
        return Ok(Some(false));
    }
    if state
        .storage
        .enqueue_proposals(&c.id, c.version, &new_state, &experiments, now_ms())
        .await?
    {
        debug!(campaign.id = %c.id, n = experiments.len(), "queued proposals");
        state.events.publish(Event::Campaign {
            organization_id: c.organization_id.clone(),
            campaign_id: c.id.clone(),
            state: c.state,
            kind: "queued".into(),
        });
        return Ok(Some(true));
    }
    // The campaign moved meanwhile (another writer): the next pass asks again, and this ask
    // was computed for nothing.
    state.metrics.discarded("ask");
    Ok(Some(false))
}

async fn finish_campaign(
    state: &AppState,
    c: &Campaign,
    to: CampaignState,
    detail: &str,
) -> Result<(), StorageError> {
    if state
        .storage
        .set_campaign_state(
            &c.id,
            &[CampaignState::Running, CampaignState::Paused],
            to,
            Some(detail),
            now_ms(),
        )
        .await?
    {
        info!(campaign.id = %c.id, state = %to, detail, "campaign finished");
        state.events.publish(Event::Campaign {
            organization_id: c.organization_id.clone(),
            campaign_id: c.id.clone(),
            state: to,
            kind: "state".into(),
        });
    }
    Ok(())
}

async fn fail_campaign(state: &AppState, c: &Campaign, why: &str) -> Result<(), StorageError> {
    warn!(campaign.id = %c.id, why, "campaign failed");
    finish_campaign(state, c, CampaignState::Failed, why).await
}

fn publish_experiment(state: &AppState, e: &Experiment, new_state: ExperimentState) {
    state.events.publish(Event::Experiment {
        organization_id: e.organization_id.clone(),
        campaign_id: e.campaign_id.clone(),
        experiment_id: e.id.clone(),
        state: new_state,
    });
}

/// Most experiments one lab is sent at once (a pipelined recipe needs two or three).
const MAX_IN_LAB: i64 = 4;

/// Claims the lab's next experiment and sends it to the agent; `false` when none was queued.
async fn dispatch(state: &AppState, owner: &str, lab_id: &LabId) -> Result<bool, StorageError> {
    let now = now_ms();
    let lease = i64::try_from(state.config.campaigns.lease_ms).unwrap_or(i64::MAX);
    let Some(e) = state
        .storage
        .claim_within_room(lab_id, owner, lease, now, MAX_IN_LAB)
        .await?
    else {
        return Ok(false);
    };
    let program: Value = match serde_json::from_str(&e.program_json) {
        Ok(p) => p,
        Err(err) => {
            warn!(experiment.id = %e.id, error = %err, "stored program does not parse");
            return Ok(true);
        }
    };
    info!(experiment.id = %e.id, lab.id = %lab_id, seq = e.seq, attempt = e.attempts, "dispatching");
    if e.attempts <= 1 {
        let waited_ms = now.saturating_sub(e.queued_at).max(0);
        state
            .metrics
            .dispatch_delay
            .observe(waited_ms as f64 / 1000.0);
    }
    publish_experiment(state, &e, ExperimentState::Leased);
    // Continues the trace of whatever queued it; lasts until the agent answers the run.
    let span = info_span!("engine.dispatch", experiment.id = %e.id, lab.id = %lab_id, attempt = e.attempts);
    if let Some(tp) = &e.trace_parent {
        maosic_telemetry::set_parent(&span, tp);
    }
    let state = state.clone();
    let owner = owner.to_owned();
    tokio::spawn(tenant::system(
        async move {
            let params = json!({ "program_id": e.id, "program": program });
            let answer = state
                .gateway
                .call(
                    &e.lab_id,
                    "program.run",
                    params,
                    Duration::from_secs(7 * 24 * 3600),
                )
                .await;
            match answer {
                // The program ran; its records (stored before this answer, each acted on as
                // it was stored) decide the rest.
                Ok(_) => {}
                Err(CallError::Offline) => {
                    // Certainly not delivered: give the claim back.
                    if let Err(err) = state.storage.release_claim(&e.id, &owner).await {
                        warn!(experiment.id = %e.id, error = %err, "claim not released");
                    }
                }
                Err(CallError::Rejected(rpc)) if rpc.code == ALREADY_ACCEPTED => {
                    // A re-sent claim: the agent has (or had) it; its records decide.
                    let _ = state.storage.mark_running(&e.id, now_ms()).await;
                }
                Err(CallError::Rejected(rpc)) => {
                    // The agent refused the program before anything moved (its own limits).
                    warn!(experiment.id = %e.id, error = %rpc.message, "agent refused the program");
                    if let Err(err) = refuse(&state, &e, &rpc.message).await {
                        warn!(experiment.id = %e.id, error = %err, "refusal not recorded");
                    }
                }
                Err(other) => {
                    debug!(experiment.id = %e.id, error = %other, "no answer; the records decide");
                }
            }
        }
        .instrument(span),
    ));
    Ok(true)
}

/// Records an experiment the agent refused, and tells the optimizer it failed.
async fn refuse(state: &AppState, e: &Experiment, why: &str) -> Result<(), StorageError> {
    let campaign = state.storage.campaign(&e.campaign_id).await?;
    let told = tell(&campaign, e, None)?;
    let result = ExperimentResult {
        experiment_id: e.id.clone(),
        state: ExperimentState::Failed,
        outcome: Some("refused".into()),
        error: Some(format!("the agent refused the program: {why}")),
        features_json: None,
        peaks_json: None,
        objective_value: None,
    };
    if state
        .storage
        .record_result(&result, told.as_ref(), now_ms())
        .await?
    {
        publish_experiment(state, e, ExperimentState::Failed);
        pause_for_lab(state, &campaign, why).await?;
    }
    Ok(())
}

/// A lab that refuses programs (a latched safety fault, a limit the lab's own configuration
/// sets) would refuse every next one too: the campaign pauses instead of spending its budget,
/// and says why; a person resets the lab and resumes.
async fn pause_for_lab(state: &AppState, c: &Campaign, why: &str) -> Result<(), StorageError> {
    let detail = format!("paused: the lab refused a program ({why}); fix the lab, then resume");
    if state
        .storage
        .set_campaign_state(
            &c.id,
            &[CampaignState::Running],
            CampaignState::Paused,
            Some(&detail),
            now_ms(),
        )
        .await?
    {
        warn!(campaign.id = %c.id, why, "campaign paused: the lab refuses programs");
        state.events.publish(Event::Campaign {
            organization_id: c.organization_id.clone(),
            campaign_id: c.id.clone(),
            state: CampaignState::Paused,
            kind: "state".into(),
        });
    }
    Ok(())
}
