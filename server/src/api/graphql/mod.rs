//! The public GraphQL API: schema assembly (with depth, complexity and introspection limits),
//! the request context (the verified principal and the caller's address), and the one place
//! where internal errors become client errors with stable codes (internal text is logged,
//! never returned).

pub mod access;
pub mod account;
pub mod budget;
pub mod campaigns;
pub mod commands;
pub mod compile;
pub mod handler;
pub mod lab_control;
pub mod labs;
pub mod orgs;
pub mod results;
pub mod subscriptions;

use async_graphql::{Context, ErrorExtensions, MergedObject, Object, Schema, SimpleObject};

pub use subscriptions::SubscriptionRoot;

use crate::auth::Principal;
use crate::config::GraphqlConfig;
use crate::state::AppState;
use crate::storage::StorageError;

pub use handler::graphql_handler;
pub use labs::LabNode;

/// The server's GraphQL schema type.
pub type ApiSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// All queries.
#[derive(MergedObject, Default)]
#[graphql(name = "Query")]
pub struct QueryRoot(
    BaseQuery,
    account::AccountQuery,
    orgs::OrgQuery,
    labs::LabQuery,
    compile::CompileQuery,
    campaigns::CampaignQuery,
    commands::CommandQuery,
);

/// All mutations.
#[derive(MergedObject, Default)]
#[graphql(name = "Mutation")]
pub struct MutationRoot(
    account::AccountMutation,
    orgs::OrgMutation,
    labs::LabMutation,
    campaigns::CampaignMutation,
    lab_control::LabControlMutation,
    commands::CommandMutation,
);

/// Builds the schema; `state` is `None` only for printing the SDL.
pub fn build_schema(state: Option<AppState>) -> ApiSchema {
    let builder = Schema::build(
        QueryRoot::default(),
        MutationRoot::default(),
        SubscriptionRoot,
    );
    match state {
        Some(state) => {
            let limits = state.config.graphql.clone();
            if limits.test_disable_app_filter {
                tracing::warn!(
                    "graphql.test_disable_app_filter is ON: resolvers skip authorisation and only \
                     PostgreSQL row-level security separates tenants (tests only)"
                );
            }
            let builder = apply_limits(builder, &limits);
            builder.data(state).finish()
        }
        None => builder.finish(),
    }
}

fn apply_limits(
    builder: async_graphql::SchemaBuilder<QueryRoot, MutationRoot, SubscriptionRoot>,
    limits: &GraphqlConfig,
) -> async_graphql::SchemaBuilder<QueryRoot, MutationRoot, SubscriptionRoot> {
    let builder = builder
        .limit_depth(limits.max_depth)
        .limit_complexity(limits.max_complexity)
        .limit_recursive_depth(64);
    if limits.introspection {
        builder
    } else {
        builder.disable_introspection()
    }
}

/// The schema in SDL, exactly as committed in `schema/schema.graphql`.
pub fn sdl() -> String {
    build_schema(None).sdl()
}

/// Per-request context: who is calling (verified) and from where.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// The verified principal, if a valid bearer token came with the request.
    pub principal: Option<Principal>,
    /// The client's address (for the audit log and login throttling).
    pub source: Option<String>,
    /// The client asked for a cookie session (`X-Session-Cookie: 1`): refresh tokens are set
    /// as httpOnly cookies instead of being returned in the body.
    pub cookie_session: bool,
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
    /// No valid credentials came with the request.
    #[error("authentication required")]
    Unauthenticated,
    /// Login refused (same answer for unknown accounts and wrong passwords).
    #[error("invalid e-mail or password")]
    InvalidCredentials,
    /// Too many failed logins for this account or address.
    #[error("too many attempts; try again later")]
    RateLimited,
    /// The caller may see the object but not do this to it.
    #[error("not allowed")]
    Forbidden,
    /// The object does not exist or is not visible to the caller.
    #[error("not found")]
    NotFound,
    /// The write conflicts with existing data.
    #[error("{0}")]
    Conflict(String),
    /// A refresh token was presented twice: its whole family is revoked.
    #[error("refresh token reused; the session has been revoked")]
    RefreshReused,
    /// A token (refresh, enrollment, invitation) is unknown, used or expired.
    #[error("invalid or expired token")]
    InvalidToken,
    /// The lab's agent never sent a capability descriptor.
    #[error("the lab's agent has not announced a capability descriptor yet")]
    NoDescriptor,
}

