"""Lazy training: under the NTK parameterization the tangent kernel moves less the wider the
network, its relative change falling roughly like 1/√width (reproduction 2 of issue 10)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "survey"))
from claims import Claim, Finding, runs_of  # noqa: E402

MIN_FACTOR = 1.5        # every 4× in width divides the NTK drift by at least this (√4 = 2 in theory)
SLOPE_RANGE = (-1.0, -0.35)  # the log–log slope of drift against width: −1/2 in theory


def drifts(result: dict) -> list[tuple[int, float, float]]:
    """(width, NTK drift, weight drift) per matrix cell, by width."""
    rows = []
    for run in runs_of(result):
        width = int(run["params"]["model.arch.widths"][0])
        d = run["stages"]["drift"]["results"]["ntk_drift"]
        rows.append((width, float(d["ntk_drift"]), float(d["weight_drift"])))
    return sorted(rows)


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of log y against log x."""
    xs, ys = [math.log(x) for x, _ in points], [math.log(y) for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def check(result: dict) -> Finding:
    rows = drifts(result)
    widths = [w for w, _, _ in rows]
    ntk = [d for _, d, _ in rows]
    factors = [(a / b) ** (1.0 / math.log(wb / wa, 4)) for (wa, a, _), (wb, b, _) in zip(rows, rows[1:])]
    s = slope([(w, d) for w, d, _ in rows])
    holds = (len(rows) >= 3 and all(d > 0 for d in ntk) and all(f >= MIN_FACTOR for f in factors)
             and SLOPE_RANGE[0] <= s <= SLOPE_RANGE[1])
    cells = "; ".join(f"width {w}: ‖ΔΘ‖/‖Θ₀‖ {d:.4f}, ‖Δθ‖/‖θ₀‖ {v:.5f}" for w, d, v in rows)
    per4 = ", ".join(f"{f:.2f}" for f in factors)
    return Finding(holds, f"{cells}; drift divided by {per4} per 4× width; log–log slope {s:.2f} "
                          f"(theory −0.5; widths {widths})")


CLAIM = Claim(
    name="lazy_training",
    claim="Trained by gradient descent on the same regression problem with the same learning rate, wider networks "
    "in the NTK parameterization change their neural tangent kernel less: the relative kernel drift "
    "‖Θ_T − Θ_0‖_F/‖Θ_0‖_F falls monotonically with the width, roughly like 1/√width.",
    source="Jacot, Gabriel & Hongler 2018 (NTK), Lee et al. 2019 (wide networks evolve as linear models), "
    "Chizat, Oyallon & Bach 2019 (lazy training)",
    check=check,
)
