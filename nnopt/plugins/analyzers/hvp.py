"""Curvature–vector products of the mean loss over a dataset: Hessian, Gauss–Newton, Fisher.

The curvature analyzers (``hessian_*``, ``sharpness``) see the network only through
``CurvatureOperator.matvec``: v ↦ C v for the d × d curvature C of

    L(θ) = (1/N) Σ_{i=1..N} ℓ(f(x_i; θ), y_i)

over a fixed set of N examples (the whole split, or a seeded subset of it), accumulated in
batches b of n_b examples so that memory stays bounded by one batch:

    C v = Σ_b (n_b / N) C_b v,

where C_b is the curvature of the batch's mean loss L_b (batches of unequal size are
weighted by their size, so the result is the curvature of the mean over all N examples, not
the mean of per-batch means). The three curvatures (``curvature``):

- ``hessian``: H = ∇²L(θ). Hv by double backprop (Pearlmutter 1994): the gradient g(θ) is
  built with its graph, and Hv = ∂(gᵀv)/∂θ is its vector–Jacobian product with v.
- ``gauss_newton``: the generalized Gauss–Newton G = Jᵀ H_ℓ J (Schraudolph 2002; Martens
  2010), J = ∂f/∂θ the Jacobian of the outputs over the examples and H_ℓ = ∂²L/∂f² the
  Hessian of the loss in the outputs: Jv by a forward-mode product (``torch.func.jvp``),
  H_ℓ(Jv) by forward-over-reverse on the loss alone, Jᵀ(·) by a reverse-mode product
  (``torch.func.vjp``). G is H without the term Σ (∂ℓ/∂f)·∇²f, positive semi-definite for a
  convex loss; for a linear model under the square loss G = H exactly.
- ``fisher``: the empirical Fisher F = (1/N) Σ_i g_i g_iᵀ, g_i = ∇_θ ℓ(f(x_i; θ), y_i) the
  per-example gradients (``torch.func.vmap`` of ``torch.func.grad``): Fv = (1/N) Σ_i g_i (g_iᵀ v).
  It holds a batch's n_b × d gradients at once (memory n_b·d numbers).

For a single batch (N ≤ ``batch_size``) the work that does not depend on v is done once and
reused by every product: the gradient graph for ``hessian`` (each Hv is then one backward
pass through it), the reverse pass (J's transpose) for ``gauss_newton``, the
per-example gradients for ``fisher``. Several batches are recomputed per product, so memory
stays at one batch.

Normalization layers (``bn``, never a hidden mode switch): ``eval`` evaluates every module in
eval mode (BatchNorm uses its running statistics, dropout is off): L is then a sum over
examples and its curvature is the one above. ``recompute`` first re-estimates the running
statistics of every normalization layer that tracks them (a cumulative average over the
examples used, in train-mode forward passes without gradients, each batch's statistics
weighted by its size), then proceeds as ``eval``
with those statistics: the curvature of the eval-mode network whose statistics match the
weights under analysis (useful after weights were moved, averaged or interpolated). The
original statistics and every module's train/eval flag are restored afterwards.

Arithmetic is in ``precision`` (``float64`` on request: parameters, buffers and inputs are
cast, the module is not changed).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal

from pydantic import Field

from nnopt.core.component import Params
from nnopt.core.errors import StageError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from nnopt.core.kinds import AnalysisContext

Curvature = Literal["hessian", "gauss_newton", "fisher"]


class CurvatureParams(Params):
    """What every curvature analyzer's products are taken over."""

    curvature: Curvature = Field(
        "hessian", description="`hessian`: ∇²L; `gauss_newton`: Jᵀ H_ℓ J; `fisher`: the empirical Fisher (1/N) Σ g_i g_iᵀ"
    )
    split: Literal["train", "test", "batch"] = Field(
        "train", description="examples L is the mean over: a data split, or `batch` (the current mini-batch, while "
        "tracking during training)"
    )
    samples: int | None = Field(
        None, ge=1, description="at most this many examples of `split` (a seeded random subset, fixed for the whole "
        "analysis); None: all of them"
    )
    batch_size: int = Field(
        1024, ge=1, description="examples per batch when accumulating products (bounds memory; one batch ⇒ the "
        "graph is built once and reused)"
    )
    bn: Literal["eval", "recompute"] = Field(
        "eval", description="normalization layers: `eval` uses their running statistics; `recompute` re-estimates "
        "them over the examples used first (restored afterwards)"
    )
    precision: Literal["float32", "float64"] = Field(
        "float32", description="arithmetic: `float32` keeps the model's own dtype; `float64` casts parameters, buffers "
        "and inputs to float64"
    )


