"""Shared by the geometry analyzers' tests: a hand-built AnalysisContext, small data, and the
CLI runner (a module of its own, not a conftest)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from nnopt.cli import main
from nnopt.core.kinds import AnalysisContext, DataSplit


def blobs(n_train=96, n_test=64, dim=4, classes=3, seed=0, dtype=torch.float32) -> DataSplit:
    g = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(classes, dim, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n_train + n_test,), generator=g)
    x = (centres[y] + torch.randn(n_train + n_test, dim, generator=g, dtype=torch.float64)).to(dtype)
    return DataSplit(x[:n_train], y[:n_train], x[n_train:], y[n_train:], "classification", (dim,), classes,
                     num_classes=classes)


def context(model: nn.Module, data: DataSplit, models: dict[str, nn.Module] | None = None, loss_fn=F.cross_entropy,
            seed: int = 0) -> AnalysisContext:
    """``load_model`` answers from ``models`` with a fresh copy each time (as the engine builds one per call)."""
    models = models or {}
    return AnalysisContext(model=model, loss_fn=loss_fn, data=data, device=torch.device("cpu"),
                           generator=torch.Generator().manual_seed(seed),
                           load_model=lambda ref: copy.deepcopy(models[str(ref)]))


def mlp(seed: int, dim=4, classes=3, bn=False, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(dim, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.Tanh(), nn.Linear(8, classes)]
    return nn.Sequential(*layers).to(dtype)


def fit(model: nn.Module, data: DataSplit, seed: int, steps=60, lr=0.1) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, data.n_train, (32,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
        opt.step()
    return model.eval()


def nnopt(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


TINY_HEAD = """\
name: {name}
seed: 0
device: cpu
data: {{name: digits, batch_size: 64}}
model:
  arch: {{name: mlp, widths: [8], activation: relu}}
  norm: {norm}
loss: cross_entropy
stages:
  train: {{kind: train, optimizer: {{name: sgd, lr: 0.05}}, steps: 6, keep: [0, 3, 6]}}
"""
