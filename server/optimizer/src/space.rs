//! The search space: named parameters with bounds and a resolution grid; clamping, rounding,
//! normalisation and the "same point" test used by every algorithm.

use serde::{Deserialize, Serialize};

use crate::OptimizerError;

/// Largest supported number of parameters (dimensions of the Sobol sequence).
pub const MAX_PARAMETERS: usize = 256;

/// One continuous parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parameter {
    /// Name (e.g. `T`).
    pub name: String,
    /// Lower bound.
    pub lower: f64,
    /// Upper bound (> lower).
    pub upper: f64,
    /// Grid step; proposals are `lower + k·resolution`. `None` → `(upper − lower)·1e-5`
    /// (SNOBFIT's default).
    #[serde(default)]
    pub resolution: Option<f64>,
}

/// A box of parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Space {
    /// The parameters, in coordinate order.
    pub parameters: Vec<Parameter>,
}

impl Space {
    /// Build from (name, lower, upper, resolution) tuples.
    pub fn new(params: impl IntoIterator<Item = (String, f64, f64, Option<f64>)>) -> Self {
        Self {
            parameters: params
                .into_iter()
                .map(|(name, lower, upper, resolution)| Parameter {
                    name,
                    lower,
                    upper,
                    resolution,
                })
                .collect(),
        }
    }

    /// Check bounds and resolutions.
    pub fn validate(&self) -> Result<(), OptimizerError> {
        if self.parameters.is_empty() {
            return Err(OptimizerError::InvalidSpace("no parameters".into()));
        }
        if self.parameters.len() > MAX_PARAMETERS {
            return Err(OptimizerError::InvalidSpace(format!(
                "at most {MAX_PARAMETERS} parameters (Sobol sequence dimensions)"
            )));
        }
        for p in &self.parameters {
            if !(p.lower.is_finite() && p.upper.is_finite() && p.upper > p.lower) {
                return Err(OptimizerError::InvalidSpace(format!(
                    "{}: need finite lower < upper",
                    p.name
                )));
            }
            if let Some(r) = p.resolution {
                if !(r.is_finite() && r > 0.0 && r <= p.upper - p.lower) {
                    return Err(OptimizerError::InvalidSpace(format!(
                        "{}: resolution must be in (0, upper − lower]",
                        p.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Number of parameters.
    pub fn dim(&self) -> usize {
        self.parameters.len()
    }

    /// Lower bounds.
    pub fn lower(&self) -> Vec<f64> {
        self.parameters.iter().map(|p| p.lower).collect()
    }

    /// Upper bounds.
    pub fn upper(&self) -> Vec<f64> {
        self.parameters.iter().map(|p| p.upper).collect()
    }

    /// Grid steps (resolution or the SNOBFIT default).
    pub fn dx(&self) -> Vec<f64> {
        self.parameters.iter().map(Parameter::step).collect()
    }

    /// Clamp into the box and round to the grid (never leaves the box).
    pub fn snap(&self, x: &[f64]) -> Vec<f64> {
        self.parameters
            .iter()
            .zip(x)
            .map(|(p, &v)| p.snap(v))
            .collect()
    }

    /// Grid index of each coordinate of a snapped point (exact identity of grid points).
    pub fn grid_index(&self, x: &[f64]) -> Vec<i64> {
        self.parameters
            .iter()
            .zip(x)
            .map(|(p, &v)| p.index(v))
            .collect()
    }

    /// Map to the unit cube.
    pub fn to_unit(&self, x: &[f64]) -> Vec<f64> {
        self.parameters
            .iter()
            .zip(x)
            .map(|(p, &v)| (v - p.lower) / (p.upper - p.lower))
            .collect()
    }

    /// Map from the unit cube (no rounding).
    pub fn from_unit(&self, u: &[f64]) -> Vec<f64> {
        self.parameters
            .iter()
            .zip(u)
            .map(|(p, &v)| p.lower + v * (p.upper - p.lower))
            .collect()
    }

    /// Number of grid points per parameter (saturating).
    pub fn levels(&self) -> Vec<u64> {
        self.parameters
            .iter()
            .map(|p| (p.index(p.upper).max(0) as u64).saturating_add(1))
            .collect()
    }
}

impl Parameter {
    /// Grid step.
    pub fn step(&self) -> f64 {
        self.resolution.unwrap_or((self.upper - self.lower) * 1e-5)
    }

    fn index(&self, v: f64) -> i64 {
        let k = ((v - self.lower) / self.step()).round();
        let kmax = ((self.upper - self.lower) / self.step() + 1e-9).floor();
        k.clamp(0.0, kmax) as i64
    }

    /// Value of grid index `k`, rounded to a few digits below the step so that printed
    /// values are clean (130.5, not 130.50000000000003).
    pub fn value(&self, k: i64) -> f64 {
        let step = self.step();
        let v = self.lower + k as f64 * step;
        let digits = (-step.log10()).ceil().max(0.0) as i32 + 6;
        let scale = 10f64.powi(digits.min(15));
        let r = (v * scale).round() / scale;
        r.clamp(self.lower, self.upper)
    }

    /// Clamp and round to the grid.
    pub fn snap(&self, v: f64) -> f64 {
        let v = if v.is_finite() { v } else { self.lower };
        self.value(self.index(v.clamp(self.lower, self.upper)))
    }
}
