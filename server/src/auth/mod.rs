//! Authentication: who is calling. Passwords (argon2id), access tokens (JWT, HS256 pinned),
//! rotating refresh tokens in families (sessions), API tokens, and login throttling. The
//! tenant is never taken from the request: it follows from the verified principal's
//! memberships (and, for an API token, its one organisation). Also here: the refresh-token
//! cookie and the account mail (verification links) that sign-up sends.

pub mod jwt;
pub mod limiter;
pub mod mail;
pub mod password;
pub mod session_cookie;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, Semaphore};

use crate::config::AuthConfig;
use crate::storage::{LabId, OrganizationId, Role, SessionId, Storage, StorageError, UserId};

pub use jwt::JwtKeys;
pub use limiter::{LimiterSettings, LoginLimiter};
pub use password::PasswordHasherConfig;

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Queries only.
    Read,
    /// Queries and mutations (within the user's role).
    Write,
}

impl Scope {
    /// Stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
        }
    }

    /// Parses stored text.
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "write" => Some(Scope::Write),
            _ => None,
        }
    }
}

/// How the caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A JWT access token of a login session.
    Session {
        /// The session (refresh-token family).
        session_id: SessionId,
    },
    /// An API token bound to one organisation.
    ApiToken {
        /// The token's id.
        token_id: String,
        /// The only organisation it may act in.
        organization_id: OrganizationId,
        /// What it may do.
        scope: Scope,
    },
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user.
    pub user_id: UserId,
    /// How they authenticated.
    pub credential: Credential,
}

impl Principal {
    /// `user:<id>`, the actor written to the audit log.
    pub fn actor(&self) -> String {
        format!("user:{}", self.user_id)
    }

    /// The role this principal effectively holds in an organisation, given the user's stored
    /// role there: an API token acts only in its organisation, and a read token as a viewer.
    pub fn effective_role(
        &self,
        organization_id: &OrganizationId,
        stored: Option<Role>,
    ) -> Option<Role> {
        let role = stored?;
        match &self.credential {
            Credential::Session { .. } => Some(role),
            Credential::ApiToken {
                organization_id: token_org,
                scope,
                ..
            } => {
                if token_org != organization_id {
                    None
                } else if *scope == Scope::Read {
                    Some(Role::Viewer)
                } else {
                    Some(role)
                }
            }
        }
    }

    /// Whether this principal may call mutations at all.
    pub fn may_write(&self) -> bool {
        !matches!(
            self.credential,
            Credential::ApiToken {
                scope: Scope::Read,
                ..
            }
        )
    }
}

/// Why a bearer was refused (logged only; clients get one code).
#[derive(Debug, thiserror::Error)]
pub enum AuthFailure {
    /// Malformed, forged, expired or revoked.
    #[error("invalid credentials: {0}")]
    Invalid(&'static str),
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

/// A revocation that live connections must honour: a WebSocket authenticated by a revoked
/// session or token is closed (docs/reliability.md rule 8). Announced on every replica (see `crate::cluster`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Revocation {
    /// One session ended (log-out, refresh-token reuse).
    Session {
        /// The session.
        session_id: SessionId,
    },
    /// Every session of a user ended but one (password change).
    UserSessions {
        /// The user.
        user_id: UserId,
        /// The session that stays.
        except_session: Option<SessionId>,
    },
    /// An API token was revoked.
    ApiToken {
        /// The token.
        token_id: String,
    },
    /// A user's membership changed (removed from an organisation, or its role changed): every
    /// connection of that user closes, so what it was granted is checked again on reconnect.
    Membership {
        /// The user.
        user_id: UserId,
    },
    /// A lab's agent credential was revoked: the replica holding the lab's agent connection
    /// cuts it (no user connection is concerned).
    AgentCredential {
        /// The lab.
        lab_id: LabId,
    },
}

impl Revocation {
    /// Whether a connection authenticated as `principal` must close.
    pub fn applies_to(&self, principal: &Principal) -> bool {
        match (self, &principal.credential) {
            (Revocation::Session { session_id }, Credential::Session { session_id: s }) => {
                s == session_id
            }
            (
                Revocation::UserSessions {
                    user_id,
                    except_session,
                },
                Credential::Session { session_id },
            ) => *user_id == principal.user_id && except_session.as_ref() != Some(session_id),
            (Revocation::ApiToken { token_id }, Credential::ApiToken { token_id: t, .. }) => {
                t == token_id
            }
            (Revocation::Membership { user_id }, _) => *user_id == principal.user_id,
            _ => false,
        }
    }
}

/// Which pool of argon2 slots a hash runs in: sign-up and log-in have separate budgets, so
/// a flood of one cannot starve the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashBudget {
    /// Log-in and password change.
    Login,
    /// Sign-up.
    SignUp,
}

