//! Storage of labs: the lab rows, their agents' credentials and presence (connection
//! generations), and shares with other organisations (the [`LabStorage`] port).

use std::collections::HashSet;

use async_trait::async_trait;

use super::db::{query, SqlStorage};
#[allow(unused_imports)]
use super::ids::{CampaignId, CommandId, ExperimentId, LabId, OrganizationId, SessionId, UserId};
use super::{new_id, StorageError, StorageResult};

/// The columns of a [`Lab`] row, in struct order.
const LAB_COLUMNS: &str = "id, organization_id, name, created_at, connection_generation, online, \
    last_seen_at, agent_version, devices, descriptor";

/// A lab: a set of instruments with one agent.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Lab {
    /// Identifier (UUID text).
    pub id: LabId,
    /// Owning organisation.
    pub organization_id: OrganizationId,
    /// Name, unique within the organisation.
    pub name: String,
    /// Creation time, ms since the Unix epoch.
    pub created_at: i64,
    /// Generation of the newest accepted agent connection.
    pub connection_generation: i64,
    /// Whether the newest connection is open (see [`Lab::is_online`] for the time check).
    pub online: bool,
    /// Last traffic from the agent, ms since the Unix epoch.
    pub last_seen_at: Option<i64>,
    /// The agent's software version from its last `hello`.
    pub agent_version: Option<String>,
    /// JSON array of the devices from the last `hello`.
    pub devices: String,
    /// JSON capability descriptor from the last `hello`.
    pub descriptor: Option<String>,
}

impl Lab {
    /// Online = the newest connection is open and was heard from within `timeout_ms`
    /// (so a server that died without closing its connections does not leave labs online).
    pub fn is_online(&self, now_ms: i64, timeout_ms: i64) -> bool {
        self.online
            && self
                .last_seen_at
                .is_some_and(|seen| now_ms.saturating_sub(seen) <= timeout_ms)
    }
}

/// A lab's agent credential (the secret itself is never stored, only its SHA-256).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AgentCredential {
    /// Identifier, also the public half of the credential.
    pub id: String,
    /// The lab it authenticates.
    pub lab_id: LabId,
    /// Hex SHA-256 of the secret half.
    pub secret_hash: String,
    /// Creation time, ms since the Unix epoch.
    pub created_at: i64,
    /// Revocation time; a revoked credential is refused.
    pub revoked_at: Option<i64>,
}

/// A lab shared with another organisation, with a daily experiment quota.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LabShare {
    /// The lab.
    pub lab_id: LabId,
    /// The organisation it is shared with.
    pub organization_id: OrganizationId,
    /// Experiments and instructions per day that organisation may queue or send.
    pub daily_quota: i64,
    /// Creation time.
    pub created_at: i64,
    /// What the organisation may do on the lab: `view`, `run` (campaigns and experiments) or
    /// `instruct` (also instructions and stops).
    pub rights: String,
}

/// What an agent announced in `hello`.
#[derive(Debug, Clone)]
pub struct AgentHello {
    /// Agent software version.
    pub agent_version: String,
    /// JSON array of devices.
    pub devices_json: String,
    /// JSON capability descriptor, if sent.
    pub descriptor_json: Option<String>,
}

