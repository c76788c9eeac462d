//! `maosic-server analyze`, run as the real binary on CSV files written from the seeded spectrum
//! generator (known truth): the JSON it prints, and clear errors on bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::path::Path;

use maosic_analysis::synth::{self, Family, HELD_OUT_SEED_BASE};
use maosic_e2e::run_bin;
use serde_json::Value;

fn write_csv(path: &Path, x: &[f64], y: &[f64]) {
    let mut text = String::from("wavelength_nm,value\n");
    for (a, b) in x.iter().zip(y) {
        writeln!(text, "{a},{b}").unwrap();
    }
    std::fs::write(path, text).unwrap();
}

#[test]
fn analyze_prints_the_fitted_peaks_statistics_and_cd_at_the_exciton_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let s = synth::generate(Family::IssueThree, HELD_OUT_SEED_BASE + 7).unwrap();
    let x = s.spectrum.wavelength_nm();
    let spectrum = dir.path().join("absorption.csv");
    write_csv(&spectrum, x, s.spectrum.values());
    // CD: a negative band of 0.8 mdeg centred on the longest-wavelength (exciton) peak.
    let exciton = s.peaks.iter().map(|p| p.center_nm).fold(0.0, f64::max);
    let cd_y: Vec<f64> = x
        .iter()
        .map(|l| -0.8 * (-(l - exciton).powi(2) / (2.0 * 12.0 * 12.0)).exp())
        .collect();
    let cd = dir.path().join("cd.csv");
    write_csv(&cd, x, &cd_y);

    let out = run_bin(
        "maosic-server",
        &[
            "analyze",
            spectrum.to_str().unwrap(),
            "--cd",
            cd.to_str().unwrap(),
            "--model",
            "gaussian",
            "--peaks",
            "3",
            "--json",
        ],
        &[],
    )
    .unwrap();
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    let v: Value = serde_json::from_str(&out.stdout).expect("one JSON object on stdout");
    let peaks = v["peaks"].as_array().unwrap();
    assert_eq!(peaks.len(), 3, "{v:#}");
    for truth in &s.peaks {
        let p = peaks
            .iter()
            .min_by(|a, b| {
                let d = |q: &Value| (q["center_nm"].as_f64().unwrap() - truth.center_nm).abs();
                d(a).total_cmp(&d(b))
            })
            .unwrap();
        let center = p["center_nm"].as_f64().unwrap();
        let se = p["center_stderr_nm"].as_f64().unwrap();
        let amplitude = p["amplitude"].as_f64().unwrap();
        let amplitude_se = p["amplitude_stderr"].as_f64().unwrap();
        // Within 4 of its own standard errors (the close pair's parameters are correlated, so
        // their errors are large) and never far off.
        assert!(
            (center - truth.center_nm).abs() < 4.0 * se + 0.05,
            "{truth:?} {p}"
        );
        assert!(
            (center - truth.center_nm).abs() < 0.25 * truth.fwhm_nm,
            "{truth:?} {p}"
        );
        assert!(se > 0.0 && se < 3.0, "{p}");
        // Height above the fitted baseline, not the raw absorbance.
        assert!(
            (amplitude - truth.height).abs() < 4.0 * amplitude_se + 0.01,
            "{truth:?} {p}"
        );
        assert!(
            (amplitude - truth.height).abs() < 0.25 * truth.height,
            "{truth:?} {p}"
        );
        for key in ["amplitude_stderr", "fwhm_nm", "area"] {
            assert!(p[key].as_f64().unwrap() > 0.0, "{key}: {p}");
        }
    }
    let st = &v["statistics"];
    assert!(st["r_squared"].as_f64().unwrap() > 0.99, "{st}");
    assert_eq!(st["n_points"], 2048);
    assert!(st["reduced_chi_square"].as_f64().unwrap() > 0.0);
    let cd_at = v["cd_at_exciton_mdeg"].as_f64().unwrap();
    assert!((cd_at + 0.8).abs() < 0.02, "{cd_at}");
    assert!((v["exciton_wavelength_nm"].as_f64().unwrap() - exciton).abs() < 1.0);

    // Without --json: a table naming the file and one row per peak.
    let table = run_bin(
        "maosic-server",
        &["analyze", spectrum.to_str().unwrap(), "--peaks", "auto"],
        &[],
    )
    .unwrap();
    assert!(table.status.success(), "{}", table.stderr);
    assert!(table.stdout.contains("3 peak(s)"), "{}", table.stdout);
}

#[test]
fn analyze_fails_with_one_clear_line_on_a_bad_csv_or_a_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "wavelength_nm,value\n400,0.1\n401,zero\n").unwrap();
    let out = run_bin("maosic-server", &["analyze", bad.to_str().unwrap()], &[]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("is not a two-column spectrum")
            && out.stderr.contains("line 3: `zero` is not a number"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);

    let missing = dir.path().join("missing.csv");
    let out = run_bin(
        "maosic-server",
        &["analyze", missing.to_str().unwrap(), "--json"],
        &[],
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("cannot read"), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);

    let flat = dir.path().join("flat.csv");
    let rows: String = (0..50).map(|i| format!("{},0.5\n", 400 + i)).collect();
    std::fs::write(&flat, rows).unwrap();
    let out = run_bin("maosic-server", &["analyze", flat.to_str().unwrap()], &[]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("no peak stands out"), "{}", out.stderr);

    let out = run_bin(
        "maosic-server",
        &["analyze", bad.to_str().unwrap(), "--model", "sinc"],
        &[],
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stderr.contains("unknown line shape"), "{}", out.stderr);
}
