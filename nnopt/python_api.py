"""The Python API for notebooks and scripts (SPEC §8): ``nnopt.run`` and ``nnopt.load``.

    import nnopt
    r = nnopt.run("pipeline.yaml", overrides={"stages.train.optimizer.lr": 0.1}, store="runs")
    r.status, r.stages["train"].metrics["test_accuracy"]
    s = nnopt.load("quickstart/train", store="runs")
    s.model(x)                      # an nn.Module holding the stage's final weights

``run`` does what ``nnopt run`` does and returns the same object ``--json`` prints, with
attribute access; errors are raised (``SpecError`` for an invalid pipeline, carrying every
located diagnostic), never printed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from nnopt.core.errors import Diagnostic, Location, SpecError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


class JsonView(dict):
    """A JSON object whose keys read as attributes too (``r.stages["train"].metrics``);
    nested objects are views as well. It *is* the dict ``--json`` prints."""

    def __init__(self, data: Mapping[str, Any]):
        super().__init__({k: _view(v) for k, v in data.items()})

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"no '{name}' in this result (keys: {', '.join(self)})") from None


def _view(value: Any) -> Any:
    if isinstance(value, dict):
        return JsonView(value)
    if isinstance(value, list):
        return [_view(v) for v in value]
    return value


def run(file: str | Path, overrides: Mapping[str, Any] | None = None, store: str | Path | None = None,
        force: bool = False, redo: tuple[str, ...] | list[str] = (), track: tuple[str, ...] | list[str] = ()) -> JsonView:
    """Run a pipeline file as ``nnopt run FILE --set PATH=VALUE ...`` does; returns the
    ``--json`` result (``.status``, ``.stages[id].metrics``; ``.runs`` for a matrix).

    ``overrides`` maps dotted paths to Python values (``{"model.arch.widths": [64, 64]}``),
    validated exactly like ``--set``. The store is ``store``, else ``$NNOPT_HOME``, else ``./.nnopt``.
    ``track`` names trackers besides the file's own, as ``--track NAME`` does.
    """
    from nnopt.core.invocation import run_pipeline
    from nnopt.core.trackers import track_refs

    sets = [_as_set(path, value) for path, value in (overrides or {}).items()]
    result = run_pipeline(str(file), sets, _store(store), force=force, redo=tuple(redo), track=track_refs(tuple(track)),
                          argv=["nnopt.run", str(file), *(f"--set={s}" for s in sets)])
    return JsonView(result.to_json())


def diagnose(file: str | Path, stage: str | None = None, overrides: Mapping[str, Any] | None = None,
             store: str | Path | None = None, probe_steps: int | None = None, fixes: int | None = None,
             lr_range: bool | None = None, force: bool = False) -> JsonView:
    """Diagnose a train stage of a pipeline file as ``nnopt diagnose FILE --json`` does; returns
    that JSON (``.findings``, ``.healthy``; ``.combinations`` for a matrix). A bad file or
    stage raises ``SpecError``."""
    from nnopt.diagnose_file import diagnose_file

    sets = [_as_set(path, value) for path, value in (overrides or {}).items()]
    found = diagnose_file(str(file), sets, _store(store), stage, probe_steps=probe_steps, fixes=fixes,
                          lr_range=lr_range, force=force)
    if len(found) == 1 and not found[0].params:
        return JsonView(found[0].to_json())
    return JsonView({"combinations": [d.to_json() for d in found], "healthy": all(d.healthy for d in found)})


def _store(store: str | Path | None) -> Any:
    from nnopt.core.store import Store, default_root

    return Store(Path(store) if store is not None else default_root())


def _as_set(path: str, value: Any) -> str:
    """``PATH=VALUE`` with the value written as JSON, which YAML reads back as the same value."""
    try:
        return f"{path}={json.dumps(value, allow_nan=False)}"
    except (TypeError, ValueError) as err:
        raise SpecError([Diagnostic(Location(f"overrides[{path!r}]"), str(path), f"not a plain value ({err})")]) from None


@dataclass
class StoredStage:
    """A stage read back from the store: what ``nnopt show`` shows, plus its model."""

    key: str
    id: str | None
    kind: str | None
    dir: Path
    status: str | None
    metrics: dict[str, Any]
    results: dict[str, Any]
    spec: dict[str, Any]
    paths: dict[str, Path]  # every artifact, by its path relative to ``dir``
    model: "nn.Module | None"  # its final weights (None for a stage that leaves none)

    def weights(self, step: int | None = None) -> dict[str, Any]:
        """The tensors of ``weights/final`` (or of kept step ``step``), read with safetensors."""
        from safetensors.torch import load_file

        from nnopt.core.stage import weights_file

        rel = weights_file(step)
        if rel not in self.paths:
            kept = sorted(p for p in self.paths if p.startswith("weights/"))
            raise KeyError(f"stage {self.id} has no {rel} (it has: {', '.join(kept) or 'no weights'})")
        return load_file(str(self.paths[rel]))


def load(ref: str, store: str | Path | None = None, device: str = "cpu") -> StoredStage:
    """A stored stage by anything ``nnopt show`` takes: ``RUN/STAGE``, ``PIPELINE/STAGE``
    (its latest run), or a key prefix. Its artifacts are verified against their checksums
    first: a damaged stage raises ``ValueError`` naming the files, it is never returned."""
    from nnopt.core.lookup import find_run
    from nnopt.core.store import Store, default_root, read_json

    st = Store(Path(store) if store is not None else default_root())
    run_part, _, stage_part = ref.partition("/")
    keys = st.find_stage(ref) if not stage_part else []
    if len(keys) == 1:
        key, stage_id = keys[0], None
    elif len(keys) > 1:
        raise SpecError([Diagnostic(Location(f"REF {ref}"), "", f"'{ref}' matches {len(keys)} stages; give more of the key")])
    else:
        if not stage_part:
            raise SpecError([Diagnostic(Location(f"REF {ref}"), "", "expected RUN/STAGE, PIPELINE/STAGE or a stage key prefix")])
        record = find_run(st, run_part, shown=ref)
        if stage_part not in record.get("stages", {}):
            raise SpecError([Diagnostic(Location(f"REF {ref}"), "", f"run {record['run']} has no stage '{stage_part}'")])
        key, stage_id = record["stages"][stage_part]["key"], stage_part
    if not st.is_complete(key):
        raise ValueError(f"stage {ref} ({key[:12]}) is not complete in {st.root}")
    damaged = st.damaged_artifacts(key)
    if damaged:
        raise ValueError(f"stage {ref} ({key[:12]}) is damaged: {', '.join(damaged)} no longer match their checksums; "
                         "`nnopt run` of its pipeline computes it again")
    d = st.stage_dir(key)
    manifest, result = read_json(d / "manifest.json"), read_json(d / "result.json")
    spec = manifest.get("spec") or {}
    paths = {rel: d / rel for rel in manifest.get("artifacts", {})}
    model = _model_of(spec, manifest.get("seed", 0), paths, device) if "weights/final.safetensors" in paths else None
    return StoredStage(key, stage_id or manifest.get("stage"), manifest.get("kind"), d, result.get("status"),
                       result.get("metrics", {}), result.get("results", {}), spec, paths, model)


def _model_of(spec: dict[str, Any], seed: int, paths: dict[str, Path], device: str) -> "nn.Module":
    """The stage's model, rebuilt from its resolved spec, holding its final weights."""
    import torch
    from safetensors.torch import load_file

    from nnopt.core.component import DatasetRef
    from nnopt.core.model_spec import ModelSpec, build_model
    from nnopt.core.rebuild import as_written, resolved

    try:  # a component of the stage may no longer be installed, or its params may have changed
        model_spec = resolved(ModelSpec, as_written(spec["model"]), "model")
        data_ref = resolved(DatasetRef, as_written(spec["data"]), "data")
    except ValueError as err:
        raise ValueError(f"cannot rebuild the stage's model: {err}") from None
    data = data_ref.instantiate().prepare(seed)
    model = build_model(model_spec, data, seed, torch.device(device), initialize=False)
    model.load_state_dict(load_file(str(paths["weights/final.safetensors"]), device=device))
    return model.eval()

