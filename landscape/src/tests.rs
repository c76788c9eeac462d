//! Tests of the landscape format and of the paper landscape's figures.

use super::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn paper_eval(t: f64, c: f64) -> f64 {
    Landscape::paper().eval(&[t, c])
}

/// Max over a grid (step dt, dc) of a rectangle.
fn grid_max(l: &Landscape, t: (f64, f64), c: (f64, f64), dt: f64, dc: f64) -> (f64, f64, f64) {
    let mut best = (f64::NEG_INFINITY, 0.0, 0.0);
    let nt = ((t.1 - t.0) / dt).round() as usize;
    let nc = ((c.1 - c.0) / dc).round() as usize;
    for i in 0..=nt {
        for j in 0..=nc {
            let (ti, cj) = (t.0 + i as f64 * dt, c.0 + j as f64 * dc);
            let v = l.eval(&[ti, cj]);
            if v > best.0 {
                best = (v, ti, cj);
            }
        }
    }
    best
}

#[test]
fn embedded_landscapes_parse() {
    assert_eq!(Landscape::paper().variables().len(), 2);
    assert_eq!(Landscape::branin().variables().len(), 2);
    assert_eq!(Landscape::hartmann3().variables().len(), 3);
    assert_eq!(Landscape::paper().variable_index("C"), Some(1));
    assert!(Landscape::builtin("nope").is_err());
}

#[test]
fn paper_global_optimum_near_130_08() {
    let v = paper_eval(130.0, 0.8);
    assert!((0.85..=1.15).contains(&v), "|CD|(130, 0.8) = {v}");
    let l = Landscape::paper();
    let (best, t, c) = grid_max(&l, (90.0, 180.0), (0.2, 1.2), 0.5, 0.01);
    let opt = l.optimum();
    assert!(
        (best - opt.value).abs() < 0.01,
        "grid max {best} vs stated {}",
        opt.value
    );
    assert!((l.eval(&opt.x) - opt.value).abs() < 0.01);
    assert!(
        (t - 130.0).abs() <= 5.0 && (0.75..=1.0).contains(&c),
        "argmax ({t}, {c})"
    );
}

#[test]
fn paper_local_optimum_near_110_04() {
    let l = Landscape::paper();
    let v = paper_eval(110.0, 0.4);
    assert!((0.34..=0.46).contains(&v), "|CD|(110, 0.4) = {v}");
    // It is a local maximum: the best point of its neighbourhood.
    let (best, t, c) = grid_max(&l, (100.0, 118.0), (0.25, 0.55), 0.5, 0.01);
    assert!(
        (t - 110.0).abs() <= 2.0 && (c - 0.4).abs() <= 0.05,
        "local argmax ({t}, {c})"
    );
    assert!((best - v).abs() < 0.02);
}

#[test]
fn paper_valley_between_optima() {
    let lowest = (0..=100)
        .map(|k| {
            let s = k as f64 / 100.0;
            paper_eval(110.0 + 20.0 * s, 0.4 + 0.4 * s)
        })
        .fold(f64::INFINITY, f64::min);
    assert!(lowest < 0.3, "segment minimum {lowest} is not a valley");
}

#[test]
fn paper_cubic_phase_drop_above_165() {
    let l = Landscape::paper();
    let (best, _, _) = grid_max(&l, (165.5, 180.0), (0.2, 1.2), 0.5, 0.01);
    assert!(best < 0.2, "max above 165 °C is {best}");
    // And it is a drop: at 150 °C there is still signal.
    assert!(paper_eval(150.0, 1.0) > 2.0 * paper_eval(165.0, 1.0));
}

#[test]
fn paper_linear_in_c_at_130() {
    let pts: Vec<(f64, f64)> = (0..=80)
        .map(|k| {
            let c = 0.2 + 0.01 * k as f64;
            (c, paper_eval(130.0, c))
        })
        .collect();
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let syy: f64 = pts.iter().map(|p| (p.1 - my).powi(2)).sum();
    let r2 = sxy * sxy / (sxx * syy);
    assert!(r2 > 0.95, "R² = {r2}");
    assert!(sxy > 0.0, "must rise with C");
}

