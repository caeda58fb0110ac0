"""weight_spectrum: svdvals of each weight, and Sedghi et al.'s FFT spectrum against the dense conv matrix."""

from __future__ import annotations

import json
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from pydantic import ValidationError
from torch import nn

from nnopt.core.kinds import AnalysisContext, DataSplit
from nnopt.plugins.analyzers.weight_spectrum import WeightSpectrum, circular_conv_singular_values


def dense_circular_conv(weight: torch.Tensor, size, groups=1, dilation=(1, 1)) -> torch.Tensor:
    """The explicit matrix A of the stride-1 circular conv on (c_in, n_h, n_w) maps: column j is the
    conv (with circular padding) of the j-th basis image."""
    c_in = weight.shape[1] * groups
    k_h, k_w = weight.shape[-2:]
    pad_h, pad_w = dilation[0] * (k_h - 1) // 2, dilation[1] * (k_w - 1) // 2
    basis = torch.eye(c_in * size[0] * size[1], dtype=torch.float64).reshape(-1, c_in, *size)
    out = F.conv2d(F.pad(basis, (pad_w, pad_w, pad_h, pad_h), mode="circular"), weight, groups=groups, dilation=dilation)
    return out.reshape(out.shape[0], -1).T  # (c_out·n_h·n_w, c_in·n_h·n_w)


def split(shape, n=4) -> DataSplit:
    x = torch.randn(n, *shape, generator=torch.Generator().manual_seed(0))
    return DataSplit(x, torch.zeros(n, dtype=torch.long), x[:0], torch.zeros(0, dtype=torch.long),
                     "classification", tuple(shape), 2, num_classes=2)


def analyze(model, shape=(1, 6, 6), **params):
    ctx = AnalysisContext(model, F.cross_entropy, split(shape), torch.device("cpu"), torch.Generator().manual_seed(0))
    return WeightSpectrum(WeightSpectrum.Params(**params)).analyze(ctx)


@pytest.mark.parametrize(
    "c_out, c_in, k, size, groups, dilation",
    [(4, 3, 3, (5, 5), 1, (1, 1)),  # tall per-frequency matrices
     (2, 5, 3, (4, 3), 1, (1, 1)),  # wide, and a non-square map
     (3, 2, 5, (3, 3), 1, (1, 1)),  # the kernel wraps around a map smaller than itself
     (6, 4, 3, (4, 4), 2, (1, 1)),  # grouped: block-diagonal P(u, v)
     (2, 2, 3, (5, 5), 1, (2, 2))],  # dilated taps
)
def test_fft_singular_values_equal_those_of_the_dense_operator(c_out, c_in, k, size, groups, dilation):
    weight = torch.randn(c_out, c_in // groups, k, k, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
    dense = torch.linalg.svdvals(dense_circular_conv(weight, size, groups, dilation))
    fft = circular_conv_singular_values(weight, size, groups=groups, dilation=dilation)
    assert fft.dtype == torch.float64 and fft.shape == dense.shape  # min(c_out, c_in)·n_h·n_w values
    torch.testing.assert_close(fft, dense, rtol=0, atol=1e-5)


def test_the_analyzer_reports_the_dense_operator_spectrum_at_recorded_input_sizes():
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 3, 3, padding=1, padding_mode="circular"), act=nn.ReLU(), pool=nn.MaxPool2d(2),
        conv2=nn.Conv2d(3, 4, 3, padding=1), flatten=nn.Flatten(), head=nn.Linear(36, 2),
    )).double()
    r = analyze(model, top=1000)
    ops = {name: r["layers"][name]["operator"] for name in ("conv1", "conv2")}
    assert ops["conv1"]["input_size"] == [6, 6] and ops["conv2"]["input_size"] == [3, 3]  # after the 2×2 pool
    assert ops["conv1"]["circular"] and not ops["conv2"]["circular"]  # conv2's zero padding: the circular proxy
    for name, size in (("conv1", (6, 6)), ("conv2", (3, 3))):
        dense = torch.linalg.svdvals(dense_circular_conv(getattr(model, name).weight.detach(), size))
        assert ops[name]["count"] == dense.numel()
        torch.testing.assert_close(torch.tensor(ops[name]["top"], dtype=torch.float64), dense, rtol=0, atol=1e-5)
        assert ops[name]["norm"] == pytest.approx(dense[0].item(), abs=1e-8)
        assert ops[name]["smallest"] == pytest.approx(dense[-1].item(), abs=1e-8)
        assert ops[name]["condition_number"] == pytest.approx((dense[0] / dense[-1]).item(), rel=1e-6)
    assert r["operator_norms"] == {"conv1": ops["conv1"]["norm"], "conv2": ops["conv2"]["norm"]}
    # input_size overrides the recorded sizes, for every conv
    fixed = analyze(model, input_size=[4, 5])
    assert all(fixed["layers"][n]["operator"]["input_size"] == [4, 5] for n in ("conv1", "conv2"))


