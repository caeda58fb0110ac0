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
#: each architecture, small, with the input it takes: flat vectors or 1×6×6 images (widths
#: are multiples of groupnorm's default 8 groups)
ARCHITECTURES = {
    "mlp": ({"widths": [16, 16], "activation": "tanh"}, (6,)),
    "linear": ({"widths": [16, 16]}, (6,)),
    "matrix_factorization": ({"factors": [4, 5]}, (6,)),
    "cnn": ({"channels": [8, 8, 8, 8, 8], "activation": "tanh"}, (1, 6, 6)),
    "resnet": ({"stages": [[1, 8, 1], [1, 16, 2]]}, (1, 6, 6)),
    "resnet_dense": ({"stages": [[1, 8, 1], [1, 16, 1]], "kind": "dense"}, (6,)),
    "plain": ({"stages": [[1, 8, 1], [1, 16, 2]]}, (1, 6, 6)),
}
#: initializers with a required parameter, or one an architecture needs (the identity of
#: `linear` is scale-free: its only critical point has no bias variance)
INIT_PARAMS = {"constant": {"value": 0.1}, "critical": {"sigma_b2": 0.0}}
#: weight (spectral) normalization divides each row (the matrix) by its norm: an initializer
#: that can leave a row (the matrix) all zero leaves 0/0, and training reports the run diverged
UNDEFINED = {("weightnorm", "zeros"), ("weightnorm", "sparse"), ("spectralnorm", "zeros")}
#: combinations that do not apply, each refused with a message (tested where the component is):
#: Fixup needs residual blocks (and zeroes layers, 0/0 under weight/spectral normalization);
#: a matrix factorization has no feature layers to normalize between its factors
NOT_APPLICABLE = {
    **{(a, "*", "fixup"): "no residual blocks" for a in ("mlp", "linear", "matrix_factorization", "cnn", "plain")},
    **{(a, n, "fixup"): "zeroed layers" for a in ("resnet", "resnet_dense") for n in ("weightnorm", "spectralnorm")},
    **{("matrix_factorization", n, "*"): "no feature layers"
       for n in ("batchnorm", "layernorm", "groupnorm", "switchable")},
    # delta-orthogonal needs c_out >= c_in: the 1×1 projection of a resnet keeps that, a cnn's
    # widening stack too; nothing here narrows
}


def _applies(arch: str, norm: str, init: str | None) -> bool:
    return not any(key in NOT_APPLICABLE for key in
                   [(arch, norm, init), (arch, "*", init), (arch, norm, "*")])


def _data(shape: tuple[int, ...], classes: int = 3) -> DataSplit:
    x = torch.randn(32, *shape, generator=torch.Generator().manual_seed(0))
    y = torch.arange(32) % classes
    return DataSplit(x, y, x, y, "classification", shape, classes, classes)


def _norms(arch: str) -> list[str]:
    image = len(ARCHITECTURES[arch][1]) == 3
    return [n for n in REGISTRY.names("normalizers") if image or n not in SPATIAL_ONLY]


CASES = [(a, n, i) for a in sorted(ARCHITECTURES) for n in _norms(a) for i in [None, *REGISTRY.names("initializers")]
         if _applies(a, n, i)]


def test_the_inapplicable_combinations_are_refused_with_a_message():
    from nnopt.core.errors import StageError

    for arch, norm, init in [("mlp", "none", "fixup"), ("matrix_factorization", "batchnorm", None),
                             ("resnet", "weightnorm", "fixup")]:
        with pytest.raises(StageError):
            _build(arch, norm, init)


def _build(arch: str, norm: str, init: str | None):
    params, shape = ARCHITECTURES[arch]
    name = "resnet" if arch == "resnet_dense" else arch
    raw = {"arch": {"name": name, **params}, "norm": {"name": norm}}
    if init is not None:
        raw["init"] = {"name": init, **INIT_PARAMS.get(init, {})}
    spec = ModelSpec.model_validate(raw)
    problems = Problems()
    resolve_components(spec, ("model",), Source({}, "test"), REGISTRY, problems)
    assert not problems, problems.items
    data = _data(shape)
    return build_model(spec, data, 0, torch.device("cpu")), data


@pytest.mark.parametrize(("arch", "norm", "init"), CASES)
def test_every_combination_builds_and_trains_a_step(arch, norm, init):
    model, data = _build(arch, norm, init)
    out = model(data.x_train)
    assert out.shape == (32, 3)
    torch.nn.functional.cross_entropy(out, data.y_train).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    if (norm, init) not in UNDEFINED:
        assert all(torch.isfinite(g).all() for g in grads)
