//! Fidelity of the virtual lab against the paper's figures, with fixed seeds.
#![allow(clippy::unwrap_used)]

use maosic_lab::probe::{cd_at, find_exciton, probe, ProbeSpec};
use maosic_lab::sim::optics::{self, cd_magnitude, Sample};
use maosic_landscape::Landscape;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn measure(l: &Landscape, s: &Sample, rng: &mut ChaCha8Rng) -> (f64, f64, f64) {
    let (wl, a) = optics::absorption_spectrum(s, 10, rng);
    let (x, abs) = find_exciton(&wl, &a).unwrap();
    let (cw, cv) = optics::cd_spectrum(l, s, 350.0, 600.0, 0.5, 1, rng);
    (x, abs, cd_at(&cw, &cv, x))
}

fn mean_abs_cd(l: &Landscape, t: f64, c: f64, seed: u64) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = 10;
    (0..n)
        .map(|i| {
            measure(l, &Sample::synthesise(i, t, c, &mut rng), &mut rng)
                .2
                .abs()
        })
        .sum::<f64>()
        / n as f64
}

#[test]
fn global_and_local_optimum_valley_and_cubic_drop() {
    let l = Landscape::paper();
    let g = mean_abs_cd(&l, 130.0, 0.8, 1);
    let loc = mean_abs_cd(&l, 110.0, 0.4, 2);
    println!("|CD| (130 °C, 0.8) = {g:.3} mdeg; (110 °C, 0.4) = {loc:.3} mdeg");
    assert!((g - 1.0).abs() <= 0.15, "global {g}");
    assert!((loc - 0.4).abs() <= 0.06, "local {loc}");
    // valley on the segment between the two optima
    let valley = (1..10)
        .map(|k| {
            let f = f64::from(k) / 10.0;
            let s = Sample {
                id: 0,
                t_c: 110.0 + 20.0 * f,
                c: 0.4 + 0.4 * f,
                handedness: 1.0,
                cd_scale: 1.0,
                abs_scale: 1.0,
                dose_800_s: 0.0,
            };
            cd_magnitude(&l, &s)
        })
        .fold(f64::INFINITY, f64::min);
    println!("valley between the optima: {valley:.3} mdeg");
    assert!(valley < 0.3, "{valley}");
    let mut worst: f64 = 0.0;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for t in [166.0, 170.0, 175.0, 180.0] {
        for c in [0.2, 0.5, 0.8, 1.0, 1.2] {
            let s = Sample::synthesise(0, t, c, &mut rng);
            worst = worst.max(measure(&l, &s, &mut rng).2.abs());
        }
    }
    println!("max |CD| above 165 °C: {worst:.3} mdeg");
    assert!(worst < 0.2);
}

#[test]
fn cd_linear_in_concentration_at_130() {
    let l = Landscape::paper();
    let xs: Vec<f64> = (0..=16).map(|i| 0.2 + 0.05 * f64::from(i)).collect();
    let ys: Vec<f64> = xs
        .iter()
        .map(|&c| {
            cd_magnitude(
                &l,
                &Sample {
                    id: 0,
                    t_c: 130.0,
                    c,
                    handedness: 1.0,
                    cd_scale: 1.0,
                    abs_scale: 1.0,
                    dose_800_s: 0.0,
                },
            )
        })
        .collect();
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    let syy: f64 = ys.iter().map(|y| (y - my).powi(2)).sum();
    let r2 = sxy * sxy / (sxx * syy);
    println!(
        "R² of |CD| vs C at 130 °C (0.2..1.0): {r2:.4}, slope {:.3} mdeg per mmol/ml",
        sxy / sxx
    );
    assert!(r2 > 0.95 && sxy > 0.0);
}

#[test]
fn handedness_is_balanced() {
    let l = Landscape::paper();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let pos = (0..200)
        .filter(|&i| {
            let s = Sample::synthesise(i, 130.0, 0.8, &mut rng);
            measure(&l, &s, &mut rng).2 > 0.0
        })
        .count();
    println!("positive CD in {pos} of 200 syntheses");
    assert!((80..=120).contains(&pos));
}

