"""Infinite-width NNGP and NTK of fully connected networks, in neural-tangents' conventions.

A network of L dense layers (L − 1 hidden, then the output layer, no activation after it)
with activation φ, weight scale σ_w (``W_std``) and bias scale σ_b (``b_std``). With the
input kernel and the elementwise maps of ``dual_activations`` (K_φ = E[φ(u)φ(v)],
K̇_φ = E[φ'(u)φ'(v)] for (u, v) ~ N(0, [[K(x,x), K(x,x')], [K(x,x'), K(x',x')]])):

    K⁰(x, x') = x·x'/d_in                                       (post-"activation" of layer 0)
    Kˡ = σ_w²·K_φ(Kˡ⁻¹) + σ_b²        (with K_φ(K⁰) read as K⁰: no activation on the input)

and the NTK, by parameterization (neural-tangents' ``stax.Dense``):

- ``ntk`` (Jacot, Gabriel & Hongler 2018; z = (σ_w/√n)·W x + σ_b·b, W, b ~ N(0, 1)):
  Θ¹ = K¹,  Θˡ = Kˡ + σ_w²·K̇_φ(Kˡ⁻¹)·Θˡ⁻¹ — the limit is width-independent;
- ``standard`` (Sohl-Dickstein, Novak, Schoenholz & Lee 2020; z = W x + b, W ~ N(0, σ_w²/n),
  b ~ N(0, σ_b²)): Θˡ = n_{l−1}·K_φ(Kˡ⁻¹) + σ_w²·K̇_φ(Kˡ⁻¹)·Θˡ⁻¹ + 1[bias] (n₀ = d_in,
  K_φ(K⁰) = K⁰): the gradient of a weight is not scaled by 1/√n here, so Θ grows with the
  widths, which must be known.

The kernel of each output is the same (outputs are independent and identically distributed
at infinite width), so the matrices are (n1, n2), the kernel between one output of x and the
same output of x' (0 between different outputs). These are exactly neural-tangents'
``kernel_fn(x1, x2, ('nngp', 'ntk'))`` of ``stax.serial(Dense, φ, ..., Dense)`` (checked to
1e-10 in float64 against neural-tangents 0.6.5 for relu, erf, gelu, identity, abs and
leaky_relu). MLP options beyond this (``last_activation``) are followed; dropout is off at
evaluation and is ignored.

Cost: one n1×d·d×n2 matmul, then O(L·n1·n2) elementwise work for the closed forms
(O(L·n1·n2·P²) for activations integrated by quadrature).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from nnopt.core.component import Params, ref_type
from nnopt.core.errors import StageError
from nnopt.core.kinds import Kernel, KernelSource

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .dual_activations import Dual


class FCNKernelParams(Params):
    """The architecture of the infinite network; every field left out (None) is read from the
    stage's ``model`` when it is an ``mlp``, else takes the default named."""

    depth: int | None = Field(None, ge=0, le=1000, description="hidden layers L − 1 (None: len(widths) of the "
                              "model's mlp; 0 is a linear model)")
    widths: list[int] | None = Field(None, description="hidden widths, only used by parameterization `standard` "
                                     "(its NTK grows with them); None: the model's")
    activation: ref_type("activations") | None = Field(  # type: ignore[valid-type]
        None, description="φ (None: the model's; relu without a model). relu, leaky_relu, erf, identity/linear, gelu "
        "have closed-form duals, any other activation is integrated by Gauss–Hermite quadrature")
    parameterization: Literal["ntk", "standard"] | None = Field(None, description="None: the model's (ntk without one)")
    W_std: float | None = Field(None, gt=0.0, description="σ_w (None: the model's; 1 without one)")
    b_std: float | None = Field(None, ge=0.0, description="σ_b (None: the model's; 0 without one)")
    bias: bool | None = Field(None, description="layers have biases (None: the model's; true without one); only "
                              "matters for `standard`, where a trainable bias adds 1 to Θ")
    last_activation: bool | None = Field(None, description="φ after the output layer too (None: the model's; false)")
    quadrature_points: int = Field(32, ge=4, le=200, description="Gauss–Hermite nodes per dimension for "
                                   "activations without a closed form (P² evaluations per kernel entry)")
    dtype: Literal["float64", "float32"] = Field("float64", description="arithmetic (float64: kernels are "
                                                 "ill-conditioned)")


