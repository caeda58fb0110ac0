"""The train stage's opt-in training features: order, projection, clipping, accumulation,
full batch, mixed precision, compile, channels_last, early stopping, and the ``training`` block."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from click.testing import CliRunner
from pydantic import ValidationError
from safetensors.torch import load_file

from nnopt.cli import main
from nnopt.core.errors import StageError
from nnopt.core.kinds import AnalysisContext, Analyzer, Optimizer
from nnopt.core.model_spec import build_model
from nnopt.plugins.stages.train import TrainSpec

from stage_helpers import LOCAL, data_ref, make_stage, model_spec, read_metrics


class OrderProbe(Analyzer):
    """Records the batch each step is shown."""

    seen: ClassVar[list[tuple[int, torch.Tensor]]] = []

    def analyze(self, ctx: AnalysisContext) -> dict[str, Any]:
        OrderProbe.seen.append((ctx.step, ctx.batch[0].clone()))
        return {}


LOCAL[("analyzers", "order_probe")] = OrderProbe


def spec(**kw):
    return TrainSpec.model_validate({"kind": "train", "optimizer": "sgd", "steps": 1, **kw})


def weights(out: Path, name: str = "final") -> dict[str, torch.Tensor]:
    return load_file(out / f"weights/{name}.safetensors")


def blobs(**params):
    return data_ref(**params).instantiate().load(0)


def model_at(state: dict[str, torch.Tensor], **data) -> torch.nn.Module:
    model = build_model(model_spec(), blobs(**data), 0, torch.device("cpu"))
    model.load_state_dict(state)
    return model


def grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.fixture
def float64():
    """Build data and models in float64 (the Blobs data and the MLP follow the default dtype)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


# ----------------------------------------------------------------- validation
def test_feature_keys_validate_their_values():
    s = spec()
    assert (s.shuffle, s.project, s.accumulate, s.full_batch, s.precision, s.compile, s.channels_last, s.early_stop,
            s.grad_clip_value) == (True, None, 1, False, "fp32", False, False, None, None)
    assert spec(project={"min": -1, "max": 1}).project.max == 1.0
    for bad in ({"project": {"min": 1.0, "max": -1.0}}, {"project": {"min": 0.0}}, {"project": {"min": 0, "max": 1, "x": 2}},
                {"accumulate": 0}, {"grad_clip_value": 0.0}, {"precision": "fp8"}, {"shuffle": "no"},
                {"early_stop": {"patience": 0}}, {"early_stop": {"patience": 2, "metric": "loss"}},
                {"early_stop": {"patience": 2, "min_delta": -0.1}}):
        with pytest.raises(ValidationError):
            spec(**bad)


# ----------------------------------------------------------------- shuffle: false
def test_shuffle_false_takes_the_train_split_in_order_every_epoch(train):
    OrderProbe.seen.clear()
    outcome, _ = train(epochs=2, shuffle=False, data={"n_train": 100, "batch_size": 32},
                       track=[{"name": "order_probe", "every": 1}])
    assert outcome.status == "ok" and outcome.results["training"]["shuffle"] is False
    x = blobs(n_train=100).x_train
    expected = [x[0:32], x[32:64], x[64:96], x[96:100]] * 2
    assert [s for s, _ in OrderProbe.seen] == list(range(8))
    assert all(torch.equal(seen, want) for (_, seen), want in zip(OrderProbe.seen, expected))


def test_shuffle_false_resumes_bitwise(tmp_path):
    assert_resumes_bitwise(tmp_path, shuffle=False, steps=11, data={"n_train": 100, "batch_size": 32})


# ----------------------------------------------------------------- project: {min, max}
def test_project_is_projected_gradient_descent_onto_the_box(train, float64):
    lo, hi, lr = -0.1, 0.1, 0.5
    outcome, out = train(steps=2, keep=[0, 1], full_batch=True, project={"min": lo, "max": hi},
                         optimizer={"name": "sgd", "lr": lr})
    assert outcome.results["training"]["project"] == {"min": lo, "max": hi}
    data = blobs()
    theta = weights(out, "step_0")
    assert max(float(v.abs().max()) for v in theta.values()) > hi  # θ_0 is the unprojected initialization
    for step in (1, 2):  # θ_{t+1} = clamp(θ_t − η ∇L(θ_t), lo, hi), by hand
        g = grads(model_at(theta), data.x_train, data.y_train)
        theta = {k: (v - lr * g[k]).clamp(lo, hi) for k, v in theta.items()}
        got = weights(out, "final" if step == 2 else f"step_{step}")
        for k in theta:
            torch.testing.assert_close(got[k], theta[k], rtol=0, atol=1e-12)
    final = weights(out)
    assert all(float(v.min()) >= lo and float(v.max()) <= hi for v in final.values())
    assert any(float(v.abs().max()) == hi for v in final.values())  # the box is active: the test can fail


