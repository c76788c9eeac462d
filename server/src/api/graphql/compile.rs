//! `compileRecipe`: compiles a recipe against a lab's capability descriptor (from its agent's
//! hello) and returns the program or the diagnostics with line and column.

use async_graphql::{Context, Json, Object, SimpleObject, ID};
use maosic_schema::capability::LabDescriptor;
use maosic_schema::lang::{self, Bindings};

use super::access::{lab_with_access, LabAccess};
use super::{fail, principal, ApiError, ApiResult};

/// Longest accepted recipe source, in bytes.
pub const MAX_SOURCE_BYTES: usize = 64 * 1024;

/// One diagnostic of a compile.
#[derive(SimpleObject)]
pub struct CompileDiagnostic {
    /// Stable kind code, e.g. `unknown-symbol`.
    pub code: String,
    /// `error`, `warning` or `note`.
    pub severity: String,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// 1-based start line.
    pub line: u32,
    /// 1-based start column.
    pub column: u32,
    /// 1-based end line.
    pub end_line: u32,
    /// 1-based end column (exclusive).
    pub end_column: u32,
}

/// The program, or why there is none.
#[derive(SimpleObject)]
pub struct CompileResult {
    /// True when a program was produced.
    pub ok: bool,
    /// The compiled program (JSON), when `ok`.
    pub program: Option<Json<serde_json::Value>>,
    /// Every diagnostic (errors, warnings, notes), by position.
    pub diagnostics: Vec<CompileDiagnostic>,
}

fn bindings(variables: Option<Json<serde_json::Value>>) -> ApiResult<Bindings> {
    let mut out = Bindings::new();
    let Some(Json(value)) = variables else {
        return Ok(out);
    };
    let serde_json::Value::Object(map) = value else {
        return Err(fail(ApiError::BadInput(
            "variables must be an object of numbers".into(),
        )));
    };
    if map.len() > 1000 {
        return Err(fail(ApiError::BadInput("too many variables".into())));
    }
    for (name, v) in map {
        let n = v.as_f64().filter(|n| n.is_finite()).ok_or_else(|| {
            fail(ApiError::BadInput(format!(
                "variable {name:?} must be a finite number"
            )))
        })?;
        out.insert(name, n);
    }
    Ok(out)
}

/// Compile queries.
#[derive(Default)]
pub struct CompileQuery;

#[Object]
impl CompileQuery {
    /// Compiles a recipe for a lab the caller may see, against the capability descriptor its
    /// agent announced (`NO_DESCRIPTOR` when it never announced one).
    async fn compile_recipe(
        &self,
        ctx: &Context<'_>,
        lab_id: ID,
        source: String,
        variables: Option<Json<serde_json::Value>>,
    ) -> ApiResult<CompileResult> {
        let p = principal(ctx)?;
        let (lab, _) = lab_with_access(ctx, p, &lab_id, LabAccess::Read).await?;
        if source.len() > MAX_SOURCE_BYTES {
            return Err(fail(ApiError::BadInput(format!(
                "the recipe is longer than {MAX_SOURCE_BYTES} bytes"
            ))));
        }
        let vars = bindings(variables)?;
        let descriptor_json = lab.descriptor.ok_or_else(|| fail(ApiError::NoDescriptor))?;
        let descriptor = LabDescriptor::from_json_str(&descriptor_json).map_err(|e| {
            tracing::warn!(lab.id = %lab.id, error = %e, "stored capability descriptor does not parse");
            fail(ApiError::NoDescriptor)
        })?;
        // Compiling is pure CPU work bounded by the source limit; keep it off the async threads.
        let (program, reports) = tokio::task::spawn_blocking(move || {
            lang::compile_recipe_with_warnings(&descriptor, &source, &vars)
        })
        .await
        .map_err(|_| fail(ApiError::Internal))?;
        let program = match program {
            Some(p) => Some(Json(
                serde_json::to_value(&p).map_err(|_| fail(ApiError::Internal))?,
            )),
            None => None,
        };
        Ok(CompileResult {
            ok: program.is_some(),
            program,
            diagnostics: reports
                .into_iter()
                .map(|r| CompileDiagnostic {
                    code: r.code,
                    severity: match r.severity {
                        lang::Severity::Error => "error",
                        lang::Severity::Warning => "warning",
                        lang::Severity::Note => "note",
                    }
                    .to_owned(),
                    message: r.message,
                    hint: r.hint,
                    line: r.line,
                    column: r.column,
                    end_line: r.end_line,
                    end_column: r.end_column,
                })
                .collect(),
        })
    }
}
