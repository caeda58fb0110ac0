"""Curvature against the step: the sharpness an optimizer is stable under, and the sharpness.

On a quadratic L(θ) = ½ θᵀHθ every first-order method with constant hyper-parameters is a
linear recursion in each eigen-direction of H (eigenvalue λ), and it converges exactly when
the roots of its characteristic polynomial lie inside the unit circle. That gives, for each
optimizer, the largest λ it is stable under at learning rate η (survey §5.1, §5.3, §5.4):

- gradient descent θ ← θ − η∇L: |1 − ηλ| < 1, i.e. λ < 2/η (the "edge of stability" value
  2/η of Cohen et al. 2021, which full-batch training drives λ_max up to);
- heavy ball θ_{t+1} = θ_t − η∇L + β(θ_t − θ_{t−1}) (Polyak 1964): λ < 2(1+β)/η;
- Nesterov's momentum (Sutskever et al. 2013's form): λ < (2+2β)/((1+2β)η);
- Adam-like methods with first-moment decay β₁, whose step is θ ← θ − η P⁻¹ m̂ with a slowly
  varying diagonal preconditioner P = √v̂ + ε: the *preconditioned* sharpness
  λ_max(P⁻¹H) < (2+2β₁)/((1−β₁)η), 38/η at β₁ = 0.9 (Cohen et al. 2022, "Adaptive gradient
  methods at the edge of stability": the EMA m = β₁m + (1−β₁)g is heavy ball with step
  η(1−β₁)).

``top_eigenvalue`` measures λ_max(H) (or λ_max(P^{-1/2} H P^{-1/2}), the same spectrum as
P⁻¹H) of the mean loss on a batch by Lanczos (``analyzers.lanczos``) over Hessian–vector
products (``analyzers.hvp.CurvatureOperator``: double backprop through ``functional_call``),
and ``adam_preconditioner`` reads P from a torch Adam/AdamW's state. The diagnose stage
compares the two (``lr_above_curvature``).
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

#: optimizers with plain gradient steps (no momentum unless ``momentum`` > 0)
_SGD_LIKE = {"sgd", "gd", "momentum", "nesterov"}
#: Adam's family: a first-moment EMA with β₁ over a diagonal second-moment preconditioner
_ADAM_LIKE = {"adam", "adamw", "nadam", "radam", "amsgrad", "adamax", "soap"}
#: optimizers whose update is not a linear recursion on a quadratic (sign steps, trust ratios,
#: curvature solves, SAM's normalized ascent step): a β in their params does not make them Adam
_NO_RULE = {"lion", "lamb", "lars", "sam", "lbfgs", "kfac", "hessian_free", "natural_gradient", "shampoo", "muon",
            "barzilai_borwein", "coordinate_descent", "svrg", "entropy_sgd", "schedule_free", "adadelta",
            "adafactor"}


@functools.lru_cache(maxsize=1)
def _registry() -> Any:
    from nnopt.core.registry import Registry

    return Registry()  # one scan of the entry points per process (a fresh one costs ~0.1 s)


def _with_defaults(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` completed with the component's defaults (a pipeline writes only what it
    changes: ``adam`` with ``{lr: 0.01}`` still has β₁ = 0.9); the params as given when the
    component cannot be loaded or does not validate them."""
    try:
        cls = _registry().load("optimizers", name)[0]
        return {**cls.Params.model_validate(dict(params)).model_dump(), **params}
    except Exception:  # noqa: BLE001 - a bridged or unknown optimizer: use what was written
        return dict(params)


def _beta1(params: dict[str, Any]) -> float | None:
    if params.get("betas") is not None:
        return float(list(params["betas"])[0])
    if params.get("beta1") is not None:
        return float(params["beta1"])
    return None


