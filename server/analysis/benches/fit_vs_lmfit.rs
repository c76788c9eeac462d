//! Benchmark: the same synthetic 3-peak, 2,048-point spectra through maosic-analysis and through
//! Python lmfit (bench/reference/lmfit_bench.py), accuracy and median time per fit side by side.
//!
//! Run: `cargo bench -p maosic-analysis --bench fit_vs_lmfit` (optionally `-- N` spectra).
//! The Python side runs when an interpreter with lmfit is found: `$MAOSIC_BENCH_PYTHON`, else
//! `/var/tmp/maosic-venv-ana/bin/python`, else `python3`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use maosic_analysis::{fit_peaks, Baseline, FitSettings, LineShape, PeakCount};

/// One recovered peak: (center, center SE, height, height SE, FWHM).
type Recovered = (f64, Option<f64>, f64, Option<f64>, f64);

#[derive(Default)]
struct Acc {
    fits: usize,
    failures: usize,
    center_err: Vec<f64>,
    height_rel_err: Vec<f64>,
    fwhm_rel_err: Vec<f64>,
    inside_2se: usize,
    with_se: usize,
    times_s: Vec<f64>,
}

impl Acc {
    fn add(&mut self, truth: &[(f64, f64, f64)], got: &[Recovered]) {
        self.fits += 1;
        if got.len() != truth.len() {
            self.failures += 1;
            return;
        }
        for (&(h, c, w), &(gc, gc_se, gh, gh_se, gw)) in truth.iter().zip(got) {
            self.center_err.push((gc - c).abs());
            self.height_rel_err.push((gh - h).abs() / h);
            self.fwhm_rel_err.push((gw - w).abs() / w);
            for (err, se) in [((gc - c).abs(), gc_se), ((gh - h).abs(), gh_se)] {
                if let Some(se) = se {
                    self.with_se += 1;
                    if err <= 2.0 * se {
                        self.inside_2se += 1;
                    }
                }
            }
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    s[s.len() / 2]
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

fn python() -> Option<String> {
    if let Ok(p) = std::env::var("MAOSIC_BENCH_PYTHON") {
        return Some(p);
    }
    let venv = "/var/tmp/maosic-venv-ana/bin/python";
    if std::path::Path::new(venv).exists() {
        return Some(venv.into());
    }
    Command::new("python3")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| "python3".into())
}

fn main() {
    let n_spectra: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100);
    let spectra: Vec<_> = (0..n_spectra)
        .map(|seed| {
            let (x, truth) = common::three_peaks(seed);
            let s = common::synth(&x, &truth, seed);
            (s, truth)
        })
        .collect();
    let settings = FitSettings {
        shape: LineShape::Gaussian,
        peaks: PeakCount::Fixed(3),
        baseline: Baseline::Linear,
        ..FitSettings::default()
    };

    // Rust side: one warm-up pass, then each spectrum timed as the median of 5 runs.
    for (s, _) in spectra.iter().take(5) {
        let _ = fit_peaks(s, &settings);
    }
    let mut rust = Acc::default();
    for (s, truth) in &spectra {
        let mut t = Vec::new();
        let mut res = None;
        for _ in 0..5 {
            let t0 = Instant::now();
            res = Some(fit_peaks(s, &settings));
            t.push(t0.elapsed().as_secs_f64());
        }
        rust.times_s.push(median(&t));
        match res {
            Some(Ok(fit)) => {
                let got: Vec<_> = fit
                    .peaks
                    .iter()
                    .map(|p| {
                        (
                            p.center_nm,
                            p.center_stderr_nm,
                            p.amplitude,
                            p.amplitude_stderr,
                            p.fwhm_nm,
                        )
                    })
                    .collect();
                rust.add(&truth.peaks, &got);
            }
            _ => {
                rust.fits += 1;
                rust.failures += 1;
            }
        }
    }

    // Python side.
    let mut py: Option<Acc> = None;
    let py_note: String;
    match python() {
        None => py_note = "skipped: no python3 found".into(),
        Some(interp) => {
            let dir = std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| std::env::temp_dir());
            let input = dir.join("maosic-analysis-bench-spectra.json");
            let json = serde_json::json!({
                "n_peaks": 3,
                "spectra": spectra.iter().map(|(s, t)| serde_json::json!({
                    "x": s.wavelength_nm(),
                    "y": s.values(),
                    "truth": t.peaks.iter().map(|p| [p.0, p.1, p.2]).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            });
            std::fs::write(&input, json.to_string()).expect("write bench input");
            let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../bench/reference/lmfit_bench.py");
            let out = Command::new(&interp).arg(&script).arg(&input).output();
            match out {
                Ok(o) if o.status.success() => {
                    let v: serde_json::Value =
                        serde_json::from_slice(&o.stdout).expect("lmfit_bench.py output is JSON");
                    let mut acc = Acc::default();
                    for ((_, truth), r) in spectra.iter().zip(v["results"].as_array().unwrap()) {
                        if !r["success"].as_bool().unwrap_or(false) {
                            acc.fits += 1;
                            acc.failures += 1;
                            continue;
                        }
                        let got: Vec<_> = r["peaks"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|p| {
                                (
                                    p["center"].as_f64().unwrap_or(f64::NAN),
                                    p["center_se"].as_f64(),
                                    p["height"].as_f64().unwrap_or(f64::NAN),
                                    p["height_se"].as_f64(),
                                    p["fwhm"].as_f64().unwrap_or(f64::NAN),
                                )
                            })
                            .collect();
                        acc.add(&truth.peaks, &got);
                    }
                    acc.times_s = v["times_s"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter_map(|t| t.as_f64())
                        .collect();
                    py_note = format!("versions: {}", v["versions"]);
                    py = Some(acc);
                }
                Ok(o) => {
                    py_note = format!(
                        "skipped: {interp} failed ({}): {}",
                        o.status,
                        String::from_utf8_lossy(&o.stderr)
                            .lines()
                            .last()
                            .unwrap_or("")
                    )
                }
                Err(e) => py_note = format!("skipped: cannot run {interp}: {e}"),
            }
        }
    }

    let row = |name: &str, a: &Acc| {
        format!(
            "| {name} | {} / {} | {:.4} / {:.4} | {:.3} / {:.3} | {:.3} / {:.3} | {:.1} % | {:.3} |",
            a.fits - a.failures,
            a.fits,
            mean(&a.center_err),
            max(&a.center_err),
            100.0 * mean(&a.height_rel_err),
            100.0 * max(&a.height_rel_err),
            100.0 * mean(&a.fwhm_rel_err),
            100.0 * max(&a.fwhm_rel_err),
            100.0 * a.inside_2se as f64 / a.with_se.max(1) as f64,
            1e3 * median(&a.times_s),
        )
    };
    println!(
        "{n_spectra} synthetic spectra, 2,048 points, 3 Gaussian peaks + linear baseline, 1 % noise"
    );
    println!();
    println!("| library | converged | center error mean / max (nm) | height error mean / max (%) | FWHM error mean / max (%) | truth within ±2 SE (center, height) | median time per fit (ms) |");
    println!("|---|---|---|---|---|---|---|");
    println!("{}", row("maosic-analysis (Rust)", &rust));
    if let Some(p) = &py {
        println!("{}", row("lmfit (Python)", p));
        println!();
        println!(
            "Speed-up (median time per fit): {:.1}×",
            median(&p.times_s) / median(&rust.times_s)
        );
    }
    println!();
    println!("Python side: {py_note}");

    // Other modes of this library on the same spectra (no lmfit counterpart run here).
    println!();
    println!("| maosic-analysis mode (same spectra) | converged | median time per fit (ms) |");
    println!("|---|---|---|");
    let modes: [(&str, LineShape, PeakCount); 5] = [
        (
            "Lorentzian, 3 peaks",
            LineShape::Lorentzian,
            PeakCount::Fixed(3),
        ),
        (
            "pseudo-Voigt, 3 peaks",
            LineShape::PseudoVoigt,
            PeakCount::Fixed(3),
        ),
        ("Voigt, 3 peaks", LineShape::Voigt, PeakCount::Fixed(3)),
        (
            "Gaussian, automatic count (1..=5, BIC)",
            LineShape::Gaussian,
            PeakCount::Auto { max: 5 },
        ),
        (
            "Voigt, automatic count (1..=5, BIC)",
            LineShape::Voigt,
            PeakCount::Auto { max: 5 },
        ),
    ];
    for (name, shape, peaks) in modes {
        let st = FitSettings {
            shape,
            peaks,
            ..settings.clone()
        };
        let mut ok = 0;
        let mut chose_three = 0;
        let mut times = Vec::new();
        for (s, _) in spectra.iter().take(30) {
            let t0 = Instant::now();
            let r = fit_peaks(s, &st);
            times.push(t0.elapsed().as_secs_f64());
            if let Ok(f) = r {
                ok += 1;
                if f.peaks.len() == 3 {
                    chose_three += 1;
                }
            }
        }
        let note = if matches!(peaks, PeakCount::Auto { .. }) {
            format!(" ({chose_three} chose 3 peaks)")
        } else {
            String::new()
        };
        println!(
            "| {name} | {ok} / {}{note} | {:.3} |",
            times.len(),
            1e3 * median(&times)
        );
    }
}
