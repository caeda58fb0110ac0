"""Matrix: Y = U diag(s) Vᵀ (or a file's Y) as x_i = e_i, y_i = Y[:, i]."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from nnopt.core.errors import StageError
from nnopt.plugins.datasets.matrix import Matrix


def matrix(**params) -> Matrix:
    return Matrix(Matrix.Params(**params))


def target(data) -> torch.Tensor:
    return data.y_train.T.double()  # Y ∈ R^{m×n}


def test_the_inputs_are_the_basis_vectors_and_the_targets_the_columns():
    component = matrix(rows=7, cols=5, rank=3)
    data = component.load(0)
    torch.testing.assert_close(data.x_train, torch.eye(5))
    assert data.y_train.shape == (5, 7) and data.y_train.dtype == torch.float32
    assert (data.task, data.input_shape, data.output_dim, data.num_classes) == ("regression", (5,), 7, None)
    assert component.shapes(0) == (data.input_shape, data.output_dim)


@pytest.mark.parametrize("rows, cols, rank", [(8, 6, 3), (5, 9, 5), (4, 4, 1)])
def test_the_generated_matrix_has_exactly_the_given_rank_and_singular_values(rows, cols, rank):
    s = [float(4 - 0.5 * i) for i in range(rank)]
    data = matrix(rows=rows, cols=cols, rank=rank, singular_values=s).load(0)
    y = target(data)
    # the rank of the stored float32 matrix, at float32's tolerance (σ_max·max(m, n)·eps)
    assert torch.linalg.matrix_rank(data.y_train) == rank
    sv = torch.linalg.svdvals(y)
    torch.testing.assert_close(sv[:rank], torch.tensor(s, dtype=torch.float64), atol=1e-5, rtol=1e-6)
    assert (sv[rank:] < 1e-5).all()
    assert data.meta["singular_values"] == s and data.meta["rank"] == rank


def test_the_singular_values_are_geometric_from_scale_to_scale_over_kappa():
    data = matrix(rows=10, cols=10, rank=4, condition_number=8.0, scale=3.0).load(0)
    expected = 3.0 * 8.0 ** (-torch.arange(4, dtype=torch.float64) / 3)  # 3, 1.5, 0.75, 0.375
    torch.testing.assert_close(torch.linalg.svdvals(target(data))[:4], expected, atol=1e-5, rtol=1e-6)
    default = matrix(rows=6, cols=6, rank=3).load(0)  # κ = 1, scale 1: three unit singular values
    torch.testing.assert_close(torch.linalg.svdvals(target(default))[:3], torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)


def test_the_matrix_follows_data_seed_alone():
    a = matrix(rows=6, cols=5, rank=2).load(0)
    torch.testing.assert_close(a.y_train, matrix(rows=6, cols=5, rank=2).load(123).y_train)  # not the stage seed
    assert not torch.allclose(a.y_train, matrix(rows=6, cols=5, rank=2, data_seed=1).load(0).y_train)


def test_noise_perturbs_the_training_targets_and_the_test_targets_stay_the_clean_matrix():
    clean = matrix(rows=30, cols=40, rank=2).load(0)
    noisy = matrix(rows=30, cols=40, rank=2, noise=0.1).load(0)
    torch.testing.assert_close(noisy.y_test, clean.y_train)  # U, V are drawn before the noise
    torch.testing.assert_close(noisy.x_test, noisy.x_train)
    residual = noisy.y_train - noisy.y_test
    assert residual.std().item() == pytest.approx(0.1, rel=0.1)
    torch.testing.assert_close(clean.y_test, clean.y_train)  # without noise: test = train


# ------------------------------------------------------------------ a given matrix
def test_a_given_matrix_round_trips_under_the_default_or_a_named_key(tmp_path):
    y = np.random.default_rng(0).normal(size=(4, 3))
    np.savez(tmp_path / "y.npz", Y=y)
    np.savez_compressed(tmp_path / "named.npz", ratings=y, other=np.zeros(2))
    for component in (matrix(path=str(tmp_path / "y.npz")), matrix(path=str(tmp_path / "named.npz"), key="ratings")):
        data = component.load(0)
        np.testing.assert_allclose(data.y_train.T.numpy(), y.astype(np.float32))
        torch.testing.assert_close(data.x_train, torch.eye(3))
        assert component.shapes(0) == ((3,), 4) == (data.input_shape, data.output_dim)


def test_the_files_checksum_is_in_the_cache_key(tmp_path):
    path = tmp_path / "y.npz"
    np.savez(path, Y=np.ones((2, 2)))
    params = Matrix.Params(path=str(path))
    first = Matrix.key_extras(params)
    assert set(first) == {"sha256"}
    np.savez(path, Y=np.zeros((2, 2)))
    assert Matrix.key_extras(params) != first
    assert Matrix.watched_files(params) == [str(path)]
    assert Matrix.key_extras(Matrix.Params()) == {} and Matrix.watched_files(Matrix.Params()) == []


@pytest.mark.parametrize("write, message", [
    (lambda p: np.savez(p, Y=np.zeros(5)), "2-D numeric array"),
    (lambda p: np.savez(p, Y=np.zeros((2, 3, 4))), "2-D numeric array"),
    (lambda p: np.savez(p, Y=np.zeros((0, 3))), "non-empty"),
    (lambda p: np.savez(p, Y=np.array([[1.0, np.nan]])), "non-finite"),
    (lambda p: np.savez(p, X=np.zeros((2, 2))), r"no array 'Y' \(has: X"),
    (lambda p: np.savez(p, Y=np.array([[{}]], dtype=object)), "without pickle"),
    (lambda p: p.write_bytes(b"\x93NUMPY" + b"\0" * 10), "single .npy array"),
    (lambda p: p.write_text("1,2\n3,4\n"), "not an .npz archive"),
], ids=["1-d", "3-d", "empty", "nan", "missing-key", "object", "npy", "csv"])
def test_malformed_files_fail_the_stage_with_a_message(tmp_path, write, message):
    path = tmp_path / "bad.npz"
    write(path)
    with pytest.raises(StageError, match=message):
        matrix(path=str(path)).load(0)


def test_a_missing_file_is_a_validation_error_and_one_removed_later_a_stage_error(tmp_path):
    with pytest.raises(ValidationError, match="no such file"):
        Matrix.Params(path=str(tmp_path / "absent.npz"))
    with pytest.raises(ValidationError, match="a directory"):
        Matrix.Params(path=str(tmp_path))
    np.savez(tmp_path / "y.npz", Y=np.ones((2, 2)))
    component = matrix(path=str(tmp_path / "y.npz"))
    (tmp_path / "y.npz").unlink()
    assert Matrix.key_extras(component.params) == {"missing": True}
    with pytest.raises(StageError, match="no such file"):
        component.load(0)


# ------------------------------------------------------------------ params
@pytest.mark.parametrize("params, message", [
    ({"rows": 3, "cols": 5, "rank": 4}, "rank 4 exceeds min"),
    ({"rank": 2, "singular_values": [1.0]}, "lists 1 values and rank is 2"),
    ({"rank": 1, "condition_number": 2.0}, "single singular value"),
    ({"singular_values": [2.0, 1.0], "scale": 3.0}, "either singular_values or 'scale'"),
    ({"singular_values": [2.0, -1.0]}, "greater than 0"),
    ({"key": "M"}, "no path is given"),
])
def test_inconsistent_params_are_validation_errors(params, message):
    with pytest.raises(ValidationError, match=message):
        Matrix.Params(**params)


def test_a_file_and_generator_params_together_are_a_validation_error(tmp_path):
    np.savez(tmp_path / "y.npz", Y=np.ones((2, 2)))
    with pytest.raises(ValidationError, match="'rank' describes a generated matrix"):
        Matrix.Params(path=str(tmp_path / "y.npz"), rank=1)


def test_a_spec_error_is_located_at_the_data_params(invoke, write_pipeline, tmp_path):
    path = write_pipeline("""\
        name: bad
        data: {name: matrix, rows: 3, cols: 4, rank: 5}
        model: {arch: {name: matrix_factorization}}
        loss: mse
        stages:
          train: {kind: train, optimizer: {name: sgd, lr: 1.0}, steps: 1}
        """)
    result = invoke("validate", str(path))
    assert result.exit_code == 2
    assert "pipeline.yaml:2:" in result.stderr and "rank 5 exceeds min(rows, cols) = 3" in result.stderr
