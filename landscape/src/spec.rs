//! Serde schema of the landscape TOML format and its validation into a [`crate::Landscape`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::builtin::Builtin;
use crate::{Landscape, LandscapeError, Optimum, Sense, Term, Variable};

/// Top-level document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LandscapeSpec {
    /// Short name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// `maximize` (default) or `minimize`.
    #[serde(default)]
    pub sense: Sense,
    /// Gaussian measurement noise sd (≥ 0).
    #[serde(default)]
    pub noise_sd: f64,
    /// Variables in coordinate order.
    pub variables: Vec<VariableSpec>,
    /// Summed terms.
    pub terms: Vec<TermSpec>,
    /// Known global optimum.
    pub optimum: OptimumSpec,
}

/// One `[[variables]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariableSpec {
    /// Name used by terms.
    pub name: String,
    /// Free-text unit.
    #[serde(default)]
    pub unit: String,
    /// Lower bound.
    pub lower: f64,
    /// Upper bound (> lower).
    pub upper: f64,
    /// Grid step of the experiment (optional, > 0).
    #[serde(default)]
    pub resolution: Option<f64>,
}

/// The `[optimum]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimumSpec {
    /// Location by variable name.
    pub x: BTreeMap<String, f64>,
    /// Noise-free value there.
    pub value: f64,
}

fn one() -> f64 {
    1.0
}

/// One term; `kind` selects the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TermSpec {
    /// `value`.
    Constant {
        /// The constant.
        value: f64,
    },
    /// `amplitude · exp(−½ Σ ((x_v − center_v)/width_v)²)` over the variables named in `center`.
    Gaussian {
        /// Peak height (default 1).
        #[serde(default = "one")]
        amplitude: f64,
        /// Centre per variable.
        center: BTreeMap<String, f64>,
        /// Width (sd) per variable; same keys as `center`.
        width: BTreeMap<String, f64>,
    },
    /// Falling edge `amplitude / (1 + exp((x − edge)/width))` (≈ amplitude below the edge, ≈ 0
    /// above); `rising = true` mirrors it.
    Sigmoid {
        /// Height (default 1).
        #[serde(default = "one")]
        amplitude: f64,
        /// Variable name.
        variable: String,
        /// Midpoint of the edge.
        edge: f64,
        /// Width of the edge (> 0).
        width: f64,
        /// Rising instead of falling.
        #[serde(default)]
        rising: bool,
    },
    /// `offset + Σ coefficients_v · x_v`.
    Linear {
        /// Constant part.
        #[serde(default)]
        offset: f64,
        /// Coefficient per variable.
        coefficients: BTreeMap<String, f64>,
    },
    /// `coefficient · Π x_v^powers_v` (integer powers; sums of monomials make polynomials).
    Monomial {
        /// Factor (default 1).
        #[serde(default = "one")]
        coefficient: f64,
        /// Integer power per variable.
        powers: BTreeMap<String, i32>,
    },
    /// Product of the `factors` terms.
    Product {
        /// Factors.
        factors: Vec<TermSpec>,
    },
    /// `offset + scale · function(variables…)` for a named standard test function
    /// (`branin`, `hartmann3`).
    Builtin {
        /// Function name.
        function: String,
        /// Arguments by variable name, in order (default: all variables in order).
        #[serde(default)]
        variables: Option<Vec<String>>,
        /// Multiplier (default 1).
        #[serde(default = "one")]
        scale: f64,
        /// Added constant.
        #[serde(default)]
        offset: f64,
    },
}

fn invalid(msg: impl Into<String>) -> LandscapeError {
    LandscapeError::Invalid(msg.into())
}

fn finite(name: &str, v: f64) -> Result<f64, LandscapeError> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(invalid(format!("{name} must be finite")))
    }
}

