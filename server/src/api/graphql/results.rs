//! The typed shapes of a campaign's results in the public API: the objective's direction, an
//! experiment's conditions, its analysis features and its absorption fit. They are read from
//! what the engine stores (`crate::engine::{StoredFeatures, StoredPeakFit}`, one definition of
//! the stored JSON), so the API never hands out a JSON blob whose shape is known.
//!
//! A stored value that does not decode (a corrupt row) reads as `null` and is logged; it never
//! fails the surrounding list.

use async_graphql::{Enum, SimpleObject};
use maosic_analysis::objective::Direction;
use serde_json::Value;

use crate::engine::{StoredFeatures, StoredPeak, StoredPeakFit};

/// Which way a campaign's objective is optimised (the objective expression's first word).
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum ObjectiveDirection {
    /// Larger is better (`maximize …`).
    Maximize,
    /// Smaller is better (`minimize …`).
    Minimize,
}

impl From<Direction> for ObjectiveDirection {
    fn from(d: Direction) -> Self {
        match d {
            Direction::Maximize => ObjectiveDirection::Maximize,
            Direction::Minimize => ObjectiveDirection::Minimize,
        }
    }
}

/// One variable's value in an experiment's conditions (e.g. `T` = 130).
#[derive(SimpleObject, Debug, Clone, PartialEq)]
pub struct ParameterValue {
    /// Variable name (without `$`), as the recipe declares it.
    pub name: String,
    /// Its value, in the recipe's unit.
    pub value: f64,
}

/// The conditions stored as a JSON object (`{"T": 130, "C": 0.8}`), by variable name; `None`
/// when the text is not such an object.
pub fn parameter_values(text: &str) -> Option<Vec<ParameterValue>> {
    let decoded = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => map
            .into_iter()
            .map(|(name, v)| v.as_f64().map(|value| ParameterValue { name, value }))
            .collect::<Option<Vec<_>>>(),
        _ => None,
    };
    if decoded.is_none() {
        tracing::warn!("stored experiment parameters do not decode: {text:.200}");
    }
    decoded
}

/// What the analysis read from an experiment's spectra. A field is null when it was not
/// measured (no CD spectrum, so no CD features or g-factor) or is not a finite number.
#[derive(SimpleObject, Debug, Clone, PartialEq)]
pub struct ExperimentFeatures {
    /// Centre of the first exciton peak, nm.
    pub exciton_wavelength_nm: Option<f64>,
    /// Height of the first exciton peak above the fitted baseline.
    pub exciton_absorbance: Option<f64>,
    /// Full width at half maximum of the first exciton peak, nm.
    pub exciton_fwhm_nm: Option<f64>,
    /// Measured absorbance at the exciton wavelength.
    pub absorbance_at_exciton: Option<f64>,
    /// CD at the exciton wavelength, mdeg.
    pub cd_at_exciton_mdeg: Option<f64>,
    /// Largest |CD| in the CD scan, signed, mdeg.
    pub cd_extremum_mdeg: Option<f64>,
    /// Where the CD extremum is, nm.
    pub cd_extremum_wavelength_nm: Option<f64>,
    /// Dissymmetry factor at the exciton.
    pub g_factor: Option<f64>,
    /// Peaks in the absorption fit.
    pub peak_count: Option<i32>,
    /// R² of the absorption fit.
    pub fit_r_squared: Option<f64>,
    /// Reduced χ² of the absorption fit.
    pub fit_reduced_chi_square: Option<f64>,
}

impl From<StoredFeatures> for ExperimentFeatures {
    fn from(f: StoredFeatures) -> Self {
        ExperimentFeatures {
            exciton_wavelength_nm: f.exciton_wavelength_nm,
            exciton_absorbance: f.exciton_absorbance,
            exciton_fwhm_nm: f.exciton_fwhm_nm,
            absorbance_at_exciton: f.absorbance_at_exciton,
            cd_at_exciton_mdeg: f.cd_at_exciton_mdeg,
            cd_extremum_mdeg: f.cd_extremum_mdeg,
            cd_extremum_wavelength_nm: f.cd_extremum_wavelength_nm,
            g_factor: f.g_factor,
            peak_count: f.peak_count.map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
            fit_r_squared: f.fit_r_squared,
            fit_reduced_chi_square: f.fit_reduced_chi_square,
        }
    }
}

/// The line shape of every peak in a fit.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum PeakShape {
    /// Gaussian.
    Gaussian,
    /// Lorentzian.
    Lorentzian,
    /// Exact Voigt profile.
    Voigt,
    /// Linear mix of a Lorentzian and a Gaussian with a shared FWHM.
    PseudoVoigt,
}

