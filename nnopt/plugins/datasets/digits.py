"""The 8×8 handwritten digits shipped with scikit-learn (no download)."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pydantic import Field

from nnopt.core.errors import StageError
from nnopt.core.kinds import Dataset, DatasetParams, DataSplit


class DigitsParams(DatasetParams):
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="fraction of each class held out as the test set")
    split_seed: int = Field(
        0, ge=0, description="seed of the train/test split (not the stage seed: the test set stays fixed across training seeds)"
    )
    flatten: bool = Field(True, description="inputs as 64-vectors; false: images of shape 1×8×8")
    standardize: bool = Field(
        True, description="scale pixels to [0,1] (/16), then standardize each pixel with train-set mean and std"
    )


class Digits(Dataset):
    """UCI optical digits as ``sklearn.datasets.load_digits`` gives them: 1797 8×8 images, 10 classes.

    Split: each class c is permuted with numpy's ``default_rng(split_seed)`` and its first
    round(test_fraction·n_c) images are held out, so the split is stratified and depends on
    ``split_seed`` alone — the same test set under every training seed.

    Preprocessing (``standardize``): pixel values v ∈ {0, …, 16} become u = v/16 ∈ [0, 1],
    then x_j = (u_j − m_j)/s_j with m_j, s_j the mean and standard deviation of pixel j over
    the *training* images only (no test statistics leak into training). Pixels constant on
    the training set (s_j = 0, e.g. always-blank corners) are only centred. The survey
    (§4.3) motivates this per-feature normalization as preconditioning of the Hessian.
    Without ``standardize`` the inputs are the raw intensities 0–16.
    """

    cache_version: ClassVar[int] = 1
    Params = DigitsParams

    def shapes(self, seed: int) -> tuple[tuple[int, ...], int]:
        """Known without reading the images: 64 pixels (or 1×8×8), 10 classes."""
        return ((64,) if self.params.flatten else (1, 8, 8)), 10

    def load(self, seed: int) -> DataSplit:
        p = self.params
        x, y = read_digits()
        train_idx, test_idx = stratified_split(y, p.test_fraction, p.split_seed)
        if len(train_idx) == 0 or len(test_idx) == 0:
            raise StageError(f"digits: test_fraction {p.test_fraction} leaves an empty train or test set")
        x_train, x_test = x[train_idx], x[test_idx]
        if p.standardize:
            x_train, x_test = x_train / 16.0, x_test / 16.0
            mean, std = x_train.mean(axis=0), x_train.std(axis=0)
            std[std == 0] = 1.0
            x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
        shape = (64,) if p.flatten else (1, 8, 8)
        return DataSplit(
            x_train=torch.as_tensor(x_train, dtype=torch.float32).reshape(-1, *shape),
            y_train=torch.as_tensor(y[train_idx], dtype=torch.int64),
            x_test=torch.as_tensor(x_test, dtype=torch.float32).reshape(-1, *shape),
            y_test=torch.as_tensor(y[test_idx], dtype=torch.int64),
            task="classification",
            input_shape=shape,
            output_dim=10,
            num_classes=10,
            meta={"source": "sklearn.datasets.load_digits"},
        )


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """``sklearn.datasets.load_digits(return_X_y=True)``, bit for bit, without importing
    scikit-learn (about a second): its ``digits.csv.gz`` is read directly, one image a row
    with the label in the last column. Where the file is not found, ``load_digits`` it is."""
    csv = _bundled_csv()
    if csv is None:
        from sklearn.datasets import load_digits

        return load_digits(return_X_y=True)
    with gzip.open(csv, mode="rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1], data[:, -1].astype(int, copy=False)


def _bundled_csv() -> Path | None:
    """scikit-learn's ``datasets/data/digits.csv.gz``, located without importing the package."""
    try:
        spec = importlib.util.find_spec("sklearn")
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        csv = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if csv.is_file():
            return csv
    return None


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices holding out round(test_fraction·n_c) of each class c."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        test.append(members[: int(round(test_fraction * len(members)))])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx
