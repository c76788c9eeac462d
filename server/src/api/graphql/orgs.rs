//! Organisations: members with roles, invitations, and the audit log (owners and admins).

use async_graphql::{Context, Object, SimpleObject, ID};
use serde_json::json;

use super::access::{audit, lab_access_of, require_admin, require_member};
use super::account::{validate_name, RoleValue};
use super::labs::{LabNode, LabShareNode};
use super::{
    fail, parse_id, principal, rfc3339_ms, state, writer, ApiError, ApiResult, StorageResultExt,
};
use crate::auth::{token, Revocation};
use crate::storage::{new_id, now_ms, Invitation, MemberChange, Organization, Role};

/// An organisation (tenant), as seen by one of its members.
pub struct OrganizationNode {
    org: Organization,
}

impl OrganizationNode {
    /// Wraps a row the caller is allowed to see.
    pub fn new(org: Organization) -> Self {
        OrganizationNode { org }
    }
}

/// A member of an organisation.
#[derive(SimpleObject)]
pub struct Member {
    /// The user.
    pub user_id: ID,
    /// Their e-mail address.
    pub email: String,
    /// Their display name.
    pub display_name: String,
    /// Their role.
    pub role: RoleValue,
}

#[Object(name = "Organization")]
impl OrganizationNode {
    /// Identifier.
    async fn id(&self) -> ID {
        ID(self.org.id.to_string())
    }
    /// Name.
    async fn name(&self) -> &str {
        &self.org.name
    }
    /// Creation time (RFC 3339).
    async fn created_at(&self) -> String {
        rfc3339_ms(self.org.created_at)
    }
    /// Members and their roles.
    async fn members(&self, ctx: &Context<'_>) -> ApiResult<Vec<Member>> {
        let p = principal(ctx)?;
        require_member(ctx, p, &self.org.id).await?;
        let state = state(ctx)?;
        let mut out = Vec::new();
        for m in state
            .storage
            .memberships_of_organization(&self.org.id)
            .await
            .api()?
        {
            if let Some(user) = state.storage.user(&m.user_id).await.api()? {
                out.push(Member {
                    user_id: ID(user.id.into()),
                    email: user.email,
                    display_name: user.display_name,
                    role: m.role.into(),
                });
            }
        }
        Ok(out)
    }
    /// The organisation's own labs.
    async fn labs(&self, ctx: &Context<'_>) -> ApiResult<Vec<LabNode>> {
        let p = principal(ctx)?;
        require_member(ctx, p, &self.org.id).await?;
        let state = state(ctx)?;
        let mut out = Vec::new();
        for lab in state
            .storage
            .labs_of_organization(&self.org.id)
            .await
            .api()?
        {
            if let Some(access) = lab_access_of(ctx, p, &lab).await? {
                out.push(LabNode::new(lab, access, state));
            }
        }
        Ok(out)
    }
    /// Labs of other organisations shared with this one, with their quotas.
    async fn shared_labs(&self, ctx: &Context<'_>) -> ApiResult<Vec<LabShareNode>> {
        let p = principal(ctx)?;
        require_member(ctx, p, &self.org.id).await?;
        let shares = state(ctx)?
            .storage
            .shares_with_organization(&self.org.id)
            .await
            .api()?;
        Ok(shares.into_iter().map(LabShareNode::from).collect())
    }
}

/// An invitation's public description.
#[derive(SimpleObject)]
#[graphql(name = "Invitation")]
pub struct InvitationNode {
    /// Identifier.
    pub id: ID,
    /// The organisation.
    pub organization_id: ID,
    /// Invited address.
    pub email: String,
    /// Role granted on acceptance.
    pub role: RoleValue,
    /// Expiry (RFC 3339).
    pub expires_at: String,
}

/// A new invitation: hand `token` to the invitee (shown once).
#[derive(SimpleObject)]
pub struct CreatedInvitation {
    /// The secret the invitee passes to `acceptInvitation`.
    pub token: String,
    /// Its description.
    pub invitation: InvitationNode,
}

/// One audit-log entry.
#[derive(SimpleObject)]
pub struct AuditEntry {
    /// Sequence number.
    pub id: ID,
    /// Who (`user:<id>`, `cli`, ...).
    pub actor: String,
    /// What (`lab.create`, ...).
    pub action: String,
    /// Which object (`lab:<id>`, ...).
    pub target: String,
    /// Detail (JSON text).
    pub detail: String,
    /// From where (client address), if known.
    pub source: Option<String>,
    /// When (RFC 3339).
    pub created_at: String,
}

