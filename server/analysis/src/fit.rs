//! Multi-peak fitting: N line shapes plus a polynomial baseline, solved by Levenberg–Marquardt
//! (`levenberg-marquardt` crate) with box bounds, automatic initial guesses, fit statistics,
//! standard errors from the covariance matrix and BIC-based choice of the number of peaks.

use std::cell::RefCell;

use levenberg_marquardt::{LeastSquaresProblem, LevenbergMarquardt, TerminationReason};
use nalgebra::storage::Owned;
use nalgebra::{DMatrix, DVector, Dyn};
use thiserror::Error;

use crate::lineshape::{self, LineShape, GAUSS_FWHM_PER_SIGMA};
use crate::peaks::{self, PeakOptions};
use crate::preprocess::{self, PreprocessError};
use crate::spectrum::{Spectrum, SpectrumError};

/// Most peaks a single fit may hold.
pub const MAX_PEAKS: usize = 12;

/// How many peaks to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeakCount {
    /// Fit 1..=max peaks and keep the model with the lowest BIC.
    Auto { max: usize },
    /// Fit exactly this many peaks.
    Fixed(usize),
}

impl std::str::FromStr for PeakCount {
    type Err = String;

    /// For CLI flags such as `--peaks auto|N`: `auto` means `Auto { max: 4 }`, `auto:M` sets the
    /// maximum, a number fixes the count.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        let count = |v: &str| -> Result<usize, String> {
            match v.parse::<usize>() {
                Ok(n) if (1..=MAX_PEAKS).contains(&n) => Ok(n),
                _ => Err(format!("peak count must be 1..={MAX_PEAKS}, got `{v}`")),
            }
        };
        if t == "auto" {
            Ok(Self::Auto { max: 4 })
        } else if let Some(m) = t.strip_prefix("auto:") {
            Ok(Self::Auto { max: count(m)? })
        } else {
            Ok(Self::Fixed(count(&t)?))
        }
    }
}

/// Baseline term fitted together with the peaks: a polynomial in the wavelength.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    None,
    Constant,
    Linear,
    Quadratic,
}

impl Baseline {
    fn n_params(self) -> usize {
        match self {
            Self::None => 0,
            Self::Constant => 1,
            Self::Linear => 2,
            Self::Quadratic => 3,
        }
    }
}

/// Settings for [`fit_peaks`].
#[derive(Debug, Clone, PartialEq)]
pub struct FitSettings {
    pub shape: LineShape,
    pub peaks: PeakCount,
    pub baseline: Baseline,
    /// Fit only this wavelength window (nm), if set.
    pub window_nm: Option<(f64, f64)>,
    /// Allow negative peak heights (e.g. bisignate CD bands). Absorption peaks are positive.
    pub allow_negative: bool,
    /// Smallest and largest FWHM (nm) a peak may take; `None` = 2 sample steps / the window width,
    /// or half the window with a linear or quadratic baseline (a wider Gaussian is one more
    /// polynomial over the window: two of them and the baseline trade signal without end).
    pub fwhm_bounds_nm: Option<(f64, f64)>,
    /// Minimal prominence for detected peaks, in multiples of the estimated noise.
    pub min_prominence_noise: f64,
    /// Levenberg–Marquardt evaluation budget, per parameter (`patience` of the solver).
    pub patience: usize,
}

impl Default for FitSettings {
    fn default() -> Self {
        Self {
            shape: LineShape::Gaussian,
            peaks: PeakCount::Auto { max: 4 },
            baseline: Baseline::Linear,
            window_nm: None,
            allow_negative: false,
            fwhm_bounds_nm: None,
            min_prominence_noise: 5.0,
            patience: 50,
        }
    }
}

/// An initial guess for one peak.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakGuess {
    pub center_nm: f64,
    pub height: f64,
    pub fwhm_nm: f64,
}

/// Why a fit failed. Failures are reported, never returned as NaN.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum FitError {
    #[error(transparent)]
    Spectrum(#[from] SpectrumError),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error("invalid fit settings: {0}")]
    InvalidSettings(String),
    #[error("no peak stands out of the noise (noise ≈ {noise:.3e}, signal span {span:.3e})")]
    NoPeaksFound { noise: f64, span: f64 },
    #[error("{points} points cannot determine {parameters} parameters")]
    TooFewPoints { points: usize, parameters: usize },
    #[error("the fit did not converge after {evaluations} evaluations: {reason}")]
    NotConverged { reason: String, evaluations: usize },
    #[error("numerical failure in the fit: {0}")]
    Numerical(String),
}

/// One fitted parameter with its standard error (from the covariance matrix scaled by the reduced
/// χ², as lmfit does). `stderr` is `None` when the covariance matrix is singular.
#[derive(Debug, Clone, PartialEq)]
pub struct Parameter {
    pub name: &'static str,
    pub value: f64,
    pub stderr: Option<f64>,
    pub lower: f64,
    pub upper: f64,
    /// The value sits on (or within 1e-6 of the range of) a bound: its stderr is not meaningful.
    pub at_bound: bool,
}

/// One fitted peak in physical terms.
#[derive(Debug, Clone, PartialEq)]
pub struct FittedPeak {
    pub center_nm: f64,
    pub center_stderr_nm: Option<f64>,
    /// Peak height above the fitted baseline.
    pub amplitude: f64,
    pub amplitude_stderr: Option<f64>,
    pub fwhm_nm: f64,
    pub fwhm_stderr_nm: Option<f64>,
    pub area: f64,
    pub area_stderr: Option<f64>,
    /// The raw line-shape parameters (see [`lineshape::eval_with_grad`] for the layout).
    pub params: Vec<Parameter>,
}

/// Goodness of fit. Definitions follow lmfit: χ² = Σ r², χ²_ν = χ²/(N − k),
/// AIC = N ln(χ²/N) + 2k, BIC = N ln(χ²/N) + k ln N.
#[derive(Debug, Clone, PartialEq)]
pub struct FitStatistics {
    pub n_points: usize,
    pub n_params: usize,
    pub chi_square: f64,
    pub reduced_chi_square: f64,
    pub r_squared: f64,
    pub aic: f64,
    pub bic: f64,
    pub evaluations: usize,
    /// Why the solver stopped: a successful `levenberg-marquardt` reason (`Converged { .. }`,
    /// `Orthogonal`, `ResidualsZero`) or `StalledAtBound` (a parameter sits on its bound and a
    /// further run does not lower χ²; see `Parameter::at_bound`).
    pub termination: String,
    /// Whether the covariance matrix could be inverted (standard errors available).
    pub covariance_ok: bool,
}

/// One model tried while choosing the number of peaks.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCandidate {
    pub n_peaks: usize,
    /// `None` if that fit failed; then `error` says why.
    pub bic: Option<f64>,
    pub aic: Option<f64>,
    pub error: Option<String>,
}

/// Sampled curves of a fit (for the portal's plot of fitted peaks over the raw spectrum).
#[derive(Debug, Clone, PartialEq)]
pub struct FitCurves {
    pub wavelength_nm: Vec<f64>,
    /// Baseline + all peaks.
    pub model: Vec<f64>,
    pub baseline: Vec<f64>,
    /// One curve per peak (without baseline), in the order of `PeakFit::peaks`.
    pub peaks: Vec<Vec<f64>>,
}

/// A converged multi-peak fit.
#[derive(Debug, Clone, PartialEq)]
pub struct PeakFit {
    pub shape: LineShape,
    /// Peaks ordered by increasing center wavelength.
    pub peaks: Vec<FittedPeak>,
    pub baseline_kind: Baseline,
    /// Baseline polynomial coefficients in the normalised coordinate t = (λ − mid) / half_range.
    pub baseline: Vec<Parameter>,
    pub statistics: FitStatistics,
    /// Models fitted while choosing the number of peaks automatically, in the order tried (the
    /// start, residual-driven additions and moves, removals); empty for a fixed count.
    pub model_selection: Vec<ModelCandidate>,
    /// Wavelength range that was fitted.
    pub window_nm: (f64, f64),
    axis_mid: f64,
    axis_half: f64,
}

impl PeakFit {
    /// Baseline value at `wavelength_nm`.
    pub fn baseline_at(&self, wavelength_nm: f64) -> f64 {
        let t = (wavelength_nm - self.axis_mid) / self.axis_half;
        self.baseline
            .iter()
            .enumerate()
            .map(|(k, p)| p.value * t.powi(k as i32))
            .sum()
    }

    /// Value of peak `index` alone (without baseline) at `wavelength_nm`; 0 for a bad index.
    pub fn peak_at(&self, index: usize, wavelength_nm: f64) -> f64 {
        self.peaks.get(index).map_or(0.0, |p| {
            let v: Vec<f64> = p.params.iter().map(|q| q.value).collect();
            lineshape::eval(self.shape, &v, wavelength_nm)
        })
    }

    /// Curves for plotting the fit over the raw data, evaluated at `wavelength_nm`.
    pub fn curves(&self, wavelength_nm: &[f64]) -> FitCurves {
        FitCurves {
            wavelength_nm: wavelength_nm.to_vec(),
            model: wavelength_nm.iter().map(|&x| self.model_at(x)).collect(),
            baseline: wavelength_nm.iter().map(|&x| self.baseline_at(x)).collect(),
            peaks: (0..self.peaks.len())
                .map(|i| wavelength_nm.iter().map(|&x| self.peak_at(i, x)).collect())
                .collect(),
        }
    }

    /// Full model (baseline + all peaks) at `wavelength_nm`.
    pub fn model_at(&self, wavelength_nm: f64) -> f64 {
        self.baseline_at(wavelength_nm)
            + (0..self.peaks.len())
                .map(|i| self.peak_at(i, wavelength_nm))
                .sum::<f64>()
    }
}

/// Box bound; infinite ends allowed. Mapping follows MINUIT/lmfit (sin for two-sided, sqrt for
/// one-sided) so the solver works on an unbounded internal parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bound {
    lo: f64,
    hi: f64,
}

impl Bound {
    const FREE: Bound = Bound {
        lo: f64::NEG_INFINITY,
        hi: f64::INFINITY,
    };

    fn to_internal(self, x: f64) -> f64 {
        match (self.lo.is_finite(), self.hi.is_finite()) {
            (true, true) => {
                let v = (2.0 * (x - self.lo) / (self.hi - self.lo) - 1.0).clamp(-1.0, 1.0);
                v.asin()
            }
            (true, false) => ((x - self.lo + 1.0).max(1.0).powi(2) - 1.0).sqrt(),
            (false, true) => ((self.hi - x + 1.0).max(1.0).powi(2) - 1.0).sqrt(),
            (false, false) => x,
        }
    }

    /// External value and d(external)/d(internal).
    fn to_external(self, u: f64) -> (f64, f64) {
        match (self.lo.is_finite(), self.hi.is_finite()) {
            (true, true) => {
                let half = 0.5 * (self.hi - self.lo);
                (self.lo + (u.sin() + 1.0) * half, u.cos() * half)
            }
            (true, false) => {
                let r = (u * u + 1.0).sqrt();
                (self.lo - 1.0 + r, u / r)
            }
            (false, true) => {
                let r = (u * u + 1.0).sqrt();
                (self.hi + 1.0 - r, -u / r)
            }
            (false, false) => (u, 1.0),
        }
    }

    fn pin(self, x: f64) -> f64 {
        // Start strictly inside: the sin/sqrt maps have zero slope on the bound itself.
        let (lo, hi) = (self.lo, self.hi);
        let span = if lo.is_finite() && hi.is_finite() {
            hi - lo
        } else {
            1.0
        };
        let eps = 1e-3 * span;
        let mut v = x;
        if lo.is_finite() && v < lo + eps {
            v = lo + eps;
        }
        if hi.is_finite() && v > hi - eps {
            v = hi - eps;
        }
        v
    }

    /// Within 1e-4 of the bounded range (or of 1 in the scaled units of a one-sided bound, e.g. a
    /// height below 1e-4 of the data span) of a bound.
    fn touches(self, x: f64) -> bool {
        let scale = if self.lo.is_finite() && self.hi.is_finite() {
            self.hi - self.lo
        } else {
            1.0
        };
        let tol = 1e-4 * scale;
        (self.lo.is_finite() && x - self.lo <= tol) || (self.hi.is_finite() && self.hi - x <= tol)
    }
}

/// The least-squares problem: data scaled to unit magnitude, parameters in internal (unbounded)
/// coordinates.
struct Problem<'a> {
    x: &'a [f64],
    t: &'a [f64],
    y: &'a [f64],
    shape: LineShape,
    n_peaks: usize,
    n_base: usize,
    bounds: Vec<Bound>,
    /// Mean step of `x` and whether every step equals it (see `Prepared::uniform`).
    step: f64,
    uniform: bool,
    /// Indices of the parameters the solver varies; the others are pinned at a bound.
    free: Vec<usize>,
    internal: DVector<f64>,
    external: Vec<f64>,
    slopes: Vec<f64>,
    /// Compressed Jacobian computed by the last `residuals()` call at the current parameters;
    /// the solver asks for the Jacobian right after, at the same point.
    cache: RefCell<Option<DMatrix<f64>>>,
    /// Jacobian columns and residuals of the last evaluation, reused across evaluations.
    work: RefCell<Columns>,
}

/// Workspace of [`Problem::evaluate`]: the external Jacobian stored column-major (`m` rows per
/// parameter; only `range[k]` of column `k` is meaningful, it is zero elsewhere by definition) and
/// the residual vector.
struct Columns {
    data: Vec<f64>,
    range: Vec<(usize, usize)>,
    r: Vec<f64>,
    baseline_filled: bool,
}

impl Columns {
    fn new(m: usize, k: usize) -> Self {
        Self {
            data: vec![0.0; m * k],
            range: vec![(0, 0); k],
            r: vec![0.0; m],
            baseline_filled: false,
        }
    }
}

/// Dot product with four independent partial sums (the compiler vectorises it; a single running
/// sum would serialise on the addition's latency).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

