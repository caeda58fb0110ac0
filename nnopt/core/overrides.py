"""``--set PATH=VALUE`` overrides and ``matrix:`` expansion, applied to the parsed YAML tree.

Both edit the raw tree before validation, so an overridden value is checked exactly like one
written in the file; the edited path is re-located to where the value came from (the command
line, or the matrix entry), so errors point there.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

import yaml

from .errors import Diagnostic, Location, SpecError, did_you_mean
from .yaml_source import Path, Source, dotted, parse_value


@dataclass(frozen=True)
class Override:
    path: Path
    value: Any
    location: Location
    text: str
    key_location: Location | None = None  # where the path is written, if not at the value


def parse_set(text: str) -> Override:
    """``stages.train.optimizer.lr=0.1`` → Override; the value is typed as YAML."""
    where = Location(f"--set {text}")
    if "=" not in text:
        raise SpecError([Diagnostic(where, "", "expected PATH=VALUE (e.g. stages.train.optimizer.lr=0.1)")])
    path_text, _, value_text = text.partition("=")
    path = split_path(path_text.strip())
    if not path:
        raise SpecError([Diagnostic(where, "", "empty PATH in PATH=VALUE")])
    try:
        value = parse_value(value_text)
    except yaml.MarkedYAMLError as err:  # one line, not PyYAML's multi-line report
        problem = " ".join(filter(None, [err.context, err.problem]))
        raise SpecError([Diagnostic(where, path_text, f"value is not valid YAML: {problem}")]) from None
    except yaml.YAMLError as err:
        raise SpecError([Diagnostic(where, path_text, f"value is not valid YAML: {err}")]) from None
    return Override(path, value, where, text)


def split_path(text: str) -> Path:
    """``stages.train.track.0.every`` → ('stages', 'train', 'track', 0, 'every')."""
    return tuple(int(p) if p.isdigit() else p for p in text.split(".") if p != "")


def apply(source: Source, override: Override) -> list[Diagnostic]:
    """Set ``override.path`` in ``source.data``; returns problems (unknown stage, bad index)."""
    node: Any = source.data
    path = override.path
    for depth, part in enumerate(path[:-1]):
        here = path[: depth + 1]
        if isinstance(node, list):
            if not isinstance(part, int) or not -len(node) <= part < len(node):
                return [Diagnostic(override.location, dotted(here), f"no list item {part} (the list has {len(node)})")]
            child = node[part]
        elif isinstance(node, dict):
            if part not in node:
                if path[:1] == ("stages",) and depth == 1:
                    hint = did_you_mean(part, node)
                    where = override.key_location or override.location
                    return [Diagnostic(where, dotted(here), f"no stage '{part}' in this pipeline", hint)]
                node[part] = {}
                source.mark(here, override.location, override.key_location)  # created here: errors point here
            child = node[part]
            if isinstance(child, str) and not isinstance(path[depth + 1], int):
                # a component given by bare name (`schedule: cosine`) gains params: {name: cosine, ...}
                child = node[part] = {"name": child}
        else:
            return [Diagnostic(override.location, dotted(here[:-1]), f"cannot set '{part}' inside a {type(node).__name__}")]
        if child is None:
            child = node[part] = {}
        node = child
    last = path[-1]
    if isinstance(node, list) and isinstance(last, int) and -len(node) <= last < len(node):
        node[last] = override.value
    elif isinstance(node, dict):
        node[last] = copy.deepcopy(override.value)
    else:
        return [Diagnostic(override.location, dotted(path), f"cannot set this path (its parent is a {type(node).__name__})")]
    source.mark(path, override.location, override.key_location)
    return []


@dataclass
class Combination:
    """One pipeline of a matrix: its source (with values applied) and the values chosen."""

    source: Source
    params: dict[str, Any]


def expand_matrix(source: Source) -> tuple[list[Combination], list[Diagnostic]]:
    """One combination per element of the Cartesian product of ``matrix:`` (or one, if none)."""
    data = source.data if isinstance(source.data, dict) else {}
    matrix = data.get("matrix")
    if matrix is None:
        return [Combination(source, {})], []
    problems: list[Diagnostic] = []
    if not isinstance(matrix, dict) or not matrix:
        return [], [Diagnostic(source.locate(("matrix",)), "matrix", "expected a mapping of dotted path -> list of values")]
    axes: list[tuple[str, list[Any]]] = []
    for key, values in matrix.items():
        if not isinstance(values, list) or not values:
            problems.append(Diagnostic(source.locate(("matrix", key)), f"matrix.{key}", "expected a non-empty list of values"))
            continue
        if key == "matrix" or str(key).startswith("matrix."):
            problems.append(Diagnostic(source.locate(("matrix", key), at_key=True), f"matrix.{key}", "a matrix cannot vary itself"))
            continue
        axes.append((str(key), values))
    if problems:
        return [], problems
    combos = []
    for choice in itertools.product(*[range(len(v)) for _, v in axes]):
        combo = Source(copy.deepcopy(source.data), source.name, dict(source.keys), dict(source.values))
        del combo.data["matrix"]
        params = {}
        for (key, values), i in zip(axes, choice):
            where, key_where = source.locate(("matrix", key, i)), source.locate(("matrix", key), at_key=True)
            for diag in apply(combo, Override(split_path(key), values[i], where, f"{key}={values[i]!r}", key_where)):
                problems.append(diag)
            params[key] = values[i]
        combos.append(Combination(combo, params))
    return combos, _unique(problems)


def _unique(items: list[Diagnostic]) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out
