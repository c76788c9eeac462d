//! Recovery of known peaks from synthetic spectra: accuracy and honesty of standard errors.
#![allow(clippy::unwrap_used)]

mod common;

use common::{synth, three_peaks, two_close_peaks};
use maosic_analysis::{fit_peaks, Baseline, FitSettings, LineShape, PeakCount};

fn settings(peaks: PeakCount) -> FitSettings {
    FitSettings {
        shape: LineShape::Gaussian,
        peaks,
        baseline: Baseline::Linear,
        ..FitSettings::default()
    }
}

#[test]
fn two_peaks_15nm_apart_200_noisy_trials() {
    let (x, truth) = two_close_peaks();
    let trials = 200u64;
    let mut inside = [0usize; 6]; // center, amplitude, fwhm for two peaks
    let mut center_err = Vec::new();
    let mut amp_err = Vec::new();
    let mut mean_center = [0.0; 2];
    let mut mean_amp = [0.0; 2];
    for seed in 0..trials {
        let s = synth(&x, &truth, seed);
        let fit = fit_peaks(&s, &settings(PeakCount::Fixed(2)))
            .unwrap_or_else(|e| panic!("trial {seed}: {e}"));
        assert!(fit.statistics.covariance_ok, "trial {seed}");
        for (k, (p, &(h, c, w))) in fit.peaks.iter().zip(&truth.peaks).enumerate() {
            center_err.push((p.center_nm - c).abs());
            amp_err.push((p.amplitude - h).abs() / h);
            mean_center[k] += p.center_nm / trials as f64;
            mean_amp[k] += p.amplitude / trials as f64;
            let se = [
                p.center_stderr_nm.unwrap(),
                p.amplitude_stderr.unwrap(),
                p.fwhm_stderr_nm.unwrap(),
            ];
            let err = [
                (p.center_nm - c).abs(),
                (p.amplitude - h).abs(),
                (p.fwhm_nm - w).abs(),
            ];
            for q in 0..3 {
                if err[q] <= 2.0 * se[q] {
                    inside[3 * k + q] += 1;
                }
            }
        }
    }
    let frac_ok =
        |v: &[f64], lim: f64| v.iter().filter(|e| **e < lim).count() as f64 / v.len() as f64;
    let max = |v: &[f64]| v.iter().copied().fold(0.0_f64, f64::max);
    eprintln!(
        "centers within 0.5 nm: {:.3} (max {:.3} nm); amplitudes within 2 %: {:.3} (max {:.2} %); \
         ±2 SE coverage {:?} of {trials}; mean centers {mean_center:?}, mean amplitudes {mean_amp:?}",
        frac_ok(&center_err, 0.5),
        max(&center_err),
        frac_ok(&amp_err, 0.02),
        100.0 * max(&amp_err),
        inside
    );
    // Every trial: centers within 0.5 nm and amplitudes within 2 %.
    assert_eq!(frac_ok(&center_err, 0.5), 1.0);
    assert_eq!(frac_ok(&amp_err, 0.02), 1.0);
    // Unbiased on average.
    for (k, &(h, c, _)) in truth.peaks.iter().enumerate() {
        assert!((mean_center[k] - c).abs() < 0.05, "mean center {k}");
        assert!((mean_amp[k] - h).abs() / h < 0.003, "mean amplitude {k}");
    }
    let names = ["center1", "amp1", "fwhm1", "center2", "amp2", "fwhm2"];
    for (name, n) in names.iter().zip(inside) {
        let frac = n as f64 / trials as f64;
        assert!(
            frac >= 0.90,
            "{name}: truth inside ±2 SE in only {frac:.3} of trials"
        );
    }
}