@dataclass(frozen=True)
class DenseLayer:
    """One dense layer of the infinite network: weight variance σ_w², bias variance σ_b²,
    whether it has a (trainable) bias, and its fan-in (``standard`` only)."""

    w_var: float
    b_var: float
    bias: bool
    fan_in: int | None


@dataclass(frozen=True)
class FCNArchitecture:
    """What the recursion needs, resolved from the params and the model spec."""

    layers: tuple[DenseLayer, ...]
    dual: "Dual"
    parameterization: str
    last_activation: bool
    activation: str


def _mlp_params(model_spec: Any) -> Any:
    """The model's ``MLPParams`` when its arch is an mlp, else None."""
    from nnopt.plugins.architectures.mlp import MLPParams

    arch = getattr(model_spec, "arch", None)
    if arch is None or not getattr(arch, "is_resolved", False):
        return None
    return arch.resolved if isinstance(arch.resolved, MLPParams) else None


def resolve_architecture(p: FCNKernelParams, model_spec: Any, d_in: int, who: str) -> FCNArchitecture:
    """The infinite network of ``p``, every unset field read from ``model_spec`` (an mlp).

    Raises ``StageError`` when the depth cannot be known (no mlp and no ``depth``), when the
    model has an initializer or a normalizer the recursion cannot follow and ``W_std`` is not
    given, or when ``standard`` lacks the widths.
    """
    from nnopt.core.registry import Registry

    from .dual_activations import dual_of

    mlp = _mlp_params(model_spec)
    if mlp is None and p.depth is None:
        arch = getattr(getattr(model_spec, "arch", None), "name", None)
        what = f"the model's arch is '{arch}', not an mlp" if arch else "the stage has no model"
        raise StageError(f"{who}: cannot derive the fully connected architecture: {what}; give `depth` (and "
                         "`activation`, `parameterization`, `W_std`, `b_std`) in the kernel's params")
    if mlp is not None:
        norm = getattr(model_spec, "norm", None)
        if norm is not None and norm.name != "none":
            raise StageError(f"{who}: the model uses normalizer '{norm.name}', which the infinite-width recursion "
                             "does not follow; use a model without `norm` (or give `depth` and no model)")
        init = getattr(model_spec, "init", None)
        if init is not None and p.W_std is None:
            raise StageError(f"{who}: the model's initializer '{init.name}' sets the weight distribution, which the "
                             "kernel cannot read; give `W_std` (and `b_std`) in the kernel's params")

    def pick(name: str, default: Any) -> Any:
        value = getattr(p, name)
        if value is not None:
            return value
        if mlp is not None and getattr(mlp, name, None) is not None:
            return getattr(mlp, name)
        return default

    depth = p.depth if p.depth is not None else len(mlp.widths)
    parameterization = pick("parameterization", "ntk")
    bias = pick("bias", True)
    last_activation = pick("last_activation", False)
    activation_ref = p.activation if p.activation is not None else (mlp.activation if mlp is not None else None)
    if activation_ref is None:
        cls, _ = Registry().load("activations", "relu")
        activation = cls(cls.Params())
        activation_name = "relu"
    else:
        activation = activation_ref.instantiate()
        activation_name = activation_ref.name
    dual = dual_of(activation, p.quadrature_points)

    widths: list[int] | None = p.widths
    if widths is None and depth == 0:
        widths = []
    if widths is None and mlp is not None and len(mlp.widths) == depth:
        widths = list(mlp.widths)
    if widths is not None and len(widths) != depth:
        raise StageError(f"{who}: `widths` has {len(widths)} entries and depth is {depth}")
    fan_ins: list[int | None] = [d_in] + (list(widths) if widths is not None else [None] * depth)
    if parameterization == "standard" and widths is None:
        raise StageError(f"{who}: parameterization 'standard' has an NTK that grows with the widths; give `widths` "
                         f"({depth} hidden widths) in the kernel's params")

    W_std = pick("W_std", None)
    b_std = pick("b_std", None)
    layers = []
    for fan_in in fan_ins:
        if parameterization == "standard" and W_std is None and mlp is not None:
            # PyTorch's nn.Linear default: W, b ~ U(±1/√n), so Var W = 1/(3n) = σ_w²/n with σ_w² = 1/3,
            # and Var b = 1/(3n): a per-layer bias variance
            w_var, b_var = 1.0 / 3.0, 1.0 / (3.0 * fan_in)
        else:
            w_var = (1.0 if W_std is None else W_std) ** 2
            b_var = (0.0 if b_std is None else b_std) ** 2
        layers.append(DenseLayer(w_var, b_var if bias else 0.0, bool(bias), fan_in))
    return FCNArchitecture(tuple(layers), dual, parameterization, bool(last_activation), activation_name)


