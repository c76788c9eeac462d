//! Gaussian-process Bayesian optimisation: Matérn 5/2 kernel with one length scale per
//! parameter, signal and noise variances estimated by maximising the marginal likelihood (with a
//! weak log-normal prior on the length scales) from several Nelder–Mead restarts, noise-aware
//! expected improvement (plug-in incumbent: the best posterior mean at a measured point), batches
//! by Kriging believer, a scrambled Sobol initial design, proposals rounded to the grid and never
//! duplicating a measured point unless `allow_remeasure` is set. Every third model-based
//! proposal is space-filling (farthest from all measured and pending points), so the search
//! does not lock onto the first basin; opt-in: EI grid hill-climbing and a local (trust-region)
//! GP step.

use std::collections::BTreeSet;

use crate::rng::StateRng;
use nalgebra::{Cholesky, DMatrix, DVector, Dyn};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::baselines::{random_point, sobol_point};
use crate::{OptimizerError, Proposal, ProposalKind, Space};

/// BO settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BoSettings {
    /// Points of the Sobol initial design; `None` → n + 2.
    pub initial_points: Option<usize>,
    /// Random restarts of the hyperparameter search (plus a warm start from the last fit).
    pub restarts: usize,
    /// Refit hyperparameters once the data grew by this fraction since the last fit (always
    /// while fewer than 30 observations); 0 → every ask.
    pub refit_growth: f64,
    /// Sobol candidates per acquisition step (plus local candidates around the best points).
    pub candidates: usize,
    /// Allow proposing an already measured point (a re-measurement) when EI prefers it.
    pub allow_remeasure: bool,
    /// Every `explore_every`-th model-based proposal is a space-filling point instead of the EI
    /// maximiser: the candidate farthest (in the unit cube) from every measured and pending
    /// point. Keeps BO from locking onto the first basin it finds (issue #16); 0 = never.
    pub explore_every: usize,
    /// Standard deviation of the log-normal prior on the length scales (natural-log units,
    /// centred at 0.25 of the range); larger admits narrow peaks more readily. Not > 0 → 1.
    pub ls_prior_sd: f64,
    /// Random restarts of the hyperparameter search once a fit exists and the data set has at
    /// least 30 points (the warm start from the last fit and the default start always run).
    pub warm_restarts: usize,
    /// EI is refined by grid hill-climbing from this many of the best candidates (0 = off).
    pub refine_starts: usize,
    /// Every `local_every`-th model-based proposal (offset 1) maximises EI of a local GP,
    /// refitted on the 10·d + 10 points nearest the incumbent, inside their bounding trust box
    /// (TuRBO-like; resolves a narrow peak the global length scales smooth over); 0 = never.
    pub local_every: usize,
}

impl Default for BoSettings {
    fn default() -> Self {
        Self {
            initial_points: None,
            restarts: 3,
            refit_growth: 0.1,
            candidates: 512,
            allow_remeasure: false,
            explore_every: 3,
            ls_prior_sd: 1.0,
            warm_restarts: 1,
            refine_starts: 0,
            local_every: 0,
        }
    }
}

/// GP hyperparameters (natural logarithms).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hyper {
    /// ln length scale per parameter (unit-cube coordinates).
    pub log_ls: Vec<f64>,
    /// ln signal variance (standardised outputs).
    pub log_sf2: f64,
    /// ln noise variance (standardised outputs).
    pub log_sn2: f64,
}

const LS_BOUNDS: (f64, f64) = (-4.6, 1.6); // 0.01 .. 5
const SF2_BOUNDS: (f64, f64) = (-3.0, 3.0); // 0.05 .. 20
const SN2_BOUNDS: (f64, f64) = (-13.8, 0.0); // 1e-6 .. 1
const LS_PRIOR: (f64, f64) = (-1.4, 1.0); // ln 0.25, default sd 1 (`BoSettings::ls_prior_sd`)

impl Hyper {
    fn to_vec(&self) -> Vec<f64> {
        let mut v = self.log_ls.clone();
        v.push(self.log_sf2);
        v.push(self.log_sn2);
        v
    }

    fn from_vec(v: &[f64]) -> Self {
        let d = v.len() - 2;
        Self {
            log_ls: v[..d]
                .iter()
                .map(|x| x.clamp(LS_BOUNDS.0, LS_BOUNDS.1))
                .collect(),
            log_sf2: v[d].clamp(SF2_BOUNDS.0, SF2_BOUNDS.1),
            log_sn2: v[d + 1].clamp(SN2_BOUNDS.0, SN2_BOUNDS.1),
        }
    }

