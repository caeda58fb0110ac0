"""A user's own arrays, read from a NumPy ``.npz`` archive."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator

from nnopt.core.component import Params
from nnopt.core.errors import StageError
from nnopt.core.kinds import Dataset, DatasetParams, DataSplit

KEYS = ("x_train", "y_train", "x_test", "y_test")


class NpzParams(DatasetParams):
    path: str = Field(..., min_length=1, description="path of an .npz file holding x_train, y_train, x_test, y_test")
    task: Literal["classification", "regression"] = Field(
        "classification", description="classification: y are class indices 0..C-1; regression: y are real values"
    )

    @field_validator("path")
    @classmethod
    def _readable_file(cls, value: str) -> str:
        # found before anything runs (exit 2, located at `path`); `load` checks the contents
        problem = unreadable(Path(value).expanduser())
        if problem:
            raise ValueError(f"{problem}: {value} (relative paths are taken from the working directory)")
        return value


class Npz(Dataset):
    """Arrays ``x_train, y_train, x_test, y_test`` from ``numpy.savez(path, ...)``, as given.

    No preprocessing is applied (normalize before saving). x has shape (n, *input_shape) and
    becomes float32; a 1-D x is read as (n, 1). For ``classification`` y holds integer class
    indices of shape (n,), num_classes = output_dim = max label + 1; for ``regression`` y
    becomes float32 of shape (n, k) (a 1-D y is read as (n, 1)), output_dim = k.

    The file must be a readable regular file when the pipeline is validated (a directory, a
    FIFO or a device is a spec error at ``path``); it is read with ``allow_pickle=False``
    (an archive cannot run code) when the stage runs, and a malformed archive fails the
    stage with a one-line message. Its SHA-256 is part of the cache key, so editing the file
    recomputes every stage that used it. A relative path is taken from the working directory.
    """

    cache_version: ClassVar[int] = 1
    Params = NpzParams

    @classmethod
    def key_extras(cls, params: Params) -> dict[str, Any]:
        return file_key(Path(params.path).expanduser())  # type: ignore[attr-defined]

    @classmethod
    def watched_files(cls, params: Params) -> list[str]:
        return [params.path]  # type: ignore[attr-defined]

    def shapes(self, seed: int) -> tuple[tuple[int, ...], int]:
        """x_train's sample shape from its header in the archive, without reading the inputs;
        the output dimension from the targets' header (regression) or their largest label
        (classification: the labels are read, a small part of the archive)."""
        p = self.params
        path = Path(p.path).expanduser()
        with zipfile.ZipFile(path) as archive:
            x_shape = _header_shape(archive, "x_train")
            if p.task == "regression":
                y_shape = _header_shape(archive, "y_train")
                output_dim = 1 if len(y_shape) == 1 else int(y_shape[1])
            else:
                with np.load(path, allow_pickle=False) as loaded:
                    labels = [_targets(loaded[k], k, p.task) for k in ("y_train", "y_test")]
                output_dim = int(max(y.max() for y in labels)) + 1
        return (tuple(int(s) for s in x_shape[1:]) or (1,)), output_dim

    def load(self, seed: int) -> DataSplit:
        p = self.params
        arrays = read_arrays(Path(p.path).expanduser())
        x_train, x_test = (_inputs(arrays[k], k) for k in ("x_train", "x_test"))
        y_train, y_test = (_targets(arrays[k], k, p.task) for k in ("y_train", "y_test"))
        for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
            if len(x) != len(y):
                raise StageError(f"npz {p.path}: x_{split} has {len(x)} samples but y_{split} has {len(y)}")
        if x_train.shape[1:] != x_test.shape[1:]:
            raise StageError(
                f"npz {p.path}: x_train samples have shape {x_train.shape[1:]} but x_test samples {x_test.shape[1:]}"
            )
        if p.task == "classification":
            output_dim = int(max(y_train.max(), y_test.max())) + 1
            num_classes: int | None = output_dim
        else:
            if y_train.shape[1:] != y_test.shape[1:]:
                raise StageError(f"npz {p.path}: y_train has {y_train.shape[1]} outputs but y_test {y_test.shape[1]}")
            output_dim, num_classes = int(y_train.shape[1]), None
        return DataSplit(
            x_train=torch.from_numpy(x_train),
            y_train=torch.from_numpy(y_train),
            x_test=torch.from_numpy(x_test),
            y_test=torch.from_numpy(y_test),
            task=p.task,
            input_shape=tuple(int(s) for s in x_train.shape[1:]),
            output_dim=output_dim,
            num_classes=num_classes,
            meta={"path": str(p.path)},
        )


def unreadable(path: Path) -> str | None:
    """Why ``path`` is not a regular file this process can read, or None if it is one.

    Only a regular file is opened: a FIFO would block the reader, and ``/dev/zero`` never
    ends. A regular file is opened without blocking and its first byte read, which is what
    fails for files such as ``/proc/self/mem``."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as err:
        return f"cannot read the file ({err.strerror or err})"
    if stat.S_ISDIR(mode):
        return "a directory, not a file"
    if not stat.S_ISREG(mode):
        return "not a regular file (a pipe, socket or device)"
    try:
        with _open_regular(path) as f:
            f.read(1)
    except OSError as err:
        return f"cannot read the file ({err.strerror or err})"
    return None


