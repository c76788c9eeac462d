//! A loop of fixed-count fits over generated spectra, for counting instructions under
//! `valgrind --tool=callgrind` (`bench/fit_instructions.sh`): on a shared machine the thread CPU
//! time of one binary varies by tens of percent between runs, an instruction count does not.
//!
//! `cargo run --release -p maosic-analysis --example fit_loop -- FAMILY COUNT [SEED_BASE] [REPS]`
//! with FAMILY `issue-3-gaussians` or `hard-1-6-peaks`; REPS 0 only generates the spectra (the
//! part to subtract). Prints the number of fits, failures and fitted peaks.

use std::process::ExitCode;

use maosic_analysis::synth::{self, Family};
use maosic_analysis::{fit_peaks, Baseline, FitSettings, LineShape, PeakCount};

fn parse<T: std::str::FromStr>(arg: Option<String>, default: T, what: &str) -> Result<T, String> {
    match arg {
        None => Ok(default),
        Some(s) => s.parse().map_err(|_| format!("{what}: not a number: {s}")),
    }
}

fn run() -> Result<String, String> {
    let mut args = std::env::args().skip(1);
    let family = match args.next().as_deref() {
        Some("issue-3-gaussians") => Family::IssueThree,
        Some("hard-1-6-peaks") => Family::Hard,
        other => {
            return Err(format!(
                "family must be issue-3-gaussians or hard-1-6-peaks, got {other:?}"
            ))
        }
    };
    let count: u64 = parse(args.next(), 500, "COUNT")?;
    let base: u64 = parse(args.next(), 0, "SEED_BASE")?;
    let reps: usize = parse(args.next(), 1, "REPS")?;
    let spectra = (base..base + count)
        .map(|seed| synth::generate(family, seed).map_err(|e| format!("seed {seed}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let (mut fits, mut failures, mut peaks) = (0usize, 0usize, 0usize);
    for _ in 0..reps {
        for s in &spectra {
            let settings = FitSettings {
                shape: LineShape::Gaussian,
                peaks: PeakCount::Fixed(s.peaks.len()),
                baseline: match family {
                    Family::IssueThree => Baseline::Linear,
                    Family::Hard => Baseline::Quadratic,
                },
                ..FitSettings::default()
            };
            fits += 1;
            match fit_peaks(&s.spectrum, &settings) {
                Ok(f) => peaks += f.peaks.len(),
                Err(_) => failures += 1,
            }
        }
    }
    Ok(format!("fits {fits} failures {failures} peaks {peaks}"))
}

fn main() -> ExitCode {
    match run() {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fit_loop: {e}");
            ExitCode::FAILURE
        }
    }
}
