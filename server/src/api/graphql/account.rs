//! Accounts: sign-up with e-mail verification (the same answer for new and registered
//! addresses), log-in (throttled in the database before hashing, same answer and cost for
//! unknown accounts and wrong passwords), refresh-token rotation with reuse detection, log-out,
//! password change (throttled like log-in), and named API tokens (shown once).
//!
//! There are no unverified accounts: `signUp` stores a *request* and mails a token; only
//! `verifyEmail(token)` creates the user, their organisation and the owner membership (one
//! transaction) and logs in. Until then a log-in for the address answers
//! `INVALID_CREDENTIALS`, as for any unknown account, and nobody can squat an address they
//! cannot read. A sign-up for a registered address mails its owner a notice instead.

use async_graphql::{Context, Enum, Object, SimpleObject, ID};
use serde_json::json;

use super::access::{audit, require_member};
use super::orgs::OrganizationNode;
use super::{
    fail, parse_id, principal, request_info, rfc3339_ms, state, writer, ApiError, ApiResult,
    StorageResultExt,
};
use crate::auth::{self, token, Credential, HashBudget, RefreshOutcome, Scope};
use crate::storage::{new_id, now_ms, Role, SignupRequest, StorageError, User};

/// A role in an organisation.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(name = "Role")]
pub enum RoleValue {
    /// Full control.
    Owner,
    /// Manages members, labs and campaigns.
    Admin,
    /// Creates and runs campaigns.
    Researcher,
    /// Reads only.
    Viewer,
}

impl From<Role> for RoleValue {
    fn from(r: Role) -> Self {
        match r {
            Role::Owner => RoleValue::Owner,
            Role::Admin => RoleValue::Admin,
            Role::Researcher => RoleValue::Researcher,
            Role::Viewer => RoleValue::Viewer,
        }
    }
}

impl From<RoleValue> for Role {
    fn from(r: RoleValue) -> Self {
        match r {
            RoleValue::Owner => Role::Owner,
            RoleValue::Admin => Role::Admin,
            RoleValue::Researcher => Role::Researcher,
            RoleValue::Viewer => Role::Viewer,
        }
    }
}

/// What an API token may do.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum TokenScope {
    /// Queries only.
    Read,
    /// Queries and mutations, within the user's role.
    Write,
}

/// Tokens returned by sign-up, log-in and refresh.
#[derive(SimpleObject)]
pub struct AuthPayload {
    /// Short-lived JWT access token (send as `Authorization: Bearer ...`).
    pub access_token: String,
    /// Single-use refresh token; exchange it with `refreshTokens` for a new pair. Null when the
    /// request asked for a cookie session (header `X-Session-Cookie: 1`, browsers): the token
    /// is then set as an httpOnly cookie for `POST /auth/refresh` instead.
    pub refresh_token: Option<String>,
    /// Access-token lifetime in seconds.
    pub expires_in: u64,
    /// The account.
    pub user: UserNode,
}

/// A user account as its owner sees it.
pub struct UserNode {
    user: User,
    /// The credential it was reached with (`None` right after log-in: a full session).
    via: Option<crate::auth::Principal>,
}

#[Object(name = "User")]
impl UserNode {
    /// Identifier.
    async fn id(&self) -> ID {
        ID(self.user.id.to_string())
    }
    /// E-mail address.
    async fn email(&self) -> &str {
        &self.user.email
    }
    /// Display name.
    async fn display_name(&self) -> &str {
        &self.user.display_name
    }
    /// The organisations the user belongs to, with roles (as far as the credential reaches).
    async fn memberships(&self, ctx: &Context<'_>) -> ApiResult<Vec<MembershipNode>> {
        let state = state(ctx)?;
        let mut out = Vec::new();
        // The node is only ever handed to its own user (after log-in the request has no
        // principal yet): read the user's own memberships in platform scope.
        let (memberships, orgs) = crate::storage::tenant::system(async {
            let memberships = state.storage.memberships_of_user(&self.user.id).await?;
            let mut orgs = Vec::new();
            for m in &memberships {
                orgs.push(state.storage.organization(&m.organization_id).await?);
            }
            Ok::<_, crate::storage::StorageError>((memberships, orgs))
        })
        .await
        .api()?;
        for (m, org) in memberships.into_iter().zip(orgs) {
            let role = match &self.via {
                Some(p) => p.effective_role(&m.organization_id, Some(m.role)),
                None => Some(m.role),
            };
            if let Some(role) = role {
                out.push(MembershipNode {
                    organization: OrganizationNode::new(org),
                    role: role.into(),
                });
            }
        }
        Ok(out)
    }
}

