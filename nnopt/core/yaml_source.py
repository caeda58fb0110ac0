"""Reading a pipeline file: safe YAML with the position of every key and value.

PyYAML's ``safe_load`` forgets where values came from and silently keeps the last of two
duplicate keys. Here the file is composed into nodes with the same safe loader, converted by
hand so that every path gets its ``Location``, and duplicate keys become diagnostics.
The resolver also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``), as people expect.

Bad input stays cheap: a document may nest at most ``MAX_DEPTH`` levels and expand to at most
``MAX_NODES`` values. PyYAML's composer gives the same node object for every alias of an
anchor, so nested aliases ("billion laughs") would otherwise expand exponentially, and an
alias inside its own anchor (``&w [32, *w]``) endlessly; both become located diagnostics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import Diagnostic, Location, SpecError

Path = tuple[Any, ...]

#: the most values (scalars, lists, mappings, counted as aliases expand) a document may hold
MAX_NODES = 100_000
#: the deepest nesting of lists and mappings a document may have (libyaml's composer recurses)
MAX_DEPTH = 100

_MERGE_TAG = "tag:yaml.org,2002:merge"
_VALUE_TAG = "tag:yaml.org,2002:value"


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
    """Parse ``text``; a syntax error, a duplicate key, an alias cycle or a document past the
    size limits raises ``SpecError`` (every problem found)."""
    try:
        return _load(text, name, "the file")
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = Location(name, mark.line + 1, mark.column + 1) if mark else Location(name)
        raise SpecError([Diagnostic(where, "", f"YAML syntax error: {_one_line(err)}")]) from None
    except yaml.YAMLError as err:
        raise SpecError([Diagnostic(Location(name), "", f"YAML error: {err}")]) from None


def parse_value(text: str, name: str = "<value>") -> Any:
    """A ``--set`` value, typed as YAML would type it (``0.1``, ``[64,64]``, ``adam``).

    Bounded and checked like a file: an alias cycle, a value past the size limits, a duplicate
    or non-scalar key raise ``SpecError`` (located in ``name``); invalid YAML raises PyYAML's
    own ``YAMLError``, for the caller to word."""
    return _load(text, name, "the value").data


def _one_line(err: yaml.MarkedYAMLError) -> str:
    """PyYAML's problem and context as one phrase, saying where an unclosed construct began."""
    mark = err.problem_mark or err.context_mark
    problem = " ".join(filter(None, [err.context, err.problem])) or "invalid YAML"
    opened = err.context_mark
    if opened is not None and mark is not None and (opened.line, opened.column) != (mark.line, mark.column):
        problem += f" (the construct started at line {opened.line + 1}, column {opened.column + 1})"
    return problem


class _Refused(Exception):
    """A document past a size limit: conversion stops at once (going on is what costs)."""

    def __init__(self, diagnostic: Diagnostic):
        self.diagnostic = diagnostic


def _load(text: str, name: str, what: str) -> Source:
    """``text`` as a positioned ``Source``; ``what`` names it in messages ("the file")."""
    source = Source(None, name)
    try:
        _check_shape(text, name, what)
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is not None:
                converter = _Converter(loader, source, what)
                converter.measure(node)
                source.data = converter.convert(node, ())
                if converter.problems:  # in file order (a mapping's keys are checked before its values)
                    raise SpecError(sorted(converter.problems, key=lambda d: (d.location.line or 0, d.location.column or 0)))
        finally:
            loader.dispose()
    except _Refused as refused:
        raise SpecError([refused.diagnostic]) from None
    return source


def _check_shape(text: str, name: str, what: str) -> None:
    """Refuse a document nested deeper than ``MAX_DEPTH`` or with more than ``MAX_NODES`` nodes
    as written, from the event stream alone: libyaml composes nodes recursively (deep nesting
    crashes the interpreter), and composing a huge document is the cost to avoid."""
    loader = _Loader(text)
    try:
        depth = nodes = 0
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    message = f"{what} nests lists and mappings deeper than {MAX_DEPTH} levels"
                    raise _Refused(Diagnostic(_mark(name, event.start_mark), "", message))
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
            if isinstance(event, yaml.NodeEvent):
                nodes += 1
                if nodes > MAX_NODES:
                    raise _Refused(Diagnostic(_mark(name, event.start_mark), "", f"{what} holds more than {MAX_NODES:,} values"))
    finally:
        loader.dispose()


