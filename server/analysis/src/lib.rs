//! Spectral analysis: preprocessing, peak finding, multi-peak fits, chirality features and objectives (pure, no I/O).
//!
//! The server calls [`analyse_experiment`] after each experiment (absorption + optional CD
//! spectrum → fitted peaks, statistics and [`Features`]) and evaluates the campaign's
//! [`Objective`] (parsed once with [`Objective::parse`]) on those features.
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

pub mod csv;
pub mod features;
pub mod fit;
pub mod lineshape;
pub mod objective;
pub mod peaks;
pub mod preprocess;
pub mod spectrum;

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
