"""The summary of a sweep: one row per matrix combination, best first, as CSV, Markdown and plots.

After every run of a pipeline with ``matrix:`` (serial, ``--jobs``, a shard, any executor)
``nnopt run`` writes ``<store>/sweeps/<invocation id>/``: ``summary.csv``, ``summary.md``
and ``plots/<metric>_vs_<axis>.png`` (each headline metric against each swept value, one
line per combination of the other axes), and prints the Markdown table; ``nnopt show`` of
the invocation prints the same table, built by the same function from the same run records.

A row holds the combination's params (one column per axis), its run's status, and the
headline metrics of one stage: the last stage (in run order) with ``test_accuracy``,
``test_loss``, ``train_loss`` or ``diverged_at_step`` in some row, else the last stage with
any scalar metrics (then those, at most ``MAX_OTHER_METRICS``). Rows are ordered best first:
by ``test_accuracy`` (highest first), ties broken by ``test_loss`` then ``train_loss`` (lowest
first), as far as some row has them; without any of the three, by the first metric (lowest
first). A row without a ranking metric (failed, diverged, not run) comes after those with
it, and rows still tied keep the matrix order. The metrics are
read from each stage's ``result.json`` (a stage no longer in the store shows ``–``).
Imports no torch: a sweep answered from the plan index stays torch-free.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .store import Store, read_json

HEADLINE = ("test_accuracy", "test_loss", "train_loss", "diverged_at_step")
#: what rows are ranked by, in order of preference: (metric, higher is better)
RANKING = (("test_accuracy", True), ("test_loss", False), ("train_loss", False))
MAX_OTHER_METRICS = 6


@dataclass
class SweepTable:
    """The rows of one invocation's combinations, best first."""

    pipeline: str
    invocation: str
    axes: list[str]
    stage: str | None  # the stage the metrics are of
    metrics: list[str]
    ranked_by: str | None
    rows: list[dict[str, Any]]  # {"params", "status", "run", "metrics"}

    def caption(self) -> str:
        n = len(self.rows)
        order = f"best first by {self.ranked_by}" if self.ranked_by else "in matrix order"
        of = f", metrics of stage '{self.stage}'" if self.stage else ""
        return f"sweep {self.pipeline}: {n} combination{'s' if n != 1 else ''}, {order}{of}"

    def columns(self) -> list[str]:
        return [*self.axes, "status", *self.metrics, "run"]

    def cells(self, row: dict[str, Any], text: bool) -> list[Any]:
        values = [_value(row["params"].get(a)) for a in self.axes] + [row["status"]]
        for m in self.metrics:
            v = row["metrics"].get(m)
            values.append(("–" if v is None else _number(v)) if text else ("" if v is None else v))
        return values + [row["run"]]

    def markdown(self) -> str:
        """The table as aligned Markdown, its caption first."""
        cells = [self.columns()] + [[str(c) for c in self.cells(r, text=True)] for r in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
        line = lambda r: "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |"  # noqa: E731
        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "\n".join([self.caption(), "", line(cells[0]), rule, *(line(r) for r in cells[1:])])

    def csv_text(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(self.columns())
        for r in self.rows:
            writer.writerow(self.cells(r, text=False))
        return out.getvalue()

    def to_json(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "invocation": self.invocation, "axes": self.axes, "stage": self.stage,
                "metrics": self.metrics, "ranked_by": self.ranked_by, "rows": self.rows}


def is_sweep(records: list[dict[str, Any]]) -> bool:
    """Whether run records are a matrix's combinations (some have params)."""
    return any(r.get("params") for r in records)


def records_of(reports: list[Any]) -> list[dict[str, Any]]:
    """Run-record-shaped dicts (``runner.record_run``) of ``RunReport``s."""
    return [{"run": r.run, "pipeline": r.pipeline, "params": r.params, "status": r.status, "invocation": r.invocation or r.run,
             "stages": {s.id: {"key": s.key, "status": s.status} for s in r.stages}} for r in reports]


def summarize(store: Store, records: list[dict[str, Any]]) -> SweepTable:
    """The table of an invocation's run records (matrix order): see the module docstring."""
    results: dict[str, dict[str, Any]] = {}

    def metrics_of(stage: dict[str, Any]) -> dict[str, Any]:
        key = stage.get("key")
        if not key or stage.get("status") not in ("ran", "cached", "diverged"):
            return {}
        if key not in results:
            try:
                metrics = read_json(store.stage_dir(key) / "result.json").get("metrics") or {}
            except (OSError, ValueError, AttributeError):
                metrics = {}
            results[key] = {k: v for k, v in metrics.items() if _scalar(v)}
        return results[key]

    axes: list[str] = []
    for r in records:
        axes += [a for a in (r.get("params") or {}) if a not in axes]
    stage_ids: list[str] = []
    for r in records:
        stage_ids += [s for s in r.get("stages", {}) if s not in stage_ids]
    per_stage = {sid: [metrics_of(r.get("stages", {}).get(sid, {})) for r in records] for sid in stage_ids}
    stage = next((sid for sid in reversed(stage_ids) if any(set(m) & set(HEADLINE) for m in per_stage[sid])), None)
    if stage is not None:
        metrics = [m for m in HEADLINE if any(m in row for row in per_stage[stage])]
    else:
        stage = next((sid for sid in reversed(stage_ids) if any(per_stage[sid])), None)
        names = sorted({k for row in per_stage.get(stage, []) for k in row}) if stage else []
        metrics = names[:MAX_OTHER_METRICS]
    rows = [{"params": dict(r.get("params") or {}), "status": r.get("status"), "run": r.get("run"),
             "metrics": {m: per_stage[stage][i].get(m) for m in metrics if m in per_stage[stage][i]} if stage else {}}
            for i, r in enumerate(records)]
    keys = [(m, up) for m, up in RANKING if m in metrics]
    if not keys and metrics and metrics[0] != "diverged_at_step":
        keys = [(metrics[0], False)]
    ranked_by = keys[0][0] if keys else None

    def rank(item: tuple[int, dict[str, Any]]) -> tuple[Any, ...]:
        i, row = item
        out: list[Any] = []
        for m, higher in keys:  # ties on the first metric are broken by the next ones
            v = row["metrics"].get(m)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            out += [0, -v if higher else v] if ok else [1, 0.0]
        return (*out, i)

    ordered = [row for _, row in sorted(enumerate(rows), key=rank)]
    first = records[0] if records else {}
    return SweepTable(str(first.get("pipeline", "")), str(first.get("invocation") or first.get("run", "")), axes, stage,
                      metrics, ranked_by, ordered)


@dataclass
class SweepFiles:
    dir: Path
    csv: Path
    markdown: Path
    plots: list[Path]
    table: SweepTable

    def to_json(self) -> dict[str, Any]:
        return {"dir": str(self.dir), "csv": str(self.csv), "markdown": str(self.markdown), "plots": [str(p) for p in self.plots],
                "ranked_by": self.table.ranked_by, "best": self.table.rows[0]["params"] if self.table.rows else None}


def sweep_dir(store: Store, invocation: str) -> Path:
    return store.root / "sweeps" / invocation


def write_summary(store: Store, records: list[dict[str, Any]]) -> SweepFiles:
    """Write the summary of an invocation's records into its directory (module docstring)."""
    from .store import atomic_write_text

    table = summarize(store, records)
    out = sweep_dir(store, table.invocation)
    atomic_write_text(out / "summary.csv", table.csv_text())
    atomic_write_text(out / "summary.md", table.markdown() + "\n")
    plots = [plot_metric(table, m, a, out / "plots") for m in table.metrics for a in table.axes]
    return SweepFiles(out, out / "summary.csv", out / "summary.md", [p for p in plots if p is not None], table)


def plot_metric(table: SweepTable, metric: str, axis: str, out_dir: Path) -> Path | None:
    """``metric`` against the values of ``axis``, one line per combination of the other axes;
    a numeric axis spanning 50x or more of positive values is drawn on a log scale. None when
    no row has the metric."""
    from .figure_style import new_figure, save

    points = [(r["params"].get(axis), r["metrics"][metric], r) for r in table.rows
              if isinstance(r["metrics"].get(metric), (int, float)) and math.isfinite(r["metrics"][metric])]
    if not points:
        return None
    values = [p[0] for p in points]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        position = {json.dumps(v): float(v) for v in values}
    else:
        order = list(dict.fromkeys(json.dumps(v, sort_keys=True) for v in values))
        position = {v: float(i) for i, v in enumerate(order)}
    others = [a for a in table.axes if a != axis]
    series: dict[str, list[tuple[float, float]]] = {}
    for v, y, row in points:
        label = ", ".join(f"{a.rsplit('.', 1)[-1]}={short_value(row['params'].get(a))}" for a in others)
        series.setdefault(label, []).append((position[json.dumps(v, sort_keys=not numeric)], float(y)))
    fig, ax = new_figure()
    for label, pts in series.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label or None)
    xs = [position[k] for k in position]
    if numeric and min(xs) > 0 and max(xs) / min(xs) >= 50:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(list(position.values()), [short_value(json.loads(k)) for k in position], rotation=20, ha="right")
    ax.set_xlabel(axis)
    ax.set_ylabel(metric)
    ax.set_title(f"{table.pipeline}: {metric} against {axis.rsplit('.', 1)[-1]}")
    if len(series) > 8:  # a long legend beside the axes, not over the points
        fig.set_size_inches(9.6, 4.0 + 0.12 * max(0, len(series) - 16))
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + len(series) // 17)
    elif len(series) > 1:
        ax.legend(fontsize="small")
    return save(fig, out_dir / f"{_safe(metric)}_vs_{_safe(axis)}.png")


def _scalar(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def short_value(v: Any, limit: int = 24) -> str:
    """A swept value as a tick or legend label: a component as ``sgd lr=0.01 momentum=0.9``
    (its scalar params whole: they tell the runs apart; at most 40 characters), anything
    else cut to ``limit`` (a whole stage mapping would squeeze the axes to nothing)."""
    if isinstance(v, dict) and isinstance(v.get("name"), str):
        params = " ".join(f"{k}={_number(x)}" for k, x in v.items() if k != "name" and isinstance(x, (int, float, str, bool)))
        text, limit = f"{v['name']} {params}".strip(), max(limit, 40)
    else:
        text = _number(v) if isinstance(v, float) else _value(v)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _value(v: Any) -> str:
    return json.dumps(v, separators=(",", ":")) if isinstance(v, (dict, list)) or v is None else str(v)


def _number(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80]
