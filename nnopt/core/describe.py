"""Component documentation from the registry: ``nnopt describe`` and ``nnopt schema``."""

from __future__ import annotations

import inspect
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .component import ComponentRef, WeightRef
from .model_spec import ModelSpec
from .registry import Registry, singular


def _type_name(annotation: Any) -> str:
    """A reader's name for a field type: ``list[int >= 1]``, ``optimizer component | None``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        bounds = [_range_of(m) for m in args[1:]]
        return " ".join([_type_name(args[0]), *filter(None, bounds)])
    if origin in (Union, UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and issubclass(annotation, ComponentRef):
        return f"{singular(annotation.kind)} component"
    if annotation is WeightRef:
        return "weights (STAGE[@N])"
    if annotation is ModelSpec:
        return "model {arch, init, norm}"
    return getattr(annotation, "__name__", str(annotation))


def _range_of(meta: Any) -> str:
    if isinstance(meta, FieldInfo):
        return ", ".join(filter(None, (_range_of(m) for m in meta.metadata)))
    for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        value = getattr(meta, attr, None)
        if value is not None:
            return f"{sym} {value}"
    return ""


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
    """JSON Schema of a pipeline file, every component's params spelled out (``core.schema``),
    from the cache when the installed code has not changed since (``core.schema_cache``)."""
    from .schema import pipeline_schema as generate
    from .schema_cache import cached_schema

    return cached_schema(registry, generate)


# --------------------------------------------------------------------------- schedule plots
def configured_component(registry: Registry, kind: str, name: str, settings: list[str] | tuple[str, ...] = ()) -> Any:
    """An instance of component ``name`` of ``kind`` with params given as ``key=value`` texts
    (``--set`` syntax: dotted keys, YAML-typed values; ``then.name=cosine`` for a nested one),
    validated and resolved (nested components too) exactly as in a pipeline file. Every
    problem is a located ``SpecError`` (``--set tau=-1: tau: ...``)."""
    from pydantic import ValidationError

    from .component import ref_type
    from .errors import Problems
    from .overrides import apply, parse_set
    from .planner import resolve_components
    from .spec import diagnostics_from
    from .yaml_source import Source

    source = Source({"name": name}, f"{singular(kind)} '{name}'")
    problems = Problems()
    for text in settings:
        for diag in apply(source, parse_set(text)):
            problems.add(diag)
    problems.raise_if_any()
    ref_cls = ref_type(kind)
    try:
        ref = ref_cls.model_validate(source.data)
    except ValidationError as err:
        for diag in diagnostics_from(err, source, ()):
            problems.add(diag)
        problems.raise_if_any()
    resolve_components(ref, (), source, registry, problems)
    problems.raise_if_any()
    return ref.instantiate()


def schedule_curve(schedule: Any, steps: int, lr: float = 0.1, steps_per_epoch: int = 1, batch_size: int = 1) -> list[float]:
    """η_t for t = 0 … steps−1 (the rate step t uses) of a schedule component, built for a
    ``steps``-step run on a one-parameter SGD at rate ``lr``, stepped as the training loop
    steps it. A schedule driven by readings (plateau) gets none, so it stays at ``lr``."""
    import warnings

    import torch

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = schedule.bind(steps_per_epoch, batch_size).build(opt, steps)
    out = []
    with warnings.catch_warnings():  # the parameter has no gradient: its step is a no-op on purpose
        warnings.simplefilter("ignore")
        for _ in range(steps):
            out.append(float(opt.param_groups[0]["lr"]))
            opt.step()
            scheduler.step()
    return out


def plot_schedule(name: str, curve: list[float], path: Any, title: str = "") -> Any:
    """Draw η_t against t into a PNG at ``path``; returns the path."""
    from pathlib import Path

    from nnopt.plugins.analyzers._plot import new_figure, save

    fig, ax = new_figure()
    ax.plot(range(len(curve)), curve, linewidth=1.4)
    ax.set_xlabel("step t")
    ax.set_ylabel("learning rate η_t")
    ax.set_title(title or f"schedule '{name}'")
    ax.grid(True, alpha=0.3)
    return save(fig, Path(path))
