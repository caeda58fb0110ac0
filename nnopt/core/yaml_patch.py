"""Editing a pipeline file as text: a patch of ``(path, value)`` pairs, comments kept.

``nnopt diagnose`` recommends changes as a patch, shows it as a diff and may write it back, so
the edit is made on the TEXT: the file is composed into PyYAML nodes (which know where they are
written), the node at the path is found, and only its span is rewritten, as a one-line flow
value. Everything the patch does not touch (comments, blank lines, key order, style) is kept.

The meaning of a patch is ``set_path`` on the plain data; ``patch_text`` must agree with it:
``load(patch_text(t, [(p, v)])) == set_path(load(t), p, v)``. Two YAML features need care.
An alias (``*flat``) is rewritten as the full value it stands for, changed. A key inherited
through a merge key (``<<: *train``) is overridden by writing it in the mapping itself. Text
inside an anchored value (``&train``) is refused: editing it would change every alias of it.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

import yaml

from .errors import SpecError
from .yaml_source import dotted, parse_yaml

Path = tuple[Any, ...]


class _Delete:
    def __repr__(self) -> str:
        return "DELETE"


#: a patch value that removes the key (or list item) at its path
DELETE: Any = _Delete()


class PatchError(ValueError):
    """A patch that cannot be applied to this document (the message names the dotted path)."""


def set_path(data: Any, path: Path, value: Any) -> Any:
    """``data`` with ``value`` at ``path`` (a new structure; ``data`` is not changed).

    Missing mappings on the way are created; a bare component name continued by a key reads as
    ``{name: <string>}`` (``init: kaiming_normal`` + ``std`` → ``{name: kaiming_normal, std: …}``);
    ``DELETE`` removes the key, and deleting what is absent changes nothing."""
    return _set(data, tuple(path), value, tuple(path))


def _set(data: Any, path: Path, value: Any, full: Path) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(data, list):
        if not isinstance(head, int) or not -len(data) <= head < len(data):
            raise PatchError(f"{dotted(full)}: no list item {head!r} (the list has {len(data)})")
        out: Any = list(data)
        if value is DELETE and not rest:
            del out[head]
        else:
            out[head] = _set(data[head], rest, value, full)
        return out
    if value is DELETE and not (isinstance(data, dict) and head in data):
        return data  # nothing there to delete
    if data is None:
        data = {}
    elif isinstance(data, str) and isinstance(head, str):
        data = {"name": data}  # the component convention: a bare name is {name: ...}
    elif not isinstance(data, dict):
        raise PatchError(f"{dotted(full)}: {dotted(full[:len(full) - len(path)]) or 'the document'} "
                         f"is {data!r}, not a mapping")
    if isinstance(head, int) and head not in data and rest:
        raise PatchError(f"{dotted(full)}: no list item {head}")
    out = dict(data)
    if value is DELETE and not rest:
        del out[head]
    else:
        out[head] = _set(data.get(head), rest, value, full)
    return out


def patch_text(text: str, patch: list[tuple[Path, Any]], name: str = "<pipeline>") -> str:
    """``text`` with every ``(path, value)`` of ``patch`` applied in order, each as ``set_path``
    would, rewriting only the spans it changes; raises ``PatchError`` naming the path."""
    for path, value in patch:
        text = _apply(text, tuple(path), value, name)
    return text


def unified_diff(before: str, after: str, name: str) -> str:
    """``before`` → ``after`` as a unified diff with ``a/NAME``, ``b/NAME`` headers ("" if equal)."""
    lines = difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                 f"a/{name}", f"b/{name}")
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


class _Alias(yaml.Node):
    """Where an alias (``*name``) is written; ``value`` is the anchored node it stands for."""

    id = "alias"


class _Composer(yaml.SafeLoader):
    """The safe composer, keeping where each alias is written and which nodes are anchored."""

    def __init__(self, text: str):
        super().__init__(text)
        self.anchored: set[int] = set()  # ids of the nodes written with an anchor (&name)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        node = super().compose_node(parent, index)
        if isinstance(event, yaml.AliasEvent):
            return _Alias(node.tag, node, event.start_mark, event.end_mark)
        if event.anchor is not None:
            self.anchored.add(id(node))
        return node


def _apply(text: str, path: Path, value: Any, name: str) -> str:
    where = dotted(path) or "the document"
    composer = _Composer(text)
    try:
        root, anchored = composer.get_single_node(), composer.anchored
        plain = parse_yaml(text, name).data
    except (yaml.YAMLError, SpecError) as err:
        mark = getattr(err, "problem_mark", None)
        why = f"{err.problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else str(err)  # type: ignore[union-attr]
        raise PatchError(f"{name}: cannot set {where}: not a valid YAML document ({why})") from None
    finally:
        composer.dispose()
    if root is None:
        raise PatchError(f"{name}: cannot set {where}: the document is empty")
    try:
        patched = set_path(plain, path, value)  # what the text must come to mean; checks the path
    except PatchError as err:
        raise PatchError(f"{name}: {err}") from None
    node, trail = root, []  # trail: (container, entry index) for each step down
    for i, part in enumerate(path):
        if id(node) in anchored:
            raise PatchError(f"{name}: cannot set {where}: {dotted(path[:i]) or 'the document'} is an "
                             "anchored value (&name) used elsewhere; change the places that use it")
        if not isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):  # a scalar or an alias
            if value is DELETE and not isinstance(node, _Alias):
                return text  # nothing below a scalar to delete
            return _replace(text, node, trail[-1] if trail else None, _dump(_get(patched, path[:i])))
        if isinstance(node, yaml.SequenceNode):
            j = part % len(node.value)  # set_path has checked the index
            child = node.value[j]
        else:
            j = next((k for k, (key, _) in enumerate(node.value)
                      if isinstance(key, yaml.ScalarNode) and key.value == str(part)), None)
            if j is None:  # not written here: absent, or inherited through a merge key
                here = _get(plain, path[:i])
                if value is DELETE:
                    if isinstance(here, dict) and part in here:
                        raise PatchError(f"{name}: cannot delete {where}: it is inherited through a merge key (<<)")
                    return text
                return _insert(text, node, f"{_dump(part)}: {_dump(_get(patched, path[: i + 1]))}")
            child = node.value[j][1]
        trail.append((node, j))
        node = child
    if id(node) in anchored:
        raise PatchError(f"{name}: cannot set {where}: it is an anchored value (&name) used elsewhere")
    if value is DELETE:
        return _delete(text, trail) if trail else ""
    return _replace(text, node, trail[-1] if trail else None, _dump(value))


def _get(data: Any, path: Path) -> Any:
    for part in path:
        data = data[part]
    return data


def _dump(value: Any) -> str:
    """``value`` as one line of flow YAML (``{name: critical}``, ``0.02``, ``[256, 128]``)."""
    out = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), allow_unicode=True,
                         sort_keys=False).strip()
    return out[:-4].rstrip() if out.endswith("\n...") else out  # the document end PyYAML adds to scalars


def _block(node: yaml.Node) -> bool:
    return isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and not node.flow_style


def _end(text: str, node: yaml.Node) -> int:
    """Where ``node``'s content ends: a block collection's end mark lies past trailing comments."""
    if _block(node) and node.value:
        last = node.value[-1]
        return _end(text, last[1] if isinstance(node, yaml.MappingNode) else last)
    end = node.end_mark.index
    while end > node.start_mark.index and text[end - 1].isspace():
        end -= 1  # a block scalar (|) ends after its newlines
    return end


def _eol(text: str, index: int) -> int:
    found = text.find("\n", index)
    return len(text) if found < 0 else found


def _replace(text: str, node: yaml.Node, at: tuple[yaml.Node, int] | None, new: str) -> str:
    """``text`` with ``node``'s span rewritten as ``new``; ``at`` is (container, index) holding it."""
    start, end = node.start_mark.index, _end(text, node)
    if _block(node) and at is not None and isinstance(at[0], yaml.MappingNode):
        # a block value starts on the next line: write the flow value after the colon, keeping
        # a comment written between them
        colon = text.index(":", at[0].value[at[1]][0].end_mark.index) + 1
        new = " " + new + "".join("  " + c for c in re.findall(r"#.*", text[colon:start]))
        start, end = colon, _eol(text, end)  # a comment on its last line went with the value
    elif start == end:
        new = " " + new  # an empty (null) value right after its colon
    return text[:start] + new + text[end:]