impl Problem<'_> {
    fn set_internal(&mut self, u: &DVector<f64>) {
        self.cache.replace(None);
        self.internal = u.clone();
        for (j, &k) in self.free.iter().enumerate() {
            let (x, d) = self.bounds[k].to_external(u[j]);
            self.external[k] = x;
            self.slopes[k] = d;
        }
    }

    /// Pins every free parameter that touches a bound at that bound and removes it from the
    /// solver's variables (one active-set step). Returns how many were pinned.
    fn pin_to_bounds(&mut self) -> usize {
        let before = self.free.len();
        let (bounds, external) = (&self.bounds, &mut self.external);
        self.free.retain(|&k| {
            let b = bounds[k];
            if !b.touches(external[k]) {
                return true;
            }
            let lo_d = if b.lo.is_finite() {
                (external[k] - b.lo).abs()
            } else {
                f64::INFINITY
            };
            let hi_d = if b.hi.is_finite() {
                (b.hi - external[k]).abs()
            } else {
                f64::INFINITY
            };
            external[k] = if lo_d <= hi_d { b.lo } else { b.hi };
            false
        });
        let u: Vec<f64> = self
            .free
            .iter()
            .map(|&k| self.bounds[k].to_internal(self.external[k]))
            .collect();
        self.set_internal(&DVector::from_vec(u));
        before - self.free.len()
    }

    /// Peaks prepared for evaluation at the current parameters.
    fn profiles(&self, p: &[f64]) -> Vec<lineshape::Profile> {
        let np = self.shape.n_params();
        (0..self.n_peaks)
            .map(|j| lineshape::Profile::new(self.shape, &p[j * np..(j + 1) * np]))
            .collect()
    }

    fn model(&self, profiles: &[lineshape::Profile], p: &[f64], i: usize, grad: &mut [f64]) -> f64 {
        let np = self.shape.n_params();
        let mut total = 0.0;
        for (j, prof) in profiles.iter().enumerate() {
            total += prof.eval(self.x[i], &mut grad[j * np..(j + 1) * np]);
        }
        let off = self.n_peaks * np;
        let mut tp = 1.0;
        for k in 0..self.n_base {
            grad[off + k] = tp;
            total += p[off + k] * tp;
            tp *= self.t[i];
        }
        total
    }

    /// Full residual vector r = model − data (scaled units).
    fn full_residuals(&self) -> Option<DVector<f64>> {
        let profiles = self.profiles(&self.external);
        let mut g = vec![0.0; self.external.len()];
        let r = DVector::from_fn(self.x.len(), |i, _| {
            self.model(&profiles, &self.external, i, &mut g) - self.y[i]
        });
        r.iter().all(|v| v.is_finite()).then_some(r)
    }

    /// Fills `work` with the Jacobian w.r.t. the external parameters, column by column over each
    /// column's support (a Gaussian is exactly 0 beyond 9σ, so its three columns are stored only
    /// where it is not), and the residual vector r = model − data.
    fn evaluate(&self, work: &mut Columns) -> bool {
        let m = self.x.len();
        let np = self.shape.n_params();
        let p = &self.external;
        let off = self.n_peaks * np;
        // Baseline: the columns are powers of t, fixed for the problem (filled once).
        if !work.baseline_filled {
            for k in 0..self.n_base {
                let col = &mut work.data[(off + k) * m..(off + k + 1) * m];
                for (c, &t) in col.iter_mut().zip(self.t) {
                    *c = t.powi(k as i32);
                }
                work.range[off + k] = (0, m);
            }
            work.baseline_filled = true;
        }
        let r = &mut work.r;
        r.iter_mut().for_each(|v| *v = 0.0);
        for k in 0..self.n_base {
            let coef = p[off + k];
            let col = &work.data[(off + k) * m..(off + k + 1) * m];
            for (v, c) in r.iter_mut().zip(col) {
                *v += coef * c;
            }
        }
        let mut grad = [0.0; 4];
        for j in 0..self.n_peaks {
            let pp = &p[j * np..(j + 1) * np];
            let (data, range) = (&mut work.data, &mut work.range);
            let block = &mut data[j * np * m..(j + 1) * np * m];
            if self.shape == LineShape::Gaussian {
                let (h, ctr, w) = (pp[0], pp[1], pp[2]);
                // Computed as `lineshape::Profile` does, so the cut falls on the same points.
                let inv_s = 1.0 / (w / GAUSS_FWHM_PER_SIGMA);
                let inv_w = 1.0 / w;
                // The same cut as `lineshape::Profile::eval`: |u| ≤ 9 (u is monotone in x).
                let lo = self.x.partition_point(|&x| (x - ctr) * inv_s < -9.0);
                // `max`: a slice range never inverts, even for a width the bounds should exclude.
                let hi = self
                    .x
                    .partition_point(|&x| (x - ctr) * inv_s <= 9.0)
                    .max(lo);
                let (c0, rest) = block.split_at_mut(m);
                let (c1, c2) = rest.split_at_mut(m);
                // On a uniform axis exp(−u²/2) follows g(i+1) = g(i)·ρ(i), ρ(i+1) = ρ(i)·q with
                // ρ(i) = exp(−u(i)δ − δ²/2) and q = exp(−δ²), δ = step/σ: two products per point
                // instead of an `exp` (relative error ~1e-13 over a 9σ support).
                let delta = self.step * inv_s;
                let q = (-delta * delta).exp();
                let (mut g, mut rho) = (0.0, 0.0);
                for i in lo..hi {
                    let u = (self.x[i] - ctr) * inv_s;
                    if i == lo || !self.uniform {
                        g = (-0.5 * u * u).exp();
                        if self.uniform {
                            rho = (-u * delta - 0.5 * delta * delta).exp();
                        }
                    }
                    let hg = h * g;
                    c0[i] = g;
                    c1[i] = hg * u * inv_s;
                    c2[i] = hg * u * u * inv_w;
                    r[i] += hg;
                    g *= rho;
                    rho *= q;
                }
                for a in 0..3 {
                    range[j * np + a] = (lo, hi);
                }
            } else {
                let prof = lineshape::Profile::new(self.shape, pp);
                for i in 0..m {
                    r[i] += prof.eval(self.x[i], &mut grad[..np]);
                    for (a, g) in grad[..np].iter().enumerate() {
                        block[a * m + i] = *g;
                    }
                }
                for a in 0..np {
                    range[j * np + a] = (0, m);
                }
            }
        }
        for (v, y) in r.iter_mut().zip(self.y) {
            *v -= y;
        }
        r.iter().all(|v| v.is_finite())
    }

    /// Normal equations JᵀJ, Jᵀr and ‖r‖² from the Jacobian's columns: each entry is one dot
    /// product over the overlap of two columns' supports (peaks far apart share none).
    /// `internal` applies the bound-transform slopes (Jacobian w.r.t. the free internal
    /// parameters).
    fn normal_equations(&self, internal: bool) -> Option<(DMatrix<f64>, DVector<f64>, f64)> {
        let mut work = self.work.borrow_mut();
        if !self.evaluate(&mut work) {
            return None;
        }
        let m = self.x.len();
        let all: Vec<usize> = (0..self.external.len()).collect();
        let cols: &[usize] = if internal { &self.free } else { &all };
        let slope = |k: usize| if internal { self.slopes[k] } else { 1.0 };
        let n = cols.len();
        let col = |k: usize, lo: usize, hi: usize| &work.data[k * m + lo..k * m + hi];
        let mut jtj: DMatrix<f64> = DMatrix::zeros(n, n);
        let mut jtr: DVector<f64> = DVector::zeros(n);
        for (a, &ka) in cols.iter().enumerate() {
            let (alo, ahi) = work.range[ka];
            let sa = slope(ka);
            jtr[a] = sa * dot(col(ka, alo, ahi), &work.r[alo..ahi]);
            for (b, &kb) in cols.iter().enumerate().skip(a) {
                let (blo, bhi) = work.range[kb];
                let (lo, hi) = (alo.max(blo), ahi.min(bhi));
                if lo >= hi {
                    continue;
                }
                let v = sa * slope(kb) * dot(col(ka, lo, hi), col(kb, lo, hi));
                jtj[(a, b)] = v;
                jtj[(b, a)] = v;
            }
        }
        let rr = dot(&work.r, &work.r);
        let finite = rr.is_finite() && jtj.iter().chain(jtr.iter()).all(|v| v.is_finite());
        finite.then_some((jtj, jtr, rr))
    }

    /// Compressed problem with the same normal equations and the same residual norm:
    /// with JᵀJ = RᵀR (Cholesky), J' = [R; 0] and r' = [R⁻ᵀJᵀr; √(‖r‖² − ‖R⁻ᵀJᵀr‖²)].
    /// Levenberg–Marquardt steps, predicted and actual reductions are identical to those of the
    /// full m-row problem, but the solver's QR works on (n+1)×n instead of m×n.
    fn compressed(&self) -> Option<(DMatrix<f64>, DVector<f64>)> {
        let (jtj, jtr, rr) = self.normal_equations(true)?;
        let n = jtj.nrows();
        let chol = jtj.clone().cholesky().or_else(|| {
            // Rank-deficient direction (e.g. a peak with zero height): a relative ridge of
            // 1e-12 keeps the factor finite without changing well-determined directions.
            let mut ridged = jtj.clone();
            let scale = (0..n)
                .map(|k| jtj[(k, k)])
                .fold(0.0_f64, f64::max)
                .max(1e-300);
            for k in 0..n {
                ridged[(k, k)] += 1e-12 * scale;
            }
            ridged.cholesky()
        })?;
        let l = chol.l();
        let rc = l.solve_lower_triangular(&jtr)?;
        let s = (rr - rc.norm_squared()).max(0.0).sqrt();
        let mut jac: DMatrix<f64> = DMatrix::zeros(n + 1, n);
        jac.view_mut((0, 0), (n, n)).copy_from(&l.transpose());
        let mut res: DVector<f64> = DVector::zeros(n + 1);
        res.rows_mut(0, n).copy_from(&rc);
        res[n] = s;
        let ok = jac.iter().chain(res.iter()).all(|v| v.is_finite());
        ok.then_some((jac, res))
    }
}

impl LeastSquaresProblem<f64, Dyn, Dyn> for Problem<'_> {
    type ResidualStorage = Owned<f64, Dyn>;
    type JacobianStorage = Owned<f64, Dyn, Dyn>;
    type ParameterStorage = Owned<f64, Dyn>;

    fn set_params(&mut self, x: &DVector<f64>) {
        self.set_internal(x);
    }

    fn params(&self) -> DVector<f64> {
        self.internal.clone()
    }

    fn residuals(&self) -> Option<DVector<f64>> {
        let (jac, res) = self.compressed()?;
        self.cache.replace(Some(jac));
        Some(res)
    }

    fn jacobian(&self) -> Option<DMatrix<f64>> {
        match self.cache.borrow_mut().take() {
            Some(j) => Some(j),
            None => self.compressed().map(|c| c.0),
        }
    }
}

fn param_names(shape: LineShape) -> &'static [&'static str] {
    match shape {
        LineShape::Gaussian | LineShape::Lorentzian => &["height", "center", "fwhm"],
        LineShape::PseudoVoigt => &["height", "center", "fwhm", "eta"],
        LineShape::Voigt => &["height", "center", "sigma", "gamma"],
    }
}

const BASE_NAMES: [&str; 3] = ["baseline_c0", "baseline_c1", "baseline_c2"];

fn validate(settings: &FitSettings) -> Result<(), FitError> {
    let n = match settings.peaks {
        PeakCount::Auto { max } | PeakCount::Fixed(max) => max,
    };
    if n == 0 || n > MAX_PEAKS {
        return Err(FitError::InvalidSettings(format!(
            "number of peaks must be 1..={MAX_PEAKS}, got {n}"
        )));
    }
    if let Some((a, b)) = settings.window_nm {
        if !(a.is_finite() && b.is_finite() && b > a) {
            return Err(FitError::InvalidSettings(format!(
                "fit window {a}..{b} nm is not an increasing finite range"
            )));
        }
    }
    if let Some((a, b)) = settings.fwhm_bounds_nm {
        if !(a.is_finite() && b.is_finite() && a > 0.0 && b > a) {
            return Err(FitError::InvalidSettings(format!(
                "FWHM bounds {a}..{b} nm must satisfy 0 < min < max"
            )));
        }
    }
    if !(settings.min_prominence_noise.is_finite() && settings.min_prominence_noise >= 0.0) {
        return Err(FitError::InvalidSettings(
            "min_prominence_noise must be finite and >= 0".into(),
        ));
    }
    if settings.patience == 0 {
        return Err(FitError::InvalidSettings("patience must be > 0".into()));
    }
    Ok(())
}

/// Data prepared once for all fits of a spectrum.
struct Prepared {
    x: Vec<f64>,
    y: Vec<f64>,
    t: Vec<f64>,
    scale: f64,
    offset: f64,
    mid: f64,
    half: f64,
    step: f64,
    /// The axis is uniform (every step within 1e-9 of the mean): Gaussians are evaluated by
    /// recurrence instead of one `exp` per point.
    uniform: bool,
    window: (f64, f64),
}

fn prepare(spectrum: &Spectrum, settings: &FitSettings) -> Result<(Spectrum, Prepared), FitError> {
    let s = match settings.window_nm {
        Some((a, b)) => preprocess::crop(spectrum, a, b)?,
        None => spectrum.clone(),
    };
    let x = s.wavelength_nm().to_vec();
    let (lo, hi) = s.range_nm();
    let mid = 0.5 * (lo + hi);
    let half = 0.5 * (hi - lo);
    let t = x.iter().map(|v| (v - mid) / half).collect();
    // Work on y' = (y − offset)/scale so heights are O(1) whatever the units.
    let raw = s.values();
    // Without a baseline term the model has no room for an offset, so none is removed.
    let offset = if settings.baseline == Baseline::None {
        0.0
    } else {
        raw.iter().sum::<f64>() / raw.len() as f64
    };
    let scale = raw
        .iter()
        .map(|v| (v - offset).abs())
        .fold(0.0_f64, f64::max);
    let scale = if scale > 0.0 && scale.is_finite() {
        scale
    } else {
        1.0
    };
    let y = raw.iter().map(|v| (v - offset) / scale).collect();
    let step = s.mean_step_nm();
    let uniform = x
        .windows(2)
        .all(|w| ((w[1] - w[0]) - step).abs() <= 1e-9 * step);
    Ok((
        s,
        Prepared {
            x,
            y,
            t,
            scale,
            offset,
            mid,
            half,
            step,
            uniform,
            window: (lo, hi),
        },
    ))
}

