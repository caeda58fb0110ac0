"""kernel_compare: the relative Frobenius error and traces of two kernels on the same seeded
inputs (a test-local kernel with a known answer, and two analytic kernels), refusals, and the
empirical-vs-analytic comparison end to end from YAML."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from click.testing import CliRunner

from nnopt.cli import main
from nnopt.core.component import KernelRef, Params
from nnopt.core.errors import StageError
from nnopt.core.kinds import AnalysisContext, DataSplit, Kernel
from nnopt.core.registry import Registry
from nnopt.plugins.analyzers.kernel_compare import KernelCompare


class ScaledIdentityParams(Params):
    scale: float = 1.0
    key: str = "ntk"


class ScaledIdentity(Kernel):
    """k(x, x') = scale·1[x = x'] (test-local)."""

    Params: ClassVar[type[ScaledIdentityParams]] = ScaledIdentityParams

    def compute(self, x1, x2, source):
        n = x1.shape[0]
        return {self.params.key: self.params.scale * torch.eye(n, dtype=source.dtype)}


def ref(name, **params):
    r = KernelRef.model_validate({"name": name, **params})
    cls = ScaledIdentity if name == "scaled_identity" else Registry().load("kernels", name)[0]
    r.resolve(cls, cls.Params.model_validate(r.params))
    if name != "scaled_identity":
        for sub in cls.Params.model_fields:
            value = getattr(r.resolved, sub)
            if hasattr(value, "is_resolved") and not value.is_resolved:
                sub_cls = Registry().load(value.kind, value.name)[0]
                value.resolve(sub_cls, sub_cls.Params.model_validate(value.params))
    return r


def context(n=20, d=4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g)
    data = DataSplit(x, torch.zeros(n, dtype=torch.long), x[:5], torch.zeros(5, dtype=torch.long), "classification",
                     (d,), 2, 2)
    return AnalysisContext(model=torch.nn.Linear(d, 2), loss_fn=None, data=data, device=torch.device("cpu"),
                           generator=torch.Generator().manual_seed(1))


def analyzer(a, b, **params):
    return KernelCompare(KernelCompare.Params.model_validate({"a": a, "b": b, **params}))


def test_relative_error_and_traces_of_known_kernels():
    out = analyzer(ref("scaled_identity", scale=3.0), ref("scaled_identity", scale=2.0), samples=8).analyze(context())
    # ‖3I − 2I‖_F / ‖2I‖_F = 1/2, traces 3n and 2n, alignment 1
    assert out["relative_error"] == pytest.approx(0.5)
    assert out["trace_a"] == pytest.approx(24.0) and out["trace_b"] == pytest.approx(16.0)
    assert out["alignment"] == pytest.approx(1.0) and out["samples"] == 8
    assert json.dumps(out)


def test_two_analytic_kernels_and_the_seeded_subset():
    a = ref("ntk_analytic", depth=2, W_std=1.5)
    b = ref("ntk_analytic", depth=2, W_std=1.5)
    out = analyzer(a, b, samples=10).analyze(context())
    assert out["relative_error"] == 0.0
    c = ref("nngp_analytic", depth=2, W_std=1.5)
    nngp = analyzer(c, b, which="nngp", samples=10).analyze(context())
    assert nngp["relative_error"] == 0.0 and nngp["trace_a"] == pytest.approx(nngp["trace_b"])
    # ntk_analytic returns the NNGP too, the same as nngp_analytic's
    cross = analyzer(a, c, which="nngp").analyze(context())
    assert cross["relative_error"] == 0.0
    different = analyzer(ref("scaled_identity", scale=1.0), b, samples=10).analyze(context())
    assert different["relative_error"] > 0


def test_refusals():
    with pytest.raises(StageError, match="returns nngp, not 'ntk'"):
        analyzer(ref("nngp_analytic", depth=1), ref("ntk_analytic", depth=1)).analyze(context())
    with pytest.raises(StageError, match="cannot derive"):
        analyzer(ref("ntk_analytic"), ref("ntk_analytic", depth=1)).analyze(context())


def test_plot(tmp_path):
    out = analyzer(ref("ntk_analytic", depth=1), ref("ntk_analytic", depth=2), samples=6).analyze(context())
    paths = KernelCompare(KernelCompare.Params.model_validate(
        {"a": "scaled_identity", "b": "scaled_identity"})).plot(out, tmp_path)
    assert [p.name for p in paths] == ["kernel_compare.png"] and paths[0].stat().st_size > 0


def test_empirical_against_analytic_from_yaml(tmp_path):
    path = tmp_path / "compare.yaml"
    path.write_text("""
name: kernel-compare-cli
data: {name: digits}
model:
  arch: {name: mlp, widths: [32], activation: relu, parameterization: ntk, W_std: 1.4, b_std: 0.1}
loss: cross_entropy
stages:
  probe:
    kind: analyze
    analyzers:
      - {name: kernel_compare, a: empirical_ntk, b: ntk_analytic, samples: 6}
""")
    result = CliRunner().invoke(main, ["run", str(path), "--json", "--store", str(tmp_path / "store")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stage = json.loads(result.stdout)["stages"]["probe"]
    out = stage["results"]["kernel_compare"]
    assert out["a"] == "empirical_ntk" and out["b"] == "ntk_analytic" and out["samples"] == 6
    assert 0 < out["relative_error"] < 1  # width 32: the finite kernel is near, not at, the limit
    assert (Path(stage["dir"]) / "plots" / "kernel_compare.png").is_file()
