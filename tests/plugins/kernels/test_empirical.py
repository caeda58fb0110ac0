"""empirical_ntk: the three implementations agree in float64 with each other and with the
definition Θ(x, x')_{or} = Σ_p ∂f_o(x)/∂θ_p ∂f_r(x')/∂θ_p; exact small cases; blocking;
conventions (outputs, reduction, dtype); refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnopt.core.errors import StageError
from nnopt.core.kinds import KernelSource
from nnopt.plugins.architectures.parameterization import NTKLinear
from nnopt.plugins.kernels import ntk_structured
from nnopt.plugins.kernels.empirical import EmpiricalNTK

METHODS = ("jacobian", "ntk_vp", "structured")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: with two OpenMP threads on a loaded 2-core machine each small
    conv waits for the other thread (measured: 2-180 ms a conv step instead of 0.2-3 ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
CPU = torch.device("cpu")


def ntk(model, x1, x2=None, dtype=torch.float64, **params):
    kernel = EmpiricalNTK(EmpiricalNTK.Params(**params))
    out = kernel.compute(x1, x2, KernelSource(model, None, CPU, dtype))["ntk"]
    return out, kernel


def definition(model, x1, x2):
    """Θ by the definition, from torch.autograd.functional.jacobian per example: (n1, n2, O, O)."""
    params = [p for p in model.parameters() if p.requires_grad]

    def jac(x):
        rows = []
        for n in range(x.shape[0]):
            out = model(x[n : n + 1]).reshape(-1)
            rows.append(torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(out[o], params,
                                                                                            retain_graph=True)])
                                     for o in range(out.numel())]))
        return torch.stack(rows)  # (n, O, P)

    j1, j2 = jac(x1), jac(x2)
    return torch.einsum("aop,brp->abor", j1, j2)


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return model.double().eval()


MODELS = {
    "mlp_bias": (lambda: nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3)), (5,)),
    "mlp_no_bias": (lambda: nn.Sequential(nn.Linear(5, 7, bias=False), nn.GELU(), nn.Linear(7, 2, bias=False)), (5,)),
    "ntk_linear": (lambda: nn.Sequential(NTKLinear(5, 8, W_std=1.3, b_std=0.4), nn.ReLU(),
                                         NTKLinear(8, 2, W_std=0.7, b_std=0.2)), (5,)),
    "cnn": (lambda: nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, groups=2, padding=1, padding_mode="circular"), nn.Tanh(),
        nn.Conv2d(4, 8, (2, 3)), nn.Flatten(), nn.Linear(8 * 1 * 1, 3)), (1, 4, 5)),
    "conv1d": (lambda: nn.Sequential(nn.Conv1d(2, 3, 3, padding="same", dilation=2), nn.ReLU(), nn.Flatten(),
                                     nn.Linear(3 * 9, 2)), (2, 9)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_three_methods_agree_with_the_definition_in_float64(name):
    build, shape = MODELS[name]
    model = seeded(build())
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn((4, *shape), generator=g, dtype=torch.float64)
    x2 = torch.randn((3, *shape), generator=g, dtype=torch.float64)
    both = torch.cat([x1, x2])
    exact = definition(model, both, both)
    exact_sym, exact_cross = exact[:4, :4], exact[:4, 4:]
    scale = exact_sym.abs().max()
    dense = not name.startswith(("cnn", "conv"))  # the reductions are the driver's: checked once per method
    for method in METHODS:
        full, kernel = ntk(model, x1, method=method, output="full")
        assert kernel.method_used == method
        assert full.shape == exact_sym.shape and full.dtype == torch.float64
        assert (full - exact_sym).abs().max() <= 1e-10 * scale, method
        cross, _ = ntk(model, x1, x2, method=method, output="full")  # x ≠ x'
        assert (cross - exact_cross).abs().max() <= 1e-10 * scale, method
        trace, _ = ntk(model, x1, x2, method=method, output="trace")
        assert torch.allclose(trace, exact_cross.diagonal(dim1=2, dim2=3).mean(-1), rtol=0, atol=1e-10 * scale)
        if dense:
            outdiag, _ = ntk(model, x1, x2, method=method, output="output_diagonal")
            assert torch.allclose(outdiag, exact_cross.diagonal(dim1=2, dim2=3), rtol=0, atol=1e-10 * scale)
        if dense or method != "ntk_vp":
            diag, _ = ntk(model, x1, method=method, output="diagonal", trace_reduction="sum")
            expected = exact_sym.diagonal(dim1=0, dim2=1).diagonal(dim1=0, dim2=1).sum(-1)
            assert torch.allclose(diag, expected, rtol=0, atol=1e-10 * scale), method


def test_both_conv_contractions_give_the_same_kernel(monkeypatch):
    """Position pairs and per-example weight Jacobians: two ways of the same sum."""
    build, shape = MODELS["cnn"]
    model = seeded(build())
    x = torch.randn((3, *shape), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    results = []
    for choice in (True, False):
        monkeypatch.setattr(ntk_structured, "contract_position_pairs", lambda *a, choice=choice: choice)
        results.append(ntk(model, x, method="structured", output="full")[0])
    assert torch.allclose(results[0], results[1], rtol=1e-12, atol=0)
    assert torch.allclose(results[0], definition(model, x, x), rtol=1e-10, atol=1e-12)


def test_the_kernel_is_symmetric_and_positive_semidefinite():
    model = seeded(MODELS["mlp_bias"][0]())
    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for method in METHODS:
        full, _ = ntk(model, x, method=method, output="full", block_size=5)
        mat = full.permute(0, 2, 1, 3).reshape(36, 36)
        assert torch.equal(mat, mat.T)
        eig = torch.linalg.eigvalsh(mat)
        assert eig.min() >= -1e-12 * eig.max()
        trace, _ = ntk(model, x, method=method, block_size=5)
        assert torch.equal(trace, trace.T) and torch.linalg.eigvalsh(trace).min() >= -1e-12 * trace.abs().max()


def test_a_linear_model_has_the_kernel_x_xT_plus_one_exactly():
    """f(x) = W x + b: ∂f_o/∂W_{o'j} = δ_{oo'} x_j, ∂f_o/∂b_{o'} = δ_{oo'}, so Θ_{or} = (x·x' + 1) δ_{or};
    under the NTK parameterization (σ_w²/d) x·x' + σ_b²."""
    g = torch.Generator().manual_seed(4)
    x1, x2 = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    linear = seeded(nn.Linear(3, 2))
    expected = x1 @ x2.T + 1
    for method in METHODS:
        full, _ = ntk(linear, x1, x2, method=method, output="full")
        assert torch.allclose(full, expected[:, :, None, None] * torch.eye(2, dtype=torch.float64), rtol=1e-14, atol=1e-14)
    no_bias = seeded(nn.Linear(3, 1, bias=False))
    for method in METHODS:
        assert torch.allclose(ntk(no_bias, x1, x2, method=method)[0], x1 @ x2.T, rtol=1e-14, atol=1e-14)
    scaled = seeded(NTKLinear(3, 1, W_std=2.0, b_std=0.5))
    for method in METHODS:
        assert torch.allclose(ntk(scaled, x1, x2, method=method)[0], 4.0 / 3 * (x1 @ x2.T) + 0.25, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("method", METHODS)
def test_blocks_give_the_kernel_of_one_block(method):
    model = seeded(MODELS["ntk_linear"][0]())
    g = torch.Generator().manual_seed(5)
    x1, x2 = torch.randn(11, 5, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64)
    for x_2 in (None, x2):
        whole, k1 = ntk(model, x1, x_2, method=method, output="full", block_size=64)
        pieces, k2 = ntk(model, x1, x_2, method=method, output="full", block_size=3)
        assert k1.block_used == 64 and k2.block_used == 3
        assert torch.allclose(whole, pieces, rtol=1e-13, atol=1e-15)
    diag_whole = ntk(model, x1, method=method, output="diagonal")[0]
    assert torch.allclose(diag_whole, ntk(model, x1, method=method, output="diagonal", block_size=4)[0], rtol=1e-13)


def test_the_memory_budget_chooses_smaller_blocks():
    model = seeded(MODELS["mlp_bias"][0]())
    x = torch.randn(64, 5, dtype=torch.float64)
    _, roomy = ntk(model, x, method="jacobian")
    _, tight = ntk(model, x, method="jacobian", memory_mb=0.05)
    assert roomy.block_used == 64 and 1 <= tight.block_used < 64


def test_trace_reduction_and_output_shapes():
    model = seeded(MODELS["mlp_bias"][0]())
    x = torch.randn(4, 5, dtype=torch.float64)
    mean, _ = ntk(model, x)
    total, _ = ntk(model, x, trace_reduction="sum")
    assert mean.shape == (4, 4) and torch.allclose(total, 3 * mean, rtol=1e-14)
    assert ntk(model, x, output="full")[0].shape == (4, 4, 3, 3)
    assert ntk(model, x, output="output_diagonal")[0].shape == (4, 4, 3)
    assert ntk(model, x, output="diagonal")[0].shape == (4,)


def test_float64_on_request_casts_a_copy_and_float32_works():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 1)).eval()
    x = torch.randn(8, 5)
    k64, _ = ntk(model, x, dtype=torch.float64, method="structured")
    assert k64.dtype == torch.float64 and next(model.parameters()).dtype == torch.float32
    k32, _ = ntk(model, x, dtype=torch.float32, method="structured")
    assert k32.dtype == torch.float32 and torch.allclose(k32.double(), k64, rtol=1e-4)


