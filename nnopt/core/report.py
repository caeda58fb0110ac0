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


def _run_for(store: Store, ref: str) -> dict[str, Any]:
    if Path(ref).is_file():  # a pipeline file: its latest run
        path = os.path.abspath(ref)
        runs = [r for r in store.runs() if r.get("file") == path]
        if not runs:
            raise _not_found(ref, f"no run of {ref} in the store {store.root}; run it first")
        return runs[-1]
    return find_run(store, ref)


def _table(values: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(f'{v:.6g}' if isinstance(v, float) else json.dumps(v))}</td></tr>"
        for k, v in values.items()
    )
    return f"<table>{rows}</table>" if rows else ""


def render(store: Store, run: dict[str, Any]) -> str:
    parts = [f"<h1>{html.escape(run['pipeline'])}</h1>",
             f"<p>run <code>{html.escape(run['run'])}</code> — status <b>{html.escape(run['status'])}</b>"
             f" — file <code>{html.escape(str(run.get('file')))}</code></p>"]
    if run.get("params"):
        parts.append("<h3>matrix values</h3>" + _table(run["params"]))
    for sid, s in run.get("stages", {}).items():
        parts.append(f"<h2>{html.escape(sid)} <small>{html.escape(s['status'])} · {s['key'][:16]}</small></h2>")
        d = store.stage_dir(s["key"])
        if not (d / "manifest.json").is_file():
            parts.append("<p>not in the store</p>")
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
    style = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}"
             "img{max-width:100%}small{color:#777;font-weight:normal}pre{background:#f6f6f6;padding:.5em;overflow:auto}")
    return f"<!doctype html><meta charset='utf-8'><title>nnopt {html.escape(run['run'])}</title><style>{style}</style>" + "\n".join(parts)


def write_report(store: Store, ref: str, output: Path | None = None) -> Path:
    run = _run_for(store, ref)
    path = output or store.root / "reports" / f"{run['run']}.html"
    atomic_write_text(path, render(store, run))
    return path
