"""What ``nnopt new-plugin`` can scaffold: one example component per kind.

Each kind's component is a real, working one whose source is the package data file
``templates/<kind>.py.tmpl`` (copied as is into the new package, as ``<module>.py``); this
table says what it is called and how the example pipeline uses it (``project.pipeline_yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Example:
    """The example component of one kind: its module in the new package, its class, and the
    suffix of its registered name (``<package>_<suffix>``, so it clashes with no built-in)."""

    kind: str
    module: str
    cls: str
    suffix: str

    def registered_name(self, package: str) -> str:
        """The entry-point name the pipeline uses: prefixed by the package."""
        return f"{package}_{self.suffix}"

    def entry_point(self, package: str) -> str:
        """``package.module:Class``, the value of the entry point."""
        return f"{package}.{self.module}:{self.cls}"

    def source(self) -> str:
        """The component's module source (a package data file of nnopt)."""
        return resources.files(__package__).joinpath("templates", f"{self.kind}.py.tmpl").read_text(encoding="utf-8")


#: in the order the kinds appear in the scaffolded files
EXAMPLES: dict[str, Example] = {e.kind: e for e in (
    Example("datasets", "dataset", "Blobs", "blobs"),
    Example("architectures", "architecture", "TwoLayer", "two_layer"),
    Example("activations", "activation", "ScaledTanh", "scaled_tanh"),
    Example("initializers", "initializer", "ScaledNormal", "scaled_normal"),
    Example("normalizers", "normalizer", "RMS", "rms"),
    Example("losses", "loss", "SmoothedCrossEntropy", "smoothed_ce"),
    Example("optimizers", "optimizer", "ScaledSGD", "scaled_sgd"),
    Example("schedules", "schedule", "LinearDecay", "linear_decay"),
    Example("pruners", "pruner", "LayerMagnitude", "layer_magnitude"),
    Example("analyzers", "analyzer", "WeightNorm", "weight_norm"),
    Example("kernels", "kernel", "ArcCosine", "arccos"),
    Example("stages", "stage", "WeightStats", "weight_stats"),
)}

#: what ``nnopt new-plugin NAME`` scaffolds when no ``--kind`` is given
DEFAULT_KINDS = ("optimizers", "analyzers")
