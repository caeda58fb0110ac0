"""The plan index: a fully cached pipeline answers without importing torch or any plugin.

Planning a pipeline imports its components (and so torch, ~2 s). But when nothing about a
pipeline changed, its stage keys cannot have changed either, so the keys computed last time
are stored under a digest of everything they were computed from: the file's bytes, the
``--set`` overrides, nnopt's version, every plugin distribution and its version, whether
a GPU is visible (``device: auto``) and the working directory. A hit whose stages are all
complete in the store is reported as cached straight from their ``result.json`` files. The
data files that components read and the source files of the components used are checked
(size, mtime, inode, ctime); any change falls back to planning.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .keys import KEY_SCHEMA, digest
from .store import Store, read_json, write_json

if TYPE_CHECKING:  # pragma: no cover
    from .planner import Plan
    from .registry import Registry


def _gpu_visible() -> list[Any]:
    """A cheap stand-in for ``torch.cuda.is_available()`` that imports nothing."""
    return [os.path.exists("/dev/nvidiactl"), os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("NVIDIA_VISIBLE_DEVICES")]


def index_digest(file: str | Path, sets: list[str], registry: "Registry") -> str:
    from nnopt import __version__

    return digest({
        "key_schema": KEY_SCHEMA,
        "text": Path(file).read_bytes().decode("utf-8", errors="replace"),
        "sets": list(sets),
        "nnopt": __version__,
        "providers": registry.fingerprint(),
        "gpu": _gpu_visible(),
        "cwd": os.getcwd(),  # relative data paths in the file are read from here
    })


def _file_state(path: str) -> list[Any]:
    """What changes when a file is edited or replaced: size, mtime, and inode and ctime,
    which ``touch -r`` / ``cp -p`` cannot set back."""
    try:
        st = os.stat(path)
        return [path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
    except OSError:
        return [path, None, None, None, None]


def save(store: Store, key: str, plans: list["Plan"]) -> None:
    write_json(store.index_path(key), {
        "pipeline": plans[0].name,
        "file": plans[0].file,
        "runs": [{"params": p.params, "stages": [{"id": s.id, "key": s.key} for s in p.stages]} for p in plans],
        "watched": [_file_state(f) for p in plans for f in p.watched_files],
    })


def lookup(store: Store, key: str) -> dict[str, Any] | None:
    """The index entry if every stage it names is complete and no watched file changed."""
    path = store.index_path(key)
    if not path.is_file():
        return None
    try:
        entry = read_json(path)
    except (OSError, ValueError):
        return None
    if any(_file_state(f[0]) != f for f in entry.get("watched", [])):
        return None
    if not all(store.is_complete(s["key"]) for run in entry["runs"] for s in run["stages"]):
        return None
    return entry
