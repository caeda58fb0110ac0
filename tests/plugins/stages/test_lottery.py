"""The ``lottery`` block's params and expansion, and the ``lottery_report`` stage.

The expansion is tested on its raw output (generated id -> stage mapping as the planner gets
it), against the contract of SPEC §2 / issue 8; the report on hand-made stage directories
whose masks, results and metrics are known exactly.
"""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from nnopt.core.spec import ExpansionError
from nnopt.core.stage import ResolvedWeights, StageContext
from nnopt.plugins.stages.lottery import Lottery, default_curves
from nnopt.plugins.stages.lottery_report import LotteryReport, best_test_loss

DENSE = {"kind": "train", "optimizer": {"name": "sgd", "lr": 0.1}, "schedule": "cosine", "steps": 30, "keep": [0, 5],
         "track": [{"name": "grad_norms", "every": 10}], "eval_every": 5, "data": {"name": "digits", "batch_size": 32}}


def block(**over):
    return {"kind": "lottery", "from": "dense", "rounds": 2, "prune": {"name": "magnitude", "fraction": 0.2}, **over}


def expand(raw, stages=None):
    return Lottery.expand("lt", raw, {"dense": DENSE, "lt": raw, **(stages or {})})


# ------------------------------------------------------------------ params
def test_params_defaults_and_bounds():
    spec = Lottery.Params.model_validate({"kind": "lottery", "from": "dense", "rounds": 1})
    assert (spec.rewind_to, spec.controls, spec.prune.name, spec.curves) == (0, [], "magnitude", None)
    for bad in ({"rounds": 0}, {"rounds": True}, {"rewind_to": -1}, {"controls": ["reinit", "bogus"]}, {"from": "dense@3"},
                {"curves": [3]}, {"rounds": None}, {"controls": "reinit"}, {"surprise": 1}):
        with pytest.raises(ValidationError):
            Lottery.Params.model_validate(block(**bad))
    with pytest.raises(ValidationError):
        Lottery.Params.model_validate({"kind": "lottery", "rounds": 2})  # from is required


def test_an_unknown_control_carries_its_suggestion():
    with pytest.raises(ValidationError) as info:
        Lottery.Params.model_validate(block(controls=["sign_onyl"]))
    (err,) = info.value.errors()
    assert err["loc"] == ("controls", 0) and err["ctx"]["suggestion"] == "sign_only"


def test_a_control_given_twice_is_trained_once():
    assert Lottery.Params.model_validate(block(controls=["reinit", "reinit", "sign_only"])).controls == ["reinit", "sign_only"]


# ------------------------------------------------------------------ expansion
def test_expansion_ids_and_specs_follow_the_contract():
    raw = block(rounds=3, rewind_to=5, controls=["reinit", "random_mask"])
    out = expand(raw)
    ids = []
    for k in (1, 2, 3):
        ids += [f"lt.r{k}.prune", f"lt.r{k}.rewind", f"lt.r{k}", f"lt.r{k}.reinit.rewind", f"lt.r{k}.reinit",
                f"lt.r{k}.random_mask.rewind", f"lt.r{k}.random_mask"]
    assert list(out) == ids + ["lt"]
    assert out["lt.r1.prune"] == {"kind": "prune", "from": "dense", "method": {"name": "magnitude", "fraction": 0.2}}
    assert out["lt.r3.prune"]["from"] == "lt.r2"  # the previous round's trained ticket
    assert out["lt.r2.rewind"] == {"kind": "rewind", "from": "lt.r2.prune", "to": "dense@5"}
    assert out["lt.r2.random_mask.rewind"] == {"kind": "rewind", "from": "lt.r2.prune", "to": "dense@5", "control": "random_mask"}
    recipe = {k: v for k, v in DENSE.items() if k not in ("keep", "track")}
    assert out["lt.r2"] == {**recipe, "from": "lt.r2.rewind"}
    assert out["lt.r2.reinit"] == {**recipe, "from": "lt.r2.reinit.rewind"}
    assert out["lt"] == {"kind": "lottery_report", "dense": "dense", "tickets": ["lt.r1", "lt.r2", "lt.r3"],
                         "controls": {"reinit": ["lt.r1.reinit", "lt.r2.reinit", "lt.r3.reinit"],
                                      "random_mask": ["lt.r1.random_mask", "lt.r2.random_mask", "lt.r3.random_mask"]},
                         "curves": [0, 1, 2, 3]}
    # the generated mappings are copies: editing one changes neither the dense stage nor another round
    out["lt.r1"]["optimizer"]["lr"] = 9.0
    assert DENSE["optimizer"]["lr"] == 0.1 and out["lt.r2"]["optimizer"]["lr"] == 0.1