def test_structured_refuses_normalization_affines_and_auto_falls_back():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.ReLU(), nn.Linear(6, 1)).double().eval()
    x = torch.randn(5, 4, dtype=torch.float64)
    with pytest.raises(StageError, match=r"'1\.weight' belongs to a LayerNorm.*method: jacobian"):
        ntk(model, x, method="structured")
    auto, kernel = ntk(model, x)
    assert kernel.method_used == "jacobian"
    assert torch.allclose(auto, ntk(model, x, method="ntk_vp")[0], rtol=1e-10)
    plain = seeded(MODELS["mlp_bias"][0]())
    assert ntk(plain, x[:, :5].repeat(1, 2)[:, :5])[1].method_used == "structured"


def test_structured_refuses_a_layer_used_twice_and_auto_falls_back():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(3, 3)

        def forward(self, x):
            return self.layer(torch.tanh(self.layer(x))).sum(-1, keepdim=True)

    torch.manual_seed(0)
    model = Twice().double()
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(StageError, match="more than once"):
        ntk(model, x, method="structured")
    auto, kernel = ntk(model, x)
    assert kernel.method_used == "jacobian"
    assert torch.allclose(auto, definition(model, x, x)[:, :, 0, 0], rtol=1e-10)


def test_frozen_parameters_are_left_out_of_the_sum():
    model = seeded(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)))
    model[0].weight.requires_grad_(False)
    x = torch.randn(5, 3, dtype=torch.float64)
    exact = definition(model, x, x)[:, :, 0, 0]
    for method in METHODS:
        assert torch.allclose(ntk(model, x, method=method)[0], exact, rtol=1e-10, atol=1e-14)


def test_bad_requests_are_stage_errors():
    model = seeded(nn.Linear(3, 1))
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(StageError, match="omit x2"):
        ntk(model, x, x, output="diagonal")
    with pytest.raises(StageError, match="no model"):
        ntk(None, x)
    with pytest.raises(Exception, match="method"):
        EmpiricalNTK.Params(method="bogus")
