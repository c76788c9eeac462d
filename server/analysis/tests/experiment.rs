//! The server's path end to end on realistic nanocrystal spectra: absorption with an exciton peak on
//! a rising continuum plus a bisignate CD spectrum → features → objective value.
#![allow(clippy::unwrap_used)]

mod common;

use maosic_analysis::{analyse_experiment, AnalysisSettings, Direction, Objective, Spectrum};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

fn cd_at(l: f64, exciton: f64) -> f64 {
    -0.9 * (-(l - exciton + 4.0).powi(2) / 98.0).exp()
        + 0.4 * (-(l - exciton - 12.0).powi(2) / 98.0).exp()
}

/// CsPbBr3-like absorption: band-edge continuum rising to the blue, first exciton (FWHM 16.5 nm)
/// on top, 0.005 absorbance noise; CD: negative band just blue of the exciton, positive to the red.
fn experiment(seed: u64, exciton: f64) -> (Spectrum, Spectrum) {
    let x = common::axis(380.0, 600.0, 1100);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let noise = Normal::new(0.0, 0.005).unwrap();
    let abs: Vec<f64> = x
        .iter()
        .map(|&l| {
            let continuum = 0.25 * (1.0 + ((exciton - 15.0 - l) / 12.0).tanh());
            let peak = 0.35 * (-(l - exciton).powi(2) / (2.0 * 49.0)).exp();
            0.02 + continuum + peak + noise.sample(&mut rng)
        })
        .collect();
    let cd_noise = Normal::new(0.0, 0.01).unwrap();
    let cd: Vec<f64> = x
        .iter()
        .map(|&l| cd_at(l, exciton) + cd_noise.sample(&mut rng))
        .collect();
    (
        Spectrum::new(x.clone(), abs).unwrap(),
        Spectrum::new(x, cd).unwrap(),
    )
}

#[test]
fn exciton_cd_and_objective_on_realistic_spectra() {
    let objective = Objective::parse("maximize abs(cd_at_exciton)").unwrap();
    assert_eq!(objective.direction(), Direction::Maximize);
    for seed in 0..6u64 {
        let exciton = 490.0 + 3.0 * seed as f64;
        let (a, c) = experiment(seed, exciton);
        let r = analyse_experiment(&a, Some(&c), &AnalysisSettings::default())
            .unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        let f = &r.features;
        assert!(
            (f.exciton_wavelength_nm - exciton).abs() < 1.5,
            "seed {seed}: exciton {} vs {exciton}",
            f.exciton_wavelength_nm
        );
        assert!(f.exciton_fwhm_nm > 10.0 && f.exciton_fwhm_nm < 22.0);
        let cd = f.cd_at_exciton_mdeg.unwrap();
        // CD read at the fitted wavelength: compare with the truth there (noise 0.01 mdeg).
        assert!(
            (cd - cd_at(f.exciton_wavelength_nm, exciton)).abs() < 0.05,
            "seed {seed}"
        );
        assert!(cd < 0.0 && f.g_factor.unwrap() < 0.0);
        assert!(
            (f.cd_extremum_mdeg.unwrap() + 0.9).abs() < 0.06,
            "seed {seed}"
        );
        assert!((f.cd_extremum_wavelength_nm.unwrap() - (exciton - 4.0)).abs() < 2.0);
        let value = objective.evaluate(f).unwrap();
        assert_eq!(value, cd.abs());
        assert_eq!(objective.loss(f).unwrap(), -cd.abs());
    }
}
