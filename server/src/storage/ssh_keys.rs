//! Storage of the SSH public keys registered for labs (the [`SshKeyStorage`] port, a supertrait
//! of [`super::Storage`]): the only keys the SSH endpoint accepts.
//!
//! Invariants: a key in force (not revoked) belongs to exactly one lab (unique fingerprint
//! among the keys in force); a key is accepted only while it is in force *and* its lab still has
//! an agent credential in force, so revoking a lab's credentials also closes its SSH door.

use async_trait::async_trait;

use super::db::{query, SqlStorage};
#[allow(unused_imports)]
use super::ids::{CampaignId, CommandId, ExperimentId, LabId, OrganizationId, SessionId, UserId};
use super::StorageResult;

/// Columns, in [`LabSshKey`] order.
const COLS: &str =
    "id, lab_id, algorithm, public_key, fingerprint, comment, created_at, revoked_at";

/// A registered SSH public key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LabSshKey {
    /// Identifier (UUID text).
    pub id: String,
    /// The lab it authenticates.
    pub lab_id: LabId,
    /// SSH algorithm name (`ssh-ed25519`, `ecdsa-sha2-nistp256`, …).
    pub algorithm: String,
    /// The key in OpenSSH format without its comment (`ssh-ed25519 AAAA…`).
    pub public_key: String,
    /// OpenSSH SHA-256 fingerprint (`SHA256:…`).
    pub fingerprint: String,
    /// The comment given at registration (for people; never used for matching).
    pub comment: String,
    /// Registration time, ms since the Unix epoch.
    pub created_at: i64,
    /// Revocation time; a revoked key is refused.
    pub revoked_at: Option<i64>,
}

/// A key to register.
#[derive(Debug, Clone)]
pub struct NewLabSshKey {
    /// The lab.
    pub lab_id: LabId,
    /// SSH algorithm name.
    pub algorithm: String,
    /// OpenSSH format without comment.
    pub public_key: String,
    /// OpenSSH SHA-256 fingerprint.
    pub fingerprint: String,
    /// Comment.
    pub comment: String,
}

/// SSH key storage port.
#[async_trait]
pub trait SshKeyStorage {
    /// Registers a key for a lab; `Conflict` when a key in force has the same fingerprint
    /// (whatever lab it belongs to) or the lab does not exist.
    async fn add_lab_ssh_key(&self, key: &NewLabSshKey, now_ms: i64) -> StorageResult<LabSshKey>;
    /// The keys of a lab (revoked ones included), oldest first.
    async fn ssh_keys_of_lab(&self, lab_id: &LabId) -> StorageResult<Vec<LabSshKey>>;
    /// The key in force with this fingerprint, if its lab still has an agent credential in
    /// force; `None` otherwise (unknown, revoked, or the lab's credentials all revoked).
    async fn accepted_ssh_key(&self, fingerprint: &str) -> StorageResult<Option<LabSshKey>>;
    /// Revokes a lab's key in force by fingerprint; false when there was none.
    async fn revoke_lab_ssh_key(
        &self,
        lab_id: &LabId,
        fingerprint: &str,
        now_ms: i64,
    ) -> StorageResult<bool>;
}

#[async_trait]
impl SshKeyStorage for SqlStorage {
    async fn add_lab_ssh_key(&self, key: &NewLabSshKey, now_ms: i64) -> StorageResult<LabSshKey> {
        let sql = format!(
            "INSERT INTO lab_ssh_keys \
             (id, lab_id, algorithm, public_key, fingerprint, comment, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLS}"
        );
        self.tx(async |tx| {
            query(&sql)
                .bind(crate::storage::new_id())
                .bind(&key.lab_id)
                .bind(&key.algorithm)
                .bind(&key.public_key)
                .bind(&key.fingerprint)
                .bind(&key.comment)
                .bind(now_ms)
                .fetch_one(tx)
                .await
        })
        .await
    }

    async fn ssh_keys_of_lab(&self, lab_id: &LabId) -> StorageResult<Vec<LabSshKey>> {
        let sql =
            format!("SELECT {COLS} FROM lab_ssh_keys WHERE lab_id = $1 ORDER BY created_at, id");
        self.tx(async |tx| query(&sql).bind(lab_id).fetch_all(tx).await)
            .await
    }

    async fn accepted_ssh_key(&self, fingerprint: &str) -> StorageResult<Option<LabSshKey>> {
        let sql = format!(
            "SELECT {COLS} FROM lab_ssh_keys k \
             WHERE k.fingerprint = $1 AND k.revoked_at IS NULL \
             AND EXISTS (SELECT 1 FROM agent_credentials c \
                         WHERE c.lab_id = k.lab_id AND c.revoked_at IS NULL)"
        );
        self.tx(async |tx| query(&sql).bind(fingerprint).fetch_optional(tx).await)
            .await
    }

    async fn revoke_lab_ssh_key(
        &self,
        lab_id: &LabId,
        fingerprint: &str,
        now_ms: i64,
    ) -> StorageResult<bool> {
        self.tx(async |tx| {
            let done = query(
                "UPDATE lab_ssh_keys SET revoked_at = $3 \
                 WHERE lab_id = $1 AND fingerprint = $2 AND revoked_at IS NULL",
            )
            .bind(lab_id)
            .bind(fingerprint)
            .bind(now_ms)
            .execute(tx)
            .await?;
            Ok(done == 1)
        })
        .await
    }
}
