"""Rendering a report's blocks as one self-contained HTML page or as Markdown with PNGs beside it.

A report is a list of blocks (``report_sections`` builds them): headings, paragraphs,
key/value tables, tables (optionally sortable), analyzer results, images with captions, a
stage graph, and collapsed text. The HTML embeds every image as a ``data:image/png;base64``
URI and carries its own CSS and a tiny sorter script: the page needs no network to be viewed
and can be mailed as one file. The Markdown writes each image as a PNG file beside the
``.md`` and links it by a relative path.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: a list of numbers longer than this is summarized (first values, length, min, max)
LIST_ITEMS = 8
#: a {columns, rows} table with more rows than this shows its first ones and says so
MAX_ROWS = 200


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class KeyValues:
    values: dict[str, Any]


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]
    sortable: bool = False
    caption: str = ""


@dataclass
class Results:
    """One analyzer's (or stage's) results, rendered by the generic renderer."""

    name: str
    value: Any


@dataclass
class Image:
    png: bytes
    caption: str
    name: str  # a file name for the Markdown output


@dataclass
class Graph:
    """Stages and what each depends on: ``[(id, kind, status, [deps])]``."""

    stages: list[tuple[str, str, str, list[str]]] = field(default_factory=list)


@dataclass
class Details:
    summary: str
    text: str


# ------------------------------------------------------------------ values
def number(v: Any) -> str:
    """A value as short text: floats to 4 significant digits, containers as compact JSON."""
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def list_summary(values: list[Any]) -> str:
    """A list as text: short lists whole; long ones as their first items, length, min and max."""
    if len(values) <= LIST_ITEMS:
        return "[" + ", ".join(number(v) for v in values) + "]"
    head = ", ".join(number(v) for v in values[:LIST_ITEMS])
    nums = [float(v) for v in values if _numeric(v) and math.isfinite(v)]
    span = f", min {number(min(nums))}, max {number(max(nums))}" if nums else ""
    return f"[{head}, …] ({len(values)} items{span})"


def _is_table(v: Any) -> bool:
    return isinstance(v, dict) and isinstance(v.get("columns"), list) and isinstance(v.get("rows"), list)


def _records(v: Any) -> bool:
    """A list of dicts sharing their keys: drawn as a table, one row a dict."""
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v) and len({tuple(x) for x in v}) == 1


def _rows_of(columns: list[Any], rows: list[Any]) -> list[list[Any]]:
    return [[r.get(c) for c in columns] if isinstance(r, dict) else list(r) for r in rows]


def by_item(v: Any) -> Any:
    """An analyzer's result with its per-item lists drawn as one table: where a dict holds two
    or more lists of one length N (2 ≤ N ≤ ``MAX_ROWS``) of plain values — per layer
    (``layers``, ``q_hat``, ``q``), per eigenvalue (``eigenvalues``, ``residuals``) — they
    become the columns of ``{columns, rows}`` under the key ``by item`` (a list of names, if
    there is one, first; else a ``#`` column), and the rest of the dict stays as it was."""
    if not isinstance(v, dict):
        return v
    plain = (str, int, float, bool, type(None))
    lists = {k: x for k, x in v.items() if isinstance(x, list) and 2 <= len(x) <= MAX_ROWS
             and all(isinstance(e, plain) for e in x)}
    lengths: dict[int, list[str]] = {}
    for k, x in lists.items():
        lengths.setdefault(len(x), []).append(k)
    if not lengths:
        return v
    n, keys = max(lengths.items(), key=lambda item: (len(item[1]), item[0]))
    if len(keys) < 2:
        return v
    names = next((k for k in keys if all(isinstance(e, str) for e in lists[k])), None)
    columns = ([names] if names else ["#"]) + [k for k in keys if k != names]
    rows = [[lists[names][i] if names else i + 1, *(lists[k][i] for k in keys if k != names)] for i in range(n)]
    return {"by item": {"columns": columns, "rows": rows}, **{k: x for k, x in v.items() if k not in keys}}


# ------------------------------------------------------------------ HTML
def _esc(v: Any) -> str:
    return html.escape(v if isinstance(v, str) else number(v))


def _html_table(columns: list[Any], rows: list[list[Any]], sortable: bool = False, caption: str = "") -> str:
    shown = rows[:MAX_ROWS]
    more = f"<caption>{_esc(caption)}{' — ' if caption else ''}first {MAX_ROWS} of {len(rows)} rows</caption>" if len(rows) > MAX_ROWS \
        else (f"<caption>{_esc(caption)}</caption>" if caption else "")
    head = "".join(f"<th>{_esc(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{value_html(v)}</td>" for v in r) + "</tr>" for r in shown)
    cls = " class='sortable'" if sortable else ""
    return f"<table{cls}>{more}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def value_html(v: Any) -> str:
    """Any JSON value as HTML: ``{columns, rows}`` as a table, dicts as nested key/value tables,
    lists of records as tables, long lists summarized, scalars as short text."""
    if _is_table(v):
        return _html_table(v["columns"], _rows_of(v["columns"], v["rows"]))
    if isinstance(v, dict):
        if not v:
            return "<i>empty</i>"
        return "<table class='kv'>" + "".join(f"<tr><th>{_esc(str(k))}</th><td>{value_html(x)}</td></tr>" for k, x in v.items()) + "</table>"
    if _records(v):
        cols = list(v[0])
        return _html_table(cols, _rows_of(cols, v))
    if isinstance(v, list):
        if any(isinstance(x, (dict, list)) for x in v[:LIST_ITEMS]) and len(v) <= LIST_ITEMS:
            return "<ol>" + "".join(f"<li>{value_html(x)}</li>" for x in v) + "</ol>"
        return f"<span class='list'>{_esc(list_summary(v))}</span>"
    return _esc(v)


