"""The empirical neural tangent kernel of a finite network (Jacot, Gabriel & Hongler 2018)."""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

from pydantic import Field

from nnopt.core.component import Params
from nnopt.core.errors import StageError
from nnopt.core.kinds import Kernel, KernelSource

from .ntk_jacobian import JacobianNTK
from .ntk_method import NTKMethod
from .ntk_structured import StructuredNTK
from .ntk_vp import NTKVectorProducts

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

METHODS: dict[str, type[NTKMethod]] = {m.name: m for m in (StructuredNTK, JacobianNTK, NTKVectorProducts)}


class EmpiricalNTKParams(Params):
    method: Literal["auto", "structured", "jacobian", "ntk_vp"] = Field(
        "auto", description="`structured`: per-layer Gram matrices of inputs and output gradients (Linear/Conv "
        "networks); `jacobian`: vmap(jacrev) then contraction (any model); `ntk_vp`: NTK-vector products jvp∘vjp "
        "(any model, least memory); `auto`: structured where valid, else jacobian if a block of Jacobians fits "
        "`memory_mb`, else ntk_vp"
    )
    output: Literal["trace", "full", "output_diagonal", "diagonal"] = Field(
        "trace", description="`full`: Θ(x,x')_{or}, shape (n1, n2, O, O); `output_diagonal`: Θ_oo, (n1, n2, O); "
        "`trace`: Θ_oo reduced over outputs by `trace_reduction`, (n1, n2); `diagonal`: that reduction of "
        "Θ(x_n, x_n)_oo, (n1,) (x2 must be omitted)"
    )
    trace_reduction: Literal["mean", "sum"] = Field(
        "mean", description="how `trace` and `diagonal` reduce over the O outputs: `mean` (1/O)Σ_o Θ_oo, "
        "neural-tangents' `trace_axes` convention (and the per-output analytic kernel's scale), or `sum` Σ_o Θ_oo"
    )
    block_size: int | None = Field(
        None, ge=1, description="examples per block (the kernel is computed block pair by block pair); None: the "
        "largest power-of-two fraction of n whose working memory fits `memory_mb`"
    )
    memory_mb: float = Field(
        1024.0, gt=0.0, description="working-memory budget per block pair (Jacobians, tangents, Gram blocks), in MiB, "
        "used to choose the block size (and by `auto`)"
    )
    vp_chunk: int = Field(64, ge=1, description="ntk_vp: NTK-vector products (kernel columns) vmapped at once")