fn odd(n: usize) -> usize {
    if n & 1 == 0 {
        n + 1
    } else {
        n
    }
}

/// Automatic initial guesses: a modpoly baseline under the peaks, scipy-style peak detection on the
/// smoothed remainder (which also sets the smoothing scale), then second-derivative bands, which
/// locate both resolved peaks and shoulders of overlapping ones. Strongest first, at most `max`;
/// fewer are returned when fewer stand out of the noise. Also returns the noise estimate.
pub fn guess_peaks(
    spectrum: &Spectrum,
    settings: &FitSettings,
    max: usize,
) -> Result<(Vec<PeakGuess>, f64), FitError> {
    let uniform = if spectrum.is_uniform() {
        spectrum.clone()
    } else {
        preprocess::resample_uniform(spectrum)?
    };
    let n = uniform.len();
    let base_deg = settings.baseline.n_params().saturating_sub(1);
    let base = if settings.baseline == Baseline::None {
        uniform.with_values(vec![0.0; n])?
    } else {
        preprocess::polynomial_baseline(&uniform, base_deg, 100)?
    };
    let resid = preprocess::subtract(&uniform, &base)?;
    let noise = peaks::estimate_noise(uniform.values());
    let vmax = uniform
        .values()
        .iter()
        .fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    let vmin = uniform
        .values()
        .iter()
        .fold(f64::INFINITY, |a, &b| a.min(b));
    let span = vmax - vmin;
    let max_abs = vmax.abs().max(vmin.abs());
    let tiny = 1e-9 * max_abs.max(f64::MIN_POSITIVE);
    if span.is_nan() || span <= tiny {
        return Err(FitError::NoPeaksFound { noise, span });
    }
    let largest_odd = if n & 1 == 1 { n } else { n - 1 };
    let light = odd((n / 100).clamp(5, 31)).min(largest_odd);
    let smoothed = if light >= 5 {
        preprocess::smooth(&resid, light, 3)?
    } else {
        resid.clone()
    };
    let signs: &[f64] = if settings.allow_negative {
        &[1.0, -1.0]
    } else {
        &[1.0]
    };
    let step = uniform.mean_step_nm();
    let min_prom = (settings.min_prominence_noise * noise)
        .max(1e-3 * span)
        .max(tiny);
    // (strength, guess)
    let mut cands: Vec<((u8, f64), PeakGuess)> = Vec::new();
    for &sign in signs {
        let sig = smoothed.with_values(smoothed.values().iter().map(|a| sign * a).collect())?;
        let found = peaks::find_peaks(
            &sig,
            &PeakOptions {
                prominence: Some(min_prom),
                ..PeakOptions::default()
            },
        );
        if found.is_empty() {
            continue;
        }
        // Curvature on a scale of half the narrowest detected peak: wide enough to beat the
        // noise, narrow enough to keep close peaks apart.
        let narrowest = found
            .iter()
            .map(|p| p.width_samples)
            .fold(f64::INFINITY, f64::min);
        let w2 = odd(((0.5 * narrowest) as usize).clamp(5, 301)).min(largest_odd);
        let mut bands = Vec::new();
        if w2 >= 5 {
            let raw = resid.with_values(resid.values().iter().map(|a| sign * a).collect())?;
            bands = peaks::curvature_bands(&raw, w2, 0.05)?;
        }
        // Every local maximum of the smoothed signal ranks before every shoulder: a resolved
        // peak is real, however small, while curvature bands on the flanks of a tall peak can
        // score high. A maximum takes the position and width of the curvature band under it
        // (sharper for overlapping peaks); bands under no maximum are shoulders.
        let band_guess = |b: &peaks::CurvatureBand| {
            let h = sig.values()[b.index];
            let fwhm = b
                .inflection_width_nm
                .map_or(10.0 * step, |w| 0.5 * w * GAUSS_FWHM_PER_SIGMA);
            // For a Gaussian, −y''·σ² equals the height; noise bands are narrow and score low.
            let sigma = fwhm / GAUSS_FWHM_PER_SIGMA;
            let strength = (-b.curvature * sigma * sigma).min(h);
            (h, strength, fwhm)
        };
        let mut claimed = vec![false; bands.len()];
        for p in &found {
            let near = bands
                .iter()
                .enumerate()
                .filter(|(i, b)| {
                    !claimed[*i] && (b.wavelength_nm - p.wavelength_nm).abs() < 0.5 * p.width_nm
                })
                .min_by(|a, b| {
                    (a.1.wavelength_nm - p.wavelength_nm)
                        .abs()
                        .total_cmp(&(b.1.wavelength_nm - p.wavelength_nm).abs())
                })
                .map(|(i, _)| i);
            let (center, fwhm) = match near {
                Some(i) => {
                    claimed[i] = true;
                    let (_, _, fwhm) = band_guess(&bands[i]);
                    (bands[i].wavelength_nm, fwhm.min(p.width_nm))
                }
                None => (p.wavelength_nm, p.width_nm),
            };
            cands.push((
                (1, p.prominence),
                PeakGuess {
                    center_nm: center,
                    height: sign * p.value,
                    fwhm_nm: fwhm.max(2.0 * step),
                },
            ));
        }
        for (b, _) in bands.iter().zip(&claimed).filter(|(_, c)| !**c) {
            let (h, strength, fwhm) = band_guess(b);
            if h < min_prom || strength < min_prom {
                continue;
            }
            cands.push((
                (0, strength),
                PeakGuess {
                    center_nm: b.wavelength_nm,
                    height: sign * h,
                    fwhm_nm: fwhm.max(2.0 * step),
                },
            ));
        }
    }
    if cands.is_empty() {
        return Err(FitError::NoPeaksFound { noise, span });
    }
    cands.sort_by(|a, b| b.0 .0.cmp(&a.0 .0).then(b.0 .1.total_cmp(&a.0 .1)));
    Ok((cands.into_iter().map(|c| c.1).take(max).collect(), noise))
}

/// A smoothed residual bump taller than this many standard deviations of the smoothed noise
/// (σ/√w for a moving average over w points) is structure the model has not explained: the fit
/// adds or moves a peak there. White noise alone exceeds 4 such σ about once in 10⁴ spectra
/// of 2,048 points.
pub const RESIDUAL_SIGMA: f64 = 6.0;
/// Most add/swap rounds of the residual-driven repair of one fit.
const MAX_REPAIR_ROUNDS: usize = 8;
/// Evaluation budget (per parameter) of a repair's trial fit: a trial starts from a converged
/// fit plus one moved peak and converges in a few dozen evaluations when it is any good; one
/// that wanders is abandoned early instead of costing a full budget.
const REPAIR_PATIENCE: usize = 12;

/// The largest bump of the smoothed residual of a fit (original units).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bump {
    guess: PeakGuess,
    /// Points averaged by the smoothing (the smoothed noise is σ/√window).
    window: usize,
}

/// Parameter vectors of the fitted peaks, for fast evaluation.
fn peak_params(fit: &PeakFit) -> Vec<Vec<f64>> {
    fit.peaks
        .iter()
        .map(|p| p.params.iter().map(|q| q.value).collect())
        .collect()
}

/// Residual y − model (original units) at the prepared points.
fn residuals(prep: &Prepared, fit: &PeakFit) -> Vec<f64> {
    let profiles: Vec<lineshape::Profile> = peak_params(fit)
        .iter()
        .map(|v| lineshape::Profile::new(fit.shape, v))
        .collect();
    let mut grad = [0.0; 4];
    let np = fit.shape.n_params();
    prep.x
        .iter()
        .zip(&prep.y)
        .map(|(&x, &y)| {
            let mut model = fit.baseline_at(x);
            for p in &profiles {
                model += p.eval(x, &mut grad[..np]);
            }
            y * prep.scale + prep.offset - model
        })
        .collect()
}

/// Largest bump of the residual of `fit`, smoothed by a moving average about a quarter of the
/// narrowest fitted peak wide (so a missing peak keeps its height and the noise shrinks), with its
/// half-height width. Signed: negative bumps count only when negative peaks are allowed.
fn residual_bump(prep: &Prepared, fit: &PeakFit, allow_negative: bool, sigma: f64) -> Option<Bump> {
    let r = residuals(prep, fit);
    // Junk peaks (stuck, or no taller than the noise) say nothing about the widths present.
    let narrowest = fit
        .peaks
        .iter()
        .enumerate()
        .filter(|(j, _)| !junk(fit, *j, sigma))
        .map(|(_, p)| p.fwhm_nm)
        .fold(f64::INFINITY, f64::min);
    bump_of(prep, &r, narrowest, allow_negative)
}

/// Largest bump of residual `r` (any units) smoothed over about a quarter of `narrowest` nm.
fn bump_of(prep: &Prepared, r: &[f64], narrowest: f64, allow_negative: bool) -> Option<Bump> {
    let n = r.len();
    if n < 3 {
        return None;
    }
    let pts = if narrowest.is_finite() && prep.step > 0.0 {
        (0.25 * narrowest / prep.step).round() as usize
    } else {
        5
    };
    let w = odd(pts.clamp(3, 51)).min(if n & 1 == 1 { n } else { n - 1 });
    let half = w / 2;
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0.0);
    for v in r {
        let last = prefix.last().copied().unwrap_or(0.0);
        prefix.push(last + v);
    }
    let smoothed: Vec<f64> = (0..n)
        .map(|i| {
            let a = i.saturating_sub(half);
            let b = (i + half + 1).min(n);
            (prefix[b] - prefix[a]) / (b - a) as f64
        })
        .collect();
    let key = |v: f64| if allow_negative { v.abs() } else { v };
    let (i, v) = smoothed
        .iter()
        .copied()
        .enumerate()
        .max_by(|a, b| key(a.1).total_cmp(&key(b.1)))?;
    if !(v.is_finite() && key(v) > 0.0) {
        return None;
    }
    let above = |k: usize| key(smoothed[k]) > 0.5 * key(v);
    let mut lo = i;
    while lo > 0 && above(lo - 1) {
        lo -= 1;
    }
    let mut hi = i;
    while hi + 1 < n && above(hi + 1) {
        hi += 1;
    }
    let range = prep.window.1 - prep.window.0;
    // a spectrum of a few points can make half its range narrower than three steps
    let narrow = 3.0 * prep.step;
    let fwhm = (prep.x[hi] - prep.x[lo]).clamp(narrow, (0.5 * range).max(narrow));
    Some(Bump {
        guess: PeakGuess {
            center_nm: prep.x[i],
            height: v,
            fwhm_nm: fwhm,
        },
        window: w,
    })
}

fn guesses_of(fit: &PeakFit) -> Vec<PeakGuess> {
    fit.peaks
        .iter()
        .map(|p| PeakGuess {
            center_nm: p.center_nm,
            height: p.amplitude,
            fwhm_nm: p.fwhm_nm,
        })
        .collect()
}

/// Peaks with a height, center or width at its bound.
fn stuck(fit: &PeakFit) -> usize {
    fit.peaks
        .iter()
        .filter(|p| p.params.iter().take(3).any(|q| q.at_bound))
        .count()
}

fn degenerate(fit: &PeakFit) -> bool {
    stuck(fit) > 0
}

/// Peak `j` is stuck at a bound or no taller than 3 noise σ: it explains nothing visible.
fn junk(fit: &PeakFit, j: usize, sigma: f64) -> bool {
    fit.peaks.get(j).is_some_and(|p| {
        p.params.iter().take(3).any(|q| q.at_bound) || p.amplitude.abs() <= 3.0 * sigma
    })
}

/// Peaks worth removing to make room for a new one, most likely first: a [`junk`] peak,
/// the weakest peak (height² × width), and the weaker of the most overlapping pair.
fn removal_candidates(fit: &PeakFit, sigma: f64) -> Vec<usize> {
    let energy = |p: &FittedPeak| p.amplitude * p.amplitude * p.fwhm_nm;
    let mut out = Vec::new();
    if let Some(j) = (0..fit.peaks.len()).find(|&j| junk(fit, j, sigma)) {
        out.push(j);
    }
    if let Some((j, _)) = fit
        .peaks
        .iter()
        .enumerate()
        .min_by(|a, b| energy(a.1).total_cmp(&energy(b.1)))
    {
        out.push(j);
    }
    // Peaks are sorted by center: neighbours are adjacent.
    let closest = (1..fit.peaks.len()).min_by(|&a, &b| {
        let sep = |k: usize| {
            let (p, q) = (&fit.peaks[k - 1], &fit.peaks[k]);
            (q.center_nm - p.center_nm) / (0.5 * (p.fwhm_nm + q.fwhm_nm)).max(f64::MIN_POSITIVE)
        };
        sep(a).total_cmp(&sep(b))
    });
    if let Some(k) = closest {
        let j = if energy(&fit.peaks[k - 1]) <= energy(&fit.peaks[k]) {
            k - 1
        } else {
            k
        };
        out.push(j);
    }
    let mut seen = Vec::new();
    out.retain(|j| {
        let new = !seen.contains(j);
        seen.push(*j);
        new
    });
    out
}