/// The API answer to a guarded membership change.
fn member_change(change: MemberChange) -> ApiResult<()> {
    match change {
        MemberChange::Done => Ok(()),
        MemberChange::NotMember => Err(fail(ApiError::NotFound)),
        MemberChange::Forbidden => Err(fail(ApiError::Forbidden)),
        MemberChange::LastOwner => Err(fail(ApiError::Conflict(
            "an organisation keeps at least one owner".into(),
        ))),
    }
}

/// Organisation queries.
#[derive(Default)]
pub struct OrgQuery;

#[Object]
impl OrgQuery {
    /// An organisation the caller belongs to; null otherwise.
    async fn organization(&self, ctx: &Context<'_>, id: ID) -> ApiResult<Option<OrganizationNode>> {
        let p = principal(ctx)?;
        let Ok(id) = parse_id(&id) else {
            return Ok(None);
        };
        if super::access::org_role(ctx, p, &id).await?.is_none() {
            return Ok(None);
        }
        let org = state(ctx)?.storage.organization(&id).await.api()?;
        Ok(Some(OrganizationNode::new(org)))
    }

    /// The newest audit entries of an organisation (owners and admins only), newest first.
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        organization_id: ID,
        #[graphql(default = 50)] limit: i32,
    ) -> ApiResult<Vec<AuditEntry>> {
        let p = principal(ctx)?;
        let org_id = parse_id(&organization_id)?;
        require_admin(ctx, p, &org_id).await?;
        let limit = i64::from(limit.clamp(1, 500));
        let rows = state(ctx)?
            .storage
            .audit_of_organization(&org_id, limit)
            .await
            .api()?;
        Ok(rows
            .into_iter()
            .map(|e| AuditEntry {
                id: ID(e.id.to_string()),
                actor: e.actor,
                action: e.action,
                target: e.target,
                detail: e.detail,
                source: e.source,
                created_at: rfc3339_ms(e.created_at),
            })
            .collect())
    }
}

/// Organisation mutations.
#[derive(Default)]
pub struct OrgMutation;