/// A harder pair: unresolved (no dip between them), unequal, 15 nm apart. Here the amplitude
/// standard error itself is about 2 %, so the per-trial 2 % bound cannot hold; what must hold is
/// that the estimates are unbiased and the reported standard errors are honest.
#[test]
fn unresolved_pair_has_unbiased_estimates_and_honest_errors() {
    let (x, mut truth) = two_close_peaks();
    truth.peaks = vec![(1.0, 480.0, 20.0), (0.7, 495.0, 18.0)];
    let trials = 200u64;
    let mut inside = [0usize; 4];
    let mut mean = [0.0f64; 4];
    for seed in 0..trials {
        let s = synth(&x, &truth, 10_000 + seed);
        let fit = fit_peaks(&s, &settings(PeakCount::Fixed(2)))
            .unwrap_or_else(|e| panic!("trial {seed}: {e}"));
        for (k, (p, &(h, c, _))) in fit.peaks.iter().zip(&truth.peaks).enumerate() {
            mean[2 * k] += p.center_nm / trials as f64;
            mean[2 * k + 1] += p.amplitude / trials as f64;
            if (p.center_nm - c).abs() <= 2.0 * p.center_stderr_nm.unwrap() {
                inside[2 * k] += 1;
            }
            if (p.amplitude - h).abs() <= 2.0 * p.amplitude_stderr.unwrap() {
                inside[2 * k + 1] += 1;
            }
        }
    }
    eprintln!("unresolved pair: means {mean:?}, ±2 SE coverage {inside:?} of {trials}");
    for (k, &(h, c, _)) in truth.peaks.iter().enumerate() {
        assert!(
            (mean[2 * k] - c).abs() < 0.1,
            "mean center {k}: {}",
            mean[2 * k]
        );
        assert!(
            (mean[2 * k + 1] - h).abs() / h < 0.01,
            "mean amplitude {k}: {}",
            mean[2 * k + 1]
        );
    }
    for n in inside {
        assert!(n as f64 / trials as f64 >= 0.90, "coverage {inside:?}");
    }
}

#[test]
fn automatic_peak_count_finds_both_close_peaks() {
    let (x, truth) = two_close_peaks();
    for seed in 1000..1010 {
        let s = synth(&x, &truth, seed);
        let fit = fit_peaks(&s, &settings(PeakCount::Auto { max: 4 })).unwrap();
        assert_eq!(fit.peaks.len(), 2, "seed {seed}: {:?}", fit.model_selection);
        assert!(fit.model_selection.len() >= 2);
        assert!((fit.peaks[0].center_nm - 480.0).abs() < 0.5);
        assert!((fit.peaks[1].center_nm - 495.0).abs() < 0.5);
    }
}

#[test]
fn three_peak_benchmark_spectra_are_recovered() {
    for seed in 0..10 {
        let (x, truth) = three_peaks(seed);
        let s = synth(&x, &truth, seed);
        let fit = fit_peaks(&s, &settings(PeakCount::Fixed(3))).unwrap();
        for (p, &(h, c, w)) in fit.peaks.iter().zip(&truth.peaks) {
            assert!((p.center_nm - c).abs() < 0.5, "seed {seed}");
            assert!((p.amplitude - h).abs() / h < 0.02, "seed {seed}");
            assert!((p.fwhm_nm - w).abs() / w < 0.03, "seed {seed}");
        }
        // Baseline recovered: the model at the ends matches the truth line.
        let b = fit.baseline_at(600.0);
        let want = truth.baseline.0 + truth.baseline.1 * (600.0 - truth.lambda0);
        assert!(
            (b - want).abs() < 0.01,
            "seed {seed}: baseline {b} vs {want}"
        );
        assert!(fit.statistics.r_squared > 0.99);
    }
}

#[test]
fn every_line_shape_fits_its_own_data() {
    use maosic_analysis::lineshape::eval;
    let x = common::axis(400.0, 600.0, 801);
    let cases: [(LineShape, Vec<f64>); 4] = [
        (LineShape::Gaussian, vec![1.0, 500.0, 20.0]),
        (LineShape::Lorentzian, vec![1.0, 500.0, 20.0]),
        (LineShape::PseudoVoigt, vec![1.0, 500.0, 20.0, 0.4]),
        (LineShape::Voigt, vec![1.0, 500.0, 6.0, 5.0]),
    ];
    for (shape, p) in cases {
        let y: Vec<f64> = x.iter().map(|&v| 0.2 + eval(shape, &p, v)).collect();
        let s = maosic_analysis::Spectrum::new(x.clone(), y).unwrap();
        let fit = fit_peaks(
            &s,
            &FitSettings {
                shape,
                peaks: PeakCount::Fixed(1),
                baseline: Baseline::Constant,
                ..FitSettings::default()
            },
        )
        .unwrap_or_else(|e| panic!("{shape:?}: {e}"));
        let pk = &fit.peaks[0];
        for (q, want) in pk.params.iter().zip(&p) {
            assert!(
                (q.value - want).abs() < 1e-4 * want.abs().max(1.0),
                "{shape:?} {}: {} vs {want}",
                q.name,
                q.value
            );
        }
        assert!((fit.baseline[0].value - 0.2).abs() < 1e-6, "{shape:?}");
    }
}
