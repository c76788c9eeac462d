//! Synthetic spectra with known truth, shared by the integration tests and the benchmark.
#![allow(dead_code)]

use maosic_analysis::lineshape::{self, LineShape};
use maosic_analysis::Spectrum;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// Ground truth of one synthetic spectrum.
#[derive(Debug, Clone)]
pub struct Truth {
    /// (height, center_nm, fwhm_nm) per peak, increasing center.
    pub peaks: Vec<(f64, f64, f64)>,
    /// Baseline a + b (λ − λ0).
    pub baseline: (f64, f64),
    pub lambda0: f64,
    pub noise_sigma: f64,
}

/// Evenly spaced axis from `start` to `end` with `n` points.
pub fn axis(start: f64, end: f64, n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| start + (end - start) * i as f64 / (n - 1) as f64)
        .collect()
}

/// Gaussian peaks on a sloped line plus white noise of `noise_sigma`, from a seeded RNG.
pub fn synth(x: &[f64], truth: &Truth, seed: u64) -> Spectrum {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0, truth.noise_sigma.max(1e-300)).expect("valid sigma");
    let y = x
        .iter()
        .map(|&v| {
            let peaks: f64 = truth
                .peaks
                .iter()
                .map(|&(h, c, w)| lineshape::eval(LineShape::Gaussian, &[h, c, w], v))
                .sum();
            let noise = if truth.noise_sigma > 0.0 {
                normal.sample(&mut rng)
            } else {
                0.0
            };
            truth.baseline.0 + truth.baseline.1 * (v - truth.lambda0) + peaks + noise
        })
        .collect();
    Spectrum::new(x.to_vec(), y).expect("synthetic spectrum is valid")
}

/// The hard case: two Gaussians 15 nm apart, 1 % noise, sloped baseline.
pub fn two_close_peaks() -> (Vec<f64>, Truth) {
    (
        axis(380.0, 620.0, 961),
        Truth {
            peaks: vec![(1.0, 480.0, 16.0), (0.8, 495.0, 16.0)],
            baseline: (0.15, 8e-4),
            lambda0: 380.0,
            noise_sigma: 0.01,
        },
    )
}

/// The benchmark case: three Gaussians on 2,048 points, 1 % noise, sloped baseline. The centers
/// move a little with the seed so every spectrum is different.
pub fn three_peaks(seed: u64) -> (Vec<f64>, Truth) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let jitter = Normal::new(0.0, 2.0).expect("valid sigma");
    let mut j = || jitter.sample(&mut rng);
    (
        axis(350.0, 650.0, 2048),
        Truth {
            peaks: vec![
                (0.8, 420.0 + j(), 25.0),
                (1.0, 470.0 + j(), 18.0),
                (0.5, 530.0 + j(), 30.0),
            ],
            baseline: (0.1, 5e-4),
            lambda0: 350.0,
            noise_sigma: 0.01,
        },
    )
}
