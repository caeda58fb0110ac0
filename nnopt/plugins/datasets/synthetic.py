"""Synthetic problems whose structure is known exactly: teacher–student regression, a
Gaussian mixture, ill-conditioned least squares (survey §2, §2.1, §6.4), and Gaussian
textures for convolutional networks."""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from nnopt.core.kinds import Dataset, DatasetParams, DataSplit

# The params each task reads besides the shared ones (n_train, n_test, data_seed); a param
# set away from its default for a task that ignores it is refused (a silent no-op otherwise).
TASK_PARAMS = {
    "teacher_student": ("dim", "teacher_widths", "outputs", "noise"),
    "gaussian_mixture": ("dim", "classes", "separation"),
    "least_squares": ("dim", "condition_number", "rotate", "outputs", "noise"),
    "textures": ("image_size", "channels", "classes", "noise"),
}

# Images filtered per FFT call in `textures`: bounds the complex spectra held at once.
_TEXTURE_CHUNK = 4096


class SyntheticParams(DatasetParams):
    task: Literal["teacher_student", "gaussian_mixture", "least_squares", "textures"] = Field(
        "teacher_student", description="which generator (see the component's description)"
    )
    n_train: int = Field(1024, ge=1, description="number of training samples")
    n_test: int = Field(1024, ge=1, description="number of test samples (same distribution, same teacher / means / w*)")
    dim: int = Field(16, ge=1, description="input dimension d (all tasks but textures)")
    data_seed: int = Field(0, ge=0, description="seed of the data (not the stage seed: the dataset stays fixed across training seeds)")
    noise: float = Field(
        0.0, ge=0.0, description="std σ of Gaussian label noise (teacher_student, least_squares) or pixel noise (textures)"
    )
    outputs: int = Field(1, ge=1, description="output dimension k (teacher_student, least_squares)")
    teacher_widths: list[Annotated[int, Field(ge=1)]] = Field(
        [32], description="hidden widths of the tanh teacher network (teacher_student); [] is a linear teacher"
    )
    classes: int = Field(
        2, ge=2, description="number of classes (gaussian_mixture: mixture components, at most dim; textures: at most image_size)"
    )
    separation: float = Field(3.0, ge=0.0, description="distance between every two class means, in units of the cluster std (gaussian_mixture)")
    condition_number: float = Field(
        10.0, ge=1.0, description="κ = λ_max/λ_min of the input covariance (least_squares)"
    )
    rotate: bool = Field(
        True, description="rotate the covariance's eigenbasis by a random orthogonal matrix (least_squares); false: axis-aligned"
    )
    image_size: int = Field(28, ge=4, description="height = width N of the square images (textures)")
    channels: Literal[1, 3] = Field(1, description="channels of the images, each an independent texture of the class (textures)")

    @model_validator(mode="after")
    def _fits_task(self):
        unused = set().union(*TASK_PARAMS.values()) - set(TASK_PARAMS[self.task])
        for field in sorted(unused):
            if getattr(self, field) != type(self).model_fields[field].default:
                tasks = " and ".join(t for t, fs in TASK_PARAMS.items() if field in fs)
                raise ValueError(f"'{field}' is not used by task '{self.task}' (only by {tasks}); leave it out")
        if self.task == "gaussian_mixture" and self.classes > self.dim:
            raise ValueError(
                f"gaussian_mixture places the {self.classes} class means on orthogonal directions, so classes must be <= dim ({self.dim})"
            )
        if self.task == "textures" and self.classes > self.image_size:
            raise ValueError(
                f"textures spaces the {self.classes} class frequencies N/(2(C+1)) = {self.image_size / (2 * (self.classes + 1)):.2f} "
                f"cycles apart; below half a frequency bin neighbouring classes blur together, so classes must be "
                f"<= image_size ({self.image_size})"
            )
        if self.task == "least_squares" and self.dim == 1 and self.condition_number != 1:
            raise ValueError("least_squares with dim 1 has a single eigenvalue: condition_number must be 1")
        return self


