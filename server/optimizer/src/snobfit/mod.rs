//! SNOBFIT (Huyer & Neumaier, ACM TOMS 35(2), 2008), ported from the MATLAB v2.1 logic as
//! described in `shared/SNOBFIT.md`, with the numerical defects of the Python port fixed.
//!
//! SNOBFIT is a request generator: [`Snobfit::tell`] buffers measured points; [`Snobfit::ask`]
//! first processes the buffer (duplicate merging and re-measurement averaging, branching of the
//! box partition, safeguarded nearest neighbours, failed-point imputation, local linear fits)
//! and then generates a batch split among the five point classes.
//!
//! Deviations from MATLAB v2.1, all documented in the crate README:
//! * least squares and the inverse of the QR factor use SVD pseudo-inverses (never fail);
//! * MINQ (bound-constrained QP) is replaced by multi-start exact coordinate descent, which
//!   like MINQ returns a local minimiser of a possibly indefinite quadratic over the box;
//! * the search box is fixed (points outside it are clamped when told), so `snobnewb` is not
//!   needed;
//! * a final guard drops any request that coincides with a known point or with an earlier
//!   request of the batch (rare boundary cases) and refills with class 5.

mod fit;
mod partition;

use crate::rng::StateRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::{OptimizerError, Proposal, ProposalKind, Space};

pub use fit::box_qp;
pub use partition::{box_contains, check_partition};

/// SNOBFIT settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnobfitSettings {
    /// Expected share of class-4 (global) points among classes 2–4 (reference default 0.5).
    #[serde(default = "default_p")]
    pub p: f64,
}

fn default_p() -> f64 {
    0.5
}

impl Default for SnobfitSettings {
    fn default() -> Self {
        Self { p: default_p() }
    }
}

/// Per-point state (one point per box).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Point {
    /// Coordinates (on the grid).
    pub x: Vec<f64>,
    /// Function value (mean of replicates; imputed for failed points).
    #[serde(with = "crate::nonfinite")]
    pub f: f64,
    /// Uncertainty of `f`.
    pub df: f64,
    /// Model value at the local-fit minimiser `y` (f(:,3) of MATLAB).
    #[serde(with = "crate::nonfinite")]
    pub f3: f64,
    /// Box lower corner.
    pub xl: Vec<f64>,
    /// Box upper corner.
    pub xu: Vec<f64>,
    /// Splits per coordinate that produced this box.
    pub nsplit: Vec<u32>,
    /// −Σ round(log2(relative side)): large = small box.
    pub small: i64,
    /// Safeguarded nearest neighbours (indices).
    pub near: Vec<usize>,
    /// Neighbour radius (∞ until neighbours are known).
    #[serde(with = "crate::nonfinite")]
    pub d: f64,
    /// Number of replicates.
    pub np: u32,
    /// np × variance of replicates.
    pub t: f64,
    /// The evaluation failed (value imputed from neighbours).
    pub failed: bool,
    /// Local-fit minimiser (trust-region point).
    pub y: Vec<f64>,
    /// Local-fit gradient.
    pub g: Vec<f64>,
    /// Local-fit model error estimate.
    pub sigma: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Pending {
    x: Vec<f64>,
    #[serde(with = "crate::nonfinite")]
    f: f64,
    df: f64,
}

/// The SNOBFIT state (everything MATLAB keeps in its .mat file, plus the generator).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snobfit {
    space: Space,
    u: Vec<f64>,
    v: Vec<f64>,
    dx: Vec<f64>,
    p: f64,
    points: Vec<Point>,
    pending: Vec<Pending>,
    /// Neighbour structure available (N ≥ n+6 and f not constant).
    have_near: bool,
    rng: StateRng,
}

/// √eps: the uncertainty used when none is given (as MATLAB).
const SQRT_EPS: f64 = 1.490_116_119_384_765_6e-8;
const EPS: f64 = f64::EPSILON;

