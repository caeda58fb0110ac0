"""The public surface for plugin authors: subclass a kind's base and register an entry point.

    [project.entry-points."nnopt.optimizers"]
    my_sgd = "my_package.optim:MySGD"
"""

from nnopt.core.component import (
    Component,
    ComponentRef,
    NoParams,
    Params,
    TrackRef,
    WeightRef,
    ref_type,
)
from nnopt.core.kinds import (
    Activation,
    AnalysisContext,
    Analyzer,
    Architecture,
    DataSplit,
    Dataset,
    DatasetParams,
    Initializer,
    Kernel,
    KernelSource,
    Loss,
    Normalizer,
    Optimizer,
    Pruner,
    Schedule,
)
from nnopt.core.model_spec import ModelSpec
from nnopt.core.stage import Stage, StageContext, StageOutcome, StageSpec

__all__ = [
    "Activation", "AnalysisContext", "Analyzer", "Architecture", "Component", "ComponentRef",
    "DataSplit", "Dataset", "DatasetParams", "Initializer", "Kernel", "KernelSource", "Loss", "ModelSpec", "NoParams",
    "Normalizer", "Optimizer", "Params", "Pruner", "Schedule", "Stage", "StageContext", "StageOutcome",
    "StageSpec", "TrackRef", "WeightRef", "ref_type",
]
