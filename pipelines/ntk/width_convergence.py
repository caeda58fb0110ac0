"""Jacot, Gabriel & Hongler 2018: the empirical NTK at initialization converges to the analytic
NTK as the width grows, its relative error falling like 1/√width (reproduction 1 of issue 10)."""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "survey"))
from claims import Claim, Finding, runs_of  # noqa: E402

#: the log-log slope of error against width that counts as "roughly 1/√width" (−0.5): the
#: fluctuations of a sum over n independent units scale as n^(−1/2); the band leaves room for
#: three seeds' noise and for the O(1/n) bias, without admitting 1/n (−1) or no decay (0)
SLOPE_BAND = (-0.8, -0.3)


def errors_by_width(result: dict) -> dict[int, float]:
    """Width -> mean over seeds of ‖Θ_empirical − Θ_analytic‖_F / ‖Θ_analytic‖_F."""
    cells: dict[int, list[float]] = defaultdict(list)
    for run in runs_of(result):
        width = int(run["params"]["model.arch.widths"][0])
        cells[width].append(float(run["stages"]["probe"]["results"]["kernel_compare"]["relative_error"]))
    return {w: mean(v) for w, v in sorted(cells.items())}


def slope(points: dict[int, float]) -> float:
    """Least-squares slope of log(error) against log(width)."""
    xs = [math.log(w) for w in points]
    ys = [math.log(e) for e in points.values()]
    mx, my = mean(xs), mean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def check(result: dict) -> Finding:
    errors = errors_by_width(result)
    values = list(errors.values())
    monotone = all(b < a for a, b in zip(values, values[1:]))
    s = slope(errors)
    holds = len(errors) >= 3 and monotone and SLOPE_BAND[0] <= s <= SLOPE_BAND[1]
    cells = ", ".join(f"width {w}: {e:.3f}" for w, e in errors.items())
    return Finding(holds, f"relative Frobenius error of the empirical NTK at init (mean of 3 seeds) — {cells}; "
                   f"log-log slope {s:.2f} (band {SLOPE_BAND[0]} to {SLOPE_BAND[1]}, 1/√width is −0.5); "
                   f"{'monotone' if monotone else 'not monotone'}")


CLAIM = Claim(
    name="width_convergence",
    claim="Under the NTK parameterization the empirical NTK of a randomly initialized network approaches the "
    "analytic infinite-width NTK as the width grows: the relative error falls monotonically, roughly like 1/√width.",
    source="Jacot, Gabriel & Hongler 2018, Theorem 1; Arora et al. 2019, §6 (finite-width error)",
    check=check,
)
