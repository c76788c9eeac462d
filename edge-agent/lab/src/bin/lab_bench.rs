//! Bench: 250 loops of the paper's chirality recipe (examples/chirality.recipe, compiled each loop
//! by the schema compiler against this lab's descriptor) on the virtual lab at a given speed;
//! prints wall time, lab time and per-loop figures as a table.
//!
//! Usage: lab-bench [LOOPS] [SPEED] [sequential|pipelined] [CD_NM_PER_MIN]
//! (defaults 250, max, sequential, the lab file's CD scan rate; SPEED is a factor or `max`)
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
const PIPELINED: &str = include_str!("../../../../examples/chirality-pipelined.recipe");

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
    // sequential: one loop at a time (examples/chirality.recipe); pipelined: three loops in
    // flight (examples/chirality-pipelined.recipe), the next synthesised while one is measured
    let pipelined = match args.next().as_deref() {
        None | Some("sequential") => false,
        Some("pipelined") => true,
        Some(other) => anyhow::bail!("protocol must be sequential or pipelined, got {other}"),
    };
    let cd_rate: Option<f64> = args.next().map(|s| s.parse()).transpose()?;
    let (recipe, depth) = if pipelined {
        (PIPELINED, 3)
    } else {
        (RECIPE, 1)
    };
    let mut cfg = LabConfig::from_toml_str(PAPER_VIRTUAL_TOML)?;
    cfg.twin.speed = speed;
    if let Some(r) = cd_rate {
        cfg.twin.cd_scan_rate_nm_per_min = r;
    }
    let cd_rate = cfg.twin.cd_scan_rate_nm_per_min;
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
    let me = lab.clock.actor();
    let looped: anyhow::Result<()> = me
        .run(async {
            let mut in_flight = futures_util::stream::FuturesOrdered::new();
            let mut next = 0u32;
            while next < loops || !in_flight.is_empty() {
                // keep `depth` loops in the lab: each queues for its devices behind the earlier ones
                while next < loops && in_flight.len() < depth {
                    let i = next;
                    next += 1;
                    let t = 90.0 + 0.5 * f64::from(rng.random_range(0..=180u32));
                    let c = 0.2 + 0.01 * f64::from(rng.random_range(0..=100u32));
                    let bindings: BTreeMap<String, f64> =
                        [("T".to_string(), t), ("C".to_string(), c)].into();
                    let program =
                        match maosic_schema::lang::compile_recipe(&desc, recipe, &bindings) {
                            Ok(p) => p,
                            Err(d) => {
                                anyhow::bail!(
                                    "loop {i}: recipe does not compile against this lab: {d:?}"
                                )
                            }
                        };
                    let (tx, rx) = tokio::sync::mpsc::channel::<maosic_lab::record::Record>(64);
                    let collect = tokio::spawn(collect_records(rx));
                    let run = maosic_lab::executor::start_program(
                        &lab,
                        program,
                        ExecOptions {
                            program_id: Some(format!("loop-{i}")),
                            link_loss: None,
                        },
                        tx,
                        CancellationToken::new(),
                    );
                    in_flight.push_back(async move {
                        let rep = run.await;
                        (i, t, c, rep, collect)
                    });
                }
                // the bench is an actor of the lab clock (below): lab time cannot move between a loop
                // ending and the next one queueing, so its runs are the same on any load
                let Some((i, t, c, rep, collect)) = lab
                    .clock
                    .idle(futures_util::StreamExt::next(&mut in_flight))
                    .await
                else {
                    break;
                };
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
            Ok(())
        })
        .await;
    drop(me);
    looped?;
    let wall = wall0.elapsed().as_secs_f64();
    let labt = lab.clock.now_s() - lab0;
    lab.shutdown().await;
    println!("| protocol | CD scan (nm/min) | loops | speed | succeeded | failed | records | wall time (s) | lab time (h) | lab time per loop (s) | loops per lab-hour | best abs(CD) seen | records digest |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {cd_rate} | {loops} | {} | {ok} | {failed} | {records} | {wall:.1} | {:.2} | {:.0} | {:.2} | {:.3} mdeg at ({:.1} °C, {:.2}) | {run_digest:016x} |",
        if pipelined { "pipelined" } else { "sequential" },
        if speed.is_finite() { format!("{speed}x") } else { "max".into() },
        labt / 3600.0,
        labt / f64::from(loops.max(1)),
        f64::from(loops) / (labt / 3600.0),
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

/// What one loop's records come to: their number, the last UV and CD spectra, the lab time of
/// each successful step, and a digest of them all (step, lab time, content).
type Collected = (
    u64,
    Option<(Vec<f64>, Vec<f64>)>,
    Option<(Vec<f64>, Vec<f64>)>,
    Vec<(String, f64)>,
    u64,
);

async fn collect_records(
    mut rx: tokio::sync::mpsc::Receiver<maosic_lab::record::Record>,
) -> Collected {
    let trace = std::env::var_os("LAB_BENCH_TRACE").is_some();
    let (mut n, mut uv, mut cd) = (0u64, None, None);
    let mut per: Vec<(String, f64)> = Vec::new();
    let mut digest = std::hash::DefaultHasher::new();
    while let Some(r) = rx.recv().await {
        n += 1;
        // what the lab did and measured, and when in lab time (not the wall clock)
        use std::hash::Hash as _;
        if trace {
            eprintln!(
                "{:?} {:?} {:?} {} {}",
                r.program,
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
        if let (RecordBody::StepSucceeded { lab_duration_s, .. }, Some(m)) = (&r.body, &r.method) {
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
}
