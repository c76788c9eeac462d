//! Storage of the account guards (the [`AuthStorage`] port, a supertrait of
//! [`super::Storage`]): the attempt throttle that every replica shares, sign-up requests
//! awaiting e-mail verification, the mail outbox, and membership changes that keep an
//! organisation's last owner.
//!
//! Invariants:
//! - a reservation ([`AuthStorage::reserve_attempts`]) is one atomic upsert per key, so N
//!   concurrent attempts against a limit L get the counts 1..=N and at most L pass, whichever
//!   replica they reach;
//! - an organisation always keeps at least one owner: role changes and removals lock the
//!   organisation row first (`UPDATE organizations SET name = name`, portable: a row lock on
//!   PostgreSQL, the write lock on SQLite), then count the owners in the same transaction;
//!   joining through an invitation never lowers an existing role;
//! - the throttle, sign-up and outbox tables are platform tables (no tenant-role grant on
//!   PostgreSQL): call these methods in [`super::tenant::system`].

use async_trait::async_trait;

use super::{Organization, PgStorage, Role, SqliteStorage, StorageError, StorageResult, User};

/// A sign-up waiting for its e-mail to be verified.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SignupRequest {
    /// Identifier, the public half of the verification token.
    pub id: String,
    /// The address to verify (lower-cased).
    pub email: String,
    /// Display name of the account to create.
    pub display_name: String,
    /// Name of the organisation to create with it.
    pub organization_name: String,
    /// argon2id PHC string of the chosen password.
    pub password_hash: String,
    /// Hex SHA-256 of the token's secret half.
    pub token_hash: String,
    /// Creation time, ms since the Unix epoch.
    pub created_at: i64,
    /// Expiry time.
    pub expires_at: i64,
    /// When it became an account.
    pub used_at: Option<i64>,
}

/// A mail to queue.
#[derive(Debug, Clone)]
pub struct NewMail {
    /// Recipient address.
    pub recipient: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
}

/// A claimed mail of the outbox.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OutboxMail {
    /// Identifier.
    pub id: String,
    /// Recipient address.
    pub recipient: String,
    /// Subject line.
    pub subject: String,
    /// Plain-text body.
    pub body: String,
    /// When it was queued.
    pub created_at: i64,
    /// Delivery attempts so far (this one included).
    pub attempts: i64,
}

/// Outcome of a guarded membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    /// Applied.
    Done,
    /// The user is not a member (or the organisation is not visible).
    NotMember,
    /// The change touches an owner and the actor is not one.
    Forbidden,
    /// The change would leave the organisation without an owner.
    LastOwner,
}

/// Account-guard storage port.
#[async_trait]
pub trait AuthStorage {
    /// Counts one attempt under each `(key, limit)` in one transaction and returns whether
    /// every key is still within its limit. Windows are fixed: a key's count restarts once
    /// `window_ms` has passed since its window began. Refused attempts count too.
    async fn reserve_attempts(
        &self,
        keys: &[(&str, i64)],
        window_ms: i64,
        now_ms: i64,
    ) -> StorageResult<bool>;
    /// Gives one reserved attempt back (a successful log-in from an address).
    async fn refund_attempt(&self, key: &str) -> StorageResult<()>;
    /// Forgets a key (a successful log-in forgets its account's failures).
    async fn clear_attempts(&self, key: &str) -> StorageResult<()>;
    /// Deletes throttle rows whose window began before `before_ms`, and expired sign-up
    /// requests; returns how many rows went.
    async fn prune_auth(&self, before_ms: i64, now_ms: i64) -> StorageResult<u64>;

    /// Stores a sign-up request and queues its verification mail, in one transaction.
    async fn create_signup_request(
        &self,
        request: &SignupRequest,
        mail: &NewMail,
    ) -> StorageResult<()>;
    /// Reads a sign-up request.
    async fn signup_request(&self, id: &str) -> StorageResult<Option<SignupRequest>>;
    /// Turns an unused, unexpired sign-up request into a user, their organisation and the
    /// owner membership, in one transaction. `None` when the request is used, expired or
    /// absent; `Conflict` when the address got an account meanwhile (nothing is written).
    async fn complete_signup(
        &self,
        id: &str,
        now_ms: i64,
    ) -> StorageResult<Option<(User, Organization)>>;

