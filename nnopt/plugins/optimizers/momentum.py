"""Heavy-ball (Polyak 1964) and Nesterov (1983; Sutskever et al. 2013) momentum (survey §5.3)."""

from __future__ import annotations

from typing import Any, ClassVar, Iterable, Literal

import torch
from pydantic import Field

from nnopt.core.component import Params
from nnopt.core.kinds import Optimizer

from .fused import build_fused_if_supported


class MomentumParams(Params):
    lr: float = Field(0.01, gt=0.0, description="learning rate η (scaled by the schedule)")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="momentum coefficient β (μ in torch's form)")
    form: Literal["average", "torch"] = Field(
        "average",
        description="`average`: m = βm + (1−β)g, θ ← θ − ηm (the theory literature's form); "
        "`torch`: b = βb + g, θ ← θ − ηb (torch.optim.SGD's, = Polyak's θ_{t+1} = θ_t − η g_t + β(θ_t − θ_{t−1}))",
    )
    weight_decay: float = Field(0.0, ge=0.0, description="L2 coefficient λ added to the gradient as λθ (coupled)")


class Momentum(Optimizer):
    """Heavy-ball momentum (Polyak 1964; survey §5.3, eq. (21)), in either of its two forms.

    With g_t = ∇F_i(θ_t) + λθ_t (weight decay coupled: it enters the gradient, and so the
    momentum):

    - ``form: average`` — m_t = β m_{t−1} + (1−β) g_t, θ_{t+1} = θ_t − η_t m_t, the form the
      survey and most analyses write. Implemented as ``torch.optim.SGD(momentum=β,
      dampening=β)``, whose buffer is b_1 = g_1, b_t = β b_{t−1} + (1−β) g_t: the same
      recursion started from m_0 = g_1 instead of m_0 = 0: the first step has full size
      η g_1 rather than η(1−β) g_1, and that start's weight in m_t decays as β^t.
    - ``form: torch`` — b_t = β b_{t−1} + g_t (b_1 = g_1), θ_{t+1} = θ_t − η_t b_t: torch's
      ``SGD(momentum=β)``. Since θ_t − θ_{t−1} = −η_{t−1} b_{t−1}, this is
      θ_{t+1} = θ_t − η_t g_t + β (η_t/η_{t−1}) (θ_t − θ_{t−1}): at a constant rate exactly
      Polyak's heavy ball θ_{t+1} = θ_t − η g_t + β(θ_t − θ_{t−1}).

    Started both from zero, m_t = (1−β) b_t, so ``average`` at rate η is ``torch`` at rate
    η(1−β) (torch's buffer start makes them differ in how much the first gradient weighs).
    The torch form's effective step on a constant gradient is η/(1−β); the average form's is η.
    """

    cache_version: ClassVar[int] = 1
    Params = MomentumParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        p = self.params
        dampening = p.momentum if p.form == "average" else 0.0
        # fused on the CPU too: optimizer.step() alone on a 64→256→256→10 MLP measured 77.6 /
        # 71.7 / 41.5 µs (for-loop / foreach / fused; 1 thread; 74.6 / 66.6 / 44.5 at 2), dampened
        # 63.4 / 60.1 / 35.0, and 8% off a whole step (benchmarks/optimizer_step.py) — unlike
        # sgd.py's note of a slower fused kernel on a busier CPU
        return build_fused_if_supported(torch.optim.SGD, params, device, fused_on=("cpu", "cuda"), lr=p.lr,
                                        momentum=p.momentum, dampening=dampening, weight_decay=p.weight_decay)


class NesterovParams(Params):
    lr: float = Field(0.01, gt=0.0, description="learning rate η (scaled by the schedule)")
    momentum: float = Field(0.9, gt=0.0, lt=1.0, description="momentum coefficient μ")
    weight_decay: float = Field(0.0, ge=0.0, description="L2 coefficient λ added to the gradient as λθ (coupled)")


class Nesterov(Optimizer):
    """Nesterov's accelerated gradient in Sutskever et al. (2013)'s form (survey §5.3), as
    ``torch.optim.SGD(nesterov=True)``.

    With g_t = ∇F_i(θ_t) + λθ_t: b_t = μ b_{t−1} + g_t (b_1 = g_1),
    θ_{t+1} = θ_t − η_t (g_t + μ b_t). This is the look-ahead update
    v_{t+1} = μ v_t − η∇F(θ_t + μ v_t) rewritten in the variable θ_t + μ v_t, so that the
    gradient is taken at the stored weights (Bengio et al. 2013's reformulation).
    """

    cache_version: ClassVar[int] = 1
    Params = NesterovParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        p = self.params
        # fused on the CPU too: 122.6 / 81.5 / 41.1 µs per step() (for-loop / foreach / fused, as above)
        return build_fused_if_supported(torch.optim.SGD, params, device, fused_on=("cpu", "cuda"), lr=p.lr,
                                        momentum=p.momentum, nesterov=True, weight_decay=p.weight_decay)
