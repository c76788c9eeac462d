//! Bench: 250 loops of the paper's chirality recipe (examples/chirality.recipe, compiled each loop
//! by the schema compiler against this lab's descriptor) on the virtual lab at a given speed;
//! prints wall time, lab time and per-loop figures as a table.
//!
//! Usage: lab-bench [LOOPS] [SPEED]   (defaults 250, max; SPEED is a factor or `max`)
//! `LAB_BENCH_TRACE=1` prints every record (step, method, lab time, content) to stderr, to diff
//! two runs whose digests differ.

use std::collections::BTreeMap;
use std::time::Instant;

use maosic_lab::config::{LabConfig, PAPER_VIRTUAL_TOML};
use maosic_lab::executor::ExecOptions;
use maosic_lab::lab::Lab;
use maosic_lab::probe::{cd_at, find_exciton};
use maosic_lab::record::{Measurement, Outcome, RecordBody};
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

const RECIPE: &str = include_str!("../../../../examples/chirality.recipe");

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some("--dump") {
        let mut cfg = LabConfig::from_toml_str(PAPER_VIRTUAL_TOML)?;
        cfg.twin.speed = 1000.0;
        let lab = Lab::build(cfg).await?;
        let bindings: BTreeMap<String, f64> =
            [("T".to_string(), 130.0), ("C".to_string(), 0.8)].into();
        let p = maosic_schema::lang::compile_recipe(&lab.descriptor(), RECIPE, &bindings)
            .map_err(|d| anyhow::anyhow!("{d:?}"))?;
        println!("{}", p.to_json_pretty());
        return Ok(());
    }
    let mut args = first.into_iter().chain(args);
    let loops: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(250);
    let speed: f64 = args
        .next()
        .map(|s| maosic_lab::config::parse_speed(&s).map_err(anyhow::Error::msg))
        .transpose()?
        .unwrap_or(f64::INFINITY);
    let mut cfg = LabConfig::from_toml_str(PAPER_VIRTUAL_TOML)?;
    cfg.twin.speed = speed;
    let mut lab = Lab::build(cfg).await?;
    let desc = lab.descriptor();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2020);
    let wall0 = Instant::now();
    let lab0 = lab.clock.now_s();
    let (mut ok, mut failed, mut records) = (0u32, 0u32, 0u64);
    // every record's step, lab time and content, over the whole run: equal runs, equal digests
    let mut run_digest = 0u64;
    let mut best = (0.0f64, 0.0, 0.0);
    let mut step_time: BTreeMap<String, (f64, u32)> = BTreeMap::new();
    for i in 0..loops {
        let t = 90.0 + 0.5 * f64::from(rng.random_range(0..=180u32));
        let c = 0.2 + 0.01 * f64::from(rng.random_range(0..=100u32));
        let bindings: BTreeMap<String, f64> = [("T".to_string(), t), ("C".to_string(), c)].into();
        let program = match maosic_schema::lang::compile_recipe(&desc, RECIPE, &bindings) {
            Ok(p) => p,
            Err(d) => anyhow::bail!("loop {i}: recipe does not compile against this lab: {d:?}"),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<maosic_lab::record::Record>(64);
        let trace = std::env::var_os("LAB_BENCH_TRACE").is_some();
        let collect = tokio::spawn(async move {
            let (mut n, mut uv, mut cd) = (0u64, None, None);
            let mut per: Vec<(String, f64)> = Vec::new();
            let mut digest = std::hash::DefaultHasher::new();
            while let Some(r) = rx.recv().await {
                n += 1;
                // what the lab did and measured, and when in lab time (not the wall clock)
                use std::hash::Hash as _;
                if trace {
                    eprintln!(
                        "{:?} {:?} {} {}",
                        r.step,
                        r.method,
                        r.lab_time_s,
                        serde_json::to_string(&r.body)
                            .unwrap_or_default()
                            .chars()
                            .take(200)
                            .collect::<String>()
                    );
                }
                r.step.hash(&mut digest);
                r.lab_time_s.to_bits().hash(&mut digest);
                serde_json::to_string(&r.body)
                    .unwrap_or_default()
                    .hash(&mut digest);
                if let (RecordBody::StepSucceeded { lab_duration_s, .. }, Some(m)) =
                    (&r.body, &r.method)
                {
                    per.push((m.clone(), *lab_duration_s));
                }
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
            (n, uv, cd, per, std::hash::Hasher::finish(&digest))
        });
        let rep = lab
            .run_program(
                &program,
                ExecOptions::default(),
                tx,
                CancellationToken::new(),
            )
            .await;
        let (n, uv, cd, per, d) = collect.await?;
        records += n;
        run_digest = run_digest.rotate_left(5) ^ d;
        for (m, d) in per {
            let e = step_time.entry(m).or_insert((0.0, 0u32));
            e.0 += d;
            e.1 += 1;
        }
        if rep.outcome == Outcome::Succeeded {
            ok += 1;
            if let (Some((uw, ua)), Some((cw, cv))) = (uv, cd) {
                if let Some((x, _)) = find_exciton(&uw, &ua) {
                    let v = cd_at(&cw, &cv, x).abs();
                    if v > best.0 {
                        best = (v, t, c);
                    }
                }
            }
        } else {
            failed += 1;
            eprintln!("loop {i}: {:?} {:?}", rep.outcome, rep.error);
        }
    }
    let wall = wall0.elapsed().as_secs_f64();
    let labt = lab.clock.now_s() - lab0;
    lab.shutdown().await;
    println!("| loops | speed | succeeded | failed | records | wall time (s) | lab time (h) | lab time per loop (s) | best abs(CD) seen | records digest |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {loops} | {} | {ok} | {failed} | {records} | {wall:.1} | {:.2} | {:.0} | {:.3} mdeg at ({:.1} °C, {:.2}) | {run_digest:016x} |",
        if speed.is_finite() { format!("{speed}x") } else { "max".into() },
        labt / 3600.0,
        labt / f64::from(loops.max(1)),
        best.0,
        best.1,
        best.2
    );
    println!();
    println!("| step | calls | mean lab time (s) |");
    println!("|---|---|---|");
    for (m, (t, n)) in &step_time {
        println!("| {m} | {n} | {:.1} |", t / f64::from((*n).max(1)));
    }
    Ok(())
}
