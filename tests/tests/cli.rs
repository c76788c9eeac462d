//! The operator command lines, run as the real binaries: `maosic-server lang …`,
//! `maosic-server optimize-bench`, `maosic-agent virtual-lab probe` and `maosic-agent devices`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use maosic_e2e::run_bin;
use serde_json::Value;

fn repo(path: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
        .to_string_lossy()
        .into_owned()
}

#[test]
fn lang_check_passes_the_paper_recipe_and_fails_out_of_range_values_with_exit_1() {
    let recipe = repo("examples/chirality.recipe");
    let lab = repo("examples/paper-lab.toml");
    let ok = run_bin(
        "maosic-server",
        &[
            "lang", "check", &recipe, "--lab", &lab, "--set", "T=130", "--set", "C=0.8",
        ],
        &[],
    )
    .unwrap();
    assert!(ok.status.success(), "{}{}", ok.stdout, ok.stderr);
    let bad = run_bin(
        "maosic-server",
        &[
            "lang", "check", &recipe, "--lab", &lab, "--set", "T=130", "--set", "C=5",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let text = format!("{}{}", bad.stdout, bad.stderr);
    assert!(text.contains("variable-out-of-range"), "{text}");
    assert!(text.contains("from $C = 5 mmol/ml"), "{text}");
    assert!(!text.contains("panicked"));
}

#[test]
fn lang_fmt_output_is_a_fixed_point() {
    let recipe = repo("examples/inversion.recipe");
    let once = run_bin("maosic-server", &["lang", "fmt", &recipe], &[]).unwrap();
    assert!(once.status.success(), "{}", once.stderr);
    let dir = tempfile::tempdir().unwrap();
    let formatted = dir.path().join("formatted.recipe");
    std::fs::write(&formatted, &once.stdout).unwrap();
    let twice = run_bin(
        "maosic-server",
        &["lang", "fmt", formatted.to_str().unwrap()],
        &[],
    )
    .unwrap();
    assert_eq!(once.stdout, twice.stdout);
}

#[test]
fn optimize_bench_reports_experiments_to_95_percent_as_json() {
    let out = run_bin(
        "maosic-server",
        &[
            "optimize-bench",
            "--landscape",
            "paper",
            "--optimizer",
            "snobfit",
            "--seeds",
            "3",
            "--budget",
            "80",
            "--json",
        ],
        &[],
    )
    .unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    for key in [
        "median_experiments",
        "p90_experiments",
        "reached",
        "seeds",
        "ask_ms_median",
    ] {
        assert!(report.get(key).is_some(), "missing {key}: {report}");
    }
    assert_eq!(report["seeds"], 3);
}

#[test]
fn virtual_lab_probe_measures_the_paper_optimum_and_laser_inversion() {
    let probe = |extra: &[&str]| -> Value {
        let mut args = vec![
            "virtual-lab",
            "probe",
            "--set",
            "T=130",
            "--set",
            "C=0.8",
            "--seed",
            "7",
            "--json",
        ];
        args.extend_from_slice(extra);
        let out = run_bin("maosic-agent", &args, &[]).unwrap();
        assert!(out.status.success(), "{}", out.stderr);
        serde_json::from_str(&out.stdout).unwrap()
    };
    let plain = probe(&[]);
    let cd = plain["cd_mdeg"].as_f64().unwrap();
    let exciton = plain["exciton_nm"].as_f64().unwrap();
    assert!((0.75..=1.2).contains(&cd.abs()), "|CD| {cd}");
    assert!((440.0..=460.0).contains(&exciton), "exciton {exciton}");
    assert!(plain["absorbance"].as_f64().unwrap() > 0.0);
    let inverted = probe(&["--laser", "800nm:300s"]);
    let cd_after = inverted["cd_mdeg"].as_f64().unwrap();
    println!("probe (130 °C, 0.8): CD {cd:.3} mdeg at {exciton:.1} nm; after 800 nm/300 s: {cd_after:.3} mdeg");
    assert!(
        cd * cd_after < 0.0,
        "800 nm inverts the sign: {cd} → {cd_after}"
    );
}

#[test]
fn devices_lists_and_pings_the_virtual_lab() {
    let out = run_bin(
        "maosic-agent",
        &["devices", "--lab", &repo("examples/agent-lab-virtual.toml")],
        &[],
    )
    .unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    for symbol in ["P1", "P2", "P3", "H", "UV", "S", "ARM", "CD", "L"] {
        assert!(
            out.stdout.contains(symbol),
            "{symbol} missing:\n{}",
            out.stdout
        );
    }
}
