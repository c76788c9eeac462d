//! The inline spectrum of the paper recipe shows THIS synthesis: the recipe holds the schedule for
//! the reactor's residence time before the UV cell records, so a run after one at very different
//! conditions sees the new exciton, not the previous product still in the coil.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use maosic_lab::config::{LabConfig, PAPER_VIRTUAL_TOML};
use maosic_lab::executor::ExecOptions;
use maosic_lab::lab::Lab;
use maosic_lab::probe::{cd_at, find_exciton};
use maosic_lab::record::{Measurement, Outcome, RecordBody};
use maosic_schema::capability::LabDescriptor;
use maosic_schema::program::Program;
use tokio_util::sync::CancellationToken;

const CHIRALITY: &str = include_str!("../../../examples/chirality.recipe");

struct Run {
    exciton_nm: f64,
    absorbance: f64,
    pixels: usize,
    max_abs_cd: f64,
    cd_at_exciton: f64,
    lab_s: f64,
}

async fn run(lab: &Lab, src: &str, t: f64, c: f64) -> Run {
    run_with(lab, &lab.descriptor(), src, t, c).await
}

async fn run_with(lab: &Lab, desc: &LabDescriptor, src: &str, t: f64, c: f64) -> Run {
    let b: BTreeMap<String, f64> = [("T".to_string(), t), ("C".to_string(), c)].into();
    let program: Program = maosic_schema::lang::compile_recipe(desc, src, &b).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let collect = tokio::spawn(async move {
        let (mut uv, mut cd) = (None, None);
        while let Some(r) = rx.recv().await {
            let r: maosic_lab::record::Record = r;
            if let RecordBody::Measurement { measurement, .. } = r.body {
                match measurement {
                    Measurement::AbsorptionSpectrum {
                        wavelength_nm,
                        absorbance,
                        ..
                    } => uv = Some((wavelength_nm, absorbance)),
                    Measurement::CdSpectrum {
                        wavelength_nm,
                        cd_mdeg,
                        ..
                    } => cd = Some((wavelength_nm, cd_mdeg)),
                    _ => {}
                }
            }
        }
        (uv.unwrap(), cd.unwrap())
    });
    let t0 = lab.clock.now_s();
    let rep = lab
        .run_program(
            &program,
            ExecOptions::default(),
            tx,
            CancellationToken::new(),
        )
        .await;
    assert_eq!(rep.outcome, Outcome::Succeeded, "{:?}", rep.error);
    let lab_s = lab.clock.now_s() - t0;
    let ((uw, ua), (cw, cv)) = collect.await.unwrap();
    let (x, a) = find_exciton(&uw, &ua).unwrap_or((f64::NAN, f64::NAN));
    Run {
        exciton_nm: x,
        absorbance: a,
        pixels: ua.len(),
        max_abs_cd: cv.iter().fold(0.0f64, |m, v| m.max(v.abs())),
        cd_at_exciton: cd_at(&cw, &cv, x),
        lab_s,
    }
}

async fn lab() -> Lab {
    let mut c = LabConfig::from_toml_str(PAPER_VIRTUAL_TOML).unwrap();
    c.twin.speed = 1000.0;
    Lab::build(c).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_spectrum_reflects_this_synthesis_not_the_previous_one() {
    // Reference: (130 °C, 0.8) on a fresh lab.
    let fresh = lab().await;
    let reference = run(&fresh, CHIRALITY, 130.0, 0.8).await;
    drop(fresh);

    // The same point right after a synthesis at very different conditions.
    let lab = lab().await;
    let before = run(&lab, CHIRALITY, 175.0, 0.3).await;
    let after = run(&lab, CHIRALITY, 130.0, 0.8).await;
    println!(
        "exciton: fresh (130, 0.8) {:.1} nm A {:.3}; after (175, 0.3) [{:.1} nm A {:.3}] -> {:.1} nm A {:.3}; max |CD| {:.3} mdeg, CD at exciton {:+.3}; lab time per loop {:.0} s",
        reference.exciton_nm,
        reference.absorbance,
        before.exciton_nm,
        before.absorbance,
        after.exciton_nm,
        after.absorbance,
        after.max_abs_cd,
        after.cd_at_exciton,
        after.lab_s
    );
    assert_eq!(after.pixels, 2048);
    assert!((reference.exciton_nm - 450.0).abs() < 5.0);
    // The previous synthesis's exciton is far to the red ...
    assert!(before.exciton_nm > reference.exciton_nm + 10.0);
    // ... and the new inline spectrum shows the new position and amplitude, not a mixture.
    assert!(
        (after.exciton_nm - reference.exciton_nm).abs() <= 1.5,
        "{} vs {}",
        after.exciton_nm,
        reference.exciton_nm
    );
    assert!((after.absorbance / reference.absorbance - 1.0).abs() < 0.05);
    // The collected cuvette is this synthesis's too (CD at its exciton, the landscape's ~1 mdeg).
    assert!((0.5..=2.0).contains(&after.max_abs_cd));
    assert!((after.cd_at_exciton.abs() - 1.0).abs() <= 0.25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_hold_the_inline_spectrum_shows_the_previous_product() {
    // Control that proves the test above can fail: the same recipe with no residence hold.
    let no_hold = CHIRALITY.replace("H:hold[time = 2 * $V / $Q]", "H:hold[time = 0 s]");
    assert_ne!(
        no_hold, CHIRALITY,
        "the recipe holds for the residence time"
    );
    let lab = lab().await;
    let before = run(&lab, &no_hold, 175.0, 0.3).await;
    let after = run(&lab, &no_hold, 130.0, 0.8).await;
    println!(
        "no hold: after (175, 0.3) at {:.1} nm, the (130, 0.8) run's inline exciton reads {:.1} nm A {:.3}",
        before.exciton_nm, after.exciton_nm, after.absorbance
    );
    // On a fresh lab the coil holds solvent: no exciton at all.
    assert!(before.exciton_nm.is_nan(), "{}", before.exciton_nm);
    // After the (175, 0.3) run the inline cell reads that product, far from (130, 0.8)'s 447.5 nm.
    assert!(
        (after.exciton_nm - 447.5).abs() > 5.0,
        "{}",
        after.exciton_nm
    );
}

/// What the cloud does (tests/tests/agent_program.rs end to end): compile against the shipped
/// descriptor `examples/paper-lab.toml`, run on the virtual lab of `examples/agent-lab-virtual.toml`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipe_compiled_against_the_shipped_descriptor_runs_on_the_virtual_lab() {
    let desc =
        LabDescriptor::from_toml_str(include_str!("../../../examples/paper-lab.toml")).unwrap();
    let lab = lab().await;
    let r = run_with(&lab, &desc, CHIRALITY, 130.0, 0.8).await;
    println!(
        "shipped descriptor: exciton {:.1} nm, max |CD| {:.3} mdeg, lab {:.0} s",
        r.exciton_nm, r.max_abs_cd, r.lab_s
    );
    assert_eq!(r.pixels, 2048);
    assert!((r.exciton_nm - 447.5).abs() <= 1.5);
    assert!((0.5..=2.0).contains(&r.max_abs_cd));
}
