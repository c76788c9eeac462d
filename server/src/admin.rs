//! Operator commands that act on the database directly (no HTTP): creating a lab with its agent
//! credential until enrollment exists.

use std::path::Path;

use anyhow::Context as _;
use maosic_schema::protocol::AgentCredentialFile;
use serde_json::json;

use crate::agents::{hash_secret, new_secret};
use crate::storage::{now_ms, LabId, NewAuditEntry, OrganizationId, Storage};

/// What `admin create-lab` made.
#[derive(Debug)]
pub struct CreatedLab {
    /// The organisation (found or created).
    pub organization_id: OrganizationId,
    /// The new lab.
    pub lab_id: LabId,
    /// The new credential (secret included, shown once).
    pub credential: AgentCredentialFile,
}

/// Creates a lab in the named organisation (creating the organisation when it does not exist)
/// and an agent credential for it; records both in the audit log.
pub async fn create_lab(
    storage: &dyn Storage,
    organization: &str,
    lab_name: &str,
) -> anyhow::Result<CreatedLab> {
    let organization = organization.trim();
    let lab_name = lab_name.trim();
    anyhow::ensure!(!organization.is_empty(), "--org must not be empty");
    anyhow::ensure!(!lab_name.is_empty(), "--name must not be empty");
    let now = now_ms();
    let org = match storage.organization_by_name(organization).await? {
        Some(org) => org,
        None => storage.create_organization(organization, now).await?,
    };
    let lab = storage
        .create_lab(&org.id, lab_name, now)
        .await
        .with_context(|| format!("cannot create lab {lab_name:?} in {organization:?}"))?;
    let secret = new_secret();
    let credential = storage
        .create_agent_credential(&lab.id, &hash_secret(&secret), now)
        .await?;
    storage
        .append_audit(
            &NewAuditEntry {
                organization_id: Some(org.id.clone()),
                actor: "cli".into(),
                action: "lab.create".into(),
                target: format!("lab:{}", lab.id),
                detail: json!({ "name": lab.name, "credential_id": credential.id }),
                source: None,
            },
            now,
        )
        .await?;
    Ok(CreatedLab {
        organization_id: org.id,
        lab_id: lab.id.clone(),
        credential: AgentCredentialFile {
            lab_id: lab.id.into_string(),
            credential_id: credential.id,
            secret,
        },
    })
}

/// Writes a credential file readable only by its owner.
pub fn write_credential_file(path: &Path, credential: &AgentCredentialFile) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(credential)?;
    #[cfg(unix)]
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        file.write_all(text.as_bytes())?;
    }
    #[cfg(not(unix))]
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Registers an SSH public key for a lab (the SSH endpoint then accepts it for the SSH user
/// named like the lab); audited. Returns the stored row.
pub async fn add_lab_ssh_key(
    storage: &dyn Storage,
    lab_id: &str,
    public_key: &str,
) -> anyhow::Result<crate::storage::LabSshKey> {
    let lab_id = lab_id.trim();
    let lab = storage
        .lab(&lab_id.into())
        .await
        .with_context(|| format!("no lab {lab_id:?}"))?;
    let new = crate::agents::ssh::new_lab_key(&lab.id, public_key)?;
    let now = now_ms();
    let key = storage
        .add_lab_ssh_key(&new, now)
        .await
        .map_err(|e| match e {
            crate::storage::StorageError::Conflict(_) => anyhow::anyhow!(
                "the key {} is already registered (keys in force belong to one lab)",
                new.fingerprint
            ),
            other => other.into(),
        })?;
    storage
        .append_audit(
            &NewAuditEntry {
                organization_id: Some(lab.organization_id.clone()),
                actor: "cli".into(),
                action: "lab.ssh_key.add".into(),
                target: format!("lab:{}", lab.id),
                detail: json!({ "fingerprint": key.fingerprint, "algorithm": key.algorithm, "comment": key.comment }),
                source: None,
            },
            now,
        )
        .await?;
    Ok(key)
}

/// Revokes a lab's SSH key by fingerprint (`SHA256:…`); audited. False when the lab had no
/// such key in force.
pub async fn revoke_lab_ssh_key(
    storage: &dyn Storage,
    lab_id: &str,
    fingerprint: &str,
) -> anyhow::Result<bool> {
    let lab = storage
        .lab(&lab_id.trim().into())
        .await
        .with_context(|| format!("no lab {lab_id:?}"))?;
    let now = now_ms();
    let revoked = storage
        .revoke_lab_ssh_key(&lab.id, fingerprint.trim(), now)
        .await?;
    if revoked {
        storage
            .append_audit(
                &NewAuditEntry {
                    organization_id: Some(lab.organization_id.clone()),
                    actor: "cli".into(),
                    action: "lab.ssh_key.revoke".into(),
                    target: format!("lab:{}", lab.id),
                    detail: json!({ "fingerprint": fingerprint.trim() }),
                    source: None,
                },
                now,
            )
            .await?;
    }
    Ok(revoked)
}
