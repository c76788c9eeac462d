//! Optimizer engine: SNOBFIT, Gaussian-process Bayesian optimisation and baselines behind one ask/tell interface (pure, no I/O).
//!
//! The campaign loop builds an [`Optimizer`] from an [`OptimizerSpec`] (serde: the search space,
//! the goal, a seed and the algorithm with its settings), then alternates [`Optimizer::ask`]
//! (a batch of [`Proposal`]s, each clamped into the box and rounded to the resolution grid) and
//! [`Optimizer::tell`] (one [`Observation`] per measured point: a value with optional uncertainty,
//! or a failure). After every step the server may store [`Optimizer::state_json`] and later
//! resume with [`Optimizer::from_state_json`]; the resumed optimizer makes exactly the same
//! proposals as the original would have (all randomness comes from a seeded generator that is
//! part of the state).
//!
//! Algorithms: [`snobfit`] (Huyer & Neumaier 2008), [`bo`] (GP with Matérn 5/2 ARD kernel and
//! noise-aware expected improvement), and the random / Sobol / grid [`baselines`]. The
//! benchmark against response landscapes lives outside, in the `maosic-bench` crate.

// Numerical kernels index several parallel arrays by coordinate; index loops read clearer there.
#![allow(clippy::needless_range_loop)]

pub mod baselines;
pub mod bo;
pub mod limits;
mod linalg;
pub(crate) mod nonfinite;
pub mod portfolio;
pub mod rng;
pub mod snobfit;
pub mod space;

use serde::{Deserialize, Serialize};

pub use space::{Parameter, Space};

/// Errors of the optimizer engine.
#[derive(Debug, thiserror::Error)]
pub enum OptimizerError {
    /// The search space is invalid (empty, bounds reversed, bad resolution, ...).
    #[error("invalid search space: {0}")]
    InvalidSpace(String),
    /// The algorithm settings are invalid.
    #[error("invalid settings: {0}")]
    InvalidSettings(String),
    /// A told point has the wrong number of coordinates or non-finite coordinates.
    #[error("invalid point: {0}")]
    InvalidPoint(String),
    /// The stored state could not be (de)serialised.
    #[error("optimizer state: {0}")]
    State(String),
}

/// Whether the told values are to be minimised or maximised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    /// Smaller is better (a loss). The default.
    #[default]
    Minimize,
    /// Larger is better (e.g. |CD|).
    Maximize,
}

/// The algorithm and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Algorithm {
    /// SNOBFIT (Huyer & Neumaier 2008).
    Snobfit(#[serde(default)] snobfit::SnobfitSettings),
    /// Gaussian-process Bayesian optimisation.
    Bo(#[serde(default)] bo::BoSettings),
    /// Uniform random proposals.
    Random,
    /// Scrambled Sobol sequence.
    Sobol,
    /// Full-factorial grid in random order.
    Grid(#[serde(default)] baselines::GridSettings),
    /// BO and SNOBFIT sharing the asks (issue #16).
    Portfolio(#[serde(default)] portfolio::PortfolioSettings),
}

impl Algorithm {
    /// Parse a short name (`snobfit`, `bo`, `random`, `sobol`, `grid`) with default settings.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "snobfit" => Self::Snobfit(Default::default()),
            "bo" => Self::Bo(Default::default()),
            "random" => Self::Random,
            "sobol" => Self::Sobol,
            "grid" => Self::Grid(Default::default()),
            "portfolio" => Self::Portfolio(Default::default()),
            _ => return None,
        })
    }

    /// The short name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Snobfit(_) => "snobfit",
            Self::Bo(_) => "bo",
            Self::Random => "random",
            Self::Sobol => "sobol",
            Self::Grid(_) => "grid",
            Self::Portfolio(_) => "portfolio",
        }
    }
}

