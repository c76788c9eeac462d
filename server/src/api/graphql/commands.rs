//! Instructions queued for a lab with a deadline (`queueInstruction`), for labs whose agent may
//! be offline when the researcher acts: the dispatcher (`crate::agents::commands`) sends each when the
//! agent is connected and before its deadline; otherwise it ends `TIMED_OUT`, never executed.
//!
//! Who may do what: researchers and up of an organisation that may queue on the lab queue and
//! cancel; any member of the organisation that queued a command reads it; other organisations'
//! commands are `NOT_FOUND`.

use async_graphql::{Context, Json, Object, ID};
use maosic_schema::capability::LabDescriptor;
use maosic_schema::program::{Program, RpcRequest, Step, PROGRAM_FORMAT};
use serde_json::{json, Value};

use super::access::{audit, lab_with_access, org_role, share_level, LabAccess};
use super::lab_control::check_instruction;
use super::{fail, parse_id, rfc3339_ms, state, writer, ApiError, ApiResult, StorageResultExt};
use crate::auth::Principal;
use crate::events::Event;
use crate::storage::commands::{CommandEnd, LabCommand, NewLabCommand};
use crate::storage::{self, now_ms, OrganizationId, Role};

/// Longest deadline of a queued instruction.
const MAX_DEADLINE_SECONDS: i32 = 7 * 24 * 3600;
/// Largest page of commands.
const MAX_PAGE: i32 = 200;
/// Most open (queued or sent) commands the lab's own organisation may have on it.
const MAX_OPEN_PER_LAB: i64 = 20;
/// Most open commands each organisation the lab is shared with may have on it: its own cap,
/// so a partner can never fill the lab's queue and lock the owner out.
const MAX_OPEN_PER_SHAREE: i64 = 5;

/// An instruction queued for a lab.
pub struct LabCommandNode(pub LabCommand);

#[Object(name = "LabCommand")]
impl LabCommandNode {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// The organisation on whose behalf it was queued.
    async fn organization_id(&self) -> ID {
        ID(self.0.organization_id.to_string())
    }
    async fn lab_id(&self) -> ID {
        ID(self.0.lab_id.to_string())
    }
    /// `SYMBOL.method`.
    async fn method(&self) -> &str {
        &self.0.method
    }
    async fn params(&self) -> Json<Value> {
        Json(serde_json::from_str(&self.0.params_json).unwrap_or(Value::Null))
    }
    async fn state(&self) -> storage::CommandState {
        self.0.state
    }
    async fn created_at(&self) -> String {
        rfc3339_ms(self.0.created_at)
    }
    /// Not accepted by the agent by then: `TIMED_OUT`.
    async fn deadline_at(&self) -> String {
        rfc3339_ms(self.0.deadline_at)
    }
    async fn sent_at(&self) -> Option<String> {
        self.0.sent_at.map(rfc3339_ms)
    }
    /// How many times it was sent (a lost answer means one more; the agent runs it once).
    async fn attempts(&self) -> i64 {
        self.0.attempts
    }
    async fn finished_at(&self) -> Option<String> {
        self.0.finished_at.map(rfc3339_ms)
    }
    /// The agent's report when it ran.
    async fn result(&self) -> Option<Json<Value>> {
        self.0
            .result_json
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok())
            .map(Json)
    }
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
}

fn may_queue(role: Role) -> bool {
    matches!(role, Role::Owner | Role::Admin | Role::Researcher)
}

/// The organisation on whose behalf the principal sends instructions to `lab`: the lab's own
/// when the principal is a researcher or more there, else the first organisation the lab is
/// shared with for `instruct` where it is; `FORBIDDEN` otherwise. With `quota`, a sharee's
/// instruction must fit in the share's daily quota (experiments and instructions count
/// together); a software stop does not (a safety action is never refused for quota).
pub(crate) async fn instructing_org(
    ctx: &Context<'_>,
    p: &Principal,
    lab: &storage::Lab,
    quota: bool,
) -> ApiResult<OrganizationId> {
    if org_role(ctx, p, &lab.organization_id)
        .await?
        .is_some_and(may_queue)
    {
        return Ok(lab.organization_id.clone());
    }
    let st = state(ctx)?;
    let mut used_up = None;
    for share in st.storage.shares_of_lab(&lab.id).await.api()? {
        if share_level(&share.rights) < LabAccess::Instruct {
            continue;
        }
        if !org_role(ctx, p, &share.organization_id)
            .await?
            .is_some_and(may_queue)
        {
            continue;
        }
        if !quota {
            return Ok(share.organization_id);
        }
        let (quota, left) = crate::engine::scheduler::daily_quota(
            st.storage.as_ref(),
            &lab.id,
            &share.organization_id,
            now_ms(),
        )
        .await
        .api()?
        .unwrap_or((0, 0));
        if left <= 0 {
            // Another organisation of the caller's may still have quota on this lab.
            used_up = Some(quota);
            continue;
        }
        return Ok(share.organization_id);
    }
    match used_up {
        Some(quota) => Err(fail(ApiError::Conflict(format!(
            "the shared lab's daily quota ({quota} experiments and instructions) is used up"
        )))),
        None => Err(fail(ApiError::Forbidden)),
    }
}

