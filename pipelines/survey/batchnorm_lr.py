"""Ioffe & Szegedy 2015 / Bjorck et al. 2018: BatchNorm lets SGD take a larger step."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from claims import Claim, Finding, runs_of  # noqa: E402

TRAINS = 0.8  # test accuracy on the 10 digit classes (chance: 0.1) that counts as "trains"


def check(result: dict) -> Finding:
    outcome: dict[tuple[str, float], tuple[str, float | None]] = {}
    for run in runs_of(result):
        stage = run["stages"]["fit"]
        key = (run["params"]["model.norm"], float(run["params"]["stages.fit.optimizer.lr"]))
        outcome[key] = (stage["status"], stage["metrics"].get("test_accuracy"))
    small, large = sorted({lr for _, lr in outcome})

    def trains(norm: str, lr: float) -> bool:
        status, accuracy = outcome[(norm, lr)]
        return status != "diverged" and accuracy is not None and accuracy >= TRAINS

    def said(norm: str, lr: float) -> str:
        status, accuracy = outcome[(norm, lr)]
        return "diverged" if status == "diverged" else f"test accuracy {accuracy:.3f}"

    holds = (trains("none", small) and trains("batchnorm", small)
             and not trains("none", large) and trains("batchnorm", large))
    return Finding(holds, f"lr {small}: plain {said('none', small)}, BatchNorm {said('batchnorm', small)}; "
                          f"lr {large}: plain {said('none', large)}, BatchNorm {said('batchnorm', large)}")


CLAIM = Claim(
    name="batchnorm_lr",
    claim="BatchNorm allows a larger learning rate: at a rate where the plain MLP diverges, the BatchNorm "
    "version trains.",
    source="Ioffe & Szegedy 2015; Bjorck et al. 2018; survey §4.3",
    check=check,
)
