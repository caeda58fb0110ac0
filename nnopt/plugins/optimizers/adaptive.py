"""Adaptive-step methods (survey §5.4): Adagrad, RMSprop, Adadelta, AdamW, AMSGrad, NAdam, RAdam,
Adamax and Adafactor — each the ``torch.optim`` class of that name, with its options.

Weight decay comes in two kinds, and each class says which it has:

- *coupled* (L2 regularization): λθ is added to the gradient, g_t = ∇F(θ_t) + λθ_t, so it
  passes through the method's preconditioner (divided by √v̂ in Adam-like methods);
- *decoupled* (Loshchilov & Hutter 2019): θ ← θ − η_t λ θ is applied to the weights
  directly, beside the adaptive step, so every weight decays at the same rate.

Kernels, measured per class on one CPU thread for a 64→256→256→10 MLP, ``optimizer.step()``
alone, µs per step, for-loop / foreach / fused: Adagrad 188 / 206 / 72, AdamW 410 / 414 /
147, Adam(amsgrad) as Adam 383 / 384 / 167, RMSprop 157 / 175 / —, Adadelta 321 / 326 / —,
NAdam 320 / 392 / —, RAdam 594 / 415 / —, Adamax 269 / 300 / —, Adafactor 595 / 625 / —.
So: the fused kernel where torch has one (CPU and CUDA), foreach for RAdam on the CPU, and
torch's own default elsewhere (for-loop on the CPU, foreach on CUDA). Over a whole training
step at batch 128 (``benchmarks/optimizer_step.py``) fused saved 8–25% (AdamW 3657 / 3557 /
2920 µs) and foreach RAdam 16%; the rest were within the run-to-run noise (~5%).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Iterable

import torch
from pydantic import Field

from nnopt.core.component import Params
from nnopt.core.kinds import Optimizer

from .fused import build_fused_if_supported

Beta = Annotated[float, Field(ge=0.0, lt=1.0)]


def _betas(default: tuple[float, float]) -> Any:
    return Field(list(default), min_length=2, max_length=2,
                 description="[β1, β2]: decay rates of the first and second moment averages, each in [0, 1)")


def _build(cls: type[torch.optim.Optimizer], params: Iterable[Any], device: torch.device, *, fused: bool = False,
           foreach_on: tuple[str, ...] = (), **options: Any) -> torch.optim.Optimizer:
    if "betas" in options:
        options["betas"] = tuple(options["betas"])  # written as a YAML list, torch takes a pair
    if fused:
        return build_fused_if_supported(cls, params, device, fused_on=("cpu", "cuda"), **options)
    if torch.device(device).type in foreach_on:
        options["foreach"] = True
    return cls(params, **options)


# --------------------------------------------------------------------------- Adagrad
class AdagradParams(Params):
    lr: float = Field(1e-2, gt=0.0, description="learning rate η (scaled by the schedule)")
    lr_decay: float = Field(0.0, ge=0.0, description="η_t = η / (1 + (t−1)·lr_decay)")
    weight_decay: float = Field(0.0, ge=0.0, description="coupled L2 coefficient λ: g ← g + λθ")
    initial_accumulator_value: float = Field(0.0, ge=0.0, description="G_0, the starting sum of squared gradients")
    eps: float = Field(1e-10, gt=0.0, description="ε added to √G in the denominator")


class Adagrad(Optimizer):
    """Adagrad (Duchi, Hazan & Singer 2011; survey §5.4, eq. (21)), ``torch.optim.Adagrad``.

    With g_t = ∇F(θ_t) + λθ_t (coupled decay), G_t = G_{t−1} + g_t ∘ g_t (G_0 =
    ``initial_accumulator_value``), η_t = η/(1 + (t−1)·lr_decay):
    θ_{t+1} = θ_t − η_t g_t / (√G_t + ε). Each coordinate's step shrinks with the sum of its
    squared gradients, so rarely-updated coordinates keep large steps.
    """

    cache_version: ClassVar[int] = 1
    Params = AdagradParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        return _build(torch.optim.Adagrad, params, device, fused=True, **self.params.model_dump())


# --------------------------------------------------------------------------- RMSprop
class RMSpropParams(Params):
    lr: float = Field(1e-2, gt=0.0, description="learning rate η (scaled by the schedule)")
    alpha: float = Field(0.99, ge=0.0, lt=1.0, description="decay ρ of the average of squared gradients")
    eps: float = Field(1e-8, gt=0.0, description="ε added to the root in the denominator")
    weight_decay: float = Field(0.0, ge=0.0, description="coupled L2 coefficient λ: g ← g + λθ")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="momentum μ on the preconditioned step (0: none)")
    centered: bool = Field(False, description="divide by the estimated std √(v − ḡ²) instead of the root mean square √v")


class RMSprop(Optimizer):
    """RMSprop (Tieleman & Hinton 2012; survey §5.4, eq. (22)), ``torch.optim.RMSprop``.

    With g_t = ∇F(θ_t) + λθ_t (coupled decay): v_t = ρ v_{t−1} + (1−ρ) g_t² (v_0 = 0);
    the denominator is d_t = √v_t + ε, or with ``centered`` d_t = √(v_t − ḡ_t²) + ε where
    ḡ_t = ρ ḡ_{t−1} + (1−ρ) g_t (Graves 2013). Without momentum θ_{t+1} = θ_t − η g_t/d_t;
    with momentum μ, b_t = μ b_{t−1} + g_t/d_t and θ_{t+1} = θ_t − η b_t.
    """

    cache_version: ClassVar[int] = 1
    Params = RMSpropParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        return _build(torch.optim.RMSprop, params, device, **self.params.model_dump())


# --------------------------------------------------------------------------- Adadelta
class AdadeltaParams(Params):
    lr: float = Field(1.0, gt=0.0, description="η scaling the step (Zeiler's method has none: 1.0)")
    rho: float = Field(0.9, ge=0.0, lt=1.0, description="decay ρ of both running averages")
    eps: float = Field(1e-6, gt=0.0, description="ε inside both roots (it also sets the first step's size)")
    weight_decay: float = Field(0.0, ge=0.0, description="coupled L2 coefficient λ: g ← g + λθ")


class Adadelta(Optimizer):
    """Adadelta (Zeiler 2012; survey §5.4), ``torch.optim.Adadelta``.

    With g_t = ∇F(θ_t) + λθ_t (coupled decay), v_0 = u_0 = 0:
    v_t = ρ v_{t−1} + (1−ρ) g_t², Δ_t = √(u_{t−1} + ε)/√(v_t + ε) · g_t,
    u_t = ρ u_{t−1} + (1−ρ) Δ_t², θ_{t+1} = θ_t − η Δ_t. The ratio of RMS of past updates to
    RMS of gradients gives the step units of θ, so no learning rate is needed (η = 1).
    """

    cache_version: ClassVar[int] = 1
    Params = AdadeltaParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        return _build(torch.optim.Adadelta, params, device, **self.params.model_dump())


# --------------------------------------------------------------------------- Adam family
class AdamWParams(Params):
    lr: float = Field(1e-3, gt=0.0, description="learning rate η (scaled by the schedule)")
    betas: list[Beta] = _betas((0.9, 0.999))
    eps: float = Field(1e-8, gt=0.0, description="ε added to √v̂ in the denominator")
    weight_decay: float = Field(1e-2, ge=0.0, description="decoupled decay λ: θ ← θ − ηλθ, outside the adaptive step")
    amsgrad: bool = Field(False, description="divide by the running maximum of v̂ (Reddi et al. 2018)")


class AdamW(Optimizer):
    """AdamW, Adam with decoupled weight decay (Loshchilov & Hutter 2019), ``torch.optim.AdamW``.

    With g_t = ∇F(θ_t) (the decay does *not* enter the gradient) and t = 1, 2, …:
    θ'_t = θ_t − η_t λ θ_t, m_t = β1 m_{t−1} + (1−β1) g_t, v_t = β2 v_{t−1} + (1−β2) g_t²,
    θ_{t+1} = θ'_t − η_t (m_t/(1−β1^t)) / (√(v_t/(1−β2^t)) + ε). The decay multiplies by the
    scheduled η_t, so it follows the schedule. ``amsgrad`` uses max(v_1, …, v_t) for v_t.
    """

    cache_version: ClassVar[int] = 1
    Params = AdamWParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        return _build(torch.optim.AdamW, params, device, fused=True, **self.params.model_dump())


class AMSGradParams(Params):
    lr: float = Field(1e-3, gt=0.0, description="learning rate α (scaled by the schedule)")
    betas: list[Beta] = _betas((0.9, 0.999))
    eps: float = Field(1e-8, gt=0.0, description="ε added to the root in the denominator")
    weight_decay: float = Field(0.0, ge=0.0, description="weight decay λ, coupled (g ← g + λθ) unless decoupled_weight_decay")
    decoupled_weight_decay: bool = Field(False, description="apply the decay as θ ← θ − ηλθ (AdamW's) instead of in the gradient")


class AMSGrad(Optimizer):
    """AMSGrad (Reddi, Kale & Kumar 2018; survey §5.4), ``torch.optim.Adam(amsgrad=True)``.

    Adam's recursion (m_t, v_t as in ``adam``) with the denominator's second moment replaced
    by its running maximum: v̂_t^max = max(v̂_{t−1}^max, v_t) and
    θ_{t+1} = θ_t − α_t (m_t/(1−β1^t)) / (√(v̂_t^max/(1−β2^t)) + ε). The effective step
    α_t/√v̂_t^max is then non-increasing (for non-increasing α_t), the condition Adam's
    convergence proof lacked: Reddi et al.'s online counterexample, where Adam converges to
    the worst point, is solved by AMSGrad. Weight decay is coupled (Adam) or decoupled
    (``decoupled_weight_decay``: ``torch.optim.AdamW(amsgrad=True)``).
    """

    cache_version: ClassVar[int] = 1
    Params = AMSGradParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        options = self.params.model_dump()
        cls = torch.optim.AdamW if options.pop("decoupled_weight_decay") else torch.optim.Adam
        return _build(cls, params, device, fused=True, amsgrad=True, **options)


class NAdamParams(Params):
    lr: float = Field(2e-3, gt=0.0, description="learning rate η (scaled by the schedule)")
    betas: list[Beta] = _betas((0.9, 0.999))
    eps: float = Field(1e-8, gt=0.0, description="ε added to √v̂ in the denominator")
    weight_decay: float = Field(0.0, ge=0.0, description="weight decay λ, coupled unless decoupled_weight_decay")
    momentum_decay: float = Field(4e-3, ge=0.0, description="ψ of the momentum schedule μ_t = β1(1 − ½·0.96^{tψ})")
    decoupled_weight_decay: bool = Field(False, description="apply the decay as θ ← θ − ηλθ (AdamW's) instead of in the gradient")


class NAdam(Optimizer):
    """NAdam, Adam with Nesterov momentum (Dozat 2016), ``torch.optim.NAdam``.

    With g_t = ∇F(θ_t) (+ λθ_t if coupled), μ_t = β1(1 − ½·0.96^{tψ}),
    m_t = β1 m_{t−1} + (1−β1) g_t, v_t = β2 v_{t−1} + (1−β2) g_t²:
    m̂_t = μ_{t+1} m_t/(1 − Π_{i≤t+1} μ_i) + (1−μ_t) g_t/(1 − Π_{i≤t} μ_i),
    θ_{t+1} = θ_t − η m̂_t/(√(v_t/(1−β2^t)) + ε): the first moment is taken one step ahead,
    as Nesterov's momentum looks ahead.
    """

    cache_version: ClassVar[int] = 1
    Params = NAdamParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        return _build(torch.optim.NAdam, params, device, **self.params.model_dump())


class RAdamParams(Params):
    lr: float = Field(1e-3, gt=0.0, description="learning rate η (scaled by the schedule)")
    betas: list[Beta] = _betas((0.9, 0.999))
    eps: float = Field(1e-8, gt=0.0, description="ε added to √v in the denominator")
    weight_decay: float = Field(0.0, ge=0.0, description="weight decay λ, coupled unless decoupled_weight_decay")
    decoupled_weight_decay: bool = Field(False, description="apply the decay as θ ← θ − ηλθ (AdamW's) instead of in the gradient")


class RAdam(Optimizer):
    """RAdam, rectified Adam (Liu et al. 2020), ``torch.optim.RAdam``.

    With m_t, v_t as in Adam, m̂_t = m_t/(1−β1^t), ρ_∞ = 2/(1−β2) − 1 and
    ρ_t = ρ_∞ − 2tβ2^t/(1−β2^t) (the length of the approximated simple moving average):
    if ρ_t > 5, θ_{t+1} = θ_t − η m̂_t · r_t · √(1−β2^t)/(√v_t + ε) with the rectification
    r_t = √((ρ_t−4)(ρ_t−2)ρ_∞ / ((ρ_∞−4)(ρ_∞−2)ρ_t)); otherwise (the first steps, where the
    variance of the adaptive rate is intractable) θ_{t+1} = θ_t − η m̂_t, plain momentum SGD
    — a warmup built into the method.
    """

    cache_version: ClassVar[int] = 1
    Params = RAdamParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        return _build(torch.optim.RAdam, params, device, foreach_on=("cpu",), **self.params.model_dump())


class AdamaxParams(Params):
    lr: float = Field(2e-3, gt=0.0, description="learning rate η (scaled by the schedule)")
    betas: list[Beta] = _betas((0.9, 0.999))
    eps: float = Field(1e-8, gt=0.0, description="ε added to |g| inside the running maximum")
    weight_decay: float = Field(0.0, ge=0.0, description="coupled L2 coefficient λ: g ← g + λθ")


class Adamax(Optimizer):
    """Adamax, Adam with the infinity norm (Kingma & Ba 2015, §7.1), ``torch.optim.Adamax``.

    With g_t = ∇F(θ_t) + λθ_t (coupled decay): m_t = β1 m_{t−1} + (1−β1) g_t,
    u_t = max(β2 u_{t−1}, |g_t| + ε) (the limit p → ∞ of Adam's L^p second moment),
    θ_{t+1} = θ_t − (η/(1−β1^t)) m_t/u_t. u_t needs no bias correction.
    """

    cache_version: ClassVar[int] = 1
    Params = AdamaxParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        return _build(torch.optim.Adamax, params, device, **self.params.model_dump())


# --------------------------------------------------------------------------- Adafactor
class AdafactorParams(Params):
    lr: float = Field(1e-2, gt=0.0, description="cap η on the relative step: ρ_t = min(η_t, 1/√t)")
    beta2_decay: float = Field(-0.8, le=0.0, description="c of the second-moment rate β2_t = 1 − t^c (c = 0: β2_t = 0)")
    eps1: float | None = Field(None, gt=0.0, description="ε1 floor of the second moment (None: the dtype's machine epsilon)")
    eps2: float = Field(1e-3, gt=0.0, description="ε2 floor of RMS(θ) in the relative step size")
    d: float = Field(1.0, gt=0.0, description="update clipping threshold: the update is divided by max(1, RMS(U)/d)")
    weight_decay: float = Field(0.0, ge=0.0, description="decoupled decay λ: θ ← θ − η_t λ θ")


class Adafactor(Optimizer):
    """Adafactor (Shazeer & Stern 2018), ``torch.optim.Adafactor``: Adam-like steps with a
    factored second moment, O(n + m) memory for an n×m matrix instead of O(nm), no momentum.

    With β̂_t = 1 − t^c (c = ``beta2_decay``), for a matrix gradient G_t (n×m):
    R_t = β̂_t R_{t−1} + (1−β̂_t) mean_cols(G_t²) (n×1), C_t = β̂_t C_{t−1} + (1−β̂_t)
    mean_rows(G_t²) (1×m), V̂_t = R_t C_t / mean(R_t) (the rank-1 estimate of E[G²]); for a
    vector, V̂_t is the plain average of g². Then U_t = G_t/√max(V̂_t, ε1²),
    α_t = max(ε2, RMS(θ_t)) · min(η_t, 1/√t) (a step relative to the weights' scale),
    θ_{t+1} = θ_t(1 − η_t λ) − α_t U_t / max(1, RMS(U_t)/d). Decay is decoupled.
    """

    cache_version: ClassVar[int] = 1
    Params = AdafactorParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        options = self.params.model_dump()
        options["eps"] = (options.pop("eps1"), options.pop("eps2"))
        return _build(torch.optim.Adafactor, params, device, **options)
