//! Campaigns: the closed loop. This module holds the pure steps (no I/O): the parameter space
//! a recipe declares, the optimizer a campaign asks, binding a proposal into the recipe and
//! compiling it against the lab, and turning an experiment's records into features and an
//! objective value. [`engine`] runs them against storage and the agent gateway.

pub mod scheduler;

use maosic_analysis::features::{analyse_experiment, AnalysisSettings, ExperimentAnalysis};
use maosic_analysis::objective::{Direction, Objective};
use maosic_analysis::spectrum::Spectrum;
use maosic_optimizer::{Algorithm, Goal, Optimizer, OptimizerSpec, Space};
use maosic_schema::capability::LabDescriptor;
use maosic_schema::lang::{self, Bindings};
use maosic_schema::program::Program;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::storage::StoredRecord;

/// Why a campaign definition or step was refused (shown to the user as is).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CampaignError {
    /// The recipe does not parse or declares no variables.
    #[error("recipe: {0}")]
    Recipe(String),
    /// The objective does not parse.
    #[error("objective: {0}")]
    Objective(String),
    /// Unknown optimizer or bad settings.
    #[error("optimizer: {0}")]
    Optimizer(String),
    /// The recipe does not compile for this lab at the given point.
    #[error("compile: {0}")]
    Compile(String),
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// The parameter space a recipe declares: `recipe r(T: °C in 90..180 step 0.5, …)`.
pub fn space_of_recipe(source: &str) -> Result<Space, CampaignError> {
    let parsed = lang::parse(source);
    if lang::has_errors(&parsed.diagnostics) {
        let first = parsed
            .diagnostics
            .iter()
            .find(|d| d.severity == lang::Severity::Error)
            .map(|d| d.report(source))
            .map(|r| format!("line {}, column {}: {}", r.line, r.column, r.message))
            .unwrap_or_else(|| "syntax error".into());
        return Err(CampaignError::Recipe(first));
    }
    let header = parsed.file.and_then(|f| f.recipe).ok_or_else(|| {
        CampaignError::Recipe(
            "a campaign needs a recipe header with variables, e.g. \
                 `recipe r(T: °C in 90..180 step 0.5) { … }`"
                .into(),
        )
    })?;
    if header.vars.is_empty() {
        return Err(CampaignError::Recipe(
            "the recipe declares no variables for the optimizer to set".into(),
        ));
    }
    let space = Space::new(
        header
            .vars
            .iter()
            .map(|v| (v.name.clone(), v.lo, v.hi, v.step)),
    );
    space
        .validate()
        .map_err(|e| CampaignError::Recipe(e.to_string()))?;
    Ok(space)
}

/// Parses an objective expression.
pub fn parse_objective(text: &str) -> Result<Objective, CampaignError> {
    Objective::parse(text).map_err(|e| CampaignError::Objective(e.to_string()))
}

/// The optimizer a campaign starts with: `name` (`snobfit`, `bo`, `portfolio`, `random`, `sobol`, `grid`)
/// with `settings` (the algorithm's fields, JSON object), the objective's direction and a seed.
pub fn new_optimizer(
    space: Space,
    name: &str,
    settings: &Value,
    seed: u64,
    direction: Direction,
) -> Result<Optimizer, CampaignError> {
    let mut fields = match settings {
        Value::Null => Map::new(),
        Value::Object(m) => m.clone(),
        _ => {
            return Err(CampaignError::Optimizer(
                "settings must be a JSON object".into(),
            ))
        }
    };
    let Some(defaults) = Algorithm::from_name(name) else {
        return Err(CampaignError::Optimizer(format!(
            "unknown optimizer {name:?}: snobfit, bo, portfolio, random, sobol or grid"
        )));
    };
    // A misspelt setting would silently fall back to its default: refuse it by name.
    let known = match serde_json::to_value(&defaults) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !known.contains_key(*k) || *k == "kind")
    {
        let mut names: Vec<&str> = known
            .keys()
            .map(String::as_str)
            .filter(|k| *k != "kind")
            .collect();
        names.sort_unstable();
        return Err(CampaignError::Optimizer(format!(
            "unknown setting {unknown:?} for {name} (settings: {})",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        )));
    }
    fields.insert("kind".into(), Value::String(name.to_owned()));
    let algorithm: Algorithm = serde_json::from_value(Value::Object(fields))
        .map_err(|e| CampaignError::Optimizer(format!("settings for {name}: {e}")))?;
    let goal = match direction {
        Direction::Maximize => Goal::Maximize,
        Direction::Minimize => Goal::Minimize,
    };
    Optimizer::new(OptimizerSpec {
        space,
        goal,
        seed,
        algorithm,
    })
    .map_err(|e| CampaignError::Optimizer(e.to_string()))
}

/// The variables of a point, by the space's parameter names.
pub fn bindings_of(space: &Space, x: &[f64]) -> Bindings {
    let mut b = Bindings::new();
    for (p, v) in space.parameters.iter().zip(x) {
        b.insert(p.name.clone(), *v);
    }
    b
}

