"""Fixtures shared by every test directory.

- ``run_cli(*args, env=None, cwd=None)``: ``python -m nnopt ARGS`` in a subprocess; use it where
  process isolation matters (what a command imports, plugins put on ``PYTHONPATH``).
- ``invoke(*args)``: the same command in this process through click's ``CliRunner`` (torch is
  imported once per session, so a table of bad specs costs milliseconds a row).
- ``store``: a store directory *path* that does not exist yet, so a test can assert that a
  failed command left no store behind.
- ``write_pipeline(text, name="pipeline.yaml")``: writes dedented YAML into ``tmp_path``.
- ``plugin_env(*names)``: installs the fixture plugins of ``tests/fixtures/plugins/<name>``
  (once per session each) into private ``--target`` directories and returns an environment
  whose ``PYTHONPATH`` holds them. ``importlib.metadata`` scans ``sys.path``, so a subprocess
  with that environment sees their entry points; the global environment is never modified.
  ``demo_env``, ``clash_env`` and ``broken_env`` are the three single-plugin environments.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

# Under pytest-xdist (`-n`, the default: pyproject's addopts) each worker is one of several
# processes computing at once: give each its share of the cores before torch loads (its
# subprocesses inherit it), or their OpenMP teams outnumber the cores and every test slows
# down many times over (nnopt.core.cpu_share). A value the user set is kept.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT") and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

REPO = Path(__file__).resolve().parents[1]
FIXTURE_PLUGINS = REPO / "tests" / "fixtures" / "plugins"


@pytest.fixture(autouse=True, scope="session")
def _private_cpu_share_registry(tmp_path_factory: pytest.TempPathFactory):
    """The suite's nnopt runs share the CPU among themselves only: another test session on
    the machine must not change this one's thread counts (which can change result bits)."""
    # ... and the schema cache (``core.schema_cache``) of the suite is its own, not the user's
    private = {"NNOPT_RUNTIME_DIR": tmp_path_factory.mktemp("nnopt-runtime"),
               "XDG_CACHE_HOME": tmp_path_factory.mktemp("xdg-cache")}
    old = {name: os.environ.get(name) for name in private}
    os.environ.update({name: str(path) for name, path in private.items()})
    yield
    for name, value in old.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@dataclass
class CliResult:
    """What a CLI run left behind (subprocess or in-process alike)."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def exit_code(self) -> int:  # the name click's Result uses
        return self.returncode

    def __str__(self) -> str:  # shown by a failing assert: everything needed to see why
        return (f"nnopt {' '.join(self.args)} -> exit {self.returncode}\n"
                f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}")


def _base_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["NNOPT_HOME"] = str(home)  # a store the test did not name never lands in the repo
    env.setdefault("PYTHONHASHSEED", "0")
    return env


@pytest.fixture
def run_cli(tmp_path: Path):
    """``run_cli(*args, env=None, cwd=None, timeout=180) -> CliResult`` (a subprocess).

    ``env`` is laid over this process's environment (a ``plugin_env`` result fits as is);
    ``cwd`` defaults to ``tmp_path``.
    """

    def run(*args: str, env: dict[str, str] | None = None, cwd: str | Path | None = None, timeout: float = 180) -> CliResult:
        full_env = _base_env(tmp_path / "nnopt_home")
        if env:
            full_env.update(env)
        argv = [str(a) for a in args]
        proc = subprocess.run(
            [sys.executable, "-m", "nnopt", *argv],
            cwd=str(cwd or tmp_path),
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return CliResult(argv, proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture
def invoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``invoke(*args) -> CliResult``: the CLI in this process through click's ``CliRunner``.

    Only exceptions the CLI lets escape propagate (none should: a spec error is exit 2).
    """
    from click.testing import CliRunner

    from nnopt.cli import main

    monkeypatch.setenv("NNOPT_HOME", str(tmp_path / "nnopt_home"))
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> CliResult:
        argv = [str(a) for a in args]
        result = CliRunner().invoke(main, argv, catch_exceptions=False)
        return CliResult(argv, result.exit_code, result.stdout, result.stderr)

    return run


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store directory for ``--store``; not created, so tests can see whether a run made it."""
    return tmp_path / "store"


@pytest.fixture
def write_pipeline(tmp_path: Path):
    """``write_pipeline(text, name="pipeline.yaml") -> Path``: ``text`` dedented, in ``tmp_path``."""

    def write(text: str, name: str = "pipeline.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


# ---------------------------------------------------------------------------------- plugins
def _install_plugin(name: str, root: Path) -> Path:
    """``pip install --no-deps --no-build-isolation --no-index --target`` of one fixture plugin.

    The sources are copied first: pip builds in the source tree, and build/ or *.egg-info left
    in tests/fixtures would be found by importlib.metadata whenever that directory is on sys.path.
    """
    src = FIXTURE_PLUGINS / name
    if not (src / "pyproject.toml").is_file():
        raise FileNotFoundError(f"no fixture plugin at {src}")
    build_src = root / "src"
    target = root / "site"
    shutil.copytree(src, build_src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
           "--disable-pip-version-check", "--target", str(target), str(build_src)]
    env = dict(os.environ, PIP_ROOT_USER_ACTION="ignore", PIP_NO_INPUT="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"installing fixture plugin '{name}' failed (exit {proc.returncode}):\n"
                    f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    return target


@pytest.fixture(scope="session")
def plugin_env(tmp_path_factory: pytest.TempPathFactory):
    """``plugin_env(*names) -> env``: this environment with the named fixture plugins on PYTHONPATH."""
    installed: dict[str, Path] = {}

    def make(*names: str) -> dict[str, str]:
        for name in names:
            if name not in installed:
                installed[name] = _install_plugin(name, tmp_path_factory.mktemp(f"plugin-{name}"))
        paths = [str(installed[n]) for n in names]
        if os.environ.get("PYTHONPATH"):
            paths.append(os.environ["PYTHONPATH"])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
        env.pop("NNOPT_HOME", None)  # run_cli points it at the test's own tmp_path
        return env

    return make


@pytest.fixture(scope="session")
def demo_env(plugin_env) -> dict[str, str]:
    """``nnopt-demo-plugin`` installed: optimizer ``demo_signsgd``, analyzer ``demo_weight_norm``."""
    return plugin_env("demo")


@pytest.fixture(scope="session")
def clash_env(plugin_env) -> dict[str, str]:
    """``nnopt-clash-plugin`` installed: a second optimizer named ``sgd``."""
    return plugin_env("clash")


@pytest.fixture(scope="session")
def broken_env(plugin_env) -> dict[str, str]:
    """``nnopt-broken-plugin`` installed: analyzer ``broken_probe`` whose module fails to import."""
    return plugin_env("broken")
