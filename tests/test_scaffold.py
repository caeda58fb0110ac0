"""``nnopt new-plugin``: the scaffolded distribution installs, registers its components, and
its own test (a pipeline run through the nnopt CLI) passes; bad input is exit 2, nothing written.

The end-to-end tests install the plugin as ``tests/conftest.py``'s ``plugin_env`` installs the
fixture plugins: ``pip install --no-deps --no-build-isolation --no-index --target`` of a copy
of the sources, then subprocesses with the target on ``PYTHONPATH`` (the global environment
is never modified).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nnopt.scaffold.catalog import EXAMPLES
from nnopt.scaffold.writer import plugin_files

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the scaffold itself needs no TOML reader


def _install(src: Path, root: Path) -> dict[str, str]:
    """Install the plugin at ``src`` into ``root/site``; an environment that sees it."""
    build_src, target = root / "build-src", root / "site"
    # pip builds in the source tree: build/ and *.egg-info there would be found on sys.path
    shutil.copytree(src, build_src)
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
           "--disable-pip-version-check", "--target", str(target), str(build_src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PIP_ROOT_USER_ACTION="ignore", PIP_NO_INPUT="1"))
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    paths = [str(target)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    env.pop("PYTEST_ADDOPTS", None)  # the plugin's own pytest run takes its own options
    return env


def test_two_kinds_scaffold_install_and_pass_their_own_test(invoke, run_cli, tmp_path: Path) -> None:
    made = invoke("new-plugin", "nnopt-mine", "--kind", "optimizers", "--kind", "analyzers", "--dir", "plugins")
    assert made.exit_code == 0, made
    src = tmp_path / "plugins" / "nnopt-mine"
    assert sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()) == [
        "README.md", "nnopt_mine/__init__.py", "nnopt_mine/analyzer.py", "nnopt_mine/optimizer.py",
        "pipeline.yaml", "pyproject.toml", "tests/test_plugin.py"]
    env = _install(src, tmp_path)

    # the plugin's own test: its components listed, its pipeline run (and cached) through the CLI
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=src, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout

    for kind, name in (("optimizers", "nnopt_mine_scaled_sgd"), ("analyzers", "nnopt_mine_weight_norm")):
        listed = run_cli("list", kind, env=env)
        assert listed.returncode == 0, listed
        assert any(line.split()[1:3] == [name, "nnopt-mine"] for line in listed.stdout.splitlines()), listed
    described = run_cli("describe", "optimizers", "nnopt_mine_scaled_sgd", env=env)
    assert described.returncode == 0 and "(1 − β)" in described.stdout, described


def test_every_kind_scaffolds_a_working_component(invoke, run_cli, tmp_path: Path) -> None:
    """One plugin with a component of every kind: each is registered, and the example
    pipeline, which uses them all, runs."""
    args = [a for kind in EXAMPLES for a in ("--kind", kind)]
    assert invoke("new-plugin", "every-kind", *args).exit_code == 0
    env = _install(tmp_path / "every-kind", tmp_path)
    listed = run_cli("list", "--json", env=env)
    found = {(e["kind"], e["name"]) for e in json.loads(listed.stdout)}
    assert {(k, e.registered_name("every_kind")) for k, e in EXAMPLES.items()} <= found
    done = run_cli("run", tmp_path / "every-kind" / "pipeline.yaml", "--json", env=env)
    assert done.returncode == 0, done
    stages = json.loads(done.stdout)["stages"]
    assert set(stages) == {"train", "probe", "prune", "kernel", "stats"}
    assert all(s["status"] == "ran" for s in stages.values()), stages
    assert stages["train"]["metrics"]["test_accuracy"] > 0.5  # 3 blobs: chance is 1/3
    assert stages["prune"]["metrics"]["weights_remaining"] == pytest.approx(0.5, abs=0.01)


def test_generated_files_are_valid_python_and_toml() -> None:
    files = plugin_files("nnopt-x", list(EXAMPLES))
    meta = tomllib.loads(files["pyproject.toml"])
    groups = meta["project"]["entry-points"]
    assert set(groups) == {f"nnopt.{k}" for k in EXAMPLES}
    for kind, example in EXAMPLES.items():
        assert groups[f"nnopt.{kind}"] == {example.registered_name("nnopt_x"): example.entry_point("nnopt_x")}
    for path, text in files.items():
        if path.endswith(".py"):
            tree = ast.parse(text, filename=path)
            assert ast.get_docstring(tree), f"{path} has no module docstring"
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    assert ast.get_docstring(node), f"{path}: class {node.name} has no docstring"
    for example in EXAMPLES.values():  # the component's docstring states what it computes
        tree = ast.parse(example.source())
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == example.cls)
        assert "=" in ast.get_docstring(cls), f"{example.kind}: {example.cls}'s docstring states no equation"


@pytest.mark.parametrize("name, message", [
    ("Bad.Name", "is not a plugin name"),
    ("1plugin", "is not a plugin name"),
    ("trailing-", "no leading, trailing or doubled"),
    ("import", "cannot be a plugin's package name"),
    ("nnopt", "cannot be a plugin's package name"),
    ("x" * 65, "at most 64"),
])
def test_a_bad_name_is_exit_2(invoke, tmp_path: Path, name: str, message: str) -> None:
    result = invoke("new-plugin", name)
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.stderr, result
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_kind_is_exit_2_with_a_suggestion(invoke, tmp_path: Path) -> None:
    result = invoke("new-plugin", "ok", "--kind", "optimizers", "--kind", "analysers")
    assert result.exit_code == 2, result
    assert "unknown kind 'analysers' (did you mean 'analyzers'?)" in result.stderr
    assert not (tmp_path / "ok").exists()
    assert invoke("new-plugin", "ok", "--kind", "optimizer", "--kind", "nnopt.loss").exit_code == 0  # as `nnopt list`
    assert sorted(p.name for p in (tmp_path / "ok" / "ok").iterdir()) == ["__init__.py", "loss.py", "optimizer.py"]


def test_an_existing_directory_is_never_overwritten(invoke, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    result = invoke("new-plugin", "taken")
    assert result.exit_code == 2 and "already exists" in result.stderr, result
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no staging directory left behind


def test_default_kinds_are_an_optimizer_and_an_analyzer(invoke, tmp_path: Path) -> None:
    result = invoke("new-plugin", "plain")
    assert result.exit_code == 0, result
    groups = tomllib.loads((tmp_path / "plain" / "pyproject.toml").read_text())["project"]["entry-points"]
    assert set(groups) == {"nnopt.optimizers", "nnopt.analyzers"}
