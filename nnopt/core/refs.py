"""Walking a validated spec for what it refers to: component references and weight references."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .component import ComponentRef
from .yaml_source import Path


def find_refs(obj: Any, path: Path, kind: type) -> list[tuple[Path, Any]]:
    """Every instance of ``kind`` inside ``obj`` with its YAML path. Component params sit
    at their ref's own level in YAML, so a ref's resolved params share the ref's path."""
    found: list[tuple[Path, Any]] = []
    if isinstance(obj, kind):
        found.append((path, obj))
    if isinstance(obj, ComponentRef):  # its params, once resolved (nested components)
        if obj.is_resolved:
            found += find_refs(obj.resolved, path, kind)
        return found
    if isinstance(obj, BaseModel):
        for name, info in type(obj).model_fields.items():
            found += find_refs(getattr(obj, name), path + (info.alias or name,), kind)
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            found += find_refs(item, path + (i,), kind)
    elif isinstance(obj, dict):
        for k, item in obj.items():
            found += find_refs(item, path + (k,), kind)
    return found


def components_of(st: Any) -> list[ComponentRef]:
    """Every resolved component a stage uses: in its spec and in its effective inputs."""
    return [ref for part in (st.spec, st.data, st.model, st.loss) for _, ref in find_refs(part, (), ComponentRef) if ref.is_resolved]
