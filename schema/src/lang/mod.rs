//! The MAOSIC instruction language: high-level formulas of module symbols and five operators,
//! compiled against a lab's capability descriptor into a low-level JSON-RPC 2.0 [`Program`].
//! Grammar and worked examples: `docs/language.md`. No I/O here; callers (CLI, GraphQL, agent)
//! read files and print.
//!
//! Entry points: [`parse`], [`check`], [`compile`], [`estimate`], [`format`], [`compile_recipe`]
//! (GraphQL), [`render`] (compiler-style text) and [`cli`] (the `lang` subcommands).

pub mod ast;
pub mod cli;
pub mod compile;
pub mod diagnostic;
pub mod format;
pub mod lexer;
pub mod parser;

pub use compile::{did_you_mean, round_to_grid, Bindings, Mode, Output};
pub use diagnostic::{
    has_errors, line_col, render, Code, Diagnostic, DiagnosticReport, Severity, Span,
};
pub use parser::{parse, Parsed};

use crate::capability::LabDescriptor;
use crate::program::Program;

/// Check a source text against a lab. Variables without a value are explored over their declared
/// ranges. Returns every diagnostic, sorted by position.
pub fn check(src: &str, lab: &LabDescriptor, bindings: &Bindings) -> Vec<Diagnostic> {
    compile::analyze(src, lab, bindings, Mode::Check).diagnostics
}

/// Compile a source text with every variable bound. `program` is `Some` iff there is no error.
pub fn compile(src: &str, lab: &LabDescriptor, bindings: &Bindings) -> Output {
    compile::analyze(src, lab, bindings, Mode::Compile)
}

/// Estimated total duration (ms) of the compiled program.
pub fn estimate(
    src: &str,
    lab: &LabDescriptor,
    bindings: &Bindings,
) -> Result<u64, Vec<Diagnostic>> {
    let out = compile(src, lab, bindings);
    match out.program {
        Some(p) => Ok(p.estimated_duration_ms),
        None => Err(out.diagnostics),
    }
}

/// Canonical formatting of a source text; syntax errors are returned instead.
pub fn format(src: &str) -> Result<String, Vec<Diagnostic>> {
    let p = parse(src);
    match p.file {
        Some(f) if !has_errors(&p.diagnostics) => Ok(format::format_file(&f)),
        _ => Err(p.diagnostics),
    }
}

/// For the GraphQL `compileRecipe(labId, source, variables)` resolver: the program, or every
/// diagnostic (errors, warnings, notes) with 1-based line/column positions.
pub fn compile_recipe(
    lab: &LabDescriptor,
    source: &str,
    variables: &Bindings,
) -> Result<Program, Vec<DiagnosticReport>> {
    let out = compile(source, lab, variables);
    match out.program {
        Some(p) => Ok(p),
        None => Err(out.diagnostics.iter().map(|d| d.report(source)).collect()),
    }
}

/// Read GraphQL/JSON `variables` (`{"T": 130, "C": 0.8}`) into [`Bindings`]; every value must be
/// a finite number (in the unit the recipe declares).
pub fn bindings_from_json(v: &serde_json::Value) -> Result<Bindings, String> {
    match v {
        serde_json::Value::Null => Ok(Bindings::new()),
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(k, x)| match x.as_f64() {
                Some(f) if f.is_finite() => Ok((k.trim_start_matches('$').to_string(), f)),
                _ => Err(format!("variable `{k}` must be a number, got {x}")),
            })
            .collect(),
        other => Err(format!(
            "variables must be an object of numbers, got {other}"
        )),
    }
}

/// Like [`compile_recipe`] but also returns the warnings and notes of a successful compile.
pub fn compile_recipe_with_warnings(
    lab: &LabDescriptor,
    source: &str,
    variables: &Bindings,
) -> (Option<Program>, Vec<DiagnosticReport>) {
    let out = compile(source, lab, variables);
    (
        out.program,
        out.diagnostics.iter().map(|d| d.report(source)).collect(),
    )
}