def test_a_round_does_not_depend_on_the_number_of_rounds():
    few, many = expand(block(rounds=2, controls=["sign_only"])), expand(block(rounds=5, controls=["sign_only"]))
    assert all(many[sid] == spec for sid, spec in few.items() if sid != "lt")


def test_the_blocks_own_seed_data_model_loss_apply_to_all_its_stages():
    own = {"seed": 3, "model": {"arch": {"name": "mlp", "widths": [8]}}, "loss": "mse"}
    out = expand(block(**own, controls=["reinit"]))
    for sid, spec in out.items():
        if sid != "lt":
            assert {k: spec.get(k) for k in own} == own, sid
    # the dense stage's own data stays in the rounds' training where the block does not set it
    assert out["lt.r1"]["data"] == DENSE["data"] and "data" not in out["lt.r1.prune"]
    # a key given as null is not set
    assert "seed" not in expand(block(seed=None))["lt.r1.rewind"]


def test_default_curves():
    assert default_curves(1) == [0, 1]
    assert default_curves(2) == [0, 1, 2]
    assert default_curves(12) == [0, 3, 6, 9, 12]
    assert expand(block(curves=[0, 2]))["lt"]["curves"] == [0, 2]


@pytest.mark.parametrize("raw, stages, fragment, suggestion", [
    (block(**{"from": "dnse"}), {}, "no stage 'dnse'", "dense"),
    (block(**{"from": "lt"}), {}, "cannot start from itself", None),
    (block(**{"from": "probe"}), {"probe": {"kind": "analyze", "from": "dense"}}, "kind analyze", None),
])
def test_expansion_errors_name_from(raw, stages, fragment, suggestion):
    with pytest.raises(ExpansionError) as info:
        expand(raw, stages)
    assert info.value.path == ("from",) and fragment in info.value.message and info.value.suggestion == suggestion


def test_generated_keys_are_located_where_they_come_from():
    raw = block(rewind_to=5, controls=["reinit"], seed=2)
    origin = lambda gid, key: Lottery.origin("lt", raw, gid, key)  # noqa: E731
    assert origin("lt.r3.rewind", "to") == ("stages", "lt", "rewind_to")
    assert origin("lt.r3.reinit.rewind", "control") == ("stages", "lt", "controls")
    assert origin("lt.r2.prune", "method") == ("stages", "lt", "prune")
    assert origin("lt.r1.prune", "from") == ("stages", "lt", "from")
    assert origin("lt.r2", "optimizer") == ("stages", "dense", "optimizer")  # the recipe is written at the dense stage
    assert origin("lt.r2", "seed") == ("stages", "lt", "seed")
    assert origin("lt", "curves") == ("stages", "lt")  # not written: the block itself


# ------------------------------------------------------------------ report
def _stage_dir(root, name, *, masks=None, metrics=None, records=()):
    d = root / name
    (d / "weights").mkdir(parents=True)
    (d / "result.json").write_text(json.dumps({"status": "ok", "metrics": metrics or {}}))
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if masks is not None:
        save_file(masks, str(d / "masks.safetensors"))
    return ResolvedWeights(d / "weights" / "final.safetensors", None, d / "masks.safetensors")


def _mask(kept, total, shape):
    m = torch.zeros(total)
    m[:kept] = 1
    return m.reshape(shape)


def test_best_test_loss_is_the_first_lowest_evaluation():
    records = [{"step": 1, "loss": 0.1}, {"step": 5, "test_loss": 0.5}, {"step": 10, "test_loss": 0.3},
               {"step": 15, "test_loss": "nan"}, {"step": 20, "test_loss": 0.3}]
    assert best_test_loss(records) == (10, 0.3)
    assert best_test_loss([{"step": 3, "loss": 1.0}]) == (None, None)


