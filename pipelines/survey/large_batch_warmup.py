"""Goyal et al. 2017: at a large batch, the linearly scaled rate trains only after a gradual warmup."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from claims import Claim, Finding, runs_of  # noqa: E402


def _warmed(schedule: dict) -> bool:
    then = schedule.get("then")
    return isinstance(then, dict) and then.get("name") == "warmup"


def check(result: dict) -> Finding:
    outcome: dict[bool, tuple[str, float | None]] = {}
    for run in runs_of(result):
        stage = run["stages"]["fit"]
        loss = stage["metrics"].get("train_loss") if stage["status"] in ("ran", "cached") else None
        outcome[_warmed(run["params"]["stages.fit.schedule"])] = (stage["status"], loss)

    def said(status: str, loss: float | None) -> str:
        return f"final train loss {loss:.4g}" if loss is not None else status

    (cold_status, cold), (warm_status, warm) = outcome[False], outcome[True]
    # warmup trains, and the run without it either diverged or ended at least twice as high
    holds = warm is not None and (cold is None or warm < 0.5 * cold)
    return Finding(holds, f"η = 0.1·1024/8 = 12.8 at batch 1024 — without warmup: {said(cold_status, cold)}; "
                          f"with 10 epochs of gradual warmup from η/32: {said(warm_status, warm)}")


CLAIM = Claim(
    name="large_batch_warmup",
    claim="With a large batch and the linearly scaled learning rate, gradual warmup makes training work where "
    "starting at the full rate diverges or lags far behind.",
    source="Goyal et al. 2017; survey §5.1, §5.3",
    check=check,
)
