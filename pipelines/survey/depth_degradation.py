"""Claim: a deeper plain network trains worse than a shallower one; its residual twin does not."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

# claims.py registers itself as `claims` (also when run as a script), so this is the very
# Claim class that `claims()` checks CLAIM against
sys.path.insert(0, str(Path(__file__).resolve().parent))
from claims import Claim, Finding, runs_of  # noqa: E402

#: how many times higher a final train loss must be to count as "trains worse"
MARGIN = 2.0


def _loss(stage: dict[str, Any]) -> float:
    """The final train loss; a diverged (or failed) run has trained worse than any that finished."""
    if stage["status"] in ("ran", "cached"):
        return float(stage["metrics"]["train_loss"])
    return math.inf


def check(result: dict[str, Any]) -> Finding:
    loss: dict[tuple[str, int], float] = {}
    steps = set()
    for run in runs_of(result):
        if run["stages"]["train"]["status"] in ("ran", "cached"):
            steps.add(run["stages"]["train"]["metrics"]["steps"])
        blocks = sum(s[0] if isinstance(s, list) else s["blocks"] for s in run["params"]["model.arch.stages"])
        layers = 2 * blocks + 2  # stem, two convs per block, head
        loss[(run["params"]["model.arch.name"], layers)] = _loss(run["stages"]["train"])
    shallow, deep = sorted({d for _, d in loss})
    plain_deep = loss[("plain", deep)]
    degrades = plain_deep > MARGIN * loss[("plain", shallow)]
    residual_fixes = plain_deep > MARGIN * loss[("resnet", deep)]
    measured = f"final train loss after {'/'.join(str(s) for s in sorted(steps, key=str))} steps: " + "; ".join(
        f"{name}-{d} {loss[(name, d)]:.3g}" for name in ("plain", "resnet") for d in (shallow, deep)
    )
    return Finding(holds=bool(degrades and residual_fixes), measured=measured)


CLAIM = Claim(
    name="depth_degradation",
    claim="A deeper plain network reaches a higher training loss than a shallower one (degradation, not "
          "overfitting), while the same deep network with identity shortcuts does not.",
    source="He, Zhang, Ren & Sun 2016 (ResNet), Fig. 1 and Table 6; survey §4.4, ref. [88]",
    check=check,
)
