//! Stand-alone runner of the optimizer benchmark (same logic as `maosic-server optimize-bench`):
//! `cargo run --release -p maosic-optimizer --example optimize_bench -- --landscape paper --optimizer bo --seeds 20 --budget 250 [--batch N] [--json] [--latency]`.

use maosic_landscape::Landscape;
use maosic_optimizer::bench::{ask_latency, run, BenchConfig};
use maosic_optimizer::Algorithm;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let land = arg(&args, "--landscape").unwrap_or_else(|| "paper".into());
    let landscape = match Landscape::builtin(&land) {
        Ok(l) => l,
        Err(_) => Landscape::from_toml_str(&std::fs::read_to_string(&land)?)?,
    };
    let name = arg(&args, "--optimizer").unwrap_or_else(|| "snobfit".into());
    let algorithm = Algorithm::from_name(&name).ok_or("unknown optimizer")?;
    if args.iter().any(|a| a == "--latency") {
        let n_obs: usize = arg(&args, "--obs")
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(250);
        let mut t = ask_latency(&landscape, algorithm, n_obs, 21, 1)?;
        t.sort_by(f64::total_cmp);
        println!(
            "{{\"landscape\":\"{}\",\"optimizer\":\"{}\",\"obs\":{},\"ask_ms_median\":{:.3},\"ask_ms_max\":{:.3}}}",
            landscape.name(),
            name,
            n_obs,
            t[t.len() / 2],
            t[t.len() - 1]
        );
        return Ok(());
    }
    let cfg = BenchConfig {
        landscape,
        algorithm,
        batch: arg(&args, "--batch")
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(1),
        seeds: arg(&args, "--seeds")
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(20),
        budget: arg(&args, "--budget")
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(250),
        fraction: 0.05,
        tell_sd: true,
    };
    let r = run(&cfg)?;
    if args.iter().any(|a| a == "--json") {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{:<10} {:<8} batch {:>2}: median {:>6} p90 {:>6} reached {:>5.0}% ask {:.3} ms (p90 {:.3})",
            r.landscape,
            r.optimizer,
            r.batch,
            r.median_experiments.map_or("-".into(), |v| format!("{v:.1}")),
            r.p90_experiments.map_or("-".into(), |v| format!("{v:.1}")),
            100.0 * r.reached,
            r.ask_ms_median,
            r.ask_ms_p90
        );
    }
    Ok(())
}
