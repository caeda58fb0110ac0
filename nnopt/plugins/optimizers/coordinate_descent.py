"""Randomized block coordinate descent (Nesterov 2012; Wright 2015; survey §5 on decomposition)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Literal

import torch
from pydantic import Field, model_validator

from nnopt.core.component import Params
from nnopt.core.kinds import Optimizer
from nnopt.core.loop import StepRule

from .full_batch import DEFAULT_CHUNK, full_batch_loss

if TYPE_CHECKING:  # pragma: no cover
    from nnopt.core.loop import TrainLoop

Block = list[tuple[torch.Tensor, "torch.Tensor | None"]]  # (parameter, flat indices into it | None: all of it)


class SeededOptimizer(torch.optim.Optimizer):
    """A torch optimizer drawing from a ``torch.Generator`` of its own, kept in ``state_dict``.

    Built without a seed, the generator is seeded from the stage seed by the step rule at the
    first step (``ensure_seeded``), so the draws follow the stage seed; a resumed run restores
    the generator's state instead, so it continues the same sequence.
    """

    generator: torch.Generator
    _seeded: bool
    salt: ClassVar[int] = 0

    def _init_generator(self, device: torch.device | str, seed: int | None) -> None:
        self.generator = torch.Generator(device=device)
        self._seeded = False
        if seed is not None:
            self.seed(seed)

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(int(seed) % 2**63)
        self._seeded = True

    def ensure_seeded(self, stage_seed: int) -> None:
        if not self._seeded:
            self.seed(stage_seed * 1_000_003 + self.salt)

    def state_dict(self) -> dict[str, Any]:
        self.state["rng"] = {"generator": self.generator.get_state(), "seeded": self._seeded}
        return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        rng = self.state.get("rng")
        if rng:
            self.generator.set_state(rng["generator"])
            self._seeded = bool(rng["seeded"])


class CoordinateDescentOptimizer(SeededOptimizer):
    """θ_B ← θ_B − η_B ∇_B F(θ) for one random block B per step, every other coordinate kept.

    ``blocks="parameter"``: B is one parameter tensor, uniformly at random; ``"coordinate"``:
    B is ``block_size`` distinct coordinates drawn uniformly from all d coordinates of all
    parameters (``torch.randperm`` from the optimizer's generator). η_B = the group's ``lr``,
    or 1/``curvature`` when ``step`` is given one.
    """

    salt: ClassVar[int] = 0xC0D

    def __init__(self, params: Iterable[Any], lr: float = 0.1, blocks: str = "coordinate", block_size: int = 1,
                 seed: int | None = None):
        super().__init__(params, {"lr": lr})
        self.blocks, self.block_size = blocks, block_size
        self._init_generator("cpu", seed)  # the draws are a few indices: on the CPU, then moved
        flat = self.params()
        self.numels = [p.numel() for p in flat]
        self.dim = sum(self.numels)
        if blocks == "coordinate" and block_size > self.dim:
            raise ValueError(f"block_size {block_size} is more than the {self.dim} coordinates being optimized")

    def params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def draw_block(self) -> Block:
        params = self.params()
        if self.blocks == "parameter":
            i = int(torch.randint(len(params), (1,), generator=self.generator))
            return [(params[i], None)]
        chosen = torch.sort(torch.randperm(self.dim, generator=self.generator)[: self.block_size]).values
        block: Block = []
        start = 0
        for p, k in zip(params, self.numels):
            local = chosen[(chosen >= start) & (chosen < start + k)] - start
            if local.numel():
                block.append((p, local.to(p.device)))
            start += k
        return block

    @staticmethod
    def block_vector(block: Block, values: list[torch.Tensor | None], params: list[torch.Tensor]) -> list[torch.Tensor]:
        """``values`` restricted to the block: zero outside it (one tensor per parameter)."""
        out = [torch.zeros_like(p) for p in params]
        where = {id(p): i for i, p in enumerate(params)}
        for p, idx in block:
            i = where[id(p)]
            v = values[i]
            if v is None:
                continue
            if idx is None:
                out[i] = v.detach().clone()
            else:
                out[i].view(-1)[idx] = v.detach().reshape(-1)[idx]
        return out

    @torch.no_grad()
    def step(self, closure=None, block: Block | None = None, curvature: float | None = None):  # noqa: ANN001
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if block is None:
            block = self.draw_block()
        lr = {id(p): g["lr"] for g in self.param_groups for p in g["params"]}  # groups are new dicts after a resume
        for p, idx in block:
            if p.grad is None:
                continue
            eta = 1.0 / curvature if curvature is not None else lr[id(p)]
            if idx is None:
                p.add_(p.grad, alpha=-eta)
            else:
                p.view(-1).index_add_(0, idx, p.grad.reshape(-1)[idx], alpha=-eta)
        return loss


class CoordinateStep(StepRule):
    """One block update: the gradient (full batch by default), one drawn block, and for
    ``lipschitz`` the curvature of F along the block's gradient from a Hessian-vector product."""

    def __init__(self, full_batch: bool, lipschitz: bool):
        self.full_batch, self.lipschitz = full_batch, lipschitz

    def step(self, loop: "TrainLoop", xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        opt: CoordinateDescentOptimizer = loop.optimizer
        opt.ensure_seeded(loop.ctx.seed)
        if not self.lipschitz:
            if self.full_batch:
                opt.zero_grad(set_to_none=True)
                loss = full_batch_loss(loop, DEFAULT_CHUNK)
            else:
                opt.zero_grad(set_to_none=True)
                with loop.forward():
                    loss = loop.loss_fn(loop.model(xb), yb)
                loss.backward()
                loss = loss.detach()
            for hook in loop.hooks.after_backward:
                hook(loop)
            opt.step()
            return loss

        if self.full_batch:
            xb, yb = loop.data.x_train, loop.data.y_train
        params = opt.params()
        opt.zero_grad(set_to_none=True)
        with loop.forward():
            loss = loop.loss_fn(loop.model(xb), yb)
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = g.detach().clone() if g is not None else None
        for hook in loop.hooks.after_backward:
            hook(loop)
        block = opt.draw_block()
        v = opt.block_vector(block, [p.grad for p in params], params)
        vv = float(sum(torch.sum(u * u) for u in v))
        curvature = None
        if vv > 0:
            used = [(g, u) for g, u in zip(grads, v) if g is not None and g.requires_grad]
            hv = torch.autograd.grad([g for g, _ in used], params, grad_outputs=[u for _, u in used], allow_unused=True)
            vhv = float(sum(torch.sum(u * h) for u, h in zip(v, hv) if h is not None))
            c = vhv / vv
            curvature = c if math.isfinite(c) and c > 0 else None  # not convex along it: the constant lr
        opt.step(block=block, curvature=curvature)
        return loss.detach()


class CoordinateDescentParams(Params):
    lr: float = Field(
        0.1, gt=0.0,
        description="step η of a block update (step: constant); with step: lipschitz the step where F is not convex along the block",
    )
    blocks: Literal["coordinate", "parameter"] = Field(
        "coordinate", description="coordinate: `block_size` random coordinates per step; parameter: one random parameter tensor"
    )
    block_size: int = Field(1, ge=1, description="coordinates per block (blocks: coordinate)")
    step: Literal["constant", "lipschitz"] = Field(
        "constant",
        description="constant: η = lr; lipschitz: η = 1/L_B with L_B = g_BᵀHg_B/g_Bᵀg_B the curvature along the "
        "block's gradient (one coordinate i: 1/H_ii = 1/L_i; one Hessian-vector product per step)",
    )
    full_batch: bool = Field(True, description="gradient of the whole train split (false: of the loop's mini-batch)")

    @model_validator(mode="after")
    def _block_size_needs_coordinates(self):
        if self.blocks == "parameter" and self.block_size != 1:
            raise ValueError("block_size is for blocks: coordinate (a parameter block is one whole tensor)")
        return self


class CoordinateDescent(Optimizer):
    """Randomized block coordinate descent: "Efficiency of coordinate descent methods on
    huge-scale optimization problems" (Nesterov 2012) and "Coordinate descent algorithms"
    (Wright 2015); the decomposition methods of the survey's §5.

    Every step draws one block B uniformly at random — one parameter tensor, or ``block_size``
    distinct coordinates of all d — from a generator seeded from the stage seed (its state is
    in the optimizer's state_dict), and updates only that block:

        θ_B ← θ_B − η_B ∇_B F(θ),   every θ_j, j ∉ B, unchanged,

    with η_B = ``lr``, or with ``step: lipschitz`` η_B = 1/L_B, L_B = g_Bᵀ∇²F g_B / g_Bᵀg_B
    the curvature along the block's gradient g_B (a Hessian-vector product). For a single
    coordinate that is 1/∇²F_ii = 1/L_i, the coordinate Lipschitz constant of a quadratic
    (least squares), i.e. exact minimization along the coordinate; for a larger block of a
    quadratic it is the exact line search along g_B (≥ 1/L_B). Expected update (coordinate
    blocks): E[Δθ] = −η (b/d) ∇F(θ).

    Convergence (Wright 2015, Thm. 1): on a μ-strongly convex quadratic with steps 1/L_i,
    E F(θ_k) − F* ≤ (1 − μ/(d·L_max))^k (F(θ_0) − F*), L_max = max_i L_i. An epoch of d
    coordinate updates — the work of one gradient when a partial derivative costs 1/d of a
    gradient — then contracts by ≈ exp(−μ/L_max), against GD's (1 − μ/L) with η = 1/L: a
    speed-up of L/L_max ∈ [1, d] per epoch. This implementation computes the whole gradient
    at each step and uses one block of it (simple and exact, but d times the work of an
    optimized coordinate method), so compare epochs of updates, not seconds.
    """

    cache_version: ClassVar[int] = 1
    Params = CoordinateDescentParams

    def build(self, params: Iterable[Any], device: torch.device) -> torch.optim.Optimizer:
        p = self.params
        return CoordinateDescentOptimizer(params, lr=p.lr, blocks=p.blocks, block_size=p.block_size)

    def step_rule(self) -> StepRule:
        return CoordinateStep(self.params.full_batch, self.params.step == "lipschitz")
