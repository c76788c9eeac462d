#!/usr/bin/env python3
"""Golden fixtures for MAOSIC's SNOBFIT port: SQSnobFit 0.4.5 outputs on fixed inputs.

Writes server/optimizer/tests/snobfit_golden.json, read by the Rust test
server/optimizer/tests/snobfit_golden.rs (no Python at test time). Run once, commit the JSON:

    /var/tmp/maosic-venv-opt/bin/python bench/reference/snobfit_golden.py

SQSnobFit is patched to MATLAB SNOBFIT v2.1 where the port deviates in what is compared:
  * snoblocf: singular values floored at 1e-4 * sigma_1 (MATLAB `Sigma = max(Sigma, 1e-4*Sigma(1))`;
    the port's `numpy.amax(diag(Sigma), axis=1)` is a no-op);
  * snobround: MATLAB's round (half away from zero) instead of numpy's round-half-to-even
    (on the grid, x + p often lands exactly half-way between two grid points);
  * the two one-line fixes of shared/SNOBFIT.md 1.9 (inv -> pinv in _snobqfit, `import math` in
    _snobupdt), as in optimizer_reference.py.

Each case: fixed points x with values f and uncertainty df on a grid dx; call 1 sends the first
n + 4 points (too few for neighbours: only class 5), call 2 the rest with nreq requests and
p = 1 (all of classes 2-4 are class 4, so the request is deterministic). Recorded per point (in
SQSnobFit's order; the Rust test matches points by coordinates): box xl/xu, `small`, the
neighbour radius d and neighbour coordinates, the local fit's gradient g and model-error sigma
(recomputed with the patched snoblocf from the stored state), its trust-region point y and model
value f3 (when y did not collide with a known point: MATLAB then retries at random), and the
requests of call 2 with their classes.
"""
import inspect
import json
import math
import os
import sys

import numpy as np

import SQSnobFit._snobfit as S
import SQSnobFit._snoblocf as L
import SQSnobFit._snobqfit as Q
import SQSnobFit._snobupdt as U
import SQSnobFit._snobpoint as P
import SQSnobFit._snob5 as F5

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from optimizer_reference import load_landscape  # noqa: E402

OUT = os.path.join(HERE, "..", "..", "server", "optimizer", "tests", "snobfit_golden.json")

# --- patches (see the docstring)
Q.numpy.linalg.inv = np.linalg.pinv
U.math = math
_src = inspect.getsource(L)
_old = "Sigma = numpy.amax(Sigma, axis=1)"
assert _old in _src, "SQSnobFit snoblocf changed"
_src = _src.replace(_old, "Sigma = numpy.amax(Sigma, axis=1); Sigma = numpy.maximum(Sigma, 1e-4*Sigma.max())")
_old = "x = numpy.multiply(numpy.round(numpy.divide(x, dx)), dx)"
assert _old in _src, "SQSnobFit snobround changed"
_src = _src.replace(_old, "x = numpy.multiply(_matlab_round(numpy.divide(x, dx)), dx)")
_src += """

def _matlab_round(z):
    return numpy.sign(z) * numpy.floor(numpy.abs(z) + 0.5)
"""
_ns = {"__name__": "SQSnobFit._snoblocf", "__package__": "SQSnobFit"}
exec(compile(_src, L.__file__, "exec"), _ns)
for _m in (L, S, Q, P, F5):
    if hasattr(_m, "snoblocf"):
        _m.snoblocf = _ns["snoblocf"]
    if hasattr(_m, "snobround"):
        _m.snobround = _ns["snobround"]


