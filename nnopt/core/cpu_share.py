"""Sharing this machine's CPU cores among the nnopt runs live on it, whatever their store.

Two runs whose OpenMP thread teams together outnumber the cores slow each other 10-100x
(2 cores, measured: one run fell from ~1,400 to 19 steps/s), because a spinning thread holds
a core its partner needs. So every run registers in a per-user directory of live runs — one
file per process, named by its pid, removed at exit; files of dead processes (a killed run)
are ignored and removed by whoever finds them — and then:

- ``join()``, before torch loads: registers, and when other runs are live sets
  ``OMP_WAIT_POLICY=PASSIVE`` for this process (an OpenMP setting is read once, at load), unless
  the user set it. Alone, the default spinning stays: it is fastest.
- ``share_threads()``, at the start of every stage: gives torch ``max(1, base // live runs)``
  threads, ``base`` being torch's own count before nnopt changed it (one run alone keeps
  torch's default). A user's ``OMP_NUM_THREADS``, or a ``torch.set_num_threads`` made after
  nnopt's, is left as it is.

The count is fixed for the whole stage on purpose: with torch 2.13 (MKL, OpenMP) 1 and 2
threads give bitwise different weight gradients for large batches (a 1437x64 by 1437x256
product) and different sums over large tensors, so changing it mid-stage would make the
result depend on what else ran meanwhile. The stage records its count in its manifest.

The directory is ``$NNOPT_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/nnopt``, else
``<tmp>/nnopt-<uid>``; one that is not a directory owned by this user (mode 0700) turns the
sharing off rather than trusting it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

ENV_DIR = "NNOPT_RUNTIME_DIR"

_registered: set[Path] = set()  # this process's files (one per directory it registered in)
_base_threads: int | None = None  # torch's thread count before share_threads first changed it
_last_set: int | None = None  # what share_threads last set (a different count: the user's)


def runtime_dir() -> Path | None:
    """The per-user directory of live runs (created mode 0700), or None where none can be trusted."""
    if os.environ.get(ENV_DIR):
        path = Path(os.environ[ENV_DIR])
    elif os.environ.get("XDG_RUNTIME_DIR") and os.path.isdir(os.environ["XDG_RUNTIME_DIR"]):
        path = Path(os.environ["XDG_RUNTIME_DIR"]) / "nnopt"
    else:
        path = Path(tempfile.gettempdir()) / f"nnopt-{_uid()}"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return None
    # in a shared /tmp another user could have made this name first: never trust their files
    if not os.path.isdir(path) or os.path.islink(path) or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
        return None
    return path


def register() -> None:
    """Add this process to the live runs (its file goes at exit). Cheap to repeat: a file that
    went missing, or a directory that changed (``$NNOPT_RUNTIME_DIR``), is written anew."""
    base = runtime_dir()
    if base is None:
        return
    path = base / str(os.getpid())
    if path in _registered and path.exists():
        return
    tmp = base / f".{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps({"pid": os.getpid(), "start": _start_time(os.getpid()), "argv": sys.argv}))
        os.replace(tmp, path)  # readers never see a half-written file
    except OSError:
        return
    if path not in _registered:
        _registered.add(path)
        atexit.register(_unregister, path, os.getpid())


def live_runs() -> list[int]:
    """Pids of the live registered runs, this one included if registered; stale files are removed."""
    base = runtime_dir()
    if base is None:
        return []
    me = os.getpid()
    pids = []
    try:
        names = os.listdir(base)
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        pid, path = int(name), base / name
        if (path in _registered) if pid == me else _is_live(path, pid):
            pids.append(pid)
    return sorted(pids)


def join() -> int:
    """Register this run before torch loads; with other runs live, make OpenMP wait passively
    (unless ``OMP_WAIT_POLICY`` is set). Returns how many other runs are live."""
    register()
    others = len([p for p in live_runs() if p != os.getpid()])
    if others and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return others


def share_threads() -> int:
    """At a stage's start: torch's thread count for this stage, ``max(1, base // live runs)``
    (see the module docstring for ``base`` and what is left alone). Returns the count in use."""
    global _base_threads, _last_set
    import torch

    current = torch.get_num_threads()
    if "OMP_NUM_THREADS" in os.environ or (_last_set is not None and current != _last_set):
        return current  # the user's choice
    register()
    if _base_threads is None:
        _base_threads = current
    share = max(1, _base_threads // max(1, len(live_runs())))
    if share != current:
        torch.set_num_threads(share)
    _last_set = torch.get_num_threads()
    return _last_set


def _is_live(path: Path, pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        _remove(path)
        return False
    except PermissionError:  # exists, under another user: not a run of ours
        return False
    except OSError:
        return False
    try:
        recorded = json.loads(path.read_text()).get("start")
    except (OSError, ValueError, AttributeError):
        return False  # vanished or half-gone: its process is ending
    started = _start_time(pid)
    if recorded is not None and started is not None and recorded != started:
        _remove(path)  # the pid was reused by a process that is no run
        return False
    return True


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:  # fields after "(comm)", which may itself hold spaces; starttime is field 22
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _unregister(path: Path, pid: int) -> None:
    if os.getpid() == pid:  # a forked child inherits this handler and must not remove our file
        _remove(path)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):  # another reader removed it first: the same outcome
        path.unlink()


def _uid() -> str:
    return str(os.getuid()) if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