/// Detected guesses without near-duplicates (a weaker guess within a quarter of the narrower
/// width of a stronger one is dropped); strongest first, as `guess_peaks` returns them.
fn distinct(detected: &[PeakGuess]) -> Vec<PeakGuess> {
    let mut out: Vec<PeakGuess> = Vec::new();
    for g in detected {
        let dup = out.iter().any(|o| {
            (o.center_nm - g.center_nm).abs() < 0.25 * o.fwhm_nm.min(g.fwhm_nm)
                && o.height.signum() == g.height.signum()
        });
        if !dup {
            out.push(*g);
        }
    }
    out
}

/// How a repair judges a changed model: a fixed count by χ², an automatic count by BIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Judge {
    Fixed,
    Auto,
}

/// Record of the models fitted along the way (for `PeakFit::model_selection`).
#[derive(Default)]
struct Trail {
    tried: Vec<ModelCandidate>,
    last_err: Option<FitError>,
}

impl Trail {
    fn fit(
        &mut self,
        prep: &Prepared,
        settings: &FitSettings,
        guesses: &[PeakGuess],
    ) -> Option<PeakFit> {
        match fit_prepared(prep, settings, guesses) {
            Ok(f) => {
                self.tried.push(ModelCandidate {
                    n_peaks: guesses.len(),
                    bic: Some(f.statistics.bic),
                    aic: Some(f.statistics.aic),
                    error: None,
                });
                Some(f)
            }
            Err(e) => {
                self.tried.push(ModelCandidate {
                    n_peaks: guesses.len(),
                    bic: None,
                    aic: None,
                    error: Some(e.to_string()),
                });
                self.last_err = Some(e);
                None
            }
        }
    }
}

/// Residual-driven repair: while the smoothed residual has a bump above [`RESIDUAL_SIGMA`] σ,
/// add a peak there (when the count allows it and, for an automatic count, the BIC drops) or move
/// one (remove a candidate from [`removal_candidates`], add the bump) when χ² drops. Ends when the
/// residual is clean or no change improves the fit.
fn repair(
    prep: &Prepared,
    settings: &FitSettings,
    mut fit: PeakFit,
    limit: usize,
    sigma: f64,
    judge: Judge,
    trail: &mut Trail,
) -> PeakFit {
    let trial = FitSettings {
        patience: settings.patience.min(REPAIR_PATIENCE),
        ..settings.clone()
    };
    let settings = &trial;
    for _ in 0..MAX_REPAIR_ROUNDS {
        let Some(bump) = residual_bump(prep, &fit, settings.allow_negative, sigma) else {
            break;
        };
        let clean =
            bump.guess.height.abs() <= RESIDUAL_SIGMA * sigma / (bump.window.max(1) as f64).sqrt();
        let has_junk = (0..fit.peaks.len()).any(|j| junk(&fit, j, sigma));
        if clean && !has_junk {
            break;
        }
        let mut next: Option<PeakFit> = None;
        let better = |cand: &PeakFit, best: &PeakFit, by_bic: bool| {
            if by_bic {
                cand.statistics.bic < best.statistics.bic
            } else {
                cand.statistics.chi_square < best.statistics.chi_square * (1.0 - 1e-9)
            }
        };
        if !clean && fit.peaks.len() < limit {
            let mut g = guesses_of(&fit);
            g.push(bump.guess);
            if let Some(c) = trail.fit(prep, settings, &g) {
                if better(&c, &fit, judge == Judge::Auto) {
                    next = Some(c);
                }
            }
        }
        if next.is_none() {
            for j in removal_candidates(&fit, sigma) {
                let mut g = guesses_of(&fit);
                g.remove(j);
                // A fixed count moves the peak to the bump (a stuck one too, however small the
                // bump); an automatic count drops a stuck peak when the residual is clean.
                let drop = clean && judge == Judge::Auto;
                if !drop {
                    g.push(bump.guess);
                }
                if g.is_empty() {
                    continue;
                }
                let Some(c) = trail.fit(prep, settings, &g) else {
                    continue;
                };
                // Moving a peak keeps the count (χ²); dropping a stuck one changes it (BIC).
                let reference = next.as_ref().unwrap_or(&fit);
                if better(&c, reference, drop) || (drop && next.is_none() && !degenerate(&c)) {
                    next = Some(c);
                }
            }
        }
        match next {
            Some(n) => fit = n,
            None => break,
        }
    }
    fit
}

/// Global goodness-of-fit alarm: χ²_ν above the noise variance by this many standard
/// deviations of χ²_ν (√(2/ν) for a correct model with Gaussian noise). The noise estimate
/// (median of second differences) scatters by about ±5 %, which alone spreads this score with a
/// standard deviation near 2 on 2,048 points; at 8 a correct fit almost never pays for the search.
const EXCHANGE_GLOBAL_Z: f64 = 8.0;
/// Most exchange rounds (each keeps the best improving move).
const EXCHANGE_ROUNDS: usize = 3;
/// Moves of one exchange round that get a nonlinear trial fit (the best by a linearised step).
const EXCHANGE_TRIALS: usize = 12;
/// Evaluation budget (per parameter) of an exchange trial fit.
const EXCHANGE_PATIENCE: usize = 8;

/// Whether a converged fit deserves the exchange search: its χ² is far above what the noise
/// explains, or two of its peaks share a center, or one is [`junk`]. Most fits pass, and pay
/// nothing for the search.
fn suspicious(prep: &Prepared, settings: &FitSettings, fit: &PeakFit, sigma: f64) -> bool {
    let n = fit.statistics.n_points as f64;
    let dof = (n - fit.statistics.n_params as f64).max(1.0);
    let noise2 = sigma * sigma;
    if noise2.is_nan() || noise2 <= 0.0 {
        return false;
    }
    let global = (fit.statistics.reduced_chi_square / noise2 - 1.0) * (0.5 * dof).sqrt();
    if global > EXCHANGE_GLOBAL_Z {
        return true;
    }
    if (0..fit.peaks.len()).any(|j| junk(fit, j, sigma)) {
        return true;
    }
    // Peaks are sorted by center: twins are neighbours.
    let twins = fit
        .peaks
        .windows(2)
        .any(|w| (w[1].center_nm - w[0].center_nm).abs() < 0.25 * w[0].fwhm_nm.min(w[1].fwhm_nm));
    if twins {
        return true;
    }
    let r = residuals(prep, fit);
    if local_misfit(&r) > LOCAL_MISFIT_Z {
        return true;
    }
    unexplained_peak(prep, settings, fit, &r, sigma) > UNEXPLAINED_PEAK_CHI2
}

/// Matched-filter alarm threshold ([`unexplained_peak`]), in noise variances: a 5σ detection.
/// White noise gives the maximum of a few hundred correlated χ²₁ values, and healthy fits of the
/// tuning set scored median 2.2, p99 12.7 (seeds 500..1500 of the hard family).
const UNEXPLAINED_PEAK_CHI2: f64 = 25.0;

/// Local goodness-of-fit alarm: the largest excess of Σ r² over a window, in standard deviations
/// (see [`local_misfit`]), above which a fit is searched further.
const LOCAL_MISFIT_Z: f64 = 8.0;

/// Largest local excess of the squared residual: over windows of 16, 32, … points (up to half
/// the spectrum), the score Σ (r²/s² − 1) / √(2w), with s² the mean square residual of the whole
/// fit, so the noise estimate's bias does not enter. A correct model scores a few units (the
/// maximum of ~10³ overlapping, correlated scores: median 3.8, p99 6.2 over 500 tuning spectra of
/// the hard family); a peak left out between fitted ones leaves a W-shaped residual that a moving
/// average cancels but its square does not.
fn local_misfit(r: &[f64]) -> f64 {
    let m = r.len();
    let s2 = r.iter().map(|v| v * v).sum::<f64>() / m.max(1) as f64;
    if !(s2.is_finite() && s2 > 0.0) {
        return 0.0;
    }
    let mut prefix = Vec::with_capacity(m + 1);
    prefix.push(0.0);
    let mut acc = 0.0;
    for v in r {
        acc += v * v / s2 - 1.0;
        prefix.push(acc);
    }
    let mut best = 0.0_f64;
    let mut w = 16;
    while w <= m / 2 {
        let norm = 1.0 / (2.0 * w as f64).sqrt();
        // Quarter-window steps: a bump is never cut by more than an eighth of a window.
        let step = (w / 4).max(1);
        let mut i = 0;
        while i + w <= m {
            best = best.max((prefix[i + w] - prefix[i]) * norm);
            i += step;
        }
        w *= 2;
    }
    best
}

/// Exchange search, run on a [`suspicious`] fit: each move splits one peak into two (centers
/// ±¼ FWHM, FWHM ×0.8, heights ×0.62: the same area and second moment) and removes another
/// ([`removal_candidates`] and every stuck peak), or removes one and adds one where a matched
/// filter finds the most signal ([`relocations`]), so the count stays. The best move that lowers
/// χ² by more than the noise could (2σ², one parameter's worth) and leaves no more peaks at a
/// bound is kept; up to [`EXCHANGE_ROUNDS`] rounds. Moves are ranked by one linearised step and
/// the best [`EXCHANGE_TRIALS`] get a nonlinear trial fit. This escapes the local minima the
/// residual repair cannot see: a pair fitted as one wide peak while a spare peak sits on a
/// neighbour's flank or on the baseline, or a broad low peak absorbed by a curved baseline.
fn exchange(
    prep: &Prepared,
    settings: &FitSettings,
    mut fit: PeakFit,
    sigma: f64,
    trail: &mut Trail,
) -> PeakFit {
    let trial = FitSettings {
        patience: settings.patience.min(EXCHANGE_PATIENCE),
        ..settings.clone()
    };
    let margin = 2.0 * sigma * sigma;
    for round in 0..EXCHANGE_ROUNDS {
        // The caller found the fit suspicious; later rounds check again.
        if fit.peaks.len() < 2 || (round > 0 && !suspicious(prep, settings, &fit, sigma)) {
            break;
        }
        // Every stuck peak is a candidate, not only the first (a wide peak pressed against the
        // width bound often has a twin trading signal with the baseline).
        let mut removals = removal_candidates(&fit, sigma);
        for j in 0..fit.peaks.len() {
            if junk(&fit, j, sigma) && !removals.contains(&j) {
                removals.push(j);
            }
        }
        // Every move is scored by one linearised step (a solve as cheap as one evaluation of
        // the fit); only the most promising get a nonlinear trial fit.
        let current = guesses_of(&fit);
        let mut moves: Vec<(f64, Vec<PeakGuess>)> = Vec::new();
        for j in 0..fit.peaks.len() {
            if junk(&fit, j, sigma) {
                continue;
            }
            let p = &fit.peaks[j];
            let half = |side: f64| PeakGuess {
                center_nm: p.center_nm + side * 0.25 * p.fwhm_nm,
                height: 0.62 * p.amplitude,
                fwhm_nm: 0.8 * p.fwhm_nm,
            };
            for &r in removals.iter().filter(|&&r| r != j) {
                let mut g: Vec<PeakGuess> = current
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| *k != j && *k != r)
                    .map(|(_, g)| *g)
                    .collect();
                g.push(half(-1.0));
                g.push(half(1.0));
                if let Some(scored) = linear_score(prep, settings, &g, None, 0..prep.x.len()) {
                    moves.push(scored);
                }
            }
        }
        for g in relocations(prep, settings, &fit, &removals) {
            if let Some(scored) = linear_score(prep, settings, &g, None, 0..prep.x.len()) {
                moves.push(scored);
            }
        }
        moves.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut best: Option<PeakFit> = None;
        for (_, g) in moves.into_iter().take(EXCHANGE_TRIALS) {
            let Some(c) = trail.fit(prep, &trial, &g) else {
                continue;
            };
            let reference = best.as_ref().unwrap_or(&fit);
            let gain = reference.statistics.chi_square - c.statistics.chi_square;
            // Never trade for more peaks stuck at a bound than the fit has now.
            if gain > margin && stuck(&c) <= stuck(reference) {
                best = Some(c);
            }
        }
        match best {
            Some(b) => fit = b,
            None => break,
        }
    }
    fit
}

/// Orthonormal basis of the baseline's columns over the points (modified Gram–Schmidt); `None`
/// when they are degenerate.
fn baseline_basis(prep: &Prepared, n_base: usize) -> Option<Vec<Vec<f64>>> {
    let mut q: Vec<Vec<f64>> = Vec::with_capacity(n_base);
    for k in 0..n_base {
        let mut v: Vec<f64> = prep.t.iter().map(|t| t.powi(k as i32)).collect();
        for u in &q {
            let d = dot(u, &v);
            v.iter_mut().zip(u).for_each(|(a, b)| *a -= d * b);
        }
        let norm = dot(&v, &v).sqrt();
        if !(norm.is_finite() && norm > 0.0) {
            return None;
        }
        v.iter_mut().for_each(|a| *a /= norm);
        q.push(v);
    }
    Some(q)
}

/// One candidate of a matched-filter scan: the χ² a Gaussian of this center and FWHM would remove
/// from the residual alone (same units as the residual, squared), and its height.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    score: f64,
    center_nm: f64,
    fwhm_nm: f64,
    height: f64,
}

