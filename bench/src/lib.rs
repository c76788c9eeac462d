//! Discovery-efficiency benchmark: run an optimizer for several seeds against a noisy landscape
//! and count the experiments until the best TRUE value seen is within a fraction (5 %) of the
//! global optimum; also time every `ask`. Simulation-side code: it joins the optimizer
//! (`maosic-optimizer`, pure) with the response landscapes (`maosic-landscape`), so neither
//! production crate carries the other or the benchmark in its public API. Used by
//! `maosic-server optimize-bench` and `examples/optimize_bench.rs`.

use std::time::Instant;

use maosic_landscape::{Landscape, Sense};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use maosic_optimizer::{
    Algorithm, Goal, Observation, Optimizer, OptimizerError, OptimizerSpec, Space,
};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The objective (noise sd from the landscape file).
    pub landscape: Landscape,
    /// The algorithm with its settings.
    pub algorithm: Algorithm,
    /// Points per `ask`.
    pub batch: usize,
    /// Seeds 0..seeds.
    pub seeds: u32,
    /// Experiments per seed.
    pub budget: usize,
    /// Target: within this fraction of the optimum (0.05).
    pub fraction: f64,
    /// Tell the optimizer the landscape's noise sd as each observation's uncertainty.
    pub tell_sd: bool,
}

/// One seed's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedResult {
    /// Seed.
    pub seed: u32,
    /// Experiments until the target was reached (None = not within the budget).
    pub experiments: Option<usize>,
    /// Best true (noise-free) value among the measured points.
    pub best_true: f64,
}

/// The benchmark report (printed as JSON by `maosic-server optimize-bench --json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    /// Landscape name.
    pub landscape: String,
    /// Optimizer name.
    pub optimizer: String,
    /// Points per ask.
    pub batch: usize,
    /// Number of seeds.
    pub seeds: u32,
    /// Budget per seed.
    pub budget: usize,
    /// Target fraction of the optimum.
    pub fraction: f64,
    /// Fraction of seeds that reached the target.
    pub reached: f64,
    /// Median experiments to the target (unreached seeds count as ∞; null if the median is ∞).
    pub median_experiments: Option<f64>,
    /// 90th percentile, nearest rank (null when fewer than 90 % of seeds reached the target).
    pub p90_experiments: Option<f64>,
    /// Median wall time of one `ask` call plus the `tell`s of its batch (ms), over all calls
    /// of all seeds (a seed stops once it reaches the target).
    pub ask_ms_median: f64,
    /// 90th percentile of the `ask` time (ms).
    pub ask_ms_p90: f64,
    /// Per-seed detail.
    pub per_seed: Vec<SeedResult>,
}

/// Header of [`BenchReport::table_row`].
pub const TABLE_HEADER: &str =
    "landscape  optimizer  batch  median    p90  reached  ask ms (median)  ask ms (p90)";

impl BenchReport {
    /// One fixed-width table row (`-` for null figures).
    pub fn table_row(&self) -> String {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        format!(
            "{:<10} {:<10} {:>5} {:>7} {:>6} {:>7.0}% {:>16.3} {:>13.3}",
            self.landscape,
            self.optimizer,
            self.batch,
            f(self.median_experiments),
            f(self.p90_experiments),
            100.0 * self.reached,
            self.ask_ms_median,
            self.ask_ms_p90
        )
    }
}

/// Percentile (linear interpolation, p in [0, 1]) of values where `None` is +∞.
pub fn percentile(values: &[Option<f64>], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.iter().map(|x| x.unwrap_or(f64::INFINITY)).collect();
    v.sort_by(f64::total_cmp);
    let pos = p * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let r = if lo == hi || !v[hi].is_finite() {
        if pos.fract() == 0.0 {
            v[lo]
        } else {
            v[hi]
        }
    } else {
        v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
    };
    r.is_finite().then_some(r)
}

/// Nearest-rank percentile (the ⌈p·n⌉-th smallest) of values where `None` is +∞.
pub fn nearest_rank(values: &[Option<f64>], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = values.iter().map(|x| x.unwrap_or(f64::INFINITY)).collect();
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    let r = v[rank - 1];
    r.is_finite().then_some(r)
}

