//! The public GraphQL API: schema assembly, the query root, and the one place where internal
//! errors become client errors with stable codes (internal text never reaches a client).

use async_graphql::{
    Context, EmptyMutation, EmptySubscription, ErrorExtensions, Object, Schema, SimpleObject, ID,
};

use crate::state::AppState;
use crate::storage::{self, StorageError};

/// The server's GraphQL schema type.
pub type ApiSchema = Schema<QueryRoot, EmptyMutation, EmptySubscription>;

/// Builds the schema; `state` is `None` only for printing the SDL.
pub fn build_schema(state: Option<AppState>) -> ApiSchema {
    let builder = Schema::build(QueryRoot, EmptyMutation, EmptySubscription);
    match state {
        Some(state) => builder.data(state).finish(),
        None => builder.finish(),
    }
}

/// The schema in SDL, exactly as committed in `schema/schema.graphql`.
pub fn sdl() -> String {
    build_schema(None).sdl()
}

/// Client-facing errors, each with a stable machine-readable code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Something failed inside the server; details are logged, not returned.
    #[error("internal error")]
    Internal,
    /// The input is malformed.
    #[error("{0}")]
    BadInput(String),
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::Internal => "INTERNAL",
            ApiError::BadInput(_) => "BAD_USER_INPUT",
        }
    }
}

impl ErrorExtensions for ApiError {
    fn extend(&self) -> async_graphql::Error {
        let code = self.code();
        async_graphql::Error::new(self.to_string()).extend_with(|_, ext| ext.set("code", code))
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        tracing::error!(error = %e, "storage error in a resolver");
        ApiError::Internal
    }
}

fn state<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a AppState> {
    ctx.data::<AppState>()
        .map_err(|_| ApiError::Internal.extend())
}

/// Root of all queries.
pub struct QueryRoot;

#[Object(name = "Query")]
impl QueryRoot {
    /// The server's name and version.
    async fn server_info(&self) -> ServerInfo {
        ServerInfo {
            name: "maosic".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// One lab by id; null when it does not exist.
    async fn lab(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<LabNode>> {
        let state = state(ctx)?;
        if uuid::Uuid::parse_str(&id).is_err() {
            return Ok(None);
        }
        match state.storage.lab(&id).await {
            Ok(lab) => Ok(Some(LabNode::new(lab, state))),
            Err(StorageError::NotFound) => Ok(None),
            Err(e) => Err(ApiError::from(e).extend()),
        }
    }
}

/// Server name and version.
#[derive(SimpleObject)]
pub struct ServerInfo {
    /// Always `maosic`.
    pub name: String,
    /// The server's version.
    pub version: String,
}

/// A lab and its agent's presence.
pub struct LabNode {
    lab: storage::Lab,
    online: bool,
}

impl LabNode {
    fn new(lab: storage::Lab, state: &AppState) -> Self {
        let timeout =
            i64::try_from(state.config.agent.dead_after().as_millis()).unwrap_or(i64::MAX);
        let online = lab.is_online(storage::now_ms(), timeout);
        LabNode { lab, online }
    }
}

/// A device the lab's agent announced.
#[derive(SimpleObject)]
pub struct Device {
    /// The device's symbol in recipes (e.g. `H`).
    pub name: String,
    /// Its kind (e.g. `heater`).
    pub kind: String,
}

#[Object(name = "Lab")]
impl LabNode {
    /// Identifier.
    async fn id(&self) -> ID {
        ID(self.lab.id.clone())
    }

    /// Name, unique within the organisation.
    async fn name(&self) -> &str {
        &self.lab.name
    }

    /// The owning organisation's id.
    async fn organization_id(&self) -> ID {
        ID(self.lab.organization_id.clone())
    }

    /// Whether the lab's agent is connected now.
    async fn online(&self) -> bool {
        self.online
    }

    /// Last time the agent was heard from (RFC 3339, UTC).
    async fn last_seen_at(&self) -> Option<String> {
        self.lab.last_seen_at.map(rfc3339_ms)
    }

    /// The agent's software version from its last hello.
    async fn agent_version(&self) -> Option<&str> {
        self.lab.agent_version.as_deref()
    }

    /// Generation of the newest agent connection (increases with each reconnect).
    async fn connection_generation(&self) -> i64 {
        self.lab.connection_generation
    }

    /// The devices the agent announced in its last hello.
    async fn devices(&self) -> Vec<Device> {
        let parsed: Vec<maosic_schema::protocol::DeviceSummary> =
            serde_json::from_str(&self.lab.devices).unwrap_or_default();
        parsed
            .into_iter()
            .map(|d| Device {
                name: d.name,
                kind: d.kind,
            })
            .collect()
    }
}

/// Formats ms since the Unix epoch as RFC 3339 with milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    let time =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn committed_schema_matches_the_server() {
        let committed = include_str!("../../../schema/schema.graphql");
        assert_eq!(
            committed,
            super::sdl(),
            "schema/schema.graphql is stale: run `maosic-server print-schema > schema/schema.graphql`"
        );
    }
}