def _mark(name: str, mark: Any) -> Location:
    return Location(name, mark.line + 1, mark.column + 1)


def _loc(name: str, node: yaml.Node) -> Location:
    return _mark(name, node.start_mark)


class _Converter:
    """Nodes to plain data, recording positions in ``source``.

    ``measure`` first sizes the document as it would expand, in time linear in its distinct
    nodes (PyYAML gives every alias of an anchor the same node object, so sizes are memoized
    per node), and refuses one past the limits before any of it is built. ``_open`` holds the
    collections being walked; meeting one again is an alias inside its own anchor (a cycle).
    """

    def __init__(self, loader: Any, source: Source, what: str):
        self.loader, self.source, self.what = loader, source, what
        self.problems: list[Diagnostic] = []
        self._open: set[int] = set()
        self._sizes: dict[int, tuple[int, int]] = {}  # node -> (values it expands to, nesting below it)
        self._pairs: dict[int, dict[Any, tuple[yaml.Node, yaml.Node]]] = {}  # a mapping's effective pairs
        self._merging: list[int] = []  # mappings whose merge keys are being resolved
        self._merge_work = 0  # merged pairs gathered: bounded like values

    # -- limits ----------------------------------------------------------------------------
    def measure(self, root: yaml.Node) -> None:
        """Raise ``_Refused`` if the document expands past ``MAX_NODES`` values or nests past
        ``MAX_DEPTH`` levels; the size error is located at the first value that alone is too big."""
        size, _ = self._measure(root, ())
        if size <= MAX_NODES:
            return
        node, path = root, ()
        while True:
            bigger = next(((c, p) for c, p in self._children(node, path) if self._sizes.get(id(c), (0, 0))[0] > MAX_NODES), None)
            if bigger is None:
                break
            node, path = bigger
        message = (f"this value expands to {self._sizes[id(node)][0]:,} values through YAML aliases (*name), more than "
                   f"the {MAX_NODES:,} {self.what} may hold; write the values out, or use fewer aliases")
        raise _Refused(Diagnostic(_loc(self.source.name, node), dotted(path), message))

    def _measure(self, node: yaml.Node, path: Path) -> tuple[int, int]:
        if id(node) in self._sizes:
            size, height = self._sizes[id(node)]
        elif id(node) in self._open:
            return 1, 0  # a cycle: ``convert`` reports it
        else:
            size, height = 1, 0
            self._open.add(id(node))
            try:
                for child, child_path in self._children(node, path):
                    self._check_depth(child, child_path, 0)
                    child_size, child_height = self._measure(child, child_path)
                    size, height = size + child_size, max(height, child_height + 1)
            finally:
                self._open.discard(id(node))
            self._sizes[id(node)] = (size, height)
        self._check_depth(node, path, height)
        return size, height

    def _check_depth(self, node: yaml.Node, path: Path, height: int) -> None:
        if len(path) + height > MAX_DEPTH:
            raise _Refused(Diagnostic(_loc(self.source.name, node), dotted(path),
                                      f"{self.what} nests deeper than {MAX_DEPTH} levels through YAML aliases"))

    def _children(self, node: yaml.Node, path: Path) -> list[tuple[yaml.Node, Path]]:
        if isinstance(node, yaml.SequenceNode):
            return [(child, path + (i,)) for i, child in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            return [(value, path + (key,)) for key, (_, value) in self.pairs(node, path).items()]
        return []

    # -- conversion ------------------------------------------------------------------------
    def convert(self, node: yaml.Node, path: Path) -> Any:
        self.source.values[path] = _loc(self.source.name, node)
        if not isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            return self._scalar(node, path)
        if id(node) in self._open:
            self.problems.append(Diagnostic(_loc(self.source.name, node), dotted(path),
                                            "a YAML alias inside its own anchor: the value would contain itself, endlessly"))
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.convert(child, path + (i,)) for i, child in enumerate(node.value)]
            out = {}
            for key, (key_node, value_node) in self.pairs(node, path).items():
                self.source.keys[path + (key,)] = _loc(self.source.name, key_node)
                out[key] = self.convert(value_node, path + (key,))
            return out
        finally:
            self._open.discard(id(node))

    def pairs(self, node: yaml.MappingNode, path: Path) -> dict[Any, tuple[yaml.Node, yaml.Node]]:
        """The mapping's (key node, value node) by key, once per node: the pairs its merge keys
        (``<<: *defaults``) bring in, overridden by the keys written in it. A key written twice
        is reported (at the first ``path`` the mapping is met by)."""
        if id(node) in self._pairs:
            return self._pairs[id(node)]
        out = self._merged(node, path)
        written: dict[Any, yaml.Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self._key(key_node, path)
            if key is _NO_KEY:
                continue
            if key in written:
                first = written[key].start_mark
                self.problems.append(Diagnostic(_loc(self.source.name, key_node), dotted(path + (key,)),
                                                f"duplicate key '{key}' (first given at line {first.line + 1}, column {first.column + 1})"))
                continue
            written[key] = key_node
            out[key] = (key_node, value_node)
        self._pairs[id(node)] = out
        return out

    def _merged(self, node: yaml.MappingNode, path: Path) -> dict[Any, tuple[yaml.Node, yaml.Node]]:
        """The pairs the merge keys of ``node`` bring in; of ``<<: [*a, *b]`` a key of ``a``
        wins over the same key of ``b``. Unlike PyYAML's ``flatten_mapping`` this leaves the
        nodes as they are, and each merged mapping's pairs are computed once."""
        out: dict[Any, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if key_node.tag != _MERGE_TAG:
                continue
            for merged in value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]:
                where = _loc(self.source.name, merged)
                if not isinstance(merged, yaml.MappingNode):
                    self.problems.append(Diagnostic(where, dotted(path + ("<<",)), "a merge key (<<) takes a mapping or a list of mappings"))
                elif merged is node or id(merged) in self._merging:
                    self.problems.append(Diagnostic(where, dotted(path + ("<<",)), "a merge key (<<) refers to the mapping that contains it"))
                elif len(self._merging) >= MAX_DEPTH:
                    raise _Refused(Diagnostic(where, dotted(path), f"{self.what} chains merge keys (<<) deeper than {MAX_DEPTH} levels"))
                else:
                    self._merging.append(id(node))
                    try:
                        gained = self.pairs(merged, path)
                    finally:
                        self._merging.pop()
                    self._merge_work += len(gained)
                    if self._merge_work > MAX_NODES:
                        raise _Refused(Diagnostic(where, dotted(path), f"{self.what} merges more than {MAX_NODES:,} keys through merge keys (<<)"))
                    for key, pair in gained.items():
                        out.setdefault(key, pair)
        return out

    def _key(self, node: yaml.Node, path: Path) -> Any:
        """The mapping key ``node`` stands for, or ``_NO_KEY`` (reported) if it is not a plain
        scalar. Only a scalar node is constructed: a collection key could be an alias bomb."""
        key: Any = _NO_KEY
        if isinstance(node, yaml.ScalarNode):
            key = node.value if node.tag == _VALUE_TAG else self._scalar(node, path)
            if key is _NO_KEY:
                return key
        if key is _NO_KEY or key is None or not isinstance(key, (str, int, float, bool)):
            self.problems.append(Diagnostic(_loc(self.source.name, node), dotted(path), "mapping keys must be plain scalars"))
            return _NO_KEY
        return key


    def _scalar(self, node: yaml.Node, path: Path) -> Any:
        """The value of a scalar node; one PyYAML cannot build (``2020-13-45`` resolves as a
        date, ``!!float abc``) is reported and gives ``_NO_KEY``."""
        try:
            return self.loader.construct_object(node, deep=True)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as err:
            kind = node.tag.rpartition(":")[2] or node.tag
            self.problems.append(Diagnostic(_loc(self.source.name, node), dotted(path),
                                            f"{node.value!r} is not a valid YAML {kind} ({err}); quote it to make it a string"))
            return _NO_KEY


_NO_KEY = object()  # no value: a key or scalar already reported