impl Snobfit {
    /// New, empty SNOBFIT over `space` (bounds = the search box, resolution = `dx`).
    pub fn new(space: &Space, s: &SnobfitSettings, seed: u64) -> Result<Self, OptimizerError> {
        if !(s.p.is_finite() && (0.0..=1.0).contains(&s.p)) {
            return Err(OptimizerError::InvalidSettings(
                "p must be in [0, 1]".into(),
            ));
        }
        Ok(Self {
            space: space.clone(),
            u: space.lower(),
            v: space.upper(),
            dx: space.dx(),
            p: s.p,
            points: Vec::new(),
            pending: Vec::new(),
            have_near: false,
            rng: StateRng::seed_from_u64(seed),
        })
    }

    fn n(&self) -> usize {
        self.u.len()
    }

    /// The points, with their boxes (for inspection and the partition tests).
    pub fn points(&self) -> &[Point] {
        &self.points
    }

    /// The search box.
    pub fn bounds(&self) -> (&[f64], &[f64]) {
        (&self.u, &self.v)
    }

    /// Buffer a measured point (already snapped to the grid). `f = None` = failed.
    pub fn tell(&mut self, x: Vec<f64>, f: Option<f64>, sd: Option<f64>) {
        let df = match sd {
            Some(s) if s > 0.0 && s.is_finite() => s,
            _ => SQRT_EPS,
        };
        self.pending.push(Pending {
            x,
            f: f.unwrap_or(f64::NAN),
            df,
        });
    }

    /// Process buffered points and generate up to `nreq` requests.
    pub fn ask(&mut self, nreq: usize) -> Vec<Proposal> {
        self.update();
        let mut req = self.generate(nreq);
        self.guard(&mut req, nreq);
        req.into_iter()
            .map(|r| Proposal {
                x: r.x,
                kind: ProposalKind::Snobfit { class: r.class },
                predicted: r.f.is_finite().then_some(r.f),
            })
            .collect()
    }

    /// `true` if a and b differ by at least dx in some coordinate (tolerance eps).
    fn differ(&self, a: &[f64], b: &[f64], tol: &[f64]) -> bool {
        a.iter()
            .zip(b)
            .zip(tol)
            .any(|((p, q), t)| (p - q).abs() - t >= -EPS * (1.0 + t.abs()) - 1e-9 * t)
    }

    fn differs_from_all_points(&self, y: &[f64]) -> bool {
        self.points.iter().all(|p| self.differ(&p.x, y, &self.dx))
    }

    /// snobround: clamp into [lo, hi], round to the grid, nudge back inside.
    fn round_in(&self, x: &[f64], lo: &[f64], hi: &[f64]) -> Vec<f64> {
        let mut y = self.space.snap(x);
        for i in 0..y.len() {
            let p = &self.space.parameters[i];
            if y[i] < lo[i] - 1e-12 {
                y[i] = p.snap(y[i] + self.dx[i]);
            }
            if y[i] > hi[i] + 1e-12 {
                y[i] = p.snap(y[i] - self.dx[i]);
            }
        }
        y
    }

    // ---------------------------------------------------------------- input processing

