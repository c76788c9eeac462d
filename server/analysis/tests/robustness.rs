//! Property tests: arbitrary finite input never panics and never yields NaN; unusable spectra give
//! clear, typed errors.
#![allow(clippy::unwrap_used)]

use maosic_analysis::fit::{guess_peaks, PeakCount};
use maosic_analysis::peaks::{curvature_bands, find_peaks, PeakOptions};
use maosic_analysis::preprocess::{als_baseline, polynomial_baseline, resample_uniform, smooth};
use maosic_analysis::{
    analyse_experiment, fit_peaks, AnalysisError, AnalysisSettings, Baseline, FitError,
    FitSettings, LineShape, Objective, Spectrum, SpectrumError,
};
use proptest::prelude::*;

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        -1e3..1e3f64,
        -1.0..1.0f64,
        Just(0.0),
        prop::num::f64::NORMAL.prop_filter("finite", |v| v.is_finite()),
    ]
}

/// Strictly increasing axis from positive steps, and values of the same length.
fn spectrum_parts() -> impl Strategy<Value = (Vec<f64>, Vec<f64>)> {
    (0usize..300).prop_flat_map(|n| {
        (
            300.0..700.0f64,
            prop::collection::vec(0.01..5.0f64, n),
            prop::collection::vec(finite(), n),
        )
            .prop_map(|(start, steps, y)| {
                let mut x = Vec::with_capacity(steps.len());
                let mut acc = start;
                for s in steps {
                    x.push(acc);
                    acc += s;
                }
                (x, y)
            })
    })
}

fn check_fit_finite(fit: &maosic_analysis::PeakFit) {
    let st = &fit.statistics;
    for v in [
        st.chi_square,
        st.reduced_chi_square,
        st.r_squared,
        st.aic,
        st.bic,
    ] {
        assert!(v.is_finite(), "{st:?}");
    }
    for p in &fit.peaks {
        for v in [p.center_nm, p.amplitude, p.fwhm_nm, p.area] {
            assert!(v.is_finite(), "{p:?}");
        }
        for se in [
            p.center_stderr_nm,
            p.amplitude_stderr,
            p.fwhm_stderr_nm,
            p.area_stderr,
        ]
        .into_iter()
        .flatten()
        {
            assert!(se.is_finite() && se >= 0.0, "{p:?}");
        }
    }
    for b in &fit.baseline {
        assert!(b.value.is_finite());
    }
}

proptest! {
    // 48 cases by default (each case runs several fits); PROPTEST_CASES overrides.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn spectrum_construction_never_panics(x in prop::collection::vec(any::<f64>(), 0..50),
                                          y in prop::collection::vec(any::<f64>(), 0..50)) {
        let _ = Spectrum::new(x, y);
    }

    #[test]
    fn fitting_arbitrary_finite_spectra_never_panics_or_returns_nan(
        (x, y) in spectrum_parts(),
        shape in prop_oneof![
            Just(LineShape::Gaussian),
            Just(LineShape::Lorentzian),
            Just(LineShape::PseudoVoigt),
            Just(LineShape::Voigt),
        ],
        auto in any::<bool>(),
        negative in any::<bool>(),
    ) {
        let Ok(s) = Spectrum::new(x, y) else { return Ok(()); };
        let settings = FitSettings {
            shape,
            peaks: if auto { PeakCount::Auto { max: 3 } } else { PeakCount::Fixed(2) },
            baseline: Baseline::Linear,
            allow_negative: negative,
            ..FitSettings::default()
        };
        if let Ok(fit) = fit_peaks(&s, &settings) {
            check_fit_finite(&fit);
        }
        if let Ok(a) = analyse_experiment(&s, Some(&s), &AnalysisSettings::default()) {
            let f = &a.features;
            for v in [f.exciton_wavelength_nm, f.exciton_absorbance, f.exciton_fwhm_nm,
                      f.absorbance_at_exciton, f.fit_r_squared, f.fit_reduced_chi_square] {
                prop_assert!(v.is_finite());
            }
            let o = Objective::parse("maximize abs(cd_at_exciton) / exciton_absorbance").unwrap();
            if let Ok(v) = o.evaluate(f) {
                prop_assert!(v.is_finite());
            }
        }
        // Preprocessing and detection on the same input.
        let _ = guess_peaks(&s, &settings, 3);
        let _ = polynomial_baseline(&s, 2, 20);
        let _ = als_baseline(&s, 1e4, 0.01, 5);
        let _ = smooth(&s, 5, 2);
        if let Ok(u) = resample_uniform(&s) {
            let _ = curvature_bands(&u, 7, 0.05);
        }
        for p in find_peaks(&s, &PeakOptions { prominence: Some(0.0), width: Some(0.0), ..PeakOptions::default() }) {
            prop_assert!(p.prominence.is_finite() && p.width_samples.is_finite());
        }
    }

    #[test]
    fn objective_parser_never_panics(text in ".{0,80}") {
        let _ = Objective::parse(&text);
    }
}

#[test]
fn unusable_spectra_give_clear_errors() {
    assert_eq!(Spectrum::new(vec![], vec![]), Err(SpectrumError::Empty));
    assert!(matches!(
        Spectrum::new(vec![450.0], vec![0.5]),
        Err(SpectrumError::TooFewPoints { len: 1, .. })
    ));
    let x: Vec<f64> = (0..200).map(|i| 400.0 + i as f64).collect();
    let constant = Spectrum::new(x.clone(), vec![0.42; 200]).unwrap();
    assert!(matches!(
        fit_peaks(&constant, &FitSettings::default()),
        Err(FitError::NoPeaksFound { .. })
    ));
    let negative = Spectrum::new(x.clone(), x.iter().map(|v| -1.0 - 1e-3 * v).collect()).unwrap();
    assert_eq!(
        analyse_experiment(&negative, None, &AnalysisSettings::default()),
        Err(AnalysisError::AllNegativeAbsorbance)
    );
    // Error messages say what is wrong.
    let msg = fit_peaks(&constant, &FitSettings::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no peak"), "{msg}");
}