def select_examples(ctx: "AnalysisContext", p: CurvatureParams, who: str) -> tuple["torch.Tensor", "torch.Tensor"]:
    """The (x, y) the loss is averaged over: ``split`` (or the tracked mini-batch), then a
    seeded subset of ``samples`` examples drawn from the analyzer's generator."""
    import torch

    if p.split == "batch":
        if ctx.batch is None:
            raise StageError(f"{who}: split 'batch' is the current mini-batch, which exists only while tracking in a "
                             "train stage (use split: train or test in an analyze stage)")
        x, y = ctx.batch
    elif p.split == "test":
        x, y = ctx.data.x_test, ctx.data.y_test
    else:
        x, y = ctx.data.x_train, ctx.data.y_train
    n = int(x.shape[0])
    if n == 0:
        raise StageError(f"{who}: the {p.split} split is empty (use another split)")
    if p.samples is not None and p.samples < n:
        idx = torch.randperm(n, generator=ctx.generator)[: p.samples].to(x.device)
        x, y = x[idx], y[idx]
    return x, y


def normalization_layers(model: "nn.Module") -> list["nn.Module"]:
    """The modules keeping running statistics (BatchNorm, InstanceNorm with tracking)."""
    from torch import nn

    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]


@contextlib.contextmanager
def analysis_mode(model: "nn.Module", bn: str, x: "torch.Tensor", batch_size: int) -> Iterator[None]:
    """Every module in eval mode for the analysis, after re-estimating the running statistics
    over ``x`` when ``bn == 'recompute'``; the modules' flags and statistics are restored on exit."""
    import torch

    flags = [(m, m.training) for m in model.modules()]
    layers = normalization_layers(model)
    saved = [{k: v.detach().clone() for k, v in m.named_buffers(recurse=False)} for m in layers]
    momenta = [m.momentum for m in layers]
    try:
        if bn == "recompute" and layers:
            model.eval()
            for m in layers:
                m.reset_running_stats()
                m.train()
            n = int(x.shape[0])
            starts = list(range(0, n, batch_size))
            if len(starts) > 1 and n - starts[-1] == 1:
                starts.pop()  # a batch of one has no batch variance: fold it into the one before
            seen = 0
            with torch.no_grad():
                for i, start in enumerate(starts):
                    stop = starts[i + 1] if i + 1 < len(starts) else n
                    for m in layers:  # momentum n_b/(seen + n_b): the size-weighted mean of batch statistics
                        m.momentum = (stop - start) / (seen + stop - start)
                    model(x[start:stop])
                    seen += stop - start
        model.eval()
        yield
    finally:
        for m, momentum, buffers in zip(layers, momenta, saved):
            m.momentum = momentum
            if bn == "recompute":
                with torch.no_grad():
                    for k, v in buffers.items():
                        getattr(m, k).copy_(v)
        for m, training in flags:
            m.training = training


