"""ntk_analytic / nngp_analytic: neural-tangents' numbers, the recursion written out by hand for
a few inputs, linear networks in closed form, Monte Carlo at large width, and the
architecture read from the model spec."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))
from stage_helpers import resolve_all  # noqa: E402

from nnopt.core.errors import StageError  # noqa: E402
from nnopt.core.kinds import KernelSource  # noqa: E402
from nnopt.core.model_spec import ModelSpec  # noqa: E402
from nnopt.plugins.kernels.analytic import NNGPAnalytic, NTKAnalytic  # noqa: E402

F64 = torch.float64
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def kernel(cls=NTKAnalytic, **params):
    return cls(resolve_all(cls.Params.model_validate(params)))


def spec(**arch):
    return resolve_all(ModelSpec.model_validate({"arch": {"name": "mlp", **arch}}))


def source(model_spec=None, model=None):
    return KernelSource(model=model, model_spec=model_spec, device=CPU, dtype=F64)


def inputs(n, d, phase):
    return (torch.sin(torch.arange(n * d, dtype=F64) * 0.7 + phase) * 1.5).reshape(n, d)


X1, X2 = inputs(3, 5, 0.3), inputs(2, 5, 1.1)

# neural-tangents 0.6.5 (JAX, float64): stax.serial(Dense(7), φ, Dense(9), φ, Dense(1)) with
# W_std=1.5, b_std=0.3 and the parameterization named, kernel_fn(X1, X2, ('nngp', 'ntk'))
NEURAL_TANGENTS = {
    ("relu", "ntk"): (
        [[2.6703885891429833, 1.5107518719058597], [1.246694531970317, 2.874285338967162], [3.568870745493177, 1.3128083922521394]],
        [[5.783771565796001, 1.6306186466110033], [1.0723261118508545, 6.3839138088336185], [10.171793432541014, 1.128051833576942]],
    ),
    ("erf", "standard"): (
        [[0.8026763433555206, -0.1416364930248219], [-0.6717651429214434, 0.8485675857169312], [1.3040023789762563, -0.6977466131642648]],
        [[9.021525209329216, -0.5385641589848307], [-6.2201188531454426, 9.595894770171572], [17.64781916008595, -6.603789934471218]],
    ),
    ("gelu", "ntk"): (
        [[2.226955392313015, 1.0316401232432397], [0.8096384128602738, 2.435471914175766], [3.2089088707398092, 0.873147708418242]],
        [[5.345077279922897, 1.0073611119594794], [0.6072412688779044, 5.993358714202458], [9.836194734853766, 0.6699858797749896]],
    ),
}


@pytest.mark.parametrize("activation,parameterization", list(NEURAL_TANGENTS))
def test_matches_neural_tangents(activation, parameterization):
    nngp, ntk = (torch.tensor(v, dtype=F64) for v in NEURAL_TANGENTS[(activation, parameterization)])
    k = kernel(depth=2, widths=[7, 9], activation=activation, parameterization=parameterization, W_std=1.5, b_std=0.3)
    out = k.compute(X1, X2, source())
    assert torch.allclose(out["nngp"], nngp, rtol=1e-10, atol=0)
    assert torch.allclose(out["ntk"], ntk, rtol=1e-10, atol=0)


def test_the_model_spec_gives_the_same_kernel_as_explicit_params():
    nngp, ntk = (torch.tensor(v, dtype=F64) for v in NEURAL_TANGENTS[("relu", "ntk")])
    derived = spec(widths=[7, 9], activation="relu", parameterization="ntk", W_std=1.5, b_std=0.3)
    out = kernel().compute(X1, X2, source(derived))
    assert torch.allclose(out["nngp"], nngp, rtol=1e-10) and torch.allclose(out["ntk"], ntk, rtol=1e-10)
    # explicit params override the spec's
    deeper = kernel(depth=3).compute(X1, X2, source(derived))
    assert not torch.allclose(deeper["ntk"], ntk)


def arc_cosine(q1, q2, c):
    """E[relu(u) relu(v)], E[1(u>0) 1(v>0)] for (u, v) ~ N(0, [[q1, c], [c, q2]]), written out."""
    theta = math.acos(max(-1.0, min(1.0, c / math.sqrt(q1 * q2))))
    return (math.sqrt(q1 * q2) / (2 * math.pi) * (math.sin(theta) + (math.pi - theta) * math.cos(theta)),
            (math.pi - theta) / (2 * math.pi))


def test_relu_depth_two_recursion_by_hand_for_three_inputs():
    """Two hidden layers, NTK parameterization: every entry of K and Θ evaluated with floats."""
    x = [[1.0, 0.0, 2.0], [0.5, -1.0, 0.0], [-1.0, 1.0, 1.0]]
    w, b = 2.0, 0.1 ** 2  # σ_w², σ_b²
    d = 3
    k0 = [[sum(a * c for a, c in zip(xi, xj)) / d for xj in x] for xi in x]
    k1 = [[w * k0[i][j] + b for j in range(3)] for i in range(3)]
    t1 = k1
    post1 = [[arc_cosine(k1[i][i], k1[j][j], k1[i][j]) for j in range(3)] for i in range(3)]
    k2 = [[w * post1[i][j][0] + b for j in range(3)] for i in range(3)]
    t2 = [[k2[i][j] + w * post1[i][j][1] * t1[i][j] for j in range(3)] for i in range(3)]
    post2 = [[arc_cosine(k2[i][i], k2[j][j], k2[i][j]) for j in range(3)] for i in range(3)]
    k3 = [[w * post2[i][j][0] + b for j in range(3)] for i in range(3)]
    t3 = [[k3[i][j] + w * post2[i][j][1] * t2[i][j] for j in range(3)] for i in range(3)]
    out = kernel(depth=2, activation="relu", W_std=math.sqrt(2.0), b_std=0.1).compute(torch.tensor(x, dtype=F64), None,
                                                                                        source())
    # arccos near ρ = 1 turns a rounding of ρ (1e-16) into θ ~ 1e-8: K̇ on the diagonal to ~1e-9
    assert torch.allclose(out["nngp"], torch.tensor(k3, dtype=F64), rtol=1e-12)
    assert torch.allclose(out["ntk"], torch.tensor(t3, dtype=F64), rtol=1e-8)


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_identity_activation_gives_the_linear_network_kernels(parameterization):
    """φ = id, no bias: K = σ_w^{2(L+1)}·x·x'/d; Θ = (L+1)·σ_w^{2(L+1)}·x·x'/d (ntk) and, for
    standard, Θ = Σ_l n_l σ_w^{2(L−l)} σ_w^{2l} x·x'/d with n_0 = d (each layer's weight gradient)."""
    depth, w, widths = 3, 1.3 ** 2, [4, 6, 5]
    out = kernel(depth=depth, activation="identity", W_std=1.3, b_std=0.0, widths=widths, bias=False,
                 parameterization=parameterization).compute(X1, X2, source())
    gram = X1 @ X2.T / X1.shape[1]
    assert torch.allclose(out["nngp"], w ** (depth + 1) * gram, rtol=1e-13)
    if parameterization == "ntk":
        expected = (depth + 1) * w ** (depth + 1) * gram
    else:
        fan_ins = [X1.shape[1]] + widths
        expected = sum(n * w ** l * w ** (depth - l) for l, n in enumerate(fan_ins)) * gram
    assert torch.allclose(out["ntk"], expected, rtol=1e-13)


@pytest.mark.parametrize("activation", ["relu", "erf", "gelu", "tanh", "abs_like_leaky"])
def test_ntk_dominates_nngp_on_the_diagonal_and_is_symmetric(activation):
    params = {"activation": {"name": "leaky_relu", "negative_slope": 0.5}} if activation == "abs_like_leaky" else \
        {"activation": activation}
    x = inputs(6, 4, 0.9)
    out = kernel(depth=3, b_std=0.2, quadrature_points=24, **params).compute(x, None, source())
    assert (torch.diagonal(out["ntk"]) >= torch.diagonal(out["nngp"])).all()
    assert torch.equal(out["ntk"], out["ntk"].T) and torch.equal(out["nngp"], out["nngp"].T)
    full = kernel(depth=3, b_std=0.2, quadrature_points=24, **params).compute(x, x.clone(), source())
    # closed forms: ρ rounds differently on the diagonal of the two (~1e-10 through arccos);
    # quadrature (tanh) is not symmetric in (q₁, q₂) to its own accuracy: K(x', x) ≠ K(x, x') by ~1e-5
    tol = 1e-4 if activation == "tanh" else 1e-8
    assert torch.allclose(full["ntk"], out["ntk"], rtol=tol, atol=tol)
    assert torch.allclose(full["nngp"], out["nngp"], rtol=tol, atol=tol)


def test_nngp_analytic_returns_the_same_nngp_alone():
    both = kernel(depth=2, activation="erf", b_std=0.3).compute(X1, X2, source())
    alone = kernel(NNGPAnalytic, depth=2, activation="erf", b_std=0.3).compute(X1, X2, source())
    assert set(alone) == {"nngp"} and torch.allclose(alone["nngp"], both["nngp"], rtol=1e-14)


def test_nngp_matches_monte_carlo_over_random_wide_networks():
    """K = E_θ[f(x) f(x')] for the network at init: mean over M random networks of width n of
    the output layer's conditional covariance σ_w²·⟨φ(h(x)), φ(h(x'))⟩/n + σ_b² (variance ~1/(nM))."""
    g = torch.Generator().manual_seed(0)
    m, n, d = 100, 512, X1.shape[1]
    w_std, b_std = math.sqrt(2.0), 0.2
    x = torch.cat([X1, X2])
    h = torch.einsum("pd,mhd->mph", x, w_std * torch.randn(m, n, d, generator=g, dtype=F64) / math.sqrt(d)) \
        + b_std * torch.randn(m, 1, n, generator=g, dtype=F64)
    w2 = w_std * torch.randn(m, n, n, generator=g, dtype=F64) / math.sqrt(n)
    h = torch.bmm(torch.relu(h), w2.transpose(1, 2)) + b_std * torch.randn(m, 1, n, generator=g, dtype=F64)
    post = torch.relu(h)
    mc = (w_std ** 2 * torch.bmm(post, post.transpose(1, 2)) / n + b_std ** 2).mean(0)
    exact = kernel(NNGPAnalytic, depth=2, W_std=w_std, b_std=b_std).compute(x, None, source())["nngp"]
    assert torch.allclose(mc, exact, rtol=0.02, atol=0.01 * float(exact.diagonal().mean()))


def test_ntk_matches_the_empirical_ntk_of_a_very_wide_network():
    """One hidden layer of width 2^16 (NTK parameterization, the nnopt MLP itself): Θ by
    torch.func per-example gradients; its relative error ~1/√width."""
    from torch.func import functional_call, jacrev, vmap

    from nnopt.core.kinds import DataSplit
    from nnopt.core.model_spec import build_model

    arch = spec(widths=[2 ** 16], activation="relu", parameterization="ntk", W_std=math.sqrt(2.0), b_std=0.3)
    data = DataSplit(X1.float(), torch.zeros(3), X1.float(), torch.zeros(3), "regression", (5,), 1)
    model = build_model(arch, data, seed=0, device=CPU).double()
    params = dict(model.named_parameters())
    x = torch.cat([X1, X2])

    def f(p, xi):
        return functional_call(model, p, (xi[None],)).reshape(())

    jac = vmap(jacrev(f), in_dims=(None, 0))(params, x)
    emp = sum(j.reshape(x.shape[0], -1) @ j.reshape(x.shape[0], -1).T for j in jac.values())
    exact = kernel().compute(x, None, source(arch))["ntk"]
    assert torch.linalg.matrix_norm(emp - exact) / torch.linalg.matrix_norm(exact) < 0.02


def test_standard_parameterization_with_pytorch_default_init_uses_the_uniform_variances():
    """nn.Linear's default init: W, b ~ U(±1/√n), Var = 1/(3n): σ_w² = 1/3, σ_b² = 1/(3n) per layer."""
    derived = kernel().compute(X1, X2, source(spec(widths=[7], activation="identity")))
    d = X1.shape[1]
    gram = X1 @ X2.T / d
    k1 = gram / 3 + 1 / (3 * d)
    expected_nngp = k1 / 3 + 1 / (3 * 7)
    assert torch.allclose(derived["nngp"], expected_nngp, rtol=1e-13)
    # Θ = n₁·K_post + σ_w²·Θ¹ + 1 with Θ¹ = d·K⁰ + 1
    expected_ntk = 7 * k1 + (d * gram + 1) / 3 + 1
    assert torch.allclose(derived["ntk"], expected_ntk, rtol=1e-13)


