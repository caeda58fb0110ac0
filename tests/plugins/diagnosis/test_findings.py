"""The findings vocabulary: each check reads its instrument into a finding on one side of its
threshold and stays silent on the other, with a patch that names the documented fix."""

from __future__ import annotations

import dataclasses
import math

import pytest

from nnopt.plugins.diagnosis import findings as fv
from nnopt.plugins.diagnosis.findings import Change, Setup


def setup(**over) -> Setup:
    base = Setup(optimizer="sgd", optimizer_params={"lr": 0.1, "momentum": 0.0}, lr=0.1, batch_size=64, n_train=1437,
                 steps=1000, has_warmup=False, schedule="constant", arch="mlp", arch_params={"widths": [64, 64]},
                 activation="relu", depth=3, has_skips=False, norm=None, init=None, task="classification", widths=[64, 64])
    return dataclasses.replace(base, **over)


def ids(evidence, s=None):
    return [f.id for f in fv.diagnose(evidence, s or setup())]


def one(check_id, evidence, s=None):
    found = [f for f in fv.diagnose(evidence, s or setup()) if f.id == check_id]
    return found[0] if found else None


def test_every_check_has_a_unique_documented_id_and_a_summary():
    names = [c.id for c in fv.CHECKS]
    assert len(names) == len(set(names)) and all(names)
    assert all(c.summary for c in fv.CHECKS)


def test_no_evidence_gives_no_finding():
    assert fv.diagnose({}, setup()) == []
    assert fv.healthy([])


def test_lr_above_curvature_fires_above_the_bound_and_halves_the_stable_rate():
    ev = {"curvature": {"at_init": {"lambda_max": 30.0}, "threshold": {"threshold": 20.0, "rule": "2/η"}}}
    f = one("lr_above_curvature", ev)
    assert f is not None and f.severity == "critical"
    # the new rate puts λ·η' at half the bound: η' = η · 0.5 · bound / λ
    assert f.patch == [Change("train", ("optimizer", "lr"), fv.round_sig(0.1 * 0.5 * 20 / 30))]
    ev["curvature"]["at_init"]["lambda_max"] = 19.0
    assert one("lr_above_curvature", ev) is None


def test_above_the_bound_a_probe_that_trains_anyway_is_an_observation_not_a_failure():
    ev = {"curvature": {"at_init": {"lambda_max": 30.0}, "threshold": {"threshold": 20.0}},
          "probe": {"status": "ok", "loss": {"relative_decrease": 0.9}}}
    assert one("lr_above_curvature", ev).severity == "info"  # the catapult: the curvature came down
    ev["probe"]["loss"]["relative_decrease"] = 0.1
    assert one("lr_above_curvature", ev).severity == "critical"
    ev["probe"] = {"status": "diverged"}
    assert one("lr_above_curvature", ev).severity == "critical"


def test_lr_above_curvature_ignores_a_preconditioned_bound_at_initialization():
    ev = {"curvature": {"at_init": {"lambda_max": 1e6}, "threshold": {"threshold": 20.0, "preconditioned": True}}}
    assert one("lr_above_curvature", ev) is None


def _phase(chi, depth_scale, phase, homogeneous=False):
    return {"at_init": {"phase": {"chi1": chi, "depth_scale": depth_scale, "phase": phase, "sigma_w2": 4.0,
                                  "critical_sigma_w2": 1.0, "positively_homogeneous": homogeneous}}}


def test_chaotic_init_needs_a_saturating_activation_and_depth_beyond_the_depth_scale():
    tanh = setup(activation="tanh", depth=10)
    f = one("chaotic_init", _phase(2.0, 1.4, "chaotic"), tanh)
    assert f is not None and f.patch == [Change("model", ("init",), {"name": "critical"})]
    assert one("chaotic_init", _phase(2.0, 1.4, "chaotic"), setup(activation="relu", depth=10)) is None
    assert one("chaotic_init", _phase(1.05, 20.0, "critical"), tanh) is None


def test_ordered_init_fires_only_where_gradients_decay_a_hundredfold_over_the_depth():
    assert one("ordered_init", _phase(0.5, 1.44, "ordered"), setup(activation="tanh", depth=10)) is not None
    assert one("ordered_init", _phase(0.5, 10.0, "ordered"), setup(activation="tanh", depth=10)) is None
    # a shallow net (PyTorch's default init puts tanh nets in the ordered phase) is no finding
    assert one("ordered_init", _phase(0.3, 0.83, "ordered"), setup(activation="tanh", depth=2)) is None


def test_chaotic_init_is_no_finding_for_a_shallow_net():
    assert one("chaotic_init", _phase(2.0, 1.4, "chaotic"), setup(activation="tanh", depth=3)) is None