impl PeakShape {
    fn parse(stored: &str) -> Option<PeakShape> {
        match stored {
            "gaussian" => Some(PeakShape::Gaussian),
            "lorentzian" => Some(PeakShape::Lorentzian),
            "voigt" => Some(PeakShape::Voigt),
            "pseudovoigt" | "pseudo_voigt" | "pseudo-voigt" => Some(PeakShape::PseudoVoigt),
            _ => None,
        }
    }
}

/// One fitted absorption peak. Numbers are null when the fit could not estimate them (a
/// standard error of a parameter at a bound) or are not finite.
#[derive(SimpleObject, Debug, Clone, PartialEq)]
pub struct FittedPeak {
    /// Position among the fit's peaks (0-based).
    pub index: i32,
    /// Whether this is the first exciton, the peak the features describe.
    pub exciton: bool,
    /// Centre, nm.
    pub center_nm: Option<f64>,
    /// Standard error of the centre, nm.
    pub center_stderr_nm: Option<f64>,
    /// Height above the fitted baseline.
    pub amplitude: Option<f64>,
    /// Standard error of the amplitude.
    pub amplitude_stderr: Option<f64>,
    /// Full width at half maximum, nm.
    pub fwhm_nm: Option<f64>,
    /// Standard error of the FWHM, nm.
    pub fwhm_stderr_nm: Option<f64>,
    /// Area under the peak (absorbance × nm).
    pub area: Option<f64>,
}

impl From<StoredPeak> for FittedPeak {
    fn from(p: StoredPeak) -> Self {
        FittedPeak {
            index: i32::try_from(p.index).unwrap_or(i32::MAX),
            exciton: p.exciton,
            center_nm: p.center_nm,
            center_stderr_nm: p.center_stderr_nm,
            amplitude: p.amplitude,
            amplitude_stderr: p.amplitude_stderr,
            fwhm_nm: p.fwhm_nm,
            fwhm_stderr_nm: p.fwhm_stderr_nm,
            area: p.area,
        }
    }
}

/// The fitted model sampled for plots (every 8th sample of the fitted window): two lists of
/// the same length.
#[derive(SimpleObject, Debug, Clone, PartialEq)]
pub struct FittedCurve {
    /// Wavelengths, nm.
    pub wavelength_nm: Vec<f64>,
    /// The model's absorbance at each wavelength.
    pub absorbance: Vec<f64>,
}

/// The absorption fit of one experiment.
#[derive(SimpleObject, Debug, Clone, PartialEq)]
pub struct PeakFit {
    /// The line shape of every peak.
    pub shape: PeakShape,
    /// Start of the fitted window, nm.
    pub window_start_nm: Option<f64>,
    /// End of the fitted window, nm.
    pub window_end_nm: Option<f64>,
    /// R² of the fit.
    pub r_squared: Option<f64>,
    /// The peaks, by centre.
    pub peaks: Vec<FittedPeak>,
    /// The fitted curve.
    pub curve: FittedCurve,
}

impl PeakFit {
    fn from_stored(f: StoredPeakFit) -> Option<PeakFit> {
        let shape = PeakShape::parse(&f.shape)?;
        let (wavelength_nm, absorbance) = f
            .curve
            .wavelength_nm
            .iter()
            .zip(&f.curve.absorbance)
            .filter_map(|(x, y)| Some(((*x)?, (*y)?)))
            .unzip();
        Some(PeakFit {
            shape,
            window_start_nm: f.window_nm.first().copied().flatten(),
            window_end_nm: f.window_nm.get(1).copied().flatten(),
            r_squared: f.r_squared,
            peaks: f.peaks.into_iter().map(FittedPeak::from).collect(),
            curve: FittedCurve {
                wavelength_nm,
                absorbance,
            },
        })
    }
}

/// The features stored for an experiment (`None` when it was not analysed, or the row does
/// not decode).
pub fn features_of(text: Option<&str>) -> Option<ExperimentFeatures> {
    let text = text?;
    match serde_json::from_str::<Option<StoredFeatures>>(text) {
        Ok(f) => f.map(ExperimentFeatures::from),
        Err(e) => {
            tracing::warn!("stored experiment features do not decode: {e}");
            None
        }
    }
}