    fn default_for(d: usize) -> Self {
        Self {
            log_ls: vec![(0.2f64).ln(); d],
            log_sf2: 0.0,
            log_sn2: (1e-2f64).ln(),
        }
    }
}

fn matern52(a: &[f64], b: &[f64], inv_ls: &[f64], sf2: f64) -> f64 {
    matern52_r2(scaled_r2(a.iter().zip(b).map(|(p, q)| p - q), inv_ls), sf2)
}

/// Σ ((aⱼ − bⱼ) / ℓⱼ)² from the coordinate differences.
fn scaled_r2(diffs: impl Iterator<Item = f64>, inv_ls: &[f64]) -> f64 {
    diffs
        .zip(inv_ls)
        .map(|(d, il)| {
            let z = d * il;
            z * z
        })
        .sum()
}

fn matern52_r2(r2: f64, sf2: f64) -> f64 {
    let r = (5.0 * r2).sqrt();
    sf2 * (1.0 + r + 5.0 * r2 / 3.0) * (-r).exp()
}

/// The training covariance K + (σₙ² + extraᵢ + 1e-8·σ_f²)·I. The kernel is symmetric, so
/// `k_at(i, j)` is evaluated below the diagonal only (half the `exp` calls) and mirrored.
fn covariance(
    n: usize,
    sf2: f64,
    sn2: f64,
    extra: &[f64],
    k_at: impl Fn(usize, usize) -> f64,
) -> DMatrix<f64> {
    let mut k = DMatrix::zeros(n, n);
    for j in 0..n {
        // matern52 at distance 0 is exactly sf2
        k[(j, j)] = sf2 + (sn2 + extra[j] + 1e-8 * sf2);
        for i in j + 1..n {
            let v = k_at(i, j);
            k[(i, j)] = v;
            k[(j, i)] = v;
        }
    }
    k
}

/// A fitted GP on standardised outputs.
struct Gp {
    x: Vec<Vec<f64>>,
    chol: Cholesky<f64, Dyn>,
    alpha: DVector<f64>,
    inv_ls: Vec<f64>,
    sf2: f64,
}

impl Gp {
    fn build(x: &[Vec<f64>], y: &[f64], extra: &[f64], h: &Hyper) -> Option<Self> {
        let inv_ls: Vec<f64> = h.log_ls.iter().map(|l| (-l).exp()).collect();
        let sf2 = h.log_sf2.exp();
        let sn2 = h.log_sn2.exp();
        let k = covariance(x.len(), sf2, sn2, extra, |i, j| {
            matern52(&x[i], &x[j], &inv_ls, sf2)
        });
        let chol = k.cholesky()?;
        let alpha = chol.solve(&DVector::from_column_slice(y));
        Some(Self {
            x: x.to_vec(),
            chol,
            alpha,
            inv_ls,
            sf2,
        })
    }
    /// Posterior mean and latent variance at each column point.
    fn predict(&self, pts: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
        let n = self.x.len();
        let m = pts.len();
        let ks = DMatrix::from_fn(n, m, |i, j| {
            matern52(&self.x[i], &pts[j], &self.inv_ls, self.sf2)
        });
        let mean = ks.transpose() * &self.alpha;
        let l = self.chol.l_dirty();
        let v = l
            .solve_lower_triangular(&ks)
            .unwrap_or_else(|| DMatrix::zeros(n, m));
        let var: Vec<f64> = (0..m)
            .map(|j| (self.sf2 - v.column(j).norm_squared()).max(1e-12))
            .collect();
        (mean.iter().copied().collect(), var)
    }

    fn predict_mean(&self, pts: &[Vec<f64>]) -> Vec<f64> {
        pts.iter()
            .map(|p| {
                self.x
                    .iter()
                    .zip(self.alpha.iter())
                    .map(|(xi, a)| a * matern52(xi, p, &self.inv_ls, self.sf2))
                    .sum()
            })
            .collect()
    }
}

/// The negative log marginal likelihood of one training set as a function of the
/// hyperparameters. A refit evaluates it hundreds of times on the same points, so the pairwise
/// coordinate differences are taken once (below the diagonal, `d` per pair).
struct Likelihood<'a> {
    n: usize,
    y: DVector<f64>,
    extra: &'a [f64],
    diffs: Vec<f64>,
    prior_sd: f64,
}

