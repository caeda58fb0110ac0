"""LeCun et al. 1998 (survey §4.2): Var W_ij = 1/d keeps ‖W^L⋯W^1 x‖/‖x‖ near 1 in a deep linear net."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from claims import Claim, Finding, runs_of  # noqa: E402

L = 8  # weight layers of the pipeline, all 100 × 100


def check(result: dict[str, Any]) -> Finding:
    ratios: dict[float, float] = {}
    for run in runs_of(result):
        std = float(run["params"]["model.init.std"])
        c = round(std * std * 100, 6)  # Var W_ij = std² = c/d with d = 100
        ratios[c] = float(run["stages"]["init"]["results"]["signal_propagation"]["input_output_ratio"])
    near, big, small = ratios[1.0], ratios[25.0], ratios[0.04]
    # c^{L/2} is 25^4 ≈ 4e5 and 0.04^4 ≈ 3e-6: three decades either way is a wide margin
    holds = 0.5 < near < 2.0 and big > 1e3 and small < 1e-3
    per_layer = {c: r ** (1.0 / L) if r > 0 and math.isfinite(r) else float("nan") for c, r in ratios.items()}
    return Finding(
        holds,
        f"‖W^{L}⋯W^1 x‖/‖x‖ (width 100, {L} layers, Gaussian x, mean of 256) is {near:.3g} for c = 1, "
        f"{big:.3g} for c = 25 and {small:.3g} for c = 0.04: a factor {per_layer[1.0]:.3g}, {per_layer[25.0]:.3g} "
        f"and {per_layer[0.04]:.3g} per layer (√c = 1, 5, 0.2)",
    )


CLAIM = Claim(
    name="lecun_scaling",
    claim="In a deep linear network of width d > 10L with i.i.d. weights of variance c/d, "
    "‖W^L⋯W^1 x‖/‖x‖ stays near 1 for c = 1 (LeCun's 1/fan-in scaling) and explodes for c = 25 "
    "and vanishes for c = 0.04.",
    source="survey §4.2 (LeCun initialization, eq. (15)); LeCun, Bottou, Orr & Müller 1998",
    check=check,
)
