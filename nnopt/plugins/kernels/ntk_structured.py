"""Empirical NTK of Linear/Conv networks from layer Gram matrices, without the Jacobian.

For a layer y = s_w·W a + s_b·b (``nn.Linear``: s_w = s_b = 1; ``NTKLinear``: its
``weight_scale``/``bias_scale``) applied at positions p (one for a dense layer on vectors,
the output pixels of a convolution, whose input a_p is then the unfolded patch), the
parameter Jacobian of output f_o is ∂f_o/∂W = s_w Σ_p g_{o,p} a_pᵀ and ∂f_o/∂b = s_b Σ_p g_{o,p},
with g_{o,p} = ∂f_o/∂y_p the gradient back-propagated to the layer's output. Hence

    Θ(x, x')_{or} = Σ_l [ s_w² Σ_{p,q} (a_p(x)·a_q(x')) (g_{o,p}(x)·g_{r,q}(x'))
                          + s_b² (Σ_p g_{o,p}(x))·(Σ_q g_{r,q}(x')) ],

for a dense layer on vectors simply Θ = Σ_l (s_w² A_l A_lᵀ' + s_b²) ⊙ G_l G_lᵀ': the Gram of
the layer inputs times the Gram of the output gradients (Novak, Sohl-Dickstein & Schoenholz
2022, "Fast finite width neural tangent kernel", §3.3 "structured derivatives": the
cost for an MLP is that of one forward and O backward passes plus N²·Σ_l(d_in + O·d_out)).
The inputs a are caught by forward hooks; the gradients g of all O outputs by one backward
pass with batched cotangents (``torch.autograd.grad(..., is_grads_batched=True)``), to each
layer's output only (no weight gradient is formed). Where a layer has many positions,
the contraction over (p, q) pairs is replaced by forming that layer's per-example weight
Jacobian Σ_p g_p a_pᵀ when that is cheaper (a conv with few channels and many pixels).

Valid when every trainable parameter is the ``weight`` or ``bias`` of an ``nn.Linear``
(or ``NTKLinear``), ``nn.Conv1d`` or ``nn.Conv2d`` module called once per forward pass and
the model treats examples independently (eval mode); ``why_not`` names the first
parameter that breaks this (a normalization layer's affine, a reparametrized weight).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .ntk_method import NTKMethod

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn


@dataclass
class LayerFeatures:
    """One layer on one block: inputs ``a`` (b, P, G, K) (None without a trainable weight),
    output gradients ``g`` (b, O, P, G, C), the scales, and whether it has a trainable bias."""

    a: "torch.Tensor | None"
    g: "torch.Tensor"
    weight_scale: float
    bias_scale: float
    bias: bool


def _supported_types() -> tuple[type, ...]:
    from torch import nn

    from nnopt.plugins.architectures.parameterization import NTKLinear

    return (nn.Linear, NTKLinear, nn.Conv1d, nn.Conv2d)


class StructuredNTK(NTKMethod):
    """Θ from per-layer Gram matrices of inputs and back-propagated output gradients."""

    name: ClassVar[str] = "structured"
    cache_features: ClassVar[bool] = True  # N·Σ_l (K + O·C) per position: linear in N, unlike a Jacobian

    def __init__(self, model: "nn.Module", out_dim: int):
        super().__init__(model, out_dim)
        self.layers = [m for m in model.modules() if isinstance(m, _supported_types())
                       and any(p.requires_grad for p in m.parameters(recurse=False))]
        self._positions: dict[int, int] = {}  # per layer: P·G, known after the first block

    def why_not(self) -> str | None:
        owner = {}
        for mod_name, module in self.model.named_modules():
            for p_name, p in module.named_parameters(recurse=False):
                owner[id(p)] = (mod_name, module, p_name)
        for name, p in self.trainable.items():
            mod_name, module, p_name = owner[id(p)]
            if type(module) not in _supported_types() or p_name not in ("weight", "bias"):
                return (f"parameter '{name}' belongs to a {type(module).__name__} module ('{mod_name}'); the structured "
                        "method handles only the weight and bias of Linear, Conv1d and Conv2d layers (use method: "
                        "jacobian or ntk_vp)")
        return None

    def probe(self, x: "torch.Tensor") -> None:
        self.features(x[:1])  # positions per layer (conv output sizes), and the one-call-per-layer check

    def block_cost(self, b1: int, b2: int) -> int:
        o = self.out_dim
        per_pair = o * o + sum(pg * pg * (1 + o * o) for pg in self._positions.values() if pg > 1)
        return b1 * b2 * max(per_pair, o * o)

    # ------------------------------------------------------------------ features
    def features(self, x: "torch.Tensor") -> list[LayerFeatures]:
        import torch

        records: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def hook(module: "nn.Module", inputs: tuple, output: "torch.Tensor") -> None:
            if id(module) in records:
                raise _CalledTwice(module)
            records[id(module)] = (inputs[0], output)

        handles = [m.register_forward_hook(hook) for m in self.layers]
        try:
            with torch.enable_grad():
                out = self.model(x)
        except _CalledTwice as err:
            from nnopt.core.errors import StageError

            raise StageError(f"empirical_ntk: the {type(err.module).__name__} layer is called more than once per forward "
                             "pass (shared weights); the structured method needs one call per layer (use method: "
                             "jacobian)") from None
        finally:
            for h in handles:
                h.remove()
        b, o = int(x.shape[0]), self.out_dim
        out = out.reshape(b, o)
        outputs = [records[id(m)][1] for m in self.layers]
        if o == 1:
            grads = torch.autograd.grad(out.sum(), outputs, allow_unused=True)
            grads = [None if g is None else g.unsqueeze(1) for g in grads]
        else:
            # cotangent e_o for every example at once: examples are independent, so the gradient
            # of Σ_n f_o(x_n) with respect to layer l's output at example n is ∂f_o(x_n)/∂y_l(x_n)
            basis = torch.eye(o, dtype=out.dtype, device=out.device).unsqueeze(1).expand(o, b, o)
            grads = torch.autograd.grad(out, outputs, grad_outputs=basis, is_grads_batched=True, allow_unused=True)
            grads = [None if g is None else g.movedim(0, 1) for g in grads]  # (b, O, *y)
        feats = []
        for module, grad, output in zip(self.layers, grads, outputs):
            if grad is None:  # the layer does not reach the output: it adds nothing to Θ
                grad = torch.zeros((b, o, *output.shape[1:]), dtype=output.dtype, device=output.device)
            feats.append(self._layer(module, records[id(module)][0].detach(), grad.detach()))
            self._positions[id(module)] = feats[-1].g.shape[2] * feats[-1].g.shape[3]
        return feats

    def _layer(self, module: "nn.Module", inp: "torch.Tensor", grad: "torch.Tensor") -> LayerFeatures:
        b, o = int(inp.shape[0]), self.out_dim
        weight = module.weight is not None and module.weight.requires_grad
        bias = module.bias is not None and module.bias.requires_grad
        ws = float(getattr(module, "weight_scale", 1.0))
        bs = float(getattr(module, "bias_scale", 1.0))
        if isinstance(module, _conv_types()):
            a, g = _conv_patches(module, inp, grad)
        else:  # Linear on (b, ..., in): every leading position is a position p
            k, c = int(inp.shape[-1]), int(grad.shape[-1])
            a = inp.reshape(b, -1, 1, k)
            g = grad.reshape(b, o, -1, 1, c)
        return LayerFeatures(a if weight else None, g, ws, bs, bias)

    # ------------------------------------------------------------------ contraction
    def block(self, f1: list[LayerFeatures], f2: list[LayerFeatures], outdiag: bool) -> "torch.Tensor":
        total = None
        for l1, l2 in zip(f1, f2):
            term = _layer_block(l1, l2, outdiag)
            total = term if total is None else total.add_(term)
        return total

    def diagonal(self, f: list[LayerFeatures]) -> "torch.Tensor":
        import torch

        total = None
        for l in f:
            g = l.g
            b, o, p, gr, c = g.shape
            term = torch.zeros((b, o), dtype=g.dtype, device=g.device)
            if l.a is not None:
                if p == 1:
                    term += l.weight_scale**2 * l.a.pow(2).sum((1, 2, 3)).unsqueeze(1) * g.pow(2).sum((2, 3, 4))
                else:  # ‖Σ_p g_p a_pᵀ‖² per output, from the per-example weight Jacobian
                    jw = torch.einsum("aopgc,apgk->aogck", g, l.a)
                    term += l.weight_scale**2 * jw.pow(2).sum((2, 3, 4))
            if l.bias:
                term += l.bias_scale**2 * g.sum(2).pow(2).sum((2, 3))
            total = term if total is None else total + term
        return total


class _CalledTwice(Exception):
    def __init__(self, module: Any):
        super().__init__()
        self.module = module


def _conv_types() -> tuple[type, ...]:
    from torch import nn

    return (nn.Conv1d, nn.Conv2d)


def _conv_patches(module: Any, inp: "torch.Tensor", grad: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """The conv's input patches a (b, P, G, K) and output gradients g (b, O, P, G, C) for
    P output positions, G groups, K = C_in/G·∏kernel entries per patch, C = C_out/G.

    The patches are exactly what the conv multiplies by its weight: the input padded as the
    module pads it (``_reversed_padding_repeated_twice``, in its ``padding_mode``; 'same'
    included), then unfolded with its kernel size, dilation and stride. A Conv1d is a Conv2d
    of height 1."""
    import torch.nn.functional as F
    from torch import nn

    b, o = int(inp.shape[0]), int(grad.shape[1])
    pad = list(module._reversed_padding_repeated_twice)
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    x = F.pad(inp, pad, mode=mode) if any(pad) else inp
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, dilation, stride = (1, module.kernel_size[0]), (1, module.dilation[0]), (1, module.stride[0])
    else:
        kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
    cols = F.unfold(x, kernel, dilation=dilation, stride=stride)  # (b, C_in·∏k, P), C_in major
    groups = int(module.groups)
    p = int(cols.shape[-1])
    a = cols.transpose(1, 2).reshape(b, p, groups, -1)
    c_out = int(grad.shape[2])
    g = grad.reshape(b, o, groups, c_out // groups, p).permute(0, 1, 4, 2, 3)  # (b, O, P, G, C)
    return a, g


def _layer_block(l1: LayerFeatures, l2: LayerFeatures, outdiag: bool) -> "torch.Tensor":
    """One layer's term of Θ on a block pair: (b1, b2, O, O), or (b1, b2, O) with ``outdiag``."""
    import torch

    g1, g2 = l1.g, l2.g
    b1, o, p, gr, c = g1.shape
    b2 = g2.shape[0]
    r = "o" if outdiag else "r"
    out = "abo" if outdiag else "abor"
    if p == 1 and gr == 1:  # a dense layer on vectors: the Gram identity with plain matrix products
        gg = _gram(g1.reshape(b1, o, c), g2.reshape(b2, o, c), outdiag)
        factor = None
        if l1.a is not None:
            factor = (l1.weight_scale**2) * (l1.a.reshape(b1, -1) @ l2.a.reshape(b2, -1).T)
        if l1.bias:
            factor = torch.full((b1, b2), l1.bias_scale**2, dtype=gg.dtype, device=gg.device) if factor is None \
                else factor.add_(l1.bias_scale**2)
        if factor is None:
            return torch.zeros_like(gg)
        return gg.mul_(factor.reshape(b1, b2, *([1] * (gg.dim() - 2))))
    total = torch.zeros((b1, b2, o) if outdiag else (b1, b2, o, o), dtype=g1.dtype, device=g1.device)
    if l1.a is not None:
        k = l1.a.shape[-1]
        # contract over position pairs (cost b1·b2·G·P²·(K + O²C)) or form the per-example
        # weight Jacobian Σ_p g_p a_pᵀ (cost (b1+b2)·O·G·P·C·K + b1·b2·O²·G·C·K): the cheaper
        if contract_position_pairs(b1, b2, o, p, gr, k, c):
            aa = torch.einsum("apgk,bqgk->abgpq", l1.a, l2.a)
            term = torch.einsum(f"abgpq,aopgc,b{r}qgc->{out}", aa, g1, g2)
        else:
            j1 = torch.einsum("aopgc,apgk->aogck", g1, l1.a)
            j2 = torch.einsum("aopgc,apgk->aogck", g2, l2.a)
            term = torch.einsum(f"aogck,b{r}gck->{out}", j1, j2)
        total += l1.weight_scale**2 * term
    if l1.bias:
        total += l1.bias_scale**2 * torch.einsum(f"aogc,b{r}gc->{out}", g1.sum(2), g2.sum(2))
    return total