def test_refusals_are_clear():
    cnn = resolve_all(ModelSpec.model_validate({"arch": {"name": "cnn"}}))
    with pytest.raises(StageError, match="not an mlp; give `depth`"):
        kernel().compute(X1, None, source(cnn))
    with pytest.raises(StageError, match="no model"):
        kernel().compute(X1, None, source())
    with pytest.raises(StageError, match="initializer 'kaiming_normal'"):
        init = resolve_all(ModelSpec.model_validate({"arch": {"name": "mlp", "widths": [8]}, "init": "kaiming_normal"}))
        kernel().compute(X1, None, source(init))
    with pytest.raises(StageError, match="normalizer 'batchnorm'"):
        norm = resolve_all(ModelSpec.model_validate({"arch": {"name": "mlp", "widths": [8]}, "norm": "batchnorm"}))
        kernel().compute(X1, None, source(norm))
    with pytest.raises(StageError, match="give `widths`"):
        kernel(depth=2, parameterization="standard").compute(X1, None, source())
    with pytest.raises(StageError, match="features per example"):
        kernel(depth=1).compute(X1, inputs(2, 4, 0.0), source())
    assert kernel(depth=2).compute(X1, None, source(cnn))["ntk"].shape == (3, 3)  # explicit depth: fine


def test_float32_on_request_and_images_are_flattened():
    out = kernel(depth=1, dtype="float32").compute(X1.reshape(3, 1, 5), None, source())
    assert out["ntk"].dtype == torch.float32
    ref = kernel(depth=1).compute(X1, None, source())
    # float32: arccos near ρ = 1 turns ε = 6e-8 into θ ~ √ε: K̇ on the diagonal to ~1e-4
    assert torch.allclose(out["ntk"].double(), ref["ntk"], rtol=1e-3)