/// The storage port of labs, their agent credentials and presence, and shares with other organisations.
#[async_trait]
pub trait LabStorage {
    /// Creates a lab in an organisation.
    async fn create_lab(
        &self,
        organization_id: &OrganizationId,
        name: &str,
        now_ms: i64,
    ) -> StorageResult<Lab>;
    /// Reads a lab.
    async fn lab(&self, id: &LabId) -> StorageResult<Lab>;
    /// The labs of an organisation, by name.
    async fn labs_of_organization(
        &self,
        organization_id: &OrganizationId,
    ) -> StorageResult<Vec<Lab>>;
    /// Stores a new agent credential for a lab.
    async fn create_agent_credential(
        &self,
        lab_id: &LabId,
        secret_hash: &str,
        now_ms: i64,
    ) -> StorageResult<AgentCredential>;
    /// Reads an agent credential.
    async fn agent_credential(&self, id: &str) -> StorageResult<Option<AgentCredential>>;
    /// Revokes an agent credential; returns false when it was already revoked or absent.
    async fn revoke_agent_credential(&self, id: &str, now_ms: i64) -> StorageResult<bool>;
    /// The agent credentials of a lab, newest first.
    async fn agent_credentials_of_lab(&self, lab_id: &LabId)
        -> StorageResult<Vec<AgentCredential>>;
    /// Records an accepted agent connection held by `replica`; returns its new generation.
    async fn agent_connected(
        &self,
        lab_id: &LabId,
        hello: &AgentHello,
        replica: &str,
        now_ms: i64,
    ) -> StorageResult<i64>;
    /// The replica holding the lab's agent connection, while the lab is online.
    async fn agent_replica(&self, lab_id: &LabId) -> StorageResult<Option<String>>;
    /// Records traffic on a connection; false when `generation` is no longer current.
    async fn agent_seen(&self, lab_id: &LabId, generation: i64, now_ms: i64)
        -> StorageResult<bool>;
    /// Records traffic on many connections at once (`(lab, generation)` pairs, one statement
    /// per few hundred): `current[i]` is false when `agents[i]`'s generation is no longer
    /// current (a newer connection of the lab, on any replica, took over).
    async fn agents_seen(&self, agents: &[(LabId, i64)], now_ms: i64) -> StorageResult<Vec<bool>>;
    /// Records the close of a connection; changes presence only when `generation` is current.
    async fn agent_disconnected(
        &self,
        lab_id: &LabId,
        generation: i64,
        now_ms: i64,
    ) -> StorageResult<bool>;
    /// Shares a lab with an organisation (or changes the quota of an existing share).
    async fn share_lab(
        &self,
        lab_id: &LabId,
        organization_id: &OrganizationId,
        daily_quota: i64,
        rights: &str,
        now_ms: i64,
    ) -> StorageResult<LabShare>;
    /// Ends a share; false when there was none.
    async fn unshare_lab(
        &self,
        lab_id: &LabId,
        organization_id: &OrganizationId,
    ) -> StorageResult<bool>;
    /// The shares of a lab.
    async fn shares_of_lab(&self, lab_id: &LabId) -> StorageResult<Vec<LabShare>>;
    /// The shares granted to an organisation.
    async fn shares_with_organization(
        &self,
        organization_id: &OrganizationId,
    ) -> StorageResult<Vec<LabShare>>;
}

/// `(lab, generation)` pairs per statement in [`LabStorage::agents_seen`].
const SEEN_CHUNK: usize = 500;

#[async_trait]
impl LabStorage for SqlStorage {
    async fn create_lab(
        &self,
        organization_id: &OrganizationId,
        name: &str,
        now_ms: i64,
    ) -> StorageResult<Lab> {
        let sql = format!(
            "INSERT INTO labs (id, organization_id, name, created_at) \
             VALUES ($1, $2, $3, $4) RETURNING {LAB_COLUMNS}"
        );
        self.tx(async |tx| {
            query(&sql)
                .bind(new_id())
                .bind(organization_id)
                .bind(name)
                .bind(now_ms)
                .fetch_one(tx)
                .await
        })
        .await
    }

    async fn lab(&self, id: &LabId) -> StorageResult<Lab> {
        let sql = format!("SELECT {LAB_COLUMNS} FROM labs WHERE id = $1");
        self.tx(async |tx| {
            query(&sql)
                .bind(id)
                .fetch_optional(tx)
                .await?
                .ok_or(StorageError::NotFound)
        })
        .await
    }

