//! Runner of the optimizer benchmark until `maosic-server optimize-bench` is wired: it compiles
//! the server's own `cli/optimize_bench.rs` (same arguments, same output) and adds a latency
//! mode. Examples:
//! `cargo run --release -p maosic-bench --example optimize_bench -- --landscape paper --optimizer bo --seeds 20 --budget 250 [--batch N] [--json]`
//! `... --example optimize_bench -- --landscape paper --optimizer bo --latency [--obs 250] [--refit-always]`

#[path = "../../server/src/cli/optimize_bench.rs"]
mod cli_optimize_bench;

use clap::Parser;
use cli_optimize_bench::OptimizeBenchArgs;
use maosic_bench::{ask_latency, ask_latency_random_history_clock};
use maosic_optimizer::Algorithm;

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    bench: OptimizeBenchArgs,
    /// Instead of the benchmark, time `ask(1)` after `--obs` observations (21 repeats).
    #[arg(long)]
    latency: bool,
    /// History size for `--latency`.
    #[arg(long, default_value_t = 250)]
    obs: usize,
    /// `--latency` with a random history of `--obs` distinct points instead of the optimizer's
    /// own trajectory.
    #[arg(long)]
    random_history: bool,
    /// BO: refit the hyperparameters on every ask (worst-case latency).
    #[arg(long)]
    refit_always: bool,
    /// `--latency --random-history`: time with the thread's CPU clock instead of the wall clock
    /// (what one step costs, not inflated by other load on a shared machine).
    #[arg(long)]
    cpu_time: bool,
    /// Timed repeats for `--latency`.
    #[arg(long, default_value_t = 21)]
    repeats: usize,
}

fn thread_cpu_ms() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 * 1e-6
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !cli.latency {
        return cli_optimize_bench::run(cli.bench);
    }
    let landscape = cli_optimize_bench::load_landscape(&cli.bench.landscape)?;
    let mut algorithm = cli_optimize_bench::algorithm_from_args(&cli.bench)?;
    if let Algorithm::Bo(s) = &mut algorithm {
        if cli.refit_always {
            s.refit_growth = 0.0;
        }
    }
    let mut t = if cli.random_history {
        let t0 = std::time::Instant::now();
        let wall = move || t0.elapsed().as_secs_f64() * 1e3;
        let clock: &dyn Fn() -> f64 = if cli.cpu_time { &thread_cpu_ms } else { &wall };
        ask_latency_random_history_clock(&landscape, algorithm, cli.obs, cli.repeats, 1, clock)?
    } else {
        ask_latency(&landscape, algorithm, cli.obs, cli.repeats, 1)?
    };
    t.sort_by(f64::total_cmp);
    println!(
        "{{\"landscape\":\"{}\",\"optimizer\":\"{}\",\"obs\":{},\"refit_always\":{},\"random_history\":{},\"cpu_time\":{},\"repeats\":{},\"ask_ms_median\":{:.3},\"ask_ms_p99\":{:.3},\"ask_ms_max\":{:.3}}}",
        landscape.name(),
        cli.bench.optimizer,
        cli.obs,
        cli.refit_always,
        cli.random_history,
        cli.cpu_time,
        t.len(),
        t[t.len() / 2],
        t[((0.99 * t.len() as f64).ceil() as usize).clamp(1, t.len()) - 1],
        t[t.len() - 1]
    );
    Ok(())
}
