//! Labs: creation, sharing with other organisations under a daily quota, one-time agent
//! enrollment tokens, agent-credential revocation (which cuts the live connection), the devices
//! with the methods of the lab's capability descriptor, and live readings (`readings.rs`).

use async_graphql::{Context, Object, SimpleObject, ID};
use serde_json::json;

use maosic_schema::capability::{LabDescriptor, MethodDescriptor};

use super::access::{audit, lab_access_of, lab_with_access, org_role, require_admin, LabAccess};
use super::account::validate_name;
use super::{
    fail, parse_id, principal, rfc3339_ms, state, writer, ApiError, ApiResult, StorageResultExt,
};
use crate::agents::readings::Telemetry;
use crate::agents::{hash_secret, new_secret};
use crate::auth::token;
use crate::state::AppState;
use crate::storage::{self, now_ms, LabId, StorageError};

/// A lab and its agent's presence, as one caller may see it.
pub struct LabNode {
    lab: storage::Lab,
    online: bool,
    access: LabAccess,
}

impl LabNode {
    /// Wraps a lab the caller may see with `access`.
    pub fn new(lab: storage::Lab, access: LabAccess, state: &AppState) -> Self {
        let timeout =
            i64::try_from(state.config.agent.dead_after().as_millis()).unwrap_or(i64::MAX);
        let online = lab.is_online(now_ms(), timeout);
        LabNode {
            lab,
            online,
            access,
        }
    }
}

/// A device the lab's agent announced.
#[derive(SimpleObject)]
pub struct Device {
    /// The device's symbol in recipes (e.g. `H`).
    pub name: String,
    /// Its kind (e.g. `heater`).
    pub kind: String,
    /// Free-text description from the capability descriptor (model, notes).
    pub description: String,
    /// The operations the capability descriptor declares, callable as `<name>.<method>`
    /// (empty until the agent has announced a descriptor).
    pub methods: Vec<DeviceMethod>,
}

/// One operation of a device, from the lab's capability descriptor.
#[derive(SimpleObject)]
pub struct DeviceMethod {
    /// Method name (e.g. `set_temperature`).
    pub name: String,
    /// Free-text description.
    pub description: String,
    /// Its parameters.
    pub params: Vec<MethodParam>,
    /// Measurements a call yields (e.g. `absorption_spectrum`).
    pub measurements: Vec<String>,
    /// Whether it configures the device (run before a stream starts) rather than act on it.
    pub setpoint: bool,
}

/// One parameter of a device method.
#[derive(SimpleObject)]
pub struct MethodParam {
    /// Name as written in formulas and `sendInstruction` params (e.g. `T`).
    pub name: String,
    /// Unit values are given in (e.g. `°C`; empty when dimensionless).
    pub unit: String,
    /// Smallest allowed value.
    pub min: f64,
    /// Largest allowed value.
    pub max: f64,
    /// Step of the device's setting grid, anchored at `min`; null when continuous.
    pub step: Option<f64>,
    /// Whether a call must give it (when it has no default).
    pub required: bool,
    /// Value used when a call omits it.
    pub default: Option<f64>,
}

impl From<&MethodDescriptor> for DeviceMethod {
    fn from(m: &MethodDescriptor) -> Self {
        DeviceMethod {
            name: m.name.clone(),
            description: m.description.clone(),
            params: m
                .params
                .iter()
                .map(|p| MethodParam {
                    name: p.name.clone(),
                    unit: p.unit.clone(),
                    min: p.min,
                    max: p.max,
                    step: p.resolution,
                    required: p.required,
                    default: p.default,
                })
                .collect(),
            measurements: m.yields.clone(),
            setpoint: m.setpoint,
        }
    }
}

/// A lab shared with an organisation.
#[derive(SimpleObject)]
#[graphql(name = "LabShare")]
pub struct LabShareNode {
    /// The lab.
    pub lab_id: ID,
    /// The organisation it is shared with.
    pub organization_id: ID,
    /// Experiments and instructions per day that organisation may queue or send.
    pub daily_quota: i64,
    /// What that organisation may do on the lab.
    pub rights: ShareRights,
    /// Since when (RFC 3339).
    pub created_at: String,
}

