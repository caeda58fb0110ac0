"""Blocks (``Stage.expand``): a ``lottery`` stage is replaced at plan time by one cached
prune/rewind/train stage per round (and per control) and a ``lottery_report`` under its own id.

Checked here: the generated ids and their dependencies as the planner sees them, errors
inside generated stages located at the block key they come from (not repeated per round),
the stage-id rules (users' ids without dots, generated ids with them, weight references to
generated ids), and end to end: a tiny lottery runs (exit 0), and raising ``rounds`` from 2 to
3 computes round 3 only.
"""

from __future__ import annotations

import json

import pytest

from nnopt.core.component import WeightRef
from nnopt.core.errors import SpecError
from nnopt.core.planner import load_plans

#: a dense run and a 2-round lottery with one control: 12 stages, a few seconds on a CPU
LOTTERY = """\
name: lot
data: {name: digits, batch_size: 128}
model: {arch: {name: mlp, widths: [16], activation: relu}}
loss: cross_entropy
stages:
  dense:
    kind: train
    optimizer: {name: sgd, lr: 0.1, momentum: 0.9}
    steps: 6
    eval_every: 3
    keep: [0]
  tickets:
    kind: lottery
    from: dense
    rounds: 2
    prune: {name: magnitude, fraction: 0.5}
    rewind_to: 0
    controls: [reinit]
"""
#: line numbers of LOTTERY's keys, for located errors
LINE = {text.split(":")[0].strip(): i for i, text in enumerate(LOTTERY.splitlines(), 1) if text.startswith("    ")}


def ids_for(rounds: int, controls: list[str], block: str = "tickets") -> list[str]:
    out = []
    for k in range(1, rounds + 1):
        out += [f"{block}.r{k}.prune", f"{block}.r{k}.rewind", f"{block}.r{k}"]
        for c in controls:
            out += [f"{block}.r{k}.{c}.rewind", f"{block}.r{k}.{c}"]
    return out + [block]


def plan_of(tmp_path, text: str, sets=()):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    (plan,) = load_plans(path, list(sets))
    return plan


def errors_of(tmp_path, text: str) -> list:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_plans(path)
    return info.value.diagnostics


def test_a_lottery_block_plans_as_its_rounds_in_order_with_their_dependencies(tmp_path):
    plan = plan_of(tmp_path, LOTTERY)
    assert [s.id for s in plan.stages] == ["dense", *ids_for(2, ["reinit"])]
    by = {s.id: s for s in plan.stages}
    assert by["tickets.r1.prune"].deps == ["dense"]
    assert by["tickets.r2.prune"].deps == ["tickets.r1"]  # round 2 prunes round 1's trained ticket
    assert by["tickets.r2.rewind"].deps == ["dense", "tickets.r2.prune"]  # masks of the prune, weights of dense@0
    assert str(by["tickets.r2.rewind"].spec.to) == "dense@0"
    assert by["tickets.r2.reinit.rewind"].spec.control == "reinit"
    assert by["tickets.r2.reinit"].deps == ["tickets.r2.reinit.rewind"]
    assert by["tickets"].kind == "lottery_report"
    assert by["tickets"].deps == ["dense", "tickets.r1", "tickets.r1.reinit", "tickets.r2", "tickets.r2.reinit"]
    # the round's training is the dense stage's recipe: same optimizer, length, evaluations
    for sid in ("tickets.r1", "tickets.r2.reinit"):
        spec = by[sid].spec
        assert (spec.optimizer.name, spec.optimizer.resolved.lr, spec.steps, spec.eval_every) == ("sgd", 0.1, 6, 3)
        assert spec.keep == []  # not repeated: nothing refers to a round's steps
    assert len({s.key for s in plan.stages}) == len(plan.stages)


def test_earlier_rounds_key_the_same_whatever_the_number_of_rounds(tmp_path):
    two = {s.id: s.key for s in plan_of(tmp_path, LOTTERY).stages}
    three = {s.id: s.key for s in plan_of(tmp_path, LOTTERY, ["stages.tickets.rounds=3"]).stages}
    assert set(three) - set(two) == set(ids_for(3, ["reinit"])) - set(ids_for(2, ["reinit"]))
    assert all(three[sid] == key for sid, key in two.items() if sid != "tickets")  # the report reads one more round
    assert three["tickets"] != two["tickets"]
    # adding a control leaves the rounds' tickets as they were
    more = {s.id: s.key for s in plan_of(tmp_path, LOTTERY.replace("[reinit]", "[reinit, random_mask]")).stages}
    assert all(more[sid] == key for sid, key in two.items() if sid != "tickets")