/// The absorption fit stored for an experiment (`None` when it was not analysed, or the row
/// does not decode).
pub fn peak_fit_of(text: Option<&str>) -> Option<PeakFit> {
    let text = text?;
    let fit = match serde_json::from_str::<Option<StoredPeakFit>>(text) {
        Ok(f) => f?,
        Err(e) => {
            tracing::warn!("stored absorption fit does not decode: {e}");
            return None;
        }
    };
    let shape = fit.shape.clone();
    let typed = PeakFit::from_stored(fit);
    if typed.is_none() {
        tracing::warn!("stored absorption fit has an unknown shape {shape:?}");
    }
    typed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_engine_stores_reads_back_as_the_typed_features_and_fit() {
        let truth = maosic_analysis::synth::generate(maosic_analysis::synth::Family::IssueThree, 7)
            .expect("synthetic spectrum");
        let measured = crate::engine::Measured {
            outcome: Some("succeeded".into()),
            absorption: Some((truth.spectrum, None)),
            cd: None,
            step_error: None,
        };
        let objective = crate::engine::parse_objective("maximize exciton_absorbance")
            .expect("objective parses");
        let ev = crate::engine::evaluate(&measured, &objective).expect("analysed");
        let features = features_of(Some(&ev.features.to_string())).expect("features decode");
        assert!(features.exciton_wavelength_nm.is_some());
        assert_eq!(features.cd_at_exciton_mdeg, None);
        let fit = peak_fit_of(Some(&ev.peaks.to_string())).expect("fit decodes");
        assert_eq!(
            fit.peaks.len(),
            usize::try_from(features.peak_count.expect("peak count")).expect("count")
        );
        assert_eq!(fit.peaks.iter().filter(|p| p.exciton).count(), 1);
        assert!(!fit.curve.wavelength_nm.is_empty());
        assert_eq!(fit.curve.wavelength_nm.len(), fit.curve.absorbance.len());
    }

    #[test]
    fn stored_parameters_read_back_as_name_value_pairs() {
        let p = parameter_values(r#"{"T": 130, "C": 0.8}"#).expect("decodes");
        assert_eq!(p.len(), 2);
        assert!(p.contains(&ParameterValue {
            name: "T".into(),
            value: 130.0
        }));
        assert!(p.contains(&ParameterValue {
            name: "C".into(),
            value: 0.8
        }));
        assert_eq!(parameter_values(r#"{"T": "hot"}"#), None);
        assert_eq!(parameter_values("[1, 2]"), None);
    }

    #[test]
    fn stored_features_read_back_typed_with_missing_cd_as_null() {
        let f = features_of(Some(
            r#"{"exciton_wavelength_nm": 512.5, "exciton_absorbance": 0.4, "exciton_fwhm_nm": 30,
                "absorbance_at_exciton": 0.45, "cd_at_exciton_mdeg": null, "cd_extremum_mdeg": null,
                "cd_extremum_wavelength_nm": null, "g_factor": null, "peak_count": 3,
                "fit_r_squared": 0.999, "fit_reduced_chi_square": null}"#,
        ))
        .expect("decodes");
        assert_eq!(f.exciton_wavelength_nm, Some(512.5));
        assert_eq!(f.peak_count, Some(3));
        assert_eq!(f.cd_at_exciton_mdeg, None);
        assert_eq!(features_of(None), None);
        assert_eq!(features_of(Some("null")), None);
        assert_eq!(features_of(Some("not json")), None);
    }

    #[test]
    fn a_stored_fit_reads_back_typed_and_drops_non_finite_curve_points() {
        let fit = peak_fit_of(Some(
            r#"{"shape": "pseudovoigt", "window_nm": [400, 600], "r_squared": 0.99,
                "peaks": [{"index": 0, "exciton": true, "center_nm": 512, "center_stderr_nm": 0.1,
                           "amplitude": 0.4, "amplitude_stderr": null, "fwhm_nm": 30,
                           "fwhm_stderr_nm": 0.5, "area": 12.0}],
                "curve": {"wavelength_nm": [400, 401, 402], "absorbance": [0.1, null, 0.3]}}"#,
        ))
        .expect("decodes");
        assert_eq!(fit.shape, PeakShape::PseudoVoigt);
        assert_eq!(fit.window_start_nm, Some(400.0));
        assert_eq!(fit.window_end_nm, Some(600.0));
        assert_eq!(fit.peaks.len(), 1);
        assert!(fit.peaks[0].exciton);
        assert_eq!(fit.peaks[0].amplitude_stderr, None);
        assert_eq!(fit.curve.wavelength_nm, vec![400.0, 402.0]);
        assert_eq!(fit.curve.absorbance, vec![0.1, 0.3]);
        assert_eq!(peak_fit_of(Some(r#"{"shape": "triangle"}"#)), None);
    }
}
