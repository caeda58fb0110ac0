"""The ``train`` stage, run on a hand-built StageContext (no engine involved)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from nnopt.core.errors import StageError
from nnopt.core.kinds import AnalysisContext, Analyzer, Optimizer
from nnopt.core.model_spec import build_model
from nnopt.core.stage import ResolvedWeights
from nnopt.plugins.stages.train import Train, TrainSpec

from stage_helpers import LOCAL, data_ref, make_stage, model_spec, read_metrics


# ----------------------------------------------------------------- local stand-in components
class BatchProbe(Analyzer):
    """Records each batch it is shown (and the model's mode); results: the batch size."""

    seen: ClassVar[list[tuple[int, torch.Tensor, bool]]] = []

    def analyze(self, ctx: AnalysisContext) -> dict[str, Any]:
        xb, _ = ctx.batch
        BatchProbe.seen.append((ctx.step, xb.clone(), ctx.model.training))
        torch.rand(3)  # draws from the global RNG: must not disturb training
        return {"size": int(xb.shape[0])}


class ClosureLBFGS(Optimizer):
    """L-BFGS: an optimizer whose step needs a closure."""

    needs_closure: ClassVar[bool] = True

    def build(self, params, device):
        return torch.optim.LBFGS(params, lr=0.5, max_iter=4)


LOCAL[("analyzers", "batch_probe")] = BatchProbe
LOCAL[("optimizers", "lbfgs_local")] = ClosureLBFGS


def losses(records):
    return [r for r in records if "loss" in r and "track" not in r and not r.get("diverged")]


# ----------------------------------------------------------------- spec validation
def spec(**kw):
    return TrainSpec.model_validate({"kind": "train", "optimizer": "sgd", **kw})


def test_spec_needs_exactly_one_of_epochs_and_steps():
    with pytest.raises(ValidationError, match="give epochs or steps"):
        spec()
    with pytest.raises(ValidationError, match="not both"):
        spec(epochs=1, steps=3)
    assert spec(epochs=2).steps is None and spec(steps=2).epochs is None


def test_spec_ranges_and_keep_beyond_steps():
    with pytest.raises(ValidationError, match="keep step 12 is beyond steps \\(10\\)"):
        spec(steps=10, keep=[0, 12, 5])
    for bad in ({"epochs": 0}, {"steps": 0}, {"steps": 2, "keep": [-1]}, {"steps": 2, "log_every": 0},
                {"steps": 2, "eval_every": 0}, {"steps": 2, "grad_clip": 0}, {"steps": 2, "lr": 0.1}):
        with pytest.raises(ValidationError):
            spec(**bad)
    s = spec(steps=10, keep=[10, 0, 0], **{"from": "dense@3"})
    assert Train(s).kept_steps() == {0, 10}
    assert str(s.from_) == "dense@3"
    assert s.schedule.name == "constant" and s.schedule is not spec(steps=1).schedule
    for name, field in TrainSpec.model_fields.items():
        if name not in {"kind", "from_", "seed", "data", "model", "loss"}:
            assert field.description, name


def test_logging_and_checkpoint_options_are_left_out_of_the_cache_key():
    from nnopt.core.keys import non_key_fields

    assert non_key_fields(TrainSpec) == {"log_every", "checkpoint_every", "checkpoint_minutes"}


# ----------------------------------------------------------------- training
def test_trains_to_low_loss_and_writes_its_artifacts(train):
    outcome, out = train(epochs=8, keep=[0, 5, 32])
    assert outcome.status == "ok", outcome.message
    m = outcome.metrics
    assert m["train_loss"] < 0.1 and m["train_accuracy"] > 0.97 and m["test_accuracy"] > 0.95
    assert m["steps"] == 32 and m["epochs"] == 8.0  # 256 examples / 64 per batch = 4 steps an epoch
    assert m["seconds"] > 0 and m["steps_per_second"] == pytest.approx(32 / m["seconds"])
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert files == {"metrics.jsonl", "plots/loss.png", "weights/final.safetensors", "weights/step_0.safetensors",
                     "weights/step_5.safetensors", "weights/step_32.safetensors"}
    # step 0 is the initialization, step N = total is the final state
    init = build_model(model_spec(), data_ref().instantiate().load(0), 0, torch.device("cpu")).state_dict()
    step0 = load_file(out / "weights/step_0.safetensors")
    assert all(torch.equal(init[k], step0[k]) for k in init)
    assert (out / "weights/step_32.safetensors").read_bytes() == (out / "weights/final.safetensors").read_bytes()
    assert (out / "weights/step_5.safetensors").read_bytes() != (out / "weights/step_0.safetensors").read_bytes()


def test_trains_on_the_registered_synthetic_gaussian_mixture(train):
    mixture = {"name": "synthetic", "task": "gaussian_mixture", "n_train": 256, "n_test": 256, "dim": 8, "classes": 3,
               "separation": 6.0}
    outcome, _ = train(epochs=6, data=mixture)
    assert outcome.status == "ok" and outcome.metrics["test_accuracy"] > 0.9, outcome.metrics


def test_metrics_lines_windows_and_evaluations(train):
    outcome, out = train(epochs=5, log_every=3)  # 20 steps: windows end at 3, 6, ..., 18 and 20
    records = read_metrics(out)
    train_lines = losses(records)
    assert [r["step"] for r in train_lines] == [3, 6, 9, 12, 15, 18, 20]
    assert all(set(r) == {"step", "epoch", "loss", "lr", "seconds"} for r in train_lines)
    assert train_lines[-1]["epoch"] == 5.0 and train_lines[0]["lr"] == pytest.approx(0.1)
    assert train_lines[-1]["loss"] < train_lines[0]["loss"]
    evals = [r for r in records if "test_loss" in r]
    assert [r["step"] for r in evals] == [4, 8, 12, 16, 20]  # end of every epoch
    assert evals[-1]["test_loss"] == pytest.approx(outcome.metrics["test_loss"])
    assert evals[-1]["test_accuracy"] == pytest.approx(outcome.metrics["test_accuracy"])

    _, out = train("b", steps=10, eval_every=3, log_every=100)
    records = read_metrics(out)
    assert [r["step"] for r in records if "test_loss" in r] == [3, 6, 9, 10]
    assert [r["step"] for r in losses(records)] == [10]


def test_window_loss_is_the_mean_of_the_step_losses(train):
    _, out1 = train("one", steps=6, log_every=1)
    _, out3 = train("three", steps=6, log_every=3)
    per_step = [r["loss"] for r in losses(read_metrics(out1))]
    windows = [r["loss"] for r in losses(read_metrics(out3))]
    assert windows == pytest.approx([sum(per_step[:3]) / 3, sum(per_step[3:]) / 3])


def test_same_seed_gives_identical_weights_and_another_seed_does_not(train):
    _, a = train("a", epochs=2, keep=[3])
    _, b = train("b", epochs=2, keep=[3])
    _, c = train("c", epochs=2, keep=[3], seed=1)
    for name in ("final", "step_3"):
        assert (a / f"weights/{name}.safetensors").read_bytes() == (b / f"weights/{name}.safetensors").read_bytes()
    assert (a / "weights/final.safetensors").read_bytes() != (c / "weights/final.safetensors").read_bytes()


def test_steps_cycle_through_epochs(train):
    by_epochs, a = train("a", epochs=2)
    by_steps, b = train("b", steps=8)
    assert (a / "weights/final.safetensors").read_bytes() == (b / "weights/final.safetensors").read_bytes()
    partial, _ = train("c", steps=10)
    assert partial.metrics["steps"] == 10 and partial.metrics["epochs"] == 2.5


def test_every_epoch_visits_every_example_once_with_a_partial_last_batch(train):
    BatchProbe.seen.clear()
    outcome, out = train(epochs=2, data={"n_train": 100, "batch_size": 32},
                         track=[{"name": "batch_probe", "every": 1}])
    assert outcome.metrics["steps"] == 8  # ceil(100 / 32) = 4 batches an epoch: 32, 32, 32, 4
    assert [s for s, _, _ in BatchProbe.seen] == list(range(8))
    assert [x.shape[0] for _, x, _ in BatchProbe.seen] == [32, 32, 32, 4] * 2
    assert not any(training for _, _, training in BatchProbe.seen)  # tracked in eval mode
    x_train = data_ref(n_train=100).instantiate().load(0).x_train
    epochs = [torch.cat([x for _, x, _ in BatchProbe.seen[i : i + 4]]) for i in (0, 4)]
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(epochs[0]) == key(epochs[1]) == key(x_train)
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled each epoch
    sizes = [r for r in read_metrics(out) if r.get("track") == "batch_probe"]
    assert [(r["step"], r["size"]) for r in sizes] == [(s, 4 if s % 4 == 3 else 32) for s in range(8)]


def test_tracking_never_changes_the_trajectory(train):
    _, plain = train("plain", epochs=3)
    _, tracked = train("tracked", epochs=3, track=[{"name": "grad_norms", "every": 2},
                                                     {"name": "batch_probe", "every": 5}])
    assert (plain / "weights/final.safetensors").read_bytes() == (tracked / "weights/final.safetensors").read_bytes()
    norms = [r for r in read_metrics(tracked) if r.get("track") == "grad_norms"]
    assert [r["step"] for r in norms] == [0, 2, 4, 6, 8, 10]
    assert norms[0]["total"] > 0 and set(norms[0]["layers"]) == {"linear1.weight", "linear1.bias",
                                                                  "output.weight", "output.bias"}
    assert (tracked / "plots/grad_norms_track.png").stat().st_size > 0


def test_a_repeated_track_name_gets_its_own_key_and_plots(train):
    _, out = train(epochs=1, track=[{"name": "grad_norms", "every": 2}, {"name": "grad_norms", "every": 3, "source": "train"}])
    tracked = [(r["track"], r["step"]) for r in read_metrics(out) if "track" in r]
    assert tracked == [("grad_norms", 0), ("grad_norms_2", 0), ("grad_norms", 2), ("grad_norms_2", 3)]
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        "grad_norms_2_grad_norms_heatmap.png", "grad_norms_2_grad_norms_track.png",
        "grad_norms_heatmap.png", "grad_norms_track.png", "loss.png"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_grad_clip_bounds_the_update(train):
    _, clipped = train("clipped", steps=1, keep=[0], grad_clip=0.01, optimizer={"name": "sgd", "lr": 0.1})
    _, free = train("free", steps=1, keep=[0], optimizer={"name": "sgd", "lr": 0.1})

    def update_norm(out):
        before, after = load_file(out / "weights/step_0.safetensors"), load_file(out / "weights/final.safetensors")
        return math.sqrt(sum(float((after[k] - before[k]).square().sum()) for k in before))

    assert update_norm(clipped) == pytest.approx(0.1 * 0.01, rel=1e-3)
    assert update_norm(free) > 10 * update_norm(clipped)


def test_divergence_names_the_first_nonfinite_step_whatever_log_every(train):
    results = []
    for log_every in (1, 3, 1000):
        outcome, out = train(f"l{log_every}", epochs=50, log_every=log_every, optimizer={"name": "sgd", "lr": 1e6})
        assert outcome.status == "diverged", outcome
        results.append((outcome.metrics["diverged_at_step"], outcome.metrics["last_finite_loss"]))
        assert "non" not in outcome.message and str(outcome.metrics["diverged_at_step"]) in outcome.message
        assert not (out / "weights/final.safetensors").exists()
        if log_every == 1:  # one line per step: the last finite loss is that of the step before
            lines = losses(read_metrics(out))
            step = outcome.metrics["diverged_at_step"]
            assert [r["step"] for r in lines] == list(range(1, step + 1))
            assert all(math.isfinite(r["loss"]) for r in lines)
            assert lines[-1]["loss"] == pytest.approx(outcome.metrics["last_finite_loss"])
            assert read_metrics(out)[-1] == {"diverged": True, "epoch": step / 4, "loss": "nan", "step": step}
    assert results[0] == results[1] == results[2]
    assert results[0][0] > 0


def test_divergence_on_regression_with_mse(train):
    outcome, _ = train(epochs=50, loss="mse", data={"task": "regression"}, optimizer={"name": "sgd", "lr": 50.0})
    assert outcome.status == "diverged" and outcome.metrics["diverged_at_step"] >= 1


def test_regression_reports_no_accuracy(train):
    outcome, _ = train(epochs=4, loss="mse", data={"task": "regression"}, optimizer={"name": "sgd", "lr": 0.05})
    assert outcome.status == "ok"
    assert "train_accuracy" not in outcome.metrics and "test_accuracy" not in outcome.metrics
    assert outcome.metrics["train_loss"] < 0.5


def test_keep_beyond_the_trained_steps_is_a_stage_error(tmp_path):
    stage, ctx = make_stage("train", tmp_path, optimizer="sgd", epochs=2, keep=[0, 9])
    with pytest.raises(StageError, match="keep step 9"):
        stage.run(ctx)


def test_from_starts_at_another_stages_weights(train, tmp_path):
    _, dense = train("dense", epochs=2)
    weights = {"dense": ResolvedWeights(dense / "weights/final.safetensors", model_spec())}
    outcome, out = train("again", steps=4, keep=[0], weights=weights, **{"from": "dense"})
    assert outcome.status == "ok"
    assert (out / "weights/step_0.safetensors").read_bytes() == (dense / "weights/final.safetensors").read_bytes()


def test_closure_optimizers_get_a_closure(train):
    outcome, out = train(epochs=2, log_every=1, optimizer="lbfgs_local")
    assert outcome.status == "ok", outcome.message
    lines = losses(read_metrics(out))
    assert lines[-1]["loss"] < lines[0]["loss"] and outcome.metrics["train_loss"] < 0.2


def test_schedule_is_stepped_every_step(train):
    _, out = train(steps=8, log_every=1, schedule="cosine", optimizer={"name": "sgd", "lr": 0.1})
    lrs = [r["lr"] for r in losses(read_metrics(out))]
    # the rate each step used: η_t = ½η₀(1 + cos(πt/T)), t = 0..T-1
    assert lrs == pytest.approx([0.05 * (1 + math.cos(math.pi * t / 8)) for t in range(8)])
