"""The bridges: every optimizer of ``torch.optim`` and of ``pytorch_optimizer``, by name.

Registered in the ``nnopt.bridges`` entry-point group (``nnopt.core.registry``)::

    [project.entry-points."nnopt.bridges"]
    torch = "nnopt.plugins.optimizers.bridge:TORCH"
    pytorch_optimizer = "nnopt.plugins.optimizers.bridge:PYTORCH_OPTIMIZER"

A pipeline then names ``torch.Rprop`` or ``pytorch_optimizer.adan``: after the prefix comes
the library's own name, so what a reader knows from the library's documentation is what the
file says — torch's class names (``Rprop``, ``ASGD``, ``SparseAdam``), and the lower-case
registry names of ``pytorch_optimizer.get_supported_optimizers()`` (``adan``, ``ranger21``).

Each bridged name becomes an optimizer component generated from the class: its ``Params``
are the parameters of the class's ``__init__`` (after ``params``), typed from their
annotations and defaults — bool, int, float and str keep their type, tuples are written as
lists and handed back as tuples, ``Literal`` choices stay choices, and a parameter of no
recognizable type accepts JSON scalars and lists. Unknown keys are refused, as for every
component, and ``lr`` must be > 0. Parameters whose default is not plain data (a dtype, a
function) keep the library's default and are not exposed; ``fused``, ``differentiable`` and
``capturable`` are not exposed either: torch's fused kernel is used on CUDA where the class
has one (``build_fused_if_supported``), and the other two change nothing a run computes.
A class that takes a required non-data argument (a base-optimizer class) is not bridged.

``needs_closure`` is set for classes whose ``step`` requires a closure (L-BFGS, ALIG, ...):
the training loop then calls ``step(closure)``. Methods that need ``backward(create_graph=
True)`` (AdaHessian, Sophia-H) fail at their first step with the library's error, as do
the sharpness-aware ones that expect their gradient computed before ``step(closure)`` —
``sam`` is nnopt's own component for that.

Cache keys: a bridged optimizer's provider is the bridged library's distribution and version
(``torch 2.13.0``), so its results are recomputed when the library changes; its code digest
is this module's.
"""

from __future__ import annotations

import inspect
import math
import re
import types
import typing
from functools import lru_cache
from typing import Any, ClassVar, Iterable, Literal, Union, get_args, get_origin

from pydantic import Field, create_model

from nnopt.core.component import Params
from nnopt.core.kinds import Optimizer

from .fused import build_fused_if_supported

#: ``__init__`` parameters that are not the method's options (see the module docstring)
_NOT_EXPOSED = frozenset({"self", "params", "fused", "differentiable", "capturable"})

#: what a parameter of no recognizable type accepts: JSON scalars and lists of them
JSONValue = Union[bool, int, float, str, None, list[Union[bool, int, float, str, None]]]


def _first_paragraph(doc: str | None) -> str:
    text = inspect.cleandoc(doc or "").strip()
    return text.split("\n\n", 1)[0].strip() if text else ""


_ARG_LINE = re.compile(r"^\s*(?P<name>\w+)\s*(\([^)]*\))?\s*:\s*(?P<text>.*)$")


def _arg_descriptions(doc: str | None) -> dict[str, str]:
    """``{name: description}`` from the ``Args:`` section of a Google-style docstring (the
    style of torch's and pytorch_optimizer's), continuation lines joined; {} if there is none."""
    lines = inspect.cleandoc(doc or "").splitlines()
    out: dict[str, str] = {}
    inside, indent, current = False, None, None
    for line in lines:
        if line.strip().rstrip(":").lower() in ("args", "arguments", "parameters") and line.strip().endswith(":"):
            inside, indent, current = True, None, None
            continue
        if not inside:
            continue
        if not line.strip():
            current = None
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        if depth < indent:  # the section ended
            inside = False
            continue
        m = _ARG_LINE.match(line)
        if depth == indent and m:
            current = m.group("name")
            out[current] = m.group("text").strip()
        elif current is not None:
            out[current] = (out[current] + " " + line.strip()).strip()
    return out


