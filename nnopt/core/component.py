"""What every registered component is, and how a pipeline file refers to one.

A *component* is a class found through an entry point (see ``registry``). It declares

- ``Params``: a pydantic model of its parameters (``extra="forbid"``: unknown keys are errors);
- ``cache_version``: an integer its author bumps whenever the component's results change, so
  that cached artifacts computed by the old code are not reused.

A pipeline file names a component either by a bare name (``cosine``) or by a mapping
``{name: cosine, <params>}``. Such a node is parsed into a ``ComponentRef`` of the kind the
field expects; the engine then resolves the name through the registry and validates the
params against the component's own ``Params`` model, so every error points at the YAML node.

Nothing here imports torch: validation and ``nnopt list`` stay fast.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SerializationInfo, model_serializer, model_validator

from .errors import did_you_mean
from .registry import singular


class Params(BaseModel):
    """Base of every component's parameter model: unknown keys are errors, values immutable.

    Defaults are validated like written values, so a default component (``activation:
    ref_type("activations") = "relu"``) becomes a reference the engine resolves.
    """

    # strict: YAML already types values, so `lr: true` or `epochs: "5"` are mistakes, not
    # values to coerce; and an infinite or NaN number is never a meaningful parameter
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, strict=True, allow_inf_nan=False)


class NoParams(Params):
    """The parameters of a component that takes none."""


class Component:
    """Base of every registered component.

    Subclasses set ``Params`` and ``cache_version`` and implement their kind's interface
    (``nnopt.core.kinds``). The engine constructs a component as ``cls(params)`` with params
    already validated, so ``__init__`` should do nothing expensive.
    """

    kind: ClassVar[str] = ""
    cache_version: ClassVar[int] = 1
    Params: ClassVar[type[Params]] = NoParams

    def __init__(self, params: Params | None = None):
        self.params = params if params is not None else self.Params()

    @classmethod
    def key_extras(cls, params: Params) -> dict[str, Any]:
        """Extra facts that determine this component's results but are not in its params.

        Example: a dataset read from a file returns the file's checksum. The engine adds them
        to the cache key of every stage that uses the component.
        """
        return {}

    @classmethod
    def watched_files(cls, params: Params) -> list[str]:
        """Files whose change must invalidate the fast plan index (see ``core.plan_index``)."""
        return []


class ComponentRef(BaseModel):
    """A reference from a pipeline file to a component of kind ``kind``.

    ``{name: sgd, lr: 0.1}`` parses to ``name="sgd", params={"lr": 0.1}``. Fields declared on
    a subclass (besides ``name`` and ``params``) are *reserved*: they belong to the place that
    uses the component, not to the component (``every`` of a tracked analyzer).
    After ``resolve`` the ref holds the component class and its validated params.
    """

    model_config = ConfigDict(extra="forbid")

    kind: ClassVar[str] = ""
    name: str
    params: dict[str, Any] = {}

    _component: type[Component] | None = PrivateAttr(default=None)
    _resolved: Params | None = PrivateAttr(default=None)
    _dist: str | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        if isinstance(value, ComponentRef):
            return value
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and "name" not in value:
            typo = did_you_mean("name", [k for k in value if isinstance(k, str)])
            hint = f"; is '{typo}' a misspelling of 'name'?" if typo else ""
            what = singular(cls.kind) if cls.kind else "component"
            raise ValueError(f"missing 'name': a {what} is written as a name or as {{name: ..., <params>}}{hint}")
        if isinstance(value, dict) and "params" not in value:
            reserved = set(cls.model_fields) - {"params"}
            out = {k: v for k, v in value.items() if k in reserved}
            out["params"] = {k: v for k, v in value.items() if k not in reserved}
            return out
        if value is None:
            raise ValueError(f"expected a {cls.kind[:-1] or 'component'} name or a mapping with 'name'")
        return value

    @model_serializer(mode="wrap")
    def _to_json(self, handler):
        """Serialize the *resolved* form: validated params with defaults, plus cache_version."""
        if self._resolved is None:
            return handler(self)
        reserved = {k: getattr(self, k) for k in type(self).model_fields if k not in ("name", "params")}
        out: dict[str, Any] = {"name": self.name}
        out.update(self._resolved.model_dump(mode="json"))
        out.update({k: (v.model_dump(mode="json") if isinstance(v, BaseModel) else v) for k, v in reserved.items()})
        out["cache_version"] = self._component.cache_version  # type: ignore[union-attr]
        extras = self._component.key_extras(self._resolved)  # type: ignore[union-attr]
        if extras:
            out["key_extras"] = extras
        return out

    # -- after resolution ----------------------------------------------------------------
    def resolve(self, component: type[Component], params: Params, dist: str | None = None) -> None:
        self._component, self._resolved, self._dist = component, params, dist

    @property
    def is_resolved(self) -> bool:
        return self._resolved is not None

    @property
    def component(self) -> type[Component]:
        if self._component is None:
            raise RuntimeError(f"{self.kind} '{self.name}' used before it was resolved")
        return self._component

    @property
    def resolved(self) -> Params:
        if self._resolved is None:
            raise RuntimeError(f"{self.kind} '{self.name}' used before it was resolved")
        return self._resolved

    @property
    def distribution(self) -> str | None:
        return self._dist

    def instantiate(self) -> Any:
        """A fresh instance of the component with the validated params."""
        return self.component(self.resolved)


_REF_TYPES: dict[str, type[ComponentRef]] = {}


def ref_type(kind: str) -> type[ComponentRef]:
    """The ``ComponentRef`` subclass for ``kind`` (one class per kind, created on first use).

    Use it in a params model to accept a nested component, e.g. an MLP's activation::

        activation: ref_type("activations") = "relu"
    """
    if kind not in _REF_TYPES:
        _REF_TYPES[kind] = type(f"{kind.title()}Ref", (ComponentRef,), {"kind": kind, "__module__": __name__})
    return _REF_TYPES[kind]


DatasetRef = ref_type("datasets")
ArchitectureRef = ref_type("architectures")
ActivationRef = ref_type("activations")
InitializerRef = ref_type("initializers")
NormalizerRef = ref_type("normalizers")
LossRef = ref_type("losses")
OptimizerRef = ref_type("optimizers")
ScheduleRef = ref_type("schedules")
PrunerRef = ref_type("pruners")
AnalyzerRef = ref_type("analyzers")
KernelRef = ref_type("kernels")


class TrackRef(AnalyzerRef):  # type: ignore[misc, valid-type]
    """An analyzer run during training every ``every`` steps (a reserved key, not a param)."""

    every: int = Field(100, ge=1, strict=True, description="run the analyzer at steps s with s % every == 0")


# a stage id, or a generated one with dot-separated parts (``tickets.r3``: see spec.py)
_WEIGHT_REF = re.compile(r"^(?P<stage>[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)(?:@(?P<step>init|\d+))?$")


class WeightRef(BaseModel):
    """A reference to stored weights: ``STAGE`` (final), ``STAGE@N`` (kept step N), ``STAGE@init``.

    Params models use this type for any field that names weights; the engine finds every
    ``WeightRef`` in a resolved spec, checks the stage exists and keeps that step, and makes
    the referencing stage depend on it (its key includes the referenced stage's key).
    """

    model_config = ConfigDict(frozen=True)

    stage: str
    step: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, str):
            m = _WEIGHT_REF.match(value.strip())
            if not m:
                raise ValueError("expected STAGE, STAGE@N or STAGE@init")
            step = m.group("step")
            return {"stage": m.group("stage"), "step": 0 if step == "init" else (int(step) if step else None)}
        return value

    @model_serializer
    def _to_str(self, info: SerializationInfo) -> str:
        # for cache keys, the referenced stage's *key* stands for its id: renaming a stage
        # changes no result, so it must change no key
        keys = (info.context or {}).get("stage_keys") if info.context else None
        if keys and self.stage in keys:
            return f"{keys[self.stage]}@{'final' if self.step is None else self.step}"
        return str(self)

    def __str__(self) -> str:
        return self.stage if self.step is None else f"{self.stage}@{self.step}"