@pytest.mark.parametrize("ratio, expected", [(1e6, "exploding_forward"), (1e-6, "vanishing_forward"), (3.0, None)])
def test_forward_scale_beyond_four_orders_of_magnitude(ratio, expected):
    found = ids({"at_init": {"forward": {"q_ratio": ratio}}})
    assert ([i for i in found if i.endswith("_forward")] == [expected]) if expected else not found


def test_forward_scale_recommends_the_activations_variance_preserving_init_and_skips_normalized_nets():
    ev = {"at_init": {"forward": {"q_ratio": 1e-8}}}
    assert one("vanishing_forward", ev).patch[0].value == {"name": "kaiming_normal"}
    assert one("vanishing_forward", ev, setup(activation="tanh")).patch[0].value == {"name": "critical"}
    assert one("vanishing_forward", ev, setup(activation="linear")).patch[0].value == {"name": "orthogonal"}
    assert one("vanishing_forward", ev, setup(norm="batchnorm")) is None
    # a residual net's branches may start at zero (Fixup): the signal takes the shortcuts
    assert one("vanishing_forward", ev, setup(arch="resnet", has_skips=True)) is None
    assert one("vanishing_gradients", {"at_init": {"gradients": {"first_last_ratio": 1e-9}}},
               setup(arch="resnet", has_skips=True, depth=20)) is None


def test_gradient_scale_compares_the_first_and_last_layer():
    assert one("vanishing_gradients", {"at_init": {"gradients": {"first_last_ratio": 1e-5}}}) is not None
    assert one("exploding_gradients", {"at_init": {"gradients": {"first_last_ratio": 1e5}}}) is not None
    assert ids({"at_init": {"gradients": {"first_last_ratio": 0.5}}}) == []


def test_logit_scale_removes_an_output_scale_or_else_recommends_an_init():
    ev = {"at_init": {"output": {"loss_ratio": 20.0, "initial_loss": 46.0, "reference_loss": 2.3, "logit_std": 30.0}}}
    scaled = one("logit_scale", ev, setup(arch_params={"widths": [64], "output_scale": 100}))
    assert scaled.severity == "critical" and scaled.patch == [Change("model", ("arch", "output_scale"), None)]
    assert one("logit_scale", ev).patch == [Change("model", ("init",), {"name": "kaiming_normal"})]
    assert one("logit_scale", ev, setup(task="regression")) is None
    ev["at_init"]["output"]["loss_ratio"] = 1.2
    assert one("logit_scale", ev) is None


def test_depth_without_skips_turns_a_plain_network_into_its_residual_twin():
    ev = {"probe": {"loss": {"relative_decrease": 0.5}}}
    plain = one("depth_without_skips", ev, setup(arch="plain", depth=26))
    assert plain.patch == [Change("model", ("arch", "name"), "resnet")]
    mlp = one("depth_without_skips", ev, setup(depth=20, widths=[64] * 19))
    assert mlp.patch[0].value["name"] == "resnet" and mlp.patch[0].value["stages"] == [[9, 64, 1]]
    assert one("depth_without_skips", ev, setup(arch="resnet", depth=26, has_skips=True)) is None
    assert one("depth_without_skips", {"probe": {"loss": {"relative_decrease": 0.95}}}, setup(arch="plain", depth=26)) is None


def test_needs_warmup_wraps_the_written_schedule_in_a_warmup():
    ev = {"probe": {"early": {"max_over_first": 5.0, "first_update_ratio": 0.2}, "status": "ok"}}
    calm = {"probe": {"early": {"max_over_first": 1.0, "first_update_ratio": 0.5}, "status": "ok"}}
    assert one("needs_warmup", calm, setup(optimizer="adam")) is None  # a large first update alone: no
    adam = setup(optimizer="adam", schedule={"name": "cosine"}, steps=600)
    f = one("needs_warmup", ev, adam)
    assert f.patch[0].path == ("schedule",)
    assert f.patch[0].value == {"name": "warmup", "length": 200, "unit": "steps", "start_factor": 0.01,
                                "then": {"name": "cosine"}}
    # below linear scaling, the warmup ramps up the scaled rate (Goyal et al.)
    scaled = one("needs_warmup", ev, dataclasses.replace(adam, schedule={"name": "linear_scaling", "base_batch": 8,
                                                                         "then": "cosine"}))
    assert scaled.patch == [Change("train", ("schedule", "then"), {"name": "warmup", "length": 200, "unit": "steps",
                                                                   "start_factor": 0.01, "then": "cosine"})]
    assert one("needs_warmup", ev, dataclasses.replace(adam, has_warmup=True)) is None
    assert one("needs_warmup", ev, setup()) is None  # plain SGD at batch 64: not its case
    explained = {**ev, "curvature": {"at_init_ratio": 3.0}}  # a step above the curvature explains it
    assert one("needs_warmup", explained, adam) is None


