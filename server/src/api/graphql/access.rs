//! Authorisation: what a verified principal may do to an organisation or a lab, derived only
//! from stored memberships and shares (never from request input), and the audit helper.
//! Objects the caller may not see are reported as not found, so their existence does not leak.

use async_graphql::Context;
use serde_json::Value;

use super::{fail, request_info, state, ApiError, ApiResult, StorageResultExt};
use crate::auth::Principal;
use crate::storage::{now_ms, Lab, LabId, NewAuditEntry, OrganizationId, Role};

/// What a principal may do to a lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LabAccess {
    /// See it (members of its organisation or of one it is shared with, any role).
    Read,
    /// Run campaigns and queue experiments on it (researchers and up of its organisation, or
    /// of an organisation it is shared with for `run` or `instruct`).
    Queue,
    /// Also send instructions to its hardware and stop it (researchers and up of its
    /// organisation, or of an organisation it is shared with for `instruct`).
    Instruct,
    /// Manage it: agents, enrollment, sharing (owners and admins of its organisation).
    Manage,
}

/// What a share lets the receiving organisation do on the lab (stored as `lab_shares.rights`).
pub fn share_level(rights: &str) -> LabAccess {
    match rights {
        "instruct" => LabAccess::Instruct,
        "run" => LabAccess::Queue,
        _ => LabAccess::Read,
    }
}

/// The principal's effective role in an organisation, if any.
pub async fn org_role(
    ctx: &Context<'_>,
    principal: &Principal,
    organization_id: &OrganizationId,
) -> ApiResult<Option<Role>> {
    let state = state(ctx)?;
    if state.config.graphql.test_disable_app_filter {
        return Ok(Some(Role::Owner));
    }
    let memberships = state
        .storage
        .memberships_of_user(&principal.user_id)
        .await
        .api()?;
    let stored = memberships
        .iter()
        .find(|m| m.organization_id == organization_id)
        .map(|m| m.role);
    Ok(principal.effective_role(organization_id, stored))
}

/// Requires any role in the organisation (else `NOT_FOUND`); returns the role.
pub async fn require_member(
    ctx: &Context<'_>,
    principal: &Principal,
    organization_id: &OrganizationId,
) -> ApiResult<Role> {
    org_role(ctx, principal, organization_id)
        .await?
        .ok_or_else(|| fail(ApiError::NotFound))
}

/// Requires owner or admin in the organisation (`NOT_FOUND` for outsiders, `FORBIDDEN` for
/// members with a lesser role).
pub async fn require_admin(
    ctx: &Context<'_>,
    principal: &Principal,
    organization_id: &OrganizationId,
) -> ApiResult<Role> {
    let role = require_member(ctx, principal, organization_id).await?;
    if matches!(role, Role::Owner | Role::Admin) {
        Ok(role)
    } else {
        Err(fail(ApiError::Forbidden))
    }
}

/// The access a role gives: in the lab's own organisation (`share` = `None`), or through a share
/// whose rights cap it.
fn lab_level(role: Role, share: Option<LabAccess>) -> LabAccess {
    match (role, share) {
        (Role::Owner | Role::Admin, None) => LabAccess::Manage,
        (Role::Researcher, None) => LabAccess::Instruct,
        (Role::Owner | Role::Admin | Role::Researcher, Some(granted)) => granted,
        (Role::Viewer, _) => LabAccess::Read,
    }
}

/// What the principal may do to a lab it can see; `None` when it cannot see it.
pub async fn lab_access_of(
    ctx: &Context<'_>,
    principal: &Principal,
    lab: &Lab,
) -> ApiResult<Option<LabAccess>> {
    let state = state(ctx)?;
    if state.config.graphql.test_disable_app_filter {
        return Ok(Some(LabAccess::Manage));
    }
    let memberships = state
        .storage
        .memberships_of_user(&principal.user_id)
        .await
        .api()?;
    let role_in = |org: &OrganizationId| {
        let stored = memberships
            .iter()
            .find(|m| m.organization_id == org)
            .map(|m| m.role);
        principal.effective_role(org, stored)
    };
    let mut best = role_in(&lab.organization_id).map(|r| lab_level(r, None));
    for share in state.storage.shares_of_lab(&lab.id).await.api()? {
        if let Some(role) = role_in(&share.organization_id) {
            let level = lab_level(role, Some(share_level(&share.rights)));
            best = Some(best.map_or(level, |b| b.max(level)));
        }
    }
    Ok(best)
}

/// Loads a lab the principal may access at least at `needed`; `NOT_FOUND` when it cannot see
/// it at all, `FORBIDDEN` when it can see it but not do this.
pub async fn lab_with_access(
    ctx: &Context<'_>,
    principal: &Principal,
    lab_id: &str,
    needed: LabAccess,
) -> ApiResult<(Lab, LabAccess)> {
    let state = state(ctx)?;
    let id: LabId = super::parse_id(lab_id)?;
    let lab = state.storage.lab(&id).await.api()?;
    match lab_access_of(ctx, principal, &lab).await? {
        None => Err(fail(ApiError::NotFound)),
        Some(access) if access < needed => Err(fail(ApiError::Forbidden)),
        Some(access) => Ok((lab, access)),
    }
}

/// Appends an audit entry for a mutation: who (the principal), what, which object, when and
/// from where (the client address).
pub async fn audit(
    ctx: &Context<'_>,
    actor: &str,
    organization_id: Option<&OrganizationId>,
    action: &str,
    target: String,
    detail: Value,
) -> ApiResult<()> {
    let state = state(ctx)?;
    state
        .storage
        .append_audit(
            &NewAuditEntry {
                organization_id: organization_id.cloned(),
                actor: actor.to_owned(),
                action: action.to_owned(),
                target,
                detail,
                source: request_info(ctx).source.clone(),
            },
            now_ms(),
        )
        .await
        .api()?;
    Ok(())
}
