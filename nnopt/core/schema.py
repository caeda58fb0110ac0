"""The JSON Schema of a pipeline file (``nnopt schema``), generated from the installed registry.

An editor pointed at it (the YAML language server) completes and checks every component's
parameters, not only its name. Each component *slot* (``data``, ``model.arch``, a stage's
``optimizer``, ``track`` entries, an MLP's ``activation``, ...) refers to one shared
definition per kind, ``#/$defs/<kind>`` (``optimizers``, ``activations``, ...)::

    oneOf:
      - {type: string, enum: [every registered name]}          # the bare-name form
      - $ref: '#/$defs/optimizers.sgd'                          # one variant per component:
      - ...                                                     #   {name: const sgd, <its params>}

Each variant is the component's own ``Params`` schema (pydantic's, so types, bounds,
defaults and descriptions are the ones nnopt validates with) plus ``name: {const: NAME}``
and ``additionalProperties: false``: a misspelt or mistyped parameter fails the schema as it
fails ``nnopt validate``. Variants are keyed by the ``name`` constant, so at most one can
match. ``track`` entries use ``#/$defs/track``: the analyzer variants with the reserved
``every`` key added. Names of a declared bridge (``torch.Rprop``) are accepted by their
``PREFIX.`` with open params: listing them would import the bridged libraries.

A component that fails to load, or whose params have no JSON Schema (a type pydantic cannot
describe), gets an open variant (its name, any params): the schema never rejects what nnopt
might accept, and a broken plugin still leaves the rest of the schema complete.
"""

from __future__ import annotations

import copy
import inspect
import re
import warnings
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, models_json_schema

from .component import ComponentRef, TrackRef, WeightRef
from .registry import KINDS, Registry, singular
from .spec import NAME_PATTERN, STAGE_ID_PATTERN, PipelineSpec

#: the key of the placeholder the generator writes where a component reference stands
_SLOT = "x-nnopt-slot"
#: a weight reference as written in YAML (``component.WeightRef``)
_WEIGHT_REF = {"type": "string", "pattern": r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(@(init|[0-9]+))?$",
               "description": "STAGE, STAGE@N or STAGE@init"}
#: the other forms a model with a ``before`` validator may accept (``_Generator``)
_SHORTHAND = {"not": {"type": "object"}, "description": "a shorthand form the model's validator accepts"}
#: the longest docstring excerpt a variant carries as its description (editors show it on hover)
_MAX_DESCRIPTION = 400


class _Generator(GenerateJsonSchema):
    """Pydantic's generator, except that a component reference becomes a placeholder naming
    its kind (replaced by ``$ref: #/$defs/<kind>`` afterwards) and a ``WeightRef`` its YAML
    string form: a component is written ``name`` or ``{name, <params>}``, not as the
    ``{name, params}`` model that parses it."""

    def model_schema(self, schema: Any) -> dict[str, Any]:
        cls = schema.get("cls")
        if isinstance(cls, type) and issubclass(cls, TrackRef):
            return {_SLOT: "track"}
        if isinstance(cls, type) and issubclass(cls, ComponentRef) and cls.kind:
            return {_SLOT: cls.kind}
        if cls is WeightRef:
            return dict(_WEIGHT_REF)
        out = super().model_schema(schema)
        if isinstance(cls, type) and _rewrites_input(cls):
            # a `before` validator may accept a shorthand (resnet's `[blocks, channels, stride]`)
            # that the fields cannot describe: the mapping form stays checked, others pass
            return {"anyOf": [out, dict(_SHORTHAND)]}
        return out


def _rewrites_input(cls: type) -> bool:
    """Whether a model has a ``before`` or ``wrap`` model validator (it may accept other forms)."""
    decorators = getattr(cls, "__pydantic_decorators__", None)
    validators = getattr(decorators, "model_validators", {}) or {}
    return any(getattr(d.info, "mode", "") in ("before", "wrap") for d in validators.values())


