"""From a pipeline file to validated, keyed plans: everything checked before anything runs.

``load_plans(path, sets)`` parses the file, applies ``--set`` overrides and expands ``matrix:``
(in the order ``overrides.expand`` defines), validates each combination (top level, each
stage against its kind, every component's params against that component's model, every
weight reference against the stage it names, every model's size against its device's
memory), orders the stages and computes each stage's cache key. All problems of all
combinations are gathered and raised together as one ``SpecError``.
"""

from __future__ import annotations

import graphlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from .component import ComponentRef, WeightRef
from .errors import Diagnostic, Location, PluginError, Problems, SpecError, did_you_mean
from .keys import stage_key
from .refs import components_of, find_refs
from .model_size import ModelSizes, device_memory, human_bytes
from .model_spec import ModelSpec
from .overrides import expand, parse_set
from .registry import Registry, singular
from .spec import (GENERATED_STAGE_ID_PATTERN, MAX_GENERATED_ID_LENGTH, MAX_NAME_LENGTH, STAGE_ID_PATTERN, ExpandedSource,
                   ExpansionError, PipelineSpec, diagnostics_from, shown_path)
from .stage import Stage, StageSpec
from .yaml_source import Path, Source, parse_yaml

INHERITED = ("data", "model", "loss")


@dataclass
class PlannedStage:
    """A stage ready to run: its validated spec, effective inputs, dependencies and key."""

    id: str
    kind: str
    cls: type[Stage]
    spec: StageSpec
    seed: int
    data: Any
    model: ModelSpec | None
    loss: Any
    weights: dict[str, WeightRef]  # every weight reference it reads, by its text
    deps: list[str]
    providers: dict[str, str]  # "kind/name" -> "dist version", for provenance
    key: str = ""
    resolved: dict[str, Any] = field(default_factory=dict)  # spec.json: resolved, defaults included
    param_count: int | None = None  # parameters of its model (None: no model, or not known before running)
    weight_bytes: int | None = None  # bytes of its model's weights, parameters and buffers (model_size)
    key_payload: dict[str, Any] = field(default_factory=dict)  # what the key hashes (keys.stage_key)


@dataclass
class Plan:
    """One pipeline (one matrix combination), its stages in run order."""

    name: str
    file: str
    params: dict[str, Any]
    device: str
    stages: list[PlannedStage]
    watched_files: list[str] = field(default_factory=list)
    #: the file's ``trackers:`` (resolved refs); in no stage's key (core.trackers)
    trackers: list[Any] = field(default_factory=list)

    def stage(self, stage_id: str) -> PlannedStage:
        return next(s for s in self.stages if s.id == stage_id)


def load_plans(file: str | FsPath, sets: list[str] = (), registry: Registry | None = None) -> list[Plan]:
    """Validate ``file`` with overrides ``sets`` into one plan per matrix combination."""
    registry = registry or Registry()
    name = str(file)
    try:
        raw = FsPath(file).read_bytes()
        text = raw.decode("utf-8")
    except OSError as err:
        raise SpecError([Diagnostic(Location(name), "", f"cannot read the pipeline file: {err.strerror or err}")]) from None
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise SpecError([Diagnostic(Location(name, line, column), "", f"not valid UTF-8 (byte 0x{raw[err.start]:02x})")]) from None
    source = parse_yaml(text, name)
    if not isinstance(source.data, dict):
        where = source.locate(()) if source.data is not None else Location(name, 1, 1)
        raise SpecError([Diagnostic(where, "", "expected a mapping with name, stages, ... at the top level")])
    problems = Problems()
    overrides = []
    for text in sets:
        try:
            overrides.append(parse_set(text))
        except SpecError as err:
            for diag in err.diagnostics:
                problems.add(diag)
    combos, expand_problems = expand(source, overrides)  # the order of --set and matrix: see overrides.expand
    for diag in expand_problems:
        problems.add(diag)
    plans = []
    sizes = ModelSizes()  # shared by the combinations: a matrix rarely changes the model
    for combo in combos:
        plan = _plan_one(combo.source, combo.params, registry, problems, sizes)
        if plan is not None:
            plans.append(plan)
    if problems:
        raise SpecError(sorted(problems.items, key=lambda d: (d.location.source, d.location.line or 0, d.location.column or 0)))
    return plans


