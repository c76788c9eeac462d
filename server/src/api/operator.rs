//! The operator API (`/operator/v1`): platform operators call a lab's agent directly (a program
//! run, a device call, a software stop) and read back the records it streamed. Guarded by the
//! configured operator token; switched off when none is configured. Researchers use GraphQL.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::agents::registry::CallError;
use crate::state::AppState;
use crate::storage::{tenant, LabId};

/// Longest a single operator call may wait for the agent.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Mounts the operator routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/operator/v1/labs/{lab_id}/call",
        web::post().to(call_agent),
    )
    .route(
        "/operator/v1/labs/{lab_id}/programs/{program_id}/records",
        web::get().to(program_records),
    );
}

/// `None` when the request carries the operator token, else the refusal to send.
/// Failed attempts after which an address is refused without a check, per window.
pub const MAX_FAILURES_PER_ADDRESS: u32 = 10;
/// The window of [`MAX_FAILURES_PER_ADDRESS`].
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Failed operator-token attempts per client address, forgotten after [`FAILURE_WINDOW`].
#[derive(Clone)]
pub struct Failures(moka::sync::Cache<std::net::IpAddr, u32>);

impl Default for Failures {
    fn default() -> Self {
        Failures(
            moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(FAILURE_WINDOW)
                .build(),
        )
    }
}

fn refusal(req: &HttpRequest, state: &AppState) -> Option<HttpResponse> {
    let Some(expected) = state.config.operator_token.as_deref() else {
        return Some(HttpResponse::NotFound().finish());
    };
    let address = req.peer_addr().map(|p| p.ip());
    let failures = &state.operator_failures.0;
    if address
        .and_then(|ip| failures.get(&ip))
        .is_some_and(|n| n >= MAX_FAILURES_PER_ADDRESS)
    {
        return Some(HttpResponse::TooManyRequests().json(
            json!({"error": "too many failed attempts; try again later", "code": "RATE_LIMITED"}),
        ));
    }
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compare digests so the comparison time does not depend on the common prefix.
    let same = presented.is_some_and(|p| {
        crate::agents::hash_secret(p.trim()) == crate::agents::hash_secret(expected)
    });
    if same {
        return None;
    }
    if let Some(ip) = address {
        let n = failures.get(&ip).unwrap_or(0);
        failures.insert(ip, n.saturating_add(1));
    }
    Some(
        HttpResponse::Unauthorized()
            .json(json!({"error": "unauthorized", "code": "UNAUTHENTICATED"})),
    )
}

/// Body of a call.
#[derive(Debug, Deserialize)]
struct CallBody {
    /// Agent method, e.g. `program.run`, `device.call`, `estop`.
    method: String,
    /// Its parameters.
    #[serde(default)]
    params: Value,
    /// How long to wait for the answer (default 60 s, at most 1 h).
    timeout_ms: Option<u64>,
}

async fn call_agent(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<CallBody>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Some(refused) = refusal(&req, &state) {
        return refused;
    }
    let lab_id = LabId::from(path.into_inner());
    let body = body.into_inner();
    let timeout = Duration::from_millis(body.timeout_ms.unwrap_or(60_000)).min(MAX_TIMEOUT);
    tracing::info!(lab.id = %lab_id, method = %body.method, "operator call");
    match state
        .gateway
        .call(&lab_id, &body.method, body.params, timeout)
        .await
    {
        Ok(result) => HttpResponse::Ok().json(json!({ "result": result })),
        Err(CallError::Rejected(error)) => {
            HttpResponse::UnprocessableEntity().json(json!({ "error": error }))
        }
        Err(e @ CallError::Offline) => {
            HttpResponse::Conflict().json(json!({ "error": e.to_string(), "code": "LAB_OFFLINE" }))
        }
        Err(e) => HttpResponse::GatewayTimeout()
            .json(json!({ "error": e.to_string(), "code": "AGENT_NO_ANSWER" })),
    }
}

async fn program_records(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    if let Some(refused) = refusal(&req, &state) {
        return refused;
    }
    let (lab_id, program_id) = path.into_inner();
    let lab_id = LabId::from(lab_id);
    // The operator token is the proof: platform work.
    let cap = state.config.campaigns.max_records_per_experiment.max(1);
    let limit = i64::try_from(cap).unwrap_or(i64::MAX);
    match tenant::system(
        state
            .storage
            .records_of_program(&lab_id, &program_id, limit),
    )
    .await
    {
        Ok(records) => {
            let list: Vec<Value> = records
                .into_iter()
                .map(|r| {
                    json!({
                        "epoch": r.epoch,
                        "seq": r.seq,
                        "kind": r.kind,
                        "received_at": r.received_at,
                        "record": serde_json::from_str::<Value>(&r.body).unwrap_or(Value::Null),
                    })
                })
                .collect();
            HttpResponse::Ok().json(json!({ "records": list }))
        }
        Err(e) => {
            tracing::error!(error = %e, "records read failed");
            HttpResponse::InternalServerError()
                .json(json!({"error": "internal error", "code": "INTERNAL"}))
        }
    }
}
