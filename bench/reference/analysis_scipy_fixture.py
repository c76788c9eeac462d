#!/usr/bin/env python3
"""Writes bench/reference/analysis_scipy_fixture.json: scipy's find_peaks and savgol_filter
outputs on a fixed noisy signal, used by server/analysis/tests/scipy_fixture.rs to check that
maosic-analysis reproduces scipy's semantics exactly.

Run with the pinned stack (bench/reference/requirements-analysis.txt):
  /var/tmp/maosic-venv-ana/bin/python bench/reference/analysis_scipy_fixture.py
"""

import json
import os

import numpy as np
import scipy
from scipy.signal import find_peaks, savgol_filter

n = 600
i = np.arange(n, dtype=float)
# Deterministic "noise" (no RNG, so the fixture is reproducible anywhere).
noise = 0.05 * np.sin(i * 12.9898) * np.cos(i * 78.233)
signal = (
    1.0 * np.exp(-0.5 * ((i - 150) / 18) ** 2)
    + 0.6 * np.exp(-0.5 * ((i - 185) / 12) ** 2)
    + 0.3 * np.exp(-0.5 * ((i - 400) / 30) ** 2)
    + 0.002 * i
    + noise
)
signal[500:505] = signal[502]  # a plateau

cases = []
for opts in [
    dict(),
    dict(prominence=0.05),
    dict(prominence=0.05, width=3),
    dict(height=0.5, prominence=0.0),
    dict(distance=20, prominence=0.0),
    dict(prominence=0.02, rel_height=0.8),
]:
    kw = dict(opts)
    kw.setdefault("prominence", 0.0)
    kw.setdefault("width", 0.0)
    peaks, props = find_peaks(signal, **kw)
    cases.append(
        {
            "options": opts,
            "peaks": peaks.tolist(),
            "prominences": props["prominences"].tolist(),
            "left_bases": props["left_bases"].tolist(),
            "right_bases": props["right_bases"].tolist(),
            "widths": props["widths"].tolist(),
            "left_ips": props["left_ips"].tolist(),
            "right_ips": props["right_ips"].tolist(),
        }
    )

savgol = []
for window, order, deriv, delta in [(11, 3, 0, 1.0), (21, 2, 0, 1.0), (15, 3, 1, 0.5), (31, 4, 2, 0.25)]:
    savgol.append(
        {
            "window": window,
            "polyorder": order,
            "deriv": deriv,
            "delta": delta,
            "output": savgol_filter(signal, window, order, deriv=deriv, delta=delta).tolist(),
        }
    )

out = {
    "scipy": scipy.__version__,
    "signal": signal.tolist(),
    "find_peaks": cases,
    "savgol": savgol,
}
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "analysis_scipy_fixture.json")
with open(path, "w") as f:
    json.dump(out, f)
print(f"wrote {path}")
