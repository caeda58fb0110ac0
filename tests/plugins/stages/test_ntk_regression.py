"""ntk_regression: with the exact kernel of a linear model it reproduces least squares / ridge
regression; finite t tends to infinite t; jitter; the trained network compared; end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from pydantic import ValidationError

from nnopt.cli import main
from nnopt.core.errors import StageError
from nnopt.plugins.stages.ntk_regression import NTKRegression, cholesky_solve_with_jitter
from stage_helpers import data_ref, run_stage

LINEAR = {"name": "ntk_analytic", "depth": 0, "activation": "identity", "W_std": 1.0, "b_std": 0.0,
          "parameterization": "ntk"}


def blobs(task="regression", **params):
    return data_ref(task=task, n_train=24, n_test=10, dim=8, **params).instantiate().prepare(0)


def test_a_linear_kernel_gives_ridge_regression(tmp_path):
    """Θ = x·x'/d is the NTK of f(x) = wᵀx/√d: kernel ridge = ridge regression on x/√d."""
    lam = 0.3
    out = run_stage("ntk_regression", tmp_path, data={"task": "regression", "n_train": 24, "n_test": 10},
                    loss="mse", kernel=LINEAR, regularization=lam, regularization_absolute=True)
    data = blobs()
    phi_tr, phi_te = data.x_train.double() / 8 ** 0.5, data.x_test.double() / 8 ** 0.5
    y_tr, y_te = data.y_train.double(), data.y_test.double()
    w = torch.linalg.solve(phi_tr.T @ phi_tr + lam * torch.eye(8, dtype=torch.float64), phi_tr.T @ y_tr)
    block = out.results["ntk_regression"]["ntk"]
    assert block["test_mse"] == pytest.approx(float(((phi_te @ w - y_te) ** 2).mean()), rel=1e-10)
    assert block["train_mse"] == pytest.approx(float(((phi_tr @ w - y_tr) ** 2).mean()), rel=1e-10)
    assert block["jitter"] == 0.0 and block["regularization"] == lam
    assert out.results["ntk_regression"]["nngp"]["test_mse"] == pytest.approx(block["test_mse"])  # K = Θ here


def test_least_squares_interpolation_with_more_features_than_examples(tmp_path):
    """n < d, no regularization: f = X_te X_trᵀ(X_tr X_trᵀ)⁻¹y, the minimum-norm interpolant (gradient flow from 0)."""
    out = run_stage("ntk_regression", tmp_path, data={"task": "regression", "n_train": 5, "n_test": 10, "dim": 8},
                    loss="mse", kernel=LINEAR)
    data = data_ref(task="regression", n_train=5, n_test=10, dim=8).instantiate().prepare(0)
    x_tr, x_te, y_tr = data.x_train.double(), data.x_test.double(), data.y_train.double()
    f = x_te @ torch.linalg.pinv(x_tr) @ y_tr
    block = out.results["ntk_regression"]["ntk"]
    assert block["test_mse"] == pytest.approx(float(((f - data.y_test.double()) ** 2).mean()), rel=1e-8)
    assert block["train_mse"] < 1e-20


def test_finite_time_tends_to_infinite_time(tmp_path):
    out = run_stage("ntk_regression", tmp_path, kernel={"name": "ntk_analytic", "depth": 2, "parameterization": "ntk"},
                    t=[0.0, 1.0, 100.0, 1e12], samples=40)
    res = out.results["ntk_regression"]
    assert res["targets"] == "centered_one_hot" and res["samples"] == 40 and res["outputs"] == 3
    for name in ("ntk", "nngp"):
        finite = res[name]["finite"]
        # t = 0: f = 0 against targets one-hot − 1/3: mse = mean of (1/3)², (2/3)²
        assert finite["test_mse"][0] == pytest.approx((2 * (1 / 3) ** 2 + (2 / 3) ** 2) / 3)
        assert finite["train_mse"] == sorted(finite["train_mse"], reverse=True)  # gradient flow descends
        assert finite["test_mse"][-1] == pytest.approx(res[name]["test_mse"], rel=1e-6)
        assert finite["test_accuracy"][-1] == res[name]["test_accuracy"]
    assert (tmp_path / "plots" / "ntk_regression.png").is_file()
    assert out.metrics["ntk_test_accuracy"] == res["ntk"]["test_accuracy"] > 0.9


def test_jitter_is_added_to_a_singular_kernel_and_reported():
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    k = x @ x.T  # rank 2
    y = torch.randn(6, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    _, jitter = cholesky_solve_with_jitter(k, y)
    assert jitter > 0
    _, none = cholesky_solve_with_jitter(k + torch.eye(6, dtype=torch.float64), y)
    assert none == 0.0
    with pytest.raises(StageError, match="not positive definite"):
        cholesky_solve_with_jitter(-torch.eye(3, dtype=torch.float64), y[:3])


def test_spec_validation():
    with pytest.raises(ValidationError, match="non-empty"):
        NTKRegression.Params.model_validate({"kind": "ntk_regression", "kernel": "ntk_analytic", "t": []})
    with pytest.raises(ValidationError, match=">= 0"):
        NTKRegression.Params.model_validate({"kind": "ntk_regression", "kernel": "ntk_analytic", "t": [-1.0]})


def test_kernel_regression_next_to_a_trained_network_from_yaml(tmp_path):
    path = tmp_path / "kr.yaml"
    path.write_text("""
name: kr-cli
data: {name: digits}
model:
  arch: {name: mlp, widths: [32], activation: relu, parameterization: ntk, W_std: 1.4, b_std: 0.1}
loss: cross_entropy
stages:
  train:
    kind: train
    optimizer: {name: sgd, lr: 0.5}
    steps: 20
  kernels:
    kind: ntk_regression
    kernel: ntk_analytic
    samples: 100
    test_samples: 50
    compare: train
    t: [10, 1000]
  empirical:
    kind: ntk_regression
    from: train
    kernel: empirical_ntk
    samples: 50
    test_samples: 20
""")
    run = CliRunner().invoke(main, ["run", str(path), "--json", "--store", str(tmp_path / "store")],
                             catch_exceptions=False)
    assert run.exit_code == 0, run.output
    stages = json.loads(run.stdout)["stages"]
    res = stages["kernels"]["results"]["ntk_regression"]
    assert res["compare"]["stage"] == "train" and 0 <= res["compare"]["test_accuracy"] <= 1
    assert res["ntk"]["test_accuracy"] > 0.8 and len(res["ntk"]["finite"]["t"]) == 2
    assert stages["kernels"]["metrics"]["network_test_accuracy"] == res["compare"]["test_accuracy"]
    assert (Path(stages["kernels"]["dir"]) / "plots" / "ntk_regression.png").is_file()
    emp = stages["empirical"]["results"]["ntk_regression"]
    assert emp["kernel"] == "empirical_ntk" and "nngp" not in emp and emp["ntk"]["test_accuracy"] > 0.5
