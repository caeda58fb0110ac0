"""The installed package: one importable name, a console script, `python -m nnopt`."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import nnopt


def test_nothing_named_core_or_plugins_is_installed_at_top_level(tmp_path):
    # in a fresh interpreter outside the checkout (pytest puts tests/ itself on sys.path)
    probe = "import importlib.util as u; print([n for n in ('core', 'plugins', 'nnopt.core', 'nnopt.plugins') if u.find_spec(n)])"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert done.stdout.strip() == "['nnopt.core', 'nnopt.plugins']"


def test_python_dash_m_nnopt_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "nnopt", "--help"], capture_output=True, text=True, check=True)
    assert "run" in done.stdout and "describe" in done.stdout


def test_the_package_version_is_the_distribution_version():
    assert nnopt.__version__ == version("nnopt")
