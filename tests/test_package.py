"""The installed package: one importable name, a console script, `python -m nnopt`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from importlib.metadata import version

import nnopt


def test_nothing_named_core_or_plugins_is_installed_at_top_level():
    assert importlib.util.find_spec("core") is None
    assert importlib.util.find_spec("plugins") is None
    assert importlib.util.find_spec("nnopt.core") is not None and importlib.util.find_spec("nnopt.plugins") is not None


def test_python_dash_m_nnopt_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "nnopt", "--help"], capture_output=True, text=True, check=True)
    assert "run" in done.stdout and "describe" in done.stdout


def test_the_package_version_is_the_distribution_version():
    assert nnopt.__version__ == version("nnopt")
