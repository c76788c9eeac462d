//! Storage of organisations (the tenants), their members and roles, invitations, and the
//! append-only audit log (the [`OrganizationStorage`] port).
//!
//! Invariant: an organisation always keeps at least one owner. Role changes and removals lock
//! the organisation row first (`UPDATE organizations SET name = name`, portable: a row lock on
//! PostgreSQL, the write lock on SQLite), then count the owners in the same transaction;
//! joining through an invitation never lowers an existing role.

use async_trait::async_trait;

use serde::{Deserialize, Serialize};

use super::db::{query, SqlStorage, Tx};
#[allow(unused_imports)]
use super::ids::{CampaignId, CommandId, ExperimentId, LabId, OrganizationId, SessionId, UserId};
use super::{new_id, StorageError, StorageResult};

/// Role of a user in an organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Full control, including deleting the organisation.
    Owner,
    /// Manages members, labs and campaigns.
    Admin,
    /// Creates and runs campaigns.
    Researcher,
    /// Reads only.
    Viewer,
}

impl Role {
    /// The stored text of the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Researcher => "researcher",
            Role::Viewer => "viewer",
        }
    }

    /// Parses the stored text of a role.
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "owner" => Role::Owner,
            "admin" => Role::Admin,
            "researcher" => Role::Researcher,
            "viewer" => Role::Viewer,
            _ => return None,
        })
    }
}

/// An organisation (tenant).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Organization {
    /// Identifier (UUID text).
    pub id: OrganizationId,
    /// Display name.
    pub name: String,
    /// Creation time, ms since the Unix epoch.
    pub created_at: i64,
}

/// A user's role in an organisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The organisation.
    pub organization_id: OrganizationId,
    /// The user.
    pub user_id: UserId,
    /// The role.
    pub role: Role,
}

/// An invitation to join an organisation.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Invitation {
    /// Identifier, the public half of the invitation token.
    pub id: String,
    /// The organisation.
    pub organization_id: OrganizationId,
    /// Invited address (lower-cased).
    pub email: String,
    /// Role granted on acceptance (stored text).
    pub role: String,
    /// Hex SHA-256 of the secret half.
    pub token_hash: String,
    /// Who invited (`user:<id>`).
    pub created_by: String,
    /// Creation time.
    pub created_at: i64,
    /// Expiry time.
    pub expires_at: i64,
    /// Acceptance time.
    pub accepted_at: Option<i64>,
}

/// One audit-log entry: who did what to which object, when and from where.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuditEntry {
    /// Sequence number.
    pub id: i64,
    /// Organisation concerned, if any.
    pub organization_id: Option<OrganizationId>,
    /// Who (e.g. `user:<id>`, `agent:<id>`, `cli`).
    pub actor: String,
    /// What (e.g. `lab.create`).
    pub action: String,
    /// Which object (e.g. `lab:<id>`).
    pub target: String,
    /// JSON detail.
    pub detail: String,
    /// From where (address), if known.
    pub source: Option<String>,
    /// When, ms since the Unix epoch.
    pub created_at: i64,
}

/// A new audit entry to append.
#[derive(Debug, Clone)]
pub struct NewAuditEntry {
    /// Organisation concerned, if any.
    pub organization_id: Option<OrganizationId>,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Which object.
    pub target: String,
    /// JSON detail.
    pub detail: serde_json::Value,
    /// From where.
    pub source: Option<String>,
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

impl SqlStorage {
    /// Locks the organisation for a membership change (row lock on PostgreSQL, the
    /// database's write lock on SQLite); false when it is not visible.
    async fn lock_organization(
        tx: &mut Tx,
        organization_id: &OrganizationId,
    ) -> StorageResult<bool> {
        let done = query("UPDATE organizations SET name = name WHERE id = $1")
            .bind(organization_id)
            .execute(tx)
            .await?;
        Ok(done == 1)
    }

    /// Whether the actor is an owner (`Some(true)`) or an admin (`Some(false)`) of the
    /// organisation, read under the lock; `None` for anyone else.
    async fn actor_manages(
        tx: &mut Tx,
        organization_id: &OrganizationId,
        actor_user_id: &UserId,
    ) -> StorageResult<Option<bool>> {
        let row: Option<(String,)> =
            query("SELECT role FROM memberships WHERE organization_id = $1 AND user_id = $2")
                .bind(organization_id)
                .bind(actor_user_id)
                .fetch_optional(tx)
                .await?;
        Ok(match row.and_then(|(r,)| Role::parse(&r)) {
            Some(Role::Owner) => Some(true),
            Some(Role::Admin) => Some(false),
            _ => None,
        })
    }

