"""A matrix to factorize, as a regression dataset: inputs the basis vectors, targets the columns (survey §2.2)."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from nnopt.core.errors import StageError
from nnopt.core.kinds import Dataset, DatasetParams, DataSplit

# npz.py's file checks: `unreadable` says why a path is not a readable regular file,
# `_open_regular` opens one without blocking (refusing a FIFO swapped in since), and
# `_header_shape` reads an array's shape from its .npy header inside the archive, and
# `file_key` is what a data file adds to a stage key.
from .npz import _header_shape, _open_regular, file_key, unreadable

# the params that describe a generated Y, refused when Y comes from a file
GENERATOR_PARAMS = ("rows", "cols", "rank", "singular_values", "condition_number", "scale")


class MatrixParams(DatasetParams):
    path: str | None = Field(
        None, min_length=1, description="an .npz file holding the matrix Y (2-D, rows × cols) under `key`; "
        "null: generate Y from rows, cols, rank and its singular values"
    )
    key: str = Field("Y", min_length=1, description="name of the array in the .npz file (with `path`)")
    rows: int = Field(16, ge=1, description="m, the rows of the generated Y (= the output dimension)")
    cols: int = Field(16, ge=1, description="n, the columns of the generated Y (= the input dimension and the number of samples)")
    rank: int = Field(2, ge=1, description="r, the rank of the generated Y; at most min(rows, cols)")
    singular_values: list[Annotated[float, Field(gt=0.0)]] | None = Field(
        None, description="the r non-zero singular values of the generated Y (as many as `rank`); "
        "null: spaced geometrically from `scale` down to scale/condition_number"
    )
    condition_number: float = Field(1.0, ge=1.0, description="κ = s_1/s_r of the generated Y (without singular_values)")
    scale: float = Field(1.0, gt=0.0, description="s_1, the largest singular value of the generated Y (without singular_values)")
    noise: float = Field(0.0, ge=0.0, description="std σ of Gaussian noise added to every entry of the training targets (not the test targets)")
    data_seed: int = Field(0, ge=0, description="seed of U, V and the noise (not the stage seed: the matrix stays fixed across training seeds)")

    @field_validator("path")
    @classmethod
    def _readable_file(cls, value: str | None) -> str | None:
        # found before anything runs (exit 2, located at `path`); `load` checks the contents
        if value is not None:
            problem = unreadable(Path(value).expanduser())
            if problem:
                raise ValueError(f"{problem}: {value} (relative paths are taken from the working directory)")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        fields = type(self).model_fields
        if self.path is not None:
            for name in GENERATOR_PARAMS:
                if getattr(self, name) != fields[name].default:
                    raise ValueError(f"'{name}' describes a generated matrix, and `path` gives Y from a file; leave it out")
            return self
        if self.key != fields["key"].default:
            raise ValueError("'key' names the array of the file at `path`, and no path is given; leave it out")
        if self.rank > min(self.rows, self.cols):
            raise ValueError(f"rank {self.rank} exceeds min(rows, cols) = {min(self.rows, self.cols)}, "
                             f"the largest rank a {self.rows}×{self.cols} matrix has")
        if self.singular_values is not None:
            for name in ("condition_number", "scale"):
                if getattr(self, name) != fields[name].default:
                    raise ValueError(f"give either singular_values or '{name}', not both (singular_values fixes them all)")
            if len(self.singular_values) != self.rank:
                raise ValueError(f"singular_values lists {len(self.singular_values)} values and rank is {self.rank}: "
                                 "give one per rank")
        elif self.rank == 1 and self.condition_number != 1:
            raise ValueError("a rank-1 matrix has a single singular value: condition_number must be 1")
        return self


class Matrix(Dataset):
    """Fit a matrix Y ∈ R^{m×n}: x_i = e_i, y_i = Y[:, i] for i = 1..n (survey §2.2, eq. (5)).

    The n training inputs are the standard basis vectors (x_train = I_n) and the targets the
    columns of Y (y_train = Yᵀ, shape (n, m)): a linear network f(x) = Px then outputs the
    columns of P on the training set, and the mean squared error over it is
    ‖Y − P‖²_F/(m·n) — with ``matrix_factorization`` (P = W_N ⋯ W_1) the factorization loss
    of eq. (5) divided by m·n. task "regression", input_shape (n,), output_dim m. Values
    are computed in float64 and stored as float32.

    **Generated** (no ``path``; a ``torch.Generator`` seeded with ``data_seed`` alone):
    Y = U diag(s) Vᵀ, U ∈ R^{m×r} and V ∈ R^{n×r} with orthonormal columns, Haar-distributed
    (QR of a standard Gaussian matrix with the signs of R's diagonal fixed, so they are the
    first r columns of Haar-random orthogonal matrices), drawn in that order. So Y has rank
    exactly r and singular values s: ``singular_values`` as given, else
    s_i = scale · κ^{−(i−1)/(r−1)}, geometric from s_1 = ``scale`` to s_r = scale/κ
    (``condition_number`` κ = s_1/s_r). ``meta`` records the singular values.

    **Given** (``path``): the 2-D numeric array under ``key`` of an .npz archive is Y, used as
    it is (rows × cols; its rank is whatever it is). The file is checked as ``npz``'s is: a
    readable regular file at validation (a directory, FIFO or device is a spec error at
    ``path``), read with ``allow_pickle=False``, a malformed or non-finite array failing the
    stage with a one-line message; its SHA-256 is part of the cache key.

    **Test split**: the task is to fit Y itself, so the test inputs are the same n basis
    vectors, and the test targets are the noiseless Y. With ``noise`` σ > 0 the training
    targets are Y + σE (E i.i.d. N(0, 1), drawn after U and V): the test loss then measures
    how far the fit is from the clean Y (denoising), the train loss how far from what it was
    given. Without noise, test = train. There is no held-out set of entries (matrix
    completion would need a loss restricted to observed entries, which a column-per-sample
    mse does not express).
    """

    cache_version: ClassVar[int] = 1
    Params = MatrixParams

    @classmethod
    def key_extras(cls, params: MatrixParams) -> dict[str, Any]:
        return {} if params.path is None else file_key(Path(params.path).expanduser())

    @classmethod
    def watched_files(cls, params: MatrixParams) -> list[str]:
        return [params.path] if params.path is not None else []

    def shapes(self, seed: int) -> tuple[tuple[int, ...], int]:
        """From the params (generated), or from the array's .npy header (given), without reading Y."""
        p = self.params
        if p.path is None:
            return (p.cols,), p.rows
        path = Path(p.path).expanduser()
        try:
            with _open_regular(path) as f, zipfile.ZipFile(f) as archive:
                shape = _header_shape(archive, p.key)
        except (KeyError, OSError, ValueError, zipfile.BadZipFile):
            return self._shapes_by_loading()
        if len(shape) != 2:
            return self._shapes_by_loading()
        return (int(shape[1]),), int(shape[0])

    def _shapes_by_loading(self) -> tuple[tuple[int, ...], int]:
        # a header that cannot be read: the full read raises the located StageError
        y = read_matrix(Path(self.params.path).expanduser(), self.params.key)
        return (int(y.shape[1]),), int(y.shape[0])

    def load(self, seed: int) -> DataSplit:
        p = self.params
        g = torch.Generator(device="cpu").manual_seed(p.data_seed)
        meta: dict[str, Any]
        if p.path is None:
            y, s = generate(g, p.rows, p.cols, _singular_values(p))
            meta = {"rank": p.rank, "singular_values": s.tolist()}
        else:
            y = torch.from_numpy(read_matrix(Path(p.path).expanduser(), p.key))
            meta = {"path": str(p.path), "key": p.key}
        m, n = y.shape
        observed = y + p.noise * torch.randn((m, n), generator=g, dtype=torch.float64) if p.noise > 0 else y
        eye = torch.eye(n, dtype=torch.float32)
        return DataSplit(
            x_train=eye,
            y_train=observed.T.float().contiguous(),
            x_test=eye.clone(),
            y_test=y.T.float().contiguous(),
            task="regression",
            input_shape=(n,),
            output_dim=m,
            meta={"rows": m, "cols": n, **meta},
        )


