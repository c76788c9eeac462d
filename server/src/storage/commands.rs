//! Storage of instructions queued for a lab's agent (the [`CommandStorage`] port, a supertrait
//! of [`super::Storage`]).
//!
//! Invariants (docs/reliability.md rule 5):
//! - a command moves forward only: `queued → sent → succeeded | failed`, `queued | sent →
//!   timed_out`, `queued → canceled`; every transition is one guarded `UPDATE … WHERE state IN
//!   (…)`, so a terminal state never changes and two dispatchers cannot both claim a command;
//! - a command is claimed (`queued → sent`) only before its deadline; one still `queued` at its
//!   deadline becomes `timed_out` and is never sent;
//! - `sent` may be sent again with the same id (after a server restart): the agent refuses an
//!   id it already accepted, so hardware runs it at most once.

use async_trait::async_trait;

use super::db::{query, SqlStorage};
#[allow(unused_imports)]
use super::ids::{CampaignId, CommandId, ExperimentId, LabId, OrganizationId, SessionId, UserId};
use super::states::CommandState;
use super::{StorageError, StorageResult};

/// Columns, in [`LabCommand`] order.
const COLS: &str = "id, organization_id, lab_id, method, params_json, program_json, state, \
    created_by, created_at, deadline_at, sent_at, attempts, finished_at, result_json, error";

/// A stored command.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LabCommand {
    pub id: CommandId,
    /// The organisation that queued it.
    pub organization_id: OrganizationId,
    pub lab_id: LabId,
    /// `SYMBOL.method` as in the capability descriptor.
    pub method: String,
    /// Its parameters (JSON object of numbers).
    pub params_json: String,
    /// The one-step program sent to the agent (its program id is this command's id).
    pub program_json: String,
    /// Where it is (see [`CommandState`]).
    #[sqlx(try_from = "String")]
    pub state: CommandState,
    pub created_by: String,
    pub created_at: i64,
    /// Not accepted by the agent by then: `timed_out`, never executed.
    pub deadline_at: i64,
    pub sent_at: Option<i64>,
    /// How many times it was sent.
    pub attempts: i64,
    pub finished_at: Option<i64>,
    /// The agent's report (JSON), when finished.
    pub result_json: Option<String>,
    pub error: Option<String>,
}

impl LabCommand {
    /// Whether the state is final.
    pub fn is_final(&self) -> bool {
        self.state.is_final()
    }
}

/// A command to queue.
#[derive(Debug, Clone)]
pub struct NewLabCommand {
    pub organization_id: OrganizationId,
    pub lab_id: LabId,
    pub method: String,
    pub params_json: String,
    pub program_json: String,
    pub created_by: String,
    pub deadline_at: i64,
}

/// The terminal states a dispatcher may set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandEnd {
    Succeeded,
    Failed,
    TimedOut,
    Canceled,
}

impl CommandEnd {
    /// The state it sets.
    pub fn state(self) -> CommandState {
        match self {
            CommandEnd::Succeeded => CommandState::Succeeded,
            CommandEnd::Failed => CommandState::Failed,
            CommandEnd::TimedOut => CommandState::TimedOut,
            CommandEnd::Canceled => CommandState::Canceled,
        }
    }

    /// The stored state.
    pub fn as_str(self) -> &'static str {
        self.state().as_str()
    }
}

/// Command storage port.
#[async_trait]
pub trait CommandStorage {
    /// Queues a command.
    async fn create_command(&self, c: &NewLabCommand, now_ms: i64) -> StorageResult<LabCommand>;
    /// Reads one command.
    async fn command(&self, id: &CommandId) -> StorageResult<LabCommand>;
    /// A lab's commands, newest first, at most `limit`.
    async fn commands_of_lab(&self, lab_id: &LabId, limit: i64) -> StorageResult<Vec<LabCommand>>;
    /// Commands still open (`queued` or `sent`), oldest first, at most 1,000: the dispatcher's
    /// work list (the API caps open commands per lab, so every lab's oldest is in it).
    async fn open_commands(&self) -> StorageResult<Vec<LabCommand>>;
    /// `queued → sent` if the deadline is still ahead, or a re-send of `sent` (whatever the
    /// deadline: the agent answers whether it had accepted it); counts the attempt. Returns the
    /// command when claimed.
    async fn claim_command(&self, id: &CommandId, now_ms: i64)
        -> StorageResult<Option<LabCommand>>;
    /// Moves an open command to a terminal state (guarded: see [`CommandEnd`]); false when it
    /// was not in a state that may move there.
    async fn finish_command(
        &self,
        id: &CommandId,
        end: CommandEnd,
        result_json: Option<&str>,
        error: Option<&str>,
        now_ms: i64,
    ) -> StorageResult<bool>;
    /// Every `queued` command whose deadline has passed becomes `timed_out`; returns them.
    async fn expire_commands(&self, now_ms: i64) -> StorageResult<Vec<LabCommand>>;
    /// Records a direct instruction (`sendInstruction`, `stopLab`) sent to a lab on behalf of
    /// an organisation.
    async fn record_instruction(
        &self,
        lab_id: &LabId,
        organization_id: &OrganizationId,
        created_by: &str,
        method: &str,
        now_ms: i64,
    ) -> StorageResult<()>;
    /// Instructions an organisation sent or queued to a lab since `since_ms` (direct ones and
    /// queued commands; software stops are recorded but not counted), for its daily quota on a
    /// shared lab.
    async fn instructions_since(
        &self,
        lab_id: &LabId,
        organization_id: &OrganizationId,
        since_ms: i64,
    ) -> StorageResult<i64>;
    /// Commands of an organisation still open (`queued` or `sent`) on a lab.
    async fn open_commands_of_org(
        &self,
        lab_id: &LabId,
        organization_id: &OrganizationId,
    ) -> StorageResult<i64>;
}