/// Authentication services shared by all requests.
pub struct AuthService {
    /// Access-token keys.
    pub jwt: JwtKeys,
    /// Password hasher.
    pub hasher: PasswordHasherConfig,
    /// Login throttling.
    pub limiter: LoginLimiter,
    /// Settings.
    pub config: AuthConfig,
    dummy_hash: String,
    login_slots: Arc<Semaphore>,
    signup_slots: Arc<Semaphore>,
    revocations: broadcast::Sender<Revocation>,
    forward: crate::events::Forward<Revocation>,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuthService({:?}, {:?})", self.jwt, self.hasher)
    }
}

impl AuthService {
    /// Builds the service; without a configured JWT secret a random one is made (and a
    /// warning logged: tokens will not survive a restart or work across replicas).
    pub fn new(config: &AuthConfig) -> Self {
        let secret: Vec<u8> = if config.jwt_secret.is_empty() {
            tracing::warn!(
                "auth.jwt_secret is not set: using a random per-process key \
                 (set MAOSIC_AUTH__JWT_SECRET for restarts and several replicas)"
            );
            rand::random::<[u8; 32]>().to_vec()
        } else {
            config.jwt_secret.as_bytes().to_vec()
        };
        // The configuration was validated; fall back to the argon2 defaults (m = 19 MiB, t = 2,
        // p = 1) should the parameters still be refused.
        let hasher = PasswordHasherConfig::new(config.argon2_memory_kib, config.argon2_iterations)
            .unwrap_or_else(|_| PasswordHasherConfig::default_cost());
        let dummy_hash = hasher.hash(&token::new_secret()).unwrap_or_default();
        AuthService {
            jwt: JwtKeys::with_previous(
                &secret,
                &config
                    .jwt_previous_secrets
                    .iter()
                    .map(|s| s.as_bytes())
                    .collect::<Vec<_>>(),
                &config.issuer,
                &config.audience,
            ),
            hasher,
            limiter: LoginLimiter::new(LimiterSettings {
                max_failures_per_account: config.max_failures_per_account,
                max_failures_per_address: config.max_failures_per_address,
                failure_window: Duration::from_secs(config.failure_window_secs.max(1)),
                max_signups_per_email: config.max_signups_per_email,
                max_signups_per_address: config.max_signups_per_address,
                signup_window: Duration::from_secs(config.signup_window_secs.max(1)),
            }),
            config: config.clone(),
            dummy_hash,
            // argon2 is CPU- and memory-heavy: a few at a time keeps the server responsive.
            // Sign-up has its own budget, so a sign-up flood cannot starve log-ins.
            login_slots: Arc::new(Semaphore::new(config.login_hash_slots.max(1))),
            signup_slots: Arc::new(Semaphore::new(config.signup_hash_slots.max(1))),
            revocations: broadcast::channel(1024).0,
            forward: crate::events::Forward::default(),
        }
    }

    /// Subscribes to revocations (for WebSocket handlers: close when one applies).
    pub fn revocations(&self) -> broadcast::Receiver<Revocation> {
        self.revocations.subscribe()
    }

    /// Announces a revocation to the live connections of this replica and of the others.
    pub fn announce(&self, revocation: Revocation) {
        self.forward.send(&revocation);
        self.announce_local(revocation);
    }