/// What an organisation a lab is shared with may do on it.
#[derive(async_graphql::Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum ShareRights {
    /// See the lab, its status and its capability descriptor.
    View,
    /// Also run campaigns and queue experiments on it (within the daily quota).
    Run,
    /// Also send and queue instructions and stop the lab (within the daily quota).
    Instruct,
}

impl ShareRights {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            ShareRights::View => "view",
            ShareRights::Run => "run",
            ShareRights::Instruct => "instruct",
        }
    }

    fn parse(stored: &str) -> Self {
        match stored {
            "instruct" => ShareRights::Instruct,
            "run" => ShareRights::Run,
            _ => ShareRights::View,
        }
    }
}

impl From<storage::LabShare> for LabShareNode {
    fn from(s: storage::LabShare) -> Self {
        LabShareNode {
            lab_id: ID(s.lab_id.into()),
            organization_id: ID(s.organization_id.into()),
            daily_quota: s.daily_quota,
            rights: ShareRights::parse(&s.rights),
            created_at: rfc3339_ms(s.created_at),
        }
    }
}

/// An agent credential's public description.
#[derive(SimpleObject)]
pub struct AgentCredential {
    /// Identifier.
    pub id: ID,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Revocation time, if revoked.
    pub revoked_at: Option<String>,
}

/// A one-time enrollment token (shown once): `maosic-agent enroll --token ...`.
#[derive(SimpleObject)]
pub struct EnrollmentToken {
    /// The lab it enrolls.
    pub lab_id: ID,
    /// The secret token.
    pub token: String,
    /// Expiry (RFC 3339).
    pub expires_at: String,
}

/// The credential an agent receives for an enrollment token.
#[derive(SimpleObject)]
pub struct EnrolledAgent {
    /// The lab.
    pub lab_id: ID,
    /// Credential id (public half).
    pub credential_id: ID,
    /// Credential secret (shown once).
    pub secret: String,
}

#[Object(name = "Lab")]
impl LabNode {
    /// Identifier.
    async fn id(&self) -> ID {
        ID(self.lab.id.to_string())
    }

    /// Name, unique within the organisation.
    async fn name(&self) -> &str {
        &self.lab.name
    }

    /// The owning organisation's id.
    async fn organization_id(&self) -> ID {
        ID(self.lab.organization_id.to_string())
    }

    /// Whether the lab's agent is connected now.
    async fn online(&self) -> bool {
        self.online
    }

    /// Last time the agent was heard from (RFC 3339, UTC).
    async fn last_seen_at(&self) -> Option<String> {
        self.lab.last_seen_at.map(rfc3339_ms)
    }

    /// The agent's software version from its last hello.
    async fn agent_version(&self) -> Option<&str> {
        self.lab.agent_version.as_deref()
    }

    /// Generation of the newest agent connection (increases with each reconnect).
    async fn connection_generation(&self) -> i64 {
        self.lab.connection_generation
    }

    /// The devices the agent announced in its last hello, with the methods its capability
    /// descriptor declares.
    async fn devices(&self) -> Vec<Device> {
        let parsed: Vec<maosic_schema::protocol::DeviceSummary> =
            serde_json::from_str(&self.lab.devices).unwrap_or_default();
        let descriptor = self
            .lab
            .descriptor
            .as_deref()
            .and_then(|d| LabDescriptor::from_json_str(d).ok());
        parsed
            .into_iter()
            .map(|d| {
                let declared = descriptor.as_ref().and_then(|x| x.device(&d.name));
                Device {
                    description: declared.map(|x| x.description.clone()).unwrap_or_default(),
                    methods: declared
                        .map(|x| x.methods.iter().map(DeviceMethod::from).collect())
                        .unwrap_or_default(),
                    name: d.name,
                    kind: d.kind,
                }
            })
            .collect()
    }

    /// Live readings: each heater's temperature and each pump's state and flow, read from the
    /// agent (cached about a second per lab); a heater that cannot be read live shows the
    /// latest stored temperature measurement. Never an error for an offline lab: see `state`.
    /// Members of the lab's own organisation only; others who may see it (a shared lab) get
    /// `RESTRICTED`.
    async fn telemetry(&self, ctx: &Context<'_>) -> ApiResult<Telemetry> {
        let p = principal(ctx)?;
        // Access first, then the cache: the cached value is the lab's, shared by its readers.
        if org_role(ctx, p, &self.lab.organization_id).await?.is_none() {
            return Ok(Telemetry::restricted());
        }
        let st = state(ctx)?;
        let readings = st.telemetry.get(&st.gateway, &st.storage, &self.lab).await;
        Ok(readings.as_ref().clone())
    }