#[async_trait]
impl CommandStorage for SqlStorage {
    async fn create_command(&self, c: &NewLabCommand, now_ms: i64) -> StorageResult<LabCommand> {
        let sql = format!(
            "INSERT INTO lab_commands (id, organization_id, lab_id, method, params_json, \
             program_json, state, created_by, created_at, deadline_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $9) RETURNING {COLS}"
        );
        self.tx(async |tx| {
            query(&sql)
                .bind(crate::storage::new_id())
                .bind(&c.organization_id)
                .bind(&c.lab_id)
                .bind(&c.method)
                .bind(&c.params_json)
                .bind(&c.program_json)
                .bind(&c.created_by)
                .bind(now_ms)
                .bind(c.deadline_at)
                .fetch_one(tx)
                .await
        })
        .await
    }

    async fn command(&self, id: &CommandId) -> StorageResult<LabCommand> {
        let sql = format!("SELECT {COLS} FROM lab_commands WHERE id = $1");
        self.tx(async |tx| {
            query(&sql)
                .bind(id)
                .fetch_optional(tx)
                .await?
                .ok_or(StorageError::NotFound)
        })
        .await
    }

    async fn commands_of_lab(&self, lab_id: &LabId, limit: i64) -> StorageResult<Vec<LabCommand>> {
        let sql = format!(
            "SELECT {COLS} FROM lab_commands WHERE lab_id = $1 \
             ORDER BY created_at DESC, id DESC LIMIT $2"
        );
        self.tx(async |tx| {
            query(&sql)
                .bind(lab_id)
                .bind(limit.clamp(1, 1000))
                .fetch_all(tx)
                .await
        })
        .await
    }

    async fn open_commands(&self) -> StorageResult<Vec<LabCommand>> {
        let sql = format!(
            "SELECT {COLS} FROM lab_commands WHERE state IN ('queued', 'sent') \
             ORDER BY created_at, id LIMIT 1000"
        );
        self.tx(async |tx| query(&sql).fetch_all(tx).await).await
    }

    async fn claim_command(
        &self,
        id: &CommandId,
        now_ms: i64,
    ) -> StorageResult<Option<LabCommand>> {
        let sql = format!(
            "UPDATE lab_commands SET state = 'sent', sent_at = $2, \
             attempts = attempts + 1 \
             WHERE id = $1 \
             AND ((state = 'queued' AND deadline_at > $2) OR state = 'sent') \
             RETURNING {COLS}"
        );
        self.tx(async |tx| query(&sql).bind(id).bind(now_ms).fetch_optional(tx).await)
            .await
    }

    async fn finish_command(
        &self,
        id: &CommandId,
        end: CommandEnd,
        result_json: Option<&str>,
        error: Option<&str>,
        now_ms: i64,
    ) -> StorageResult<bool> {
        let sql = format!(
            "UPDATE lab_commands SET state = $2, finished_at = $3, result_json = $4, \
             error = $5 WHERE id = $1 AND state IN ({})",
            CommandState::sources_sql(end.state())
        );
        self.tx(async |tx| {
            let done = query(&sql)
                .bind(id)
                .bind(end.as_str())
                .bind(now_ms)
                .bind(result_json)
                .bind(error)
                .execute(tx)
                .await?;
            Ok(done == 1)
        })
        .await
    }

    async fn record_instruction(
        &self,
        lab_id: &LabId,
        organization_id: &OrganizationId,
        created_by: &str,
        method: &str,
        now_ms: i64,
    ) -> StorageResult<()> {
        self.tx(async |tx| {
            query(
                "INSERT INTO lab_instructions \
                 (id, lab_id, organization_id, created_by, method, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(crate::storage::new_id())
            .bind(lab_id)
            .bind(organization_id)
            .bind(created_by)
            .bind(method)
            .bind(now_ms)
            .execute(tx)
            .await?;
            Ok(())
        })
        .await
    }

    async fn instructions_since(
        &self,
        lab_id: &LabId,
        organization_id: &OrganizationId,
        since_ms: i64,
    ) -> StorageResult<i64> {
        self.tx(async |tx| {
            let row: (i64, i64) = query(
                "SELECT \
                 (SELECT COUNT(*) FROM lab_instructions WHERE lab_id = $1 \
                  AND organization_id = $2 AND created_at >= $3 AND method <> 'estop'), \
                 (SELECT COUNT(*) FROM lab_commands WHERE lab_id = $1 \
                  AND organization_id = $2 AND created_at >= $3)",
            )
            .bind(lab_id)
            .bind(organization_id)
            .bind(since_ms)
            .fetch_one(tx)
            .await?;
            Ok(row.0 + row.1)
        })
        .await
    }

    async fn open_commands_of_org(
        &self,
        lab_id: &LabId,
        organization_id: &OrganizationId,
    ) -> StorageResult<i64> {
        self.tx(async |tx| {
            let row: (i64,) = query(
                "SELECT COUNT(*) FROM lab_commands WHERE lab_id = $1 \
                 AND organization_id = $2 AND state IN ('queued', 'sent')",
            )
            .bind(lab_id)
            .bind(organization_id)
            .fetch_one(tx)
            .await?;
            Ok(row.0)
        })
        .await
    }

    async fn expire_commands(&self, now_ms: i64) -> StorageResult<Vec<LabCommand>> {
        let sql = format!(
            "UPDATE lab_commands SET state = 'timed_out', finished_at = $1, \
             error = 'the deadline passed before the agent accepted it' \
             WHERE state = 'queued' AND deadline_at <= $1 RETURNING {COLS}"
        );
        self.tx(async |tx| query(&sql).bind(now_ms).fetch_all(tx).await)
            .await
    }
}