    fn update(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let nxold = self.points.len();
        let mut inew: Vec<usize> = Vec::new();

        // snobupdt: re-measurements of old points.
        let mut fresh: Vec<Pending> = Vec::new();
        for p in pending {
            let idx = self.space.grid_index(&p.x);
            let old = self
                .points
                .iter()
                .position(|q| self.space.grid_index(&q.x) == idx);
            match old {
                Some(i) => {
                    let pt = &mut self.points[i];
                    if !pt.failed {
                        if p.f.is_finite() {
                            pt.np += 1;
                            let np = f64::from(pt.np);
                            let delta = p.f - pt.f;
                            pt.f += delta / np;
                            pt.t += delta * (p.f - pt.f);
                            let var = pt.df * pt.df
                                + (delta * (p.f - pt.f) + p.df * p.df - pt.df * pt.df) / np;
                            pt.df = var.max(0.0).sqrt().max(SQRT_EPS);
                            inew.push(i);
                        }
                    } else if p.f.is_finite() {
                        pt.f = p.f;
                        pt.df = p.df;
                        pt.failed = false;
                        inew.push(i);
                    }
                }
                None => fresh.push(p),
            }
        }
        // snobinput: merge duplicates among the new points (mean, t = Σ(f − f̄)²).
        let mut groups: Vec<(Vec<i64>, Vec<Pending>)> = Vec::new();
        for p in fresh {
            let idx = self.space.grid_index(&p.x);
            match groups.iter_mut().find(|g| g.0 == idx) {
                Some(g) => g.1.push(p),
                None => groups.push((idx, vec![p])),
            }
        }
        let mut merged: Vec<(Pending, u32, f64)> = Vec::new();
        for (_, g) in groups {
            let ok: Vec<&Pending> = g.iter().filter(|p| p.f.is_finite()).collect();
            if ok.len() > 1 {
                let k = ok.len() as f64;
                let mean = ok.iter().map(|p| p.f).sum::<f64>() / k;
                let t: f64 = ok.iter().map(|p| (p.f - mean).powi(2)).sum();
                let df0 = ok[0].df;
                let first = Pending {
                    x: ok[0].x.clone(),
                    f: mean,
                    df: ((df0 * df0 + t) / k).sqrt().max(SQRT_EPS),
                };
                merged.push((first, ok.len() as u32, t));
            } else if let Some(p) = ok.first() {
                merged.push(((*p).clone(), 1, 0.0));
            } else if let Some(p) = g.into_iter().next() {
                merged.push((p, 1, 0.0));
            }
        }
        let n = self.n();
        for (p, np, t) in merged {
            let df = p.df;
            self.points.push(Point {
                y: p.x.clone(),
                x: p.x,
                failed: !p.f.is_finite(),
                f: p.f,
                df,
                f3: f64::NAN,
                xl: self.u.clone(),
                xu: self.v.clone(),
                nsplit: vec![0; n],
                small: 0,
                near: Vec::new(),
                d: f64::INFINITY,
                np,
                t,
                g: vec![0.0; n],
                sigma: 0.0,
            });
        }
        let nx = self.points.len();
        if nx == nxold {
            // only re-measurements
            self.after_update(nxold, inew);
            return;
        }
        inew.extend(nxold..nx);
        // snobsplit: branch the boxes that received new points.
        let parents = partition::branch(self, nxold);
        inew.extend(parents);
        self.after_update(nxold, inew);
    }

    fn after_update(&mut self, nxold: usize, mut inew: Vec<usize>) {
        let n = self.n();
        let nneigh = n + 5;
        let nx = self.points.len();
        let finite: Vec<f64> = self
            .points
            .iter()
            .filter(|p| !p.failed)
            .map(|p| p.f)
            .collect();
        let fmn = finite.iter().copied().fold(f64::INFINITY, f64::min);
        let fmx = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !(nx > nneigh && fmn < fmx) {
            self.have_near = false;
            for p in &mut self.points {
                p.near.clear();
                p.d = f64::INFINITY;
            }
            return;
        }
        let first_time = !self.have_near;
        self.have_near = true;
        for j in nxold..nx {
            let (near, d) = partition::nearest(self, j, nneigh);
            self.points[j].near = near;
            self.points[j].d = d;
        }
        for j in 0..nxold {
            let dj = self.points[j].d;
            let approached =
                first_time || (nxold..nx).any(|k| dist(&self.points[j].x, &self.points[k].x) < dj);
            if approached {
                let (near, d) = partition::nearest(self, j, nneigh);
                self.points[j].near = near;
                self.points[j].d = d;
                inew.push(j);
            }
        }
        inew.sort_unstable();
        inew.dedup();
        self.impute_failed(&inew);
        for &j in &inew {
            fit::local_fit(self, j);
        }
    }

