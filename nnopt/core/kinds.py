"""The interface of each component kind (SPEC §3).

A plugin subclasses the base of its kind, sets ``Params`` and ``cache_version``, writes a
docstring naming the equation or paper it implements, and registers the class under the
kind's entry-point group (``nnopt.<kind>``). The engine only ever calls the methods below.

Torch is imported lazily (only for annotations here) so that listing and validating stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Literal

from pydantic import Field

from .component import Component, NoParams, Params

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from .loop import LoopCallback, StepRule


# --------------------------------------------------------------------------- datasets
class DatasetParams(Params):
    """Parameters every dataset takes: the mini-batch size of training, and the input
    preprocessing applied to what ``load`` returns (``Dataset.prepare``)."""

    batch_size: int = Field(64, ge=1, description="mini-batch size used by training stages")
    preprocess: Literal["none", "standardize", "unit_norm"] = Field(
        "none",
        description="input normalization after loading: `standardize` = per-feature zero mean and unit variance "
        "(train-split statistics, applied to both splits); `unit_norm` = every example scaled to ‖x‖₂ = 1; `none`",
    )


@dataclass
class DataSplit:
    """An in-memory dataset: train and test tensors, kept on one device.

    Training stages shuffle and batch it by index on the device (no DataLoader): for data of
    this size the per-batch collation of a DataLoader costs more than the step itself.
    """

    x_train: "torch.Tensor"
    y_train: "torch.Tensor"
    x_test: "torch.Tensor"
    y_test: "torch.Tensor"
    task: Literal["classification", "regression"]
    input_shape: tuple[int, ...]
    output_dim: int
    num_classes: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to(self, device: "torch.device | str") -> "DataSplit":
        return replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])


class Dataset(Component):
    """Kind ``datasets``: produces a ``DataSplit`` deterministically from a seed."""

    kind: ClassVar[str] = "datasets"
    Params: ClassVar[type[Params]] = DatasetParams

    def load(self, seed: int) -> DataSplit:
        raise NotImplementedError(f"{type(self).__name__}.load")

    def prepare(self, seed: int) -> DataSplit:
        """What stages use: ``load(seed)`` with the ``preprocess`` option applied
        (``nnopt.core.preprocess``). Datasets implement ``load``; the engine calls this."""
        from .preprocess import preprocess

        return preprocess(self.load(seed), getattr(self.params, "preprocess", "none"))

    def shapes(self, seed: int) -> tuple[tuple[int, ...], int]:
        """``(input_shape, output_dim)`` of what ``load(seed)`` gives, used at plan time to
        size each stage's model before anything runs. This default loads the data; a dataset
        that knows its shapes cheaper (from its params, from a file's header) says so here."""
        data = self.load(seed)
        return tuple(data.input_shape), int(data.output_dim)


# --------------------------------------------------------------------------- model parts
class Activation(Component):
    """Kind ``activations``: an elementwise nonlinearity φ."""

    kind: ClassVar[str] = "activations"

    def build(self) -> "nn.Module":
        raise NotImplementedError(f"{type(self).__name__}.build")

    def gain(self) -> float:
        """The gain g that variance-preserving initializers (Kaiming, Xavier, orthogonal) use
        for φ: Var(W_ij) = g²/fan keeps the pre-activations' second moment q^l = q^{l−1}.

        The default is that condition solved for a unit-variance Gaussian pre-activation,
        g = (E_{z∼N(0,1)}[φ(z)²])^{−1/2} (He et al. 2015's derivation, survey §4.2: ReLU gives
        √2, the identity 1), computed by 64-point Gauss–Hermite quadrature of the built module.
        Activations with a conventional gain (``torch.nn.init.calculate_gain``) return that.
        """
        import numpy as np
        import torch

        nodes, weights = np.polynomial.hermite_e.hermegauss(64)  # ∫ f(z) e^{−z²/2} dz
        with torch.no_grad():
            phi = self.build()(torch.as_tensor(nodes, dtype=torch.float64)).numpy()
        second_moment = float(np.sum(weights * phi**2) / np.sqrt(2 * np.pi))
        return second_moment ** -0.5 if second_moment > 0 else 1.0


class Normalizer(Component):
    """Kind ``normalizers``: how an architecture normalizes its layers.

    Architectures call ``feature_layer`` after each hidden linear/conv layer (BatchNorm,
    LayerNorm, ... return a module there) and ``parametrize`` on each weight layer (weight
    and spectral normalization reparametrize the weight there). The base class does neither,
    so it doubles as "no normalization".
    """

    kind: ClassVar[str] = "normalizers"

    def feature_layer(self, num_features: int, spatial_dims: int = 0) -> "nn.Module | None":
        """A module normalizing ``num_features`` channels (``spatial_dims`` = 0, 1, 2), or None."""
        return None

    def parametrize(self, layer: "nn.Module") -> "nn.Module":
        """The layer, with its weight reparametrized if this normalizer does that."""
        return layer


class Architecture(Component):
    """Kind ``architectures``: builds an ``nn.Module`` for a data shape."""

    kind: ClassVar[str] = "architectures"

    def build(self, input_shape: tuple[int, ...], output_dim: int, normalizer: Normalizer) -> "nn.Module":
        raise NotImplementedError(f"{type(self).__name__}.build")

    def activation(self) -> "Activation | None":
        """The activation φ of the hidden layers, handed to the initializer for its gain
        (None: the architecture has none, or more than one)."""
        return None


class Initializer(Component):
    """Kind ``initializers``: sets a freshly built model's parameters in place.

    ``sample_inputs`` returns a batch of training inputs on the model's device, for
    data-dependent schemes (LSUV); data-free schemes ignore it. ``generator`` is the only
    source of randomness an initializer may use, so results follow the stage seed.
    ``activation`` is the architecture's hidden activation (``Architecture.activation``), for
    schemes whose variance depends on it (``activation.gain()``), or None when unknown.
    """

    kind: ClassVar[str] = "initializers"

    def initialize(
        self,
        model: "nn.Module",
        sample_inputs: Callable[[], "torch.Tensor"],
        generator: "torch.Generator",
        activation: "Activation | None" = None,
    ) -> None:
        raise NotImplementedError(f"{type(self).__name__}.initialize")


# --------------------------------------------------------------------------- training
class Loss(Component):
    """Kind ``losses``: ``build(reduction)`` returns ``f(outputs, targets) -> loss``.

    ``tasks`` names the data it makes sense for; a stage given other data fails with a
    message instead of optimizing a meaningless number (cross-entropy of real targets).
    """

    kind: ClassVar[str] = "losses"
    tasks: ClassVar[frozenset[str]] = frozenset({"classification", "regression"})

    def build(self, reduction: Literal["mean", "sum", "none"] = "mean") -> Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]:
        raise NotImplementedError(f"{type(self).__name__}.build")