def test_the_blocks_own_seed_applies_to_every_stage_it_stands_for(tmp_path):
    plan = plan_of(tmp_path, LOTTERY.replace("    controls: [reinit]\n", "    controls: [reinit]\n    seed: 7\n"))
    seeds = {s.id: s.seed for s in plan.stages}
    assert seeds.pop("dense") == 0
    assert {sid: seed for sid, seed in seeds.items() if sid != "tickets"} == {sid: 7 for sid in ids_for(2, ["reinit"])[:-1]}


def test_rewinding_to_a_step_the_dense_stage_does_not_keep_is_one_located_error_naming_keep(tmp_path):
    (diag,) = errors_of(tmp_path, LOTTERY.replace("rewind_to: 0", "rewind_to: 5"))
    assert (diag.location.line, diag.path) == (LINE["rewind_to"], "stages.tickets.rewind_to")
    assert "does not keep step 5" in diag.message and "stages.dense.keep" in diag.message


def test_an_unknown_control_is_located_with_a_did_you_mean(tmp_path):
    (diag,) = errors_of(tmp_path, LOTTERY.replace("[reinit]", "[reinit, random_msk]"))
    assert (diag.location.line, diag.path, diag.suggestion) == (LINE["controls"], "stages.tickets.controls[1]", "random_mask")
    assert "unknown control 'random_msk'" in diag.message and "sign_only" in diag.message


@pytest.mark.parametrize("change, path, fragment, suggestion", [
    (("from: dense", "from: dens"), "stages.tickets.from", "no stage 'dens'", "dense"),
    (("rounds: 2", "rounds: 0"), "stages.tickets.rounds", "greater than or equal to 1", None),
    (("rewind_to: 0", "rewind_to: -1"), "stages.tickets.rewind_to", "greater than or equal to 0", None),
    (("fraction: 0.5", "fracton: 0.5"), "stages.tickets.prune.fracton", "unknown key 'fracton'", "fraction"),
    (("from: dense", "from: dense@0"), "stages.tickets.from", "not a kept step", None),
])
def test_errors_in_the_block_are_located_in_the_block(tmp_path, change, path, fragment, suggestion):
    diags = errors_of(tmp_path, LOTTERY.replace(*change))
    assert [(d.path, d.suggestion) for d in diags] == [(path, suggestion)], diags
    assert fragment in diags[0].message and diags[0].location.line == LINE[path.split(".")[2]]


def test_an_error_in_the_dense_recipe_is_reported_once_at_the_dense_stage(tmp_path):
    diags = errors_of(tmp_path, LOTTERY.replace("lr: 0.1,", "lr: -0.1,"))
    assert len(diags) == 1 and diags[0].path == "stages.dense.optimizer.lr", diags


def test_a_lottery_from_a_stage_that_is_not_a_train_stage_is_refused(tmp_path):
    text = LOTTERY.replace("from: dense\n    rounds", "from: probe\n    rounds") + (
        "  probe:\n    kind: analyze\n    from: dense\n    analyzers: [{name: grad_norms, samples: 64}]\n")
    (diag,) = errors_of(tmp_path, text)
    assert diag.path == "stages.tickets.from" and "a train stage" in diag.message and "kind analyze" in diag.message


def test_a_user_stage_id_with_a_dot_is_refused_as_before(tmp_path):
    (diag,) = errors_of(tmp_path, LOTTERY.replace("  dense:\n", "  dense.x:\n").replace("from: dense", "from: dense.x"))
    assert diag.path == "stages.dense.x" and "letters, digits, _ and - only" in diag.message


def test_other_stages_can_refer_to_generated_stages(tmp_path):
    text = LOTTERY + "  probe:\n    kind: analyze\n    from: tickets.r2\n    analyzers: [{name: grad_norms, samples: 64}]\n"
    plan = plan_of(tmp_path, text)
    assert plan.stage("probe").deps == ["tickets.r2"]
    assert (WeightRef.model_validate("tickets.r3.reinit@init").stage, WeightRef.model_validate("tickets.r3@4").step) == \
        ("tickets.r3.reinit", 4)
    (diag,) = errors_of(tmp_path, text.replace("from: tickets.r2\n", "from: tickets.r9\n"))
    assert "no stage 'tickets.r9'" in diag.message and diag.suggestion is not None


