#!/usr/bin/env python3
"""Reference side of the optimizer benchmark: public implementations on the same landscapes.

Evaluates the same landscape TOML files as `maosic-server optimize-bench` (the term kinds of
landscape/README.md are re-implemented here), with the same additive Gaussian noise
(sd from the file), the same resolution grid and the same figure of merit: experiments until the
best TRUE (noise-free) value among the measured points is within 5 % of the global optimum
(median over seeds with unreached seeds as +inf; p90 by nearest rank, null when < 90 % reached).
A seed stops once it reaches the target (as on the Rust side).

Optimizers:
  sqsnobfit  SQSnobFit 0.4.5 (PyPI `sqsnobfit`, numpy 1.23.5), called as a request generator
             with nreq = --batch, p = 0.5, dx = the landscape resolution, df = the noise sd.
             Two one-line fixes from shared/SNOBFIT.md 1.9 are applied at import
             (numpy.linalg.inv -> pinv in _snobqfit, missing `import math` in _snobupdt); the
             state is snapshotted before every call and restored if a call still raises, the
             points of a failed call are re-sent with the next call and a random batch is
             measured meanwhile (failures are counted and reported).
  skopt_gp   scikit-optimize 0.10 Optimizer, GP (Matern 5/2 ARD, noise="gaussian"),
             acq_func="EI", Sobol initial design of 2n + 2 points.
  optuna_tpe optuna TPESampler (defaults, seeded), suggest_float with step = resolution.
  botorch_qlognei  BoTorch 0.18 qLogNoisyExpectedImprovement on a SingleTaskGP (see the class);
             its own venv (bench/reference/botorch_requirements.txt: torch from PyPI brings the
             CUDA wheels, ~5.6 GB installed; it runs on the CPU).

Usage:
  optimizer_reference.py --landscape paper|branin|hartmann3|FILE --optimizer sqsnobfit|skopt_gp|optuna_tpe|botorch_qlognei
                         [--batch N] [--seeds 20] [--budget 250] [--json] [--latency]
"""
import argparse
import copy
import json
import math
import os
import sys
import time
import tomllib
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
LANDSCAPES = os.path.join(HERE, "..", "..", "landscape", "landscapes")


# ---------------------------------------------------------------------------- landscapes

