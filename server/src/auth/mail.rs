//! Outgoing mail: resolvers queue mail in the database (`mail_outbox`, in the same transaction
//! as what it announces); one task per server claims queued mail with a lease and delivers it.
//! The only deliverer so far is the development mailer (`[mail] outbox_file`): each mail is
//! appended to that file as one JSON line. Without it this process delivers nothing and mail
//! waits in the outbox. The same task prunes expired throttle rows and sign-up requests.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::Notify;

use crate::state::AppState;
use crate::storage::{now_ms, NewMail, OutboxMail};

/// How long a claimed mail stays leased to one deliverer.
const LEASE_MS: i64 = 60_000;
/// Deliveries tried per mail before it is left alone (logged).
const MAX_ATTEMPTS: i64 = 5;

/// Wakes the mailer when mail was queued (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct MailWake(Arc<Notify>);

impl MailWake {
    /// Tells the mailer there is mail.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// Errors of delivery.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The outbox file could not be written.
    #[error("cannot write the outbox file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The verification mail of a sign-up.
pub fn verification_mail(email: &str, token: &str, ttl_secs: u64) -> NewMail {
    NewMail {
        recipient: email.to_owned(),
        subject: "Verify your MAOSIC account".into(),
        body: format!(
            "Someone (hopefully you) signed up to MAOSIC with this address.\n\n\
             To create the account, verify the address with this token (valid {} hours):\n\n\
             {token}\n\n\
             (GraphQL: mutation {{ verifyEmail(token: \"...\") {{ accessToken }} }}, or paste it \
             on the portal's sign-up page.)\n\
             If it was not you, ignore this mail: no account is created.\n",
            ttl_secs.div_ceil(3600)
        ),
    }
}

/// The mail a sign-up for an already registered address sends instead (the API answers the
/// same in both cases; only the owner of the address learns which one it was).
pub fn already_registered_mail(email: &str) -> NewMail {
    NewMail {
        recipient: email.to_owned(),
        subject: "Your MAOSIC account".into(),
        body: "Someone (hopefully you) tried to sign up to MAOSIC with this address, which \
               already has an account. Log in with your password instead.\n\
               If it was not you, nothing has changed and you can ignore this mail.\n"
            .into(),
    }
}

/// Appends one mail to the development outbox file.
fn write_to_file(path: &PathBuf, from: &str, mail: &OutboxMail) -> Result<(), MailError> {
    let line = json!({
        "id": mail.id,
        "from": from,
        "to": mail.recipient,
        "subject": mail.subject,
        "body": mail.body,
        "created_at": mail.created_at,
    });
    let fail = |source| MailError::File {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(fail)?;
    // One write of the whole line, so concurrent writers do not interleave within a line.
    file.write_all(format!("{line}\n").as_bytes())
        .map_err(fail)?;
    file.sync_data().map_err(fail)
}

/// Delivers what is queued now; returns how many mails went out.
async fn deliver_queued(state: &AppState, path: &Path) -> usize {
    let mut sent = 0;
    loop {
        let claimed = state.storage.claim_mail(now_ms(), LEASE_MS).await;
        let mail = match claimed {
            Ok(Some(m)) => m,
            Ok(None) => return sent,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim outgoing mail");
                return sent;
            }
        };
        if mail.attempts > MAX_ATTEMPTS {
            tracing::error!(mail.id = %mail.id, "mail not delivered after {MAX_ATTEMPTS} attempts; left in the outbox");
            continue;
        }
        let (p, from, m) = (
            path.to_path_buf(),
            state.config.mail.from.clone(),
            mail.clone(),
        );
        let written = tokio::task::spawn_blocking(move || write_to_file(&p, &from, &m)).await;
        match written {
            Ok(Ok(())) => {
                if let Err(e) = state.storage.mark_mail_sent(&mail.id, now_ms()).await {
                    // Delivered but not marked: it goes out again after the lease (at least once).
                    tracing::warn!(mail.id = %mail.id, error = %e, "cannot mark mail sent");
                }
                tracing::info!(mail.id = %mail.id, "mail delivered to the outbox file");
                sent += 1;
            }
            Ok(Err(e)) => {
                tracing::warn!(mail.id = %mail.id, error = %e, "mail delivery failed; retried after the lease");
                return sent;
            }
            Err(e) => {
                tracing::warn!(mail.id = %mail.id, error = %e, "mail delivery task failed");
                return sent;
            }
        }
    }
}

/// Starts the mailer (and throttle pruning) of this process.
pub fn spawn(state: AppState) -> tokio::task::JoinHandle<()> {
    let path = (!state.config.mail.outbox_file.trim().is_empty())
        .then(|| PathBuf::from(state.config.mail.outbox_file.trim()));
    if path.is_none() {
        tracing::warn!(
            "mail.outbox_file is not set: this process delivers no mail (sign-up verification \
             tokens stay queued in mail_outbox)"
        );
    }
    let poll = Duration::from_millis(state.config.mail.poll_ms.max(10));
    // Platform work, explicitly: a task outside any tenant scope sees nothing.
    tokio::spawn(crate::storage::tenant::system(async move {
        let mut last_prune = 0_i64;
        loop {
            if let Some(path) = &path {
                deliver_queued(&state, path).await;
            }
            let now = now_ms();
            if now.saturating_sub(last_prune) > 60_000 {
                last_prune = now;
                let before = now.saturating_sub(state.auth.limiter.longest_window_ms());
                if let Err(e) =
                    crate::storage::tenant::system(state.storage.prune_auth(before, now)).await
                {
                    tracing::warn!(error = %e, "cannot prune the attempt throttle");
                }
            }
            let _ = tokio::time::timeout(poll, state.mail_wake.0.notified()).await;
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mails_are_one_json_line_each_and_carry_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.jsonl");
        let token = "mvt_abc.def";
        let new = verification_mail("a@x.example", token, 86_400);
        for id in ["1", "2"] {
            let mail = OutboxMail {
                id: id.into(),
                recipient: new.recipient.clone(),
                subject: new.subject.clone(),
                body: new.body.clone(),
                created_at: 5,
                attempts: 1,
            };
            write_to_file(&path, "maosic@localhost", &mail).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["to"], "a@x.example");
        assert!(lines[1]["body"].as_str().unwrap().contains(token));
        assert!(!already_registered_mail("a@x.example").body.contains("mvt_"));
    }
}
