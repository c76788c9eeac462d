//! Campaigns, experiments and manual control in the public API.
//!
//! Who may do what: any member of the campaign's organisation reads it; researchers, admins and
//! owners create, start, pause, resume, cancel and clone campaigns and queue manual experiments
//! (viewers get `FORBIDDEN`); the lab must be one the organisation may queue on (its own, or one
//! shared with it, whose daily quota the engine enforces). Campaigns of other organisations are
//! `NOT_FOUND`. Low-level instructions are checked against the lab's capability descriptor.

use async_graphql::{Context, Json, Object, SimpleObject, ID};
use maosic_schema::capability::LabDescriptor;
use serde_json::{json, Value};

use super::access::{audit, lab_with_access, org_role, LabAccess};
use super::account::validate_name;
use super::results::{
    features_of, parameter_values, peak_fit_of, ExperimentFeatures, ObjectiveDirection,
    ParameterValue, PeakFit,
};
use super::{
    fail, parse_id, principal, rfc3339_ms, state, writer, ApiError, ApiResult, StorageResultExt,
};
use crate::auth::Principal;
use crate::engine::{self as campaign, check_point, compile_point, new_optimizer, parse_objective};
use crate::events::Event;
use crate::storage::{
    self, now_ms, Campaign, CampaignState, Experiment, ExperimentFilter, ExperimentId,
    ExperimentState, NewCampaign, NewExperiment, Role, StorageError,
};

/// Longest accepted recipe source, in bytes.
const MAX_RECIPE_BYTES: usize = super::compile::MAX_SOURCE_BYTES;
/// Largest budget of one campaign.
const MAX_BUDGET: i32 = 100_000;
/// Largest page of experiments.
const MAX_PAGE: i32 = 500;

/// What a principal may do to a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum CampaignAccess {
    Read,
    Control,
}

fn can_control(role: Role) -> bool {
    matches!(role, Role::Owner | Role::Admin | Role::Researcher)
}

/// Loads a campaign the principal may access at `needed` (`NOT_FOUND` when invisible,
/// `FORBIDDEN` when visible but not allowed).
async fn campaign_with_access(
    ctx: &Context<'_>,
    p: &Principal,
    id: &str,
    needed: CampaignAccess,
) -> ApiResult<(Campaign, Role)> {
    let id = parse_id(id)?;
    let c = state(ctx)?.storage.campaign(&id).await.api()?;
    let role = org_role(ctx, p, &c.organization_id)
        .await?
        .ok_or_else(|| fail(ApiError::NotFound))?;
    if needed == CampaignAccess::Control && !can_control(role) {
        return Err(fail(ApiError::Forbidden));
    }
    Ok((c, role))
}

/// A campaign as the caller sees it.
pub struct CampaignNode {
    c: Campaign,
    role: Role,
}

/// One declared variable of the recipe (the optimizer's search space).
#[derive(SimpleObject)]
pub struct CampaignParameter {
    /// Variable name (without `$`).
    pub name: String,
    /// Lower bound.
    pub lower: f64,
    /// Upper bound.
    pub upper: f64,
    /// Resolution (grid step), if declared.
    pub step: Option<f64>,
}

