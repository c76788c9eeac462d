//! The compiled low-level program: a timed DAG of JSON-RPC 2.0 device calls, the contract between
//! the instruction-language compiler (cloud) and the program executor (edge agent).
//!
//! # How to execute a program
//! - `steps` are listed in a topological order: every id in a step's `after` belongs to an earlier
//!   step. Step ids are `1..=steps.len()` in list order; the JSON-RPC request id equals the step id.
//! - A step may start once every step in its `after` list has *completed* (its JSON-RPC call
//!   returned a result). Steps whose dependencies are all complete may run concurrently.
//! - Send `request` as is to the device named by the part of `method` before the first `.`
//!   (`"H.set_temperature"` → device `H`, method `set_temperature`). Parameter values are plain
//!   numbers in the unit the lab's capability descriptor declares for that parameter.
//! - `duration_ms` is the expected run time of the call (settling, acquisition, irradiation ...);
//!   `start_ms` is its earliest start in the nominal schedule. Use them for progress and timeouts.
//! - `yields` names the measurements the call returns (e.g. `absorption_spectrum`); the executor
//!   tags recorded data with the step id and measurement name.
//! - `estimated_duration_ms` is the nominal makespan: max over steps of `start_ms + duration_ms`.
//!
//! The JSON form is stable: fields appear in declaration order, maps are sorted, numbers are
//! written by `serde_json` (shortest round-trip representation).

use crate::capability::LabDescriptor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// Current program format version.
pub const PROGRAM_FORMAT: u32 = 1;

/// A compiled, fully bound program, ready to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Program {
    /// Format version ([`PROGRAM_FORMAT`]).
    pub format: u32,
    /// Recipe name (`None` for a bare formula, e.g. a manual instruction).
    pub recipe: Option<String>,
    /// Name of the lab descriptor it was compiled against.
    pub lab: String,
    /// Values the recipe's variables were bound to, by name (without `$`).
    pub variables: BTreeMap<String, BoundVariable>,
    /// The steps, in topological order.
    pub steps: Vec<Step>,
    /// Nominal total duration in milliseconds.
    pub estimated_duration_ms: u64,
}

/// A recipe variable and the value it was bound to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoundVariable {
    /// The value, in `unit`.
    pub value: f64,
    /// The unit declared in the recipe header (e.g. `°C`, `mmol/ml`), empty if dimensionless.
    pub unit: String,
}

/// One device call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Step id, `1..=steps.len()` in list order.
    pub id: u32,
    /// The JSON-RPC 2.0 request to send.
    pub request: RpcRequest,
    /// Ids of the steps that must complete before this one starts.
    pub after: Vec<u32>,
    /// Earliest start in the nominal schedule, ms from program start.
    pub start_ms: u64,
    /// Expected duration of the call in ms.
    pub duration_ms: u64,
    /// Measurements the call yields.
    #[serde(default)]
    pub yields: Vec<String>,
    /// 1-based line of the formula term this step was compiled from (for tracing back).
    #[serde(default)]
    pub line: u32,
}

/// A JSON-RPC 2.0 request with numeric named parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcRequest {
    /// Always `"2.0"`.
    pub jsonrpc: String,
    /// Request id (= step id).
    pub id: u64,
    /// `"<SYMBOL>.<method>"`.
    pub method: String,
    /// Named parameters, in the units of the lab descriptor.
    pub params: BTreeMap<String, f64>,
}

/// Why a program is not well formed.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ProgramError {
    /// Unknown format version.
    #[error("unsupported program format {0} (expected {PROGRAM_FORMAT})")]
    Format(u32),
    /// Ids are not `1..=n` in order.
    #[error("step at position {position} has id {id}; ids must be 1..=n in order")]
    StepId {
        /// 0-based position.
        position: usize,
        /// The id found.
        id: u32,
    },
    /// A dependency on a later, missing or same step.
    #[error("step {step} depends on step {dep}, which does not come before it")]
    Dependency {
        /// The step.
        step: u32,
        /// The bad dependency.
        dep: u32,
    },
    /// Request fields malformed.
    #[error("step {step}: {problem}")]
    Request {
        /// The step.
        step: u32,
        /// What is wrong.
        problem: String,
    },
}

