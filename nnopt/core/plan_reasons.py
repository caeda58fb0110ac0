"""Why ``nnopt plan`` says a stage will run: new, its key changed (and what changed), damaged,
or incomplete (a checkpoint to resume from); else it is cached."""

from __future__ import annotations

from typing import Any

from .keys import key_differences
from .store import CHECKPOINT, Store, read_json


def previous_stages(records: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{stage id: {"key", "status"}}`` of the latest run of this pipeline (``records``,
    oldest first), preferring one of the same matrix combination; ``{}`` if it never ran."""
    same = [r for r in records if r.get("params") == params]
    latest = (same or records)[-1:]
    return latest[0]["stages"] if latest else {}


def run_reason(store: Store, plan: Any, st: Any, previous: dict[str, dict[str, Any]]) -> str:
    """Why ``st`` will run, or ``cached``: what ``run`` would find, compared with ``previous``."""
    if store.is_complete(st.key):  # used only if intact: the runner checks every checksum
        damaged = store.damaged_artifacts(st.key)
        return f"damaged: {', '.join(damaged)}" if damaged else "cached"
    if (store.root / "tmp" / st.key / CHECKPOINT).is_file():
        return "incomplete"  # a killed run left a checkpoint: the next run resumes from it
    earlier = previous.get(st.id) or {}
    if not earlier.get("key"):
        return "new"
    if earlier["key"] == st.key:  # the same key, but no result: it failed, or was collected
        return f"not stored (latest run: {earlier.get('status', 'unknown')})"
    try:
        payload = read_json(store.stage_dir(earlier["key"]) / "manifest.json")["key_payload"]
    except (OSError, ValueError, KeyError, TypeError):  # gone, or stored before payloads were kept
        return "key changed"
    changes = key_differences(payload, st.key_payload, {d: plan.stage(d).key for d in st.deps})
    return "key changed: " + ", ".join(changes) if changes else "key changed"
