"""Frankle & Carbin 2019: winning tickets learn faster than the dense network they come from."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "survey"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from claims import Claim, Finding, runs_of  # noqa: E402
from imp_mlp import lottery_table  # noqa: E402

MODERATE = (20.0, 70.0)  # % of the weights left: where Frankle & Carbin's tickets learn fastest
WITHIN = 1.2  # "reached": a test loss within 20% of the dense network's best


def test_curve(stage: dict) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (Path(stage["dir"]) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["test_loss"]) for r in rows if "test_loss" in r]


def steps_to(curve: list[tuple[int, float]], level: float, budget: int) -> int:
    """The first evaluated step at or below ``level`` (the run's length when never: a lower bound)."""
    return next((step for step, loss in curve if loss <= level), budget)


def check(result: dict) -> Finding:
    table = lottery_table(result)
    rounds = sorted(k for k, v in table if v == "ticket" and MODERATE[0] <= table[(k, v)]["weights_remaining"] <= MODERATE[1])
    dense_steps, ticket_steps, reinit_steps = [], {k: [] for k in rounds}, {k: [] for k in rounds}
    for run in runs_of(result):
        stages = run["stages"]
        budget = int(stages["dense"]["metrics"]["steps"])
        dense = test_curve(stages["dense"])
        level = WITHIN * min(loss for _, loss in dense)  # each seed against its own dense run
        dense_steps.append(steps_to(dense, level, budget))
        for k in rounds:
            ticket_steps[k].append(steps_to(test_curve(stages[f"tickets.r{k}"]), level, budget))
            if f"tickets.r{k}.reinit" in stages:
                reinit_steps[k].append(steps_to(test_curve(stages[f"tickets.r{k}.reinit"]), level, budget))
    d = mean(dense_steps)
    holds = bool(rounds) and all(mean(ticket_steps[k]) <= d for k in rounds)
    said = "; ".join(
        f"r{k} ({table[(k, 'ticket')]['weights_remaining']:.0f}% left): ticket {mean(ticket_steps[k]):.0f}"
        + (f", reinit {mean(reinit_steps[k]):.0f}" if reinit_steps[k] else "") for k in rounds)
    early = ", ".join(f"r{k} {table[(k, 'ticket')]['best_step']:.0f}" for k in rounds)
    return Finding(holds, f"steps until the test loss is within 20% of the dense run's best, mean of 3 seeds — "
                          f"dense {d:.0f}; {said} (the step of the best test loss itself: dense "
                          f"{table[(0, 'dense')]['best_step']:.0f}, tickets {early})")


CLAIM = Claim(
    name="imp_mlp_faster",
    claim="Winning tickets learn faster: at moderate sparsity (70% to 20% of the weights left) a ticket reaches the "
    "dense network's test loss (within 20% of its best) in no more steps than the dense network does.",
    source="Frankle & Carbin 2019, Fig. 4",
    check=check,
    uses="imp_mlp",
)
