"""Dynamical isometry (Pennington, Schoenholz & Ganguli 2017): orthogonal weights with tanh at
the edge of chaos concentrate the input–output Jacobian's singular values near 1; Gaussian
weights (with tanh or ReLU) do not."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from claims import Claim, Finding  # noqa: E402

def _spread(r: dict[str, Any]) -> tuple[float, float, float]:
    """(mean σ², coefficient of variation std σ²/mean σ², max σ/min σ) of one spectrum."""
    mean_sq = float(r["mean_sq"])
    return mean_sq, float(r["std_sq"]) / mean_sq, float(r["max_min_ratio"])  # "inf" parses too


def check(result: dict[str, Any]) -> Finding:
    spectra = {stage: result["stages"][stage]["results"]["jacobian_spectrum"]
               for stage in ("tanh_orthogonal", "tanh_gaussian", "relu_gaussian")}
    ortho = _spread(spectra["tanh_orthogonal"])
    others = {stage: _spread(r) for stage, r in spectra.items() if stage != "tanh_orthogonal"}
    # concentrated: every σ within a factor 4 of every other, σ² spread under a third of its mean,
    # centred within a factor 2 of 1
    concentrated = 0.5 < ortho[0] < 2.0 and ortho[1] < 0.3 and ortho[2] < 4.0
    # not: a σ² spread five times the orthogonal one's and singular values 100× apart, at least
    spread = all(cv > 5 * ortho[1] and ratio > 100 for _, cv, ratio in others.values())
    words = "; ".join(
        f"{stage.replace('_', ' + ')}: mean σ² {m:.3g}, std σ²/mean σ² {cv:.3g}, max σ/min σ {ratio:.3g}"
        for stage, (m, cv, ratio) in {"tanh_orthogonal": ortho, **others}.items()
    )
    q = spectra["tanh_orthogonal"]["quantiles"]
    return Finding(bool(concentrated and spread),
                   f"J = ∂z^16/∂x, 16 layers of width 128, 8 inputs: {words} (orthogonal + tanh: 90% of σ in "
                   f"[{float(q['0.05']):.3g}, {float(q['0.95']):.3g}])")


CLAIM = Claim(
    name="dynamical_isometry",
    claim="A deep tanh network with orthogonal weights at the edge of chaos has its input–output Jacobian's "
    "singular values concentrated near 1 (dynamical isometry); Gaussian weights, with tanh at the same critical "
    "point or with ReLU (Kaiming), spread them over many orders of magnitude.",
    source="survey §4.2 (dynamical isometry); Pennington, Schoenholz & Ganguli 2017; Saxe et al. 2014",
    check=check,
)
