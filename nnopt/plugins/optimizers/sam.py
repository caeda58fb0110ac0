"""Sharpness-aware minimization (Foret et al. 2021), two passes per step."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Iterable, Literal

import torch
from pydantic import Field, model_validator

from nnopt.core.component import Params
from nnopt.core.kinds import Optimizer
from nnopt.core.loop import StepRule

Beta = Annotated[float, Field(ge=0.0, lt=1.0)]
_DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3}


class SAMParams(Params):
    base: Literal["sgd", "adam"] = Field("sgd", description="the optimizer taking the step at θ: torch's SGD or Adam")
    lr: float = Field(None, gt=0.0, description="the base optimizer's learning rate (default: 0.1 for sgd, 1e-3 for adam)")  # type: ignore[assignment]
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="sgd's heavy-ball momentum μ (sgd only)")
    betas: list[Beta] = Field([0.9, 0.999], min_length=2, max_length=2, description="adam's [β1, β2] (adam only)")
    weight_decay: float = Field(0.0, ge=0.0, description="the base optimizer's L2 coefficient λ (added to the gradient at θ+ε)")
    rho: float = Field(0.05, gt=0.0, description="ρ: radius of the ascent step ε")
    adaptive: bool = Field(False, description="ASAM (Kwon et al. 2021): ε = ρ θ²∘g / ‖|θ|∘g‖, scale-invariant")

    @model_validator(mode="before")
    @classmethod
    def _base_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("lr") is None:
            data = {**data, "lr": _DEFAULT_LR.get(data.get("base", "sgd"), 0.1)}
        return data

    @model_validator(mode="after")
    def _options_of_the_base(self):
        if self.base == "adam" and self.momentum != 0.0:
            raise ValueError("momentum is sgd's; adam's are betas")
        if self.base == "sgd" and list(self.betas) != [0.9, 0.999]:
            raise ValueError("betas are adam's; sgd's is momentum")
        return self


class SAMStep(StepRule):
    """One SAM step: gradient g at θ; ascend to θ + ε; gradient there (the ``after_backward``
    hooks see this one: it is the update's); back to θ and the base optimizer's step."""

    def step(self, loop: Any, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        optimizer = loop.optimizer
        optimizer.zero_grad(set_to_none=True)
        with loop.forward():
            loss = loop.loss_fn(loop.model(xb), yb)
        loss.backward()

        def at_the_ascended_point() -> torch.Tensor:
            with loop.forward():
                perturbed = loop.loss_fn(loop.model(xb), yb)
            perturbed.backward()
            for hook in loop.hooks.after_backward:
                hook(loop)
            return perturbed

        # the library's step: ascend by ε, this closure, back to θ, the base step; through
        # step() rather than first/second_step so that torch's schedulers see a step taken
        optimizer.step(at_the_ascended_point)
        return loss.detach()


class SAM(Optimizer):
    """SAM, "Sharpness-aware minimization for efficiently improving generalization" (Foret et
    al. 2021), as pytorch_optimizer's ``SAM`` around torch's SGD or Adam. Each step, with
    g = ∇L_B(θ) the mini-batch gradient:

        ε = ρ g / ‖g‖                      (ASAM: ε = ρ θ²∘g / ‖|θ|∘g‖),
        θ ← base_step(θ, ∇L_B(θ + ε)),

    i.e. with ``base: sgd`` and no momentum θ ← θ − η ∇L_B(θ + ρ g/‖g‖): the descent step
    uses the gradient at the worst point of a ρ-ball (to first order), which favours flat
    minima. Two forward/backward passes per step, on the same batch; the reported loss is the
    one at θ. Gradient clipping and masks (``after_backward``) act on the second gradient,
    the one the update uses. The base optimizer's state is SAM's own ``state``, so it is in
    ``state_dict`` and a resumed run continues bitwise.
    """

    cache_version: ClassVar[int] = 1
    Params = SAMParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        from pytorch_optimizer import SAM as _SAM

        p = self.params
        if p.base == "sgd":
            base, options = torch.optim.SGD, {"lr": p.lr, "momentum": p.momentum, "weight_decay": p.weight_decay}
        else:
            base, options = torch.optim.Adam, {"lr": p.lr, "betas": tuple(p.betas), "weight_decay": p.weight_decay}
        return _SAM(list(params), base, rho=p.rho, adaptive=p.adaptive, **options)

    def step_rule(self) -> StepRule:
        return SAMStep()
