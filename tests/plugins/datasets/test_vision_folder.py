"""MNIST, Fashion-MNIST and CIFAR-10 from a local folder: tiny fake files in the standard
formats round-trip exactly, and every missing or damaged file is a one-line message."""

import gzip
import json
import os
import pickle
import re

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from nnopt.core.errors import StageError
from nnopt.plugins.datasets import vision_folder
from nnopt.plugins.datasets.vision_folder import CIFAR10, MNIST, FashionMNIST

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx encoding: 00 00 08 <ndim>, big-endian uint32 sizes, the bytes row-major."""
    return bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes() + array.astype(np.uint8).tobytes()


def fake_idx(folder, n_train=20, n_test=10, compress=False, seed=0):
    """Writes the four idx files into ``folder``; returns (train images, train labels, test images, test labels)."""
    rng = np.random.default_rng(seed)
    arrays = (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), np.arange(n_train, dtype=np.uint8) % 10,
              rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), (np.arange(n_test, dtype=np.uint8) * 3) % 10)
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in zip(IDX_NAMES, arrays):
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (folder / name).write_bytes(idx_bytes(array))
    return arrays


def fake_cifar(folder, per_batch=2, n_test=3, seed=0):
    """Writes the six binary batches into ``folder``; returns (train images, labels, test images, labels)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for names, n in ((vision_folder.CIFAR_TRAIN, per_batch), (vision_folder.CIFAR_TEST, n_test)):
        images, labels = [], []
        for name in names:
            x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
            y = rng.integers(0, 10, n, dtype=np.uint8)
            (folder / name).write_bytes(np.concatenate([y[:, None], x.reshape(n, -1)], axis=1).tobytes())
            images.append(x)
            labels.append(y)
        out += [np.concatenate(images), np.concatenate(labels)]
    return tuple(out)


def scaled(images):
    """u = v/255 as documented, rounded once to float32."""
    return (images.astype(np.float64) / 255.0).astype(np.float32)


def make(cls, root, **params):
    return cls(cls.Params(root=str(root), **params))


# -------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("where", ["", "raw", "MNIST/raw"], ids=["root", "root-raw", "torchvision"])
@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_mnist_idx_files_round_trip_exactly(tmp_path, where, compress):
    x_train, y_train, x_test, y_test = fake_idx(tmp_path / where, compress=compress)
    d = make(MNIST, tmp_path, standardize=False).load(0)
    assert (d.task, d.input_shape, d.output_dim, d.num_classes) == ("classification", (1, 28, 28), 10, 10)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert np.array_equal(d.x_train.numpy(), scaled(x_train)[:, None])
    assert np.array_equal(d.x_test.numpy(), scaled(x_test)[:, None])
    assert np.array_equal((d.x_train.numpy() * 255).round().astype(np.uint8)[:, 0], x_train)
    assert d.y_train.tolist() == y_train.tolist() and d.y_test.tolist() == y_test.tolist()


def test_fashion_mnist_reads_torchvisions_folder_and_flattens_row_major(tmp_path):
    x_train, y_train, _, _ = fake_idx(tmp_path / "FashionMNIST" / "raw", compress=True)
    d = make(FashionMNIST, tmp_path, standardize=False, flatten=True).load(0)
    assert d.input_shape == (784,) and d.x_train.shape == (20, 784)
    assert np.array_equal(d.x_train.numpy(), scaled(x_train).reshape(20, 784))
    # the MNIST folder is not Fashion-MNIST's
    fake_idx(tmp_path / "other" / "MNIST" / "raw")
    with pytest.raises(ValidationError, match="FashionMNIST"):
        FashionMNIST.Params(root=str(tmp_path / "other"))


def test_raw_files_are_preferred_to_gz_in_the_same_folder(tmp_path):
    x_train, *_ = fake_idx(tmp_path, compress=False, seed=0)
    fake_idx(tmp_path, compress=True, seed=1)
    d = make(MNIST, tmp_path, standardize=False).load(0)
    assert np.array_equal(d.x_train.numpy()[:, 0], scaled(x_train))
    assert d.meta["files"] == sorted(IDX_NAMES)


@pytest.mark.parametrize("where", ["cifar-10-batches-bin", ""], ids=["extracted", "root"])
def test_cifar_binary_batches_round_trip_exactly(tmp_path, where):
    x_train, y_train, x_test, y_test = fake_cifar(tmp_path / where)
    d = make(CIFAR10, tmp_path, standardize=False).load(0)
    assert (d.input_shape, d.output_dim, d.x_train.shape, d.x_test.shape) == ((3, 32, 32), 10, (10, 3, 32, 32), (3, 3, 32, 32))
    assert np.array_equal(d.x_train.numpy(), scaled(x_train)) and np.array_equal(d.x_test.numpy(), scaled(x_test))
    assert d.y_train.tolist() == y_train.tolist() and d.y_test.tolist() == y_test.tolist()
    # a record is label, then the red plane, green plane, blue plane, each row-major
    record = (tmp_path / where / "data_batch_1.bin").read_bytes()[:3073]
    assert d.y_train[0].item() == record[0]
    green = np.frombuffer(record[1 + 1024: 1 + 2048], dtype=np.uint8).reshape(32, 32)
    assert np.array_equal((d.x_train[0, 1].numpy() * 255).round(), green)


