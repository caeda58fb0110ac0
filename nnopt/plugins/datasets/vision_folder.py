"""MNIST, Fashion-MNIST and CIFAR-10 read from a folder the user names (never downloaded).

The standard distribution files are parsed directly with numpy: the idx files of MNIST and
Fashion-MNIST, and the *binary* version of CIFAR-10. Nothing is unpickled, ever: the python
version of CIFAR-10 is a set of pickles, and loading a pickle can run arbitrary code.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from nnopt.core.component import Params
from nnopt.core.errors import StageError
from nnopt.core.kinds import Dataset, DatasetParams, DataSplit

from .npz import _open_regular, unreadable

# deflate cannot expand data by more than 1032:1, so an idx header announcing more bytes than
# that of its .gz file is damaged, found before anything is allocated (plus slack for tiny files)
_MAX_DEFLATE_RATIO = 1032
_GZIP_SLACK = 1 << 16
_READ_BLOCK = 1 << 22

CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then 1024 red, 1024 green, 1024 blue bytes
CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR_TEST = ("test_batch.bin",)
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


class FolderError(Exception):
    """Why the files of a dataset are not usable; a validation error before anything runs,
    a ``StageError`` when found while loading."""


# ------------------------------------------------------------------------------ layouts
@dataclass(frozen=True)
class IdxLayout:
    """Where the four idx files of an MNIST-like set are looked for, in this order: ``root``,
    ``root/raw``, ``root/<folder>/raw`` (torchvision's ``datasets.<folder>(root, download=True)``
    writes the last; ``root/raw`` is its folder named directly). In each folder a file is
    taken uncompressed where it is, else as ``<name>.gz``; all four must be in one folder."""

    dataset: str
    folder: str
    source: str
    names: tuple[str, ...] = (
        "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
    )

    def folders(self, root: Path) -> list[Path]:
        return [root, root / "raw", root / self.folder / "raw"]

    def locate(self, root: Path) -> dict[str, Path]:
        """``{name: path}`` of the four files; a ``FolderError`` says what was looked for where."""
        _check_root(self.dataset, root, self._wanted(root))
        partial: list[str] = []
        for folder in self.folders(root):
            found = {}
            for name in self.names:
                path = _first_file(folder / name, folder / f"{name}.gz")
                if path is not None:
                    found[name] = path
            if len(found) == len(self.names):
                return found
            if found:
                partial.append(f"{folder} has {', '.join(p.name for p in found.values())} only")
        seen = f" ({'; '.join(partial)})" if partial else ""
        raise FolderError(f"{self.dataset}: the idx files are not in {root}{seen}; {self._wanted(root)}")

    def _wanted(self, root: Path) -> str:
        folders = [str(f) for f in self.folders(root)]
        return (f"looked for {', '.join(n + '[.gz]' for n in self.names)} in {', '.join(folders[:-1])} or {folders[-1]}. "
                f"nnopt never downloads data: put the files there yourself ({self.source}; "
                f"torchvision's datasets.{self.folder}(root, download=True) writes {folders[-1]})")


@dataclass(frozen=True)
class CifarLayout:
    """The binary version of CIFAR-10: ``root/cifar-10-batches-bin`` (as extracted from
    ``cifar-10-binary.tar.gz``) or ``root`` itself holding ``data_batch_1.bin`` …
    ``data_batch_5.bin`` and ``test_batch.bin``."""

    dataset: str = "cifar10"
    names: tuple[str, ...] = CIFAR_TRAIN + CIFAR_TEST

    def folders(self, root: Path) -> list[Path]:
        return [root / "cifar-10-batches-bin", root]

    def locate(self, root: Path) -> dict[str, Path]:
        _check_root(self.dataset, root, self._wanted(root))
        partial: list[str] = []
        for folder in self.folders(root):
            found = {n: folder / n for n in self.names if _first_file(folder / n) is not None}
            if len(found) == len(self.names):
                return found
            if found:
                partial.append(f"{folder} has {', '.join(sorted(found))} only")
        pickled = next((p for p in (root / "cifar-10-batches-py", root / "data_batch_1", root / "cifar-10-python.tar.gz")
                        if os.path.lexists(p)), None)
        if pickled is not None:
            raise FolderError(
                f"{self.dataset}: {pickled} is the python version of CIFAR-10, whose batches are pickles; nnopt never "
                f"unpickles data (loading a pickle can run arbitrary code). Get the binary version instead: "
                f"cifar-10-binary.tar.gz from {CIFAR_URL}, extracted into {root} (it makes {root / 'cifar-10-batches-bin'})"
            )
        if (root / "cifar-10-binary.tar.gz").is_file():
            raise FolderError(f"{self.dataset}: {root / 'cifar-10-binary.tar.gz'} is not extracted yet: "
                              f"run `tar xzf cifar-10-binary.tar.gz` in {root}")
        seen = f" ({'; '.join(partial)})" if partial else ""
        raise FolderError(f"{self.dataset}: the CIFAR-10 binary batches are not in {root}{seen}; {self._wanted(root)}")

    def _wanted(self, root: Path) -> str:
        folders = self.folders(root)
        return (f"looked for {', '.join(self.names)} in {folders[0]} or {folders[1]}. nnopt never downloads data: "
                f"get the binary version, cifar-10-binary.tar.gz from {CIFAR_URL}, and extract it into {root}")


def _check_root(dataset: str, root: Path, wanted: str) -> None:
    try:
        mode = os.stat(root).st_mode
    except FileNotFoundError:
        raise FolderError(f"{dataset}: no folder {root} (relative paths are taken from the working directory); {wanted}") from None
    except OSError as err:  # no permission to look, a loop of links: a message, never a traceback
        raise FolderError(f"{dataset}: cannot look into {root} ({err.strerror or err}); {wanted}") from None
    if not stat.S_ISDIR(mode):
        raise FolderError(f"{dataset}: {root} is not a folder; root names the folder holding the files; {wanted}")


def _first_file(*candidates: Path) -> Path | None:
    """The first candidate that exists; one that exists but cannot be read (a directory, a
    FIFO, no permission) is an error rather than skipped, so the message names it."""
    for path in candidates:
        if os.path.lexists(path):
            problem = unreadable(path)
            if problem:
                raise FolderError(f"{path}: {problem}")
            return path
    return None


# ------------------------------------------------------------------------------- params
class VisionFolderParams(DatasetParams):
    root: str = Field(
        ..., min_length=1,
        description="folder holding the dataset's files (see the component's description); a relative path is taken "
        "from the working directory; nothing is ever downloaded",
    )
    flatten: bool = Field(False, description="inputs as vectors of C·H·W; false: images of shape C×H×W")
    standardize: bool = Field(
        True, description="scale pixels to [0,1] (/255), then standardize each channel with the train split's mean and std"
    )
    n_train: int | None = Field(None, ge=1, description="use n_train of the training images (all when unset)")
    n_test: int | None = Field(None, ge=1, description="use n_test of the test images (all when unset)")
    data_seed: int | None = Field(
        None, ge=0,
        description="unset: the subsets are the first n_train / n_test images; set: a random subset drawn with this seed "
        "(not the stage seed: the data stay fixed across training seeds)",
    )

    layout: ClassVar[Any] = None  # an IdxLayout or CifarLayout, set by each dataset's params

    @field_validator("root")
    @classmethod
    def _files_present(cls, value: str) -> str:
        # found before anything runs (exit 2, located at `root`); `load` checks the contents
        try:
            cls.layout.locate(Path(value).expanduser())
        except FolderError as err:
            raise ValueError(str(err)) from None
        return value

    @model_validator(mode="after")
    def _seed_has_a_subset(self):
        if self.data_seed is not None and self.n_train is None and self.n_test is None:
            raise ValueError("data_seed draws the random subsets of n_train / n_test images; without either it has no effect")
        return self


class MNISTParams(VisionFolderParams):
    layout: ClassVar[Any] = IdxLayout("mnist", "MNIST", "from https://ossci-datasets.s3.amazonaws.com/mnist/ or "
                                      "http://yann.lecun.com/exdb/mnist/")


class FashionMNISTParams(VisionFolderParams):
    layout: ClassVar[Any] = IdxLayout("fashion_mnist", "FashionMNIST",
                                      "from https://github.com/zalandoresearch/fashion-mnist")


class CIFAR10Params(VisionFolderParams):
    layout: ClassVar[Any] = CifarLayout()


# ------------------------------------------------------------------------------ datasets
class _VisionFolder(Dataset):
    """Shared by the three: subsets, pixel scaling, standardization, cache key."""

    cache_version: ClassVar[int] = 1
    image_shape: ClassVar[tuple[int, int, int]] = (1, 28, 28)

    @classmethod
    def key_extras(cls, params: Params) -> dict[str, Any]:
        # never raises (it runs while a key is serialized): files that went away or became
        # unreadable since validation key as such, and the stage fails when it loads them
        root = Path(params.root).expanduser()  # type: ignore[attr-defined]
        try:
            files = cls.Params.layout.locate(root)
            return {"sha256": {p.relative_to(root).as_posix(): _sha256(p) for p in files.values()}}
        except (FolderError, OSError, ValueError):
            return {"missing": True}

    @classmethod
    def watched_files(cls, params: Params) -> list[str]:
        # the folders too: a file added to one searched earlier changes which file is read
        root = Path(params.root).expanduser()  # type: ignore[attr-defined]
        try:
            files = [str(p) for p in cls.Params.layout.locate(root).values()]
        except (FolderError, OSError):
            files = []
        return [str(f) for f in cls.Params.layout.folders(root)] + files

    def shapes(self, seed: int) -> tuple[tuple[int, ...], int]:
        """From the params alone (no file is read): C×H×W images, or C·H·W vectors; 10 classes."""
        c, h, w = self.image_shape
        return ((c * h * w,) if self.params.flatten else (c, h, w)), 10

    def read(self, files: dict[str, Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """uint8 images (n, C, H, W) and labels (n,) of the train and test splits."""
        raise NotImplementedError

    def load(self, seed: int) -> DataSplit:
        p = self.params
        root = Path(p.root).expanduser()
        try:
            files = self.Params.layout.locate(root)
        except FolderError as err:
            raise StageError(str(err)) from None
        x_train, y_train, x_test, y_test = self.read(files)
        rng = np.random.default_rng(p.data_seed) if p.data_seed is not None else None
        x_train, y_train = _subset(x_train, y_train, p.n_train, "n_train", "training", rng, self.dataset_name)
        x_test, y_test = _subset(x_test, y_test, p.n_test, "n_test", "test", rng, self.dataset_name)
        lut = _pixel_table(x_train, p.standardize)
        shape = self.shapes(seed)[0]
        return DataSplit(
            x_train=torch.from_numpy(_apply(lut, x_train).reshape(-1, *shape)),
            y_train=torch.from_numpy(y_train.astype(np.int64)),
            x_test=torch.from_numpy(_apply(lut, x_test).reshape(-1, *shape)),
            y_test=torch.from_numpy(y_test.astype(np.int64)),
            task="classification",
            input_shape=shape,
            output_dim=10,
            num_classes=10,
            meta={"root": str(p.root), "files": sorted(f.relative_to(root).as_posix() for f in files.values())},
        )

    @property
    def dataset_name(self) -> str:
        return self.Params.layout.dataset


class _Idx(_VisionFolder):
    def read(self, files: dict[str, Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        out = []
        for split in ("train", "t10k"):
            images_path, labels_path = files[f"{split}-images-idx3-ubyte"], files[f"{split}-labels-idx1-ubyte"]
            images = read_idx(images_path, ndim=3, item_shape=(28, 28))
            labels = read_idx(labels_path, ndim=1, item_shape=())
            if len(images) != len(labels):
                raise StageError(f"{self.dataset_name}: {images_path} holds {len(images)} images but {labels_path} "
                                 f"{len(labels)} labels")
            _check_labels(labels, labels_path)
            out += [images[:, None], labels]
        return out[0], out[1], out[2], out[3]


class MNIST(_Idx):
    """MNIST (LeCun et al. 1998): 60,000 training and 10,000 test 28×28 grey-scale images of
    handwritten digits 0–9, read from the four idx files in a local folder (``root``).

    **Files.** ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each raw or gzip-compressed
    (``.gz``, preferred only where the raw file is absent), all in one of ``root``,
    ``root/raw`` or ``root/MNIST/raw`` (torchvision's layouts). nnopt never downloads them.
    The idx format: 4 magic bytes ``00 00 08 D`` (unsigned bytes, D dimensions: 3 for images,
    1 for labels), D big-endian uint32 sizes (n, 28, 28 / n), then the values, row-major.
    Magic, sizes (28×28 images, as many labels as images, labels 0–9) and the file's length
    are checked against the header before any array is allocated — a raw file's size by
    ``stat``, a ``.gz`` file's against what deflate can hold and then while it is inflated —
    and a damaged file fails its stage with a one-line message naming it.

    **Inputs.** Pixels v ∈ {0, …, 255} become u = v/255 ∈ [0, 1]; with ``standardize`` then
    x = (u − m)/s with m and s the mean and (biased) standard deviation over every pixel of
    the *training* images used (after ``n_train``), so no test statistics leak into training.
    Shape 1×28×28, or 784 with ``flatten`` (row-major). Labels are int64 class indices, 10
    classes (output_dim 10 even when a subset misses one).

    **Subsets.** ``n_train`` / ``n_test`` keep that many images of each split: the first
    ones, or with ``data_seed`` a uniformly random subset (numpy ``default_rng(data_seed)``,
    train indices drawn first, then test; kept in file order).

    **Cache key.** As for ``npz``: the SHA-256 of every file read (named relative to
    ``root``) is part of the key, so replacing a file recomputes the stages using it; digests
    are remembered per process by (size, mtime, inode, ctime) so a plan hashes each file once.
    """

    Params = MNISTParams


class FashionMNIST(_Idx):
    """Fashion-MNIST (Xiao et al. 2017): 60,000 training and 10,000 test 28×28 grey-scale
    images of 10 kinds of clothing, in MNIST's idx format and file names, read from ``root``,
    ``root/raw`` or ``root/FashionMNIST/raw`` (torchvision's layouts); never downloaded.

    Format checks, pixel scaling u = v/255, per-channel ``standardize`` with train-split
    statistics, ``flatten`` (784), subsets (``n_train``, ``n_test``, ``data_seed``) and the
    cache key (SHA-256 of every file read) are exactly those of ``mnist``.
    """

    Params = FashionMNISTParams


class CIFAR10(_VisionFolder):
    """CIFAR-10 (Krizhevsky 2009): 50,000 training and 10,000 test 32×32 colour images of 10
    classes, read from the *binary version* in a local folder; never downloaded.

    **Files.** ``data_batch_1.bin`` … ``data_batch_5.bin`` (train, in that order) and
    ``test_batch.bin``, in ``root/cifar-10-batches-bin`` (as ``cifar-10-binary.tar.gz``
    extracts) or in ``root`` itself. Each file is a sequence of 3073-byte records: one label
    byte 0–9, then the 32×32 red, green and blue planes, row-major (3072 bytes) — exactly a
    3×32×32 image. A file whose length is not a whole number of records, or with a label
    byte above 9, fails its stage with a message naming it; lengths come from ``stat`` and
    are checked before anything is allocated. The python version (``cifar-10-batches-py``,
    pickles, what torchvision downloads) is refused with a pointer to the binary one: nnopt
    never unpickles data, since loading a pickle can run arbitrary code.

    **Inputs.** u = v/255; with ``standardize`` each channel c becomes (u − m_c)/s_c with the
    mean m_c and (biased) standard deviation s_c of channel c over the training images used.
    Shape 3×32×32, or 3072 with ``flatten`` (channel, row, column order). Subsets and cache
    key as for ``mnist``.
    """

    Params = CIFAR10Params
    image_shape: ClassVar[tuple[int, int, int]] = (3, 32, 32)

    def read(self, files: dict[str, Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        train = read_cifar([files[n] for n in CIFAR_TRAIN])
        test = read_cifar([files[n] for n in CIFAR_TEST])
        return train[0], train[1], test[0], test[1]


# ------------------------------------------------------------------------------ readers
def read_idx(path: Path, ndim: int, item_shape: tuple[int, ...]) -> np.ndarray:
    """The uint8 array of an idx file (raw, or gzip-compressed when its name ends in .gz),
    of shape (n, *item_shape); a ``StageError`` naming the file says what is wrong."""
    compressed = path.name.endswith(".gz")
    try:
        with _open_regular(path) as raw:
            size = os.fstat(raw.fileno()).st_size
            if compressed:
                if raw.read(2) != b"\x1f\x8b":
                    raise StageError(f"idx {path}: not gzip-compressed, though its name ends in .gz")
                raw.seek(0)
                with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                    return _read_idx_stream(f, path, ndim, item_shape, size, compressed=True)
            return _read_idx_stream(raw, path, ndim, item_shape, size, compressed=False)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise StageError(f"idx {path}: damaged gzip stream ({err or type(err).__name__})") from None
    except OSError as err:
        raise StageError(f"idx {path}: cannot read the file ({err.strerror or err})") from None


def _read_idx_stream(f: BinaryIO, path: Path, ndim: int, item_shape: tuple[int, ...], file_size: int,
                     compressed: bool) -> np.ndarray:
    magic = f.read(4)
    if magic[:2] == b"\x1f\x8b" and not compressed:
        raise StageError(f"idx {path}: gzip-compressed; name it {path.name}.gz (or gunzip it)")
    expected = bytes([0, 0, 0x08, ndim])
    if magic != expected:
        raise StageError(f"idx {path}: not an idx file of unsigned bytes with {ndim} dimension(s) (magic bytes "
                         f"{magic.hex(' ') or 'none'}, expected {expected.hex(' ')})")
    header = f.read(4 * ndim)
    if len(header) != 4 * ndim:
        raise StageError(f"idx {path}: truncated inside its header")
    dims = tuple(int(d) for d in np.frombuffer(header, dtype=">u4"))
    if dims[1:] != item_shape:
        what = "×".join(map(str, dims[1:]))
        raise StageError(f"idx {path}: holds items of shape {what}, expected {'×'.join(map(str, item_shape))}")
    payload = int(np.prod(dims, dtype=object))
    header_size = 4 + 4 * ndim
    if not compressed and file_size != header_size + payload:
        how = "truncated" if file_size < header_size + payload else "longer than its header says"
        raise StageError(f"idx {path}: {how}: its header announces {dims[0]} items = {header_size + payload} bytes, "
                         f"the file has {file_size}")
    if compressed and payload > _MAX_DEFLATE_RATIO * file_size + _GZIP_SLACK:
        raise StageError(f"idx {path}: damaged header: it announces {dims[0]} items = {payload} bytes, more than a "
                         f"{file_size}-byte gzip file can hold")
    data = np.empty(payload, dtype=np.uint8)
    view, done = memoryview(data), 0
    while done < payload:  # pages are touched only as data arrive: memory follows the real length
        got = f.readinto(view[done: done + _READ_BLOCK])
        if not got:
            raise StageError(f"idx {path}: truncated: its header announces {dims[0]} items = {payload} bytes of data, "
                             f"the file holds {done}")
        done += got
    if f.read(1):
        raise StageError(f"idx {path}: longer than its header says ({dims[0]} items = {payload} bytes of data)")
    return data.reshape(dims)


def read_cifar(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (n, 3, 32, 32) and labels (n,) of CIFAR-10 binary batches, concatenated."""
    sizes = []
    for path in paths:
        try:
            size = os.stat(path).st_size
        except OSError as err:
            raise StageError(f"cifar10 {path}: cannot read the file ({err.strerror or err})") from None
        if size == 0 or size % CIFAR_RECORD:
            raise StageError(f"cifar10 {path}: damaged or not the binary version: its {size} bytes are not a whole "
                             f"number of {CIFAR_RECORD}-byte records (1 label byte + 3072 pixel bytes)")
        sizes.append(size)
    records = np.empty((sum(sizes) // CIFAR_RECORD, CIFAR_RECORD), dtype=np.uint8)
    flat, start = memoryview(records.reshape(-1)), 0
    for path, size in zip(paths, sizes):
        try:
            with _open_regular(path) as f:
                done = 0
                while done < size:
                    got = f.readinto(flat[start + done: start + size])
                    if not got:
                        break
                    done += got
                if done != size or f.read(1):
                    raise StageError(f"cifar10 {path}: changed while it was read ({size} bytes expected)")
        except OSError as err:
            raise StageError(f"cifar10 {path}: cannot read the file ({err.strerror or err})") from None
        labels = records[start // CIFAR_RECORD: (start + size) // CIFAR_RECORD, 0]
        _check_labels(labels, path)
        start += size
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].copy()


def _check_labels(labels: np.ndarray, path: Path) -> None:
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise StageError(f"{path}: label {int(labels[bad[0]])} of item {int(bad[0])} is not a class 0–9 (a damaged "
                         "file, or not the format expected)")


# ------------------------------------------------------------------------ preprocessing
def _subset(x: np.ndarray, y: np.ndarray, n: int | None, param: str, what: str, rng: np.random.Generator | None,
            dataset: str) -> tuple[np.ndarray, np.ndarray]:
    if n is None:
        return x, y
    if n > len(y):
        raise StageError(f"{dataset}: {param} = {n}, but the files hold {len(y)} {what} images")
    index = np.arange(n) if rng is None else np.sort(rng.choice(len(y), size=n, replace=False))
    return x[index], y[index]


def _pixel_table(x_train: np.ndarray, standardize: bool) -> np.ndarray:
    """(C, 256) float32: the input value of pixel byte v in channel c.

    The channel statistics are exact: they come from a histogram of the bytes, in float64,
    so no float array of the images is summed. Each entry is computed in float64 and
    rounded to float32 once."""
    channels = x_train.shape[1]
    u = np.arange(256, dtype=np.float64) / 255.0
    table = np.tile(u, (channels, 1))
    if standardize:
        counts = np.zeros((channels, 256), dtype=np.int64)
        for rows in _chunks(len(x_train)):  # bincount widens to intp: a chunk at a time bounds that copy
            for c in range(channels):
                counts[c] += np.bincount(x_train[rows, c].ravel(), minlength=256)
        for c in range(channels):
            total = counts[c].sum()
            if total == 0:
                continue
            mean = (counts[c] * u).sum() / total
            std = np.sqrt((counts[c] * (u - mean) ** 2).sum() / total)
            table[c] = (u - mean) / std if std > 0 else u - mean  # a constant channel is only centred
    return table.astype(np.float32)


def _apply(table: np.ndarray, x: np.ndarray) -> np.ndarray:
    """float32 (n, C, H, W) of uint8 x looked up in the per-channel table, a chunk of images
    at a time (the lookup's temporary stays small; no float64 copy of the images is made)."""
    out = np.empty(x.shape, dtype=np.float32)
    for rows in _chunks(len(x)):
        for c in range(x.shape[1]):
            out[rows, c] = table[c][x[rows, c]]
    return out


def _chunks(n: int, size: int = 4096) -> list[slice]:
    return [slice(start, start + size) for start in range(0, n, size)]


# ------------------------------------------------------------------------------ digests
_DIGESTS: dict[tuple[Any, ...], str] = {}


def _sha256(path: Path) -> str:
    """The file's SHA-256, computed once per process for each (size, mtime, inode, ctime):
    the key is serialized several times while planning, and CIFAR-10 is 180 MB."""
    st = os.stat(path)
    state = (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if state not in _DIGESTS:
        digest = hashlib.sha256()
        with _open_regular(path) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[state] = digest.hexdigest()
    return _DIGESTS[state]
