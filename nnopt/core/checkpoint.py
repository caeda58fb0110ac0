"""A running stage's resumable checkpoint: ONE file, replaced atomically.

The file (``store.CHECKPOINT`` in the stage's work directory) holds the stage's state and
the length in bytes of its ``metrics.jsonl`` when the state was taken. Both live in one file
because they must change together: a kill between the writes of two files paired a new
state with an old length, and the resumed stage then dropped the lines logged in between.

A save writes a temporary file, flushes and fsyncs it, and ``os.replace``s it over the
previous checkpoint, so that a kill at any point leaves the previous checkpoint or the new
one, whole. ``metrics.jsonl`` is fsynced before its length is taken, so that the length a
checkpoint names is on disk before the checkpoint is. Loading truncates ``metrics.jsonl``
back to that length: what was logged after the checkpoint is logged again by the resumed
stage, exactly as an uninterrupted one logs it.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
from pathlib import Path
from typing import IO, Any

from .store import CHECKPOINT

FORMAT = 2  # bumped whenever the payload's layout changes: an older checkpoint is not resumed
#: the file ends with MAGIC + SHA-256 of the bytes before it: torch.load checks no CRC, so a
#: flipped byte in a tensor would otherwise be resumed from silently (2: the digest added)
MAGIC = b"nnopt-checkpoint-sha256:"
_TMP = f".{CHECKPOINT}.tmp"  # one fixed name: a copy a kill left half-written is overwritten, never piled up

#: what reading a damaged or foreign file can raise: any of them makes the checkpoint unusable
_UNREADABLE = (OSError, EOFError, RuntimeError, ValueError, KeyError, TypeError, pickle.UnpicklingError)


def save(out_dir: Path, state: dict[str, Any], metrics: Path, metrics_file: IO[str] | None) -> None:
    """Checkpoint ``state`` with the current length of ``metrics`` (``metrics_file``: the
    stage's open handle on it, whose buffered lines are written out first)."""
    import torch

    if metrics_file is not None:
        metrics_file.flush()
        os.fsync(metrics_file.fileno())
    metrics_bytes = metrics.stat().st_size if metrics.is_file() else 0
    tmp = out_dir / _TMP
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "metrics_bytes": metrics_bytes, "state": state}, buffer)
    data = buffer.getvalue()
    with open(tmp, "wb") as f:
        f.write(data + MAGIC + hashlib.sha256(data).digest())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out_dir / CHECKPOINT)
    _fsync_dir(out_dir)


def load(out_dir: Path, metrics: Path) -> dict[str, Any] | None:
    """The state of the last ``save`` in ``out_dir``, with ``metrics`` cut back to its length;
    None when there is none. A checkpoint that cannot be used (unreadable, of another format,
    or naming more metrics than ``metrics`` holds) is discarded with everything else in
    ``out_dir``, so that the stage starts over from an empty directory."""
    import torch

    # what a kill cut short in an atomic write (``save``, ``store.atomic_write_text``: hidden
    # ``.*.tmp`` files) is no output: left there, it would be committed as an artifact
    for tmp in out_dir.rglob(".*.tmp"):
        tmp.unlink()
    path = out_dir / CHECKPOINT
    if not path.is_file():
        return None
    try:
        # weights_only: a checkpoint is data, never code (no arbitrary unpickling). On the CPU:
        # RNG states must be CPU tensors, and state dicts load onto their module's device anyway.
        raw = path.read_bytes()
        data, magic, digest = raw[: -len(MAGIC) - 32], raw[-len(MAGIC) - 32 : -32], raw[-32:]
        if magic != MAGIC or hashlib.sha256(data).digest() != digest:
            raise ValueError("a checkpoint whose bytes do not match its checksum")
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if payload["format"] != FORMAT or not isinstance(payload["metrics_bytes"], int):
            raise ValueError("another checkpoint format")
        metrics_bytes, state = payload["metrics_bytes"], payload["state"]
    except _UNREADABLE:
        _start_over(out_dir)
        return None
    size = metrics.stat().st_size if metrics.is_file() else 0
    if size < metrics_bytes:  # lines the state has seen are gone: resuming would lose them for good
        _start_over(out_dir)
        return None
    if size > metrics_bytes:
        os.truncate(metrics, metrics_bytes)
    return state


def _start_over(out_dir: Path) -> None:
    """Empty ``out_dir``, as the engine hands it to a stage that has no checkpoint."""
    for entry in out_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (POSIX: the directory entry is synced apart from the
    file); elsewhere a directory cannot be opened, and the rename is all there is."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