def test_standardize_uses_per_channel_statistics_of_the_train_split(tmp_path):
    x_train, _, x_test, _ = fake_cifar(tmp_path, per_batch=4)
    x_train[:, 2] //= 4  # give the channels different statistics
    for i, name in enumerate(vision_folder.CIFAR_TRAIN):  # rewrite with the changed blue channel
        labels = np.zeros((4, 1), dtype=np.uint8)
        (tmp_path / name).write_bytes(np.concatenate([labels, x_train[4 * i: 4 * i + 4].reshape(4, -1)], 1).tobytes())
    d = make(CIFAR10, tmp_path).load(0)
    x = d.x_train.double()
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(x.std((0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-6)
    u = x_train.astype(np.float64) / 255
    mean, std = u.mean(axis=(0, 2, 3), keepdims=True), u.std(axis=(0, 2, 3), keepdims=True)
    expected = ((x_test.astype(np.float64) / 255 - mean) / std).astype(np.float32)  # test uses the train statistics
    np.testing.assert_allclose(d.x_test.numpy(), expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------- subsets
def test_subsets_first_or_seeded(tmp_path):
    x_train, y_train, x_test, _ = fake_idx(tmp_path)
    first = make(MNIST, tmp_path, standardize=False, n_train=5, n_test=3).load(0)
    assert np.array_equal(first.x_train.numpy()[:, 0], scaled(x_train[:5])) and first.y_train.tolist() == y_train[:5].tolist()
    assert np.array_equal(first.x_test.numpy()[:, 0], scaled(x_test[:3]))
    a, b = (make(MNIST, tmp_path, standardize=False, n_train=5, data_seed=3).load(seed) for seed in (0, 9))
    assert torch.equal(a.x_train, b.x_train) and a.x_test.shape[0] == 10  # the stage seed plays no part
    rows = [int(np.flatnonzero((x_train == (row * 255).round().astype(np.uint8)).all((1, 2)))[0]) for row in a.x_train.numpy()[:, 0]]
    assert rows == sorted(rows) and len(set(rows)) == 5 and rows != [0, 1, 2, 3, 4]
    other = make(MNIST, tmp_path, standardize=False, n_train=5, data_seed=4).load(0)
    assert not torch.equal(a.x_train, other.x_train)


def test_subset_larger_than_the_files_and_a_seed_without_subset_are_explained(tmp_path):
    fake_idx(tmp_path)
    with pytest.raises(StageError, match="n_train = 21, but the files hold 20 training images"):
        make(MNIST, tmp_path, n_train=21).load(0)
    with pytest.raises(ValidationError, match="data_seed draws the random subsets"):
        MNIST.Params(root=str(tmp_path), data_seed=1)


# ------------------------------------------------------------------- shapes and the key
@pytest.mark.parametrize("cls, writer, flatten, shape", [
    (MNIST, fake_idx, False, (1, 28, 28)), (MNIST, fake_idx, True, (784,)),
    (CIFAR10, fake_cifar, False, (3, 32, 32)), (CIFAR10, fake_cifar, True, (3072,)),
], ids=["mnist", "mnist-flat", "cifar", "cifar-flat"])
def test_shapes_come_from_the_params_without_reading_a_file(tmp_path, cls, writer, flatten, shape):
    writer(tmp_path)
    component = make(cls, tmp_path, flatten=flatten)
    d = component.load(0)
    assert component.shapes(0) == (d.input_shape, d.output_dim) == (shape, 10)
    for f in tmp_path.iterdir():
        f.unlink()
    assert component.shapes(0) == (shape, 10)


def test_cache_key_holds_the_digest_of_every_file_read(tmp_path):
    fake_idx(tmp_path / "raw", compress=True)
    params = MNIST.Params(root=str(tmp_path))
    first = MNIST.key_extras(params)
    assert sorted(first["sha256"]) == sorted(f"raw/{n}.gz" for n in IDX_NAMES)
    assert all(len(h) == 64 for h in first["sha256"].values()) and MNIST.key_extras(params) == first
    fake_idx(tmp_path / "raw", compress=True, seed=1)
    assert MNIST.key_extras(params) != first
    watched = MNIST.watched_files(params)
    assert str(tmp_path / "raw" / "train-images-idx3-ubyte.gz") in watched and str(tmp_path / "raw") in watched


def test_files_removed_after_validation_fail_the_stage_and_key_as_missing(tmp_path):
    fake_idx(tmp_path)
    component = make(MNIST, tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    assert MNIST.key_extras(component.params) == {"missing": True}
    with pytest.raises(StageError, match=r"t10k-images-idx3-ubyte only\).*t10k-labels-idx1-ubyte\[\.gz\].*never downloads"):
        component.load(0)


def test_key_extras_never_raises_nor_blocks_on_a_fifo(tmp_path):
    fake_idx(tmp_path)
    params = MNIST.Params(root=str(tmp_path))
    (tmp_path / "train-images-idx3-ubyte").unlink()
    os.mkfifo(tmp_path / "train-images-idx3-ubyte")
    assert MNIST.key_extras(params) == {"missing": True}
    with pytest.raises(StageError, match="train-images-idx3-ubyte: not a regular file"):
        MNIST(params).load(0)


# ------------------------------------------------------------------- missing and damaged
@pytest.mark.parametrize("cls, names", [(MNIST, IDX_NAMES), (FashionMNIST, IDX_NAMES),
                                        (CIFAR10, vision_folder.CIFAR_TRAIN + vision_folder.CIFAR_TEST)])
def test_a_missing_folder_names_the_path_the_files_and_says_nothing_is_downloaded(tmp_path, cls, names):
    root = tmp_path / "nowhere"
    with pytest.raises(ValidationError) as err:
        cls.Params(root=str(root))
    message = str(err.value)
    assert f"no folder {root}" in message and "never downloads" in message
    assert all(name in message for name in names)


def test_an_empty_folder_lists_every_place_looked_in(tmp_path):
    with pytest.raises(ValidationError) as err:
        MNIST.Params(root=str(tmp_path))
    message = str(err.value)
    for folder in (tmp_path, tmp_path / "raw", tmp_path / "MNIST" / "raw"):
        assert str(folder) in message
    assert "torchvision's datasets.MNIST(root, download=True)" in message


def test_the_pickled_python_version_of_cifar_is_refused_and_never_unpickled(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        (folder / name).write_bytes(pickle.dumps({"data": [1, 2, 3]}, protocol=2))

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(np, "load", refuse)
    with pytest.raises(ValidationError, match=r"python version of CIFAR-10.*never unpickles.*cifar-10-binary\.tar\.gz"):
        CIFAR10.Params(root=str(tmp_path))
    # pickles renamed into the binary names are caught by their length (or their label bytes)
    fake_cifar(tmp_path / "cifar-10-batches-bin")
    (tmp_path / "cifar-10-batches-bin" / "test_batch.bin").write_bytes(pickle.dumps(list(range(999)), protocol=2))
    with pytest.raises(StageError, match="test_batch.bin: damaged or not the binary version"):
        make(CIFAR10, tmp_path).load(0)


def test_an_unextracted_binary_archive_says_to_extract_it(tmp_path):
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(ValidationError, match="not extracted yet"):
        CIFAR10.Params(root=str(tmp_path))


def _rewrite(path, transform):
    path.write_bytes(transform(path.read_bytes()))


@pytest.mark.parametrize("name, transform, message", [
    ("train-images-idx3-ubyte", lambda b: b"\x00\x00\x08\x01" + b[4:], "magic bytes 00 00 08 01, expected 00 00 08 03"),
    ("train-images-idx3-ubyte", lambda b: b"\x00\x00\x0d\x03" + b[4:], "not an idx file of unsigned bytes"),
    ("train-images-idx3-ubyte", lambda b: b[:-100], "truncated: its header announces 20 items = 15696 bytes, the file has 15596"),
    ("train-images-idx3-ubyte", lambda b: b + b"\x00", "longer than its header says"),
    ("train-images-idx3-ubyte", lambda b: b[:4] + np.array([2**31, 28, 28], ">u4").tobytes() + b[16:], "announces 2147483648 items"),
    ("train-images-idx3-ubyte", lambda b: b[:8] + np.array([30, 28], ">u4").tobytes() + b[16:], "items of shape 30×28, expected 28×28"),
    ("train-images-idx3-ubyte", lambda b: b[:10], "truncated inside its header"),
    ("train-images-idx3-ubyte", lambda b: b"", "magic bytes none"),
    ("train-labels-idx1-ubyte", lambda b: b[:8] + b"\x0c" + b[9:], "label 12 of item 0 is not a class 0–9"),
    ("t10k-labels-idx1-ubyte", lambda b: b[:4] + np.array([9], ">u4").tobytes() + b[8:-1], "holds 10 images but"),
    ("t10k-labels-idx1-ubyte", gzip.compress, "gzip-compressed; name it t10k-labels-idx1-ubyte.gz"),
])
def test_a_damaged_raw_idx_file_is_named_with_what_is_wrong(tmp_path, name, transform, message):
    fake_idx(tmp_path)
    _rewrite(tmp_path / name, transform)
    with pytest.raises(StageError, match=re.escape(message)) as err:
        make(MNIST, tmp_path).load(0)
    assert name in str(err.value)


def _gz_header(count):
    return gzip.compress(bytes([0, 0, 8, 3]) + np.array([count, 28, 28], ">u4").tobytes() + bytes(784 * 2))


@pytest.mark.parametrize("transform, message", [
    (lambda b: b[: len(b) // 2], "damaged gzip stream"),
    (lambda b: b[:-8] + b"\x00" * 8, "damaged gzip stream"),  # trailer: CRC and length no longer match
    (lambda b: _gz_header(5), "truncated: its header announces 5 items = 3920 bytes of data, the file holds 1568"),
    (lambda b: _gz_header(2**30), "more than a"),  # refused from the header: nothing of 2**30·784 bytes is allocated
    (lambda b: gzip.decompress(b), "not gzip-compressed, though its name ends in .gz"),
])
def test_a_damaged_gz_idx_file_is_named_with_what_is_wrong(tmp_path, transform, message):
    fake_idx(tmp_path, compress=True)
    _rewrite(tmp_path / "train-images-idx3-ubyte.gz", transform)
    with pytest.raises(StageError, match=re.escape(message)) as err:
        make(MNIST, tmp_path).load(0)
    assert "train-images-idx3-ubyte.gz" in str(err.value)


@pytest.mark.parametrize("transform, message", [
    (lambda b: b[:-1], "are not a whole number of 3073-byte records"),
    (lambda b: b"", "its 0 bytes"),
    (lambda b: b[:3073] + bytes([200]) + b[3074:], "label 200 of item 1 is not a class 0–9"),
])
def test_a_damaged_cifar_batch_is_named_with_what_is_wrong(tmp_path, transform, message):
    fake_cifar(tmp_path)
    _rewrite(tmp_path / "data_batch_3.bin", transform)
    with pytest.raises(StageError, match=re.escape(message)) as err:
        make(CIFAR10, tmp_path).load(0)
    assert "data_batch_3.bin" in str(err.value)


def test_a_directory_where_a_file_should_be_is_named(tmp_path):
    fake_cifar(tmp_path)
    (tmp_path / "test_batch.bin").unlink()
    (tmp_path / "test_batch.bin").mkdir()
    with pytest.raises(ValidationError, match="test_batch.bin: a directory, not a file"):
        CIFAR10.Params(root=str(tmp_path))


# --------------------------------------------------------------------------------- CLI
PIPELINE = """\
name: vision
data: {{name: mnist, root: {root}, batch_size: 8}}
model:
  arch: {{name: mlp, widths: [16]}}
loss: cross_entropy
stages:
  train:
    kind: train
    optimizer: {{name: sgd, lr: 0.1}}
    epochs: 1
"""


def test_cli_a_missing_root_is_a_spec_error_exit_2_without_traceback(invoke, write_pipeline, store):
    # docs/spec.md §4 and §7: an invalid spec (a data file that is not there, found before
    # anything runs) exits 2, located FILE:LINE:COL, with no traceback and nothing written
    path = write_pipeline(PIPELINE.format(root="/nonexistent"))
    result = invoke("run", path, "--store", store)
    assert result.exit_code == 2, result
    output = result.stdout + result.stderr
    assert "pipeline.yaml:2:" in output and "data.root" in output, result
    assert "no folder /nonexistent" in output and "train-images-idx3-ubyte" in output and "never downloads" in output
    assert "Traceback" not in output
    assert not store.exists()


def test_cli_trains_an_mlp_for_an_epoch_on_a_fake_mnist_folder(invoke, write_pipeline, store, tmp_path):
    fake_idx(tmp_path / "data" / "MNIST" / "raw", n_train=32, n_test=16, compress=True)
    path = write_pipeline(PIPELINE.format(root="data"))  # relative: from the working directory (tmp_path)
    result = invoke("run", path, "--store", store, "--json", "--no-progress")
    assert result.exit_code == 0, result
    out = json.loads(result.stdout)
    train = out["stages"]["train"]
    assert out["status"] == "ok" and train["status"] == "ran", out
    assert train["metrics"]["steps"] == 4 and "test_accuracy" in train["metrics"], train


def test_a_root_that_is_a_file_is_explained(tmp_path):
    (tmp_path / "mnist.gz").write_bytes(b"")
    with pytest.raises(ValidationError, match="is not a folder; root names the folder holding the files"):
        MNIST.Params(root=str(tmp_path / "mnist.gz"))
