"""Curvature–vector products (hvp.py) against explicit matrices built independently here:
torch.func.hessian, Jᵀ H_ℓ J from jacrev, per-example outer products; batch weighting;
normalization-layer handling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian, jacrev

from nnopt.core.errors import StageError
from nnopt.core.kinds import AnalysisContext, DataSplit
from nnopt.plugins.analyzers.hvp import CurvatureOperator, CurvatureParams, analysis_mode, curvature_operator


def tiny(seed=0, widths=(3, 5, 2)) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(widths[0], widths[1]), nn.Tanh(), nn.Linear(widths[1], widths[2])).double()


def data(n=7, dim=3, classes=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def flat_loss(model, loss_fn, x, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]

    def f(flat):
        params = {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes)}
        return loss_fn(functional_call(model, params, (x,)), y)

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return f, theta


def matrix_of(op: CurvatureOperator) -> torch.Tensor:
    eye = torch.eye(op.dim, dtype=op.dtype)
    return torch.stack([op.matvec(eye[j]) for j in range(op.dim)], 1)


@pytest.mark.parametrize("batch_size", [7, 3, 1])
def test_hessian_products_equal_the_exact_hessian_for_any_batching(batch_size):
    """Batches of 3, 3, 1 (or 7 ones) weighted by size give the full-batch Hessian exactly."""
    model, (x, y) = tiny(), data()
    f, theta = flat_loss(model, F.cross_entropy, x, y)
    exact = hessian(f)(theta)
    op = CurvatureOperator(model, F.cross_entropy, x, y, "hessian", batch_size)
    assert op.dim == theta.numel() and [xb.shape[0] for xb, _ in op.batches][-1] == (7 - 1) % batch_size + 1
    assert torch.allclose(matrix_of(op), exact, atol=1e-12, rtol=1e-10)


def test_unequal_batches_are_not_a_mean_of_batch_means():
    """The size-weighted sum differs from the plain mean of the three batch Hessians (the test bites)."""
    model, (x, y) = tiny(), data()
    per_batch = [hessian(flat_loss(model, F.cross_entropy, x[s:s + 3], y[s:s + 3])[0])(flat_loss(model, F.cross_entropy, x, y)[1])
                 for s in (0, 3, 6)]
    op = CurvatureOperator(model, F.cross_entropy, x, y, "hessian", 3)
    weighted = sum(w * h for w, h in zip([3 / 7, 3 / 7, 1 / 7], per_batch))
    assert torch.allclose(matrix_of(op), weighted, atol=1e-12)
    assert (matrix_of(op) - sum(per_batch) / 3).abs().max() > 1e-4


def test_a_single_batch_reuses_its_graph_and_gives_identical_products():
    model, (x, y) = tiny(), data()
    op = CurvatureOperator(model, F.cross_entropy, x, y, "hessian", 64)
    v = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    first = op.matvec(v)
    cached = op._cache
    assert cached is not None and torch.equal(op.matvec(v), first) and op._cache is cached
    assert op.n_products == 2
    assert torch.allclose(op.matvec(2 * v), 2 * first, atol=1e-13)
    op.release()
    assert op._cache is None and torch.allclose(op.matvec(v), first, atol=1e-14)


def test_gauss_newton_is_j_transpose_h_loss_j():
    model, (x, y) = tiny(), data()
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def outputs(flat):
        return functional_call(model, {n: t.view(s) for n, t, s in zip(names, flat.split(sizes), shapes)}, (x,))

    jac = jacrev(outputs)(theta).reshape(-1, theta.numel())  # (N·O) × d
    out = outputs(theta).detach()
    h_loss = hessian(lambda o: F.cross_entropy(o.view_as(out), y))(out.reshape(-1))
    expected = jac.T @ h_loss @ jac
    for batch_size in (7, 3):
        op = CurvatureOperator(model, F.cross_entropy, x, y, "gauss_newton", batch_size)
        assert torch.allclose(matrix_of(op), expected, atol=1e-12)
    assert torch.linalg.eigvalsh(expected).min() > -1e-12  # PSD for the convex cross-entropy


def test_gauss_newton_equals_the_hessian_for_a_linear_model_under_the_square_loss():
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(9, 4, generator=g, dtype=torch.float64), torch.randn(9, 3, generator=g, dtype=torch.float64)
    f, theta = flat_loss(model, F.mse_loss, x, y)
    ggn = matrix_of(CurvatureOperator(model, F.mse_loss, x, y, "gauss_newton", 4))
    assert torch.allclose(ggn, hessian(f)(theta), atol=1e-12)
    # ... and not for the tanh network (the dropped term Σ ∂ℓ/∂f · ∇²f is not zero)
    model2, (x2, y2) = tiny(), data()
    f2, theta2 = flat_loss(model2, F.cross_entropy, x2, y2)
    assert (matrix_of(CurvatureOperator(model2, F.cross_entropy, x2, y2, "gauss_newton", 7)) - hessian(f2)(theta2)).abs().max() > 1e-3


def test_empirical_fisher_is_the_mean_of_per_example_outer_products():
    model, (x, y) = tiny(), data()
    grads = []
    for i in range(7):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    model.zero_grad()
    expected = sum(torch.outer(g, g) for g in grads) / 7
    for batch_size in (7, 3):
        op = CurvatureOperator(model, F.cross_entropy, x, y, "fisher", batch_size)
        assert torch.allclose(matrix_of(op), expected, atol=1e-13)
    assert torch.allclose(op.per_example_grads(0), torch.stack(grads[:3]), atol=1e-13)


def test_loss_and_gradient_over_batches_equal_the_full_mean():
    model, (x, y) = tiny(), data()
    f, theta = flat_loss(model, F.cross_entropy, x, y)
    op = CurvatureOperator(model, F.cross_entropy, x, y, "hessian", 3)
    delta = 0.1 * torch.ones_like(theta)
    value, grad = op.loss_and_grad(delta)
    full = theta + delta
    assert value == pytest.approx(float(f(full)), rel=1e-12) and op.loss(delta) == pytest.approx(value, rel=1e-12)
    assert torch.allclose(grad, torch.func.grad(f)(full), atol=1e-13)


def test_float64_on_request_casts_without_touching_the_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = data()
    op = CurvatureOperator(model, F.cross_entropy, x.float(), y, "hessian", 8, torch.float64)
    assert op.matvec(torch.ones(op.dim)).dtype == torch.float64 and next(model.parameters()).dtype == torch.float32


# ------------------------------------------------------------------------------ bn handling
def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Dropout(0.5), nn.Linear(4, 2)).double()


def test_bn_eval_uses_running_statistics_and_restores_the_flags():
    model, (x, y) = bn_model(), data(n=16)
    model.train()
    with analysis_mode(model, "eval", x, 8):
        assert not any(m.training for m in model.modules())
        op = CurvatureOperator(model, F.cross_entropy, x, y, "hessian", 8)
        v = torch.ones(op.dim, dtype=torch.float64)
        a, b = op.matvec(v), CurvatureOperator(model, F.cross_entropy, x, y, "hessian", 16).matvec(v)
        assert torch.allclose(a, b, atol=1e-12)  # eval mode: a per-example sum, batching does not matter
    assert all(m.training for m in model.modules())


def test_bn_recompute_reestimates_statistics_over_the_examples_and_restores_them():
    model, (x, y) = bn_model(), data(n=16)
    bn = model[1]
    before_mean, before_var = bn.running_mean.clone(), bn.running_var.clone()
    pre = model[0](x).detach()
    model.eval()
    with analysis_mode(model, "recompute", x, 5):  # batches 5, 5, 6: the trailing single example folded in
        assert not bn.training and not torch.allclose(bn.running_mean, before_mean)
        assert torch.allclose(bn.running_mean, pre.mean(0), atol=1e-12)  # size-weighted: the exact mean
        op = CurvatureOperator(model, F.cross_entropy, x, y, "hessian", 16)
        assert torch.allclose(op.buffers["1.running_mean"], pre.mean(0), atol=1e-12)
    assert torch.equal(bn.running_mean, before_mean) and torch.equal(bn.running_var, before_var)
    assert bn.momentum == 0.1 and not model.training


def ctx_for(model, x, y, batch=None) -> AnalysisContext:
    split = DataSplit(x, y, x[:3], y[:3], "classification", (x.shape[1],), 2, num_classes=2)
    return AnalysisContext(model=model, loss_fn=F.cross_entropy, data=split, device=torch.device("cpu"),
                           generator=torch.Generator().manual_seed(0), batch=batch)


def test_examples_a_seeded_subset_and_the_tracked_batch():
    model, (x, y) = tiny(), data(n=20)
    p = CurvatureParams(samples=5)
    with curvature_operator(ctx_for(model, x, y), p, "t") as op:
        first = op.batches[0][0].clone()
    with curvature_operator(ctx_for(model, x, y), p, "t") as op:
        assert op.n == 5 and torch.equal(op.batches[0][0], first)
    with curvature_operator(ctx_for(model, x, y), CurvatureParams(split="test"), "t") as op:
        assert op.n == 3
    with curvature_operator(ctx_for(model, x, y, batch=(x[:4], y[:4])), CurvatureParams(split="batch"), "t") as op:
        assert op.n == 4
    with pytest.raises(StageError, match="only while tracking"):
        with curvature_operator(ctx_for(model, x, y), CurvatureParams(split="batch"), "t"):
            pass


def test_bad_params_are_validation_errors():
    from pydantic import ValidationError

    for bad in ({"curvature": "newton"}, {"bn": "train"}, {"batch_size": 0}, {"samples": 0}, {"bogus": 1}):
        with pytest.raises(ValidationError):
            CurvatureParams(**bad)