def pipeline_schema(registry: Registry) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a pipeline file, with every installed component's params."""
    components = _load_components(registry)
    models = [PipelineSpec, *dict.fromkeys(cls.Params for _, _, cls, _ in components if cls is not None)]
    generated, defs = _generate(models)
    schemas = {model: generated.get(model) for model in models}

    root = _resolve(schemas[PipelineSpec], defs)
    defs = dict(defs)
    variants: dict[str, list[tuple[str, dict[str, Any]]]] = {kind: [] for kind in KINDS}
    for kind, name, cls, problem in components:
        params = _resolve(schemas.get(cls.Params), defs) if cls is not None else None
        if params is None and problem is None:
            problem = "its params have no JSON Schema"
        variants[kind].append((name, _variant(kind, name, cls, params, problem)))

    for kind in KINDS:
        if kind == "stages":
            continue
        for name, variant in variants[kind]:
            defs[f"{kind}.{name}"] = variant
        defs[kind] = _slot(kind, registry, [{"$ref": _pointer(f"{kind}.{name}")} for name, _ in variants[kind]])
    defs["track"] = _slot("analyzers", registry, [_tracked(v) for _, v in variants["analyzers"]], title="tracked analyzer")
    # stages are keyed by `kind`, not `name`: `stages.ID: {kind: train, ...}`
    stages = [_keyed_by_kind(name, v) for name, v in variants["stages"]]
    props = root["properties"]
    if stages:
        defs["stage"] = {"title": "stage", "description": "a stage: {kind: KIND, <its params>}", "oneOf": stages}
        props["stages"]["additionalProperties"] = {"$ref": _pointer("stage")}
    # what the validators check by code, said in the schema's own terms for editors
    props["name"].update({"type": "string", "pattern": NAME_PATTERN})
    props["device"].update({"type": "string", "pattern": r"^(auto|cpu|cuda(:[0-9]+)?)$"})
    props["stages"].update({"minProperties": 1, "propertyNames": {"pattern": STAGE_ID_PATTERN}})
    root["patternProperties"] = {"^x-": {}}  # anchors for reuse, ignored by nnopt
    root["title"] = "nnopt pipeline"
    root["$defs"] = defs
    out = _collapse_aliases(_replace_slots(root))
    _simplify_defaults(out)
    out["$defs"] = _reachable(out)
    unloaded = sorted(f"{kind}/{name}" for kind, name, cls, _ in components if cls is None)
    if unloaded:  # said so that a cache of this schema is not kept (``schema_cache``)
        out["x-nnopt-unloaded"] = unloaded
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **out}


def _load_components(registry: Registry) -> list[tuple[str, str, type | None, str | None]]:
    """``(kind, name, class or None, why not)`` of every registered component, loaded."""
    out = []
    for kind in KINDS:
        for name in registry.names(kind):
            try:
                cls, _ = registry.load(kind, name)
            except Exception as err:  # a broken or doubly-provided plugin: an open variant, not a crash
                out.append((kind, name, None, f"not loaded: {err}"))
                continue
            params = getattr(cls, "Params", None)
            if not (isinstance(params, type) and issubclass(params, BaseModel)):
                out.append((kind, name, None, "its Params is not a pydantic model"))
                continue
            out.append((kind, name, cls, None))
    return out


def _generate(models: list[type[BaseModel]]) -> tuple[dict[type, dict[str, Any]], dict[str, Any]]:
    """The schemas of ``models``, generated together so that the ``$defs`` they share get one
    unique name each. A model pydantic cannot describe is left out (looked for only when
    the whole batch fails, so the common case costs one pass)."""
    try:
        return _generate_all(models)
    except Exception:
        ok = []
        for model in models:
            try:
                _generate_all([model])
            except Exception:
                continue
            ok.append(model)
        return _generate_all(ok)


def _generate_all(models: list[type[BaseModel]]) -> tuple[dict[type, dict[str, Any]], dict[str, Any]]:
    with warnings.catch_warnings():  # a default pydantic cannot encode is left out: fine here
        warnings.simplefilter("ignore")
        keyed, top = models_json_schema([(m, "validation") for m in models], ref_template="#/$defs/{model}",
                                        schema_generator=_Generator)
    return {m: keyed[(m, "validation")] for m in models}, top.get("$defs", {})


def _resolve(schema: dict[str, Any] | None, defs: dict[str, Any]) -> dict[str, Any] | None:
    """A model's own schema, a copy: what its top-level ``$ref`` points at, if it is one."""
    if schema is None:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/") and len(schema) == 1:
        schema = defs.get(_unpointer(ref), {})
    alternatives = schema.get("anyOf")
    if isinstance(alternatives, list) and len(alternatives) == 2 and alternatives[1] == _SHORTHAND:
        schema = alternatives[0]  # a component's params are always a mapping (its `name` is in it)
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and len(schema) == 1:
            schema = defs.get(_unpointer(ref), {})
    return copy.deepcopy(schema)


def _variant(kind: str, name: str, cls: type | None, params: dict[str, Any] | None, problem: str | None) -> dict[str, Any]:
    """``{name: const NAME, <params>}``, closed; an open one when the params are unknown."""
    doc = _summary(cls) if cls is not None else ""
    title = f"{singular(kind)} {name}"
    if params is None or params.get("type", "object") != "object":
        return {"title": title, "description": problem or doc, "type": "object",
                "properties": {"name": {"const": name}}, "required": ["name"]}
    variant = {"title": title, "type": "object",
               "properties": {"name": {"const": name}, **params.get("properties", {})},
               "required": ["name", *params.get("required", [])], "additionalProperties": False}
    if doc:
        variant["description"] = doc
    for key in ("allOf", "anyOf", "oneOf", "dependentRequired", "patternProperties"):  # rare: kept as given
        if key in params:
            variant[key] = params[key]
    return variant


def _tracked(variant: dict[str, Any]) -> dict[str, Any]:
    """An analyzer variant as a ``track`` entry: with the reserved ``every`` (``TrackRef``)."""
    out = copy.deepcopy(variant)
    every = TrackRef.model_fields["every"]
    out["properties"]["every"] = {"type": "integer", "minimum": 1, "default": every.default,
                                  "description": every.description}
    return out


