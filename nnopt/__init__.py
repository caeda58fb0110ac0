"""nnopt: runnable, cached pipelines for the optimization of deep neural networks.

``nnopt.run(FILE, overrides=..., store=...)``, ``nnopt.diagnose(FILE, stage=...)`` and
``nnopt.load(REF, store=...)`` are the Python API (``nnopt.python_api``); they are imported on first use, so ``import nnopt`` (and
``nnopt --help``) stays free of torch.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["diagnose", "load", "run", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("run", "load", "diagnose"):
        from nnopt import python_api

        return getattr(python_api, name)
    raise AttributeError(f"module 'nnopt' has no attribute '{name}'")
