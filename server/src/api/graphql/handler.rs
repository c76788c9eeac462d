//! The `POST /graphql` handler: reads the body under a size limit, refuses oversized batches
//! and alias floods before execution, verifies the bearer token into a principal, runs each
//! operation under a time limit, and makes sure every error carries a stable code.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use async_graphql::parser::types::{ExecutableDocument, OperationType, Selection, SelectionSet};
use async_graphql::{BatchRequest, BatchResponse, ErrorExtensionValues, Response, ServerError};
use futures_util::StreamExt as _;
use serde_json::json;
use tracing::Instrument as _;

use super::budget::{BudgetError, Caller};
use super::{ApiSchema, RequestInfo};
use crate::auth::Principal;
use crate::config::GraphqlConfig;
use crate::state::AppState;
use crate::storage::tenant::{self, TenantScope};
use crate::storage::{Role, StorageError};

/// The tenant scope of a request: the organisations the verified principal may act in, for
/// PostgreSQL row-level security. Anonymous requests get an empty scope.
pub(crate) async fn scope_of(
    state: &AppState,
    principal: Option<&Principal>,
) -> Result<TenantScope, StorageError> {
    let Some(p) = principal else {
        return Ok(TenantScope::nobody());
    };
    let (mut org_ids, mut admin_org_ids, mut shared_lab_ids) = (Vec::new(), Vec::new(), Vec::new());
    for m in state.storage.memberships_of_user(&p.user_id).await? {
        if let Some(role) = p.effective_role(&m.organization_id, Some(m.role)) {
            if matches!(role, Role::Owner | Role::Admin) {
                admin_org_ids.push(m.organization_id.clone());
            }
            for share in state
                .storage
                .shares_with_organization(&m.organization_id)
                .await?
            {
                shared_lab_ids.push(share.lab_id);
            }
            org_ids.push(m.organization_id);
        }
    }
    Ok(TenantScope::Principal {
        user_id: p.user_id.clone(),
        org_ids,
        admin_org_ids,
        shared_lab_ids,
    })
}

/// A response made of one error with a code, for refusals before execution.
fn refusal(status: actix_web::http::StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({
        "errors": [{ "message": message, "extensions": { "code": code } }]
    }))
}

/// Counts the aliases written in a document (operations and fragment definitions).
pub fn count_aliases(doc: &ExecutableDocument) -> usize {
    fn walk(set: &SelectionSet) -> usize {
        set.items
            .iter()
            .map(|item| match &item.node {
                Selection::Field(f) => {
                    usize::from(f.node.alias.is_some()) + walk(&f.node.selection_set.node)
                }
                Selection::InlineFragment(i) => walk(&i.node.selection_set.node),
                Selection::FragmentSpread(_) => 0,
            })
            .sum()
    }
    let ops: usize = doc
        .operations
        .iter()
        .map(|(_, op)| walk(&op.node.selection_set.node))
        .sum();
    let frags: usize = doc
        .fragments
        .values()
        .map(|f| walk(&f.node.selection_set.node))
        .sum();
    ops + frags
}

/// Whether a document asks for `__schema` or `__type` (introspection; `__typename` is not).
pub fn uses_introspection(doc: &ExecutableDocument) -> bool {
    fn walk(set: &SelectionSet) -> bool {
        set.items.iter().any(|item| match &item.node {
            Selection::Field(f) => {
                let name = f.node.name.node.as_str();
                name == "__schema" || name == "__type" || walk(&f.node.selection_set.node)
            }
            Selection::InlineFragment(i) => walk(&i.node.selection_set.node),
            Selection::FragmentSpread(_) => false,
        })
    }
    doc.operations
        .iter()
        .any(|(_, op)| walk(&op.node.selection_set.node))
        || doc
            .fragments
            .values()
            .any(|f| walk(&f.node.selection_set.node))
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the rightmost
/// `X-Forwarded-For` entry that is not one (see [`crate::api::forwarded`]).
pub(crate) fn client_address(
    req: &HttpRequest,
    proxies: &crate::api::forwarded::TrustedProxies,
) -> Option<String> {
    let peer = req.peer_addr()?.ip();
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok());
    Some(proxies.client_address(peer, forwarded).to_string())
}

fn bearer(req: &HttpRequest) -> Option<Result<String, ()>> {
    let value = req.headers().get(actix_web::http::header::AUTHORIZATION)?;
    let text = value.to_str().map_err(|_| ());
    Some(text.and_then(|t| {
        t.strip_prefix("Bearer ")
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty() && s.len() <= 4096)
            .ok_or(())
    }))
}

