//! Storage of the secrets that stand for someone: login sessions and their refresh-token
//! families, API tokens, and one-time agent enrollment tokens (the [`TokenStorage`] port). Only
//! SHA-256 hashes of secret halves are stored.

use async_trait::async_trait;

use super::db::{query, SqlStorage};
#[allow(unused_imports)]
use super::ids::{CampaignId, CommandId, ExperimentId, LabId, OrganizationId, SessionId, UserId};
use super::{new_id, StorageResult};

/// A login session: one refresh-token family. Revoking it ends every token of the family.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Session {
    /// Identifier (the `sid` claim of access tokens).
    pub id: SessionId,
    /// The user logged in.
    pub user_id: UserId,
    /// Creation time, ms since the Unix epoch.
    pub created_at: i64,
    /// Revocation time (log-out, reuse detected, password changed).
    pub revoked_at: Option<i64>,
}

/// A refresh token (only its SHA-256 is stored).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RefreshToken {
    /// Identifier, the public half of the token.
    pub id: String,
    /// Its family.
    pub session_id: SessionId,
    /// Hex SHA-256 of the secret half.
    pub token_hash: String,
    /// Creation time.
    pub created_at: i64,
    /// Expiry time.
    pub expires_at: i64,
    /// When it was exchanged; a second exchange is reuse.
    pub used_at: Option<i64>,
}

/// A named API token for scripts, bound to one organisation with a scope.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ApiToken {
    /// Identifier, the public half of the token.
    pub id: String,
    /// Owner.
    pub user_id: UserId,
    /// The only organisation it acts in.
    pub organization_id: OrganizationId,
    /// Name given by the user.
    pub name: String,
    /// `read` or `write`.
    pub scope: String,
    /// Hex SHA-256 of the secret half.
    pub token_hash: String,
    /// Creation time.
    pub created_at: i64,
    /// Revocation time.
    pub revoked_at: Option<i64>,
}

/// A one-time agent enrollment token (only its SHA-256 is stored).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EnrollmentToken {
    /// Identifier, the public half.
    pub id: String,
    /// The lab it enrolls.
    pub lab_id: LabId,
    /// Hex SHA-256 of the secret half.
    pub token_hash: String,
    /// Creation time.
    pub created_at: i64,
    /// Expiry time.
    pub expires_at: i64,
    /// When it was used; it cannot be used again.
    pub used_at: Option<i64>,
}

/// The storage port of login sessions, refresh tokens, API tokens and agent enrollment tokens.
#[async_trait]
pub trait TokenStorage {
    /// Opens a login session (a refresh-token family).
    async fn create_session(&self, user_id: &UserId, now_ms: i64) -> StorageResult<Session>;
    /// Reads a session.
    async fn session(&self, id: &SessionId) -> StorageResult<Option<Session>>;
    /// Revokes a session; false when already revoked or absent.
    async fn revoke_session(&self, id: &SessionId, now_ms: i64) -> StorageResult<bool>;
    /// Revokes every open session of a user except `keep`; returns how many.
    async fn revoke_sessions_of_user(
        &self,
        user_id: &UserId,
        keep: Option<&SessionId>,
        now_ms: i64,
    ) -> StorageResult<u64>;
    /// Stores a refresh token of a session.
    async fn create_refresh_token(
        &self,
        session_id: &SessionId,
        token_hash: &str,
        expires_at: i64,
        now_ms: i64,
    ) -> StorageResult<RefreshToken>;
    /// Reads a refresh token.
    async fn refresh_token(&self, id: &str) -> StorageResult<Option<RefreshToken>>;
    /// Marks a refresh token used; false when it was already used (reuse).
    async fn use_refresh_token(&self, id: &str, now_ms: i64) -> StorageResult<bool>;
    /// Stores an API token.
    async fn create_api_token(
        &self,
        user_id: &UserId,
        organization_id: &OrganizationId,
        name: &str,
        scope: &str,
        token_hash: &str,
        now_ms: i64,
    ) -> StorageResult<ApiToken>;
    /// Reads an API token.
    async fn api_token(&self, id: &str) -> StorageResult<Option<ApiToken>>;
    /// The API tokens of a user, newest first.
    async fn api_tokens_of_user(&self, user_id: &UserId) -> StorageResult<Vec<ApiToken>>;
    /// Revokes a user's API token; false when absent, not theirs or already revoked.
    async fn revoke_api_token(
        &self,
        id: &str,
        user_id: &UserId,
        now_ms: i64,
    ) -> StorageResult<bool>;
    /// Stores a one-time enrollment token for a lab.
    async fn create_enrollment_token(
        &self,
        lab_id: &LabId,
        token_hash: &str,
        expires_at: i64,
        now_ms: i64,
    ) -> StorageResult<EnrollmentToken>;
    /// Reads an enrollment token.
    async fn enrollment_token(&self, id: &str) -> StorageResult<Option<EnrollmentToken>>;
    /// Marks an unexpired, unused enrollment token used; false otherwise (single use).
    async fn use_enrollment_token(&self, id: &str, now_ms: i64) -> StorageResult<bool>;
}

#[async_trait]
impl TokenStorage for SqlStorage {
    async fn create_session(&self, user_id: &UserId, now_ms: i64) -> StorageResult<Session> {
        self.tx(async |tx| {
            query(
                "INSERT INTO sessions (id, user_id, created_at) VALUES ($1, $2, $3) \
                 RETURNING id, user_id, created_at, revoked_at",
            )
            .bind(new_id())
            .bind(user_id)
            .bind(now_ms)
            .fetch_one(tx)
            .await
        })
        .await
    }