#[Object]
impl OrgMutation {
    /// Creates an organisation with the caller as owner.
    async fn create_organization(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> ApiResult<OrganizationNode> {
        // Token-proved or tenant-creating work: platform scope for row-level security.
        crate::storage::tenant::system(async move {
            let p = writer(ctx)?;
            if matches!(p.credential, crate::auth::Credential::ApiToken { .. }) {
                return Err(fail(ApiError::Forbidden));
            }
            let name = validate_name("name", &name, 100)?;
            let state = state(ctx)?;
            let now = now_ms();
            let org = state.storage.create_organization(&name, now).await.api()?;
            state
                .storage
                .set_membership(&org.id, &p.user_id, Role::Owner, now)
                .await
                .api()?;
            audit(
                ctx,
                &p.actor(),
                Some(&org.id),
                "organization.create",
                format!("organization:{}", org.id),
                json!({ "name": org.name }),
            )
            .await?;
            Ok(OrganizationNode::new(org))
        })
        .await
    }

    /// Invites an address into an organisation with a role (owners and admins; only owners
    /// may invite owners). The token is returned once.
    async fn invite_member(
        &self,
        ctx: &Context<'_>,
        organization_id: ID,
        email: String,
        role: RoleValue,
    ) -> ApiResult<CreatedInvitation> {
        let p = writer(ctx)?;
        let org_id = parse_id(&organization_id)?;
        let my_role = require_admin(ctx, p, &org_id).await?;
        let role: Role = role.into();
        if role == Role::Owner && my_role != Role::Owner {
            return Err(fail(ApiError::Forbidden));
        }
        let email = email.trim().to_lowercase();
        if email.len() > 254 || !email.contains('@') {
            return Err(fail(ApiError::BadInput(
                "not a valid e-mail address".into(),
            )));
        }
        let state = state(ctx)?;
        let now = now_ms();
        let ttl = i64::try_from(state.config.auth.invitation_ttl_secs.saturating_mul(1000))
            .unwrap_or(i64::MAX);
        let secret = token::new_secret();
        let invitation = Invitation {
            id: new_id(),
            organization_id: org_id.clone(),
            email: email.clone(),
            role: role.as_str().to_owned(),
            token_hash: token::hash_secret(&secret),
            created_by: p.actor(),
            created_at: now,
            expires_at: now.saturating_add(ttl),
            accepted_at: None,
        };
        state.storage.create_invitation(&invitation).await.api()?;
        audit(
            ctx,
            &p.actor(),
            Some(&org_id),
            "member.invite",
            format!("invitation:{}", invitation.id),
            json!({ "email": email, "role": role.as_str() }),
        )
        .await?;
        Ok(CreatedInvitation {
            token: token::format_token(token::INVITE_PREFIX, &invitation.id, &secret),
            invitation: InvitationNode {
                id: ID(invitation.id),
                organization_id: ID(org_id.into()),
                email,
                role: role.into(),
                expires_at: rfc3339_ms(invitation.expires_at),
            },
        })
    }

    /// Accepts an invitation addressed to the caller's e-mail; single use. A member keeps a
    /// higher role than the invitation's.
    async fn accept_invitation(
        &self,
        ctx: &Context<'_>,
        token: String,
    ) -> ApiResult<OrganizationNode> {
        // Token-proved or tenant-creating work: platform scope for row-level security.
        crate::storage::tenant::system(async move {
            let p = writer(ctx)?;
            if matches!(p.credential, crate::auth::Credential::ApiToken { .. }) {
                return Err(fail(ApiError::Forbidden));
            }
            let state = state(ctx)?;
            let (id, secret) = token::parse_token(token::INVITE_PREFIX, &token)
                .ok_or_else(|| fail(ApiError::InvalidToken))?;
            let invitation = state
                .storage
                .invitation(id)
                .await
                .api()?
                .filter(|i| token::secret_matches(secret, &i.token_hash))
                .ok_or_else(|| fail(ApiError::InvalidToken))?;
            let user = state
                .storage
                .user(&p.user_id)
                .await
                .api()?
                .ok_or_else(|| fail(ApiError::Unauthenticated))?;
            if user.email != invitation.email {
                return Err(fail(ApiError::InvalidToken));
            }
            let role = Role::parse(&invitation.role).ok_or_else(|| fail(ApiError::Internal))?;
            let now = now_ms();
            if !state
                .storage
                .accept_invitation(&invitation.id, now)
                .await
                .api()?
            {
                return Err(fail(ApiError::InvalidToken));
            }
            // Never lowers an existing role: accepting cannot demote the last owner, and an
            // admin cannot demote an owner by inviting them with a lower role.
            let held = state
                .storage
                .join_organization(&invitation.organization_id, &user.id, role, now)
                .await
                .api()?;
            audit(
                ctx,
                &p.actor(),
                Some(&invitation.organization_id),
                "member.join",
                format!("user:{}", user.id),
                json!({ "role": held.as_str(), "invited_as": role.as_str(), "invitation": invitation.id }),
            )
            .await?;
            let org = state
                .storage
                .organization(&invitation.organization_id)
                .await
                .api()?;
            Ok(OrganizationNode::new(org))
        })
        .await
    }

    /// Changes a member's role (owners and admins; only owners touch owners).
    async fn set_member_role(
        &self,
        ctx: &Context<'_>,
        organization_id: ID,
        user_id: ID,
        role: RoleValue,
    ) -> ApiResult<bool> {
        let p = writer(ctx)?;
        let org_id = parse_id(&organization_id)?;
        let user_id = parse_id(&user_id)?;
        require_admin(ctx, p, &org_id).await?;
        let role: Role = role.into();
        // Checked (the actor's role too) and written in one transaction under the
        // organisation's lock, so concurrent demotions cannot leave it without an owner.
        let change = state(ctx)?
            .storage
            .change_member_role(&org_id, &user_id, role, &p.user_id)
            .await
            .api()?;
        member_change(change)?;
        // The member's open subscriptions were granted under the old role: close them.
        state(ctx)?.auth.announce(Revocation::Membership {
            user_id: user_id.clone(),
        });
        audit(
            ctx,
            &p.actor(),
            Some(&org_id),
            "member.set_role",
            format!("user:{user_id}"),
            json!({ "role": role.as_str() }),
        )
        .await?;
        Ok(true)
    }

    /// Removes a member (owners and admins; only owners remove owners; the last owner stays).
    async fn remove_member(
        &self,
        ctx: &Context<'_>,
        organization_id: ID,
        user_id: ID,
    ) -> ApiResult<bool> {
        let p = writer(ctx)?;
        let org_id = parse_id(&organization_id)?;
        let user_id = parse_id(&user_id)?;
        require_admin(ctx, p, &org_id).await?;
        let change = state(ctx)?
            .storage
            .remove_member(&org_id, &user_id, &p.user_id)
            .await
            .api()?;
        member_change(change)?;
        let done = true;
        // A removed member's open subscriptions close at once.
        state(ctx)?.auth.announce(Revocation::Membership {
            user_id: user_id.clone(),
        });
        audit(
            ctx,
            &p.actor(),
            Some(&org_id),
            "member.remove",
            format!("user:{user_id}"),
            json!({}),
        )
        .await?;
        Ok(done)
    }
}