def _graph_html(g: Graph) -> str:
    """The stage graph as an inline SVG: stages in a column in run order, an arrow from each
    dependency to the stage that reads it (drawn on the left as arcs)."""
    n = len(g.stages)
    row, width = 34, 520
    pos = {sid: i for i, (sid, *_rest) in enumerate(g.stages)}
    colours = {"ran": "#1b7837", "cached": "#2166ac", "failed": "#b2182b", "diverged": "#d6604d", "ok": "#1b7837"}
    parts = [f"<svg class='graph' width='{width}' height='{n * row + 10}' role='img' aria-label='stage graph'>",
             "<defs><marker id='arrow' viewBox='0 0 10 10' refX='9' refY='5' markerWidth='6' markerHeight='6' orient='auto'>"
             "<path d='M0,0 L10,5 L0,10 z' fill='#555'/></marker></defs>"]
    for i, (sid, kind, status, deps) in enumerate(g.stages):
        y = 5 + i * row
        parts.append(f"<rect x='120' y='{y}' width='380' height='{row - 8}' rx='5' fill='#fff' stroke='{colours.get(status, '#888')}' stroke-width='2'/>")
        parts.append(f"<text x='130' y='{y + 17}' font-size='13'><tspan font-weight='bold'>{html.escape(sid)}</tspan>"
                     f" · {html.escape(kind)} · {html.escape(status)}</text>")
        for d in deps:
            if d in pos:
                y0, depth = 5 + pos[d] * row + (row - 8) / 2, 20 + 12 * (abs(i - pos[d]) % 8)
                y1 = y + (row - 8) / 2
                parts.append(f"<path d='M120,{y0} C{120 - depth * 3},{y0} {120 - depth * 3},{y1} 120,{y1}' fill='none' stroke='#555' marker-end='url(#arrow)'/>")
    parts.append("</svg>")
    items = "".join(f"<li><b>{html.escape(s)}</b> ({html.escape(k)}, {html.escape(st)})"
                    f"{' ← ' + ', '.join(html.escape(d) for d in deps) if deps else ''}</li>" for s, k, st, deps in g.stages)
    return "".join(parts) + f"<ul class='graph-list'>{items}</ul>"