#[Object(name = "Campaign")]
impl CampaignNode {
    /// Identifier.
    async fn id(&self) -> ID {
        ID(self.c.id.to_string())
    }
    /// Name.
    async fn name(&self) -> &str {
        &self.c.name
    }
    /// The organisation running it.
    async fn organization_id(&self) -> ID {
        ID(self.c.organization_id.to_string())
    }
    /// The lab it runs on.
    async fn lab_id(&self) -> ID {
        ID(self.c.lab_id.to_string())
    }
    /// Recipe source (instruction language).
    async fn recipe(&self) -> &str {
        &self.c.recipe
    }
    /// The parameter space from the recipe's declared variables.
    async fn parameters(&self) -> Vec<CampaignParameter> {
        let space: Option<maosic_optimizer::Space> = serde_json::from_str(&self.c.space_json).ok();
        space
            .map(|s| {
                s.parameters
                    .into_iter()
                    .map(|p| CampaignParameter {
                        name: p.name,
                        lower: p.lower,
                        upper: p.upper,
                        step: p.resolution,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
    /// Objective expression (`maximize abs(cd_at_exciton)`); its direction is
    /// `objectiveDirection`.
    async fn objective(&self) -> &str {
        &self.c.objective
    }
    /// Whether the objective is maximised or minimised (parsed from the expression).
    async fn objective_direction(&self) -> ApiResult<ObjectiveDirection> {
        // Every stored objective parsed at `createCampaign`; one that no longer does is a
        // corrupt row.
        let objective = parse_objective(&self.c.objective).map_err(|e| {
            tracing::error!(campaign = %self.c.id, "stored objective does not parse: {e}");
            fail(ApiError::Internal)
        })?;
        Ok(objective.direction().into())
    }
    /// Optimizer name.
    async fn optimizer(&self) -> &str {
        &self.c.optimizer
    }
    /// Optimizer settings (JSON object).
    async fn optimizer_settings(&self) -> Json<Value> {
        Json(serde_json::from_str(&self.c.settings_json).unwrap_or(Value::Null))
    }
    /// Optimizer seed.
    async fn seed(&self) -> i64 {
        self.c.seed
    }
    /// Most optimizer experiments.
    async fn budget(&self) -> i64 {
        self.c.budget
    }
    /// Experiments the optimizer keeps in flight at once.
    async fn batch_size(&self) -> i64 {
        self.c.batch_size
    }
    /// Stop once the objective reaches this value.
    async fn target(&self) -> Option<f64> {
        self.c.target
    }
    /// Queue priority on the lab (higher first).
    async fn priority(&self) -> i64 {
        self.c.priority
    }
    /// Where it is in its life.
    async fn state(&self) -> CampaignState {
        self.c.state
    }
    /// Why it is in this state.
    async fn state_detail(&self) -> Option<&str> {
        self.c.state_detail.as_deref()
    }
    /// Optimizer proposals made (counts against the budget).
    async fn proposals(&self) -> i64 {
        self.c.proposals
    }
    /// Results told to the optimizer.
    async fn results(&self) -> i64 {
        self.c.results
    }
    /// Best objective value so far.
    async fn best_value(&self) -> Option<f64> {
        self.c.best_value
    }
    /// The conditions of the best experiment so far, by variable name.
    async fn best_parameters(&self) -> Option<Vec<ParameterValue>> {
        self.c
            .best_params_json
            .as_deref()
            .and_then(parameter_values)
    }
    /// The best experiment so far.
    async fn best_experiment_id(&self) -> Option<ID> {
        self.c
            .best_experiment_id
            .as_ref()
            .map(|id| ID(id.to_string()))
    }
    /// Whether the caller may start, pause, resume, cancel and queue.
    async fn can_control(&self) -> bool {
        can_control(self.role)
    }
    /// Creation time (RFC 3339).
    async fn created_at(&self) -> String {
        rfc3339_ms(self.c.created_at)
    }
    /// Start time (RFC 3339).
    async fn started_at(&self) -> Option<String> {
        self.c.started_at.map(rfc3339_ms)
    }
    /// End time (RFC 3339).
    async fn finished_at(&self) -> Option<String> {
        self.c.finished_at.map(rfc3339_ms)
    }
    /// Experiments in order, a page at a time (`after` is an `endCursor`). Its complexity is
    /// `first` (default 100) times its selection's, so nested lists cannot multiply unseen.
    #[graphql(complexity = "first.unwrap_or(100).clamp(1, MAX_PAGE) as usize * child_complexity")]
    async fn experiments(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        state: Option<ExperimentState>,
        source: Option<String>,
    ) -> ApiResult<ExperimentPage> {
        let first = first.unwrap_or(100);
        if !(1..=MAX_PAGE).contains(&first) {
            return Err(fail(ApiError::BadInput(format!(
                "first must be between 1 and {MAX_PAGE}"
            ))));
        }
        let after_seq = match after.as_deref() {
            None | Some("") => 0,
            Some(cursor) => cursor
                .parse::<i64>()
                .map_err(|_| fail(ApiError::BadInput("after is not a cursor".into())))?,
        };
        let filter = ExperimentFilter { state, source };
        let storage = &super::state(ctx)?.storage;
        let mut rows = storage
            .experiments_of_campaign(&self.c.id, after_seq, i64::from(first) + 1, &filter)
            .await
            .api()?;
        let has_next_page = rows.len() > usize::try_from(first).unwrap_or(0);
        rows.truncate(usize::try_from(first).unwrap_or(0));
        let end_cursor = rows.last().map(|e| e.seq.to_string());
        let total_count = storage.count_experiments(&self.c.id).await.api()?;
        Ok(ExperimentPage {
            nodes: rows.into_iter().map(ExperimentNode).collect(),
            page_info: PageInfo {
                has_next_page,
                end_cursor,
            },
            total_count,
        })
    }
}

/// A page of experiments.
#[derive(SimpleObject)]
pub struct ExperimentPage {
    /// The experiments of this page, in order.
    pub nodes: Vec<ExperimentNode>,
    /// Where the next page starts.
    pub page_info: PageInfo,
    /// Experiments of the campaign in all (any state).
    pub total_count: i64,
}

/// Cursor pagination.
#[derive(SimpleObject)]
pub struct PageInfo {
    /// Whether more items follow.
    pub has_next_page: bool,
    /// Pass as `after` for the next page.
    pub end_cursor: Option<String>,
}

/// One experiment.
pub struct ExperimentNode(Experiment);

impl ExperimentNode {
    /// Wraps an experiment the caller may see.
    pub fn new(e: Experiment) -> Self {
        ExperimentNode(e)
    }
}

/// One measurement an experiment streamed (raw data as the agent sent it).
#[derive(SimpleObject)]
pub struct MeasurementNode {
    /// Delivery sequence number (within the agent's epoch).
    pub seq: i64,
    /// Name given by the program (e.g. `UV`, `CD`).
    pub name: String,
    /// `absorption_spectrum`, `cd_spectrum`, `temperature`.
    pub kind: String,
    /// Program step, if any.
    pub step: Option<i64>,
    /// Lab time of the record, s.
    pub lab_time_s: Option<f64>,
    /// The measurement (wavelengths, values, settings), JSON.
    pub data: Json<Value>,
    /// When the server stored it (RFC 3339).
    pub received_at: String,
    /// Pass as `after` to read the measurements that follow this one.
    pub cursor: String,
}

/// Most measurements one `Experiment.measurements` page returns.
pub const MAX_MEASUREMENTS_PAGE: i32 = 1000;

/// The opaque cursor of a record: its delivery order key.
fn record_cursor(r: &storage::StoredRecord) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!([r.received_at, r.epoch, r.seq]).to_string())
}

fn parse_record_cursor(cursor: &str) -> ApiResult<(i64, String, i64)> {
    use base64::Engine as _;
    let bad = || {
        fail(ApiError::BadInput(
            "after is not a measurement cursor".into(),
        ))
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor.as_bytes())
        .map_err(|_| bad())?;
    let (at, epoch, seq): (i64, String, i64) = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    Ok((at, epoch, seq))
}

fn measurement_nodes(records: Vec<storage::StoredRecord>) -> Vec<MeasurementNode> {
    records
        .into_iter()
        .filter(|r| r.kind == "measurement")
        .filter_map(|r| {
            let v: Value = serde_json::from_str(&r.body).ok()?;
            let body = &v["body"];
            Some(MeasurementNode {
                cursor: record_cursor(&r),
                seq: r.seq,
                name: body["name"].as_str().unwrap_or("").to_owned(),
                kind: body["measurement"]["kind"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                step: v["step"].as_i64(),
                lab_time_s: v["lab_time_s"].as_f64(),
                data: Json(body["measurement"].clone()),
                received_at: rfc3339_ms(r.received_at),
            })
        })
        .collect()
}

#[Object(name = "Experiment")]
impl ExperimentNode {
    /// Identifier (also the program id of its records).
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// The campaign.
    async fn campaign_id(&self) -> ID {
        ID(self.0.campaign_id.to_string())
    }
    /// The lab it ran on.
    async fn lab_id(&self) -> ID {
        ID(self.0.lab_id.to_string())
    }
    /// 1-based position in the campaign (the loop number).
    async fn seq(&self) -> i64 {
        self.0.seq
    }
    /// Name.
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// `optimizer` or `manual`.
    async fn source(&self) -> &str {
        &self.0.source
    }
    /// The conditions (`T` = 130, `C` = 0.8), by variable name.
    async fn parameters(&self) -> ApiResult<Vec<ParameterValue>> {
        parameter_values(&self.0.params_json).ok_or_else(|| fail(ApiError::Internal))
    }
    /// Where it is in the queue.
    async fn state(&self) -> ExperimentState {
        self.0.state
    }
    /// The agent's program outcome.
    async fn outcome(&self) -> Option<&str> {
        self.0.outcome.as_deref()
    }
    /// Why it failed or has no objective value.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    /// The objective's value.
    async fn objective_value(&self) -> Option<f64> {
        self.0.objective_value
    }
    /// What the analysis read from its spectra (exciton wavelength, CD at the exciton, …);
    /// null until it was analysed.
    async fn features(&self) -> Option<ExperimentFeatures> {
        features_of(self.0.features_json.as_deref())
    }
    /// The absorption fit: its peaks and the fitted curve; null until it was analysed.
    async fn fitted_peaks(&self) -> Option<PeakFit> {
        peak_fit_of(self.0.peaks_json.as_deref())
    }
    /// Times it was claimed for dispatch.
    async fn attempts(&self) -> i64 {
        self.0.attempts
    }
    /// Queued at (RFC 3339).
    async fn queued_at(&self) -> String {
        rfc3339_ms(self.0.queued_at)
    }
    /// Dispatched at (RFC 3339).
    async fn dispatched_at(&self) -> Option<String> {
        self.0.dispatched_at.map(rfc3339_ms)
    }
    /// Started on the lab at (RFC 3339).
    async fn started_at(&self) -> Option<String> {
        self.0.started_at.map(rfc3339_ms)
    }
    /// Finished at (RFC 3339).
    async fn finished_at(&self) -> Option<String> {
        self.0.finished_at.map(rfc3339_ms)
    }
    /// The raw measurements it streamed (spectra, temperatures), in delivery order: at most
    /// `first` (1..=1000) after the cursor `after` (a measurement's `cursor`).
    #[graphql(complexity = "first.clamp(1, MAX_MEASUREMENTS_PAGE) as usize * child_complexity")]
    async fn measurements(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 100)] first: i32,
        after: Option<String>,
    ) -> ApiResult<Vec<MeasurementNode>> {
        if !(1..=MAX_MEASUREMENTS_PAGE).contains(&first) {
            return Err(fail(ApiError::BadInput(format!(
                "first must be within 1..={MAX_MEASUREMENTS_PAGE}"
            ))));
        }
        let after = after.as_deref().map(parse_record_cursor).transpose()?;
        let records = state(ctx)?
            .storage
            .program_records_page(
                &self.0.lab_id,
                &self.0.id,
                "measurement",
                after,
                i64::from(first),
            )
            .await
            .api()?;
        Ok(measurement_nodes(records))
    }
    /// Where it came from: the compiled program, the optimizer's proposal and the campaign's
    /// settings at creation (JSON).
    async fn provenance(&self, ctx: &Context<'_>) -> ApiResult<Json<Value>> {
        let c = state(ctx)?
            .storage
            .campaign(&self.0.campaign_id)
            .await
            .api()?;
        Ok(Json(provenance(&self.0, &c)))
    }
}

/// The provenance of one experiment (also in exports).
pub fn provenance(e: &Experiment, c: &Campaign) -> Value {
    json!({
        "experiment_id": e.id,
        "program_id": e.id,
        "program": serde_json::from_str::<Value>(&e.program_json).unwrap_or(Value::Null),
        "proposal": e.proposal_json.as_deref().and_then(|p| serde_json::from_str::<Value>(p).ok()),
        "source": e.source,
        "created_by": e.created_by,
        "campaign": {
            "id": c.id,
            "name": c.name,
            "lab_id": c.lab_id,
            "recipe": c.recipe,
            "objective": c.objective,
            "optimizer": c.optimizer,
            "optimizer_settings": serde_json::from_str::<Value>(&c.settings_json).unwrap_or(Value::Null),
            "seed": c.seed,
            "budget": c.budget,
            "batch_size": c.batch_size,
            "space": serde_json::from_str::<Value>(&c.space_json).unwrap_or(Value::Null),
        },
    })
}

/// Campaign queries.
#[derive(Default)]
pub struct CampaignQuery;

#[Object]
impl CampaignQuery {
    /// One campaign; null when it does not exist or the caller may not see it.
    async fn campaign(&self, ctx: &Context<'_>, id: ID) -> ApiResult<Option<CampaignNode>> {
        let p = principal(ctx)?;
        match campaign_with_access(ctx, p, &id, CampaignAccess::Read).await {
            Ok((c, role)) => Ok(Some(CampaignNode { c, role })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// An organisation's campaigns, newest first (members only).
    async fn campaigns(
        &self,
        ctx: &Context<'_>,
        organization_id: ID,
    ) -> ApiResult<Vec<CampaignNode>> {
        let p = principal(ctx)?;
        let org = parse_id(&organization_id)?;
        let Some(role) = org_role(ctx, p, &org).await? else {
            return Err(fail(ApiError::NotFound));
        };
        let rows = state(ctx)?
            .storage
            .campaigns_of_organization(&org)
            .await
            .api()?;
        Ok(rows.into_iter().map(|c| CampaignNode { c, role }).collect())
    }

    /// One experiment; null when it does not exist or the caller may not see it.
    async fn experiment(&self, ctx: &Context<'_>, id: ID) -> ApiResult<Option<ExperimentNode>> {
        let p = principal(ctx)?;
        let Ok(id) = parse_id(&id) else {
            return Ok(None);
        };
        let e = match state(ctx)?.storage.experiment(&id).await {
            Ok(e) => e,
            Err(StorageError::NotFound) => return Ok(None),
            Err(e) => return Err(ApiError::from(e).extend()),
        };
        if org_role(ctx, p, &e.organization_id).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(ExperimentNode(e)))
    }
}

fn is_not_found(e: &async_graphql::Error) -> bool {
    e.extensions
        .as_ref()
        .and_then(|x| x.get("code"))
        .is_some_and(|c| *c == async_graphql::Value::from("NOT_FOUND"))
}

use async_graphql::ErrorExtensions as _;

/// Campaign mutations.
#[derive(Default)]
pub struct CampaignMutation;

/// What `createCampaign` checks and derives, shared with `cloneCampaign`.
struct Definition {
    space_json: String,
    optimizer_state: String,
}

fn define(
    recipe: &str,
    objective: &str,
    optimizer: &str,
    settings: &Value,
    seed: u64,
    budget: i64,
    descriptor: Option<&LabDescriptor>,
) -> ApiResult<Definition> {
    let bad = |e: campaign::CampaignError| fail(ApiError::BadInput(e.to_string()));
    let space = campaign::space_of_recipe(recipe).map_err(bad)?;
    let objective = parse_objective(objective).map_err(bad)?;
    // The recipe must compile for this lab across its declared space (e.g. at the centre).
    if let Some(descriptor) = descriptor {
        let centre: Vec<f64> = space
            .parameters
            .iter()
            .map(|p| (p.lower + p.upper) / 2.0)
            .collect();
        let snapped = space.snap(&centre);
        compile_point(recipe, descriptor, &campaign::bindings_of(&space, &snapped)).map_err(bad)?;
    }
    let space_json = serde_json::to_string(&space).map_err(|_| fail(ApiError::Internal))?;
    let opt =
        new_optimizer(space, optimizer, settings, seed, objective.direction()).map_err(bad)?;
    let most = opt.spec().algorithm.max_observations();
    if usize::try_from(budget).map_or(true, |b| b > most) {
        return Err(fail(ApiError::BadInput(format!(
            "budget must be between 1 and {most} for {optimizer} (got {budget})"
        ))));
    }
    let optimizer_state = opt.state_json().map_err(|_| fail(ApiError::Internal))?;
    Ok(Definition {
        space_json,
        optimizer_state,
    })
}

pub(super) fn descriptor_of(lab: &storage::Lab) -> Option<LabDescriptor> {
    lab.descriptor
        .as_deref()
        .and_then(|d| LabDescriptor::from_json_str(d).ok())
}

#[Object]
impl CampaignMutation {
    /// Creates a campaign on a lab the organisation may queue on (researchers and up). The
    /// parameter space comes from the recipe's declared variables; `start: true` starts it.
    #[allow(clippy::too_many_arguments)]
    async fn create_campaign(
        &self,
        ctx: &Context<'_>,
        organization_id: ID,
        lab_id: ID,
        name: String,
        recipe: String,
        objective: String,
        optimizer: String,
        optimizer_settings: Option<Json<Value>>,
        seed: Option<i64>,
        budget: i32,
        batch_size: Option<i32>,
        target: Option<f64>,
        priority: Option<i32>,
        start: Option<bool>,
    ) -> ApiResult<CampaignNode> {
        let p = writer(ctx)?;
        let org = parse_id(&organization_id)?;
        let role = org_role(ctx, p, &org)
            .await?
            .ok_or_else(|| fail(ApiError::NotFound))?;
        if !can_control(role) {
            return Err(fail(ApiError::Forbidden));
        }
        let (lab, _) = lab_with_access(ctx, p, &lab_id, LabAccess::Queue).await?;
        // The lab must be the organisation's own or shared with it.
        if lab.organization_id != org {
            let shared = state(ctx)?
                .storage
                .shares_of_lab(&lab.id)
                .await
                .api()?
                .into_iter()
                .any(|s| s.organization_id == org);
            if !shared {
                return Err(fail(ApiError::NotFound));
            }
        }
        let name = validate_name("name", &name, 200)?;
        if recipe.len() > MAX_RECIPE_BYTES {
            return Err(fail(ApiError::BadInput(format!(
                "the recipe is longer than {MAX_RECIPE_BYTES} bytes"
            ))));
        }
        if !(1..=MAX_BUDGET).contains(&budget) {
            return Err(fail(ApiError::BadInput(format!(
                "budget must be between 1 and {MAX_BUDGET}"
            ))));
        }
        let batch_size = batch_size.unwrap_or(1);
        if !(1..=64).contains(&batch_size) {
            return Err(fail(ApiError::BadInput(
                "batchSize must be between 1 and 64".into(),
            )));
        }
        let priority = priority.unwrap_or(0);
        if !(-100..=100).contains(&priority) {
            return Err(fail(ApiError::BadInput(
                "priority must be between -100 and 100".into(),
            )));
        }
        if target.is_some_and(|t| !t.is_finite()) {
            return Err(fail(ApiError::BadInput("target must be finite".into())));
        }
        let seed = seed.unwrap_or(0);
        if seed < 0 {
            return Err(fail(ApiError::BadInput("seed must be >= 0".into())));
        }
        let settings = optimizer_settings.map_or(Value::Null, |j| j.0);
        let def = define(
            &recipe,
            &objective,
            &optimizer,
            &settings,
            seed.unsigned_abs(),
            i64::from(budget),
            descriptor_of(&lab).as_ref(),
        )?;
        let new = NewCampaign {
            organization_id: org.clone(),
            lab_id: lab.id.clone(),
            name,
            recipe,
            space_json: def.space_json,
            objective,
            optimizer,
            settings_json: if settings.is_null() {
                "{}".into()
            } else {
                settings.to_string()
            },
            seed,
            budget: i64::from(budget),
            batch_size: i64::from(batch_size),
            target,
            priority: i64::from(priority),
            optimizer_state: def.optimizer_state,
            created_by: p.user_id.to_string(),
        };
        let st = state(ctx)?;
        let mut c = st.storage.create_campaign(&new, now_ms()).await.api()?;
        audit(
            ctx,
            &p.actor(),
            Some(&org),
            "campaign.create",
            format!("campaign:{}", c.id),
            json!({ "name": c.name, "lab_id": c.lab_id, "optimizer": c.optimizer, "budget": c.budget }),
        )
        .await?;
        if start.unwrap_or(false) {
            c = transition(
                ctx,
                p,
                c,
                &[CampaignState::Draft],
                CampaignState::Running,
                "campaign.start",
            )
            .await?;
        }
        Ok(CampaignNode { c, role })
    }

    /// Starts a draft campaign.
    async fn start_campaign(&self, ctx: &Context<'_>, id: ID) -> ApiResult<CampaignNode> {
        control(
            ctx,
            &id,
            &[CampaignState::Draft],
            CampaignState::Running,
            "campaign.start",
        )
        .await
    }

    /// Pauses a running campaign: nothing new is queued; experiments in flight finish and are
    /// recorded.
    async fn pause_campaign(&self, ctx: &Context<'_>, id: ID) -> ApiResult<CampaignNode> {
        control(
            ctx,
            &id,
            &[CampaignState::Running],
            CampaignState::Paused,
            "campaign.pause",
        )
        .await
    }

    /// Resumes a paused campaign.
    async fn resume_campaign(&self, ctx: &Context<'_>, id: ID) -> ApiResult<CampaignNode> {
        control(
            ctx,
            &id,
            &[CampaignState::Paused],
            CampaignState::Running,
            "campaign.resume",
        )
        .await
    }

    /// Cancels a campaign: queued experiments are canceled; one running on the lab finishes and
    /// is recorded.
    async fn cancel_campaign(&self, ctx: &Context<'_>, id: ID) -> ApiResult<CampaignNode> {
        control(
            ctx,
            &id,
            &[
                CampaignState::Draft,
                CampaignState::Running,
                CampaignState::Paused,
            ],
            CampaignState::Canceled,
            "campaign.cancel",
        )
        .await
    }

    /// Copies a campaign's definition (recipe, space, objective, optimizer, budget) into a new
    /// draft with a fresh optimizer.
    async fn clone_campaign(
        &self,
        ctx: &Context<'_>,
        id: ID,
        name: Option<String>,
    ) -> ApiResult<CampaignNode> {
        let p = writer(ctx)?;
        let (src, role) = campaign_with_access(ctx, p, &id, CampaignAccess::Control).await?;
        let name = validate_name(
            "name",
            &name.unwrap_or_else(|| format!("{} (copy)", src.name)),
            200,
        )?;
        let settings: Value = serde_json::from_str(&src.settings_json).unwrap_or(Value::Null);
        let def = define(
            &src.recipe,
            &src.objective,
            &src.optimizer,
            &settings,
            src.seed.unsigned_abs(),
            src.budget,
            None,
        )?;
        let new = NewCampaign {
            organization_id: src.organization_id.clone(),
            lab_id: src.lab_id.clone(),
            name,
            recipe: src.recipe.clone(),
            space_json: def.space_json,
            objective: src.objective.clone(),
            optimizer: src.optimizer.clone(),
            settings_json: src.settings_json.clone(),
            seed: src.seed,
            budget: src.budget,
            batch_size: src.batch_size,
            target: src.target,
            priority: src.priority,
            optimizer_state: def.optimizer_state,
            created_by: p.user_id.to_string(),
        };
        let c = state(ctx)?
            .storage
            .create_campaign(&new, now_ms())
            .await
            .api()?;
        audit(
            ctx,
            &p.actor(),
            Some(&c.organization_id),
            "campaign.clone",
            format!("campaign:{}", c.id),
            json!({ "from": src.id }),
        )
        .await?;
        Ok(CampaignNode { c, role })
    }

    /// Queues a person's own conditions into a campaign; the result is told to the optimizer
    /// too (it does not count against the budget). `parameters` is a JSON object of every
    /// declared variable's value (`{"T": 130, "C": 0.8}`), checked against the space.
    async fn queue_experiment(
        &self,
        ctx: &Context<'_>,
        campaign_id: ID,
        parameters: Json<Value>,
        name: Option<String>,
    ) -> ApiResult<ExperimentNode> {
        let p = writer(ctx)?;
        let (c, _) = campaign_with_access(ctx, p, &campaign_id, CampaignAccess::Control).await?;
        if c.state.is_final() {
            return Err(fail(ApiError::Conflict(format!(
                "the campaign is {}; nothing more can be queued",
                c.state
            ))));
        }
        let st = state(ctx)?;
        let space: maosic_optimizer::Space =
            serde_json::from_str(&c.space_json).map_err(|_| fail(ApiError::Internal))?;
        let x = check_point(&space, &parameters.0)
            .map_err(|e| fail(ApiError::BadInput(e.to_string())))?;
        let x = space.snap(&x);
        let lab = st.storage.lab(&c.lab_id).await.api()?;
        let descriptor = descriptor_of(&lab).ok_or_else(|| fail(ApiError::NoDescriptor))?;
        let program = compile_point(&c.recipe, &descriptor, &campaign::bindings_of(&space, &x))
            .map_err(|e| fail(ApiError::BadInput(e.to_string())))?;
        if lab.organization_id != c.organization_id {
            let (quota, left) = crate::engine::scheduler::daily_quota(
                st.storage.as_ref(),
                &lab.id,
                &c.organization_id,
                now_ms(),
            )
            .await
            .api()?
            .unwrap_or((0, 0));
            if left <= 0 {
                return Err(fail(ApiError::Conflict(format!(
                    "the shared lab's daily quota ({quota} experiments and instructions) is used up"
                ))));
            }
        }
        let name = validate_name(
            "name",
            &name.unwrap_or_else(|| format!("{} (manual)", c.name)),
            200,
        )?;
        let new = NewExperiment {
            id: ExperimentId::generate(),
            name,
            source: "manual".into(),
            params_json: campaign::params_json(&space, &x).to_string(),
            proposal_json: None,
            program_json: serde_json::to_string(&program).map_err(|_| fail(ApiError::Internal))?,
            priority: c.priority + 1,
            created_by: p.user_id.to_string(),
            trace_parent: maosic_telemetry::traceparent(),
        };
        let e = st
            .storage
            .enqueue_manual(&c.id, &new, now_ms())
            .await
            .api()?;
        audit(
            ctx,
            &p.actor(),
            Some(&c.organization_id),
            "experiment.queue",
            format!("experiment:{}", e.id),
            json!({ "campaign_id": c.id, "parameters": campaign::params_json(&space, &x) }),
        )
        .await?;
        st.events.publish(Event::Experiment {
            organization_id: e.organization_id.clone(),
            campaign_id: e.campaign_id.clone(),
            experiment_id: e.id.clone(),
            state: e.state,
        });
        st.events.publish(Event::Wake);
        Ok(ExperimentNode(e))
    }
}

async fn control(
    ctx: &Context<'_>,
    id: &ID,
    from: &[CampaignState],
    to: CampaignState,
    action: &str,
) -> ApiResult<CampaignNode> {
    let p = writer(ctx)?;
    let (c, role) = campaign_with_access(ctx, p, id, CampaignAccess::Control).await?;
    let c = transition(ctx, p, c, from, to, action).await?;
    Ok(CampaignNode { c, role })
}

async fn transition(
    ctx: &Context<'_>,
    p: &Principal,
    c: Campaign,
    from: &[CampaignState],
    to: CampaignState,
    action: &str,
) -> ApiResult<Campaign> {
    let st = state(ctx)?;
    let moved = st
        .storage
        .set_campaign_state(&c.id, from, to, None, now_ms())
        .await
        .api()?;
    if !moved {
        return Err(fail(ApiError::Conflict(format!(
            "the campaign is {}; it cannot go to {to}",
            c.state
        ))));
    }
    audit(
        ctx,
        &p.actor(),
        Some(&c.organization_id),
        action,
        format!("campaign:{}", c.id),
        json!({ "from": c.state, "to": to }),
    )
    .await?;
    st.events.publish(Event::Campaign {
        organization_id: c.organization_id.clone(),
        campaign_id: c.id.clone(),
        state: to,
        kind: "state".into(),
    });
    st.events.publish(Event::Wake);
    st.storage.campaign(&c.id).await.api()
}
