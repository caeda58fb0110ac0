"""``nnopt schema``: every component's params by name, so that an editor checks and completes them."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PIPELINES = sorted((REPO / "pipelines").rglob("*.yaml"))


def _schema_of(env: dict[str, str], cwd: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "nnopt", "schema"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One private schema cache for the module (the user's ~/.cache is never touched)."""
    return tmp_path_factory.mktemp("xdg-cache")


@pytest.fixture(scope="module")
def schema(cache_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``nnopt schema``'s output (a subprocess: what an editor runs), computed once."""
    out = _schema_of({**os.environ, "XDG_CACHE_HOME": str(cache_home)}, tmp_path_factory.mktemp("cwd"))
    jsonschema.Draft202012Validator.check_schema(out)
    return out


@pytest.fixture(scope="module")
def validator(schema: dict) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture
def quickstart() -> dict:
    return yaml.safe_load((REPO / "pipelines" / "quickstart.yaml").read_text(encoding="utf-8"))


def _errors(validator: jsonschema.Draft202012Validator, doc: dict) -> list[str]:
    return [e.message for e in validator.iter_errors(doc)]


def test_every_shipped_pipeline_validates(validator):
    assert len(PIPELINES) > 10
    for path in PIPELINES:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert not _errors(validator, doc), (path.relative_to(REPO), _errors(validator, doc)[:3])


def test_a_misspelt_or_mistyped_param_or_an_unknown_name_is_rejected(validator, quickstart):
    assert not _errors(validator, quickstart)
    for change in ({"lrr": 0.05}, {"lr": "fast"}, {"lr": -1.0}, {"lr": True}, {"name": "sgdd"}):
        bad = copy.deepcopy(quickstart)
        optimizer = bad["stages"]["train"]["optimizer"]
        if "lrr" in change:
            optimizer["lrr"] = optimizer.pop("lr")
        else:
            optimizer.update(change)
        assert _errors(validator, bad), change
    bad = copy.deepcopy(quickstart)
    bad["stages"]["train"]["schedule"] = "cosin"  # a bare name is checked against the names too
    assert _errors(validator, bad)


def test_nested_components_and_track_entries_are_checked_by_name(validator, quickstart):
    def with_arch(**arch):
        doc = copy.deepcopy(quickstart)
        doc["model"]["arch"] = {"name": "mlp", "widths": [8], **arch}
        return doc

    assert not _errors(validator, with_arch(activation="tanh"))
    assert not _errors(validator, with_arch(activation={"name": "leaky_relu"}))
    assert _errors(validator, with_arch(activation="tanhh"))
    assert _errors(validator, with_arch(activation={"name": "relu", "slope": 2}))  # relu takes no params
    assert _errors(validator, with_arch(width=[8]))  # mlp's key is `widths`

    doc = copy.deepcopy(quickstart)
    doc["stages"]["train"]["track"] = [{"name": "grad_norms", "every": 5}, "grad_norms"]
    assert not _errors(validator, doc)
    doc["stages"]["train"]["track"] = [{"name": "grad_norms", "every": 0}]
    assert _errors(validator, doc)
    doc["stages"]["train"]["track"] = [{"name": "grad_norms", "evry": 5}]
    assert _errors(validator, doc)


def test_bare_names_matrix_and_anchor_keys_validate(validator):
    doc = yaml.safe_load("""
        name: bare
        x-opt: &opt {name: sgd, lr: 0.1, momentum: 0.9}
        data: digits
        model: {arch: mlp, init: kaiming_normal, norm: none}
        loss: cross_entropy
        stages:
          train: {kind: train, optimizer: *opt, schedule: cosine, steps: 10, track: [grad_norms]}
          probe: {kind: analyze, from: train, analyzers: [grad_norms]}
        matrix:
          stages.train.optimizer.lr: [0.01, 0.1]
          model.arch.widths: [[8], [16, 16]]
    """)
    assert not _errors(validator, doc)
    assert _errors(validator, {**doc, "stages": {"train": {**doc["stages"]["train"], "kind": "trian"}}})


def test_the_schema_is_small_and_shares_one_definition_per_kind(schema):
    defs = schema["$defs"]
    sgd = defs["optimizers.sgd"]
    assert sgd["properties"]["name"] == {"const": "sgd"}
    assert sgd["additionalProperties"] is False and sgd["properties"]["lr"]["type"] == "number"
    bare, *variants = defs["optimizers"]["oneOf"]
    assert bare["type"] == "string" and "sgd" in bare["enum"]  # the bare-name form
    assert {"$ref": "#/$defs/optimizers.sgd"} in variants
    # every slot of a kind refers to its one definition
    assert schema["$defs"]["ModelSpec"]["properties"]["arch"]["$ref"] == "#/$defs/architectures"
    text = json.dumps(schema)
    assert "additionalProperties\": true" not in text.replace(" ", "")
    assert len(text) < 1_500_000  # every component once, shared by reference


def test_a_plugins_components_appear_when_it_is_installed(demo_env, cache_home, tmp_path, validator):
    # the same cache as the schema without the plugin: it is keyed by what is installed
    with_plugin = _schema_of({**demo_env, "XDG_CACHE_HOME": str(cache_home)}, tmp_path)
    variant = with_plugin["$defs"]["optimizers.demo_signsgd"]
    assert variant["properties"]["lr"]["exclusiveMinimum"] == 0.0
    assert variant["additionalProperties"] is False
    assert "demo_weight_norm" in with_plugin["$defs"]["analyzers"]["oneOf"][0]["enum"]

    plugged = jsonschema.Draft202012Validator(with_plugin)
    doc = yaml.safe_load("""
        name: demo
        data: digits
        model: {arch: mlp}
        stages:
          train: {kind: train, optimizer: {name: demo_signsgd, lr: 0.01}, steps: 5, track: [demo_weight_norm]}
    """)
    assert not _errors(plugged, doc)
    assert _errors(validator, doc)  # not installed: an unknown name
    doc["stages"]["train"]["optimizer"] = {"name": "demo_signsgd", "lrr": 0.01}
    assert _errors(plugged, doc)


def test_a_plugin_that_fails_to_load_gets_an_open_variant_and_no_cache(broken_env, tmp_path):
    cache = tmp_path / "cache"
    out = _schema_of({**broken_env, "XDG_CACHE_HOME": str(cache)}, tmp_path)
    assert out["x-nnopt-unloaded"] == ["analyzers/broken_probe"]
    assert "not loaded" in out["$defs"]["analyzers.broken_probe"]["description"]
    assert not list(cache.rglob("*.json"))  # it may load next time: nothing kept
