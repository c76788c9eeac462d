//! Lab control in the public API: one low-level instruction sent straight to a lab's agent
//! (checked against the lab's capability descriptor, then by the agent's own limits) and the
//! software stop. Both need the `INSTRUCT` right on the lab, count against a sharee's daily
//! quota (the stop is recorded but never refused for quota), and are audited. The operator fault
//! reset needs the lab's `MANAGE` right (its organisation's owners and admins) and is audited.
//! Queued commands (with deadlines) are in [`super::commands`].

use async_graphql::{Context, Json, Object, ID};
use maosic_schema::capability::LabDescriptor;
use serde_json::{json, Value};

use super::access::{audit, lab_with_access, LabAccess};
use super::campaigns::descriptor_of;
use super::{fail, state, writer, ApiError, ApiResult, StorageResultExt};
use crate::agents::registry::CallError;
use crate::storage::now_ms;

/// Lab-control mutations.
#[derive(Default)]
pub struct LabControlMutation;

#[Object]
impl LabControlMutation {
    /// Sends one low-level instruction to a lab's agent (e.g. `H.set_temperature` with
    /// `{"T": 25}`), checked against the lab's capability descriptor; the agent checks its own
    /// limits again. Researchers and up of an organisation that may queue on the lab.
    async fn send_instruction(
        &self,
        ctx: &Context<'_>,
        lab_id: ID,
        method: String,
        params: Option<Json<Value>>,
    ) -> ApiResult<Json<Value>> {
        let p = writer(ctx)?;
        let (lab, _) = lab_with_access(ctx, p, &lab_id, LabAccess::Instruct).await?;
        let descriptor = descriptor_of(&lab).ok_or_else(|| fail(ApiError::NoDescriptor))?;
        let params = params.map_or(Value::Object(Default::default()), |j| j.0);
        check_instruction(&descriptor, &method, &params)
            .map_err(|e| fail(ApiError::BadInput(e)))?;
        let organization_id = super::commands::instructing_org(ctx, p, &lab, true).await?;
        state(ctx)?
            .storage
            .record_instruction(&lab.id, &organization_id, &p.user_id, &method, now_ms())
            .await
            .api()?;
        audit(
            ctx,
            &p.actor(),
            Some(&lab.organization_id),
            "lab.instruction",
            format!("lab:{}", lab.id),
            json!({ "method": method, "params": params, "on_behalf_of": organization_id }),
        )
        .await?;
        let st = state(ctx)?;
        let answer = st
            .gateway
            .call(
                &lab.id,
                "device.call",
                json!({ "method": method, "params": params }),
                std::time::Duration::from_secs(60),
            )
            .await;
        call_answer(answer).map(Json)
    }

    /// Software stop of a lab: the agent cancels its programs and puts the hardware in its safe
    /// state (pumps stopped, heater off). The hardware e-stop stays the lab's.
    async fn stop_lab(&self, ctx: &Context<'_>, lab_id: ID) -> ApiResult<Json<Value>> {
        let p = writer(ctx)?;
        let (lab, _) = lab_with_access(ctx, p, &lab_id, LabAccess::Instruct).await?;
        let organization_id = super::commands::instructing_org(ctx, p, &lab, false).await?;
        state(ctx)?
            .storage
            .record_instruction(&lab.id, &organization_id, &p.user_id, "estop", now_ms())
            .await
            .api()?;
        audit(
            ctx,
            &p.actor(),
            Some(&lab.organization_id),
            "lab.stop",
            format!("lab:{}", lab.id),
            json!({ "on_behalf_of": organization_id }),
        )
        .await?;
        let answer = state(ctx)?
            .gateway
            .call(
                &lab.id,
                "estop",
                json!({}),
                std::time::Duration::from_secs(30),
            )
            .await;
        call_answer(answer).map(Json)
    }

    /// Operator fault reset (owners and admins of the lab's organisation): the agent clears its
    /// latched safety faults (an e-stop, an over-temperature, a lost device, ...). Nothing
    /// restarts: outputs stay safe until a program or an instruction sets them. A fault whose
    /// condition persists latches again at once. Answers `{cleared, latched}` (each a list of
    /// `{kind, detail, lab_time_s}`); audited as `lab.faults_reset`, and the agent keeps the
    /// reset, with who and why, in the lab's record stream.
    async fn reset_lab_faults(
        &self,
        ctx: &Context<'_>,
        lab_id: ID,
        reason: String,
    ) -> ApiResult<Json<Value>> {
        let p = writer(ctx)?;
        let (lab, _) = lab_with_access(ctx, p, &lab_id, LabAccess::Manage).await?;
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > MAX_RESET_REASON_CHARS {
            return Err(fail(ApiError::BadInput(format!(
                "reason: say why the faults may be cleared (1 to {MAX_RESET_REASON_CHARS} characters)"
            ))));
        }
        audit(
            ctx,
            &p.actor(),
            Some(&lab.organization_id),
            "lab.faults_reset",
            format!("lab:{}", lab.id),
            json!({ "reason": reason }),
        )
        .await?;
        let answer = state(ctx)?
            .gateway
            .call(
                &lab.id,
                maosic_schema::protocol::method::SAFETY_RESET,
                json!({ "actor": p.actor(), "reason": reason }),
                std::time::Duration::from_secs(30),
            )
            .await;
        call_answer(answer).map(Json)
    }
}

/// Longest reason a fault reset takes.
const MAX_RESET_REASON_CHARS: usize = 500;

fn call_answer(answer: Result<Value, CallError>) -> ApiResult<Value> {
    match answer {
        Ok(v) => Ok(v),
        Err(CallError::Offline) => Err(fail(ApiError::Conflict(
            "the lab's agent is offline".into(),
        ))),
        Err(CallError::Rejected(rpc)) => Err(fail(ApiError::BadInput(format!(
            "the agent refused: {}",
            rpc.message
        )))),
        Err(CallError::Timeout(_)) | Err(CallError::Closed) => Err(fail(ApiError::Conflict(
            "the agent did not answer in time".into(),
        ))),
    }
}

/// Checks a `SYMBOL.method` call and its parameters against the lab's capability descriptor.
pub fn check_instruction(
    descriptor: &LabDescriptor,
    method: &str,
    params: &Value,
) -> Result<(), String> {
    let (device, m) = descriptor.method(method).ok_or_else(|| {
        let known: Vec<String> = descriptor
            .devices
            .iter()
            .flat_map(|d| {
                d.methods
                    .iter()
                    .map(move |m| format!("{}.{}", d.symbol, m.name))
            })
            .collect();
        format!(
            "unknown method {method:?}; this lab offers {}",
            known.join(", ")
        )
    })?;
    let Value::Object(given) = params else {
        return Err("params must be a JSON object".into());
    };
    for (name, value) in given {
        let spec = m
            .param(name)
            .ok_or_else(|| format!("{}.{} has no parameter {name:?}", device.symbol, m.name))?;
        let v = value
            .as_f64()
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("{name} must be a finite number (in {})", spec.unit))?;
        if v < spec.min || v > spec.max {
            return Err(format!(
                "{}.{}: {name} must be within {}..{} {}; got {v}",
                device.symbol, m.name, spec.min, spec.max, spec.unit
            ));
        }
    }
    for spec in &m.params {
        if spec.required && spec.default.is_none() && !given.contains_key(&spec.name) {
            return Err(format!(
                "{}.{} needs {} ({})",
                device.symbol, m.name, spec.name, spec.unit
            ));
        }
    }
    Ok(())
}