def _open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading, never blocking (it may have been swapped for a FIFO)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The four arrays of the archive at ``path``; a ``StageError`` says what is wrong."""
    problem = unreadable(path)
    if problem:
        raise StageError(f"npz: {problem}: {path}")
    with _open_regular(path) as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        raise StageError(f"npz {path}: a single .npy array, not an .npz archive (save with numpy.savez)")
    if not magic.startswith(b"PK"):
        raise StageError(f"npz {path}: not an .npz archive (save with numpy.savez)")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise StageError(f"npz {path}: not a readable .npz archive ({e})") from None
    with loaded:
        missing = [k for k in KEYS if k not in loaded.files]
        if missing:
            raise StageError(f"npz {path}: missing arrays {', '.join(missing)} (has: {', '.join(loaded.files) or 'none'})")
        try:
            return {k: loaded[k] for k in KEYS}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise StageError(f"npz {path}: cannot read its arrays without pickle ({e})") from None


def _header_shape(archive: zipfile.ZipFile, key: str) -> tuple[int, ...]:
    """The shape of array ``key`` of an ``.npz`` archive, read from its ``.npy`` header."""
    with archive.open(f"{key}.npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, _ = read(f)
    return tuple(shape)


def _inputs(x: np.ndarray, key: str) -> np.ndarray:
    if x.dtype.kind not in "biuf" or x.ndim == 0 or len(x) == 0:
        raise StageError(f"npz: {key} must be a non-empty numeric array of shape (n, ...), got dtype {x.dtype}, shape {x.shape}")
    x = x.astype(np.float32)
    return x.reshape(-1, 1) if x.ndim == 1 else x


def _targets(y: np.ndarray, key: str, task: str) -> np.ndarray:
    if y.dtype.kind not in "biuf" or y.ndim == 0:
        raise StageError(f"npz: {key} must be a numeric array, got dtype {y.dtype}, shape {y.shape}")
    if task == "regression":
        if y.ndim > 2:
            raise StageError(f"npz: {key} of a regression task must have shape (n,) or (n, k), got shape {y.shape}")
        y = y.astype(np.float32)
        return y.reshape(-1, 1) if y.ndim == 1 else y
    if y.ndim != 1:
        raise StageError(f"npz: {key} of a classification task must be class indices of shape (n,), got shape {y.shape}")
    labels = y.astype(np.int64)
    if not np.array_equal(labels, y) or (labels < 0).any():
        raise StageError(f"npz: {key} of a classification task must hold integer class indices >= 0")
    return labels


def file_key(path: Path) -> dict[str, Any]:
    """What a data file adds to a stage key: its SHA-256, or ``{"missing": True}``.

    Never raises (it runs while a key is serialized): a file that went away or became
    unreadable since validation keys as such, and its stage fails when it loads the file.
    """
    if unreadable(path):
        return {"missing": True}
    digest = hashlib.sha256()
    try:
        with _open_regular(path) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return {"missing": True}
    return {"sha256": digest.hexdigest()}
