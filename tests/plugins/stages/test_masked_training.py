"""Masked training in the ``train`` stage: pruned weights stay exactly zero through every step,
in every saved artifact and in the optimizer state, whatever the optimizer does at them.

The masks are written by hand (``masks.safetensors`` beside a dense stage's weights), so these
tests do not depend on the prune stage. The source weights are *not* zero at the pruned
entries: the stage must mask them itself before training.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from safetensors.torch import load_file, save_file

import nnopt.plugins.stages.train as train_module
from nnopt.core.errors import StageError
from nnopt.core.kinds import AnalysisContext, Analyzer, Optimizer
from nnopt.core.loop import LoopCallback, TrainLoop
from nnopt.core.model_spec import build_model
from nnopt.core.stage import MASKS_FILE, ResolvedWeights, StageContext
from nnopt.plugins.stages.train_callbacks import ApplyMasks, MaskGradients

from stage_helpers import LOCAL, data_ref, make_stage, model_spec, read_metrics

PRUNABLE = ("linear1.weight", "output.weight")  # the default MLP [32] on 8-D blobs, 3 classes


# ----------------------------------------------------------------- local stand-ins
class LeakySwap(LoopCallback):
    """An evaluate_context that swaps in weights that are nonzero everywhere (as an average or
    EMA kept without masks would be), and swaps back after."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def evaluate_context(self, loop: Any) -> Any:
        return self._swap()

    @contextlib.contextmanager
    def _swap(self):
        saved = [p.detach().clone() for p in self.model.parameters()]
        with torch.no_grad():
            for p in self.model.parameters():
                p.add_(0.5)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.model.parameters(), saved):
                    p.copy_(s)


class LeakySGD(Optimizer):
    """Plain SGD whose reported weights are swapped in by ``LeakySwap``."""

    def build(self, params, device):
        return torch.optim.SGD(params, lr=0.1)

    def callbacks(self, optimizer, model):
        return [LeakySwap(model)]


class DenseUpdate(Optimizer):
    """θ ← θ − η (g + 0.01): an update that moves every entry, a zero gradient or not (as a
    preconditioned or orthogonalized step does)."""

    class _Opt(torch.optim.SGD):
        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.sub_(group["lr"] * (p.grad + 0.01))

    def build(self, params, device):
        return self._Opt(params, lr=0.1)


class PrunedProbe(Analyzer):
    """Records, at every step it is tracked, the largest |θ| at the pruned entries of the live
    training weights (outside any evaluation swap)."""

    masks: ClassVar[dict[str, torch.Tensor]] = {}
    seen: ClassVar[list[tuple[int, float]]] = []

    def analyze(self, ctx: AnalysisContext) -> dict[str, Any]:
        state = ctx.model.state_dict()
        worst = max(float(state[k][m == 0].abs().max()) for k, m in PrunedProbe.masks.items())
        PrunedProbe.seen.append((ctx.step, worst))
        return {}


LOCAL[("analyzers", "pruned_probe")] = PrunedProbe
LOCAL[("optimizers", "leaky_sgd")] = LeakySGD
LOCAL[("optimizers", "dense_update")] = DenseUpdate


# ----------------------------------------------------------------- helpers
@pytest.fixture
def loops(monkeypatch):
    """The TrainLoop each stage run builds (its optimizer state and model, after the run)."""
    seen: list[TrainLoop] = []

    class Recording(TrainLoop):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            seen.append(self)

    monkeypatch.setattr(train_module, "TrainLoop", Recording)
    return seen


def dense_source(tmp_path: Path, masks: dict[str, torch.Tensor] | None = None) -> dict[str, ResolvedWeights]:
    """A dense model's initial weights (nonzero everywhere) as stage ``src``, with ``masks``
    written beside them as its masks.safetensors (none: a dense stage)."""
    src = tmp_path / "src"
    (src / "weights").mkdir(parents=True, exist_ok=True)
    data = data_ref().instantiate().prepare(0)
    model = build_model(model_spec(), data, 0, torch.device("cpu"))
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(src / "weights/final.safetensors"))
    if masks is not None:
        save_file(masks, str(src / MASKS_FILE))
    return {"src": ResolvedWeights(src / "weights/final.safetensors", model_spec(), masks=src / MASKS_FILE)}


