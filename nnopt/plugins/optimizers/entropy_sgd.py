"""Entropy-SGD (Chaudhari et al. 2017): SGD on the local entropy, by Langevin dynamics."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Literal

import torch
from pydantic import Field, model_validator

from nnopt.core.component import Params
from nnopt.core.kinds import Optimizer
from nnopt.core.loop import StepRule

from .coordinate_descent import SeededOptimizer

if TYPE_CHECKING:  # pragma: no cover
    from nnopt.core.loop import TrainLoop


class EntropySGDOptimizer(SeededOptimizer):
    """One outer Entropy-SGD step per ``step(closure)``; ``closure()`` must zero the gradients
    and return the loss with its gradient in ``.grad`` at the current weights. It is called L
    times, at the Langevin iterates x'; the weights end at the outer update of x. Returns the
    first call's loss (at x). The noise is drawn from the optimizer's generator (on ``device``),
    whose state is in ``state_dict``; the heavy-ball buffer is each parameter's state."""

    salt: ClassVar[int] = 0xE5D

    def __init__(self, params: Iterable[Any], lr: float = 1.0, L: int = 20, gamma: float = 0.03,  # noqa: N803
                 eta_inner: float = 0.1, noise: float = 1e-4, alpha: float = 0.75, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, seed: int | None = None,
                 device: torch.device | str = "cpu"):
        defaults = {"lr": lr, "L": L, "gamma": gamma, "eta_inner": eta_inner, "noise": noise, "alpha": alpha,
                    "momentum": momentum, "nesterov": nesterov, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        if len({g["L"] for g in self.param_groups}) > 1:
            raise ValueError("every param group takes the same number L of Langevin steps")
        self._init_generator(device, seed)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        if closure is None:
            raise RuntimeError("Entropy-SGD evaluates the gradient L times per step: pass a closure")
        if not self._seeded:
            self.seed(0)
        groups = self.param_groups
        x = {p: p.detach().clone() for g in groups for p in g["params"]}
        mu = {p: p.detach().clone() for g in groups for p in g["params"]}
        first = None
        for _ in range(groups[0]["L"]):
            with torch.enable_grad():
                loss = closure()
            if first is None:
                first = loss
            for g in groups:
                eta, gamma, eps, alpha, wd = g["eta_inner"], g["gamma"], g["noise"], g["alpha"], g["weight_decay"]
                for p in g["params"]:
                    if p.grad is None:
                        continue
                    # dx' = ∇f(x') + λx' − γ(x − x');  x' ← x' − η'dx' + √η' ε N(0, I)
                    dx = p.grad.add(p, alpha=wd) if wd else p.grad.clone()
                    dx.add_(x[p] - p, alpha=-gamma)
                    p.add_(dx, alpha=-eta)
                    if eps > 0:
                        z = torch.randn(p.shape, generator=self.generator, device=p.device, dtype=p.dtype)
                        p.add_(z, alpha=math.sqrt(eta) * eps)
                    mu[p].mul_(1.0 - alpha).add_(p, alpha=alpha)
        for g in groups:
            for p in g["params"]:
                p.copy_(x[p])
                d = (x[p] - mu[p]).mul_(g["gamma"])  # −∇(local entropy) at x
                if g["momentum"]:
                    st = self.state[p]
                    buf = st.get("momentum_buffer")
                    if buf is None:
                        buf = st["momentum_buffer"] = d.clone()
                    else:
                        buf.mul_(g["momentum"]).add_(d)
                    d = d.add(buf, alpha=g["momentum"]) if g["nesterov"] else buf
                p.add_(d, alpha=-g["lr"])
        return first


class EntropyStep(StepRule):
    """The closure of one outer step: Langevin step 1 uses the loop's batch; steps 2 … L use it
    again (``same``) or fresh batches of the loop's batch size drawn uniformly (without
    replacement within a batch) from the train split by the optimizer's generator (``sampled``)."""

    def __init__(self, inner_batches: str):
        self.sampled = inner_batches == "sampled"

    def step(self, loop: "TrainLoop", xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        opt: EntropySGDOptimizer = loop.optimizer
        opt.ensure_seeded(loop.ctx.seed)
        data, calls = loop.data, [0]

        def closure() -> torch.Tensor:
            x, y = xb, yb
            if self.sampled and calls[0] > 0:
                gen = opt.generator
                idx = torch.randperm(data.n_train, generator=gen, device=gen.device)[: loop.batch_size]
                idx = idx.to(data.x_train.device)
                x, y = data.x_train[idx], data.y_train[idx]
            calls[0] += 1
            opt.zero_grad(set_to_none=True)
            with loop.forward():
                loss = loop.loss_fn(loop.model(x), y)
            loss.backward()
            for hook in loop.hooks.after_backward:
                hook(loop)
            return loss

        return opt.step(closure).detach()


class EntropySGDParams(Params):
    lr: float = Field(1.0, gt=0.0, description="outer step η of x ← x − ηγ(x − μ) (scaled by the schedule)")
    L: int = Field(20, ge=1, description="Langevin steps (gradient evaluations) per outer step")  # noqa: N815
    gamma: float = Field(0.03, gt=0.0, description="coupling γ of x' to x: the scope of the local entropy (large γ: SGD)")
    eta_inner: float = Field(0.1, gt=0.0, description="Langevin step size η'")
    noise: float = Field(1e-4, ge=0.0, description="thermal noise ε: x' gets √η'·ε·N(0, I) per Langevin step (0: none)")
    alpha: float = Field(0.75, gt=0.0, le=1.0, description="weight α of the running average μ ← (1−α)μ + αx'")
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="heavy-ball momentum of the outer step (0: none)")
    nesterov: bool = Field(False, description="Nesterov momentum on the outer step (needs momentum > 0)")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 coefficient λ added to each Langevin gradient as λx'")
    inner_batches: Literal["sampled", "same"] = Field(
        "sampled",
        description="mini-batches of Langevin steps 2…L: sampled = fresh ones drawn by the optimizer's seeded "
        "generator (the paper's); same = the loop's batch every time",
    )

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self):
        if self.nesterov and self.momentum <= 0:
            raise ValueError("nesterov needs momentum > 0")
        return self