impl LandscapeSpec {
    /// Validate and resolve names.
    pub fn compile(&self) -> Result<Landscape, LandscapeError> {
        if self.variables.is_empty() {
            return Err(invalid("at least one variable is required"));
        }
        if !(self.noise_sd.is_finite() && self.noise_sd >= 0.0) {
            return Err(invalid("noise_sd must be finite and ≥ 0"));
        }
        let mut variables = Vec::with_capacity(self.variables.len());
        for v in &self.variables {
            if variables.iter().any(|w: &Variable| w.name == v.name) {
                return Err(invalid(format!("duplicate variable {:?}", v.name)));
            }
            finite("lower", v.lower)?;
            finite("upper", v.upper)?;
            if v.upper <= v.lower {
                return Err(invalid(format!("variable {:?}: upper ≤ lower", v.name)));
            }
            if let Some(r) = v.resolution {
                if !(r.is_finite() && r > 0.0 && r <= v.upper - v.lower) {
                    return Err(invalid(format!(
                        "variable {:?}: resolution must be in (0, upper − lower]",
                        v.name
                    )));
                }
            }
            variables.push(Variable {
                name: v.name.clone(),
                unit: v.unit.clone(),
                lower: v.lower,
                upper: v.upper,
                resolution: v.resolution,
            });
        }
        if self.terms.is_empty() {
            return Err(invalid("at least one term is required"));
        }
        let names: Vec<&str> = variables.iter().map(|v| v.name.as_str()).collect();
        let terms = self
            .terms
            .iter()
            .map(|t| compile_term(t, &names))
            .collect::<Result<Vec<_>, _>>()?;
        let mut x = Vec::with_capacity(names.len());
        for n in &names {
            let v = self
                .optimum
                .x
                .get(*n)
                .ok_or_else(|| invalid(format!("optimum.x lacks variable {n:?}")))?;
            x.push(finite("optimum.x", *v)?);
        }
        if let Some(k) = self.optimum.x.keys().find(|k| !names.contains(&k.as_str())) {
            return Err(invalid(format!("optimum.x names unknown variable {k:?}")));
        }
        Ok(Landscape {
            name: self.name.clone(),
            description: self.description.clone(),
            sense: self.sense,
            noise_sd: self.noise_sd,
            variables,
            terms,
            optimum: Optimum {
                x,
                value: finite("optimum.value", self.optimum.value)?,
            },
        })
    }
}

fn index(names: &[&str], n: &str) -> Result<usize, LandscapeError> {
    names
        .iter()
        .position(|m| *m == n)
        .ok_or_else(|| invalid(format!("unknown variable {n:?}")))
}

fn compile_term(t: &TermSpec, names: &[&str]) -> Result<Term, LandscapeError> {
    Ok(match t {
        TermSpec::Constant { value } => Term::Constant(finite("constant", *value)?),
        TermSpec::Gaussian {
            amplitude,
            center,
            width,
        } => {
            if center.is_empty() || center.len() != width.len() {
                return Err(invalid(
                    "gaussian: center and width must name the same, non-empty set of variables",
                ));
            }
            let mut axes = Vec::new();
            for (n, c) in center {
                let w = width
                    .get(n)
                    .ok_or_else(|| invalid(format!("gaussian: no width for {n:?}")))?;
                if !(w.is_finite() && *w > 0.0) {
                    return Err(invalid("gaussian: width must be > 0"));
                }
                axes.push((index(names, n)?, finite("center", *c)?, *w));
            }
            Term::Gaussian {
                amplitude: finite("amplitude", *amplitude)?,
                axes,
            }
        }
        TermSpec::Sigmoid {
            amplitude,
            variable,
            edge,
            width,
            rising,
        } => {
            if !(width.is_finite() && *width > 0.0) {
                return Err(invalid("sigmoid: width must be > 0"));
            }
            Term::Sigmoid {
                amplitude: finite("amplitude", *amplitude)?,
                var: index(names, variable)?,
                edge: finite("edge", *edge)?,
                width: *width,
                rising: *rising,
            }
        }
        TermSpec::Linear {
            offset,
            coefficients,
        } => Term::Linear {
            offset: finite("offset", *offset)?,
            coefficients: coefficients
                .iter()
                .map(|(n, a)| Ok((index(names, n)?, finite("coefficient", *a)?)))
                .collect::<Result<_, LandscapeError>>()?,
        },
        TermSpec::Monomial {
            coefficient,
            powers,
        } => Term::Monomial {
            coefficient: finite("coefficient", *coefficient)?,
            powers: powers
                .iter()
                .map(|(n, p)| Ok((index(names, n)?, *p)))
                .collect::<Result<_, LandscapeError>>()?,
        },
        TermSpec::Product { factors } => {
            if factors.is_empty() {
                return Err(invalid("product: needs at least one factor"));
            }
            Term::Product(
                factors
                    .iter()
                    .map(|f| compile_term(f, names))
                    .collect::<Result<_, _>>()?,
            )
        }
        TermSpec::Builtin {
            function,
            variables,
            scale,
            offset,
        } => {
            let function = Builtin::from_name(function)
                .ok_or_else(|| invalid(format!("unknown builtin function {function:?}")))?;
            let args: Vec<usize> = match variables {
                Some(vs) => vs
                    .iter()
                    .map(|n| index(names, n))
                    .collect::<Result<_, _>>()?,
                None => (0..names.len()).collect(),
            };
            if args.len() != function.arity() {
                return Err(invalid(format!(
                    "builtin {function:?} takes {} variables, got {}",
                    function.arity(),
                    args.len()
                )));
            }
            Term::Builtin {
                function,
                args,
                scale: finite("scale", *scale)?,
                offset: finite("offset", *offset)?,
            }
        }
    })
}