    /// The member's role and the organisation's owner count, read under the lock.
    async fn role_and_owners(
        tx: &mut Tx,
        organization_id: &OrganizationId,
        user_id: &UserId,
    ) -> StorageResult<Option<(Role, i64)>> {
        let row: Option<(String, i64)> = query(
            "SELECT m.role, (SELECT count(*) FROM memberships o \
                             WHERE o.organization_id = m.organization_id \
                             AND o.role = 'owner') \
             FROM memberships m WHERE m.organization_id = $1 AND m.user_id = $2",
        )
        .bind(organization_id)
        .bind(user_id)
        .fetch_optional(tx)
        .await?;
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

/// The storage port of organisations, their members, invitations and the audit log.
#[async_trait]
pub trait OrganizationStorage {
    /// Creates an organisation.
    async fn create_organization(&self, name: &str, now_ms: i64) -> StorageResult<Organization>;
    /// Reads an organisation.
    async fn organization(&self, id: &OrganizationId) -> StorageResult<Organization>;
    /// Finds an organisation by name (names are not unique; the oldest wins).
    async fn organization_by_name(&self, name: &str) -> StorageResult<Option<Organization>>;
    /// Gives a user a role in an organisation (replacing an earlier role).
    async fn set_membership(
        &self,
        organization_id: &OrganizationId,
        user_id: &UserId,
        role: Role,
        now_ms: i64,
    ) -> StorageResult<()>;
    /// The organisations a user belongs to, with roles.
    async fn memberships_of_user(&self, user_id: &UserId) -> StorageResult<Vec<Membership>>;
    /// The members of an organisation, with roles.
    async fn memberships_of_organization(
        &self,
        organization_id: &OrganizationId,
    ) -> StorageResult<Vec<Membership>>;
    /// Removes a member; false when there was no such membership.
    async fn remove_membership(
        &self,
        organization_id: &OrganizationId,
        user_id: &UserId,
    ) -> StorageResult<bool>;
    /// Stores an invitation.
    async fn create_invitation(&self, invitation: &Invitation) -> StorageResult<()>;
    /// Reads an invitation.
    async fn invitation(&self, id: &str) -> StorageResult<Option<Invitation>>;
    /// Marks an invitation accepted; false when already accepted or expired.
    async fn accept_invitation(&self, id: &str, now_ms: i64) -> StorageResult<bool>;
    /// Appends an audit entry.
    async fn append_audit(&self, entry: &NewAuditEntry, now_ms: i64) -> StorageResult<i64>;
    /// The newest audit entries of an organisation, newest first.
    async fn audit_of_organization(
        &self,
        organization_id: &OrganizationId,
        limit: i64,
    ) -> StorageResult<Vec<AuditEntry>>;

    /// Makes a user a member with `role`, or keeps their existing role when it is higher
    /// (an invitation never lowers a role, so it can neither demote the last owner nor let an
    /// admin demote an owner through an invitation). Returns the role held afterwards.
    async fn join_organization(
        &self,
        organization_id: &OrganizationId,
        user_id: &UserId,
        role: Role,
        now_ms: i64,
    ) -> StorageResult<Role>;
    /// Changes a member's role on behalf of `actor_user_id`, whose role is read under the same
    /// lock: `Forbidden` unless the actor is an owner or admin, and an owner when the member or
    /// the new role is an owner; `LastOwner` when the organisation would be left without one.
    async fn change_member_role(
        &self,
        organization_id: &OrganizationId,
        user_id: &UserId,
        role: Role,
        actor_user_id: &UserId,
    ) -> StorageResult<MemberChange>;
    /// Removes a member under the same rules as [`AuthStorage::change_member_role`].
    async fn remove_member(
        &self,
        organization_id: &OrganizationId,
        user_id: &UserId,
        actor_user_id: &UserId,
    ) -> StorageResult<MemberChange>;
}

/// A `memberships` row as selected: organisation, user, role text.
type MembershipRow = (OrganizationId, UserId, String);

/// Rows into memberships; an unknown role is a corrupt row.
fn memberships(rows: Vec<MembershipRow>) -> StorageResult<Vec<Membership>> {
    rows.into_iter()
        .map(|(organization_id, user_id, role)| {
            let role = Role::parse(&role)
                .ok_or_else(|| StorageError::Corrupt(format!("unknown role {role:?}")))?;
            Ok(Membership {
                organization_id,
                user_id,
                role,
            })
        })
        .collect()
}

#[async_trait]
impl OrganizationStorage for SqlStorage {
    async fn create_organization(&self, name: &str, now_ms: i64) -> StorageResult<Organization> {
        self.tx(async |tx| {
            query(
                "INSERT INTO organizations (id, name, created_at) VALUES ($1, $2, $3) \
                 RETURNING id, name, created_at",
            )
            .bind(new_id())
            .bind(name)
            .bind(now_ms)
            .fetch_one(tx)
            .await
        })
        .await
    }

    async fn organization(&self, id: &OrganizationId) -> StorageResult<Organization> {
        self.tx(async |tx| {
            query("SELECT id, name, created_at FROM organizations WHERE id = $1")
                .bind(id)
                .fetch_optional(tx)
                .await?
                .ok_or(StorageError::NotFound)
        })
        .await
    }

    async fn organization_by_name(&self, name: &str) -> StorageResult<Option<Organization>> {
        self.tx(async |tx| {
            query(
                "SELECT id, name, created_at FROM organizations WHERE name = $1 \
                 ORDER BY created_at, id LIMIT 1",
            )
            .bind(name)
            .fetch_optional(tx)
            .await
        })
        .await
    }

    async fn set_membership(
        &self,
        organization_id: &OrganizationId,
        user_id: &UserId,
        role: Role,
        now_ms: i64,
    ) -> StorageResult<()> {
        self.tx(async |tx| {
            query(
                "INSERT INTO memberships (organization_id, user_id, role, created_at) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (organization_id, user_id) DO UPDATE SET role = excluded.role",
            )
            .bind(organization_id)
            .bind(user_id)
            .bind(role.as_str())
            .bind(now_ms)
            .execute(tx)
            .await?;
            Ok(())
        })
        .await
    }

    async fn memberships_of_user(&self, user_id: &UserId) -> StorageResult<Vec<Membership>> {
        self.tx(async |tx| {
            let rows: Vec<MembershipRow> = query(
                "SELECT organization_id, user_id, role FROM memberships \
                 WHERE user_id = $1 ORDER BY created_at, organization_id",
            )
            .bind(user_id)
            .fetch_all(tx)
            .await?;
            memberships(rows)
        })
        .await
    }

    async fn memberships_of_organization(
        &self,
        organization_id: &OrganizationId,
    ) -> StorageResult<Vec<Membership>> {
        self.tx(async |tx| {
            let rows: Vec<MembershipRow> = query(
                "SELECT organization_id, user_id, role FROM memberships \
                 WHERE organization_id = $1 ORDER BY created_at, user_id",
            )
            .bind(organization_id)
            .fetch_all(tx)
            .await?;
            memberships(rows)
        })
        .await
    }

    async fn remove_membership(
        &self,
        organization_id: &OrganizationId,
        user_id: &UserId,
    ) -> StorageResult<bool> {
        self.tx(async |tx| {
            let done = query("DELETE FROM memberships WHERE organization_id = $1 AND user_id = $2")
                .bind(organization_id)
                .bind(user_id)
                .execute(tx)
                .await?;
            Ok(done == 1)
        })
        .await
    }

    async fn create_invitation(&self, invitation: &Invitation) -> StorageResult<()> {
        self.tx(async |tx| {
            query(
                "INSERT INTO invitations (id, organization_id, email, role, token_hash, \
                 created_by, created_at, expires_at, accepted_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&invitation.id)
            .bind(&invitation.organization_id)
            .bind(invitation.email.trim().to_lowercase())
            .bind(&invitation.role)
            .bind(&invitation.token_hash)
            .bind(&invitation.created_by)
            .bind(invitation.created_at)
            .bind(invitation.expires_at)
            .bind(invitation.accepted_at)
            .execute(tx)
            .await?;
            Ok(())
        })
        .await
    }

    async fn invitation(&self, id: &str) -> StorageResult<Option<Invitation>> {
        self.tx(async |tx| {
            query(
                "SELECT id, organization_id, email, role, token_hash, created_by, \
                 created_at, expires_at, accepted_at FROM invitations WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(tx)
            .await
        })
        .await
    }

    async fn accept_invitation(&self, id: &str, now_ms: i64) -> StorageResult<bool> {
        self.tx(async |tx| {
            let done = query(
                "UPDATE invitations SET accepted_at = $2 \
                 WHERE id = $1 AND accepted_at IS NULL AND expires_at > $2",
            )
            .bind(id)
            .bind(now_ms)
            .execute(tx)
            .await?;
            Ok(done == 1)
        })
        .await
    }

    async fn append_audit(&self, entry: &NewAuditEntry, now_ms: i64) -> StorageResult<i64> {
        self.tx(async |tx| {
            let (id,): (i64,) = query(
                "INSERT INTO audit_log \
                 (organization_id, actor, action, target, detail, source, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            )
            .bind(entry.organization_id.as_deref())
            .bind(&entry.actor)
            .bind(&entry.action)
            .bind(&entry.target)
            .bind(entry.detail.to_string())
            .bind(entry.source.as_deref())
            .bind(now_ms)
            .fetch_one(tx)
            .await?;
            Ok(id)
        })
        .await
    }

    async fn audit_of_organization(
        &self,
        organization_id: &OrganizationId,
        limit: i64,
    ) -> StorageResult<Vec<AuditEntry>> {
        self.tx(async |tx| {
            query(
                "SELECT id, organization_id, actor, action, target, detail, source, created_at \
                 FROM audit_log WHERE organization_id = $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(organization_id)
            .bind(limit)
            .fetch_all(tx)
            .await
        })
        .await
    }

    async fn join_organization(
        &self,
        organization_id: &OrganizationId,
        user_id: &UserId,
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
        self.tx(async |tx| {
            let (held,): (String,) = query(&sql)
                .bind(organization_id)
                .bind(user_id)
                .bind(role.as_str())
                .bind(now_ms)
                .fetch_one(tx)
                .await?;
            Role::parse(&held).ok_or_else(|| StorageError::Corrupt(format!("role {held:?}")))
        })
        .await
    }

    async fn change_member_role(
        &self,
        organization_id: &OrganizationId,
        user_id: &UserId,
        role: Role,
        actor_user_id: &UserId,
    ) -> StorageResult<MemberChange> {
        self.tx(async |tx| {
            if !Self::lock_organization(tx, organization_id).await? {
                return Ok(MemberChange::NotMember);
            }
            let Some(actor_is_owner) =
                Self::actor_manages(tx, organization_id, actor_user_id).await?
            else {
                return Ok(MemberChange::Forbidden);
            };
            let Some((current, owners)) =
                Self::role_and_owners(tx, organization_id, user_id).await?
            else {
                return Ok(MemberChange::NotMember);
            };
            if (role == Role::Owner || current == Role::Owner) && !actor_is_owner {
                return Ok(MemberChange::Forbidden);
            }
            if current == Role::Owner && role != Role::Owner && owners <= 1 {
                return Ok(MemberChange::LastOwner);
            }
            query(
                "UPDATE memberships SET role = $3 \
                 WHERE organization_id = $1 AND user_id = $2",
            )
            .bind(organization_id)
            .bind(user_id)
            .bind(role.as_str())
            .execute(tx)
            .await?;
            Ok(MemberChange::Done)
        })
        .await
    }

    async fn remove_member(
        &self,
        organization_id: &OrganizationId,
        user_id: &UserId,
        actor_user_id: &UserId,
    ) -> StorageResult<MemberChange> {
        self.tx(async |tx| {
            if !Self::lock_organization(tx, organization_id).await? {
                return Ok(MemberChange::NotMember);
            }
            let Some(actor_is_owner) =
                Self::actor_manages(tx, organization_id, actor_user_id).await?
            else {
                return Ok(MemberChange::Forbidden);
            };
            let Some((current, owners)) =
                Self::role_and_owners(tx, organization_id, user_id).await?
            else {
                return Ok(MemberChange::NotMember);
            };
            if current == Role::Owner && !actor_is_owner {
                return Ok(MemberChange::Forbidden);
            }
            if current == Role::Owner && owners <= 1 {
                return Ok(MemberChange::LastOwner);
            }
            query("DELETE FROM memberships WHERE organization_id = $1 AND user_id = $2")
                .bind(organization_id)
                .bind(user_id)
                .execute(tx)
                .await?;
            Ok(MemberChange::Done)
        })
        .await
    }
}
