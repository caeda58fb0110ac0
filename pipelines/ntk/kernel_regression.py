"""Lee et al. 2018, Arora et al. 2019: NNGP and NTK kernel regression on digits come within a few
points of the trained MLP's test accuracy (reproduction 3 of issue 10)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "survey"))
from claims import Claim, Finding  # noqa: E402

WITHIN = 0.05  # "within a few points": 5 points of test accuracy


def check(result: dict) -> Finding:
    block = result["stages"]["kernels"]["results"]["ntk_regression"]
    ntk, nngp = block["ntk"]["test_accuracy"], block["nngp"]["test_accuracy"]
    network = block["compare"]["test_accuracy"]
    holds = abs(ntk - network) <= WITHIN and abs(nngp - network) <= WITHIN
    return Finding(holds, f"test accuracy on digits — trained MLP {100 * network:.1f}%, NTK regression "
                   f"{100 * ntk:.1f}%, NNGP regression {100 * nngp:.1f}% (t = ∞, {block['samples']} training "
                   f"images); within {100 * WITHIN:.0f} points: {holds}")


CLAIM = Claim(
    name="kernel_regression",
    claim="On digits, kernel regression with the infinite-width NTK and NNGP of a fully connected ReLU network "
    "reaches a test accuracy within a few points (5) of the trained finite network.",
    source="Lee et al. 2018 (deep networks as Gaussian processes), Table 1; Arora et al. 2019, §6",
    check=check,
)
