"""Source-aware keys: a component's key covers its source and the helper modules it imports.

The unit tests build a throwaway package in ``tmp_path`` (a fresh name per test, so that
``sys.modules`` never holds a stale copy); the end-to-end test edits a private copy of the
installed demo plugin and runs ``nnopt`` in subprocesses, as a plugin author would.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from conftest import SIGNSGD, statuses

from nnopt.core.code_digest import code_digest, source_files


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``package(files) -> (name, root)``: writes ``{relative path: source}`` (``PKG`` in the
    source stands for the package's name) as a fresh package under ``tmp_path/site``."""
    site = tmp_path / "site"
    monkeypatch.syspath_prepend(str(site))

    def make(files: dict[str, str]) -> tuple[str, Path]:
        name = f"throwaway_{uuid.uuid4().hex[:10]}"
        root = site / name
        for rel, text in {"__init__.py": "", **files}.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(textwrap.dedent(text).replace("PKG", name))
        importlib.invalidate_caches()
        return name, root

    return make


COMPONENT = {
    "comp.py": """\
        import json                                  # not in the package: not followed
        import PKG.absolute_helper                   # absolute, inside the package
        from nnopt.api import Optimizer              # the engine: not part of the digest
        from . import sibling                        # a submodule named by `from . import`
        from .sub.deep import CONSTANT               # relative, into a subpackage

        def late():
            from .lazy import VALUE                  # an import inside a function counts too
            return VALUE

        class Comp(Optimizer):
            cache_version = 1
        """,
    "absolute_helper.py": "X = 1\n",
    "sibling.py": "from .transitive import Y  # imported by a helper: part of the digest\n",
    "transitive.py": "Y = 2\n",
    "sub/__init__.py": "",
    "sub/deep.py": "CONSTANT = 3\n",
    "lazy.py": "VALUE = 4\n",
    "unrelated.py": "Z = 5  # imported by nothing\n",
}


def test_source_files_are_the_module_and_what_it_imports_from_its_package_transitively(package):
    name, root = package(COMPONENT)
    comp = importlib.import_module(f"{name}.comp").Comp
    files = source_files(comp)
    assert files[0] == str(root / "comp.py")
    assert set(files) >= {str(root / rel) for rel in ("absolute_helper.py", "sibling.py", "transitive.py", "sub/deep.py", "lazy.py")}
    assert str(root / "unrelated.py") not in files
    nnopt_dir = Path(importlib.import_module("nnopt").__file__).parent
    assert not [f for f in files if Path(f).is_relative_to(nnopt_dir)]  # the engine is covered by nnopt's version


def test_the_digest_changes_with_the_module_and_a_helper_it_imports_but_not_with_another_file(package):
    name, root = package(COMPONENT)
    comp = importlib.import_module(f"{name}.comp").Comp
    original = code_digest(comp)
    assert code_digest(comp) == original and len(original) == 64

    with open(root / "unrelated.py", "a") as f:
        f.write("# an edit nothing imports\n")
    assert code_digest(comp) == original

    for rel in ("comp.py", "transitive.py", "sub/deep.py"):
        before = (root / rel).read_text()
        (root / rel).write_text(before + "# edited\n")
        assert code_digest(comp) != original, rel
        (root / rel).write_text(before)
        assert code_digest(comp) == original, rel  # the bytes, not the file's time, are digested


def test_a_digest_does_not_depend_on_where_the_package_is_installed(package, tmp_path):
    name, root = package(COMPONENT)
    other = tmp_path / "elsewhere"
    shutil.copytree(root.parent, other)
    probe = f"from nnopt.core.code_digest import code_digest; from {name}.comp import Comp; print(code_digest(Comp))"
    digests = []
    for site in (root.parent, other):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
        digests.append(done.stdout.strip())
    assert digests[0] == digests[1] == code_digest(importlib.import_module(f"{name}.comp").Comp)


# ------------------------------------------------------------------ end to end: an edited plugin
def test_editing_a_plugins_module_or_a_helper_it_imports_recomputes_but_another_file_does_not(run_cli, editable_demo, tmp_path):
    package, env = editable_demo
    (package / "_helper.py").write_text("ALPHA = 1.0\n")
    (package / "notes.py").write_text("NOTE = 'imported by nothing'\n")
    module = package / "signsgd.py"
    module.write_text(module.read_text().replace("from nnopt.api import Optimizer, Params\n",
                                                 "from nnopt.api import Optimizer, Params\n\nfrom ._helper import ALPHA  # noqa: F401\n"))
    path = tmp_path / "signsgd.yaml"
    path.write_text(SIGNSGD)
    store = tmp_path / "store"

    def run(*command: str) -> dict:
        result = run_cli(*(command or ("run",)), path, "--store", store, "--json", env=env)
        assert result.returncode == 0, result
        return json.loads(result.stdout)

    def append(file: Path, line: str) -> None:  # a real edit: the cache_version stays as it is
        file.write_text(file.read_text() + line)

    first = run()
    assert statuses(first) == {"train": "ran"}
    assert statuses(run()) == {"train": "cached"}

    append(package / "notes.py", "# edited\n")
    unrelated = run()
    assert statuses(unrelated) == {"train": "cached"}
    assert unrelated["stages"]["train"]["key"] == first["stages"]["train"]["key"]

    append(package / "_helper.py", "BETA = 2.0  # a helper the optimizer imports changed\n")
    (planned,) = run("plan")["stages"]
    assert planned["reason"] == "key changed: code of optimizers/demo_signsgd"
    helper = run()
    assert statuses(helper) == {"train": "ran"}
    assert helper["stages"]["train"]["key"] == planned["key"] != first["stages"]["train"]["key"]

    append(module, "# the optimizer's own module changed\n")
    own = run()
    assert statuses(own) == {"train": "ran"}
    assert own["stages"]["train"]["key"] not in (first["stages"]["train"]["key"], helper["stages"]["train"]["key"])