#: entries per block of the elementwise recursion: small enough that every layer of a block
#: works in cache (one pass over memory for all layers, instead of one per operation)
_BLOCK_ENTRIES = 1 << 18


def _variances(x: "torch.Tensor", arch: FCNArchitecture) -> list["torch.Tensor"]:
    """The pre-activation variance K^l(x, x) of every dense layer's output, l = 1..L: the
    diagonal recursion, which every off-diagonal entry's activation map needs."""
    d_in = x.shape[1]
    post = (x * x).sum(1) / d_in
    out = []
    for index, layer in enumerate(arch.layers):
        if index > 0:
            post = arch.dual.diag(out[-1])
        out.append(post * layer.w_var + layer.b_var)
    return out


def _block(cov: "torch.Tensor", q1: list["torch.Tensor"], q2: list["torch.Tensor"], arch: FCNArchitecture,
           ntk: bool) -> tuple["torch.Tensor", "torch.Tensor | None"]:
    """The recursion for one block of entries: ``cov`` = K⁰ of the block's pairs, ``q1[l]``
    and ``q2[l]`` the variances of layer l + 1 for its rows and columns."""
    theta = None
    dual = arch.dual
    for index, layer in enumerate(arch.layers):
        if index > 0:  # the hidden layer's activation
            cov, kdot = dual(cov, q1[index - 1][:, None], q2[index - 1][None, :], derivative=ntk)
            if ntk:
                theta.mul_(kdot)
        if ntk and arch.parameterization == "standard":
            new_theta = cov * float(layer.fan_in)
            if theta is not None:
                new_theta.add_(theta, alpha=layer.w_var)
            if layer.bias:
                new_theta.add_(1.0)
            theta = new_theta
        cov = cov * layer.w_var if index == 0 else cov.mul_(layer.w_var)
        cov.add_(layer.b_var)
        if ntk and arch.parameterization == "ntk":
            # Θ = K_new + σ_w²·K̇·Θ_prev
            theta = cov.clone() if theta is None else theta.mul_(layer.w_var).add_(cov)
    if arch.last_activation:
        last = len(arch.layers) - 1
        cov, kdot = dual(cov, q1[last][:, None], q2[last][None, :], derivative=ntk)
        if ntk:
            theta.mul_(kdot)
    return cov, theta