def _plan_one(source: Source, params: dict[str, Any], registry: Registry, problems: Problems, sizes: ModelSizes) -> Plan | None:
    data = dict(source.data)
    try:
        pipeline = PipelineSpec.model_validate({**data, "matrix": None})
    except ValidationError as err:
        for diag in diagnostics_from(err, source, model=PipelineSpec):
            problems.add(diag)
        _check_fields_alone(PipelineSpec, data, err, (), source, registry, problems)
        pipeline = None
    raw_stages = data.get("stages") if isinstance(data.get("stages"), dict) else {}
    if pipeline is not None:
        for part in (*INHERITED, "trackers"):
            resolve_components(getattr(pipeline, part), (part,), source, registry, problems)
    # blocks (a stage kind whose `expand` returns stages, e.g. `lottery`) are replaced by the
    # stages they stand for before anything else is checked; errors inside those are located
    # at the block keys they come from (ExpandedSource)
    source, raw_stages = _expand_blocks({str(k): v for k, v in raw_stages.items()}, source, registry, problems)
    generated = set(source.origins) if isinstance(source, ExpandedSource) else set()
    stage_specs: dict[str, tuple[type[Stage], StageSpec]] = {}
    for sid, raw in raw_stages.items():
        checked = _validate_stage(str(sid), raw, source, registry, problems, generated=sid in generated)
        if checked is not None:
            stage_specs[str(sid)] = checked
    planned: dict[str, PlannedStage] = {}
    graph: dict[str, set[str]] = {}
    for sid, (cls, spec) in stage_specs.items():
        weights = {}
        for path, ref in find_refs(spec, ("stages", sid), WeightRef):
            problem = _check_weight_ref(ref, sid, stage_specs, set(map(str, raw_stages)))
            if problem:
                message, hint = problem
                problems.add(Diagnostic(source.locate(path), shown_path(source, path), message, hint))
            else:
                weights[str(ref)] = ref
        graph[sid] = {ref.stage for ref in weights.values()}
        planned[sid] = PlannedStage(sid, spec.kind, cls, spec, 0, None, None, None, weights, sorted(graph[sid]), {})

    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        cycle = err.args[1]
        path = ("stages", cycle[0])
        problems.add(Diagnostic(source.locate(path, at_key=True), shown_path(source, path), "stages depend on each other in a cycle: " + " -> ".join(cycle)))
        return None
    if pipeline is None or len(stage_specs) != len(raw_stages) or problems:
        return None
    device = pipeline.device
    # run in the order of the file, as far as dependencies allow
    order = _stable_order(list(stage_specs), graph)

    model_at: dict[str, Path] = {}  # where each stage's effective model is written
    for sid in order:
        st = planned[sid]
        parent = planned[st.spec.from_.stage] if st.spec.from_ is not None and st.spec.from_.stage in planned else None
        st.seed = st.spec.seed if st.spec.seed is not None else (parent.seed if parent else pipeline.seed)
        for part in INHERITED:
            own = getattr(st.spec, part)
            value = own if own is not None else (getattr(parent, part) if parent else getattr(pipeline, part))
            setattr(st, part, value)
            if part == "model":
                model_at[sid] = ("stages", sid, "model") if own is not None else (model_at[parent.id] if parent else ("model",))
            if part in st.cls.needs and value is None:
                path = ("stages", sid)
                problems.add(Diagnostic(source.locate(path, at_key=True), shown_path(source, path + (part,)),
                                        f"stage kind '{st.kind}' needs '{part}': give it here, in the stage it starts from, or at the top of the file"))
        st.providers = _providers_of(st, registry)
    if problems:
        return None

    resolved_device = resolve_device(device)
    if resolved_device.startswith("cuda") and not _cuda_has(resolved_device):
        problems.add(Diagnostic(source.locate(("device",)), "device", f"'{device}' asked for, but this machine has no such CUDA device"
                                " (use device: auto to fall back to the CPU)"))
        return None
    _size_models([planned[s] for s in order], model_at, resolved_device, source, sizes, problems)
    if problems:
        return None
    for sid in order:
        st = planned[sid]
        st.key, st.resolved = stage_key(st, {d: planned[d].key for d in st.deps}, resolved_device)
    watched = sorted({f for st in planned.values() for f in _watched(st)})
    return Plan(pipeline.name, source.name, params, device, [planned[s] for s in order], watched, pipeline.trackers)


