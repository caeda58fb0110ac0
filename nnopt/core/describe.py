"""Component documentation from the registry: ``nnopt describe`` and ``nnopt schema``."""

from __future__ import annotations

import inspect
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .component import ComponentRef
from .registry import Registry, singular
from .spec import PipelineSpec


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and issubclass(annotation, ComponentRef):
        return f"{singular(annotation.kind)} component"
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation).replace("typing.", "").replace("nnopt.core.component.", "")
    for ref_kind in ("Ref",):
        text = text.replace(ref_kind, " component")
    return text


def _range(info: FieldInfo) -> str:
    bounds = []
    for meta in info.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "len>="), ("max_length", "len<=")):
            value = getattr(meta, attr, None)
            if value is not None:
                bounds.append(f"{sym} {value}")
    return ", ".join(bounds)


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        try:
            return repr(value.model_dump(mode="json"))
        except Exception:  # an unresolved component ref: show its name
            return repr(getattr(value, "name", value))
    return repr(value)


def params_table(model: type[BaseModel], skip: set[str] = frozenset()) -> list[dict[str, str]]:
    rows = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key in skip:
            continue
        rows.append({"name": key, "type": _type_name(info.annotation), "default": _default(info),
                     "range": _range(info), "description": info.description or ""})
    return rows


def describe_component(registry: Registry, kind: str, name: str) -> str:
    cls, entry = registry.load(kind, name)
    lines = [f"{singular(kind)} '{name}' — {entry.provider} ({entry.value}), cache_version {getattr(cls, 'cache_version', 1)}", ""]
    lines.append(inspect.cleandoc(cls.__doc__ or "(no docstring)"))
    skip = {"kind"} if kind == "stages" else set()
    rows = params_table(cls.Params, skip)
    lines += ["", "Parameters:" if rows else "Parameters: none"]
    for r in rows:
        rng = f"  [{r['range']}]" if r["range"] else ""
        lines.append(f"  {r['name']:<18} {r['type']:<28} default {r['default']}{rng}")
        if r["description"]:
            lines.append(f"  {'':<18} {r['description']}")
    return "\n".join(lines)


def pipeline_schema(registry: Registry) -> dict[str, Any]:
    """JSON Schema of a pipeline file; each stage validated against its kind's own schema."""
    schema = PipelineSpec.model_json_schema()
    variants = []
    for entry in registry.entries("stages"):
        try:
            cls, _ = registry.load("stages", entry.name)
        except Exception:  # a broken plugin stays out of the schema
            continue
        stage_schema = cls.Params.model_json_schema()
        stage_schema.setdefault("properties", {})["kind"] = {"const": entry.name}
        defs = stage_schema.pop("$defs", {})
        schema.setdefault("$defs", {}).update(defs)
        variants.append(stage_schema)
    if variants:
        schema["properties"]["stages"]["additionalProperties"] = {"oneOf": variants}
    schema["title"] = "nnopt pipeline"
    return schema