def _singular_values(p: MatrixParams) -> torch.Tensor:
    if p.singular_values is not None:
        return torch.tensor(sorted(p.singular_values, reverse=True), dtype=torch.float64)
    exponents = torch.arange(p.rank, dtype=torch.float64) / max(p.rank - 1, 1)
    return p.scale * p.condition_number ** (-exponents)


def _orthonormal(g: torch.Generator, d: int, k: int) -> torch.Tensor:
    """A d×k matrix with orthonormal columns, Haar-distributed (QR with the signs of R fixed)."""
    q, r = torch.linalg.qr(torch.randn((d, k), generator=g, dtype=torch.float64))
    # R's diagonal is almost surely non-zero; its signs make the QR unique, hence Haar
    return q * torch.sign(torch.diagonal(r))


def generate(g: torch.Generator, rows: int, cols: int, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Y = U diag(s) Vᵀ (float64) with Haar U (rows×r), then V (cols×r), and the s used."""
    u = _orthonormal(g, rows, len(s))
    v = _orthonormal(g, cols, len(s))
    return (u * s) @ v.T, s


def read_matrix(path: Path, key: str) -> np.ndarray:
    """The 2-D array ``key`` of the .npz archive at ``path``, as float64; a ``StageError`` says what is wrong."""
    problem = unreadable(path)
    if problem:
        raise StageError(f"matrix: {problem}: {path}")
    try:
        # one open file for the checks and the read, so the path cannot be swapped in between
        with _open_regular(path) as f:
            magic = f.read(6)
            if magic == b"\x93NUMPY":
                raise StageError(f"matrix {path}: a single .npy array, not an .npz archive "
                                 f"(save with numpy.savez(path, {key}=Y))")
            if not magic.startswith(b"PK"):
                raise StageError(f"matrix {path}: not an .npz archive (save with numpy.savez(path, {key}=Y))")
            f.seek(0)
            with np.load(f, allow_pickle=False) as loaded:
                if key not in loaded.files:
                    raise StageError(f"matrix {path}: no array '{key}' (has: {', '.join(loaded.files) or 'none'}; "
                                     "name another with `key`)")
                y = loaded[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise StageError(f"matrix {path}: not a readable .npz archive without pickle ({e})") from None
    if y.dtype.kind not in "biuf" or y.ndim != 2 or 0 in y.shape:
        raise StageError(f"matrix {path}: '{key}' must be a non-empty 2-D numeric array (rows × cols), "
                         f"got dtype {y.dtype}, shape {y.shape}")
    y = y.astype(np.float64)
    if not np.isfinite(y).all():
        raise StageError(f"matrix {path}: '{key}' holds non-finite values (nan or inf)")
    return y