def _size_models(stages: list[PlannedStage], model_at: dict[str, Path], device: str, source: Source,
                 sizes: ModelSizes, problems: Problems) -> None:
    """Set each stage's ``param_count`` and ``weight_bytes``, and refuse a stage whose weights
    alone exceed the memory of ``device``: found here, before anything runs, it is a spec
    error at the model's ``arch``, not an allocator failure minutes into a run."""
    memory = None
    for st in stages:
        if st.model is None or st.data is None:
            continue
        size = sizes.of(st.model, st.data, st.seed)
        if size is None:
            continue
        st.param_count, st.weight_bytes = size.params, size.bytes
        memory = memory if memory is not None else device_memory(device)
        if memory is not None and size.bytes > memory:
            path = model_at[st.id] + ("arch",)
            problems.add(Diagnostic(source.locate(path), shown_path(source, path),
                                    f"this model has {size.params:,} parameters: its weights alone take {human_bytes(size.bytes)}, "
                                    f"more than the {human_bytes(memory)} of memory of device {device}"))


def _stable_order(ids: list[str], graph: dict[str, set[str]]) -> list[str]:
    """The stages in file order, each moved after the stages it reads (no cycles here)."""
    done: list[str] = []
    pending = list(ids)
    while pending:
        ready = next(s for s in pending if graph[s] <= set(done))
        done.append(ready)
        pending.remove(ready)
    return done


def _expand_blocks(raw_stages: dict[str, Any], source: Source, registry: Registry,
                   problems: Problems) -> tuple[Source, dict[str, Any]]:
    """The stages as written with every block replaced by the stages its ``Stage.expand``
    returns, in its place, and the source that locates each generated stage's keys at the
    block keys they come from (``Stage.origin``). A block is validated against its own
    ``Params`` first (its errors are reported there and it expands to nothing)."""
    out: dict[str, Any] = {}
    origins: dict[str, tuple[Path, dict[str, Path]]] = {}
    items = list(raw_stages.items())
    for i, (sid, raw) in enumerate(items):
        cls = _block_class(raw, registry)
        if cls is None:
            out[sid] = raw
            continue
        path: Path = ("stages", sid)
        if _validate_stage(sid, raw, source, registry, problems) is None:
            continue  # its errors are reported; expanding an invalid block would only repeat them
        view = {**out, **dict(items[i:])}  # earlier blocks already expanded, later stages as written
        try:
            stages = cls.expand(sid, raw, view)
        except ExpansionError as err:
            where = path + err.path
            problems.add(Diagnostic(source.locate(where), shown_path(source, where), err.message, err.suggestion))
            continue
        except Exception as err:  # a plugin's bug: one line, located at the block, no traceback
            problems.add(Diagnostic(source.locate(path, at_key=True), shown_path(source, path),
                                    f"stage kind '{raw['kind']}' failed to expand: {type(err).__name__}: {err}"))
            continue
        if stages is None:  # not a block after all: an ordinary stage
            out[sid] = raw
            continue
        for gid, gen in stages.items():
            bad = (not isinstance(gid, str) or not (gid == sid or gid.startswith(sid + ".")) or len(gid) > MAX_GENERATED_ID_LENGTH
                   or not re.fullmatch(GENERATED_STAGE_ID_PATTERN, gid) or not isinstance(gen, dict))
            clash = gid in out or (gid != sid and gid in raw_stages)
            if bad or clash:
                why = "clashes with another stage" if clash and not bad else \
                    f"is not '{sid}' or '{sid}.PART...' with a mapping (parts of letters, digits, _ and -)"
                problems.add(Diagnostic(source.locate(path, at_key=True), shown_path(source, path),
                                        f"stage kind '{raw['kind']}' generated a stage '{gid}' that {why}"))
                continue
            out[gid] = gen
            origins[gid] = (path, {str(k): tuple(cls.origin(sid, raw, gid, str(k))) for k in gen})
    if not origins:
        return source, out
    return ExpandedSource(source.data, source.name, source.keys, source.values, origins), out