def _keyed_by_kind(name: str, variant: dict[str, Any]) -> dict[str, Any]:
    """A stage variant: ``kind: const NAME`` in place of ``name``."""
    out = dict(variant, title=f"stage kind {name}")
    props = {k: v for k, v in out["properties"].items() if k != "name"}
    props["kind"] = {"const": name}
    out["properties"] = props
    out["required"] = ["kind", *(r for r in out["required"] if r not in ("name", "kind"))]
    return out


def _slot(kind: str, registry: Registry, variants: list[dict[str, Any]], title: str | None = None) -> dict[str, Any]:
    """The definition every slot of ``kind`` refers to: a bare name, or one of the variants."""
    names = registry.names(kind)
    alternatives: list[dict[str, Any]] = [{"type": "string", "enum": names}] if names else []
    alternatives += variants
    prefixes = [b.prefix for b in registry.bridges()]
    if prefixes:
        pattern = "^(" + "|".join(re.escape(p) for p in prefixes) + r")\."
        # a registered name is found before a bridge's (registry docstring): keep oneOf exclusive
        shadowed = [n for n in names if re.match(pattern, n)]
        bridged: dict[str, Any] = {"type": "string", "pattern": pattern}
        if shadowed:
            bridged["not"] = {"enum": shadowed}
        alternatives += [{**bridged, "description": "a bridged name, PREFIX.NAME (`nnopt list --bridged`)"},
                         {"type": "object", "properties": {"name": bridged}, "required": ["name"],
                          "description": "a bridged component: {name: PREFIX.NAME, <its params>}"}]
    if not alternatives:  # nothing of this kind installed: no value can name one
        return {"title": title or singular(kind), "description": f"no {singular(kind)} is installed", "not": {}}
    return {"title": title or singular(kind),
            "description": f"a {singular(kind)}: a name, or {{name: NAME, <its params>}}",
            "oneOf": alternatives}


def _summary(cls: type) -> str:
    """The first paragraph of a component's docstring: what an editor shows on hover."""
    text = inspect.cleandoc(cls.__doc__ or "").split("\n\n", 1)[0].strip()
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DESCRIPTION else text[: _MAX_DESCRIPTION - 1] + "…"


def _pointer(key: str) -> str:
    """``#/$defs/KEY`` with ``~`` and ``/`` escaped as JSON Pointer requires."""
    return "#/$defs/" + key.replace("~", "~0").replace("/", "~1")


def _unpointer(ref: str) -> str:
    return ref.removeprefix("#/$defs/").replace("~1", "/").replace("~0", "~")


def _replace_slots(node: Any) -> Any:
    """Every placeholder ``{x-nnopt-slot: KIND}`` replaced by ``$ref`` to that kind's definition."""
    if isinstance(node, dict):
        if _SLOT in node:
            return {"$ref": _pointer(node[_SLOT])}
        return {k: _replace_slots(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_slots(v) for v in node]
    return node


def _collapse_aliases(schema: dict[str, Any]) -> dict[str, Any]:
    """A ``$ref`` to a definition that is only a ``$ref`` (pydantic's ``OptimizersRef`` def,
    once its placeholder is replaced) points straight at the target instead."""
    defs = schema.get("$defs", {})

    def target(ref: str, hops: int = 0) -> str:
        found = defs.get(_unpointer(ref))
        if hops < 8 and isinstance(found, dict) and set(found) <= {"$ref", "title"} and "$ref" in found:
            return target(found["$ref"], hops + 1)
        return ref

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (target(v) if k == "$ref" and isinstance(v, str) else walk(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def _simplify_defaults(node: Any) -> None:
    """A default that is an unresolved component reference, ``{name, params}``, written as in
    YAML: the bare name, or ``{name, <params>}``."""
    if isinstance(node, dict):
        for key, value in list(node.items()):
            if key == "default":
                node[key] = _yaml_form(value)
            else:
                _simplify_defaults(value)
    elif isinstance(node, list):
        for value in node:
            _simplify_defaults(value)


def _yaml_form(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"name", "params"} and isinstance(value["params"], dict):
        return value["name"] if not value["params"] else {"name": value["name"], **value["params"]}
    if isinstance(value, list):
        return [_yaml_form(v) for v in value]
    return value


def _reachable(schema: dict[str, Any]) -> dict[str, Any]:
    """Only the ``$defs`` something refers to (a component's own Params model is copied into
    its variant, so its pydantic definition is usually left unused), in a stable order."""
    defs = schema.get("$defs", {})
    seen: set[str] = set()
    pending = [{k: v for k, v in schema.items() if k != "$defs"}]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                key = _unpointer(ref)
                if key not in seen and key in defs:
                    seen.add(key)
                    pending.append(defs[key])
            pending.extend(v for k, v in node.items() if k != "$ref")
        elif isinstance(node, list):
            pending.extend(node)
    return {k: defs[k] for k in sorted(seen)}
