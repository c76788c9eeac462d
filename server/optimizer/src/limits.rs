//! Documented bounds on every optimizer setting and on the problem size each algorithm accepts.
//!
//! A campaign's settings come from a user: an unbounded `candidates` or `restarts` would let one
//! campaign allocate or compute without limit inside the shared server. [`Algorithm::validate`]
//! checks each field against the ranges below (the error names the field and its range), and
//! [`Algorithm::max_observations`] caps the budget an algorithm may be run with (a GP's cost is
//! cubic in the number of observations).

use crate::{Algorithm, OptimizerError, Space};

/// An inclusive range of a setting, as documented.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bound {
    /// The setting's name as written in `optimizerSettings`.
    pub field: &'static str,
    /// Smallest accepted value.
    pub min: f64,
    /// Largest accepted value.
    pub max: f64,
}

impl Bound {
    const fn new(field: &'static str, min: f64, max: f64) -> Self {
        Self { field, min, max }
    }

    fn check(&self, algorithm: &str, value: f64) -> Result<(), OptimizerError> {
        if value.is_finite() && value >= self.min && value <= self.max {
            Ok(())
        } else {
            Err(OptimizerError::InvalidSettings(format!(
                "{algorithm}.{} must be between {} and {} (got {value})",
                self.field, self.min, self.max
            )))
        }
    }
}

/// SNOBFIT: `p`, the expected share of class-4 (global) points.
pub const SNOBFIT_P: Bound = Bound::new("p", 0.0, 1.0);
/// BO: `initial_points` of the Sobol design.
pub const BO_INITIAL_POINTS: Bound = Bound::new("initial_points", 1.0, 200.0);
/// BO: `restarts` of the hyperparameter search.
pub const BO_RESTARTS: Bound = Bound::new("restarts", 0.0, 20.0);
/// BO: `refit_growth`, the data growth that triggers a refit.
pub const BO_REFIT_GROWTH: Bound = Bound::new("refit_growth", 0.0, 10.0);
/// BO: `candidates` per acquisition step.
pub const BO_CANDIDATES: Bound = Bound::new("candidates", 16.0, 8192.0);
/// BO: `explore_every` (0 = never).
pub const BO_EXPLORE_EVERY: Bound = Bound::new("explore_every", 0.0, 100.0);
/// BO: `ls_prior_sd`, the length-scale prior's spread (natural-log units).
pub const BO_LS_PRIOR_SD: Bound = Bound::new("ls_prior_sd", 0.05, 5.0);
/// BO: `warm_restarts` of the hyperparameter search once a fit exists.
pub const BO_WARM_RESTARTS: Bound = Bound::new("warm_restarts", 0.0, 20.0);
/// BO: `refine_starts` of the acquisition hill-climb.
pub const BO_REFINE_STARTS: Bound = Bound::new("refine_starts", 0.0, 64.0);
/// BO: `local_every` (0 = never).
pub const BO_LOCAL_EVERY: Bound = Bound::new("local_every", 0.0, 100.0);
/// Portfolio: every `snobfit_every`-th proposal is SNOBFIT's (1 = SNOBFIT only).
pub const PORTFOLIO_SNOBFIT_EVERY: Bound = Bound::new("snobfit_every", 1.0, 100.0);
/// Grid: `levels` per parameter (the full grid is also capped at 10⁶ points).
pub const GRID_LEVELS: Bound = Bound::new("levels", 2.0, 1000.0);

/// Every documented bound, by algorithm (for documentation and the API's error messages).
pub const ALL: &[(&str, Bound)] = &[
    ("snobfit", SNOBFIT_P),
    ("bo", BO_INITIAL_POINTS),
    ("bo", BO_RESTARTS),
    ("bo", BO_REFIT_GROWTH),
    ("bo", BO_CANDIDATES),
    ("bo", BO_EXPLORE_EVERY),
    ("bo", BO_LS_PRIOR_SD),
    ("bo", BO_WARM_RESTARTS),
    ("bo", BO_REFINE_STARTS),
    ("bo", BO_LOCAL_EVERY),
    ("portfolio", PORTFOLIO_SNOBFIT_EVERY),
    ("grid", GRID_LEVELS),
];

/// Most parameters a campaign's space may have.
pub const MAX_DIMENSIONS: usize = 8;

