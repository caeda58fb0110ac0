"""A digest of a component's source code, part of every stage key that uses it (SPEC §6).

``cache_version`` is bumped by hand, and people forget; an editable install changes code
without changing its distribution's version. So a stage key also covers the source of each
component: the file of the class's module and, transitively, every module of the same
top-level package that it imports (a helper module edited changes the result as much as
the class's own file). Imports are found statically with ``ast``, and module names are
mapped to files through the package's directories, so nothing is imported here.

The engine's own modules (``nnopt``, ``nnopt.api``, ``nnopt.core.*``) are left out: they
are covered by nnopt's version and ``KEY_SCHEMA``, and including them would recompute
every stage on any edit of the engine.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys
from pathlib import Path

#: modules that are the engine, not a component: never part of a component's digest
_ENGINE = ("nnopt", "nnopt.api", "nnopt.cli", "nnopt.__main__")
_ENGINE_PACKAGES = ("nnopt.core",)

# per-process caches, keyed by (path, mtime_ns, size): an edited file is read again
_imports_cache: dict[tuple[str, int, int], list[tuple[str, list[str]]]] = {}
_sha_cache: dict[tuple[str, int, int], str] = {}


def _is_engine(module: str) -> bool:
    return module in _ENGINE or any(module == p or module.startswith(p + ".") for p in _ENGINE_PACKAGES)


def _state(path: str) -> tuple[str, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_mtime_ns, st.st_size)


def _file_sha256(path: str) -> str:
    state = _state(path)
    if state is None:  # vanished since it was found: a digest that matches no real file
        return "missing"
    if state not in _sha_cache:
        _sha_cache[state] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return _sha_cache[state]


class _Package:
    """Where the modules of one top-level package live, to map dotted names to files."""

    def __init__(self, top: str):
        self.top = top
        module = sys.modules.get(top)
        file = getattr(module, "__file__", None)
        paths = list(getattr(module, "__path__", None) or [])
        if paths:  # a package (a namespace package may have several directories)
            self.roots = [str(Path(p).parent) for p in paths]
            self.dirs = [str(p) for p in paths]
        else:  # a single top-level module: nothing else belongs to it
            self.roots = [str(Path(file).parent)] if file else []
            self.dirs = []
        self.single_file = None if paths else file

    def file_of(self, module: str) -> str | None:
        """The source file of ``module`` (a dotted name inside this package), if it has one."""
        parts = module.split(".")
        if parts[0] != self.top:
            return None
        if len(parts) == 1:
            if self.single_file:
                return self.single_file
            candidates = [os.path.join(d, "__init__.py") for d in self.dirs]
        else:
            rest = os.path.join(*parts[1:])
            candidates = [c for d in self.dirs for c in (os.path.join(d, rest + ".py"), os.path.join(d, rest, "__init__.py"))]
        return next((c for c in candidates if os.path.isfile(c)), None)

    def relative(self, path: str) -> str:
        """``path`` relative to the directory holding the package: the same for every copy
        of an installation, so that a digest does not depend on where it is installed."""
        for root in self.roots:
            try:
                return Path(path).relative_to(root).as_posix()
            except ValueError:
                continue
        return Path(path).name


def _module_name(package: _Package, path: str) -> tuple[str, bool]:
    """The dotted name of the module in ``path``, and whether it is a package (``__init__``)."""
    rel = package.relative(path)
    parts = rel.removesuffix(".py").split("/")
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def _imports(path: str) -> list[tuple[str, list[str]]]:
    """Every import statement of a source file, anywhere in it (functions included), as
    ``(module, names)``; relative imports keep their leading dots. Not Python source (an
    extension module, bytecode): no imports to follow."""
    state = _state(path)
    if state is None or not path.endswith(".py"):
        return []
    if state not in _imports_cache:
        try:
            tree = ast.parse(Path(path).read_bytes(), filename=path)
        except (SyntaxError, ValueError, OSError):
            tree = ast.Module(body=[], type_ignores=[])
        found: list[tuple[str, list[str]]] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(alias.name, []) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                found.append(("." * node.level + (node.module or ""), [alias.name for alias in node.names]))
        _imports_cache[state] = found
    return _imports_cache[state]


def _absolute(module: str, importer: str, importer_is_package: bool) -> str | None:
    """``module`` as an absolute dotted name, resolving leading dots against ``importer``."""
    level = len(module) - len(module.lstrip("."))
    if not level:
        return module
    base = importer.split(".") if importer_is_package else importer.split(".")[:-1]
    if level - 1 >= len(base):
        return None  # above the top-level package: not importable, nothing to follow
    base = base[: len(base) - (level - 1)]
    rest = module[level:]
    return ".".join(base + ([rest] if rest else [])) or None


def source_files(cls: type) -> list[str]:
    """The source file of ``cls``'s module, then (sorted) the files of every module of its
    own top-level package that it imports, transitively; engine modules are left out.

    Absolute paths; ``[]`` for a class whose module has no file (defined interactively)."""
    module = sys.modules.get(cls.__module__)
    own = getattr(module, "__file__", None)
    if not own:
        return []
    own = os.path.abspath(own)
    package = _Package(cls.__module__.split(".")[0])
    seen = {own}
    pending = [own]
    while pending:
        path = pending.pop()
        importer, is_package = _module_name(package, path)
        for module_text, names in _imports(path):
            target = _absolute(module_text, importer, is_package)
            if target is None or target.split(".")[0] != package.top:
                continue
            # `from pkg import sub` imports the package and, if there is one, submodule `sub`
            for name in [target] + [f"{target}.{n}" for n in names if n != "*"]:
                if _is_engine(name):
                    continue
                file = package.file_of(name)
                if file is not None:
                    file = os.path.abspath(file)
                    if file not in seen:
                        seen.add(file)
                        pending.append(file)
    return [own] + sorted(seen - {own})


def code_digest(cls: type) -> str:
    """SHA-256 over the sorted ``(name relative to the package's directory, file SHA-256)``
    pairs of ``source_files(cls)``: equal for equal code wherever it is installed."""
    files = source_files(cls)
    package = _Package(cls.__module__.split(".")[0])
    pairs = sorted((package.relative(f), _file_sha256(f)) for f in files)
    return hashlib.sha256("\n".join(f"{name}\t{sha}" for name, sha in pairs).encode("utf-8")).hexdigest()
