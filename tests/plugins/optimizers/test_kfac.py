"""K-FAC: factors from the hooked activations and gradients, the preconditioned update, resume, CLI."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnopt.core.errors import StageError
from nnopt.plugins.optimizers._curvature import output_hessian_sqrt
from nnopt.plugins.optimizers.kfac import KFAC

from test_natural_gradient import FakeLoop, resumed_equals_uninterrupted

CPU = torch.device("cpu")
CE = F.cross_entropy
D = torch.float64


def kfac_step(model, x, y, opt=None, loss_fn=CE, **params):
    component = KFAC(KFAC.Params(**params))
    opt = opt or component.build(model.parameters(), CPU)
    component.callbacks(opt, model)
    component.step_rule().step(FakeLoop(model, opt, loss_fn), x, y)
    return opt


def damped_inverses(A, G, lam):
    pi = math.sqrt((A.trace() / A.shape[0]) / (G.trace() / G.shape[0]))
    return (torch.linalg.inv(A + pi * math.sqrt(lam) * torch.eye(A.shape[0], dtype=D)),
            torch.linalg.inv(G + math.sqrt(lam) / pi * torch.eye(G.shape[0], dtype=D)))


def test_single_linear_update_is_G_inverse_grad_A_inverse_computed_by_hand():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2).double()
    x, y = torch.randn(4, 3, dtype=D), torch.tensor([0, 1, 1, 0])
    W0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
    lr, lam = 0.1, 0.01
    kfac_step(layer, x, y, lr=lr, damping=lam, fisher="empirical")

    a = torch.cat([x, torch.ones(4, 1, dtype=D)], 1)  # inputs with the bias's 1
    s = x @ W0.T + b0
    g = torch.softmax(s, 1) - F.one_hot(y, 2).to(D)  # ∂ℓ_i/∂s_i for softmax cross-entropy
    A, G = a.T @ a / 4, g.T @ g / 4
    grad = g.T @ a / 4  # ∇_[W|b] of the mean loss
    A_inv, G_inv = damped_inverses(A, G, lam)
    delta = G_inv @ grad @ A_inv
    torch.testing.assert_close(layer.weight.detach(), W0 - lr * delta[:, :3], rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(layer.bias.detach(), b0 - lr * delta[:, 3], rtol=1e-6, atol=1e-10)


def test_true_fisher_G_is_the_mean_of_sampled_output_gradients():
    torch.manual_seed(0)
    layer = nn.Linear(3, 4).double()
    x, y = torch.randn(5, 3, dtype=D), torch.tensor([0, 1, 3, 2, 0])
    z = layer(x).detach()
    p = torch.softmax(z, 1)
    S = output_hessian_sqrt(CE, z, y)
    torch.testing.assert_close(S @ S.transpose(1, 2), torch.diag_embed(p) - p[:, :, None] * p[:, None, :])

    torch.manual_seed(7)
    eps = torch.randn(5, 4, 1, dtype=D)  # what the step draws from the same generator state
    u = (S @ eps)[..., 0]
    torch.manual_seed(7)
    opt = kfac_step(layer, x, y, fisher="true")
    torch.testing.assert_close(opt.state[layer.weight]["G"], u.T @ u / 5)


def exact_block(model, layer, x, y):
    """vec(∇_[W|b] ℓ) vec(∇_[W|b] ℓ)ᵀ of one example, vec stacking columns (as A ⊗ G does)."""
    model.zero_grad()
    CE(model(x), y).backward()
    gamma = torch.cat([layer.weight.grad.reshape(layer.weight.shape[0], -1), layer.bias.grad[:, None]], 1)
    v = gamma.T.reshape(-1)
    return torch.outer(v, v)


def test_with_one_example_the_kronecker_product_is_the_exact_fisher_block():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 3)).double()
    x, y = torch.randn(1, 3, dtype=D), torch.tensor([2])
    blocks = [exact_block(model, model[i], x, y) for i in (0, 2)]
    opt = kfac_step(model, x, y, fisher="empirical")
    for i, block in zip((0, 2), blocks):
        state = opt.state[model[i].weight]
        torch.testing.assert_close(torch.kron(state["A"], state["G"]), block, rtol=1e-10, atol=1e-12)


def test_conv_factors_are_patch_and_position_sums():
    # Grosse & Martens 2016: A = mean over examples and positions of the patches, G = (1/n) Σ_i Σ_t g gᵀ
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, kernel_size=2, padding=1).double()
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).double()
    x, y = torch.randn(2, 2, 3, 3, dtype=D), torch.tensor([0, 1])
    s = conv(x).detach().requires_grad_()
    CE(model[2](model[1](s)), y).backward()
    g = s.grad * 2  # per-example gradients of ℓ_i
    xp = F.pad(x, (1, 1, 1, 1))
    patches, grads = [], []
    for i in range(2):
        for r in range(4):
            for c in range(4):
                patches.append(torch.cat([xp[i, :, r : r + 2, c : c + 2].reshape(-1), torch.ones(1, dtype=D)]))
                grads.append(g[i, :, r, c])
    P, Gr = torch.stack(patches), torch.stack(grads)
    opt = kfac_step(model, x, y, fisher="empirical")
    state = opt.state[conv.weight]
    torch.testing.assert_close(state["A"], P.T @ P / len(P))
    torch.testing.assert_close(state["G"], Gr.T @ Gr / 2)


def test_conv_with_one_position_and_one_example_is_the_exact_fisher_block():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, kernel_size=3).double()
    model = nn.Sequential(conv, nn.Tanh(), nn.Flatten(), nn.Linear(3, 2)).double()
    x, y = torch.randn(1, 2, 3, 3, dtype=D), torch.tensor([1])
    block = exact_block(model, conv, x, y)
    state = kfac_step(model, x, y, fisher="empirical").state[conv.weight]
    torch.testing.assert_close(torch.kron(state["A"], state["G"]), block, rtol=1e-10, atol=1e-12)


def test_running_averages_and_inverse_schedule():
    torch.manual_seed(0)
    layer = nn.Linear(2, 2).double()
    xs = [torch.randn(3, 2, dtype=D) for _ in range(3)]
    y = torch.tensor([0, 1, 0])
    opt = None
    A_hats, inverses = [], []
    for x in xs:
        a = torch.cat([x, torch.ones(3, 1, dtype=D)], 1)
        A_hats.append(a.T @ a / 3)
        opt = kfac_step(layer, x, y, opt=opt, stat_decay=0.9, inv_every=2, fisher="empirical")
        inverses.append(opt.state[layer.weight]["A_inv"].clone())
    # ε_k = min(1 − 1/k, 0.9): A_1 = Â_1, A_2 = ½A_1 + ½Â_2, A_3 = ⅔A_2 + ⅓Â_3
    A2 = 0.5 * A_hats[0] + 0.5 * A_hats[1]
    torch.testing.assert_close(opt.state[layer.weight]["A"], 2 / 3 * A2 + 1 / 3 * A_hats[2])
    assert torch.equal(inverses[0], inverses[1]) and not torch.equal(inverses[1], inverses[2])


def test_kl_clipping_scales_the_update_by_the_kl_bound():
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, dtype=D), torch.tensor([0, 1, 1, 0])
    lr, kappa, moves = 0.1, 1e-6, []
    for clip in (None, kappa):
        torch.manual_seed(1)
        layer = nn.Linear(3, 2).double()
        theta0 = torch.cat([layer.weight, layer.bias[:, None]], 1).detach().clone()
        layer.zero_grad()
        CE(layer(x), y).backward()
        gamma = torch.cat([layer.weight.grad, layer.bias.grad[:, None]], 1).clone()
        kfac_step(layer, x, y, lr=lr, fisher="empirical", kl_clip=clip)
        moves.append(torch.cat([layer.weight, layer.bias[:, None]], 1).detach() - theta0)
    delta = moves[0] / -lr  # the unclipped preconditioned gradient Δ
    nu = min(1.0, math.sqrt(kappa / float(lr**2 * (delta * gamma).sum())))
    assert nu < 1
    torch.testing.assert_close(moves[1], nu * moves[0])


def test_parameters_outside_supported_layers_get_plain_sgd():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear, self.scale = nn.Linear(3, 2), nn.Parameter(torch.tensor(1.5))

        def forward(self, x):
            return self.linear(x) * self.scale

    torch.manual_seed(0)
    model = Scaled().double()
    x, y = torch.randn(4, 3, dtype=D), torch.tensor([0, 1, 1, 0])
    CE(model(x), y).backward()
    expected = model.scale.detach() - 0.2 * model.scale.grad
    kfac_step(model, x, y, lr=0.2, fisher="empirical")
    torch.testing.assert_close(model.scale.detach(), expected)


def test_a_layer_over_the_factor_cap_is_refused_with_a_message():
    model = nn.Sequential(nn.Linear(100, 3))
    opt = KFAC(KFAC.Params(max_factor_dim=64)).build(model.parameters(), CPU)
    with pytest.raises(StageError, match=r"101×101 .*max_factor_dim = 64"):
        KFAC().callbacks(opt, model)


@pytest.mark.parametrize("fisher", ["true", "empirical"])
def test_resume_is_bitwise_with_factors_inverses_and_momentum_in_the_state(fisher):
    component = KFAC(KFAC.Params(lr=0.1, momentum=0.9, inv_every=3, fisher=fisher, kl_clip=1e-3, weight_decay=1e-2))
    straight, resumed = resumed_equals_uninterrupted(component, total=6, at=2)
    first = next(resumed.model.parameters())
    for key in ("A", "G", "A_inv", "G_inv", "momentum_buffer"):
        assert torch.equal(straight.optimizer.state[next(straight.model.parameters())][key], resumed.optimizer.state[first][key])


def test_trains_an_mlp_on_digits_through_the_cli(invoke, write_pipeline):
    path = write_pipeline("""
        name: kfac_digits
        seed: 0
        device: cpu
        data: {name: digits, batch_size: 128}
        model:
          arch: {name: mlp, widths: [32], activation: relu}
        loss: cross_entropy
        stages:
          train:
            kind: train
            optimizer: {name: kfac, lr: 0.1, inv_every: 5}
            steps: 30
            log_every: 5
    """)
    result = invoke("run", str(path), "--json")
    assert result.exit_code == 0, result
    stage = json.loads(result.stdout)["stages"]["train"]
    assert stage["status"] == "ran"
    first_window = json.loads(open(f"{stage['dir']}/metrics.jsonl").readline())["loss"]
    assert stage["metrics"]["train_loss"] < 0.5 * first_window
