"""Turning a validated spec back into the mapping a pipeline file writes, and a written
mapping into a validated spec with every component resolved: for code that edits a
configuration after planning (``diagnose`` tries patched pipelines; the Python API rebuilds a
stored stage's model)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .component import ComponentRef, WeightRef

T = TypeVar("T", bound=BaseModel)


def written(value: Any) -> Any:
    """``value`` as a pipeline file would write it: a component as ``{name, **params}`` (its
    params as written, reserved keys such as ``every`` included), a params model as the keys
    that were given (defaults left out), a weight reference as its text."""
    if isinstance(value, WeightRef):
        return str(value)
    if isinstance(value, ComponentRef):
        out: dict[str, Any] = {"name": value.name}
        out.update({k: written(v) for k, v in value.params.items()})
        for name, info in type(value).model_fields.items():
            if name not in ("name", "params") and name in value.model_fields_set:
                out[info.alias or name] = written(getattr(value, name))
        return out
    if isinstance(value, BaseModel):
        fields = type(value).model_fields
        return {(fields[k].alias or k): written(getattr(value, k)) for k in fields if k in value.model_fields_set}
    if isinstance(value, dict):
        return {k: written(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [written(v) for v in value]
    return value


def as_written(value: Any) -> Any:
    """A resolved spec's JSON (``manifest.json``) as a pipeline file would write it: without
    the ``cache_version`` and ``key_extras`` the engine adds to every component for the key."""
    if isinstance(value, dict):
        return {k: as_written(v) for k, v in value.items() if k not in ("cache_version", "key_extras")}
    if isinstance(value, list):
        return [as_written(v) for v in value]
    return value


def resolved(model: type[T], mapping: Any, where: str) -> T:
    """``mapping`` validated as ``model`` with every component reference in it resolved
    through the registry; a ``ValueError`` naming ``where`` and every problem otherwise."""
    from .errors import Problems
    from .planner import resolve_components
    from .registry import Registry
    from .yaml_source import Source

    try:
        obj = model.model_validate(mapping)
    except ValidationError as err:
        details = "; ".join(f"{'.'.join(map(str, e['loc'])) or where}: {e['msg']}" for e in err.errors())
        raise ValueError(f"{where}: {details}") from None
    problems = Problems()
    resolve_components(obj, (where,), Source({}, where), Registry(), problems)
    if problems:
        raise ValueError("; ".join(f"{d.path}: {d.message}" if d.path else d.message for d in problems.items))
    return obj