fn ms_percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let pos = p * (v.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// The optimizer's search space of a landscape's variables (bounds and resolution).
pub fn space_of(l: &Landscape) -> Space {
    Space::new(
        l.variables()
            .iter()
            .map(|v| (v.name.clone(), v.lower, v.upper, v.resolution)),
    )
}

/// The optimizer spec the benchmark uses for a landscape.
pub fn spec_for(l: &Landscape, algorithm: Algorithm, seed: u64) -> OptimizerSpec {
    OptimizerSpec {
        space: space_of(l),
        goal: match l.sense() {
            Sense::Maximize => Goal::Maximize,
            Sense::Minimize => Goal::Minimize,
        },
        seed,
        algorithm,
    }
}

/// Run one seed; returns the result and the ask timings (ms).
pub fn run_seed(cfg: &BenchConfig, seed: u32) -> Result<(SeedResult, Vec<f64>), OptimizerError> {
    let l = &cfg.landscape;
    let mut opt = Optimizer::new(spec_for(l, cfg.algorithm.clone(), u64::from(seed)))?;
    // Noise stream independent of the optimizer's generator.
    let mut noise = ChaCha8Rng::seed_from_u64(0x5EED_0000_0000 ^ u64::from(seed));
    let mut times = Vec::new();
    let mut done = 0usize;
    let mut reached = None;
    let mut best_true = match l.sense() {
        Sense::Maximize => f64::NEG_INFINITY,
        Sense::Minimize => f64::INFINITY,
    };
    // A seed stops once it reaches the target (the figure of merit is fixed by then).
    while done < cfg.budget && reached.is_none() {
        let n = cfg.batch.min(cfg.budget - done).max(1);
        let t0 = Instant::now();
        let props = opt.ask(n);
        let mut spent = t0.elapsed().as_secs_f64() * 1e3;
        if props.is_empty() {
            break;
        }
        for p in props {
            if done >= cfg.budget {
                break;
            }
            let truth = l.eval(&p.x);
            let y = truth + l.noise(&mut noise);
            let obs = if cfg.tell_sd {
                Observation::with_sd(y, l.noise_sd())
            } else {
                Observation::new(y)
            };
            let t1 = Instant::now();
            opt.tell(&p.x, obs)?;
            spent += t1.elapsed().as_secs_f64() * 1e3;
            done += 1;
            best_true = match l.sense() {
                Sense::Maximize => best_true.max(truth),
                Sense::Minimize => best_true.min(truth),
            };
            if reached.is_none() && l.within_fraction_of_optimum(best_true, cfg.fraction) {
                reached = Some(done);
            }
        }
        times.push(spent);
    }
    Ok((
        SeedResult {
            seed,
            experiments: reached,
            best_true,
        },
        times,
    ))
}

/// Run all seeds and summarise.
pub fn run(cfg: &BenchConfig) -> Result<BenchReport, OptimizerError> {
    let mut per_seed = Vec::new();
    let mut times = Vec::new();
    for seed in 0..cfg.seeds {
        let (r, t) = run_seed(cfg, seed)?;
        per_seed.push(r);
        times.extend(t);
    }
    let exps: Vec<Option<f64>> = per_seed
        .iter()
        .map(|r| r.experiments.map(|e| e as f64))
        .collect();
    let n_reached = exps.iter().filter(|e| e.is_some()).count();
    let reached = if cfg.seeds == 0 {
        0.0
    } else {
        n_reached as f64 / f64::from(cfg.seeds)
    };
    Ok(BenchReport {
        landscape: cfg.landscape.name().to_string(),
        optimizer: cfg.algorithm.name().to_string(),
        batch: cfg.batch,
        seeds: cfg.seeds,
        budget: cfg.budget,
        fraction: cfg.fraction,
        reached,
        median_experiments: percentile(&exps, 0.5),
        p90_experiments: if reached >= 0.9 {
            nearest_rank(&exps, 0.9)
        } else {
            None
        },
        ask_ms_median: ms_percentile(&mut times.clone(), 0.5),
        ask_ms_p90: ms_percentile(&mut times, 0.9),
        per_seed,
    })
}

/// Ask latency with a random history: tell `n_obs − 1` distinct uniform random grid points,
/// let the optimizer process them, then time `tell(one more) + ask(1)` on `repeats` clones.
/// (Independent of the optimizer's own trajectory, so the same history shape can be given to
/// a reference implementation.)
pub fn ask_latency_random_history(
    l: &Landscape,
    algorithm: Algorithm,
    n_obs: usize,
    repeats: usize,
    seed: u64,
) -> Result<Vec<f64>, OptimizerError> {
    let t0 = Instant::now();
    ask_latency_random_history_clock(l, algorithm, n_obs, repeats, seed, &|| {
        t0.elapsed().as_secs_f64() * 1e3
    })
}

/// [`ask_latency_random_history`] timed with `now_ms` (e.g. the thread's CPU time, which a
/// loaded machine does not inflate).
pub fn ask_latency_random_history_clock(
    l: &Landscape,
    algorithm: Algorithm,
    n_obs: usize,
    repeats: usize,
    seed: u64,
    now_ms: &dyn Fn() -> f64,
) -> Result<Vec<f64>, OptimizerError> {
    let spec = spec_for(l, algorithm, seed);
    let space = spec.space.clone();
    let mut opt = Optimizer::new(spec)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x1234);
    let mut seen = std::collections::BTreeSet::new();
    let mut pts = Vec::new();
    while pts.len() < n_obs && seen.len() < 10 * n_obs + 10 {
        let u: Vec<f64> = (0..space.dim()).map(|_| rng.random::<f64>()).collect();
        let x = space.snap(&space.from_unit(&u));
        if seen.insert(space.grid_index(&x)) {
            pts.push(x);
        }
    }
    let Some(last) = pts.pop() else {
        return Ok(Vec::new());
    };
    for x in &pts {
        let y = l.eval_noisy(x, &mut rng);
        opt.tell(x, Observation::with_sd(y, l.noise_sd()))?;
    }
    let _ = opt.ask(1);
    let y = l.eval_noisy(&last, &mut rng);
    let mut out = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let mut c = opt.clone();
        let t0 = now_ms();
        c.tell(&last, Observation::with_sd(y, l.noise_sd()))?;
        let _ = c.ask(1);
        out.push(now_ms() - t0);
    }
    Ok(out)
}

