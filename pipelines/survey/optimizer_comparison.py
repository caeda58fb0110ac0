"""Schneider et al. 2019 (DeepOBS): the ranking of optimizers depends on the test problem."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from claims import Claim, Finding, runs_of  # noqa: E402

CLOSE = 3.0  # "about as good": best final losses within this factor of each other
APART = 10.0  # "clearly worse": at least this factor
TARGET = 0.05  # steps to target: the first logged window at or below 5% of the run's first window


def _label(optimizer: dict) -> str:
    if optimizer["name"] == "sgd":
        return "momentum" if optimizer.get("momentum", 0) else "sgd"
    return optimizer["name"]


def _curve(stage: dict) -> list[tuple[int, float]]:
    if not stage.get("dir"):
        return []
    lines = (Path(stage["dir"]) / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r and "track" not in r]


def _steps_to_target(curve: list[tuple[int, float]]) -> int | None:
    if not curve:
        return None
    goal = TARGET * curve[0][1]
    return next((step for step, loss in curve if loss <= goal), None)


def summary(result: dict) -> dict[str, dict[str, dict]]:
    """``{problem: {optimizer: {best, best_lr, steps, spread}}}`` over each optimizer's rates;
    a diverged run counts as loss ∞. ``spread`` = log10(worst / best) final loss."""
    finals: dict[str, dict[str, list[tuple[float, float, int | None]]]] = {}
    for run in runs_of(result):
        problem = "quadratic" if "data" in run["params"]["stages.fit"] else "digits"
        optimizer = run["params"]["stages.fit.optimizer"]
        stage = run["stages"]["fit"]
        loss = stage["metrics"].get("train_loss") if stage["status"] != "diverged" else None
        loss = loss if loss is not None and math.isfinite(loss) else math.inf
        finals.setdefault(problem, {}).setdefault(_label(optimizer), []).append(
            (loss, optimizer["lr"], _steps_to_target(_curve(stage))))
    table: dict[str, dict[str, dict]] = {}
    for problem, by_opt in finals.items():
        for name, rows in by_opt.items():
            best, lr, steps = min(rows, key=lambda r: r[0])
            worst = max(r[0] for r in rows)
            spread = math.log10(worst / best) if best > 0 and math.isfinite(worst) else math.inf
            table.setdefault(problem, {})[name] = {"best": best, "best_lr": lr, "steps": steps, "spread": spread}
    return table


def check(result: dict) -> Finding:
    table = summary(result)
    digits, quad = table["digits"], table["quadratic"]
    tiny = 1e-12  # a loss at the float floor: ratios against it are compared with this instead

    def ratio(a: float, b: float) -> float:
        return max(a, tiny) / max(b, tiny)

    adam_close_on_digits = ratio(digits["adam"]["best"], digits["momentum"]["best"]) <= CLOSE
    adam_behind_on_quadratic = ratio(quad["adam"]["best"], quad["momentum"]["best"]) >= APART
    holds = adam_close_on_digits and adam_behind_on_quadratic

    def said(problem: str, rows: dict) -> str:
        parts = []
        for name in sorted(rows, key=lambda n: rows[n]["best"]):
            r = rows[name]
            steps = f"target at step {r['steps']}" if r["steps"] is not None else "target not reached"
            parts.append(f"{name} {r['best']:.2g} (lr {r['best_lr']:g}, {steps}, spread {r['spread']:.1f} decades)")
        return f"{problem}: " + "; ".join(parts)

    return Finding(holds, f"best final train loss per optimizer over its 3 rates — {said('digits', digits)} | "
                          f"{said('quadratic', quad)}. Adam/momentum best-loss ratio: digits "
                          f"{ratio(digits['adam']['best'], digits['momentum']['best']):.2g} (needs <= {CLOSE:g}), "
                          f"quadratic {ratio(quad['adam']['best'], quad['momentum']['best']):.2g} (needs >= {APART:g})")


CLAIM = Claim(
    name="optimizer_comparison",
    claim="No optimizer is best on every problem: tuned Adam matches tuned SGD with momentum on a small "
    "classification network, but is an order of magnitude behind it on an ill-conditioned quadratic.",
    source="Schneider, Balles & Hennig 2019 (DeepOBS); survey §5",
    check=check,
)
