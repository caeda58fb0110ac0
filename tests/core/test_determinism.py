"""Deterministic kernels are switched on at every stage start, without importing inductor."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from nnopt.core.determinism import use_deterministic_algorithms


def _python(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.fixture
def restore_flags():
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    yield
    torch._C._set_deterministic_algorithms(before[0], warn_only=before[1])


def test_seeding_a_stage_turns_deterministic_algorithms_on_without_importing_dynamo_or_inductor():
    # torch.use_deterministic_algorithms imports both (0.8-1.3 s a stage, measured)
    seen = _python(
        "import json, sys, torch\n"
        "from nnopt.core.runner import _seed_everything\n"
        "flags = _seed_everything(0, torch.device('cpu'))\n"
        "print(json.dumps({'dynamo': 'torch._dynamo' in sys.modules, 'inductor': 'torch._inductor' in sys.modules,\n"
        "                  'enabled': torch.are_deterministic_algorithms_enabled(),\n"
        "                  'warn_only': torch.is_deterministic_algorithms_warn_only_enabled(), 'flags': flags}))"
    )
    assert not seen["dynamo"] and not seen["inductor"]
    assert seen["enabled"] and seen["warn_only"]
    assert seen["flags"]["use_deterministic_algorithms"] is True


@pytest.mark.parametrize("warn_only", [True, False])
def test_torch_public_getters_report_the_flags_afterwards(warn_only, restore_flags):
    torch._C._set_deterministic_algorithms(False, warn_only=not warn_only)
    use_deterministic_algorithms(warn_only=warn_only)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled() == warn_only


def test_inductor_is_made_deterministic_too_whether_it_loads_before_or_after():
    seen = _python(
        "import json, torch\n"
        "from nnopt.core.determinism import use_deterministic_algorithms\n"
        "use_deterministic_algorithms()\n"
        "import torch._inductor.config as later\n"
        "after = later.deterministic\n"
        "later.deterministic = False\n"
        "use_deterministic_algorithms()\n"
        "print(json.dumps({'loaded_after': after, 'loaded_before': later.deterministic}))"
    )
    assert seen == {"loaded_after": True, "loaded_before": True}


def test_the_public_call_is_the_fallback_where_the_private_one_fails(monkeypatch):
    calls = []

    def broken(*args, **kwargs):
        raise TypeError("signature changed")

    monkeypatch.setattr(torch._C, "_set_deterministic_algorithms", broken)
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda mode, warn_only=False: calls.append((mode, warn_only)))
    use_deterministic_algorithms(warn_only=True)
    assert calls == [(True, True)]
