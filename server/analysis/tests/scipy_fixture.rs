//! find_peaks and savgol_filter against scipy's own outputs on a fixed noisy signal
//! (fixture written by bench/reference/analysis_scipy_fixture.py).
#![allow(clippy::unwrap_used)]

use maosic_analysis::peaks::{find_peaks_on, PeakOptions};
use maosic_analysis::preprocess::savgol_filter;
use serde_json::Value;

const FIXTURE: &str = include_str!("../../../bench/reference/analysis_scipy_fixture.json");

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + b.abs())
}

#[test]
fn find_peaks_reproduces_scipy() {
    let fx: Value = serde_json::from_str(FIXTURE).unwrap();
    let signal = floats(&fx["signal"]);
    let axis: Vec<f64> = (0..signal.len()).map(|i| i as f64).collect();
    let cases = fx["find_peaks"].as_array().unwrap();
    assert!(cases.len() >= 6);
    for case in cases {
        let o = &case["options"];
        let opts = PeakOptions {
            height: o["height"].as_f64(),
            prominence: Some(o["prominence"].as_f64().unwrap_or(0.0)),
            width: Some(o["width"].as_f64().unwrap_or(0.0)),
            distance: o["distance"].as_u64().map(|d| d as usize),
            rel_height: o["rel_height"].as_f64().unwrap_or(0.5),
        };
        let got = find_peaks_on(&signal, &axis, &opts);
        let want: Vec<usize> = case["peaks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let idx: Vec<usize> = got.iter().map(|p| p.index).collect();
        assert_eq!(idx, want, "peaks for {o}");
        let cols = [
            (
                "prominences",
                got.iter().map(|p| p.prominence).collect::<Vec<_>>(),
            ),
            (
                "left_bases",
                got.iter().map(|p| p.left_base as f64).collect(),
            ),
            (
                "right_bases",
                got.iter().map(|p| p.right_base as f64).collect(),
            ),
            ("widths", got.iter().map(|p| p.width_samples).collect()),
            ("left_ips", got.iter().map(|p| p.left_ip).collect()),
            ("right_ips", got.iter().map(|p| p.right_ip).collect()),
        ];
        for (name, ours) in cols {
            let theirs = floats(&case[name]);
            assert_eq!(ours.len(), theirs.len(), "{name} for {o}");
            for (a, b) in ours.iter().zip(&theirs) {
                assert!(close(*a, *b), "{name} for {o}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn savgol_reproduces_scipy() {
    let fx: Value = serde_json::from_str(FIXTURE).unwrap();
    let signal = floats(&fx["signal"]);
    for case in fx["savgol"].as_array().unwrap() {
        let w = case["window"].as_u64().unwrap() as usize;
        let p = case["polyorder"].as_u64().unwrap() as usize;
        let d = case["deriv"].as_u64().unwrap() as usize;
        let delta = case["delta"].as_f64().unwrap();
        let ours = savgol_filter(&signal, w, p, d, delta).unwrap();
        let theirs = floats(&case["output"]);
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert!(
                (a - b).abs() <= 1e-8 * (1.0 + b.abs()),
                "savgol w={w} p={p} d={d} at {i}: {a} vs {b}"
            );
        }
    }
}
