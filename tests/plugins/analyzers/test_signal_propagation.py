"""signal_propagation: the mean-field recursion, q̂ and Hanin–Rolnick's M against hand computations;
one end-to-end pipeline with both new analyzers, at initialization and tracked in training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from pydantic import ValidationError
from torch import nn

from nnopt.core.errors import StageError
from nnopt.core.kinds import AnalysisContext, DataSplit
from nnopt.core.stage import json_safe
from nnopt.plugins.analyzers.signal_propagation import SignalPropagation
from nnopt.plugins.initializers.critical import _moments


def data(n: int = 64, d: int = 6, k: int = 3, seed: int = 0, n_test: int = 0) -> DataSplit:
    g = torch.Generator().manual_seed(seed)
    x, y = 1.5 * torch.randn(n + n_test, d, generator=g), torch.randn(n + n_test, k, generator=g)
    return DataSplit(x[:n], y[:n], x[n:], y[n:], "regression", (d,), k)


def analyze(model, split, seed=0, **params):
    ctx = AnalysisContext(model, lambda out, y: (out - y).square().mean(), split, torch.device("cpu"),
                          torch.Generator().manual_seed(seed))
    return SignalPropagation(SignalPropagation.Params(**params)).analyze(ctx)


def biased(*modules: nn.Module) -> nn.Sequential:
    """A Sequential whose linear layers get visibly non-zero biases (σ_b² enters the recursion)."""
    torch.manual_seed(0)
    model = nn.Sequential(*modules)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.normal_(0.0, 0.7)
    return model


def test_identity_activations_reduce_the_recursion_to_a_linear_map():
    model = biased(nn.Linear(6, 5), nn.Identity(), nn.Linear(5, 4), nn.Linear(4, 3))  # no module at all after the 2nd
    split = data()
    r = analyze(model, split, samples=64)
    linears = [model[0], model[2], model[3]]
    sw2 = [m.weight.shape[1] * m.weight.double().square().mean().item() for m in linears]
    sb2 = [m.bias.double().square().mean().item() for m in linears]
    assert r["sigma_w2"] == pytest.approx(sw2, rel=1e-12) and r["sigma_b2"] == pytest.approx(sb2, rel=1e-12)
    q = sw2[0] * split.x_train.double().square().mean().item() + sb2[0]  # q¹ = σ_w²‖x‖²/d₀ + σ_b²
    expected = [q]
    for w2, b2 in zip(sw2[1:], sb2[1:]):
        q = w2 * q + b2  # qˡ = σ_w² qˡ⁻¹ + σ_b², exactly, for φ = identity
        expected.append(q)
    assert r["q"] == pytest.approx(expected, rel=1e-12)
    assert r["activations"] == ["identity", "identity", "identity"]
    assert r["layers"] == ["0", "2", "3"] and r["widths"] == [5, 4, 3]


def test_the_quadrature_agrees_with_monte_carlo_for_tanh():
    g = torch.Generator().manual_seed(0)
    xi = torch.randn(2_000_000, generator=g, dtype=torch.float64)
    for q in (0.05, 0.7, 3.0):
        mc = torch.tanh(math.sqrt(q) * xi).square().mean().item()
        assert _moments(nn.Tanh(), q)[0] == pytest.approx(mc, rel=2e-3)


def test_the_recursion_through_tanh_and_relu_is_the_quadrature_of_each_layer_s_activation():
    model = biased(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    split = data()
    r = analyze(model, split, samples=64)
    sw2, sb2 = r["sigma_w2"], r["sigma_b2"]
    q1 = sw2[0] * split.x_train.double().square().mean().item() + sb2[0]
    q2 = sw2[1] * _moments(nn.Tanh(), q1)[0] + sb2[1]
    q3 = sw2[2] * q2 / 2 + sb2[2]  # E[ReLU(√q ξ)²] = q/2
    assert r["q"] == pytest.approx([q1, q2, q3], rel=1e-9)
    assert r["activations"] == ["Tanh", "ReLU", "identity"]


def test_q_hat_M_and_the_norm_ratios_are_the_hand_computed_ones():
    model = biased(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    split = data(n=20)
    r = analyze(model, split, samples=20)
    x = split.x_train.double()
    w = [model[i].weight.double() for i in (0, 2, 4)]
    b = [model[i].bias.double() for i in (0, 2, 4)]
    h1 = x @ w[0].T + b[0]
    z1 = h1.relu()
    h2 = z1 @ w[1].T + b[1]
    z2 = h2.tanh()
    h3 = z2 @ w[2].T + b[2]
    hs, zs = [h1, h2, h3], [z1, z2, h3]
    assert r["q_hat"] == pytest.approx([h.square().mean().item() for h in hs], rel=1e-6)
    M0 = x.square().sum(1) / 6
    Ms = [z.square().sum(1) / z.shape[1] for z in zs]
    assert r["M0_mean"] == pytest.approx(M0.mean().item(), rel=1e-6)
    assert r["M_mean"] == pytest.approx([M.mean().item() for M in Ms], rel=1e-6)
    assert r["M_var"] == pytest.approx([M.var().item() for M in Ms], rel=1e-5)
    assert r["log_M_var"] == pytest.approx([M.log().var().item() for M in Ms], rel=1e-5)
    assert r["log_M_ratio_mean"] == pytest.approx([(M / M0).log().mean().item() for M in Ms], rel=1e-5)
    assert r["log_M_ratio_var"] == pytest.approx([(M / M0).log().var().item() for M in Ms], rel=1e-5)
    assert r["M_quantiles"][0] == pytest.approx(torch.quantile(Ms[0], torch.tensor([0.1, 0.5, 0.9], dtype=Ms[0].dtype)).tolist())
    ratios = [(z.norm(dim=1) / x.norm(dim=1)).mean().item() for z in zs]
    assert r["norm_ratio"] == pytest.approx(ratios, rel=1e-6) and r["input_output_ratio"] == pytest.approx(ratios[-1])
    assert r["q_rel_error"] == pytest.approx([(a - b) / b for a, b in zip(r["q_hat"], r["q"])])
    assert r["samples"] == 20 and r["inputs"] == "data"
    json.dumps(json_safe(r))  # plain JSON


def test_the_activation_is_found_past_normalization_dropout_and_in_place_modules():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.ReLU(inplace=True), nn.Linear(8, 3))
    model.eval()
    r = analyze(model, data())
    assert r["activations"] == ["ReLU", "identity"]
    # zˡ is the activation's actual output: ReLU of the normalized pre-activation
    x = data().x_train
    with torch.no_grad():
        z = model[:4](x).double()
    assert r["M_mean"][0] == pytest.approx((z.square().sum(1) / 8).mean().item(), rel=1e-6)


def test_a_shared_activation_module_a_registered_one_and_a_functional_one():
    from nnopt.plugins.activations.elementwise import Erf

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.d = nn.Linear(6, 5), nn.Linear(5, 5), nn.Linear(5, 5), nn.Linear(5, 2)
            self.act = nn.Tanh()  # one module, called after two layers
            self.erf = Erf(Erf.Params()).build()  # nnopt's own module type, not a torch activation

        def forward(self, x):
            return self.d(torch.relu(self.c(self.erf(self.act(self.b(self.act(self.a(x))))))))

    torch.manual_seed(0)
    r = analyze(Net(), data())
    # forward order decides: the tanh call after a is a's, the one after b is b's (erf, called next,
    # follows no pending layer); torch.relu inside forward is invisible to hooks, so c gets identity
    assert r["layers"] == ["a", "b", "c", "d"]
    assert r["activations"] == ["Tanh", "Tanh", "identity", "identity"]

    class ErfNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 5), nn.Linear(5, 2)
            self.erf = Erf(Erf.Params()).build()

        def forward(self, x):
            return self.b(self.erf(self.a(x)))

    r = analyze(ErfNet(), data())
    assert r["activations"][0] == type(Erf(Erf.Params()).build()).__name__
    q1 = r["sigma_w2"][0] * data().x_train.double().square().mean().item() + r["sigma_b2"][0]
    assert r["q"][1] == pytest.approx(r["sigma_w2"][1] * _moments(torch.special.erf, q1)[0] + r["sigma_b2"][1])


def test_pooling_before_the_activation_ends_the_search_and_convolutions_use_their_fan_in():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 2 * 2, 2))
    x = torch.randn(10, 2, 4, 4)
    split = DataSplit(x, torch.zeros(10, 2), x[:0], torch.zeros(0, 2), "regression", (2, 4, 4), 2)
    r = analyze(model, split)
    assert r["activations"] == ["identity", "identity"]
    w = model[0].weight.double()
    assert r["sigma_w2"][0] == pytest.approx(2 * 3 * 3 * w.square().mean().item())
    assert r["widths"] == [3 * 4 * 4, 2]
    h = model[0](x).double()
    assert r["q_hat"][0] == pytest.approx(h.square().mean().item(), rel=1e-6)


def test_gaussian_inputs_subsets_and_the_same_examples_at_every_call():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3))
    split = data(n=64, n_test=5)
    g = torch.Generator().manual_seed(3)
    ctx = AnalysisContext(model, None, split, torch.device("cpu"), g)
    analyzer = SignalPropagation(SignalPropagation.Params(samples=10))
    first = analyzer.analyze(ctx)
    torch.randn(5, generator=g)  # the generator moves on between tracked steps
    assert analyzer.analyze(ctx) == first  # same subset: a series shows the weights changing, not the sample
    assert analyze(model, split, seed=4, samples=10) != first
    assert first["samples"] == 10
    test = analyze(model, split, source="test", samples=100)
    assert test["samples"] == 5
    gauss = analyze(model, split, inputs="gaussian", samples=4000)
    assert gauss["samples"] == 4000 and gauss["M0_mean"] == pytest.approx(1.0, abs=0.05)  # E‖x‖²/d = 1
    empty = DataSplit(split.x_train, split.y_train, split.x_train[:0], split.y_train[:0], "regression", (6,), 3)
    with pytest.raises(StageError, match="test split is empty"):
        analyze(model, empty, source="test")
    with pytest.raises(ValidationError):
        SignalPropagation.Params(samples=1)
    with pytest.raises(ValidationError):
        SignalPropagation.Params(inputs="uniform")


def test_a_model_without_weight_layers_is_refused():
    with pytest.raises(StageError, match="no Linear/Conv"):
        analyze(nn.Sequential(nn.Flatten(), nn.Tanh()), data())


def test_plots(tmp_path):
    model = biased(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    analyzer = SignalPropagation(SignalPropagation.Params())
    r = analyzer.analyze(AnalysisContext(model, None, data(), torch.device("cpu"), torch.Generator().manual_seed(0)))
    assert analyzer.plot(r, tmp_path) == [tmp_path / "signal_propagation.png", tmp_path / "signal_propagation_M.png"]
    series = [(s, r) for s in (0, 5, 10)]
    assert analyzer.plot_series(series, tmp_path) == [tmp_path / "signal_propagation_track.png",
                                                      tmp_path / "signal_propagation_track_M.png"]
    assert all(p.stat().st_size > 1000 for p in tmp_path.iterdir())
    assert analyzer.plot({"layers": []}, tmp_path / "empty") == [] and analyzer.plot_series([], tmp_path / "empty") == []


# ------------------------------------------------------------------ end to end
PIPELINE = """
name: signal-e2e
seed: 0
device: cpu
data: {name: synthetic, task: gaussian_mixture, dim: 8, classes: 2, n_train: 128, n_test: 32, batch_size: 32}
model:
  arch: {name: mlp, widths: [16, 16], activation: tanh}
  init: {name: orthogonal}