    /// Whether the caller may queue experiments here.
    async fn can_queue(&self) -> bool {
        self.access >= LabAccess::Queue
    }

    /// Whether the caller may send instructions to this lab's hardware and stop it.
    async fn can_instruct(&self) -> bool {
        self.access >= LabAccess::Instruct
    }

    /// Whether the caller manages this lab (agents, enrollment, sharing).
    async fn can_manage(&self) -> bool {
        self.access >= LabAccess::Manage
    }

    /// Organisations this lab is shared with (visible to its managers only).
    async fn shares(&self, ctx: &Context<'_>) -> ApiResult<Vec<LabShareNode>> {
        if self.access < LabAccess::Manage {
            return Ok(Vec::new());
        }
        let shares = state(ctx)?
            .storage
            .shares_of_lab(&self.lab.id)
            .await
            .api()?;
        Ok(shares.into_iter().map(LabShareNode::from).collect())
    }

    /// The lab's agent credentials (visible to its managers only).
    async fn agent_credentials(&self, ctx: &Context<'_>) -> ApiResult<Vec<AgentCredential>> {
        if self.access < LabAccess::Manage {
            return Ok(Vec::new());
        }
        let creds = state(ctx)?
            .storage
            .agent_credentials_of_lab(&self.lab.id)
            .await
            .api()?;
        Ok(creds
            .into_iter()
            .map(|c| AgentCredential {
                id: ID(c.id),
                created_at: rfc3339_ms(c.created_at),
                revoked_at: c.revoked_at.map(rfc3339_ms),
            })
            .collect())
    }
}

/// Lab queries.
#[derive(Default)]
pub struct LabQuery;

#[Object]
impl LabQuery {
    /// One lab by id; null when it does not exist or the caller may not see it.
    async fn lab(&self, ctx: &Context<'_>, id: ID) -> ApiResult<Option<LabNode>> {
        let p = principal(ctx)?;
        let state = state(ctx)?;
        let Ok(id) = parse_id(&id) else {
            return Ok(None);
        };
        let lab = match state.storage.lab(&id).await {
            Ok(lab) => lab,
            Err(StorageError::NotFound) => return Ok(None),
            Err(e) => return Err(ApiError::from(e).extend_err()),
        };
        Ok(lab_access_of(ctx, p, &lab)
            .await?
            .map(|access| LabNode::new(lab, access, state)))
    }

    /// Every lab the caller may see: its organisations' own and those shared with them.
    async fn labs(&self, ctx: &Context<'_>) -> ApiResult<Vec<LabNode>> {
        let p = principal(ctx)?;
        let state = state(ctx)?;
        let mut ids: Vec<LabId> = Vec::new();
        for m in state.storage.memberships_of_user(&p.user_id).await.api()? {
            if p.effective_role(&m.organization_id, Some(m.role)).is_none() {
                continue;
            }
            for lab in state
                .storage
                .labs_of_organization(&m.organization_id)
                .await
                .api()?
            {
                ids.push(lab.id);
            }
            for share in state
                .storage
                .shares_with_organization(&m.organization_id)
                .await
                .api()?
            {
                ids.push(share.lab_id);
            }
        }
        ids.sort();
        ids.dedup();
        let mut out = Vec::new();
        for id in ids {
            let lab = state.storage.lab(&id).await.api()?;
            if let Some(access) = lab_access_of(ctx, p, &lab).await? {
                out.push(LabNode::new(lab, access, state));
            }
        }
        Ok(out)
    }
}

trait ExtendErr {
    fn extend_err(self) -> async_graphql::Error;
}

impl ExtendErr for ApiError {
    fn extend_err(self) -> async_graphql::Error {
        fail(self)
    }
}

/// Lab mutations.
#[derive(Default)]
pub struct LabMutation;

