"""Trackers (SPEC §3 ``nnopt.trackers``): live fan-out of every logged record, keys untouched.

A fake tracker is registered for the test through a fake distribution on ``sys.path`` (its
``*.dist-info`` with an ``entry_points.txt``), exactly as a third-party tracker would be.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import statuses

SMALL = """\
name: small
seed: 0
device: cpu
data: {name: synthetic, task: gaussian_mixture, n_train: 64, n_test: 32, dim: 4, batch_size: 16}
model: {arch: {name: mlp, widths: [8]}}
loss: cross_entropy
stages:
  train:
    kind: train
    optimizer: {name: sgd, lr: 0.1}
    steps: 20
    log_every: 5
"""

FAKE = '''
from typing import ClassVar
from nnopt.core.kinds import Params, Tracker

EVENTS = []


class FakeParams(Params):
    fail: bool = False


class Fake(Tracker):
    Params: ClassVar[type[Params]] = FakeParams

    def start_run(self, run):
        EVENTS.append(("start", run.pipeline, run.run))

    def log(self, stage_id, record):
        if self.params.fail:
            raise RuntimeError("the tracker's server is down")
        EVENTS.append(("log", stage_id, dict(record)))

    def end_run(self, status):
        EVENTS.append(("end", status))
'''


@pytest.fixture
def fake_tracker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list:
    """Registers tracker ``fake`` (module ``nnopt_fake_tracker``); returns its event list."""
    site = tmp_path / "fake_site"
    dist = site / "nnopt_fake_tracker-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: nnopt-fake-tracker\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[nnopt.trackers]\nfake = nnopt_fake_tracker:Fake\n")
    (site / "nnopt_fake_tracker.py").write_text(FAKE)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "nnopt_fake_tracker", raising=False)
    import nnopt_fake_tracker

    return nnopt_fake_tracker.EVENTS


def test_records_reach_the_tracker_while_the_stage_runs(fake_tracker, tmp_path):
    """Each logged window and evaluation arrives as it is logged: records of steps before the
    last come before the stage's end (the runner's on_stage callback), not in a batch after."""
    from nnopt.core.invocation import run_pipeline
    from nnopt.core.store import Store
    from nnopt.core.trackers import track_refs

    path = tmp_path / "p.yaml"
    path.write_text(SMALL)
    result = run_pipeline(str(path), [], Store(tmp_path / "store"), track=track_refs(["fake"]),
                          on_stage=lambda rep: fake_tracker.append(("stage_done", rep.id)))
    assert result.reports[0].status == "ok"
    kinds = [e[0] for e in fake_tracker]
    assert kinds[0] == "start" and kinds[-1] == "end" and fake_tracker[-1] == ("end", "ok")
    done = kinds.index("stage_done")
    logs = [(i, e[2]) for i, e in enumerate(fake_tracker) if e[0] == "log"]
    assert all(e[1] == "train" for e in fake_tracker if e[0] == "log")
    # the train windows (steps 5, 10, 15, 20) and the evaluations, each before the stage ended
    assert [r["step"] for _, r in logs if "loss" in r] == [5, 10, 15, 20]
    assert any("test_loss" in r for _, r in logs)
    assert all(i < done for i, _ in logs)
    # the same records, in the same order, as the stage's own metrics.jsonl
    stage_dir = Path(result.reports[0].stages[0].dir)
    lines = [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r for _, r in logs] == lines


def test_trackers_change_no_key_and_a_cached_run_opens_none(fake_tracker, cli, write_pipeline):
    """The file's ``trackers:`` and ``--track`` are in no stage key: with either, a run of a
    pipeline computed without them is all cached, and sends nothing (no stage computes)."""
    plain = write_pipeline(SMALL, "plain.yaml")
    result, first = cli.run_json(str(plain))
    assert result.exit_code == 0, result.stderr
    tracked = write_pipeline(SMALL + "trackers: [jsonl, {name: fake}]\n", "tracked.yaml")
    result, second = cli.run_json(str(tracked), "--track", "fake", "--track", "jsonl")
    assert result.exit_code == 0, result.stderr
    assert set(statuses(second).values()) == {"cached"}
    assert second["stages"]["train"]["key"] == first["stages"]["train"]["key"]
    assert fake_tracker == []


def test_a_failing_tracker_warns_once_and_the_run_goes_on(fake_tracker, cli, write_pipeline):
    path = write_pipeline(SMALL + "trackers: [{name: fake, fail: true}]\n")
    result, out = cli.run_json(str(path))
    assert result.exit_code == 0, result.stderr
    assert set(statuses(out).values()) == {"ran"}
    warnings = [line for line in result.stderr.splitlines() if "tracker 'fake' failed" in line]
    assert len(warnings) == 1, result.stderr
    assert "the tracker's server is down" in warnings[0]
    assert fake_tracker[-1] == ("end", "ok")  # off for logging, but still closed


def test_the_jsonl_tracker_writes_one_stream_per_run(cli, write_pipeline, tmp_path):
    path = write_pipeline(SMALL + f"trackers: [{{name: jsonl, path: '{tmp_path}/out/{{run}}.jsonl'}}]\n")
    result, out = cli.run_json(str(path))
    assert result.exit_code == 0, result.stderr
    stream = tmp_path / "out" / f"{out['run']}.jsonl"
    lines = [json.loads(line) for line in stream.read_text().splitlines()]
    assert lines[0]["event"] == "start" and lines[0]["run"] == out["run"]
    assert lines[-1]["event"] == "end" and lines[-1]["status"] == "ok"
    assert {r["stage"] for r in lines[1:-1]} == {"train"}
    assert [r["step"] for r in lines[1:-1] if "loss" in r] == [5, 10, 15, 20]


def test_an_unknown_tracker_is_a_located_error(cli, write_pipeline):
    path = write_pipeline(SMALL + "trackers: [tensorbord]\n")
    result = cli("run", str(path))
    assert result.exit_code == 2
    assert "pipeline.yaml:13:12: trackers[0]" in result.stderr and "unknown tracker 'tensorbord'" in result.stderr
    assert "did you mean 'tensorboard'" in result.stderr
    result = cli("run", str(path), "--track", "mlfow")
    assert result.exit_code == 2
    assert "unknown tracker 'mlfow'" in result.stderr and "did you mean 'mlflow'" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_tracker_param_typo_is_a_located_error(cli, write_pipeline):
    path = write_pipeline(SMALL + "trackers: [{name: jsonl, pth: x.jsonl}]\n")
    result = cli("run", str(path))
    assert result.exit_code == 2
    assert "trackers[0].pth: unknown key 'pth'" in result.stderr and "did you mean 'path'" in result.stderr


@pytest.mark.parametrize("name", ["tensorboard", "mlflow"])
def test_a_missing_extra_is_exit_2_naming_the_install(name, cli, write_pipeline, monkeypatch, store):
    """Without the extra installed, ``--track`` and the file's key both stop before anything
    runs, naming the pip command."""
    monkeypatch.setitem(sys.modules, name, None)  # importlib.util.find_spec then finds nothing
    path = write_pipeline(SMALL)
    result = cli("run", str(path), "--track", name)
    assert result.exit_code == 2, result.stderr
    assert f"pip install 'nnopt[{name}]'" in result.stderr
    tracked = write_pipeline(SMALL + f"trackers: [{name}]\n", "tracked.yaml")
    result = cli("run", str(tracked))
    assert result.exit_code == 2, result.stderr
    assert f"pip install 'nnopt[{name}]'" in result.stderr
    assert not (store / "stages").exists()


def test_track_is_refused_with_a_sweep_executor(cli, write_pipeline):
    result = cli("run", str(write_pipeline(SMALL)), "--track", "jsonl", "--jobs", "2")
    assert result.exit_code == 2
    assert "--track does not combine" in result.stderr


def test_scalars_flattens_numbers_and_skips_axes():
    from nnopt.core.trackers import scalars

    assert scalars({"step": 3, "epoch": 0.5, "loss": 1, "diverged": True, "note": "x", "acc": "nan"}) == {"loss": 1.0}
    assert scalars({"step": 3, "track": "hessian", "top": 2.0, "per_layer": {"a": 1}}) == {
        "hessian/top": 2.0, "hessian/per_layer/a": 1.0}


def test_the_schema_and_the_kind_list_know_trackers():
    from nnopt.core.keys import non_key_fields
    from nnopt.core.registry import KINDS
    from nnopt.core.spec import PipelineSpec

    assert "trackers" in KINDS
    assert "trackers" in non_key_fields(PipelineSpec)
    assert "trackers" in PipelineSpec.model_json_schema()["properties"]