loss: cross_entropy
stages:
  init:
    kind: analyze
    analyzers:
      - {name: signal_propagation, samples: 64}
      - {name: jacobian_spectrum, samples: 3, layer: act2}
  train:
    kind: train
    optimizer: {name: sgd, lr: 0.1}
    steps: 12
    track:
      - {name: signal_propagation, every: 4, samples: 32}
      - {name: grad_norms, every: 4}
"""


def test_the_cli_runs_both_analyzers_at_initialization_and_tracks_signal_propagation(tmp_path):
    from nnopt.cli import main

    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE)
    out = CliRunner().invoke(main, ["run", str(path), "--json", "--store", str(tmp_path / "store")], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    init = result["stages"]["init"]
    sp, js = init["results"]["signal_propagation"], init["results"]["jacobian_spectrum"]
    assert sp["layers"] == ["linear1", "linear2", "output"] and sp["activations"] == ["Tanh", "Tanh", "identity"]
    assert len(sp["q"]) == len(sp["q_hat"]) == 3 and sp["samples"] == 64
    assert js["shape"] == [16, 8] and js["samples"] == 3 and js["count"] == 3 * 8
    assert sum(js["histogram"]["counts"]) == js["count"]
    assert 0 < js["min"] <= js["max"] <= 1.0 + 1e-6  # orthogonal weights, |tanh'| ≤ 1
    plots = Path(init["dir"]) / "plots"
    for name in ("signal_propagation.png", "signal_propagation_M.png", "jacobian_spectrum.png"):
        assert (plots / name).stat().st_size > 1000, name
    train = Path(result["stages"]["train"]["dir"])
    for name in ("signal_propagation_track.png", "grad_norms_track.png", "grad_norms_heatmap.png"):
        assert (train / "plots" / name).is_file(), name
    tracked = [json.loads(line) for line in (train / "metrics.jsonl").read_text().splitlines()]
    steps = [rec["step"] for rec in tracked if rec.get("track") == "signal_propagation"]
    assert steps == [0, 4, 8]
    first = next(rec for rec in tracked if rec.get("track") == "signal_propagation")
    assert len(first["q_hat"]) == len(first["q"]) == 3 and first["samples"] == 32