/// Everything needed to create an optimizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerSpec {
    /// Parameters with bounds and resolution.
    pub space: Space,
    /// Minimise (default) or maximise the told values.
    #[serde(default)]
    pub goal: Goal,
    /// Seed of all randomness.
    #[serde(default)]
    pub seed: u64,
    /// The algorithm.
    pub algorithm: Algorithm,
}

/// One measurement result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// Measured value; `None` (or a non-finite value given to [`Observation::new`]) = failed
    /// experiment.
    pub value: Option<f64>,
    /// Standard uncertainty of the value, if known.
    #[serde(default)]
    pub sd: Option<f64>,
}

impl Observation {
    /// A value without known uncertainty; NaN or ±∞ mean a failed experiment.
    pub fn new(value: f64) -> Self {
        Self {
            value: value.is_finite().then_some(value),
            sd: None,
        }
    }

    /// A value with its standard uncertainty (ignored unless finite and > 0).
    pub fn with_sd(value: f64, sd: f64) -> Self {
        Self {
            value: value.is_finite().then_some(value),
            sd: (sd.is_finite() && sd > 0.0).then_some(sd),
        }
    }

    /// A failed experiment (no value).
    pub fn failed() -> Self {
        Self {
            value: None,
            sd: None,
        }
    }
}

/// Why a point was proposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum ProposalKind {
    /// SNOBFIT point class 1–5 (1 best prediction, 2 local minimiser, 3 alternative good
    /// point, 4 unexplored region, 5 space filling).
    Snobfit {
        /// The class.
        class: u8,
    },
    /// Space-filling initial design (BO).
    InitialDesign,
    /// Maximiser of expected improvement (BO); `batch_index` > 0 for Kriging-believer points.
    ExpectedImprovement {
        /// Position in the batch.
        batch_index: u32,
    },
    /// A baseline (random, Sobol, grid) or a fallback random point.
    Baseline,
}

/// A point to measure next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// Coordinates, one per parameter, inside the bounds and on the resolution grid.
    pub x: Vec<f64>,
    /// Why it was proposed.
    pub kind: ProposalKind,
    /// Model-predicted value (in the caller's units and sense), when the algorithm has one.
    pub predicted: Option<f64>,
}

/// A ready-to-use optimizer (any algorithm). Serialisable as a whole.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Optimizer {
    spec: OptimizerSpec,
    engine: Engine,
    /// Best told value (caller's sense) and its point.
    best: Option<(Vec<f64>, f64)>,
    told: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
#[allow(clippy::large_enum_variant)]
enum Engine {
    Snobfit(snobfit::Snobfit),
    Bo(bo::Bo),
    Random(baselines::RandomSearch),
    Sobol(baselines::SobolSearch),
    Grid(baselines::GridSearch),
    Portfolio(Box<portfolio::Portfolio>),
}

impl Optimizer {
    /// Create an optimizer; validates the space and the settings.
    pub fn new(spec: OptimizerSpec) -> Result<Self, OptimizerError> {
        spec.space.validate()?;
        spec.algorithm.validate_for(&spec.space)?;
        let s = &spec.space;
        let engine = match &spec.algorithm {
            Algorithm::Snobfit(set) => Engine::Snobfit(snobfit::Snobfit::new(s, set, spec.seed)?),
            Algorithm::Bo(set) => Engine::Bo(bo::Bo::new(s, set, spec.seed)?),
            Algorithm::Random => Engine::Random(baselines::RandomSearch::new(s, spec.seed)),
            Algorithm::Sobol => Engine::Sobol(baselines::SobolSearch::new(s, spec.seed)),
            Algorithm::Grid(set) => Engine::Grid(baselines::GridSearch::new(s, set, spec.seed)?),
            Algorithm::Portfolio(set) => {
                Engine::Portfolio(Box::new(portfolio::Portfolio::new(s, set, spec.seed)?))
            }
        };
        Ok(Self {
            spec,
            engine,
            best: None,
            told: 0,
        })
    }

    /// The spec this optimizer was created from.
    pub fn spec(&self) -> &OptimizerSpec {
        &self.spec
    }

