"""Shared pieces of the second-order methods: curvature-vector products, CG, output Hessians.

The batch loss is L(θ) = (1/n) Σ_i ℓ_i(f_θ(x_i)), with ℓ_i(z) = loss_fn(z[None], y_i[None])
(true of every mean-reduced loss here: cross-entropy, and MSE, whose mean over n·k elements is
the mean over examples of the per-example mean over k). With J = ∂f_θ(X)/∂θ the Jacobian of the
batch's outputs and H = ∇²_z L the Hessian of the batch loss in the outputs:

- Gauss–Newton: G v = Jᵀ H J v (Schraudolph 2002; Martens 2010), computed as a
  Jacobian-vector product (``torch.func.jvp``), an output-space Hessian-vector product, and a
  vector-Jacobian product (``torch.func.vjp``) — never forming J. For softmax cross-entropy and
  squared error (losses that are the negative log-likelihood of an exponential family in its
  natural parameter z) G is the true Fisher of the model's predictive distribution (Martens
  2014, §9.2); for torch's mean-reduced MSE that is the Fisher of N(z, k/2·I).
- empirical Fisher: F̂ v = (1/n) Σ_i g_i (g_iᵀ v), g_i = ∇_θ ℓ_i, with the per-example
  gradients from ``torch.func.vmap(torch.func.grad(...))``, formed once per step.

Curvature products need the same function at every call: layers that draw randomness in the
forward pass (dropout in training mode) are refused, and BatchNorm layers in training mode
use their batch statistics without updating their running averages during the products.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, jvp, vjp, vmap

from nnopt.core.errors import StageError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- flat vectors
def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    out, start = [], 0
    for t in like:
        out.append(vector[start : start + t.numel()].view_as(t))
        start += t.numel()
    return tuple(out)


# --------------------------------------------------------------------------- conjugate gradient
@dataclass
class CGResult:
    """CG's answer: ``x``, the iterations run, the final residual norm ‖b − A x‖, and the
    iterates kept (``(i, x_i)`` for the requested iterations, always including the last)."""

    x: torch.Tensor
    iterations: int
    residual_norm: float
    iterates: list[tuple[int, torch.Tensor]] = field(default_factory=list)


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, x0: torch.Tensor | None = None,
    max_iters: int = 50, tol: float = 1e-10, keep: Callable[[int], bool] = lambda i: False,
) -> CGResult:
    """Solve A x = b for symmetric positive (semi)definite A given as ``matvec`` (Hestenes &
    Stiefel 1952): r_0 = b − A x_0, p_0 = r_0; α_i = r_iᵀr_i / p_iᵀA p_i, x_{i+1} = x_i + α_i p_i,
    r_{i+1} = r_i − α_i A p_i, β_i = r_{i+1}ᵀr_{i+1} / r_iᵀr_i, p_{i+1} = r_{i+1} + β_i p_i.

    Stops after ``max_iters`` iterations, when ‖r‖ ≤ tol·‖b‖, or on a direction of
    non-positive curvature (pᵀAp ≤ 0, where A is not positive definite: the last x is kept,
    as in truncated Newton methods). ``keep(i)`` says which iterates x_i to return as well.
    """
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b.clone() if x0 is None else b - matvec(x)
    p = r.clone()
    rr = r.dot(r)
    threshold = tol * float(b.norm())
    iterates: list[tuple[int, torch.Tensor]] = []
    i = 0
    while i < max_iters and float(rr.sqrt()) > threshold:
        Ap = matvec(p)
        curvature = p.dot(Ap)
        if curvature <= 0:
            break
        alpha = rr / curvature
        x = x + alpha * p
        r = r - alpha * Ap
        rr_next = r.dot(r)
        p = r + (rr_next / rr) * p
        rr = rr_next
        i += 1
        if keep(i) and i < max_iters:
            iterates.append((i, x))
    if not iterates or iterates[-1][0] != i:
        iterates.append((i, x))
    return CGResult(x, i, float(rr.sqrt()), iterates)


# --------------------------------------------------------------------------- the batch function
def check_deterministic(model: nn.Module, what: str) -> None:
    """Curvature products evaluate the forward pass many times per step and must see one
    function: refuse dropout in training mode."""
    for name, module in model.named_modules():
        if module.training and isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            raise StageError(f"{what}: layer '{name}' ({type(module).__name__}, p={module.p}) draws a new mask on "
                             "every forward pass, so the curvature products of one step would be of different "
                             "functions; use a model without dropout")


@contextlib.contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[None]:
    """Training-mode BatchNorm normalizes by the batch's statistics and updates its running
    averages in place. The curvature products call the forward pass many times and through
    ``torch.func`` transforms, which cannot write into those buffers: hide the running averages
    for the duration (the layer then normalizes by batch statistics, the same function) and
    restore them after."""
    hidden = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training and module.track_running_stats:
            hidden.append((module, module.running_mean, module.running_var, module.num_batches_tracked))
            module.running_mean = module.running_var = module.num_batches_tracked = None
    try:
        yield
    finally:
        for module, mean, var, count in hidden:
            module.running_mean, module.running_var, module.num_batches_tracked = mean, var, count


def has_batch_coupling(model: nn.Module) -> str | None:
    """The name of a layer that mixes examples of a batch (training-mode BatchNorm), or None."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            return name or type(module).__name__
    return None