/// A point as JSON (`{"T": 130.0, "C": 0.8}`).
pub fn params_json(space: &Space, x: &[f64]) -> Value {
    Value::Object(
        space
            .parameters
            .iter()
            .zip(x)
            .map(|(p, v)| (p.name.clone(), json!(v)))
            .collect(),
    )
}

/// The point a params JSON object names, in the space's order; `None` when a variable is
/// missing or not a number.
pub fn point_of(space: &Space, params: &Value) -> Option<Vec<f64>> {
    space
        .parameters
        .iter()
        .map(|p| params.get(&p.name).and_then(Value::as_f64))
        .collect()
}

/// Checks a person's point against the recipe's declared ranges.
pub fn check_point(space: &Space, params: &Value) -> Result<Vec<f64>, CampaignError> {
    let x = point_of(space, params).ok_or_else(|| {
        let names: Vec<&str> = space.parameters.iter().map(|p| p.name.as_str()).collect();
        CampaignError::Invalid(format!(
            "parameters must give a number for each of {}",
            names.join(", ")
        ))
    })?;
    for (p, v) in space.parameters.iter().zip(&x) {
        if !v.is_finite() || *v < p.lower || *v > p.upper {
            return Err(CampaignError::Invalid(format!(
                "{} = {v} is outside the recipe's range {}..{}",
                p.name, p.lower, p.upper
            )));
        }
    }
    Ok(x)
}

/// Binds a point into the recipe and compiles it against the lab.
pub fn compile_point(
    recipe: &str,
    lab: &LabDescriptor,
    bindings: &Bindings,
) -> Result<Program, CampaignError> {
    lang::compile_recipe(lab, recipe, bindings).map_err(|reports| {
        let first = reports
            .iter()
            .find(|r| r.severity == lang::Severity::Error)
            .or(reports.first());
        CampaignError::Compile(first.map_or_else(
            || "the recipe did not compile".into(),
            |r| format!("line {}, column {}: {}", r.line, r.column, r.message),
        ))
    })
}

/// What one experiment's records say.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// The agent's program outcome (`succeeded`, `failed`, `canceled`, `refused`).
    pub outcome: Option<String>,
    /// The inline absorption spectrum and its analysis window.
    pub absorption: Option<(Spectrum, Option<(f64, f64)>)>,
    /// The CD spectrum.
    pub cd: Option<Spectrum>,
    /// The first step failure, if any.
    pub step_error: Option<String>,
}