#[Object]
impl LabMutation {
    /// Creates a lab in an organisation (owners and admins).
    async fn create_lab(
        &self,
        ctx: &Context<'_>,
        organization_id: ID,
        name: String,
    ) -> ApiResult<LabNode> {
        let p = writer(ctx)?;
        let org_id = parse_id(&organization_id)?;
        require_admin(ctx, p, &org_id).await?;
        let name = validate_name("name", &name, 100)?;
        let state = state(ctx)?;
        let lab = match state.storage.create_lab(&org_id, &name, now_ms()).await {
            Ok(lab) => lab,
            Err(StorageError::Conflict(_)) => {
                return Err(fail(ApiError::Conflict(
                    "a lab with this name already exists in the organisation".into(),
                )))
            }
            Err(e) => return Err(ApiError::from(e).extend_err()),
        };
        audit(
            ctx,
            &p.actor(),
            Some(&org_id),
            "lab.create",
            format!("lab:{}", lab.id),
            json!({ "name": lab.name }),
        )
        .await?;
        Ok(LabNode::new(lab, LabAccess::Manage, state))
    }

    /// Shares a lab with another organisation with a daily experiment quota (or changes the
    /// quota). Managers of the lab only.
    async fn share_lab(
        &self,
        ctx: &Context<'_>,
        lab_id: ID,
        organization_id: ID,
        daily_quota: i32,
        #[graphql(default_with = "ShareRights::Run")] rights: ShareRights,
    ) -> ApiResult<LabShareNode> {
        let p = writer(ctx)?;
        let (lab, _) = lab_with_access(ctx, p, &lab_id, LabAccess::Manage).await?;
        let org_id = parse_id(&organization_id)?;
        if org_id == lab.organization_id {
            return Err(fail(ApiError::BadInput(
                "a lab is not shared with its own organisation".into(),
            )));
        }
        if !(0..=100_000).contains(&daily_quota) {
            return Err(fail(ApiError::BadInput(
                "dailyQuota must be between 0 and 100000".into(),
            )));
        }
        let state = state(ctx)?;
        let share = match state
            .storage
            .share_lab(
                &lab.id,
                &org_id,
                i64::from(daily_quota),
                rights.as_str(),
                now_ms(),
            )
            .await
        {
            Ok(s) => s,
            Err(StorageError::Conflict(_)) => return Err(fail(ApiError::NotFound)),
            Err(e) => return Err(ApiError::from(e).extend_err()),
        };
        audit(
            ctx,
            &p.actor(),
            Some(&lab.organization_id),
            "lab.share",
            format!("lab:{}", lab.id),
            json!({ "organization_id": org_id, "daily_quota": daily_quota, "rights": rights.as_str() }),
        )
        .await?;
        Ok(share.into())
    }

    /// Ends a share. Managers of the lab only.
    async fn unshare_lab(
        &self,
        ctx: &Context<'_>,
        lab_id: ID,
        organization_id: ID,
    ) -> ApiResult<bool> {
        let p = writer(ctx)?;
        let (lab, _) = lab_with_access(ctx, p, &lab_id, LabAccess::Manage).await?;
        let org_id = parse_id(&organization_id)?;
        let st = state(ctx)?;
        let done = st.storage.unshare_lab(&lab.id, &org_id).await.api()?;
        if done {
            // The former partner's open sockets were granted the lab: they close, and what a
            // reconnect is granted is worked out again (the partner's members, as platform
            // work: the owner cannot read another organisation's members).
            let members =
                crate::storage::tenant::system(st.storage.memberships_of_organization(&org_id))
                    .await
                    .api()?;
            for m in members {
                st.auth
                    .announce(crate::auth::Revocation::Membership { user_id: m.user_id });
            }
        }
        audit(
            ctx,
            &p.actor(),
            Some(&lab.organization_id),
            "lab.unshare",
            format!("lab:{}", lab.id),
            json!({ "organization_id": org_id }),
        )
        .await?;
        Ok(done)
    }