class EntropySGD(Optimizer):
    """Entropy-SGD, "Entropy-SGD: biasing gradient descent into wide valleys" (Chaudhari,
    Choromanska, Soatto, LeCun, Baldassi, Borgs, Chayes, Sagun & Zecchina, ICLR 2017), Alg. 1.

    It descends the local entropy F_γ(x) = −log ∫ exp(−f(x') − (γ/2)‖x − x'‖²) dx', whose
    gradient is −∇F_γ(x) = −γ(x − ⟨x'⟩) with ⟨x'⟩ the mean of the Gibbs measure around x,
    estimated by L steps of stochastic-gradient Langevin dynamics. Per outer step, from
    x' = μ = x:

        for l = 1 … L:   x' ← x' − η'(∇f_{B_l}(x') + λx' − γ(x − x')) + √η' · ε · N(0, I)
                         μ ← (1 − α) μ + α x'
        x ← x − η γ (x − μ)          (optionally with heavy-ball / Nesterov momentum).

    With ε = 0 and L = 1: x ← x − ηγαη'∇f(x). As γ → ∞ (η' ∝ 1/γ) x' stays within O(1/γ) of
    x, μ → x − ∇f(x)/γ and the step tends to SGD's x − η∇f(x). Each loop step costs L
    gradient evaluations (an epoch of the loop is L passes' worth of gradients); B_1 is the
    loop's batch, B_2 … B_L are drawn per ``inner_batches``. The noise and batch draws come
    from a generator seeded from the stage seed, saved with the optimizer for resuming.
    """

    cache_version: ClassVar[int] = 1
    Params = EntropySGDParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        options = self.params.model_dump()
        options.pop("inner_batches")
        return EntropySGDOptimizer(params, device=device, **options)

    def step_rule(self) -> StepRule:
        return EntropyStep(self.params.inner_batches)