/// A membership of the calling user.
#[derive(SimpleObject)]
#[graphql(name = "Membership")]
pub struct MembershipNode {
    /// The organisation.
    pub organization: OrganizationNode,
    /// The role held there.
    pub role: RoleValue,
}

/// An API token's public description (the secret is shown only at creation).
#[derive(SimpleObject)]
#[graphql(name = "ApiToken")]
pub struct ApiTokenNode {
    /// Identifier.
    pub id: ID,
    /// Name given at creation.
    pub name: String,
    /// The organisation it acts in.
    pub organization_id: ID,
    /// What it may do.
    pub scope: TokenScope,
    /// Creation time (RFC 3339).
    pub created_at: String,
    /// Revocation time, if revoked.
    pub revoked_at: Option<String>,
}

impl From<crate::storage::ApiToken> for ApiTokenNode {
    fn from(t: crate::storage::ApiToken) -> Self {
        ApiTokenNode {
            id: ID(t.id),
            name: t.name,
            organization_id: ID(t.organization_id.into()),
            scope: if t.scope == "write" {
                TokenScope::Write
            } else {
                TokenScope::Read
            },
            created_at: rfc3339_ms(t.created_at),
            revoked_at: t.revoked_at.map(rfc3339_ms),
        }
    }
}

/// A new API token: the secret is in `token` and is never shown again.
#[derive(SimpleObject)]
pub struct CreatedApiToken {
    /// The bearer secret (`mat_...`).
    pub token: String,
    /// Its description.
    pub api_token: ApiTokenNode,
}

fn validate_email(email: &str) -> ApiResult<String> {
    let email = email.trim().to_lowercase();
    let ok = email.len() <= 254
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
        && !email.chars().any(char::is_whitespace);
    if ok {
        Ok(email)
    } else {
        Err(fail(ApiError::BadInput(
            "not a valid e-mail address".into(),
        )))
    }
}

fn validate_password(ctx: &Context<'_>, password: &str) -> ApiResult<()> {
    let min = state(ctx)?.config.auth.min_password_len;
    let chars = password.chars().count();
    if chars < min || password.len() > 1024 {
        return Err(fail(ApiError::BadInput(format!(
            "the password must have {min} to 1024 characters"
        ))));
    }
    Ok(())
}

/// A non-empty name of at most `max` characters.
pub fn validate_name(what: &str, name: &str, max: usize) -> ApiResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > max || name.chars().any(char::is_control) {
        return Err(fail(ApiError::BadInput(format!(
            "{what} must have 1 to {max} printable characters"
        ))));
    }
    Ok(name.to_owned())
}

async fn start_session(ctx: &Context<'_>, user: User) -> ApiResult<AuthPayload> {
    let state = state(ctx)?;
    let session = state
        .storage
        .create_session(&user.id, now_ms())
        .await
        .api()?;
    let pair = auth::issue_tokens(&state.auth, state.storage.as_ref(), &user.id, &session.id)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot issue tokens");
            fail(ApiError::Internal)
        })?;
    Ok(AuthPayload {
        access_token: pair.access_token,
        refresh_token: deliver_refresh_token(ctx, pair.refresh_token),
        expires_in: pair.expires_in,
        user: UserNode { user, via: None },
    })
}

/// Hands a new refresh token to the client: in the body, or — for a cookie session — as an
/// httpOnly cookie scoped to `/auth` (with its CSRF companion), leaving the body's field null.
fn deliver_refresh_token(ctx: &Context<'_>, refresh_token: String) -> Option<String> {
    if !request_info(ctx).cookie_session {
        return Some(refresh_token);
    }
    let Ok(state) = state(ctx) else {
        return None;
    };
    for cookie in crate::auth::session_cookie::set_cookies(&state.config, &refresh_token) {
        ctx.append_http_header("set-cookie", cookie);
    }
    None
}

/// Account queries.
#[derive(Default)]
pub struct AccountQuery;

#[Object]
impl AccountQuery {
    /// The calling user.
    async fn me(&self, ctx: &Context<'_>) -> ApiResult<UserNode> {
        let p = principal(ctx)?;
        let user = state(ctx)?
            .storage
            .user(&p.user_id)
            .await
            .api()?
            .ok_or_else(|| fail(ApiError::Unauthenticated))?;
        Ok(UserNode {
            user,
            via: Some(p.clone()),
        })
    }

