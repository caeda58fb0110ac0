"""``nnopt report``: one self-contained HTML page with a run's metrics and plots."""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any

from .lookup import _not_found, find_run
from .store import Store, atomic_write_text, read_json


def _runs_for(store: Store, ref: str) -> list[dict[str, Any]]:
    """The runs to report: a run id's run, or all the runs (matrix combinations) of the
    latest `nnopt run` of a pipeline file."""
    if Path(ref).is_file():
        path = os.path.abspath(ref)
        runs = [r for r in store.runs() if r.get("file") == path]
        if not runs:
            raise _not_found(ref, f"no run of {ref} in the store {store.root}; run it first")
        latest = runs[-1].get("invocation")
        return [r for r in runs if latest and r.get("invocation") == latest] or runs[-1:]
    return [find_run(store, ref)]


def _table(values: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(f'{v:.6g}' if isinstance(v, float) else json.dumps(v))}</td></tr>"
        for k, v in values.items()
    )
    return f"<table>{rows}</table>" if rows else ""


def render(store: Store, runs: list[dict[str, Any]]) -> str:
    parts = [f"<h1>{html.escape(runs[0]['pipeline'])}</h1>"]
    for run in runs:
        parts += _render_run(store, run)
    style = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}"
             "img{max-width:100%}small{color:#777;font-weight:normal}pre{background:#f6f6f6;padding:.5em;overflow:auto}"
             "section{border-top:2px solid #333;margin-top:2em}")
    title = html.escape(runs[0]["invocation"] if len(runs) > 1 else runs[0]["run"])
    return f"<!doctype html><meta charset='utf-8'><title>nnopt {title}</title><style>{style}</style>" + "\n".join(parts)


def _render_run(store: Store, run: dict[str, Any]) -> list[str]:
    parts = [f"<section><p>run <code>{html.escape(run['run'])}</code> — status <b>{html.escape(run['status'])}</b>"
             f" — file <code>{html.escape(str(run.get('file')))}</code></p>"]
    if run.get("params"):
        parts.append("<h3>matrix values</h3>" + _table(run["params"]))
    for sid, s in run.get("stages", {}).items():
        parts.append(f"<h2>{html.escape(sid)} <small>{html.escape(s['status'])} · {s['key'][:16]}</small></h2>")
        d = store.stage_dir(s["key"])
        if not store.is_complete(s["key"]):
            parts.append("<p>not in the store (or damaged)</p>")
            continue
        result = read_json(d / "result.json")
        parts.append(_table(result.get("metrics", {})))
        for name, value in (result.get("results") or {}).items():
            parts.append(f"<h3>{html.escape(name)}</h3><pre>{html.escape(json.dumps(value, indent=1)[:20000])}</pre>")
        for png in sorted((d / "plots").glob("*.png")) if (d / "plots").is_dir() else []:
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            parts.append(f"<figure><img src='data:image/png;base64,{data}'><figcaption>{html.escape(png.name)}</figcaption></figure>")
        spec = read_json(d / "spec.json")
        parts.append(f"<details><summary>resolved spec</summary><pre>{html.escape(json.dumps(spec, indent=1))}</pre></details>")
    parts.append("</section>")
    return parts


def write_report(store: Store, ref: str, output: Path | None = None) -> Path:
    runs = _runs_for(store, ref)
    name = runs[0]["invocation"] if len(runs) > 1 else runs[0]["run"]
    path = output or store.root / "reports" / f"{name}.html"
    atomic_write_text(path, render(store, runs))
    return path
