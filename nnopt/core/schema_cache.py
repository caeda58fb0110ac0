"""A cache of ``nnopt schema``'s output, so that an editor's call returns in a fraction of a second.

Generating the schema imports every installed component, and so torch (~2 s); the result
can only change when the components' code or the installed distributions change. So it is
kept in ``$XDG_CACHE_HOME/nnopt/schema/`` (default ``~/.cache``) under a digest of: the
Python, nnopt and pydantic versions, every entry point and bridge with its distribution
and version, and the state (size, mtime) of every ``.py`` file in the directories of the
top-level packages that provide components (nnopt's own included: an edit of an editable
install changes no version). Nothing is imported to compute it. A cache that cannot be
read or written is simply not used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from .registry import Registry

#: schemas kept in the cache directory (one per environment or code state in use)
_KEEP = 4


def cache_dir() -> Path:
    """Where cached schemas live: ``$XDG_CACHE_HOME/nnopt/schema`` (default ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nnopt" / "schema"


def cached_schema(registry: Registry, generate: Callable[[Registry], dict[str, Any]]) -> dict[str, Any]:
    """``generate(registry)``, or the schema it returned last time for the same code."""
    try:
        path = cache_dir() / f"{_digest(registry)}.json"
    except Exception:  # an odd installation (unreadable metadata): no cache, still a schema
        return generate(registry)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    schema = generate(registry)
    if not schema.get("x-nnopt-unloaded"):  # a plugin that failed to load may load next time
        _write(path, schema)
    return schema


def _write(path: Path, schema: dict[str, Any]) -> None:
    """Atomically, then drop all but the newest few entries; any failure leaves no cache."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(schema), encoding="utf-8")
        os.replace(tmp, path)
        entries = sorted(path.parent.glob("*.json"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for old in entries[_KEEP:]:
            old.unlink(missing_ok=True)
    except OSError:
        tmp.unlink(missing_ok=True)


def _digest(registry: Registry) -> str:
    from nnopt import __version__

    state: list[Any] = [sys.version, __version__, _version("pydantic"), registry.fingerprint()]
    state += [(e.kind, e.name, e.value, e.dist, e.version) for e in registry.entries()]
    state += [(b.prefix, b.value, b.dist, b.version) for b in registry.bridges()]
    tops = {"nnopt"} | {e.value.partition(":")[0].split(".")[0] for e in registry.entries()}
    tops |= {b.value.partition(":")[0].split(".")[0] for b in registry.bridges()}
    for top in sorted(tops):
        state.append((top, _source_state(top)))
    return hashlib.sha256(json.dumps(state, default=str).encode("utf-8")).hexdigest()[:32]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def _source_state(top: str) -> list[Any]:
    """``(path, size, mtime)`` of every ``.py`` file of top-level package ``top``, found
    without importing it (``find_spec`` of a top-level name imports nothing)."""
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return ["missing"]
    if spec is None:
        return ["missing"]
    roots = list(spec.submodule_search_locations or [])
    files = [spec.origin] if not roots and spec.origin else []
    for root in roots:
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            files += [os.path.join(folder, n) for n in sorted(names) if n.endswith(".py")]
    out = []
    for file in files:
        try:
            st = os.stat(file)
            out.append((file, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((file, None, None))
    return out
