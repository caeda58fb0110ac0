"""Polyak 1964: tuned heavy-ball momentum needs ~√κ times fewer steps than gradient descent."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from claims import Claim, Finding  # noqa: E402

TOLERANCE = 1e-6  # "converged": the training loss below 1e-6 of its initial value
NOMINAL = (25, 400)  # the data's condition_number in the pipeline's two problems


def condition_number(nominal: float) -> float:
    """κ = L/μ of the Hessian 2XᵀX/n of the pipeline's data (the same params, data_seed 0)."""
    import torch

    from nnopt.plugins.datasets.synthetic import Synthetic

    params = Synthetic.Params(task="least_squares", dim=4, condition_number=nominal, n_train=256, n_test=64)
    x = Synthetic(params).load(0).x_train.double()
    eigenvalues = torch.linalg.eigvalsh(2 * x.T @ x / x.shape[0])
    return float(eigenvalues.max() / eigenvalues.min())


def steps_to_converge(stage: dict) -> int | None:
    """The number of updates after which the loss first is below TOLERANCE × the initial loss.

    With ``log_every: 1`` the line of step s holds the loss at the weights before update s,
    i.e. after s − 1 updates."""
    rows = [json.loads(line) for line in (Path(stage["dir"]) / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r and "diverged" not in r]
    first = losses[0][1]
    return next((step - 1 for step, loss in losses if loss <= TOLERANCE * first), None)


def check(result: dict) -> Finding:
    stages = result["stages"]
    rows, ratios = [], {}
    for nominal in NOMINAL:
        kappa = condition_number(nominal)
        gd, hb = steps_to_converge(stages[f"gd_{nominal}"]), steps_to_converge(stages[f"heavy_ball_{nominal}"])
        if gd is None or hb is None:
            return Finding(False, f"κ = {kappa:.1f}: GD {gd}, heavy ball {hb} steps (None: not within the budget)")
        ratios[nominal] = (gd / hb, kappa)
        rows.append(f"κ = {kappa:.1f} (√κ = {math.sqrt(kappa):.1f}): GD {gd} steps, heavy ball {hb}, ratio {gd / hb:.1f}")
    (r1, k1), (r2, k2) = ratios[NOMINAL[0]], ratios[NOMINAL[1]]
    # each ratio within a factor 2 of √κ, and the ratio grows with κ within a factor 2 of √(κ2/κ1)
    each = all(0.5 <= r / math.sqrt(k) <= 2.0 for r, k in ratios.values())
    growth, predicted = r2 / r1, math.sqrt(k2 / k1)
    grows = r2 > r1 and 0.5 <= growth / predicted <= 2.0
    return Finding(each and grows, "steps to a loss below 1e-6 of the initial one — " + "; ".join(rows)
                   + f"; the ratio grew {growth:.2f}× where √(κ2/κ1) = {predicted:.2f}")


CLAIM = Claim(
    name="heavy_ball",
    claim="On an ill-conditioned quadratic, heavy-ball momentum with its tuned step and momentum needs about √κ "
    "times fewer steps than gradient descent at η = 1/L, a factor growing like √κ.",
    source="Polyak 1964; survey §5.3",
    check=check,
)