class Optimizer(Component):
    """Kind ``optimizers``: builds a ``torch.optim.Optimizer`` over the given parameters.

    ``needs_closure`` marks methods (L-BFGS, line searches) whose ``step`` must be given a
    closure that recomputes the loss; training stages pass one when it is set.
    """

    kind: ClassVar[str] = "optimizers"
    needs_closure: ClassVar[bool] = False

    def build(self, params: Iterable[Any], device: "torch.device") -> "torch.optim.Optimizer":
        """The optimizer over ``params``: tensors, or param-group dicts (``{"params": [...],
        "weight_decay": 0.0}``) whose keys override the component's own options for that group."""
        raise NotImplementedError(f"{type(self).__name__}.build")

    def step_rule(self) -> "StepRule":
        """How the training loop computes one step with this optimizer (``nnopt.core.loop``):
        a closure for ``needs_closure`` methods, else plain backward. Methods that need more
        (two passes as in SAM, the full batch, per-sample losses) return a rule of their own."""
        from .loop import BackwardStep, ClosureStep

        return ClosureStep() if self.needs_closure else BackwardStep()

    def callbacks(self, optimizer: "torch.optim.Optimizer", model: "nn.Module") -> "list[LoopCallback]":
        """Training-loop callbacks the method needs besides its step (``nnopt.core.loop``):
        e.g. schedule-free's swap to its averaged weights in ``evaluate_context``, or curvature
        statistics gathered in ``after_backward``. None by default."""
        return []


