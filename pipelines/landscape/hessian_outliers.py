"""Sagun et al. 2016/2017: a trained classifier's Hessian has a few outliers, about as many as
classes, far above the bulk (reproduction 2 of issue 9, digits, C = 10)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "survey"))
from claims import Claim, Finding, runs_of  # noqa: E402

CLASSES = 10
BULK_FACTOR = 2.0   # an outlier lies above twice the bulk scale |λ_min|
FAR = 10.0          # the largest outlier is at least this many bulk scales above 0


def check(result: dict) -> Finding:
    (run,) = runs_of(result)
    eigs = run["stages"]["spectrum"]["results"]["hessian_eigs"]
    values = eigs["eigenvalues"]
    top = sorted((v for v, w in zip(values, eigs["which"]) if w == "top"), reverse=True)
    scale = abs(min(values))
    outliers = [v for v in top if v > BULK_FACTOR * scale]
    holds = (eigs["all_converged"] and len(outliers) < len(top)
             and CLASSES / 2 <= len(outliers) <= 2 * CLASSES and top[0] >= FAR * scale)
    return Finding(holds, f"{len(outliers)} eigenvalues above 2|λ_min| = {BULK_FACTOR * scale:.3g} "
                          f"(top {top[0]:.3g}, {top[0] / scale:.1f}× the bulk scale; next below: "
                          f"{top[len(outliers)] if len(outliers) < len(top) else float('nan'):.3g}); C = {CLASSES}")


CLAIM = Claim(
    name="hessian_outliers",
    claim="The Hessian of a trained classifier has a bulk near zero and a few outlier eigenvalues far above it, "
    "about as many as classes (between C/2 and 2C).",
    source="Sagun, Bottou & LeCun 2016; Sagun, Evci, Güney, Dauphin & Bottou 2017; Papyan 2019",
    check=check,
)
