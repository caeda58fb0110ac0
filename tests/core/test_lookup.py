"""`nnopt ls`, `show` and `gc` treat the runs of one `nnopt run` (an invocation: the cells
of a matrix) as one unit; `show` of a stage verifies it and prints its spec as YAML."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import yaml

from nnopt.core.store import Store

SWEEP = """\
name: sweep
seed: 0
data: {name: synthetic, task: gaussian_mixture, n_train: 128, n_test: 64, dim: 8, batch_size: 32}
model:
  arch: {name: mlp, widths: [16], activation: relu}
loss: cross_entropy
stages:
  train:
    kind: train
    optimizer: {name: sgd, lr: 0.1}
    steps: 8
matrix:
  stages.train.optimizer.lr: [0.1, 1.0e+6]
  seed: [0, 1]
"""
OTHER = SWEEP.replace("name: sweep", "name: other").split("matrix:")[0]


def sweep(cli, pipeline, *sets: str) -> dict:
    """Run the 4-cell sweep (two cells diverge); its `run --json` object."""
    args = [a for s in sets for a in ("--set", s)]
    result, out = cli.run_json(pipeline(SWEEP, "sweep.yaml"), *args)
    assert result.exit_code == 1, result.stderr  # the diverged cells
    assert [r["status"] for r in out["runs"]] == ["ok", "ok", "diverged", "diverged"]
    return out


def stage_dirs(out: dict) -> list[Path]:
    return [Path(r["stages"]["train"]["dir"]) for r in out["runs"]]


def records(cli) -> list[dict]:
    return Store(cli.store).runs()


# ------------------------------------------------------------------ gc
def test_gc_keep_last_1_keeps_every_cell_of_the_latest_sweep(cli, pipeline):
    out = sweep(cli, pipeline)
    result = cli("gc", "--keep-last", "1")
    assert result.exit_code == 0, result.stderr
    assert "removed 0 invocations (0 runs), 0 stages" in result.stdout
    assert sorted(r["run"] for r in records(cli)) == sorted(r["run"] for r in out["runs"])
    assert all(d.is_dir() for d in stage_dirs(out))  # the converged cells as well as the diverged


def test_gc_keep_last_drops_older_invocations_whole_and_keeps_newer_ones_whole(cli, pipeline):
    old = sweep(cli, pipeline)
    new = sweep(cli, pipeline, "data.batch_size=64")  # other keys: nothing of `old` is shared
    result = cli("gc", "--keep-last", "1")
    assert result.exit_code == 0, result.stderr
    assert "removed 1 invocations (4 runs), 4 stages" in result.stdout
    assert sorted(r["run"] for r in records(cli)) == sorted(r["run"] for r in new["runs"])
    assert not any(d.exists() for d in stage_dirs(old))
    assert all(d.is_dir() for d in stage_dirs(new))


def test_gc_never_drops_an_invocation_with_a_live_run(cli, pipeline):
    out = sweep(cli, pipeline)
    store = Store(cli.store)
    finished = {**records(cli)[0], "run": "sweep-live-1", "invocation": "sweep-live", "started": time.time()}
    running = {**finished, "run": "sweep-live-2", "status": "running",
               "process": {"pid": os.getpid(), "host": socket.gethostname()}, "started": time.time() + 1}
    store.write_run(finished)
    store.write_run(running)
    result = cli("gc", "--keep-last", "0")
    assert result.exit_code == 0, result.stderr
    assert sorted(r["run"] for r in records(cli)) == ["sweep-live-1", "sweep-live-2"]  # both cells of the live one
    assert Path(out["runs"][0]["stages"]["train"]["dir"]).is_dir()  # named by the live invocation


# ------------------------------------------------------------------ ls
def test_ls_lists_each_invocation_once_with_every_cell_and_collapses_cached_reruns(cli, pipeline):
    first = sweep(cli, pipeline)
    reruns = [sweep(cli, pipeline) for _ in range(2)]
    cli.run_json(pipeline(OTHER, "other.yaml"))
    last = sweep(cli, pipeline)
    result = cli("ls", "--json")
    assert result.exit_code == 0, result.stderr
    entries = json.loads(result.stdout)
    assert [(e["pipeline"], e["count"], len(e["runs"])) for e in entries] == [
        ("sweep", 1, 4), ("sweep", 2, 4), ("other", 1, 1), ("sweep", 1, 4)]
    ran, cached = entries[0], entries[1]
    assert ran["status"] == "diverged" and ran["invocation"] == records(cli)[0]["invocation"]
    assert [c["run"] for c in ran["runs"]] == [r["run"] for r in first["runs"]]
    assert [c["params"] for c in ran["runs"]] == [r["params"] for r in first["runs"]]
    ok, diverged = ran["runs"][0]["outcomes"]["train"], ran["runs"][2]["outcomes"]["train"]
    assert ok["status"] == "ran" and set(ok["metrics"]) == {"train_loss", "test_loss", "test_accuracy"}
    assert diverged["status"] == "diverged" and diverged["metrics"]["diverged_at_step"] >= 1
    assert ran["runs"][0]["stages"] == 1 and ran["runs"][0]["started"] <= ran["runs"][0]["ended"]
    assert [o["outcomes"]["train"]["status"] for o in cached["runs"]] == ["cached", "cached", "diverged", "diverged"]
    assert [c["run"] for c in cached["runs"]] == [r["run"] for r in reruns[1]["runs"]]  # the latest of the two
    assert len(cached["invocations"]) == 2 and cached["invocation"] == cached["invocations"][-1]
    assert cached["first_started"] < cached["started"]
    assert [c["run"] for c in entries[3]["runs"]] == [r["run"] for r in last["runs"]]

    text = cli("ls").stdout
    assert text.count("invocation ") == 4
    assert "×2, latest " in text
    params = first["runs"][0]["params"]
    assert "[" + ", ".join(f"{k}={v}" for k, v in params.items()) + "]" in text and "diverged at step" in text
    assert "test_accuracy=" in text
    assert all(r["run"] in text for r in first["runs"])


# ------------------------------------------------------------------ show
def test_show_of_a_pipeline_or_latest_or_an_invocation_id_shows_every_cell_of_it(cli, pipeline):
    sweep(cli, pipeline)
    out = sweep(cli, pipeline)
    invocation = records(cli)[-1]["invocation"]
    for ref in ("sweep", "latest", invocation, invocation[:-2]):
        shown = cli("show", ref, "--json")
        assert shown.exit_code == 0, shown.stderr
        data = json.loads(shown.stdout)
        assert data["invocation"] == invocation and data["status"] == "diverged", ref
        assert [r["run"] for r in data["runs"]] == [r["run"] for r in out["runs"]], ref
        assert [r["params"] for r in data["runs"]] == [r["params"] for r in out["runs"]], ref
        assert data["runs"][0]["stages"]["train"]["metrics"]["test_accuracy"] > 0, ref
    text = cli("show", "sweep").stdout
    assert text.startswith(f"invocation {invocation}")
    assert all(r["run"] in text for r in out["runs"]) and "params [" in text and "seed=1" in text


def test_show_of_a_run_id_shows_that_run_alone(cli, pipeline):
    out = sweep(cli, pipeline)
    cell = out["runs"][2]
    data = json.loads(cli("show", cell["run"], "--json").stdout)
    assert data["run"] == cell["run"] and data["params"] == cell["params"]
    assert data["stages"]["train"]["status"] == "diverged"


def test_show_of_a_stage_prints_its_spec_as_block_yaml_in_a_stable_order(cli, pipeline):
    out = sweep(cli, pipeline)
    train = Path(out["runs"][0]["stages"]["train"]["dir"])
    text = cli("show", train.name[:12]).stdout
    lines = text.splitlines()
    spec_lines = lines[lines.index("spec:") + 1 : lines.index("artifacts:")]
    assert yaml.safe_load("\n".join(spec_lines)) == json.loads((train / "spec.json").read_text())
    assert max(map(len, spec_lines)) < 100 and not any("{" in line for line in spec_lines)  # block style
    top = [line.strip().split(":")[0] for line in spec_lines if line.startswith("  ") and not line.startswith("   ")]
    assert top == sorted(top)


def test_show_of_a_stage_with_a_flipped_byte_says_damaged_and_names_the_file(cli, pipeline):
    out = sweep(cli, pipeline)
    train = Path(out["runs"][0]["stages"]["train"]["dir"])
    weights = train / "weights" / "final.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))

    result = cli("show", train.name[:12])
    assert result.exit_code == 0, result.stderr
    assert "status damaged" in result.stdout and "weights/final.safetensors (checksum mismatch)" in result.stdout
    assert "metrics:" not in result.stdout and "test_accuracy" not in result.stdout
    shown = json.loads(cli("show", train.name[:12], "--json").stdout)
    assert shown["status"] == "damaged" and shown["damaged"] == ["weights/final.safetensors"]
    assert shown["metrics"] == {} and shown["results"] == {}
    run = json.loads(cli("show", out["runs"][0]["run"], "--json").stdout)
    assert run["stages"]["train"]["status"] == "damaged" and run["stages"]["train"]["metrics"] == {}


def test_show_renders_results_whole_tables_as_tables_and_long_lists_with_their_length():
    from nnopt.core.lookup import LIST_ITEMS, results_lines

    rows = [{"round": k, "variant": "ticket", "acc": 0.9 - k / 100} for k in range(40)]
    results = {"lottery": {"columns": ["round", "variant", "acc"], "rows": rows},
               "hessian_eigs": {"eigenvalues": [float(i) for i in range(50)], "converged": True, "note": None}}
    lines = results_lines(results)
    text = "\n".join(lines)
    # every row of a table is shown (nothing cut at a character count), aligned under its header
    table = [line for line in lines if line.strip().startswith(("round", *[str(k) for k in range(40)]))]
    assert len(table) == 1 + len(rows) and table[0].split() == ["round", "variant", "acc"]
    assert "39     ticket   0.51" in text
    # a long list says how long it is
    assert f"eigenvalues: [0, 1, 2, 3, 4, 5, 6, 7, ...]  (50 items)" in text and LIST_ITEMS == 8
    assert "converged: True" in text and "note: null" in text
