"""The files of a scaffolded plugin other than its components: pyproject.toml, the package's
``__init__``, the example pipeline, the test that runs it through the nnopt CLI, a README.

Each function returns a file's text; ``writer.scaffold`` decides where it goes.
"""

from __future__ import annotations

import json

from .catalog import EXAMPLES


def pyproject(name: str, package: str, kinds: list[str]) -> str:
    """A setuptools ``pyproject.toml`` registering one entry point per kind (SPEC §3)."""
    groups = "".join(
        f'\n[project.entry-points."nnopt.{k}"]\n'
        f'{EXAMPLES[k].registered_name(package)} = "{EXAMPLES[k].entry_point(package)}"\n' for k in kinds)
    return f"""\
# An nnopt plugin: its components are found through the entry-point groups `nnopt.<kind>`.
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "0.1.0"
description = "nnopt plugin: {', '.join(EXAMPLES[k].registered_name(package) for k in kinds)}"
requires-python = ">=3.10"
dependencies = ["nnopt"]

[project.optional-dependencies]
test = ["pytest>=7"]
{groups}
[tool.setuptools]
packages = ["{package}"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""


def package_init(name: str, kinds: list[str]) -> str:
    """The package's ``__init__.py``: it imports nothing, so that listing stays fast."""
    listed = "\n".join(f"- ``{EXAMPLES[k].module}.{EXAMPLES[k].cls}`` ({k})" for k in kinds)
    return f'''"""{name}: an nnopt plugin.

{listed}

Nothing is imported here: nnopt imports a component's module only when a pipeline uses it.
"""

__version__ = "0.1.0"
'''


def pipeline_yaml(package: str, kinds: list[str]) -> str:
    """A small pipeline (a few seconds on a CPU) that uses every scaffolded component: each
    one takes the place of a built-in (the dataset, the optimizer, ...) or adds a stage."""
    def name(kind: str) -> str:
        return EXAMPLES[kind].registered_name(package)

    has = set(kinds).__contains__
    data = f"{{name: {name('datasets')}, batch_size: 32}}" if has("datasets") else "{name: digits, batch_size: 64}"
    activation = name("activations") if has("activations") else "relu"
    arch = (f"{{name: {name('architectures')}, width: 32, activation: {activation}}}" if has("architectures")
            else f"{{name: mlp, widths: [32], activation: {activation}}}")
    model = [f"  arch: {arch}"]
    if has("initializers"):
        model.append(f"  init: {{name: {name('initializers')}}}")
    if has("normalizers"):
        model.append(f"  norm: {{name: {name('normalizers')}}}")
    optimizer = (f"{{name: {name('optimizers')}, lr: 0.1, momentum: 0.9}}" if has("optimizers")
                 else "{name: sgd, lr: 0.05, momentum: 0.9}")
    schedule = name("schedules") if has("schedules") else "cosine"
    train = ["  train:", "    kind: train", f"    optimizer: {optimizer}", f"    schedule: {schedule}",
             "    steps: 60", "    keep: [0]"]
    if has("analyzers"):
        train.append(f"    track: [{{name: {name('analyzers')}, every: 20}}]")
    stages = train
    if has("analyzers"):
        stages += ["  probe:", "    kind: analyze", "    from: train", f"    analyzers: [{name('analyzers')}]"]
    if has("pruners"):
        stages += ["  prune:", "    kind: prune", "    from: train", f"    method: {{name: {name('pruners')}, fraction: 0.5}}"]
    if has("kernels"):
        stages += ["  kernel:", "    kind: ntk_regression", f"    kernel: {name('kernels')}", "    samples: 200",
                   "    test_samples: 100"]
    if has("stages"):
        stages += ["  stats:", f"    kind: {name('stages')}", "    from: train"]
    loss = name("losses") if has("losses") else "cross_entropy"
    return "\n".join([
        "# The example pipeline of this plugin: `nnopt run pipeline.yaml` (with the plugin installed).",
        f"name: {package.replace('_', '-')}-example",
        "seed: 0",
        "device: cpu",
        f"data: {data}",
        "model:", *model,
        f"loss: {loss}",
        "stages:", *stages,
    ]) + "\n"


def test_module(package: str, kinds: list[str]) -> str:
    """``tests/test_plugin.py``: the components are registered, and the example pipeline runs
    through the nnopt command line (a subprocess: the installed entry points are what it sees)."""
    expected = {k: EXAMPLES[k].registered_name(package) for k in kinds}
    return f'''"""The plugin as nnopt sees it: its components listed, and its example pipeline run.

Run with the plugin installed (`pip install -e .`): `pytest`.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: kind -> the name this plugin registers
COMPONENTS = {json.dumps(expected, indent=4)}


def nnopt(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``nnopt ARGS`` in a subprocess, as a user would type it."""
    return subprocess.run([sys.executable, "-m", "nnopt", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_components_are_registered(tmp_path: Path) -> None:
    listed = nnopt("list", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    found = {{(e["kind"], e["name"]) for e in json.loads(listed.stdout)}}
    assert set(COMPONENTS.items()) <= found


def test_example_pipeline_runs(tmp_path: Path) -> None:
    done = nnopt("run", str(ROOT / "pipeline.yaml"), "--store", str(tmp_path / "store"), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "ok"
    assert all(s["status"] == "ran" for s in result["stages"].values()), result["stages"]
    again = nnopt("run", str(ROOT / "pipeline.yaml"), "--store", str(tmp_path / "store"), "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert all(s["status"] == "cached" for s in json.loads(again.stdout)["stages"].values())
'''


def readme(name: str, package: str, kinds: list[str]) -> str:
    """The plugin's README: what it provides and how to install, try and test it."""
    rows = "\n".join(f"| {k} | `{EXAMPLES[k].registered_name(package)}` | `{EXAMPLES[k].entry_point(package)}` |"
                     for k in kinds)
    return f"""# {name}

A plugin for nnopt, scaffolded by `nnopt new-plugin`.

| kind | name | class |
| --- | --- | --- |
{rows}

```sh
pip install -e '.[test]'          # registers the entry points of pyproject.toml
nnopt list                        # the components above appear, provided by {name}
nnopt describe {kinds[0]} {EXAMPLES[kinds[0]].registered_name(package)}
nnopt run pipeline.yaml           # the example pipeline, which uses every one of them
pytest                            # tests/test_plugin.py: the same through the nnopt CLI
```

Each component is a class with a pydantic `Params` model (the keys a pipeline file may give
it; unknown keys are errors), a `cache_version` (bump it whenever its results change) and a
docstring stating what it computes, which `nnopt describe` shows. A stage's cache key also
covers the source of every module of `{package}` the component imports, so an edit recomputes
the stages that use it. See nnopt's `docs/plugins.md` for each kind's interface.
"""