def contract_position_pairs(b1: int, b2: int, o: int, p: int, gr: int, k: int, c: int) -> bool:
    """Whether contracting over position pairs costs fewer multiplications than forming the
    per-example weight Jacobians (both give the same Θ)."""
    pairs = b1 * b2 * gr * p * p * (k + o * o * c)
    jac = (b1 + b2) * o * gr * p * c * k + b1 * b2 * o * o * gr * c * k
    return pairs <= jac


def _gram(g1: "torch.Tensor", g2: "torch.Tensor", outdiag: bool) -> "torch.Tensor":
    """Σ_c g1[a, o, c] g2[b, r, c]: (b1, b2, O, O), or its o = r diagonal (b1, b2, O)."""
    b1, o, c = g1.shape
    b2 = g2.shape[0]
    if o == 1:  # one output: a plain product (a batched one of batch 1 is slower)
        gram = g1[:, 0] @ g2[:, 0].T
        return gram.unsqueeze(-1) if outdiag else gram[:, :, None, None]
    if outdiag:
        return (g1.transpose(0, 1) @ g2.permute(1, 2, 0)).permute(1, 2, 0)  # (O, b1, b2) -> (b1, b2, O)
    return (g1.reshape(b1 * o, c) @ g2.reshape(b2 * o, c).T).reshape(b1, o, b2, o).permute(0, 2, 1, 3)