    /// The calling user's API tokens (descriptions only).
    async fn api_tokens(&self, ctx: &Context<'_>) -> ApiResult<Vec<ApiTokenNode>> {
        let p = principal(ctx)?;
        let tokens = state(ctx)?
            .storage
            .api_tokens_of_user(&p.user_id)
            .await
            .api()?;
        Ok(tokens.into_iter().map(ApiTokenNode::from).collect())
    }
}

/// Account mutations.
#[derive(Default)]
pub struct AccountMutation;

#[Object]
impl AccountMutation {
    /// Starts a sign-up: a verification token is mailed to `email` (or, when the address
    /// already has an account, a notice). The answer is `true` either way, so it tells nothing
    /// about which addresses are registered. Sign-ups are limited per e-mail address and per
    /// client address (`RATE_LIMITED`). `verifyEmail` completes it.
    async fn sign_up(
        &self,
        ctx: &Context<'_>,
        email: String,
        password: String,
        display_name: String,
        organization_name: Option<String>,
    ) -> ApiResult<bool> {
        // Token-proved or tenant-creating work: platform scope for row-level security.
        crate::storage::tenant::system(async move {
            let state = state(ctx)?;
            let email = validate_email(&email)?;
            validate_password(ctx, &password)?;
            let display_name = validate_name("displayName", &display_name, 100)?;
            let org_name = match organization_name {
                Some(n) => validate_name("organizationName", &n, 100)?,
                None => format!("{display_name}'s organisation"),
            };
            let address = request_info(ctx)
                .source
                .clone()
                .unwrap_or_else(|| "unknown".into());
            if !state
                .auth
                .limiter
                .reserve_signup(state.storage.as_ref(), &email, &address)
                .await
                .api()?
            {
                return Err(fail(ApiError::RateLimited));
            }
            // Both branches hash (in the sign-up budget) and write one row and one mail, so
            // they cost the same.
            let hash = state
                .auth
                .hash_password(&password, HashBudget::SignUp)
                .await
                .ok_or_else(|| fail(ApiError::Internal))?;
            let now = now_ms();
            if state.storage.user_by_email(&email).await.api()?.is_some() {
                state
                    .storage
                    .enqueue_mail(&crate::auth::mail::already_registered_mail(&email), now)
                    .await
                    .api()?;
            } else {
                let ttl_secs = state.config.mail.verification_ttl_secs.max(60);
                let secret = token::new_secret();
                let request = SignupRequest {
                    id: new_id(),
                    email: email.clone(),
                    display_name,
                    organization_name: org_name,
                    password_hash: hash,
                    token_hash: token::hash_secret(&secret),
                    created_at: now,
                    expires_at: now.saturating_add(
                        i64::try_from(ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
                    ),
                    used_at: None,
                };
                let token = token::format_token(token::VERIFY_PREFIX, &request.id, &secret);
                state
                    .storage
                    .create_signup_request(
                        &request,
                        &crate::auth::mail::verification_mail(&email, &token, ttl_secs),
                    )
                    .await
                    .api()?;
            }
            state.mail_wake.wake();
            Ok(true)
        })
        .await
    }

    /// Completes a sign-up with the token mailed by `signUp`: creates the account and its own
    /// organisation (the user is its owner) and logs in. Single use; `INVALID_TOKEN` when
    /// unknown, used or expired (or when the address got an account meanwhile).
    async fn verify_email(&self, ctx: &Context<'_>, token: String) -> ApiResult<AuthPayload> {
        // Token-proved, tenant-creating work: platform scope for row-level security.
        crate::storage::tenant::system(async move {
            let state = state(ctx)?;
            let (id, secret) = token::parse_token(token::VERIFY_PREFIX, &token)
                .ok_or_else(|| fail(ApiError::InvalidToken))?;
            state
                .storage
                .signup_request(id)
                .await
                .api()?
                .filter(|r| token::secret_matches(secret, &r.token_hash))
                .ok_or_else(|| fail(ApiError::InvalidToken))?;
            let (user, org) = match state.storage.complete_signup(id, now_ms()).await {
                Ok(Some(done)) => done,
                Ok(None) | Err(StorageError::Conflict(_)) => {
                    return Err(fail(ApiError::InvalidToken))
                }
                Err(e) => return Err(ApiError::from(e).into_gql()),
            };
            audit(
                ctx,
                &format!("user:{}", user.id),
                Some(&org.id),
                "organization.create",
                format!("organization:{}", org.id),
                json!({ "name": org.name, "via": "signUp" }),
            )
            .await?;
            start_session(ctx, user).await
        })
        .await
    }

    /// Logs in. Unknown accounts and wrong passwords get the same answer in the same time;
    /// more attempts than the limits per account or per address within the window are refused
    /// with `RATE_LIMITED` (counted before hashing, shared by all replicas; a success clears
    /// the account's count).
    async fn log_in(
        &self,
        ctx: &Context<'_>,
        email: String,
        password: String,
    ) -> ApiResult<AuthPayload> {
        // Password- or token-proved work: platform scope for row-level security.
        crate::storage::tenant::system(async move {
            let state = state(ctx)?;
            let address = request_info(ctx)
                .source
                .clone()
                .unwrap_or_else(|| "unknown".into());
            let email = email.trim().to_lowercase();
            if email.len() > 254 || password.len() > 1024 {
                return Err(fail(ApiError::InvalidCredentials));
            }
            // Reserve the attempt before hashing: concurrent guesses cannot overtake the count.
            if !state
                .auth
                .limiter
                .reserve_login(state.storage.as_ref(), &email, &address)
                .await
                .api()?
            {
                return Err(fail(ApiError::RateLimited));
            }
            let user = state.storage.user_by_email(&email).await.api()?;
            let stored = user.as_ref().and_then(|u| u.password_hash.as_deref());
            let ok = state.auth.verify_password(&password, stored).await;
            match (ok, user) {
                (true, Some(user)) => {
                    state
                        .auth
                        .limiter
                        .login_succeeded(state.storage.as_ref(), &email, &address)
                        .await
                        .api()?;
                    start_session(ctx, user).await
                }
                _ => Err(fail(ApiError::InvalidCredentials)),
            }
        })
        .await
    }

    /// Exchanges a refresh token for a new pair. Each refresh token works once; presenting a
    /// used one revokes the whole session (`REFRESH_TOKEN_REUSED`).
    async fn refresh_tokens(
        &self,
        ctx: &Context<'_>,
        refresh_token: String,
    ) -> ApiResult<AuthPayload> {
        // Password- or token-proved work: platform scope for row-level security.
        crate::storage::tenant::system(async move {
            let state = state(ctx)?;
            let outcome = auth::refresh(&state.auth, state.storage.as_ref(), &refresh_token)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "refresh failed");
                    fail(ApiError::Internal)
                })?;
            match outcome {
                RefreshOutcome::Rotated(pair) => {
                    let claims = state
                        .auth
                        .jwt
                        .verify(&pair.access_token)
                        .map_err(|_| fail(ApiError::Internal))?;
                    let user = state
                        .storage
                        .user(&claims.sub.clone().into())
                        .await
                        .api()?
                        .ok_or_else(|| fail(ApiError::InvalidToken))?;
                    Ok(AuthPayload {
                        access_token: pair.access_token,
                        refresh_token: deliver_refresh_token(ctx, pair.refresh_token),
                        expires_in: pair.expires_in,
                        user: UserNode { user, via: None },
                    })
                }
                RefreshOutcome::Invalid => Err(fail(ApiError::InvalidToken)),
                RefreshOutcome::ReuseDetected {
                    session_id,
                    user_id,
                } => {
                    tracing::warn!(session.id = %session_id, user.id = %user_id, "refresh token reuse: session revoked");
                    state.auth.announce(auth::Revocation::Session {
                        session_id: session_id.clone(),
                    });
                    audit(
                        ctx,
                        &format!("user:{user_id}"),
                        None,
                        "session.revoke_on_reuse",
                        format!("session:{session_id}"),
                        json!({}),
                    )
                    .await?;
                    Err(fail(ApiError::RefreshReused))
                }
            }
        })
        .await
    }

    /// Ends the current session (its access and refresh tokens stop working).
    async fn log_out(&self, ctx: &Context<'_>) -> ApiResult<bool> {
        let p = principal(ctx)?;
        match &p.credential {
            Credential::Session { session_id } => {
                let state = state(ctx)?;
                let done = state
                    .storage
                    .revoke_session(session_id, now_ms())
                    .await
                    .api()?;
                state.auth.announce(auth::Revocation::Session {
                    session_id: session_id.clone(),
                });
                if request_info(ctx).cookie_session {
                    for cookie in crate::auth::session_cookie::clear_cookies(&state.config) {
                        ctx.append_http_header("set-cookie", cookie);
                    }
                }
                Ok(done)
            }
            Credential::ApiToken { .. } => Err(fail(ApiError::Forbidden)),
        }
    }

    /// Changes the password; every other session of the user is revoked. Wrong current
    /// passwords count against the account's log-in limit (`RATE_LIMITED` beyond it).
    async fn change_password(
        &self,
        ctx: &Context<'_>,
        current_password: String,
        new_password: String,
    ) -> ApiResult<bool> {
        let p = principal(ctx)?;
        let Credential::Session { session_id } = &p.credential else {
            return Err(fail(ApiError::Forbidden));
        };
        let state = state(ctx)?;
        validate_password(ctx, &new_password)?;
        let user = state
            .storage
            .user(&p.user_id)
            .await
            .api()?
            .ok_or_else(|| fail(ApiError::Unauthenticated))?;
        // Throttled like log-in: a stolen access token must not become a password oracle.
        if !state
            .auth
            .limiter
            .reserve_password_check(state.storage.as_ref(), &user.id)
            .await
            .api()?
        {
            return Err(fail(ApiError::RateLimited));
        }
        if !state
            .auth
            .verify_password(&current_password, user.password_hash.as_deref())
            .await
        {
            return Err(fail(ApiError::InvalidCredentials));
        }
        state
            .auth
            .limiter
            .password_check_succeeded(state.storage.as_ref(), &user.id)
            .await
            .api()?;
        let hash = state
            .auth
            .hash_password(&new_password, HashBudget::Login)
            .await
            .ok_or_else(|| fail(ApiError::Internal))?;
        state
            .storage
            .set_password_hash(&user.id, &hash)
            .await
            .api()?;
        let revoked = state
            .storage
            .revoke_sessions_of_user(&user.id, Some(session_id), now_ms())
            .await
            .api()?;
        state.auth.announce(auth::Revocation::UserSessions {
            user_id: user.id.clone(),
            except_session: Some(session_id.clone()),
        });
        audit(
            ctx,
            &p.actor(),
            None,
            "user.change_password",
            format!("user:{}", user.id),
            json!({ "sessions_revoked": revoked }),
        )
        .await?;
        Ok(true)
    }

    /// Creates a named API token acting in one organisation; the secret is returned once.
    async fn create_api_token(
        &self,
        ctx: &Context<'_>,
        organization_id: ID,
        name: String,
        scope: TokenScope,
    ) -> ApiResult<CreatedApiToken> {
        let p = writer(ctx)?;
        if matches!(p.credential, Credential::ApiToken { .. }) {
            return Err(fail(ApiError::Forbidden));
        }
        let org_id = parse_id(&organization_id)?;
        require_member(ctx, p, &org_id).await?;
        let name = validate_name("name", &name, 100)?;
        let scope = match scope {
            TokenScope::Read => Scope::Read,
            TokenScope::Write => Scope::Write,
        };
        let secret = token::new_secret();
        let stored = state(ctx)?
            .storage
            .create_api_token(
                &p.user_id,
                &org_id,
                &name,
                scope.as_str(),
                &token::hash_secret(&secret),
                now_ms(),
            )
            .await
            .api()?;
        audit(
            ctx,
            &p.actor(),
            Some(&org_id),
            "api_token.create",
            format!("api_token:{}", stored.id),
            json!({ "name": name, "scope": scope.as_str() }),
        )
        .await?;
        Ok(CreatedApiToken {
            token: token::format_token(token::API_TOKEN_PREFIX, &stored.id, &secret),
            api_token: stored.into(),
        })
    }

    /// Revokes one of the caller's API tokens.
    async fn revoke_api_token(&self, ctx: &Context<'_>, id: ID) -> ApiResult<bool> {
        let p = writer(ctx)?;
        let id: String = parse_id(&id)?;
        let state = state(ctx)?;
        let Some(t) = state.storage.api_token(&id).await.api()? else {
            return Err(fail(ApiError::NotFound));
        };
        if t.user_id != p.user_id {
            return Err(fail(ApiError::NotFound));
        }
        let done = state
            .storage
            .revoke_api_token(&id, &p.user_id, now_ms())
            .await
            .api()?;
        state.auth.announce(auth::Revocation::ApiToken {
            token_id: id.clone(),
        });
        audit(
            ctx,
            &p.actor(),
            Some(&t.organization_id),
            "api_token.revoke",
            format!("api_token:{id}"),
            json!({}),
        )
        .await?;
        Ok(done)
    }
}

trait IntoGql {
    fn into_gql(self) -> async_graphql::Error;
}

impl IntoGql for ApiError {
    fn into_gql(self) -> async_graphql::Error {
        fail(self)
    }
}
