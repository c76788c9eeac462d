//! Campaign data export: `GET /api/v1/campaigns/{id}/export.csv` (one row per experiment:
//! conditions, state, objective and the main features) and `…/export.json` (the campaign, and
//! per experiment its conditions, features, fitted peaks, provenance and — with
//! `?measurements=true` — the raw spectra). Authorised like the API: a bearer token (session or
//! API token) of a member of the campaign's organisation; anything else is 401 or 404.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::graphql::campaigns::provenance;
use crate::state::AppState;
use crate::storage::{tenant, Campaign, CampaignId, Experiment, ExperimentFilter, StorageError};

/// Routes of the export API.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/api/v1/campaigns/{id}/export.{format}",
        web::get().to(export),
    );
}

#[derive(Deserialize)]
struct ExportQuery {
    #[serde(default)]
    measurements: bool,
}

fn error(status: actix_web::http::StatusCode, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": { "code": code, "message": message } }))
}

async fn export(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    query: web::Query<ExportQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    use actix_web::http::StatusCode;
    let (id, format) = path.into_inner();
    if format != "csv" && format != "json" {
        return error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "export.csv or export.json",
        );
    }
    let token = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 4096);
    let Some(token) = token else {
        return error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "authentication required",
        );
    };
    let Ok(principal) =
        tenant::system(state.auth.authenticate(state.storage.as_ref(), token)).await
    else {
        return error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "invalid credentials",
        );
    };
    let Ok(id) = uuid::Uuid::parse_str(&id).map(|u| CampaignId::from(u.to_string())) else {
        return error(StatusCode::NOT_FOUND, "NOT_FOUND", "not found");
    };
    let scope = match crate::api::graphql::handler::scope_of(&state, Some(&principal)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot resolve the tenant scope");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "internal error",
            );
        }
    };
    // The campaign, checked in the caller's tenant scope.
    let checked = tenant::scoped(scope.clone(), async {
        let c = state.storage.campaign(&id).await?;
        let memberships = state
            .storage
            .memberships_of_user(&principal.user_id)
            .await?;
        let stored = memberships
            .iter()
            .find(|m| m.organization_id == c.organization_id)
            .map(|m| m.role);
        if principal
            .effective_role(&c.organization_id, stored)
            .is_none()
        {
            return Err(StorageError::NotFound);
        }
        Ok(c)
    })
    .await;
    let c = match checked {
        Ok(c) => c,
        Err(StorageError::NotFound) => {
            return error(StatusCode::NOT_FOUND, "NOT_FOUND", "not found")
        }
        Err(e) => {
            tracing::error!(error = %e, "export failed");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "internal error",
            );
        }
    };
    let file = format!("campaign-{}.{format}", c.id);
    let disposition = format!("attachment; filename=\"{file}\"");
    // Streamed: a page of experiments (and each one's measurements) at a time, never the whole
    // campaign in memory; every read runs in the caller's tenant scope.
    let export = Export {
        state: state.into_inner(),
        scope,
        campaign: c,
        csv: format == "csv",
        measurements: query.measurements,
        after_seq: 0,
        page: std::collections::VecDeque::new(),
        exhausted: false,
        started: false,
        rows: 0,
        finished: false,
    };
    let body = futures_util::stream::unfold(export, |mut ex| async move {
        match ex.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok::<_, actix_web::Error>(web::Bytes::from(chunk)), ex)),
            Ok(None) => None,
            Err(e) => {
                // Headers are sent: the only signal left is to end the body early.
                tracing::error!(error = %e, "export stream failed");
                Some((
                    Err(actix_web::error::ErrorInternalServerError("export failed")),
                    ex,
                ))
            }
        }
    });
    HttpResponse::Ok()
        .content_type(if format == "csv" {
            "text/csv; charset=utf-8"
        } else {
            "application/json"
        })
        .insert_header(("content-disposition", disposition))
        .streaming(body)
}

/// Experiments read per page of an export.
const EXPORT_PAGE: i64 = 100;

/// The state of one streamed export.
struct Export {
    state: std::sync::Arc<AppState>,
    scope: tenant::TenantScope,
    campaign: Campaign,
    csv: bool,
    measurements: bool,
    after_seq: i64,
    page: std::collections::VecDeque<Experiment>,
    exhausted: bool,
    started: bool,
    rows: usize,
    finished: bool,
}

