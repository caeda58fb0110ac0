"""ntk_spectrum: the eigenvalues of Θ on a seeded subset, against a kernel known in closed
form (a linear model's x·x'ᵀ + 1); flattening of a full kernel; the plot; the CLI."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from nnopt.cli import main
from nnopt.core.kinds import AnalysisContext, DataSplit
from nnopt.core.registry import Registry
from nnopt.plugins.analyzers.ntk_spectrum import NTKSpectrum


def resolve_all(params):
    """Resolve the params' kernel ref through the registry, as the engine does."""
    ref = params.kernel
    cls = Registry().load("kernels", ref.name)[0]
    ref.resolve(cls, cls.Params.model_validate(ref.params))
    return params


def regression(n=40, d=3, seed=0) -> DataSplit:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x.sum(1, keepdim=True)
    return DataSplit(x, y, x[:8], y[:8], "regression", (d,), 1)


def analyzer(**params) -> NTKSpectrum:
    return NTKSpectrum(resolve_all(NTKSpectrum.Params(**params)))


def ctx_for(model, data) -> AnalysisContext:
    return AnalysisContext(model=model, loss_fn=F.mse_loss, data=data, device=torch.device("cpu"),
                           generator=torch.Generator().manual_seed(7))


def test_a_linear_model_has_the_spectrum_of_x_xT_plus_one(tmp_path):
    data = regression()
    model = nn.Linear(3, 1).eval()
    r = analyzer(samples=12).analyze(ctx_for(model, data))
    # the same seeded subset the analyzer draws (a generator seeded with the analyzer's seed)
    idx = torch.randperm(40, generator=torch.Generator().manual_seed(7))[:12]
    x = data.x_train[idx].double()
    expected = torch.linalg.eigvalsh(x @ x.T + 1).flip(0)
    assert r["samples"] == 12 and r["size"] == 12 and r["method"] == "structured"
    assert torch.allclose(torch.tensor(r["eigenvalues"], dtype=torch.float64), expected, rtol=1e-6, atol=1e-9)
    assert r["lambda_max"] == r["eigenvalues"][0] and r["lambda_min"] == r["eigenvalues"][-1]
    # rank 4 (x ∈ R³ plus the constant): the rest vanish up to rounding
    assert abs(r["lambda_min"]) < 1e-9 * r["lambda_max"]
    assert abs(r["trace"] - float((x * x).sum() + 12)) < 1e-6 * r["trace"]
    files = analyzer().plot(r, tmp_path)
    assert [f.name for f in files] == ["ntk_spectrum.png"] and files[0].stat().st_size > 0


def test_a_full_kernel_is_flattened_over_examples_and_outputs():
    data = regression()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).eval()
    full = analyzer(samples=6, kernel={"name": "empirical_ntk", "output": "full"}).analyze(ctx_for(model, data))
    trace = analyzer(samples=6).analyze(ctx_for(model, data))
    assert full["size"] == 12 and trace["size"] == 6
    assert full["lambda_min"] > 0 and full["condition_number"] == full["lambda_max"] / full["lambda_min"]
    # the mean over outputs is the average of the diagonal blocks: its trace is half the full one
    assert abs(trace["trace"] - full["trace"] / 2) < 1e-9 * full["trace"]


TINY = """
name: ntk-spectrum-cli
seed: 0
device: cpu
data: {name: synthetic, task: teacher_student, n_train: 64, n_test: 16, dim: 4}
model:
  arch: {name: mlp, widths: [16], parameterization: ntk}
loss: mse
stages:
  probe:
    kind: analyze
    analyzers:
      - {name: ntk_spectrum, samples: 16}
      - {name: ntk_spectrum, samples: 16, kernel: {name: empirical_ntk, method: ntk_vp}}
"""


def test_cli_end_to_end(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(TINY)
    result = CliRunner().invoke(main, ["run", str(path), "--json", "--store", str(tmp_path / "store")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stage = json.loads(result.stdout)["stages"]["probe"]
    a, b = stage["results"]["ntk_spectrum"], stage["results"]["ntk_spectrum_2"]
    assert a["method"] == "structured" and b["method"] == "ntk_vp"
    assert len(a["eigenvalues"]) == 16 and a["lambda_min"] > 0
    assert all(abs(u - v) <= 1e-9 * a["lambda_max"] for u, v in zip(a["eigenvalues"], b["eigenvalues"]))
    plots = sorted(p.name for p in (tmp_path / "store").rglob("*.png"))
    assert plots == ["ntk_spectrum.png", "ntk_spectrum_2_ntk_spectrum.png"]