class Schedule(Component):
    """Kind ``schedules``: a learning-rate schedule stepped once per optimizer step.

    Before ``build`` the stage calls ``bind(steps_per_epoch, batch_size)``, so schedules
    defined in epochs (step decay every k epochs) or by the batch size (Goyal et al.'s linear
    scaling) read ``self.steps_per_epoch`` and ``self.batch_size``.
    """

    kind: ClassVar[str] = "schedules"
    steps_per_epoch: int = 1
    batch_size: int = 1

    def bind(self, steps_per_epoch: int, batch_size: int) -> "Schedule":
        """Tell the schedule the stage's epoch length (in steps) and batch size."""
        self.steps_per_epoch, self.batch_size = int(steps_per_epoch), int(batch_size)
        return self

    def build(self, optimizer: "torch.optim.Optimizer", total_steps: int) -> "torch.optim.lr_scheduler.LRScheduler":
        raise NotImplementedError(f"{type(self).__name__}.build")

    def callbacks(self, scheduler: Any) -> "list[LoopCallback]":
        """Training-loop callbacks the schedule needs besides its per-step ``step()``: e.g. a
        plateau schedule that reads the test loss in ``on_evaluate``. None by default."""
        return []


# --------------------------------------------------------------------------- pruning
class Pruner(Component):
    """Kind ``pruners``: decides which weights to remove (the ``prune`` stage, SPEC §2).

    ``masks(weights, current, generator)`` is given the prunable tensors (``{name: tensor}``,
    selected by the stage from the pruner's ``prunable`` param where it has one) and their
    current masks (same names and shapes, 1 = kept, 0 = pruned; all ones for a dense model),
    and returns the new masks for the same names. Entries pruned in ``current`` must stay
    pruned. ``generator`` (a CPU generator seeded from the stage) is the only randomness a
    pruner may use, so masks follow the stage seed.
    """

    kind: ClassVar[str] = "pruners"

    def masks(
        self,
        weights: "dict[str, torch.Tensor]",
        current: "dict[str, torch.Tensor]",
        generator: "torch.Generator",
    ) -> "dict[str, torch.Tensor]":
        raise NotImplementedError(f"{type(self).__name__}.masks")


# --------------------------------------------------------------------------- analysis
@dataclass
class AnalysisContext:
    """What an analyzer is given, in a train stage's ``track`` or in an ``analyze`` stage.

    ``model`` holds the weights under analysis (in train mode: the live model). ``batch`` is
    the current mini-batch while tracking, else None. ``load_model(ref)`` builds the model of
    another weight reference (``"train@0"``) for analyzers comparing several solutions.
    ``generator`` is a CPU ``torch.Generator`` of the analyzer's own, seeded from the stage:
    draw every random choice (sample subsets, probe vectors) from it, on the CPU, then move
    the result to ``device``.
    """

    model: "nn.Module"
    loss_fn: Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]
    data: DataSplit
    device: "torch.device"
    generator: "torch.Generator"
    step: int | None = None
    batch: "tuple[torch.Tensor, torch.Tensor] | None" = None
    load_model: Callable[[Any], "nn.Module"] | None = None
    # The learning rate of the first parameter group at ``step`` while tracking (curvature
    # analyzers compare the sharpness with 2/η), else None.
    lr: float | None = None
    # The ``model:`` spec the model was built from (a ``ModelSpec``), where the stage has one:
    # analytic infinite-width kernels derive the architecture from it.
    model_spec: Any = None
    # The weight reference the model under analysis was loaded from (an analyze stage's
    # ``from``, as text, e.g. "train"), or None (a fresh model; the live model of a train
    # stage); analyzers default their own references from it (``distance``: ``STAGE@0``).
    source: str | None = None
    # ``kept_steps(stage)``: the steps N whose ``STAGE@N`` ``load_model`` can read (every kept
    # step of a stage this one refers to); None where nothing can be loaded.
    kept_steps: Callable[[str], list[int]] | None = None


class Analyzer(Component):
    """Kind ``analyzers``: measures something of a model; returns JSON-serializable results."""

    kind: ClassVar[str] = "analyzers"

    def analyze(self, ctx: AnalysisContext) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__}.analyze")

    def plot(self, results: dict[str, Any], out_dir: Path) -> list[Path]:
        """Draw one analysis result into ``out_dir``; returns the files written."""
        return []

    def plot_series(self, series: list[tuple[int, dict[str, Any]]], out_dir: Path) -> list[Path]:
        """Draw results tracked over training steps into ``out_dir``; returns the files written."""
        return []

    def state_dict(self) -> Any:
        """What a tracked analyzer remembers between calls (a reference taken at its first
        call, say), saved in the train stage's checkpoint so that a resumed run measures
        against the same reference; None: nothing."""
        return None

    def load_state_dict(self, state: Any) -> None:
        """Restore what ``state_dict`` returned (only called with a non-None state)."""


