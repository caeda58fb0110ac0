"""`nnopt diagnose FILE`: the command, its JSON, its errors, --apply, and the `diagnose`
stage kind written in a pipeline (cached and reported like any stage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from nnopt.diagnose_file import FINDING_FIELDS

TINY = """\
# a tiny pipeline: this comment must survive --apply
name: tiny-diagnose
seed: 0
device: cpu
data: {name: digits, batch_size: 64}
model:
  arch: {name: mlp, widths: [32]%s}
  init: kaiming_normal
loss: cross_entropy
stages:
  train:
    kind: train
    optimizer: {name: sgd, lr: %s, momentum: 0.9}
    steps: 60
%s"""

FAST = ("--probe-steps", "20", "--no-lr-range", "--no-progress")


def pipeline(tmp_path: Path, lr: float = 0.05, arch: str = "", extra: str = "", name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(TINY % (arch, lr, extra), encoding="utf-8")
    return path


def diagnose_json(invoke, *args: str) -> dict:
    result = invoke("diagnose", *map(str, args), "--json", *FAST)
    assert result.exit_code == 0, result
    return json.loads(result.stdout)


def test_a_healthy_pipeline_is_diagnosed_healthy_with_every_field_and_the_second_time_from_the_cache(invoke, tmp_path):
    file = pipeline(tmp_path)
    first = diagnose_json(invoke, file)
    assert first["healthy"] is True and first["stage"] == "train" and first["cached"] is False
    assert all(f["severity"] == "info" for f in first["findings"])
    for f in first["findings"]:
        assert list(f)[: len(FINDING_FIELDS)] == list(FINDING_FIELDS)
    plots = {p.name for p in (Path(first["dir"]) / "plots").glob("*.png")}
    assert {"init_signals.png", "probe_loss.png"} <= plots
    again = diagnose_json(invoke, file)
    assert again["cached"] is True and again["findings"] == first["findings"]


def test_the_diagnosis_does_not_train_the_stage_it_examines(invoke, tmp_path):
    file = pipeline(tmp_path)
    diagnose_json(invoke, file)
    plan = json.loads(invoke("plan", str(file), "--json").stdout)
    assert [s["cached"] for s in plan["stages"] if s["id"] == "train"] == [False]


def test_a_planted_logit_scale_is_found_its_fix_verified_and_applied_to_a_new_file_keeping_comments(invoke, tmp_path):
    file = pipeline(tmp_path, arch=", output_scale: 100")
    fixed = tmp_path / "fixed.yaml"
    out = diagnose_json(invoke, file, "--apply", fixed)
    assert out["healthy"] is False
    top = out["findings"][0]
    assert top["id"] == "logit_scale" and top["verified"] is True
    assert top["patch"] == [{"path": "model.arch.output_scale", "value": None}]
    assert "-  arch: {name: mlp, widths: [32], output_scale: 100}" in top["diff"]
    assert "+  arch: {name: mlp, widths: [32]}" in top["diff"]
    assert out["applied"] == {"file": str(fixed), "finding": "logit_scale"}
    text = fixed.read_text(encoding="utf-8")
    assert text.startswith("# a tiny pipeline: this comment must survive --apply")
    assert "output_scale" not in yaml.safe_load(text)["model"]["arch"]
    assert invoke("validate", str(fixed)).exit_code == 0


def test_text_output_names_the_finding_the_fix_and_the_diff(invoke, tmp_path):
    file = pipeline(tmp_path, arch=", output_scale: 100")
    result = invoke("diagnose", str(file), *FAST)
    assert result.exit_code == 0, result
    assert "[critical] logit_scale" in result.stdout
    assert "fix: remove output_scale: 100" in result.stdout
    assert "tried: verified" in result.stdout and "+++ b/pipeline.yaml" in result.stdout


def test_a_diverging_probe_is_a_finding_not_a_failure(invoke, tmp_path):
    out = diagnose_json(invoke, pipeline(tmp_path, lr=50.0))
    found = {f["id"] for f in out["findings"]}
    assert {"diverged", "lr_above_curvature"} <= found
    assert out["status"] == "ran"


@pytest.mark.parametrize("args, message", [
    (("--stage", "nope"), "no train stage 'nope' (train stages: train)"),
    (("--stage", "probe"), "no train stage 'probe'"),
])
def test_a_stage_that_is_not_a_train_stage_is_refused_with_exit_2(invoke, tmp_path, args, message):
    file = pipeline(tmp_path, extra="  probe:\n    kind: analyze\n    from: train\n    analyzers: [grad_norms]\n")
    result = invoke("diagnose", str(file), *args, *FAST)
    assert result.exit_code == 2 and message in result.stderr, result
    assert not (tmp_path / "nnopt_home").exists() or not any((tmp_path / "nnopt_home").rglob("result.json"))


def test_bad_files_and_options_are_exit_2_without_a_traceback(invoke, tmp_path):
    assert invoke("diagnose", str(tmp_path / "missing.yaml")).exit_code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages: [\n", encoding="utf-8")
    result = invoke("diagnose", str(bad))
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    none = tmp_path / "none.yaml"
    none.write_text("name: x\nseed: 0\nstages:\n  a: {kind: analyze, analyzers: [grad_norms]}\n", encoding="utf-8")
    assert "no train stage to diagnose" in invoke("diagnose", str(none)).stderr
    file = pipeline(tmp_path)
    same = invoke("diagnose", str(file), "--apply", str(file))
    assert same.exit_code == 2 and "new file" in same.stderr


def test_a_matrix_file_gets_one_diagnosis_per_combination(invoke, tmp_path):
    file = pipeline(tmp_path, extra="matrix:\n  stages.train.optimizer.lr: [0.05, 50.0]\n")
    out = diagnose_json(invoke, file)
    runs = out["combinations"]
    assert [r["params"] for r in runs] == [{"stages.train.optimizer.lr": 0.05}, {"stages.train.optimizer.lr": 50.0}]
    assert [r["healthy"] for r in runs] == [True, False] and out["healthy"] is False


def test_apply_refuses_a_matrix_of_several_combinations(invoke, tmp_path):
    file = pipeline(tmp_path, extra="matrix:\n  stages.train.optimizer.lr: [0.05, 50.0]\n")
    result = invoke("diagnose", str(file), "--apply", str(tmp_path / "out.yaml"), *FAST)
    assert result.exit_code == 2 and "one combination" in result.stderr, result


DIAGNOSE_STAGE = "  check:\n    kind: diagnose\n    of: %s\n    probe_steps: 20\n    lr_range: false\n"


def test_a_diagnose_stage_written_in_the_pipeline_runs_is_cached_and_is_in_the_report(invoke, tmp_path):
    file = pipeline(tmp_path, arch=", output_scale: 100", extra=DIAGNOSE_STAGE % "train")
    first = json.loads(invoke("run", str(file), "--json", "--no-progress").stdout)
    check = first["stages"]["check"]
    assert check["status"] == "ran"
    result = json.loads((Path(check["dir"]) / "result.json").read_text())
    assert result["results"]["findings"][0]["id"] == "logit_scale"
    again = json.loads(invoke("run", str(file), "--json", "--no-progress").stdout)
    assert again["stages"]["check"]["status"] == "cached"
    report = invoke("report", "latest", "-o", str(tmp_path / "r.html"))
    assert report.exit_code == 0, report
    html = (tmp_path / "r.html").read_text()
    assert "diagnosis of stage train" in html and "logit_scale" in html and "+++ b/pipeline.yaml" in html


def test_changing_the_examined_stage_changes_the_diagnosis_key(invoke, tmp_path):
    file = pipeline(tmp_path, extra=DIAGNOSE_STAGE % "train")
    key = lambda: {s["id"]: s["key"] for s in json.loads(invoke("plan", str(file), "--json").stdout)["stages"]}["check"]  # noqa: E731
    before = key()
    file.write_text(file.read_text().replace("lr: 0.05", "lr: 0.02"))
    assert key() != before


@pytest.mark.parametrize("of, message", [("nope", "no stage 'nope' to diagnose"),
                                         ("probe", "stage 'probe' is a analyze stage")])
def test_a_diagnose_stage_of_a_missing_or_non_train_stage_is_a_located_error(invoke, tmp_path, of, message):
    extra = "  probe:\n    kind: analyze\n    from: train\n    analyzers: [grad_norms]\n" + DIAGNOSE_STAGE % of
    file = pipeline(tmp_path, extra=extra)
    result = invoke("validate", str(file))
    assert result.exit_code == 2 and message in result.stderr, result
    line = next(i for i, l in enumerate(file.read_text().splitlines(), 1) if l.strip() == f"of: {of}")
    assert f":{line}:" in result.stderr


def test_a_stage_trained_from_another_is_diagnosed_from_those_weights_after_its_dependency_runs(invoke, tmp_path):
    extra = "  more:\n    kind: train\n    from: train\n    optimizer: {name: sgd, lr: 0.01}\n    steps: 40\n"
    file = pipeline(tmp_path, extra=extra)
    out = diagnose_json(invoke, file, "--stage", "more")
    assert out["stage"] == "more" and out["status"] == "ran"
    plan = json.loads(invoke("plan", str(file), "--json").stdout)
    assert {s["id"]: s["cached"] for s in plan["stages"]} == {"train": True, "more": False}
