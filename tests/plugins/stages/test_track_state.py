"""A tracked analyzer's own memory (``Analyzer.state_dict``) travels in the train stage's
checkpoint: a resumed run measures against the reference the killed run took."""

from __future__ import annotations

from typing import Any

import torch

from nnopt.core.component import TrackRef
from nnopt.core.kinds import Analyzer
from nnopt.plugins.stages.train_callbacks import TrackAnalyzers

from stage_helpers import LOCAL


class FirstCall(Analyzer):
    """Remembers the step of its first call (a stand-in for ntk_drift's Θ₀)."""

    def __init__(self, params: Any = None):
        super().__init__(params if params is not None else self.Params())
        self.first: int | None = None

    def analyze(self, ctx):
        return {}

    def state_dict(self) -> Any:
        return self.first

    def load_state_dict(self, state: Any) -> None:
        self.first = state


def tracker() -> TrackAnalyzers:
    ref = TrackRef.model_validate({"name": "first_call", "every": 1})
    ref.resolve(FirstCall, FirstCall.Params())
    return TrackAnalyzers(ctx=None, refs=[ref], seed=0, loss_fn=None, device=torch.device("cpu"))


def test_the_analyzers_own_state_is_saved_and_restored_with_the_track_state():
    LOCAL[("analyzers", "first_call")] = FirstCall
    killed = tracker()
    killed.tracks[0].analyzer.first = 7
    killed.tracks[0].series.append((7, {"x": 1.0}))
    resumed = tracker()
    resumed.load_state_dict(killed.state_dict())
    assert resumed.tracks[0].analyzer.first == 7 and resumed.tracks[0].series == [(7, {"x": 1.0})]


def test_a_track_state_of_the_older_two_field_layout_still_loads():
    old = tracker()
    state = [(g, s) for g, s, _ in old.state_dict()]
    fresh = tracker()
    fresh.load_state_dict(state)
    assert fresh.tracks[0].analyzer.first is None
