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
