"""Build a stage and a resolved ``StageContext`` by hand, as the engine would.

(A module of its own, not ``conftest``: several test directories have a ``conftest``.)

Components resolve through the registry (entry points), nested refs included (an MLP's
activation). The dataset is a small seeded Gaussian mixture defined here, so tests control
its size exactly (``n_train`` not a multiple of the batch size, regression targets, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, Field

from nnopt.core.component import ComponentRef, DatasetRef, LossRef
from nnopt.core.kinds import Dataset, DatasetParams, DataSplit
from nnopt.core.model_spec import ModelSpec
from nnopt.core.registry import Registry
from nnopt.core.stage import ResolvedWeights, StageContext

_REGISTRY = Registry()


class BlobsParams(DatasetParams):
    n_train: int = Field(256, ge=1)
    n_test: int = Field(128, ge=0)
    dim: int = Field(8, ge=1)
    classes: int = Field(3, ge=2)
    task: Literal["classification", "regression"] = "classification"


class Blobs(Dataset):
    """Isotropic Gaussian clusters (std 0.5) around random centres (std 2): easy to fit."""

    Params: ClassVar[type[BlobsParams]] = BlobsParams

    def load(self, seed: int) -> DataSplit:
        p = self.params
        g = torch.Generator().manual_seed(1234)  # the data do not depend on the stage seed
        centres = 2.0 * torch.randn(p.classes, p.dim, generator=g)
        n = p.n_train + p.n_test
        y = torch.randint(0, p.classes, (n,), generator=g)
        x = centres[y] + 0.5 * torch.randn(n, p.dim, generator=g)
        if p.task == "regression":
            w = torch.randn(p.dim, 2, generator=g)
            y = torch.tanh(x @ w)
        return DataSplit(
            x_train=x[: p.n_train],
            y_train=y[: p.n_train],
            x_test=x[p.n_train :],
            y_test=y[p.n_train :],
            task=p.task,
            input_shape=(p.dim,),
            output_dim=p.classes if p.task == "classification" else 2,
            num_classes=p.classes if p.task == "classification" else None,
        )


#: components only the tests know, by (kind, name); tests add their own stand-ins here
LOCAL: dict[tuple[str, str], type] = {}


def resolve_all(obj: Any) -> Any:
    """Resolve every ``ComponentRef`` inside ``obj`` (a pydantic model, list or dict) in place:
    through ``LOCAL`` first, then the registry (entry points), as the engine does."""
    if isinstance(obj, ComponentRef):
        if not obj.is_resolved:
            cls = LOCAL.get((obj.kind, obj.name)) or _REGISTRY.load(obj.kind, obj.name)[0]
            obj.resolve(cls, cls.Params.model_validate(obj.params))
        resolve_all(obj.resolved)
    elif isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            resolve_all(getattr(obj, name))
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            resolve_all(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            resolve_all(item)
    return obj


LOCAL[("datasets", "blobs")] = Blobs


def data_ref(**params: Any) -> Any:
    """A resolved dataset ref: the local ``blobs`` unless ``name`` names a registered dataset."""
    return resolve_all(DatasetRef.model_validate({"name": "blobs", **params}))


def model_spec(widths: list[int] | None = None, **arch: Any) -> ModelSpec:
    return resolve_all(ModelSpec.model_validate({"arch": {"name": "mlp", "widths": widths or [32], **arch}}))


def make_stage(
    kind: str,
    out_dir: Path,
    *,
    stage_id: str | None = None,
    seed: int = 0,
    data: dict[str, Any] | None = None,
    model: ModelSpec | None = None,
    loss: str | dict[str, Any] = "cross_entropy",
    weights: dict[str, ResolvedWeights] | None = None,
    **spec: Any,
) -> tuple[Any, StageContext]:
    """``(stage, ctx)`` for a ``kind`` stage with the given spec keys, ready to ``run``."""
    cls, _entry = _REGISTRY.load("stages", kind)
    params = resolve_all(cls.Params.model_validate({"kind": kind, **spec}))
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(
        stage_id or kind,
        params,
        seed,
        torch.device("cpu"),
        out_dir,
        data=data_ref(**(data or {})),
        model=model or model_spec(),
        loss=resolve_all(LossRef.model_validate(loss)),
        weights=weights,
    )
    return cls(params), ctx


def run_stage(kind: str, out_dir: Path, **kwargs: Any):
    stage, ctx = make_stage(kind, out_dir, **kwargs)
    try:
        return stage.run(ctx)
    finally:
        ctx.close()


def read_metrics(out_dir: Path) -> list[dict[str, Any]]:
    import json

    path = out_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