    /// Queues a mail.
    async fn enqueue_mail(&self, mail: &NewMail, now_ms: i64) -> StorageResult<()>;
    /// Claims the oldest unsent mail whose lease has run out, leasing it until
    /// `now_ms + lease_ms`.
    async fn claim_mail(&self, now_ms: i64, lease_ms: i64) -> StorageResult<Option<OutboxMail>>;
    /// Marks a mail sent and blanks its body (it may hold a token).
    async fn mark_mail_sent(&self, id: &str, now_ms: i64) -> StorageResult<()>;

    /// Makes a user a member with `role`, or keeps their existing role when it is higher
    /// (an invitation never lowers a role, so it can neither demote the last owner nor let an
    /// admin demote an owner through an invitation). Returns the role held afterwards.
    async fn join_organization(
        &self,
        organization_id: &str,
        user_id: &str,
        role: Role,
        now_ms: i64,
    ) -> StorageResult<Role>;
    /// Changes a member's role on behalf of `actor_user_id`, whose role is read under the same
    /// lock: `Forbidden` unless the actor is an owner or admin, and an owner when the member or
    /// the new role is an owner; `LastOwner` when the organisation would be left without one.
    async fn change_member_role(
        &self,
        organization_id: &str,
        user_id: &str,
        role: Role,
        actor_user_id: &str,
    ) -> StorageResult<MemberChange>;
    /// Removes a member under the same rules as [`AuthStorage::change_member_role`].
    async fn remove_member(
        &self,
        organization_id: &str,
        user_id: &str,
        actor_user_id: &str,
    ) -> StorageResult<MemberChange>;
}

/// Columns of [`SignupRequest`], in order.
const SIGNUP_COLS: &str = "id, email, display_name, organization_name, password_hash, \
                           token_hash, created_at, expires_at, used_at";