    /// Creates a one-time enrollment token for the lab's agent (managers only); the agent
    /// exchanges it with `maosic-agent enroll` for its own credential.
    async fn create_enrollment_token(
        &self,
        ctx: &Context<'_>,
        lab_id: ID,
    ) -> ApiResult<EnrollmentToken> {
        let p = writer(ctx)?;
        let (lab, _) = lab_with_access(ctx, p, &lab_id, LabAccess::Manage).await?;
        let state = state(ctx)?;
        let now = now_ms();
        let ttl = i64::try_from(state.config.auth.enrollment_ttl_secs.saturating_mul(1000))
            .unwrap_or(i64::MAX);
        let secret = token::new_secret();
        let stored = state
            .storage
            .create_enrollment_token(
                &lab.id,
                &token::hash_secret(&secret),
                now.saturating_add(ttl),
                now,
            )
            .await
            .api()?;
        audit(
            ctx,
            &p.actor(),
            Some(&lab.organization_id),
            "lab.enrollment_token.create",
            format!("lab:{}", lab.id),
            json!({ "enrollment_token": stored.id }),
        )
        .await?;
        Ok(EnrollmentToken {
            lab_id: ID(lab.id.into()),
            token: token::format_token(token::ENROLL_PREFIX, &stored.id, &secret),
            expires_at: rfc3339_ms(stored.expires_at),
        })
    }

    /// Exchanges a one-time enrollment token for a new agent credential (no login needed:
    /// the token is the proof). A second use is refused.
    async fn enroll_agent(&self, ctx: &Context<'_>, token: String) -> ApiResult<EnrolledAgent> {
        // Token-proved or tenant-creating work: platform scope for row-level security.
        crate::storage::tenant::system(async move {
            let state = state(ctx)?;
            let (id, secret) = token::parse_token(token::ENROLL_PREFIX, &token)
                .ok_or_else(|| fail(ApiError::InvalidToken))?;
            let stored = state
                .storage
                .enrollment_token(id)
                .await
                .api()?
                .filter(|t| token::secret_matches(secret, &t.token_hash))
                .ok_or_else(|| fail(ApiError::InvalidToken))?;
            let now = now_ms();
            if !state
                .storage
                .use_enrollment_token(&stored.id, now)
                .await
                .api()?
            {
                return Err(fail(ApiError::InvalidToken));
            }
            let lab = state.storage.lab(&stored.lab_id).await.api()?;
            let credential_secret = new_secret();
            let credential = state
                .storage
                .create_agent_credential(&lab.id, &hash_secret(&credential_secret), now)
                .await
                .api()?;
            audit(
                ctx,
                &format!("enrollment:{}", stored.id),
                Some(&lab.organization_id),
                "agent.enroll",
                format!("lab:{}", lab.id),
                json!({ "credential_id": credential.id }),
            )
            .await?;
            Ok(EnrolledAgent {
                lab_id: ID(lab.id.into()),
                credential_id: ID(credential.id),
                secret: credential_secret,
            })
        })
        .await
    }

    /// Revokes an agent credential of a lab (managers only): the live connection is cut and
    /// reconnects with it are refused.
    async fn revoke_agent_credential(
        &self,
        ctx: &Context<'_>,
        lab_id: ID,
        credential_id: ID,
    ) -> ApiResult<bool> {
        let p = writer(ctx)?;
        let (lab, _) = lab_with_access(ctx, p, &lab_id, LabAccess::Manage).await?;
        let credential_id: String = parse_id(&credential_id)?;
        let state = state(ctx)?;
        let credential = state
            .storage
            .agent_credential(&credential_id)
            .await
            .api()?
            .filter(|c| c.lab_id == lab.id)
            .ok_or_else(|| fail(ApiError::NotFound))?;
        let revoked = state
            .storage
            .revoke_agent_credential(&credential.id, now_ms())
            .await
            .api()?;
        // The gateway keys live connections by lab; the lab has one agent at a time. Another
        // replica holding it cuts it when the revocation reaches it.
        let cut = state.gateway.cut(&lab.id, "agent credential revoked");
        state
            .auth
            .announce(crate::auth::Revocation::AgentCredential {
                lab_id: lab.id.clone(),
            });
        audit(
            ctx,
            &p.actor(),
            Some(&lab.organization_id),
            "agent.credential.revoke",
            format!("lab:{}", lab.id),
            json!({ "credential_id": credential.id, "connection_cut": cut }),
        )
        .await?;
        Ok(revoked)
    }
}
