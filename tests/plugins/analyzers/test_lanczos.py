"""Lanczos, power iteration, SLQ and Hutchinson (lanczos.py) on explicit symmetric matrices whose
spectrum torch.linalg.eigvalsh gives exactly."""

from __future__ import annotations

import math

import pytest
import torch

from nnopt.plugins.analyzers.lanczos import (broadened_density, hutchinson, lanczos, lanczos_process,
                                             power_iteration, slq, slq_trace)

CPU = torch.device("cpu")
F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def spectrum_matrix(eigs, seed=0):
    """Q diag(eigs) Qᵀ for a random orthogonal Q."""
    eigs = torch.as_tensor(eigs, dtype=F64)
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=gen(seed), dtype=F64))
    return q @ torch.diag(eigs) @ q.T


def counted(a):
    calls = []

    def mv(v):
        calls.append(1)
        return a @ v
    return mv, calls


def wishart_like(d=200, seed=0):
    """A Hessian-like spectrum: a bulk around 0 of both signs plus a few large outliers."""
    g = gen(seed)
    bulk = 0.1 * torch.randn(d - 4, generator=g, dtype=F64)
    return spectrum_matrix(torch.cat([torch.tensor([50.0, 20.0, 10.0, -3.0], dtype=F64), bulk]), seed)


@pytest.mark.parametrize("which", ["top", "bottom", "both"])
def test_lanczos_extreme_eigenvalues_match_eigvalsh(which):
    a = wishart_like()
    exact = torch.linalg.eigvalsh(a)
    mv, calls = counted(a)
    r = lanczos(mv, 200, k=3, which=which, tol=1e-10, max_matvecs=200, generator=gen(1), dtype=F64, device=CPU)
    expected = ([float(v) for v in exact.flip(0)[:3]] if which != "bottom" else []) + \
               ([float(v) for v in exact[:3]] if which != "top" else [])
    assert r.values == pytest.approx(expected, rel=1e-9)
    assert all(r.converged) and r.n_matvecs == len(calls) < 200
    assert r.which == (["top"] * 3 if which != "bottom" else []) + (["bottom"] * 3 if which != "top" else [])
    for value, res in zip(r.values, r.residuals):  # stopped on the residual bound, which bounds the error
        assert res <= 1e-10 * abs(value)
        assert float((exact - value).abs().min()) <= res + 1e-12


def test_the_residual_bound_is_a_true_error_bound_at_a_loose_tolerance():
    a = spectrum_matrix(torch.linspace(1.0, 2.0, 300).tolist(), seed=3)  # no gap: slow convergence
    exact = torch.linalg.eigvalsh(a)
    r = lanczos(lambda v: a @ v, 300, k=1, tol=1e-3, max_matvecs=300, generator=gen(), dtype=F64, device=CPU)
    assert r.converged == [True] and r.residuals[0] <= 1e-3 * r.values[0]
    assert abs(r.values[0] - float(exact[-1])) <= r.residuals[0]


def test_the_budget_is_respected_and_reported_as_not_converged():
    a = spectrum_matrix(torch.linspace(1.0, 2.0, 300).tolist(), seed=3)
    mv, calls = counted(a)
    r = lanczos(mv, 300, k=2, tol=1e-12, max_matvecs=7, generator=gen(), dtype=F64, device=CPU)
    assert len(calls) == 7 == r.n_matvecs and r.converged == [False, False]
    assert all(res > 1e-12 * abs(v) for v, res in zip(r.values, r.residuals))


def test_a_few_distinct_eigenvalues_break_down_early_and_exactly():
    """Three distinct eigenvalues: the Krylov space of a generic start is 3-dimensional, so
    after 3 steps β ≈ 0 and the Ritz values are exact (and distinct: one Krylov space holds one
    copy of a repeated eigenvalue — the documented limitation of single-vector Lanczos)."""
    a = spectrum_matrix([4.0] * 10 + [1.0] * 10 + [-2.0] * 10, seed=4)
    r = lanczos(lambda v: a @ v, 30, k=3, which="top", tol=1e-8, max_matvecs=30, generator=gen(), dtype=F64, device=CPU)
    assert r.values == pytest.approx([4.0, 1.0, -2.0], rel=1e-10) and all(r.converged) and r.n_matvecs == 3
    alphas, betas, q = lanczos_process(lambda v: a @ v, torch.ones(30, dtype=F64), 10)
    assert len(alphas) == 3 and betas[-1] == 0.0  # no generator: the process ends at the breakdown
    assert torch.allclose(q @ q.T, torch.eye(3, dtype=F64), atol=1e-12)


