"""LSUV (Mishkin & Matas 2016): orthogonal init, then each layer's output rescaled to unit variance."""

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from nnopt.plugins.initializers.lsuv import LSUV


def sampler(seed=0, scale=None, dim=32):
    """``sample_inputs`` over badly scaled inputs: feature j has scale 10^(j·4/dim − 2), mean 3."""
    g = torch.Generator().manual_seed(seed + 1000)
    scale = torch.logspace(-2, 2, dim) if scale is None else scale
    data = 3.0 + torch.randn(4096, dim, generator=g) * scale

    def sample_inputs(batch_size=256):
        return data[torch.randint(0, data.shape[0], (batch_size,), generator=g)]

    return sample_inputs


def mlp(dim=32):
    return nn.Sequential(nn.Linear(dim, 64), nn.Tanh(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 48), nn.Tanh(),
                         nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, 40))


def init(model, seed=0, sample_inputs=None, **params):
    LSUV(LSUV.Params(**params)).initialize(model, sample_inputs or sampler(seed), torch.Generator().manual_seed(seed))
    return model


def output_variances(model, x):
    outputs = []
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.append(o.double().var().item()))
             for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return outputs


@pytest.mark.parametrize("tolerance", [0.1, 0.02])
def test_every_layer_has_unit_output_variance_on_a_fresh_batch(tolerance):
    model = init(mlp(), tolerance=tolerance, batch_size=1024)
    before = output_variances(mlp(), sampler(seed=7)(1024))
    assert max(abs(v - 1) for v in before) > 1  # the inputs are badly scaled: default init is far off
    variances = output_variances(model, sampler(seed=7)(1024))
    assert len(variances) == 5
    assert all(abs(v - 1) < max(tolerance, 0.05) for v in variances), variances
    assert all((m.bias == 0).all() for m in model if isinstance(m, nn.Linear))


def test_kept_biases_converge_by_iteration():
    model = mlp()
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.constant_(m.bias, 0.5)
    variances = output_variances(init(model, bias="keep", batch_size=1024, tolerance=0.05), sampler(seed=7)(1024))
    assert all(abs(v - 1) < 0.1 for v in variances), variances
    assert all((m.bias == 0.5).all() for m in model if isinstance(m, nn.Linear))


def test_weights_are_orthogonal_up_to_scale():
    w = init(mlp())[2].weight.double()
    gram = w @ w.T
    assert torch.allclose(gram, gram[0, 0] * torch.eye(64, dtype=torch.float64), atol=1e-5 * gram[0, 0].item())


def test_conv_layers_and_the_forward_order():
    class Net(nn.Module):  # modules() order differs from the forward order
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8 * 6 * 6, 10)
            self.conv = nn.Conv2d(3, 8, kernel_size=3)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).flatten(1))

    g = torch.Generator().manual_seed(5)
    data = 20.0 * torch.randn(1024, 3, 8, 8, generator=g)
    model = Net()
    LSUV(LSUV.Params()).initialize(model, lambda batch_size=256: data[:batch_size], torch.Generator().manual_seed(0))
    variances = output_variances(model, data[256:])
    assert all(abs(v - 1) < 0.1 for v in variances), variances


def test_deterministic_for_a_seed_and_independent_of_the_global_rng():
    a = init(mlp(), seed=3)
    torch.manual_seed(123)
    b = init(mlp(), seed=3)
    c = init(mlp(), seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a[0].weight, c[0].weight)


def test_weight_norm_and_modes_restored():
    model = mlp()
    model[2] = weight_norm(model[2])
    model.train()
    model[4].eval()
    init(model)
    assert model.training and model[2].training and not model[4].training
    variances = output_variances(model, sampler(seed=7)(1024))
    assert all(abs(v - 1) < 0.1 for v in variances), variances
    assert hasattr(model[2], "parametrizations")


def test_a_layer_with_zero_output_is_left_alone():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    init(model, sample_inputs=lambda batch_size=256: torch.zeros(batch_size, 4))
    assert torch.isfinite(model[0].weight).all() and torch.isfinite(model[2].weight).all()
