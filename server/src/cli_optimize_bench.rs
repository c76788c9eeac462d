//! `maosic-server optimize-bench`: experiments-to-95 % benchmark of an optimizer on a landscape.
//! Thin: resolves the landscape (built-in name or TOML file), calls
//! `maosic_optimizer::bench::run`, prints a table row or the JSON report.

use std::path::Path;

use anyhow::Context as _;
use clap::Args;
use maosic_landscape::Landscape;
use maosic_optimizer::bench::{self, BenchConfig};
use maosic_optimizer::Algorithm;

/// Arguments of `optimize-bench`.
#[derive(Args, Debug, Clone)]
pub struct OptimizeBenchArgs {
    /// Landscape: `paper`, `branin`, `hartmann3` or a landscape TOML file.
    #[arg(
        long,
        default_value = "paper",
        value_name = "FILE|paper|branin|hartmann3"
    )]
    pub landscape: String,
    /// Optimizer: snobfit, bo, random, sobol or grid (default settings).
    #[arg(
        long,
        default_value = "snobfit",
        value_name = "snobfit|bo|random|sobol|grid"
    )]
    pub optimizer: String,
    /// Points per ask (SNOBFIT's reference batch is n + 6).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Number of seeds (0..seeds).
    #[arg(long, default_value_t = 20)]
    pub seeds: u32,
    /// Experiments per seed.
    #[arg(long, default_value_t = 250)]
    pub budget: usize,
    /// Print the full JSON report instead of a table row.
    #[arg(long)]
    pub json: bool,
}

fn load_landscape(arg: &str) -> anyhow::Result<Landscape> {
    if let Ok(l) = Landscape::builtin(arg) {
        return Ok(l);
    }
    let path = Path::new(arg);
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading landscape file {}", path.display()))?;
    Landscape::from_toml_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Run the benchmark and print the result.
pub fn run(args: OptimizeBenchArgs) -> anyhow::Result<()> {
    let landscape = load_landscape(&args.landscape)?;
    let algorithm = Algorithm::from_name(&args.optimizer).with_context(|| {
        format!(
            "unknown optimizer {:?} (snobfit, bo, random, sobol, grid)",
            args.optimizer
        )
    })?;
    anyhow::ensure!(args.batch >= 1, "--batch must be ≥ 1");
    let cfg = BenchConfig {
        landscape,
        algorithm,
        batch: args.batch,
        seeds: args.seeds,
        budget: args.budget,
        fraction: 0.05,
        tell_sd: true,
    };
    let report = bench::run(&cfg)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", bench::TABLE_HEADER);
        println!("{}", report.table_row());
    }
    Ok(())
}
