"""Garipov et al. 2018: two independently trained networks are separated by a loss barrier on the
straight line, and joined by a trained Bézier curve without one (reproduction 3 of issue 9)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "survey"))
from claims import Claim, Finding, runs_of  # noqa: E402

RATIO = 0.2  # the curve's barrier is at most this fraction of the line's ...
MIN_LINE = 0.1  # ... and the line's is a real barrier (nats of training loss above the chord)


def check(result: dict) -> Finding:
    (run,) = runs_of(result)
    r = run["stages"]["connect"]["results"]["mode_connectivity"]
    line, curve = r["line_barrier"], r["curve_barrier"]
    holds = line > MIN_LINE and curve < RATIO * line
    return Finding(holds, f"train-loss barrier on the line {line:.3f} (max {r['line']['max']:.3f}), on the trained "
                   f"Bézier curve {curve:.4f} (max {r['curve']['max']:.3f}); endpoints {r['endpoints'][0]:.4f}, "
                   f"{r['endpoints'][1]:.4f}; ‖θ_a − θ_b‖ = {r['distance']:.2f}")


CLAIM = Claim(
    name="mode_connectivity",
    claim="Two networks trained from different seeds have a loss barrier on the straight line between them, but a "
    "quadratic Bézier curve with one trained bend connects them with almost none (curve barrier < 20% of the "
    "line's).",
    source="Garipov et al. 2018 (Loss surfaces, mode connectivity, and fast ensembling of DNNs), Fig. 1, Table 1; "
    "Draxler et al. 2018",
    check=check,
)
