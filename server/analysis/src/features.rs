//! Chirality features of one experiment (first exciton peak, CD at it, CD extremum, g-factor) and
//! `analyse_experiment`, the single entry point the server calls after each experiment.

use thiserror::Error;

use crate::fit::{fit_peaks, FitError, FitSettings, PeakFit};
use crate::preprocess::{self, PreprocessError};
use crate::spectrum::Spectrum;

/// CD (mdeg) = 32 980 × ΔA, so g = ΔA / A = CD_mdeg / (32 980 · A).
pub const MDEG_PER_DELTA_A: f64 = 32_980.0;

/// Settings for [`analyse_experiment`].
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisSettings {
    /// How the absorption spectrum is fitted.
    pub fit: FitSettings,
    /// Only peaks whose center lies in this range may be the first exciton peak.
    pub exciton_window_nm: Option<(f64, f64)>,
    /// Peaks smaller than this fraction of the largest fitted peak are ignored when choosing the
    /// exciton peak (they are usually baseline wiggles).
    pub exciton_min_relative_amplitude: f64,
    /// Half width (nm) of the window around the exciton peak searched for the CD extremum.
    pub cd_window_half_width_nm: f64,
    /// Optional Savitzky–Golay smoothing of the CD spectrum (window, polynomial order) before
    /// reading values.
    pub cd_smoothing: Option<(usize, usize)>,
}

impl Default for AnalysisSettings {
    fn default() -> Self {
        Self {
            fit: FitSettings::default(),
            exciton_window_nm: None,
            exciton_min_relative_amplitude: 0.05,
            cd_window_half_width_nm: 10.0,
            cd_smoothing: None,
        }
    }
}

/// Why an experiment could not be analysed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum AnalysisError {
    #[error("absorption spectrum is negative everywhere; check the blank/reference")]
    AllNegativeAbsorbance,
    #[error("absorption fit failed: {0}")]
    Fit(#[from] FitError),
    #[error("no fitted peak qualifies as the first exciton peak{}", window_text(.window_nm))]
    NoExcitonPeak { window_nm: Option<(f64, f64)> },
    #[error(
        "CD spectrum ({lo}..{hi} nm) does not cover the exciton peak at {wavelength_nm:.2} nm"
    )]
    CdOutOfRange {
        wavelength_nm: f64,
        lo: f64,
        hi: f64,
    },
    #[error("invalid analysis settings: {0}")]
    InvalidSettings(String),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
}

fn window_text(w: &Option<(f64, f64)>) -> String {
    match w {
        Some((a, b)) => format!(" in {a}..{b} nm"),
        None => String::new(),
    }
}

/// A named feature an objective may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    ExcitonWavelength,
    ExcitonAbsorbance,
    ExcitonFwhm,
    AbsorbanceAtExciton,
    CdAtExciton,
    CdExtremum,
    CdExtremumWavelength,
    GFactor,
    PeakCount,
    FitRSquared,
    FitReducedChiSquare,
}

impl Feature {
    /// Every feature, in documentation order.
    pub const ALL: [Feature; 11] = [
        Feature::ExcitonWavelength,
        Feature::ExcitonAbsorbance,
        Feature::ExcitonFwhm,
        Feature::AbsorbanceAtExciton,
        Feature::CdAtExciton,
        Feature::CdExtremum,
        Feature::CdExtremumWavelength,
        Feature::GFactor,
        Feature::PeakCount,
        Feature::FitRSquared,
        Feature::FitReducedChiSquare,
    ];

