//! `maosic-server optimize-bench`: experiments-to-95 % benchmark of an optimizer on a landscape.
//! Thin: resolves the landscape (built-in name or TOML file), calls
//! `maosic_bench::run`, prints a table row or the JSON report. With `--family` it runs
//! a generated landscape family (issue #16) instead and pools the runs per class; with
//! `--write-family DIR` it writes that family's landscape files (for the Python references).

use std::path::Path;

use anyhow::Context as _;
use clap::Args;
use maosic_bench::{self as bench, BenchConfig};
use maosic_landscape::family::{self, FamilyClass, FamilySet};
use maosic_landscape::Landscape;
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
    /// Optimizer: snobfit, bo, portfolio, random, sobol or grid (default settings).
    #[arg(
        long,
        default_value = "snobfit",
        value_name = "snobfit|bo|portfolio|random|sobol|grid"
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
    /// Run a generated landscape family instead of `--landscape`: a class
    /// (narrow-broad, edge, twin, rugged, flow) or `all`.
    #[arg(long, value_name = "CLASS|all")]
    pub family: Option<String>,
    /// Which generated set: `tune` (for tuning) or `test` (for reporting only).
    #[arg(long, default_value = "tune", value_name = "tune|test")]
    pub family_set: String,
    /// Landscapes per class (indices first..first + count).
    #[arg(long, default_value_t = 20)]
    pub count: u32,
    /// First landscape index.
    #[arg(long, default_value_t = 0)]
    pub first: u32,
    /// Algorithm settings as a JSON object merged over the defaults (e.g.
    /// `{"explore_every": 4}` for bo, `{"p": 0.5}` for snobfit).
    #[arg(long, value_name = "JSON")]
    pub settings: Option<String>,
    /// Write the family's landscape files to DIR/CLASS/NAME.toml and exit.
    #[arg(long, value_name = "DIR")]
    pub write_family: Option<std::path::PathBuf>,
}

fn family_classes(arg: &str) -> anyhow::Result<Vec<FamilyClass>> {
    if arg == "all" {
        return Ok(FamilyClass::ALL.to_vec());
    }
    arg.split(',')
        .map(|c| c.trim().parse::<FamilyClass>().map_err(anyhow::Error::from))
        .collect()
}

fn run_family(
    args: &OptimizeBenchArgs,
    classes: &str,
    algorithm: &Algorithm,
) -> anyhow::Result<()> {
    let set: FamilySet = args.family_set.parse()?;
    let classes = family_classes(classes)?;
    if let Some(dir) = &args.write_family {
        for class in &classes {
            let sub = dir.join(class.name());
            std::fs::create_dir_all(&sub).with_context(|| format!("creating {}", sub.display()))?;
            for i in args.first..args.first + args.count {
                let spec = family::generate(*class, set, i)?;
                let path = sub.join(format!("{}.toml", spec.name));
                std::fs::write(&path, family::to_toml(&spec)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        return Ok(());
    }
    if !args.json {
        println!("{}", bench::FAMILY_TABLE_HEADER);
    }
    for class in classes {
        let landscapes = (args.first..args.first + args.count)
            .map(|i| family::generate_landscape(class, set, i))
            .collect::<Result<Vec<_>, _>>()?;
        let label = format!("{}/{}", class.name(), set.name());
        let report = bench::run_family(
            &label,
            &landscapes,
            algorithm,
            args.batch,
            args.seeds,
            args.budget,
        )?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("{}", report.table_row());
        }
    }
    Ok(())
}

/// A built-in landscape by name, else a landscape TOML file.
pub fn load_landscape(arg: &str) -> anyhow::Result<Landscape> {
    if let Ok(l) = Landscape::builtin(arg) {
        return Ok(l);
    }
    let path = Path::new(arg);
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading landscape file {}", path.display()))?;
    Landscape::from_toml_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The optimizer named by `--optimizer`, with `--settings` merged over its defaults.
pub fn algorithm_from_args(args: &OptimizeBenchArgs) -> anyhow::Result<Algorithm> {
    let algorithm = Algorithm::from_name(&args.optimizer).with_context(|| {
        format!(
            "unknown optimizer {:?} (snobfit, bo, portfolio, random, sobol, grid)",
            args.optimizer
        )
    })?;
    let Some(text) = &args.settings else {
        return Ok(algorithm);
    };
    let mut v = serde_json::to_value(&algorithm)?;
    let extra: serde_json::Value =
        serde_json::from_str(text).context("--settings must be a JSON object")?;
    let (Some(obj), Some(add)) = (v.as_object_mut(), extra.as_object()) else {
        anyhow::bail!("--settings must be a JSON object");
    };
    for (k, x) in add {
        obj.insert(k.clone(), x.clone());
    }
    serde_json::from_value(v).context("--settings do not fit the optimizer")
}

/// Run the benchmark and print the result.
pub fn run(args: OptimizeBenchArgs) -> anyhow::Result<()> {
    let algorithm = algorithm_from_args(&args)?;
    anyhow::ensure!(args.batch >= 1, "--batch must be ≥ 1");
    if let Some(classes) = &args.family {
        return run_family(&args, classes, &algorithm);
    }
    let landscape = load_landscape(&args.landscape)?;
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
