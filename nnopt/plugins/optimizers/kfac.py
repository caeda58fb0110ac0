"""K-FAC: Kronecker-factored approximate curvature (Martens & Grosse 2015; Grosse & Martens 2016)."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Iterator, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from nnopt.core.component import Params
from nnopt.core.errors import StageError
from nnopt.core.kinds import Optimizer
from nnopt.core.loop import StepRule

from ._curvature import output_hessian_sqrt


class KFACParams(Params):
    lr: float = Field(0.05, gt=0.0, description="learning rate η (scaled by the schedule)")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="heavy-ball momentum μ on the preconditioned update; 0: none")
    damping: float = Field(0.03, gt=0.0, description="Tikhonov damping λ, split over the factors with the π correction")
    stat_decay: float = Field(0.95, ge=0.0, lt=1.0, description="ε of the running averages of the factors A and G")
    inv_every: int = Field(10, ge=1, description="steps between recomputations of the damped factor inverses")
    fisher: Literal["true", "empirical"] = Field(
        "true",
        description="G from output gradients sampled with the covariance of the model's predictive distribution "
        "(`true`, one extra backward pass per step) or from the loss gradients of the batch (`empirical`)",
    )
    kl_clip: float | None = Field(
        None, gt=0.0,
        description="KL clipping κ (Ba et al. 2017): the preconditioned update is scaled by min(1, √(κ / Σ η² ΔᵀΓ)); "
        "None: no clipping",
    )
    weight_decay: float = Field(0.0, ge=0.0, description="L2 coefficient added to the gradient as λ_wd·θ before preconditioning")
    max_factor_dim: int = Field(
        4096, ge=1,
        description="memory cap: a layer whose Kronecker factor would be larger than this on a side (A: inputs·kernel "
        "+ 1, G: outputs) is refused with a message, as is an output larger than this for `fisher: true`",
    )


# --------------------------------------------------------------------------- layers and capture
@dataclass
class KroneckerLayer:
    """A Linear or Conv2d layer preconditioned by K-FAC: its weight (out × fan_in) and bias."""

    name: str
    module: nn.Module
    weight: nn.Parameter
    bias: nn.Parameter | None

    @property
    def a_dim(self) -> int:
        return self.weight[0].numel() + (self.bias is not None)

    @property
    def g_dim(self) -> int:
        return int(self.weight.shape[0])

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """The rows a (one per example and position) with W a = s: inputs, or conv patches."""
        m = self.module
        if isinstance(m, nn.Conv2d):
            padding = (0, 0) if m.padding == "valid" else m.padding
            patches = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=padding, stride=m.stride)
            a = patches.transpose(1, 2).reshape(-1, patches.shape[1])
        else:
            a = x.reshape(-1, x.shape[-1])
        if self.bias is not None:
            a = torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)
        return a

    def output_grads(self, g: torch.Tensor) -> torch.Tensor:
        """Gradients w.r.t. the pre-activations s, one row per example and position."""
        if isinstance(self.module, nn.Conv2d):
            return g.permute(0, 2, 3, 1).reshape(-1, g.shape[1])
        return g.reshape(-1, g.shape[-1])


def _supported(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"
            and (not isinstance(module.padding, str) or module.padding == "valid"))


@dataclass
class _Record:
    inputs: list[torch.Tensor] = field(default_factory=list)
    grads: dict[int, torch.Tensor] = field(default_factory=dict)


class _RecordGrad(torch.autograd.Function):
    """Identity whose backward stores the incoming gradient (while the capture is recording).

    A clone, not a view: the next layer may write into its input (``ReLU(inplace=True)``),
    which would otherwise rewrite what is differentiated (and torch forbids it on a hook's view)."""

    @staticmethod
    def forward(ctx, output, record, index, capture):  # noqa: D102
        ctx.record, ctx.index, ctx.capture = record, index, capture
        return output.clone()

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        if ctx.capture.recording:
            ctx.record.grads[ctx.index] = grad_output.detach()
        return grad_output, None, None, None


class _Capture:
    """Forward hooks on the layers for one step: inputs on the way forward, pre-activation
    gradients on a backward pass made while ``recording``."""

    def __init__(self, layers: list[KroneckerLayer]):
        self.layers = layers
        self.records = {id(layer.module): _Record() for layer in layers}
        self.recording = False

    @contextlib.contextmanager
    def hooks(self) -> Iterator["_Capture"]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            record = self.records[id(module)]
            record.inputs.append(inputs[0].detach())
            return _RecordGrad.apply(output, record, len(record.inputs) - 1, self)

        handles = [layer.module.register_forward_hook(hook) for layer in self.layers]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def pairs(self, layer: KroneckerLayer) -> tuple[torch.Tensor, torch.Tensor] | None:
        record = self.records[id(layer.module)]
        if not record.inputs or len(record.grads) != len(record.inputs):
            return None  # the layer was not on the path to the loss this step
        a = torch.cat([layer.activations(x) for x in record.inputs])
        g = torch.cat([layer.output_grads(record.grads[i]) for i in range(len(record.inputs))])
        return a, g


# --------------------------------------------------------------------------- the optimizer
class KFACOptimizer(torch.optim.Optimizer):
    """The K-FAC update of the ``KFAC`` component (its docstring); factors live in ``state``."""

    def __init__(self, params: Iterable[Any], *, lr: float, momentum: float, weight_decay: float, damping: float,
                 stat_decay: float, inv_every: int, kl_clip: float | None, max_factor_dim: int):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))
        self.damping, self.stat_decay, self.inv_every = damping, stat_decay, inv_every
        self.kl_clip, self.max_factor_dim = kl_clip, max_factor_dim
        self.layers: list[KroneckerLayer] = []
        self.model: nn.Module | None = None
        self._group_of: dict[int, dict[str, Any]] = {}

    # ------------------------------------------------------------------ layers
    def attach(self, model: nn.Module) -> list[KroneckerLayer]:
        """Find the Linear/Conv2d layers of ``model`` whose weight this optimizer updates."""
        owned = {id(p) for group in self.param_groups for p in group["params"]}
        layers = []
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if not _supported(module) or not isinstance(weight, nn.Parameter) or id(weight) not in owned:
                continue
            bias = module.bias if module.bias is not None and id(module.bias) in owned else None
            layer = KroneckerLayer(name or type(module).__name__, module, weight, bias)
            for side, dim in (("A (inputs × kernel + bias)", layer.a_dim), ("G (outputs)", layer.g_dim)):
                if dim > self.max_factor_dim:
                    raise StageError(f"kfac: layer '{layer.name}' would need a {dim}×{dim} Kronecker factor {side}, "
                                     f"over max_factor_dim = {self.max_factor_dim}; raise max_factor_dim or use a "
                                     "narrower layer")
            layers.append(layer)
        self.layers, self.model = layers, model
        return layers

    def _group(self, p: torch.Tensor) -> dict[str, Any]:
        return self._group_of[id(p)]

    # ------------------------------------------------------------------ statistics
    @torch.no_grad()
    def update_factors(self, capture: _Capture, n: int, grad_scale: float) -> None:
        """A ← ε_k A + (1 − ε_k) Â, G ← ε_k G + (1 − ε_k) Ĝ with ε_k = min(1 − 1/k, stat_decay)
        for the k-th update, where Â = (1/(n·T)) Σ_{i,t} a_{it} a_{itᵀ} (mean over examples and
        positions) and Ĝ = (1/n) Σ_{i,t} g_{it} g_{itᵀ} (per-example gradients g = grad_scale^½ ×
        the recorded ones), so that A ⊗ G ≈ E[vec(∇_W ℓ) vec(∇_W ℓ)ᵀ] (Grosse & Martens 2016)."""
        for layer in self.layers:
            pair = capture.pairs(layer)
            if pair is None:
                continue
            a, g = pair
            A_hat = a.T @ a / a.shape[0]
            G_hat = g.T @ g * (grad_scale / n)
            state = self.state[layer.weight]
            k = state.get("factor_updates", 0) + 1
            decay = min(1.0 - 1.0 / k, self.stat_decay)
            if k == 1:
                state["A"], state["G"] = A_hat, G_hat
            else:
                state["A"].mul_(decay).add_(A_hat, alpha=1 - decay)
                state["G"].mul_(decay).add_(G_hat, alpha=1 - decay)
            state["factor_updates"] = k

    def damped_inverses(self, A: torch.Tensor, G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """((A + π√λ I)⁻¹, (G + (√λ/π) I)⁻¹), π = √((tr A / dim A) / (tr G / dim G)) (Martens & Grosse §6.3)."""
        mean_a, mean_g = float(A.diagonal().mean()), float(G.diagonal().mean())
        pi = math.sqrt(mean_a / mean_g) if mean_a > 0 and mean_g > 0 else 1.0
        root = math.sqrt(self.damping)
        eye_a = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
        eye_g = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
        return torch.linalg.inv(A + pi * root * eye_a), torch.linalg.inv(G + root / pi * eye_g)

    # ------------------------------------------------------------------ the update
    def _decayed_grad(self, p: torch.Tensor) -> torch.Tensor:
        wd = self._group(p)["weight_decay"]
        return p.grad + wd * p if wd else p.grad

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - the component's docstring
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # rebuilt every step: load_state_dict replaces the group dicts (a cache would keep stale lr)
        self._group_of = {id(q): group for group in self.param_groups for q in group["params"]}
        directions: dict[int, torch.Tensor] = {}
        in_layers: set[int] = set()
        quadratic = 0.0  # Σ η² ⟨Δ, Γ⟩ over the preconditioned layers, for KL clipping
        for layer in self.layers:
            w, b = layer.weight, layer.bias
            in_layers.update({id(w)} | ({id(b)} if b is not None else set()))
            if w.grad is None:
                continue
            state = self.state[layer.weight]
            if "A" not in state:
                raise RuntimeError(f"kfac: layer '{layer.name}' has no curvature statistics; its steps must be made "
                                   "by the KFAC step rule (KFAC.step_rule())")
            step = state.get("step", 0)
            if step % self.inv_every == 0 or "A_inv" not in state:
                state["A_inv"], state["G_inv"] = self.damped_inverses(state["A"], state["G"])
            state["step"] = step + 1
            gamma = self._decayed_grad(w).reshape(w.shape[0], -1)
            if b is not None:
                gb = self._decayed_grad(b) if b.grad is not None else torch.zeros_like(b)
                gamma = torch.cat([gamma, gb.reshape(-1, 1)], dim=1)
            delta = state["G_inv"] @ gamma @ state["A_inv"]
            quadratic += self._group(w)["lr"] ** 2 * float((delta * gamma).sum())
            if b is not None:
                directions[id(w)], directions[id(b)] = delta[:, :-1].reshape(w.shape), delta[:, -1].reshape(b.shape)
            else:
                directions[id(w)] = delta.reshape(w.shape)
        scale = 1.0
        if self.kl_clip is not None and quadratic > 0:
            scale = min(1.0, math.sqrt(self.kl_clip / quadratic))

        for group in self.param_groups:
            lr, mu = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if id(p) in in_layers:
                    if id(p) not in directions:
                        continue
                    d = directions[id(p)] * scale if scale != 1.0 else directions[id(p)]
                else:  # not in a supported layer: plain SGD
                    d = self._decayed_grad(p)
                if mu:
                    state = self.state[p]
                    if "momentum_buffer" in state:
                        d = state["momentum_buffer"].mul_(mu).add_(d)
                    else:
                        d = state["momentum_buffer"] = d.clone()
                p.add_(d, alpha=-lr)
        return loss


# --------------------------------------------------------------------------- the step
class KFACStep(StepRule):
    """Forward with the layers hooked, the backward pass(es) that give G, the factor update,
    then ``optimizer.step()``."""

    def __init__(self, params: KFACParams):
        self.params = params

    def step(self, loop: Any, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        opt, model = loop.optimizer, loop.model
        if opt.model is not model:
            opt.attach(model)
        opt.zero_grad(set_to_none=True)
        capture = _Capture(opt.layers)
        with capture.hooks():
            with loop.forward():
                z = model(xb)
                loss = loop.loss_fn(z, yb)
        if not torch.isfinite(loss):  # the loop reports the divergence; curvature of NaNs is meaningless
            return loss.detach()
        n = int(xb.shape[0])
        if self.params.fisher == "true":
            u = self.sampled_output_grads(loop.loss_fn, z, yb)
            weights = [layer.weight for layer in opt.layers]
            if weights:
                capture.recording = True
                torch.autograd.grad(z, weights, grad_outputs=u, retain_graph=True, allow_unused=True)
                capture.recording = False
            loss.backward()
            opt.update_factors(capture, n, grad_scale=1.0)
        else:
            capture.recording = True
            loss.backward()
            capture.recording = False
            opt.update_factors(capture, n, grad_scale=float(n) ** 2)  # hooks see ∇ of the mean: g_i / n
        for hook in loop.hooks.after_backward:
            hook(loop)
        opt.step()
        return loss.detach()

    def sampled_output_grads(self, loss_fn: Any, z: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """u_i = S_i ε_i with S_i S_iᵀ = ∇²_z ℓ_i and ε_i ∼ N(0, I) from torch's CPU generator
        (which every checkpoint saves): E[u_i u_iᵀ] = the output Fisher of example i."""
        k = z[0].numel()
        if k > self.params.max_factor_dim:
            raise StageError(f"kfac: fisher: true needs a {k}×{k} output Hessian per example, over max_factor_dim = "
                             f"{self.params.max_factor_dim}; use fisher: empirical or raise max_factor_dim")
        S = output_hessian_sqrt(loss_fn, z.detach(), yb)
        eps = torch.randn(z.shape[0], k, 1, dtype=S.dtype).to(S.device)
        return (S @ eps).reshape(z.shape)


class KFAC(Optimizer):
    """K-FAC (Martens & Grosse 2015), with the convolution factors of KFC (Grosse & Martens 2016).

    For each Linear and Conv2d layer with weight W (out × fan_in, the bias appended as a last
    column, and a 1 appended to its input a), the layer's Fisher block is approximated by
    A ⊗ G with

        A = E[a aᵀ]  over examples and (conv) spatial positions, the layer's inputs / patches,
        G = E_i[Σ_t g_it g_itᵀ], g = ∂ℓ_i/∂s the gradient of example i's loss w.r.t. the
            pre-activations s = W a (Σ_t over spatial positions; one term for Linear),

    kept as running averages (ε_k = min(1 − 1/k, ``stat_decay``) at the k-th update, so the
    first steps average what they have seen). Every ``inv_every`` steps the damped inverses
    are recomputed with Tikhonov damping λ split by the π correction (Martens & Grosse §6.3):

        (A + π√λ I)⁻¹,  (G + (√λ/π) I)⁻¹,   π = √((tr A / dim A) / (tr G / dim G)),

    and each step preconditions the gradient Γ = ∇_[W|b] L (+ weight decay) as

        Δ = (G + (√λ/π) I)⁻¹ Γ (A + π√λ I)⁻¹ = ((A + π√λ I) ⊗ (G + (√λ/π) I))⁻¹ vec Γ,

    optionally scaled by ν = min(1, √(κ / Σ_layers η² ⟨Δ, Γ⟩)) (KL clipping, ``kl_clip``; Ba
    et al. 2017), then heavy-ball momentum b ← μ b + Δ (the practical variant of Ba et al., not
    the paper's quadratic-model momentum) and θ ← θ − η b. Parameters outside a supported
    layer (normalization scales, Conv2d with groups or non-zero padding modes, parametrized
    weights) get plain SGD with the same momentum.

    ``fisher``: with ``true`` the gradients g come from an extra backward pass of sampled
    output gradients u_i = S_i ε_i, S_i S_iᵀ = ∇²_z ℓ_i, ε_i ∼ N(0, I) (one sample per
    example). E[u_i u_iᵀ] is the model's output Fisher: for softmax cross-entropy
    diag(p) − ppᵀ, the second moment of the gradient p − e_ŷ for a target ŷ ∼ softmax(z)
    drawn from the model (Martens & Grosse §5), and for squared error exactly the gradient of
    a target drawn from the model's Gaussian. With ``empirical`` the loss gradients of the
    batch's own targets are used (no extra pass; the empirical Fisher, a different matrix).

    State in ``state_dict``: per layer A, G, the damped inverses, the step and update counts,
    and the momentum buffers. Statistics are gathered by forward hooks installed only for the
    step's forward pass (so evaluation passes never touch them).
    """

    cache_version: ClassVar[int] = 1
    Params = KFACParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        p = self.params
        return KFACOptimizer(params, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay, damping=p.damping,
                             stat_decay=p.stat_decay, inv_every=p.inv_every, kl_clip=p.kl_clip,
                             max_factor_dim=p.max_factor_dim)

    def step_rule(self) -> StepRule:
        return KFACStep(self.params)

    def callbacks(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> list:
        optimizer.attach(model)  # refuses an oversized layer before the first step
        return []