/// Reads an experiment's stored records (in delivery order).
pub fn measured(records: &[StoredRecord]) -> Measured {
    let mut out = Measured {
        outcome: None,
        absorption: None,
        cd: None,
        step_error: None,
    };
    for r in records {
        let Ok(v) = serde_json::from_str::<Value>(&r.body) else {
            continue;
        };
        let body = &v["body"];
        match body["type"].as_str() {
            Some("program_finished") => out.outcome = body["outcome"].as_str().map(str::to_owned),
            Some("step_failed") if out.step_error.is_none() => {
                out.step_error = body["message"].as_str().map(str::to_owned);
            }
            Some("measurement") => {
                let m = &body["measurement"];
                let axis = numbers(&m["wavelength_nm"]);
                match m["kind"].as_str() {
                    Some("absorption_spectrum") => {
                        if let Ok(s) = Spectrum::new(axis, numbers(&m["absorbance"])) {
                            let window =
                                match (m["window_nm"][0].as_f64(), m["window_nm"][1].as_f64()) {
                                    (Some(a), Some(b)) if a < b => Some((a, b)),
                                    _ => None,
                                };
                            out.absorption = Some((s, window));
                        }
                    }
                    Some("cd_spectrum") => {
                        if let Ok(s) = Spectrum::new(axis, numbers(&m["cd_mdeg"])) {
                            out.cd = Some(s);
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    out
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// The analysis of one experiment, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluated {
    /// Features (JSON object).
    pub features: Value,
    /// Fitted absorption peaks with the fitted curve (JSON object).
    pub peaks: Value,
    /// The objective's value, when it could be evaluated.
    pub objective: Option<f64>,
    /// Why the objective could not be evaluated.
    pub error: Option<String>,
}

/// Fits the absorption spectrum, reads the CD at the exciton and evaluates the objective.
pub fn evaluate(measured: &Measured, objective: &Objective) -> Result<Evaluated, String> {
    let (absorption, window) = measured
        .absorption
        .as_ref()
        .ok_or_else(|| "no absorption spectrum was measured".to_owned())?;
    let mut settings = AnalysisSettings::default();
    settings.fit.window_nm = *window;
    // The recipe scans CD over the first exciton: only a peak inside that scan can be it.
    settings.exciton_window_nm = measured.cd.as_ref().map(Spectrum::range_nm);
    let analysis = analyse_experiment(absorption, measured.cd.as_ref(), &settings)
        .map_err(|e| format!("analysis: {e}"))?;
    let features = features_json(&analysis);
    let peaks = peaks_json(&analysis, absorption);
    let (value, error) = match objective.evaluate(&analysis.features) {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(format!("objective: {e}"))),
    };
    Ok(Evaluated {
        features,
        peaks,
        objective: value,
        error,
    })
}

/// The features of one analysed experiment as stored (`experiments.features_json`) and read
/// back by the API's typed `Experiment.features`: the one definition of that JSON's shape.
/// Every number is optional on reading, as JSON has no NaN or infinity (serde_json writes them
/// as `null`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StoredFeatures {
    pub exciton_wavelength_nm: Option<f64>,
    pub exciton_absorbance: Option<f64>,
    pub exciton_fwhm_nm: Option<f64>,
    pub absorbance_at_exciton: Option<f64>,
    pub cd_at_exciton_mdeg: Option<f64>,
    pub cd_extremum_mdeg: Option<f64>,
    pub cd_extremum_wavelength_nm: Option<f64>,
    pub g_factor: Option<f64>,
    pub peak_count: Option<u32>,
    pub fit_r_squared: Option<f64>,
    pub fit_reduced_chi_square: Option<f64>,
}

/// One fitted absorption peak as stored (`experiments.peaks_json`, in [`StoredPeakFit`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StoredPeak {
    /// Position in the fit's peaks (by centre).
    pub index: u32,
    /// Whether it is the first exciton (the peak the features describe).
    pub exciton: bool,
    pub center_nm: Option<f64>,
    pub center_stderr_nm: Option<f64>,
    /// Height above the fitted baseline.
    pub amplitude: Option<f64>,
    pub amplitude_stderr: Option<f64>,
    pub fwhm_nm: Option<f64>,
    pub fwhm_stderr_nm: Option<f64>,
    pub area: Option<f64>,
}

/// The fitted curve, sampled for plots.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StoredCurve {
    pub wavelength_nm: Vec<Option<f64>>,
    pub absorbance: Vec<Option<f64>>,
}

/// The absorption fit of one experiment as stored (`experiments.peaks_json`) and read back by
/// the API's typed `Experiment.fittedPeaks`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StoredPeakFit {
    /// `gaussian`, `lorentzian`, `voigt` or `pseudovoigt`.
    pub shape: String,
    /// The fitted window, `[lower, upper]` in nm.
    pub window_nm: Vec<Option<f64>>,
    pub r_squared: Option<f64>,
    pub peaks: Vec<StoredPeak>,
    pub curve: StoredCurve,
}

fn features_json(a: &ExperimentAnalysis) -> Value {
    let f = &a.features;
    let stored = StoredFeatures {
        exciton_wavelength_nm: Some(f.exciton_wavelength_nm),
        exciton_absorbance: Some(f.exciton_absorbance),
        exciton_fwhm_nm: Some(f.exciton_fwhm_nm),
        absorbance_at_exciton: Some(f.absorbance_at_exciton),
        cd_at_exciton_mdeg: f.cd_at_exciton_mdeg,
        cd_extremum_mdeg: f.cd_extremum_mdeg,
        cd_extremum_wavelength_nm: f.cd_extremum_wavelength_nm,
        g_factor: f.g_factor,
        peak_count: Some(u32::try_from(f.peak_count).unwrap_or(u32::MAX)),
        fit_r_squared: Some(f.fit_r_squared),
        fit_reduced_chi_square: Some(f.fit_reduced_chi_square),
    };
    serde_json::to_value(stored).unwrap_or(Value::Null)
}

fn peaks_json(a: &ExperimentAnalysis, absorption: &Spectrum) -> Value {
    let fit = &a.absorption_fit;
    let peaks = fit
        .peaks
        .iter()
        .enumerate()
        .map(|(i, p)| StoredPeak {
            index: u32::try_from(i).unwrap_or(u32::MAX),
            exciton: i == a.exciton_peak,
            center_nm: Some(p.center_nm),
            center_stderr_nm: p.center_stderr_nm,
            amplitude: Some(p.amplitude),
            amplitude_stderr: p.amplitude_stderr,
            fwhm_nm: Some(p.fwhm_nm),
            fwhm_stderr_nm: p.fwhm_stderr_nm,
            area: Some(p.area),
        })
        .collect();
    // The fitted curve on every 8th sample of the fitted window (for plots).
    let (lo, hi) = fit.window_nm;
    let (xs, ys): (Vec<Option<f64>>, Vec<Option<f64>>) = absorption
        .wavelength_nm()
        .iter()
        .filter(|x| **x >= lo && **x <= hi)
        .step_by(8)
        .map(|x| (Some(*x), Some(fit.model_at(*x))))
        .unzip();
    let stored = StoredPeakFit {
        shape: format!("{:?}", fit.shape).to_lowercase(),
        window_nm: vec![Some(lo), Some(hi)],
        r_squared: Some(fit.statistics.r_squared),
        peaks,
        curve: StoredCurve {
            wavelength_nm: xs,
            absorbance: ys,
        },
    };
    serde_json::to_value(stored).unwrap_or(Value::Null)
}

/// Whether `value` reaches `target` in the objective's direction.
pub fn reaches(direction: Direction, value: f64, target: f64) -> bool {
    match direction {
        Direction::Maximize => value >= target,
        Direction::Minimize => value <= target,
    }
}