# ----------------------------------------------------------------- nnopt run
FEATURES = """\
name: features
seed: 0
data: {name: synthetic, task: gaussian_mixture, n_train: 64, n_test: 32, dim: 4, batch_size: 16}
model: {arch: {name: mlp, widths: [8]}}
loss: cross_entropy
stages:
  train:
    kind: train
    optimizer: {name: sgd, lr: 0.1}
    epochs: 3
    keep: [0]
"""


def run_cli(tmp_path: Path, extra: str, *args: str, store: str = "store") -> dict[str, Any]:
    path = tmp_path / "pipeline.yaml"
    path.write_text(FEATURES + textwrap.indent(textwrap.dedent(extra), "    "))
    result = CliRunner().invoke(main, ["run", str(path), "--json", "--store", str(tmp_path / store), *args],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_nnopt_run_with_shuffle_false_and_project(tmp_path):
    out = run_cli(tmp_path, """\
        shuffle: false
        project: {min: -0.25, max: 0.25}
        """)
    train = out["stages"]["train"]
    assert train["status"] == "ran" and train["results"]["training"]["shuffle"] is False
    assert train["results"]["training"]["project"] == {"min": -0.25, "max": 0.25}
    final = load_file(Path(train["dir"]) / "weights/final.safetensors")
    assert all(float(v.abs().max()) <= 0.25 for v in final.values())
    spec_json = json.loads((Path(train["dir"]) / "spec.json").read_text())
    assert spec_json["shuffle"] is False and spec_json["project"] == {"min": -0.25, "max": 0.25}


# ----------------------------------------------------------------- resumption
def assert_resumes_bitwise(tmp_path: Path, **kwargs: Any) -> dict[str, Any]:
    """Train once straight through, and once killed after its first checkpoint and resumed
    from it (as the engine does: same directory, the checkpoint file left there): the weights
    and metrics lines are the same bits."""
    from nnopt.core.stage import StageContext

    kwargs.setdefault("optimizer", {"name": "sgd", "lr": 0.1, "momentum": 0.9})
    kwargs.setdefault("checkpoint_every", 3)
    kwargs.setdefault("log_every", 1)
    stage, ctx = make_stage("train", tmp_path / "straight", **kwargs)
    straight = stage.run(ctx)
    ctx.close()

    stage, ctx = make_stage("train", tmp_path / "killed", **kwargs)
    saved = StageContext.save_checkpoint

    def killed(self, state):
        saved(self, state)
        raise KeyboardInterrupt

    StageContext.save_checkpoint = killed
    try:
        with pytest.raises(KeyboardInterrupt):
            stage.run(ctx)
    finally:
        StageContext.save_checkpoint = saved
        ctx.close()
    assert ctx.load_checkpoint() is not None
    stage, ctx = make_stage("train", tmp_path / "killed", **kwargs)
    resumed = stage.run(ctx)
    ctx.close()
    a, b = tmp_path / "straight", tmp_path / "killed"
    assert (a / "weights/final.safetensors").read_bytes() == (b / "weights/final.safetensors").read_bytes()

    def lines(out):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(out)]

    assert lines(a) == lines(b)
    assert straight.metrics["test_loss"] == resumed.metrics["test_loss"]
    return resumed.metrics


# ----------------------------------------------------------------- grad_clip_value
def test_grad_clip_value_clips_every_gradient_entry(train, float64):
    c, lr = 1e-3, 0.1
    outcome, out = train(steps=1, keep=[0], full_batch=True, grad_clip_value=c, optimizer={"name": "sgd", "lr": lr})
    assert outcome.results["training"]["grad_clip_value"] == c
    theta = weights(out, "step_0")
    data = blobs()
    g = grads(model_at(theta), data.x_train, data.y_train)
    assert max(float(v.abs().max()) for v in g.values()) > 10 * c  # clipping is active
    final = weights(out)
    for k in theta:  # θ_1 = θ_0 − η · clamp(∇L(θ_0), −c, c)
        torch.testing.assert_close(final[k], theta[k] - lr * g[k].clamp(-c, c), rtol=0, atol=1e-12)


