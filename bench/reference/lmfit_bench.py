#!/usr/bin/env python3
"""Reference side of the spectral-analysis benchmark: the same synthetic spectra through lmfit.

Reads a JSON file written by `cargo bench -p maosic-analysis --bench fit_vs_lmfit` (or
`--bench fit_hard`):
  {"n_peaks": 3, "baseline_degree": 1,
   "spectra": [{"x": [...], "y": [...], "n_peaks": 3,
                "truth": [[height, center_nm, fwhm_nm], ...]}, ...]}
(a spectrum's own "n_peaks" overrides the top-level one; "baseline_degree" is 1 (LinearModel, the
default) or 2 (PolynomialModel of degree 2))
and prints one JSON object on stdout with per-spectrum results and timings.

This is what a spectroscopist's lmfit script looks like: scipy.signal.find_peaks for the initial
guesses (prominence above the noise, width at half prominence), then GaussianModel x N +
LinearModel fitted with Levenberg-Marquardt (`leastsq`, lmfit's default method). Time per fit
covers guessing and fitting, as on the Rust side; `times_s` is wall time, `cpu_times_s` the
thread's CPU time (time.thread_time, CLOCK_THREAD_CPUTIME_ID).

Pinned requirements: bench/reference/requirements-analysis.txt
"""

import json
import sys
import time

import numpy as np
from lmfit.models import GaussianModel, LinearModel, PolynomialModel
from scipy.signal import find_peaks, savgol_filter

FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def guess(x, y, n_peaks):
    # Linear baseline through the two ends, smoothed data for detection.
    k = max(len(x) // 20, 2)
    x0, x1 = x[:k].mean(), x[-k:].mean()
    y0, y1 = np.median(y[:k]), np.median(y[-k:])
    slope = (y1 - y0) / (x1 - x0)
    base = y0 + slope * (x - x0)
    rest = savgol_filter(y - base, 31, 3)
    noise = np.median(np.abs(np.diff(y, 2))) * 1.4826 / np.sqrt(6.0)
    peaks, props = find_peaks(rest, prominence=5.0 * noise, width=0)
    order = np.argsort(props["prominences"])[::-1][:n_peaks]
    step = (x[-1] - x[0]) / (len(x) - 1)
    out = []
    for i in sorted(order):
        out.append((rest[peaks[i]], x[peaks[i]], props["widths"][i] * step))
    return out, (y0 - slope * x0, slope)


def fit_one(x, y, n_peaks, baseline_degree=1):
    g, (intercept, slope) = guess(x, y, n_peaks)
    if baseline_degree == 2:
        model = PolynomialModel(degree=2, prefix="bl_")
        params = model.make_params(c0=intercept, c1=slope, c2=0.0)
    else:
        model = LinearModel(prefix="bl_")
        params = model.make_params(intercept=intercept, slope=slope)
    for j, (h, c, w) in enumerate(g):
        m = GaussianModel(prefix=f"p{j}_")
        sigma = max(w, 1e-3) / FWHM_PER_SIGMA
        params.update(
            m.make_params(
                amplitude=dict(value=h * sigma * np.sqrt(2 * np.pi), min=0),
                center=dict(value=c, min=x[0], max=x[-1]),
                sigma=dict(value=sigma, min=1e-3, max=x[-1] - x[0]),
            )
        )
        model = model + m
    result = model.fit(y, params, x=x)
    peaks = []
    for j in range(len(g)):
        p = result.params
        peaks.append(
            {
                "center": p[f"p{j}_center"].value,
                "center_se": p[f"p{j}_center"].stderr,
                "height": p[f"p{j}_height"].value,
                "height_se": p[f"p{j}_height"].stderr,
                "fwhm": p[f"p{j}_fwhm"].value,
            }
        )
    peaks.sort(key=lambda q: q["center"])
    return {
        "success": bool(result.success),
        "nfev": int(result.nfev),
        "peaks": peaks,
        "redchi": float(result.redchi),
    }


def main():
    with open(sys.argv[1]) as f:
        data = json.load(f)
    n_peaks = data.get("n_peaks", 3)
    degree = data.get("baseline_degree", 1)
    results = []
    times = []
    cpu_times = []
    for s in data["spectra"]:
        x = np.asarray(s["x"], dtype=float)
        y = np.asarray(s["y"], dtype=float)
        t0 = time.perf_counter()
        c0 = time.thread_time()
        try:
            r = fit_one(x, y, s.get("n_peaks", n_peaks), degree)
        except Exception as e:  # report, never hide
            r = {"success": False, "error": repr(e), "peaks": []}
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.thread_time() - c0)
        results.append(r)
    import lmfit
    import scipy

    json.dump(
        {
            "versions": {
                "python": sys.version.split()[0],
                "numpy": np.__version__,
                "scipy": scipy.__version__,
                "lmfit": lmfit.__version__,
            },
            "times_s": times,
            "cpu_times_s": cpu_times,
            "results": results,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
