"""No bad local minima: a matrix factorization and a deep linear network trained by full-batch GD
from random initializations all reach the global minimum of the square loss, the Eckart–Young
error of the best rank-r approximation (reproduction 5 of issue 9)."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "survey"))
from claims import Claim, Finding, runs_of  # noqa: E402

PIPELINE = Path(__file__).with_suffix(".yaml")
RANK = 2  # the models' narrowest layer: factors [2], widths [8, 2, 8]
REL = 1e-3  # every final loss within 0.1% of the global minimum


def eckart_young(rank: int = RANK) -> float:
    """min over rank-r P of ‖Y − P‖²_F/(m·n) = Σ_{i>r} s_i²/(m·n), from the dataset's own Y (built
    through the Python API from the pipeline's `data:` block, so no number is copied here)."""
    import torch

    from nnopt.plugins.datasets.matrix import Matrix

    spec = dict(yaml.safe_load(PIPELINE.read_text())["data"])
    spec.pop("name")
    data = Matrix(Matrix.Params(**spec)).load(0)
    y = data.y_train.double()  # (n, m) = Yᵀ
    s = torch.linalg.svdvals(y)
    return float((s[rank:] ** 2).sum()) / y.numel()


def check(result: dict) -> Finding:
    best = eckart_young()
    finals = {"factorization": [], "deep_linear": []}
    for run in runs_of(result):
        for stage in finals:
            finals[stage].append(float(run["stages"][stage]["metrics"]["train_loss"]))
    holds = all(abs(v - best) <= REL * best for vs in finals.values() for v in vs) and all(len(v) >= 3 for v in finals.values())
    text = ", ".join(f"{stage}: " + " / ".join(f"{v:.6g}" for v in vs) for stage, vs in finals.items())
    return Finding(holds, f"Eckart–Young minimum {best:.6g}; final train loss over seeds — {text}")


CLAIM = Claim(
    name="deep_linear_global",
    claim="The square loss of deep linear networks and matrix factorizations has no spurious local minima: "
    "gradient descent from every random initialization tried reaches the global minimum, the error of the best "
    "rank-r approximation (Eckart–Young), to 0.1%.",
    source="Baldi & Hornik 1989; Kawaguchi 2016 (Deep learning without poor local minima); survey §6",
    check=check,
)