    /// Announces a revocation to this replica's live connections only (one another replica
    /// announced).
    pub fn announce_local(&self, revocation: Revocation) {
        let _ = self.revocations.send(revocation);
    }

    /// Where announced revocations also go (see [`crate::events::Forward`]).
    pub fn forward(&self) -> &crate::events::Forward<Revocation> {
        &self.forward
    }

    fn slots(&self, budget: HashBudget) -> &Semaphore {
        match budget {
            HashBudget::Login => &self.login_slots,
            HashBudget::SignUp => &self.signup_slots,
        }
    }

    /// Hashes a password off the async threads, within `budget`'s slots.
    pub async fn hash_password(&self, password: &str, budget: HashBudget) -> Option<String> {
        let _slot = self.slots(budget).acquire().await.ok()?;
        let hasher = self.hasher.clone();
        let password = password.to_owned();
        tokio::task::spawn_blocking(move || hasher.hash(&password).ok())
            .await
            .ok()
            .flatten()
    }

    /// Verifies a password off the async threads (log-in budget). With no stored hash (unknown
    /// account, or one without a password) a dummy hash is checked, so the time taken is the
    /// same.
    pub async fn verify_password(&self, password: &str, stored: Option<&str>) -> bool {
        self.verify_password_within(password, stored, HashBudget::Login)
            .await
    }

    /// [`AuthService::verify_password`] within `budget`'s slots.
    pub async fn verify_password_within(
        &self,
        password: &str,
        stored: Option<&str>,
        budget: HashBudget,
    ) -> bool {
        let Ok(_slot) = self.slots(budget).acquire().await else {
            return false;
        };
        let hasher = self.hasher.clone();
        let password = password.to_owned();
        let (hash, real) = match stored {
            Some(h) => (h.to_owned(), true),
            None => (self.dummy_hash.clone(), false),
        };
        let ok = tokio::task::spawn_blocking(move || hasher.verify(&password, &hash))
            .await
            .unwrap_or(false);
        ok && real
    }

    /// Verifies a bearer token (a JWT access token or an API token) into a principal.
    pub async fn authenticate(
        &self,
        storage: &dyn Storage,
        bearer: &str,
    ) -> Result<Principal, AuthFailure> {
        if let Some((id, secret)) = token::parse_token(token::API_TOKEN_PREFIX, bearer) {
            let api = storage
                .api_token(id)
                .await?
                .ok_or(AuthFailure::Invalid("unknown api token"))?;
            if api.revoked_at.is_some() || !token::secret_matches(secret, &api.token_hash) {
                return Err(AuthFailure::Invalid("revoked or wrong api token"));
            }
            let scope = Scope::parse(&api.scope).ok_or(AuthFailure::Invalid("bad scope"))?;
            return Ok(Principal {
                user_id: api.user_id,
                credential: Credential::ApiToken {
                    token_id: api.id,
                    organization_id: api.organization_id,
                    scope,
                },
            });
        }
        let claims = self
            .jwt
            .verify(bearer)
            .map_err(|_| AuthFailure::Invalid("bad access token"))?;
        let session = storage
            .session(&SessionId::from(claims.sid))
            .await?
            .ok_or(AuthFailure::Invalid("unknown session"))?;
        if session.revoked_at.is_some() || session.user_id != claims.sub {
            return Err(AuthFailure::Invalid("session revoked"));
        }
        Ok(Principal {
            user_id: UserId::from(claims.sub),
            credential: Credential::Session {
                session_id: session.id,
            },
        })
    }
}

/// Access and refresh tokens handed to a client after log-in or refresh.
#[derive(Debug, Clone)]
pub struct TokenPair {
    /// JWT access token.
    pub access_token: String,
    /// Opaque refresh token (single use; rotates).
    pub refresh_token: String,
    /// Access-token lifetime in seconds.
    pub expires_in: u64,
}

