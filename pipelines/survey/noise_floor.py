"""Constant-step SGD stalls at a noise floor that shrinks with η; inverse-time decay keeps improving."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from claims import Claim, Finding, runs_of  # noqa: E402

# the label noise of the pipeline: σ² is the test loss of w* itself, up to the test set's
# sampling error (σ²·√(2/n_test) ≈ 1% of σ² at 16384 samples)
NOISE = yaml.safe_load(Path(__file__).with_suffix(".yaml").read_text())["data"]["noise"]


def check(result: dict) -> Finding:
    test: dict[tuple[str, float], float] = {}
    for run in runs_of(result):
        schedule = run["params"]["stages.fit.schedule"]
        name = schedule if isinstance(schedule, str) else schedule["name"]
        stage = run["stages"]["fit"]
        loss = stage["metrics"].get("test_loss") if stage["status"] in ("ran", "cached") else None
        test[(name, run["params"]["stages.fit.optimizer.lr"])] = loss if loss is not None else float("inf")
    large, small = max(lr for _, lr in test), min(lr for _, lr in test)
    floor = NOISE**2
    big, little, decayed = test[("constant", large)], test[("constant", small)], test[("inverse_time", large)]
    excess = big - floor  # the large constant rate's floor above σ²
    # the smaller constant rate removes at least half of that excess, and so does the decaying
    # rate started at the large one: both differences are between runs on one test set
    shrinks = big - little > 0.5 * excess
    keeps_improving = big - decayed > 0.5 * excess
    measured = (f"final test loss − σ² ({floor:g}): constant η={large:g}: {big - floor:.4f}, constant η={small:g}: "
                f"{little - floor:.4f}, inverse-time from η₀={large:g}: {decayed - floor:.4f}"
                f" (from η₀={small:g}: {test[('inverse_time', small)] - floor:.4f}); the test set's own noise is σ² up to "
                f"about ±{floor * 0.011:.4f}")
    return Finding(excess > 0 and shrinks and keeps_improving, measured)


CLAIM = Claim(
    name="noise_floor",
    claim="With a constant step size SGD on a noisy least-squares problem stalls at an excess loss that "
    "shrinks with the step size, while a diminishing (inverse-time) step keeps improving below it.",
    source="Robbins & Monro 1951; Bottou, Curtis & Nocedal 2018; survey §5.1–5.2",
    check=check,
)