macro_rules! impl_auth_storage {
    ($ty:ident) => {
        impl $ty {
            /// Inserts one outbox row inside a transaction.
            async fn insert_mail(
                tx: &mut sqlx::Transaction<'static, <$ty as BackendDb>::Db>,
                mail: &NewMail,
                now_ms: i64,
            ) -> StorageResult<()> {
                sqlx::query(
                    "INSERT INTO mail_outbox (id, recipient, subject, body, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(super::new_id())
                .bind(&mail.recipient)
                .bind(&mail.subject)
                .bind(&mail.body)
                .bind(now_ms)
                .execute(&mut **tx)
                .await
                .map_err(StorageError::from_sqlx)?;
                Ok(())
            }

            /// Locks the organisation for a membership change (row lock on PostgreSQL, the
            /// database's write lock on SQLite); false when it is not visible.
            async fn lock_organization(
                tx: &mut sqlx::Transaction<'static, <$ty as BackendDb>::Db>,
                organization_id: &str,
            ) -> StorageResult<bool> {
                let done = sqlx::query("UPDATE organizations SET name = name WHERE id = $1")
                    .bind(organization_id)
                    .execute(&mut **tx)
                    .await
                    .map_err(StorageError::from_sqlx)?;
                Ok(done.rows_affected() == 1)
            }

            /// Whether the actor is an owner (`Some(true)`) or an admin (`Some(false)`) of the
            /// organisation, read under the lock; `None` for anyone else.
            async fn actor_manages(
                tx: &mut sqlx::Transaction<'static, <$ty as BackendDb>::Db>,
                organization_id: &str,
                actor_user_id: &str,
            ) -> StorageResult<Option<bool>> {
                let row: Option<(String,)> = sqlx::query_as(
                    "SELECT role FROM memberships WHERE organization_id = $1 AND user_id = $2",
                )
                .bind(organization_id)
                .bind(actor_user_id)
                .fetch_optional(&mut **tx)
                .await
                .map_err(StorageError::from_sqlx)?;
                Ok(match row.and_then(|(r,)| Role::parse(&r)) {
                    Some(Role::Owner) => Some(true),
                    Some(Role::Admin) => Some(false),
                    _ => None,
                })
            }

            /// The member's role and the organisation's owner count, read under the lock.
            async fn role_and_owners(
                tx: &mut sqlx::Transaction<'static, <$ty as BackendDb>::Db>,
                organization_id: &str,
                user_id: &str,
            ) -> StorageResult<Option<(Role, i64)>> {
                let row: Option<(String, i64)> = sqlx::query_as(
                    "SELECT m.role, (SELECT count(*) FROM memberships o \
                                     WHERE o.organization_id = m.organization_id \
                                     AND o.role = 'owner') \
                     FROM memberships m WHERE m.organization_id = $1 AND m.user_id = $2",
                )
                .bind(organization_id)
                .bind(user_id)
                .fetch_optional(&mut **tx)
                .await
                .map_err(StorageError::from_sqlx)?;
                match row {
                    None => Ok(None),
                    Some((role, owners)) => {
                        let role = Role::parse(&role)
                            .ok_or_else(|| StorageError::Corrupt(format!("role {role:?}")))?;
                        Ok(Some((role, owners)))
                    }
                }
            }
        }

        #[async_trait]
        impl AuthStorage for $ty {
            async fn reserve_attempts(
                &self,
                keys: &[(&str, i64)],
                window_ms: i64,
                now_ms: i64,
            ) -> StorageResult<bool> {
                in_tx!(&self.pool, tx, {
                    let mut allowed = true;
                    for (key, limit) in keys {
                        let (attempts,): (i64,) = sqlx::query_as(
                            "INSERT INTO auth_throttle (key, window_start, attempts) \
                             VALUES ($1, $2, 1) \
                             ON CONFLICT (key) DO UPDATE SET \
                             window_start = CASE WHEN auth_throttle.window_start <= $2 - $3 \
                                 THEN $2 ELSE auth_throttle.window_start END, \
                             attempts = CASE WHEN auth_throttle.window_start <= $2 - $3 \
                                 THEN 1 ELSE auth_throttle.attempts + 1 END \
                             RETURNING attempts",
                        )
                        .bind(*key)
                        .bind(now_ms)
                        .bind(window_ms)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(StorageError::from_sqlx)?;
                        allowed &= attempts <= *limit;
                    }
                    Ok(allowed)
                })
            }

            async fn refund_attempt(&self, key: &str) -> StorageResult<()> {
                in_tx!(&self.pool, tx, {
                    sqlx::query(
                        "UPDATE auth_throttle SET attempts = attempts - 1 \
                         WHERE key = $1 AND attempts > 0",
                    )
                    .bind(key)
                    .execute(&mut *tx)
                    .await
                    .map_err(StorageError::from_sqlx)?;
                    Ok(())
                })
            }

            async fn clear_attempts(&self, key: &str) -> StorageResult<()> {
                in_tx!(&self.pool, tx, {
                    sqlx::query("DELETE FROM auth_throttle WHERE key = $1")
                        .bind(key)
                        .execute(&mut *tx)
                        .await
                        .map_err(StorageError::from_sqlx)?;
                    Ok(())
                })
            }

            async fn prune_auth(&self, before_ms: i64, now_ms: i64) -> StorageResult<u64> {
                in_tx!(&self.pool, tx, {
                    let throttle = sqlx::query("DELETE FROM auth_throttle WHERE window_start < $1")
                        .bind(before_ms)
                        .execute(&mut *tx)
                        .await
                        .map_err(StorageError::from_sqlx)?;
                    let signups = sqlx::query("DELETE FROM signup_requests WHERE expires_at < $1")
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await
                        .map_err(StorageError::from_sqlx)?;
                    Ok(throttle.rows_affected() + signups.rows_affected())
                })
            }

            async fn create_signup_request(
                &self,
                r: &SignupRequest,
                mail: &NewMail,
            ) -> StorageResult<()> {
                let sql = format!(
                    "INSERT INTO signup_requests ({SIGNUP_COLS}) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                );
                in_tx!(&self.pool, tx, {
                    sqlx::query(&sql)
                        .bind(&r.id)
                        .bind(&r.email)
                        .bind(&r.display_name)
                        .bind(&r.organization_name)
                        .bind(&r.password_hash)
                        .bind(&r.token_hash)
                        .bind(r.created_at)
                        .bind(r.expires_at)
                        .bind(r.used_at)
                        .execute(&mut *tx)
                        .await
                        .map_err(StorageError::from_sqlx)?;
                    Self::insert_mail(&mut tx, mail, r.created_at).await
                })
            }

            async fn signup_request(&self, id: &str) -> StorageResult<Option<SignupRequest>> {
                let sql = format!("SELECT {SIGNUP_COLS} FROM signup_requests WHERE id = $1");
                in_tx!(&self.pool, tx, {
                    sqlx::query_as::<_, SignupRequest>(&sql)
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(StorageError::from_sqlx)
                })
            }

            async fn complete_signup(
                &self,
                id: &str,
                now_ms: i64,
            ) -> StorageResult<Option<(User, Organization)>> {
                let sql = format!(
                    "UPDATE signup_requests SET used_at = $2 \
                     WHERE id = $1 AND used_at IS NULL AND expires_at > $2 \
                     RETURNING {SIGNUP_COLS}"
                );
                in_tx!(&self.pool, tx, {
                    let Some(r) = sqlx::query_as::<_, SignupRequest>(&sql)
                        .bind(id)
                        .bind(now_ms)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(StorageError::from_sqlx)?
                    else {
                        return Ok(None);
                    };
                    let user: User = sqlx::query_as(
                        "INSERT INTO users (id, email, display_name, password_hash, created_at) \
                         VALUES ($1, $2, $3, $4, $5) \
                         RETURNING id, email, display_name, password_hash, created_at",
                    )
                    .bind(super::new_id())
                    .bind(&r.email)
                    .bind(&r.display_name)
                    .bind(&r.password_hash)
                    .bind(now_ms)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(StorageError::from_sqlx)?;
                    let org: Organization = sqlx::query_as(
                        "INSERT INTO organizations (id, name, created_at) VALUES ($1, $2, $3) \
                         RETURNING id, name, created_at",
                    )
                    .bind(super::new_id())
                    .bind(&r.organization_name)
                    .bind(now_ms)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(StorageError::from_sqlx)?;
                    sqlx::query(
                        "INSERT INTO memberships (organization_id, user_id, role, created_at) \
                         VALUES ($1, $2, 'owner', $3)",
                    )
                    .bind(&org.id)
                    .bind(&user.id)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err(StorageError::from_sqlx)?;
                    Ok(Some((user, org)))
                })
            }

            async fn enqueue_mail(&self, mail: &NewMail, now_ms: i64) -> StorageResult<()> {
                in_tx!(&self.pool, tx, { Self::insert_mail(&mut tx, mail, now_ms).await })
            }

            async fn claim_mail(
                &self,
                now_ms: i64,
                lease_ms: i64,
            ) -> StorageResult<Option<OutboxMail>> {
                in_tx!(&self.pool, tx, {
                    sqlx::query_as::<_, OutboxMail>(
                        "UPDATE mail_outbox SET lease_until = $2, attempts = attempts + 1 \
                         WHERE id = (SELECT id FROM mail_outbox WHERE sent_at IS NULL \
                                     AND (lease_until IS NULL OR lease_until < $1) \
                                     ORDER BY created_at, id LIMIT 1) \
                         AND sent_at IS NULL AND (lease_until IS NULL OR lease_until < $1) \
                         RETURNING id, recipient, subject, body, created_at, attempts",
                    )
                    .bind(now_ms)
                    .bind(now_ms.saturating_add(lease_ms))
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(StorageError::from_sqlx)
                })
            }

            async fn mark_mail_sent(&self, id: &str, now_ms: i64) -> StorageResult<()> {
                in_tx!(&self.pool, tx, {
                    sqlx::query("UPDATE mail_outbox SET sent_at = $2, body = '' WHERE id = $1")
                        .bind(id)
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await
                        .map_err(StorageError::from_sqlx)?;
                    Ok(())
                })
            }

            async fn join_organization(
                &self,
                organization_id: &str,
                user_id: &str,
                role: Role,
                now_ms: i64,
            ) -> StorageResult<Role> {
                const RANK: &str = "CASE {r} WHEN 'owner' THEN 4 WHEN 'admin' THEN 3 \
                                    WHEN 'researcher' THEN 2 ELSE 1 END";
                let sql = format!(
                    "INSERT INTO memberships (organization_id, user_id, role, created_at) \
                     VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (organization_id, user_id) DO UPDATE SET role = \
                     CASE WHEN {old} >= {new} THEN memberships.role ELSE excluded.role END \
                     RETURNING role",
                    old = RANK.replace("{r}", "memberships.role"),
                    new = RANK.replace("{r}", "excluded.role"),
                );
                in_tx!(&self.pool, tx, {
                    let (held,): (String,) = sqlx::query_as(&sql)
                        .bind(organization_id)
                        .bind(user_id)
                        .bind(role.as_str())
                        .bind(now_ms)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(StorageError::from_sqlx)?;
                    Role::parse(&held).ok_or_else(|| StorageError::Corrupt(format!("role {held:?}")))
                })
            }

            async fn change_member_role(
                &self,
                organization_id: &str,
                user_id: &str,
                role: Role,
                actor_user_id: &str,
            ) -> StorageResult<MemberChange> {
                in_tx!(&self.pool, tx, {
                    if !Self::lock_organization(&mut tx, organization_id).await? {
                        return Ok(MemberChange::NotMember);
                    }
                    let Some(actor_is_owner) =
                        Self::actor_manages(&mut tx, organization_id, actor_user_id).await?
                    else {
                        return Ok(MemberChange::Forbidden);
                    };
                    let Some((current, owners)) =
                        Self::role_and_owners(&mut tx, organization_id, user_id).await?
                    else {
                        return Ok(MemberChange::NotMember);
                    };
                    if (role == Role::Owner || current == Role::Owner) && !actor_is_owner {
                        return Ok(MemberChange::Forbidden);
                    }
                    if current == Role::Owner && role != Role::Owner && owners <= 1 {
                        return Ok(MemberChange::LastOwner);
                    }
                    sqlx::query(
                        "UPDATE memberships SET role = $3 \
                         WHERE organization_id = $1 AND user_id = $2",
                    )
                    .bind(organization_id)
                    .bind(user_id)
                    .bind(role.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(StorageError::from_sqlx)?;
                    Ok(MemberChange::Done)
                })
            }

            async fn remove_member(
                &self,
                organization_id: &str,
                user_id: &str,
                actor_user_id: &str,
            ) -> StorageResult<MemberChange> {
                in_tx!(&self.pool, tx, {
                    if !Self::lock_organization(&mut tx, organization_id).await? {
                        return Ok(MemberChange::NotMember);
                    }
                    let Some(actor_is_owner) =
                        Self::actor_manages(&mut tx, organization_id, actor_user_id).await?
                    else {
                        return Ok(MemberChange::Forbidden);
                    };
                    let Some((current, owners)) =
                        Self::role_and_owners(&mut tx, organization_id, user_id).await?
                    else {
                        return Ok(MemberChange::NotMember);
                    };
                    if current == Role::Owner && !actor_is_owner {
                        return Ok(MemberChange::Forbidden);
                    }
                    if current == Role::Owner && owners <= 1 {
                        return Ok(MemberChange::LastOwner);
                    }
                    sqlx::query(
                        "DELETE FROM memberships WHERE organization_id = $1 AND user_id = $2",
                    )
                    .bind(organization_id)
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(StorageError::from_sqlx)?;
                    Ok(MemberChange::Done)
                })
            }
        }
    };
}

/// The sqlx database type of a backend (for helpers generic over the transaction).
trait BackendDb {
    type Db: sqlx::Database;
}

impl BackendDb for SqliteStorage {
    type Db = sqlx::Sqlite;
}

impl BackendDb for PgStorage {
    type Db = sqlx::Postgres;
}

impl_auth_storage!(SqliteStorage);
impl_auth_storage!(PgStorage);
