"""Sharing this machine's CPU cores among the nnopt runs on it, whatever their store.

Two runs whose OpenMP thread teams together outnumber the cores slow each other 10-100x
(2 cores, measured: two quickstart runs at once fell from ~1,500 to 18-75 steps/s each),
because a spinning thread holds a core its partner needs. So every run registers in a
per-user directory — one file per process, named by its pid, removed at exit; files of dead
processes (a killed run) or of reused pids are ignored and removed by whoever finds them —
and then:

- ``join()``, before torch loads: registers, and when other runs compute sets
  ``OMP_WAIT_POLICY=PASSIVE`` for this process (an OpenMP setting is read once, at load), unless
  the user set it. Alone, the default spinning stays: it is fastest (~1,650 against ~610
  steps/s passive, 2 cores).
- ``share_threads()``, at the start of every stage: gives torch ``max(1, base // runs)``
  threads, ``runs`` counting this one and the others computing, ``base`` being torch's own
  count before nnopt changed it (a run alone keeps torch's default). A user's
  ``OMP_NUM_THREADS``, or a ``torch.set_num_threads`` made after nnopt's, is left as it is.

A registered process counts while it computes: it stamps its CPU time at registration and at
every stage start, and one that has used under a quarter of a core since a stamp older than
``GRACE_S`` is idle (a notebook or test session between runs), not a competitor.

The count is fixed for the whole stage on purpose: with torch 2.13 (MKL, OpenMP) 1 and 2
threads give bitwise different weight gradients for batches of 1024 and more and different
sums over more than 32768 elements, so changing it mid-stage would make the result depend on
what else ran meanwhile. The stage records its count in its manifest.

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
import time
from pathlib import Path

ENV_DIR = "NNOPT_RUNTIME_DIR"
GRACE_S = 10.0  # a stamp this recent counts its process as computing, whatever its CPU use
BUSY_CORES = 0.25  # CPU use since the stamp, in cores, from which a process computes

_registered: set[Path] = set()  # this process's files (one per directory it registered in)
_base_threads: int | None = None  # torch's thread count before share_threads first changed it
_last_set: int | None = None  # what share_threads last set (a different count: the user's)


def runtime_dir() -> Path | None:
    """The per-user directory of registered runs (created mode 0700), or None where none can be trusted."""
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


def register(stamp: bool = False) -> None:
    """Add this process to the registered runs (its file goes at exit); ``stamp`` renews its
    CPU-time stamp. Cheap to repeat: a file that went missing, or a directory that changed
    (``$NNOPT_RUNTIME_DIR``), is written anew."""
    base = runtime_dir()
    if base is None:
        return
    pid = os.getpid()
    path = base / str(pid)
    if not stamp and path in _registered and path.exists():
        return
    stat = _proc_stat(pid)
    record = {"pid": pid, "start": _field(stat, 22), "cpu": _cpu_ticks(stat), "at": time.time(), "argv": sys.argv}
    tmp = base / f".{pid}.tmp"
    try:
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)  # readers never see a half-written file
    except OSError:
        return
    if path not in _registered:
        _registered.add(path)
        atexit.register(_unregister, path, pid)


def computing_runs() -> list[int]:
    """Pids of the registered runs that are alive and computing, this one included if
    registered; files of dead processes and reused pids are removed."""
    base = runtime_dir()
    if base is None:
        return []
    me = os.getpid()
    try:
        names = os.listdir(base)
    except OSError:
        return []
    pids = []
    for name in names:
        if not name.isdigit():
            continue
        pid, path = int(name), base / name
        if (path in _registered) if pid == me else _computes(path, pid):
            pids.append(pid)
    return sorted(pids)


def join() -> int:
    """Register this run before torch loads; with other runs computing, make OpenMP wait
    passively (unless ``OMP_WAIT_POLICY`` is set). Returns how many others compute."""
    register()
    others = len([p for p in computing_runs() if p != os.getpid()])
    if others and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return others


def share_threads() -> int:
    """At a stage's start: torch's thread count for this stage, ``max(1, base // runs)``
    (see the module docstring for ``base`` and what is left alone). Returns the count in use."""
    global _base_threads, _last_set
    import torch

    current = torch.get_num_threads()
    if "OMP_NUM_THREADS" in os.environ or (_last_set is not None and current != _last_set):
        return current  # the user's choice
    register(stamp=True)
    if _base_threads is None:
        _base_threads = current
    share = max(1, _base_threads // max(1, len(computing_runs())))
    if share != current:
        torch.set_num_threads(share)
    _last_set = torch.get_num_threads()
    return _last_set


def _computes(path: Path, pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        _remove(path)
        return False
    except OSError:  # PermissionError: another user's process has this pid, so it is no run of ours
        return False
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False  # vanished or half-gone: its process is ending
    if not isinstance(record, dict):
        return False
    stat = _proc_stat(pid)
    started = _field(stat, 22)
    if record.get("start") is not None and started is not None and record["start"] != started:
        _remove(path)  # the pid was reused by a process that is no run
        return False
    elapsed = time.time() - float(record.get("at") or 0.0)
    cpu_now, cpu_then = _cpu_ticks(stat), record.get("cpu")
    if elapsed < GRACE_S or cpu_now is None or cpu_then is None:
        return True  # just stamped, or no /proc to tell: count it
    return (cpu_now - cpu_then) / _ticks_per_s() / elapsed >= BUSY_CORES


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` from field 3 on (Linux), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()  # "(comm)" may itself hold spaces and parentheses


def _field(stat: list[str] | None, number: int) -> int | None:
    """Field ``number`` (1-based, as proc(5) numbers them) of a ``_proc_stat`` result."""
    try:
        return int(stat[number - 3]) if stat is not None else None
    except (IndexError, ValueError):
        return None


def _cpu_ticks(stat: list[str] | None) -> int | None:
    utime, stime = _field(stat, 14), _field(stat, 15)  # clock ticks in user and kernel mode
    return None if utime is None or stime is None else utime + stime


def _ticks_per_s() -> float:
    try:
        return float(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):
        return 100.0


def _unregister(path: Path, pid: int) -> None:
    if os.getpid() == pid:  # a forked child inherits this handler and must not remove our file
        _remove(path)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):  # another reader removed it first: the same outcome
        path.unlink()


def _uid() -> str:
    return str(os.getuid()) if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")


def use_threads(count: int) -> None:
    """Run on exactly ``count`` torch threads from here on: a resumed stage takes the count
    it was checkpointed with, since the thread count can change a result's bits. Later stages
    still share as usual (this is not taken for a user's own ``torch.set_num_threads``)."""
    global _last_set
    import torch

    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    _last_set = torch.get_num_threads()