/// Loads a command the principal may see (`NOT_FOUND` otherwise): members of the organisation
/// that queued it, and members of the lab's own organisation (which sees everything that
/// targets its lab). The role returned is the better of the two.
async fn command_with_access(
    ctx: &Context<'_>,
    p: &Principal,
    id: &str,
) -> ApiResult<(LabCommand, Role)> {
    let id = parse_id(id)?;
    let st = state(ctx)?;
    let c = st.storage.command(&id).await.api()?;
    let queuer = org_role(ctx, p, &c.organization_id).await?;
    let owner = match st.storage.lab(&c.lab_id).await {
        Ok(lab) if lab.organization_id != c.organization_id => {
            org_role(ctx, p, &lab.organization_id).await?
        }
        _ => None,
    };
    let role = match (queuer, owner) {
        (Some(a), Some(b)) => {
            if may_queue(a) {
                a
            } else {
                b
            }
        }
        (Some(r), None) | (None, Some(r)) => r,
        (None, None) => return Err(fail(ApiError::NotFound)),
    };
    Ok((c, role))
}

/// The one-step program of an instruction (checked against the descriptor before).
fn one_step_program(
    descriptor: &LabDescriptor,
    method: &str,
    params: &Value,
) -> Result<Program, String> {
    let (_, m) = descriptor
        .method(method)
        .ok_or_else(|| format!("unknown method {method:?}"))?;
    let mut args = std::collections::BTreeMap::new();
    if let Value::Object(given) = params {
        for (name, value) in given {
            let v = value
                .as_f64()
                .ok_or_else(|| format!("{name} must be a number"))?;
            args.insert(name.clone(), v);
        }
    }
    for spec in &m.params {
        if let (false, Some(default)) = (args.contains_key(&spec.name), spec.default) {
            args.insert(spec.name.clone(), default);
        }
    }
    let duration_ms = match &m.duration_param {
        Some(p) => args
            .get(p)
            .map_or(m.duration_ms, |s| (s.max(0.0) * 1000.0).round() as u64),
        None => m.duration_ms,
    };
    Ok(Program {
        format: PROGRAM_FORMAT,
        recipe: None,
        lab: descriptor.name.clone(),
        variables: Default::default(),
        steps: vec![Step {
            id: 1,
            request: RpcRequest {
                jsonrpc: "2.0".into(),
                id: 1,
                method: method.to_owned(),
                params: args,
            },
            after: vec![],
            start_ms: 0,
            duration_ms,
            yields: m.yields.clone(),
            line: 1,
        }],
        estimated_duration_ms: duration_ms,
    })
}

/// Queued-instruction queries.
#[derive(Default)]
pub struct CommandQuery;

#[Object]
impl CommandQuery {
    /// The instructions queued on a lab, newest first: the caller's organisations' own, and
    /// every organisation's when the caller is a member of the lab's own organisation.
    #[graphql(complexity = "first.clamp(1, MAX_PAGE) as usize * child_complexity")]
    async fn lab_commands(
        &self,
        ctx: &Context<'_>,
        lab_id: ID,
        #[graphql(default = 50)] first: i32,
    ) -> ApiResult<Vec<LabCommandNode>> {
        let p = super::principal(ctx)?;
        let (lab, _) = lab_with_access(ctx, p, &lab_id, LabAccess::Read).await?;
        if !(1..=MAX_PAGE).contains(&first) {
            return Err(fail(ApiError::BadInput(format!(
                "first must be within 1..={MAX_PAGE}"
            ))));
        }
        let all = state(ctx)?
            .storage
            .commands_of_lab(&lab.id, i64::from(first))
            .await
            .api()?;
        let owner = org_role(ctx, p, &lab.organization_id).await?.is_some();
        let mut visible = Vec::new();
        for c in all {
            if owner || org_role(ctx, p, &c.organization_id).await?.is_some() {
                visible.push(LabCommandNode(c));
            }
        }
        Ok(visible)
    }