/// Stable codes for errors raised by async-graphql itself (validation, limits, parsing).
fn ensure_code(err: &mut ServerError) {
    if err
        .extensions
        .as_ref()
        .is_some_and(|ext| ext.get("code").is_some())
    {
        return;
    }
    let code = if err.message.contains("nested too deep") {
        "QUERY_TOO_DEEP"
    } else if err.message.contains("too complex") {
        "QUERY_TOO_COMPLEX"
    } else if err.message.contains("introspection") || err.message.contains("Introspection") {
        "INTROSPECTION_DISABLED"
    } else if err.locations.is_empty() && err.path.is_empty() {
        "GRAPHQL_PARSE_FAILED"
    } else if err.path.is_empty() {
        "GRAPHQL_VALIDATION_FAILED"
    } else {
        "BAD_USER_INPUT"
    };
    let mut ext = err.extensions.take().unwrap_or_default();
    ext.set("code", code);
    err.extensions = Some(ext);
}

fn refused_response(code: &str, message: &str) -> Response {
    let mut ext = ErrorExtensionValues::default();
    ext.set("code", code);
    let mut err = ServerError::new(message, None);
    err.extensions = Some(ext);
    Response::from_errors(vec![err])
}

/// Who pays for a request's parsing: the verified user, else the client address.
pub(crate) fn caller_of(principal: Option<&Principal>, source: Option<&str>) -> Caller {
    match principal {
        Some(p) => Caller::User(p.user_id.to_string()),
        None => Caller::Address(source.unwrap_or("unknown").to_owned()),
    }
}

/// The GraphQL error of an operation refused by the query budget.
pub(crate) fn budget_refusal(e: &BudgetError) -> Response {
    let mut ext = ErrorExtensionValues::default();
    let code = match e {
        BudgetError::RetryAfter(wait) => {
            ext.set(
                "retryAfterMs",
                u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            );
            "RATE_LIMITED"
        }
        BudgetError::TooLarge => "PAYLOAD_TOO_LARGE",
    };
    ext.set("code", code);
    let mut err = ServerError::new(e.to_string(), None);
    err.extensions = Some(ext);
    Response::from_errors(vec![err])
}

/// `429 Too Many Requests` with `Retry-After` (whole seconds, rounded up), or `413`.
fn over_budget(e: &BudgetError) -> HttpResponse {
    let body = budget_refusal(e);
    match e {
        BudgetError::RetryAfter(wait) => {
            let secs = wait.as_millis().div_ceil(1000).max(1);
            HttpResponse::TooManyRequests()
                .insert_header((actix_web::http::header::RETRY_AFTER, secs.to_string()))
                .json(body)
        }
        BudgetError::TooLarge => HttpResponse::PayloadTooLarge().json(body),
    }
}

/// Why a body could not be read.
enum BodyError {
    TooLarge,
    Unreadable,
}

impl BodyError {
    fn response(&self) -> HttpResponse {
        match self {
            BodyError::TooLarge => refusal(
                actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                "request body too large",
            ),
            BodyError::Unreadable => refusal(
                actix_web::http::StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "could not read the request body",
            ),
        }
    }
}

async fn read_body(
    mut payload: web::Payload,
    limit: usize,
    declared: Option<usize>,
) -> Result<Vec<u8>, BodyError> {
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| BodyError::Unreadable)?;
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Documents that parsed, by their text: clients send the same few queries again and again
/// (the portal's, a script's loop), and parsing is the costliest step before execution that
/// depends on nothing but the text. Bounded by total text size, so a flood of distinct queries
/// only churns it; a document that does not parse is never kept.
static DOCUMENTS: std::sync::LazyLock<moka::sync::Cache<String, ExecutableDocument>> =
    std::sync::LazyLock::new(|| {
        moka::sync::Cache::builder()
            .weigher(|text: &String, _| u32::try_from(text.len()).unwrap_or(u32::MAX))
            .max_capacity(DOCUMENT_CACHE_BYTES)
            .build()
    });

/// Total query text the document cache holds (the parsed form is a few times larger).
const DOCUMENT_CACHE_BYTES: u64 = 4 << 20;

/// The request's parsed document, from the cache when its text was seen before; `None` when it
/// does not parse.
fn parsed(request: &mut async_graphql::Request) -> Option<&ExecutableDocument> {
    if let Some(doc) = DOCUMENTS.get(&request.query) {
        request.set_parsed_query(doc);
    } else {
        let doc = request.parsed_query().ok()?.clone();
        DOCUMENTS.insert(request.query.clone(), doc);
    }
    request.parsed_query().ok()
}