_SORTER = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('thead th').forEach(function(th, i){
    th.title = 'sort by this column'; th.style.cursor = 'pointer';
    th.addEventListener('click', function(){
      var up = th.dataset.order !== 'asc'; th.dataset.order = up ? 'asc' : 'desc';
      var body = t.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      function key(r){ var s = r.cells[i] ? r.cells[i].textContent.trim() : '', x = parseFloat(s);
        return isNaN(x) || !/^[-+.0-9]/.test(s) ? [1, s] : [0, x]; }
      rows.sort(function(a, b){ var p = key(a), q = key(b);
        if (p[0] !== q[0]) return p[0] - q[0];
        var c = p[1] < q[1] ? -1 : p[1] > q[1] ? 1 : 0; return up ? c : -c; });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
});
"""

_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
          "table{border-collapse:collapse;margin:.4em 0}th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}"
          "thead th{background:#f0f0f0}table.sortable thead th:hover{background:#dde}table.kv th{background:#fafafa;font-weight:normal;color:#555}"
          "img{max-width:100%}figure{margin:1em 0}figcaption{color:#444;font-size:.9em}small{color:#777;font-weight:normal}"
          "pre{background:#f6f6f6;padding:.5em;overflow:auto}section{border-top:2px solid #333;margin-top:2em}"
          "ul.graph-list{font-size:.85em;color:#555}span.list{font-family:monospace;font-size:.9em}")


def to_html(title: str, blocks: list[Any]) -> str:
    """One self-contained HTML page: no external script, style sheet, font or image."""
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            parts.append(f"<p>{html.escape(b.text)}</p>")
        elif isinstance(b, KeyValues):
            parts.append(value_html(b.values) if b.values else "")
        elif isinstance(b, Table):
            parts.append(_html_table(b.columns, b.rows, b.sortable, b.caption))
        elif isinstance(b, Results):
            parts.append(f"<h4>{html.escape(b.name)}</h4>{value_html(by_item(b.value))}")
        elif isinstance(b, Image):
            data = base64.b64encode(b.png).decode("ascii")
            parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(b.caption)}'>"
                         f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
        elif isinstance(b, Graph):
            parts.append(_graph_html(b))
        elif isinstance(b, Details):
            parts.append(f"<details><summary>{html.escape(b.summary)}</summary><pre>{html.escape(b.text)}</pre></details>")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>nnopt {html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(parts) + f"\n<script>{_SORTER}</script></body></html>\n")


# ------------------------------------------------------------------ Markdown
def _md_cell(v: Any) -> str:
    text = list_summary(v) if isinstance(v, list) else v if isinstance(v, str) else number(v)
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(columns: list[Any], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(_md_cell(str(c)) for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    out += ["| " + " | ".join(_md_cell(v) for v in r) + " |" for r in rows[:MAX_ROWS]]
    if len(rows) > MAX_ROWS:
        out.append(f"\n(first {MAX_ROWS} of {len(rows)} rows)")
    return out


def value_md(name: str, v: Any, depth: int = 0) -> list[str]:
    """A result as Markdown: scalars of a dict in one key/value table, tables as tables,
    nested dicts under their own bold name."""
    if _is_table(v):
        return [f"**{name}**", "", *_md_table(v["columns"], _rows_of(v["columns"], v["rows"])), ""]
    if _records(v):
        cols = list(v[0])
        return [f"**{name}**", "", *_md_table(cols, _rows_of(cols, v)), ""]
    if not isinstance(v, dict):
        return [f"**{name}**: {_md_cell(v)}", ""]
    flat = {k: x for k, x in v.items() if not isinstance(x, dict) and not _records(x)}
    out = [f"**{name}**", ""]
    if flat:
        out += [*_md_table(["", "value"], [[k, x] for k, x in flat.items()]), ""]
    for k, x in v.items():
        if k not in flat:
            out += value_md(f"{name}.{k}", x, depth + 1)
    return out


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:100]


def to_markdown(title: str, blocks: list[Any], path: Path) -> tuple[str, list[Path]]:
    """Markdown for ``path`` and the PNG files it links, written beside it (numbered, so two
    stages' ``loss.png`` do not overwrite each other)."""
    lines, images = [f"# nnopt {title}", ""], []
    for b in blocks:
        if isinstance(b, Heading):
            lines += ["#" * min(b.level + 1, 6) + " " + b.text, ""]
        elif isinstance(b, Para):
            lines += [b.text, ""]
        elif isinstance(b, KeyValues) and b.values:
            lines += value_md("values", b.values)[2:]
        elif isinstance(b, Table):
            lines += ([b.caption, ""] if b.caption else []) + _md_table(b.columns, b.rows) + [""]
        elif isinstance(b, Results):
            lines += value_md(b.name, by_item(b.value))
        elif isinstance(b, Image):
            file = path.parent / f"{len(images) + 1:02d}_{_slug(b.name)}"
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(b.png)
            images.append(file)
            lines += [f"![{b.caption}]({file.name})", "", f"*{b.caption}*", ""]
        elif isinstance(b, Graph):
            lines += [f"- **{s}** ({k}, {st})" + (f" ← {', '.join(d)}" if d else "") for s, k, st, d in b.stages] + [""]
        elif isinstance(b, Details):
            lines += [f"<details><summary>{html.escape(b.summary)}</summary>", "", "```", b.text.rstrip(), "```", "", "</details>", ""]
    return "\n".join(lines), images
