//! The operator API (`/operator/v1`): platform operators call a lab's agent directly (a program
//! run, a device call, a software stop) and read back the records it streamed. Guarded by the
//! configured operator token; switched off when none is configured. Researchers use GraphQL.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::gateway::CallError;
use crate::state::AppState;

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
fn refusal(req: &HttpRequest, state: &AppState) -> Option<HttpResponse> {
    let Some(expected) = state.config.operator_token.as_deref() else {
        return Some(HttpResponse::NotFound().finish());
    };
    let presented = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compare digests so the comparison time does not depend on the common prefix.
    let same = presented.is_some_and(|p| {
        crate::gateway::hash_secret(p.trim()) == crate::gateway::hash_secret(expected)
    });
    (!same).then(|| {
        HttpResponse::Unauthorized()
            .json(json!({"error": "unauthorized", "code": "UNAUTHENTICATED"}))
    })
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
    let lab_id = path.into_inner();
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
    match state.storage.records_of_program(&lab_id, &program_id).await {
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
