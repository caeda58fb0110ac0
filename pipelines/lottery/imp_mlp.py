"""Frankle & Carbin 2019: winning tickets match the dense network far into sparsity, and beat
their controls there (reproduction 1 of issue 8, at digits scale, mean over three seeds)."""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "survey"))
from claims import Claim, Finding, runs_of  # noqa: E402

MATCH = 0.02      # "matches the dense network": within 2 points of test accuracy
MATCH_DOWN_TO = 10.0   # ... at every round with at least this many % of the weights left (round 10: 10.7%)
BEAT_BELOW = 17.0      # tickets beat both controls at every round with at most this many % left (round 8: 16.8%)


def lottery_table(result: dict) -> dict[tuple[int, str], dict[str, float]]:
    """(round, variant) -> mean over the matrix's seeds of weights remaining, test accuracy and
    the best-test-loss step, from every run's report stage ``tickets``."""
    cells: dict[tuple[int, str], list[dict]] = defaultdict(list)
    for run in runs_of(result):
        for row in run["stages"]["tickets"]["results"]["lottery"]["rows"]:
            cells[(row["round"], row["variant"])].append(row)
    return {key: {col: mean(float(r[col]) for r in rows) for col in ("weights_remaining", "test_accuracy", "best_step")}
            for key, rows in cells.items()}


def check(result: dict) -> Finding:
    table = lottery_table(result)
    dense = table[(0, "dense")]["test_accuracy"]
    rounds = sorted(k for k, v in table if v == "ticket")
    ticket = {k: table[(k, "ticket")] for k in rounds}
    controls = sorted({v for _, v in table} - {"dense", "ticket"})
    matched = [k for k in rounds if ticket[k]["weights_remaining"] >= MATCH_DOWN_TO]
    beaten = [k for k in rounds if ticket[k]["weights_remaining"] <= BEAT_BELOW]
    holds = (bool(matched) and bool(beaten) and bool(controls)
             and all(ticket[k]["test_accuracy"] >= dense - MATCH for k in matched)
             and all(ticket[k]["test_accuracy"] > table[(k, c)]["test_accuracy"] for k in beaten for c in controls))
    lines = [f"dense {100 * dense:.1f}%"]
    for k in rounds:
        cells = ", ".join(f"{c} {100 * table[(k, c)]['test_accuracy']:.1f}%" for c in controls)
        lines.append(f"r{k} ({ticket[k]['weights_remaining']:.1f}% left): ticket {100 * ticket[k]['test_accuracy']:.1f}%, {cells}")
    return Finding(holds, "mean test accuracy over 3 seeds — " + "; ".join(lines))


CLAIM = Claim(
    name="imp_mlp",
    claim="Iterative magnitude pruning with rewinding to the initialization finds winning tickets: subnetworks that "
    "stay within 2 points of the dense network's test accuracy down to about 11% of the weights, and beat both "
    "reinitialized and randomly masked controls at every sparsity from about 17% of the weights down.",
    source="Frankle & Carbin 2019 (the lottery ticket hypothesis), Fig. 3–4",
    check=check,
)