/// Ask latency at a given history size: run the optimizer on the landscape until `n_obs`
/// observations were told (its own proposals, batch 1), then time `repeats` independent
/// `ask(1)` calls on clones of that state. Returns the timings (ms).
pub fn ask_latency(
    l: &Landscape,
    algorithm: Algorithm,
    n_obs: usize,
    repeats: usize,
    seed: u64,
) -> Result<Vec<f64>, OptimizerError> {
    let mut opt = Optimizer::new(spec_for(l, algorithm, seed))?;
    let mut noise = ChaCha8Rng::seed_from_u64(seed ^ 0xABCD);
    let mut told = 0;
    while told < n_obs {
        let props = opt.ask(1);
        if props.is_empty() {
            break;
        }
        for p in props {
            let y = l.eval_noisy(&p.x, &mut noise);
            opt.tell(&p.x, Observation::with_sd(y, l.noise_sd()))?;
            told += 1;
        }
    }
    let mut out = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let mut c = opt.clone();
        let t0 = Instant::now();
        let _ = c.ask(1);
        out.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

/// Pooled outcome of one optimizer over several landscapes (a generated family class) and
/// several seeds each: every (landscape, seed) run counts once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FamilyReport {
    /// Family class (or any label for the landscape set).
    pub family: String,
    /// Optimizer name.
    pub optimizer: String,
    /// Points per ask.
    pub batch: usize,
    /// Landscapes in the set.
    pub landscapes: usize,
    /// Seeds per landscape.
    pub seeds: u32,
    /// Budget per run.
    pub budget: usize,
    /// Share of runs that reached the target within the budget.
    pub reached: f64,
    /// Median experiments to the target over all runs (unreached = ∞; null if the median is ∞).
    pub median_experiments: Option<f64>,
    /// 90th percentile, nearest rank (null when fewer than 90 % of the runs reached).
    pub p90_experiments: Option<f64>,
    /// Largest experiments-to-target among the runs that reached it.
    pub worst_reached: Option<f64>,
    /// Median time of one ask plus the tells of its batch (ms), over all calls of all runs.
    pub ask_ms_median: f64,
    /// 99th percentile of that time (ms).
    pub ask_ms_p99: f64,
    /// Experiments to target per run, landscape-major (null = not reached).
    pub runs: Vec<Option<usize>>,
}

