"""The content-addressed store (SPEC §5, §6): stage directories keyed by their cache key.

Layout under the store root (``--store``, ``$NNOPT_HOME`` or ``./.nnopt``)::

    stages/ab/abcdef.../   one complete stage: manifest.json, spec.json, result.json,
                           metrics.jsonl, weights/*.safetensors, plots/*.png
    tmp/<key>/             a stage being computed (renamed into stages/ when complete); a
                           killed run leaves it with its last checkpoint, to resume from
    locks/<key>.lock       one file lock per stage key being computed
    runs/<run id>.json     what one `nnopt run` did: pipeline, stage keys, statuses
    index/<digest>.json    the plan index: pipeline text + context -> stage keys (fast hits)

A stage is complete exactly when its directory exists under ``stages/``: it is assembled in
``tmp/``, its manifest written last, and the directory renamed into place in one step.
This module never imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock, Timeout

DEFAULT_STORE = ".nnopt"
#: a stage's resumable checkpoint while it runs: its state and the length of its metrics.jsonl
#: in one file, replaced atomically (``nnopt.core.checkpoint``), so its presence marks a usable one
CHECKPOINT = "checkpoint.pt"


def default_root() -> Path:
    return Path(os.environ.get("NNOPT_HOME") or DEFAULT_STORE)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give: a store may be shared


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes files private (0600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any, sort_keys: bool = True) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=sort_keys, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_is_live(record: dict[str, Any]) -> bool:
    """Whether the process that wrote a ``running`` record still exists (on this host; a
    record from another host is taken as live)."""
    proc = record.get("process") or {}
    if proc.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(proc["pid"]), 0)
    except (KeyError, TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class StageBusy(Exception):
    """Another run is computing this stage and the caller asked not to wait (exit 75)."""


@dataclass
class Store:
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    # ------------------------------------------------------------------ stages
    def stage_dir(self, key: str) -> Path:
        return self.root / "stages" / key[:2] / key

    def is_complete(self, key: str) -> bool:
        """Its manifest and result read back and every artifact the manifest lists is there;
        a stage damaged by hand is not complete, so the next run computes it again."""
        d = self.stage_dir(key)
        try:
            manifest, result = read_json(d / "manifest.json"), read_json(d / "result.json")
            artifacts = manifest["artifacts"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return isinstance(result, dict) and all((d / rel).is_file() for rel in artifacts)

    def damaged_artifacts(self, key: str) -> list[str]:
        """Artifacts of a complete stage whose bytes no longer match the manifest's SHA-256
        (or that are missing), by relative path; ``[]`` for an intact stage. Reads every
        artifact in full: call it where a stage's outputs are about to be *used*."""
        d = self.stage_dir(key)
        try:
            artifacts = read_json(d / "manifest.json")["artifacts"]
        except (OSError, ValueError, KeyError, TypeError):
            return ["manifest.json"]
        bad = []
        for rel, checksum in sorted(artifacts.items()):
            try:
                if sha256_file(d / rel) != checksum:
                    bad.append(rel)
            except OSError:
                bad.append(rel)
        return bad

    def find_stage(self, prefix: str) -> list[str]:
        """Keys of stored stages starting with ``prefix`` (at least 4 hex digits)."""
        if len(prefix) < 4 or not all(c in "0123456789abcdef" for c in prefix):
            return []
        base = self.root / "stages" / prefix[:2]
        return sorted(p.name for p in base.glob(f"{prefix}*") if p.is_dir()) if base.is_dir() else []

    def all_stage_keys(self) -> list[str]:
        base = self.root / "stages"
        return sorted(p.name for p in base.glob("*/*") if p.is_dir()) if base.is_dir() else []

    def workdir(self, key: str, resume: bool) -> Path:
        """The directory a stage is assembled in: ``tmp/<key>``, private to the holder of the
        key's lock. With ``resume`` a directory left by a killed run is kept when it holds a
        checkpoint (the stage continues from it); anything else left there is discarded."""
        path = self.root / "tmp" / key
        if path.exists() and not (resume and (path / CHECKPOINT).is_file()):
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def commit(self, workdir: Path, key: str, manifest: dict[str, Any]) -> Path:
        """Checksum the artifacts, write the manifest last, and move the stage into place."""
        # resumption state is not a result: the checkpoint, and a copy of it a kill left half-written
        for path in [workdir / CHECKPOINT, *workdir.glob(f".{CHECKPOINT}.*")]:
            path.unlink(missing_ok=True)
        manifest = dict(manifest)
        manifest["artifacts"] = {
            str(p.relative_to(workdir)): sha256_file(p) for p in sorted(workdir.rglob("*")) if p.is_file()
        }
        write_json(workdir / "manifest.json", manifest)
        final = self.stage_dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # --force / --redo: swap the old result out, then drop it
            trash = Path(tempfile.mkdtemp(dir=self.root / "tmp", prefix="old."))
            os.rename(final, trash / "stage")
            os.rename(workdir, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(workdir, final)
        return final

    def discard(self, workdir: Path) -> None:
        shutil.rmtree(workdir, ignore_errors=True)

    def lock(self, key: str, wait: bool) -> "StageLock":
        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        return StageLock(FileLock(str(self.root / "locks" / f"{key}.lock")), wait)

    # ------------------------------------------------------------------ runs
    def write_run(self, record: dict[str, Any]) -> Path:
        path = self.root / "runs" / f"{record['run']}.json"
        write_json(path, record, sort_keys=False)  # stages stay in run order
        return path

    def runs(self, corrupt: list[Path] | None = None, within_s: float | None = None) -> list[dict[str, Any]]:
        """Every readable run record, oldest first; unreadable ones are appended to ``corrupt``.
        ``within_s``: only records written in the last so many seconds.

        A record left ``running`` by a process that no longer exists reads as ``stopped``.
        """
        base = self.root / "runs"
        if not base.is_dir():
            return []
        horizon = None if within_s is None else time.time() - within_s
        records = []
        for p in base.glob("*.json"):
            try:
                if horizon is not None and p.stat().st_mtime < horizon:
                    continue
                record = read_json(p)
                if not isinstance(record, dict) or not isinstance(record.get("run"), str) or not isinstance(record.get("stages"), dict):
                    raise ValueError("not a run record")
            except (OSError, ValueError):
                if corrupt is not None:
                    corrupt.append(p)
                continue
            if record.get("status") == "running" and not run_is_live(record):
                record["status"] = "stopped"
            records.append(record)
        return sorted(records, key=lambda r: (r.get("started") or 0, r["run"]))

    def live_runs(self, within_s: float = 7 * 86400) -> list[str]:
        """Ids of runs in progress now (their records written in the last ``within_s`` seconds)."""
        return [r["run"] for r in self.runs(within_s=within_s) if r["status"] == "running"]

    def remove_run(self, run_id: str) -> None:
        (self.root / "runs" / f"{run_id}.json").unlink(missing_ok=True)

    # ------------------------------------------------------------------ index
    def index_path(self, digest: str) -> Path:
        return self.root / "index" / f"{digest}.json"

    # ------------------------------------------------------------------ gc
    def stale_workdirs(self) -> Iterator[Path]:
        """Work directories no running process holds (by the lock of their key)."""
        base = self.root / "tmp"
        if not base.is_dir():
            return
        for p in base.iterdir():
            key_prefix = p.name.split(".")[0]
            busy = any(self._lock_held(lock) for lock in (self.root / "locks").glob(f"{key_prefix}*.lock"))
            if p.name.startswith("old."):
                busy = False
            if not busy:
                yield p

    @staticmethod
    def _lock_held(path: Path) -> bool:
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False

    # ------------------------------------------------------------------ invocations
    def invocations(self, corrupt: list[Path] | None = None) -> list[list[dict[str, Any]]]:
        """The run records grouped by invocation (one `nnopt run`: the cells of a matrix),
        each group in run order, groups by their first run, oldest first (see ``runs``)."""
        return group_invocations(self.runs(corrupt))


def invocation_id(record: dict[str, Any]) -> str:
    """The invocation a run record belongs to; a record written before invocations were
    recorded is an invocation of its own."""
    return record.get("invocation") or record["run"]


def group_invocations(runs: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """``runs`` (oldest first) grouped by ``invocation_id``, groups in order of their first run."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(invocation_id(r), []).append(r)
    return list(groups.values())


class StageLock:
    """The per-stage file lock: one process computes a key, others wait and reuse it."""

    def __init__(self, lock: FileLock, wait: bool):
        self._lock = lock
        self._wait = wait

    def __enter__(self) -> "StageLock":
        try:
            self._lock.acquire(timeout=-1 if self._wait else 0)
        except Timeout:
            raise StageBusy(self._lock.lock_file) from None
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lock.release()


class CorruptStore(Exception):
    """Run records that cannot be read; ``nnopt gc`` removes nothing while they exist."""

    def __init__(self, paths: list[Path]):
        self.paths = paths
        super().__init__("unreadable run records (move or delete them, then gc again): " + ", ".join(map(str, paths)))


@dataclass
class GcReport:
    runs_removed: list[str]
    stages_removed: list[str]
    workdirs_removed: int
    bytes_freed: int
    invocations_removed: list[str] = field(default_factory=list)  # what runs_removed made up


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def collect_garbage(store: Store, keep_last: int | None = None, dry_run: bool = False) -> GcReport:
    """Remove stages no kept run refers to, and work directories no live run owns (but keep
    the checkpoints of interrupted stages that a kept run names).

    With ``keep_last=N`` only the newest N invocations of each pipeline are kept (the run
    records of older ones are dropped first): the runs of one `nnopt run` (the cells of a
    matrix) are kept or dropped together, and an invocation with a live run is never dropped
    (nor counted among the N). By default every run record is kept.
    """
    corrupt: list[Path] = []
    runs = store.runs(corrupt)
    if corrupt:  # which stages they name is unknown: removing anything could lose results
        raise CorruptStore(corrupt)
    dropped: list[str] = []
    dropped_invocations: list[str] = []
    if keep_last is not None:
        by_pipeline: dict[str, list[list[dict[str, Any]]]] = {}
        for cells in group_invocations(runs):
            if all(r.get("status") != "running" for r in cells):  # a live run's cells all stay
                by_pipeline.setdefault(cells[0].get("pipeline", ""), []).append(cells)
        for invocations in by_pipeline.values():
            for cells in invocations[: max(len(invocations) - keep_last, 0)]:
                dropped_invocations.append(invocation_id(cells[0]))
                dropped += [r["run"] for r in cells]
    gone = set(dropped)
    kept = [r for r in runs if r["run"] not in gone]
    referenced = {s["key"] for r in kept for s in r.get("stages", {}).values() if s.get("key")}
    garbage = [k for k in store.all_stage_keys() if k not in referenced]
    # a checkpoint of a stage some kept run still names is kept: the next run resumes from it
    workdirs = [p for p in store.stale_workdirs() if p.name not in referenced or not (p / CHECKPOINT).is_file()]
    freed = sum(_size(store.stage_dir(k)) for k in garbage) + sum(_size(p) for p in workdirs)
    if not dry_run:
        for run_id in dropped:
            store.remove_run(run_id)
        for k in garbage:
            shutil.rmtree(store.stage_dir(k), ignore_errors=True)
        for p in workdirs:
            shutil.rmtree(p, ignore_errors=True)
        index = store.root / "index"
        if index.is_dir():  # index entries naming removed stages can never hit again
            for entry in index.glob("*.json"):
                try:
                    keys = {s["key"] for run in read_json(entry)["runs"] for s in run["stages"]}
                except (OSError, ValueError, KeyError):
                    keys = set(garbage)
                if keys & set(garbage):
                    entry.unlink(missing_ok=True)
    return GcReport(dropped, garbage, len(workdirs), freed, dropped_invocations)
