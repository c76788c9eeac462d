//! Device ownership and per-program safety policies on the virtual lab: a program queues for
//! the devices its steps use; a second program that needs one of them waits until the first
//! gives it back after its last step on it (a program on other devices runs alongside; the
//! paper's pipelined recipe overlaps loops); a manual call that moves an owned device is
//! refused (reads and stops are not);
//! a link loss applies each program's own policy to its own devices.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use maosic_lab::config::{LabConfig, LinkLossPolicy, PAPER_VIRTUAL_TOML};
use maosic_lab::error::DeviceError;
use maosic_lab::executor::{ExecOptions, ProgramReport};
use maosic_lab::lab::Lab;
use maosic_lab::record::{Outcome, Record, RecordBody};
use maosic_schema::program::{Program, RpcRequest, Step};
use tokio_util::sync::CancellationToken;

async fn lab() -> Lab {
    let mut c = LabConfig::from_toml_str(PAPER_VIRTUAL_TOML).unwrap();
    c.twin.speed = 50.0;
    Lab::build(c).await.unwrap()
}

fn params(p: &[(&str, f64)]) -> BTreeMap<String, f64> {
    p.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// A chain of steps, each after the one before.
fn chain(steps: &[(&str, &[(&str, f64)])]) -> Program {
    Program {
        format: 1,
        recipe: None,
        lab: "paper-lab".into(),
        variables: Default::default(),
        steps: steps
            .iter()
            .enumerate()
            .map(|(i, (method, p))| {
                let id = i as u32 + 1;
                Step {
                    id,
                    request: RpcRequest {
                        jsonrpc: "2.0".into(),
                        id: u64::from(id),
                        method: (*method).into(),
                        params: params(p),
                    },
                    after: if id > 1 { vec![id - 1] } else { vec![] },
                    start_ms: 0,
                    duration_ms: 1000,
                    yields: vec![],
                    line: 1,
                }
            })
            .collect(),
        estimated_duration_ms: 10_000,
    }
}

/// Runs `program` as run `id`; its report and its records.
async fn run(
    lab: &Lab,
    id: &str,
    program: &Program,
    policy: LinkLossPolicy,
    cancel: CancellationToken,
) -> (ProgramReport, Vec<Record>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let collect = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(r) = rx.recv().await {
            out.push(r);
        }
        out
    });
    let report = lab
        .run_program(
            program,
            ExecOptions {
                program_id: Some(id.into()),
                link_loss: Some(policy),
            },
            tx,
            cancel,
        )
        .await;
    (report, collect.await.unwrap())
}

/// Lab time of the run's first record of `kind` (`program_started`, `program_finished`).
fn at(records: &[Record], started: bool) -> f64 {
    records
        .iter()
        .find(|r| match r.body {
            RecordBody::ProgramStarted { .. } => started,
            RecordBody::ProgramFinished { .. } => !started,
            _ => false,
        })
        .map(|r| r.lab_time_s)
        .unwrap()
}

/// Polls (1 ms of wall time) until `f` holds; fails after 30 s.
async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn owned_by(lab: &Lab, device: &str, program: &str) -> bool {
    lab.device_owner(device).as_deref() == Some(program)
}

