"""The plugin registry: components found through ``importlib.metadata`` entry points.

One entry-point group per kind (``nnopt.optimizers``, ...; SPEC §3). nnopt's own components
are registered in its ``pyproject.toml`` exactly as a third-party package registers its own,
so there is one path for both. Listing reads metadata only; a component's module is imported
the first time a pipeline (or ``describe``) uses it, and a module that fails to import breaks
only the pipelines that name it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Any

from .errors import PluginError, did_you_mean

KINDS = (
    "datasets",
    "architectures",
    "activations",
    "initializers",
    "normalizers",
    "losses",
    "optimizers",
    "schedules",
    "pruners",
    "analyzers",
    "kernels",
    "stages",
)
GROUP_PREFIX = "nnopt."


def normalize_kind(text: str) -> str:
    """``optimizers``, ``optimizer`` and ``nnopt.optimizers`` all name the same kind."""
    kind = text.strip().lower().removeprefix(GROUP_PREFIX)
    for candidate in (kind, kind + "s", kind + "es"):  # optimizers, optimizer, loss
        if candidate in KINDS:
            return candidate
    raise PluginError(f"unknown component kind '{text}'; kinds: {', '.join(KINDS)}", did_you_mean(kind, KINDS))


@dataclass(frozen=True)
class Entry:
    """One registered component, as its distribution's metadata declares it."""

    kind: str
    name: str
    value: str  # "module:attr"
    dist: str
    version: str

    @property
    def provider(self) -> str:
        return f"{self.dist} {self.version}"


def _dist_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ("<unknown>", "")
    return (dist.metadata["Name"] or "<unknown>", dist.version or "")


class Registry:
    """Every component registered under the ``nnopt.*`` groups of the installed distributions."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, list[Entry]]] | None = None
        self._loaded: dict[tuple[str, str], type] = {}

    def _scan(self) -> dict[str, dict[str, list[Entry]]]:
        if self._entries is None:
            found: dict[str, dict[str, list[Entry]]] = {kind: {} for kind in KINDS}
            eps = metadata.entry_points()
            for kind in KINDS:
                for ep in eps.select(group=GROUP_PREFIX + kind):
                    dist, version = _dist_of(ep)
                    entry = Entry(kind, ep.name, ep.value, dist, version)
                    same = found[kind].setdefault(ep.name, [])
                    if all(e.dist != entry.dist for e in same):
                        same.append(entry)
            self._entries = found
        return self._entries

    def entries(self, kind: str | None = None) -> list[Entry]:
        """All registered components (of one kind), sorted by kind then name."""
        table = self._scan()
        kinds = [kind] if kind else list(KINDS)
        return [e for k in kinds for name in sorted(table[k]) for e in table[k][name]]

    def names(self, kind: str) -> list[str]:
        return sorted(self._scan()[kind])

    def entry(self, kind: str, name: str) -> Entry:
        """The one entry named ``name``; unknown and doubly-provided names are errors."""
        found = self._scan()[kind].get(name, [])
        if not found:
            raise PluginError(f"unknown {singular(kind)} '{name}'", did_you_mean(name, self.names(kind)))
        if len(found) > 1:
            providers = " and ".join(f"'{e.provider}' ({e.value})" for e in found)
            raise PluginError(f"{singular(kind)} '{name}' is provided by two distributions: {providers}; uninstall one")
        return found[0]

    def load(self, kind: str, name: str) -> tuple[type, Entry]:
        """Import and return the component class registered as ``name`` of ``kind``."""
        entry = self.entry(kind, name)
        if (kind, name) not in self._loaded:
            module, _, attr = entry.value.partition(":")
            try:
                obj: Any = __import__(module, fromlist=["_"])
                for part in filter(None, attr.split(".")):
                    obj = getattr(obj, part)
            except Exception as err:  # any failure of third-party code: report, don't crash
                raise PluginError(
                    f"{singular(kind)} '{name}' from distribution '{entry.provider}' failed to load "
                    f"({entry.value}): {type(err).__name__}: {err}"
                ) from err
            if not isinstance(obj, type) or not hasattr(obj, "Params"):
                raise PluginError(
                    f"{singular(kind)} '{name}' from distribution '{entry.provider}' is not an nnopt component "
                    f"({entry.value} has no Params)"
                )
            self._loaded[(kind, name)] = obj
        return self._loaded[(kind, name)], entry

    def fingerprint(self) -> list[tuple[str, str]]:
        """Sorted (distribution, version) pairs of every provider: part of the plan-index key."""
        return sorted({(e.dist, e.version) for e in self.entries()})


def singular(kind: str) -> str:
    return {"datasets": "dataset", "losses": "loss", "analyzers": "analyzer"}.get(kind, kind.removesuffix("s"))


