"""What a report says: the blocks (``report_render``) of one run, and of a comparison of runs.

A run: its settings summary (data, model arch/init/norm, optimizer and lr, schedule,
steps/epochs, seed of each stage that has them), its stage graph, one row per stage with
status, time, short key and provenance, then per stage its metrics, analyzer results (as
tables) and plots (each with a caption saying what it shows). A comparison (a sweep's
combinations, or runs named on the command line): a sortable table of the runs × headline
metrics, their test-loss curves overlaid, and each headline metric against each swept value.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from .report_render import Details, Graph, Heading, Image, KeyValues, Para, Results, Table, number
from .store import Store, read_json
from .sweep_summary import short_value

#: captions of the plots nnopt's own stages and analyzers write, by file stem
CAPTIONS = {
    "loss": "Training and test loss against step",
    "learning_curves": "Learning curves: loss and accuracy against step",
    "accuracy_vs_weights": "Test accuracy against the fraction of weights remaining (lottery-ticket pruning rounds)",
    "hessian_eigs": "Top eigenvalues of the loss Hessian at the trained weights",
    "hessian_eigs_track": "Top Hessian eigenvalues tracked over training",
    "hessian_density": "Spectral density of the loss Hessian (stochastic Lanczos quadrature)",
    "hessian_trace": "Trace of the loss Hessian (Hutchinson estimate)",
    "hessian_exact": "Exact eigenvalue spectrum of the loss Hessian",
    "surface_contour": "Loss surface around the trained weights along two directions (contours)",
    "surface_3d": "Loss surface around the trained weights along two directions (3-D view)",
    "ntk_spectrum": "Eigenvalue spectrum of the empirical neural tangent kernel",
    "ntk_drift": "Relative change of the empirical NTK from its value at initialization, during training",
    "ntk_regression": "Kernel (NTK) regression compared with the trained network",
    "kernel_compare": "Empirical kernel compared with its infinite-width (analytic) counterpart",
    "grad_norms": "Gradient norm of each layer",
    "grad_norms_track": "Gradient norm of each layer over training",
    "grad_norms_heatmap": "Gradient norm of each layer over training (layers × steps)",
    "signal_propagation": "Forward activation and backward gradient magnitudes by layer (signal propagation)",
    "signal_propagation_track": "Signal propagation by layer, tracked over training",
    "jacobian_spectrum": "Singular values of the input–output Jacobian",
    "jacobian_spectrum_track": "Singular values of the input–output Jacobian over training",
    "weight_spectrum": "Singular-value spectrum of each layer's weight matrix",
    "sharpness": "Sharpness: the loss increase within a neighbourhood of the trained weights",
    "interpolate": "Loss along the straight line between two sets of weights",
    "linear_mode_connectivity": "Loss along the linear path between two trained solutions (linear mode connectivity)",
    "mode_connectivity": "Loss along a low-loss curve connecting two solutions (mode connectivity)",
    "distance": "Distance of the weights from their initialization",
    "init_signals": "At initialization: forward second moments against the mean-field prediction, gradient norms and "
                    "dead or saturated units, by layer (diagnose)",
    "lr_range": "Learning-rate range test: the smoothed loss as the rate grows exponentially (diagnose)",
    "probe_loss": "The diagnosis's training probe as configured, and with each fix tried (diagnose)",
}


def caption(file: str, writer: str) -> str:
    """What a plot shows, from its file name; ``writer``: the analyzer or stage that wrote it."""
    stem = Path(file).stem
    if stem in CAPTIONS:
        return CAPTIONS[stem]
    m = re.fullmatch(r"(.+)_vs_(.+)", stem)
    if m:
        return f"{m.group(1)} against {m.group(2)}"
    return f"{Path(file).name}: plot written by {writer}"


# ------------------------------------------------------------------ settings
def _name(ref: Any) -> str:
    if isinstance(ref, dict):
        return str(ref.get("name", "?"))
    return "–" if ref is None else str(ref)


def _model(model: Any) -> str:
    arch = (model or {}).get("arch") if isinstance(model, dict) else None
    if not isinstance(arch, dict):
        return _name(arch)
    shape = next((f"{k}={number(arch[k])}" for k in ("widths", "depth", "width", "layers") if k in arch), "")
    act = f" {_name(arch['activation'])}" if isinstance(arch.get("activation"), dict) else ""
    return f"{arch.get('name', '?')}{' ' + shape if shape else ''}{act}"


SETTINGS = ("data", "model", "init", "norm", "optimizer", "lr", "schedule", "steps", "epochs", "seed")


def settings(spec: dict[str, Any]) -> dict[str, str]:
    """The settings that matter of one stage's resolved spec, as short text."""
    model = spec.get("model") if isinstance(spec.get("model"), dict) else {}
    opt = spec.get("optimizer")
    return {"data": _name(spec.get("data")), "model": _model(model), "init": _name(model.get("init")),
            "norm": _name(model.get("norm")), "optimizer": _name(opt),
            "lr": number(opt.get("lr")) if isinstance(opt, dict) and "lr" in opt else "–",
            "schedule": _name(spec.get("schedule")), "steps": number(spec.get("steps")) if spec.get("steps") is not None else "–",
            "epochs": number(spec.get("epochs")) if spec.get("epochs") is not None else "–", "seed": number(spec.get("seed"))}