/// The checks every operation passes before it executes, over HTTP and over the WebSocket
/// alike: it parses, its aliases are within the limit, and it asks for introspection only where
/// that is on. Returns the type of the operation that will run.
/// The document is parsed once: the request keeps it for execution.
pub(crate) fn precheck(
    limits: &GraphqlConfig,
    request: &mut async_graphql::Request,
) -> Result<OperationType, Box<Response>> {
    let operation_name = request.operation_name.clone();
    let doc = parsed(request).ok_or_else(|| {
        Box::new(refused_response(
            "GRAPHQL_PARSE_FAILED",
            "the query does not parse",
        ))
    })?;
    let aliases = count_aliases(doc);
    if aliases > limits.max_aliases {
        return Err(Box::new(refused_response(
            "TOO_MANY_ALIASES",
            &format!(
                "the query uses {aliases} aliases; at most {} are allowed",
                limits.max_aliases
            ),
        )));
    }
    if !limits.introspection && uses_introspection(doc) {
        return Err(Box::new(refused_response(
            "INTROSPECTION_DISABLED",
            "introspection is switched off on this server",
        )));
    }
    let chosen = doc
        .operations
        .iter()
        .find(|(name, _)| match (operation_name.as_deref(), name) {
            (Some(wanted), Some(name)) => wanted == name.as_str(),
            (Some(_), None) => false,
            (None, _) => true,
        });
    Ok(chosen.map_or(OperationType::Query, |(_, op)| op.node.ty))
}

/// Runs one query or mutation in the caller's tenant scope under the time limit: the one
/// execution path of `POST /graphql` and of queries and mutations sent over `/graphql/ws`.
pub(crate) async fn execute_one(
    schema: &ApiSchema,
    limits: &GraphqlConfig,
    info: &RequestInfo,
    scope: &TenantScope,
    traceparent: Option<&str>,
    mut request: async_graphql::Request,
) -> Response {
    let is_mutation = match precheck(limits, &mut request) {
        Ok(ty) => ty == OperationType::Mutation,
        Err(refused) => return *refused,
    };
    // The request's span: what it queues (experiments) keeps its trace context, so their
    // dispatch and the agent's run join this trace. A client's own `traceparent` is continued.
    let span = tracing::info_span!(
        "graphql.request",
        graphql.operation.type = if is_mutation { "mutation" } else { "query" },
        graphql.operation.name = request.operation_name.as_deref().unwrap_or(""),
    );
    if let Some(tp) = traceparent {
        maosic_telemetry::set_parent(&span, tp);
    }
    let request = request.data(info.clone());
    let timeout = Duration::from_millis(limits.timeout_ms.max(1));
    let schema = schema.clone();
    let run = tenant::scoped(scope.clone(), async move { schema.execute(request).await })
        .instrument(span);
    let mut response = if is_mutation {
        // A mutation is never cut half-way (its writes are several storage calls): it runs to
        // its end in its own task, and the client is told when it outlasts the time limit.
        let task = actix_web::rt::spawn(run);
        match tokio::time::timeout(timeout, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => refused_response("INTERNAL", "internal error"),
            Err(_) => refused_response(
                "TIMEOUT",
                "the request took too long; the mutation may still complete",
            ),
        }
    } else {
        match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => refused_response("TIMEOUT", "the request took too long and was stopped"),
        }
    };
    for err in &mut response.errors {
        ensure_code(err);
    }
    response
}

/// Copies the HTTP headers resolvers appended (the session cookies) onto the HTTP response.
fn copy_headers(http: &mut actix_web::HttpResponseBuilder, response: &Response) {
    for (name, value) in &response.http_headers {
        if let Ok(value) = value.to_str() {
            http.append_header((name.as_str(), value));
        }
    }
}

