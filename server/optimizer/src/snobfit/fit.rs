//! SNOBFIT's models: the local linear fit with the noise-aware trust region (`snoblocf`) and the
//! full quadratic fit around the best point (`snobqfit`) with a bound-constrained quadratic
//! minimiser standing in for MINQ.

use nalgebra::{DMatrix, DVector};
use rand::Rng;

use super::{sqdist, Snobfit};
use crate::linalg::{lstsq, lstsq_floored, pinv};

/// 1-D minimiser of a p² + b p over [lo, hi] (`snobqmin`).
fn qmin(a: f64, b: f64, lo: f64, hi: f64) -> f64 {
    if a > 0.0 {
        (-0.5 * b / a).clamp(lo, hi)
    } else {
        let fl = a * lo * lo + b * lo;
        let fu = a * hi * hi + b * hi;
        if fu <= fl {
            hi
        } else {
            lo
        }
    }
}

/// snoblocf: local linear fit around point j from its neighbours; stores y_j, f3_j, g_j, σ_j.
pub(super) fn local_fit(s: &mut Snobfit, j: usize) {
    let n = s.n();
    let near = s.points[j].near.clone();
    let k = near.len();
    if k <= n {
        return;
    }
    let x0 = s.points[j].x.clone();
    let f0 = s.points[j].f;
    let df0 = s.points[j].df;
    let dd: Vec<f64> = (0..n).map(|i| df0 / (s.dx[i] * s.dx[i])).collect();
    let mut a = DMatrix::<f64>::zeros(k, n);
    let mut b = DVector::<f64>::zeros(k);
    let mut d = s.dx.clone();
    for (r, &q) in near.iter().enumerate() {
        let sr: Vec<f64> = (0..n).map(|i| s.points[q].x[i] - x0[i]).collect();
        let sc = (0..n).map(|i| sr[i] * sr[i] * dd[i]).sum::<f64>() + s.points[q].df;
        let sc = if sc > 0.0 && sc.is_finite() { sc } else { 1.0 };
        for i in 0..n {
            a[(r, i)] = sr[i] / sc;
            d[i] = d[i].max(0.5 * sr[i].abs());
        }
        b[r] = (s.points[q].f - f0) / sc;
    }
    // MATLAB v2.1 snoblocf: singular values floored at 1e-4·σ₁ (a regularised, never
    // singular solve; SQSnobFit 0.4.5 dropped the floor).
    let g = lstsq_floored(&a, &b, 1e-4);
    let resid = &a * &g - &b;
    let sigma = (resid.norm_squared() / (k - n) as f64).sqrt();
    let sigma = if sigma.is_finite() { sigma } else { 0.0 };
    let pl: Vec<f64> = (0..n).map(|i| (-d[i]).max(s.u[i] - x0[i])).collect();
    let pu: Vec<f64> = (0..n).map(|i| d[i].min(s.v[i] - x0[i])).collect();
    let p: Vec<f64> = (0..n)
        .map(|i| qmin(sigma * dd[i], g[i], pl[i], pu[i]))
        .collect();
    let target: Vec<f64> = (0..n).map(|i| x0[i] + p[i]).collect();
    let mut y = s.round_in(&target, &s.u, &s.v);
    let mut nc = 0;
    while !s.differs_from_all_points(&y) && nc < 5 {
        let t: Vec<f64> = (0..n)
            .map(|i| x0[i] + pl[i] + (pu[i] - pl[i]) * s.rng.random::<f64>())
            .collect();
        y = s.round_in(&t, &s.u, &s.v);
        nc += 1;
    }
    let pp: Vec<f64> = (0..n).map(|i| y[i] - x0[i]).collect();
    let err = (0..n).map(|i| pp[i] * pp[i] * dd[i]).sum::<f64>() + df0;
    let f1 = f0 + (0..n).map(|i| pp[i] * g[i]).sum::<f64>() + sigma * err;
    let pt = &mut s.points[j];
    pt.y = y;
    pt.f3 = f1;
    pt.g = g.iter().copied().collect();
    pt.sigma = sigma;
}