def case(name, lower, upper, dx, pts, fvals, df, nreq):
    n = len(lower)
    x = np.array(pts, float)
    f = np.column_stack([np.array(fvals, float), np.full(len(fvals), df)])
    cfg = {"bounds": np.column_stack([lower, upper]), "nreq": nreq, "p": 1.0}
    S._im_storage = None
    np.random.seed(0)
    k = n + 4
    S.snobfit(x[:k].copy(), f[:k].copy(), dict(cfg, nreq=3), np.array(dx, float))
    req, _, _ = S.snobfit(x[k:].copy(), f[k:].copy(), cfg)
    (_, _, X, F, XL, XU, Y, NSPLIT, SMALL, NEAR, D, NP, T, FNAN, Uu, Vv, DX) = S._im_storage
    u = np.array(lower, float).reshape(1, n)
    v = np.array(upper, float).reshape(1, n)
    dxa = np.array(dx, float)
    points = []
    for j in range(len(X)):
        y, f3, g, sigma = L.snoblocf(j, X, F[:, 0:2], NEAR, dxa, u, v)
        Sn = X[NEAR[j].astype(int)] - X[j]
        scn = np.array([s_.dot((F[j, 1] / dxa ** 2) * s_) + F[int(k_), 1] for s_, k_ in zip(Sn, NEAR[j])])
        sv = np.linalg.svd(Sn / scn[:, None], compute_uv=False)
        floor_binds = bool(sv.min() < 1e-4 * sv.max())
        # deterministic trust-region target (before any collision retry) and whether it collides
        x0 = X[j]
        D2 = F[j, 1] / dxa ** 2
        S_ = X[NEAR[j].astype(int)] - x0
        d = np.maximum(0.5 * np.abs(S_).max(0), dxa)
        pl = np.maximum(-d, u.flatten() - x0)
        pu = np.minimum(d, v.flatten() - x0)
        p = np.array([L.snobqmin(sigma * D2[i], g[i], pl[i], pu[i]) for i in range(n)])
        y0 = L.snobround((x0 + p).reshape(1, n), u, v, dxa).flatten()
        collides = bool(np.any(np.all(np.abs(X - y0) < dxa - 1e-12, axis=1)))
        points.append({
            "x": X[j].tolist(), "f": float(F[j, 0]), "xl": XL[j].tolist(), "xu": XU[j].tolist(),
            "small": int(np.ravel(SMALL)[j]), "d": float(np.ravel(D)[j]),
            "near": [X[int(i)].tolist() for i in NEAR[j]],
            "g": np.asarray(g, float).flatten().tolist(), "sigma": float(sigma),
            "y": y0.tolist(), "y_raw": (x0 + p).tolist(), "f3": float(F[j, 2]), "y_collides": collides, "floor_binds": floor_binds,
        })
    return {
        "name": name, "lower": list(lower), "upper": list(upper), "dx": list(dx), "df": df,
        "first_call": k, "nreq": nreq, "x": x.tolist(), "f": f[:, 0].tolist(),
        "points": points,
        "request": [{"x": r[:n].tolist(), "class": int(r[n + 1])} for r in np.atleast_2d(req)],
    }


def grid_points(rng, lower, upper, dx, m):
    seen, out = set(), []
    while len(out) < m:
        k = tuple(int(rng.integers(0, round((hi - lo) / s) + 1)) for lo, hi, s in zip(lower, upper, dx))
        if k not in seen:
            seen.add(k)
            out.append([round(lo + ki * s, 10) for lo, ki, s in zip(lower, k, dx)])
    return out


def main():
    cases = []
    rng = np.random.default_rng(20261204)
    paper = load_landscape("paper")
    lo, hi, dx = [90.0, 0.2], [180.0, 1.2], [0.5, 0.01]
    for m, nreq in [(30, 12), (60, 10)]:
        pts = grid_points(rng, lo, hi, dx, m)
        fv = [-paper.eval(p) + 0.03 * rng.standard_normal() for p in pts]
        cases.append(case(f"paper-{m}", lo, hi, dx, pts, fv, 0.03, nreq))
    # nearly collinear neighbourhoods: three temperature columns (exercises the SVD floor)
    pts = [[t, round(0.2 + 0.01 * c, 10)] for t in (110.0, 130.0, 150.0)
           for c in rng.choice(101, size=9, replace=False)]
    fv = [-paper.eval(p) + 0.03 * rng.standard_normal() for p in pts]
    cases.append(case("paper-columns", lo, hi, dx, pts, fv, 0.03, 8))
    h3 = load_landscape("hartmann3")
    # a fine grid: on a coarse 3-D grid, exact ties in the split variance / largest gap are
    # broken by floating-point noise, differently in numpy and in Rust
    lo3, hi3, dx3 = [0.0] * 3, [1.0] * 3, [1e-4] * 3
    pts = grid_points(rng, lo3, hi3, dx3, 40)
    fv = [h3.eval(p) + 0.02 * rng.standard_normal() for p in pts]
    cases.append(case("hartmann3-40", lo3, hi3, dx3, pts, fv, 0.02, 10))
    # nearly planar neighbourhoods (x3 takes two values 2e-5 apart): the local-fit matrices are
    # ill-conditioned (sigma_min < 1e-4 sigma_1), so the MATLAB floor changes g
    lo4, hi4, dx4 = [0.0] * 3, [1.0] * 3, [1e-3, 1e-3, 1e-5]
    pts = [p[:2] + [0.5 + 2e-5 * (i % 2)] for i, p in enumerate(grid_points(rng, lo4, hi4, dx4, 30))]
    fv = [h3.eval(p) + 0.02 * rng.standard_normal() for p in pts]
    cases.append(case("planar-3d", lo4, hi4, dx4, pts, fv, 0.02, 8))
    with open(OUT, "w", encoding="utf-8") as fh:
        json.dump({"generator": "bench/reference/snobfit_golden.py (SQSnobFit 0.4.5, numpy "
                                + np.__version__ + ")", "cases": cases}, fh, indent=1)
    print(f"wrote {len(cases)} cases to {os.path.relpath(OUT)}")


if __name__ == "__main__":
    main()
