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