def random_masks(keep: float = 0.3, seed: int = 5) -> dict[str, torch.Tensor]:
    """About ``keep`` of each prunable weight kept (1.0), the rest pruned (0.0)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"linear1.weight": (32, 8), "output.weight": (3, 32)}
    return {k: (torch.rand(s, generator=g) < keep).to(torch.float32) for k, s in shapes.items()}


def run_masked(tmp_path: Path, out: str = "masked", masks: dict[str, torch.Tensor] | None = None, **spec: Any):
    masks = random_masks() if masks is None else masks
    weights = dense_source(tmp_path, masks)
    stage, ctx = make_stage("train", tmp_path / out, weights=weights, **{"from": "src", **spec})
    try:
        outcome = stage.run(ctx)
    finally:
        ctx.close()
    return outcome, tmp_path / out, masks


def assert_zero_where_pruned(state: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], what: str) -> None:
    for name, mask in masks.items():
        pruned = state[name][mask == 0]
        assert pruned.numel() > 0
        assert bool((pruned == 0).all()), f"{what}: {int((pruned != 0).sum())} pruned entries of {name} are nonzero"


def assert_masked_everywhere(out: Path, masks: dict[str, torch.Tensor], kept: list[int]) -> None:
    """Final and every kept step exactly zero where pruned; the masks saved equal to the input."""
    assert_zero_where_pruned(load_file(out / "weights/final.safetensors"), masks, "final")
    for k in kept:
        assert_zero_where_pruned(load_file(out / f"weights/step_{k}.safetensors"), masks, f"step_{k}")
    saved = load_file(out / MASKS_FILE)
    assert saved.keys() == masks.keys()
    for name in masks:
        assert torch.equal(saved[name], masks[name]) and saved[name].dtype == masks[name].dtype


def assert_state_zero(loop: TrainLoop, masks: dict[str, torch.Tensor], keys: tuple[str, ...]) -> None:
    params = dict(loop.model.named_parameters())
    for name, mask in masks.items():
        state = loop.optimizer.state[params[name]]
        for key in keys:
            assert key in state, (key, sorted(state))
            pruned = state[key][mask == 0]
            assert bool((pruned == 0).all()), f"optimizer state {key} of {name} is nonzero at pruned entries"


def assert_unmasked_trained(out: Path, masks: dict[str, torch.Tensor]) -> None:
    start, final = load_file(out / "weights/step_0.safetensors"), load_file(out / "weights/final.safetensors")
    for name, mask in masks.items():
        kept = mask == 1
        moved = (final[name][kept] != start[name][kept]).float().mean()
        assert moved > 0.9, f"only {float(moved):.0%} of the kept entries of {name} trained"


# ----------------------------------------------------------------- the pitfalls, one optimizer each
def test_sgd_with_momentum_and_weight_decay(tmp_path, loops):
    outcome, out, masks = run_masked(tmp_path, steps=20, keep=[0, 7, 20],
                                     optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.05})
    assert outcome.status == "ok", outcome.message
    assert_masked_everywhere(out, masks, [0, 7, 20])
    assert_unmasked_trained(out, masks)
    assert_state_zero(loops[-1], masks, ("momentum_buffer",))
    assert_zero_where_pruned({k: v.detach() for k, v in loops[-1].model.state_dict().items()}, masks, "live model")
    # biases are not masked and train
    start, final = load_file(out / "weights/step_0.safetensors"), load_file(out / "weights/final.safetensors")
    assert not torch.equal(start["linear1.bias"], final["linear1.bias"])


def test_adamw_decoupled_weight_decay(tmp_path, loops):
    outcome, out, masks = run_masked(tmp_path, steps=20, keep=[0, 10],
                                     optimizer={"name": "adamw", "lr": 0.01, "weight_decay": 0.5})
    assert outcome.status == "ok", outcome.message
    assert_masked_everywhere(out, masks, [0, 10])
    assert_unmasked_trained(out, masks)
    assert_state_zero(loops[-1], masks, ("exp_avg", "exp_avg_sq"))


def test_adam_with_l2_and_amsgrad(tmp_path, loops):
    outcome, out, masks = run_masked(tmp_path, steps=20, keep=[0, 10],
                                     optimizer={"name": "adam", "lr": 0.01, "weight_decay": 0.1, "amsgrad": True})
    assert outcome.status == "ok", outcome.message
    assert_masked_everywhere(out, masks, [0, 10])
    assert_unmasked_trained(out, masks)
    assert_state_zero(loops[-1], masks, ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"))


@pytest.mark.parametrize("base,lr", [("sgd", 0.5), ("adamw", 0.01)])
def test_schedule_free_average_and_its_swap(tmp_path, loops, base, lr):
    outcome, out, masks = run_masked(tmp_path, steps=20, keep=[0, 5, 20], eval_every=4,
                                     optimizer={"name": "schedule_free", "base": base, "lr": lr, "weight_decay": 0.1})
    assert outcome.status == "ok", outcome.message
    assert_masked_everywhere(out, masks, [0, 5, 20])  # these are x, the average
    assert_unmasked_trained(out, masks)
    loop = loops[-1]
    assert_state_zero(loop, masks, ("z",) + (("exp_avg_sq",) if base == "adamw" else ()))
    live = lambda: {k: v.detach().clone() for k, v in loop.model.state_dict().items()}  # noqa: E731
    assert_zero_where_pruned(live(), masks, "y (training weights)")
    with loop.evaluation():
        assert_zero_where_pruned(live(), masks, "x (inside evaluation)")


@pytest.mark.parametrize("schedule", [
    {"name": "cosine"},
    {"name": "warmup", "length": 5, "unit": "steps", "then": {"name": "step", "every": 5, "gamma": 2.0, "unit": "steps"}},
    {"name": "one_cycle"},
])
def test_learning_rate_schedules(tmp_path, loops, schedule):
    outcome, out, masks = run_masked(tmp_path, steps=20, keep=[0, 13], schedule=schedule,
                                     optimizer={"name": "sgd", "lr": 0.2, "momentum": 0.9, "weight_decay": 0.01})
    assert outcome.status == "ok", outcome.message
    lrs = {r["lr"] for r in read_metrics(out) if "lr" in r}
    assert len(lrs) > 1  # the schedule did change the rate
    assert_masked_everywhere(out, masks, [0, 13])
    assert_unmasked_trained(out, masks)
    assert_state_zero(loops[-1], masks, ("momentum_buffer",))


def test_an_update_that_moves_every_entry_is_masked_after_the_step(tmp_path):
    # a zero gradient does not keep this optimizer's pruned entries still: only re-masking does
    masks = PrunedProbe.masks = random_masks()
    PrunedProbe.seen.clear()
    outcome, out, _ = run_masked(tmp_path, masks=masks, steps=10, keep=[3], optimizer="dense_update",
                                 track=[{"name": "pruned_probe", "every": 1}])
    assert outcome.status == "ok", outcome.message
    assert [s for s, _ in PrunedProbe.seen] == list(range(10))
    assert all(worst == 0 for _, worst in PrunedProbe.seen)  # the weights every step trains at, θ_0 included
    assert_masked_everywhere(out, masks, [3])


def test_weights_swapped_in_for_evaluation_are_masked_after_the_swap(tmp_path):
    outcome, out, masks = run_masked(tmp_path, steps=10, keep=[0, 4, 10], eval_every=2, optimizer="leaky_sgd")
    assert outcome.status == "ok", outcome.message
    assert_masked_everywhere(out, masks, [0, 4, 10])
    final = load_file(out / "weights/final.safetensors")
    assert bool((final["linear1.bias"] != 0).all())  # the swap did act: unmasked tensors are what it swapped in


def test_muon_orthogonalized_update(tmp_path, loops):
    outcome, out, masks = run_masked(tmp_path, steps=10, keep=[0, 5],
                                     optimizer={"name": "muon", "lr": 0.02, "weight_decay": 0.1})
    assert outcome.status == "ok", outcome.message
    assert_masked_everywhere(out, masks, [0, 5])
    assert_unmasked_trained(out, masks)
    assert_state_zero(loops[-1], masks, ("momentum_buffer",))


# ----------------------------------------------------------------- exactness of the masked step
def test_one_step_is_sgd_on_the_masked_gradient_with_clipping_after_masking(tmp_path):
    lr, c = 0.1, 0.05
    # no keep: [0] (whose save would mask the live weights on its own): the stage masks θ_0
    outcome, out, masks = run_masked(tmp_path, steps=1, full_batch=True, grad_clip=c,
                                     optimizer={"name": "sgd", "lr": lr})
    assert outcome.status == "ok", outcome.message
    theta = load_file(tmp_path / "src/weights/final.safetensors")
    for name, mask in masks.items():  # θ_0 = source ⊙ m
        theta[name] = theta[name] * mask
    data = data_ref().instantiate().prepare(0)
    model = build_model(model_spec(), data, 0, torch.device("cpu"))
    model.load_state_dict(theta)
    torch.nn.functional.cross_entropy(model(data.x_train), data.y_train).backward()
    g = {k: p.grad * masks[k] if k in masks else p.grad for k, p in model.named_parameters()}
    norm = torch.sqrt(sum((v.double() ** 2).sum() for v in g.values()))
    assert norm > 2 * c  # clipping is active, on the masked gradient's norm
    final = load_file(out / "weights/final.safetensors")
    for k in theta:
        torch.testing.assert_close(final[k], theta[k] - lr * g[k] * float(c / norm), rtol=1e-5, atol=1e-7)


def test_a_nonfinite_pruned_source_weight_becomes_an_exact_zero(tmp_path):
    masks = random_masks()
    weights = dense_source(tmp_path, masks)
    src = load_file(weights["src"].path)
    pruned = (masks["linear1.weight"] == 0).nonzero()[:2]
    src["linear1.weight"][tuple(pruned[0])] = float("inf")
    src["linear1.weight"][tuple(pruned[1])] = float("nan")
    save_file(src, str(weights["src"].path))
    stage, ctx = make_stage("train", tmp_path / "out", weights=weights, steps=3, keep=[0], optimizer="sgd",
                            **{"from": "src"})
    outcome = stage.run(ctx)
    ctx.close()
    assert outcome.status == "ok", outcome.message
    assert_masked_everywhere(tmp_path / "out", masks, [0])
    start = load_file(tmp_path / "out/weights/step_0.safetensors")
    kept = masks["linear1.weight"] == 1
    assert torch.equal(start["linear1.weight"][kept], src["linear1.weight"][kept])  # kept entries unchanged


def test_all_ones_masks_train_bitwise_as_dense(tmp_path):
    spec = {"steps": 12, "keep": [0, 6], "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}}
    ones = {k: torch.ones_like(v) for k, v in random_masks().items()}
    outcome, masked, _ = run_masked(tmp_path, "ones", masks=ones, **spec)
    dense_weights = dense_source(tmp_path / "d")
    stage, ctx = make_stage("train", tmp_path / "dense", weights=dense_weights, **{"from": "src", **spec})
    dense_outcome = stage.run(ctx)
    ctx.close()
    for name in ("final", "step_0", "step_6"):
        assert (masked / f"weights/{name}.safetensors").read_bytes() == \
            (tmp_path / f"dense/weights/{name}.safetensors").read_bytes()
    assert outcome.metrics["test_loss"] == dense_outcome.metrics["test_loss"]
    assert outcome.results["sparsity"]["total"]["fraction"] == 1.0


# ----------------------------------------------------------------- outputs and chains
def test_results_report_exact_sparsity_and_the_training_block_says_masked(tmp_path):
    outcome, out, masks = run_masked(tmp_path, steps=4, optimizer="sgd")
    report = outcome.results["sparsity"]
    for name, mask in masks.items():
        layer = report["layers"][name]
        assert layer["weights"] == mask.numel() and layer["remaining"] == int(mask.sum())
        assert layer["fraction"] == int(mask.sum()) / mask.numel()
    n = sum(m.numel() for m in masks.values())
    k = sum(int(m.sum()) for m in masks.values())
    assert report["total"]["weights"] == n and report["total"]["remaining"] == k
    assert set(report["layers"]) == set(PRUNABLE)
    assert outcome.results["training"]["masked"] is True


def test_a_chain_of_masked_trains_stays_masked(tmp_path):
    _, first, masks = run_masked(tmp_path, "first", steps=5, optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9})
    weights = {"first": ResolvedWeights(first / "weights/final.safetensors", model_spec(), masks=first / MASKS_FILE)}
    stage, ctx = make_stage("train", tmp_path / "second", weights=weights, steps=5, keep=[0],
                            optimizer={"name": "adamw", "lr": 0.01, "weight_decay": 0.5}, **{"from": "first"})
    outcome = stage.run(ctx)
    ctx.close()
    second = tmp_path / "second"
    assert outcome.status == "ok"
    assert (second / "weights/step_0.safetensors").read_bytes() == (first / "weights/final.safetensors").read_bytes()
    assert_masked_everywhere(second, masks, [0])
    assert (second / MASKS_FILE).read_bytes() == (first / MASKS_FILE).read_bytes()


def test_a_dense_from_trains_as_before_and_writes_no_masks(tmp_path):
    weights = dense_source(tmp_path)  # no masks file beside the weights
    stage, ctx = make_stage("train", tmp_path / "out", weights=weights, steps=6, keep=[0],
                            optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9}, **{"from": "src"})
    outcome = stage.run(ctx)
    ctx.close()
    out = tmp_path / "out"
    assert outcome.status == "ok"
    assert not (out / MASKS_FILE).exists()
    assert "sparsity" not in outcome.results and outcome.results["training"]["masked"] is False
    assert (out / "weights/step_0.safetensors").read_bytes() == (tmp_path / "src/weights/final.safetensors").read_bytes()
    # and the same stage with masks=None (no masks path at all) gives the same bits
    plain = {"src": ResolvedWeights(weights["src"].path, model_spec())}
    stage, ctx = make_stage("train", tmp_path / "plain", weights=plain, steps=6, keep=[0],
                            optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9}, **{"from": "src"})
    stage.run(ctx)
    ctx.close()
    assert (tmp_path / "plain/weights/final.safetensors").read_bytes() == (out / "weights/final.safetensors").read_bytes()


def test_a_fresh_stage_without_from_has_no_masks(tmp_path):
    stage, ctx = make_stage("train", tmp_path / "fresh", steps=3, optimizer="sgd")
    outcome = stage.run(ctx)
    ctx.close()
    assert not (tmp_path / "fresh" / MASKS_FILE).exists() and "sparsity" not in outcome.results


# ----------------------------------------------------------------- resumption
def test_a_killed_masked_run_resumes_bitwise(tmp_path):
    masks = random_masks()
    weights = dense_source(tmp_path, masks)
    spec = {"from": "src", "steps": 12, "keep": [0, 9], "checkpoint_every": 3, "log_every": 1,
            "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.3}}
    stage, ctx = make_stage("train", tmp_path / "straight", weights=weights, **spec)
    straight = stage.run(ctx)
    ctx.close()

    stage, ctx = make_stage("train", tmp_path / "killed", weights=weights, **spec)
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
    stage, ctx = make_stage("train", tmp_path / "killed", weights=weights, **spec)
    resumed = stage.run(ctx)
    ctx.close()
    a, b = tmp_path / "straight", tmp_path / "killed"
    for name in ("final", "step_0", "step_9"):
        assert (a / f"weights/{name}.safetensors").read_bytes() == (b / f"weights/{name}.safetensors").read_bytes()
    assert (a / MASKS_FILE).read_bytes() == (b / MASKS_FILE).read_bytes()
    assert_masked_everywhere(b, masks, [0, 9])

    def lines(out):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(out)]

    assert lines(a) == lines(b)
    assert straight.metrics["test_loss"] == resumed.metrics["test_loss"]
    assert straight.results["sparsity"] == resumed.results["sparsity"]


# ----------------------------------------------------------------- bad masks
@pytest.mark.parametrize("masks,message", [
    ({"hidden.weight": torch.ones(32, 8)}, "name 'hidden.weight', which the model does not have"),
    ({"linear1.weight": torch.ones(8, 32)}, r"has shape \(8, 32\), the weight \(32, 8\)"),
    ({"linear1.weight": torch.full((32, 8), 0.5)}, "values other than 0 and 1"),
])
def test_masks_that_do_not_fit_are_a_stage_error(tmp_path, masks, message):
    with pytest.raises(StageError, match=message):
        run_masked(tmp_path, masks=masks, steps=2, optimizer="sgd")


# ----------------------------------------------------------------- the callbacks alone
def test_mask_gradients_skips_weights_without_a_gradient():
    a, b = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(3))
    a.grad = torch.full((2, 2), 3.0)
    m = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0.0, 1.0, 1.0])]
    MaskGradients([a, b], m).after_backward(None)  # type: ignore[arg-type]
    assert torch.equal(a.grad, torch.tensor([[3.0, 0.0], [0.0, 3.0]])) and b.grad is None


def test_apply_masks_leaves_non_per_entry_state_alone():
    p = torch.nn.Parameter(torch.ones(2, 2))
    m = torch.tensor([[1.0, 0.0], [0.0, 1.0]])

    class Loop:
        optimizer: ClassVar[Any] = type("O", (), {"state": {p: {"exp_avg": torch.ones(2, 2), "factor": torch.ones(2, 2),
                                                              "step": torch.tensor(3.0)}}})()

    ApplyMasks([p], [m]).after_step(Loop())  # type: ignore[arg-type]
    state = Loop.optimizer.state[p]
    assert torch.equal(p.detach(), m) and torch.equal(state["exp_avg"], m)
    assert torch.equal(state["factor"], torch.ones(2, 2)) and float(state["step"]) == 3.0  # a factor of p's shape is not masked
