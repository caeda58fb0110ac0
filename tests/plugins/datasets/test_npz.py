"""Npz: a user's own arrays, with one-line errors for everything that can be wrong."""

import io
import os
import re

import numpy as np
import pytest
import torch

from nnopt.core.errors import StageError
from nnopt.plugins.datasets.npz import Npz


def npz(path, **params):
    return Npz(Npz.Params(path=str(path), **params))


def arrays(n=6, m=3, features=(4,)):
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.normal(size=(n, *features)),
        "y_train": np.arange(n) % 3,
        "x_test": rng.normal(size=(m, *features)),
        "y_test": np.arange(m) % 3,
    }


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_loads_classification_arrays(tmp_path):
    data = arrays(features=(2, 3))
    np.savez(tmp_path / "d.npz", **data)
    d = npz(tmp_path / "d.npz").load(0)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert (d.task, d.input_shape, d.num_classes, d.output_dim) == ("classification", (2, 3), 3, 3)
    np.testing.assert_allclose(d.x_test.numpy(), data["x_test"].astype(np.float32))


def test_regression_targets_become_columns(tmp_path):
    data = arrays()
    data["y_train"], data["y_test"] = np.linspace(0, 1, 6), np.linspace(0, 1, 3)
    np.savez(tmp_path / "r.npz", **data)
    d = npz(tmp_path / "r.npz", task="regression").load(0)
    assert d.y_train.shape == (6, 1) and d.y_train.dtype == torch.float32
    assert (d.task, d.output_dim, d.num_classes) == ("regression", 1, None)


def test_a_missing_file_is_a_validation_error(tmp_path):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="no such file"):
        Npz.Params(path=str(tmp_path / "absent.npz"))


def test_a_file_removed_after_validation_is_a_stage_error_at_load(tmp_path):
    np.savez(tmp_path / "d.npz", **arrays())
    component = npz(tmp_path / "d.npz")
    (tmp_path / "d.npz").unlink()
    assert Npz.key_extras(component.params) == {"missing": True}
    with pytest.raises(StageError, match="no such file"):
        component.load(0)


def test_missing_keys_are_named(tmp_path):
    data = arrays()
    del data["y_test"], data["x_test"]
    np.savez(tmp_path / "d.npz", **data)
    with pytest.raises(StageError, match="missing arrays x_test, y_test"):
        npz(tmp_path / "d.npz").load(0)


def test_mismatched_lengths(tmp_path):
    data = arrays()
    data["y_train"] = data["y_train"][:-1]
    np.savez(tmp_path / "d.npz", **data)
    with pytest.raises(StageError, match="x_train has 6 samples but y_train has 5"):
        npz(tmp_path / "d.npz").load(0)


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: p.write_text("x_train,y_train\n"), "not an .npz archive"),
        (lambda p: p.write_bytes(npy_bytes(np.zeros(3))), "single .npy array"),
        (lambda p: np.savez(p, **{**arrays(), "y_train": np.array([{}] * 6, dtype=object)}), "without pickle"),
        (lambda p: np.savez(p, **{**arrays(), "y_train": np.arange(6) - 1.5}), "integer class indices"),
        (lambda p: np.savez(p, **{**arrays(), "x_test": np.zeros((3, 5))}), "x_test samples"),
    ],
)
def test_malformed_files(tmp_path, write, message):
    path = tmp_path / "bad.npz"
    write(path)
    with pytest.raises(StageError, match=message):
        npz(path).load(0)


def test_checksum_is_the_cache_key_extra_and_the_file_is_watched(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays())
    params = Npz.Params(path=str(path))
    first = Npz.key_extras(params)
    assert set(first) == {"sha256"} and len(first["sha256"]) == 64
    assert Npz.key_extras(params) == first
    np.savez(path, **arrays(n=9))
    assert Npz.key_extras(params) != first
    assert Npz.watched_files(params) == [str(path)]


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp, "a directory, not a file"),
    (lambda tmp: "/dev/zero", "not a regular file"),
    (lambda tmp: "/proc/self/mem", "cannot read the file"),
    (lambda tmp: (os.mkfifo(tmp / "fifo"), tmp / "fifo")[1], "not a regular file"),  # never opened: it would block
], ids=["directory", "device", "proc-self-mem", "fifo"])
def test_a_path_that_is_not_a_readable_regular_file_is_a_validation_error(tmp_path, make, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=re.escape(message)):
        Npz.Params(path=str(make(tmp_path)))


def test_key_extras_never_raises_and_never_blocks(tmp_path):
    """It runs while a stage key is serialized: an exception there is an internal error."""
    path = tmp_path / "d.npz"
    np.savez(path, **arrays())
    params = Npz.Params(path=str(path))
    path.unlink()
    os.mkfifo(path)  # swapped for a FIFO after validation: reading would wait for a writer
    assert Npz.key_extras(params) == {"missing": True}
    for unreadable in ("/proc/self/mem", "/dev/zero", str(tmp_path)):
        assert Npz.key_extras(Npz.Params.model_construct(path=unreadable)) == {"missing": True}


@pytest.mark.parametrize("features, task", [((2, 3), "classification"), ((4,), "regression"), ((), "classification")],
                         ids=["images", "regression", "1-d-inputs"])
def test_shapes_from_the_headers_are_those_of_the_loaded_data(tmp_path, features, task):
    data = arrays(features=features)
    if task == "regression":
        data["y_train"], data["y_test"] = np.zeros((6, 2)), np.zeros((3, 2))
    else:
        data["y_train"] = np.array([0, 1, 4, 1, 0, 2])
    np.savez_compressed(tmp_path / "d.npz", **data)
    component = npz(tmp_path / "d.npz", task=task)
    d = component.load(0)
    assert component.shapes(0) == (d.input_shape, d.output_dim)


def test_shapes_read_no_input_array(tmp_path, monkeypatch):
    np.savez(tmp_path / "d.npz", **arrays(features=(5,)))
    real_read_array = np.lib.format.read_array
    read = []
    monkeypatch.setattr(np.lib.format, "read_array",
                        lambda fp, *a, **k: read.append(getattr(fp, "name", "?")) or real_read_array(fp, *a, **k))
    assert npz(tmp_path / "d.npz").shapes(0) == ((5,), 3)
    assert read and not any(name.startswith("x_") for name in read), read