@dataclass
class FirstGradient:
    """The batch loss at θ and, when the step goes on, the trainable parameters with their
    gradient g flattened (``params`` empty: nothing to precondition, or a non-finite loss)."""

    loss: torch.Tensor
    params: list[torch.Tensor]
    g: torch.Tensor | None


def first_gradient(loop: Any, xb: torch.Tensor, yb: torch.Tensor, method: str) -> FirstGradient:
    """Forward, backward and the ``after_backward`` hooks at θ: what every curvature step
    (natural gradient, Hessian-free) starts from before its CG solve.

    A non-finite loss stops there: the loop reports the divergence, and curvature of NaNs
    means nothing. The model must be deterministic (``check_deterministic``): the curvature
    products re-run it and must see the same function."""
    opt, model = loop.optimizer, loop.model
    opt.zero_grad(set_to_none=True)
    with loop.forward():
        loss = loop.loss_fn(model(xb), yb)
    if not torch.isfinite(loss):
        return FirstGradient(loss.detach(), [], None)
    loss.backward()
    for hook in loop.hooks.after_backward:
        hook(loop)
    params = [p for p in opt.parameters() if p.grad is not None]
    if not params:
        return FirstGradient(loss.detach(), [], None)
    check_deterministic(model, method)
    return FirstGradient(loss.detach(), params, flatten([p.grad for p in params]))