    /// Canonical name used in objective expressions.
    pub fn name(self) -> &'static str {
        match self {
            Self::ExcitonWavelength => "exciton_wavelength_nm",
            Self::ExcitonAbsorbance => "exciton_absorbance",
            Self::ExcitonFwhm => "exciton_fwhm_nm",
            Self::AbsorbanceAtExciton => "absorbance_at_exciton",
            Self::CdAtExciton => "cd_at_exciton",
            Self::CdExtremum => "cd_extremum",
            Self::CdExtremumWavelength => "cd_extremum_wavelength_nm",
            Self::GFactor => "g_factor",
            Self::PeakCount => "peak_count",
            Self::FitRSquared => "fit_r_squared",
            Self::FitReducedChiSquare => "fit_reduced_chi_square",
        }
    }

    /// What the feature means, with its unit.
    pub fn description(self) -> &'static str {
        match self {
            Self::ExcitonWavelength => "center of the first (longest-wavelength) exciton peak, nm",
            Self::ExcitonAbsorbance => "height of the exciton peak above the fitted baseline",
            Self::ExcitonFwhm => "FWHM of the exciton peak, nm",
            Self::AbsorbanceAtExciton => "total fitted absorbance at the exciton wavelength",
            Self::CdAtExciton => "CD at the exciton wavelength, signed, mdeg",
            Self::CdExtremum => {
                "largest-magnitude CD within the window around the exciton, signed, mdeg"
            }
            Self::CdExtremumWavelength => "wavelength of that CD extremum, nm",
            Self::GFactor => "dissymmetry factor CD/(32980·A) at the exciton wavelength",
            Self::PeakCount => "number of fitted absorption peaks",
            Self::FitRSquared => "R² of the absorption fit",
            Self::FitReducedChiSquare => "reduced χ² of the absorption fit",
        }
    }

    /// Parses a canonical name or an accepted alias (`cd_at_exciton_mdeg`, `exciton_wavelength`, ...).
    pub fn parse(name: &str) -> Option<Self> {
        let n = name.trim().to_ascii_lowercase();
        let alias = match n.as_str() {
            "exciton_wavelength" | "exciton_nm" => Some(Self::ExcitonWavelength),
            "exciton_fwhm" => Some(Self::ExcitonFwhm),
            "cd_at_exciton_mdeg" | "cd" => Some(Self::CdAtExciton),
            "cd_extremum_mdeg" => Some(Self::CdExtremum),
            "cd_extremum_wavelength" => Some(Self::CdExtremumWavelength),
            "g" | "gfactor" => Some(Self::GFactor),
            "r_squared" => Some(Self::FitRSquared),
            _ => None,
        };
        alias.or_else(|| Self::ALL.into_iter().find(|f| f.name() == n))
    }
}

/// Numbers the optimizer and the portal need from one experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub exciton_wavelength_nm: f64,
    pub exciton_absorbance: f64,
    pub exciton_fwhm_nm: f64,
    pub absorbance_at_exciton: f64,
    /// Present when a CD spectrum was given.
    pub cd_at_exciton_mdeg: Option<f64>,
    pub cd_extremum_mdeg: Option<f64>,
    pub cd_extremum_wavelength_nm: Option<f64>,
    /// Present with CD and a positive absorbance at the exciton.
    pub g_factor: Option<f64>,
    pub peak_count: usize,
    pub fit_r_squared: f64,
    pub fit_reduced_chi_square: f64,
}

impl Features {
    /// Value of a feature, `None` when it was not measured (e.g. no CD spectrum).
    pub fn value(&self, feature: Feature) -> Option<f64> {
        match feature {
            Feature::ExcitonWavelength => Some(self.exciton_wavelength_nm),
            Feature::ExcitonAbsorbance => Some(self.exciton_absorbance),
            Feature::ExcitonFwhm => Some(self.exciton_fwhm_nm),
            Feature::AbsorbanceAtExciton => Some(self.absorbance_at_exciton),
            Feature::CdAtExciton => self.cd_at_exciton_mdeg,
            Feature::CdExtremum => self.cd_extremum_mdeg,
            Feature::CdExtremumWavelength => self.cd_extremum_wavelength_nm,
            Feature::GFactor => self.g_factor,
            Feature::PeakCount => Some(self.peak_count as f64),
            Feature::FitRSquared => Some(self.fit_r_squared),
            Feature::FitReducedChiSquare => Some(self.fit_reduced_chi_square),
        }
    }
}

/// Everything computed from one experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentAnalysis {
    /// Fit of the absorption spectrum (peaks, baseline, statistics).
    pub absorption_fit: PeakFit,
    /// Index into `absorption_fit.peaks` of the first exciton peak.
    pub exciton_peak: usize,
    pub features: Features,
}

/// CD readings around a wavelength.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CdReading {
    pub at_wavelength_mdeg: f64,
    pub extremum_mdeg: f64,
    pub extremum_wavelength_nm: f64,
}

/// Reads the CD value at `wavelength_nm` (linear interpolation) and the largest-magnitude CD
/// sample within ± `half_width_nm` (the interpolated value itself if no sample lies inside).
pub fn read_cd(
    cd: &Spectrum,
    wavelength_nm: f64,
    half_width_nm: f64,
) -> Result<CdReading, AnalysisError> {
    let (lo, hi) = cd.range_nm();
    let at = cd
        .value_at(wavelength_nm)
        .ok_or(AnalysisError::CdOutOfRange {
            wavelength_nm,
            lo,
            hi,
        })?;
    let hw = half_width_nm.max(0.0);
    let mut best = (at, wavelength_nm);
    for (x, y) in cd.wavelength_nm().iter().zip(cd.values()) {
        if (x - wavelength_nm).abs() <= hw && y.abs() > best.0.abs() {
            best = (*y, *x);
        }
    }
    Ok(CdReading {
        at_wavelength_mdeg: at,
        extremum_mdeg: best.0,
        extremum_wavelength_nm: best.1,
    })
}