def stability_threshold(optimizer_name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The largest sharpness λ the optimizer's step is stable under on a quadratic (module
    docstring; survey §5.1, §5.3, §5.4): GD/SGD λ < 2/η; heavy ball β λ < 2(1+β)/η (Polyak
    1964; with dampening τ, as ``momentum``'s ``form: average`` τ = β, the gradient enters
    times (1−τ) and the bound is 2(1+β)/((1−τ)η)); Nesterov λ < (2+2β)/((1+2β)η); Adam-like
    with β₁ the preconditioned λ(P⁻¹H) < (2+2β₁)/((1−β₁)η) (Cohen et al. 2022); RMSprop and
    Adagrad (no β₁) the preconditioned 2(1+μ)/η and 2/η.

    ``params`` are the optimizer component's (``lr``, ``momentum``, ``dampening``,
    ``nesterov``, ``form``, ``betas`` / ``beta1``); missing ones take the component's
    defaults. Returns ``{"threshold", "lr", "rule", "preconditioned", "momentum"}``;
    ``threshold`` is None (with the reason in ``rule``) for optimizers without such a rule.
    """
    name = optimizer_name.strip().lower()
    params = _with_defaults(name, dict(params or {}))
    lr = params.get("lr")
    out: dict[str, Any] = {"threshold": None, "lr": float(lr) if lr is not None else None,
                           "rule": f"no quadratic stability rule known for {name}", "preconditioned": False,
                           "momentum": None}
    if name in _NO_RULE:
        return out
    if lr is None or not float(lr) > 0:
        out["rule"] = f"{name}: no positive learning rate in its params"
        return out
    eta = float(lr)
    beta1 = _beta1(params)
    if name in _ADAM_LIKE or (beta1 is not None and name not in _SGD_LIKE):
        b = 0.9 if beta1 is None else beta1
        out.update(threshold=(2 + 2 * b) / ((1 - b) * eta), preconditioned=True, momentum=b,
                   rule=f"λ_max(P⁻¹H) < (2+2β₁)/((1−β₁)η) (Adam-like, β₁={b:g}; Cohen et al. 2022)")
        return out
    if name in ("rmsprop", "adagrad"):
        mu = float(params.get("momentum") or 0.0)
        out.update(threshold=2 * (1 + mu) / eta, preconditioned=True, momentum=mu,
                   rule=f"λ_max(P⁻¹H) < 2(1+μ)/η ({name}: preconditioned heavy ball, μ={mu:g})")
        return out
    if name in _SGD_LIKE:
        beta = float(params.get("momentum") or 0.0)
        if name == "nesterov" or (params.get("nesterov") and beta > 0):
            b = beta if beta > 0 else 0.9
            out.update(threshold=(2 + 2 * b) / ((1 + 2 * b) * eta), momentum=b,
                       rule=f"λ_max < (2+2β)/((1+2β)η) (Nesterov momentum, β={b:g})")
            return out
        if beta > 0:
            # the "average" form m = βm + (1−β)g is torch's dampening τ = β
            tau = float(params.get("dampening") or 0.0)
            if name == "momentum" and params.get("form", "average") == "average":
                tau = beta
            out.update(threshold=2 * (1 + beta) / ((1 - tau) * eta), momentum=beta,
                       rule=(f"λ_max < 2(1+β)/η (heavy ball, β={beta:g}; Polyak 1964)" if tau == 0 else
                             f"λ_max < 2(1+β)/((1−τ)η) (heavy ball, β={beta:g}, dampening τ={tau:g})"))
            return out
        out.update(threshold=2.0 / eta, momentum=0.0, rule="λ_max < 2/η (gradient descent)")
        return out
    return out


def _flat_diagonal(names: list[str], numels: list[int], preconditioner: dict[str, "torch.Tensor"],
                   dtype: "torch.dtype", device: "torch.device") -> tuple["torch.Tensor", list[str]]:
    """P^{-1/2} flattened in the operator's parameter order; parameters missing from
    ``preconditioner`` get P = 1 (listed in the second value)."""
    import torch

    parts, missing = [], []
    for n, k in zip(names, numels):
        p = preconditioner.get(n)
        if p is None:
            missing.append(n)
            parts.append(torch.ones(k, dtype=dtype, device=device))
        else:
            parts.append(p.detach().reshape(-1).to(device=device, dtype=dtype).rsqrt())
    return torch.cat(parts), missing


def top_eigenvalue(model: "nn.Module", loss_fn: Callable[..., "torch.Tensor"], x: "torch.Tensor", y: "torch.Tensor",
                   generator: "torch.Generator", preconditioner: dict[str, "torch.Tensor"] | None = None,
                   tol: float = 1e-3, max_matvecs: int = 60, dtype: "torch.dtype | None" = None) -> dict[str, Any]:
    """λ_max of the Hessian H = ∇²L of the mean loss L(θ) = (1/n) Σ ℓ(f(x_i; θ), y_i) on (x, y)
    by Lanczos with full reorthogonalization (``analyzers.lanczos.lanczos``; stopped when the
    Ritz residual bound is ≤ tol·λ), over Hessian–vector products (Pearlmutter 1994, through
    ``analyzers.hvp.CurvatureOperator``). With a diagonal ``preconditioner`` P (per-parameter
    tensors keyed by name, e.g. Adam's √v̂ + ε) it is λ_max(P^{-1/2} H P^{-1/2}), which has the
    spectrum of P⁻¹H, the matrix Adam's step sees (Cohen et al. 2022; survey §5.4).

    Every module is in eval mode while measuring (dropout off, BatchNorm on its running
    statistics: L is then a fixed function of θ) and gets its mode back after. The products
    are in float64 on the CPU (cheap there: the cast is of a copy, the model is unchanged),
    the model's dtype elsewhere, unless ``dtype`` says. Returns ``{"lambda_max", "matvecs",
    "preconditioned", "seconds", "residual", "converged"}`` (plus ``"unpreconditioned"``, the
    parameters the preconditioner lacked, where any).
    """
    import torch

    from nnopt.plugins.analyzers.hvp import CurvatureOperator, analysis_mode
    from nnopt.plugins.analyzers.lanczos import lanczos

    t0 = time.perf_counter()
    device = next(model.parameters()).device
    if dtype is None:
        dtype = torch.float64 if device.type == "cpu" else None
    n = int(x.shape[0])
    with analysis_mode(model, "eval", x, max(n, 1)):
        op = CurvatureOperator(model, loss_fn, x, y, "hessian", batch_size=max(n, 1), dtype=dtype)
        missing: list[str] = []
        if preconditioner is not None:
            d, missing = _flat_diagonal(op.names, op.numels, preconditioner, op.dtype, op.device)
            matvec = lambda v: d * op.matvec(d * v)  # noqa: E731 - D H D, D = P^{-1/2}
        else:
            matvec = op.matvec
        try:
            pairs = lanczos(matvec, op.dim, k=1, which="top", tol=tol, max_matvecs=max_matvecs,
                            generator=generator, dtype=op.dtype, device=op.device)
        finally:
            op.release()
    out: dict[str, Any] = {"lambda_max": float(pairs.values[0]), "matvecs": int(pairs.n_matvecs),
                           "preconditioned": preconditioner is not None, "seconds": time.perf_counter() - t0,
                           "residual": float(pairs.residuals[0]), "converged": bool(pairs.converged[0])}
    if missing:
        out["unpreconditioned"] = missing
    return out


def adam_preconditioner(optimizer: "torch.optim.Optimizer", model: "nn.Module") -> dict[str, "torch.Tensor"] | None:
    """Adam's diagonal preconditioner P = √v̂_t + ε, v̂_t = v_t/(1 − β₂^t) (Kingma & Ba 2015;
    survey §5.4, eq. (23)), from a torch Adam/AdamW state (``exp_avg_sq``, or
    ``max_exp_avg_sq`` with amsgrad, and ``step``), keyed by the model's parameter names.

    Parameters in none of the optimizer's groups are left out (they do not train); None when
    a parameter the optimizer trains has no such state yet (before the first step, or an
    optimizer that is not Adam-like).
    """

    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        group = group_of.get(id(p))
        if group is None:
            continue
        state = optimizer.state.get(p, {})
        v = state.get("max_exp_avg_sq") if group.get("amsgrad") else None
        v = state.get("exp_avg_sq") if v is None else v
        step = state.get("step")
        if v is None or step is None or "betas" not in group:
            return None
        t = float(step)
        if t <= 0:
            return None
        beta2 = float(group["betas"][1])
        correction = 1.0 - beta2 ** t
        out[name] = (v.detach() / correction).sqrt() + float(group.get("eps", 1e-8))
    return out or None