def _plain(value: Any) -> bool:
    """Whether ``value`` is data a YAML file can write."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return False


def _simple(annotation: Any) -> set[type]:
    """The plain types an annotation admits (``float | Tensor`` → {float}; unknown → {})."""
    if annotation in (bool, int, float, str):
        return {annotation}
    if get_origin(annotation) in (Union, types.UnionType):
        return set().union(*(_simple(a) for a in get_args(annotation)))
    return set()


def _field_type(annotation: Any, default: Any) -> tuple[Any, bool]:
    """The Params type of one ``__init__`` parameter, and whether its value is a tuple that
    the YAML writes as a list."""
    if get_origin(annotation) is Literal and all(_plain(a) for a in get_args(annotation)):
        return annotation, False
    simple = _simple(annotation)
    if isinstance(default, bool) or (default is None and simple == {bool}):
        kind: Any = bool
    elif isinstance(default, (int, float)):  # `weight_decay: float = 0` is a float
        kind = float if (isinstance(default, float) or float in simple) else int
    elif isinstance(default, str):
        kind = str
    elif isinstance(default, (tuple, list)):
        return list[_item_type(default)], isinstance(default, tuple)  # type: ignore[misc]
    elif simple and default is None:
        kind = Union[tuple(sorted(simple, key=lambda t: t.__name__))] if len(simple) > 1 else next(iter(simple))
    else:
        return JSONValue, False
    if default is None:
        return kind | None, False
    return kind, False


def _item_type(values: tuple | list) -> Any:
    """The element type of a tuple default: ``(0.9, 0.999)`` → float, ``(None, 1e-3)`` →
    float | None, anything mixed → any JSON value."""
    present = {type(v) for v in values if v is not None}
    if present <= {int, float} and present:
        kind: Any = float if float in present else int
    elif len(present) == 1 and present <= {bool, str}:
        kind = next(iter(present))
    else:
        return JSONValue
    return kind | None if any(v is None for v in values) else kind


class BridgedOptimizer(Optimizer):
    """Base of the generated components: ``library_class(params, **options)``."""

    cache_version: ClassVar[int] = 1
    library_class: ClassVar[type]
    tuple_fields: ClassVar[frozenset[str]] = frozenset()
    has_fused: ClassVar[bool] = False

    def build(self, params: Iterable[Any], device: Any) -> Any:
        options = self.params.model_dump()
        for name in self.tuple_fields:
            if options.get(name) is not None:
                options[name] = tuple(options[name])
        if self.has_fused:
            return build_fused_if_supported(self.library_class, params, device, fused_on=("cuda",), **options)
        return self.library_class(list(params), **options)


def make_component(prefix: str, name: str, cls: type, provider: str) -> type[BridgedOptimizer]:
    """The optimizer component of library class ``cls``, bridged as ``PREFIX.NAME``."""
    signature = inspect.signature(cls.__init__)
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # annotations naming what cannot be resolved here: go by the defaults
        hints = {}
    described = _arg_descriptions(cls.__doc__) or _arg_descriptions(cls.__init__.__doc__)
    fields: dict[str, Any] = {}
    tuples, fused = set(), False
    for p in signature.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name == "fused":
            fused = True
        if p.name in _NOT_EXPOSED:
            continue
        required = p.default is inspect.Parameter.empty
        if not required and not _plain(p.default):
            continue  # a dtype or a function: the library's default stands
        annotation = hints.get(p.name, p.annotation if p.annotation is not inspect.Parameter.empty else Any)
        typ, is_tuple = _field_type(annotation, None if required else p.default)
        if is_tuple:
            tuples.add(p.name)
        default = ... if required else (list(p.default) if isinstance(p.default, tuple) else p.default)
        text = described.get(p.name, "")
        description = f"{cls.__name__}'s `{p.name}`" + (f": {text}" if text else "")
        bounds: dict[str, Any] = {"gt": 0.0} if p.name == "lr" and typ in (float, int) else {}
        if isinstance(default, float) and not math.isfinite(default):  # `growth_rate: float = inf`
            bounds["allow_inf_nan"] = True
        fields[p.name] = (typ, Field(default, description=description, **bounds))
    params_model = create_model(f"{cls.__name__}BridgedParams", __base__=Params, **fields)
    needs_closure = _needs_closure(cls)
    summary = _first_paragraph(cls.__doc__) or f"{cls.__name__} of {cls.__module__}."
    doc = (f"{summary}\n\nBridged from `{cls.__module__}.{cls.__qualname__}` ({provider}) as `{prefix}.{name}`: the "
           f"library's own class and update, with its own parameters (nnopt.plugins.optimizers.bridge)."
           + ("\nIts step needs a closure: the training loop calls step(closure)." if needs_closure else ""))
    ident = re.sub(r"\W", "_", name)
    return type(f"Bridged_{prefix}_{ident}", (BridgedOptimizer,), {
        "__module__": __name__, "__doc__": doc, "Params": params_model, "library_class": cls,
        "tuple_fields": frozenset(tuples), "has_fused": fused, "needs_closure": needs_closure,
    })


def _needs_closure(cls: type) -> bool:
    """Whether ``cls.step`` cannot run without a closure: a ``closure`` with no default
    (torch's L-BFGS), or a step that raises without one (pytorch_optimizer's NoClosureError)."""
    step = getattr(cls, "step", None)
    if step is None:
        return False
    closure = inspect.signature(step).parameters.get("closure")
    if closure is not None and closure.default is inspect.Parameter.empty:
        return True
    try:
        source = inspect.getsource(step)
    except (OSError, TypeError):
        return False
    return "NoClosureError" in source


def _bridgeable(cls: type) -> bool:
    """A class a YAML file can configure: no required argument besides ``params`` that is not
    plain data (a base-optimizer class, a model)."""
    try:
        signature = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return False
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:
        hints = {}
    for p in signature.parameters.values():
        if p.name in ("self", "params") or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is inspect.Parameter.empty:
            annotation = hints.get(p.name)
            if not (_simple(annotation) or get_origin(annotation) is Literal):
                return False
    return True


class LibraryBridge:
    """A bridge (``nnopt.core.registry``) over one library's optimizer classes."""

    def __init__(self, prefix: str, distribution: str):
        self.prefix, self.distribution = prefix, distribution

    def classes(self) -> dict[str, type]:
        raise NotImplementedError

    @lru_cache(maxsize=None)  # noqa: B019 - the bridges are two module-level objects
    def _table(self) -> dict[str, type]:
        return {n: c for n, c in self.classes().items() if _bridgeable(c)}

    def names(self, kind: str) -> list[str]:
        return sorted(self._table()) if kind == "optimizers" else []

    @lru_cache(maxsize=None)  # noqa: B019 - one class per name, as the registry expects
    def load(self, kind: str, name: str) -> type:
        if kind != "optimizers" or name not in self._table():
            raise KeyError(f"{self.prefix} provides no {kind} '{name}'")
        from importlib.metadata import version

        return make_component(self.prefix, name, self._table()[name], f"{self.distribution} {version(self.distribution)}")


class _TorchOptim(LibraryBridge):
    def classes(self) -> dict[str, type]:
        import torch

        return {n: c for n in dir(torch.optim) if isinstance(c := getattr(torch.optim, n), type)
                and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer}


class _PytorchOptimizer(LibraryBridge):
    def classes(self) -> dict[str, type]:
        import pytorch_optimizer

        # the library's own registry: its names, including the torch classes it re-exports
        return {n: pytorch_optimizer.load_optimizer(n) for n in pytorch_optimizer.get_supported_optimizers()}


# pyproject: [project.entry-points."nnopt.bridges"] torch = "nnopt.plugins.optimizers.bridge:TORCH"
TORCH = _TorchOptim("torch", "torch")
# pyproject: [project.entry-points."nnopt.bridges"] pytorch_optimizer = "nnopt.plugins.optimizers.bridge:PYTORCH_OPTIMIZER"
PYTORCH_OPTIMIZER = _PytorchOptimizer("pytorch_optimizer", "pytorch_optimizer")
