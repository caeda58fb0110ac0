"""Vanishing gradients: GD from the flat region needs steps growing super-linearly with depth."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from claims import Claim, Finding, runs_of  # noqa: E402

FRACTION = 0.01  # "converged": the loss below 1% of its first logged value


def steps_to_converge(stage: dict) -> int | None:
    """The first logged step whose training loss is below FRACTION of the first (None: never)."""
    if stage["status"] not in ("ran", "cached"):
        return None
    rows = [json.loads(line) for line in (Path(stage["dir"]) / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    first = losses[0][1]
    return next((step for step, loss in losses if loss < FRACTION * first), None)


def check(result: dict) -> Finding:
    steps: dict[float, dict[int, int | None]] = {}
    budget = 0
    for run in runs_of(result):
        stage = run["stages"]["fit"]
        budget = max(budget, int(stage["metrics"].get("steps") or 0))
        steps.setdefault(run["params"]["model.arch.init"], {})[run["params"]["model.arch.depth"]] = steps_to_converge(stage)
    flat, near = steps[min(steps)], steps[max(steps)]
    depths = sorted(flat)

    def said(row: dict[int, int | None]) -> str:
        return ", ".join(f"L={d}: {row[d] if row[d] is not None else f'not within {budget}'}" for d in depths)

    every = all(s is not None for s in [*flat.values(), *near.values()])
    holds = False
    if every:
        gaps = [flat[b] - flat[a] for a, b in zip(depths, depths[1:])]
        # super-linear: each extra depth step costs more than the one before, and the deepest
        # takes at least 3× the steps of the second-shallowest
        grows = all(g > 0 for g in gaps) and all(b > a for a, b in zip(gaps, gaps[1:])) and flat[depths[-1]] >= 3 * flat[depths[1]]
        # near the minimum, depth does not slow it: the deepest needs under a quarter of the flat start's steps
        fast = near[depths[-1]] <= 0.25 * flat[depths[-1]] and near[depths[-1]] <= near[depths[0]] * 1.5
        holds = grows and fast
    return Finding(holds, f"steps until the loss is below 1% of its first value — from w₀ = {min(steps):g} (flat region): "
                          f"{said(flat)}; from w₀ = {max(steps):g} (near the minimum): {said(near)}")


CLAIM = Claim(
    name="slow_escape",
    claim="With a constant step size, gradient descent started in the flat (vanishing-gradient) region of a deep "
    "scalar chain needs a number of steps that grows super-linearly with depth, while a start near the minimum "
    "converges fast at every depth.",
    source="survey §4.1 (F(w) = (w⁷ − 1)²); Shamir 2019",
    check=check,
)