# ----------------------------------------------------------------- accumulate / full_batch
def test_accumulate_gives_the_big_batch_gradient_exactly(train, float64):
    # 100 examples: steps of 4 x 10 = 40, 40, then a last step of 20 (micro-batches 10, 10)
    common = {"epochs": 2, "log_every": 1, "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.9}}
    acc, a = train("acc", accumulate=4, data={"n_train": 100, "batch_size": 10}, **common)
    big, b = train("big", data={"n_train": 100, "batch_size": 40}, **common)
    assert acc.metrics["steps"] == big.metrics["steps"] == 6
    wa, wb = weights(a), weights(b)
    for k in wb:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-12)
    # the logged loss of a step is the mean loss over its whole (big) batch
    la, lb = [r["loss"] for r in read_metrics(a) if "loss" in r], [r["loss"] for r in read_metrics(b) if "loss" in r]
    assert la == pytest.approx(lb, rel=1e-12, abs=0)
    t = acc.results["training"]
    assert (t["accumulate"], t["batch_size"], t["micro_batch_size"]) == (4, 40, 10)
    # and it is not the small batch's trajectory: the test can tell them apart
    small, c = train("small", data={"n_train": 100, "batch_size": 10}, **common)
    assert small.metrics["steps"] == 20
    assert max(float((weights(c)[k] - wb[k]).abs().max()) for k in wb) > 1e-3


def test_micro_batches_see_one_micro_batch_each_forward(train):
    sizes = []
    from nnopt.plugins.stages import train_callbacks

    original = train_callbacks.MicroBatchStep.step

    def spy(self, loop, xb, yb):
        handle = loop.model.register_forward_pre_hook(lambda m, args: sizes.append(args[0].shape[0]))
        try:
            return original(self, loop, xb, yb)
        finally:
            handle.remove()

    train_callbacks.MicroBatchStep.step = spy
    try:
        outcome, _ = train(steps=2, accumulate=3, data={"n_train": 100, "batch_size": 16})
    finally:
        train_callbacks.MicroBatchStep.step = original
    assert outcome.status == "ok"
    assert sizes == [16, 16, 16] * 2  # steps of 48 examples, forwarded 16 at a time


def test_accumulate_resumes_bitwise(tmp_path):
    metrics = assert_resumes_bitwise(tmp_path, accumulate=2, steps=7, data={"n_train": 100, "batch_size": 16},
                                     grad_clip=1.0)
    assert metrics["steps"] == 7


class ClosureStandIn(Optimizer):
    """An optimizer whose step needs a closure."""

    needs_closure: ClassVar[bool] = True

    def build(self, params, device):
        return torch.optim.LBFGS(params, lr=0.5, max_iter=2)


LOCAL[("optimizers", "closure_stand_in")] = ClosureStandIn


def test_accumulate_refuses_closure_optimizers(tmp_path):
    stage, ctx = make_stage("train", tmp_path / "a", optimizer="closure_stand_in", steps=2, accumulate=2)
    with pytest.raises(StageError, match="accumulate works with plain-backward optimizers only.*needs a closure"):
        stage.run(ctx)


def test_full_batch_steps_are_epochs_over_the_whole_split(train, float64):
    outcome, out = train(epochs=3, full_batch=True, keep=[0], log_every=1, data={"n_train": 100, "batch_size": 7},
                         optimizer={"name": "sgd", "lr": 0.3})
    assert outcome.metrics["steps"] == 3 and outcome.metrics["epochs"] == 3.0
    t = outcome.results["training"]
    assert t["full_batch"] is True and t["batch_size"] == 100 and t["shuffle"] is False
    data = blobs(n_train=100)
    theta = weights(out, "step_0")
    for _ in range(3):  # gradient descent on the full training loss
        g = grads(model_at(theta, n_train=100), data.x_train, data.y_train)
        theta = {k: v - 0.3 * g[k] for k, v in theta.items()}
    final = weights(out)
    for k in theta:
        torch.testing.assert_close(final[k], theta[k], rtol=0, atol=1e-12)