class EmpiricalNTK(Kernel):
    """Θ(x, x')_{or} = Σ_p ∂f_o(x)/∂θ_p · ∂f_r(x')/∂θ_p, the empirical NTK of the model.

    Jacot, Gabriel & Hongler 2018 ("Neural tangent kernel"): under gradient flow on the
    parameters θ, the outputs move as ḟ(x) = −η Σ_{x'} Θ(x, x') ∇_f L(x'), with Θ the Gram
    matrix of the parameter Jacobians J(x) = ∂f(x)/∂θ. Conventions:

    - The sum runs over the model's *trainable* parameters (``requires_grad``), exactly as
      they are stored: the parameterization is the model's own. Under ``parameterization:
      ntk`` (``NTKLinear``, y = (σ_w/√n)·W x + σ_b·b with W, b ~ N(0, 1)) the scales are in
      the forward pass, so Θ is the NTK-parameterization kernel whose infinite-width limit
      is the analytic NTK; under the standard parameterization Θ grows with the width.
    - f is the model's output flattened per example to O entries; ``output: full`` returns
      Θ(x, x')_{or} with shape (n1, n2, O, O) (neural-tangents with ``trace_axes=()``);
      ``output_diagonal`` only o = r, (n1, n2, O) (``diagonal_axes=(-1,)``); ``trace`` the
      mean (default, neural-tangents' ``trace_axes=(-1,)``, which divides the trace by O)
      or the sum (``trace_reduction: sum``) of Θ_oo over outputs, (n1, n2); ``diagonal``
      the same reduction of Θ(x_n, x_n)_oo, (n1,), at O(n) cost.
    - ``x2`` None means x' = x: the kernel is symmetric and only the blocks on and above
      the diagonal are computed (Θ(x', x)_{ro} = Θ(x, x')_{or}); x2 given: the (n1, n2)
      cross kernel.
    - The model must treat examples independently (eval mode: no batch statistics, no
      dropout draw): the analyzers call it on the model as the stage put it, in eval mode.
    - Arithmetic in ``source.dtype``: a model of another floating type is cast, as a
      copy (the caller's model is untouched), and so are the inputs. Kernel matrices are
      ill-conditioned; ask for float64 to read their small eigenvalues.

    Three implementations compute the same Θ (they agree to ~1e-12 relative in float64; see
    the tests): ``jacobian`` (``ntk_jacobian``: per-example Jacobians by vmap(jacrev),
    contracted), ``ntk_vp`` (``ntk_vp``: NTK-vector products, Novak, Sohl-Dickstein &
    Schoenholz 2022, "Fast finite width neural tangent kernel"), and ``structured``
    (``ntk_structured``: Θ = Σ_l (Gram of layer inputs) ⊙ (Gram of back-propagated output
    gradients) + bias terms, for networks of Linear/Conv1d/Conv2d layers, honouring
    ``NTKLinear``'s weight and bias scales; refused with the reason for any other
    trainable parameter, e.g. a BatchNorm or LayerNorm affine). ``auto`` takes structured
    when valid, else jacobian when a block of 16 examples' Jacobians fits ``memory_mb``,
    else ntk_vp.

    Memory: the kernel is computed block pair by block pair, ``block_size`` examples per
    block (chosen from ``memory_mb`` when not given): jacobian holds 2·b·O·P Jacobian
    entries (P parameters), ntk_vp ``vp_chunk`` tangents of P entries, structured the
    layer inputs and output gradients of all examples (N·Σ_l(d_in + O·d_out), no Jacobian)
    and a (b, b, O, O) block. After ``compute``, ``method_used`` and ``block_used`` say
    what ran.
    """

    Params: ClassVar[type[EmpiricalNTKParams]] = EmpiricalNTKParams
    cache_version: ClassVar[int] = 1

    params: EmpiricalNTKParams
    method_used: str | None = None
    block_used: int | None = None

    def compute(self, x1: "torch.Tensor", x2: "torch.Tensor | None", source: KernelSource,
                progress: "Callable[[int, int], None] | None" = None) -> dict[str, "torch.Tensor"]:
        import torch

        p = self.params
        if source.model is None:
            raise StageError("empirical_ntk: no model to differentiate (the empirical NTK needs the finite network)")
        if p.output == "diagonal" and x2 is not None:
            raise StageError("empirical_ntk: output 'diagonal' is Θ(x_n, x_n), defined for one set of inputs; omit x2 "
                             "(or use output: trace for the cross kernel)")
        dtype = source.dtype or torch.float32
        model = as_dtype(source.model, dtype)
        x1 = x1.to(device=source.device, dtype=dtype)
        x2 = None if x2 is None else x2.to(device=source.device, dtype=dtype)
        n1 = int(x1.shape[0])
        if n1 == 0 or (x2 is not None and int(x2.shape[0]) == 0):
            raise StageError("empirical_ntk: no inputs (an empty set of examples)")
        with torch.no_grad():
            out_dim = int(model(x1[:1]).reshape(1, -1).shape[1])

        method = self._method(model, out_dim, x1)
        n2 = n1 if x2 is None else int(x2.shape[0])
        budget = int(p.memory_mb * 2**20 / max(1, torch.finfo(dtype).bits // 8))
        block = p.block_size or choose_block(method, max(n1, n2), budget)
        self.method_used, self.block_used = method.name, block

        if method.n_params == 0:  # nothing trainable: Θ = 0
            shape = {"full": (n1, n2, out_dim, out_dim), "output_diagonal": (n1, n2, out_dim), "trace": (n1, n2),
                     "diagonal": (n1,)}[p.output]
            return {"ntk": torch.zeros(shape, dtype=dtype, device=source.device)}
        if p.output == "diagonal":
            diag = torch.cat([method.diagonal(method.features(x1[s : s + block])) for s in range(0, n1, block)])
            return {"ntk": self._reduce(diag)}
        outdiag = p.output != "full"
        theta = blocked_kernel(method, x1, x2, block, outdiag, progress)
        if p.output == "trace":
            theta = self._reduce(theta)
        return {"ntk": theta}

    def _method(self, model: "nn.Module", out_dim: int, x: "torch.Tensor") -> NTKMethod:
        p = self.params
        if p.method == "structured":
            method = StructuredNTK(model, out_dim)
            reason = method.why_not()
            if reason is not None:
                raise StageError(f"empirical_ntk: method 'structured' cannot compute this model's NTK: {reason}")
            method.probe(x)
            return method
        if p.method == "jacobian":
            return JacobianNTK(model, out_dim)
        if p.method == "ntk_vp":
            return NTKVectorProducts(model, out_dim, chunk=p.vp_chunk)
        structured = StructuredNTK(model, out_dim)
        if structured.why_not() is None:
            try:
                structured.probe(x)
                return structured
            except StageError:  # a layer called twice: not this method's case
                pass
        jacobian = JacobianNTK(model, out_dim)
        budget = int(p.memory_mb * 2**20 / max(1, x.element_size()))
        if jacobian.block_cost(16, 16) <= budget:
            return jacobian
        return NTKVectorProducts(model, out_dim, chunk=p.vp_chunk)

    def _reduce(self, theta: "torch.Tensor") -> "torch.Tensor":
        """Θ_oo (last axis: outputs) summed or averaged over the outputs."""
        return theta.mean(-1) if self.params.trace_reduction == "mean" else theta.sum(-1)


def as_dtype(model: "nn.Module", dtype: "torch.dtype") -> "nn.Module":
    """The model itself when its floating tensors are ``dtype`` already, else a cast copy."""
    floating = [t for t in list(model.parameters()) + list(model.buffers()) if t.is_floating_point()]
    if all(t.dtype == dtype for t in floating):
        return model
    return copy.deepcopy(model).to(dtype)


def choose_block(method: NTKMethod, n: int, budget: int) -> int:
    """The largest of n, ⌈n/2⌉, ⌈n/4⌉, ... (at least 1) whose block pair fits ``budget`` entries."""
    block = n
    while block > 1 and method.block_cost(block, block) > budget:
        block = math.ceil(block / 2)
    return block


def blocked_kernel(method: NTKMethod, x1: "torch.Tensor", x2: "torch.Tensor | None", block: int,
                   outdiag: bool, progress: "Callable[[int, int], None] | None" = None) -> "torch.Tensor":
    """Θ(x1, x2) assembled from (block × block) pieces: (n1, n2, O, O), or (n1, n2, O) with
    ``outdiag``. For x2 None only the pieces on and above the diagonal are computed, the
    others are their transposes (Θ(x', x)_{ro} = Θ(x, x')_{or}). ``progress(done, total)``
    is told of each piece finished."""
    import torch

    symmetric = x2 is None
    starts1 = list(range(0, int(x1.shape[0]), block))
    xs2 = x1 if symmetric else x2
    starts2 = list(range(0, int(xs2.shape[0]), block))
    n1, n2, o = int(x1.shape[0]), int(xs2.shape[0]), method.out_dim
    out = torch.empty((n1, n2, o) if outdiag else (n1, n2, o, o), dtype=x1.dtype, device=x1.device)
    cache1: dict[int, Any] = {}
    cache2: dict[int, Any] = {}

    def feats(cache: dict[int, Any], x: "torch.Tensor", s: int) -> Any:
        if s in cache:
            return cache[s]
        f = method.features(x[s : s + block])
        if method.cache_features:
            cache[s] = f
        return f

    total = sum(1 for a in starts1 for b in starts2 if not (symmetric and b < a))
    done = 0
    for s1 in starts1:
        f1 = feats(cache1, x1, s1)
        if not method.cache_features:
            cache1 = {s1: f1}  # the row block is reused across its row, then dropped
        for s2 in starts2:
            if symmetric and s2 < s1:
                continue
            if symmetric and s2 == s1:
                f2 = f1
            else:
                f2 = feats(cache1 if symmetric else cache2, xs2, s2)
            piece = method.block(f1, f2, outdiag)
            e1, e2 = min(s1 + block, n1), min(s2 + block, n2)
            out[s1:e1, s2:e2] = piece
            if symmetric and s2 != s1:
                out[s2:e2, s1:e1] = piece.transpose(0, 1) if outdiag else piece.permute(1, 0, 3, 2)
            done += 1
            if progress is not None:
                progress(done, total)
    if symmetric:  # exact symmetry (the diagonal pieces are symmetric only up to rounding)
        out = 0.5 * (out + (out.transpose(0, 1) if outdiag else out.permute(1, 0, 3, 2)))
    return out
