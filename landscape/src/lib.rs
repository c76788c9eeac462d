//! Response landscapes (data files + a pure evaluator) shared by the virtual lab and the optimizer benchmark.
//!
//! A landscape is data: a TOML document naming the variables (with bounds and an optional
//! resolution), a sum of terms (Gaussian bumps, sigmoid edges, linear terms, monomials, products of
//! those, and built-in standard test functions), the measurement noise sd, the optimisation sense
//! and the known global optimum. The format is documented in this crate's `README.md`.
//!
//! The crate does no I/O: callers read files and hand the text to [`Landscape::from_toml_str`].
//! The paper's |CD| landscape is embedded ([`Landscape::paper`]), as are Branin and Hartmann-3.
//! [`family`] generates seeded families of landscapes in the same format (issue #16).

mod builtin;
pub mod family;
mod spec;

use rand::Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

pub use spec::{LandscapeSpec, OptimumSpec, TermSpec, VariableSpec};

/// The embedded paper landscape (|CD| in mdeg over T in °C and C in mmol/ml).
pub const PAPER_TOML: &str = include_str!("../landscapes/paper.toml");
/// The embedded Branin landscape (minimise).
pub const BRANIN_TOML: &str = include_str!("../landscapes/branin.toml");
/// The embedded Hartmann-3 landscape (minimise).
pub const HARTMANN3_TOML: &str = include_str!("../landscapes/hartmann3.toml");

/// Errors from parsing or validating a landscape document, or from evaluating it.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LandscapeError {
    /// The text is not valid TOML for the landscape schema.
    #[error("landscape TOML: {0}")]
    Parse(String),
    /// The document parsed but is inconsistent (unknown variable, bad bounds, ...).
    #[error("invalid landscape: {0}")]
    Invalid(String),
    /// `eval` was given a point of the wrong dimension.
    #[error("point has {got} coordinates, landscape has {expected} variables")]
    Dimension {
        /// Coordinates given.
        got: usize,
        /// Variables of the landscape.
        expected: usize,
    },
    /// No embedded landscape with that name.
    #[error("unknown built-in landscape {0:?} (known: paper, branin, hartmann3)")]
    UnknownBuiltin(String),
    /// No generated family class or set with that name.
    #[error("unknown landscape family class or set {0:?} (classes: narrow-broad, edge, twin, rugged, flow; sets: tune, test)")]
    UnknownFamily(String),
}

/// Whether larger or smaller values are better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Sense {
    /// Larger is better (the paper's |CD|).
    #[default]
    Maximize,
    /// Smaller is better (Branin, Hartmann-3).
    Minimize,
}

/// One named, bounded variable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variable {
    /// Name used in the terms (e.g. `T`).
    pub name: String,
    /// Free-text unit (e.g. `°C`).
    pub unit: String,
    /// Lower bound.
    pub lower: f64,
    /// Upper bound.
    pub upper: f64,
    /// Experimental resolution (grid step); `None` means effectively continuous.
    pub resolution: Option<f64>,
}

/// The known global optimum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Optimum {
    /// Location, one coordinate per variable, in variable order.
    pub x: Vec<f64>,
    /// Noise-free value at `x`.
    pub value: f64,
}

/// A compiled term: variable names resolved to indices.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Term {
    Constant(f64),
    Gaussian {
        amplitude: f64,
        /// (variable index, centre, width)
        axes: Vec<(usize, f64, f64)>,
    },
    Sigmoid {
        amplitude: f64,
        var: usize,
        edge: f64,
        width: f64,
        rising: bool,
    },
    Linear {
        offset: f64,
        coefficients: Vec<(usize, f64)>,
    },
    Monomial {
        coefficient: f64,
        powers: Vec<(usize, i32)>,
    },
    Product(Vec<Term>),
    Builtin {
        function: builtin::Builtin,
        args: Vec<usize>,
        scale: f64,
        offset: f64,
    },
}

impl Term {
    fn eval(&self, x: &[f64]) -> f64 {
        match self {
            Term::Constant(v) => *v,
            Term::Gaussian { amplitude, axes } => {
                let q: f64 = axes
                    .iter()
                    .map(|&(i, c, w)| {
                        let z = (x[i] - c) / w;
                        z * z
                    })
                    .sum();
                amplitude * (-0.5 * q).exp()
            }
            Term::Sigmoid {
                amplitude,
                var,
                edge,
                width,
                rising,
            } => {
                let z = (x[*var] - edge) / width;
                let z = if *rising { -z } else { z };
                amplitude / (1.0 + z.exp())
            }
            Term::Linear {
                offset,
                coefficients,
            } => offset + coefficients.iter().map(|&(i, a)| a * x[i]).sum::<f64>(),
            Term::Monomial {
                coefficient,
                powers,
            } => coefficient * powers.iter().map(|&(i, p)| x[i].powi(p)).product::<f64>(),
            Term::Product(factors) => factors.iter().map(|t| t.eval(x)).product(),
            Term::Builtin {
                function,
                args,
                scale,
                offset,
            } => {
                let a: Vec<f64> = args.iter().map(|&i| x[i]).collect();
                offset + scale * function.eval(&a)
            }
        }
    }
}