def _block_class(raw: Any, registry: Registry) -> type[Stage] | None:
    """The stage class of ``raw`` if its kind overrides ``Stage.expand`` (a block), else None;
    a kind that does not load is reported when the stage is validated."""
    if not isinstance(raw, dict) or not isinstance(raw.get("kind"), str):
        return None
    try:
        cls, _ = registry.load("stages", raw["kind"])
    except PluginError:
        return None
    own = getattr(getattr(cls, "expand", None), "__func__", None)
    return cls if isinstance(cls, type) and issubclass(cls, Stage) and own is not Stage.expand.__func__ else None


def _validate_stage(sid: str, raw: Any, source: Source, registry: Registry, problems: Problems, generated: bool = False):
    path: Path = ("stages", sid)
    # generated ids (a block's stages) were checked by _expand_blocks: they may have dots
    if not generated and len(sid) > MAX_NAME_LENGTH:
        message = f"a stage id is at most {MAX_NAME_LENGTH} characters; this one has {len(sid)}"
        problems.add(Diagnostic(source.locate(path, at_key=True), shown_path(source, path), message))
        return None
    if not re.fullmatch(GENERATED_STAGE_ID_PATTERN if generated else STAGE_ID_PATTERN, sid):
        problems.add(Diagnostic(source.locate(path, at_key=True), shown_path(source, path),
                                "stage ids may use letters, digits, _ and - only"))
        return None
    if not isinstance(raw, dict):
        problems.add(Diagnostic(source.locate(path), shown_path(source, path), "expected a mapping with 'kind: <stage kind>'"))
        return None
    kind = raw.get("kind")
    if not isinstance(kind, str):
        names = ", ".join(registry.names("stages"))
        typo = next((k for k in raw if did_you_mean(str(k), ["kind"])), None)
        if typo is not None:
            where, message = source.locate(path + (typo,), at_key=True), f"unknown key '{typo}'; a stage needs 'kind: <stage kind>' ({names})"
            problems.add(Diagnostic(where, shown_path(source, path + (typo,)), message, "kind"))
        else:
            problems.add(Diagnostic(source.locate(path), shown_path(source, path + ("kind",)), f"missing 'kind'; expected one of: {names}"))
        return None
    try:
        cls, _ = registry.load("stages", kind)
    except PluginError as err:
        message = err.message.replace("unknown stage ", "unknown stage kind ")
        problems.add(Diagnostic(source.locate(path + ("kind",)), shown_path(source, path + ("kind",)), message, err.suggestion))
        return None
    try:
        spec = cls.Params.model_validate(raw)
    except ValidationError as err:
        for diag in diagnostics_from(err, source, path, model=cls.Params):
            problems.add(diag)
        _check_fields_alone(cls.Params, raw, err, path, source, registry, problems)
        return None
    resolve_components(spec, path, source, registry, problems)
    return cls, spec