impl ApiError {
    /// The stable code in `extensions.code`.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Internal => "INTERNAL",
            ApiError::BadInput(_) => "BAD_USER_INPUT",
            ApiError::Unauthenticated => "UNAUTHENTICATED",
            ApiError::InvalidCredentials => "INVALID_CREDENTIALS",
            ApiError::RateLimited => "RATE_LIMITED",
            ApiError::Forbidden => "FORBIDDEN",
            ApiError::NotFound => "NOT_FOUND",
            ApiError::Conflict(_) => "CONFLICT",
            ApiError::RefreshReused => "REFRESH_TOKEN_REUSED",
            ApiError::InvalidToken => "INVALID_TOKEN",
            ApiError::NoDescriptor => "NO_DESCRIPTOR",
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
        match e {
            StorageError::NotFound => ApiError::NotFound,
            other => {
                tracing::error!(error = %other, "storage error in a resolver");
                ApiError::Internal
            }
        }
    }
}

/// Shorthand for resolver results.
pub type ApiResult<T> = async_graphql::Result<T>;

/// Turns an [`ApiError`] into a GraphQL error with its code.
pub fn fail(e: ApiError) -> async_graphql::Error {
    e.extend()
}

/// `?`-friendly conversion of storage results.
pub trait StorageResultExt<T> {
    /// Maps the storage error to an API error with a code.
    fn api(self) -> ApiResult<T>;
}

impl<T> StorageResultExt<T> for Result<T, StorageError> {
    fn api(self) -> ApiResult<T> {
        self.map_err(|e| ApiError::from(e).extend())
    }
}

/// The application state.
pub fn state<'a>(ctx: &Context<'a>) -> ApiResult<&'a AppState> {
    ctx.data::<AppState>().map_err(|_| fail(ApiError::Internal))
}

/// The request context (empty when the schema is executed without the HTTP handler).
pub fn request_info<'a>(ctx: &Context<'a>) -> &'a RequestInfo {
    static EMPTY: RequestInfo = RequestInfo {
        principal: None,
        source: None,
        cookie_session: false,
    };
    ctx.data::<RequestInfo>().unwrap_or(&EMPTY)
}

/// The verified principal, or `UNAUTHENTICATED`.
pub fn principal<'a>(ctx: &Context<'a>) -> ApiResult<&'a Principal> {
    request_info(ctx)
        .principal
        .as_ref()
        .ok_or_else(|| fail(ApiError::Unauthenticated))
}

/// The verified principal of a mutation: a read-only API token is `FORBIDDEN`.
pub fn writer<'a>(ctx: &Context<'a>) -> ApiResult<&'a Principal> {
    let p = principal(ctx)?;
    if !p.may_write() {
        return Err(fail(ApiError::Forbidden));
    }
    Ok(p)
}

/// Parses an id argument; malformed ids are simply not found.
pub fn parse_id<T: From<String>>(id: &str) -> ApiResult<T> {
    uuid::Uuid::parse_str(id)
        .map(|u| T::from(u.to_string()))
        .map_err(|_| fail(ApiError::NotFound))
}

/// Base queries.
#[derive(Default)]
pub struct BaseQuery;

#[Object]
impl BaseQuery {
    /// The server's name and version.
    async fn server_info(&self) -> ServerInfo {
        ServerInfo {
            name: "maosic".into(),
            version: env!("CARGO_PKG_VERSION").into(),
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

pub use crate::time::rfc3339_ms;

#[cfg(test)]
mod tests {
    #[test]
    fn committed_schema_matches_the_server() {
        let committed = include_str!("../../../../schema/schema.graphql");
        assert_eq!(
            committed,
            super::sdl(),
            "schema/schema.graphql is stale: run `maosic-server print-schema > schema/schema.graphql`"
        );
    }
}
