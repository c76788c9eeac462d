//! SNOBFIT's branch step (`snobsplit`): the box partition with exactly one point per box, and
//! the safeguarded nearest neighbours (`snobnn`).

use super::{dist, Snobfit};

/// Closed-box membership test.
pub fn box_contains(xl: &[f64], xu: &[f64], y: &[f64]) -> bool {
    y.iter()
        .zip(xl.iter().zip(xu))
        .all(|(v, (l, u))| *l <= *v && *v <= *u)
}

/// Check the partition invariant on a state: every point lies in its own box, boxes lie in the
/// search box, their volumes add up to the search box's volume, and no two boxes overlap with
/// positive volume. Returns a description of the first violation.
pub fn check_partition(s: &Snobfit) -> Result<(), String> {
    let (u, v) = s.bounds();
    let pts = s.points();
    if pts.is_empty() {
        return Ok(());
    }
    let total: f64 = u.iter().zip(v).map(|(a, b)| b - a).product();
    let mut sum = 0.0;
    for (j, p) in pts.iter().enumerate() {
        if !box_contains(&p.xl, &p.xu, &p.x) {
            return Err(format!("point {j} outside its box"));
        }
        if !(box_contains(u, v, &p.xl) && box_contains(u, v, &p.xu)) {
            return Err(format!("box {j} leaves the search box"));
        }
        sum += p.xl.iter().zip(&p.xu).map(|(a, b)| b - a).product::<f64>();
        for (k, q) in pts.iter().enumerate() {
            let strictly_inside = (0..u.len()).all(|i| p.xl[i] < q.x[i] && q.x[i] < p.xu[i]);
            if k != j && strictly_inside {
                return Err(format!("box {j} holds point {k} too"));
            }
        }
        for (k, q) in pts.iter().enumerate().skip(j + 1) {
            let overlap: f64 = (0..u.len())
                .map(|i| (p.xu[i].min(q.xu[i]) - p.xl[i].max(q.xl[i])).max(0.0))
                .product();
            if overlap > 1e-9 * total {
                return Err(format!("boxes {j} and {k} overlap"));
            }
        }
    }
    if (sum - total).abs() > 1e-9 * total {
        return Err(format!("box volumes sum to {sum}, search box is {total}"));
    }
    Ok(())
}

fn small_of(xl: &[f64], xu: &[f64], u: &[f64], v: &[f64]) -> i64 {
    -(0..u.len())
        .map(|i| ((xu[i] - xl[i]) / (v[i] - u[i])).log2().round())
        .sum::<f64>() as i64
}

/// Re-partition after new points (indices ≥ `nxold`) were appended. Returns the indices of the
/// old points whose boxes were split (their local fits are recomputed, as in MATLAB).
pub(super) fn branch(s: &mut Snobfit, nxold: usize) -> Vec<usize> {
    let nx = s.points.len();
    let n = s.n();
    if nxold == 0 {
        let idx: Vec<usize> = (0..nx).collect();
        split(s, idx, s.u.clone(), s.v.clone(), vec![0; n]);
        return Vec::new();
    }
    // parent box (largest containing old box) of each new point
    let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
    for j in nxold..nx {
        let parent = (0..nxold)
            .filter(|&i| box_contains(&s.points[i].xl, &s.points[i].xu, &s.points[j].x))
            .min_by_key(|&i| s.points[i].small);
        let parent = match parent {
            Some(p) => p,
            // Unreachable while the partition tiles the box; fall back to the nearest point.
            None => (0..nxold)
                .min_by(|&a, &b| {
                    dist(&s.points[a].x, &s.points[j].x)
                        .total_cmp(&dist(&s.points[b].x, &s.points[j].x))
                })
                .unwrap_or(0),
        };
        match groups.iter_mut().find(|g| g.0 == parent) {
            Some(g) => g.1.push(j),
            None => groups.push((parent, vec![j])),
        }
    }
    groups.sort_by_key(|g| g.0);
    let mut parents = Vec::with_capacity(groups.len());
    for (parent, news) in groups {
        let mut idx = vec![parent];
        idx.extend(news);
        let (xl, xu, ns) = {
            let p = &s.points[parent];
            (p.xl.clone(), p.xu.clone(), p.nsplit.clone())
        };
        split(s, idx, xl, xu, ns);
        parents.push(parent);
    }
    parents
}