    /// Propose up to `n` points to measure next (exactly `n` unless the grid is exhausted).
    /// Deterministic given the seed and the history of calls.
    pub fn ask(&mut self, n: usize) -> Vec<Proposal> {
        if n == 0 {
            return Vec::new();
        }
        let mut out = match &mut self.engine {
            Engine::Snobfit(e) => e.ask(n),
            Engine::Bo(e) => e.ask(n),
            Engine::Random(e) => e.ask(n),
            Engine::Sobol(e) => e.ask(n),
            Engine::Grid(e) => e.ask(n),
            Engine::Portfolio(e) => e.ask(n),
        };
        if self.spec.goal == Goal::Maximize {
            for p in &mut out {
                p.predicted = p.predicted.map(|v| -v);
            }
        }
        out
    }

    /// Report the result of measuring `x` (any point in the box; it is snapped to the grid).
    /// Re-measurements of the same point are averaged (SNOBFIT) or kept as replicates (BO).
    pub fn tell(&mut self, x: &[f64], obs: Observation) -> Result<(), OptimizerError> {
        let space = &self.spec.space;
        if x.len() != space.dim() {
            return Err(OptimizerError::InvalidPoint(format!(
                "{} coordinates for {} parameters",
                x.len(),
                space.dim()
            )));
        }
        if x.iter().any(|v| !v.is_finite()) {
            return Err(OptimizerError::InvalidPoint(
                "non-finite coordinate".to_string(),
            ));
        }
        let xs = space.snap(x);
        let loss = obs.value.map(|v| match self.spec.goal {
            Goal::Minimize => v,
            Goal::Maximize => -v,
        });
        if let Some(v) = obs.value {
            let better = match (&self.best, self.spec.goal) {
                (None, _) => true,
                (Some((_, b)), Goal::Minimize) => v < *b,
                (Some((_, b)), Goal::Maximize) => v > *b,
            };
            if better {
                self.best = Some((xs.clone(), v));
            }
        }
        self.told += 1;
        match &mut self.engine {
            Engine::Snobfit(e) => e.tell(xs, loss, obs.sd),
            Engine::Bo(e) => e.tell(xs, loss, obs.sd),
            Engine::Random(e) => e.tell(xs),
            Engine::Sobol(e) => e.tell(xs),
            Engine::Grid(e) => e.tell(xs),
            Engine::Portfolio(e) => e.tell(xs, loss, obs.sd),
        }
        Ok(())
    }

    /// Best told value so far (caller's sense) and where it was measured. Single noisy
    /// measurements: the best *observed* value, not a model estimate.
    pub fn best(&self) -> Option<(&[f64], f64)> {
        self.best.as_ref().map(|(x, v)| (x.as_slice(), *v))
    }

    /// The SNOBFIT state (boxes, neighbours, local fits) when the algorithm is SNOBFIT.
    pub fn snobfit_state(&self) -> Option<&snobfit::Snobfit> {
        match &self.engine {
            Engine::Snobfit(s) => Some(s),
            _ => None,
        }
    }

    /// Number of observations told so far.
    pub fn observations(&self) -> u64 {
        self.told
    }

    /// Serialise the whole state (JSON).
    pub fn state_json(&self) -> Result<String, OptimizerError> {
        serde_json::to_string(self).map_err(|e| OptimizerError::State(e.to_string()))
    }

    /// Resume from [`Self::state_json`] output.
    /// The stored settings are checked against their bounds again, so a state written before
    /// a bound existed cannot make the server allocate or compute without limit.
    pub fn from_state_json(text: &str) -> Result<Self, OptimizerError> {
        let optimizer: Self =
            serde_json::from_str(text).map_err(|e| OptimizerError::State(e.to_string()))?;
        optimizer
            .spec
            .algorithm
            .validate_for(&optimizer.spec.space)?;
        Ok(optimizer)
    }
}

#[cfg(test)]
mod tests;