impl<'a> Likelihood<'a> {
    fn new(x: &[Vec<f64>], y: &[f64], extra: &'a [f64], prior_sd: f64) -> Self {
        let n = x.len();
        let mut diffs =
            Vec::with_capacity(n * n.saturating_sub(1) / 2 * x.first().map_or(0, Vec::len));
        for j in 0..n {
            for i in j + 1..n {
                diffs.extend(x[i].iter().zip(&x[j]).map(|(p, q)| p - q));
            }
        }
        Self {
            n,
            y: DVector::from_column_slice(y),
            extra,
            diffs,
            prior_sd,
        }
    }

    /// Negative log marginal likelihood plus the length-scale prior; ∞ where K is not
    /// positive definite.
    fn nlml(&self, h: &Hyper) -> f64 {
        let inv_ls: Vec<f64> = h.log_ls.iter().map(|l| (-l).exp()).collect();
        let d = inv_ls.len();
        let sf2 = h.log_sf2.exp();
        let sn2 = h.log_sn2.exp();
        // pair (i, j), i > j, sits at offset d·(j·n − j(j+1)/2 + i − j − 1)
        let n = self.n;
        let k = covariance(n, sf2, sn2, self.extra, |i, j| {
            let at = d * (j * n - j * (j + 1) / 2 + i - j - 1);
            matern52_r2(
                scaled_r2(self.diffs[at..at + d].iter().copied(), &inv_ls),
                sf2,
            )
        });
        let Some(chol) = k.cholesky() else {
            return f64::INFINITY;
        };
        let alpha = chol.solve(&self.y);
        let fit = 0.5 * self.y.dot(&alpha);
        let logdet: f64 = chol.l_dirty().diagonal().iter().map(|v| v.ln()).sum();
        let prior: f64 = h
            .log_ls
            .iter()
            .map(|l| 0.5 * ((l - LS_PRIOR.0) / self.prior_sd).powi(2))
            .sum();
        let v = fit + logdet + prior;
        if v.is_finite() {
            v
        } else {
            f64::INFINITY
        }
    }
}

const FIT_MAX: usize = 64;

#[allow(clippy::type_complexity)]
fn fit_subset(x: &[Vec<f64>], y: &[f64], e: &[f64]) -> (Vec<Vec<f64>>, Vec<f64>, Vec<f64>) {
    if x.len() <= FIT_MAX {
        return (x.to_vec(), y.to_vec(), e.to_vec());
    }
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| y[a].total_cmp(&y[b]).then(a.cmp(&b)));
    let half = FIT_MAX / 2;
    let mut pick: Vec<usize> = order[..half].to_vec();
    let rest = &order[half..];
    let stride = rest.len() as f64 / (FIT_MAX - half) as f64;
    pick.extend((0..FIT_MAX - half).map(|k| rest[(k as f64 * stride) as usize]));
    pick.sort_unstable();
    pick.dedup();
    (
        pick.iter().map(|&i| x[i].clone()).collect(),
        pick.iter().map(|&i| y[i]).collect(),
        pick.iter().map(|&i| e[i]).collect(),
    )
}

/// Nelder–Mead minimisation of `f` from `x0` (initial simplex step `step`).
fn nelder_mead(
    f: &dyn Fn(&[f64]) -> f64,
    x0: &[f64],
    step: f64,
    max_evals: usize,
) -> (Vec<f64>, f64) {
    let n = x0.len();
    let mut simplex: Vec<(Vec<f64>, f64)> = Vec::with_capacity(n + 1);
    simplex.push((x0.to_vec(), f(x0)));
    for i in 0..n {
        let mut x = x0.to_vec();
        x[i] += step;
        let v = f(&x);
        simplex.push((x, v));
    }
    let mut evals = n + 1;
    while evals < max_evals {
        simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
        let (best, worst) = (simplex[0].1, simplex[n].1);
        if (worst - best).abs() <= 1e-7 * (1.0 + best.abs()) {
            break;
        }
        let centroid: Vec<f64> = (0..n)
            .map(|i| simplex[..n].iter().map(|p| p.0[i]).sum::<f64>() / n as f64)
            .collect();
        let at = |t: f64| -> Vec<f64> {
            (0..n)
                .map(|i| centroid[i] + t * (simplex[n].0[i] - centroid[i]))
                .collect()
        };
        let xr = at(-1.0);
        let fr = f(&xr);
        evals += 1;
        if fr < simplex[0].1 {
            let xe = at(-2.0);
            let fe = f(&xe);
            evals += 1;
            simplex[n] = if fe < fr { (xe, fe) } else { (xr, fr) };
        } else if fr < simplex[n - 1].1 {
            simplex[n] = (xr, fr);
        } else {
            let (xc, fc) = if fr < simplex[n].1 {
                let xc = at(-0.5);
                let fc = f(&xc);
                (xc, fc)
            } else {
                let xc = at(0.5);
                let fc = f(&xc);
                (xc, fc)
            };
            evals += 1;
            if fc < simplex[n].1.min(fr) {
                simplex[n] = (xc, fc);
            } else {
                let x0 = simplex[0].0.clone();
                for p in simplex.iter_mut().skip(1) {
                    for i in 0..n {
                        p.0[i] = x0[i] + 0.5 * (p.0[i] - x0[i]);
                    }
                    p.1 = f(&p.0);
                }
                evals += n;
            }
        }
    }
    simplex.sort_by(|a, b| a.1.total_cmp(&b.1));
    let (x, v) = simplex.swap_remove(0);
    (x, v)
}