def test_the_report_table_counts_weights_exactly_and_reads_each_stages_numbers(tmp_path):
    def curve(best):  # evaluations every 5 steps, lowest test loss at `best`
        return [{"step": s, "test_loss": 1.0 - (0.5 if s == best else 0.0), "test_accuracy": s / 100} for s in (5, 10, 15, 20)]

    weights = {
        "dense": _stage_dir(tmp_path, "dense", metrics={"test_accuracy": 0.9, "test_loss": 0.4}, records=curve(20)),
        "lt.r1": _stage_dir(tmp_path, "r1", metrics={"test_accuracy": 0.91, "test_loss": 0.35}, records=curve(10),
                            masks={"a.weight": _mask(48, 60, (6, 10)), "b.weight": _mask(16, 20, (2, 10))}),
        "lt.r2": _stage_dir(tmp_path, "r2", metrics={"test_accuracy": 0.88, "test_loss": 0.5}, records=curve(15),
                            masks={"a.weight": _mask(38, 60, (6, 10)), "b.weight": _mask(13, 20, (2, 10))}),
        "lt.r1.reinit": _stage_dir(tmp_path, "c1", metrics={"test_accuracy": 0.8, "test_loss": "nan"}, records=curve(5),
                                   masks={"a.weight": _mask(48, 60, (6, 10)), "b.weight": _mask(16, 20, (2, 10))}),
        "lt.r2.reinit": _stage_dir(tmp_path, "c2", metrics={"test_accuracy": 0.7, "test_loss": 0.9}, records=curve(20),
                                   masks={"a.weight": _mask(38, 60, (6, 10)), "b.weight": _mask(13, 20, (2, 10))}),
    }
    spec = LotteryReport.Params.model_validate({"kind": "lottery_report", "dense": "dense", "tickets": ["lt.r1", "lt.r2"],
                                                "controls": {"reinit": ["lt.r1.reinit", "lt.r2.reinit"]}, "curves": [0, 2]})
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    ctx = StageContext("lt", spec, 0, torch.device("cpu"), out_dir, weights=weights)
    outcome = LotteryReport(spec).run(ctx)
    rows = outcome.results["lottery"]["rows"]
    got = [(r["round"], r["variant"], r["weights_remaining"], r["test_accuracy"], r["test_loss"], r["best_step"]) for r in rows]
    assert got == [(0, "dense", 100.0, 0.9, 0.4, 20),
                   (1, "ticket", 100 * 64 / 80, 0.91, 0.35, 10), (1, "reinit", 100 * 64 / 80, 0.8, None, 5),
                   (2, "ticket", 100 * 51 / 80, 0.88, 0.5, 15), (2, "reinit", 100 * 51 / 80, 0.7, 0.9, 20)]
    assert outcome.metrics == {"rounds": 2, "dense_test_accuracy": 0.9, "final_weights_remaining": 100 * 51 / 80,
                               "final_ticket_test_accuracy": 0.88}
    for png in ("accuracy_vs_weights.png", "learning_curves.png"):
        assert (out_dir / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out_dir / "table.md").read_text().splitlines()
    assert len(table) == 2 + len(rows) and "| 2 | reinit | ok | 63.75 | 0.7 | 0.9 | 20 |" in table
    assert (out_dir / "table.csv").read_text().splitlines()[0].split(",")[:3] == ["stage", "round", "variant"]


def test_the_report_refuses_controls_of_another_length():
    with pytest.raises(ValidationError):
        LotteryReport.Params.model_validate({"kind": "lottery_report", "dense": "d", "tickets": ["a", "b"],
                                             "controls": {"reinit": ["c"]}})


def test_a_block_never_runs_itself(tmp_path):
    from nnopt.core.errors import StageError

    spec = Lottery.Params.model_validate(block())
    with pytest.raises(StageError, match="expanded"):
        Lottery(spec).run(StageContext("lt", spec, 0, torch.device("cpu"), tmp_path))