class Synthetic(Dataset):
    """Synthetic data drawn from a ``torch.Generator`` seeded with ``data_seed`` alone.

    Train and test samples are n_train + n_test i.i.d. draws from one distribution (one
    teacher, one set of means, one w*); the first n_train form the training set. All values
    are computed in float64 and stored as float32. Draws happen in the order written below.

    ``teacher_student`` (regression; survey §6.4 on teacher networks): x ~ N(0, I_d),
    y = f*(x) + σε, ε ~ N(0, I_k), with the teacher
    f*(x) = W_{L+1} tanh(W_L ⋯ tanh(W_1 x)), weights drawn first, W_l ~ N(0, 1/d_{l−1})
    entrywise (LeCun's variance, survey eq. (15)), no biases, widths ``teacher_widths``.
    A student at least as wide fits it exactly when σ = 0 (the problem is realizable).

    ``gaussian_mixture`` (classification): class means μ_c = (s/√2) q_c with q_1 … q_C
    orthonormal (QR of a Gaussian d×C matrix), so ‖μ_c − μ_c'‖ = s (``separation``) for
    every pair; labels cycle 0, 1, …, C−1 (balanced); x = μ_y + ε, ε ~ N(0, I_d). For two
    classes the Bayes error is Φ(−s/2) (s = 3: 6.7%).

    ``least_squares`` (regression; the survey's eq. (4)): x ~ N(0, Σ),
    Σ = Q diag(λ_1, …, λ_d) Qᵀ, λ_i = κ^{−(i−1)/(d−1)} spaced geometrically from 1 to 1/κ, so
    cond(Σ) = κ (``condition_number``). Q is Haar-random orthogonal (``rotate``) or the
    identity — an axis-aligned Σ is exactly the case a diagonal preconditioner such as Adam's
    solves, a rotated one is not. w* ~ N(0, I_{d×k}) so that every eigendirection carries an
    O(1) part of the solution; y = x w* + σε. With σ = 0 the problem is realizable:
    min_w ‖y − Xw‖² = 0 at w = w*, and the Hessian XᵀX/n has condition number ≈ κ.

    ``textures`` (classification; images of shape (channels, N, N), N = ``image_size``):
    stationary Gaussian textures whose dominant spatial frequency is set by the class. Labels
    cycle 0, 1, …, C−1 (balanced). White noise w ~ N(0, I) of shape (n, channels, N, N) is
    drawn first, then pixel noise ε ~ N(0, I) of the same shape (always, so the textures do
    not depend on σ), and every channel of image i is

        x = F⁻¹[H_y · F[w]] + σε,   H_c(k) = exp(−(|k| − r_c)²/(2β²)) / Z_c,

    with F the unitary 2-D DFT over (H, W), k = (k_y, k_x) the integer frequency of each DFT
    bin in cycles per image (|k_y|, |k_x| ≤ N/2), r_c = (N/2)(c+1)/(C+1) the radius of class
    c's band (r_c/N cycles per pixel; from low to high frequency as c grows, below Nyquist),
    β = N/(4(C+1)) half the spacing of neighbouring radii, and Z_c chosen so that
    N⁻² Σ_k H_c(k)² = 1: every texture pixel has variance 1 whatever the class, so the class
    is in the frequency content alone. The expected power spectrum of class c is
    E|F[x](k)|² = H_c(k)² + σ², an isotropic ring peaking at |k| = r_c. The exponent is
    shifted by its minimum over the grid before exponentiating, so a narrow band whose ring
    falls between DFT bins keeps its nearest bins instead of underflowing to zero. Because
    the phases are uniformly random, every class has mean image 0: no linear function of the
    pixels separates the classes, and a model needs energy features (a convolution, a
    nonlinearity, pooling) — which a small convolutional network learns.
    """

    cache_version: ClassVar[int] = 1
    Params = SyntheticParams

    def shapes(self, seed: int) -> tuple[tuple[int, ...], int]:
        """From the params alone: inputs of ``dim`` (textures: channels × N × N), one output
        per class or per target."""
        p = self.params
        if p.task == "textures":
            return (p.channels, p.image_size, p.image_size), p.classes
        return (p.dim,), p.classes if p.task == "gaussian_mixture" else p.outputs

    def load(self, seed: int) -> DataSplit:
        p = self.params
        g = torch.Generator(device="cpu").manual_seed(p.data_seed)
        n, d = p.n_train + p.n_test, p.dim
        input_shape: tuple[int, ...] = (d,)
        if p.task == "textures":
            x, y = _textures(g, p.n_train, p.n_test, p.image_size, p.channels, p.classes, p.noise)
            output_dim, num_classes, task = p.classes, p.classes, "classification"
            input_shape = (p.channels, p.image_size, p.image_size)
        elif p.task == "gaussian_mixture":
            x, y = _gaussian_mixture(g, p.n_train, p.n_test, d, p.classes, p.separation)
            output_dim, num_classes, task = p.classes, p.classes, "classification"
        else:
            make = _teacher_student if p.task == "teacher_student" else _least_squares
            x, y = make(g, n, d, p)
            y = y + p.noise * _gaussian(g, *y.shape)
            x, y = x.float(), y.float()
            output_dim, num_classes, task = p.outputs, None, "regression"
        return DataSplit(
            x_train=x[: p.n_train],
            y_train=y[: p.n_train],
            x_test=x[p.n_train :],
            y_test=y[p.n_train :],
            task=task,
            input_shape=input_shape,
            output_dim=output_dim,
            num_classes=num_classes,
            meta={"task": p.task},
        )