/// `POST /graphql`. Mount with the [`ApiSchema`] and [`AppState`] as app data.
pub async fn graphql_handler(
    state: web::Data<AppState>,
    schema: web::Data<ApiSchema>,
    req: HttpRequest,
    payload: web::Payload,
) -> HttpResponse {
    let limits = &state.config.graphql;
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let body = match read_body(payload, limits.max_body_bytes, declared).await {
        Ok(b) => b,
        Err(e) => return e.response(),
    };
    let batch: BatchRequest = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(_) => {
            return refusal(
                actix_web::http::StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "the body is not a GraphQL request (JSON with a query)",
            )
        }
    };
    let source = client_address(&req, &state.config.trusted_proxies);
    let principal = match bearer(&req) {
        None => None,
        Some(Err(())) => {
            return HttpResponse::Ok()
                .json(refused_response("UNAUTHENTICATED", "invalid credentials"))
        }
        // Finding who calls is platform work (sessions, API tokens): explicitly so, since a
        // task outside any scope sees nothing.
        Some(Ok(token)) => {
            match tenant::system(state.auth.authenticate(state.storage.as_ref(), &token)).await {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::info!(reason = %e, "bearer token refused");
                    return HttpResponse::Ok()
                        .json(refused_response("UNAUTHENTICATED", "invalid credentials"));
                }
            }
        }
    };
    if let BatchRequest::Batch(requests) = &batch {
        if requests.len() > limits.max_batch {
            return refusal(
                actix_web::http::StatusCode::BAD_REQUEST,
                "BATCH_TOO_LARGE",
                &format!(
                    "a batch may hold at most {} operations; this one has {}",
                    limits.max_batch,
                    requests.len()
                ),
            );
        }
    }
    // Parsing is paid for before anything else looks at the documents.
    let caller = caller_of(principal.as_ref(), source.as_deref());
    let sizes: Vec<usize> = match &batch {
        BatchRequest::Single(r) => vec![r.query.len()],
        BatchRequest::Batch(rs) => rs.iter().map(|r| r.query.len()).collect(),
    };
    if let Err(e) = state.query_budget.charge_all(&caller, sizes) {
        return over_budget(&e);
    }
    let scope = match tenant::system(scope_of(&state, principal.as_ref())).await {
        Ok(scope) => scope,
        Err(e) => {
            tracing::error!(error = %e, "cannot resolve the tenant scope");
            return HttpResponse::Ok().json(refused_response("INTERNAL", "internal error"));
        }
    };
    let cookie_session = req
        .headers()
        .get(crate::auth::session_cookie::COOKIE_SESSION_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1");
    let info = RequestInfo {
        principal,
        source,
        cookie_session,
    };
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let traceparent = traceparent.as_deref();
    match batch {
        BatchRequest::Single(request) => {
            let response = execute_one(&schema, limits, &info, &scope, traceparent, request).await;
            let mut http = HttpResponse::Ok();
            copy_headers(&mut http, &response);
            http.json(response)
        }
        BatchRequest::Batch(requests) => {
            let mut responses = Vec::with_capacity(requests.len());
            let mut http = HttpResponse::Ok();
            for request in requests {
                let response =
                    execute_one(&schema, limits, &info, &scope, traceparent, request).await;
                copy_headers(&mut http, &response);
                responses.push(response);
            }
            http.json(BatchResponse::Batch(responses))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_document_is_the_one_its_text_parses_to_and_bad_text_is_never_cached() {
        let text = "query Cached($n: Int) { a: serverInfo { name } b: serverInfo { version } }";
        let mut first = async_graphql::Request::new(text);
        let doc = parsed(&mut first).unwrap().clone();
        assert!(DOCUMENTS.contains_key(text));
        // The second request of the same text gets the same document without parsing it.
        let mut second = async_graphql::Request::new(text);
        assert_eq!(
            format!("{:?}", parsed(&mut second).unwrap()),
            format!("{doc:?}")
        );
        assert_eq!(count_aliases(parsed(&mut second).unwrap()), 2);
        let bad = "query { serverInfo { name } ";
        assert!(parsed(&mut async_graphql::Request::new(bad)).is_none());
        assert!(!DOCUMENTS.contains_key(bad));
    }

    #[test]
    fn aliases_are_counted_in_operations_and_fragments() {
        let doc = async_graphql::parser::parse_query(
            "query { a: serverInfo { n: name } b: serverInfo { name } ...F } \
             fragment F on Query { c: serverInfo { version } }",
        )
        .unwrap();
        assert_eq!(count_aliases(&doc), 4);
        let many: String = (0..1000)
            .map(|i| format!("a{i}: serverInfo {{ name }} "))
            .collect();
        let doc = async_graphql::parser::parse_query(format!("{{ {many} }}")).unwrap();
        assert_eq!(count_aliases(&doc), 1000);
    }

    #[test]
    fn introspection_is_recognised_but_typename_is_not() {
        let parse = |q: &str| async_graphql::parser::parse_query(q).unwrap();
        assert!(uses_introspection(&parse(
            "{ __schema { types { name } } }"
        )));
        assert!(uses_introspection(&parse(
            "{ ...F } fragment F on Query { __type(name: \"Lab\") { name } }"
        )));
        assert!(!uses_introspection(&parse(
            "{ __typename serverInfo { name } }"
        )));
    }
}
