"""Synthetic data sets: each generator's documented equation, checked on its samples."""

import math
import re

import pytest
import torch
from pydantic import ValidationError

from nnopt.plugins.datasets.synthetic import Synthetic


def load(seed=0, **params):
    return Synthetic(Synthetic.Params(**params)).load(seed)


def test_identity_follows_data_seed_not_stage_seed():
    a, b, c = load(seed=0), load(seed=5), load(data_seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)


def test_teacher_student_shapes_and_teacher_equation():
    d = load(task="teacher_student", n_train=200, n_test=50, dim=5, outputs=3, teacher_widths=[7, 4])
    assert (d.task, d.output_dim, d.num_classes, d.input_shape) == ("regression", 3, None, (5,))
    assert d.x_train.shape == (200, 5) and d.y_train.shape == (200, 3) and d.y_test.shape == (50, 3)
    assert d.x_train.dtype == d.y_train.dtype == torch.float32
    # redraw the teacher as documented: weights first, W_l ~ N(0, 1/fan_in), then x
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(i, o, generator=g, dtype=torch.float64) / math.sqrt(i) for i, o in [(5, 7), (7, 4), (4, 3)]]
    x = torch.randn(250, 5, generator=g, dtype=torch.float64)
    y = torch.tanh(torch.tanh(x @ ws[0]) @ ws[1]) @ ws[2]
    torch.testing.assert_close(d.x_train, x[:200].float())
    torch.testing.assert_close(d.y_test, y[200:].float())


def test_noise_is_added_with_the_given_std():
    clean = load(n_train=4000, noise=0.0)
    noisy = load(n_train=4000, noise=0.5)
    assert torch.equal(clean.x_train, noisy.x_train)
    assert (noisy.y_train - clean.y_train).std().item() == pytest.approx(0.5, rel=0.05)


def test_gaussian_mixture_means_are_equidistant_and_classes_separable():
    d = load(task="gaussian_mixture", classes=4, dim=8, separation=6.0, n_train=2000, n_test=2000)
    assert (d.task, d.num_classes, d.output_dim) == ("classification", 4, 4)
    assert d.y_train.dtype == torch.int64 and torch.bincount(d.y_train).tolist() == [500] * 4
    means = torch.stack([d.x_train[d.y_train == c].mean(0) for c in range(4)])
    distances = torch.cdist(means, means)[~torch.eye(4, dtype=torch.bool)]
    assert distances.min() > 5.5 and distances.max() < 6.5  # ‖μ_c − μ_c'‖ = separation
    # nearest-mean classification on test data: pairwise error Φ(−3) ≈ 0.13% per rival
    predicted = torch.cdist(d.x_test, means).argmin(1)
    assert (predicted == d.y_test).float().mean() > 0.98
    # within-class covariance is I
    centred = d.x_train - means[d.y_train]
    assert centred.var(0).sub(1).abs().max() < 0.15


def test_two_class_mixture_error_is_near_bayes():
    d = load(task="gaussian_mixture", separation=3.0, n_train=4000, n_test=4000)
    means = torch.stack([d.x_train[d.y_train == c].mean(0) for c in range(2)])
    error = (torch.cdist(d.x_test, means).argmin(1) != d.y_test).float().mean().item()
    bayes = 0.5 * math.erfc(1.5 / math.sqrt(2))  # Φ(−s/2) = 0.067
    assert error == pytest.approx(bayes, abs=0.02)


@pytest.mark.parametrize("rotate", [True, False])
def test_least_squares_condition_number_and_realizability(rotate):
    kappa = 100.0
    d = load(task="least_squares", n_train=20000, n_test=10, dim=8, condition_number=kappa, rotate=rotate)
    x, y = d.x_train.double(), d.y_train.double()
    eigenvalues = torch.linalg.eigvalsh(x.T @ x / len(x))
    assert eigenvalues.max() / eigenvalues.min() == pytest.approx(kappa, rel=0.1)
    assert eigenvalues.max() == pytest.approx(1.0, rel=0.05)
    solution = torch.linalg.lstsq(x, y).solution
    assert (x @ solution - y).abs().max() < 1e-4  # realizable: zero residual up to float32 storage
    offdiagonal = (x.T @ x / len(x)) - torch.diag(torch.diagonal(x.T @ x / len(x)))
    assert (offdiagonal.abs().max() > 0.05) == rotate  # a rotated Σ is not diagonal


