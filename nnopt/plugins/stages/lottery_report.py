"""The ``lottery_report`` stage: the result table and plots of a ``lottery`` block.

It is the last stage a ``lottery`` block expands into, under the block's own id
(``nnopt show RUN/BLOCK`` shows its table). Every stage it summarizes is a weight reference of
its spec, so they are its dependencies and their keys are in its key: it is recomputed (in
well under a second) exactly when one of them changes or a round is added.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, model_validator

from nnopt.core.component import WeightRef
from nnopt.core.stage import Stage, StageContext, StageOutcome, StageSpec
from nnopt.core import figure_style as fs

#: the table's columns, in order (``results.lottery.columns``)
COLUMNS = ("round", "variant", "status", "weights_remaining", "test_accuracy", "test_loss", "best_step",
           "best_test_loss")


class LotteryReportSpec(StageSpec):
    """``kind: lottery_report``: the dense run, each round's ticket, each control's rounds."""

    dense: WeightRef = Field(..., description="the dense train stage (round 0, 100% of the weights)")
    tickets: list[WeightRef] = Field(..., min_length=1, description="the trained ticket of round 1, 2, ... in order")
    controls: dict[str, list[WeightRef]] = Field(default_factory=dict, description="control name -> its trained "
                                                 "stage of round 1, 2, ... in order")
    curves: list[int] = Field(default_factory=list, description="rounds whose learning curves are plotted (0: dense)")

    @model_validator(mode="after")
    def _one_per_round(self) -> "LotteryReportSpec":
        for name, refs in self.controls.items():
            if len(refs) != len(self.tickets):
                raise ValueError(f"control '{name}' names {len(refs)} stages, and there are {len(self.tickets)} rounds")
        late = [c for c in self.curves if not 0 <= c <= len(self.tickets)]
        if late:
            raise ValueError(f"curves names round {late[0]}, and there are {len(self.tickets)} rounds")
        return self


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def best_test_loss(records: list[dict[str, Any]]) -> tuple[int | None, float | None]:
    """The step of the lowest test loss among a train stage's evaluations (the first such
    step on a tie) and that loss: the early-stopping step of Frankle & Carbin's Figure 1."""
    best: tuple[int | None, float | None] = (None, None)
    for rec in records:
        loss = _number(rec.get("test_loss"))
        if loss is not None and "step" in rec and (best[1] is None or loss < best[1]):
            best = (int(rec["step"]), loss)
    return best


class LotteryReport(Stage):
    """The lottery ticket result table and pictures (Frankle & Carbin 2019, Figures 1, 3, 4).

    One row per trained network: round 0 is the dense run, round K the ticket (``variant:
    ticket``) and each control of round K. Columns: ``weights_remaining`` = 100·(kept
    entries)/(entries) over the masked (prunable) tensors of the stage's ``masks.safetensors``
    (100 for a stage without masks), counted exactly; ``test_accuracy`` and ``test_loss`` of
    its final weights (its result's metrics); ``best_step``/``best_test_loss``: the
    evaluation of lowest test loss in its ``metrics.jsonl`` (the early-stopping step);
    ``status``: ``ok``, ``diverged`` (its metrics are then those of its last finite
    evaluation, as its result reports them) or ``skipped`` (a later round of a block whose
    round diverged: never trained, no numbers). The report runs after a divergence
    (``runs_after_divergence``): a ticket that diverges at high sparsity is a finding.

    Outputs: results ``lottery`` = ``{columns, rows}`` (rows as mappings), ``table.csv`` and
    ``table.md``; ``plots/accuracy_vs_weights.png``: test accuracy (test loss for a task
    without accuracy) against weights remaining, log x axis decreasing to the right, the ticket
    and every control, the dense run as a dashed line; ``plots/learning_curves.png``: test
    accuracy (or loss) against step for the rounds in ``curves``.
    """

    Params: ClassVar[type[LotteryReportSpec]] = LotteryReportSpec
    cache_version: ClassVar[int] = 1

    params: LotteryReportSpec
    runs_after_divergence: ClassVar[bool] = True

    def run(self, ctx: StageContext) -> StageOutcome:
        spec = self.params
        runs: list[tuple[int, str, WeightRef]] = [(0, "dense", spec.dense)]
        runs += [(k, "ticket", ref) for k, ref in enumerate(spec.tickets, 1)]
        runs += [(k, name, ref) for name, refs in spec.controls.items() for k, ref in enumerate(refs, 1)]
        rows, curves = [], {}
        for k, variant, ref in runs:
            status = ctx.stage_status(ref)
            metrics = ctx.stage_result(ref).get("metrics", {}) if status != "skipped" else {}
            records = ctx.stage_metrics(ref) if status != "skipped" else []
            step, loss = best_test_loss(records)
            remaining = _remaining(ctx, ref) if status != "skipped" else None
            rows.append({"round": k, "variant": variant, "stage": str(ref), "status": status,
                         "weights_remaining": remaining,
                         "test_accuracy": _number(metrics.get("test_accuracy")), "test_loss": _number(metrics.get("test_loss")),
                         "best_step": step, "best_test_loss": loss})
            if variant in ("dense", "ticket") and k in spec.curves:
                curves[k] = records
        order = {name: i for i, name in enumerate(["dense", "ticket", *spec.controls])}
        rows.sort(key=lambda r: (r["round"], order[r["variant"]]))  # each round's ticket, then its controls
        _write_tables(ctx.out_dir, rows)
        _plot_accuracy(rows, ctx.plots_dir / "accuracy_vs_weights.png", ctx.stage_id)
        by_round = {r["round"]: r for r in rows if r["variant"] in ("dense", "ticket")}
        _plot_curves(curves, by_round, ctx.plots_dir / "learning_curves.png", ctx.stage_id)
        last = by_round[len(spec.tickets)]
        metrics = {"rounds": len(spec.tickets), "dense_test_accuracy": by_round[0]["test_accuracy"],
                   "final_weights_remaining": last["weights_remaining"], "final_ticket_test_accuracy": last["test_accuracy"]}
        return StageOutcome(metrics=metrics, results={"lottery": {"columns": ["stage", *COLUMNS], "rows": rows}})