/// Checks every BO setting (`prefix` names where they sit, e.g. `bo` or `portfolio.bo`).
fn validate_bo(prefix: &str, s: &crate::bo::BoSettings) -> Result<(), OptimizerError> {
    if let Some(n) = s.initial_points {
        BO_INITIAL_POINTS.check(prefix, n as f64)?;
    }
    BO_RESTARTS.check(prefix, s.restarts as f64)?;
    BO_REFIT_GROWTH.check(prefix, s.refit_growth)?;
    BO_CANDIDATES.check(prefix, s.candidates as f64)?;
    BO_EXPLORE_EVERY.check(prefix, s.explore_every as f64)?;
    BO_LS_PRIOR_SD.check(prefix, s.ls_prior_sd)?;
    BO_WARM_RESTARTS.check(prefix, s.warm_restarts as f64)?;
    BO_REFINE_STARTS.check(prefix, s.refine_starts as f64)?;
    BO_LOCAL_EVERY.check(prefix, s.local_every as f64)
}

impl Algorithm {
    /// Checks every setting against its documented [`Bound`].
    pub fn validate(&self) -> Result<(), OptimizerError> {
        let name = self.name();
        match self {
            Algorithm::Snobfit(s) => SNOBFIT_P.check(name, s.p),
            Algorithm::Bo(s) => validate_bo(name, s),
            Algorithm::Portfolio(s) => {
                PORTFOLIO_SNOBFIT_EVERY.check(name, s.snobfit_every as f64)?;
                validate_bo("portfolio.bo", &s.bo)?;
                SNOBFIT_P.check("portfolio.snobfit", s.snobfit.p)
            }
            Algorithm::Grid(s) => match s.levels {
                Some(l) => GRID_LEVELS.check(name, f64::from(l)),
                None => Ok(()),
            },
            Algorithm::Random | Algorithm::Sobol => Ok(()),
        }
    }

    /// The most observations (the campaign budget) the algorithm is run with: a GP's fit is
    /// cubic in them, SNOBFIT's neighbour search quadratic.
    pub fn max_observations(&self) -> usize {
        match self {
            Algorithm::Bo(_) | Algorithm::Portfolio(_) => 1_000,
            Algorithm::Snobfit(_) => 5_000,
            Algorithm::Random | Algorithm::Sobol | Algorithm::Grid(_) => 100_000,
        }
    }

    /// Checks the settings and that the space is small enough for the algorithm.
    pub fn validate_for(&self, space: &Space) -> Result<(), OptimizerError> {
        self.validate()?;
        if space.dim() > MAX_DIMENSIONS {
            return Err(OptimizerError::InvalidSpace(format!(
                "{} parameters; at most {MAX_DIMENSIONS} are supported",
                space.dim()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{bo::BoSettings, snobfit::SnobfitSettings};

    #[test]
    fn defaults_are_within_their_bounds() {
        for name in ["snobfit", "bo", "random", "sobol", "grid", "portfolio"] {
            let a = Algorithm::from_name(name).expect("known");
            assert!(a.validate().is_ok(), "{name}");
        }
    }

    #[test]
    fn out_of_range_settings_name_the_field_and_range() {
        let huge = Algorithm::Bo(BoSettings {
            candidates: 10_000_000_000,
            ..BoSettings::default()
        });
        let err = huge
            .validate()
            .expect_err("too many candidates")
            .to_string();
        assert!(err.contains("bo.candidates"), "{err}");
        assert!(err.contains("between 16 and 8192"), "{err}");
        let nan = Algorithm::Snobfit(SnobfitSettings { p: f64::NAN });
        assert!(nan.validate().expect_err("NaN").to_string().contains("p"));
        let restarts = Algorithm::Bo(BoSettings {
            restarts: 1_000,
            ..BoSettings::default()
        });
        assert!(restarts
            .validate()
            .expect_err("restarts")
            .to_string()
            .contains("bo.restarts"));
    }

    #[test]
    fn every_bound_is_checked_at_its_edges() {
        for (algo, b) in ALL {
            let set = |v: f64| -> Algorithm {
                let mut fields = serde_json::Map::new();
                fields.insert("kind".into(), (*algo).into());
                let value = if matches!(b.field, "refit_growth" | "p" | "ls_prior_sd") {
                    serde_json::json!(v)
                } else {
                    serde_json::json!(v as u64)
                };
                fields.insert(b.field.into(), value);
                serde_json::from_value(serde_json::Value::Object(fields)).expect("parses")
            };
            assert!(set(b.min).validate().is_ok(), "{algo}.{} min", b.field);
            assert!(set(b.max).validate().is_ok(), "{algo}.{} max", b.field);
            assert!(
                set(b.max + 1.0).validate().is_err(),
                "{algo}.{} max+1",
                b.field
            );
            if b.min >= 1.0 {
                assert!(
                    set(b.min - 1.0).validate().is_err(),
                    "{algo}.{} min-1",
                    b.field
                );
            }
        }
    }
}