impl Export {
    /// The next piece of the body; `None` at the end.
    async fn next_chunk(&mut self) -> Result<Option<String>, StorageError> {
        if self.finished {
            return Ok(None);
        }
        if !self.started {
            self.started = true;
            return Ok(Some(if self.csv {
                csv_header(&self.campaign)
            } else {
                let head = campaign_json(&self.campaign).to_string();
                format!("{{\"campaign\":{head},\"experiments\":[")
            }));
        }
        if self.page.is_empty() && !self.exhausted {
            let page = tenant::scoped(
                self.scope.clone(),
                self.state.storage.experiments_of_campaign(
                    &self.campaign.id,
                    self.after_seq,
                    EXPORT_PAGE,
                    &ExperimentFilter::default(),
                ),
            )
            .await?;
            self.exhausted = (page.len() as i64) < EXPORT_PAGE;
            if let Some(last) = page.last() {
                self.after_seq = last.seq;
            }
            self.page.extend(page);
        }
        let Some(e) = self.page.pop_front() else {
            self.finished = true;
            return Ok(if self.csv { None } else { Some("]}".into()) });
        };
        if self.csv {
            return Ok(Some(csv_row(&self.campaign, &e)));
        }
        let records = if self.measurements {
            let cap = self
                .state
                .config
                .campaigns
                .max_records_per_experiment
                .max(1);
            Some(
                tenant::scoped(
                    self.scope.clone(),
                    self.state.storage.records_of_program(
                        &e.lab_id,
                        &e.id,
                        i64::try_from(cap).unwrap_or(i64::MAX),
                    ),
                )
                .await?,
            )
        } else {
            None
        };
        let row = experiment_json(&self.campaign, &e, records.as_deref()).to_string();
        let sep = if self.rows == 0 { "" } else { "," };
        self.rows += 1;
        Ok(Some(format!("{sep}{row}")))
    }
}

/// The variable names of the campaign's space, in order.
fn variables(c: &Campaign) -> Vec<String> {
    serde_json::from_str::<maosic_optimizer::Space>(&c.space_json)
        .map(|s| s.parameters.into_iter().map(|p| p.name).collect())
        .unwrap_or_default()
}

const FEATURE_COLUMNS: [&str; 5] = [
    "exciton_wavelength_nm",
    "absorbance_at_exciton",
    "cd_at_exciton_mdeg",
    "g_factor",
    "fit_r_squared",
];

/// A text field for CSV: a leading `=`, `+`, `-`, `@`, tab or CR gets a `'` so spreadsheets show
/// it instead of running it as a formula; quoted when it needs it (RFC 4180).
fn field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn number(v: &Value) -> String {
    v.as_f64().map(|x| x.to_string()).unwrap_or_default()
}

/// The CSV header line.
fn csv_header(c: &Campaign) -> String {
    let vars = variables(c);
    let mut header = vec!["seq", "experiment_id", "name", "source", "state"]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    header.extend(vars.iter().cloned());
    header.push("objective".into());
    header.extend(FEATURE_COLUMNS.iter().map(|s| (*s).to_owned()));
    header.extend(["queued_at_ms", "finished_at_ms", "error"].map(str::to_owned));
    let mut out = header
        .iter()
        .map(|h| field(h))
        .collect::<Vec<_>>()
        .join(",");
    out.push('\n');
    out
}

/// One experiment as a CSV line.
fn csv_row(c: &Campaign, e: &Experiment) -> String {
    let vars = variables(c);
    let params: Value = serde_json::from_str(&e.params_json).unwrap_or(Value::Null);
    let features: Value = e
        .features_json
        .as_deref()
        .and_then(|f| serde_json::from_str(f).ok())
        .unwrap_or(Value::Null);
    let mut row = vec![
        e.seq.to_string(),
        e.id.to_string(),
        field(&e.name),
        e.source.clone(),
        e.state.to_string(),
    ];
    row.extend(vars.iter().map(|v| number(&params[v])));
    row.push(e.objective_value.map(|v| v.to_string()).unwrap_or_default());
    row.extend(FEATURE_COLUMNS.iter().map(|f| number(&features[*f])));
    row.push(e.queued_at.to_string());
    row.push(e.finished_at.map(|t| t.to_string()).unwrap_or_default());
    row.push(field(e.error.as_deref().unwrap_or("")));
    let mut out = row.join(",");
    out.push('\n');
    out
}

fn parsed(text: Option<&str>) -> Value {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null)
}

/// One experiment of a JSON export (raw measurements included when `records` is given).
fn experiment_json(
    c: &Campaign,
    e: &Experiment,
    records: Option<&[crate::storage::StoredRecord]>,
) -> Value {
    let mut row = json!({
        "id": e.id,
        "seq": e.seq,
        "name": e.name,
        "source": e.source,
        "state": e.state,
        "parameters": parsed(Some(&e.params_json)),
        "objective": e.objective_value,
        "features": parsed(e.features_json.as_deref()),
        "fitted_peaks": parsed(e.peaks_json.as_deref()),
        "error": e.error,
        "queued_at_ms": e.queued_at,
        "started_at_ms": e.started_at,
        "finished_at_ms": e.finished_at,
        "provenance": provenance(e, c),
    });
    if let Some(records) = records {
        row["measurements"] = Value::Array(
            records
                .iter()
                .filter(|r| r.kind == "measurement")
                .map(|r| parsed(Some(&r.body))["body"].clone())
                .collect(),
        );
    }
    row
}

/// The campaign's own fields in a JSON export.
fn campaign_json(c: &Campaign) -> Value {
    json!({
        "id": c.id,
        "name": c.name,
        "organization_id": c.organization_id,
        "lab_id": c.lab_id,
        "state": c.state,
        "objective": c.objective,
        "optimizer": c.optimizer,
        "seed": c.seed,
        "budget": c.budget,
        "best_value": c.best_value,
        "best_parameters": parsed(c.best_params_json.as_deref()),
    })
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn csv_text_fields_are_quoted_and_never_formulas() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(field("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(field("-1+2"), "'-1+2");
    }
}
