"""``nnopt report REF...``: one self-contained HTML page (or Markdown with PNGs) of runs.

REF is a run id, an invocation (sweep) id, a pipeline name or file (its latest invocation),
or ``latest``. One run reads as a lab notebook (``report_sections.run_blocks``); a sweep, or
several REFs, first compares the runs (a sortable table, overlaid learning curves, metrics
against swept values) and then shows each run. Rendering is ``report_render``'s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .lookup import _not_found, find_runs
from .report_render import to_html, to_markdown
from .report_sections import comparison_blocks, run_blocks
from .store import Store, atomic_write_text

FORMATS = ("html", "md")


def _runs_for(store: Store, ref: str) -> list[dict[str, Any]]:
    """The runs a REF names: a run id's run; an invocation's, a pipeline name's or a pipeline
    file's latest invocation's runs (its matrix combinations)."""
    if Path(ref).is_file():
        path = os.path.abspath(ref)
        runs = [r for r in store.runs() if r.get("file") == path]
        if not runs:
            raise _not_found(ref, f"no run of {ref} in the store {store.root}; run it first")
        latest = runs[-1].get("invocation")
        return [r for r in runs if latest and r.get("invocation") == latest] or runs[-1:]
    return find_runs(store, ref, shown=ref)[1]


def collect(store: Store, refs: list[str]) -> list[dict[str, Any]]:
    """The runs of every REF, each once, in the order named."""
    seen: dict[str, dict[str, Any]] = {}
    for ref in refs or ["latest"]:
        for r in _runs_for(store, ref):
            seen.setdefault(r["run"], r)
    return list(seen.values())


def blocks(store: Store, runs: list[dict[str, Any]]) -> tuple[str, list[Any]]:
    """The report's title and blocks: a comparison first when there are several runs."""
    from .report_render import Heading

    pipelines = list(dict.fromkeys(str(r.get("pipeline")) for r in runs))
    title = " vs ".join(pipelines)
    out: list[Any] = [Heading(1, title)]
    if len(runs) > 1:
        out += comparison_blocks(store, runs, title)
    for run in runs:
        out += run_blocks(store, run)
    return title, out


def render(store: Store, runs: list[dict[str, Any]]) -> str:
    """The HTML page of ``runs``."""
    title, body = blocks(store, runs)
    return to_html(title, body)


def _name(runs: list[dict[str, Any]]) -> str:
    invocations = {r.get("invocation") or r["run"] for r in runs}
    if len(runs) == 1:
        return runs[0]["run"]
    return invocations.pop() if len(invocations) == 1 else f"compare-{runs[0]['run']}-{len(runs)}runs"


def write_report(store: Store, refs: str | list[str], output: Path | None = None, fmt: str = "html") -> Path:
    """Write the report of ``refs`` and return its path: ``<store>/reports/NAME.html``, or
    with ``fmt="md"`` ``<store>/reports/NAME/report.md`` with its PNGs beside it."""
    runs = collect(store, [refs] if isinstance(refs, str) else list(refs))
    name = _name(runs)
    if fmt == "md":
        path = output or store.root / "reports" / name / "report.md"
        title, body = blocks(store, runs)
        text, _images = to_markdown(title, body, Path(path))
        atomic_write_text(Path(path), text)
        return Path(path)
    path = output or store.root / "reports" / f"{name}.html"
    atomic_write_text(Path(path), render(store, runs))
    return Path(path)
