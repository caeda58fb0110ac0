"""The plugin registry: components found through ``importlib.metadata`` entry points.

One entry-point group per kind (``nnopt.optimizers``, ...; SPEC §3). nnopt's own components
are registered in its ``pyproject.toml`` exactly as a third-party package registers its own,
so there is one path for both. Listing reads metadata only; a component's module is imported
the first time a pipeline (or ``describe``) uses it, and a module that fails to import breaks
only the pipelines that name it.

**Bridges** (entry-point group ``nnopt.bridges``) make a whole library's classes components
without an entry point per class. The entry point's name is a *prefix* (``torch``), by
convention the name of the distribution bridged; its value an object (or class) with

- ``names(kind) -> list[str]``: the names it provides for ``kind`` (``[]`` for other kinds);
- ``load(kind, name) -> type``: the component class of one of those names;
- optionally ``distribution: str``: the distribution whose classes it bridges (default: the
  prefix). That distribution and its version are the *provider* of every bridged name, so a
  stage key changes with the library's version; the code digest is the bridge module's.

A pipeline names a bridged component ``PREFIX.NAME`` (``torch.Rprop``,
``pytorch_optimizer.adan``): the library's own spelling after the prefix. A bridge is
imported only when a pipeline or ``describe`` names one of its prefixes, or a listing asks
for bridged names (``entries(bridged=True)``): a plain listing imports nothing. A name an
entry point registers directly is found first, so a bridge never shadows a component.
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
    "trackers",
)
GROUP_PREFIX = "nnopt."
BRIDGE_GROUP = "nnopt.bridges"  # see the module docstring


def normalize_kind(text: str) -> str:
    """``optimizers``, ``optimizer`` and ``nnopt.optimizers`` all name the same kind."""
    kind = text.strip().lower().removeprefix(GROUP_PREFIX)
    for candidate in (kind, kind + "s", kind + "es"):  # optimizers, optimizer, loss
        if candidate in KINDS:
            return candidate
    raise PluginError(f"unknown component kind '{text}'; kinds: {', '.join(KINDS)}", did_you_mean(kind, KINDS))


@dataclass(frozen=True)
class Entry:
    """One registered component, as its distribution's metadata declares it. A bridged name's
    entry has ``bridge`` (the prefix) and, as provider, the distribution bridged."""

    kind: str
    name: str
    value: str  # "module:attr" (a bridged name: "<the bridge's module:attr>[NAME]")
    dist: str
    version: str
    bridge: str | None = None

    @property
    def provider(self) -> str:
        return f"{self.dist} {self.version}"


@dataclass(frozen=True)
class BridgeEntry:
    """One bridge (``nnopt.bridges``): its prefix and the object providing its names."""

    prefix: str
    value: str  # "module:attr" of the bridge object
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


def _distribution_version(name: str) -> tuple[str, str] | None:
    """``(Name, version)`` of an installed distribution, from metadata only; None if absent."""
    try:
        dist = metadata.distribution(name)
    except (metadata.PackageNotFoundError, ValueError):
        return None
    return (dist.metadata["Name"] or name, dist.version or "")


def _import_attr(value: str) -> Any:
    module, _, attr = value.partition(":")
    obj: Any = __import__(module, fromlist=["_"])
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


class Registry:
    """Every component registered under the ``nnopt.*`` groups of the installed distributions,
    and the names of the bridges declared in ``nnopt.bridges`` (module docstring)."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, list[Entry]]] | None = None
        self._bridges: dict[str, list[BridgeEntry]] | None = None
        self._bridge_objects: dict[str, Any] = {}
        self._bridged: dict[tuple[str, str], list[str]] = {}
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

    def entries(self, kind: str | None = None, bridged: bool = False) -> list[Entry]:
        """All registered components (of one kind), sorted by kind then name. With ``bridged``
        also every name the bridges provide (this imports the bridged libraries); a bridge
        that fails to load is left out of the listing (naming one of its names says why)."""
        table = self._scan()
        kinds = [kind] if kind else list(KINDS)
        out: list[Entry] = []
        for k in kinds:
            rows = [e for name in table[k] for e in table[k][name]]
            if bridged:
                for prefix in sorted(self._bridge_table()):
                    try:
                        names = self.bridged_names(k, prefix)
                    except PluginError:
                        continue
                    rows += [self.entry(k, f"{prefix}.{n}") for n in names if f"{prefix}.{n}" not in table[k]]
            out += sorted(rows, key=lambda e: e.name)
        return out

    def names(self, kind: str) -> list[str]:
        """The names registered by entry points (a bridge's: ``bridged_names``)."""
        return sorted(self._scan()[kind])

    def entry(self, kind: str, name: str) -> Entry:
        """The one entry named ``name``; unknown and doubly-provided names are errors."""
        found = self._scan()[kind].get(name, [])
        if not found:
            bridged = self._bridged_entry(kind, name)
            if bridged is not None:
                return bridged
            raise PluginError(f"unknown {singular(kind)} '{name}'", did_you_mean(name, self.names(kind)))
        if len(found) > 1:
            providers = " and ".join(f"'{e.provider}' ({e.value})" for e in found)
            raise PluginError(f"{singular(kind)} '{name}' is provided by two distributions: {providers}; uninstall one")
        return found[0]

    def load(self, kind: str, name: str) -> tuple[type, Entry]:
        """Import and return the component class registered (or bridged) as ``name`` of ``kind``."""
        entry = self.entry(kind, name)
        if (kind, name) not in self._loaded:
            try:
                if entry.bridge is not None:
                    obj: Any = self._bridge(entry.bridge).load(kind, name.partition(".")[2])
                else:
                    obj = _import_attr(entry.value)
            except PluginError:
                raise
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

    # ------------------------------------------------------------------ bridges
    def _bridge_table(self) -> dict[str, list[BridgeEntry]]:
        if self._bridges is None:
            found: dict[str, list[BridgeEntry]] = {}
            for ep in metadata.entry_points().select(group=BRIDGE_GROUP):
                dist, version = _dist_of(ep)
                same = found.setdefault(ep.name, [])
                if all(b.dist != dist for b in same):
                    same.append(BridgeEntry(ep.name, ep.value, dist, version))
            self._bridges = found
        return self._bridges

    def bridges(self) -> list[BridgeEntry]:
        """Every declared bridge, sorted by prefix (metadata only: nothing is imported)."""
        table = self._bridge_table()
        return [b for prefix in sorted(table) for b in table[prefix]]

    def _bridge(self, prefix: str) -> Any:
        """The bridge object of ``prefix``, imported on first use."""
        if prefix not in self._bridge_objects:
            found = self._bridge_table().get(prefix, [])
            if not found:
                raise PluginError(f"no bridge '{prefix}'", did_you_mean(prefix, self._bridge_table()))
            if len(found) > 1:
                providers = " and ".join(f"'{b.provider}' ({b.value})" for b in found)
                raise PluginError(f"bridge '{prefix}' is provided by two distributions: {providers}; uninstall one")
            bridge = found[0]
            try:
                obj = _import_attr(bridge.value)
            except Exception as err:  # third-party code: report, don't crash
                raise PluginError(f"bridge '{prefix}' from distribution '{bridge.provider}' failed to load "
                                  f"({bridge.value}): {type(err).__name__}: {err}") from err
            if not (callable(getattr(obj, "names", None)) and callable(getattr(obj, "load", None))):
                raise PluginError(f"bridge '{prefix}' from distribution '{bridge.provider}' has no "
                                  f"names(kind) and load(kind, name) ({bridge.value})")
            self._bridge_objects[prefix] = obj
        return self._bridge_objects[prefix]

    def bridged_names(self, kind: str, prefix: str) -> list[str]:
        """The names (without ``PREFIX.``) that the bridge ``prefix`` provides for ``kind``."""
        if (kind, prefix) not in self._bridged:
            bridge = self._bridge(prefix)
            try:
                names = sorted(set(bridge.names(kind)))
            except Exception as err:  # third-party code
                raise PluginError(f"bridge '{prefix}' failed to list its {kind}: {type(err).__name__}: {err}") from err
            self._bridged[(kind, prefix)] = names
        return self._bridged[(kind, prefix)]

    def _bridged_entry(self, kind: str, name: str) -> Entry | None:
        """The entry of ``PREFIX.NAME`` when ``PREFIX`` is a declared bridge, else None."""
        prefix, dot, rest = name.partition(".")
        if not dot or prefix not in self._bridge_table():
            return None
        names = self.bridged_names(kind, prefix)
        if rest not in names:
            close = did_you_mean(rest, names)
            raise PluginError(f"unknown {singular(kind)} '{name}': bridge '{prefix}' provides no {singular(kind)} "
                              f"'{rest}' (`nnopt list {kind} --bridged` lists those it does)",
                              f"{prefix}.{close}" if close else None)
        wrapped = str(getattr(self._bridge(prefix), "distribution", prefix))
        dist, version = _distribution_version(wrapped) or (wrapped, "")
        value = f"{self._bridge_table()[prefix][0].value}[{rest}]"
        return Entry(kind, name, value, dist, version, bridge=prefix)

    def fingerprint(self) -> list[tuple[str, str]]:
        """Sorted (distribution, version) pairs of every provider: part of the plan-index key.

        A bridge adds its own distribution and the one its prefix names (by convention the
        library it bridges: ``torch``, ``pytorch_optimizer``), read from metadata without
        importing anything, so that upgrading the library sends cached plans back to planning."""
        pairs = {(e.dist, e.version) for e in self.entries()}
        for bridge in self.bridges():
            pairs.add((bridge.dist, bridge.version))
            wrapped = _distribution_version(bridge.prefix)
            if wrapped is not None:
                pairs.add(wrapped)
        return sorted(pairs)


def singular(kind: str) -> str:
    return {"datasets": "dataset", "losses": "loss", "analyzers": "analyzer"}.get(kind, kind.removesuffix("s"))
