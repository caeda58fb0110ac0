"""The plan index: a fully cached pipeline answers without importing torch or any plugin.

Planning a pipeline imports its components (and so torch, ~2 s). But when nothing about a
pipeline changed, its stage keys cannot have changed either, so the keys computed last time
are stored under a digest of everything they were computed from: the file's bytes, the
``--set`` overrides, nnopt's version, every plugin distribution and its version, whether
a GPU is visible (``device: auto``) and the working directory. A hit whose stages are all
complete in the store is reported as cached straight from their ``result.json`` files. The
data files that components read and the source files of the components used are checked
(size, mtime, inode, ctime); any change falls back to planning.

A stage's artifacts are used only when they match their manifest's checksums. Hashing them
all would cost more than the rest of a cached run, so the entry keeps the state (size,
mtime, inode, ctime) of every artifact and manifest of the stages it names, as they were
when the run that wrote the entry had verified them; a hit compares those by ``stat``
only, and any difference falls back to the slow path, which hashes them in full.
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


def _stat(path: str | Path) -> list[Any]:
    """What changes when a file is edited or replaced: size, mtime, and inode and ctime,
    which ``touch -r`` / ``cp -p`` cannot set back."""
    try:
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
    except OSError:
        return [None, None, None, None]


def _file_state(path: str) -> list[Any]:
    return [path, *_stat(path)]


def _stage_files(store: Store, key: str) -> list[str] | None:
    """The manifest and every artifact of a complete stage, relative to its directory."""
    try:
        return ["manifest.json", *sorted(read_json(store.stage_dir(key) / "manifest.json")["artifacts"])]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(store: Store, key: str, plans: list["Plan"]) -> None:
    """Index the keys of ``plans`` under ``key``, after a run that used (so verified) or
    wrote every one of their stages; the state of each stage's files is recorded now."""
    artifacts = {}
    for s in (s for p in plans for s in p.stages):
        files = _stage_files(store, s.key)
        if files is None:  # not complete after all: an entry could never hit
            return
        artifacts[s.key] = [[rel, *_stat(store.stage_dir(s.key) / rel)] for rel in files]
    write_json(store.index_path(key), {
        "pipeline": plans[0].name,
        "file": plans[0].file,
        "runs": [{"params": p.params, "stages": [{"id": s.id, "key": s.key} for s in p.stages]} for p in plans],
        "watched": [_file_state(f) for p in plans for f in p.watched_files],
        "artifacts": artifacts,
    })


def lookup(store: Store, key: str) -> dict[str, Any] | None:
    """The index entry if no watched file changed and every file of every stage it names is
    as it was when the entry was written (by ``stat``: no file is read)."""
    path = store.index_path(key)
    if not path.is_file():
        return None
    try:
        entry = read_json(path)
        artifacts = entry["artifacts"]
        keys = {s["key"] for run in entry["runs"] for s in run["stages"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if any(_file_state(f[0]) != f for f in entry.get("watched", [])):
        return None
    for stage_key in keys:
        files = artifacts.get(stage_key) if isinstance(artifacts, dict) else None
        if not files or any(_stat(store.stage_dir(stage_key) / f[0]) != f[1:] for f in files):
            return None
    return entry
