"""The Python API (SPEC §8): ``nnopt.run`` returns the ``--json`` result, ``nnopt.load`` a stage."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import nnopt
from nnopt.core.errors import SpecError

PIPELINE = """\
name: api
data: {name: synthetic, task: gaussian_mixture, n_train: 96, n_test: 32, dim: 6, batch_size: 32}
model: {arch: {name: mlp, widths: [8]}}
loss: cross_entropy
stages:
  train: {kind: train, optimizer: {name: sgd, lr: 0.1}, epochs: 2, keep: [0]}
  probe: {kind: analyze, from: train, analyzers: [grad_norms]}
"""


@pytest.fixture
def pipeline(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE)
    return path


def test_run_returns_what_run_json_prints_with_attribute_access(pipeline, tmp_path):
    store = tmp_path / "store"
    r = nnopt.run(pipeline, overrides={"stages.train.optimizer.lr": 0.05, "model.arch.widths": [8, 8]}, store=store)
    assert r.status == "ok" and r.pipeline == "api"
    assert r.stages["train"].status == "ran"
    assert set(r.stages["train"].metrics) >= {"train_loss", "test_loss", "test_accuracy"}
    spec = json.loads((tmp_path / "store").joinpath(r.stages["train"].dir, "spec.json").read_text())
    assert spec["optimizer"]["lr"] == 0.05 and spec["model"]["arch"]["widths"] == [8, 8]
    cli = subprocess.run([sys.executable, "-m", "nnopt", "run", str(pipeline), "--store", str(store), "--json",
                          "--set", "stages.train.optimizer.lr=0.05", "--set", "model.arch.widths=[8,8]"],
                         capture_output=True, text=True)
    out = json.loads(cli.stdout)
    assert out["stages"]["train"]["key"] == r.stages["train"].key and out["stages"]["train"]["status"] == "cached"
    assert set(out) == set(r)  # the same object, key for key


def test_run_of_a_matrix_has_runs(pipeline, tmp_path):
    pipeline.write_text(PIPELINE + "matrix:\n  seed: [0, 1]\n")
    r = nnopt.run(pipeline, store=tmp_path / "s")
    assert [run.params for run in r.runs] == [{"seed": 0}, {"seed": 1}]


def test_an_invalid_override_raises_a_spec_error_with_every_diagnostic(pipeline, tmp_path):
    with pytest.raises(SpecError) as err:
        nnopt.run(pipeline, overrides={"stages.train.optimizer.lr": -1, "stages.trian.epochs": 2}, store=tmp_path / "s")
    messages = [d.message for d in err.value.diagnostics]
    assert any("greater than 0" in m for m in messages) and any("no stage 'trian'" in m for m in messages)
    assert not (tmp_path / "s").exists()


def test_load_returns_the_model_with_its_weights_metrics_and_paths(pipeline, tmp_path):
    store = tmp_path / "store"
    r = nnopt.run(pipeline, store=store)
    for ref in ("api/train", f"{r.run}/train", r.stages["train"].key[:10]):
        s = nnopt.load(ref, store=store)
        assert s.metrics == r.stages["train"].metrics
        assert isinstance(s.model, torch.nn.Module) and not s.model.training
        final = s.weights()
        assert all(torch.equal(final[k], v) for k, v in s.model.state_dict().items())
        assert set(s.weights(0)) == set(final) and "weights/step_0.safetensors" in s.paths
        assert s.dir.is_dir() and s.spec["optimizer"]["name"] == "sgd"
    probe = nnopt.load("api/probe", store=store)
    assert probe.model is None and "grad_norms" in probe.results


def test_load_refuses_a_damaged_stage(pipeline, tmp_path):
    store = tmp_path / "store"
    r = nnopt.run(pipeline, store=store)
    weights = store.joinpath(r.stages["train"].dir, "weights", "final.safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged: weights/final.safetensors"):
        nnopt.load("api/train", store=store)


def test_load_of_an_unknown_ref_is_a_spec_error(pipeline, tmp_path):
    store = tmp_path / "store"
    nnopt.run(pipeline, store=store)
    with pytest.raises(SpecError, match="no stage 'trian'"):
        nnopt.load("api/trian", store=store)


def test_import_nnopt_imports_no_torch():
    code = "import sys, nnopt; assert callable(nnopt.__getattr__); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_diagnose_returns_what_diagnose_json_prints(pipeline, tmp_path):
    store = tmp_path / "store"
    d = nnopt.diagnose(pipeline, store=store, probe_steps=10, lr_range=False, overrides={"model.arch.widths": [8]})
    assert d.stage == "train" and isinstance(d.healthy, bool) and d.status == "ran"
    assert all({"id", "severity", "verified", "patch"} <= set(f) for f in d.findings)
    again = nnopt.diagnose(pipeline, store=store, probe_steps=10, lr_range=False, overrides={"model.arch.widths": [8]})
    assert again.cached is True and again.findings == d.findings
    with pytest.raises(SpecError):
        nnopt.diagnose(pipeline, stage="probe", store=store)


def test_run_streams_to_the_trackers_named_by_track(pipeline, tmp_path):
    r = nnopt.run(pipeline, store=tmp_path / "store", track=["jsonl"])
    assert r.status == "ok"
    with pytest.raises(Exception, match="tracker"):
        nnopt.run(pipeline, store=tmp_path / "store", track=["no-such-tracker"])