def test_least_squares_noise_leaves_residual_of_noise_variance():
    d = load(task="least_squares", n_train=5000, dim=4, noise=0.3, outputs=2)
    assert d.y_train.shape == (5000, 2) and d.output_dim == 2
    x, y = d.x_train.double(), d.y_train.double()
    residual = x @ torch.linalg.lstsq(x, y).solution - y
    assert residual.std().item() == pytest.approx(0.3, rel=0.05)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"task": "gaussian_mixture", "classes": 5, "dim": 4}, "classes must be <= dim"),
        ({"task": "gaussian_mixture", "noise": 0.1}, "'noise' is not used by task 'gaussian_mixture'"),
        ({"task": "least_squares", "classes": 3}, "'classes' is not used"),
        ({"task": "teacher_student", "condition_number": 5}, "only by least_squares"),
        ({"task": "least_squares", "dim": 1}, "condition_number must be 1"),
        ({"noise": -1}, "greater than or equal"),
        ({"task": "least_squares", "condition_number": 0.5}, "greater than or equal"),
        ({"task": "spiral"}, "teacher_student"),
    ],
)
def test_invalid_combinations_are_explained(params, message):
    with pytest.raises(ValidationError, match=message):
        Synthetic.Params(**params)


def test_resolved_params_with_all_defaults_validate_again():
    # the engine stores params with defaults filled in; they must parse back unchanged
    for task in ("teacher_student", "gaussian_mixture", "least_squares"):
        dumped = Synthetic.Params(task=task).model_dump(mode="json")
        assert Synthetic.Params.model_validate(dumped).model_dump(mode="json") == dumped


@pytest.mark.parametrize("params", [
    {"task": "teacher_student", "dim": 5, "outputs": 3},
    {"task": "gaussian_mixture", "dim": 6, "classes": 4},
    {"task": "least_squares", "dim": 3, "outputs": 2},
], ids=["teacher_student", "gaussian_mixture", "least_squares"])
def test_shapes_from_the_params_are_those_of_the_loaded_data(params):
    component = Synthetic(Synthetic.Params(n_train=16, n_test=8, **params))
    d = component.load(0)
    assert component.shapes(0) == (d.input_shape, d.output_dim)


# ------------------------------------------------------------------------------- textures
def textures(seed=0, **params):
    return load(seed, task="textures", **params)


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32), (1, 4), (3, 7)])
def test_textures_shapes_labels_and_dtypes(channels, size):
    params = dict(task="textures", n_train=12, n_test=6, image_size=size, channels=channels, classes=3)
    component = Synthetic(Synthetic.Params(**params))
    d = component.load(0)
    assert d.x_train.shape == (12, channels, size, size) and d.x_test.shape == (6, channels, size, size)
    assert (d.task, d.input_shape, d.output_dim, d.num_classes) == ("classification", (channels, size, size), 3, 3)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert component.shapes(0) == (d.input_shape, d.output_dim)
    assert torch.isfinite(d.x_train).all()