    /// One queued instruction.
    async fn lab_command(&self, ctx: &Context<'_>, id: ID) -> ApiResult<LabCommandNode> {
        let p = super::principal(ctx)?;
        let (c, _) = command_with_access(ctx, p, &id).await?;
        Ok(LabCommandNode(c))
    }
}

/// Queued-instruction mutations.
#[derive(Default)]
pub struct CommandMutation;

#[Object]
impl CommandMutation {
    /// Queues one low-level instruction (e.g. `H.set_temperature` with `{"T": 25}`) for the
    /// lab's agent, checked against its capability descriptor. It is sent when the agent is
    /// connected; if the agent has not accepted it within `deadlineSeconds` it ends
    /// `TIMED_OUT` and never runs. Researchers and up of an organisation that may queue on the
    /// lab.
    async fn queue_instruction(
        &self,
        ctx: &Context<'_>,
        lab_id: ID,
        method: String,
        params: Option<Json<Value>>,
        #[graphql(default = 300)] deadline_seconds: i32,
    ) -> ApiResult<LabCommandNode> {
        let p = writer(ctx)?;
        let (lab, _) = lab_with_access(ctx, p, &lab_id, LabAccess::Instruct).await?;
        let organization_id = instructing_org(ctx, p, &lab, true).await?;
        if !(1..=MAX_DEADLINE_SECONDS).contains(&deadline_seconds) {
            return Err(fail(ApiError::BadInput(format!(
                "deadlineSeconds must be within 1..={MAX_DEADLINE_SECONDS}"
            ))));
        }
        let descriptor = lab
            .descriptor
            .as_deref()
            .and_then(|d| LabDescriptor::from_json_str(d).ok())
            .ok_or_else(|| fail(ApiError::NoDescriptor))?;
        let params = params.map_or(Value::Object(Default::default()), |j| j.0);
        check_instruction(&descriptor, &method, &params)
            .map_err(|e| fail(ApiError::BadInput(e)))?;
        let program = one_step_program(&descriptor, &method, &params)
            .map_err(|e| fail(ApiError::BadInput(e)))?;
        let st = state(ctx)?;
        // Each organisation has its own cap on the lab (counted exactly, whatever the caller
        // may read), so another organisation's commands never lock it out.
        let cap = if organization_id == lab.organization_id {
            MAX_OPEN_PER_LAB
        } else {
            MAX_OPEN_PER_SHAREE
        };
        let open =
            storage::tenant::system(st.storage.open_commands_of_org(&lab.id, &organization_id))
                .await
                .api()?;
        if open >= cap {
            return Err(fail(ApiError::Conflict(format!(
                "your organisation already has {open} instructions waiting on this lab (at most {cap})"
            ))));
        }
        let now = now_ms();
        let c = st
            .storage
            .create_command(
                &NewLabCommand {
                    organization_id: organization_id.clone(),
                    lab_id: lab.id.clone(),
                    method: method.clone(),
                    params_json: params.to_string(),
                    program_json: serde_json::to_string(&program).unwrap_or_default(),
                    created_by: p.user_id.to_string(),
                    deadline_at: now + i64::from(deadline_seconds) * 1000,
                },
                now,
            )
            .await
            .api()?;
        audit(
            ctx,
            &p.actor(),
            Some(&organization_id),
            "lab.instruction.queue",
            format!("lab:{}", lab.id),
            json!({ "command_id": c.id, "method": method, "params": params, "deadline_seconds": deadline_seconds }),
        )
        .await?;
        st.events.publish(Event::Wake);
        Ok(LabCommandNode(c))
    }

    /// Cancels a queued instruction that was not sent yet (a sent one can no longer be
    /// called back: use `stopLab`).
    async fn cancel_lab_command(&self, ctx: &Context<'_>, id: ID) -> ApiResult<LabCommandNode> {
        let p = writer(ctx)?;
        let (c, role) = command_with_access(ctx, p, &id).await?;
        if !may_queue(role) {
            return Err(fail(ApiError::Forbidden));
        }
        let st = state(ctx)?;
        let canceled = st
            .storage
            .finish_command(&c.id, CommandEnd::Canceled, None, None, now_ms())
            .await
            .api()?;
        if !canceled {
            return Err(fail(ApiError::Conflict(format!(
                "the command is {} and can no longer be canceled",
                c.state
            ))));
        }
        audit(
            ctx,
            &p.actor(),
            Some(&c.organization_id),
            "lab.instruction.cancel",
            format!("lab:{}", c.lab_id),
            json!({ "command_id": c.id }),
        )
        .await?;
        Ok(LabCommandNode(st.storage.command(&c.id).await.api()?))
    }
}