def _insert(text: str, mapping: yaml.MappingNode, entry: str) -> str:
    """``text`` with ``entry`` (``key: value``) added as the last entry of ``mapping``."""
    if mapping.flow_style:
        if not mapping.value:
            pos = text.rindex("}", 0, mapping.end_mark.index)
            return text[:pos] + entry + text[pos:]
        pos = _end(text, mapping.value[-1][1])
        return text[:pos] + ", " + entry + text[pos:]
    indent = mapping.value[0][0].start_mark.column
    pos = _eol(text, _end(text, mapping.value[-1][1]))  # after a comment on the last line
    return text[:pos] + "\n" + " " * indent + entry + text[pos:]


def _delete(text: str, trail: list[tuple[yaml.Node, int]]) -> str:
    """``text`` without the entry ``trail[-1]`` (a ``key: value`` or a list item)."""
    container, j = trail[-1]
    mapping = isinstance(container, yaml.MappingNode)
    spans = list(container.value) if mapping else [(item, item) for item in container.value]
    if len(spans) == 1:  # the last entry: the container stays, empty
        return _replace(text, container, trail[-2] if len(trail) > 1 else None, "{}" if mapping else "[]")
    start, end = spans[j][0].start_mark.index, _end(text, spans[j][1])
    following = spans[j + 1][0].start_mark.index if j + 1 < len(spans) else None
    if not container.flow_style:
        line = text.rfind("\n", 0, start) + 1
        if text[line:start].strip() in ("",) + (() if mapping else ("-",)):  # the entry's own lines
            return text[:line] + text[min(_eol(text, end) + 1, len(text)):]
        if following is None:
            return text[:_eol(text, _end(text, spans[j - 1][1]))] + text[_eol(text, end):]
    if following is not None:
        return text[:start] + text[following:]  # "a: 1, " of "{a: 1, b: 2}"
    return text[:_end(text, spans[j - 1][1])] + text[end:]  # ", b: 2" of "{a: 1, b: 2}"
