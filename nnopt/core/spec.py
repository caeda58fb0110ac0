"""The pipeline file's top level (SPEC §1), and pydantic errors turned into located diagnostics."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .component import DatasetRef, LossRef, ref_type
from .errors import Diagnostic, Location, did_you_mean
from .model_spec import ModelSpec
from .yaml_source import Path, Source, dotted

#: the longest pipeline name or stage id: both end up in file names, which have limits of their own
MAX_NAME_LENGTH = 64
NAME_PATTERN = rf"^[a-z0-9_-]{{1,{MAX_NAME_LENGTH}}}$"
STAGE_ID_PATTERN = rf"^[A-Za-z0-9_-]{{1,{MAX_NAME_LENGTH}}}$"
#: ids of the stages a block stands for (``Stage.expand``): the block's id, then dot-separated
#: parts (``tickets.r3.reinit``). Only generated ids have dots, so they never clash with a
#: stage written in the file, and a weight reference can name them (``tickets.r3@0``)
GENERATED_STAGE_ID_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"
#: the longest generated id (a block id of at most MAX_NAME_LENGTH, plus what the block adds)
MAX_GENERATED_ID_LENGTH = 255


class ExpansionError(ValueError):
    """Raised by a block's ``Stage.expand`` for a problem only the expansion can see (the stage
    its ``from`` names is missing or of the wrong kind, ...). ``path`` is where in the block
    (``("from",)``) the problem is written; the planner reports it there, located."""

    def __init__(self, message: str, path: tuple = (), suggestion: str | None = None):
        super().__init__(message)
        self.message, self.path, self.suggestion = message, tuple(path), suggestion


@dataclass
class ExpandedSource(Source):
    """A pipeline's ``Source`` once its blocks are expanded: every path inside a generated
    stage is located (and named in messages) at the block key it came from, so an error in,
    say, ``stages.tickets.r3.rewind.to`` reads ``stages.tickets.rewind_to`` at that line.
    ``origins`` maps a generated stage id to ``(block path, {top-level key: absolute path})``."""

    origins: dict[str, tuple[Path, dict[str, Path]]] = field(default_factory=dict)

    def origin(self, path: Path) -> Path:
        path = tuple(path)
        if len(path) >= 2 and path[0] == "stages" and path[1] in self.origins:
            block, keys = self.origins[path[1]]
            if len(path) == 2:
                return block
            return tuple(keys.get(path[2], block)) + path[3:]
        return path

    def locate(self, path: Path, at_key: bool = False) -> Location:
        return super().locate(self.origin(path), at_key)


def shown_path(source: Source, path: Path) -> str:
    """The dotted path a diagnostic names: the path as written, for a generated stage the
    block key it came from (``ExpandedSource``)."""
    return dotted(source.origin(path) if isinstance(source, ExpandedSource) else path)


class PipelineSpec(BaseModel):
    """A whole pipeline file. ``stages`` holds raw mappings here; each is validated against
    its own stage kind's params model by the planner."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    name: str = Field(description="pipeline name: lowercase letters, digits, _ and -")
    description: str | None = Field(None, description="free text, shown by `nnopt show`")
    seed: int = Field(0, ge=0, lt=2**63, description="every random choice derives from it")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    data: DatasetRef | None = Field(  # type: ignore[valid-type]
        None, description="the dataset every stage uses unless it or the stage it starts from names its own")
    model: ModelSpec | None = Field(None, description="the model (arch, init, norm) every stage uses unless overridden")
    loss: LossRef | None = Field(  # type: ignore[valid-type]
        None, description="the training loss every stage uses unless overridden")
    stages: dict[str, dict[str, Any]] = Field(description="ordered mapping: stage id -> stage")
    matrix: dict[str, list[Any]] | None = Field(None, description="dotted path -> values; one pipeline per combination")
    # where the run's metrics are exported (a name, or {name: ..., <params>}); they are in no
    # stage's key: exporting a run elsewhere must not recompute it (core/keys.py)
    trackers: list[ref_type("trackers")] = Field(  # type: ignore[valid-type]
        default_factory=list, json_schema_extra={"affects_results": False},
        description="experiment trackers the run's metrics stream to, live (jsonl, tensorboard, mlflow); "
                    "`nnopt run --track NAME` adds one")

    @model_validator(mode="before")
    @classmethod
    def _drop_extension_keys(cls, data: Any) -> Any:
        # top-level `x-...` keys hold YAML anchors for reuse (`x-opt: &opt {...}`), as in
        # docker-compose files; they are not part of the pipeline
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if len(value) > MAX_NAME_LENGTH:
            raise ValueError(f"a pipeline name is at most {MAX_NAME_LENGTH} characters; this one has {len(value)}")
        if not re.fullmatch(NAME_PATTERN, value):
            raise ValueError(f"expected a name of lowercase letters, digits, _ and - (like '{_slug(value)}'), got {value!r}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"expected auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    @field_validator("stages")
    @classmethod
    def _some_stages(cls, value: dict[str, Any]) -> dict[str, Any]:
        if not value:
            raise ValueError("expected at least one stage (stage id -> {kind: ..., ...})")
        return value


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-") or "my-pipeline"


def diagnostics_from(err: ValidationError, source: Source, prefix: Path = (), model: type[BaseModel] | None = None,
                     also_allowed: list[str] = ()) -> list[Diagnostic]:
    """One located diagnostic per pydantic error, with "expected ..." wording and suggestions.
    ``also_allowed``: keys valid beside the model's own at its top level (a component's name)."""
    out = []
    for e in err.errors(include_url=False):
        loc = tuple(prefix) + _yaml_loc(e["loc"])
        kind = e["type"]
        if kind == "extra_forbidden":
            allowed = _allowed_keys(model, e["loc"]) if model else []
            if len(e["loc"]) == 1:
                allowed = sorted(set(allowed) | set(also_allowed))
            key = loc[-1]
            expected = f"; expected one of: {', '.join(allowed)}" if allowed else ""
            out.append(Diagnostic(source.locate(loc, at_key=True), shown_path(source, loc), f"unknown key '{key}'{expected}",
                                  did_you_mean(key, allowed)))
        elif kind == "missing":
            out.append(Diagnostic(source.locate(loc[:-1]), shown_path(source, loc), f"missing required key '{loc[-1]}'"))
        else:
            # a validator may name the likely intended value (a PydanticCustomError whose
            # context has "suggestion"): it becomes the diagnostic's "did you mean"
            suggestion = (e.get("ctx") or {}).get("suggestion")
            out.append(Diagnostic(source.locate(loc), shown_path(source, loc), _wording(e), suggestion))
    return out


def _yaml_loc(loc: tuple[Any, ...]) -> Path:
    """Drop pydantic's internal segments (``params`` of a component ref, validator tags)."""
    out: list[Any] = []
    for part in loc:
        if part == "params" and out:  # {name: x, lr: 1} is written flat in YAML
            continue
        if isinstance(part, str) and (part.startswith("function-") or part in ("tagged-union",)):
            continue
        out.append(part)
    return tuple(out)


def _wording(e: dict[str, Any]) -> str:
    msg: str = e["msg"]
    msg = msg.replace("Input should be", "expected").replace("Value error, ", "").replace("Assertion failed, ", "")
    if msg.startswith("String should match pattern"):
        msg = "expected a string matching " + msg[len("String should match pattern ") :].strip()
    msg = msg[:1].lower() + msg[1:]
    if "input" in e and ", got" not in msg and e["type"] not in ("value_error", "assertion_error") and not isinstance(e["input"], (dict, list)):
        msg += f", got {e['input']!r}"
    return msg


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Keys the model accepts at the mapping that holds ``loc[-1]`` (field aliases included)."""
    target: Any = model
    for part in loc[:-1]:
        fields = getattr(target, "model_fields", None)
        if fields is None:
            return []
        by_alias = {(f.alias or n): f for n, f in fields.items()}
        field = by_alias.get(part) or fields.get(part)
        if field is None:
            return []
        target = _model_in(field.annotation)
        if target is None:
            return []
    fields = getattr(target, "model_fields", {}) or {}
    return sorted((f.alias or n) for n, f in fields.items())


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None