    /// snobnan: failed points look slightly worse than their worst finite neighbour.
    fn impute_failed(&mut self, inew: &[usize]) {
        let ok: Vec<usize> = (0..self.points.len())
            .filter(|&i| !self.points[i].failed)
            .collect();
        if ok.is_empty() {
            return;
        }
        let (mut imax, mut fmx, mut fmn) = (ok[0], f64::NEG_INFINITY, f64::INFINITY);
        for &i in &ok {
            let f = self.points[i].f;
            if f > fmx {
                fmx = f;
                imax = i;
            }
            fmn = fmn.min(f);
        }
        let dfmax = self.points[imax].df;
        for &l in inew {
            if !self.points[l].failed {
                continue;
            }
            let nb: Vec<usize> = self.points[l]
                .near
                .iter()
                .copied()
                .filter(|&k| !self.points[k].failed)
                .collect();
            if nb.is_empty() {
                self.points[l].f = fmx + 1e-3 * (fmx - fmn);
                self.points[l].df = dfmax;
            } else {
                let (mut kmax, mut m1, mut m0) = (nb[0], f64::NEG_INFINITY, f64::INFINITY);
                for &k in &nb {
                    let f = self.points[k].f;
                    if f > m1 {
                        m1 = f;
                        kmax = k;
                    }
                    m0 = m0.min(f);
                }
                self.points[l].f = m1 + 1e-3 * (m1 - m0);
                self.points[l].df = self.points[kmax].df;
            }
        }
    }

    // ---------------------------------------------------------------- request generation

    fn generate(&mut self, nreq: usize) -> Vec<Req> {
        if !self.have_near {
            return self.class5(&[], nreq);
        }
        let n = self.n();
        let nx = self.points.len();
        let dy: Vec<f64> = (0..n).map(|i| 0.1 * (self.v[i] - self.u[i])).collect();
        let dyx: Vec<f64> = (0..n).map(|i| dy[i].max(self.dx[i])).collect();
        let mut req: Vec<Req> = Vec::new();
        let mut ind: Vec<usize> = (0..nx).collect();
        let minsmall = ind.iter().map(|&i| self.points[i].small).min().unwrap_or(0);
        let mut k: Vec<usize> = ind
            .iter()
            .copied()
            .filter(|&i| self.points[i].small == minsmall)
            .collect();
        k.sort_by(|&a, &b| self.points[a].f.total_cmp(&self.points[b].f));
        let mut isplit: Vec<usize> = k.first().copied().into_iter().collect();
        let jbest = self.best_index();

        // Class 1: minimiser of the quadratic model around the best point.
        if let Some(jb) = jbest {
            let (z, f1) = fit::quadratic_fit(self, jb);
            if self.differs_from_all_points(&z) {
                if let Some(j) = self.box_of(&z) {
                    if self.thin(j) {
                        isplit.push(j);
                    } else {
                        req.push(Req {
                            x: z,
                            f: f1,
                            class: 1,
                        });
                    }
                }
            }
        }

        // Split of the remainder between local (2, 3) and global (4) points.
        if req.len() < nreq {
            let globloc = nreq - req.len();
            let glob1 = globloc as f64 * self.p;
            let glob2 = glob1.floor();
            let glob = if self.rng.random::<f64>() < glob1 - glob2 {
                glob2 as usize + 1
            } else {
                glob2 as usize
            };
            let loc = globloc.saturating_sub(glob);
            if loc > 0 {
                let (local, nlocal) = self.local_points(&ind);
                for (class, set) in [(2u8, local), (3u8, nlocal)] {
                    let mut set = set;
                    set.sort_by(|&a, &b| self.points[a].f3.total_cmp(&self.points[b].f3));
                    for l0 in set {
                        if req.len() >= nreq - glob {
                            break;
                        }
                        let y1 = self.round_in(&self.points[l0].y, &self.u, &self.v);
                        let Some(l) = self.box_of(&y1) else { continue };
                        if self.thin(l) {
                            isplit.push(l);
                            continue;
                        }
                        if self.differ(&y1, &self.points[l].x, &self.dx)
                            && req.iter().all(|r| self.differ(&r.x, &y1, &dyx))
                        {
                            let f1 = if y1 != self.points[l0].y {
                                self.model_value(l0, &y1)
                            } else {
                                self.points[l0].f3
                            };
                            req.push(Req {
                                x: y1,
                                f: f1,
                                class,
                            });
                        }
                    }
                }
            }
        }

        // Class 4: boxes queued for splitting, then the best boxes of each size level.
        for l in isplit {
            if req.len() >= nreq {
                break;
            }
            let Some(pos) = ind.iter().position(|&i| i == l) else {
                continue;
            };
            ind.remove(pos);
            let (y1, f1) = self.box_point(l);
            if self.differ(&y1, &self.points[l].x, &self.dx)
                && req.iter().all(|r| self.differ(&r.x, &y1, &self.dx))
            {
                req.push(Req {
                    x: y1,
                    f: f1,
                    class: 4,
                });
            }
        }
        // MATLAB v2.1 / SQSnobFit: repeatedly the lowest-f box among the largest remaining
        // boxes (minimal `small`). (Before issue #16 this cycled through the size levels
        // minsmall .. minsmall + (maxsmall − minsmall)/3, an undocumented deviation.)
        while req.len() < nreq {
            let Some(level) = ind.iter().map(|&i| self.points[i].small).min() else {
                break;
            };
            let l = ind
                .iter()
                .copied()
                .filter(|&i| self.points[i].small == level)
                .min_by(|&a, &b| self.points[a].f.total_cmp(&self.points[b].f));
            let Some(l) = l else { break };
            ind.retain(|&i| i != l);
            let (y1, f1) = self.box_point(l);
            if self.differ(&y1, &self.points[l].x, &self.dx)
                && req.iter().all(|r| self.differ(&r.x, &y1, &dyx))
            {
                req.push(Req {
                    x: y1,
                    f: f1,
                    class: 4,
                });
            }
        }

        // Class 5: space filling.
        if req.len() < nreq {
            let more = self.class5(&req, nreq - req.len());
            req.extend(more);
        }
        req
    }

