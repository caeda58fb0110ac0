"""Fixtures of the stage tests; the helpers they use live in ``stage_helpers``."""

from __future__ import annotations

from typing import Any

import pytest

from stage_helpers import run_stage


@pytest.fixture
def train(tmp_path):
    """``train(out="a", **spec)`` runs a train stage in ``tmp_path / out``; returns (outcome, dir)."""

    def go(out: str = "train", **kwargs: Any):
        out_dir = tmp_path / out
        kwargs.setdefault("optimizer", {"name": "sgd", "lr": 0.1})
        return run_stage("train", out_dir, **kwargs), out_dir

    return go