def _spec(store: Store, key: str) -> dict[str, Any]:
    try:
        spec = read_json(store.stage_dir(key) / "spec.json")
        return spec if isinstance(spec, dict) else {}
    except (OSError, ValueError):
        return {}


def run_settings(store: Store, run: dict[str, Any]) -> dict[str, str]:
    """The settings of a run's training: its last stage with an optimizer, else its first stage."""
    specs = [_spec(store, s["key"]) for s in run.get("stages", {}).values()]
    trained = [s for s in specs if s.get("optimizer")]
    return settings(trained[-1] if trained else (specs[0] if specs else {}))


def _deps(spec: dict[str, Any], stage_ids: set[str]) -> list[str]:
    """The stages a resolved spec reads weights of: strings ``STAGE`` or ``STAGE@STEP``."""
    found: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, str):
            sid = v.split("@", 1)[0]
            if sid in stage_ids and sid not in found and sid != spec.get("id"):
                found.append(sid)
        elif isinstance(v, dict):
            for k, x in v.items():
                if k not in ("id", "kind", "name"):
                    walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(spec)
    return found


# ------------------------------------------------------------------ one run
def run_blocks(store: Store, run: dict[str, Any]) -> list[Any]:
    """The blocks of one run (module docstring)."""
    stages = run.get("stages", {})
    params = run.get("params") or {}
    out: list[Any] = [Heading(2, f"run {run['run']}"),
                      Para(f"pipeline {run.get('pipeline')} · status {run.get('status')} · file {run.get('file')}")]
    if params:
        out += [Heading(3, "matrix values"), KeyValues(dict(params))]
    specs = {sid: _spec(store, s["key"]) for sid, s in stages.items()}
    rows = [[sid, *settings(sp).values()] for sid, sp in specs.items() if sp.get("optimizer") or sp.get("model")]
    if rows:
        out += [Heading(3, "settings"), Table(["stage", *SETTINGS], rows)]
    out += [Heading(3, "stage graph"), Graph([(sid, specs[sid].get("kind", "?"), s["status"], _deps(specs[sid], set(stages)))
                                              for sid, s in stages.items()])]
    table = []
    for sid, s in stages.items():
        man = _manifest(store, s["key"])
        seconds = _result(store, s["key"]).get("seconds")
        providers = sorted(set((man.get("providers") or {}).values()))
        nn = man.get("nnopt") or {}
        prov = "; ".join(x for x in [", ".join(providers), f"torch {man['torch']}" if man.get("torch") else "",
                                     f"git {str(nn.get('git_commit'))[:10]}" if nn.get("git_commit") else "",
                                     str(man.get("device") or "")] if x)
        table.append([sid, s["status"], f"{seconds:.2f} s" if isinstance(seconds, (int, float)) else "–", s["key"][:12], prov or "–"])
    out += [Heading(3, "stages"), Table(["stage", "status", "time", "key", "provenance"], table)]
    for sid, s in stages.items():
        out += _stage_blocks(store, sid, s, specs[sid], run.get("file"))
    return out


def _manifest(store: Store, key: str) -> dict[str, Any]:
    try:
        m = read_json(store.stage_dir(key) / "manifest.json")
        return m if isinstance(m, dict) else {}
    except (OSError, ValueError):
        return {}


def _result(store: Store, key: str) -> dict[str, Any]:
    try:
        r = read_json(store.stage_dir(key) / "result.json") if store.is_complete(key) else {}
        return r if isinstance(r, dict) else {}
    except (OSError, ValueError):
        return {}


def _own_blocks(kind: Any, result: dict[str, Any], stage_dir: Path, pipeline_file: str | None) -> list[Any] | None:
    """The stage kind's own presentation of its results (``Stage.report_blocks``), or None:
    the generic tables (also when the kind is no longer installed, or its method fails)."""
    from .errors import PluginError
    from .registry import Registry

    try:
        cls, _ = Registry().load("stages", str(kind))
        return cls.report_blocks(result, stage_dir, pipeline_file)
    except (PluginError, AttributeError, KeyError, TypeError, ValueError, OSError):
        return None


