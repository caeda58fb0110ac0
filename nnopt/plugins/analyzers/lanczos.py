"""Spectral estimates of a symmetric operator known only through v ↦ A v.

Pure linear algebra (no model here): the curvature analyzers hand these a ``matvec`` from
``hvp.CurvatureOperator``. Every random vector is drawn from the given CPU generator.

- ``lanczos``: extreme eigenvalues by the Lanczos process with full reorthogonalization
  (Golub & Van Loan, "Matrix Computations", §10.1; Parlett, "The Symmetric Eigenvalue
  Problem", §13), stopped on the residual bound of each wanted Ritz pair.
- ``power_iteration``: the dominant eigenvalues one after another, each with the found
  eigenvectors projected out (deflation; the method of PyHessian, Yao et al. 2020).
- ``slq``: stochastic Lanczos quadrature of the spectral density (Golub & Meurant 1994;
  Lin, Saad & Yang 2016; Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019).
- ``hutchinson``: Hutchinson's trace estimator with its standard error (Hutchinson 1989).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal

if TYPE_CHECKING:  # pragma: no cover
    import torch

MatVec = Callable[["torch.Tensor"], "torch.Tensor"]
Which = Literal["top", "bottom", "both"]


@dataclass
class Eigenpairs:
    """Eigenvalue estimates, each with its residual bound and whether it met the tolerance.

    ``values`` lists the top ones in descending order, then (``which: both``) the bottom ones
    in ascending order; ``residuals[i]`` bounds |λ − values[i]| for some eigenvalue λ of A.
    """

    values: list[float]
    residuals: list[float]
    converged: list[bool]
    n_matvecs: int
    which: list[str] = field(default_factory=list)  # "top" / "bottom" per value
    vectors: "torch.Tensor | None" = None  # dim × len(values), where asked for


def random_vector(dim: int, generator: "torch.Generator", dtype: "torch.dtype", device: "torch.device",
                  kind: str = "gaussian") -> "torch.Tensor":
    """A Gaussian (or Rademacher ±1) vector, drawn on the CPU from ``generator``."""
    import torch

    if kind == "rademacher":
        v = torch.randint(0, 2, (dim,), generator=generator, dtype=torch.int64).to(torch.float64).mul_(2).sub_(1)
    else:
        v = torch.randn(dim, generator=generator, dtype=torch.float64)
    return v.to(device=device, dtype=dtype)


def _tridiagonal_eigh(alphas: list[float], betas: list[float]) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric tridiagonal T, in float64."""
    import torch

    m = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(betas[: m - 1], dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigh(t)


def _wanted(theta: "torch.Tensor", k: int, which: str) -> tuple[list[int], list[str]]:
    """Indices of the wanted Ritz values (theta ascending): the k largest descending, and/or
    the k smallest ascending (without repeating one index when the two overlap)."""
    m = int(theta.shape[0])
    top = list(range(m - 1, max(m - 1 - k, -1), -1)) if which in ("top", "both") else []
    bottom = [i for i in range(min(k, m)) if i not in top] if which in ("bottom", "both") else []
    return top + bottom, ["top"] * len(top) + ["bottom"] * len(bottom)


def lanczos_process(matvec: MatVec, v0: "torch.Tensor", steps: int,
                    stop: Callable[[list[float], list[float], float], bool] | None = None,
                    generator: "torch.Generator | None" = None) -> tuple[list[float], list[float], "torch.Tensor"]:
    """Up to ``steps`` Lanczos steps from v0 with full reorthogonalization.

    q_1 = v0/‖v0‖; w = A q_j − β_{j−1} q_{j−1}; α_j = q_jᵀ w; w ← w − α_j q_j, then w is
    orthogonalized against every q_1..q_j twice (classical Gram–Schmidt twice: the basis stays
    orthogonal to working precision, so no spurious copies of converged Ritz values appear);
    β_j = ‖w‖, q_{j+1} = w/β_j. T = tridiag(β, α, β) = QᵀAQ. After step j, ``stop(α, β, β_j)``
    may end the process. A breakdown (β_j ≈ 0: the Krylov space is invariant, its Ritz pairs
    exact) continues, where ``generator`` is given, from a random vector orthogonal to Q with
    a zero coupling (T block diagonal); without one it ends there.
    Returns α (length m), β (length m: the last is β_m, the residual coupling) and Q (m × d).
    """
    import torch

    dim = int(v0.shape[0])
    steps = min(steps, dim)
    basis = torch.zeros(steps, dim, dtype=v0.dtype, device=v0.device)
    alphas: list[float] = []
    betas: list[float] = []
    q = v0 / torch.linalg.vector_norm(v0)
    scale = 0.0
    for j in range(steps):
        basis[j] = q
        w = matvec(q).to(q.dtype)
        alpha = float(torch.dot(q, w))
        w = w - alpha * q
        if j > 0 and betas[-1] != 0.0:
            w = w - betas[-1] * basis[j - 1]
        active = basis[: j + 1]
        for _ in range(2):
            w = w - active.T @ (active @ w)
        beta = float(torch.linalg.vector_norm(w))
        alphas.append(alpha)
        scale = max(scale, abs(alpha), beta)
        breakdown = beta <= 64 * torch.finfo(q.dtype).eps * max(scale, 1e-300)
        betas.append(0.0 if breakdown else beta)
        if stop is not None and stop(alphas, betas, betas[-1]):
            break
        if j + 1 >= steps:
            break
        if breakdown:
            if generator is None:
                break
            w = random_vector(dim, generator, q.dtype, q.device)
            for _ in range(2):
                w = w - active.T @ (active @ w)
        q = w / torch.linalg.vector_norm(w)
    m = len(alphas)
    return alphas, betas, basis[:m]


def lanczos(matvec: MatVec, dim: int, *, k: int = 1, which: Which = "top", tol: float = 1e-3,
            max_matvecs: int = 100, generator: "torch.Generator", dtype: "torch.dtype",
            device: "torch.device", vectors: bool = False) -> Eigenpairs:
    """The ``k`` largest and/or smallest eigenvalues of A by Lanczos with full reorthogonalization.

    After every step m the Ritz values θ_i of T_m (= eigenvalues of QᵀAQ) and their residuals
    ‖A y_i − θ_i y_i‖ = |β_m · s_{m,i}| (s_i the eigenvector of T_m, s_{m,i} its last entry;
    exact in exact arithmetic, Parlett §13.1) are computed; since A is symmetric some
    eigenvalue λ satisfies |λ − θ_i| ≤ |β_m s_{m,i}| (and ≤ residual²/gap). The process stops
    when every wanted pair meets |β_m s_{m,i}| ≤ tol·|θ_i| — a bound on the relative error,
    never a step-to-step change — or after ``max_matvecs`` products, or when the Krylov space
    is all of R^d (d steps: every value exact). The start vector is Gaussian, from
    ``generator``. Like every single-vector Krylov method it sees one copy of a repeated
    eigenvalue: a Krylov space from one start vector holds one eigenvector per distinct
    eigenvalue, so the values reported are distinct eigenvalues (each within its residual),
    and multiplicities are not resolved (block Lanczos would be needed).
    """
    k = max(1, min(k, dim))
    needed = k * (2 if which == "both" else 1)

    def converged(alphas: list[float], betas: list[float], beta: float) -> bool:
        if len(alphas) < min(needed, dim):
            return False
        theta, s = _tridiagonal_eigh(alphas, betas)
        idx, _ = _wanted(theta, k, which)
        return all(abs(beta * float(s[-1, i])) <= tol * abs(float(theta[i])) for i in idx)

    v0 = random_vector(dim, generator, dtype, device)
    alphas, betas, basis = lanczos_process(matvec, v0, min(max_matvecs, dim), converged, generator)
    theta, s = _tridiagonal_eigh(alphas, betas)
    idx, kinds = _wanted(theta, k, which)
    beta = betas[-1]
    residuals = [abs(beta * float(s[-1, i])) for i in idx]
    values = [float(theta[i]) for i in idx]
    ok = [r <= tol * abs(v) for r, v in zip(residuals, values)]
    vecs = None
    if vectors:
        vecs = basis.T @ s[:, idx].to(basis.dtype)
    return Eigenpairs(values, residuals, ok, len(alphas), kinds, vecs)


def power_iteration(matvec: MatVec, dim: int, *, k: int = 1, tol: float = 1e-3, max_matvecs: int = 100,
                    generator: "torch.Generator", dtype: "torch.dtype", device: "torch.device") -> Eigenpairs:
    """The ``k`` eigenvalues of largest magnitude by power iteration with deflation.

    For the i-th value: v ← A v / ‖A v‖ with v kept orthogonal to the eigenvectors u_1..u_{i−1}
    already found (Gram–Schmidt projection, PyHessian's deflation); λ = vᵀAv. PyHessian
    stops when λ changes by less than a relative tolerance between steps, which says nothing
    of the error; here each value stops on its residual ‖P(A v) − λ v‖ ≤ tol·|λ|, P = I − UUᵀ
    the projection off the found vectors (for the first value P = I and the residual bounds
    |λ − λ_true| as for Lanczos; for later ones it is the residual of the deflated operator
    PAP, whose eigenvalues differ from A's by the error of the deflated vectors — measuring
    it with A itself would stall at that error), or when ``max_matvecs`` products (all k
    together) are spent. Convergence is geometric with ratio |λ_{i+1}/λ_i|, so a small gap
    costs many products (Lanczos needs about the square root as many).
    """
    import torch

    k = max(1, min(k, dim))
    found: list[torch.Tensor] = []
    values: list[float] = []
    residuals: list[float] = []
    ok: list[bool] = []
    used = 0

    def deflate(w: "torch.Tensor") -> "torch.Tensor":
        for u in found:
            w = w - torch.dot(u, w) * u
        return w

    for _ in range(k):
        v = deflate(random_vector(dim, generator, dtype, device))
        v = v / torch.linalg.vector_norm(v)
        lam, res, conv = math.nan, math.inf, False
        while used < max_matvecs:
            w = matvec(v).to(dtype)
            used += 1
            lam = float(torch.dot(v, w))
            w = deflate(w)
            res = float(torch.linalg.vector_norm(w - lam * v))
            if res <= tol * abs(lam):
                conv = True
                break
            norm = float(torch.linalg.vector_norm(w))
            if norm == 0.0:
                break
            v = w / norm
        values.append(lam)
        residuals.append(res)
        ok.append(conv)
        found.append(v)
        if used >= max_matvecs and not conv:
            break
    return Eigenpairs(values, residuals, ok, used, ["top"] * len(values))


@dataclass
class Quadrature:
    """One SLQ probe: Gauss quadrature nodes θ_j and weights τ_j (Σ τ_j = 1)."""

    nodes: list[float]
    weights: list[float]
    matvecs: int


def slq(matvec: MatVec, dim: int, *, probes: int, steps: int, generator: "torch.Generator",
        dtype: "torch.dtype", device: "torch.device") -> list[Quadrature]:
    """Stochastic Lanczos quadrature: for each probe v (Rademacher, normalized), ``steps``
    Lanczos steps give T_m = S diag(θ) Sᵀ, and the m-point Gauss quadrature of the spectral
    measure seen from v: vᵀ g(A) v ≈ Σ_j τ_j g(θ_j), τ_j = (s_{1j})². Averaged over probes,
    Σ τ_j δ(t − θ_j) estimates the spectral density (1/d) Σ_i δ(t − λ_i) (Ubaru et al. 2017,
    Ghorbani et al. 2019). The extreme nodes converge to the extreme eigenvalues first, so
    isolated outliers appear as nodes with weight ≈ 1/d.
    """
    out = []
    for _ in range(probes):
        v0 = random_vector(dim, generator, dtype, device, "rademacher")
        alphas, betas, _ = lanczos_process(matvec, v0, steps)  # a breakdown ends the probe: exact quadrature
        theta, s = _tridiagonal_eigh(alphas, betas)
        out.append(Quadrature([float(t) for t in theta], [float(w) for w in s[0, :] ** 2], len(alphas)))
    return out


def broadened_density(quadratures: list[Quadrature], grid: list[float], sigma: float) -> list[float]:
    """φ(t) = (1/P) Σ_p Σ_j τ_pj · N(t; θ_pj, σ²): the SLQ measure convolved with a Gaussian
    of standard deviation ``sigma`` (absolute), on ``grid``; it integrates to 1 over R."""
    import torch

    nodes = torch.tensor([t for q in quadratures for t in q.nodes], dtype=torch.float64)
    weights = torch.tensor([w for q in quadratures for w in q.weights], dtype=torch.float64) / len(quadratures)
    t = torch.tensor(grid, dtype=torch.float64)
    z = (t[:, None] - nodes[None, :]) / sigma
    phi = (weights[None, :] * torch.exp(-0.5 * z * z)).sum(1) / (sigma * math.sqrt(2 * math.pi))
    return [float(v) for v in phi]


def slq_trace(quadratures: list[Quadrature], dim: int) -> tuple[float, float]:
    """tr A ≈ d · mean_p Σ_j τ_pj θ_pj (each term is zᵀAz for the Rademacher z = √d·v: Hutchinson),
    and its standard error over the probes."""
    samples = [dim * sum(w * t for w, t in zip(q.weights, q.nodes)) for q in quadratures]
    return _mean_se(samples)


def hutchinson(matvec: MatVec, dim: int, *, probes: int, generator: "torch.Generator", dtype: "torch.dtype",
               device: "torch.device") -> tuple[float, float, list[float]]:
    """Hutchinson's estimator tr A = E[zᵀ A z] for Rademacher z (E zzᵀ = I), averaged over
    ``probes`` draws: the mean, its standard error s/√P (s the sample standard deviation;
    NaN for one probe) and the samples. Its variance is 2(‖A‖_F² − Σ A_ii²) per probe, the
    least of any i.i.d. probe distribution."""
    import torch

    samples = []
    for _ in range(probes):
        z = random_vector(dim, generator, dtype, device, "rademacher")
        samples.append(float(torch.dot(z, matvec(z).to(dtype))))
    mean, se = _mean_se(samples)
    return mean, se, samples


def _mean_se(samples: list[float]) -> tuple[float, float]:
    n = len(samples)
    mean = sum(samples) / n
    if n < 2:
        return mean, math.nan
    var = sum((s - mean) ** 2 for s in samples) / (n - 1)
    return mean, math.sqrt(var / n)
