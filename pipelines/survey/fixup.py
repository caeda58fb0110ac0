"""Claim: Fixup trains a deep unnormalized ResNet where He initialization diverges."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

# claims.py registers itself as `claims` (also when run as a script), so this is the very
# Claim class that `claims()` checks CLAIM against
sys.path.insert(0, str(Path(__file__).resolve().parent))
from claims import Claim, Finding, runs_of  # noqa: E402

#: a final train loss this far below chance (ln 10 for ten balanced classes) has learned the digits
LEARNED = 0.25 * math.log(10)


def _cell(result: dict[str, Any], init: str | None) -> dict[str, Any]:
    for run in runs_of(result):
        if run["params"]["model.init"] == init:
            return run["stages"]["train"]
    raise KeyError(f"no run with model.init = {init!r}")


def _words(stage: dict[str, Any]) -> str:
    m = stage.get("metrics", {})
    if stage["status"] == "diverged":
        return f"diverged at step {m.get('diverged_at_step')} (last finite loss {m.get('last_finite_loss', float('nan')):.3g})"
    if stage["status"] not in ("ran", "cached"):
        return stage["status"]
    return f"final train loss {m['train_loss']:.3g}, test accuracy {m['test_accuracy']:.1%}"


def check(result: dict[str, Any]) -> Finding:
    fixup, he, default = _cell(result, "fixup"), _cell(result, "kaiming_normal"), _cell(result, None)
    trained = fixup["status"] in ("ran", "cached") and fixup["metrics"]["train_loss"] < LEARNED
    he_fails = he["status"] == "diverged" or (
        he["status"] in ("ran", "cached")
        and he["metrics"]["train_loss"] > max(2 * fixup["metrics"].get("train_loss", math.inf), LEARNED)
    )
    measured = (f"unnormalized deep ResNet, one learning rate: Fixup init {_words(fixup)}; He init {_words(he)}; "
                f"for context, PyTorch's default init {_words(default)}")
    return Finding(holds=bool(trained and he_fails), measured=measured)


CLAIM = Claim(
    name="fixup",
    claim="A deep residual network without normalization trains from Fixup's initialization (zero last branch "
          "layers and head, branches scaled by L^(-1/(2m-2))), while the standard He initialization of the same "
          "network diverges at the same learning rate.",
    source="Zhang, Dauphin & Ma 2019 (Fixup); survey §4.4, ref. [245]",
    check=check,
)
