"""The `diagnose` stage's pure parts: its expansion copies the examined stage's configuration,
patches rebuild a valid configuration, and a fix counts as verified only when it helped."""

from __future__ import annotations

import math

import pytest

from nnopt.core.spec import ExpansionError
from nnopt.plugins.diagnosis.findings import Change
from nnopt.plugins.stages.diagnose import Diagnose, _has_warmup, _written_at, helped

STAGES = {
    "pre": {"kind": "train", "optimizer": "sgd", "steps": 10, "model": {"arch": "mlp"}},
    "train": {"kind": "train", "from": "pre@10", "optimizer": {"name": "adam", "lr": 0.01}, "steps": 50, "seed": 3},
    "probe": {"kind": "analyze", "from": "train", "analyzers": ["grad_norms"]},
}


def test_the_expansion_copies_the_examined_stage_and_where_its_parts_are_written():
    out = Diagnose.expand("check", {"kind": "diagnose", "of": "train", "probe_steps": 20}, STAGES)
    (gen,) = out.values()
    assert list(out) == ["check"]
    assert gen["train"] == {"kind": "train", "optimizer": {"name": "adam", "lr": 0.01}, "steps": 50}
    assert gen["from"] == "pre@10" and gen["seed"] == 3 and gen["probe_steps"] == 20
    # the model comes from `pre` (through `from`), data and loss from the top of the file
    assert gen["locations"] == {"train": ["stages", "train"], "model": ["stages", "pre", "model"],
                                "data": ["data"], "loss": ["loss"]}


def test_a_key_written_on_the_diagnose_stage_wins_over_the_examined_stages():
    (gen,) = Diagnose.expand("check", {"kind": "diagnose", "of": "train", "seed": 9}, STAGES).values()
    assert gen["seed"] == 9


@pytest.mark.parametrize("raw, message", [
    ({"kind": "diagnose", "of": "nope"}, "no stage 'nope' to diagnose (train stages: pre, train)"),
    ({"kind": "diagnose", "of": "probe"}, "stage 'probe' is a analyze stage"),
    ({"kind": "diagnose", "of": "train", "train": {}}, "'train' is filled in from stage 'train'"),
])
def test_expansion_errors_name_the_problem(raw, message):
    with pytest.raises(ExpansionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Diagnose.expand("check", raw, STAGES)


def test_errors_inside_the_copied_configuration_are_located_at_the_examined_stage():
    raw = {"kind": "diagnose", "of": "train"}
    assert Diagnose.origin("check", raw, "check", "train") == ("stages", "train")
    assert Diagnose.origin("check", raw, "check", "from") == ("stages", "train", "from")
    assert Diagnose.origin("check", raw, "check", "probe_steps") == ("stages", "check")


def test_where_a_part_is_written_follows_from_and_stops_at_a_cycle():
    cyclic = {"a": {"from": "b"}, "b": {"from": "a"}}
    assert _written_at("model", "a", cyclic) == ["model"]
    assert _written_at("model", "train", STAGES) == ["stages", "pre", "model"]


@pytest.mark.parametrize("schedule, warm", [
    ("constant", False), ({"name": "cosine"}, False), ({"name": "warmup", "length": 5}, True),
    ({"name": "warmup", "length": 0}, False), ({"name": "linear_scaling", "then": {"name": "warmup"}}, True),
    ({"name": "wsd", "warmup": 100}, True), ({"name": "wsd"}, False), ("one_cycle", True),
])
def test_a_warmup_is_found_anywhere_in_the_written_schedule(schedule, warm):
    assert _has_warmup(schedule) is warm


@pytest.mark.parametrize("before, after, verified", [
    ({"loss": 1.0, "first_loss": 2.3}, {"loss": 0.5}, True),
    ({"loss": 1.0, "first_loss": 2.3}, {"loss": 0.97}, False),  # under 5%
    ({"loss": 3e-5, "first_loss": 2.3}, {"loss": 1e-5}, False),  # 67% lower, but by nothing that matters
    ({"loss": math.inf, "diverged": True}, {"loss": 2.0}, True),  # it no longer diverges
    ({"loss": 1.0}, {"loss": 0.1, "diverged": True}, False),
    ({"loss": 1.0}, {"error": "invalid"}, False),
])
def test_a_fix_is_verified_only_when_it_measurably_helped(before, after, verified):
    assert helped(before, after) is verified


def test_a_patch_rebuilds_a_validated_resolved_configuration_or_says_why_not():
    from nnopt.core.component import DatasetRef
    from nnopt.core.model_spec import ModelSpec
    from nnopt.core.rebuild import resolved
    from nnopt.plugins.stages.diagnose import patched
    from nnopt.plugins.stages.train import TrainSpec

    train = resolved(TrainSpec, {"kind": "train", "optimizer": "sgd", "steps": 10}, "stages.train")
    model = resolved(ModelSpec, {"arch": {"name": "mlp", "widths": [8], "output_scale": 10}}, "model")
    data = resolved(DatasetRef, {"name": "digits"}, "data")
    t, m, d = patched(train, model, data, [Change("train", ("optimizer", "lr"), 0.02),
                                           Change("model", ("arch", "output_scale"), None),
                                           Change("model", ("init",), {"name": "critical"})])
    assert t.optimizer.resolved.lr == 0.02 and t.optimizer.is_resolved
    assert m.arch.resolved.output_scale == 1.0 and m.init.name == "critical"
    with pytest.raises(ValueError, match="lr"):
        patched(train, model, data, [Change("train", ("optimizer", "lr"), -1.0)])
    with pytest.raises(ValueError, match="unknown initializer"):
        patched(train, model, data, [Change("model", ("init",), {"name": "nonesuch"})])