def _stage_blocks(store: Store, sid: str, stage: dict[str, Any], spec: dict[str, Any],
                  pipeline_file: str | None = None) -> list[Any]:
    out: list[Any] = [Heading(3, f"stage {sid} ({spec.get('kind', '?')}, {stage['status']})")]
    if not store.is_complete(stage["key"]):
        return out + [Para("not in the store (or damaged)")]
    d = store.stage_dir(stage["key"])
    result = _result(store, stage["key"])
    if result.get("metrics"):
        out += [Heading(4, "metrics"), KeyValues(result["metrics"])]
    own = _own_blocks(spec.get("kind"), result, d, pipeline_file)
    if own is not None:
        out += own
    else:
        for name, value in (result.get("results") or {}).items():
            out.append(Results(name, value))
    analyzers = [a.get("name") for a in spec.get("analyzers") or [] if isinstance(a, dict)]
    for png in sorted((d / "plots").glob("*.png")) if (d / "plots").is_dir() else []:
        writer = next((a for a in analyzers if a and png.stem.startswith(a)), f"stage {sid} ({spec.get('kind', '?')})")
        out.append(Image(png.read_bytes(), caption(png.name, writer), f"{sid}_{png.name}"))
    from .lookup import spec_yaml

    out.append(Details("resolved spec", spec_yaml(spec)))
    return out


# ------------------------------------------------------------------ comparisons
def label(run: dict[str, Any], differing: dict[str, str]) -> str:
    """How a run is named in a legend: its swept values, else the settings in which it differs."""
    params = run.get("params") or {}
    if params:
        return ", ".join(f"{k.rsplit('.', 1)[-1]}={short_value(v)}" for k, v in params.items())
    return ", ".join(f"{k}={short_value(v)}" for k, v in differing.items()) or run["run"]


def _curve(store: Store, run: dict[str, Any], stage: str | None) -> list[tuple[float, float]]:
    """``(step, test_loss)`` points of a run's stage (``stage``, else its last with any)."""
    ids = [stage] if stage else list(reversed(list(run.get("stages", {}))))
    for sid in ids:
        s = run.get("stages", {}).get(sid)
        if not s:
            continue
        path = store.stage_dir(s["key"]) / "metrics.jsonl"
        if not path.is_file():
            continue
        pts = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("test_loss"), (int, float)) and isinstance(row.get("step"), (int, float)):
                pts.append((float(row["step"]), float(row["test_loss"])))
        if pts:
            return pts
    return []


def _png(fig: Any) -> bytes:
    from .figure_style import png_bytes

    return png_bytes(fig)


def comparison_blocks(store: Store, runs: list[dict[str, Any]], title: str) -> list[Any]:
    """A sortable table of the runs × headline metrics, their test-loss curves overlaid, and
    each headline metric against each swept value."""
    from .sweep_summary import plot_metric, summarize

    table = summarize(store, runs)
    all_settings = {r["run"]: run_settings(store, r) for r in runs}
    varied = [k for k in SETTINGS if len({s[k] for s in all_settings.values()}) > 1]
    cols = [*table.axes, *(k for k in varied if not table.axes), "status", *table.metrics, "run"]
    rows = []
    for row in table.rows:
        cells = table.cells(row, text=False)
        axes_cells, rest = cells[: len(table.axes)], cells[len(table.axes):]
        rows.append([*axes_cells, *(all_settings[row["run"]][k] for k in varied if not table.axes), *rest])
    out: list[Any] = [Heading(2, f"comparison of {len(runs)} runs"), Para(table.caption() + "; click a header to sort"),
                      Table(cols, rows, sortable=True)]
    setting_rows = [[label(r, {k: all_settings[r['run']][k] for k in varied}), *all_settings[r["run"]].values()] for r in runs]
    out += [Heading(3, "settings"), Table(["run", *SETTINGS], setting_rows, sortable=True)]
    from .figure_style import new_figure

    many = len(runs) > 8  # a long legend goes beside the axes, in columns, not over the curves
    columns = 1 + len(runs) // 33  # one column of legend up to 32 runs; the figure grows to hold it
    fig, ax = new_figure(9.6 if many else 6.4, 4.0 + (0.16 * max(0, len(runs) / columns - 20) if many else 0.0))
    drawn = 0
    for r in runs:
        pts = _curve(store, r, table.stage)
        if pts:
            # past the palette's 8 colours, a new line style tells the runs apart
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label(r, {k: all_settings[r['run']][k] for k in varied}),
                    marker="o" if len(pts) < 12 else None, linestyle=("-", "--", ":", "-.")[drawn // 8 % 4])
            drawn += 1
    if drawn:
        ax.set_xlabel("step")
        ax.set_ylabel("test loss")
        ax.set_title(f"{title}: test loss of each run")
        if many:
            ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=columns)
        else:
            ax.legend(fontsize="small")
        out.append(Image(_png(fig), "Test loss against step, one line per run (legend: its swept values or differing settings)",
                         "test_loss_curves.png"))
    with tempfile.TemporaryDirectory() as tmp:
        for m in table.metrics:
            for a in table.axes:
                p = plot_metric(table, m, a, Path(tmp))
                if p is not None:
                    out.append(Image(p.read_bytes(), f"{m} against the swept value {a}, one line per combination of the other axes",
                                     p.name))
    return out