fn running(lab: &Lab, pump: &str) -> bool {
    lab.twin().unwrap().with_world(|w| w.pumps[pump].running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_waits_for_a_device_another_owns_while_one_on_other_devices_runs_alongside() {
    let lab = lab().await;
    // A owns P1 (and UV) for 60 s of lab time; B needs P1; C needs only P2.
    let a = chain(&[
        ("P1.set_rate", &[("rate", 30.0)]),
        (
            "UV.acquire",
            &[("integration", 10_000.0), ("averages", 6.0)],
        ),
        ("P1.stop", &[]),
    ]);
    let b = chain(&[("P1.set_rate", &[("rate", 10.0)]), ("P1.stop", &[])]);
    let c = chain(&[
        ("P2.set_rate", &[("rate", 20.0)]),
        ("P2.status", &[]),
        ("P2.stop", &[]),
    ]);
    let go = CancellationToken::new();
    let manual = async {
        // while A runs: P1 is A's, P3 nobody's
        until("A owns P1", || owned_by(&lab, "P1", "A")).await;
        let refused = lab
            .call_manual("P1.set_rate", &params(&[("rate", 5.0)]))
            .await;
        let read = lab.call_manual("P1.status", &BTreeMap::new()).await;
        assert!(read.is_ok(), "reading an owned pump's status: {read:?}");
        let free = lab
            .call_manual("P3.set_rate", &params(&[("rate", 5.0)]))
            .await;
        let stopped = lab.call_manual("P3.stop", &BTreeMap::new()).await;
        (refused, free.is_ok() && stopped.is_ok())
    };
    let ((ra, rec_a), (rb, rec_b), (rc, rec_c), (refused, free_ok)) = tokio::join!(
        run(&lab, "A", &a, LinkLossPolicy::Continue, go.clone()),
        async {
            until("A owns P1", || owned_by(&lab, "P1", "A")).await;
            run(&lab, "B", &b, LinkLossPolicy::Continue, go.clone()).await
        },
        async {
            until("A owns P1", || owned_by(&lab, "P1", "A")).await;
            run(&lab, "C", &c, LinkLossPolicy::Continue, go.clone()).await
        },
        manual,
    );
    for r in [&ra, &rb, &rc] {
        assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    }
    let (a_end, b_start) = (at(&rec_a, false), at(&rec_b, true));
    let (c_start, c_end) = (at(&rec_c, true), at(&rec_c, false));
    println!(
        "ownership: A (P1, UV) ends at {a_end:.1} s; B (P1) starts at {b_start:.1} s; \
         C (P2) runs {c_start:.1}–{c_end:.1} s alongside A; manual P1 call while A runs: {refused:?}"
    );
    assert!(
        b_start >= a_end,
        "B started at {b_start} before A ended at {a_end}"
    );
    assert!(
        c_end < a_end,
        "C ({c_start}–{c_end}) did not run alongside A (ended {a_end})"
    );
    match refused {
        Err(DeviceError::InUse { device, program }) => {
            assert_eq!((device.as_str(), program.as_str()), ("P1", "A"));
        }
        other => panic!("a manual call to A's pump: {other:?}"),
    }
    assert!(free_ok, "a manual call to a free pump was refused");
    // all given back
    assert_eq!(lab.device_owner("P1"), None);
    assert!(lab
        .call_manual("P1.set_rate", &params(&[("rate", 0.0)]))
        .await
        .is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_cancelled_while_it_waits_for_devices_ends_cancelled_and_moves_nothing() {
    let lab = lab().await;
    let a = chain(&[(
        "UV.acquire",
        &[("integration", 10_000.0), ("averages", 6.0)],
    )]);
    let b = chain(&[
        ("UV.acquire", &[("integration", 100.0), ("averages", 1.0)]),
        ("P1.set_rate", &[("rate", 10.0)]),
    ]);
    let cancel_b = CancellationToken::new();
    let ((ra, _), (rb, rec_b)) = tokio::join!(
        run(
            &lab,
            "A",
            &a,
            LinkLossPolicy::Continue,
            CancellationToken::new()
        ),
        async {
            until("A owns UV", || owned_by(&lab, "UV", "A")).await;
            // join! polls B first: it reaches its wait for UV before the cancel lands
            let cancel = async {
                tokio::task::yield_now().await;
                cancel_b.cancel();
            };
            let (b_run, ()) = tokio::join!(
                run(&lab, "B", &b, LinkLossPolicy::Continue, cancel_b.clone()),
                cancel
            );
            b_run
        },
    );
    assert_eq!(ra.outcome, Outcome::Succeeded, "{ra:?}");
    assert_eq!(rb.outcome, Outcome::Canceled, "{rb:?}");
    assert!(
        !rec_b
            .iter()
            .any(|r| matches!(r.body, RecordBody::StepStarted)),
        "a cancelled waiting program started a step"
    );
    assert!(!running(&lab, "P1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_loss_holds_the_held_program_and_lets_the_other_continue() {
    let lab = lab().await;
    let held = chain(&[
        ("P1.set_rate", &[("rate", 30.0)]),
        ("H.hold", &[("time", 30.0)]),
        ("P1.stop", &[]),
    ]);
    let going = chain(&[
        ("P2.set_rate", &[("rate", 30.0)]),
        (
            "UV.acquire",
            &[("integration", 10_000.0), ("averages", 3.0)],
        ),
        ("P2.stop", &[]),
    ]);
    let ctl = async {
        until("both pumps run", || {
            running(&lab, "P1") && running(&lab, "P2")
        })
        .await;
        let (p1, p2) = (running(&lab, "P1"), running(&lab, "P2"));
        assert!(p1 && p2, "both pumps run before the loss: {p1} {p2}");
        let strongest = lab.link_lost().await;
        let during = (running(&lab, "P1"), running(&lab, "P2"));
        lab.clock.sleep(Duration::from_secs(10)).await;
        let later = (running(&lab, "P1"), running(&lab, "P2"));
        lab.clock.sleep(Duration::from_secs(60)).await;
        lab.link_restored();
        (strongest, during, later)
    };
    let ((rh, _), (rg, _), (strongest, during, later)) = tokio::join!(
        run(
            &lab,
            "H1",
            &held,
            LinkLossPolicy::Hold,
            CancellationToken::new()
        ),
        run(
            &lab,
            "G1",
            &going,
            LinkLossPolicy::Continue,
            CancellationToken::new()
        ),
        ctl,
    );
    println!(
        "per-program policies: link lost → {strongest:?}; (P1 held, P2 continue) running right \
         after {during:?}, 10 s later {later:?}; outcomes {:?} {:?}",
        rh.outcome, rg.outcome
    );
    assert_eq!(strongest, Some(LinkLossPolicy::Hold));
    assert_eq!(during, (false, true), "P1 stops, P2 keeps pumping");
    assert!(
        !later.0,
        "the held program's pump restarted during the hold"
    );
    assert_eq!(rh.outcome, Outcome::Succeeded, "{rh:?}");
    assert_eq!(rg.outcome, Outcome::Succeeded, "{rg:?}");
}

/// The paper's pipelined recipe with three loops queued at once: a loop gives the pumps, the
/// heater, the UV-Vis and the sampler back once its sample is in a cuvette, so the next one
/// synthesises while it is measured (the runs overlap), and each loop's CD scan is of its own
/// cuvette: the cuvette's absorbance on the CD axis matches that loop's inline spectrum, not
/// another loop's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_loops_overlap_and_each_measures_its_own_sample() {
    let mut c = LabConfig::from_toml_str(PAPER_VIRTUAL_TOML).unwrap();
    c.twin.speed = f64::INFINITY;
    let lab = Lab::build(c).await.unwrap();
    let recipe = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../examples/chirality-pipelined.recipe"),
    )
    .unwrap();
    let points = [(95.0, 0.3), (135.0, 0.8), (175.0, 1.1)];
    let programs: Vec<Program> = points
        .iter()
        .map(|&(t, c)| {
            let b: BTreeMap<String, f64> = [("T".into(), t), ("C".into(), c)].into();
            maosic_schema::lang::compile_recipe(&lab.descriptor(), &recipe, &b).unwrap()
        })
        .collect();
    let go = CancellationToken::new();
    // all three queue for their devices in the first poll, in this order
    let (r1, r2, r3) = tokio::join!(
        run(
            &lab,
            "L1",
            &programs[0],
            LinkLossPolicy::Continue,
            go.clone()
        ),
        run(
            &lab,
            "L2",
            &programs[1],
            LinkLossPolicy::Continue,
            go.clone()
        ),
        run(
            &lab,
            "L3",
            &programs[2],
            LinkLossPolicy::Continue,
            go.clone()
        ),
    );
    let loops = [r1, r2, r3];
    for (rep, _) in &loops {
        assert_eq!(rep.outcome, Outcome::Succeeded, "{rep:?}");
    }
    let started = |recs: &[Record]| at(recs, true);
    let finished = |recs: &[Record]| at(recs, false);
    let mut order: Vec<(f64, usize)> = loops
        .iter()
        .enumerate()
        .map(|(i, (_, recs))| (started(recs), i))
        .collect();
    order.sort_by(|a, b| a.0.total_cmp(&b.0));
    for w in order.windows(2) {
        let (earlier, later) = (w[0].1, w[1].1);
        assert!(
            started(&loops[later].1) < finished(&loops[earlier].1),
            "loop {later} did not start before loop {earlier} ended"
        );
    }
    // spectra: each loop's inline absorbance and its cuvette's absorbance on the CD axis
    let spectra = |recs: &[Record]| {
        let mut uv = None;
        let mut cd = None;
        for r in recs {
            if let RecordBody::Measurement { measurement, .. } = &r.body {
                match measurement {
                    maosic_lab::record::Measurement::AbsorptionSpectrum {
                        wavelength_nm,
                        absorbance,
                        ..
                    } => uv = Some((wavelength_nm.clone(), absorbance.clone())),
                    maosic_lab::record::Measurement::CdSpectrum {
                        wavelength_nm,
                        absorbance,
                        ..
                    } => cd = Some((wavelength_nm.clone(), absorbance.clone())),
                    _ => {}
                }
            }
        }
        (uv.unwrap(), cd.unwrap())
    };
    let shape = |wl: &[f64], a: &[f64], on: &[f64]| -> Vec<f64> {
        let v: Vec<f64> = on
            .iter()
            .map(|x| {
                let i = wl.partition_point(|w| w < x).clamp(1, wl.len() - 1);
                let f = (x - wl[i - 1]) / (wl[i] - wl[i - 1]);
                a[i - 1] + f * (a[i] - a[i - 1])
            })
            .collect();
        let max = v.iter().cloned().fold(f64::MIN, f64::max).max(1e-9);
        v.iter().map(|x| x / max).collect()
    };
    let all: Vec<_> = loops.iter().map(|(_, recs)| spectra(recs)).collect();
    for (k, (_, (cd_wl, cd_abs))) in all.iter().enumerate() {
        let cuvette = shape(cd_wl, cd_abs, cd_wl);
        let distance = |j: usize| -> f64 {
            let (uv_wl, uv_abs) = &all[j].0;
            let inline = shape(uv_wl, uv_abs, cd_wl);
            cuvette
                .iter()
                .zip(&inline)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f64>()
        };
        let nearest = (0..all.len())
            .min_by(|&a, &b| distance(a).total_cmp(&distance(b)))
            .unwrap();
        assert_eq!(
            nearest, k,
            "loop {k}'s CD cuvette looks like loop {nearest}'s synthesis"
        );
    }
    println!(
        "pipelined: loops at {:?} ran {:?} in lab time (start–end), each measured its own cuvette",
        points,
        loops
            .iter()
            .map(|(_, r)| (started(r).round(), finished(r).round()))
            .collect::<Vec<_>>()
    );
}