/// Issues a fresh access token and a new refresh token in session `session_id`.
pub async fn issue_tokens(
    auth: &AuthService,
    storage: &dyn Storage,
    user_id: &UserId,
    session_id: &SessionId,
) -> Result<TokenPair, AuthFailure> {
    let now = crate::storage::now_ms();
    let access_token = auth
        .jwt
        .issue(
            user_id,
            session_id,
            jwt::now_secs(),
            auth.config.access_ttl_secs,
        )
        .map_err(|_| AuthFailure::Invalid("cannot sign"))?;
    let secret = token::new_secret();
    let ttl_ms =
        i64::try_from(auth.config.refresh_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let stored = storage
        .create_refresh_token(
            session_id,
            &token::hash_secret(&secret),
            now.saturating_add(ttl_ms),
            now,
        )
        .await?;
    Ok(TokenPair {
        access_token,
        refresh_token: token::format_token(token::REFRESH_PREFIX, &stored.id, &secret),
        expires_in: auth.config.access_ttl_secs,
    })
}

/// Outcome of exchanging a refresh token.
#[derive(Debug)]
pub enum RefreshOutcome {
    /// New tokens of the same family.
    Rotated(TokenPair),
    /// Unknown, malformed or expired token, or a revoked family.
    Invalid,
    /// The token was already used: the whole family has been revoked.
    ReuseDetected {
        /// The revoked session.
        session_id: SessionId,
        /// Its user.
        user_id: UserId,
    },
}

/// Exchanges a refresh token for new tokens; a second use of the same token revokes the
/// whole family (docs/reliability.md rule 8).
pub async fn refresh(
    auth: &AuthService,
    storage: &dyn Storage,
    presented: &str,
) -> Result<RefreshOutcome, AuthFailure> {
    let now = crate::storage::now_ms();
    let Some((id, secret)) = token::parse_token(token::REFRESH_PREFIX, presented) else {
        return Ok(RefreshOutcome::Invalid);
    };
    let Some(stored) = storage.refresh_token(id).await? else {
        return Ok(RefreshOutcome::Invalid);
    };
    if !token::secret_matches(secret, &stored.token_hash) {
        return Ok(RefreshOutcome::Invalid);
    }
    let Some(session) = storage.session(&stored.session_id).await? else {
        return Ok(RefreshOutcome::Invalid);
    };
    if session.revoked_at.is_some() || stored.expires_at <= now {
        return Ok(RefreshOutcome::Invalid);
    }
    if stored.used_at.is_some() || !storage.use_refresh_token(&stored.id, now).await? {
        storage.revoke_session(&session.id, now).await?;
        return Ok(RefreshOutcome::ReuseDetected {
            session_id: session.id,
            user_id: session.user_id,
        });
    }
    let pair = issue_tokens(auth, storage, &session.user_id, &session.id).await?;
    Ok(RefreshOutcome::Rotated(pair))
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Format as _;

    fn session(user: &str, sid: &str) -> Principal {
        Principal {
            user_id: user.into(),
            credential: Credential::Session {
                session_id: sid.into(),
            },
        }
    }

    #[tokio::test]
    async fn revocations_reach_subscribers_and_match_only_their_connections() {
        let config: crate::config::RawConfig = figment::Figment::from(
            figment::providers::Toml::string(crate::config::DEFAULT_TOML),
        )
        .extract()
        .unwrap();
        let auth = AuthService::new(&config.auth);
        let mut rx = auth.revocations();
        auth.announce(Revocation::Session {
            session_id: "s1".into(),
        });
        let got = rx.recv().await.unwrap();
        assert!(got.applies_to(&session("u", "s1")));
        assert!(!got.applies_to(&session("u", "s2")));
        let all = Revocation::UserSessions {
            user_id: "u".into(),
            except_session: Some("keep".into()),
        };
        assert!(all.applies_to(&session("u", "other")));
        assert!(!all.applies_to(&session("u", "keep")));
        assert!(!all.applies_to(&session("v", "other")));
        let api = Principal {
            user_id: "u".into(),
            credential: Credential::ApiToken {
                token_id: "t".into(),
                organization_id: "o".into(),
                scope: Scope::Read,
            },
        };
        assert!(Revocation::ApiToken {
            token_id: "t".into()
        }
        .applies_to(&api));
        assert!(!all.applies_to(&api));
    }
}