def _gaussian(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=g, dtype=torch.float64)


def _orthonormal(g: torch.Generator, d: int, k: int) -> torch.Tensor:
    """A d×k matrix with orthonormal columns, Haar-distributed (QR with the signs of R fixed)."""
    q, r = torch.linalg.qr(_gaussian(g, d, k))
    return q * torch.sign(torch.diagonal(r))


def _teacher_student(g: torch.Generator, n: int, d: int, p: SyntheticParams) -> tuple[torch.Tensor, torch.Tensor]:
    fans = [d, *p.teacher_widths, p.outputs]
    weights = [_gaussian(g, fan_in, fan_out) / math.sqrt(fan_in) for fan_in, fan_out in zip(fans, fans[1:])]
    x = _gaussian(g, n, d)
    h = x
    for w in weights[:-1]:
        h = torch.tanh(h @ w)
    return x, h @ weights[-1]


def _gaussian_mixture(
    g: torch.Generator, n_train: int, n_test: int, d: int, classes: int, separation: float
) -> tuple[torch.Tensor, torch.Tensor]:
    means = separation / math.sqrt(2.0) * _orthonormal(g, d, classes).T  # (C, d)
    y = torch.cat([torch.arange(n_train) % classes, torch.arange(n_test) % classes])
    x = means[y] + _gaussian(g, n_train + n_test, d)
    return x.float(), y.long()


def _least_squares(g: torch.Generator, n: int, d: int, p: SyntheticParams) -> tuple[torch.Tensor, torch.Tensor]:
    exponents = torch.arange(d, dtype=torch.float64) / max(d - 1, 1)
    eigenvalues = p.condition_number ** (-exponents)
    basis = _orthonormal(g, d, d) if p.rotate else torch.eye(d, dtype=torch.float64)
    w_star = _gaussian(g, d, p.outputs)
    x = (_gaussian(g, n, d) * eigenvalues.sqrt()) @ basis.T
    return x, x @ w_star


def texture_filters(size: int, classes: int) -> torch.Tensor:
    """The class filters H_c of ``textures`` on the full DFT grid, shape (C, N, N), float64.

    Axis order is torch's ``fft2`` layout (frequency 0 first, negative frequencies after the
    positive ones); ``rfft2``'s half grid is ``[..., : N // 2 + 1]`` of it."""
    freq = torch.fft.fftfreq(size, d=1.0 / size, dtype=torch.float64)  # integer cycles per image
    radius = torch.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2)
    centres = (size / 2) * torch.arange(1, classes + 1, dtype=torch.float64) / (classes + 1)
    width = size / (4 * (classes + 1))
    exponent = (radius[None] - centres[:, None, None]) ** 2 / (2 * width**2)
    # shifting each class's exponent by its minimum rescales H_c by a constant, which Z_c
    # removes again; it only keeps a band narrower than the bin spacing from underflowing
    exponent = exponent - exponent.amin(dim=(1, 2), keepdim=True)
    h = torch.exp(-exponent)
    return h / h.pow(2).mean(dim=(1, 2), keepdim=True).sqrt()


def _textures(
    g: torch.Generator, n_train: int, n_test: int, size: int, channels: int, classes: int, noise: float
) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.cat([torch.arange(n_train) % classes, torch.arange(n_test) % classes])
    n = n_train + n_test
    white = _gaussian(g, n, channels, size, size)
    pixel_noise = _gaussian(g, n, channels, size, size)
    half = texture_filters(size, classes)[..., : size // 2 + 1]  # H is even in k: rfft2 suffices
    x = torch.empty(n, channels, size, size, dtype=torch.float32)
    for start in range(0, n, _TEXTURE_CHUNK):
        rows = slice(start, start + _TEXTURE_CHUNK)
        spectrum = torch.fft.rfft2(white[rows], norm="ortho") * half[y[rows]][:, None]
        texture = torch.fft.irfft2(spectrum, s=(size, size), norm="ortho")
        x[rows] = (texture + noise * pixel_noise[rows]).float()
    return x, y.long()