/// Header of [`FamilyReport::table_row`].
pub const FAMILY_TABLE_HEADER: &str =
    "family        optimizer  batch  lands  seeds  median    p90  worst  reached  ask ms (median)  ask ms (p99)";

impl FamilyReport {
    /// One fixed-width table row (`-` for null figures).
    pub fn table_row(&self) -> String {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        format!(
            "{:<13} {:<10} {:>5} {:>6} {:>6} {:>7} {:>6} {:>6} {:>7.1}% {:>16.3} {:>13.3}",
            self.family,
            self.optimizer,
            self.batch,
            self.landscapes,
            self.seeds,
            f(self.median_experiments),
            f(self.p90_experiments),
            f(self.worst_reached),
            100.0 * self.reached,
            self.ask_ms_median,
            self.ask_ms_p99
        )
    }
}

/// Run `algorithm` on every landscape for seeds 0..`seeds` and pool the runs.
pub fn run_family(
    family: &str,
    landscapes: &[Landscape],
    algorithm: &Algorithm,
    batch: usize,
    seeds: u32,
    budget: usize,
) -> Result<FamilyReport, OptimizerError> {
    let mut runs = Vec::new();
    let mut times = Vec::new();
    for l in landscapes {
        let cfg = BenchConfig {
            landscape: l.clone(),
            algorithm: algorithm.clone(),
            batch,
            seeds,
            budget,
            fraction: 0.05,
            tell_sd: true,
        };
        for seed in 0..seeds {
            let (r, t) = run_seed(&cfg, seed)?;
            runs.push(r.experiments);
            times.extend(t);
        }
    }
    let exps: Vec<Option<f64>> = runs.iter().map(|e| e.map(|e| e as f64)).collect();
    let n_reached = exps.iter().filter(|e| e.is_some()).count();
    let reached = if exps.is_empty() {
        0.0
    } else {
        n_reached as f64 / exps.len() as f64
    };
    Ok(FamilyReport {
        family: family.to_string(),
        optimizer: algorithm.name().to_string(),
        batch,
        landscapes: landscapes.len(),
        seeds,
        budget,
        reached,
        median_experiments: percentile(&exps, 0.5),
        p90_experiments: if reached >= 0.9 {
            nearest_rank(&exps, 0.9)
        } else {
            None
        },
        worst_reached: exps.iter().flatten().copied().reduce(f64::max),
        ask_ms_median: ms_percentile(&mut times.clone(), 0.5),
        ask_ms_p99: ms_percentile(&mut times, 0.99),
        runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_treat_unreached_as_infinite() {
        let v = [Some(1.0), Some(3.0), None];
        assert_eq!(percentile(&v, 0.5), Some(3.0));
        assert_eq!(percentile(&[Some(1.0), Some(2.0)], 0.5), Some(1.5));
        assert_eq!(percentile(&[Some(1.0), None, None], 0.5), None);
        let ten: Vec<Option<f64>> = (1..=9).map(|i| Some(i as f64)).chain([None]).collect();
        assert_eq!(nearest_rank(&ten, 0.9), Some(9.0));
        assert_eq!(nearest_rank(&ten, 1.0), None);
    }

    #[test]
    fn the_paper_landscape_gives_the_paper_space() {
        let space = space_of(&Landscape::paper());
        let names: Vec<&str> = space.parameters.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["T", "C"]);
        assert_eq!(space.parameters[0].lower, 90.0);
        assert_eq!(space.parameters[1].resolution, Some(0.01));
        let spec = spec_for(&Landscape::paper(), Algorithm::from_name("bo").unwrap(), 3);
        assert_eq!(spec.goal, Goal::Maximize);
    }
}