class CurvatureOperator:
    """v ↦ C v (module docstring) for the model's trainable parameters, flattened in
    ``named_parameters`` order into vectors of length ``dim``; counts its products in
    ``n_products``. Also the loss L(θ + δ) and its gradient, over the same examples."""

    def __init__(self, model: "nn.Module", loss_fn: Callable[..., "torch.Tensor"], x: "torch.Tensor",
                 y: "torch.Tensor", curvature: str = "hessian", batch_size: int = 1024,
                 dtype: "torch.dtype | None" = None):
        import torch

        self.model, self.loss_fn, self.curvature = model, loss_fn, curvature
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise StageError("the model has no trainable parameters: its curvature is empty")
        self.dtype = dtype or named[0][1].dtype
        self.device = named[0][1].device
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.numels = [p.numel() for _, p in named]
        self.dim = sum(self.numels)
        self.theta = torch.cat([p.detach().reshape(-1).to(self.dtype) for _, p in named])
        self.buffers = {n: (b.detach().to(self.dtype) if b.is_floating_point() else b.detach())
                        for n, b in model.named_buffers()}
        x = x.to(self.dtype) if x.is_floating_point() else x
        y = y.to(self.dtype) if y.is_floating_point() else y
        self.n = int(x.shape[0])
        self.batches = [(x[s : s + batch_size], y[s : s + batch_size]) for s in range(0, self.n, batch_size)]
        self.weights = [int(xb.shape[0]) / self.n for xb, _ in self.batches]
        self.n_products = 0
        self._cache: Any = None  # the v-independent work of a single batch, built on first use

    # ------------------------------------------------------------------ flat <-> named
    def unflatten(self, flat: "torch.Tensor") -> dict[str, "torch.Tensor"]:
        return {n: t.view(s) for n, t, s in zip(self.names, flat.split(self.numels), self.shapes)}

    def _forward(self, flat: "torch.Tensor", x: "torch.Tensor") -> "torch.Tensor":
        from torch.func import functional_call

        return functional_call(self.model, {**self.buffers, **self.unflatten(flat)}, (x,))

    def _batch_loss(self, flat: "torch.Tensor", x: "torch.Tensor", y: "torch.Tensor") -> "torch.Tensor":
        return self.loss_fn(self._forward(flat, x), y)

    def vector(self, v: "torch.Tensor") -> "torch.Tensor":
        return v.to(device=self.device, dtype=self.dtype)

    # ------------------------------------------------------------------ loss
    def loss(self, delta: "torch.Tensor | None" = None) -> float:
        """L(θ + δ), the size-weighted mean over the batches (δ = 0 when None)."""
        import torch

        flat = self.theta if delta is None else self.theta + self.vector(delta)
        with torch.no_grad():
            total = sum(w * self._batch_loss(flat, xb, yb).double() for w, (xb, yb) in zip(self.weights, self.batches))
        return float(total)

    def loss_and_grad(self, delta: "torch.Tensor | None" = None) -> tuple[float, "torch.Tensor"]:
        """L(θ + δ) and ∇L(θ + δ) (flat), size-weighted over the batches."""
        import torch

        flat = (self.theta if delta is None else self.theta + self.vector(delta)).detach().requires_grad_(True)
        total, grad = 0.0, torch.zeros_like(self.theta)
        for w, (xb, yb) in zip(self.weights, self.batches):
            loss = self._batch_loss(flat, xb, yb)
            (g,) = torch.autograd.grad(loss, flat)
            grad += w * g
            total += w * float(loss.detach())
        return total, grad

    # ------------------------------------------------------------------ products
    def matvec(self, v: "torch.Tensor") -> "torch.Tensor":
        """C v for a flat v (any device or dtype; the result is in the operator's)."""
        import torch

        v = self.vector(v)
        self.n_products += 1
        product = {"hessian": self._hessian, "gauss_newton": self._gauss_newton, "fisher": self._fisher}[self.curvature]
        if len(self.batches) == 1:
            return product(0, v, reuse=True).detach()
        out = torch.zeros_like(v)
        for b, w in enumerate(self.weights):
            out += w * product(b, v, reuse=False).detach()
        return out

    def _hessian(self, b: int, v: "torch.Tensor", reuse: bool) -> "torch.Tensor":
        import torch

        if reuse and self._cache is not None:
            flat, g = self._cache
        else:
            flat = self.theta.detach().clone().requires_grad_(True)
            (g,) = torch.autograd.grad(self._batch_loss(flat, *self.batches[b]), flat, create_graph=True)
            if reuse:
                self._cache = (flat, g)
        # H symmetric: Hv = (vᵀH)ᵀ, the vector–Jacobian product of g with v
        (hv,) = torch.autograd.grad(g, flat, grad_outputs=v, retain_graph=reuse)
        return hv

    def _gauss_newton(self, b: int, v: "torch.Tensor", reuse: bool) -> "torch.Tensor":
        import torch
        from torch.func import jvp, vjp

        xb, yb = self.batches[b]
        forward = lambda flat: self._forward(flat, xb)  # noqa: E731
        if reuse and self._cache is not None:
            vjp_fn = self._cache
        else:
            _, vjp_fn = vjp(forward, self.theta)
            if reuse:
                self._cache = vjp_fn
        out, jv = jvp(forward, (self.theta,), (v,))  # (a forward-mode pass is as cheap as a forward pass)
        # H_ℓ (Jv): double backprop on the loss as a function of the outputs alone (forward-mode
        # through losses such as mse_loss trips over torch's immutable zero tensors)
        o = out.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(self.loss_fn(o, yb), o, create_graph=True)
        (hjv,) = torch.autograd.grad(g, o, grad_outputs=jv.detach(), allow_unused=True)
        hjv = torch.zeros_like(o) if hjv is None else hjv  # a loss linear in its outputs: H_ℓ = 0
        (gv,) = vjp_fn(hjv)
        return gv

    def _fisher(self, b: int, v: "torch.Tensor", reuse: bool) -> "torch.Tensor":
        if reuse and self._cache is not None:
            grads = self._cache
        else:
            grads = self.per_example_grads(b)
            if reuse:
                self._cache = grads
        # F_b v with F_b = (1/n_b) Σ_i g_i g_iᵀ (the batch weight n_b/N makes it 1/N overall)
        return grads.T @ (grads @ v) / grads.shape[0]

    def per_example_grads(self, b: int) -> "torch.Tensor":
        """The n_b × d matrix of per-example gradients g_i = ∇ℓ(f(x_i; θ), y_i) of batch b."""
        import torch
        from torch.func import grad, vmap

        xb, yb = self.batches[b]

        def one(flat: "torch.Tensor", x: "torch.Tensor", y: "torch.Tensor") -> "torch.Tensor":
            return self._batch_loss(flat, x.unsqueeze(0), y.unsqueeze(0))

        with torch.no_grad():
            return vmap(grad(one), in_dims=(None, 0, 0))(self.theta, xb, yb)

    def release(self) -> None:
        """Drop the reused graph / gradients (their memory) now."""
        self._cache = None


@contextlib.contextmanager
def curvature_operator(ctx: "AnalysisContext", p: CurvatureParams, who: str) -> Iterator[CurvatureOperator]:
    """The operator of ``p`` over the examples ``p`` selects, with the model in analysis mode
    (``analysis_mode``) for as long as it is used."""
    import torch

    x, y = select_examples(ctx, p, who)
    dtype = torch.float64 if p.precision == "float64" else None
    with analysis_mode(ctx.model, p.bn, x, p.batch_size):
        op = CurvatureOperator(ctx.model, ctx.loss_fn, x, y, p.curvature, p.batch_size, dtype)
        try:
            yield op
        finally:
            op.release()