def test_plan_shows_every_generated_id(cli, pipeline):
    result = cli("plan", pipeline(LOTTERY), "--json")
    assert result.exit_code == 0, result.stderr
    stages = json.loads(result.stdout)["stages"]
    assert [s["id"] for s in stages] == ["dense", *ids_for(2, ["reinit"])]
    assert all(s["reason"] == "new" for s in stages)
    text = cli("plan", pipeline(LOTTERY)).stdout
    assert all(sid in text for sid in ids_for(2, ["reinit"]))


def test_a_tiny_lottery_runs_and_raising_rounds_recomputes_only_the_new_round(cli, pipeline):
    path = pipeline(LOTTERY)
    result, out = cli.run_json(path, "--no-progress")
    assert result.exit_code == 0, result.stderr
    assert {s["status"] for s in out["stages"].values()} == {"ran"}
    rows = out["stages"]["tickets"]["results"]["lottery"]["rows"]
    remaining = {(r["round"], r["variant"]): r["weights_remaining"] for r in rows}
    # digits MLP 64-16-10: 64*16 + 16*10 = 1184 prunable weights; half of the rest pruned each round
    assert remaining == {(0, "dense"): 100.0, (1, "ticket"): 100 * 592 / 1184, (1, "reinit"): 100 * 592 / 1184,
                         (2, "ticket"): 100 * 296 / 1184, (2, "reinit"): 100 * 296 / 1184}

    result, out = cli.run_json(path, "--no-progress", "--set", "stages.tickets.rounds=3")
    assert result.exit_code == 0, result.stderr
    status = {sid: s["status"] for sid, s in out["stages"].items()}
    new = {"tickets.r3.prune", "tickets.r3.rewind", "tickets.r3", "tickets.r3.reinit.rewind", "tickets.r3.reinit", "tickets"}
    assert {sid for sid, st in status.items() if st == "ran"} == new
    assert all(st == "cached" for sid, st in status.items() if sid not in new)

    shown = cli("show", f"{out['run']}/tickets")
    assert shown.exit_code == 0 and "lottery" in shown.stdout and "weights_remaining" in shown.stdout


#: a report over a run that diverges (``bad``: the dense weights trained at lr 1e6) and one
#: that is therefore never trained (``after``): the report still runs, and says so per row
DIVERGED_ROUND = """\
name: lot
data: {name: digits, batch_size: 128}
model: {arch: {name: mlp, widths: [16], activation: relu}}
loss: cross_entropy
stages:
  dense: {kind: train, optimizer: {name: sgd, lr: 0.1}, steps: 4, eval_every: 2}
  bad: {kind: train, from: dense, optimizer: {name: sgd, lr: 1.0e+6, momentum: 0.9}, steps: 20, eval_every: 2}
  after: {kind: train, from: bad, optimizer: {name: sgd, lr: 0.1}, steps: 4}
  probe: {kind: analyze, from: bad, analyzers: [grad_norms]}
  report: {kind: lottery_report, dense: dense, tickets: [bad, after]}
"""


def test_a_diverged_round_is_reported_and_later_rounds_are_rows_marked_skipped(cli, pipeline):
    result, out = cli.run_json(pipeline(DIVERGED_ROUND), "--no-progress")
    assert result.exit_code == 1 and out["status"] == "diverged"
    status = {sid: s["status"] for sid, s in out["stages"].items()}
    # only a report kind (runs_after_divergence) runs past a divergence; an analyzer does not
    assert status == {"dense": "ran", "bad": "diverged", "after": "skipped", "probe": "skipped", "report": "ran"}
    rows = {r["stage"]: r for r in out["stages"]["report"]["results"]["lottery"]["rows"]}
    assert [rows[s]["status"] for s in ("dense", "bad", "after")] == ["ok", "diverged", "skipped"]
    assert rows["after"]["test_accuracy"] is None and rows["after"]["weights_remaining"] is None
    assert rows["bad"]["weights_remaining"] == 100.0
    # cached as it is: a second run reuses the report
    again, out2 = cli.run_json(pipeline(DIVERGED_ROUND), "--no-progress")
    assert out2["stages"]["report"]["status"] == "cached"
