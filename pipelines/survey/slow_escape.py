"""Vanishing gradients: GD that must cross the flat region needs steps growing geometrically with depth."""

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
        steps.setdefault(run["params"]["model.arch.init_first"], {})[run["params"]["model.arch.depth"]] = steps_to_converge(stage)
    flipped, near = steps[min(steps)], steps[max(steps)]
    depths = sorted(flipped)

    def said(row: dict[int, int | None]) -> str:
        return ", ".join(f"L={d}: {row[d] if row[d] is not None else f'not within {budget}'}" for d in depths)

    every = all(s is not None for s in [*flipped.values(), *near.values()])
    holds = False
    if every:
        # geometric growth: every step up in depth at least doubles the steps the flipped start needs
        grows = all(flipped[b] >= 2 * flipped[a] for a, b in zip(depths, depths[1:]))
        # near the minimum depth does not slow it: the deepest needs under a tenth of the flipped start's steps
        fast = all(near[d] <= 0.1 * flipped[depths[-1]] for d in depths)
        holds = grows and fast
    return Finding(holds, f"steps until the loss is below 1% of its first value — first factor at {min(steps):g}, "
                          f"the rest at 1.1: {said(flipped)}; every factor at {max(steps):g}: {said(near)}")


CLAIM = Claim(
    name="slow_escape",
    claim="With a constant step size, gradient descent on a deep scalar chain started with one factor of the wrong "
    "sign (it must cross the flat, vanishing-gradient region) needs a number of steps that grows geometrically "
    "with depth, while a start near the minimum converges fast at every depth.",
    source="survey §4.1 (F(w) = (w⁷ − 1)²); Shamir 2019",
    check=check,
)
