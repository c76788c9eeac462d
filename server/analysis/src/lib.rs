//! Spectral analysis: preprocessing, peak finding, multi-peak fits, chirality features and objectives (pure, no I/O).
//!
//! The server calls [`analyse_experiment`] after each experiment (absorption + optional CD
//! spectrum → fitted peaks, statistics and [`Features`]) and evaluates the campaign's
//! [`Objective`] (parsed once with [`Objective::parse`]) on those features.
//!
//! ```
//! use maosic_analysis::{analyse_experiment, AnalysisSettings, Objective, Spectrum};
//!
//! // Checked once, when the campaign is created (an unknown feature is an error here).
//! let objective = Objective::parse("maximize abs(cd_at_exciton)")?;
//!
//! // After each experiment: absorption + CD spectra → features → objective value.
//! let x: Vec<f64> = (0..400).map(|i| 400.0 + 0.5 * i as f64).collect();
//! let gauss = |l: f64, c: f64, s: f64| (-(l - c) * (l - c) / (2.0 * s * s)).exp();
//! let absorption = Spectrum::new(
//!     x.clone(),
//!     x.iter().map(|&l| 0.05 + 0.4 * gauss(l, 510.0, 8.0)).collect(),
//! )?;
//! let cd = Spectrum::new(x.clone(), x.iter().map(|&l| -0.8 * gauss(l, 505.0, 7.0)).collect())?;
//! let analysis = analyse_experiment(&absorption, Some(&cd), &AnalysisSettings::default())?;
//! let value = objective.evaluate(&analysis.features)?;
//! assert!((analysis.features.exciton_wavelength_nm - 510.0).abs() < 0.1);
//! assert!(value > 0.5);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Invariants: no I/O, no global state, no panics on any input (property-tested); every number
//! returned is finite, and anything that cannot be computed is a typed error or an `Option`
//! (e.g. CD features without a CD spectrum), never NaN.
//!
//! Modules, from raw data to objective value:
//! - [`spectrum`]: the validated [`Spectrum`] type every other function takes.
//! - [`csv`]: two-column text (header, `wavelength_nm,value`) into a `Spectrum`.
//! - [`preprocess`]: Savitzky–Golay, polynomial / ALS baselines, crop, resample, absorbance.
//! - [`peaks`]: scipy-compatible `find_peaks` and second-derivative shoulder detection.
//! - [`lineshape`]: Gaussian, Lorentzian, Voigt, pseudo-Voigt with analytic derivatives.
//! - [`fit`]: bounded Levenberg–Marquardt multi-peak fits with standard errors and BIC selection.
//! - [`features`]: first exciton peak, CD at it, CD extremum, g-factor; `analyse_experiment`.
//! - [`objective`]: `maximize abs(cd_at_exciton)`-style expressions.
//! - [`synth`]: seeded synthetic spectra with known truth (tests, benchmarks, end-to-end tests).

pub mod csv;
pub mod features;
pub mod fit;
pub mod lineshape;
pub mod objective;
pub mod peaks;
pub mod preprocess;
pub mod spectrum;
pub mod synth;

pub use csv::{parse_spectrum_csv, CsvError};
pub use features::{
    analyse_experiment, AnalysisError, AnalysisSettings, ExperimentAnalysis, Feature, Features,
};
pub use fit::{
    fit_peaks, fit_peaks_with_guesses, Baseline, FitCurves, FitError, FitSettings, FitStatistics,
    FittedPeak, PeakCount, PeakFit, PeakGuess,
};
pub use lineshape::LineShape;
pub use objective::{Direction, Objective, ObjectiveError};
pub use spectrum::{Spectrum, SpectrumError};