# --------------------------------------------------------------------------- kernels
@dataclass
class KernelSource:
    """What a kernel is computed from: the finite network, its spec, and the arithmetic.

    ``model`` is the network whose empirical kernel is wanted (None where only the spec is
    known); ``model_spec`` is the ``model:`` spec it was built from (a ``ModelSpec``; analytic
    kernels read the architecture, its widths and activation, and the initializer from it);
    ``dtype`` is the floating type to compute in (``torch.float64`` on request: kernel
    matrices are ill-conditioned in float32).
    """

    model: "nn.Module | None"
    model_spec: Any
    device: "torch.device"
    dtype: "torch.dtype"


class Kernel(Component):
    """Kind ``kernels``: a positive semi-definite kernel k(x, x') on network inputs.

    ``compute(x1, x2, source)`` returns named kernel matrices of shape ``(n1, n2)`` (or
    ``(n1, n2, O, O)`` for a full kernel over O outputs, or ``(n1,)`` for a diagonal), as a
    dict: an empirical NTK returns ``{"ntk": Θ}``, an analytic one ``{"ntk": Θ, "nngp": K}``.
    ``x2=None`` means x2 = x1 (the symmetric case, which implementations may exploit).
    ``progress(done, total)``, when given, is called as blocks of the matrix are finished
    (the caller shows a progress bar); a kernel computed in one go may ignore it.
    """

    kind: ClassVar[str] = "kernels"

    def compute(
        self, x1: "torch.Tensor", x2: "torch.Tensor | None", source: KernelSource,
        progress: "Callable[[int, int], None] | None" = None,
    ) -> "dict[str, torch.Tensor]":
        raise NotImplementedError(f"{type(self).__name__}.compute")


# --------------------------------------------------------------------------- trackers
@dataclass
class RunInfo:
    """The run a tracker exports: pipeline name, run id (``nnopt runs`` names it), the matrix
    combination's values (``params``: dotted path -> value, ``{}`` outside a matrix), the
    pipeline file, the store's root (a tracker's default place for its files) and the id of
    the invocation shared by the runs of one command."""

    pipeline: str
    run: str
    params: dict[str, Any]
    file: str
    store: Path
    invocation: str = ""


class Tracker(Component):
    """Kind ``trackers``: exports a run's metrics, live, to an experiment tracker.

    The engine calls ``start_run`` once before the first stage computes, ``log(stage_id,
    record)`` for every line a stage logs (the ``metrics.jsonl`` record, JSON-safe: NaN as
    "nan"), as it is logged, and ``end_run(status)`` once at the end (``ok``, ``diverged``,
    ``failed`` or ``interrupted``). A tracker never changes a result: its params are in no
    stage's key. An exception it raises is reported once and the tracker is turned off for
    the rest of the run; the run goes on. ``check`` runs before anything else: raise
    ``PluginError`` there for what makes the tracker unusable here (a missing extra).
    """

    kind: ClassVar[str] = "trackers"

    def check(self) -> None:
        """Raise ``PluginError`` if this tracker cannot work here (default: it can)."""

    def start_run(self, run: RunInfo) -> None:
        """Open the run (a writer, a tracker run)."""

    def log(self, stage_id: str, record: dict[str, Any]) -> None:
        raise NotImplementedError(f"{type(self).__name__}.log")

    def end_run(self, status: str) -> None:
        """Close the run, marking how it ended."""


__all__ = [
    "Activation",
    "AnalysisContext",
    "Analyzer",
    "Architecture",
    "DataSplit",
    "Dataset",
    "DatasetParams",
    "Initializer",
    "Kernel",
    "KernelSource",
    "Loss",
    "NoParams",
    "Normalizer",
    "Optimizer",
    "Params",
    "Pruner",
    "RunInfo",
    "Schedule",
    "Tracker",
]
