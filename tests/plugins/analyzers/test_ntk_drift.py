"""ntk_drift: 0 at the reference, > 0 after training, the same from a `reference` as from the
first call, kept across a checkpoint by its state dict; the series plot; the CLI in `track`."""

from __future__ import annotations

import copy
import json

import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from nnopt.cli import main
from nnopt.core.kinds import AnalysisContext, DataSplit
from nnopt.core.registry import Registry
from nnopt.plugins.analyzers.ntk_drift import NTKDrift


def analyzer(**params) -> NTKDrift:
    p = NTKDrift.Params(**params)
    cls = Registry().load("kernels", p.kernel.name)[0]
    p.kernel.resolve(cls, cls.Params.model_validate(p.kernel.params))
    return NTKDrift(p)


def regression(n=48, d=4) -> DataSplit:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    y = torch.tanh(x[:, :1] - x[:, 1:2])
    return DataSplit(x, y, x[:8], y[:8], "regression", (d,), 1)


def ctx_for(model, data, step=None, load_model=None) -> AnalysisContext:
    return AnalysisContext(model=model, loss_fn=F.mse_loss, data=data, device=torch.device("cpu"),
                           generator=torch.Generator().manual_seed(3), step=step, load_model=load_model)


def train(model, data, steps=30, lr=0.2):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(model(data.x_train), data.y_train).backward()
        opt.step()
    return model.eval()


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1)).eval()


def test_zero_at_the_first_call_and_positive_after_training(tmp_path):
    data, model = regression(), net()
    drift = analyzer(samples=16)
    first = drift.analyze(ctx_for(model, data, step=0))
    assert first["ntk_drift"] == 0.0 and first["weight_drift"] == 0.0 and first["reference_step"] == 0
    assert abs(first["alignment"] - 1.0) < 1e-12 and 0 < first["lambda_min"] <= first["lambda_max"]
    init = copy.deepcopy(model)
    train(model, data)
    later = drift.analyze(ctx_for(model, data, step=30))
    assert later["ntk_drift"] > 1e-3 and later["weight_drift"] > 1e-3 and later["reference_step"] == 0
    # the definition, on the same 16 examples (the analyzer's subset is seeded by its generator's seed)
    idx = torch.randperm(48, generator=torch.Generator().manual_seed(3))[:16]
    w0 = torch.cat([p.detach().reshape(-1).double() for p in init.parameters()])
    w1 = torch.cat([p.detach().reshape(-1).double() for p in model.parameters()])
    assert abs(later["weight_drift"] - float((w1 - w0).norm() / w0.norm())) < 1e-12
    # from a reference: the same numbers as from the first call
    by_ref = analyzer(samples=16, reference="train@0").analyze(
        ctx_for(model, data, load_model=lambda ref: copy.deepcopy(init)))
    assert by_ref["reference_step"] is None
    for key in ("ntk_drift", "weight_drift", "lambda_min", "lambda_max", "alignment"):
        assert abs(by_ref[key] - later[key]) <= 1e-10 * max(1.0, abs(later[key])), key
    assert len(data.x_train[idx]) == later["samples"] == 16
    series = [(0, first), (30, later)]
    files = drift.plot_series(series, tmp_path)
    assert [f.name for f in files] == ["ntk_drift.png"] and files[0].stat().st_size > 0


def test_the_reference_survives_a_checkpoint_through_the_state_dict():
    data, model = regression(), net()
    drift = analyzer(samples=8)
    drift.analyze(ctx_for(model, data, step=0))
    state = drift.state_dict()
    train(model, data, steps=10)
    expected = drift.analyze(ctx_for(model, data, step=10))
    resumed = analyzer(samples=8)
    resumed.load_state_dict(state)
    got = resumed.analyze(ctx_for(model, data, step=10))
    assert got == expected
    fresh = analyzer(samples=8).analyze(ctx_for(model, data, step=10))  # no state: measured from here, and says so
    assert fresh["ntk_drift"] == 0.0 and fresh["reference_step"] == 10


TINY = """
name: ntk-drift-cli
seed: 0
device: cpu
data: {name: synthetic, task: teacher_student, n_train: 64, n_test: 16, dim: 4}
model:
  arch: {name: mlp, widths: [32], parameterization: ntk}
loss: mse
stages:
  train:
    kind: train
    optimizer: {name: sgd, lr: 0.3}
    full_batch: true
    steps: 12
    keep: [0]
    track:
      - {name: ntk_drift, every: 4, samples: 12}
  drift:
    kind: analyze
    from: train
    analyzers:
      - {name: ntk_drift, samples: 12, reference: train@0}
"""


def test_cli_end_to_end_in_track_and_with_a_reference(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(TINY)
    result = CliRunner().invoke(main, ["run", str(path), "--json", "--store", str(tmp_path / "store")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)["stages"]
    train_dir = out["train"]["dir"]
    tracked = [json.loads(line) for line in open(f"{train_dir}/metrics.jsonl") if '"track": "ntk_drift"' in line]
    assert [t["step"] for t in tracked] == [0, 4, 8]
    assert tracked[0]["ntk_drift"] == 0.0 and all(t["ntk_drift"] > 0 for t in tracked[1:])
    assert tracked[1]["weight_drift"] < tracked[2]["weight_drift"]
    final = out["drift"]["results"]["ntk_drift"]
    assert final["ntk_drift"] > tracked[1]["ntk_drift"] and final["reference_step"] is None
    assert (tmp_path / "store").rglob("ntk_drift.png").__next__().stat().st_size > 0