def branin(x1, x2):
    b = 5.1 / (4 * math.pi ** 2)
    c = 5 / math.pi
    t = 1 / (8 * math.pi)
    return (x2 - b * x1 * x1 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


def hartmann3(x):
    alpha = [1.0, 1.2, 3.0, 3.2]
    A = [[3.0, 10, 30], [0.1, 10, 35], [3.0, 10, 30], [0.1, 10, 35]]
    P = [[0.3689, 0.1170, 0.2673], [0.4699, 0.4387, 0.7470],
         [0.1091, 0.8732, 0.5547], [0.0381, 0.5743, 0.8828]]
    return -sum(alpha[i] * math.exp(-sum(A[i][j] * (x[j] - P[i][j]) ** 2 for j in range(3)))
                for i in range(4))


class Landscape:
    def __init__(self, text):
        d = tomllib.loads(text)
        self.name = d["name"]
        self.sense = d.get("sense", "maximize")
        self.noise_sd = float(d.get("noise_sd", 0.0))
        self.vars = d["variables"]
        self.names = [v["name"] for v in self.vars]
        self.lower = np.array([v["lower"] for v in self.vars], float)
        self.upper = np.array([v["upper"] for v in self.vars], float)
        self.res = np.array([v.get("resolution", (v["upper"] - v["lower"]) * 1e-5)
                             for v in self.vars], float)
        self.terms = d["terms"]
        self.opt_x = [d["optimum"]["x"][n] for n in self.names]
        self.opt_value = float(d["optimum"]["value"])

    def _term(self, t, x):
        k = t["kind"]
        val = dict(zip(self.names, x))
        if k == "constant":
            return t["value"]
        if k == "gaussian":
            q = sum(((val[n] - c) / t["width"][n]) ** 2 for n, c in t["center"].items())
            return t.get("amplitude", 1.0) * math.exp(-0.5 * q)
        if k == "sigmoid":
            z = (val[t["variable"]] - t["edge"]) / t["width"]
            if t.get("rising", False):
                z = -z
            return t.get("amplitude", 1.0) / (1 + math.exp(z))
        if k == "linear":
            return t.get("offset", 0.0) + sum(a * val[n] for n, a in t["coefficients"].items())
        if k == "monomial":
            return t.get("coefficient", 1.0) * math.prod(val[n] ** p for n, p in t["powers"].items())
        if k == "product":
            return math.prod(self._term(f, x) for f in t["factors"])
        if k == "builtin":
            args = [val[n] for n in t.get("variables", self.names)]
            f = {"branin": lambda a: branin(*a), "hartmann3": hartmann3}[t["function"]]
            return t.get("offset", 0.0) + t.get("scale", 1.0) * f(args)
        raise ValueError(f"unknown term kind {k}")

    def eval(self, x):
        return sum(self._term(t, list(x)) for t in self.terms)

    def loss(self, value):
        return -value if self.sense == "maximize" else value

    def within(self, value, fraction=0.05):
        tol = fraction * abs(self.opt_value)
        return value >= self.opt_value - tol if self.sense == "maximize" else value <= self.opt_value + tol

    def snap(self, x):
        x = np.clip(np.asarray(x, float), self.lower, self.upper)
        k = np.round((x - self.lower) / self.res)
        kmax = np.floor((self.upper - self.lower) / self.res + 1e-9)
        return self.lower + np.clip(k, 0, kmax) * self.res


def load_landscape(name):
    path = name if os.path.exists(name) else os.path.join(LANDSCAPES, name + ".toml")
    with open(path, "r", encoding="utf-8") as fh:
        return Landscape(fh.read())


# ---------------------------------------------------------------------------- optimizers

class SqSnobfit:
    def __init__(self, L, seed, batch):
        import SQSnobFit._snobqfit as q
        import SQSnobFit._snobupdt as u
        import SQSnobFit._snobfit as s
        q.numpy.linalg.inv = np.linalg.pinv  # SNOBFIT.md 1.9.3
        u.math = math                         # SNOBFIT.md 1.9.2
        self.s = s
        self.L = L
        self.batch = batch
        self.rng = np.random.RandomState(seed)
        np.random.seed(seed)  # SQSnobFit draws from numpy's global generator
        self.config = {"bounds": np.column_stack([L.lower, L.upper]), "nreq": batch, "p": 0.5}
        self.started = False
        self.pending_x = []
        self.pending_f = []
        self.failures = 0
        self.calls = 0

    def ask(self, n):
        self.calls += 1
        snap = copy.deepcopy(self.s._im_storage)
        self.config["nreq"] = n
        dim = len(self.L.lower)
        x = np.array(self.pending_x, float).reshape(-1, dim)
        f = np.array(self.pending_f, float).reshape(-1, 2)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if not self.started:
                    req, _, _ = self.s.snobfit(x, f, self.config, self.L.res.copy())
                    self.started = True
                else:
                    req, _, _ = self.s.snobfit(x, f, self.config)
            self.pending_x, self.pending_f = [], []
            pts = [self.L.snap(r[:dim]) for r in np.atleast_2d(req)[:n]]
            if len(pts) == 0:
                raise RuntimeError("empty request")
            return pts
        except Exception:  # noqa: BLE001 - the port's defects surface as many exception types
            self.failures += 1
            self.s._im_storage = snap
            return [self.L.snap(self.L.lower + self.rng.rand(dim) * (self.L.upper - self.L.lower))
                    for _ in range(n)]

    def tell(self, x, y):
        self.pending_x.append(list(x))
        self.pending_f.append([y, self.L.noise_sd if self.L.noise_sd > 0 else 0.0])


class SkoptGP:
    def __init__(self, L, seed, batch):
        from skopt import Optimizer
        from skopt.utils import cook_estimator
        dims = [(float(a), float(b)) for a, b in zip(L.lower, L.upper)]
        est = cook_estimator("GP", space=dims, random_state=seed, noise="gaussian")
        self.o = Optimizer(dims, base_estimator=est, acq_func="EI", n_initial_points=2 * len(dims) + 2,
                           initial_point_generator="sobol", random_state=seed)
        self.L = L

    def ask(self, n):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pts = self.o.ask(n_points=n) if n > 1 else [self.o.ask()]
        return [self.L.snap(p) for p in pts]

    def tell(self, x, y):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.o.tell([float(v) for v in x], float(y))


class OptunaTPE:
    def __init__(self, L, seed, batch):
        import optuna
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
        self.L = L
        self.trials = {}

    def ask(self, n):
        out = []
        for _ in range(n):
            t = self.study.ask()
            x = [t.suggest_float(name, float(lo), float(hi), step=float(r))
                 for name, lo, hi, r in zip(self.L.names, self.L.lower, self.L.upper, self.L.res)]
            x = self.L.snap(x)
            self.trials.setdefault(tuple(x), []).append(t)
            out.append(x)
        return out

    def tell(self, x, y):
        t = self.trials[tuple(x)].pop(0)
        self.study.tell(t, float(y))


class BotorchLogNEI:
    """BoTorch qLogNoisyExpectedImprovement on a SingleTaskGP (BoTorch's defaults: Matern 5/2
    ARD with its dimension-scaled priors, inferred noise, standardised outcomes), inputs scaled
    to the unit cube, acquisition maximised by `optimize_acqf` (multi-start L-BFGS-B, 10 restarts
    from 512 raw samples) and snapped to the grid; Sobol initial design of 2n + 2 points."""

    def __init__(self, L, seed, batch):
        import torch
        from botorch.acquisition.logei import qLogNoisyExpectedImprovement
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.optim import optimize_acqf
        from gpytorch.mlls import ExactMarginalLogLikelihood
        self.torch = torch
        self.parts = (qLogNoisyExpectedImprovement, fit_gpytorch_mll, SingleTaskGP, optimize_acqf,
                      ExactMarginalLogLikelihood)
        torch.manual_seed(seed)
        self.L = L
        self.lo = np.asarray(L.lower, float)
        self.span = np.asarray(L.upper, float) - self.lo
        d = len(self.lo)
        self.n_init = 2 * d + 2
        self.sobol = torch.quasirandom.SobolEngine(d, scramble=True, seed=seed)
        self.xs, self.ys = [], []
        # Model-based asks, and those whose hyperparameter fit raised (reported as failed calls).
        self.calls, self.failures = 0, 0

    def ask(self, n):
        torch = self.torch
        d = len(self.lo)
        out = []
        while len(out) < n and len(self.xs) + len(out) < self.n_init:
            u = self.sobol.draw(1).double().numpy()[0]
            out.append(self.L.snap(self.lo + u * self.span))
        if len(out) == n:
            return out
        qlognei, fit, gp_cls, optimize, mll_cls = self.parts
        self.calls += 1
        x = torch.tensor((np.array(self.xs) - self.lo) / self.span, dtype=torch.double)
        # BoTorch maximises; the harness tells losses.
        y = -torch.tensor(self.ys, dtype=torch.double).unsqueeze(-1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gp = gp_cls(x, y)
            try:
                fit(mll_cls(gp.likelihood, gp))
            except Exception:  # noqa: BLE001 - keep the prior hyperparameters if fitting fails
                self.failures += 1
            acq = qlognei(gp, X_baseline=x, prune_baseline=True)
            bounds = torch.stack([torch.zeros(d, dtype=torch.double), torch.ones(d, dtype=torch.double)])
            cand, _ = optimize(acq, bounds=bounds, q=n - len(out), num_restarts=10, raw_samples=512)
        for u in cand.detach().numpy():
            out.append(self.L.snap(self.lo + u * self.span))
        return out

    def tell(self, x, y):
        self.xs.append([float(v) for v in x])
        self.ys.append(float(y))


OPTIMIZERS = {"sqsnobfit": SqSnobfit, "skopt_gp": SkoptGP, "optuna_tpe": OptunaTPE,
              "botorch_qlognei": BotorchLogNEI}


# ---------------------------------------------------------------------------- benchmark

def run_seed(L, make, seed, batch, budget):
    opt = make(L, seed, batch)
    noise = np.random.default_rng(1_000_003 + seed)
    done, reached, times = 0, None, []
    best = -math.inf if L.sense == "maximize" else math.inf
    while done < budget and reached is None:
        n = max(1, min(batch, budget - done))
        t0 = time.perf_counter()
        pts = opt.ask(n)
        spent = time.perf_counter() - t0
        for x in pts:
            if done >= budget:
                break
            truth = L.eval(x)
            y = truth + (noise.normal(0.0, L.noise_sd) if L.noise_sd > 0 else 0.0)
            t0 = time.perf_counter()
            opt.tell(x, L.loss(y))  # skopt fits its GP here, so tell time counts too
            spent += time.perf_counter() - t0
            done += 1
            best = max(best, truth) if L.sense == "maximize" else min(best, truth)
            if reached is None and L.within(best):
                reached = done
        times.append(spent * 1e3)
    return reached, best, times, getattr(opt, "failures", 0), getattr(opt, "calls", 0)


def median_inf(v):
    m = float(np.median(np.array([math.inf if e is None else e for e in v], float)))
    return m if math.isfinite(m) else None


def nearest_rank(v, p):
    s = sorted(math.inf if e is None else e for e in v)
    r = s[min(len(s), max(1, math.ceil(p * len(s)))) - 1]
    return r if math.isfinite(r) else None


def ask_latency(L, make, n_obs, repeats=11, seed=1):
    """Time one loop step (tell the newest result + ask the next point) at n_obs observations.
    SQSnobFit: state snapshot restored after each repeat; skopt/optuna: repeats run in sequence
    (n_obs .. n_obs + repeats - 1 observations)."""
    opt = make(L, seed, 1)
    noise = np.random.default_rng(seed)
    told = 0
    while told < n_obs - 1:
        for x in opt.ask(1):
            opt.tell(x, L.loss(L.eval(x) + noise.normal(0.0, L.noise_sd)))
            told += 1
    x = opt.ask(1)[0]
    y = L.loss(L.eval(x) + noise.normal(0.0, L.noise_sd))
    out = []
    for _ in range(repeats):
        if isinstance(opt, SqSnobfit):
            snap = copy.deepcopy(opt.s._im_storage)
            saved = (list(opt.pending_x), list(opt.pending_f))
        t0 = time.perf_counter()
        opt.tell(x, y)
        nxt = opt.ask(1)[0]
        out.append((time.perf_counter() - t0) * 1e3)
        if isinstance(opt, SqSnobfit):
            opt.s._im_storage = snap
            opt.pending_x, opt.pending_f = saved
        else:
            x = nxt
            y = L.loss(L.eval(x) + noise.normal(0.0, L.noise_sd))
    return sorted(out)


def random_history(L, n, rng):
    seen, pts = set(), []
    while len(pts) < n:
        x = L.snap(L.lower + rng.random(len(L.lower)) * (L.upper - L.lower))
        k = tuple(np.round((x - L.lower) / L.res).astype(int))
        if k not in seen:
            seen.add(k)
            pts.append(x)
    return pts


def ask_latency_random_history(L, make, n_obs, repeats=11, seed=1):
    """Tell n_obs - 1 distinct random grid points, then time tell(one more) + ask(1)."""
    rng = np.random.default_rng(seed)
    pts = random_history(L, n_obs, rng)
    last = pts.pop()
    ys = [L.loss(L.eval(x) + rng.normal(0.0, L.noise_sd)) for x in pts]
    y_last = L.loss(L.eval(last) + rng.normal(0.0, L.noise_sd))
    opt = make(L, seed, 1)
    if isinstance(opt, SkoptGP):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.o.tell([[float(v) for v in x] for x in pts], [float(y) for y in ys])
    elif isinstance(opt, OptunaTPE):
        import optuna
        dists = {n: optuna.distributions.FloatDistribution(float(lo), float(hi), step=float(r))
                 for n, lo, hi, r in zip(L.names, L.lower, L.upper, L.res)}
        opt.study.add_trials([optuna.trial.create_trial(params=dict(zip(L.names, map(float, x))),
                                                        distributions=dists, value=float(y))
                              for x, y in zip(pts, ys)])
    else:
        for x, y in zip(pts, ys):
            opt.tell(x, y)
        opt.ask(1)  # processes the history (first call)
        if getattr(opt, "failures", 0):
            print("warning: first SQSnobFit call failed", file=sys.stderr)
    out = []
    x, y = last, y_last
    for _ in range(repeats):
        if isinstance(opt, SqSnobfit):
            snap = copy.deepcopy(opt.s._im_storage)
            saved = (list(opt.pending_x), list(opt.pending_f))
            f0 = opt.failures
        if isinstance(opt, OptunaTPE):
            t = opt.study.ask()
            opt.trials.setdefault(tuple(x), []).append(t)
        t0 = time.perf_counter()
        opt.tell(x, y)
        nxt = opt.ask(1)[0]
        out.append((time.perf_counter() - t0) * 1e3)
        if isinstance(opt, SqSnobfit):
            if opt.failures != f0:
                print("warning: timed SQSnobFit call failed", file=sys.stderr)
            opt.s._im_storage = snap
            opt.pending_x, opt.pending_f = saved
        else:
            x = nxt
            y = L.loss(L.eval(x) + rng.normal(0.0, L.noise_sd))
    return sorted(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--landscape", default="paper")
    ap.add_argument("--optimizer", default="sqsnobfit", choices=sorted(OPTIMIZERS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--budget", type=int, default=250)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--latency", action="store_true")
    ap.add_argument("--obs", type=int, default=250)
    ap.add_argument("--random-history", action="store_true")
    ap.add_argument("--landscape-dir", help="run every *.toml in DIR (a generated family class, "
                    "written by `optimize_bench --family C --write-family`) and pool the runs")
    ap.add_argument("--count", type=int, default=0, help="with --landscape-dir: first COUNT files (0 = all)")
    a = ap.parse_args()
    if a.landscape_dir:
        return run_family_dir(a)
    L = load_landscape(a.landscape)
    check = L.eval(L.opt_x)
    if abs(check - L.opt_value) > 1e-3 * max(1.0, abs(L.opt_value)):
        sys.exit(f"landscape evaluator mismatch: {check} vs {L.opt_value}")
    make = OPTIMIZERS[a.optimizer]
    if a.latency:
        t = (ask_latency_random_history if a.random_history else ask_latency)(L, make, a.obs)
        print(json.dumps({"landscape": L.name, "optimizer": a.optimizer, "obs": a.obs,
                          "random_history": a.random_history,
                          "ask_ms_median": round(t[len(t) // 2], 3), "ask_ms_max": round(t[-1], 3)}))
        return
    per_seed, times, failures, calls = [], [], 0, 0
    for seed in range(a.seeds):
        r, best, t, fl, cl = run_seed(L, make, seed, a.batch, a.budget)
        per_seed.append({"seed": seed, "experiments": r, "best_true": best})
        times += t
        failures += fl
        calls += cl
    exps = [p["experiments"] for p in per_seed]
    reached = sum(e is not None for e in exps) / max(1, a.seeds)
    rep = {
        "landscape": L.name, "optimizer": a.optimizer, "batch": a.batch, "seeds": a.seeds,
        "budget": a.budget, "fraction": 0.05, "reached": reached,
        "median_experiments": median_inf(exps),
        "p90_experiments": nearest_rank(exps, 0.9) if reached >= 0.9 else None,
        "ask_ms_median": float(np.median(times)) if times else 0.0,
        "ask_ms_p90": float(np.percentile(times, 90)) if times else 0.0,
        "failed_calls": failures, "calls": calls, "per_seed": per_seed,
    }
    if a.json:
        print(json.dumps(rep, indent=1))
    else:
        med = "-" if rep["median_experiments"] is None else f'{rep["median_experiments"]:.1f}'
        p90 = "-" if rep["p90_experiments"] is None else f'{rep["p90_experiments"]:.1f}'
        extra = f" failed calls {failures}/{calls}" if calls else ""
        print(f'{L.name:<10} {a.optimizer:<10} batch {a.batch:>2}: median {med:>6} p90 {p90:>6} '
              f'reached {100 * reached:>5.0f}% ask {rep["ask_ms_median"]:.3f} ms (p90 {rep["ask_ms_p90"]:.3f}){extra}')


def run_family_dir(a):
    """Pooled figures over the landscapes of one directory, as `optimize_bench --family`:
    every (landscape, seed) run counts once; median (unreached = inf), p90 nearest rank (null
    below 90 % reached), worst reached, ask ms median and p99."""
    files = sorted(f for f in os.listdir(a.landscape_dir) if f.endswith(".toml"))
    if a.count:
        files = files[:a.count]
    make = OPTIMIZERS[a.optimizer]
    runs, times, failures, calls = [], [], 0, 0
    for fname in files:
        L = load_landscape(os.path.join(a.landscape_dir, fname))
        for seed in range(a.seeds):
            r, _, t, fl, cl = run_seed(L, make, seed, a.batch, a.budget)
            runs.append(r)
            times += t
            failures += fl
            calls += cl
    reached = sum(e is not None for e in runs) / max(1, len(runs))
    rep = {
        "family": os.path.basename(os.path.normpath(a.landscape_dir)), "optimizer": a.optimizer,
        "batch": a.batch, "landscapes": len(files), "seeds": a.seeds, "budget": a.budget,
        "reached": reached, "median_experiments": median_inf(runs),
        "p90_experiments": nearest_rank(runs, 0.9) if reached >= 0.9 else None,
        "worst_reached": max((e for e in runs if e is not None), default=None),
        "ask_ms_median": float(np.median(times)) if times else 0.0,
        "ask_ms_p99": float(np.percentile(times, 99)) if times else 0.0,
        "failed_calls": failures, "calls": calls, "runs": runs,
    }
    print(json.dumps(rep), flush=True)


if __name__ == "__main__":
    main()
