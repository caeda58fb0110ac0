"""Model sizes at plan time: counted on the meta device, checked against the device's memory."""

from __future__ import annotations

import os

import pytest

from nnopt.core import model_size
from nnopt.core.errors import SpecError
from nnopt.core.planner import load_plans

SMALL = """\
name: sized
data: {name: synthetic, task: gaussian_mixture, n_train: 32, n_test: 16, dim: 8, batch_size: 16}
model:
  arch: {name: mlp, widths: [16], activation: relu}
loss: cross_entropy
stages:
  train:
    kind: train
    optimizer: sgd
    steps: 2
  wide:
    kind: train
    model: {arch: {name: mlp, widths: [64]}}
    optimizer: sgd
    steps: 2
  probe:
    kind: analyze
    from: wide
    analyzers: [grad_norms]
"""
#   4 arch (top level)   13 model of `wide`, which `probe` inherits through `from`

#: an 8-16-2 MLP: 8*16 + 16 weights and biases, then 16*2 + 2; float32
TOP_PARAMS = 8 * 16 + 16 + 16 * 2 + 2
WIDE_PARAMS = 8 * 64 + 64 + 64 * 2 + 2


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "sized.yaml"
    path.write_text(SMALL)
    return str(path)


def test_every_stage_with_a_model_knows_its_parameters_and_weight_bytes(small):
    (plan,) = load_plans(small)
    sizes = {s.id: (s.param_count, s.weight_bytes) for s in plan.stages}
    assert sizes == {"train": (TOP_PARAMS, 4 * TOP_PARAMS), "wide": (WIDE_PARAMS, 4 * WIDE_PARAMS),
                     "probe": (WIDE_PARAMS, 4 * WIDE_PARAMS)}


def test_the_count_is_that_of_the_model_the_stage_builds(small):
    import torch

    from nnopt.core.model_spec import build_model

    (plan,) = load_plans(small)
    st = plan.stage("wide")
    built = build_model(st.model, st.data.instantiate().load(st.seed), st.seed, torch.device("cpu"))
    assert st.param_count == sum(p.numel() for p in built.parameters())
    assert st.weight_bytes == sum(t.numel() * t.element_size() for t in [*built.parameters(), *built.buffers()])


def test_each_distinct_model_is_built_once_per_planning(small, monkeypatch):
    """A matrix of 6 combinations over 3 stages uses 2 distinct models: 2 meta builds."""
    calls = []
    real = model_size.measure
    monkeypatch.setattr(model_size, "measure", lambda *a: calls.append(a) or real(*a))
    plans = load_plans(small, ["matrix.stages.train.optimizer.lr=[0.1, 0.2, 0.3]", "matrix.seed=[0, 1]"])
    assert len(plans) == 6
    assert len(calls) == 2


def test_a_model_too_large_for_its_device_is_refused_where_its_arch_is_written(small, monkeypatch):
    from nnopt.core import planner

    monkeypatch.setattr(planner, "device_memory", lambda device: 4 * TOP_PARAMS + 1)
    with pytest.raises(SpecError) as err:
        load_plans(small, ["device=cpu"])
    # the top-level model fits; `wide`'s own does not, and `probe` inherits it: one error, at line 13
    assert [str(d).partition(": ")[2] for d in err.value.diagnostics] == [
        f"stages.wide.model.arch: this model has {WIDE_PARAMS:,} parameters: its weights alone take 2.8 KiB, "
        f"more than the 713 B of memory of device cpu"]
    assert [(d.location.line, d.location.column) for d in err.value.diagnostics] == [(13, 19)]


def test_an_architecture_that_cannot_build_on_meta_leaves_the_size_unknown(small, monkeypatch):
    from nnopt.plugins.architectures.mlp import MLP as Mlp

    def needs_real_tensors(self, *args):
        raise RuntimeError("Tensor.item() cannot be called on meta tensors")

    monkeypatch.setattr(Mlp, "build", needs_real_tensors)
    (plan,) = load_plans(small)
    assert {(s.param_count, s.weight_bytes) for s in plan.stages} == {(None, None)}


def test_a_dataset_that_cannot_give_its_shapes_leaves_the_size_unknown(small, monkeypatch):
    from nnopt.plugins.datasets.synthetic import Synthetic

    monkeypatch.setattr(Synthetic, "shapes", lambda self, seed: (_ for _ in ()).throw(OSError("download failed")))
    (plan,) = load_plans(small)
    assert {s.param_count for s in plan.stages} == {None}


def test_the_default_shapes_are_those_of_the_loaded_data():
    from nnopt.core.kinds import Dataset
    from nnopt.plugins.datasets.synthetic import Synthetic

    component = Synthetic(Synthetic.Params(task="least_squares", dim=3, outputs=2, n_train=8, n_test=4))
    assert Dataset.shapes(component, 0) == ((3,), 2) == component.shapes(0)


def test_device_memory_and_human_bytes():
    assert model_size.device_memory("cpu") == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert [model_size.human_bytes(n) for n in (713, 1024, 1536, 3 * 2**30, 5 * 2**40)] == [
        "713 B", "1.0 KiB", "1.5 KiB", "3.0 GiB", "5.0 TiB"]

