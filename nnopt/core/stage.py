"""The stage interface: what a stage kind declares, and what the engine hands it to run.

A stage kind is a component of kind ``stages`` (built-ins ``train`` and ``analyze`` register
through the same entry points as a plugin's would). Its ``Params`` subclasses ``StageSpec``;
the engine validates a ``stages.<id>`` mapping against it, computes the stage's cache key,
and, when the key is not in the store, calls ``run(ctx)`` with a ``StageContext`` whose
``out_dir`` is a private temporary directory that becomes the stage's directory only after
``run`` returns (the write is atomic: a killed run leaves no half-written stage).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal

from pydantic import ConfigDict, Field

from .component import Component, DatasetRef, LossRef, Params, WeightRef
from .model_spec import ModelSpec, build_model

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from .kinds import DataSplit
    from .progress import StageProgress


class StageSpec(Params):
    """Keys every stage accepts. ``seed``/``data``/``model``/``loss`` override the pipeline's
    for this stage alone; left out, a stage with ``from`` inherits them from that stage, and
    any other stage from the pipeline."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, validate_default=True, strict=True,
                              allow_inf_nan=False)

    kind: str
    from_: WeightRef | None = Field(None, alias="from", description="stage (or STAGE@N) whose output this stage starts from")
    seed: int | None = Field(None, ge=0, lt=2**63, description="this stage's seed (default: inherited)")
    data: DatasetRef | None = None  # type: ignore[valid-type]
    model: ModelSpec | None = None
    loss: LossRef | None = None  # type: ignore[valid-type]


@dataclass
class StageOutcome:
    """What ``Stage.run`` returns. ``status`` is ``ok`` or ``diverged``; ``metrics`` are the
    stage's final numbers (train stages), ``results`` its analyzer outputs (analyze stages)."""

    status: Literal["ok", "diverged"] = "ok"
    metrics: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    message: str | None = None


