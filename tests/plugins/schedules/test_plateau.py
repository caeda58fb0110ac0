"""Plateau: the rate drops exactly at the patience-th reading without improvement, from the
callback's readings (by hand and through a train stage), and its state resumes."""

import json
from pathlib import Path

import pytest
import torch

from nnopt.plugins.schedules.plateau import Plateau, PlateauWatch


def built(**params):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = Plateau(Plateau.Params(**params))
    scheduler = schedule.build(opt, 100)
    (watch,) = schedule.callbacks(scheduler)
    return opt, scheduler, watch


def feed(watch, values, metric="test_loss"):
    for v in values:
        if metric == "test_loss":
            watch.on_evaluate(None, {"loss": v, "accuracy": 0.5})
        else:
            watch.on_log(None, {"step": 1, "loss": v, "lr": 0.0})


def test_reduces_exactly_at_the_patience_th_non_improving_reading():
    opt, _, watch = built(patience=3, gamma=10.0, threshold=0.0)
    lr = lambda: opt.param_groups[0]["lr"]  # noqa: E731
    feed(watch, [5.0, 4.0])  # improving
    feed(watch, [4.0, 4.5])  # two readings without improvement
    assert lr() == 1.0
    feed(watch, [4.2])  # the third: a plateau
    assert lr() == pytest.approx(0.1)
    feed(watch, [4.1, 4.1])  # the count restarted at the drop
    assert lr() == pytest.approx(0.1)
    feed(watch, [3.0])  # an improvement resets it too
    feed(watch, [3.0, 3.0])
    assert lr() == pytest.approx(0.1)
    feed(watch, [3.0])
    assert lr() == pytest.approx(0.01)


def test_threshold_decides_what_counts_as_improvement():
    opt, _, watch = built(patience=1, threshold=0.1, threshold_mode="rel", gamma=2.0)
    feed(watch, [1.0, 0.95])  # 5% better: not the 10% needed
    assert opt.param_groups[0]["lr"] == 0.5
    opt, _, watch = built(patience=1, threshold=0.01, threshold_mode="abs", gamma=2.0)
    feed(watch, [1.0, 0.98])  # 0.02 better than the 0.01 needed
    assert opt.param_groups[0]["lr"] == 1.0


def test_min_lr_and_cooldown():
    opt, _, watch = built(patience=1, gamma=10.0, min_lr=0.05, cooldown=2)
    feed(watch, [1.0, 1.0])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    feed(watch, [1.0, 1.0])  # cooldown: not counted
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    feed(watch, [1.0])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)  # η/γ = 0.01 is below min_lr


def test_watches_only_the_chosen_metric():
    opt, _, watch = built(patience=1, metric="train_loss")
    feed(watch, [1.0, 1.0, 1.0], metric="test_loss")
    assert opt.param_groups[0]["lr"] == 1.0
    feed(watch, [1.0, 1.0], metric="train_loss")
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_per_step_step_changes_nothing():
    opt, scheduler, _ = built(patience=1)
    for _ in range(50):
        scheduler.step()
    assert opt.param_groups[0]["lr"] == 1.0 and scheduler.get_last_lr() == [1.0]


def test_state_resumes_mid_count():
    """Two bad readings of patience 3, checkpoint, resume: the next bad reading is the third."""
    opt, scheduler, watch = built(patience=3)
    feed(watch, [1.0, 1.0, 1.0])
    opt2, scheduler2, watch2 = built(patience=3)
    scheduler2.load_state_dict(scheduler.state_dict())
    feed(watch2, [1.0])
    feed(watch, [1.0])
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(0.1)
    assert isinstance(watch2, PlateauWatch) and watch2.state_dict() is None  # all state is the scheduler's


PIPELINE = """\
name: plateau-run
seed: 0
device: cpu
data: {{name: synthetic, task: gaussian_mixture, n_train: 64, n_test: 32, dim: 4, batch_size: 64}}
model: {{arch: {{name: mlp, widths: [4]}}}}
loss: cross_entropy
stages:
  train:
    kind: train
    optimizer: {{name: sgd, lr: 0.001}}
    schedule: {{name: plateau, metric: {metric}, patience: 2, gamma: 10.0, threshold: 0.5}}
    steps: 9
    log_every: 1
    eval_every: 1
"""


@pytest.mark.parametrize("metric", ["train_loss", "test_loss"])
def test_plateau_through_the_train_stage(invoke, write_pipeline, tmp_path, metric):
    """Full batch at a tiny rate: no reading is 50% better than the first, so readings 2–3,
    4–5, 6–7, 8–9 are plateaus; each drop applies from the step after its reading."""
    path = write_pipeline(PIPELINE.format(metric=metric))
    result = invoke("run", str(path), "--json", "--store", str(tmp_path / "store"))
    assert result.exit_code == 0, result
    stage = json.loads(result.stdout)["stages"]["train"]
    rows = [json.loads(line) for line in (Path(stage["dir"]) / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if "lr" in r]
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5, 1e-6, 1e-6], rel=1e-9)