/// snobqfit: quadratic model around point j from its K = min(N−1, n(n+3)) nearest points,
/// weighted by distance³ in the metric of the local point cloud; minimised over the trust box.
/// Returns the rounded minimiser and the model value there.
pub(super) fn quadratic_fit(s: &mut Snobfit, j: usize) -> (Vec<f64>, f64) {
    let n = s.n();
    let nx = s.points.len();
    let kk = (nx - 1).min(n * (n + 3));
    let x0 = s.points[j].x.clone();
    let f0 = s.points[j].f;
    let mut order: Vec<usize> = (0..nx).filter(|&i| i != j).collect();
    order.sort_by(|&a, &b| {
        sqdist(&s.points[a].x, &x0)
            .total_cmp(&sqdist(&s.points[b].x, &x0))
            .then(a.cmp(&b))
    });
    order.truncate(kk);
    // trust box half-width from the safeguarded neighbours
    let mut d = s.dx.clone();
    for &q in &s.points[j].near {
        for i in 0..n {
            d[i] = d[i].max((s.points[q].x[i] - x0[i]).abs());
        }
    }
    let sm = DMatrix::<f64>::from_fn(kk, n, |r, i| s.points[order[r]].x[i] - x0[i]);
    // R of a thin QR of S; weights ‖s_k R⁺‖³ (pseudo-inverse instead of inv: see SNOBFIT.md 1.9.3)
    let r = sm.clone().qr().r();
    let rinv = pinv(&r);
    let sr = &sm * &rinv;
    let nq = n + n + n * (n - 1) / 2;
    let mut a = DMatrix::<f64>::zeros(kk, nq);
    let mut b = DVector::<f64>::zeros(kk);
    for row in 0..kk {
        let sc = sr.row(row).norm_squared().powf(1.5);
        let sc = if sc > 0.0 && sc.is_finite() { sc } else { 1.0 };
        let srow: Vec<f64> = (0..n).map(|i| sm[(row, i)]).collect();
        let mut c = 0;
        for i in 0..n {
            a[(row, c)] = srow[i] / sc;
            c += 1;
        }
        for i in 0..n {
            a[(row, c)] = 0.5 * srow[i] * srow[i] / sc;
            c += 1;
        }
        for i in 0..n {
            for l in i + 1..n {
                a[(row, c)] = srow[i] * srow[l] / sc;
                c += 1;
            }
        }
        b[row] = (s.points[order[row]].f - f0) / sc;
    }
    let coef = lstsq(&a, &b);
    let g: Vec<f64> = (0..n).map(|i| coef[i]).collect();
    let mut gm = DMatrix::<f64>::zeros(n, n);
    for i in 0..n {
        gm[(i, i)] = coef[n + i];
    }
    let mut c = 2 * n;
    for i in 0..n {
        for l in i + 1..n {
            gm[(i, l)] = coef[c];
            gm[(l, i)] = coef[c];
            c += 1;
        }
    }
    let lo: Vec<f64> = (0..n).map(|i| (x0[i] - d[i]).max(s.u[i]) - x0[i]).collect();
    let hi: Vec<f64> = (0..n).map(|i| (x0[i] + d[i]).min(s.v[i]) - x0[i]).collect();
    let p = box_qp(&g, &gm, &lo, &hi);
    let target: Vec<f64> = (0..n).map(|i| x0[i] + p[i]).collect();
    let mut y = s.round_in(&target, &s.u, &s.v);
    let mut nc = 0;
    while !s.differs_from_all_points(&y) && nc < 10 {
        let t: Vec<f64> = (0..n)
            .map(|i| x0[i] + lo[i] + (hi[i] - lo[i]) * s.rng.random::<f64>())
            .collect();
        y = s.round_in(&t, &s.u, &s.v);
        nc += 1;
    }
    let py: Vec<f64> = (0..n).map(|i| y[i] - x0[i]).collect();
    (y, f0 + quad_value(&g, &gm, &py))
}

fn quad_value(g: &[f64], gm: &DMatrix<f64>, p: &[f64]) -> f64 {
    let n = g.len();
    let mut v = 0.0;
    for i in 0..n {
        v += g[i] * p[i];
        for l in 0..n {
            v += 0.5 * p[i] * gm[(i, l)] * p[l];
        }
    }
    v
}

/// Local minimiser of gᵀp + ½ pᵀGp over the box [lo, hi] (G possibly indefinite): exact
/// coordinate descent from several starts (the centre, the projected Newton point and, for
/// n ≤ 6, every corner); the best end point is returned.
pub fn box_qp(g: &[f64], gm: &DMatrix<f64>, lo: &[f64], hi: &[f64]) -> Vec<f64> {
    let n = g.len();
    let mut starts: Vec<Vec<f64>> = vec![(0..n).map(|i| 0.0f64.clamp(lo[i], hi[i])).collect()];
    let newton = lstsq(gm, &DVector::from_iterator(n, g.iter().map(|v| -v)));
    starts.push((0..n).map(|i| newton[i].clamp(lo[i], hi[i])).collect());
    if n <= 6 {
        for mask in 0..(1usize << n) {
            starts.push(
                (0..n)
                    .map(|i| if mask >> i & 1 == 1 { hi[i] } else { lo[i] })
                    .collect(),
            );
        }
    }
    let mut best: Option<(f64, Vec<f64>)> = None;
    for mut p in starts {
        for _sweep in 0..200 {
            let mut moved = 0.0f64;
            for i in 0..n {
                let mut b = g[i];
                for l in 0..n {
                    if l != i {
                        b += gm[(i, l)] * p[l];
                    }
                }
                let new = qmin(0.5 * gm[(i, i)], b, lo[i], hi[i]);
                moved = moved.max((new - p[i]).abs());
                p[i] = new;
            }
            let scale = (0..n).map(|i| hi[i] - lo[i]).fold(0.0, f64::max);
            if moved <= 1e-12 * scale.max(1e-300) {
                break;
            }
        }
        let v = quad_value(g, gm, &p);
        if v.is_finite() && best.as_ref().is_none_or(|b| v < b.0) {
            best = Some((v, p));
        }
    }
    best.map(|b| b.1).unwrap_or_else(|| vec![0.0; n])
}