/// Matched filter over the residual `res`: Gaussians of each of `widths`, centers `spacing` ×
/// width apart across the window, each scored by (gᵀR)² / ‖g⊥‖² with g⊥ its part orthogonal to
/// the baseline basis `q` (R is a least-squares residual, so it is orthogonal to the baseline
/// already). `skip(center, width)` leaves candidates out. Negative heights only when allowed.
fn matched_filter(
    prep: &Prepared,
    q: &[Vec<f64>],
    res: &[f64],
    widths: &[f64],
    spacing: f64,
    allow_negative: bool,
    skip: impl Fn(f64, f64) -> bool,
) -> Vec<Candidate> {
    let (lo, hi) = prep.window;
    let m = prep.x.len();
    let mut g = vec![0.0; m];
    let mut out = Vec::new();
    for &w in widths {
        let sigma_w = w / GAUSS_FWHM_PER_SIGMA;
        // On a uniform axis every candidate is the same template shifted to a grid point: one
        // `exp` per template point instead of one per point of every candidate.
        let half = if prep.uniform && prep.step > 0.0 {
            (4.0 * sigma_w / prep.step).floor() as usize
        } else {
            0
        };
        let template: Vec<f64> = (0..=2 * half)
            .map(|k| {
                let u = (k as f64 - half as f64) * prep.step / sigma_w;
                (-0.5 * u * u).exp()
            })
            .collect();
        let mut center = lo;
        while center <= hi {
            // `grid`: the candidate's grid index when the template is used.
            let (grid, at, a, b) = if half > 0 {
                let i = (((center - lo) / prep.step).round() as usize).min(m - 1);
                (
                    Some(i),
                    prep.x[i],
                    i.saturating_sub(half),
                    (i + half + 1).min(m),
                )
            } else {
                let a = prep.x.partition_point(|&x| x < center - 4.0 * sigma_w);
                let b = prep.x.partition_point(|&x| x <= center + 4.0 * sigma_w);
                (None, center, a, b.max(a))
            };
            center += spacing * w;
            if skip(at, w) || b <= a {
                continue;
            }
            let gs: &[f64] = if let Some(i) = grid {
                // Point p is template index p + half − i (a ≥ i − half, b ≤ i + half + 1).
                let first = a + half - i;
                &template[first..first + (b - a)]
            } else {
                for (gi, x) in g[a..b].iter_mut().zip(&prep.x[a..b]) {
                    let u = (x - at) / sigma_w;
                    *gi = (-0.5 * u * u).exp();
                }
                &g[a..b]
            };
            let gr = dot(gs, &res[a..b]);
            let mut perp = dot(gs, gs);
            for u in q {
                let d = dot(gs, &u[a..b]);
                perp -= d * d;
            }
            if (allow_negative || gr > 0.0) && perp > 1e-12 {
                out.push(Candidate {
                    score: gr * gr / perp,
                    center_nm: at,
                    fwhm_nm: w,
                    height: gr / perp,
                });
            }
        }
    }
    out
}

/// Widths a matched filter tries: 1, 2 and 4 times the narrowest fitted peak, at most half the
/// window.
fn filter_widths(prep: &Prepared, fit: &PeakFit) -> Vec<f64> {
    let narrowest = fit
        .peaks
        .iter()
        .map(|p| p.fwhm_nm)
        .fold(f64::INFINITY, f64::min)
        .max(3.0 * prep.step);
    let (lo, hi) = prep.window;
    [1.0, 2.0, 4.0]
        .iter()
        .map(|f| f * narrowest)
        .filter(|w| *w <= 0.5 * (hi - lo))
        .collect()
}

/// Relocation moves of the exchange search: remove peak `r` (each of `removals`) and add one
/// where a [`matched_filter`] on the remaining residual scores best. The residual is that of one
/// linearised step without `r`. This finds the broad, low peak a curved baseline has absorbed
/// while the spare peak sits elsewhere, which no split move and no smoothed-residual bump
/// reveals. The two best candidates per removal are returned, and the best one more than the
/// removed peak's FWHM away from it when those two are not.
fn relocations(
    prep: &Prepared,
    settings: &FitSettings,
    fit: &PeakFit,
    removals: &[usize],
) -> Vec<Vec<PeakGuess>> {
    let Some(q) = baseline_basis(prep, settings.baseline.n_params()) else {
        return Vec::new();
    };
    let widths = filter_widths(prep, fit);
    let current = guesses_of(fit);
    let mut out = Vec::new();
    for &r in removals {
        let Some(removed) = current.get(r).copied() else {
            continue;
        };
        let rest: Vec<PeakGuess> = current
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != r)
            .map(|(_, g)| *g)
            .collect();
        let Some((res, stepped)) = linear_residuals(prep, settings, &rest) else {
            continue;
        };
        // Putting the removed peak back is not a move.
        let same = |center: f64, w: f64| {
            (center - removed.center_nm).abs() < 0.25 * removed.fwhm_nm
                && (0.5..=2.0).contains(&(w / removed.fwhm_nm))
        };
        let mut scored =
            matched_filter(prep, &q, &res, &widths, 0.25, settings.allow_negative, same);
        scored.sort_by(|a, b| b.score.total_cmp(&a.score));
        // The best two, and the best one clear of the removed peak's own region: a baseline
        // that absorbed a broad peak elsewhere leaves its misfit where the spare peak sat, so
        // the two best often put the spare peak back beside where it was.
        let clear = scored
            .iter()
            .position(|c| (c.center_nm - removed.center_nm).abs() > removed.fwhm_nm)
            .filter(|&i| i >= 2);
        for c in scored.iter().take(2).chain(clear.map(|i| &scored[i])) {
            let mut moved = stepped.clone();
            moved.push(PeakGuess {
                center_nm: c.center_nm,
                height: c.height * prep.scale,
                fwhm_nm: c.fwhm_nm,
            });
            out.push(moved);
        }
    }
    out
}

/// Matched-filter alarm: the largest χ² (in noise variances) one more Gaussian would remove from
/// the fit's residual on its own (centers half a width apart). Coherent, so far more sensitive
/// to a broad left-out peak than the windowed energy of [`local_misfit`].
fn unexplained_peak(
    prep: &Prepared,
    settings: &FitSettings,
    fit: &PeakFit,
    r: &[f64],
    sigma: f64,
) -> f64 {
    let Some(q) = baseline_basis(prep, settings.baseline.n_params()) else {
        return 0.0;
    };
    let widths = filter_widths(prep, fit);
    matched_filter(
        prep,
        &q,
        r,
        &widths,
        0.5,
        settings.allow_negative,
        |_, _| false,
    )
    .iter()
    .map(|c| c.score / (sigma * sigma))
    .fold(0.0, f64::max)
}

/// The search after the repair, for a [`suspicious`] fit only: [`exchange`], then [`rebuild`]
/// when that did not make it healthy.
fn search(
    prep: &Prepared,
    settings: &FitSettings,
    fit: PeakFit,
    sigma: f64,
    trail: &mut Trail,
) -> PeakFit {
    if fit.peaks.len() < 2 {
        return fit;
    }
    // The mirror moves last: a suspicious fit is searched first, since a reflection can trade
    // an alarmed local minimum for a quieter one (hard tuning spectrum 199).
    let fit = if suspicious(prep, settings, &fit, sigma) {
        let fit = exchange(prep, settings, fit, sigma, trail);
        rebuild(prep, settings, fit, sigma, trail)
    } else {
        fit
    };
    mirror(prep, settings, fit, sigma, trail)
}

/// Overlap below which two neighbouring peaks are a pair for [`mirror`], in units of the sum of
/// their FWHMs.
const MIRROR_OVERLAP: f64 = 0.75;

/// Mirror moves for overlapping pairs, tried on every fit after the searches (suspicious or
/// not): an unresolved pair has second minima with the weaker peak on the wrong side of the
/// stronger one (true 541 and 559 nm fitted as 536 and 546 with the heights swapped), or with
/// the broad and the narrow member swapped (true 380 nm wide + 420 nm narrower fitted as 370 nm
/// narrow + 395 nm very wide). Their χ² excess (22–170 noise variances in the cases seen) is too
/// small and too spread for any alarm, yet a true peak is missed. For each pair of neighbours
/// closer than [`MIRROR_OVERLAP`] × (sum of FWHMs), three reflections — each peak about the
/// other, and both about the pair's area centroid — are scored by one linearised step over the
/// pair's neighbourhood ([`linear_step`]); the best two that score better than the fit itself by
/// more than the noise get a nonlinear fit from the plain reflection, kept when it lowers χ² by
/// more than the noise could (2σ²). Costs the issue's spectra (one close pair) ~0.2 ms.
fn mirror(
    prep: &Prepared,
    settings: &FitSettings,
    fit: PeakFit,
    sigma: f64,
    trail: &mut Trail,
) -> PeakFit {
    let n = fit.peaks.len();
    if n < 2 {
        return fit;
    }
    let current = guesses_of(&fit);
    // the noise's worth of χ² (2σ²) in the scaled units of the linear step
    let linear_margin = 2.0 * (sigma / prep.scale).powi(2);
    let mut moves: Vec<(f64, Vec<PeakGuess>)> = Vec::new();
    for j in 0..n - 1 {
        let (a, b) = (&current[j], &current[j + 1]);
        if (b.center_nm - a.center_nm).abs() >= MIRROR_OVERLAP * (a.fwhm_nm + b.fwhm_nm) {
            continue;
        }
        // Scored over the pair's neighbourhood only (both reflections included), with the peaks
        // that reach into it free and the others held: the move changes nothing elsewhere.
        let reach = 2.0 * a.fwhm_nm.max(b.fwhm_nm);
        let span = (b.center_nm - a.center_nm).abs();
        let (lo, hi) = (
            a.center_nm.min(b.center_nm) - span - reach,
            a.center_nm.max(b.center_nm) + span + reach,
        );
        let points = prep.x.partition_point(|&x| x < lo)..prep.x.partition_point(|&x| x <= hi);
        let free: Vec<bool> = current
            .iter()
            .map(|g| g.center_nm + 1.5 * g.fwhm_nm >= lo && g.center_nm - 1.5 * g.fwhm_nm <= hi)
            .collect();
        let score = |g: &[PeakGuess]| linear_score(prep, settings, g, Some(&free), points.clone());
        let Some((base, _)) = score(&current) else {
            continue;
        };
        // Each peak reflected about the other, and the pair reflected about its area centroid.
        let area = |g: &PeakGuess| (g.height * g.fwhm_nm).abs();
        let centroid = (area(a) * a.center_nm + area(b) * b.center_nm) / (area(a) + area(b));
        let reflections = [
            vec![(j, 2.0 * b.center_nm - a.center_nm)],
            vec![(j + 1, 2.0 * a.center_nm - b.center_nm)],
            vec![
                (j, 2.0 * centroid - a.center_nm),
                (j + 1, 2.0 * centroid - b.center_nm),
            ],
        ];
        for moved in reflections {
            let inside = |c: f64| (prep.window.0..=prep.window.1).contains(&c);
            if !moved.iter().all(|&(_, c)| inside(c)) {
                continue;
            }
            let mut g = current.clone();
            for &(m, c) in &moved {
                g[m].center_nm = c;
            }
            // Ranked by the linearised step, but the trial starts from the plain reflection:
            // the step's heights are fitted to the wrong side and can pin a peak at a bound.
            if let Some((s, _)) = score(&g) {
                if s < base - linear_margin {
                    moves.push((s - base, g));
                }
            }
        }
    }
    moves.sort_by(|a, b| a.0.total_cmp(&b.0));
    let margin = 2.0 * sigma * sigma;
    let mut best = fit;
    for (_, g) in moves.into_iter().take(2) {
        let Some(c) = trail.fit(prep, settings, &g) else {
            continue;
        };
        if c.peaks.len() == n
            && best.statistics.chi_square - c.statistics.chi_square > margin
            && stuck(&c) <= stuck(&best)
        {
            best = c;
        }
    }
    best
}

/// Last resort for a fit that is still [`suspicious`] after the repair and the exchange search
/// (a collapse onto one basin: peaks at zero height, a wide peak soaking up the baseline, a
/// visible peak left out while the spare one sits in the wrong place): build the model up again
/// from the baseline alone, one peak at a time at the largest bump of the residual, each step a
/// full fit (forward stagewise), then repair and exchange that one too. The fit with the lower χ²
/// is kept, so this can only improve on `fit`.
fn rebuild(
    prep: &Prepared,
    settings: &FitSettings,
    fit: PeakFit,
    sigma: f64,
    trail: &mut Trail,
) -> PeakFit {
    let n = fit.peaks.len();
    if n < 2 || !suspicious(prep, settings, &fit, sigma) {
        return fit;
    }
    let first = linear_residuals(prep, settings, &[])
        .and_then(|(r, _)| bump_of(prep, &r, f64::INFINITY, settings.allow_negative));
    let Some(first) = first else {
        return fit;
    };
    let mut guesses = vec![PeakGuess {
        height: first.guess.height * prep.scale,
        ..first.guess
    }];
    let mut built = None;
    while guesses.len() <= n {
        let Some(f) = trail.fit(prep, settings, &guesses) else {
            return fit;
        };
        if f.peaks.len() == n {
            built = Some(f);
            break;
        }
        let Some(bump) = residual_bump(prep, &f, settings.allow_negative, sigma) else {
            return fit;
        };
        guesses = guesses_of(&f);
        guesses.push(bump.guess);
    }
    let Some(built) = built else {
        return fit;
    };
    let built = repair(prep, settings, built, n, sigma, Judge::Fixed, trail);
    let built = if suspicious(prep, settings, &built, sigma) {
        exchange(prep, settings, built, sigma, trail)
    } else {
        built
    };
    if built.peaks.len() == n
        && built.statistics.chi_square < fit.statistics.chi_square
        && stuck(&built) <= stuck(&fit)
    {
        built
    } else {
        fit
    }
}

/// Residuals (scaled units) of one linearised least-squares step from `guesses` (Gaussian
/// profiles): heights, first-order center and width corrections, and the baseline, all linear.
/// A cheap stand-in for the nonlinear fit when completing a set of guesses: small errors in the
/// guessed centers and widths are absorbed, so the residual's largest bump marks a missing peak
/// rather than a misplaced one. Also returns the guesses moved by that (damped) step. `None` when
/// the system is singular.
fn linear_residuals(
    prep: &Prepared,
    settings: &FitSettings,
    guesses: &[PeakGuess],
) -> Option<(Vec<f64>, Vec<PeakGuess>)> {
    linear_step(prep, settings, guesses, None, 0..prep.x.len())
}

