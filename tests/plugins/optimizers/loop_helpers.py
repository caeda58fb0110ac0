"""What the training loop uses of a StageContext, for optimizer tests that drive a TrainLoop by
hand: the seed, metrics lines (dropped) and checkpoints (kept as the bytes torch.save writes,
so a resume reads exactly what a file on disk would hold)."""

from __future__ import annotations

import io

import torch


class LoopCtx:
    def __init__(self, seed: int = 0):
        self.seed, self.saved = seed, None

    def log_metrics(self, record):
        pass

    def save_checkpoint(self, state):
        buf = io.BytesIO()
        torch.save(state, buf)
        self.saved = buf.getvalue()


class RecordingCtx:
    """A loop context that keeps every metrics line and a deep copy of every checkpoint (as on
    disk: not the live tensors), for tests that read them back."""

    def __init__(self):
        self.lines, self.checkpoints = [], []

    def log_metrics(self, record):
        self.lines.append(record)

    def save_checkpoint(self, state):
        import copy

        self.checkpoints.append(copy.deepcopy(state))
