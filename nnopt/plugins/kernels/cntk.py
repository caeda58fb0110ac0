"""The convolutional NTK (CNTK) and NNGP kernel of a conv + activation stack.

Arora, Du, Hu, Li, Salakhutdinov & Wang 2019 ("On exact computation with an infinitely wide
neural net"), in neural-tangents' conventions (``stax.Conv(padding='SAME')``, NTK
parameterization, channels → ∞). For images x of shape (C, H, W), positions p = (h, w):

    K⁰(x, x')_{p,p'} = Σ_c x_{c,p} x'_{c,p'} / C
    Kˡ_{p,p'} = σ_w²·⟨K_φ(Kˡ⁻¹)⟩_{p,p'} + σ_b²,  Θˡ_{p,p'} = Kˡ_{p,p'} + σ_w²·⟨K̇_φ(Kˡ⁻¹) ⊙ Θˡ⁻¹⟩_{p,p'}

for l = 1..depth (K_φ(K⁰) read as K⁰, Θ⁰ = 0), where ⟨T⟩_{p,p'} = (1/k²)·Σ_δ T_{p+δ, p'+δ} is
the average over the k×k filter offsets δ (zero outside the image: ``same`` padding), and
K_φ, K̇_φ are the dual activations at each pair of positions, with the variances K(x,x)_{p,p},
K(x',x')_{p',p'} (``dual_activations``). The readout is one dense layer (σ_w, σ_b) after

- ``flatten``: K = σ_w²·mean_p K_φ(K^depth)_{p,p} + σ_b², Θ = K + σ_w²·mean_p (K̇_φ ⊙ Θ^depth)_{p,p}:
  only same-position covariances enter (the recursion of the diagonal p = p' is closed),
  so the cost is O(n1·n2·H·W·k²·depth);
- ``gap`` (global average pooling): the mean over all pairs (p, p') — the full spatial
  covariance, O(n1·n2·(HW)²·k²·depth).

Pairs of examples are computed in blocks of ``block_size`` × ``block_size`` (bounded
memory); ``compute(..., progress=callback)`` calls ``callback(done, total)`` after each block.
With x2 = None only the blocks on and above the diagonal are computed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

from pydantic import Field, field_validator

from nnopt.core.component import Params, ref_type
from nnopt.core.errors import StageError
from nnopt.core.kinds import Kernel, KernelSource

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .dual_activations import Dual


class CNTKParams(Params):
    depth: int = Field(3, ge=1, le=100, description="convolutional layers (each conv k×k, same padding, then φ)")
    kernel_size: int = Field(3, ge=1, le=15, description="filter size k (odd: `same` padding is symmetric)")
    readout: Literal["flatten", "gap"] = Field("flatten", description="`flatten`: dense readout of the flattened "
                                               "features (same-position covariances only); `gap`: global average "
                                               "pooling then dense (full spatial covariance)")
    activation: ref_type("activations") = Field(  # type: ignore[valid-type]
        "relu", validate_default=True, description="φ after each conv (closed form or Gauss–Hermite quadrature)")
    W_std: float = Field(2.0 ** 0.5, gt=0.0, description="σ_w of every layer (√2: Arora et al.'s c_σ = 2 for relu)")
    b_std: float = Field(0.0, ge=0.0, description="σ_b of every layer")
    image_shape: list[int] | None = Field(None, min_length=3, max_length=3, description="[C, H, W] of flat inputs "
                                          "(None: inputs are already (n, C, H, W))")
    block_size: int = Field(32, ge=1, le=4096, description="examples per side of a block of pairs")
    quadrature_points: int = Field(16, ge=4, le=200, description="Gauss–Hermite nodes for activations without a "
                                   "closed form")
    dtype: Literal["float64", "float32"] = "float64"

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("kernel_size must be odd (`same` padding pads (k − 1)/2 on each side)")
        return value

    @field_validator("image_shape")
    @classmethod
    def _positive(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and min(value) < 1:
            raise ValueError("image_shape entries must be >= 1")
        return value


def _window_diag(t: "torch.Tensor", k: int) -> "torch.Tensor":
    """⟨T⟩ for same-position tensors (..., H, W): the k×k mean with zero padding."""
    import torch.nn.functional as F

    shape = t.shape
    out = F.avg_pool2d(t.reshape(-1, 1, shape[-2], shape[-1]), k, stride=1, padding=k // 2, count_include_pad=True)
    return out.reshape(shape)


def _window_full(t: "torch.Tensor", k: int) -> "torch.Tensor":
    """⟨T⟩_{p,p'} = (1/k²) Σ_δ T_{p+δ,p'+δ} for full spatial tensors (..., H, W, H, W)."""
    import torch
    import torch.nn.functional as F

    if k == 1:
        return t.clone()
    r = k // 2
    H, W = t.shape[-4], t.shape[-3]
    padded = F.pad(t, (r,) * 8)  # zeros around all four spatial axes: `same` padding
    out = torch.zeros_like(t)
    for i in range(k):
        for j in range(k):
            out += padded[..., i:i + H, j:j + W, i:i + H, j:j + W]
    return out.mul_(1.0 / (k * k))


class CNTK(Kernel):
    """The infinite-channel NTK and NNGP kernel of a conv + activation stack with a dense
    readout after flattening or global average pooling (Arora et al. 2019; module docstring
    of ``nnopt.plugins.kernels.cntk``). Returns ``{"ntk": Θ, "nngp": K}``, each (n1, n2),
    one kernel per output, in neural-tangents' conventions (``stax.serial(Conv(C, (k, k),
    padding='SAME'), φ, ..., Flatten() | GlobalAvgPool(), Dense(O))`` with
    ``parameterization='ntk'``; checked against neural-tangents 0.6.5 to 1e-10 in float64)."""

    Params: ClassVar[type[CNTKParams]] = CNTKParams
    cache_version: ClassVar[int] = 1
    params: CNTKParams

    def compute(self, x1: "torch.Tensor", x2: "torch.Tensor | None", source: KernelSource | None,
                progress: Callable[[int, int], Any] | None = None) -> dict[str, "torch.Tensor"]:
        import torch

        from .dual_activations import dual_of

        p = self.params
        dtype = torch.float64 if p.dtype == "float64" else torch.float32
        device = getattr(source, "device", None) or x1.device
        a = self._images(x1).to(device, dtype)
        b = None if x2 is None else self._images(x2).to(device, dtype)
        if b is not None and b.shape[1:] != a.shape[1:]:
            raise StageError(f"cntk: x1 holds images {tuple(a.shape[1:])} and x2 {tuple(b.shape[1:])}")
        dual = dual_of(p.activation.instantiate(), p.quadrature_points)
        qa = self._variances(a, dual)
        qb = qa if b is None else self._variances(b, dual)
        other = a if b is None else b
        n1, n2, bs = a.shape[0], other.shape[0], p.block_size
        ntk = torch.empty(n1, n2, dtype=dtype, device=device)
        nngp = torch.empty_like(ntk)
        blocks = [(i, j) for i in range(0, n1, bs) for j in range(0, n2, bs) if b is not None or j >= i]
        with torch.no_grad():
            for done, (i, j) in enumerate(blocks, start=1):
                k, t = self._block(a[i:i + bs], other[j:j + bs], [q[i:i + bs] for q in qa],
                                   [q[j:j + bs] for q in qb], dual)
                if b is None and i == j:  # a block on the diagonal: exactly symmetric, from its upper triangle
                    k, t = k.triu() + k.triu(1).T, t.triu() + t.triu(1).T
                nngp[i:i + bs, j:j + bs], ntk[i:i + bs, j:j + bs] = k, t
                if b is None and j > i:
                    nngp[j:j + bs, i:i + bs], ntk[j:j + bs, i:i + bs] = k.T, t.T
                if progress is not None:
                    progress(done, len(blocks))
        return {"ntk": ntk, "nngp": nngp}

    # ---------------------------------------------------------------- pieces
    def _images(self, x: "torch.Tensor") -> "torch.Tensor":
        shape = self.params.image_shape
        if shape is not None:
            if math.prod(x.shape[1:]) != math.prod(shape):
                raise StageError(f"cntk: image_shape {shape} has {math.prod(shape)} values and the inputs "
                                 f"{math.prod(x.shape[1:])} per example")
            return x.reshape(x.shape[0], *shape)
        if x.ndim != 4:
            raise StageError(f"cntk: inputs of shape {tuple(x.shape[1:])} are not images (C, H, W): give "
                             "`image_shape: [C, H, W]` (for digits: [1, 8, 8]) or load them unflattened "
                             "(digits: `flatten: false`)")
        return x

    def _variances(self, x: "torch.Tensor", dual: "Dual") -> list["torch.Tensor"]:
        """K^l(x, x)_{p,p} for l = 1..depth, each (n, H, W): the closed same-position recursion."""
        p = self.params
        w, b = p.W_std ** 2, p.b_std ** 2
        post = (x * x).mean(1)
        out = []
        for index in range(p.depth):
            if index > 0:
                post = dual.diag(out[-1])
            out.append(_window_diag(post, p.kernel_size) * w + b)
        return out

    def _block(self, a: "torch.Tensor", b: "torch.Tensor", qa: list["torch.Tensor"], qb: list["torch.Tensor"],
               dual: "Dual") -> tuple["torch.Tensor", "torch.Tensor"]:
        import torch

        p = self.params
        w, bias, k = p.W_std ** 2, p.b_std ** 2, p.kernel_size
        full = p.readout == "gap"
        C = a.shape[1]
        if full:  # (n1, n2, H, W, H, W)
            cov = torch.einsum("achw,bcij->abhwij", a, b) / C
            window = _window_full
            rows = lambda q: q[:, None, :, :, None, None]  # noqa: E731 - variance at p of the row example
            cols = lambda q: q[None, :, None, None, :, :]  # noqa: E731
        else:  # (n1, n2, H, W)
            cov = torch.einsum("achw,bchw->abhw", a, b) / C
            window = _window_diag
            rows = lambda q: q[:, None]  # noqa: E731
            cols = lambda q: q[None, :]  # noqa: E731
        theta = None
        for index in range(p.depth):
            if index > 0:
                cov, kdot = dual(cov, rows(qa[index - 1]), cols(qb[index - 1]))
                theta = theta * kdot
            cov = window(cov, k).mul_(w).add_(bias)
            theta = cov.clone() if theta is None else window(theta, k).mul_(w).add_(cov)
        post, kdot = dual(cov, rows(qa[-1]), cols(qb[-1]))
        theta = theta * kdot
        spatial = tuple(range(2, cov.ndim))
        nngp = post.mean(spatial) * w + bias
        return nngp, theta.mean(spatial) * w + nngp