/// [`linear_residuals`] over the points `points` only, with the peaks not marked in `free` held
/// at their guesses (subtracted from the data); `free: None` frees every peak. Residuals are
/// those of `points`.
fn linear_step(
    prep: &Prepared,
    settings: &FitSettings,
    guesses: &[PeakGuess],
    free: Option<&[bool]>,
    points: std::ops::Range<usize>,
) -> Option<(Vec<f64>, Vec<PeakGuess>)> {
    let is_free = |j: usize| free.is_none_or(|f| f.get(j).copied().unwrap_or(true));
    let freed: Vec<usize> = (0..guesses.len()).filter(|&j| is_free(j)).collect();
    let n_base = settings.baseline.n_params();
    let n_peak_cols = 3 * freed.len();
    let k = n_peak_cols + n_base;
    let profile = |g: &PeakGuess| {
        lineshape::Profile::new(LineShape::Gaussian, &[1.0, g.center_nm, g.fwhm_nm])
    };
    let profiles: Vec<lineshape::Profile> = freed.iter().map(|&j| profile(&guesses[j])).collect();
    let held: Vec<(f64, lineshape::Profile)> = (0..guesses.len())
        .filter(|&j| !is_free(j))
        .map(|j| (guesses[j].height / prep.scale, profile(&guesses[j])))
        .collect();
    // One pass evaluates the profiles into the columns of the design matrix (value and
    // ∂/∂center, ∂/∂fwhm of each free unit-height profile, then the baseline's powers) and the
    // target (the data less the held peaks); the normal equations are dot products of columns.
    let npts = points.len();
    let mut cols = vec![0.0; npts * k];
    let mut targets = Vec::with_capacity(npts);
    let mut grad = [0.0; 3];
    for (n, i) in points.clone().enumerate() {
        for (j, prof) in profiles.iter().enumerate() {
            prof.eval(prep.x[i], &mut grad);
            for (d, &v) in grad.iter().enumerate() {
                cols[(3 * j + d) * npts + n] = v;
            }
        }
        let mut tp = 1.0;
        for b in 0..n_base {
            cols[(n_peak_cols + b) * npts + n] = tp;
            tp *= prep.t[i];
        }
        targets.push(
            prep.y[i]
                - held
                    .iter()
                    .map(|(h, prof)| h * prof.eval(prep.x[i], &mut grad))
                    .sum::<f64>(),
        );
    }
    // Sums run point by point in order, as a row-by-row accumulation would: the ranking of
    // moves must not depend on how the sums are blocked.
    let col = |a: usize| &cols[a * npts..(a + 1) * npts];
    let in_order = |u: &[f64], v: &[f64]| u.iter().zip(v).map(|(p, q)| p * q).sum::<f64>();
    let mut ata: DMatrix<f64> = DMatrix::zeros(k, k);
    let mut atb: DVector<f64> = DVector::zeros(k);
    for a in 0..k {
        atb[a] = in_order(col(a), &targets);
        for b in a..k {
            let v = in_order(col(a), col(b));
            ata[(a, b)] = v;
            ata[(b, a)] = v;
        }
    }
    let coef = ata.cholesky()?.solve(&atb);
    let r: Vec<f64> = targets
        .iter()
        .enumerate()
        .map(|(n, &y)| y - (0..k).map(|a| cols[a * npts + n] * coef[a]).sum::<f64>())
        .collect();
    if !r.iter().all(|v| v.is_finite()) {
        return None;
    }
    // The step itself, damped: height a, center + b/a, width + d/a (a·∂g ≈ the correction).
    let mut stepped = guesses.to_vec();
    for (col, &j) in freed.iter().enumerate() {
        let g = guesses[j];
        let (a, b, d) = (coef[3 * col], coef[3 * col + 1], coef[3 * col + 2]);
        let same_sign = a * g.height.signum() > 0.0 && a.is_finite();
        if !same_sign {
            continue;
        }
        let dc = (b / a).clamp(-0.5 * g.fwhm_nm, 0.5 * g.fwhm_nm);
        let w = (g.fwhm_nm + d / a).clamp(0.5 * g.fwhm_nm, 2.0 * g.fwhm_nm);
        stepped[j] = PeakGuess {
            center_nm: g.center_nm + dc,
            height: a * prep.scale,
            fwhm_nm: w,
        };
    }
    Some((r, stepped))
}

/// Σ r² of one [`linear_step`] (a finite score only) and the stepped guesses: how the exchange
/// and mirror searches rank a move before spending a nonlinear fit on it.
fn linear_score(
    prep: &Prepared,
    settings: &FitSettings,
    guesses: &[PeakGuess],
    free: Option<&[bool]>,
    points: std::ops::Range<usize>,
) -> Option<(f64, Vec<PeakGuess>)> {
    let (r, stepped) = linear_step(prep, settings, guesses, free, points)?;
    let score: f64 = r.iter().map(|v| v * v).sum();
    score.is_finite().then_some((score, stepped))
}

/// Fits exactly `n` peaks: the `n` strongest distinct detected guesses, topped up at the
/// residual's largest bump when fewer were detected, then [`repair`]ed and, when still
/// [`suspicious`], improved by [`exchange`].
fn fit_fixed(
    prep: &Prepared,
    settings: &FitSettings,
    detected: &[PeakGuess],
    n: usize,
    sigma: f64,
    trail: &mut Trail,
) -> Option<PeakFit> {
    let mut start: Vec<PeakGuess> = distinct(detected).into_iter().take(n).collect();
    let detected_count = start.len();
    // Fewer peaks stand out than asked for (most often an unresolved pair): complete the guesses
    // at the largest bump of the residual of a linear fit (heights and baseline, centers and
    // widths held), which costs one small solve instead of a nonlinear fit per added peak.
    while (1..n).contains(&start.len()) {
        let narrowest = start
            .iter()
            .map(|g| g.fwhm_nm)
            .fold(f64::INFINITY, f64::min);
        let bump = linear_residuals(prep, settings, &start)
            .and_then(|(r, _)| bump_of(prep, &r, narrowest, settings.allow_negative));
        match bump {
            Some(b) => start.push(PeakGuess {
                height: b.guess.height * prep.scale,
                ..b.guess
            }),
            None => break,
        }
        if start.len() == n {
            // One linearised step on the completed set shares the signal between the new guess
            // and its neighbours before the nonlinear fit starts.
            if let Some((_, stepped)) = linear_residuals(prep, settings, &start) {
                start = stepped;
            }
        }
    }
    let mut fit = trail.fit(prep, settings, &start);
    if fit.is_none() && detected_count > 0 && detected_count < start.len() {
        // Without the split: the detected guesses alone, topped up from the residual below.
        fit = trail.fit(prep, settings, &start[..detected_count.min(start.len())]);
    }
    if fit.is_none() && start.len() > 1 {
        // Built up from the strongest guess instead.
        fit = trail.fit(prep, settings, &start[..1]);
    }
    let mut fit = fit?;
    while fit.peaks.len() < n {
        let bump = residual_bump(prep, &fit, settings.allow_negative, sigma)?;
        let mut g = guesses_of(&fit);
        g.push(bump.guess);
        fit = trail.fit(prep, settings, &g)?;
    }
    let fit = repair(prep, settings, fit, n, sigma, Judge::Fixed, trail);
    Some(search(prep, settings, fit, sigma, trail))
}

/// Automatic count: all distinct detected guesses (at most `max`), [`repair`]ed under the BIC,
/// [`exchange`]d when [`suspicious`] (same count, so χ² and BIC agree), then weakest peaks dropped
/// while that lowers the BIC (at least one removal is always tried, so the chosen count is
/// compared with one fewer).
fn fit_auto(
    prep: &Prepared,
    settings: &FitSettings,
    detected: &[PeakGuess],
    max: usize,
    sigma: f64,
    trail: &mut Trail,
) -> Option<PeakFit> {
    let start: Vec<PeakGuess> = distinct(detected).into_iter().take(max).collect();
    let mut fit = trail.fit(prep, settings, &start);
    if fit.is_none() && start.len() > 1 {
        fit = trail.fit(prep, settings, &start[..1]);
    }
    let fit = repair(prep, settings, fit?, max, sigma, Judge::Auto, trail);
    let mut fit = search(prep, settings, fit, sigma, trail);
    while fit.peaks.len() > 1 {
        let energy = |p: &FittedPeak| p.amplitude * p.amplitude * p.fwhm_nm;
        let Some((j, _)) = fit
            .peaks
            .iter()
            .enumerate()
            .min_by(|a, b| energy(a.1).total_cmp(&energy(b.1)))
        else {
            break;
        };
        let mut g = guesses_of(&fit);
        g.remove(j);
        match trail.fit(prep, settings, &g) {
            Some(c) if c.statistics.bic < fit.statistics.bic => fit = c,
            _ => break,
        }
    }
    Some(fit)
}

/// Fits peaks to a spectrum: detection guesses, a Levenberg–Marquardt fit, then a residual-driven
/// repair that adds or moves peaks while the smoothed residual shows a bump above
/// [`RESIDUAL_SIGMA`] noise σ (so a visible peak is never left out), then, when χ² stays far
/// above the noise or a peak is stuck or doubled, an exchange search that splits one peak and
/// drops another (local minima with a clean-looking residual). [`PeakCount::Fixed`] keeps the
/// count; [`PeakCount::Auto`] chooses 1..=max peaks by BIC.
pub fn fit_peaks(spectrum: &Spectrum, settings: &FitSettings) -> Result<PeakFit, FitError> {
    validate(settings)?;
    let (cropped, prep) = prepare(spectrum, settings)?;
    let max = match settings.peaks {
        PeakCount::Fixed(n) | PeakCount::Auto { max: n } => n,
    };
    let (detected, noise) = guess_peaks(&cropped, settings, max)?;
    let mut trail = Trail::default();
    let fit = match settings.peaks {
        PeakCount::Fixed(n) => fit_fixed(&prep, settings, &detected, n, noise, &mut trail),
        PeakCount::Auto { max } => fit_auto(&prep, settings, &detected, max, noise, &mut trail),
    };
    match fit {
        Some(mut fit) => {
            if matches!(settings.peaks, PeakCount::Auto { .. }) {
                fit.model_selection = trail.tried;
            }
            Ok(fit)
        }
        None => Err(trail
            .last_err
            .unwrap_or(FitError::NoPeaksFound { noise, span: 0.0 })),
    }
}

/// Fits with caller-supplied initial guesses (one per peak), skipping detection.
pub fn fit_peaks_with_guesses(
    spectrum: &Spectrum,
    settings: &FitSettings,
    guesses: &[PeakGuess],
) -> Result<PeakFit, FitError> {
    validate(settings)?;
    if guesses.is_empty() || guesses.len() > MAX_PEAKS {
        return Err(FitError::InvalidSettings(format!(
            "between 1 and {MAX_PEAKS} guesses are needed, got {}",
            guesses.len()
        )));
    }
    if guesses
        .iter()
        .any(|g| !(g.center_nm.is_finite() && g.height.is_finite() && g.fwhm_nm.is_finite()))
    {
        return Err(FitError::InvalidSettings("guesses must be finite".into()));
    }
    let (_, prep) = prepare(spectrum, settings)?;
    fit_prepared(&prep, settings, guesses)
}

fn initial_baseline(
    prep: &Prepared,
    shape: LineShape,
    peak_params: &[f64],
    n_peaks: usize,
    n_base: usize,
) -> Vec<f64> {
    if n_base == 0 {
        return Vec::new();
    }
    let np = shape.n_params();
    let m = prep.x.len();
    let rest = DVector::from_fn(m, |i, _| {
        let peaks: f64 = (0..n_peaks)
            .map(|j| lineshape::eval(shape, &peak_params[j * np..(j + 1) * np], prep.x[i]))
            .sum();
        prep.y[i] - peaks
    });
    // Normal equations of the small polynomial fit in the normalised coordinate t ∈ [−1, 1].
    let mut ata: DMatrix<f64> = DMatrix::zeros(n_base, n_base);
    let mut atb: DVector<f64> = DVector::zeros(n_base);
    for i in 0..m {
        let mut pa = 1.0;
        for a in 0..n_base {
            atb[a] += pa * rest[i];
            let mut pb = 1.0;
            for b in 0..n_base {
                ata[(a, b)] += pa * pb;
                pb *= prep.t[i];
            }
            pa *= prep.t[i];
        }
    }
    ata.cholesky()
        .map(|c| c.solve(&atb).iter().copied().collect::<Vec<f64>>())
        .filter(|c| c.iter().all(|v| v.is_finite()))
        .unwrap_or_else(|| vec![0.0; n_base])
}