class Stage(Component):
    """Base of stage kinds (entry-point group ``nnopt.stages``)."""

    kind: ClassVar[str] = "stages"
    Params: ClassVar[type[Params]] = StageSpec
    #: which of data / model / loss must resolve (from the stage, its ``from`` or the pipeline)
    needs: ClassVar[frozenset[str]] = frozenset()
    #: whether the stage leaves final weights that ``STAGE`` can refer to
    provides_weights: ClassVar[bool] = False
    #: whether the stage runs when a dependency diverged, or was skipped because one did (a
    #: report over many runs: a diverged round is a finding to show, not a reason to show
    #: nothing). Such a stage reads each dependency's outcome with ``ctx.stage_status(ref)``.
    #: A dependency that *failed* still blocks it.
    runs_after_divergence: ClassVar[bool] = False
    #: whether, under torchrun, every rank computes the stage with rank 0 (``train``: each rank
    #: a shard of every batch, ``core.distributed``); otherwise rank 0 computes it alone while
    #: the others wait
    data_parallel: ClassVar[bool] = False

    def kept_steps(self) -> set[int]:
        """Steps N whose weights this stage keeps, so that ``STAGE@N`` may refer to them."""
        return set()

    @classmethod
    def expand(cls, stage_id: str, raw_spec: dict[str, Any], all_stages: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
        """A *block* kind returns the stages it stands for; any other kind returns None.

        Called by the planner before stages are validated, with the block's mapping as written
        (``raw_spec``, already valid against ``Params``: components not yet resolved) and every
        stage of the pipeline as written (``all_stages``: id -> mapping; blocks earlier in the
        file already expanded). Returns ``{generated id: raw stage mapping}`` in run order; the
        block is replaced by them, and they are validated, keyed and cached like written
        stages. Generated ids are ``stage_id`` itself or ``stage_id.PART[.PART...]`` (parts of
        ``[A-Za-z0-9_-]``; only generated ids have dots). Raise ``spec.ExpansionError`` for a
        problem only the expansion can see: it is reported located in the block.
        """
        return None

    @classmethod
    def origin(cls, stage_id: str, raw_spec: dict[str, Any], generated_id: str, key: str) -> tuple[Any, ...]:
        """Where, as an absolute YAML path, the top-level ``key`` of the generated stage
        ``generated_id`` comes from: errors in it are located and named there. Default: the
        block's own key of that name when the block writes it, else the block itself."""
        return ("stages", stage_id, key) if key in raw_spec else ("stages", stage_id)

    @classmethod
    def report_blocks(cls, result: dict[str, Any], stage_dir: Path, pipeline_file: str | None) -> list[Any] | None:
        """How ``nnopt report`` shows this kind's ``results``: a list of blocks of
        ``nnopt.core.report_render`` (headings, paragraphs, tables, collapsed text) in place of
        the generic tables, or None for those. ``result`` is the stage's ``result.json``,
        ``pipeline_file`` the path of the file the run was planned from (it may have changed
        or gone since). The stage's metrics and plots are shown either way."""
        return None

    def run(self, ctx: "StageContext") -> StageOutcome:
        raise NotImplementedError(f"{type(self).__name__}.run")


def weights_file(step: int | None) -> str:
    """Where a stage keeps its weights: ``weights/final.safetensors`` or ``weights/step_N...``."""
    return "weights/final.safetensors" if step is None else f"weights/step_{step}.safetensors"


#: where a stage keeps the masks its weights obey (pruning): one file for all its weights,
#: the same tensor names as the weights, 1 = kept, 0 = pruned; absent for a dense stage
MASKS_FILE = "masks.safetensors"


@dataclass
class ResolvedWeights:
    """A weight reference resolved by the engine to a file and the model that reads it."""

    path: Path
    model: ModelSpec
    #: the referenced stage's masks file (``MASKS_FILE`` in its directory; it may not exist:
    #: a dense stage has none)
    masks: Path | None = None

    @property
    def stage_dir(self) -> Path:
        """The referenced stage's directory (weights are ``weights/<file>`` in it, SPEC §5)."""
        return self.path.parent.parent


class StageContext:
    """Everything a stage may use while it runs; built by the engine, never by a stage."""

    def __init__(
        self,
        stage_id: str,
        spec: StageSpec,
        seed: int,
        device: "torch.device",
        out_dir: Path,
        data: DatasetRef | None = None,  # type: ignore[valid-type]
        model: ModelSpec | None = None,
        loss: LossRef | None = None,  # type: ignore[valid-type]
        weights: dict[str, ResolvedWeights] | None = None,
        progress: Callable[..., "StageProgress"] | None = None,
        tracker: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.stage_id = stage_id
        self.spec = spec
        self.seed = seed
        self.device = device
        self.out_dir = Path(out_dir)
        self.data_ref = data
        self.model_spec = model
        self.loss_ref = loss
        self._weights = weights or {}
        self._progress = progress
        self._tracker = tracker  # the run's trackers (core.trackers), fed every logged record
        self._data: DataSplit | None = None
        self._metrics_file = None

    # ---------------------------------------------------------------- inputs
    def load_data(self) -> "DataSplit":
        """The stage's dataset on the stage's device (loaded once)."""
        if self._data is None:
            if self.data_ref is None:
                raise RuntimeError(f"stage '{self.stage_id}' has no data")
            self._data = self.data_ref.instantiate().prepare(self.seed).to(self.device)
        return self._data

    @property
    def batch_size(self) -> int:
        return int(self.data_ref.resolved.batch_size) if self.data_ref is not None else 0

    def loss_fn(self, reduction: str = "mean") -> Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]:
        from .errors import StageError

        if self.loss_ref is None:
            raise RuntimeError(f"stage '{self.stage_id}' has no loss")
        loss = self.loss_ref.instantiate()
        task = self.load_data().task
        if task not in loss.tasks:
            raise StageError(f"loss '{self.loss_ref.name}' is for {' or '.join(sorted(loss.tasks))} data, and this dataset "
                             f"is {task} data")
        return loss.build(reduction)

    def build_model(self) -> "nn.Module":
        """A freshly initialized model from the stage's ``model`` spec and seed."""
        if self.model_spec is None:
            raise RuntimeError(f"stage '{self.stage_id}' has no model")
        return build_model(self.model_spec, self.load_data(), self.seed, self.device)

    def load_state(self, ref: WeightRef | str) -> dict[str, "torch.Tensor"]:
        """The tensors stored for a weight reference (safetensors: no pickle involved)."""
        from safetensors.torch import load_file

        return load_file(str(self._resolve(ref).path), device=str(self.device))

    def load_masks(self, ref: WeightRef | str) -> dict[str, "torch.Tensor"] | None:
        """The masks the referenced stage's weights obey (``{name: 0/1 tensor}``), or None
        when that stage is dense (it saved none)."""
        from safetensors.torch import load_file

        path = self._resolve(ref).masks
        if path is None or not path.is_file():
            return None
        return load_file(str(path), device=str(self.device))

    def load_model(self, ref: WeightRef | str) -> "nn.Module":
        """The model holding a weight reference's weights: this stage's own model for its
        ``from``, the referenced stage's model for any other reference."""
        from .errors import StageError

        resolved = self._resolve(ref)
        model = build_model(resolved.model, self.load_data(), self.seed, self.device, initialize=False)
        try:
            model.load_state_dict(self.load_state(ref))
        except RuntimeError as err:  # shapes or names differ: say so in one line
            detail = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
            raise StageError(f"the weights of '{ref}' do not fit the model of stage '{self.stage_id}' ({detail})") from None
        return model

    def stage_result(self, ref: WeightRef | str) -> dict[str, Any]:
        """The ``result.json`` (``status``, ``metrics``, ``results``, ...) of the stage a
        declared weight reference names: a stage summarizing others (``lottery_report``)
        declares them as weight references, so they are its dependencies and in its key."""
        return json.loads((self._resolve(ref).stage_dir / "result.json").read_text(encoding="utf-8"))

    def kept_steps(self, stage_id: str) -> list[int]:
        """The steps N (sorted) whose weights ``STAGE@N`` this stage may read: every step a
        stage it refers to keeps (the engine resolves them all, see ``runner``)."""
        prefix = f"{stage_id}@"
        return sorted(int(k[len(prefix):]) for k in self._weights if k.startswith(prefix) and k[len(prefix):].isdigit())

    def stage_status(self, ref: WeightRef | str) -> str:
        """``ok`` or ``diverged`` (the ``status`` of the stage's ``result.json``), or
        ``skipped`` for a stage that never ran because a stage before it diverged (only a
        stage with ``runs_after_divergence`` is run with such dependencies)."""
        path = self._resolve(ref).stage_dir / "result.json"
        if not path.is_file():
            return "skipped"
        return str(json.loads(path.read_text(encoding="utf-8")).get("status", "ok"))

    def stage_metrics(self, ref: WeightRef | str) -> list[dict[str, Any]]:
        """The ``metrics.jsonl`` records (one dict per logged line) of the stage a declared
        weight reference names; ``[]`` when it logged none."""
        path = self._resolve(ref).stage_dir / "metrics.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def _resolve(self, ref: WeightRef | str) -> ResolvedWeights:
        key = str(ref)
        if key not in self._weights:
            known = ", ".join(sorted(self._weights)) or "none"
            raise KeyError(f"stage '{self.stage_id}' did not declare weights '{key}' (declared: {known})")
        return self._weights[key]

    def child(self, name: str, spec: StageSpec, model: ModelSpec | None = None,
              data: DatasetRef | None = None, loss: LossRef | None = None) -> "StageContext":  # type: ignore[valid-type]
        """A context for another stage kind run as a *part* of this stage (``diagnose`` runs a
        short ``train`` probe of the stage it examines, and of each patched configuration).

        It writes under ``out_dir/name`` (so its weights, metrics and plots are this stage's
        artifacts, cached and damaged-checked with it), reads the same declared weights, and
        uses this stage's seed and device; ``model``/``data``/``loss`` default to this stage's.
        The part is not a stage of the pipeline: it has no key of its own, and a killed run
        recomputes it with the whole stage.
        """
        sub = self.out_dir / name
        sub.mkdir(parents=True, exist_ok=True)
        return StageContext(f"{self.stage_id}/{name}", spec, self.seed, self.device, sub,
                            data if data is not None else self.data_ref,
                            model if model is not None else self.model_spec,
                            loss if loss is not None else self.loss_ref,
                            self._weights, self._progress, None)

    # ---------------------------------------------------------------- outputs
    def save_weights(self, state: dict[str, "torch.Tensor"], step: int | None = None) -> Path:
        """Store a state dict as ``weights/final`` (step None) or ``weights/step_N``."""
        from safetensors.torch import save_file

        path = self.out_dir / weights_file(step)
        path.parent.mkdir(parents=True, exist_ok=True)
        # safetensors refuses shared or non-contiguous storage; a detached clone is neither.
        save_file({k: v.detach().contiguous().cpu().clone() for k, v in state.items()}, str(path))
        return path

    def save_optimizer(self, optimizer: "torch.optim.Optimizer", step: int | None = None,
                       model: "nn.Module | None" = None) -> Path:
        """Keep ``optimizer``'s state as ``optimizer/step_N`` (or ``optimizer/final``):
        safetensors + JSON, no pickle (``core.optimizer_state``); ``model`` names its parameters."""
        from .optimizer_state import save_optimizer_state

        return save_optimizer_state(optimizer, self.out_dir, step, model)

    def load_optimizer(self, ref: WeightRef | str) -> "tuple[dict[str, Any], dict[int, dict[str, Any]]] | None":
        """``(meta, state)`` of the optimizer state a declared reference's stage kept at its
        step (``STAGE@N``; ``STAGE``: its ``optimizer/final``), or None when it kept none."""
        from .optimizer_state import read_optimizer_state

        resolved = self._resolve(ref)
        step = None if resolved.path.name == "final.safetensors" else int(resolved.path.stem.split("_", 1)[1])
        return read_optimizer_state(resolved.stage_dir, step)

    def save_masks(self, masks: dict[str, "torch.Tensor"]) -> Path:
        """Store the masks this stage's weights obey as ``masks.safetensors`` (1 kept, 0 pruned)."""
        from safetensors.torch import save_file

        path = self.out_dir / MASKS_FILE
        save_file({k: v.detach().contiguous().cpu().clone() for k, v in masks.items()}, str(path))
        return path

    @property
    def plots_dir(self) -> Path:
        path = self.out_dir / "plots"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one line to ``metrics.jsonl`` (non-finite numbers written as strings), and
        hand the same record to the run's trackers as it is logged (``core.trackers``)."""
        if self._metrics_file is None:
            self._metrics_file = open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8")
        safe = json_safe(record)
        self._metrics_file.write(json.dumps(safe, sort_keys=True) + "\n")
        if self._tracker is not None:
            self._tracker(safe)

    # ---------------------------------------------------------------- resumption
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Save the stage's resumable state (tensors, numbers, strings, lists, dicts).

        If the run is killed, the next run of the same key calls ``load_checkpoint`` and
        continues from here. Everything the stage wrote to ``out_dir`` stays; lines logged to
        ``metrics.jsonl`` after the checkpoint are dropped on resumption, so a resumed stage
        logs exactly what an uninterrupted one would. The state and the length of
        ``metrics.jsonl`` go into one file, replaced atomically (``nnopt.core.checkpoint``):
        a kill at any point leaves the previous checkpoint or this one, whole.
        """
        from . import checkpoint

        checkpoint.save(self.out_dir, state, self.out_dir / "metrics.jsonl", self._metrics_file)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The state of the last ``save_checkpoint`` of an interrupted run of this key, or None.

        Call it before writing anything: it cuts ``metrics.jsonl`` back to what was logged when
        the state was saved, and a checkpoint it cannot use (unreadable, or naming metrics lines
        that are gone) is discarded with everything else in ``out_dir``, so that the stage
        starts over (None). Tensors come back on the CPU (``load_state_dict`` moves them). The
        lines kept are handed to the run's trackers again (``_resend_metrics``).
        """
        from . import checkpoint

        self.close()  # lines still buffered would land after the cut
        state = checkpoint.load(self.out_dir, self.out_dir / "metrics.jsonl")
        if state is not None and self._tracker is not None:
            self._resend_metrics()
        return state

    def _resend_metrics(self) -> None:
        """Hand the run's trackers every line a resumed stage kept from the killed run: this
        run's tracker run then holds the stage's whole history, not only what follows the
        checkpoint (the killed run's tracker run has the lines up to the kill)."""
        path = self.out_dir / "metrics.jsonl"
        if not path.is_file() or self._tracker is None:
            return
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                self._tracker(json.loads(line))

    def progress(self, total: int, description: str) -> "StageProgress":
        """A progress bar on stderr (a silent one when progress is off)."""
        from .progress import StageProgress

        if self._progress is None:
            return StageProgress(total, description, enabled=False)
        return self._progress(total, description)

    def close(self) -> None:
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None


def json_safe(value: Any) -> Any:
    """Plain JSON: tensors and numpy scalars to numbers, NaN/inf to the strings "nan"/"inf"."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value
