"""Hanin & Rolnick 2018: at He initialization the fluctuations of the activations' length
M^l = ‖z^l‖²/d_l grow with depth over width."""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from claims import Claim, Finding, runs_of  # noqa: E402

WIDTH = 32
GROWTH = 1.5  # each 4× in L/d must raise the variance by at least half (exp(5L/d) gives ≈ 4×)


def pooled(networks: list[tuple[float, float]]) -> float:
    """Var of log(M^L/M^0) over weights and inputs from each network's (mean, variance) over its
    inputs (equal sample sizes): the mean within-network variance plus the variance of the means."""
    means = [m for m, _ in networks]
    mu = sum(means) / len(means)
    between = sum((m - mu) ** 2 for m in means) / (len(means) - 1)
    return sum(v for _, v in networks) / len(networks) + between


def check(result: dict[str, Any]) -> Finding:
    by_depth: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for run in runs_of(result):
        r = run["stages"]["init"]["results"]["signal_propagation"]
        depth = len(r["layers"]) - 1  # hidden layers; the last entry is the output layer
        # the last hidden layer's post-activation (the output layer is linear)
        by_depth[depth].append((float(r["log_M_ratio_mean"][-2]), float(r["log_M_ratio_var"][-2])))
    depths = sorted(by_depth)
    variances = [pooled(by_depth[L]) for L in depths]
    holds = len(depths) >= 3 and min(len(v) for v in by_depth.values()) >= 2 and all(
        b > GROWTH * a for a, b in zip(variances, variances[1:])
    )
    within = [sum(v for _, v in by_depth[L]) / len(by_depth[L]) for L in depths]
    cells = ", ".join(
        f"L/d = {L}/{WIDTH}: {V:.3g} (over inputs alone {w:.3g}; 5L/d = {5 * L / WIDTH:.3g})"
        for L, V, w in zip(depths, variances, within)
    )
    n = len(by_depth[depths[0]]) if depths else 0
    return Finding(bool(holds), f"Var of log(M^L/M^0) at the last hidden layer over {n} He-initialized ReLU "
                   f"networks per depth × 256 Gaussian inputs: {cells}")


CLAIM = Claim(
    name="hanin_rolnick",
    claim="With He initialization (which keeps the mean E[M^L] = M^0) the fluctuations of a ReLU network's activation "
    "length M^L = ‖z^L‖²/d (the variance of log M^L) grow with the depth-to-width ratio L/d at a fixed width d.",
    source="survey §4.2; Hanin & Rolnick 2018, \"How to start training: the effect of initialization and architecture\"",
    check=check,
)
