"""`nnopt diagnose` names the planted cause of every deliberately broken pipeline
(``pipelines/diagnose/``), its fix is verified, and the patched file trains; the shipped
healthy pipelines get no critical or warning finding (no false alarms)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BROKEN = ROOT / "pipelines" / "diagnose"

#: each broken pipeline and the finding ids that name its planted cause
PLANTED = {
    "chaotic_tanh": {"chaotic_init"},
    "tiny_init_relu": {"vanishing_forward", "vanishing_gradients"},
    "lr_above_curvature": {"lr_above_curvature"},
    "deep_plain": {"depth_without_skips"},
    "adam_large_batch": {"needs_warmup"},
    "logits_x100": {"logit_scale"},
}

#: shipped pipelines that train as intended (a finding of severity critical/warning on them
#: is a false alarm), with the --set that picks a healthy matrix cell where they have one
HEALTHY = {
    "quickstart.yaml": [],
    "survey/heavy_ball.yaml": [],
    "landscape/goodfellow_line.yaml": [],
    "lottery/imp_mlp.yaml": [],
    # these once drew false alarms: dying units in a net that learns, the ordered phase of a
    # shallow tanh net, saturated units in a tiny one
    "landscape/hessian_outliers.yaml": ["matrix.seed=[0]"],
    "landscape/iterative_vs_exact.yaml": [],
    "landscape/overparameterization.yaml": ["matrix.seed=[0]"],
}

#: shipped survey pipelines with a cell broken on purpose: the diagnosis names what the
#: survey's claim says (and verifies the fix the claim's other cell uses)
SURVEY_CELLS = {
    "large_batch_warmup": ("survey/large_batch_warmup.yaml",
                           ["matrix.stages.fit.schedule=[{name: linear_scaling, base_batch: 8, then: cosine}]"],
                           "needs_warmup"),
    "edge_of_divergence": ("edge_of_divergence.yaml", ["matrix.stages.gd.optimizer.lr=[1.5]"], "lr_above_curvature"),
}


def _diagnose(invoke, file: Path, *extra: str) -> dict:
    result = invoke("diagnose", str(file), "--json", "--no-progress", *extra)
    assert result.exit_code == 0, result
    return json.loads(result.stdout)


def _final_train_loss(invoke, file: Path) -> float:
    result = invoke("run", str(file), "--json", "--no-progress")
    stages = json.loads(result.stdout)["stages"]
    (stage,) = (s for s in stages.values() if s["status"] in ("ran", "cached", "diverged"))
    return stage["metrics"].get("train_loss", math.inf) if stage["status"] != "diverged" else math.inf


def test_every_broken_pipeline_has_its_planted_cause():
    assert {p.stem for p in BROKEN.glob("*.yaml")} == set(PLANTED)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PLANTED))
def test_the_top_finding_names_the_planted_cause_and_its_verified_fix_trains(name, invoke, tmp_path):
    file = BROKEN / f"{name}.yaml"
    out = _diagnose(invoke, file, "--apply", str(tmp_path / "fixed.yaml"))
    assert not out["healthy"]
    top = out["findings"][0]
    assert top["id"] in PLANTED[name], [f["id"] for f in out["findings"]]
    assert top["severity"] in ("critical", "warning")
    assert top["verified"], top
    before, after = top["before"], top["after"]
    assert not after["diverged"]
    assert before["diverged"] or after["loss"] < before["loss"]
    assert top["diff"].startswith("--- a/") and "\n+" in top["diff"]
    assert out["applied"]["finding"] == top["id"]
    # the fix, written to a new file, trains the full stage better than the original does
    assert _final_train_loss(invoke, tmp_path / "fixed.yaml") < _final_train_loss(invoke, file)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SURVEY_CELLS))
def test_a_survey_cell_broken_on_purpose_is_diagnosed_with_the_claims_cause(name, invoke):
    file, sets, expected = SURVEY_CELLS[name]
    out = _diagnose(invoke, ROOT / "pipelines" / file, *[a for s in sets for a in ("--set", s)])
    (run,) = out["combinations"]
    top = run["findings"][0]
    assert top["id"] == expected and top["verified"], [(f["id"], f["verified"]) for f in run["findings"]]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HEALTHY))
def test_healthy_shipped_pipelines_get_no_severe_finding(name, invoke):
    sets = [a for s in HEALTHY[name] for a in ("--set", s)]
    out = _diagnose(invoke, ROOT / "pipelines" / name, *sets)
    runs = out.get("combinations", [out])
    severe = [(f["id"], f["title"]) for r in runs for f in r["findings"] if f["severity"] in ("critical", "warning")]
    assert severe == []
    assert all(r["healthy"] for r in runs)
    if name == "quickstart.yaml":  # the budget for the quickstart: under 30 s on 2 CPU cores
        assert out["seconds"] < 30
