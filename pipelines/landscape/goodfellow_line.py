"""Goodfellow, Vinyals & Saxe 2015: the training loss along the line from the initialization
to the trained solution decreases without a bump (reproduction 1 of issue 9, two seeds)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "survey"))
from claims import Claim, Finding, runs_of  # noqa: E402

BUMP = 0.01  # the largest rise above the running minimum, as a fraction of the total decrease


def check(result: dict) -> Finding:
    holds, parts = True, []
    for run in runs_of(result):
        r = run["stages"]["line"]["results"]["interpolate"]
        m = r["monotone"]
        drop = m["decrease"]
        ok = drop > 1.0 and m["max_bump"] <= BUMP * drop and r["endpoints"]["b"]["train_loss"] < 0.2
        holds &= ok
        parts.append(f"seed {run.get('params', {}).get('seed', '?')}: train loss {r['endpoints']['a']['train_loss']:.3f} "
                     f"→ {r['endpoints']['b']['train_loss']:.4f}, largest bump {m['max_bump']:.2g} "
                     f"({100 * m['max_bump'] / drop:.2f}% of the drop)")
    return Finding(holds, "; ".join(parts))


CLAIM = Claim(
    name="goodfellow_line",
    claim="Along the straight line from a network's initialization to the solution SGD finds, the training loss "
    "decreases monotonically: the line shows no barrier or bump (largest rise above the running minimum ≤ 1% of "
    "the total decrease).",
    source="Goodfellow, Vinyals & Saxe 2015 (Qualitatively characterizing neural network optimization problems), "
    "Fig. 1–2",
    check=check,
)