def fcn_kernels(x1: "torch.Tensor", x2: "torch.Tensor | None", arch: FCNArchitecture,
                ntk: bool = True) -> dict[str, "torch.Tensor"]:
    """``{"nngp": K, "ntk": Θ}`` (Θ only with ``ntk``) of the network ``arch`` between the rows
    of ``x1`` and ``x2`` (None: x1), flattened, in their dtype (module docstring).

    The variances come first (``_variances``); then row blocks of the matrix run through all
    layers while in cache. With ``x2`` None only the upper triangle is computed and mirrored
    (the result is exactly symmetric).
    """
    import torch

    x1 = x1.reshape(x1.shape[0], -1)
    sym = x2 is None
    x2f = x1 if sym else x2.reshape(x2.shape[0], -1)
    n1, n2, d_in = x1.shape[0], x2f.shape[0], x1.shape[1]
    q1 = _variances(x1, arch)
    q2 = q1 if sym else _variances(x2f, arch)
    k_out = torch.empty(n1, n2, dtype=x1.dtype, device=x1.device)
    t_out = torch.empty_like(k_out) if ntk else None
    rows = max(1, _BLOCK_ENTRIES // max(n2, 1))
    for r0 in range(0, n1, rows):
        r1 = min(n1, r0 + rows)
        c0 = r0 if sym else 0  # the symmetric case: columns from the diagonal on
        cov = (x1[r0:r1] @ x2f[c0:].T) / d_in
        k, t = _block(cov, [q[r0:r1] for q in q1], [q[c0:] for q in q2], arch, ntk)
        for block, out in ((k, k_out), (t, t_out)):
            if block is None:
                continue
            if not sym:
                out[r0:r1] = block
                continue
            # the block's square on the diagonal from its upper triangle (exactly symmetric),
            # the rest of the row band also below the diagonal, transposed
            square = block[:, : r1 - r0]
            out[r0:r1, r0:r1] = square.triu() + square.triu(1).T
            out[r0:r1, r1:] = block[:, r1 - r0 :]
            out[r1:, r0:r1] = block[:, r1 - r0 :].T
    return {"ntk": t_out, "nngp": k_out} if ntk else {"nngp": k_out}


class NTKAnalytic(Kernel):
    """The infinite-width NTK Θ and NNGP kernel K of a fully connected network.

    Jacot, Gabriel & Hongler 2018 ("Neural tangent kernel: convergence and generalization in
    neural networks") and Lee et al. 2018 ("Deep neural networks as Gaussian processes"), by
    the layer recursion of ``nnopt.plugins.kernels.analytic`` (module docstring), in
    neural-tangents' conventions (Novak et al. 2020): input kernel x·x'/d_in, no activation
    after the output layer, ``W_std``/``b_std`` and ``parameterization: ntk | standard`` as in
    ``stax.Dense``, one kernel per output (the same for all). Returns ``{"ntk": Θ, "nngp": K}``
    of shape (n1, n2), computed together as neural-tangents does.

    The architecture comes from the stage's ``model`` when it is an ``mlp`` (depth =
    len(widths), its activation, parameterization, W_std, b_std, bias, last_activation); any
    param given here overrides it. A standard-parameterization mlp with PyTorch's default init
    (no W_std) is the uniform init's variances σ_w² = 1/3, σ_b² = 1/(3·fan_in).
    """

    Params: ClassVar[type[FCNKernelParams]] = FCNKernelParams
    cache_version: ClassVar[int] = 1
    params: FCNKernelParams
    _ntk: ClassVar[bool] = True

    def compute(self, x1: "torch.Tensor", x2: "torch.Tensor | None", source: KernelSource,
                progress: Any = None) -> dict[str, "torch.Tensor"]:
        import torch

        dtype = torch.float64 if self.params.dtype == "float64" else torch.float32
        x1 = x1.to(source.device if source is not None else x1.device, dtype)
        x2 = None if x2 is None else x2.to(x1.device, dtype)
        d_in = int(math.prod(x1.shape[1:]))
        if x2 is not None and int(math.prod(x2.shape[1:])) != d_in:
            raise StageError(f"{type(self).__name__}: x1 has {d_in} features per example and x2 "
                             f"{int(math.prod(x2.shape[1:]))}")
        arch = resolve_architecture(self.params, getattr(source, "model_spec", None), d_in, self._who())
        with torch.no_grad():
            out = fcn_kernels(x1, x2, arch, ntk=self._ntk)
        if progress is not None:
            progress(1, 1)
        return out

    @classmethod
    def _who(cls) -> str:
        return "ntk_analytic" if cls._ntk else "nngp_analytic"


class NNGPAnalytic(NTKAnalytic):
    """The infinite-width NNGP kernel K of a fully connected network alone: ``{"nngp": K}``.

    Lee et al. 2018 ("Deep neural networks as Gaussian processes"); Matthews et al. 2018:
    the outputs of the randomly initialized network converge to a Gaussian process with
    covariance K^L given by the recursion Kˡ = σ_w²·E[φ(u)φ(v)] + σ_b², K⁰ = x·x'/d_in (see
    ``ntk_analytic``, which returns it together with the NTK; this one skips the NTK's work).
    """

    _ntk: ClassVar[bool] = False