def test_top_k_equals_svdvals_of_the_reshaped_kernel_and_of_linear_weights():
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(2, 16, 3, padding=1), flatten=nn.Flatten(),
                                      fc=nn.Linear(16 * 36, 7), out=nn.Linear(7, 3)))
    r = analyze(model, shape=(2, 6, 6), top=5, operator=False)
    assert r["names"] == ["conv", "fc", "out"]
    for name, matrix in (("conv", model.conv.weight.reshape(16, 18)), ("fc", model.fc.weight), ("out", model.out.weight)):
        sv = torch.linalg.svdvals(matrix.detach().double())
        entry = r["layers"][name]
        assert entry["matrix_shape"] == list(matrix.shape)
        torch.testing.assert_close(torch.tensor(entry["top"], dtype=torch.float64), sv[:5], rtol=1e-12, atol=0)
        assert entry["spectral_norm"] == pytest.approx(sv[0].item(), rel=1e-12)
        assert entry["condition_number"] == pytest.approx((sv[0] / sv[-1]).item(), rel=1e-9)
        assert "operator" not in entry
    assert len(r["layers"]["out"]["top"]) == 3  # a 3 × 7 matrix has 3 singular values, fewer than top
    assert r["spectral_norms"] == [r["layers"][n]["spectral_norm"] for n in r["names"]]
    assert r["operator_norms"] == {}
    json.dumps(r)  # plain lists and floats


def test_rank_deficient_weights_have_infinite_condition_number():
    layer = nn.Linear(3, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 0]]))
    r = analyze(nn.Sequential(layer), shape=(3,))
    assert r["layers"]["0"]["top"] == [2.0, 1.0, 0.0] and r["layers"]["0"]["condition_number"] == math.inf


def test_strided_large_transposed_and_1d_convs_are_skipped_with_a_reason():
    model = nn.Sequential(OrderedDict(strided=nn.Conv2d(1, 2, 3, stride=2, padding=1),
                                      same=nn.Conv2d(2, 2, 3, padding=1),
                                      up=nn.ConvTranspose2d(2, 2, 2, stride=2)))
    r = analyze(model, shape=(1, 12, 12), max_size=[5, 5])
    ops = {n: r["layers"][n]["operator"] for n in ("strided", "same", "up")}
    assert "stride" in ops["strided"]["skipped"]
    assert "6×6 exceeds max_size 5×5" in ops["same"]["skipped"]  # its input is the 12 → 6 strided map
    assert "transposed" in ops["up"]["skipped"]
    assert "top" in r["layers"]["strided"]  # the reshaped kernel is reported regardless
    one_d = analyze(nn.Sequential(nn.Conv1d(1, 2, 3)), shape=(1, 8))
    assert "2-D" in one_d["layers"]["0"]["operator"]["skipped"]


def test_the_size_probe_leaves_modes_and_running_statistics_alone():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Conv2d(4, 4, 3)).train()
    model[2].eval()
    stats = model[1].running_mean.clone()
    analyze(model)
    assert torch.equal(model[1].running_mean, stats) and model[1].num_batches_tracked.item() == 0
    assert model.training and model[1].training and not model[2].training


def test_params_are_validated():
    for bad in [{"top": 0}, {"input_size": [4]}, {"input_size": [4, 0]}, {"max_size": [64, 64, 64]}]:
        with pytest.raises(ValidationError):
            WeightSpectrum.Params(**bad)


def test_plot_writes_one_png_and_nothing_without_layers(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular"), nn.Flatten(), nn.Linear(144, 3))
    analyzer = WeightSpectrum(WeightSpectrum.Params(top=4))
    results = analyze(model, top=4)
    paths = analyzer.plot(results, tmp_path)
    assert [p.name for p in paths] == ["weight_spectrum.png"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert analyzer.plot({"layers": {}}, tmp_path / "empty") == []


PIPELINE = """\
name: cnn_spectrum
seed: 0
device: cpu
data: {name: digits, flatten: false}
model:
  arch: {name: cnn, channels: [8, 8, 8, 8, 8]}
  init: delta_orthogonal
loss: cross_entropy
stages:
  spectrum:
    kind: analyze
    analyzers:
      - {name: weight_spectrum, top: 5}
"""


def test_end_to_end_the_spectrum_of_a_fresh_delta_orthogonal_cnn(tmp_path):
    from nnopt.cli import main

    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE)
    store = tmp_path / "store"
    result = CliRunner().invoke(main, ["run", str(path), "--json", "--store", str(store)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    stage = json.loads(result.stdout)["stages"]["spectrum"]
    spectrum = stage["results"]["weight_spectrum"]
    assert spectrum["names"] == ["conv1", "conv2", "conv3", "conv4", "conv5", "head"]
    # delta-orthogonal with the CNN's ReLU (gain √2): every pixel's channels are mapped by √2·H with
    # HᵀH = I, so the operator on the 8×8 maps has all its singular values equal to √2
    for name in spectrum["names"][:-1]:
        op = spectrum["layers"][name]["operator"]
        assert op["input_size"] == [8, 8]
        assert op["norm"] == pytest.approx(math.sqrt(2), abs=1e-5) and op["smallest"] == pytest.approx(math.sqrt(2), abs=1e-5)
    assert spectrum["layers"]["conv1"]["matrix_shape"] == [8, 9] and len(spectrum["layers"]["conv1"]["top"]) == 5
    plots = store.joinpath(stage["dir"]) / "plots"
    assert (plots / "weight_spectrum.png").is_file()
