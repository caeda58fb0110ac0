"""Digits: a fixed stratified split and train-statistics standardization."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from sklearn.datasets import load_digits

from nnopt.plugins.datasets.digits import Digits


def load(seed=0, **params):
    return Digits(Digits.Params(**params)).load(seed)


@pytest.fixture(scope="module")
def default():
    return load()


def test_shapes_dtypes_and_metadata(default):
    d = default
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert d.x_train.shape[1:] == (64,) and d.input_shape == (64,)
    assert len(d.x_train) + len(d.x_test) == 1797
    assert (d.task, d.num_classes, d.output_dim) == ("classification", 10, 10)


def test_split_is_stratified(default):
    d = default
    y_all = load_digits().target
    for c in range(10):
        n_c = int((y_all == c).sum())
        assert int((d.y_test == c).sum()) == round(0.2 * n_c)
        assert int((d.y_train == c).sum()) == n_c - round(0.2 * n_c)


def test_split_depends_on_split_seed_not_on_the_stage_seed(default):
    again = load(seed=7)
    assert torch.equal(default.x_test, again.x_test) and torch.equal(default.y_train, again.y_train)
    other = load(split_seed=1)
    assert not torch.equal(default.y_test, other.y_test)


def test_standardized_with_train_statistics_only(default):
    x_train = default.x_train
    raw_train = load(standardize=False).x_train
    varying = raw_train.std(0) > 0
    torch.testing.assert_close(x_train.mean(0), torch.zeros(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(x_train.std(0, unbiased=False)[varying], torch.ones(int(varying.sum())), atol=1e-4, rtol=0)
    # the test set is transformed with the *train* mean/std: recompute it from raw pixels
    raw_test = load(standardize=False).x_test.double() / 16
    u = raw_train.double() / 16
    mean, std = u.mean(0), u.std(0, unbiased=False)
    std[std == 0] = 1
    torch.testing.assert_close(default.x_test.double(), (raw_test - mean) / std, atol=1e-5, rtol=0)
    assert default.x_test.mean(0).abs().max() > 1e-3  # not re-centred on its own statistics


def test_unstandardized_inputs_are_raw_intensities():
    x = load(standardize=False).x_train
    assert x.min() == 0 and x.max() == 16 and torch.equal(x, x.round())


def test_images_shape_when_not_flattened(default):
    d = load(flatten=False)
    assert d.x_train.shape[1:] == (1, 8, 8) and d.input_shape == (1, 8, 8)
    assert torch.equal(d.x_train.reshape(-1, 64), default.x_train)


def test_test_fraction_bounds():
    with pytest.raises(ValidationError):
        Digits.Params(test_fraction=1.0)
    assert len(load(test_fraction=0.5).x_test) == pytest.approx(1797 / 2, abs=10)


def test_the_arrays_are_exactly_those_of_load_digits():
    from nnopt.plugins.datasets.digits import read_digits

    x, y = read_digits()
    x_ref, y_ref = load_digits(return_X_y=True)
    assert x.dtype == x_ref.dtype and y.dtype == y_ref.dtype
    assert np.array_equal(x, x_ref) and np.array_equal(y, y_ref)


def test_without_its_csv_file_digits_falls_back_to_load_digits(monkeypatch, default):
    from nnopt.plugins.datasets import digits

    monkeypatch.setattr(digits, "_bundled_csv", lambda: None)
    again = load()
    assert torch.equal(again.x_train, default.x_train) and torch.equal(again.y_test, default.y_test)


def test_loading_digits_does_not_import_sklearn():
    """Importing scikit-learn costs about a second, to read one small bundled CSV file."""
    probe = ("import sys\n"
             "from nnopt.plugins.datasets.digits import Digits\n"
             "d = Digits(Digits.Params()).load(0)\n"
             "print(len(d.x_train) + len(d.x_test), 'sklearn' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1797", "False"]


@pytest.mark.parametrize("flatten", [True, False])
def test_shapes_are_known_without_loading(flatten):
    component = Digits(Digits.Params(flatten=flatten))
    d = component.load(0)
    assert component.shapes(0) == (d.input_shape, d.output_dim)