class BatchFunction:
    """The outputs and loss of ``model`` on one batch as functions of ``params`` (the optimizer's
    parameters; the model's other parameters and its buffers are held fixed)."""

    def __init__(self, model: nn.Module, params: Sequence[torch.Tensor], loss_fn: LossFn,
                 xb: torch.Tensor, yb: torch.Tensor):
        ids = {id(p): name for name, p in model.named_parameters()}
        missing = [p for p in params if id(p) not in ids]
        if missing:
            raise ValueError(f"{len(missing)} optimizer parameter(s) are not parameters of the model")
        self.model, self.loss_fn, self.xb, self.yb = model, loss_fn, xb, yb
        self.names = [ids[id(p)] for p in params]
        self.primals = tuple(p.detach() for p in params)
        chosen = set(self.names)
        self.fixed = {n: p.detach() for n, p in model.named_parameters() if n not in chosen}

    def outputs(self, *theta: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        values = {**self.fixed, **dict(zip(self.names, theta))}
        return functional_call(self.model, values, (self.xb if x is None else x,), strict=False)

    def loss(self, *theta: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.outputs(*theta), self.yb)

    def loss_at(self, step: torch.Tensor) -> float:
        """L(θ + step) on the batch, without gradients."""
        with torch.no_grad(), frozen_running_stats(self.model):
            theta = tuple(p + s for p, s in zip(self.primals, unflatten(step, self.primals)))
            return float(self.loss(*theta))

    # ------------------------------------------------------------------ Gauss–Newton
    def gauss_newton(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """v ↦ Jᵀ H J v for flat vectors v (module docstring). The outputs' vjp is built once;
        each product is one jvp (a forward pass with tangents) and one reuse of it."""
        with frozen_running_stats(self.model):
            z, pullback = vjp(self.outputs, *self.primals)
        # H u as reverse-over-reverse (H is symmetric): forward mode through F.mse_loss's
        # backward fails in torch ("ZeroTensors are immutable")
        _, output_hvp = vjp(grad(lambda out: self.loss_fn(out, self.yb)), z.detach())

        def product(v: torch.Tensor) -> torch.Tensor:
            with frozen_running_stats(self.model):
                _, Jv = jvp(self.outputs, self.primals, unflatten(v, self.primals))
            return flatten(pullback(output_hvp(Jv)[0]))

        return product

    # ------------------------------------------------------------------ empirical Fisher
    def per_example_grads(self, max_elements: int) -> torch.Tensor:
        """The n × P matrix of per-example gradients g_i = ∇_θ ℓ_i."""
        n, size = int(self.xb.shape[0]), sum(p.numel() for p in self.primals)
        if n * size > max_elements:
            raise StageError(f"the empirical Fisher needs {n} per-example gradients of {size} parameters "
                             f"({n * size} numbers), more than the cap of {max_elements}; use a smaller batch, "
                             "fisher: true, or raise the cap")
        coupled = has_batch_coupling(self.model)
        if coupled is not None:
            raise StageError(f"layer '{coupled}' normalizes by batch statistics, so a per-example gradient (for the "
                             "empirical Fisher) is not defined; use fisher: true")

        def example_loss(theta: tuple[torch.Tensor, ...], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.loss_fn(self.outputs(*theta, x=x[None]), y[None])

        per_example = vmap(grad(example_loss), in_dims=(None, 0, 0))(self.primals, self.xb, self.yb)
        return torch.cat([g.reshape(n, -1) for g in per_example], dim=1)

    def empirical_fisher(self, max_elements: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """v ↦ (1/n) Σ_i g_i (g_iᵀ v)."""
        grads = self.per_example_grads(max_elements)
        n = grads.shape[0]
        return lambda v: grads.T @ (grads @ v) / n


# --------------------------------------------------------------------------- output Hessians
def output_hessian_sqrt(loss_fn: LossFn, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example square roots S_i (n × k × k, symmetric) of the output Hessians
    H_i = ∇²_z ℓ_i(z_i), so that S_i S_iᵀ = H_i (negative eigenvalues, from rounding or a
    non-convex loss, are clipped to 0). For softmax cross-entropy H_i = diag(p_i) − p_i p_iᵀ,
    p_i = softmax(z_i); for torch's MSE H_i = (2/k) I."""
    flat = z.detach().reshape(z.shape[0], -1)

    def example_loss(zi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return loss_fn(zi.view(1, *z.shape[1:]), yi[None])

    # reverse over reverse, as in ``gauss_newton``; eigh in float64, as float32 fails on the
    # near-singular H of a confident softmax
    H = vmap(jacrev(jacrev(example_loss)))(flat, y).double()
    H = (H + H.transpose(1, 2)) / 2
    eigenvalues, vectors = torch.linalg.eigh(H)
    S = vectors @ torch.diag_embed(eigenvalues.clamp_min(0).sqrt()) @ vectors.transpose(1, 2)
    return S.to(z.dtype)


# --------------------------------------------------------------------------- applying a direction
class DirectionStep(torch.optim.Optimizer):
    """θ ← θ − η Δ, with the direction Δ that the method's step rule wrote into ``p.grad``.

    The solve of the second-order methods happens in their step rule (it needs the batch);
    this optimizer holds their state (warm starts, damping) so that ``state_dict`` carries it,
    and applies the step with each group's learning rate, so schedules and ``lr_scale`` work.
    """

    def __init__(self, params, **defaults):
        super().__init__(params, defaults)

    def parameters(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.requires_grad]

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - documented on the class
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])
        return loss
