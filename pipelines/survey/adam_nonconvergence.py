"""Reddi et al. 2018: on an online convex problem Adam goes to the worst point, AMSGrad to the best."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from claims import Claim, Finding, runs_of  # noqa: E402

C, PERIOD, OFFSET = 3.0, 3, 10.0  # as in the pipeline: the test loss is K + (C − 2)x/3
NEAR = 0.9  # "settles at ±1": x within 0.1 of the end of [−1, 1]


def final_x(stage: dict) -> float:
    """x from the final test loss over one period, K + (C − p + 1)x/p."""
    return (stage["metrics"]["test_loss"] - OFFSET) * PERIOD / (C - PERIOD + 1)


def check(result: dict) -> Finding:
    x: dict[tuple[str, bool], float] = {}
    for run in runs_of(result):
        stage = run["stages"]["fit"]
        key = (run["params"]["stages.fit.optimizer.name"], bool(run["params"]["stages.fit.shuffle"]))
        x[key] = final_x(stage) if stage["status"] != "diverged" else float("nan")

    def said(shuffle: bool) -> str:
        return f"Adam x = {x[('adam', shuffle)]:+.3f}, AMSGrad x = {x[('amsgrad', shuffle)]:+.3f}"

    holds = all(x[("adam", s)] >= NEAR and x[("amsgrad", s)] <= -NEAR for s in (False, True))
    return Finding(holds, f"after 3000 steps (optimum x = −1) — losses in order: {said(False)}; "
                          f"each period shuffled: {said(True)}")


CLAIM = Claim(
    name="adam_nonconvergence",
    claim="On Reddi et al.'s online linear problem (f_t = Cx once every 3 steps, −x otherwise, C > 2, "
    "x ∈ [−1, 1]) Adam with β1 = 0, β2 = 1/(1+C²) settles at the worst point x = +1, AMSGrad at the optimum x = −1.",
    source="Reddi, Kale & Kumar 2018 (Theorem 1); survey §5.4",
    check=check,
)