impl Program {
    /// Parse a program from JSON and check its structure ([`Program::validate`]).
    pub fn from_json(s: &str) -> Result<Program, ProgramJsonError> {
        let p: Program =
            serde_json::from_str(s).map_err(|e| ProgramJsonError::Json(e.to_string()))?;
        p.validate()?;
        Ok(p)
    }

    /// Stable pretty JSON.
    pub fn to_json_pretty(&self) -> String {
        // Serialising plain structs, strings and finite numbers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Structural check an executor should run before executing: format version, ids `1..=n` in
    /// order, dependencies only on earlier steps (hence acyclic), `jsonrpc == "2.0"`,
    /// `request.id == id`, method of the form `SYMBOL.method`, finite parameter values.
    pub fn validate(&self) -> Result<(), ProgramError> {
        if self.format != PROGRAM_FORMAT {
            return Err(ProgramError::Format(self.format));
        }
        for (i, s) in self.steps.iter().enumerate() {
            if s.id as usize != i + 1 {
                return Err(ProgramError::StepId {
                    position: i,
                    id: s.id,
                });
            }
            for &d in &s.after {
                if d == 0 || d >= s.id {
                    return Err(ProgramError::Dependency { step: s.id, dep: d });
                }
            }
            let bad = |problem: &str| ProgramError::Request {
                step: s.id,
                problem: problem.into(),
            };
            if s.request.jsonrpc != "2.0" {
                return Err(bad("jsonrpc must be \"2.0\""));
            }
            if s.request.id != u64::from(s.id) {
                return Err(bad("request id must equal the step id"));
            }
            match s.request.method.split_once('.') {
                Some((a, b)) if !a.is_empty() && !b.is_empty() => {}
                _ => return Err(bad("method must look like SYMBOL.method")),
            }
            if s.request.params.values().any(|v| !v.is_finite()) {
                return Err(bad("parameter values must be finite numbers"));
            }
        }
        Ok(())
    }

    /// Re-check a program against a lab's capability descriptor (what an agent does before running
    /// a program it received): every method exists, every parameter is known, present when
    /// required, inside its range and on its resolution grid. Returns every problem found.
    pub fn check_against(&self, lab: &LabDescriptor) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if let Err(e) = self.validate() {
            problems.push(e.to_string());
        }
        for s in &self.steps {
            let m = &s.request.method;
            let Some((_, method)) = lab.method(m) else {
                problems.push(format!(
                    "step {}: lab `{}` has no method `{m}`",
                    s.id, lab.name
                ));
                continue;
            };
            for (name, v) in &s.request.params {
                let Some(p) = method.param(name) else {
                    problems.push(format!("step {}: `{m}` has no parameter `{name}`", s.id));
                    continue;
                };
                let tol = 1e-9 * (1.0 + p.min.abs().max(p.max.abs()));
                if !(*v >= p.min - tol && *v <= p.max + tol) {
                    problems.push(format!(
                        "step {}: `{m}({name})` = {v} {} outside {}..{}",
                        s.id, p.unit, p.min, p.max
                    ));
                } else if let Some(res) = p.resolution {
                    let k = (v - p.min) / res;
                    if (k - k.round()).abs() > 1e-6 {
                        problems.push(format!(
                            "step {}: `{m}({name})` = {v} is not on the {res} {} grid",
                            s.id, p.unit
                        ));
                    }
                }
            }
            for p in method.params.iter().filter(|p| p.required) {
                if !s.request.params.contains_key(&p.name) {
                    problems.push(format!("step {}: `{m}` needs `{}`", s.id, p.name));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Nominal makespan recomputed from the steps (max of `start_ms + duration_ms`).
    pub fn makespan_ms(&self) -> u64 {
        self.steps
            .iter()
            .map(|s| s.start_ms.saturating_add(s.duration_ms))
            .max()
            .unwrap_or(0)
    }

    /// A human-readable dry-run trace: one line per step in start order, with time stamps,
    /// the call, its dependencies and yields. Nothing is executed.
    pub fn dry_run(&self) -> String {
        let mut order: Vec<&Step> = self.steps.iter().collect();
        order.sort_by_key(|s| (s.start_ms, s.id));
        let mut out = String::new();
        let title = self.recipe.as_deref().unwrap_or("(formula)");
        out.push_str(&format!("dry run of {title} on lab {}\n", self.lab));
        for (k, v) in &self.variables {
            out.push_str(&format!("  ${k} = {} {}\n", v.value, v.unit));
        }
        for s in order {
            let params: Vec<String> = s
                .request
                .params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out.push_str(&format!(
                "[{} → {}] #{:<3} {}({})",
                fmt_ms(s.start_ms),
                fmt_ms(s.start_ms.saturating_add(s.duration_ms)),
                s.id,
                s.request.method,
                params.join(", ")
            ));
            if !s.after.is_empty() {
                let deps: Vec<String> = s.after.iter().map(|d| format!("#{d}")).collect();
                out.push_str(&format!(" after {}", deps.join(",")));
            }
            if !s.yields.is_empty() {
                out.push_str(&format!(" ⇒ {}", s.yields.join(", ")));
            }
            out.push('\n');
        }
        out.push_str(&format!("total {}\n", fmt_ms(self.estimated_duration_ms)));
        out
    }
}

/// Error reading a program from JSON.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ProgramJsonError {
    /// Not valid JSON or wrong shape.
    #[error("program is not valid JSON: {0}")]
    Json(String),
    /// Well-formed JSON, malformed program.
    #[error(transparent)]
    Invalid(#[from] ProgramError),
}

/// `h:mm:ss.mmm` style duration.
pub fn fmt_ms(ms: u64) -> String {
    let s = ms / 1000;
    let milli = ms % 1000;
    let (h, m, sec) = (s / 3600, (s / 60) % 60, s % 60);
    if milli == 0 {
        format!("{h}:{m:02}:{sec:02}")
    } else {
        format!("{h}:{m:02}:{sec:02}.{milli:03}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(id: u32, after: Vec<u32>) -> Step {
        Step {
            id,
            request: RpcRequest {
                jsonrpc: "2.0".into(),
                id: u64::from(id),
                method: "H.set_temperature".into(),
                params: BTreeMap::from([("T".to_string(), 130.0)]),
            },
            after,
            start_ms: 0,
            duration_ms: 1000,
            yields: vec![],
            line: 1,
        }
    }

    fn program(steps: Vec<Step>) -> Program {
        Program {
            format: PROGRAM_FORMAT,
            recipe: Some("r".into()),
            lab: "lab".into(),
            variables: BTreeMap::new(),
            steps,
            estimated_duration_ms: 1000,
        }
    }

    #[test]
    fn json_shape_is_jsonrpc() {
        let p = program(vec![step(1, vec![])]);
        let v: serde_json::Value = serde_json::from_str(&p.to_json_pretty()).unwrap();
        assert_eq!(
            v["steps"][0]["request"],
            serde_json::json!({"jsonrpc":"2.0","id":1,"method":"H.set_temperature","params":{"T":130.0}})
        );
        assert_eq!(Program::from_json(&p.to_json_pretty()).unwrap(), p);
    }

    #[test]
    fn validate_rejects_bad_structure() {
        assert!(program(vec![step(1, vec![]), step(2, vec![1])])
            .validate()
            .is_ok());
        assert!(matches!(
            program(vec![step(2, vec![])]).validate(),
            Err(ProgramError::StepId { .. })
        ));
        assert!(matches!(
            program(vec![step(1, vec![1])]).validate(),
            Err(ProgramError::Dependency { .. })
        ));
        let mut s = step(1, vec![]);
        s.request.method = "nodot".into();
        assert!(matches!(
            program(vec![s]).validate(),
            Err(ProgramError::Request { .. })
        ));
        let mut p = program(vec![]);
        p.format = 9;
        assert!(p.validate().is_err());
        assert!(matches!(
            Program::from_json("{"),
            Err(ProgramJsonError::Json(_))
        ));
    }

    #[test]
    fn fmt_ms_reads_well() {
        assert_eq!(fmt_ms(0), "0:00:00");
        assert_eq!(fmt_ms(3_723_004), "1:02:03.004");
    }
}