def test_full_batch_with_accumulate_cuts_the_split_into_k_micro_batches(train, float64):
    common = {"steps": 3, "full_batch": True, "data": {"n_train": 100}, "optimizer": {"name": "sgd", "lr": 0.3}}
    acc, a = train("acc", accumulate=3, **common)
    one, b = train("one", **common)
    assert acc.results["training"]["micro_batch_size"] == 34
    for k, v in weights(b).items():
        torch.testing.assert_close(weights(a)[k], v, rtol=0, atol=1e-12)


# ----------------------------------------------------------------- precision
def test_bf16_autocast_trains_on_cpu_and_stays_close_to_fp32(train):
    bf16, a = train("bf16", epochs=4, precision="bf16")
    fp32, b = train("fp32", epochs=4)
    assert bf16.status == "ok" and bf16.results["training"]["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in weights(a).values())  # weights stay float32
    assert bf16.metrics["test_accuracy"] > 0.9 and abs(bf16.metrics["train_loss"] - fp32.metrics["train_loss"]) < 0.05
    assert weights(a)["output.weight"].ne(weights(b)["output.weight"]).any()  # bf16 did change the arithmetic


def test_the_autocast_callback_runs_the_forward_in_bfloat16():
    from nnopt.plugins.stages.train_callbacks import Autocast

    lin = torch.nn.Linear(3, 2)
    with Autocast("cpu", torch.bfloat16).forward_context(None):
        out = lin(torch.randn(4, 3))
    assert out.dtype == torch.bfloat16 and lin.weight.dtype == torch.float32


def test_fp16_on_cpu_is_refused_with_a_clear_error(tmp_path):
    stage, ctx = make_stage("train", tmp_path, optimizer="sgd", steps=2, precision="fp16")
    with pytest.raises(StageError, match="fp16 trains with a GradScaler on CUDA only.*use precision: bf16"):
        stage.run(ctx)


def test_the_grad_scaler_step_unscales_before_clipping_and_matches_plain_backward():
    """MicroBatchStep with a GradScaler (here an enabled CPU scaler on float32, as on CUDA with
    fp16): the update equals plain backward's, and after_backward hooks see unscaled gradients."""
    from nnopt.core.kinds import DataSplit
    from nnopt.core.loop import BackwardStep, LoopCallback, TrainLoop
    from nnopt.plugins.stages.train_callbacks import GradScaling, MicroBatchStep

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, generator=g), torch.randint(0, 2, (32,), generator=g)
    data = DataSplit(x, y, x[:0], y[:0], "classification", (3,), 2, 2)
    seen = []

    class Seen(LoopCallback):
        def after_backward(self, loop):
            seen.append(float(loop.model.weight.grad.abs().max()))

    def run(rule, callbacks):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        loop = TrainLoop(_NoCtx(), model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                         torch.nn.functional.cross_entropy, data, total=3, batch_size=16, shuffle_seed=0,
                         evaluate=lambda m: {}, callbacks=[*callbacks, Seen()], step_rule=rule)
        loop.run()
        return model.weight.detach().clone()

    scaling = GradScaling("cpu")
    scaled = run(MicroBatchStep(8, scaling.scaler), [scaling])
    scaled_grads = list(seen)
    seen.clear()
    plain = run(BackwardStep(), [])
    torch.testing.assert_close(scaled, plain, rtol=1e-6, atol=1e-7)
    assert scaled_grads == pytest.approx(seen, rel=1e-6)  # unscaled: the loss scale is 2^16
    assert scaling.state_dict()["scale"] == 2.0**16


class _NoCtx:
    def log_metrics(self, record):
        pass

    def save_checkpoint(self, state):
        pass


# ----------------------------------------------------------------- compile
@pytest.mark.slow
def test_compile_trains_like_eager_and_keeps_the_weight_names(train):
    compiled, a = train("compiled", steps=4, compile=True, data={"n_train": 64, "batch_size": 32})
    eager, b = train("eager", steps=4, data={"n_train": 64, "batch_size": 32})
    assert compiled.status == "ok" and compiled.results["training"]["compile"] is True
    wa, wb = weights(a), weights(b)
    assert set(wa) == set(wb)  # no "_orig_mod." prefix: kept weights and `from` read them as before
    for k in wb:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
    assert compiled.metrics["test_loss"] == pytest.approx(eager.metrics["test_loss"], rel=1e-4)


