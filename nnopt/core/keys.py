"""Content-addressed stage keys (SPEC §6): equal keys mean equal results.

A key is the SHA-256 of canonical JSON over: the key-schema version, the stage kind and its
``cache_version``, the fully resolved stage spec (defaults included, every component with
its own ``cache_version``), the effective seed, data, model and loss, the device type, and
the keys of the stages whose weights it reads. Fields that cannot change results (progress,
logging) are marked ``json_schema_extra={"affects_results": False}`` and left out.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:  # pragma: no cover
    from .planner import PlannedStage

#: bump when the way keys are computed changes: every cached stage is then recomputed
KEY_SCHEMA = 1


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def non_key_fields(model: type[BaseModel]) -> set[str]:
    """Fields marked as not affecting results (by their alias when they have one)."""
    out = set()
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("affects_results") is False:
            out.add(info.alias or name)
    return out


def _dump(value: Any, context: dict[str, Any] | None = None) -> Any:
    return value.model_dump(mode="json", by_alias=True, context=context) if isinstance(value, BaseModel) else value


def _resolved(stage: "PlannedStage", context: dict[str, Any] | None) -> dict[str, Any]:
    spec = _dump(stage.spec, context)
    for inherited in ("seed", "data", "model", "loss"):
        spec.pop(inherited, None)
    return {**spec, "seed": stage.seed, "data": _dump(stage.data, context), "model": _dump(stage.model, context),
            "loss": _dump(stage.loss, context)}


def stage_key(stage: "PlannedStage", dep_keys: dict[str, str], device: str) -> tuple[str, dict[str, Any]]:
    """The stage's key, and the resolved spec it was computed from (saved as spec.json).

    In the keyed form every weight reference names the referenced stage by its key, not its
    id (see ``WeightRef``), so that renaming a stage changes no key."""
    resolved = {"id": stage.id, **_resolved(stage, None), "device": device}
    keyed = _resolved(stage, {"stage_keys": dep_keys})
    payload = {
        "key_schema": KEY_SCHEMA,
        "kind": stage.kind,
        "stage_cache_version": stage.cls.cache_version,
        "spec": {k: v for k, v in keyed.items() if k not in non_key_fields(type(stage.spec))},
        "device_type": device.split(":")[0],
    }
    return digest(payload), resolved
