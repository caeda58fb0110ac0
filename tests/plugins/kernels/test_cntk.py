"""cntk: neural-tangents' numbers for both readouts, the 1×1-image case (= the fully connected
kernel), blocking and symmetry, progress reports, and refusals."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stages"))
from stage_helpers import resolve_all  # noqa: E402

from nnopt.core.errors import StageError  # noqa: E402
from nnopt.plugins.kernels.analytic import NTKAnalytic  # noqa: E402
from nnopt.plugins.kernels.cntk import CNTK  # noqa: E402

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cntk(**params):
    return CNTK(resolve_all(CNTK.Params.model_validate(params)))


def images(n, c, h, w, phase):
    """Deterministic images, laid out (n, h, w, c) as neural-tangents reads them, returned (n, c, h, w)."""
    return (torch.sin(torch.arange(n * c * h * w, dtype=F64) * 0.37 + phase) * 1.3).reshape(n, h, w, c).permute(0, 3, 1, 2)


A, B = images(2, 2, 5, 4, 0.2), images(2, 2, 5, 4, 1.3)

# neural-tangents 0.6.5 (float64): serial(Conv(8, (3, 3), padding='SAME', W_std=1.3, b_std=0.2),
# Relu(), Conv(...), Relu(), Flatten() | GlobalAvgPool(), Dense(1, W_std=1.3, b_std=0.2))
NEURAL_TANGENTS = {
    "flatten": ([[0.5342167580741158, 0.284616797768939], [0.40683397798389154, 0.47319659562241767]],
                [[1.0881344850251953, 0.2660243591201699], [0.7071726413172613, 0.9114675630374878]]),
    "gap": ([[0.37484379177821725, 0.39666164408349214], [0.3298695007271152, 0.3479561372235008]],
            [[0.5924451642572099, 0.6448342830652103], [0.49637243143617443, 0.5320077303141639]]),
}


@pytest.mark.parametrize("readout", ["flatten", "gap"])
def test_matches_neural_tangents(readout):
    nngp, ntk = (torch.tensor(v, dtype=F64) for v in NEURAL_TANGENTS[readout])
    out = cntk(depth=2, kernel_size=3, readout=readout, W_std=1.3, b_std=0.2).compute(A, B, None)
    assert torch.allclose(out["nngp"], nngp, rtol=1e-10, atol=0)
    assert torch.allclose(out["ntk"], ntk, rtol=1e-10, atol=0)


@pytest.mark.parametrize("readout", ["flatten", "gap"])
def test_one_pixel_images_give_the_fully_connected_kernel(readout):
    """H = W = 1 and 1×1 filters: a conv is a dense layer on the C channels, so the CNTK of
    depth L is the FCN kernel of L hidden layers with d_in = C (a k×k filter would see k² − 1
    zero-padded pixels and average them in: σ_w²/k²)."""
    x = images(4, 6, 1, 1, 0.5)
    out = cntk(depth=3, kernel_size=1, readout=readout, W_std=1.2, b_std=0.1).compute(x, None, None)
    fcn = NTKAnalytic(resolve_all(NTKAnalytic.Params.model_validate(
        {"depth": 3, "activation": "relu", "W_std": 1.2, "b_std": 0.1}))).compute(x.reshape(4, 6), None, None)
    assert torch.allclose(out["ntk"], fcn["ntk"], rtol=1e-12) and torch.allclose(out["nngp"], fcn["nngp"], rtol=1e-12)


def test_blocks_symmetry_and_progress():
    x = images(5, 1, 4, 4, 0.1)
    calls = []
    small = cntk(depth=2, readout="gap", block_size=2).compute(x, None, None, progress=lambda d, t: calls.append((d, t)))
    whole = cntk(depth=2, readout="gap", block_size=64).compute(x, x.clone(), None)
    assert torch.allclose(small["ntk"], whole["ntk"], rtol=1e-12) and torch.equal(small["ntk"], small["ntk"].T)
    assert calls == [(i, 6) for i in range(1, 7)]  # 3 row blocks: 3 + 2 + 1 on and above the diagonal
    assert (torch.diagonal(small["ntk"]) >= torch.diagonal(small["nngp"])).all()


def test_flat_inputs_need_an_image_shape():
    flat = A.reshape(2, -1)
    with pytest.raises(StageError, match="image_shape"):
        cntk().compute(flat, None, None)
    shaped = cntk(image_shape=[2, 5, 4], depth=2, W_std=1.3, b_std=0.2).compute(flat, None, None)
    direct = cntk(depth=2, W_std=1.3, b_std=0.2).compute(A, None, None)
    assert torch.allclose(shaped["ntk"], direct["ntk"], rtol=1e-14)
    with pytest.raises(StageError, match="has 9 values"):
        cntk(image_shape=[1, 3, 3]).compute(flat, None, None)


def test_param_validation():
    with pytest.raises(ValidationError, match="odd"):
        CNTK.Params.model_validate({"kernel_size": 4})
    with pytest.raises(ValidationError):
        CNTK.Params.model_validate({"readout": "max"})
    assert math.isclose(CNTK.Params().W_std, math.sqrt(2.0))