def test_compile_without_a_cpp_compiler_is_a_clear_error(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    stage, ctx = make_stage("train", tmp_path, optimizer="sgd", steps=2, compile=True)
    with pytest.raises(StageError, match="compile: true on CPU needs a C\\+\\+ compiler"):
        stage.run(ctx)


def test_a_failing_compile_is_a_stage_error_naming_compile(tmp_path, monkeypatch):
    import torch._dynamo

    def broken(self, *args, **kwargs):
        raise torch._dynamo.exc.InternalTorchDynamoError("no compiler today")

    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: setattr(self, "forward", broken.__get__(self)))
    stage, ctx = make_stage("train", tmp_path, optimizer="sgd", steps=2, compile=True)
    with pytest.raises(StageError, match="compile: true failed.*no compiler today.*set compile: false"):
        stage.run(ctx)


# ----------------------------------------------------------------- channels_last
TEXTURES = {"name": "synthetic", "task": "textures", "image_size": 8, "channels": 3, "classes": 2, "n_train": 32, "n_test": 16,
            "batch_size": 16}


class FormatProbe(Analyzer):
    """Records whether the batch and the first conv weight are channels_last."""

    seen: ClassVar[list[tuple[bool, bool]]] = []

    def analyze(self, ctx: AnalysisContext) -> dict[str, Any]:
        conv = next(m for m in ctx.model.modules() if isinstance(m, torch.nn.Conv2d))
        fmt = torch.channels_last
        FormatProbe.seen.append((ctx.batch[0].is_contiguous(memory_format=fmt), conv.weight.is_contiguous(memory_format=fmt)))
        return {}


LOCAL[("analyzers", "format_probe")] = FormatProbe


def test_channels_last_puts_the_model_and_the_batches_in_nhwc(train):
    from nnopt.core.model_spec import ModelSpec

    from stage_helpers import resolve_all

    cnn = resolve_all(ModelSpec.model_validate({"arch": {"name": "cnn", "channels": [4, 4]}}))
    FormatProbe.seen.clear()
    nhwc, a = train("nhwc", steps=4, channels_last=True, data=TEXTURES, model=cnn,
                    track=[{"name": "format_probe", "every": 1}])
    assert nhwc.status == "ok" and nhwc.results["training"]["channels_last"] is True and nhwc.message is None
    assert FormatProbe.seen == [(True, True)] * 4
    FormatProbe.seen.clear()
    nchw, b = train("nchw", steps=4, data=TEXTURES, model=cnn, track=[{"name": "format_probe", "every": 1}])
    assert FormatProbe.seen == [(False, False)] * 4
    for k, v in weights(b).items():
        torch.testing.assert_close(weights(a)[k], v, rtol=1e-4, atol=1e-5)


def test_channels_last_on_flat_inputs_is_a_no_op_with_a_note(train):
    outcome, _ = train(steps=2, channels_last=True)
    assert outcome.results["training"]["channels_last"] is False
    assert outcome.results["training"]["notes"] == ["channels_last ignored: the inputs are 2-D, not 4-D images"]
    assert outcome.message == "channels_last ignored: the inputs are 2-D, not 4-D images"


# ----------------------------------------------------------------- early stopping
def test_early_stop_stops_after_patience_evaluations_without_improvement(train):
    # min_delta 100: only the first evaluation (step 2) counts as an improvement
    stop = {"metric": "test_loss", "patience": 2, "min_delta": 100.0}
    outcome, out = train(steps=20, eval_every=2, log_every=5, keep=[2, 6, 10], early_stop=stop)
    m = outcome.metrics
    assert outcome.status == "ok" and (m["stopped_at"], m["best_step"], m["steps"]) == (6, 2, 6)
    assert outcome.results["training"]["early_stop"] == {"stopped_at": 6, "best_step": 2, "restored_best": False}
    records = read_metrics(out)
    assert [r["step"] for r in records if "test_loss" in r] == [2, 4, 6]
    assert [r["step"] for r in records if "loss" in r] == [5, 6]  # the window open at the stop is flushed
    assert m["test_loss"] == pytest.approx([r["test_loss"] for r in records if "test_loss" in r][-1])
    final = (out / "weights/final.safetensors").read_bytes()
    assert (out / "weights/step_6.safetensors").read_bytes() == final
    assert (out / "weights/step_10.safetensors").read_bytes() == final  # no update after the stop
    assert (out / "weights/step_2.safetensors").read_bytes() != final