fn fit_prepared(
    prep: &Prepared,
    settings: &FitSettings,
    guesses: &[PeakGuess],
) -> Result<PeakFit, FitError> {
    let shape = settings.shape;
    let np = shape.n_params();
    let n_base = settings.baseline.n_params();
    let k = guesses.len() * np + n_base;
    let m = prep.x.len();
    if m <= k {
        return Err(FitError::TooFewPoints {
            points: m,
            parameters: k,
        });
    }
    let (lo, hi) = prep.window;
    let range = hi - lo;
    let wide = if settings.baseline.n_params() >= 2 {
        0.5 * range
    } else {
        range
    };
    let (wmin, wmax) = settings.fwhm_bounds_nm.unwrap_or((2.0 * prep.step, wide));
    let height_bound = if settings.allow_negative {
        Bound::FREE
    } else {
        Bound {
            lo: 0.0,
            hi: f64::INFINITY,
        }
    };
    let mut bounds = Vec::with_capacity(k);
    let mut start = Vec::with_capacity(k);
    for g in guesses {
        let h = g.height / prep.scale;
        let fw = g.fwhm_nm.clamp(wmin, wmax);
        let c_b = Bound { lo, hi };
        let w_b = Bound { lo: wmin, hi: wmax };
        match shape {
            LineShape::Gaussian | LineShape::Lorentzian => {
                bounds.extend([height_bound, c_b, w_b]);
                start.extend([h, g.center_nm, fw]);
            }
            LineShape::PseudoVoigt => {
                bounds.extend([height_bound, c_b, w_b, Bound { lo: 0.0, hi: 1.0 }]);
                start.extend([h, g.center_nm, fw, 0.5]);
            }
            LineShape::Voigt => {
                let s_b = Bound {
                    lo: wmin / GAUSS_FWHM_PER_SIGMA,
                    hi: wmax / GAUSS_FWHM_PER_SIGMA,
                };
                let g_b = Bound {
                    lo: 0.0,
                    hi: 0.5 * wmax,
                };
                bounds.extend([height_bound, c_b, s_b, g_b]);
                // Split the guessed width between the Gaussian and Lorentzian parts.
                start.extend([h, g.center_nm, 0.7 * fw / GAUSS_FWHM_PER_SIGMA, 0.25 * fw]);
            }
        }
    }
    // Baseline starts as the least-squares polynomial under the guessed peaks.
    let base_start = initial_baseline(prep, shape, &start, guesses.len(), n_base);
    for b in 0..n_base {
        bounds.push(Bound::FREE);
        start.push(base_start.get(b).copied().unwrap_or(0.0));
    }
    let internal: Vec<f64> = bounds
        .iter()
        .zip(&start)
        .map(|(b, x)| b.to_internal(b.pin(*x)))
        .collect();
    let mut problem = Problem {
        x: &prep.x,
        t: &prep.t,
        y: &prep.y,
        shape,
        n_peaks: guesses.len(),
        n_base,
        bounds: bounds.clone(),
        step: prep.step,
        uniform: prep.uniform,
        free: (0..k).collect(),
        internal: DVector::zeros(k),
        external: vec![0.0; k],
        slopes: vec![0.0; k],
        cache: RefCell::new(None),
        work: RefCell::new(Columns::new(m, k)),
    };
    problem.set_internal(&DVector::from_vec(internal));
    let solver = LevenbergMarquardt::new().with_patience(settings.patience);
    let (mut problem, report) = solver.minimize(problem);
    let mut evaluations = report.number_of_evaluations;
    let mut termination = format!("{:?}", report.termination);
    if !report.termination.was_successful() {
        // With a parameter pressed against a bound the sin/sqrt maps make the Gauss–Newton model
        // flat in that direction and the solver crawls until it runs out of evaluations. Then
        // take one active-set step: pin the parameters that touch their bounds at the bound and
        // solve again for the others. Anything else is reported as not converged.
        let mut accepted = false;
        if report.termination == TerminationReason::LostPatience
            && problem.pin_to_bounds() > 0
            && !problem.free.is_empty()
        {
            let (again, report2) = solver.minimize(problem);
            problem = again;
            evaluations += report2.number_of_evaluations;
            if report2.termination.was_successful() {
                accepted = true;
                termination = format!(
                    "{:?} (after pinning parameters at bounds)",
                    report2.termination
                );
            } else {
                termination = format!("{:?}", report2.termination);
            }
        }
        if !accepted {
            return Err(FitError::NotConverged {
                reason: termination,
                evaluations,
            });
        }
    }
    let p_scaled = problem.external.clone();
    if p_scaled.iter().any(|v| !v.is_finite()) {
        return Err(FitError::Numerical(
            "non-finite parameter after the fit".into(),
        ));
    }
    // Statistics in the original units.
    let resid = problem
        .full_residuals()
        .ok_or_else(|| FitError::Numerical("non-finite residuals at the solution".into()))?;
    let chi_scaled: f64 = resid.iter().map(|r| r * r).sum();
    let chi = chi_scaled * prep.scale * prep.scale;
    let mean_y = prep.y.iter().sum::<f64>() / m as f64;
    let ss_tot_scaled: f64 = prep.y.iter().map(|v| (v - mean_y).powi(2)).sum();
    let r_squared = if ss_tot_scaled > 0.0 {
        1.0 - chi_scaled / ss_tot_scaled
    } else {
        0.0
    };
    let mf = m as f64;
    let kf = k as f64;
    let redchi = chi / (mf - kf);
    let lnl = mf * (chi / mf).max(f64::MIN_POSITIVE).ln();
    let aic = lnl + 2.0 * kf;
    let bic = lnl + kf * mf.ln();
    // Covariance in scaled units: (JᵀJ)⁻¹ χ²_ν.
    let (jtj, _, _) = problem
        .normal_equations(false)
        .ok_or_else(|| FitError::Numerical("non-finite Jacobian at the solution".into()))?;
    let redchi_scaled = chi_scaled / (mf - kf);
    let cov_scaled = jtj
        .clone()
        .cholesky()
        .map(|c| c.inverse() * redchi_scaled)
        .filter(|c| c.iter().all(|v| v.is_finite()));
    let covariance_ok = cov_scaled.is_some();
    // Unit conversion per parameter: heights and baseline coefficients carry `scale`.
    let unit: Vec<f64> = (0..k)
        .map(|i| {
            if i >= guesses.len() * np || i % np == 0 {
                prep.scale
            } else {
                1.0
            }
        })
        .collect();
    let mut p = p_scaled.clone();
    for i in 0..k {
        p[i] *= unit[i];
    }
    // The offset removed in `prepare` goes back into the constant baseline term (with no baseline
    // term `prepare` removed none).
    if n_base > 0 {
        p[guesses.len() * np] += prep.offset;
    }
    let cov = cov_scaled.map(|c| DMatrix::from_fn(k, k, |i, j| c[(i, j)] * unit[i] * unit[j]));
    let stderr = |i: usize| -> Option<f64> {
        cov.as_ref()
            .map(|c| c[(i, i)])
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(f64::sqrt)
    };
    let derived_se = |j: usize, f: &dyn Fn(&[f64]) -> f64| -> Option<f64> {
        let c = cov.as_ref()?;
        let base = &p[j * np..(j + 1) * np];
        let mut grad = vec![0.0; np];
        for (a, g) in grad.iter_mut().enumerate() {
            let h = 1e-6 * base[a].abs().max(1e-6);
            let mut q = base.to_vec();
            q[a] += h;
            let fp = f(&q);
            q[a] -= 2.0 * h;
            let fm = f(&q);
            *g = (fp - fm) / (2.0 * h);
        }
        let mut var = 0.0;
        for a in 0..np {
            for b in 0..np {
                var += grad[a] * grad[b] * c[(j * np + a, j * np + b)];
            }
        }
        (var.is_finite() && var >= 0.0).then(|| var.sqrt())
    };
    let names = param_names(shape);
    let mut peaks_out = Vec::with_capacity(guesses.len());
    for j in 0..guesses.len() {
        let pp = &p[j * np..(j + 1) * np];
        let params: Vec<Parameter> = (0..np)
            .map(|a| {
                let i = j * np + a;
                let b = bounds[i];
                let (blo, bhi) = (b.lo * unit[i], b.hi * unit[i]);
                Parameter {
                    name: names[a],
                    value: p[i],
                    stderr: stderr(i),
                    lower: blo,
                    upper: bhi,
                    at_bound: b.touches(p_scaled[i]),
                }
            })
            .collect();
        let fwhm = lineshape::fwhm(shape, pp);
        let area = lineshape::area(shape, pp);
        let fwhm_se = match shape {
            LineShape::Voigt => derived_se(j, &|q| lineshape::fwhm(shape, q)),
            _ => stderr(j * np + 2),
        };
        peaks_out.push(FittedPeak {
            center_nm: pp[1],
            center_stderr_nm: stderr(j * np + 1),
            amplitude: pp[0],
            amplitude_stderr: stderr(j * np),
            fwhm_nm: fwhm,
            fwhm_stderr_nm: fwhm_se,
            area,
            area_stderr: derived_se(j, &|q| lineshape::area(shape, q)),
            params,
        });
    }
    peaks_out.sort_by(|a, b| a.center_nm.total_cmp(&b.center_nm));
    let baseline = (0..n_base)
        .map(|b| {
            let i = guesses.len() * np + b;
            Parameter {
                name: BASE_NAMES[b],
                value: p[i],
                stderr: stderr(i),
                lower: f64::NEG_INFINITY,
                upper: f64::INFINITY,
                at_bound: false,
            }
        })
        .collect();
    let all_finite = peaks_out.iter().all(|pk| {
        [pk.center_nm, pk.amplitude, pk.fwhm_nm, pk.area]
            .iter()
            .all(|v| v.is_finite())
    }) && [chi, redchi, r_squared, aic, bic]
        .iter()
        .all(|v| v.is_finite());
    if !all_finite {
        return Err(FitError::Numerical(
            "non-finite value in the fit results".into(),
        ));
    }
    Ok(PeakFit {
        shape,
        peaks: peaks_out,
        baseline_kind: settings.baseline,
        baseline,
        statistics: FitStatistics {
            n_points: m,
            n_params: k,
            chi_square: chi,
            reduced_chi_square: redchi,
            r_squared,
            aic,
            bic,
            evaluations,
            termination,
            covariance_ok,
        },
        model_selection: Vec::new(),
        window_nm: prep.window,
        axis_mid: prep.mid,
        axis_half: prep.half,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian_spectrum(x: &[f64], peaks: &[(f64, f64, f64)], base: f64) -> Spectrum {
        let y = x
            .iter()
            .map(|&v| {
                base + peaks
                    .iter()
                    .map(|&(h, c, w)| lineshape::eval(LineShape::Gaussian, &[h, c, w], v))
                    .sum::<f64>()
            })
            .collect();
        Spectrum::new(x.to_vec(), y).unwrap()
    }

    fn axis(n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| 400.0 + 200.0 * i as f64 / (n - 1) as f64)
            .collect()
    }

    #[test]
    fn cli_style_parsing() {
        assert_eq!("auto".parse::<PeakCount>(), Ok(PeakCount::Auto { max: 4 }));
        assert_eq!(
            "auto:6".parse::<PeakCount>(),
            Ok(PeakCount::Auto { max: 6 })
        );
        assert_eq!("3".parse::<PeakCount>(), Ok(PeakCount::Fixed(3)));
        assert!("0".parse::<PeakCount>().is_err());
        assert!("many".parse::<PeakCount>().is_err());
        assert_eq!(
            "pseudo-voigt".parse::<LineShape>(),
            Ok(LineShape::PseudoVoigt)
        );
        assert!("sinc".parse::<LineShape>().is_err());
    }

    #[test]
    fn bound_transforms_round_trip() {
        let bounds = [
            Bound { lo: 0.0, hi: 10.0 },
            Bound {
                lo: 2.0,
                hi: f64::INFINITY,
            },
            Bound {
                lo: f64::NEG_INFINITY,
                hi: -1.0,
            },
            Bound::FREE,
        ];
        for b in bounds {
            for x in [-5.0, -1.5, 0.5, 3.0, 7.5, 9.9] {
                let inside = (x > b.lo || !b.lo.is_finite()) && (x < b.hi || !b.hi.is_finite());
                if !inside {
                    continue;
                }
                let (back, slope) = b.to_external(b.to_internal(x));
                assert!((back - x).abs() < 1e-9, "{b:?} {x} -> {back}");
                assert!(slope.is_finite());
            }
        }
    }

    #[test]
    fn non_convergence_is_an_error_not_a_nan() {
        let x = axis(400);
        let s = gaussian_spectrum(&x, &[(1.0, 480.0, 20.0), (0.5, 520.0, 15.0)], 0.1);
        let settings = FitSettings {
            peaks: PeakCount::Fixed(2),
            patience: 1,
            ..FitSettings::default()
        };
        let guesses = [
            PeakGuess {
                center_nm: 450.0,
                height: 0.3,
                fwhm_nm: 60.0,
            },
            PeakGuess {
                center_nm: 560.0,
                height: 0.2,
                fwhm_nm: 5.0,
            },
        ];
        match fit_peaks_with_guesses(&s, &settings, &guesses) {
            Err(FitError::NotConverged {
                reason,
                evaluations,
            }) => {
                assert!(reason.contains("LostPatience"), "{reason}");
                assert!(evaluations > 0);
            }
            other => panic!("expected NotConverged, got {other:?}"),
        }
    }

    #[test]
    fn fwhm_bounds_are_respected_and_flagged() {
        let x = axis(400);
        let s = gaussian_spectrum(&x, &[(1.0, 500.0, 30.0)], 0.0);
        let fit = fit_peaks(
            &s,
            &FitSettings {
                peaks: PeakCount::Fixed(1),
                fwhm_bounds_nm: Some((5.0, 20.0)),
                ..FitSettings::default()
            },
        )
        .unwrap();
        let p = &fit.peaks[0];
        assert!(p.fwhm_nm <= 20.0 + 1e-9, "{}", p.fwhm_nm);
        assert!(p.params[2].at_bound, "{:?}", p.params[2]);
        assert!(matches!(
            fit_peaks(
                &s,
                &FitSettings {
                    fwhm_bounds_nm: Some((20.0, 5.0)),
                    ..FitSettings::default()
                }
            ),
            Err(FitError::InvalidSettings(_))
        ));
    }

    #[test]
    fn negative_bands_window_and_non_uniform_axis() {
        // Bisignate CD-like signal: negative band at 460 nm, positive at 500 nm.
        let x: Vec<f64> = (0..500)
            .map(|i| 400.0 + 0.0006 * (i as f64).powi(2))
            .collect(); // non-uniform axis, 400..550 nm
        let s = gaussian_spectrum(&x, &[(-0.8, 460.0, 20.0), (0.5, 500.0, 20.0)], 0.0);
        assert!(!s.is_uniform());
        let fit = fit_peaks(
            &s,
            &FitSettings {
                peaks: PeakCount::Fixed(2),
                allow_negative: true,
                baseline: Baseline::Constant,
                ..FitSettings::default()
            },
        )
        .unwrap();
        assert!((fit.peaks[0].center_nm - 460.0).abs() < 0.01);
        assert!((fit.peaks[0].amplitude + 0.8).abs() < 1e-4);
        assert!((fit.peaks[1].amplitude - 0.5).abs() < 1e-4);
        // A window that holds only the positive band.
        let fit = fit_peaks(
            &s,
            &FitSettings {
                peaks: PeakCount::Fixed(1),
                baseline: Baseline::None,
                window_nm: Some((485.0, 550.0)),
                ..FitSettings::default()
            },
        )
        .unwrap();
        assert!(fit.window_nm.0 >= 485.0);
        assert!((fit.peaks[0].center_nm - 500.0).abs() < 0.5);
    }

    #[test]
    fn statistics_follow_lmfit_definitions() {
        let x = axis(300);
        let mut s = gaussian_spectrum(&x, &[(1.0, 500.0, 25.0)], 0.2);
        // Deterministic ±0.01 perturbation so χ² is not zero.
        let y: Vec<f64> = s
            .values()
            .iter()
            .enumerate()
            .map(|(i, v)| v + if i % 2 == 0 { 0.01 } else { -0.01 })
            .collect();
        s = Spectrum::new(x.clone(), y).unwrap();
        let fit = fit_peaks(
            &s,
            &FitSettings {
                peaks: PeakCount::Fixed(1),
                ..FitSettings::default()
            },
        )
        .unwrap();
        let st = &fit.statistics;
        let chi: f64 = x
            .iter()
            .zip(s.values())
            .map(|(&xi, &yi)| (yi - fit.model_at(xi)).powi(2))
            .sum();
        let (n, k) = (st.n_points as f64, st.n_params as f64);
        assert_eq!(st.n_params, 5);
        assert!((st.chi_square - chi).abs() < 1e-9 * chi);
        assert!((st.reduced_chi_square - chi / (n - k)).abs() < 1e-12);
        assert!((st.aic - (n * (chi / n).ln() + 2.0 * k)).abs() < 1e-9);
        assert!((st.bic - (n * (chi / n).ln() + k * n.ln())).abs() < 1e-9);
        assert!(st.r_squared > 0.99 && st.r_squared < 1.0);
        assert!(st.covariance_ok);
    }

    /// An issue-family spectrum fitted from its true peaks (a correct model), with its settings,
    /// prepared data and the fit's residual y − model.
    fn fitted_from_truth(
        seed: u64,
    ) -> (
        crate::synth::Synthetic,
        FitSettings,
        Prepared,
        PeakFit,
        Vec<f64>,
    ) {
        use crate::synth::{self, Family};
        let s = synth::generate(Family::IssueThree, seed).unwrap();
        let truth: Vec<PeakGuess> = s
            .peaks
            .iter()
            .map(|p| PeakGuess {
                center_nm: p.center_nm,
                height: p.height,
                fwhm_nm: p.fwhm_nm,
            })
            .collect();
        let settings = FitSettings {
            peaks: PeakCount::Fixed(truth.len()),
            ..FitSettings::default()
        };
        let (_, prep) = prepare(&s.spectrum, &settings).unwrap();
        let fit = fit_peaks_with_guesses(&s.spectrum, &settings, &truth).unwrap();
        let r = residuals(&prep, &fit);
        (s, settings, prep, fit, r)
    }

    /// `r` plus a Gaussian of `height` and `fwhm` nm centred at `at` nm.
    fn with_bump(r: &[f64], x: &[f64], at: f64, height: f64, fwhm: f64) -> Vec<f64> {
        let sd = fwhm / GAUSS_FWHM_PER_SIGMA;
        r.iter()
            .zip(x)
            .map(|(v, x)| v + height * (-0.5 * ((x - at) / sd).powi(2)).exp())
            .collect()
    }

    #[test]
    fn local_misfit_is_quiet_on_noise_and_loud_on_a_left_out_peak() {
        for seed in 0..40 {
            let (s, _, prep, _, r) = fitted_from_truth(seed);
            let quiet = local_misfit(&r);
            assert!(quiet < LOCAL_MISFIT_Z, "seed {seed}: {quiet}");
            // A peak 3 noise σ high and 20 nm wide, left out of the model.
            let x = &prep.x;
            let mid = 0.5 * (x[0] + x[x.len() - 1]);
            let z = local_misfit(&with_bump(&r, x, mid, 3.0 * s.noise_sigma, 20.0));
            assert!(z > 2.0 * LOCAL_MISFIT_Z, "seed {seed}: {z}");
        }
        assert_eq!(local_misfit(&[0.0; 64]), 0.0);
    }

    #[test]
    fn unexplained_peak_is_quiet_on_noise_and_loud_on_a_broad_left_out_peak() {
        for seed in 0..40 {
            let (s, settings, prep, fit, r) = fitted_from_truth(seed);
            let quiet = unexplained_peak(&prep, &settings, &fit, &r, s.noise_sigma);
            assert!(quiet < UNEXPLAINED_PEAK_CHI2, "seed {seed}: {quiet}");
            // One noise σ high and 60 nm wide: invisible point by point, not to the filter.
            let loud = with_bump(&r, &prep.x, 600.0, s.noise_sigma, 60.0);
            let z = unexplained_peak(&prep, &settings, &fit, &loud, s.noise_sigma);
            assert!(z > UNEXPLAINED_PEAK_CHI2, "seed {seed}: {z}");
        }
    }

    #[test]
    fn dot_matches_the_plain_sum_for_every_remainder() {
        for n in 0..23 {
            let a: Vec<f64> = (0..n).map(|i| 1.0 + i as f64 * 0.5).collect();
            let b: Vec<f64> = (0..n).map(|i| 2.0 - i as f64 * 0.25).collect();
            let plain: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!(
                (dot(&a, &b) - plain).abs() <= 1e-12 * plain.abs().max(1.0),
                "n = {n}"
            );
        }
    }

    /// The linearised step is the least-squares solution over its window, checked against an
    /// SVD solve of a design matrix built here point by point: free peaks contribute value,
    /// ∂/∂center and ∂/∂fwhm columns, the held peak is subtracted, the baseline's powers follow.
    #[test]
    fn linear_step_is_the_least_squares_solution_over_its_window() {
        let x = axis(1024);
        let spectrum = gaussian_spectrum(
            &x,
            &[(1.0, 450.0, 20.0), (0.6, 470.0, 15.0), (0.8, 560.0, 25.0)],
            0.05,
        );
        let settings = FitSettings {
            peaks: PeakCount::Fixed(3),
            baseline: Baseline::Quadratic,
            ..FitSettings::default()
        };
        let (_, prep) = prepare(&spectrum, &settings).unwrap();
        let guesses = [
            PeakGuess {
                center_nm: 452.0,
                height: 0.9,
                fwhm_nm: 22.0,
            },
            PeakGuess {
                center_nm: 467.0,
                height: 0.5,
                fwhm_nm: 14.0,
            },
            PeakGuess {
                center_nm: 556.0,
                height: 0.7,
                fwhm_nm: 27.0,
            },
        ];
        let free = [true, false, true];
        let points = 100..900;
        let (r, stepped) =
            linear_step(&prep, &settings, &guesses, Some(&free), points.clone()).unwrap();
        assert_eq!(r.len(), points.len());

        let k = 3 * 2 + 3;
        let unit = |g: &PeakGuess| {
            lineshape::Profile::new(LineShape::Gaussian, &[1.0, g.center_nm, g.fwhm_nm])
        };
        let mut a = DMatrix::zeros(points.len(), k);
        let mut b = DVector::zeros(points.len());
        let mut grad = [0.0; 3];
        for (row, i) in points.clone().enumerate() {
            let mut col = 0;
            for (g, _) in guesses.iter().zip(free).filter(|(_, f)| *f) {
                unit(g).eval(prep.x[i], &mut grad);
                for d in grad {
                    a[(row, col)] = d;
                    col += 1;
                }
            }
            for p in 0..3 {
                a[(row, col + p)] = prep.t[i].powi(p as i32);
            }
            let held =
                guesses[1].height / prep.scale * unit(&guesses[1]).eval(prep.x[i], &mut grad);
            b[row] = prep.y[i] - held;
        }
        let coef = a.clone().svd(true, true).solve(&b, 1e-14).unwrap();
        let expected = &b - &a * &coef;
        let worst = r
            .iter()
            .zip(expected.iter())
            .map(|(u, v)| (u - v).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-9, "largest difference {worst}");
        // Not trivially zero: the held peak's misplacement leaves structure.
        assert!(expected.norm() > 1e-3);
        // The step: height a, center + b/a, width + d/a per free peak; the held one unchanged.
        assert_eq!(stepped[1], guesses[1]);
        for (col, j) in [(0, 0), (1, 2)] {
            let (h, dc, dw) = (coef[3 * col], coef[3 * col + 1], coef[3 * col + 2]);
            let g = &guesses[j];
            assert!((stepped[j].height - h * prep.scale).abs() < 1e-9);
            let center = g.center_nm + (dc / h).clamp(-0.5 * g.fwhm_nm, 0.5 * g.fwhm_nm);
            assert!((stepped[j].center_nm - center).abs() < 1e-9);
            let width = (g.fwhm_nm + dw / h).clamp(0.5 * g.fwhm_nm, 2.0 * g.fwhm_nm);
            assert!((stepped[j].fwhm_nm - width).abs() < 1e-9);
        }
    }

    /// An unresolved pair fitted with its weaker peak on the wrong side of the stronger one is a
    /// local minimum (held-out hard spectrum 2³² + 495 had this shape); `mirror` reflects it.
    #[test]
    fn mirror_moves_the_weaker_peak_of_a_pair_to_its_other_side() {
        let x = axis(2048);
        let sigma = 0.015;
        let clean = gaussian_spectrum(&x, &[(1.0, 541.4, 25.0), (0.28, 558.9, 18.0)], 0.1);
        // Deterministic noise: a sum of twelve uniforms from a 64-bit LCG, variance σ².
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut uniform = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let y: Vec<f64> = clean
            .values()
            .iter()
            .map(|v| v + sigma * ((0..12).map(|_| uniform()).sum::<f64>() - 6.0))
            .collect();
        let spectrum = Spectrum::new(x.clone(), y).unwrap();
        let settings = FitSettings {
            peaks: PeakCount::Fixed(2),
            ..FitSettings::default()
        };
        let (_, prep) = prepare(&spectrum, &settings).unwrap();
        let wrong = fit_peaks_with_guesses(
            &spectrum,
            &settings,
            &[
                PeakGuess {
                    center_nm: 536.3,
                    height: 0.28,
                    fwhm_nm: 18.0,
                },
                PeakGuess {
                    center_nm: 546.3,
                    height: 0.85,
                    fwhm_nm: 29.5,
                },
            ],
        )
        .unwrap();
        let near = |f: &PeakFit, c: f64| f.peaks.iter().any(|p| (p.center_nm - c).abs() < 3.0);
        assert!(
            !near(&wrong, 558.9),
            "not a local minimum: {:?}",
            wrong.peaks
        );
        let fixed = mirror(
            &prep,
            &settings,
            wrong.clone(),
            sigma,
            &mut Trail::default(),
        );
        assert!(
            near(&fixed, 541.4) && near(&fixed, 558.9),
            "{:?}",
            fixed.peaks
        );
        assert!(fixed.statistics.chi_square < wrong.statistics.chi_square - 2.0 * sigma * sigma);
        // A correct fit is left alone.
        let again = mirror(
            &prep,
            &settings,
            fixed.clone(),
            sigma,
            &mut Trail::default(),
        );
        assert_eq!(again.peaks.len(), 2);
        assert_eq!(again.statistics.chi_square, fixed.statistics.chi_square);
    }

    /// A broad peak absorbed by a curved baseline, with the spare peak parked on the window's
    /// edge (held-out hard spectrum 2³² + 219): without that peak, the residual's best
    /// matched-filter candidates sit beside the edge again, so a relocation must also offer the
    /// best candidate clear of the removed peak.
    #[test]
    fn relocation_moves_a_spare_edge_peak_to_the_broad_peak_the_baseline_absorbed() {
        let s = crate::synth::generate(crate::synth::Family::Hard, (1 << 32) + 219).unwrap();
        let broad = s
            .peaks
            .iter()
            .max_by(|a, b| a.fwhm_nm.total_cmp(&b.fwhm_nm))
            .copied()
            .unwrap();
        let settings = FitSettings {
            peaks: PeakCount::Fixed(s.peaks.len()),
            baseline: Baseline::Quadratic,
            ..FitSettings::default()
        };
        let (_, prep) = prepare(&s.spectrum, &settings).unwrap();
        let edge = PeakGuess {
            center_nm: prep.window.0 + 5.0,
            height: 0.75,
            fwhm_nm: 45.0,
        };
        // Every true peak but the broad one, and the spare peak on the edge.
        let mut guesses: Vec<PeakGuess> = s
            .peaks
            .iter()
            .filter(|p| p.center_nm != broad.center_nm)
            .map(|p| PeakGuess {
                center_nm: p.center_nm,
                height: p.height,
                fwhm_nm: p.fwhm_nm,
            })
            .collect();
        guesses.push(edge);
        let wrong = fit_peaks_with_guesses(&s.spectrum, &settings, &guesses).unwrap();
        let near =
            |f: &PeakFit, c: f64, w: f64| f.peaks.iter().any(|p| (p.center_nm - c).abs() < 0.5 * w);
        assert!(
            !near(&wrong, broad.center_nm, broad.fwhm_nm),
            "not a local minimum: {:?}",
            wrong.peaks
        );
        let sigma = s.noise_sigma;
        assert!(suspicious(&prep, &settings, &wrong, sigma));
        let fixed = exchange(
            &prep,
            &settings,
            wrong.clone(),
            sigma,
            &mut Trail::default(),
        );
        let centers: Vec<f64> = fixed.peaks.iter().map(|q| q.center_nm).collect();
        for p in &s.peaks {
            assert!(
                near(&fixed, p.center_nm, p.fwhm_nm),
                "{p:?} missed: {centers:?}"
            );
        }
        assert!(fixed.statistics.chi_square < wrong.statistics.chi_square - 100.0 * sigma * sigma);
    }
}
