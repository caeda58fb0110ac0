"""The ``nnopt.bridges`` extension point: ``PREFIX.NAME`` resolves through a bridge object.

nnopt's own two bridges are declared in its pyproject.toml; third-party bridges are installed
here the way a distribution would be, as a ``*.dist-info`` directory put first on ``sys.path``.
"""

from __future__ import annotations

import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import pytest

from nnopt.core.errors import PluginError
from nnopt.core.registry import Registry

BRIDGES = {"torch": "nnopt.plugins.optimizers.bridge:TORCH",
           "pytorch_optimizer": "nnopt.plugins.optimizers.bridge:PYTORCH_OPTIMIZER"}


@pytest.fixture
def dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    created = []

    def make(name: str, entry_points: dict[str, dict[str, str]], modules: dict[str, str] | None = None) -> None:
        root = tmp_path / f"site-{name}"
        info = root / f"{name.replace('-', '_')}-1.0.dist-info"  # a dash would end the name in the folder
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text("".join(
            f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) for group, eps in entry_points.items()))
        for module, source in (modules or {}).items():
            (root / f"{module}.py").write_text(textwrap.dedent(source))
            created.append(module)
        monkeypatch.syspath_prepend(str(root))

    yield make
    for module in created:
        sys.modules.pop(module, None)


@pytest.fixture
def bridged(dist):
    """nnopt's two bridges, as its pyproject.toml declares them (installed with nnopt)."""
    declared = {(b.prefix, b.value) for b in Registry().bridges() if b.dist == "nnopt"}
    assert declared == set(BRIDGES.items()), "reinstall with `pip install -e .`: nnopt's bridges are not installed"


def test_a_bridged_name_resolves_with_the_library_as_provider(bridged):
    registry = Registry()
    entry = registry.entry("optimizers", "torch.Rprop")
    assert (entry.dist, entry.version, entry.bridge) == ("torch", version("torch"), "torch")
    cls, again = registry.load("optimizers", "torch.Rprop")
    assert again == entry and cls.library_class.__name__ == "Rprop"
    assert registry.load("optimizers", "torch.Rprop")[0] is cls
    assert registry.entry("optimizers", "pytorch_optimizer.adan").provider == f"pytorch_optimizer {version('pytorch_optimizer')}"


def test_bridged_names_are_listed_only_when_asked(bridged):
    registry = Registry()
    assert not any("." in e.name for e in registry.entries("optimizers"))
    assert "torch.Rprop" not in registry.names("optimizers")
    listed = {e.name for e in registry.entries("optimizers", bridged=True)}
    assert {"torch.Rprop", "pytorch_optimizer.adan", "sgd"} <= listed
    assert [b.prefix for b in registry.bridges()] == ["pytorch_optimizer", "torch"]


def test_unknown_bridged_names_suggest_within_the_bridge(bridged):
    registry = Registry()
    with pytest.raises(PluginError) as err:
        registry.entry("optimizers", "torch.Rpop")
    assert err.value.suggestion == "torch.Rprop" and "unknown optimizer 'torch.Rpop'" in str(err.value)
    for name in ("torch.optim:SGD", "nnopt.plugins.optimizers.sgd:SGD", "torch.", "torch.optim.SGD"):
        with pytest.raises(PluginError, match="unknown optimizer"):
            registry.load("optimizers", name)
    with pytest.raises(PluginError, match="unknown schedule"):
        registry.load("schedules", "torch.Rprop")


def test_the_fingerprint_names_the_bridged_libraries(bridged):
    pairs = Registry().fingerprint()
    assert ("torch", version("torch")) in pairs and ("pytorch_optimizer", version("pytorch_optimizer")) in pairs
    assert ("nnopt", version("nnopt")) in pairs


def test_a_broken_bridge_breaks_only_its_prefix(dist):
    dist("acme-bridge", {"nnopt.bridges": {"acme": "acme_fake_bridge:BRIDGE", "nope": "acme_missing_module:X"}},
         {"acme_fake_bridge": "BRIDGE = object()\n"})
    registry = Registry()
    with pytest.raises(PluginError, match="has no names"):
        registry.load("optimizers", "acme.x")
    with pytest.raises(PluginError, match="failed to load.*ModuleNotFoundError"):
        registry.load("optimizers", "nope.x")
    assert registry.load("optimizers", "sgd")[0].__name__ == "SGD"
    assert "sgd" in {e.name for e in registry.entries("optimizers", bridged=True)}


def test_a_third_party_bridge(dist):
    dist("acme-bridge2", {"nnopt.bridges": {"acme": "acme_fake_bridge2:Bridge"}}, {"acme_fake_bridge2": '''
        from nnopt.api import Optimizer

        class Bridge:
            distribution = "acme-bridge2"

            @staticmethod
            def names(kind):
                return ["one"] if kind == "optimizers" else []

            @staticmethod
            def load(kind, name):
                class One(Optimizer):
                    """θ ← θ."""
                return One
    '''})
    registry = Registry()
    cls, entry = registry.load("optimizers", "acme.one")
    assert cls.__name__ == "One" and entry.provider == "acme-bridge2 1.0" and entry.bridge == "acme"


PIPELINE = """\
name: bridged
seed: 0
device: cpu
data: {{name: synthetic, task: gaussian_mixture, n_train: 64, n_test: 32, dim: 4, batch_size: 16}}
model:
  arch: {{name: mlp, widths: [8]}}
loss: cross_entropy
stages:
  train:
    kind: train
    optimizer: {optimizer}
    steps: 4
"""


def test_a_pipeline_names_a_bridged_optimizer_and_its_key_has_the_library_version(bridged, tmp_path):
    from nnopt.core.planner import load_plans

    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.format(optimizer="{name: torch.Rprop, lr: 0.01, etas: [0.4, 1.3]}"))
    stage = load_plans(path)[0].stages[0]
    assert stage.providers["optimizers/torch.Rprop"] == f"torch {version('torch')}"
    assert stage.key_payload["providers"]["optimizers/torch.Rprop"] == f"torch {version('torch')}"
    assert stage.key_payload["code"]["optimizers/torch.Rprop"]  # the bridge module's digest
    assert stage.key_payload["spec"]["optimizer"]["etas"] == [0.4, 1.3]


def test_an_unknown_key_of_a_bridged_optimizer_is_a_located_error(bridged, tmp_path):
    from nnopt.core.errors import SpecError
    from nnopt.core.planner import load_plans

    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.format(optimizer="{name: torch.Rprop, lrr: 0.01}"))
    with pytest.raises(SpecError) as err:
        load_plans(path)
    assert f"{path}:11" in str(err.value) and "lrr" in str(err.value)


def test_describe_a_bridged_optimizer(bridged):
    from nnopt.core.describe import describe_component

    text = describe_component(Registry(), "optimizers", "torch.Rprop")
    assert text.startswith(f"optimizer 'torch.Rprop' — torch {version('torch')}")
    assert "Implements the resilient backpropagation algorithm." in text and "Bridged from" in text
    assert "etas" in text and "list[float]" in text


def test_nnopt_list_shows_bridged_names_only_with_the_flag(bridged):
    from click.testing import CliRunner

    from nnopt.cli import main

    plain = CliRunner().invoke(main, ["list", "optimizers"])
    flagged = CliRunner().invoke(main, ["list", "optimizers", "--bridged"])
    assert plain.exit_code == 0 and flagged.exit_code == 0
    assert "torch.Rprop" not in plain.stdout and "torch.Rprop" in flagged.stdout
    assert "pytorch_optimizer.adan" in flagged.stdout and "sgd" in flagged.stdout
