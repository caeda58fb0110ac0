"""Checksums on read: a stored stage is used only while its files match its manifest.

A flipped byte in a weights file is bit rot, a bad copy or a stray write; a stage that reads
those weights would compute a wrong answer and cache it under a correct key. So a stage
about to be reported ``cached`` is hashed in full first (the slow path), and the plan index
(the fast path) compares the ``stat`` of every file with what it was when last verified.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import statuses

from nnopt.core.store import Store

DAMAGED = "recomputed: damaged artifact weights/final.safetensors (checksum mismatch)"


def flip_a_byte(path: Path, keep_mtime: bool = False) -> None:
    """Flip one byte in the middle of ``path``, in place; optionally set its mtime back."""
    before = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(before.st_size // 2)
        byte = f.read(1)
        f.seek(before.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_damaged_weights_file_is_recomputed_before_a_redone_stage_reads_it(cli, pipeline):
    path = pipeline()
    _, first = cli.run_json(path)
    weights = Path(first["stages"]["train"]["dir"]) / "weights" / "final.safetensors"
    good = weights.read_bytes()
    flip_a_byte(weights)

    result, again = cli.run_json(path, "--redo", "probe")
    assert result.exit_code == 0, result.stderr
    assert statuses(again) == {"train": "ran", "probe": "ran"}
    assert again["stages"]["train"]["message"] == DAMAGED
    assert again["stages"]["train"]["key"] == first["stages"]["train"]["key"]
    assert weights.read_bytes() == good  # recomputed, bit for bit
    assert again["stages"]["probe"]["results"] == first["stages"]["probe"]["results"]  # it read good weights


def test_the_stage_line_says_that_a_damaged_stage_was_recomputed(cli, pipeline):
    path = pipeline()
    _, first = cli.run_json(path)
    flip_a_byte(Path(first["stages"]["train"]["dir"]) / "weights" / "final.safetensors")
    result = cli("run", path, "--redo", "probe")
    assert result.exit_code == 0, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip().startswith("train")]
    assert " ran " in line and f"({DAMAGED})" in line


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["edited", "edited-mtime-set-back"])
def test_a_damaged_stage_is_noticed_by_a_plain_run_answered_by_the_fast_path(cli, pipeline, keep_mtime):
    path = pipeline()
    _, first = cli.run_json(path)
    assert set(statuses(cli.run_json(path)[1]).values()) == {"cached"}  # the index now answers
    flip_a_byte(Path(first["stages"]["train"]["dir"]) / "weights" / "final.safetensors", keep_mtime)

    result, again = cli.run_json(path)
    assert result.exit_code == 0, result.stderr
    assert statuses(again) == {"train": "ran", "probe": "cached"}  # probe's key is train's: still valid
    assert again["stages"]["train"]["message"] == DAMAGED
    assert set(statuses(cli.run_json(path)[1]).values()) == {"cached"}


def test_every_artifact_of_a_cached_stage_is_verified_and_none_is_ever_used_damaged(cli, pipeline):
    path = pipeline()
    _, first = cli.run_json(path)
    probe_dir = Path(first["stages"]["probe"]["dir"])
    result_file = probe_dir / "result.json"
    manifest = json.loads((probe_dir / "manifest.json").read_text())
    # a result.json that still reads well, with another number: only its checksum can tell
    result = json.loads(result_file.read_text())
    result_file.write_text(json.dumps({**result, "seconds": result["seconds"] + 1.0}))
    assert "result.json" in manifest["artifacts"]

    _, again = cli.run_json(path)
    assert statuses(again) == {"train": "cached", "probe": "ran"}
    assert again["stages"]["probe"]["message"] == "recomputed: damaged artifact result.json (checksum mismatch)"
    assert Store(cli.store).damaged_artifacts(first["stages"]["probe"]["key"]) == []


def test_a_fully_cached_run_from_the_index_hashes_no_file(cli, pipeline, monkeypatch):
    path = pipeline()
    cli.run_json(path)
    hashed = []
    original = Store.damaged_artifacts
    monkeypatch.setattr(Store, "damaged_artifacts", lambda self, key: hashed.append(key) or original(self, key))
    _, cached = cli.run_json(path)
    assert set(statuses(cached).values()) == {"cached"}
    assert hashed == []  # stat only: the fast path stays fast

    for entry in (cli.store / "index").iterdir():  # without the index, every stage is hashed
        entry.unlink()
    _, slow = cli.run_json(path)
    assert set(statuses(slow).values()) == {"cached"}
    assert sorted(hashed) == sorted(s["key"] for s in slow["stages"].values())