/// Analyses one experiment: fits the absorption spectrum, picks the first exciton peak (the
/// longest-wavelength peak that is at least `exciton_min_relative_amplitude` of the largest, lies
/// in `exciton_window_nm` if set, and is not pinned to a parameter bound), reads the CD there and
/// computes the features.
pub fn analyse_experiment(
    absorption: &Spectrum,
    cd: Option<&Spectrum>,
    settings: &AnalysisSettings,
) -> Result<ExperimentAnalysis, AnalysisError> {
    if !(settings.exciton_min_relative_amplitude.is_finite()
        && (0.0..=1.0).contains(&settings.exciton_min_relative_amplitude))
    {
        return Err(AnalysisError::InvalidSettings(
            "exciton_min_relative_amplitude must be within 0..=1".into(),
        ));
    }
    if !(settings.cd_window_half_width_nm.is_finite() && settings.cd_window_half_width_nm >= 0.0) {
        return Err(AnalysisError::InvalidSettings(
            "cd_window_half_width_nm must be finite and >= 0".into(),
        ));
    }
    if absorption.values().iter().all(|v| *v < 0.0) {
        return Err(AnalysisError::AllNegativeAbsorbance);
    }
    let fit = fit_peaks(absorption, &settings.fit)?;
    let largest = fit
        .peaks
        .iter()
        .map(|p| p.amplitude.abs())
        .fold(0.0_f64, f64::max);
    let min_amp = settings.exciton_min_relative_amplitude * largest;
    let exciton = fit
        .peaks
        .iter()
        .enumerate()
        .filter(|(_, p)| p.amplitude > 0.0 && p.amplitude >= min_amp)
        // A peak pinned to a bound (typically a center on the window edge standing in for the
        // baseline or the absorption continuum) is not an exciton.
        .filter(|(_, p)| !p.params.iter().take(3).any(|q| q.at_bound))
        .filter(|(_, p)| {
            settings
                .exciton_window_nm
                .is_none_or(|(a, b)| p.center_nm >= a && p.center_nm <= b)
        })
        .max_by(|a, b| a.1.center_nm.total_cmp(&b.1.center_nm))
        .map(|(i, _)| i)
        .ok_or(AnalysisError::NoExcitonPeak {
            window_nm: settings.exciton_window_nm,
        })?;
    let peak = &fit.peaks[exciton];
    let lambda = peak.center_nm;
    let total_abs = fit.model_at(lambda);
    let cd_reading = match cd {
        Some(cd) => {
            let smoothed;
            let cd = match settings.cd_smoothing {
                Some((w, o)) => {
                    smoothed = preprocess::smooth(cd, w, o)?;
                    &smoothed
                }
                None => cd,
            };
            Some(read_cd(cd, lambda, settings.cd_window_half_width_nm)?)
        }
        None => None,
    };
    let g_factor = cd_reading.and_then(|r| {
        (total_abs > 0.0).then(|| r.at_wavelength_mdeg / (MDEG_PER_DELTA_A * total_abs))
    });
    let features = Features {
        exciton_wavelength_nm: lambda,
        exciton_absorbance: peak.amplitude,
        exciton_fwhm_nm: peak.fwhm_nm,
        absorbance_at_exciton: total_abs,
        cd_at_exciton_mdeg: cd_reading.map(|r| r.at_wavelength_mdeg),
        cd_extremum_mdeg: cd_reading.map(|r| r.extremum_mdeg),
        cd_extremum_wavelength_nm: cd_reading.map(|r| r.extremum_wavelength_nm),
        g_factor,
        peak_count: fit.peaks.len(),
        fit_r_squared: fit.statistics.r_squared,
        fit_reduced_chi_square: fit.statistics.reduced_chi_square,
    };
    Ok(ExperimentAnalysis {
        absorption_fit: fit,
        exciton_peak: exciton,
        features,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fit::PeakCount;

    fn gauss(x: f64, c: f64, fwhm: f64) -> f64 {
        let s = fwhm / crate::lineshape::GAUSS_FWHM_PER_SIGMA;
        (-(x - c).powi(2) / (2.0 * s * s)).exp()
    }

    #[test]
    fn exciton_cd_and_g_factor_from_synthetic_experiment() {
        let x: Vec<f64> = (0..601).map(|i| 350.0 + 0.5 * i as f64).collect();
        // Higher excitonic transition at 420 nm, first exciton at 470 nm, on a sloped baseline.
        let abs: Vec<f64> = x
            .iter()
            .map(|&v| {
                0.05 + 2e-4 * (600.0 - v)
                    + 0.6 * gauss(v, 420.0, 30.0)
                    + 0.4 * gauss(v, 470.0, 18.0)
            })
            .collect();
        // Bisignate CD crossing zero near 480 nm, −0.8 mdeg minimum at 462 nm.
        let cd: Vec<f64> = x
            .iter()
            .map(|&v| -0.8 * gauss(v, 462.0, 14.0) + 0.5 * gauss(v, 495.0, 14.0))
            .collect();
        let a = Spectrum::new(x.clone(), abs).unwrap();
        let c = Spectrum::new(x, cd).unwrap();
        let settings = AnalysisSettings {
            fit: FitSettings {
                peaks: PeakCount::Fixed(2),
                ..FitSettings::default()
            },
            ..AnalysisSettings::default()
        };
        let r = analyse_experiment(&a, Some(&c), &settings).unwrap();
        let f = &r.features;
        assert!((f.exciton_wavelength_nm - 470.0).abs() < 0.05, "{f:?}");
        assert!((f.exciton_absorbance - 0.4).abs() < 1e-3);
        assert!((f.exciton_fwhm_nm - 18.0).abs() < 0.05);
        let cd_true = -0.8 * gauss(470.0, 462.0, 14.0) + 0.5 * gauss(470.0, 495.0, 14.0);
        assert!((f.cd_at_exciton_mdeg.unwrap() - cd_true).abs() < 1e-3);
        assert!((f.cd_extremum_mdeg.unwrap() + 0.8).abs() < 0.02);
        assert!((f.cd_extremum_wavelength_nm.unwrap() - 462.0).abs() < 1.0);
        let g = f.g_factor.unwrap();
        assert!((g - cd_true / (MDEG_PER_DELTA_A * f.absorbance_at_exciton)).abs() < 1e-12);
        assert!(g < 0.0);
        // Plot curves add up: model = baseline + peaks.
        let xs = [400.0, 470.0, 520.0];
        let c = r.absorption_fit.curves(&xs);
        for i in 0..xs.len() {
            let sum = c.baseline[i] + c.peaks.iter().map(|p| p[i]).sum::<f64>();
            assert!((c.model[i] - sum).abs() < 1e-12);
            assert!((c.model[i] - a.value_at(xs[i]).unwrap()).abs() < 1e-3);
        }
        // Without CD the CD features are absent, not NaN.
        let r = analyse_experiment(&a, None, &settings).unwrap();
        assert_eq!(r.features.cd_at_exciton_mdeg, None);
        assert_eq!(r.features.value(Feature::GFactor), None);
    }

    #[test]
    fn clear_errors_for_unusable_spectra() {
        let x: Vec<f64> = (0..100).map(|i| 400.0 + i as f64).collect();
        let neg = Spectrum::new(x.clone(), vec![-0.2; 100]).unwrap();
        assert_eq!(
            analyse_experiment(&neg, None, &AnalysisSettings::default()),
            Err(AnalysisError::AllNegativeAbsorbance)
        );
        let flat = Spectrum::new(x.clone(), vec![0.3; 100]).unwrap();
        assert!(matches!(
            analyse_experiment(&flat, None, &AnalysisSettings::default()),
            Err(AnalysisError::Fit(FitError::NoPeaksFound { .. }))
        ));
        let peak: Vec<f64> = x.iter().map(|&v| gauss(v, 450.0, 15.0)).collect();
        let a = Spectrum::new(x, peak).unwrap();
        let cd = Spectrum::new(vec![500.0, 510.0, 520.0, 530.0, 540.0], vec![0.0; 5]).unwrap();
        assert!(matches!(
            analyse_experiment(&a, Some(&cd), &AnalysisSettings::default()),
            Err(AnalysisError::CdOutOfRange { .. })
        ));
    }

    #[test]
    fn every_feature_name_round_trips() {
        for f in Feature::ALL {
            assert_eq!(Feature::parse(f.name()), Some(f));
        }
        assert_eq!(
            Feature::parse("cd_at_exciton_mdeg"),
            Some(Feature::CdAtExciton)
        );
        assert_eq!(Feature::parse("nonsense"), None);
    }
}