    /// Index of the best (lowest f) non-failed point.
    fn best_index(&self) -> Option<usize> {
        (0..self.points.len())
            .filter(|&i| !self.points[i].failed)
            .min_by(|&a, &b| self.points[a].f.total_cmp(&self.points[b].f))
    }

    /// Best point and value (minimisation sense).
    pub fn best(&self) -> Option<(&[f64], f64)> {
        self.best_index()
            .map(|i| (self.points[i].x.as_slice(), self.points[i].f))
    }

    /// The box containing y (the largest one if y lies on shared faces).
    fn box_of(&self, y: &[f64]) -> Option<usize> {
        (0..self.points.len())
            .filter(|&i| box_contains(&self.points[i].xl, &self.points[i].xu, y))
            .min_by_key(|&i| self.points[i].small)
    }

    fn thin(&self, j: usize) -> bool {
        let p = &self.points[j];
        let rel: Vec<f64> = (0..self.n())
            .map(|i| (p.xu[i] - p.xl[i]) / (self.v[i] - self.u[i]))
            .collect();
        let dmax = rel.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let dmin = rel.iter().copied().fold(f64::INFINITY, f64::min);
        dmin <= 0.05 * dmax
    }

    /// snoblp: local points have f below min_near f − 0.2 (max_near f − min_near f).
    fn local_points(&self, ind: &[usize]) -> (Vec<usize>, Vec<usize>) {
        let mut local = Vec::new();
        let mut nlocal = Vec::new();
        for &j in ind {
            let near = &self.points[j].near;
            if near.is_empty() {
                nlocal.push(j);
                continue;
            }
            let fs = near.iter().map(|&k| self.points[k].f);
            let fmi = fs.clone().fold(f64::INFINITY, f64::min);
            let fma = fs.fold(f64::NEG_INFINITY, f64::max);
            if self.points[j].f < fmi - 0.2 * (fma - fmi) {
                local.push(j);
            } else {
                nlocal.push(j);
            }
        }
        (local, nlocal)
    }

    /// Value of point l's local model at y.
    fn model_value(&self, l: usize, y: &[f64]) -> f64 {
        let p = &self.points[l];
        let mut lin = 0.0;
        let mut quad = 0.0;
        for i in 0..self.n() {
            let s = y[i] - p.x[i];
            lin += p.g[i] * s;
            quad += s * s * p.df / (self.dx[i] * self.dx[i]);
        }
        p.f + lin + p.sigma * (quad + p.df)
    }