    async fn labs_of_organization(
        &self,
        organization_id: &OrganizationId,
    ) -> StorageResult<Vec<Lab>> {
        let sql =
            format!("SELECT {LAB_COLUMNS} FROM labs WHERE organization_id = $1 ORDER BY name, id");
        self.tx(async |tx| query(&sql).bind(organization_id).fetch_all(tx).await)
            .await
    }

    async fn create_agent_credential(
        &self,
        lab_id: &LabId,
        secret_hash: &str,
        now_ms: i64,
    ) -> StorageResult<AgentCredential> {
        self.tx(async |tx| {
            query(
                "INSERT INTO agent_credentials (id, lab_id, secret_hash, created_at) \
                 VALUES ($1, $2, $3, $4) \
                 RETURNING id, lab_id, secret_hash, created_at, revoked_at",
            )
            .bind(new_id())
            .bind(lab_id)
            .bind(secret_hash)
            .bind(now_ms)
            .fetch_one(tx)
            .await
        })
        .await
    }

    async fn agent_credential(&self, id: &str) -> StorageResult<Option<AgentCredential>> {
        self.tx(async |tx| {
            query(
                "SELECT id, lab_id, secret_hash, created_at, revoked_at \
                 FROM agent_credentials WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(tx)
            .await
        })
        .await
    }

    async fn revoke_agent_credential(&self, id: &str, now_ms: i64) -> StorageResult<bool> {
        self.tx(async |tx| {
            let done = query(
                "UPDATE agent_credentials SET revoked_at = $2 \
                 WHERE id = $1 AND revoked_at IS NULL",
            )
            .bind(id)
            .bind(now_ms)
            .execute(tx)
            .await?;
            Ok(done == 1)
        })
        .await
    }

    async fn agent_credentials_of_lab(
        &self,
        lab_id: &LabId,
    ) -> StorageResult<Vec<AgentCredential>> {
        self.tx(async |tx| {
            query(
                "SELECT id, lab_id, secret_hash, created_at, revoked_at \
                 FROM agent_credentials WHERE lab_id = $1 ORDER BY created_at DESC, id",
            )
            .bind(lab_id)
            .fetch_all(tx)
            .await
        })
        .await
    }

    async fn agent_connected(
        &self,
        lab_id: &LabId,
        hello: &AgentHello,
        replica: &str,
        now_ms: i64,
    ) -> StorageResult<i64> {
        self.tx(async |tx| {
            let (generation,): (i64,) = query(
                "UPDATE labs SET connection_generation = connection_generation + 1, \
                 online = TRUE, last_seen_at = $2, agent_version = $3, devices = $4, \
                 descriptor = $5, connected_replica = $6 WHERE id = $1 \
                 RETURNING connection_generation",
            )
            .bind(lab_id)
            .bind(now_ms)
            .bind(&hello.agent_version)
            .bind(&hello.devices_json)
            .bind(hello.descriptor_json.as_deref())
            .bind(replica)
            .fetch_optional(tx)
            .await?
            .ok_or(StorageError::NotFound)?;
            Ok(generation)
        })
        .await
    }

    async fn agent_replica(&self, lab_id: &LabId) -> StorageResult<Option<String>> {
        self.tx(async |tx| {
            let row: Option<(Option<String>,)> =
                query("SELECT connected_replica FROM labs WHERE id = $1 AND online = TRUE")
                    .bind(lab_id)
                    .fetch_optional(tx)
                    .await?;
            Ok(row.and_then(|r| r.0))
        })
        .await
    }

    async fn agents_seen(&self, agents: &[(LabId, i64)], now_ms: i64) -> StorageResult<Vec<bool>> {
        if agents.is_empty() {
            return Ok(Vec::new());
        }
        self.tx(async |tx| {
            let mut current: HashSet<(String, i64)> = HashSet::new();
            for chunk in agents.chunks(SEEN_CHUNK) {
                let pairs: Vec<String> = (0..chunk.len())
                    .map(|i| format!("(${}, ${})", 2 * i + 2, 2 * i + 3))
                    .collect();
                let text = format!(
                    "UPDATE labs SET last_seen_at = $1 \
                     WHERE (id, connection_generation) IN (VALUES {}) \
                     RETURNING id, connection_generation",
                    pairs.join(", ")
                );
                let mut q = query(&text).bind(now_ms);
                for (lab_id, generation) in chunk {
                    q = q.bind(lab_id.as_str()).bind(*generation);
                }
                let rows: Vec<(String, i64)> = q.fetch_all(tx).await?;
                current.extend(rows);
            }
            Ok(agents
                .iter()
                .map(|(lab_id, generation)| {
                    current.contains(&(lab_id.as_str().to_owned(), *generation))
                })
                .collect())
        })
        .await
    }

    async fn agent_seen(
        &self,
        lab_id: &LabId,
        generation: i64,
        now_ms: i64,
    ) -> StorageResult<bool> {
        self.tx(async |tx| {
            let done = query(
                "UPDATE labs SET last_seen_at = $3 \
                 WHERE id = $1 AND connection_generation = $2",
            )
            .bind(lab_id)
            .bind(generation)
            .bind(now_ms)
            .execute(tx)
            .await?;
            Ok(done == 1)
        })
        .await
    }

    async fn agent_disconnected(
        &self,
        lab_id: &LabId,
        generation: i64,
        now_ms: i64,
    ) -> StorageResult<bool> {
        self.tx(async |tx| {
            let done = query(
                "UPDATE labs SET online = FALSE, last_seen_at = $3 \
                 WHERE id = $1 AND connection_generation = $2 AND online = TRUE",
            )
            .bind(lab_id)
            .bind(generation)
            .bind(now_ms)
            .execute(tx)
            .await?;
            Ok(done == 1)
        })
        .await
    }

    async fn share_lab(
        &self,
        lab_id: &LabId,
        organization_id: &OrganizationId,
        daily_quota: i64,
        rights: &str,
        now_ms: i64,
    ) -> StorageResult<LabShare> {
        self.tx(async |tx| {
            query(
                "INSERT INTO lab_shares (lab_id, organization_id, daily_quota, created_at, rights) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (lab_id, organization_id) \
                 DO UPDATE SET daily_quota = excluded.daily_quota, rights = excluded.rights \
                 RETURNING lab_id, organization_id, daily_quota, created_at, rights",
            )
            .bind(lab_id)
            .bind(organization_id)
            .bind(daily_quota)
            .bind(now_ms)
            .bind(rights)
            .fetch_one(tx)
            .await
        })
        .await
    }

    async fn unshare_lab(
        &self,
        lab_id: &LabId,
        organization_id: &OrganizationId,
    ) -> StorageResult<bool> {
        self.tx(async |tx| {
            let done = query("DELETE FROM lab_shares WHERE lab_id = $1 AND organization_id = $2")
                .bind(lab_id)
                .bind(organization_id)
                .execute(tx)
                .await?;
            Ok(done == 1)
        })
        .await
    }

    async fn shares_of_lab(&self, lab_id: &LabId) -> StorageResult<Vec<LabShare>> {
        self.tx(async |tx| {
            query(
                "SELECT lab_id, organization_id, daily_quota, created_at, rights FROM lab_shares \
                 WHERE lab_id = $1 ORDER BY created_at, organization_id",
            )
            .bind(lab_id)
            .fetch_all(tx)
            .await
        })
        .await
    }

    async fn shares_with_organization(
        &self,
        organization_id: &OrganizationId,
    ) -> StorageResult<Vec<LabShare>> {
        self.tx(async |tx| {
            query(
                "SELECT lab_id, organization_id, daily_quota, created_at, rights FROM lab_shares \
                 WHERE organization_id = $1 ORDER BY created_at, lab_id",
            )
            .bind(organization_id)
            .fetch_all(tx)
            .await
        })
        .await
    }
}