def test_restore_best_ends_on_the_best_evaluations_weights(train):
    stop = {"metric": "test_accuracy", "patience": 2, "min_delta": 2.0, "restore_best": True}
    outcome, out = train(steps=20, eval_every=2, keep=[2], early_stop=stop)
    m = outcome.metrics
    assert (m["stopped_at"], m["best_step"], m["steps"]) == (6, 2, 6)
    assert outcome.results["training"]["early_stop"]["restored_best"] is True
    assert (out / "weights/final.safetensors").read_bytes() == (out / "weights/step_2.safetensors").read_bytes()
    first = next(r for r in read_metrics(out) if "test_loss" in r)
    assert m["test_loss"] == pytest.approx(first["test_loss"]) and m["best_test_accuracy"] == first["test_accuracy"]


def test_early_stop_on_train_loss_and_no_stop_while_improving(train):
    outcome, _ = train(steps=20, eval_every=4, early_stop={"metric": "train_loss", "patience": 1, "min_delta": 100.0})
    assert (outcome.metrics["stopped_at"], outcome.metrics["best_step"]) == (8, 4)
    improving, _ = train("b", steps=20, eval_every=4, early_stop={"metric": "train_loss", "patience": 1})
    assert improving.metrics["stopped_at"] is None and improving.metrics["steps"] == 20
    assert improving.metrics["best_step"] == 20  # every interval's loss was lower than the one before


def test_early_stop_resumes_bitwise(tmp_path):
    metrics = assert_resumes_bitwise(tmp_path, steps=20, eval_every=4,
                                     early_stop={"metric": "train_loss", "patience": 2, "min_delta": 100.0})
    assert metrics["stopped_at"] == 12


def test_early_stop_needs_a_test_split(tmp_path):
    stage, ctx = make_stage("train", tmp_path, optimizer="sgd", steps=2, data={"n_test": 0},
                            early_stop={"patience": 1})
    with pytest.raises(StageError, match="early_stop decides at test evaluations"):
        stage.run(ctx)


# ----------------------------------------------------------------- the training block, through the CLI
def test_nnopt_run_records_how_it_trained_and_show_displays_it(tmp_path):
    out = run_cli(tmp_path, """\
        accumulate: 2
        precision: bf16
        grad_clip_value: 0.5
        early_stop: {metric: test_loss, patience: 100}
        """)
    train = out["stages"]["train"]
    assert train["status"] == "ran", train
    t = train["results"]["training"]
    assert t["optimizer"] == "torch.optim.sgd.SGD" and t["device"] == "cpu"
    assert (t["precision"], t["accumulate"], t["batch_size"], t["micro_batch_size"]) == ("bf16", 2, 32, 16)
    assert (t["compile"], t["channels_last"], t["full_batch"], t["grad_clip_value"]) == (False, False, False, 0.5)
    assert "fused" in t and "foreach" in t
    assert train["metrics"]["steps"] == 6 and train["metrics"]["stopped_at"] is None
    stored = json.loads((Path(train["dir"]) / "result.json").read_text())
    assert stored["results"]["training"] == t
    shown = CliRunner().invoke(main, ["show", f"{out['run']}/train", "--store", str(tmp_path / "store")])
    assert shown.exit_code == 0 and "training:" in shown.stdout and "torch.optim.sgd.SGD" in shown.stdout
    assert "precision: \"bf16\"" in shown.stdout


def test_the_optimizer_block_reads_fused_and_foreach_from_the_built_optimizer(train):
    outcome, _ = train(steps=1, optimizer={"name": "adam", "lr": 1e-3})
    t = outcome.results["training"]
    assert t["optimizer"] == "torch.optim.adam.Adam"
    from nnopt.plugins.optimizers.fused import build_fused_if_supported

    built = build_fused_if_supported(torch.optim.Adam, [torch.nn.Parameter(torch.zeros(2))], "cpu", lr=1e-3)
    assert t["fused"] == bool(built.defaults["fused"]) and t["foreach"] == built.defaults["foreach"]