    /// snobpoint: per coordinate, halfway towards the farther face of the box.
    fn box_point(&self, l: usize) -> (Vec<f64>, f64) {
        let p = &self.points[l];
        let n = self.n();
        let y: Vec<f64> = (0..n)
            .map(|i| {
                let yi = if p.x[i] - p.xl[i] > p.xu[i] - p.x[i] {
                    0.5 * (p.xl[i] + p.x[i])
                } else {
                    0.5 * (p.x[i] + p.xu[i])
                };
                yi.clamp(self.u[i], self.v[i])
            })
            .collect();
        let lo: Vec<f64> = (0..n).map(|i| p.xl[i].max(self.u[i])).collect();
        let hi: Vec<f64> = (0..n).map(|i| p.xu[i].min(self.v[i])).collect();
        let y = self.round_in(&y, &lo, &hi);
        let f = self.model_value(l, &y);
        (y, f)
    }

    /// snob5: max-min design from 100·m uniform candidates (unscaled distances, as MATLAB).
    fn class5(&mut self, req: &[Req], m: usize) -> Vec<Req> {
        let n = self.n();
        let mut taken: Vec<Vec<f64>> = self.points.iter().map(|p| p.x.clone()).collect();
        taken.extend(req.iter().map(|r| r.x.clone()));
        let ncand = 100 * m;
        let mut cand: Vec<Vec<f64>> = (0..ncand)
            .map(|_| {
                let x: Vec<f64> = (0..n)
                    .map(|i| self.u[i] + self.rng.random::<f64>() * (self.v[i] - self.u[i]))
                    .collect();
                self.round_in(&x, &self.u, &self.v)
            })
            .collect();
        let mut out: Vec<Req> = Vec::new();
        let mut d: Vec<f64>;
        if taken.is_empty() {
            let first = cand.remove(0);
            d = cand.iter().map(|c| sqdist(c, &first)).collect();
            out.push(Req {
                x: first,
                f: f64::NAN,
                class: 5,
            });
        } else {
            d = cand
                .iter()
                .map(|c| {
                    taken
                        .iter()
                        .map(|t| sqdist(c, t))
                        .fold(f64::INFINITY, f64::min)
                })
                .collect();
        }
        while out.len() < m && !cand.is_empty() {
            let (i, dmax) =
                d.iter()
                    .copied()
                    .enumerate()
                    .fold(
                        (0, f64::NEG_INFINITY),
                        |acc, (i, v)| {
                            if v > acc.1 {
                                (i, v)
                            } else {
                                acc
                            }
                        },
                    );
            if dmax <= 0.0 {
                break;
            }
            let y = cand.remove(i);
            d.remove(i);
            for (c, dc) in cand.iter().zip(d.iter_mut()) {
                *dc = dc.min(sqdist(c, &y));
            }
            let f = if self.have_near {
                self.box_of(&y)
                    .map(|l| self.model_value(l, &y))
                    .unwrap_or(f64::NAN)
            } else {
                f64::NAN
            };
            out.push(Req { x: y, f, class: 5 });
        }
        out
    }

    /// Drop requests that coincide with a known point or an earlier request; refill.
    fn guard(&mut self, req: &mut Vec<Req>, nreq: usize) {
        let mut kept: Vec<Req> = Vec::with_capacity(req.len());
        for r in req.drain(..) {
            if self.differs_from_all_points(&r.x)
                && kept.iter().all(|k| self.differ(&k.x, &r.x, &self.dx))
            {
                kept.push(r);
            }
        }
        if kept.len() < nreq {
            let more = self.class5(&kept, nreq - kept.len());
            kept.extend(more);
        }
        *req = kept;
    }
}

#[derive(Debug, Clone)]
struct Req {
    x: Vec<f64>,
    f: f64,
    class: u8,
}

pub(crate) fn sqdist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum()
}

pub(crate) fn dist(a: &[f64], b: &[f64]) -> f64 {
    sqdist(a, b).sqrt()
}
