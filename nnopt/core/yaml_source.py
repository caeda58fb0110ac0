"""Reading a pipeline file: safe YAML with the position of every key and value.

PyYAML's ``safe_load`` forgets where values came from and silently keeps the last of two
duplicate keys. Here the file is composed into nodes with the same safe loader, converted by
hand so that every path gets its ``Location``, and duplicate keys become diagnostics.
The resolver also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``), as people expect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import Diagnostic, Location, SpecError

Path = tuple[Any, ...]


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader, plus floats written without a dot (``1e-3``, ``5E+2``)."""


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


@dataclass
class Source:
    """A parsed YAML document and where each of its parts came from."""

    data: Any
    name: str
    keys: dict[Path, Location] = field(default_factory=dict)  # where a mapping key is written
    values: dict[Path, Location] = field(default_factory=dict)  # where a value starts

    def locate(self, path: Path, at_key: bool = False) -> Location:
        """The best location for ``path``: its own, else that of its nearest written parent."""
        table = self.keys if at_key else self.values
        for cut in range(len(path), -1, -1):
            prefix = tuple(path[:cut])
            if prefix in table:
                return table[prefix]
            if prefix in self.values:
                return self.values[prefix]
        return Location(self.name)

    def mark(self, path: Path, location: Location, key_location: Location | None = None) -> None:
        """Record that the value at ``path`` (and everything below) came from ``location``,
        and its key from ``key_location`` (a matrix's path) or else from ``location``."""
        for table in (self.keys, self.values):
            for p in [p for p in table if p[: len(path)] == tuple(path)]:
                del table[p]
        self.keys[tuple(path)] = key_location or location
        self.values[tuple(path)] = location


def dotted(path: Path) -> str:
    """``('stages', 'train', 'track', 0, 'every')`` → ``stages.train.track[0].every``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def parse_yaml(text: str, name: str) -> Source:
    """Parse ``text``; a syntax error or duplicate key raises ``SpecError`` (all duplicates)."""
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            source = Source(None, name)
            problems: list[Diagnostic] = []
            source.data = _convert(loader, node, (), source, problems) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = Location(name, mark.line + 1, mark.column + 1) if mark else Location(name)
        problem = " ".join(filter(None, [err.context, err.problem])) or "invalid YAML"
        opened = err.context_mark
        if opened is not None and mark is not None and (opened.line, opened.column) != (mark.line, mark.column):
            problem += f" (the construct started at line {opened.line + 1}, column {opened.column + 1})"
        raise SpecError([Diagnostic(where, "", f"YAML syntax error: {problem}")]) from None
    except yaml.YAMLError as err:
        raise SpecError([Diagnostic(Location(name), "", f"YAML error: {err}")]) from None
    if problems:
        raise SpecError(problems)
    return source


def parse_value(text: str) -> Any:
    """A ``--set`` value, typed as YAML would type it (``0.1``, ``[64,64]``, ``adam``)."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _loc(name: str, node: yaml.Node) -> Location:
    return Location(name, node.start_mark.line + 1, node.start_mark.column + 1)


def _convert(loader: Any, node: yaml.Node, path: Path, source: Source, problems: list[Diagnostic]) -> Any:
    source.values[path] = _loc(source.name, node)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # YAML merge keys (<<: *defaults)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                problems.append(Diagnostic(_loc(source.name, key_node), dotted(path), "mapping keys must be plain scalars"))
                continue
            if key in out:
                first = source.keys.get(path + (key,))
                problems.append(
                    Diagnostic(
                        _loc(source.name, key_node),
                        dotted(path + (key,)),
                        f"duplicate key '{key}' (first given at {f'line {first.line}, column {first.column}' if first else 'an earlier line'})",
                    )
                )
                continue
            source.keys[path + (key,)] = _loc(source.name, key_node)
            out[key] = _convert(loader, value_node, path + (key,), source, problems)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(loader, child, path + (i,), source, problems) for i, child in enumerate(node.value)]
    return loader.construct_object(node, deep=True)
