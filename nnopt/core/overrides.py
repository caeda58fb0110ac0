"""``--set PATH=VALUE`` overrides and ``matrix:`` expansion, applied to the parsed YAML tree.

Both edit the raw tree before validation, so an overridden value is checked exactly like one
written in the file; the edited path is re-located to where the value came from (the command
line, or the matrix entry), so errors point there.

``expand`` applies them in one defined order: the file, then every ``--set matrix.AXIS=[...]``
(replacing or adding that axis), then the matrix expansion, then every other ``--set`` on each
combination. A ``--set`` never silently changes a swept axis: one whose path is an axis, lies
inside one or holds one is refused, and says how to change the axis instead.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from typing import Any

import yaml

from .errors import Diagnostic, Location, SpecError, did_you_mean
from .yaml_source import Path, Source, dotted, parse_value

#: the most combinations a ``matrix:`` may have: each is a whole pipeline, validated and run
MAX_COMBINATIONS = 10_000


@dataclass(frozen=True)
class Override:
    """One ``--set PATH=VALUE`` (or one value of a matrix axis), and where it was written."""

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
        value = parse_value(value_text, where.source)
    except SpecError as err:  # an alias cycle, a value past the size limits, a duplicate key
        raise SpecError([Diagnostic(where, _inside(path_text.strip(), d.path), d.message) for d in err.diagnostics]) from None
    except yaml.MarkedYAMLError as err:  # one line, not PyYAML's multi-line report
        problem = " ".join(filter(None, [err.context, err.problem]))
        raise SpecError([Diagnostic(where, path_text, f"value is not valid YAML: {problem}")]) from None
    except yaml.YAMLError as err:
        raise SpecError([Diagnostic(where, path_text, f"value is not valid YAML: {err}")]) from None
    return Override(path, value, where, text)


def _inside(path_text: str, inner: str) -> str:
    """The dotted path of ``inner`` (a path within a --set value) below ``path_text``."""
    if not inner:
        return path_text
    return path_text + ("" if inner.startswith("[") else ".") + inner


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
        if not split_path(str(key)):
            problems.append(Diagnostic(source.locate(("matrix", key), at_key=True), f"matrix.{key}",
                                       "expected a dotted path such as stages.train.optimizer.lr"))
            continue
        axes.append((str(key), values))
    if problems:
        return [], problems
    # counted before anything is built: a product of a few long lists is astronomically large
    total = math.prod(len(values) for _, values in axes)
    if total > MAX_COMBINATIONS:
        sizes = " x ".join(str(len(values)) for _, values in axes)
        return [], [Diagnostic(source.locate(("matrix",), at_key=True), "matrix",
                               f"the matrix has {total:,} combinations ({sizes} values), more than the {MAX_COMBINATIONS:,} "
                               "allowed; sweep fewer values, or split it into several pipelines")]
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


def expand(source: Source, overrides: list[Override]) -> tuple[list[Combination], list[Diagnostic]]:
    """The pipelines that ``source`` with ``overrides`` stands for, and the problems found.

    Order: ``--set matrix.AXIS=[...]`` replaces (or adds) that axis of ``matrix:``; the matrix
    is expanded; every other ``--set`` is applied to each combination. One whose path is a
    swept axis, lies inside one or holds one is refused (not applied)."""
    problems: list[Diagnostic] = []
    values: list[Override] = []
    for override in overrides:
        if override.path[:1] == ("matrix",):
            problems += set_axis(source, override)
    for override in overrides:
        if override.path[:1] != ("matrix",):
            clash = _sweeps(source, override)
            if clash is not None:
                problems.append(clash)
            else:
                values.append(override)
    combos, matrix_problems = expand_matrix(source)
    problems += matrix_problems
    # with an invalid matrix there is no combination: the --sets still go on a copy, so that
    # their own problems are reported at once with the matrix's
    targets = [c.source for c in combos] or [Source(copy.deepcopy(source.data), source.name, dict(source.keys), dict(source.values))]
    for target in targets:
        for override in values:
            problems += apply(target, override)
    return combos, _unique(problems)


def set_axis(source: Source, override: Override) -> list[Diagnostic]:
    """``--set matrix.AXIS=[v1, v2]``: the matrix sweeps AXIS (a dotted path) over these
    values, in place of the file's values for AXIS if it has them."""
    axis = override.path[1:]
    name = ".".join(str(p) for p in axis)
    if not axis:
        return [Diagnostic(override.location, "matrix", "name the axis to set: --set 'matrix.PATH=[v1, v2]' "
                           "(e.g. --set 'matrix.stages.train.optimizer.lr=[0.01, 0.1]')")]
    if not isinstance(override.value, list) or not override.value:
        return [Diagnostic(override.location, f"matrix.{name}", f"expected a non-empty list of values: --set 'matrix.{name}=[v1, v2]'")]
    matrix = source.data.get("matrix") if isinstance(source.data, dict) else None
    if matrix is None and isinstance(source.data, dict):
        matrix = source.data["matrix"] = {}
        source.mark(("matrix",), override.location)
    if not isinstance(matrix, dict):
        return []  # the file's matrix is not a mapping: expand_matrix reports it there
    key = next((k for k in matrix if split_path(str(k)) == axis), name)  # the file's spelling, if it has the axis
    matrix[key] = copy.deepcopy(override.value)
    source.mark(("matrix", key), override.location)
    return []


def _sweeps(source: Source, override: Override) -> Diagnostic | None:
    """The refusal of a ``--set`` whose path is, lies inside or holds an axis of the matrix:
    applied, it would silently change (or collapse) the sweep."""
    matrix = source.data.get("matrix") if isinstance(source.data, dict) else None
    if not isinstance(matrix, dict):
        return None
    for key in matrix:
        axis = split_path(str(key))
        n = min(len(axis), len(override.path))
        if not axis or axis[:n] != override.path[:n]:
            continue
        where = source.locate(("matrix", key), at_key=True)
        values = f"[{override.text.partition('=')[2].strip()}]" if axis == override.path else "[v1, v2]"
        return Diagnostic(override.location, dotted(override.path),
                          f"the matrix sweeps '{key}' (at {where}), and a --set never changes a swept axis; "
                          f"change the axis itself: --set 'matrix.{key}={values}'")
    return None


def _unique(items: list[Diagnostic]) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out