def test_textures_follow_the_data_seed_not_the_stage_seed():
    a, b, c = textures(seed=0, n_train=20, n_test=10), textures(seed=7, n_train=20, n_test=10), textures(n_train=20, n_test=10, data_seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert torch.equal(a.x_train, textures(seed=0, n_train=20, n_test=10).x_train)  # and across calls
    assert not torch.equal(a.x_train, c.x_train)


def test_textures_classes_are_balanced_in_both_splits():
    d = textures(classes=5, n_train=100, n_test=35, image_size=8)
    assert torch.bincount(d.y_train).tolist() == [20] * 5 and torch.bincount(d.y_test).tolist() == [7] * 5


def test_textures_are_the_documented_equation():
    n, size, classes, sigma = 10, 9, 3, 0.25
    d = textures(n_train=6, n_test=4, image_size=size, channels=3, classes=classes, noise=sigma)
    g = torch.Generator().manual_seed(0)
    w = torch.randn(n, 3, size, size, generator=g, dtype=torch.float64)
    eps = torch.randn(n, 3, size, size, generator=g, dtype=torch.float64)
    k = torch.fft.fftfreq(size, d=1 / size, dtype=torch.float64)
    radius = (k[:, None] ** 2 + k[None, :] ** 2).sqrt()
    r = size / 2 * torch.arange(1, classes + 1, dtype=torch.float64) / (classes + 1)
    beta = size / (4 * (classes + 1))
    h = torch.exp(-((radius - r[:, None, None]) ** 2) / (2 * beta**2))
    h = h / h.pow(2).mean((1, 2), keepdim=True).sqrt()  # N⁻² Σ_k H_c(k)² = 1
    y = torch.cat([torch.arange(6) % classes, torch.arange(4) % classes])
    x = torch.fft.ifft2(torch.fft.fft2(w, norm="ortho") * h[y][:, None], norm="ortho")
    assert x.imag.abs().max() < 1e-12  # H is even in k, so the texture is real
    x = x.real + sigma * eps
    torch.testing.assert_close(torch.cat([d.x_train, d.x_test]), x.float())


def test_textures_noise_adds_pixel_noise_to_the_same_textures():
    clean, noisy = textures(n_train=64, image_size=16), textures(n_train=64, image_size=16, noise=0.5)
    assert (noisy.x_train - clean.x_train).std().item() == pytest.approx(0.5, rel=0.05)
    assert clean.x_train.var().item() == pytest.approx(1.0, rel=0.1)  # unit-variance textures


def test_textures_power_spectrum_peaks_at_each_class_frequency():
    size, classes = 24, 4
    d = textures(n_train=400, n_test=4, image_size=size, classes=classes, channels=3)
    k = torch.fft.fftfreq(size, d=1 / size, dtype=torch.float64)
    radius = (k[:, None] ** 2 + k[None, :] ** 2).sqrt()
    beta = size / (4 * (classes + 1))
    peaks = []
    for c in range(classes):
        images = d.x_train[d.y_train == c].double()
        power = torch.fft.fft2(images, norm="ortho").abs().pow(2).mean((0, 1))  # mean power spectrum of class c
        peak = radius.flatten()[power.argmax()].item()
        expected = size / 2 * (c + 1) / (classes + 1)
        assert abs(peak - expected) <= beta, (c, peak, expected)
        # and the band is where the energy is: a bin a few widths away holds almost none
        assert power[radius > expected + 3 * beta].mean() < 0.05 * power.max()
        peaks.append(peak)
    assert peaks == sorted(peaks)


def test_textures_mean_image_is_zero_so_only_energy_features_separate_them():
    d = textures(n_train=200, n_test=400, image_size=8, classes=2, noise=0.1)
    # least squares on the pixels (a linear classifier): at chance on held-out images
    x_train = torch.cat([d.x_train.flatten(1).double(), torch.ones(200, 1, dtype=torch.float64)], 1)
    w = torch.linalg.lstsq(x_train, (2.0 * d.y_train - 1).double()[:, None]).solution
    x_test = torch.cat([d.x_test.flatten(1).double(), torch.ones(400, 1, dtype=torch.float64)], 1)
    linear = ((x_test @ w).squeeze(1) > 0).long().eq(d.y_test).double().mean().item()
    assert linear < 0.62
    # a 3×3 convolution, squared and averaged over positions (an energy detector), then a
    # linear head: a few full-batch gradient steps (plain autograd, no optimizer to import)
    g = torch.Generator().manual_seed(0)
    kernel = (torch.randn(4, 1, 3, 3, generator=g) / 3).requires_grad_()
    head, bias = torch.zeros(4, 2, requires_grad=True), torch.zeros(2, requires_grad=True)

    def logits(x):
        return torch.nn.functional.conv2d(x, kernel).pow(2).mean((2, 3)) @ head + bias

    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(logits(d.x_train), d.y_train)
        grads = torch.autograd.grad(loss, [kernel, head, bias])
        with torch.no_grad():
            for param, grad in zip([kernel, head, bias], grads):
                param -= 0.5 * grad
    with torch.no_grad():
        accuracy = logits(d.x_test).argmax(1).eq(d.y_test).float().mean().item()
    assert accuracy > 0.9, (accuracy, linear)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"task": "textures", "dim": 8}, "'dim' is not used by task 'textures'"),
        ({"task": "textures", "separation": 2.0}, "'separation' is not used by task 'textures'"),
        ({"task": "gaussian_mixture", "image_size": 32}, "'image_size' is not used by task 'gaussian_mixture' (only by textures)"),
        ({"task": "least_squares", "channels": 3}, "'channels' is not used"),
        ({"task": "textures", "channels": 2}, "1 or 3"),
        ({"task": "textures", "image_size": 3}, "greater than or equal to 4"),
        ({"task": "textures", "image_size": 4, "classes": 5}, "classes must be <= image_size"),
    ],
)
def test_invalid_texture_params_are_explained(params, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        Synthetic.Params(**params)


def test_textures_defaults_are_mnist_sized_and_round_trip():
    params = Synthetic.Params(task="textures")
    assert Synthetic(params).shapes(0) == ((1, 28, 28), 2)
    dumped = params.model_dump(mode="json")
    assert Synthetic.Params.model_validate(dumped).model_dump(mode="json") == dumped