/// A validated landscape, ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct Landscape {
    name: String,
    description: String,
    sense: Sense,
    noise_sd: f64,
    variables: Vec<Variable>,
    terms: Vec<Term>,
    optimum: Optimum,
}

impl Landscape {
    /// Parse and validate a landscape document.
    pub fn from_toml_str(text: &str) -> Result<Self, LandscapeError> {
        let spec: LandscapeSpec =
            toml::from_str(text).map_err(|e| LandscapeError::Parse(e.to_string()))?;
        spec.compile()
    }

    /// The paper's |CD| landscape (the default of the virtual lab).
    pub fn paper() -> Self {
        Self::embedded(PAPER_TOML)
    }

    /// The Branin test function (minimise; optimum 0.397887).
    pub fn branin() -> Self {
        Self::embedded(BRANIN_TOML)
    }

    /// The Hartmann-3 test function (minimise; optimum −3.86278).
    pub fn hartmann3() -> Self {
        Self::embedded(HARTMANN3_TOML)
    }

    /// An embedded landscape by name: `paper`, `branin` or `hartmann3`.
    pub fn builtin(name: &str) -> Result<Self, LandscapeError> {
        match name {
            "paper" => Ok(Self::paper()),
            "branin" => Ok(Self::branin()),
            "hartmann3" => Ok(Self::hartmann3()),
            other => Err(LandscapeError::UnknownBuiltin(other.to_string())),
        }
    }

    fn embedded(text: &str) -> Self {
        match Self::from_toml_str(text) {
            Ok(l) => l,
            // The embedded files are validated by this crate's tests; reaching this is a build defect.
            Err(e) => panic!("embedded landscape is invalid: {e}"),
        }
    }

    /// Short name from the file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Free-text description from the file.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Whether larger or smaller values are better.
    pub fn sense(&self) -> Sense {
        self.sense
    }

    /// Measurement noise standard deviation (same unit as the value).
    pub fn noise_sd(&self) -> f64 {
        self.noise_sd
    }

    /// The variables, in coordinate order.
    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    /// Index of a variable by name.
    pub fn variable_index(&self, name: &str) -> Option<usize> {
        self.variables.iter().position(|v| v.name == name)
    }

    /// The known global optimum.
    pub fn optimum(&self) -> &Optimum {
        &self.optimum
    }

    /// Noise-free value at `x` (one coordinate per variable, in variable order).
    ///
    /// Points outside the bounds are evaluated as given (the formula extends naturally).
    pub fn try_eval(&self, x: &[f64]) -> Result<f64, LandscapeError> {
        if x.len() != self.variables.len() {
            return Err(LandscapeError::Dimension {
                got: x.len(),
                expected: self.variables.len(),
            });
        }
        Ok(self.terms.iter().map(|t| t.eval(x)).sum())
    }

    /// Noise-free value at `x`; NaN if `x` has the wrong dimension.
    pub fn eval(&self, x: &[f64]) -> f64 {
        self.try_eval(x).unwrap_or(f64::NAN)
    }

    /// Value at `x` plus Gaussian noise of sd [`Self::noise_sd`].
    pub fn eval_noisy<R: Rng + ?Sized>(&self, x: &[f64], rng: &mut R) -> f64 {
        let v = self.eval(x);
        v + self.noise(rng)
    }

    /// One draw of the measurement noise.
    pub fn noise<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        match Normal::new(0.0, self.noise_sd) {
            Ok(n) if self.noise_sd > 0.0 => n.sample(rng),
            _ => 0.0,
        }
    }

    /// Whether `value` is within `fraction` (e.g. 0.05) of the global optimum, in the landscape's
    /// sense: maximise → `value ≥ opt − fraction·|opt|`; minimise → `value ≤ opt + fraction·|opt|`.
    pub fn within_fraction_of_optimum(&self, value: f64, fraction: f64) -> bool {
        let opt = self.optimum.value;
        let tol = fraction * opt.abs();
        match self.sense {
            Sense::Maximize => value >= opt - tol,
            Sense::Minimize => value <= opt + tol,
        }
    }

    /// The value converted to a loss to minimise (negated when the sense is maximise).
    pub fn to_loss(&self, value: f64) -> f64 {
        match self.sense {
            Sense::Maximize => -value,
            Sense::Minimize => value,
        }
    }
}

#[cfg(test)]
mod tests;
