//! Held-out accuracy tests of the fit on generated spectra (`maosic_analysis::synth`): seeds from
//! `HELD_OUT_SEED_BASE` upwards, never used while tuning the fit (the benchmark `fit_hard` uses
//! seeds 0..N). Not timed: fit times are measured by the benchmark.
#![allow(clippy::unwrap_used)]

use maosic_analysis::synth::{self, Family, HELD_OUT_SEED_BASE};
use maosic_analysis::{fit_peaks, Baseline, FitSettings, LineShape, PeakCount};

/// A visible peak: taller than this many noise standard deviations (issue #19's criterion).
const VISIBLE_SIGMA: f64 = 10.0;

fn settings(family: Family, peaks: PeakCount) -> FitSettings {
    FitSettings {
        shape: LineShape::Gaussian,
        peaks,
        baseline: match family {
            Family::IssueThree => Baseline::Linear,
            Family::Hard => Baseline::Quadratic,
        },
        ..FitSettings::default()
    }
}

/// Fits `n` held-out spectra of `family`; returns (visible peaks, missed peaks, failures, a
/// description of each spectrum with a miss).
fn run(family: Family, n: u64, auto: bool) -> (usize, usize, usize, Vec<String>) {
    let (mut visible, mut missed, mut failures) = (0, 0, 0);
    let mut notes = Vec::new();
    for seed in HELD_OUT_SEED_BASE..HELD_OUT_SEED_BASE + n {
        let s = synth::generate(family, seed).unwrap();
        let count = if auto {
            PeakCount::Auto { max: 6 }
        } else {
            PeakCount::Fixed(s.peaks.len())
        };
        visible += s.visible(VISIBLE_SIGMA).count();
        let centers: Vec<f64> = match fit_peaks(&s.spectrum, &settings(family, count)) {
            Ok(fit) => fit.peaks.iter().map(|p| p.center_nm).collect(),
            Err(e) => {
                failures += 1;
                notes.push(format!("seed {seed}: fit failed: {e}"));
                Vec::new()
            }
        };
        let m = synth::missed_peaks(&s, &centers, VISIBLE_SIGMA);
        if !m.is_empty() {
            notes.push(format!(
                "seed {seed}: missed {:?} of truth {:?}, fitted centers {centers:?}",
                m.iter()
                    .map(|p| (p.center_nm, p.height / s.noise_sigma))
                    .collect::<Vec<_>>(),
                s.peaks
            ));
        }
        missed += m.len();
    }
    (visible, missed, failures, notes)
}

#[test]
fn issue_spectra_with_the_true_count_never_miss_a_visible_peak() {
    let (visible, missed, failures, notes) = run(Family::IssueThree, 300, false);
    assert_eq!(visible, 900);
    assert_eq!((missed, failures), (0, 0), "{notes:#?}");
}

#[test]
fn issue_spectra_with_an_automatic_count_never_miss_a_visible_peak() {
    let (_, missed, failures, notes) = run(Family::IssueThree, 300, true);
    assert_eq!((missed, failures), (0, 0), "{notes:#?}");
}

#[test]
fn hard_spectra_miss_at_most_one_percent_of_visible_peaks() {
    let (visible, missed, failures, notes) = run(Family::Hard, 120, false);
    eprintln!("hard family: {missed} of {visible} visible peaks missed, {failures} failures");
    assert_eq!(failures, 0, "{notes:#?}");
    assert!(
        missed * 100 <= visible,
        "{missed} of {visible} missed: {notes:#?}"
    );
}

/// Tuning-set spectra (seeds below `HELD_OUT_SEED_BASE`) whose fixed-count fit used to stop in a
/// local minimum with χ² hundreds of noise variances above the truth's: a close pair fitted as
/// one wide peak while the spare peak sat on the baseline (42, 114), or wide peaks pressed
/// against the width bound trading signal with the quadratic baseline (18, 363). The exchange
/// search (split one peak, drop another) must keep escaping them. Later ones: five of six peaks
/// collapsed to zero height (199) and a visible peak left out while the spare one sat beside
/// the window (56), escaped by the rebuild; a broad low peak absorbed by the curved baseline
/// while the spare peak was 150 nm wide (476), escaped by a relocation move; a left-out peak
/// only the matched-filter alarm notices (1104, 1186).
#[test]
fn fixed_count_fits_escape_known_local_minima() {
    for seed in [18, 42, 56, 114, 199, 363, 476, 1104, 1186] {
        assert_fits_every_visible_peak(seed);
    }
}

/// Spectra whose fixed-count fit stopped in a mirror image of an unresolved pair, 22–170 noise
/// variances of χ² above the truth's and below every alarm: the weaker peak on the wrong side of
/// the stronger one (held-out 2³² + 393, 407, 495; 2³³ + 21), or the broad and the narrow member
/// swapped (tuning 105; held-out 2³³ + 44, where a third peak overlaps). These held-out sets are
/// no longer untouched: the moves were designed from these misses.
#[test]
fn fixed_count_fits_try_the_mirror_images_of_an_unresolved_pair() {
    for seed in [
        105,
        HELD_OUT_SEED_BASE + 393,
        HELD_OUT_SEED_BASE + 407,
        HELD_OUT_SEED_BASE + 495,
        2 * HELD_OUT_SEED_BASE + 21,
        2 * HELD_OUT_SEED_BASE + 44,
    ] {
        assert_fits_every_visible_peak(seed);
    }
}

/// The fixed-count fit of hard spectrum `seed` finds every visible peak and is statistically as
/// good as the truth.
fn assert_fits_every_visible_peak(seed: u64) {
    let s = synth::generate(Family::Hard, seed).unwrap();
    let fit = fit_peaks(
        &s.spectrum,
        &settings(Family::Hard, PeakCount::Fixed(s.peaks.len())),
    )
    .unwrap();
    let centers: Vec<f64> = fit.peaks.iter().map(|p| p.center_nm).collect();
    let missed = synth::missed_peaks(&s, &centers, VISIBLE_SIGMA);
    assert!(
        missed.is_empty(),
        "seed {seed}: missed {missed:?}, fitted {centers:?}"
    );
    // χ² within a few noise variances per point.
    let per_point = fit.statistics.chi_square
        / (s.noise_sigma * s.noise_sigma)
        / fit.statistics.n_points as f64;
    assert!(per_point < 1.1, "seed {seed}: χ²/(Nσ²) = {per_point}");
}