#[test]
fn paper_noise_is_a_few_hundredths() {
    let l = Landscape::paper();
    assert!((0.01..=0.05).contains(&l.noise_sd()));
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let x = [130.0, 0.8];
    let n = 4000;
    let d: Vec<f64> = (0..n)
        .map(|_| l.eval_noisy(&x, &mut rng) - l.eval(&x))
        .collect();
    let mean = d.iter().sum::<f64>() / n as f64;
    let sd = (d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    assert!(mean.abs() < 0.005, "noise mean {mean}");
    assert!(
        (sd - l.noise_sd()).abs() < 0.1 * l.noise_sd(),
        "noise sd {sd}"
    );
}

#[test]
fn noise_is_reproducible_by_seed() {
    let l = Landscape::paper();
    let a = l.eval_noisy(&[120.0, 0.5], &mut ChaCha8Rng::seed_from_u64(3));
    let b = l.eval_noisy(&[120.0, 0.5], &mut ChaCha8Rng::seed_from_u64(3));
    assert_eq!(a, b);
}

#[test]
fn branin_known_minima() {
    let l = Landscape::branin();
    use std::f64::consts::PI;
    for x in [[-PI, 12.275], [PI, 2.275], [9.42478, 2.475]] {
        assert!((l.eval(&x) - 0.397887).abs() < 1e-5, "{x:?}");
    }
    assert_eq!(l.sense(), Sense::Minimize);
    assert!((l.eval(&l.optimum().x) - l.optimum().value).abs() < 1e-5);
    // Nothing on a grid is lower than the stated optimum.
    for i in 0..=150 {
        for j in 0..=150 {
            let v = l.eval(&[-5.0 + 0.1 * i as f64, 0.1 * j as f64]);
            assert!(v >= l.optimum().value - 1e-6);
        }
    }
}

#[test]
fn hartmann3_known_minimum() {
    let l = Landscape::hartmann3();
    let v = l.eval(&l.optimum().x);
    assert!((v - -3.86278).abs() < 1e-4, "{v}");
    for i in 0..=20 {
        for j in 0..=20 {
            for k in 0..=20 {
                let x = [i as f64 / 20.0, j as f64 / 20.0, k as f64 / 20.0];
                assert!(l.eval(&x) >= -3.86278 - 1e-4);
            }
        }
    }
}

#[test]
fn within_fraction_respects_sense() {
    let p = Landscape::paper();
    assert!(p.within_fraction_of_optimum(0.96, 0.05));
    assert!(!p.within_fraction_of_optimum(0.9, 0.05));
    let h = Landscape::hartmann3();
    assert!(h.within_fraction_of_optimum(-3.7, 0.05));
    assert!(!h.within_fraction_of_optimum(-3.6, 0.05));
    assert_eq!(p.to_loss(1.0), -1.0);
    assert_eq!(h.to_loss(1.0), 1.0);
}

#[test]
fn all_term_kinds_evaluate() {
    let text = r#"
name = "t"
noise_sd = 0.0
[[variables]]
name = "a"
lower = 0.0
upper = 2.0
[[variables]]
name = "b"
lower = -1.0
upper = 1.0
[[terms]]
kind = "constant"
value = 1.0
[[terms]]
kind = "linear"
offset = 0.5
coefficients = { a = 2.0 }
[[terms]]
kind = "monomial"
coefficient = 3.0
powers = { a = 2, b = 1 }
[[terms]]
kind = "product"
factors = [
  { kind = "gaussian", amplitude = 2.0, center = { a = 1.0 }, width = { a = 0.5 } },
  { kind = "sigmoid", variable = "b", edge = 0.0, width = 0.1, rising = true },
]
[optimum]
x = { a = 2.0, b = 1.0 }
value = 0.0
"#;
    let l = Landscape::from_toml_str(text).unwrap();
    let (a, b) = (1.5_f64, 0.2_f64);
    let expect = 1.0
        + (0.5 + 2.0 * a)
        + 3.0 * a * a * b
        + 2.0 * (-0.5 * ((a - 1.0) / 0.5).powi(2)).exp() / (1.0 + (-(b / 0.1)).exp());
    assert!((l.eval(&[a, b]) - expect).abs() < 1e-12);
    assert!(l.eval(&[1.0]).is_nan());
    assert!(matches!(
        l.try_eval(&[1.0]),
        Err(LandscapeError::Dimension {
            got: 1,
            expected: 2
        })
    ));
}

#[test]
fn bad_documents_are_typed_errors() {
    let base = |terms: &str, extra: &str| {
        format!(
            "name = \"x\"\n{extra}\n[[variables]]\nname = \"a\"\nlower = 0.0\nupper = 1.0\n{terms}\n[optimum]\nx = {{ a = 0.5 }}\nvalue = 1.0\n"
        )
    };
    let unknown_var = base(
        "[[terms]]\nkind = \"linear\"\ncoefficients = { z = 1.0 }",
        "",
    );
    assert!(matches!(
        Landscape::from_toml_str(&unknown_var),
        Err(LandscapeError::Invalid(_))
    ));
    let typo = base("[[terms]]\nkind = \"constant\"\nvalu = 1.0", "");
    assert!(matches!(
        Landscape::from_toml_str(&typo),
        Err(LandscapeError::Parse(_))
    ));
    let neg_noise = base(
        "[[terms]]\nkind = \"constant\"\nvalue = 1.0",
        "noise_sd = -1.0",
    );
    assert!(Landscape::from_toml_str(&neg_noise).is_err());
    let bad_arity = base("[[terms]]\nkind = \"builtin\"\nfunction = \"branin\"", "");
    assert!(Landscape::from_toml_str(&bad_arity).is_err());
    assert!(Landscape::from_toml_str("not toml [").is_err());
}

proptest::proptest! {
    #[test]
    fn paper_is_finite_and_nonnegative_in_bounds(t in 90.0f64..=180.0, c in 0.2f64..=1.2) {
        let v = paper_eval(t, c);
        proptest::prop_assert!(v.is_finite() && (0.0..=1.01).contains(&v));
    }

    #[test]
    fn arbitrary_text_never_panics(s in ".{0,200}") {
        let _ = Landscape::from_toml_str(&s);
    }
}
