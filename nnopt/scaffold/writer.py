"""``nnopt new-plugin``: write a plugin distribution into a new directory.

Everything is written into a hidden sibling directory first and renamed into place at the
end, so that a failure leaves no half-written plugin; an existing directory is never touched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from . import project
from .catalog import DEFAULT_KINDS, EXAMPLES
from .names import ScaffoldError, check_kinds, package_name


def plugin_files(name: str, kinds: list[str]) -> dict[str, str]:
    """Relative path -> text of every file of the plugin ``name`` with one component per kind."""
    package = package_name(name)
    files = {
        "pyproject.toml": project.pyproject(name, package, kinds),
        "README.md": project.readme(name, package, kinds),
        "pipeline.yaml": project.pipeline_yaml(package, kinds),
        "tests/test_plugin.py": project.test_module(package, kinds),
        f"{package}/__init__.py": project.package_init(name, kinds),
    }
    for kind in kinds:
        files[f"{package}/{EXAMPLES[kind].module}.py"] = EXAMPLES[kind].source()
    return files


def scaffold(name: str, kinds: tuple[str, ...] | list[str] = (), parent: str | Path = ".") -> Path:
    """Create ``parent/name`` holding the plugin; returns its path. Raises ``ScaffoldError``
    (nothing written) for a bad name or kind, or when ``parent/name`` already exists."""
    package_name(name)
    chosen = check_kinds(list(kinds) or list(DEFAULT_KINDS))
    parent = Path(parent)
    target = parent / name
    if target.exists() or target.is_symlink():
        raise ScaffoldError(f"{target} already exists; nothing was written (choose another --dir or name)")
    if parent.exists() and not parent.is_dir():
        raise ScaffoldError(f"--dir {parent} is not a directory")
    files = plugin_files(name, chosen)
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=parent))
    try:
        for rel, text in files.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        os.rename(staging, target)  # fails rather than merge if target appeared meanwhile
    except OSError as err:
        shutil.rmtree(staging, ignore_errors=True)
        if target.exists():
            raise ScaffoldError(f"{target} already exists; nothing was written") from None
        raise ScaffoldError(f"cannot write {target}: {err.strerror or err}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.chmod(target, 0o777 & ~_umask())  # mkdtemp made it private; a plugin directory is not
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