fn norm_pdf(z: f64) -> f64 {
    (-0.5 * z * z).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

fn norm_cdf(z: f64) -> f64 {
    0.5 * erfc(-z / std::f64::consts::SQRT_2)
}

/// Complementary error function (Numerical Recipes `erfcc`, |rel. err| < 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// Expected improvement below `tau` for mean `mu` and sd `s` (minimisation).
pub fn expected_improvement(mu: f64, s: f64, tau: f64) -> f64 {
    if s <= 1e-12 {
        return (tau - mu).max(0.0);
    }
    let z = (tau - mu) / s;
    (tau - mu) * norm_cdf(z) + s * norm_pdf(z)
}

/// The BO state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bo {
    space: Space,
    settings: BoSettings,
    /// Measured points (snapped, original units).
    xs: Vec<Vec<f64>>,
    /// Losses (None = failed).
    ys: Vec<Option<f64>>,
    /// Known measurement sd per observation.
    sds: Vec<Option<f64>>,
    hyper: Option<Hyper>,
    fitted_n: usize,
    rng: StateRng,
    sobol_seed: u32,
    initial_asked: usize,
    asks: u32,
    /// Model-based proposals made so far (counts the `explore_every` cycle).
    #[serde(default)]
    model_asks: u64,
}

impl Bo {
    /// New BO over `space`.
    pub fn new(space: &Space, s: &BoSettings, seed: u64) -> Result<Self, OptimizerError> {
        if !(s.refit_growth.is_finite() && s.refit_growth >= 0.0) {
            return Err(OptimizerError::InvalidSettings(
                "refit_growth must be ≥ 0".into(),
            ));
        }
        if s.candidates == 0 {
            return Err(OptimizerError::InvalidSettings(
                "candidates must be ≥ 1".into(),
            ));
        }
        Ok(Self {
            space: space.clone(),
            settings: s.clone(),
            xs: Vec::new(),
            ys: Vec::new(),
            sds: Vec::new(),
            hyper: None,
            fitted_n: 0,
            rng: StateRng::seed_from_u64(seed),
            sobol_seed: (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32,
            initial_asked: 0,
            asks: 0,
            model_asks: 0,
        })
    }

    /// Record an observation (loss; None = failed).
    pub fn tell(&mut self, x: Vec<f64>, loss: Option<f64>, sd: Option<f64>) {
        self.xs.push(x);
        self.ys.push(loss);
        self.sds.push(sd);
    }

    /// Current hyperparameters (after the last fit).
    pub fn hyper(&self) -> Option<&Hyper> {
        self.hyper.as_ref()
    }

    fn n_init(&self) -> usize {
        self.settings.initial_points.unwrap_or(self.space.dim() + 2)
    }

    /// Propose `n` points.
    pub fn ask(&mut self, n: usize) -> Vec<Proposal> {
        self.asks = self.asks.wrapping_add(1);
        let mut seen: BTreeSet<Vec<i64>> =
            self.xs.iter().map(|x| self.space.grid_index(x)).collect();
        let finite = self.ys.iter().filter(|y| y.is_some()).count();
        let mut out = Vec::with_capacity(n);
        // Initial design.
        while out.len() < n && (self.initial_asked.max(self.xs.len()) < self.n_init() || finite < 2)
        {
            let mut tries = 0;
            let x = loop {
                let u = sobol_point(self.initial_asked as u32, self.space.dim(), self.sobol_seed);
                self.initial_asked += 1;
                let x = self.space.snap(&self.space.from_unit(&u));
                tries += 1;
                if !seen.contains(&self.space.grid_index(&x)) || tries > 100 {
                    break x;
                }
            };
            if seen.insert(self.space.grid_index(&x)) {
                out.push(Proposal {
                    x,
                    kind: ProposalKind::InitialDesign,
                    predicted: None,
                });
            }
            if self.initial_asked.max(self.xs.len()) >= self.n_init() && finite >= 2 {
                break;
            }
            if tries > 100 {
                break;
            }
        }
        if out.len() >= n {
            return out;
        }
        // Model-based part.
        let (xu, y, extra, ymean, ystd) = self.training_data();
        self.maybe_refit(&xu, &y, &extra);
        let h = self
            .hyper
            .clone()
            .unwrap_or_else(|| Hyper::default_for(self.space.dim()));
        let mut train_x = xu;
        let mut train_y = y;
        let mut train_extra = extra;
        let sn2 = h.log_sn2.exp();
        let mut batch_index = 0u32;
        while out.len() < n {
            let Some(gp) = Gp::build(&train_x, &train_y, &train_extra, &h) else {
                break;
            };
            self.model_asks = self.model_asks.wrapping_add(1);
            let explore = self.settings.explore_every > 0
                && self
                    .model_asks
                    .is_multiple_of(self.settings.explore_every as u64);
            let local = !explore
                && self.settings.local_every > 0
                && self.model_asks % self.settings.local_every as u64
                    == 1 % self.settings.local_every as u64;
            let pick = if explore {
                self.farthest_point(&gp, &train_x, &seen)
            } else if local {
                self.local_step(&gp, &h, &train_x, &train_y, &train_extra, &seen)
                    .or_else(|| self.maximise_ei(&gp, &train_x, &seen))
            } else {
                self.maximise_ei(&gp, &train_x, &seen)
            };
            let Some((x, mu)) = pick else {
                break;
            };
            let xunit = self.space.to_unit(&x);
            seen.insert(self.space.grid_index(&x));
            out.push(Proposal {
                x,
                kind: ProposalKind::ExpectedImprovement { batch_index },
                predicted: Some(ymean + ystd * mu),
            });
            batch_index += 1;
            // Kriging believer: pretend the model mean was observed there.
            train_x.push(xunit);
            train_y.push(mu);
            train_extra.push(0.0 * sn2);
        }
        // Fallback when the acquisition found nothing new (grid nearly exhausted).
        let mut tries = 0;
        while out.len() < n && tries < 1000 {
            tries += 1;
            let x = random_point(&self.space, &mut self.rng);
            if seen.insert(self.space.grid_index(&x)) {
                out.push(Proposal {
                    x,
                    kind: ProposalKind::Baseline,
                    predicted: None,
                });
            }
        }
        out
    }

    /// Unit-cube inputs, standardised outputs (failed → worst), per-point extra noise.
    #[allow(clippy::type_complexity)]
    fn training_data(&self) -> (Vec<Vec<f64>>, Vec<f64>, Vec<f64>, f64, f64) {
        let fin: Vec<f64> = self.ys.iter().flatten().copied().collect();
        let m = fin.len().max(1) as f64;
        let mean = fin.iter().sum::<f64>() / m;
        let sd = (fin.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / m).sqrt();
        let sd = if sd > 1e-12 { sd } else { 1.0 };
        let worst = fin.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let worst = if worst.is_finite() { worst } else { mean };
        let x = self.xs.iter().map(|x| self.space.to_unit(x)).collect();
        let y = self
            .ys
            .iter()
            .map(|v| (v.unwrap_or(worst) - mean) / sd)
            .collect();
        let extra = self
            .sds
            .iter()
            .map(|s| s.map(|s| (s / sd).powi(2)).unwrap_or(0.0))
            .collect();
        (x, y, extra, mean, sd)
    }

    fn maybe_refit(&mut self, x: &[Vec<f64>], y: &[f64], extra: &[f64]) {
        let n = x.len();
        let due = self.hyper.is_none()
            || n < 30
            || self.settings.refit_growth == 0.0
            || n as f64 >= self.fitted_n as f64 * (1.0 + self.settings.refit_growth);
        if !due || n < 2 {
            return;
        }
        let d = self.space.dim();
        // Above FIT_MAX points the likelihood is maximised on a subset: the FIT_MAX/2 best
        // points plus an even stride through the rest (a refit at 250 points, warm, with
        // `warm_restarts` = 1: ≈ 22 ms (2-D) to 32 ms (4-D), bench/RESULTS.md).
        let (xs, ys, es) = fit_subset(x, y, extra);
        let prior_sd = if self.settings.ls_prior_sd > 0.0 {
            self.settings.ls_prior_sd
        } else {
            LS_PRIOR.1
        };
        let lik = Likelihood::new(&xs, &ys, &es, prior_sd);
        let cost = |v: &[f64]| lik.nlml(&Hyper::from_vec(v));
        let mut starts: Vec<Vec<f64>> = Vec::new();
        if let Some(h) = &self.hyper {
            starts.push(h.to_vec());
        }
        starts.push(Hyper::default_for(d).to_vec());
        let restarts = if self.hyper.is_some() && n >= 30 {
            self.settings.warm_restarts
        } else {
            self.settings.restarts
        };
        for _ in 0..restarts {
            let mut v: Vec<f64> = (0..d).map(|_| self.rng.random_range(-3.0..0.5)).collect();
            v.push(self.rng.random_range(-1.0..1.0));
            v.push(self.rng.random_range(-9.0..-1.0));
            starts.push(v);
        }
        let mut best: Option<(Vec<f64>, f64)> = None;
        for s in starts {
            let (v, c) = nelder_mead(&cost, &s, 0.7, 40 * (d + 2));
            if c.is_finite() && best.as_ref().is_none_or(|b| c < b.1) {
                best = Some((v, c));
            }
        }
        if let Some((v, _)) = best {
            self.hyper = Some(Hyper::from_vec(&v));
            self.fitted_n = n;
        }
    }

    /// EI of a GP fitted to the points nearest the incumbent, maximised in their bounding box.
    /// Returns the point and the *global* posterior mean there (standardised).
    #[allow(clippy::too_many_arguments)]
    fn local_step(
        &mut self,
        gp: &Gp,
        h: &Hyper,
        train_x: &[Vec<f64>],
        train_y: &[f64],
        train_extra: &[f64],
        seen: &BTreeSet<Vec<i64>>,
    ) -> Option<(Vec<f64>, f64)> {
        let d = self.space.dim();
        let k = (10 * d + 10).min(train_x.len());
        if k < d + 3 {
            return None;
        }
        let means = gp.predict_mean(train_x);
        let ibest = (0..train_x.len()).min_by(|&a, &b| means[a].total_cmp(&means[b]))?;
        let c = &train_x[ibest];
        let mut order: Vec<usize> = (0..train_x.len()).collect();
        let dist2 = |i: usize| -> f64 {
            train_x[i]
                .iter()
                .zip(c)
                .map(|(a, b)| (a - b) * (a - b))
                .sum()
        };
        order.sort_by(|&a, &b| dist2(a).total_cmp(&dist2(b)));
        order.truncate(k);
        let lx: Vec<Vec<f64>> = order.iter().map(|&i| train_x[i].clone()).collect();
        let raw: Vec<f64> = order.iter().map(|&i| train_y[i]).collect();
        let m = raw.iter().sum::<f64>() / k as f64;
        let sd = (raw.iter().map(|v| (v - m).powi(2)).sum::<f64>() / k as f64).sqrt();
        let sd = if sd > 1e-12 { sd } else { 1.0 };
        let ly: Vec<f64> = raw.iter().map(|v| (v - m) / sd).collect();
        let le: Vec<f64> = order.iter().map(|&i| train_extra[i] / (sd * sd)).collect();
        let prior_sd = if self.settings.ls_prior_sd > 0.0 {
            self.settings.ls_prior_sd
        } else {
            LS_PRIOR.1
        };
        let lik = Likelihood::new(&lx, &ly, &le, prior_sd);
        let cost = |v: &[f64]| lik.nlml(&Hyper::from_vec(v));
        let mut best_h: Option<(Vec<f64>, f64)> = None;
        for start in [h.to_vec(), Hyper::default_for(d).to_vec()] {
            let (v, cst) = nelder_mead(&cost, &start, 0.7, 30 * (d + 2));
            if cst.is_finite() && best_h.as_ref().is_none_or(|b| cst < b.1) {
                best_h = Some((v, cst));
            }
        }
        let lh = Hyper::from_vec(&best_h?.0);
        let lgp = Gp::build(&lx, &ly, &le, &lh)?;
        let lmeans = lgp.predict_mean(&lx);
        let tau = lmeans.iter().copied().fold(f64::INFINITY, f64::min);
        // trust box: the bounding box of the local points, at least 4 grid steps wide
        let dxu: Vec<f64> = self
            .space
            .parameters
            .iter()
            .map(|p| p.step() / (p.upper - p.lower))
            .collect();
        let lo: Vec<f64> = (0..d)
            .map(|j| {
                let m = lx.iter().map(|x| x[j]).fold(f64::INFINITY, f64::min);
                m.min(c[j] - 2.0 * dxu[j]).max(0.0)
            })
            .collect();
        let hi: Vec<f64> = (0..d)
            .map(|j| {
                let m = lx.iter().map(|x| x[j]).fold(f64::NEG_INFINITY, f64::max);
                m.max(c[j] + 2.0 * dxu[j]).min(1.0)
            })
            .collect();
        let seed = self.sobol_seed ^ self.asks.wrapping_mul(0x1656_67B1) ^ 0x0F0F_0F0F;
        let mut cands: Vec<Vec<f64>> = (0..256)
            .map(|i| {
                let u = sobol_point(i as u32, d, seed);
                let x: Vec<f64> = (0..d).map(|j| lo[j] + u[j] * (hi[j] - lo[j])).collect();
                self.space.snap(&self.space.from_unit(&x))
            })
            .filter(|x| self.settings.allow_remeasure || !seen.contains(&self.space.grid_index(x)))
            .collect();
        cands.sort_by_key(|a| self.space.grid_index(a));
        cands.dedup();
        if cands.is_empty() {
            return None;
        }
        let units: Vec<Vec<f64>> = cands.iter().map(|x| self.space.to_unit(x)).collect();
        let (mu, var) = lgp.predict(&units);
        let mut scored: Vec<(f64, usize)> = (0..units.len())
            .map(|i| (expected_improvement(mu[i], var[i].sqrt(), tau), i))
            .filter(|(e, _)| e.is_finite())
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        let &(e0, i0) = scored.first()?;
        let mut best = (e0, cands[i0].clone());
        for &(e, i) in scored.iter().take(2) {
            let (e2, x2, _) = self.climb_ei(&lgp, tau, e, cands[i].clone(), mu[i], seen);
            if e2 > best.0 {
                best = (e2, x2);
            }
        }
        let gmu = gp.predict_mean(&[self.space.to_unit(&best.1)])[0];
        Some((best.1, gmu))
    }

    /// The Sobol candidate farthest from every training point (measured or pending), snapped
    /// to the grid; returns it with its posterior mean.
    fn farthest_point(
        &mut self,
        gp: &Gp,
        train_x: &[Vec<f64>],
        seen: &BTreeSet<Vec<i64>>,
    ) -> Option<(Vec<f64>, f64)> {
        let d = self.space.dim();
        let seed = self.sobol_seed ^ self.asks.wrapping_mul(0x27D4_EB2F) ^ 0x5A5A_5A5A;
        let mut best: Option<(f64, Vec<f64>)> = None;
        for i in 0..self.settings.candidates.max(256) {
            let u = sobol_point(i as u32, d, seed);
            let x = self.space.snap(&self.space.from_unit(&u));
            if seen.contains(&self.space.grid_index(&x)) {
                continue;
            }
            let xu = self.space.to_unit(&x);
            let dmin = train_x
                .iter()
                .map(|t| {
                    t.iter()
                        .zip(&xu)
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum::<f64>()
                })
                .fold(f64::INFINITY, f64::min);
            if best.as_ref().is_none_or(|b| dmin > b.0) {
                best = Some((dmin, x));
            }
        }
        let (_, x) = best?;
        let mu = gp.predict_mean(&[self.space.to_unit(&x)])[0];
        Some((x, mu))
    }

    /// Best EI over Sobol and local candidates (snapped to the grid). Returns the point and
    /// its posterior mean (standardised).
    fn maximise_ei(
        &mut self,
        gp: &Gp,
        train_x: &[Vec<f64>],
        seen: &BTreeSet<Vec<i64>>,
    ) -> Option<(Vec<f64>, f64)> {
        let d = self.space.dim();
        let means = gp.predict_mean(train_x);
        let tau = means.iter().copied().fold(f64::INFINITY, f64::min);
        let mut cands: Vec<Vec<f64>> = Vec::with_capacity(self.settings.candidates + 200);
        let seed = self.sobol_seed ^ self.asks.wrapping_mul(0x85EB_CA6B);
        for i in 0..self.settings.candidates {
            cands.push(sobol_point(i as u32, d, seed));
        }
        // local candidates around the best posterior means
        let mut order: Vec<usize> = (0..train_x.len()).collect();
        order.sort_by(|&a, &b| means[a].total_cmp(&means[b]));
        let ls: Vec<f64> = gp.inv_ls.iter().map(|il| 1.0 / il).collect();
        for &i in order.iter().take(5) {
            for k in 0..40 {
                let scale = if k % 2 == 0 { 0.1 } else { 0.02 };
                let c: Vec<f64> = (0..d)
                    .map(|j| {
                        let z: f64 = self.rng.random::<f64>() * 2.0 - 1.0;
                        (train_x[i][j] + z * scale * ls[j].min(1.0) * 2.0).clamp(0.0, 1.0)
                    })
                    .collect();
                cands.push(c);
            }
        }
        let snapped: Vec<Vec<f64>> = cands
            .iter()
            .map(|u| self.space.snap(&self.space.from_unit(u)))
            .filter(|x| self.settings.allow_remeasure || !seen.contains(&self.space.grid_index(x)))
            .collect();
        if snapped.is_empty() {
            return None;
        }
        let units: Vec<Vec<f64>> = snapped.iter().map(|x| self.space.to_unit(x)).collect();
        let (mu, var) = gp.predict(&units);
        let mut scored: Vec<(f64, usize)> = (0..units.len())
            .map(|i| (expected_improvement(mu[i], var[i].sqrt(), tau), i))
            .filter(|(ei, _)| ei.is_finite())
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        let &(ei0, i0) = scored.first()?;
        let mut best = (ei0, snapped[i0].clone(), mu[i0]);
        // Acquisition refinement on the grid: steepest ascent of EI over the ±k-step
        // neighbourhoods (k = 8, 2, 1 grid steps) from the best few candidates.
        for &(ei, i) in scored.iter().take(self.settings.refine_starts) {
            let (e, x, m) = self.climb_ei(gp, tau, ei, snapped[i].clone(), mu[i], seen);
            if e > best.0 {
                best = (e, x, m);
            }
        }
        Some((best.1, best.2))
    }

    fn climb_ei(
        &self,
        gp: &Gp,
        tau: f64,
        mut ei: f64,
        mut x: Vec<f64>,
        mut mu: f64,
        seen: &BTreeSet<Vec<i64>>,
    ) -> (f64, Vec<f64>, f64) {
        let d = self.space.dim();
        let dx = self.space.dx();
        for k in [8.0, 2.0, 1.0] {
            for _ in 0..12 {
                let mut nb: Vec<Vec<f64>> = Vec::with_capacity(2 * d);
                for j in 0..d {
                    for s in [-k, k] {
                        let mut q = x.clone();
                        q[j] += s * dx[j];
                        let q = self.space.snap(&q);
                        if q != x
                            && (self.settings.allow_remeasure
                                || !seen.contains(&self.space.grid_index(&q)))
                        {
                            nb.push(q);
                        }
                    }
                }
                if nb.is_empty() {
                    break;
                }
                let units: Vec<Vec<f64>> = nb.iter().map(|q| self.space.to_unit(q)).collect();
                let (m, v) = gp.predict(&units);
                let mut moved = false;
                for i in 0..nb.len() {
                    let e = expected_improvement(m[i], v[i].sqrt(), tau);
                    if e.is_finite() && e > ei * (1.0 + 1e-9) {
                        ei = e;
                        x = nb[i].clone();
                        mu = m[i];
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        (ei, x, mu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refit's likelihood (pairwise differences cached, half the kernel evaluated) must be
    /// the marginal likelihood of the GP that `ask` then builds from the same points.
    #[test]
    fn cached_likelihood_equals_the_likelihood_of_the_built_gp() {
        for (n, d) in [(1, 2), (2, 3), (17, 2), (40, 4)] {
            let x: Vec<Vec<f64>> = (0..n)
                .map(|i| {
                    (0..d)
                        .map(|j| (0.5 + 0.5 * ((i * 7 + j * 13) as f64 * 0.731).sin()).fract())
                        .collect()
                })
                .collect();
            let y: Vec<f64> = (0..n).map(|i| (i as f64 * 1.3).cos()).collect();
            let extra: Vec<f64> = (0..n)
                .map(|i| if i % 3 == 0 { 0.01 } else { 0.0 })
                .collect();
            let h = Hyper {
                log_ls: (0..d).map(|j| -1.0 - 0.3 * j as f64).collect(),
                log_sf2: 0.2,
                log_sn2: -4.0,
            };
            let gp = Gp::build(&x, &y, &extra, &h).expect("positive definite");
            let prior: f64 = h
                .log_ls
                .iter()
                .map(|l| 0.5 * (l - LS_PRIOR.0).powi(2))
                .sum();
            let direct = 0.5 * DVector::from_column_slice(&y).dot(&gp.alpha)
                + gp.chol
                    .l_dirty()
                    .diagonal()
                    .iter()
                    .map(|v| v.ln())
                    .sum::<f64>()
                + prior;
            let cached = Likelihood::new(&x, &y, &extra, 1.0).nlml(&h);
            assert!(
                (cached - direct).abs() <= 1e-12 * (1.0 + direct.abs()),
                "n {n}, d {d}: cached {cached} vs direct {direct}"
            );
        }
    }
}
