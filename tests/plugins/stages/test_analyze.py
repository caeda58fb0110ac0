"""The ``analyze`` stage, run on a hand-built StageContext (no engine involved)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from pydantic import Field, ValidationError

from nnopt.core.component import Params
from nnopt.core.kinds import AnalysisContext, Analyzer
from nnopt.core.stage import ResolvedWeights
from nnopt.plugins.analyzers.grad_norms import GradNorms
from nnopt.plugins.stages.analyze import Analyze, AnalyzeSpec

from stage_helpers import LOCAL, make_stage, model_spec, run_stage


class VandalParams(Params):
    scale: float = Field(0.0, description="what the weights are multiplied by")


class Vandal(Analyzer):
    """Multiplies every weight in place (what an analyzer must not do) and leaves gradients."""

    Params = VandalParams
    contexts: ClassVar[list[AnalysisContext]] = []

    def analyze(self, ctx: AnalysisContext) -> dict[str, Any]:
        Vandal.contexts.append(ctx)
        with torch.no_grad():
            for p in ctx.model.parameters():
                p.mul_(self.params.scale)
                p.grad = torch.ones_like(p)
        ctx.model.train()
        return {"scale": self.params.scale, "training": ctx.model.training}

    def plot(self, results: dict[str, Any], out_dir: Path) -> list[Path]:
        path = Path(out_dir) / "vandal.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"png")
        return [path]


LOCAL[("analyzers", "vandal")] = Vandal


@pytest.fixture
def trained(train):
    _, out = train("dense", epochs=2, keep=[0])
    return {
        "dense": ResolvedWeights(out / "weights/final.safetensors", model_spec()),
        "dense@0": ResolvedWeights(out / "weights/step_0.safetensors", model_spec()),
    }


def test_spec_needs_an_analyzer_and_from_is_optional():
    assert AnalyzeSpec.model_validate({"kind": "analyze", "analyzers": ["grad_norms"]}).from_ is None
    with pytest.raises(ValidationError):
        AnalyzeSpec.model_validate({"kind": "analyze", "from": "dense", "analyzers": []})
    s = AnalyzeSpec.model_validate({"kind": "analyze", "from": "dense@init", "analyzers": ["grad_norms"]})
    assert str(s.from_) == "dense@0" and Analyze(s).kept_steps() == set()
    assert not Analyze.provides_weights and Analyze.needs == {"data", "model", "loss"}


def test_results_keyed_by_name_with_repeats_and_plots(tmp_path, trained):
    out = tmp_path / "probe"
    outcome = run_stage("analyze", out, weights=trained, analyzers=["grad_norms", {"name": "grad_norms", "samples": 7}],
                        **{"from": "dense"})
    assert outcome.status == "ok" and set(outcome.results) == {"grad_norms", "grad_norms_2"}
    assert outcome.results["grad_norms"]["total"] != outcome.results["grad_norms_2"]["total"]
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["grad_norms.png", "grad_norms_2_grad_norms.png"]
    assert sorted(p.name for p in out.iterdir()) == ["plots"]  # no scratch directories left


def test_without_from_it_analyzes_the_model_initialized_from_the_stage_seed(tmp_path):
    stage, ctx = make_stage("analyze", tmp_path / "probe", analyzers=["grad_norms"])
    outcome = stage.run(ctx)
    fresh = ctx.build_model().eval()  # what the stage's seed initializes, built again
    by_hand = GradNorms(GradNorms.Params(source="train")).analyze(AnalysisContext(
        model=fresh, loss_fn=ctx.loss_fn(), data=ctx.load_data(), device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0)))
    # 256 train examples <= samples: the whole split, so the same network gives the same norms
    assert outcome.results["grad_norms"]["layers"] == pytest.approx(by_hand["layers"])
    other_seed = make_stage("analyze", tmp_path / "other", seed=1, analyzers=["grad_norms"])
    assert other_seed[0].run(other_seed[1]).results["grad_norms"]["total"] != outcome.results["grad_norms"]["total"]


def test_matches_the_analyzer_run_by_hand_on_the_loaded_model(tmp_path, trained):
    stage, ctx = make_stage("analyze", tmp_path / "probe", weights=trained, analyzers=["grad_norms"], **{"from": "dense@0"})
    outcome = stage.run(ctx)
    model = ctx.load_model("dense@0").eval()
    expected = GradNorms(GradNorms.Params(source="train")).analyze(
        AnalysisContext(model, ctx.loss_fn(), ctx.load_data(), ctx.device, torch.Generator().manual_seed(5))
    )
    # 256 train examples <= samples (1024): the subset is the whole split whatever the generator
    assert outcome.results["grad_norms"]["layers"] == pytest.approx(expected["layers"])


def test_every_analyzer_sees_the_stored_weights_unchanged(tmp_path, trained):
    Vandal.contexts.clear()
    alone = run_stage("analyze", tmp_path / "alone", weights=trained, analyzers=["grad_norms"], **{"from": "dense"})
    both = run_stage("analyze", tmp_path / "both", weights=trained,
                     analyzers=["vandal", "grad_norms", {"name": "vandal", "scale": 3.0}], **{"from": "dense"})
    assert both.results["grad_norms"] == alone.results["grad_norms"]
    assert both.results["vandal"] == {"scale": 0.0, "training": True}
    assert both.results["vandal_2"] == {"scale": 3.0, "training": True}
    first, second = Vandal.contexts
    assert first.step is None and first.batch is None and first.load_model is not None
    assert not any(p.grad is not None for p in second.model.parameters())  # gradients cleared
    assert not second.model.training  # back in eval mode
    assert all(torch.equal(p, q) for p, q in zip(second.model.parameters(), first.load_model("dense").parameters()))


def test_masks_saved_by_a_stage_are_loaded_by_the_stages_that_refer_to_it(tmp_path, trained):
    """The engine's masks artifact: ``save_masks`` in one stage, ``load_masks(ref)`` in the next;
    a dense stage's reference has none."""
    stage, ctx = make_stage("analyze", tmp_path / "pruned", analyzers=["grad_norms"])
    mask = {"linear1.weight": (torch.arange(12.0).reshape(3, 4) % 2 == 0).float()}
    path = ctx.save_masks(mask)
    with_masks = {"pruned": ResolvedWeights(trained["dense"].path, model_spec(), path),
                  "dense": ResolvedWeights(trained["dense"].path, model_spec(), tmp_path / "nowhere" / "masks.safetensors")}
    _, reader = make_stage("analyze", tmp_path / "reader", weights=with_masks, analyzers=["grad_norms"])
    assert torch.equal(reader.load_masks("pruned")["linear1.weight"], mask["linear1.weight"])
    assert reader.load_masks("dense") is None