def _remaining(ctx: StageContext, ref: WeightRef) -> float:
    masks = ctx.load_masks(ref)
    if not masks:
        return 100.0
    kept = sum(int((m != 0).sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return 100.0 * kept / total if total else 100.0


def _write_tables(out_dir: Path, rows: list[dict[str, Any]]) -> None:
    with open(out_dir / "table.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["stage", *COLUMNS])
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)

    def cell(v: Any, digits: int = 4) -> str:
        return "–" if v is None else (f"{v:.{digits}g}" if isinstance(v, float) else str(v))

    def percent(v: Any) -> str:
        return "–" if v is None else f"{v:.2f}"

    lines = ["| round | variant | status | weights remaining % | test accuracy | test loss | best-test-loss step |",
             "| ---: | --- | --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['round']} | {r['variant']} | {r['status']} | {percent(r['weights_remaining'])} | "
              f"{cell(r['test_accuracy'])} | {cell(r['test_loss'])} | {cell(r['best_step'])} |" for r in rows]
    (out_dir / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _plot_accuracy(rows: list[dict[str, Any]], path: Path, stage_id: str = "") -> Path:
    from nnopt.plugins.analyzers._plot import mark_diverged, new_figure, save

    metric = "test_accuracy" if any(r["test_accuracy"] is not None for r in rows) else "test_loss"
    fig, ax = new_figure()
    dense = next(r for r in rows if r["variant"] == "dense")
    variants = ["ticket", *dict.fromkeys(r["variant"] for r in rows if r["variant"] not in ("dense", "ticket"))]
    crossed: list[tuple[float, float]] = []
    for variant in variants:
        # the ticket's line starts at the dense run (round 0: nothing pruned yet)
        mine = [r for r in rows if (r["variant"] == variant or (variant == "ticket" and r is dense))
                and r[metric] is not None and r["weights_remaining"] is not None]
        points = [(r["weights_remaining"], r[metric]) for r in mine]
        if points:
            xs, ys = zip(*sorted(points, reverse=True))
            ax.plot(xs, ys, marker="o", markersize=3, label="winning ticket" if variant == "ticket" else variant)
            # a diverged run's point (its last finite evaluation) is crossed out
            crossed += [(r["weights_remaining"], r[metric]) for r in mine if r["status"] == "diverged"]
    if dense[metric] is not None:
        ax.axhline(dense[metric], color=fs.GREY, linestyle="--", linewidth=1, label="dense")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(_plain_percent())
    ax.xaxis.set_minor_formatter(_plain_percent())  # plain numbers, no mathtext (see analyzers._plot)
    # decreasing: sparser to the right, as in Frankle & Carbin's figures; 100% at the left edge
    sparsest = min((r["weights_remaining"] for r in rows if r["weights_remaining"] is not None), default=100.0)
    ax.set_xlim(110.0, min(sparsest, 90.0) / 1.1)
    ax.set_xlabel("weights remaining (%)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title((f"stage '{stage_id}': " if stage_id else "") + f"{metric.replace('_', ' ')} vs weights remaining")
    ax.legend()
    if crossed:
        mark_diverged(ax, [x for x, _ in crossed], [y for _, y in crossed])
    return save(fig, path)


def _plot_curves(curves: dict[int, list[dict[str, Any]]], by_round: dict[int, dict[str, Any]], path: Path,
                 stage_id: str = "") -> Path:
    from nnopt.plugins.analyzers._plot import new_figure, save

    metric = "test_accuracy" if any(_number(r.get("test_accuracy")) is not None for recs in curves.values() for r in recs) \
        else "test_loss"
    fig, ax = new_figure()
    for i, k in enumerate(sorted(curves)):
        pts = [(int(r["step"]), _number(r.get(metric))) for r in curves[k] if "step" in r and _number(r.get(metric)) is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", markersize=2, color=fs.ramp(i, len(curves)), label=f"round {k} ({by_round[k]['weights_remaining'] or 0:.1f}%)" if k else "dense (round 0)")
    ax.set_xlabel("step")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title((f"stage '{stage_id}': " if stage_id else "") + "learning curves of the winning tickets"
                 + ("  (darker: denser)" if len(curves) > 1 else ""))
    if ax.lines:
        ax.legend()
    return save(fig, path)


def _plain_percent():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _pos: f"{x:g}")
