"""Every dataset's ``preprocess`` option: per-feature standardization with train statistics,
or unit-norm examples, applied by ``Dataset.prepare`` (what stages train on)."""

from __future__ import annotations

import json

import pytest
import torch

from nnopt.core.kinds import DataSplit
from nnopt.core.preprocess import preprocess
from nnopt.core.registry import Registry


def _split() -> DataSplit:
    g = torch.Generator().manual_seed(0)
    x_train = torch.randn(200, 2, 3, 3, generator=g) * 4.0 + 7.0
    x_train[:, 0, 0, 0] = 5.0  # a feature constant on the train split
    x_test = torch.randn(50, 2, 3, 3, generator=g)
    y = torch.zeros(250, dtype=torch.long)
    return DataSplit(x_train, y[:200], x_test, y[200:], "classification", (2, 3, 3), 2, 2)


def test_standardize_gives_every_train_feature_zero_mean_and_unit_variance():
    out = preprocess(_split(), "standardize")
    flat = out.x_train.reshape(200, -1).double()
    assert flat.mean(0).abs().max() < 1e-5
    std = flat.std(0, unbiased=False)
    assert std[0] == 0  # the constant feature is only centred
    assert torch.allclose(std[1:], torch.ones(17, dtype=torch.float64), atol=1e-5)


def test_standardize_applies_the_train_statistics_to_the_test_split():
    data = _split()
    out = preprocess(data, "standardize")
    mean = data.x_train.double().mean(0)
    std = data.x_train.double().std(0, unbiased=False)
    expected = (data.x_test.double() - mean) / torch.where(std > 0, std, torch.ones_like(std))
    assert torch.allclose(out.x_test.double(), expected, atol=1e-6)


def test_unit_norm_scales_every_example_to_norm_one_and_keeps_its_direction():
    data = _split()
    data.x_test[0] = 0.0
    out = preprocess(data, "unit_norm")
    norms = out.x_train.reshape(200, -1).norm(dim=1)
    assert torch.allclose(norms, torch.ones(200), atol=1e-6)
    cosine = torch.nn.functional.cosine_similarity(out.x_train.reshape(200, -1), data.x_train.reshape(200, -1))
    assert torch.allclose(cosine, torch.ones(200), atol=1e-6)
    assert torch.equal(out.x_test[0], torch.zeros(2, 3, 3))  # zero stays zero, no NaN


def test_none_is_the_data_as_loaded():
    data = _split()
    assert preprocess(data, "none") is data


def test_every_registered_dataset_takes_the_option_and_prepare_applies_it():
    registry = Registry()
    for name in registry.names("datasets"):
        try:
            cls, _ = registry.load("datasets", name)
        except Exception:  # a dataset whose module is not importable here is tested on its own
            continue
        assert "preprocess" in cls.Params.model_fields, name
    cls, _ = registry.load("datasets", "synthetic")
    raw = cls(cls.Params(task="gaussian_mixture", dim=4, n_train=300, n_test=10, preprocess="unit_norm"))
    data = raw.prepare(0)
    assert torch.allclose(data.x_train.norm(dim=1), torch.ones(300), atol=1e-5)
    assert not torch.allclose(raw.load(0).x_train.norm(dim=1), torch.ones(300), atol=1e-2)


def test_the_option_is_part_of_the_cache_key_and_a_bad_value_is_a_located_error(tmp_path):
    from click.testing import CliRunner

    from nnopt.cli import main

    text = """name: pre
seed: 0
data: {name: synthetic, task: gaussian_mixture, dim: 4, n_train: 64, n_test: 16, batch_size: 64}
model: {arch: {name: mlp, widths: [8]}}
loss: cross_entropy
stages:
  fit: {kind: train, optimizer: {name: sgd, lr: 0.1}, steps: 5}
"""
    path = tmp_path / "p.yaml"
    path.write_text(text)
    store = str(tmp_path / "store")
    keys = []
    for mode in ["none", "standardize"]:
        r = CliRunner().invoke(main, ["run", str(path), "--json", "--store", store, "--set", f"data.preprocess={mode}"])
        assert r.exit_code == 0, r.output
        keys.append(json.loads(r.stdout)["stages"]["fit"]["key"])
    assert keys[0] != keys[1]
    bad = CliRunner().invoke(main, ["validate", str(path), "--set", "data.preprocess=whiten"])
    assert bad.exit_code == 2 and "data.preprocess" in bad.stderr


@pytest.mark.parametrize("mode", ["standardize", "unit_norm"])
def test_preprocessing_keeps_dtype_shape_and_targets(mode):
    data = _split()
    out = preprocess(data, mode)
    assert out.x_train.shape == data.x_train.shape and out.x_train.dtype == data.x_train.dtype
    assert out.y_train is data.y_train and out.meta["preprocess"] == mode
