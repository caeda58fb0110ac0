"""Sweeps: `--jobs` (each stage computed once across workers, results as serial), `--shard`
(the shards partition the matrix; a final run finds all cached), summary tables and plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import Cli

SWEEP = """\
name: sweep
data: {name: synthetic, task: gaussian_mixture, n_train: 64, n_test: 32, dim: 4, batch_size: 32}
model: {arch: {name: mlp, widths: [8]}}
loss: cross_entropy
stages:
  base:
    kind: train
    optimizer: {name: sgd, lr: 0.1}
    steps: 3
  tune:
    kind: train
    from: base
    optimizer: {name: sgd, lr: 0.1}
    steps: 3
matrix:
  stages.tune.optimizer.lr: [0.001, 0.5]
  stages.tune.seed: [0, 1]
"""
COMBOS = [{"stages.tune.optimizer.lr": lr, "stages.tune.seed": s} for lr in (0.001, 0.5) for s in (0, 1)]


def ran(out: dict) -> list[tuple[str, str]]:
    """(stage id, key) of every stage some combination computed."""
    return [(sid, s["key"]) for r in out["runs"] for sid, s in r["stages"].items() if s["status"] == "ran"]


def test_jobs_2_computes_each_stage_once_and_equals_the_serial_sweep(cli, pipeline, tmp_path):
    path = pipeline(SWEEP)
    result, out = cli.run_json(path, "--jobs", "2")
    assert result.exit_code == 0, result.output
    assert [r["params"] for r in out["runs"]] == COMBOS  # matrix order, whatever order workers finished in
    computed = ran(out)
    assert len(computed) == len(set(computed)) == 5  # the shared `base` once, each `tune` once
    assert [sid for sid, _ in computed].count("base") == 1
    assert {r["stages"]["base"]["status"] for r in out["runs"]} == {"ran", "cached"}
    assert len({r["stages"]["base"]["key"] for r in out["runs"]}) == 1
    assert len({r["invocation"] for r in map(json.loads, (p.read_text() for p in (cli.store / "runs").glob("*.json")))}) == 1

    serial = Cli(tmp_path / "serial")
    s_result, s_out = serial.run_json(path)
    assert s_result.exit_code == 0
    assert set(out) == set(s_out) and [set(r) for r in out["runs"]] == [set(r) for r in s_out["runs"]]
    for par, ser in zip(out["runs"], s_out["runs"]):
        assert par["params"] == ser["params"] and par["status"] == ser["status"] == "ok"
        for sid in ("base", "tune"):
            assert par["stages"][sid]["key"] == ser["stages"][sid]["key"]
            assert par["stages"][sid]["metrics"]["test_loss"] == ser["stages"][sid]["metrics"]["test_loss"]
            w = "weights/final.safetensors"
            assert (Path(par["stages"][sid]["dir"]) / w).read_bytes() == (Path(ser["stages"][sid]["dir"]) / w).read_bytes()
    # the sweep again, in workers: everything cached, no worker needed
    again, out2 = cli.run_json(path, "--jobs", "2")
    assert again.exit_code == 0 and not ran(out2)


def test_shards_cover_every_combination_once_and_a_final_run_finds_all_cached(cli, pipeline):
    path = pipeline(SWEEP)
    seen = []
    for i in (1, 2, 3):
        result, out = cli.run_json(path, "--shard", f"{i}/3")
        assert result.exit_code == 0, result.output
        seen += [r["params"] for r in out["runs"]]
        assert [r["params"] for r in out["runs"]] == COMBOS[i - 1::3]  # round-robin over the matrix order
    assert sorted(map(json.dumps, seen)) == sorted(map(json.dumps, COMBOS))
    result, final = cli.run_json(path)
    assert result.exit_code == 0
    assert [r["params"] for r in final["runs"]] == COMBOS
    assert {s["status"] for r in final["runs"] for s in r["stages"].values()} == {"cached"}
    rows = list(csv.DictReader(open(final["sweep"]["csv"])))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}


def test_shard_indices_partition_any_matrix():
    from nnopt.core.executors import shard_indices

    for count in range(0, 12):
        for n in range(1, 6):
            parts = [shard_indices(count, (i, n)) for i in range(1, n + 1)]
            assert sorted(k for p in parts for k in p) == list(range(count))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("shard", ["0/2", "3/2", "a/b", "2", "1/0", "-1/2"])
def test_a_bad_shard_is_a_clean_usage_error(cli, pipeline, shard):
    result = cli("run", pipeline(SWEEP), "--shard", shard)
    assert result.exit_code == 2
    assert "--shard" in result.output and "Traceback" not in result.output
    assert not cli.store.exists()


def test_a_shard_of_a_pipeline_without_a_matrix_runs_it_once_over_the_shards(cli, pipeline):
    text = SWEEP.split("matrix:")[0]
    path = pipeline(text)
    _, first = cli.run_json(path, "--shard", "1/2")
    _, second = cli.run_json(path, "--shard", "2/2")
    assert first["status"] == "ok" and second == {"pipeline": "sweep", "runs": []}


def test_the_summary_is_written_printed_best_first_and_shown(cli, pipeline):
    path = pipeline(SWEEP)
    result, out = cli.run_json(path)
    assert result.exit_code == 0
    sweep = out["sweep"]
    assert Path(sweep["dir"]).parent == cli.store / "sweeps"
    rows = list(csv.DictReader(open(sweep["csv"])))
    assert list(rows[0]) == ["stages.tune.optimizer.lr", "stages.tune.seed", "status", "test_accuracy", "test_loss",
                             "train_loss", "run"]
    ranked = [(-float(r["test_accuracy"]), float(r["test_loss"])) for r in rows]
    assert ranked == sorted(ranked)  # best first: highest accuracy, ties by lowest loss
    by_run = {r["run"]: r for r in out["runs"]}
    for row in rows:
        assert float(row["test_loss"]) == by_run[row["run"]]["stages"]["tune"]["metrics"]["test_loss"]
    names = sorted(Path(p).name for p in sweep["plots"])
    assert names == sorted(f"{m}_vs_stages.tune.{a}.png" for m in ("test_accuracy", "test_loss", "train_loss")
                           for a in ("optimizer.lr", "seed"))
    assert all(Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in sweep["plots"])
    table = Path(sweep["markdown"]).read_text().strip()
    shown = cli("show", "sweep")
    assert shown.exit_code == 0 and shown.stdout.rstrip().endswith(table)
    assert json.loads(cli("show", "sweep", "--json").stdout)["summary"]["ranked_by"] == "test_accuracy"
    text = cli("run", path)  # printed after the run too, from the index's fast path
    assert text.exit_code == 0
    printed = text.stdout.split("\n\n", 1)[1]
    assert printed.splitlines()[0].startswith("sweep sweep: 4 combinations, best first by test_accuracy")


def test_a_failed_combination_is_ranked_last_and_fail_fast_stops_the_serial_sweep(cli, pipeline):
    # the second value of the axis selects no parameter: that combination's stage fails at run time
    text = SWEEP.replace("""matrix:
  stages.tune.optimizer.lr: [0.001, 0.5]
  stages.tune.seed: [0, 1]