def test_dead_units_at_initialization_are_a_cause_and_dying_ones_a_symptom():
    at_init = one("dead_units", {"at_init": {"units": {"max_dead_fraction": 0.9}}})
    assert at_init.severity == "critical"
    dying = one("dead_units", {"at_init": {"units": {"max_dead_fraction": 0.0}},
                               "after_probe": {"units": {"max_dead_fraction": 0.9}}})
    assert dying.severity == "warning" and dying.instrument[0] == "after_probe.units.max_dead_fraction"
    # units that died while the loss fell by 95% anyway: an observation
    learned = one("dead_units", {"after_probe": {"units": {"max_dead_fraction": 0.9}},
                                 "probe": {"loss": {"relative_decrease": 0.95}}})
    assert learned.severity == "info"
    assert one("dead_units", {"after_probe": {"units": {"max_dead_fraction": 0.3}}}).severity == "info"
    assert one("dead_units", {"at_init": {"units": {"max_dead_fraction": 0.1}}}) is None


def test_lr_too_small_stays_under_the_stability_bound():
    ev = {"probe": {"loss": {"relative_decrease": 0.01}, "steps": 200}, "lr_range": {"suggested_lr": 10.0},
          "curvature": {"at_init": {"lambda_max": 1.0}, "threshold": {"threshold": 20.0}}}
    f = one("lr_too_small", ev, setup(lr=0.01))
    # suggested 10, but half the largest stable rate is η·0.5·bound/λ = 0.01·0.5·20/1 = 0.1
    assert f.patch == [Change("train", ("optimizer", "lr"), 0.1)]
    # a stable rate barely above the current one is no recommendation
    assert one("lr_too_small", {**ev, "curvature": {"at_init": {"lambda_max": 4.0}, "threshold": {"threshold": 20.0}}},
               setup(lr=0.01)) is None
    assert one("lr_too_small", {**ev, "probe": {"loss": {"relative_decrease": 0.6}, "steps": 200}}, setup(lr=0.01)) is None
    # a 1-step stage (kept for its initialization) proves nothing about the rate
    assert one("lr_too_small", {**ev, "probe": {"loss": {"relative_decrease": 0.0}, "steps": 1}}, setup(lr=0.01)) is None


def test_informational_findings_do_not_make_a_pipeline_unhealthy():
    ev = {"curvature": {"after_probe": {"lambda_max": 19.0}, "threshold": {"threshold": 20.0}},
          "noise_scale": {"b_simple": 5000.0}, "probe": {"status": "ok"}}
    found = fv.diagnose(ev, setup())
    assert {f.id for f in found} == {"edge_of_stability", "batch_too_small"}
    assert all(f.severity == "info" for f in found) and fv.healthy(found)


def test_findings_rank_by_severity_then_cause_before_symptom():
    ev = {"probe": {"status": "diverged", "diverged_at": 3, "loss": {}},
          "curvature": {"at_init": {"lambda_max": 100.0}, "threshold": {"threshold": 20.0}},
          "at_init": {"output": {"loss_ratio": 50.0, "initial_loss": 115, "reference_loss": 2.3, "logit_std": 80}}}
    assert ids(ev)[:3] == ["logit_scale", "lr_above_curvature", "diverged"]


def test_a_failing_check_is_reported_and_does_not_hide_the_others():
    class Broken(fv.Check):
        id = "broken"

        def examine(self, evidence, setup):
            raise ZeroDivisionError("oops")

    errors = []
    found = fv.diagnose({"probe": {"status": "diverged"}}, setup(), checks=[Broken(), fv.Diverged()],
                        on_error=lambda c, e: errors.append((c.id, type(e).__name__)))
    assert [f.id for f in found] == ["diverged"] and errors == [("broken", "ZeroDivisionError")]


def test_a_finding_serializes_with_its_patch_and_instrument():
    f = one("diverged", {"probe": {"status": "diverged", "diverged_at": 7}})
    d = f.as_dict()
    assert d["patch"][0] == {"role": "train", "path": ["optimizer", "lr"], "value": 0.01}
    assert d["instrument"] == {"name": "probe.diverged", "value": 1.0, "better": "lower"}
    assert math.isfinite(d["patch"][0]["value"])


def test_every_finding_id_is_documented_in_the_vocabulary_table():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "diagnose.md").read_text(encoding="utf-8")
    missing = [c.id for c in fv.CHECKS if f"| `{c.id}` |" not in doc]
    assert missing == []


def test_poor_isometry_is_an_observation_for_deep_nets_only():
    ev = {"at_init": {"jacobian": {"max_min_ratio": 1e5, "mean_sq": 1.0, "std_sq": 30.0}}}
    f = one("poor_isometry", ev, setup(depth=10))
    assert f.severity == "info" and f.patch == []
    assert one("poor_isometry", ev, setup(depth=3)) is None
    assert one("poor_isometry", {"at_init": {"jacobian": {"skipped": "too large"}}}, setup(depth=10)) is None
