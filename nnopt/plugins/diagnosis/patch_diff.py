"""A diagnosis's patches as edits of the user's pipeline file: ``(path, value)`` pairs for
``core.yaml_patch`` and the unified diff each one makes (shown by ``nnopt diagnose`` and in
the report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def patch_pairs(finding: dict[str, Any]) -> list[tuple[tuple, Any]]:
    """A finding's patch as ``(path, value)`` pairs of the file (``DELETE`` for null)."""
    from nnopt.core.overrides import split_path
    from nnopt.core.yaml_patch import DELETE

    return [(tuple(split_path(c["path"])), DELETE if c["value"] is None else c["value"]) for c in finding.get("patch", [])]


def diffs_of(text: str, name: str, findings: list[dict[str, Any]]) -> dict[str, str]:
    """Each finding's patch as a unified diff of the user's file (findings without a patch,
    or whose patch cannot be applied to the text, get none)."""
    from nnopt.core.yaml_patch import PatchError, patch_text, unified_diff

    out = {}
    for f in findings:
        pairs = patch_pairs(f)
        if not pairs:
            continue
        try:
            out[f["id"]] = unified_diff(text, patch_text(text, pairs, name), Path(name).name)
        except PatchError:
            continue
    return out