#[test]
fn laser_800_inverts_300_does_not() {
    let l = Landscape::paper();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for i in 0..20 {
        let s0 = Sample::synthesise(i, 130.0, 0.8, &mut rng);
        let x = optics::exciton_nm(s0.t_c);
        let mut s8 = s0.clone();
        optics::irradiate(&mut s8, 800.0, 300.0, &mut rng);
        let mut s3 = s0.clone();
        optics::irradiate(&mut s3, 300.0, 300.0, &mut rng);
        let (c0, c8, c3) = (
            optics::cd_value(&l, &s0, x),
            optics::cd_value(&l, &s8, x),
            optics::cd_value(&l, &s3, x),
        );
        let da = (optics::absorbance(&s8, x) / optics::absorbance(&s0, x) - 1.0).abs();
        if i == 0 {
            println!("800 nm/300 s: {c0:+.3} -> {c8:+.3} mdeg, absorbance change {:.2} %; 300 nm: {c3:+.3} mdeg", da * 100.0);
        }
        assert!(c0 * c8 < 0.0, "800 nm must invert");
        assert!((c8.abs() / c0.abs() - 1.0).abs() < 0.15);
        assert!(da < 0.01);
        assert!(c0 * c3 > 0.0, "300 nm must not invert");
    }
    // shorter 800 nm exposure does not invert
    let mut s = Sample::synthesise(0, 130.0, 0.8, &mut rng);
    let h = s.handedness;
    optics::irradiate(&mut s, 800.0, 100.0, &mut rng);
    assert_eq!(s.handedness, h);
}

#[test]
fn exciton_near_450_at_130_and_moves_with_t_absorbance_grows_with_c() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let l = Landscape::paper();
    let s = Sample::synthesise(1, 130.0, 0.8, &mut rng);
    let (x, a, _) = measure(&l, &s, &mut rng);
    let s2 = Sample::synthesise(2, 170.0, 0.8, &mut rng);
    let (x2, _, _) = measure(&l, &s2, &mut rng);
    let s3 = Sample::synthesise(3, 130.0, 0.4, &mut rng);
    let (_, a3, _) = measure(&l, &s3, &mut rng);
    println!("exciton {x:.1} nm (130 °C), {x2:.1} nm (170 °C); absorbance {a:.3} (C 0.8) vs {a3:.3} (C 0.4)");
    assert!((x - 450.0).abs() < 5.0);
    assert!(x2 > x + 5.0);
    assert!(a > 1.8 * a3);
}

/// The same figures through the whole virtual lab (real drivers on pseudo-terminals).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_through_the_virtual_lab() {
    let spec = ProbeSpec {
        t_c: 130.0,
        c: 0.8,
        seed: 7,
        landscape: "paper".into(),
        laser: Some((800.0, 300.0)),
        speed: 1000.0,
    };
    let r = probe(&spec).await.unwrap();
    let before = r.cd_mdeg_before_laser.unwrap();
    println!(
        "probe: T {:?} °C, exciton {:.1} nm, A {:.3}, CD {before:+.3} -> {:+.3} mdeg after 800 nm, lab {:.0} s",
        r.t_measured_c, r.exciton_nm, r.absorbance, r.cd_mdeg, r.lab_time_s
    );
    assert_eq!(r.absorption.values.len(), 2048);
    assert!((r.exciton_nm - 450.0).abs() < 5.0);
    assert!((before.abs() - 1.0).abs() <= 0.15, "{before}");
    assert!(before * r.cd_mdeg < 0.0);
    let da = r.absorbance_change_pct.unwrap();
    println!("absorbance change across the laser step (CD HT channel): {da:+.2} %");
    assert!(da.abs() < 1.0);
    assert!((r.t_measured_c.unwrap() - 130.0).abs() <= 1.0);
    let spec = ProbeSpec {
        t_c: 110.0,
        c: 0.4,
        seed: 8,
        laser: None,
        ..spec
    };
    let r = probe(&spec).await.unwrap();
    println!("probe (110, 0.4): CD {:+.3} mdeg", r.cd_mdeg);
    assert!((r.cd_mdeg.abs() - 0.4).abs() <= 0.06);
}