def _check_fields_alone(model: type[BaseModel], raw: dict[str, Any], err: ValidationError, path: Path, source: Source,
                        registry: Registry, problems: Problems) -> None:
    """A model with an invalid field is not built, so the components named by its *valid*
    fields would go unchecked; check each such field on its own, to report every error now."""
    failed = {e["loc"][0] for e in err.errors() if e["loc"]}
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key not in raw or key in failed:
            continue
        try:
            value = TypeAdapter(info.annotation).validate_python(raw[key])
        except ValidationError:
            continue
        resolve_components(value, path + (key,), source, registry, problems)


def resolve_components(obj: Any, path: Path, source: Source, registry: Registry, problems: Problems) -> None:
    """Resolve every component reference in ``obj`` (recursively, params included)."""
    for ref_path, ref in find_refs(obj, path, ComponentRef):
        _resolve_ref(ref, ref_path, source, registry, problems)


def _resolve_ref(ref: ComponentRef, path: Path, source: Source, registry: Registry, problems: Problems) -> None:
    written = source.origin(path + ("name",)) if isinstance(source, ExpandedSource) else path + ("name",)
    name_path = path + ("name",) if written in source.values else path
    try:
        cls, entry = registry.load(ref.kind, ref.name)
    except PluginError as err:
        problems.add(Diagnostic(source.locate(name_path), shown_path(source, path), err.message, err.suggestion))
        return
    if not issubclass(cls.Params, BaseModel):
        problems.add(Diagnostic(source.locate(path), shown_path(source, path), f"{singular(ref.kind)} '{ref.name}' has no pydantic Params"))
        return
    try:
        params = cls.Params.model_validate(ref.params)
    except ValidationError as err:
        reserved = [f.alias or n for n, f in type(ref).model_fields.items() if n != "params"]
        for diag in diagnostics_from(err, source, path, model=cls.Params, also_allowed=reserved):
            problems.add(diag)
        return
    ref.resolve(cls, params, entry.provider)
    resolve_components(params, path, source, registry, problems)


def _check_weight_ref(ref: WeightRef, sid: str, stages: dict[str, tuple[type[Stage], StageSpec]],
                      all_ids: set[str]) -> tuple[str, str | None] | None:
    if ref.stage == sid:
        return f"stage '{sid}' cannot read its own weights", None
    if ref.stage not in all_ids:
        return f"no stage '{ref.stage}' in this pipeline", did_you_mean(ref.stage, all_ids)
    if ref.stage not in stages:  # that stage has errors of its own, reported there
        return None
    cls, spec = stages[ref.stage]
    if ref.step is None:
        if not cls.provides_weights:
            return f"stage '{ref.stage}' (kind {spec.kind}) leaves no weights to refer to", None
        return None
    kept = cls(spec).kept_steps()
    if ref.step not in kept:
        shown = ", ".join(map(str, sorted(kept))) or "none"
        return (f"stage '{ref.stage}' does not keep step {ref.step} (kept: {shown}); add {ref.step} to stages.{ref.stage}.keep", None)
    return None


def _providers_of(st: PlannedStage, registry: Registry) -> dict[str, str]:
    """``{"kind/name": "distribution version"}`` of the stage kind and every component used."""
    used = {f"stages/{st.kind}": registry.entry("stages", st.kind).provider}
    used.update({f"{ref.kind}/{ref.name}": ref.distribution for ref in components_of(st)})
    return dict(sorted(used.items()))


def _watched(st: PlannedStage) -> list[str]:
    """Files whose change must send the next run back to planning: the data files components
    read, and the source files of the stage kind and of every component class used, with the
    helper modules they import (``code_digest.source_files``: they are in the key)."""
    from .code_digest import source_files

    files = source_files(st.cls)
    for ref in components_of(st):
        files += ref.component.watched_files(ref.resolved)
        files += source_files(ref.component)
    return [os.path.abspath(f) for f in files if f]


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is usable, else ``cpu``. Part of every stage key:
    results on a GPU are not bit-identical to results on a CPU."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _cuda_has(device: str) -> bool:
    import torch

    index = int(device.partition(":")[2] or 0)
    return torch.cuda.is_available() and index < torch.cuda.device_count()
