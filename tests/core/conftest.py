"""Fixtures for the engine's tests: a CLI runner in-process and a tiny pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from nnopt.cli import main

TINY = """\
name: tiny
seed: 0
data: {name: digits, batch_size: 128}
model:
  arch: {name: mlp, widths: [32], activation: relu}
loss: cross_entropy
stages:
  train:
    kind: train
    optimizer: {name: sgd, lr: 0.1, momentum: 0.9}
    epochs: 1
    keep: [0]
  probe:
    kind: analyze
    from: train
    analyzers: [{name: grad_norms, source: train, samples: 256}]
"""


#: a train stage of the demo plugin's optimizer: what tests of edited plugin code run
SIGNSGD = """\
name: signsgd
data: {name: synthetic, task: gaussian_mixture, n_train: 64, n_test: 32, dim: 4, batch_size: 32}
model: {arch: {name: mlp, widths: [8]}}
loss: cross_entropy
stages:
  train:
    kind: train
    optimizer: {name: demo_signsgd, lr: 0.01}
    steps: 2
"""


def statuses(out: dict) -> dict[str, str]:
    """``{stage id: status}`` of one ``run --json`` object."""
    return {sid: s["status"] for sid, s in out["stages"].items()}


class Cli:
    """Runs ``nnopt`` in this process (torch is imported once for the whole session)."""

    def __init__(self, store: Path):
        self.store = store

    def __call__(self, *args: str, store: bool = True):
        args = list(args)
        if store and args and args[0] in ("run", "plan", "show", "ls", "gc", "report"):
            args += ["--store", str(self.store)]
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        return result

    def run_json(self, *args: str):
        result = self("run", *args, "--json")
        return result, json.loads(result.stdout) if result.stdout.strip() else None


@pytest.fixture
def editable_demo(demo_env, tmp_path: Path) -> tuple[Path, dict]:
    """``(package dir, env)``: a copy of the installed demo plugin that the test may edit (the
    session's install stays as it is), and an environment that imports the copy."""
    import os
    import shutil

    installed = Path(demo_env["PYTHONPATH"].split(os.pathsep)[0])
    site = tmp_path / "site"
    shutil.copytree(installed, site)
    env = {**demo_env, "PYTHONPATH": os.pathsep.join([str(site), *demo_env["PYTHONPATH"].split(os.pathsep)[1:]])}
    return site / "nnopt_demo_plugin", env


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "store")


@pytest.fixture
def pipeline(tmp_path: Path):
    """``pipeline(text=TINY)`` writes a pipeline file and returns its path."""

    def write(text: str = TINY, name: str = "pipeline.yaml") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write