def test_full_reorthogonalization_keeps_the_basis_orthonormal():
    a = wishart_like(seed=5)
    _, _, q = lanczos_process(lambda v: a @ v, torch.randn(200, generator=gen(), dtype=F64), 120)
    assert torch.allclose(q @ q.T, torch.eye(q.shape[0], dtype=F64), atol=1e-12)


def test_ritz_vectors_are_eigenvectors():
    a = wishart_like()
    r = lanczos(lambda v: a @ v, 200, k=2, tol=1e-10, max_matvecs=200, generator=gen(), dtype=F64, device=CPU, vectors=True)
    for j, value in enumerate(r.values):
        y = r.vectors[:, j]
        assert float(torch.linalg.vector_norm(a @ y - value * y)) <= 1e-8


def test_power_iteration_with_deflation_finds_the_dominant_values_and_needs_more_products():
    a = wishart_like()
    exact = torch.linalg.eigvalsh(a)
    mv, calls = counted(a)
    # (a deflated value's residual cannot go below the error of the eigenvectors deflated before it)
    r = power_iteration(mv, 200, k=3, tol=1e-6, max_matvecs=600, generator=gen(), dtype=F64, device=CPU)
    assert r.values == pytest.approx([50.0, 20.0, 10.0], rel=1e-6) and all(r.converged) and r.n_matvecs == len(calls)
    assert float((exact - r.values[0]).abs().min()) <= r.residuals[0]
    fast = lanczos(lambda v: a @ v, 200, k=3, tol=1e-6, max_matvecs=200, generator=gen(), dtype=F64, device=CPU)
    assert fast.n_matvecs < r.n_matvecs
    starved = power_iteration(mv, 200, k=3, tol=1e-6, max_matvecs=5, generator=gen(), dtype=F64, device=CPU)
    assert starved.n_matvecs == 5 and starved.converged == [False]


def test_hutchinson_is_unbiased_within_four_standard_errors():
    a = wishart_like()
    trace, se, samples = hutchinson(lambda v: a @ v, 200, probes=600, generator=gen(7), dtype=F64, device=CPU)
    assert len(samples) == 600 and se > 0
    assert abs(trace - float(a.trace())) <= 4 * se
    # the standard error is the right size: Var(zᵀAz) = 2(‖A‖_F² − Σ A_ii²)
    var = 2 * (float((a * a).sum()) - float((a.diagonal() ** 2).sum()))
    assert se == pytest.approx(math.sqrt(var / 600), rel=0.2)
    diag = torch.diag(torch.arange(1.0, 11.0, dtype=F64))  # a diagonal matrix: zᵀAz = tr A for every z
    t, s, _ = hutchinson(lambda v: diag @ v, 10, probes=5, generator=gen(), dtype=F64, device=CPU)
    assert t == pytest.approx(55.0) and s == pytest.approx(0.0, abs=1e-12)


def test_slq_quadrature_is_exact_for_low_moments_and_its_density_integrates_to_one():
    a = wishart_like()
    exact = torch.linalg.eigvalsh(a)
    quads = slq(lambda v: a @ v, 200, probes=12, steps=40, generator=gen(2), dtype=F64, device=CPU)
    for q in quads:
        assert sum(q.weights) == pytest.approx(1.0, abs=1e-12) and q.matvecs == 40
    # m-point Gauss quadrature is exact for polynomials of degree ≤ 2m − 1: the moments vᵀAᵏv
    g = gen(2)
    v = torch.randint(0, 2, (200,), generator=g, dtype=torch.int64).to(F64) * 2 - 1
    v = v / v.norm()
    q0 = quads[0]
    for k in (1, 2, 5):
        assert sum(w * t ** k for w, t in zip(q0.weights, q0.nodes)) == pytest.approx(float(v @ torch.linalg.matrix_power(a, k) @ v), rel=1e-8)
    trace, se = slq_trace(quads, 200)
    assert abs(trace - float(exact.sum())) <= 4 * se
    lo, hi = float(exact[0]) - 1, float(exact[-1]) + 1
    grid = [lo + (hi - lo) * i / 3999 for i in range(4000)]
    density = broadened_density(quads, grid, sigma=0.05)
    assert float(torch.trapezoid(torch.tensor(density), torch.tensor(grid))) == pytest.approx(1.0, abs=1e-6)
    # the outliers are resolved: every probe has nodes at 50, 20, 10 and −3
    for q in quads:
        for lam in (50.0, 20.0, 10.0, -3.0):
            assert min(abs(t - lam) for t in q.nodes) < 1e-6
    # mass of the bulk near 0 ≈ 196/200, of the outlier at 50 ≈ 1/200 (statistically)
    bulk = sum(w for q in quads for w, t in zip(q.weights, q.nodes) if abs(t) < 1.0) / len(quads)
    assert bulk == pytest.approx(196 / 200, abs=0.03)
