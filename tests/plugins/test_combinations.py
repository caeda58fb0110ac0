"""Every architecture works with every normalizer and initializer that applies to it: each
combination builds through the engine's model builder, runs forward and backward, and has
the right output shape."""

from __future__ import annotations

import pytest
import torch

from nnopt.core.errors import Problems
from nnopt.core.kinds import DataSplit
from nnopt.core.model_spec import ModelSpec, build_model
from nnopt.core.planner import resolve_components
from nnopt.core.registry import Registry
from nnopt.core.yaml_source import Source

REGISTRY = Registry()
#: normalizers that need feature maps (they refuse a fully connected layer, tested on their own)
SPATIAL_ONLY = {"instancenorm"}
ARCHITECTURES = {"mlp": {"widths": [16, 16], "activation": "tanh"}, "linear": {"widths": [16, 16]}}
#: initializers with a required parameter, or one an architecture needs (the identity of
#: `linear` is scale-free: its only critical point has no bias variance)
INIT_PARAMS = {"constant": {"value": 0.1}, "critical": {"sigma_b2": 0.0}}
#: weight (spectral) normalization divides each row (the matrix) by its norm: an initializer
#: that can leave a row (the matrix) all zero leaves 0/0, and training reports the run diverged
UNDEFINED = {("weightnorm", "zeros"), ("weightnorm", "sparse"), ("spectralnorm", "zeros")}


def _data(dim: int = 6, classes: int = 3) -> DataSplit:
    x = torch.randn(32, dim, generator=torch.Generator().manual_seed(0))
    y = torch.arange(32) % classes
    return DataSplit(x, y, x, y, "classification", (dim,), classes, classes)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("norm", [n for n in REGISTRY.names("normalizers") if n not in SPATIAL_ONLY])
@pytest.mark.parametrize("init", [None, *REGISTRY.names("initializers")])
def test_every_combination_builds_and_trains_a_step(arch, norm, init):
    raw = {"arch": {"name": arch, **ARCHITECTURES[arch]}, "norm": {"name": norm}}
    if init is not None:
        raw["init"] = {"name": init, **INIT_PARAMS.get(init, {})}
    spec = ModelSpec.model_validate(raw)
    problems = Problems()
    resolve_components(spec, ("model",), Source({}, "test"), REGISTRY, problems)
    assert not problems, problems.items
    data = _data()
    model = build_model(spec, data, 0, torch.device("cpu"))
    out = model(data.x_train)
    assert out.shape == (32, 3)
    torch.nn.functional.cross_entropy(out, data.y_train).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    if (norm, init) not in UNDEFINED:
        assert all(torch.isfinite(g).all() for g in grads)
