"""Content-addressed stage keys (SPEC §6): equal keys mean equal results.

A key is the SHA-256 of canonical JSON over: the key-schema version, the stage kind and its
``cache_version``, the fully resolved stage spec (defaults included, every component with
its own ``cache_version``), the effective seed, data, model and loss, the device type, the
keys of the stages whose weights it reads, a digest of the source code of the stage kind and
of every component used (``code_digest``), and the distribution and version that provided
each. Fields that cannot change results (progress, logging) are marked
``json_schema_extra={"affects_results": False}`` and left out.

The payload the key is computed from is kept too (``PlannedStage.key_payload``, saved in the
stage's manifest), so that ``nnopt plan`` can say what changed between two keys.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from .code_digest import code_digest
from .refs import components_of

if TYPE_CHECKING:  # pragma: no cover
    from .planner import PlannedStage

#: bump when the way keys are computed changes: every cached stage is then recomputed
KEY_SCHEMA = 2  # 2: the source digests and providers of the components used


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values, equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def digest(value: Any) -> str:
    """SHA-256 (hex) of ``value``'s canonical JSON."""
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


def _code(stage: "PlannedStage") -> dict[str, str]:
    """``{"stages/<kind>": digest, "<kind>/<name>": digest}``: the source digest of the stage
    kind and of every component the stage uses (``code_digest``)."""

    code = {f"stages/{stage.kind}": code_digest(stage.cls)}
    code.update({f"{ref.kind}/{ref.name}": code_digest(ref.component) for ref in components_of(stage)})
    return dict(sorted(code.items()))


def stage_key(stage: "PlannedStage", dep_keys: dict[str, str], device: str) -> tuple[str, dict[str, Any]]:
    """The stage's key, and the resolved spec it was computed from (saved as spec.json).

    In the keyed form every weight reference names the referenced stage by its key, not its
    id (see ``WeightRef``), so that renaming a stage changes no key. The payload hashed is
    also left on the stage as ``stage.key_payload``."""
    resolved = {"id": stage.id, **_resolved(stage, None), "device": device}
    keyed = _resolved(stage, {"stage_keys": dep_keys})
    payload = {
        "key_schema": KEY_SCHEMA,
        "kind": stage.kind,
        "stage_cache_version": stage.cls.cache_version,
        "spec": {k: v for k, v in keyed.items() if k not in non_key_fields(type(stage.spec))},
        "device_type": device.split(":")[0],
        # an edited component computes something else, even with the same cache_version;
        # a plugin's version stands for what its source digest cannot see (compiled code)
        "code": _code(stage),
        "providers": dict(sorted(stage.providers.items())),
    }
    stage.key_payload = payload
    return digest(payload), resolved



#: the effective inputs of a stage: named as in the pipeline file (``seed``), not ``spec.seed``
_INPUTS = ("seed", "data", "model", "loss")


class _Absent:
    """A key that one of two payloads lacks."""


_ABSENT = _Absent()


def _leaf_differences(old: Any, new: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any, Any]]:
    """The paths at which ``old`` and ``new`` differ, down to the first non-container (a list
    of another length differs as a whole)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in _leaf_differences(old.get(k, _ABSENT), new.get(k, _ABSENT), path + (str(k),))]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in _leaf_differences(a, b, path + (str(i),))]
    return [] if old == new else [(path, old, new)]


def _shown(value: Any, stage_keys: dict[str, str]) -> str:
    if value is _ABSENT:
        return "(none)"
    text = value if isinstance(value, str) else canonical_json(value)
    for sid, key in stage_keys.items():  # a weight reference in keyed form: name the stage
        text = text.replace(key, sid)
    return text if len(text) <= 40 else text[:39] + "…"


def _stage_read(old: Any, new: Any, stage_keys: dict[str, str]) -> str | None:
    """The id of the stage a keyed weight reference reads, when only that stage's key changed."""
    if not (isinstance(old, str) and isinstance(new, str)) or old.partition("@")[2] != new.partition("@")[2]:
        return None
    return next((sid for sid, key in stage_keys.items() if new.startswith(key + "@")), None)


def key_differences(old: dict[str, Any], new: dict[str, Any], stage_keys: dict[str, str] | None = None,
                    limit: int = 3) -> list[str]:
    """What differs between two key payloads (``PlannedStage.key_payload``), in words, at most
    ``limit`` items and then ``and N more``: ``spec.optimizer.lr 0.05 -> 0.1``, ``seed 0 ->
    1``, ``code of optimizers/sgd``, ``train changed`` (a stage it reads has another key).
    ``stage_keys`` maps the ids of the stages read (in ``new``) to their keys, to name them."""
    stage_keys = stage_keys or {}
    ranked = []  # what the pipeline file says first, then the stages read, then the code
    for path, a, b in _leaf_differences(old, new, ()):
        read = _stage_read(a, b, stage_keys)
        if path[0] == "code" and len(path) == 2:
            ranked.append((3, f"code of {path[1]}"))
        elif path[0] == "providers" and len(path) == 2:
            ranked.append((4, f"provider of {path[1]} {_shown(a, {})} -> {_shown(b, {})}"))
        elif read is not None:
            ranked.append((1, f"{read} changed"))
        else:
            if path[0] == "spec" and len(path) > 1 and path[1] in _INPUTS:
                path = path[1:]
            ranked.append((0 if path[0] != "key_schema" else 2, f"{'.'.join(path)} {_shown(a, stage_keys)} -> {_shown(b, stage_keys)}"))
    # several references to one changed stage say the same thing once
    out = list(dict.fromkeys(text for _, text in sorted(ranked, key=lambda r: r[0])))
    return out[:limit] + ([f"and {len(out) - limit} more"] if len(out) > limit else [])