    async fn session(&self, id: &SessionId) -> StorageResult<Option<Session>> {
        self.tx(async |tx| {
            query("SELECT id, user_id, created_at, revoked_at FROM sessions WHERE id = $1")
                .bind(id)
                .fetch_optional(tx)
                .await
        })
        .await
    }

    async fn revoke_session(&self, id: &SessionId, now_ms: i64) -> StorageResult<bool> {
        self.tx(async |tx| {
            let done =
                query("UPDATE sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                    .bind(id)
                    .bind(now_ms)
                    .execute(tx)
                    .await?;
            Ok(done == 1)
        })
        .await
    }

    async fn revoke_sessions_of_user(
        &self,
        user_id: &UserId,
        keep: Option<&SessionId>,
        now_ms: i64,
    ) -> StorageResult<u64> {
        self.tx(async |tx| {
            let done = query(
                "UPDATE sessions SET revoked_at = $2 \
                 WHERE user_id = $1 AND revoked_at IS NULL AND id <> $3",
            )
            .bind(user_id)
            .bind(now_ms)
            .bind(keep.map_or("", SessionId::as_str))
            .execute(tx)
            .await?;
            Ok(done)
        })
        .await
    }

    async fn create_refresh_token(
        &self,
        session_id: &SessionId,
        token_hash: &str,
        expires_at: i64,
        now_ms: i64,
    ) -> StorageResult<RefreshToken> {
        self.tx(async |tx| {
            query(
                "INSERT INTO refresh_tokens (id, session_id, token_hash, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 RETURNING id, session_id, token_hash, created_at, expires_at, used_at",
            )
            .bind(new_id())
            .bind(session_id)
            .bind(token_hash)
            .bind(now_ms)
            .bind(expires_at)
            .fetch_one(tx)
            .await
        })
        .await
    }

    async fn refresh_token(&self, id: &str) -> StorageResult<Option<RefreshToken>> {
        self.tx(async |tx| {
            query(
                "SELECT id, session_id, token_hash, created_at, expires_at, used_at \
                 FROM refresh_tokens WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(tx)
            .await
        })
        .await
    }

    async fn use_refresh_token(&self, id: &str, now_ms: i64) -> StorageResult<bool> {
        self.tx(async |tx| {
            let done =
                query("UPDATE refresh_tokens SET used_at = $2 WHERE id = $1 AND used_at IS NULL")
                    .bind(id)
                    .bind(now_ms)
                    .execute(tx)
                    .await?;
            Ok(done == 1)
        })
        .await
    }

    async fn create_api_token(
        &self,
        user_id: &UserId,
        organization_id: &OrganizationId,
        name: &str,
        scope: &str,
        token_hash: &str,
        now_ms: i64,
    ) -> StorageResult<ApiToken> {
        self.tx(async |tx| {
            query(
                "INSERT INTO api_tokens \
                 (id, user_id, organization_id, name, scope, token_hash, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 RETURNING id, user_id, organization_id, name, scope, token_hash, \
                 created_at, revoked_at",
            )
            .bind(new_id())
            .bind(user_id)
            .bind(organization_id)
            .bind(name)
            .bind(scope)
            .bind(token_hash)
            .bind(now_ms)
            .fetch_one(tx)
            .await
        })
        .await
    }

    async fn api_token(&self, id: &str) -> StorageResult<Option<ApiToken>> {
        self.tx(async |tx| {
            query(
                "SELECT id, user_id, organization_id, name, scope, token_hash, created_at, \
                 revoked_at FROM api_tokens WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(tx)
            .await
        })
        .await
    }

    async fn api_tokens_of_user(&self, user_id: &UserId) -> StorageResult<Vec<ApiToken>> {
        self.tx(async |tx| {
            query(
                "SELECT id, user_id, organization_id, name, scope, token_hash, created_at, \
                 revoked_at FROM api_tokens WHERE user_id = $1 ORDER BY created_at DESC, id",
            )
            .bind(user_id)
            .fetch_all(tx)
            .await
        })
        .await
    }

    async fn revoke_api_token(
        &self,
        id: &str,
        user_id: &UserId,
        now_ms: i64,
    ) -> StorageResult<bool> {
        self.tx(async |tx| {
            let done = query(
                "UPDATE api_tokens SET revoked_at = $3 \
                 WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
            )
            .bind(id)
            .bind(user_id)
            .bind(now_ms)
            .execute(tx)
            .await?;
            Ok(done == 1)
        })
        .await
    }

    async fn create_enrollment_token(
        &self,
        lab_id: &LabId,
        token_hash: &str,
        expires_at: i64,
        now_ms: i64,
    ) -> StorageResult<EnrollmentToken> {
        self.tx(async |tx| {
            query(
                "INSERT INTO enrollment_tokens (id, lab_id, token_hash, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 RETURNING id, lab_id, token_hash, created_at, expires_at, used_at",
            )
            .bind(new_id())
            .bind(lab_id)
            .bind(token_hash)
            .bind(now_ms)
            .bind(expires_at)
            .fetch_one(tx)
            .await
        })
        .await
    }

    async fn enrollment_token(&self, id: &str) -> StorageResult<Option<EnrollmentToken>> {
        self.tx(async |tx| {
            query(
                "SELECT id, lab_id, token_hash, created_at, expires_at, used_at \
                 FROM enrollment_tokens WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(tx)
            .await
        })
        .await
    }

    async fn use_enrollment_token(&self, id: &str, now_ms: i64) -> StorageResult<bool> {
        self.tx(async |tx| {
            let done = query(
                "UPDATE enrollment_tokens SET used_at = $2 \
                 WHERE id = $1 AND used_at IS NULL AND expires_at > $2",
            )
            .bind(id)
            .bind(now_ms)
            .execute(tx)
            .await?;
            Ok(done == 1)
        })
        .await
    }
}
