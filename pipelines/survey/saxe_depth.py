"""Saxe et al. 2014: orthogonal init trains a deep linear network in depth-independent time."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from claims import Claim, Finding, runs_of  # noqa: E402

FRACTION = 0.01  # "trained": the loss below 1% of its first logged value


def steps_to_fit(stage: dict) -> int | None:
    """The first logged step whose window-mean training loss is below FRACTION of the first
    window's (None: not within the run's steps)."""
    rows = [json.loads(line) for line in (Path(stage["dir"]) / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    first = losses[0][1]
    return next((step for step, loss in losses if loss < FRACTION * first), None)


def check(result: dict) -> Finding:
    by_init: dict[str, dict[int, int | None]] = {}
    budget = 0
    for run in runs_of(result):
        init = run["params"]["model.init"]
        name = init if isinstance(init, str) else init["name"]
        depth = len(run["params"]["model.arch.widths"]) + 1
        stage = run["stages"]["fit"]
        budget = max(budget, int(stage["metrics"]["steps"]))
        by_init.setdefault(name, {})[depth] = steps_to_fit(stage)
    orth, gauss = by_init["orthogonal"], by_init["normal"]
    shallow, deep = min(orth), max(orth)

    def said(steps: dict[int, int | None]) -> str:
        return ", ".join(f"L={d}: {s if s is not None else f'not within {budget}'}" for d, s in sorted(steps.items()))

    # orthogonal: every depth trains, the deepest in at most 1.5× the steps of the shallowest
    orth_flat = all(s is not None for s in orth.values()) and orth[deep] <= 1.5 * orth[shallow]
    # Gaussian: the deepest takes at least twice as long as the shallowest, or never gets there
    gauss_slows = gauss[shallow] is not None and (gauss[deep] is None or gauss[deep] >= 2 * gauss[shallow])
    return Finding(orth_flat and gauss_slows,
                   f"steps until the loss is below 1% of its first logged value — orthogonal: {said(orth)}; Gaussian (σ²=1/d): {said(gauss)}")


CLAIM = Claim(
    name="saxe_depth",
    claim="A deep linear network trained from orthogonal init needs a number of steps nearly independent of "
    "depth, while scaled Gaussian init slows with depth.",
    source="Saxe, McClelland & Ganguli 2014; survey §4.2",
    check=check,
)