/// Split box [xl, xu] holding the points `idx` until every sub-box holds one point.
fn split(s: &mut Snobfit, idx: Vec<usize>, xl: Vec<f64>, xu: Vec<f64>, nspl: Vec<u32>) {
    let n = s.n();
    let mut stack = vec![(idx, xl, xu, nspl)];
    while let Some((idx, xl, xu, nspl)) = stack.pop() {
        if idx.len() <= 1 {
            if let Some(&j) = idx.first() {
                let small = small_of(&xl, &xu, &s.u, &s.v);
                let p = &mut s.points[j];
                p.xl = xl;
                p.xu = xu;
                p.nsplit = nspl;
                p.small = small;
            }
            continue;
        }
        let rel = |i: usize, j: usize| s.points[j].x[i] / (s.v[i] - s.u[i]);
        let (i, ymid) = if idx.len() == 2 {
            let (a, b) = (idx[0], idx[1]);
            let i = argmax((0..n).map(|i| (rel(i, a) - rel(i, b)).abs()));
            (i, 0.5 * (s.points[a].x[i] + s.points[b].x[i]))
        } else {
            let i = argmax((0..n).map(|i| {
                let vals: Vec<f64> = idx.iter().map(|&j| rel(i, j)).collect();
                let m = vals.iter().sum::<f64>() / vals.len() as f64;
                vals.iter().map(|v| (v - m).powi(2)).sum::<f64>()
            }));
            let mut ys: Vec<f64> = idx.iter().map(|&j| s.points[j].x[i]).collect();
            ys.sort_by(f64::total_cmp);
            let k = argmax(ys.windows(2).map(|w| w[1] - w[0]));
            (i, 0.5 * (ys[k] + ys[k + 1]))
        };
        let (left, right): (Vec<usize>, Vec<usize>) =
            idx.iter().partition(|&&j| s.points[j].x[i] < ymid);
        if left.is_empty() || right.is_empty() {
            // Identical points cannot be separated (cannot happen: points are distinct on the
            // grid); keep the first, give the others the same box to stay total.
            for &j in &idx {
                let p = &mut s.points[j];
                p.xl = xl.clone();
                p.xu = xu.clone();
                p.nsplit = nspl.clone();
            }
            continue;
        }
        let mut ns = nspl.clone();
        ns[i] += 1;
        let mut xu_l = xu.clone();
        xu_l[i] = ymid;
        let mut xl_r = xl.clone();
        xl_r[i] = ymid;
        stack.push((right, xl_r, xu, ns.clone()));
        stack.push((left, xl, xu_l, ns));
    }
}

fn argmax(it: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in it.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// snobnn: for each coordinate the nearest point differing by ≥ dx_i in that coordinate, then
/// the nearest points differing by ≥ dx in some coordinate, up to m. Sorted by distance; also
/// returns the largest neighbour distance.
pub(super) fn nearest(s: &Snobfit, j: usize, m: usize) -> (Vec<usize>, f64) {
    let x0 = &s.points[j].x;
    let mut order: Vec<(usize, f64)> = (0..s.points.len())
        .filter(|&k| k != j)
        .map(|k| (k, dist(&s.points[k].x, x0)))
        .collect();
    order.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    let mut near: Vec<(usize, f64)> = Vec::with_capacity(m);
    for i in 0..s.n() {
        if let Some(pos) = order
            .iter()
            .position(|(k, _)| (s.points[*k].x[i] - x0[i]).abs() - s.dx[i] >= -1e-9 * s.dx[i])
        {
            near.push(order.remove(pos));
        }
    }
    for &(k, d) in &order {
        if near.len() >= m {
            break;
        }
        let differs =
            (0..s.n()).any(|i| (s.points[k].x[i] - x0[i]).abs() - s.dx[i] >= -1e-9 * s.dx[i]);
        if differs {
            near.push((k, d));
        }
    }
    near.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    let d = near.iter().map(|p| p.1).fold(0.0, f64::max);
    (near.into_iter().map(|p| p.0).collect(), d)
}