""", """matrix:
  stages.tune.param_groups: [[{params: [nothing.*], weight_decay: 0.0}], []]
  stages.tune.seed: [0, 1]
""")
    path = pipeline(text)
    result, out = cli.run_json(path, "--fail-fast")
    assert result.exit_code == 1
    assert [r["status"] for r in out["runs"]] == ["failed", "skipped", "skipped", "skipped"]
    assert "--fail-fast" in out["runs"][1]["stages"]["tune"]["message"]
    keep, out2 = cli.run_json(path)  # --keep-going (the default) runs every other one
    assert keep.exit_code == 1
    assert [r["status"] for r in out2["runs"]] == ["failed", "failed", "ok", "ok"]
    rows = list(csv.DictReader(open(out2["sweep"]["csv"])))
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "failed"]
    assert rows[-1]["test_accuracy"] == ""


def test_a_swept_value_is_labelled_short_with_a_components_params_whole():
    from nnopt.core.sweep_summary import short_value

    assert short_value({"name": "sgd", "lr": 0.01, "momentum": 0.9}) == "sgd lr=0.01 momentum=0.9"
    stage = {"kind": "train", "optimizer": "sgd", "steps": 300, "log_every": 25, "eval_every": 300}
    assert len(short_value(stage)) == 24 and short_value(stage).endswith("…")
    assert short_value(0.05) == "0.05" and short_value([64, 64]) == "[64,64]"
