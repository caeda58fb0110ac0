"""Deterministic kernels in torch, without the import cost of the public switch.

``torch.use_deterministic_algorithms(mode, warn_only=...)`` does two things: it sets ATen's
global flags (``torch._C._set_deterministic_algorithms``) and it sets
``torch._inductor.config.deterministic`` — and that import loads ``torch._inductor`` and
``torch._dynamo``: 0.8-1.3 s in every process that seeds a stage (torch 2.13, 2-core CPU,
measured), more than a short training job takes. Stages that never compile do not need
inductor loaded, so the flags are set directly, inductor's switch is honoured without
importing it, and the public call remains the fallback where torch's private entry point
is missing or did not take effect. (A ``torch.optim`` optimizer still imports
``torch._dynamo`` when built — ``Optimizer.add_param_group`` is wrapped by
``torch._disable_dynamo`` — so the second is saved where no optimizer is built: an analyze
stage, e.g. ``--redo probe`` of the quickstart, 3.96 s before and 3.00 s after.)
"""

from __future__ import annotations

import os
import sys

# inductor reads this at import (torch/_inductor/config.py: deterministic = getenv(...) == "1"):
# a process that compiles later gets the same setting the public call would have made
_INDUCTOR_ENV = "TORCHINDUCTOR_DETERMINISTIC"


def use_deterministic_algorithms(warn_only: bool = True) -> None:
    """Turn on torch's deterministic algorithms, as ``torch.use_deterministic_algorithms(True,
    warn_only=warn_only)`` does, without importing ``torch._dynamo``/``torch._inductor``.

    Afterwards ``torch.are_deterministic_algorithms_enabled()`` is true and
    ``torch.is_deterministic_algorithms_warn_only_enabled()`` equals ``warn_only``; inductor's
    ``deterministic`` config is set if inductor is loaded, else it will be when it loads.
    """
    import torch

    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is not None:
        try:
            setter(True, warn_only=warn_only)
        except (TypeError, RuntimeError):  # a torch whose private signature changed
            setter = None
    if setter is None or not _flags_are(torch, warn_only):
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
        return
    inductor_config = sys.modules.get("torch._inductor.config")
    if inductor_config is not None:
        inductor_config.deterministic = True
    else:
        os.environ[_INDUCTOR_ENV] = "1"


def _flags_are(torch, warn_only: bool) -> bool:
    return torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled() == warn_only
