"""The plugin registry (SPEC §3, §4 `list` / `describe`, §7 "names resolve only through the registry").

Two levels:

- in this process, ``Registry`` over entry points of the installed ``nnopt`` and of fake
  distributions written into ``tmp_path`` (a ``*.dist-info`` directory put on ``sys.path``);
- in subprocesses, the third-party path end to end: the fixture plugins of
  ``tests/fixtures/plugins`` are pip-installed into private ``--target`` directories and
  put on ``PYTHONPATH`` (see ``tests/conftest.py``), then ``nnopt list`` / ``run`` see them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from nnopt.core.errors import PluginError
from nnopt.core.registry import KINDS, Registry, normalize_kind

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "plugins"

#: a pipeline small enough that a CLI run costs little more than importing torch
TINY = """\
name: {name}
seed: 0
device: cpu
data: {{name: synthetic, task: gaussian_mixture, n_train: 128, n_test: 64, dim: 8, batch_size: 32}}
model:
  arch: {{name: mlp, widths: [16]}}
loss: cross_entropy
stages:
  train:
    kind: train
    optimizer: {optimizer}
    epochs: 1
{extra}"""


def tiny(name: str = "tiny", optimizer: str = "{name: sgd, lr: 0.1}", extra: str = "") -> str:
    """The tiny pipeline; ``extra`` is appended as written (train's keys are indented 4, stages 2)."""
    return TINY.format(name=name, optimizer=optimizer, extra=extra)


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


def run_once(args: list, env: dict[str, str], cwd: Path):
    """``python -m nnopt ARGS`` for module-scoped fixtures (``run_cli`` is per test)."""
    import subprocess

    env = {**env, "NNOPT_HOME": str(cwd / "nnopt_home")}
    return subprocess.run([sys.executable, "-m", "nnopt", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=180)


def run_pipeline_once(text: str, env: dict[str, str], tmp_path_factory, name: str):
    """(pipeline path, store, result) of one ``nnopt run`` of ``text``, for module fixtures."""
    root = tmp_path_factory.mktemp(name)
    path = root / "pipeline.yaml"
    path.write_text(text)
    return path, root / "store", run_once(["run", path, "--store", root / "store"], env, root)


def listing(stdout: str) -> list[tuple[str, str, str]]:
    """``nnopt list`` lines as (kind, name, rest): rest is the provider and any conflict mark."""
    rows = []
    for line in stdout.splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3:
            rows.append((parts[0], parts[1], parts[2]))
    return rows


# ================================================================== in-process: Registry
def installed_nnopt_version() -> str:
    from importlib.metadata import version

    return version("nnopt")


def pyproject_entry_points() -> dict[str, dict[str, str]]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return data["project"]["entry-points"]


def test_every_builtin_registers_through_the_projects_own_entry_points():
    """SPEC §3: built-ins come from nnopt's pyproject.toml, exactly as a plugin's would."""
    groups = pyproject_entry_points()
    declared = {(group.removeprefix("nnopt."), name, value)
                for group, eps in groups.items() if group.startswith("nnopt.") and group != "nnopt.bridges"
                for name, value in eps.items()}
    found = {(e.kind, e.name, e.value) for e in Registry().entries() if e.dist == "nnopt"}
    assert declared == found, ("installed entry points differ from pyproject.toml; "
                               "reinstall with `pip install -e .` after editing entry points")
    # bridges (whole libraries by prefix) are not components of a kind: they list on their own
    bridges = {(b.prefix, b.value) for b in Registry().bridges() if b.dist == "nnopt"}
    assert bridges == set(groups.get("nnopt.bridges", {}).items())
    assert {g.removeprefix("nnopt.") for g in groups} - {"bridges"} <= set(KINDS)


def test_every_builtin_loads_as_a_component_of_its_kind():
    from pydantic import BaseModel

    from nnopt.core.component import Component

    registry = Registry()
    for entry in registry.entries():
        if entry.dist != "nnopt":
            continue
        cls, got = registry.load(entry.kind, entry.name)
        assert got == entry
        assert issubclass(cls, Component), entry
        assert cls.kind == entry.kind, f"{entry.value} registered as {entry.kind} but declares kind {cls.kind!r}"
        assert issubclass(cls.Params, BaseModel), entry
        assert isinstance(cls.cache_version, int), entry
        assert (cls.__doc__ or "").strip(), f"{entry.value} has no docstring"
        assert registry.load(entry.kind, entry.name)[0] is cls  # loaded once


@pytest.mark.parametrize("text", ["optimizers", "optimizer", "nnopt.optimizers", "Optimizers", " optimizer "])
def test_normalize_kind_accepts_plural_singular_and_group(text):
    assert normalize_kind(text) == "optimizers"


@pytest.mark.parametrize("kind", KINDS)
def test_normalize_kind_accepts_each_singular(kind):
    from nnopt.core.registry import singular

    assert normalize_kind(singular(kind)) == kind
    assert normalize_kind(kind) == kind


def test_normalize_kind_unknown_suggests_and_lists_kinds():
    with pytest.raises(PluginError) as err:
        normalize_kind("optimisers")
    assert "unknown component kind 'optimisers'" in str(err.value)
    assert "did you mean 'optimizers'?" in str(err.value)
    for kind in KINDS:
        assert kind in str(err.value)


def test_entries_are_sorted_by_kind_then_name_and_filter_by_kind():
    registry = Registry()
    entries = registry.entries()
    order = [(KINDS.index(e.kind), e.name) for e in entries]
    assert order == sorted(order)
    optimizers = registry.entries("optimizers")
    assert {e.name for e in optimizers} >= {"sgd", "adam"}
    assert all(e.kind == "optimizers" for e in optimizers)
    assert registry.names("optimizers") == sorted({e.name for e in optimizers})


def test_builtin_entry_names_its_distribution_and_version():
    entry = Registry().entry("optimizers", "sgd")
    assert (entry.dist, entry.version) == ("nnopt", installed_nnopt_version())
    assert entry.value == "nnopt.plugins.optimizers.sgd:SGD"
    assert entry.provider == f"nnopt {installed_nnopt_version()}"


def test_unknown_name_is_a_plugin_error_with_a_suggestion():
    with pytest.raises(PluginError) as err:
        Registry().entry("optimizers", "sdg")
    assert str(err.value) == "unknown optimizer 'sdg' (did you mean 'sgd'?)"
    with pytest.raises(PluginError) as err:
        Registry().entry("optimizers", "zzzzzz")
    assert "did you mean" not in str(err.value)


def test_a_spec_cannot_name_an_import_path():
    """SPEC §7: component names resolve only through the registry."""
    registry = Registry()
    for name in ("torch.optim:SGD", "nnopt.plugins.optimizers.sgd:SGD", "os:system"):
        with pytest.raises(PluginError, match="unknown optimizer"):
            registry.load("optimizers", name)


# ---------------------------------------------------------------- fake distributions on sys.path
@pytest.fixture
def fake_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``fake_dist(dist, version, {group: {name: "module:attr"}}, {module: source})``: a
    distribution's metadata and modules in a fresh directory put first on ``sys.path``."""
    created: list[str] = []

    def make(dist: str, version: str, entry_points: dict[str, dict[str, str]], modules: dict[str, str] | None = None) -> Path:
        root = tmp_path / f"site-{dist}"
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = []
        for group, eps in entry_points.items():
            lines.append(f"[{group}]")
            lines += [f"{name} = {value}" for name, value in eps.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for module, source in (modules or {}).items():
            (root / f"{module}.py").write_text(textwrap.dedent(source))
            created.append(module)
        monkeypatch.syspath_prepend(str(root))
        return root

    yield make
    for module in created:
        sys.modules.pop(module, None)


GOOD_OPTIMIZER = """
    from nnopt.api import Optimizer, Params

    class P(Params):
        lr: float = 0.1

    class Fine(Optimizer):
        '''A fake optimizer: θ ← θ.'''
        Params = P
"""


def test_a_third_party_distribution_is_listed_with_its_name_and_version(fake_dist):
    fake_dist("acme-nnopt", "2.5", {"nnopt.optimizers": {"acme_fine": "acme_fake_opt:Fine"}}, {"acme_fake_opt": GOOD_OPTIMIZER})
    registry = Registry()
    entry = registry.entry("optimizers", "acme_fine")
    assert (entry.dist, entry.version, entry.value) == ("acme-nnopt", "2.5", "acme_fake_opt:Fine")
    assert "acme_fake_opt" not in sys.modules, "listing must not import the plugin"
    cls, _ = registry.load("optimizers", "acme_fine")
    assert cls.__name__ == "Fine" and cls.kind == "optimizers"
    assert ("acme-nnopt", "2.5") in registry.fingerprint()


def test_groups_outside_nnopt_kinds_are_ignored(fake_dist):
    fake_dist("acme-other", "1.0", {"nnopt.unknownkind": {"x": "m:X"}, "console_scripts": {"acme": "m:main"}})
    assert all(e.dist != "acme-other" for e in Registry().entries())


def test_a_name_provided_by_two_distributions_is_an_error_naming_both(fake_dist):
    fake_dist("acme-clash", "0.3", {"nnopt.optimizers": {"sgd": "acme_fake_clash:Fine"}}, {"acme_fake_clash": GOOD_OPTIMIZER})
    registry = Registry()
    assert sorted(e.dist for e in registry.entries("optimizers") if e.name == "sgd") == ["acme-clash", "nnopt"]
    with pytest.raises(PluginError) as err:
        registry.load("optimizers", "sgd")
    message = str(err.value)
    assert "optimizer 'sgd' is provided by two distributions" in message
    assert "acme-clash 0.3" in message and f"nnopt {installed_nnopt_version()}" in message
    assert "acme_fake_clash" not in sys.modules, "a clashing name must not import either module"
    registry.load("optimizers", "adam")  # the other names still work


def test_a_plugin_failing_to_import_breaks_only_its_own_names(fake_dist):
    fake_dist(
        "acme-broken", "1.2",
        {"nnopt.analyzers": {"acme_probe": "acme_fake_broken:Probe"}, "nnopt.optimizers": {"acme_ok": "acme_fake_ok:Fine"}},
        {"acme_fake_broken": "import acme_dependency_that_is_not_installed\n", "acme_fake_ok": GOOD_OPTIMIZER},
    )
    registry = Registry()
    assert "acme_probe" in registry.names("analyzers")  # listed: listing imports nothing
    with pytest.raises(PluginError) as err:
        registry.load("analyzers", "acme_probe")
    message = str(err.value)
    assert "analyzer 'acme_probe'" in message and "'acme-broken 1.2'" in message
    assert "failed to load" in message and "ModuleNotFoundError" in message and "acme_dependency_that_is_not_installed" in message
    registry.load("optimizers", "acme_ok")  # same distribution, another module: fine
    registry.load("analyzers", "grad_norms")  # built-ins unaffected


@pytest.mark.parametrize(
    ("source", "value", "fragment"),
    [
        ("raise RuntimeError('boom at import')\n", "acme_fake_bad:X", "RuntimeError: boom at import"),
        ("X = 1\n", "acme_fake_bad:Missing", "AttributeError"),
        ("X = 1\n", "acme_fake_bad:X", "is not an nnopt component"),
        ("class X:\n    pass\n", "acme_fake_bad:X", "has no Params"),
    ],
    ids=["raises-at-import", "missing-attribute", "not-a-class", "no-params"],
)
def test_a_bad_entry_point_is_reported_not_raised(fake_dist, source, value, fragment):
    fake_dist("acme-bad", "0.1", {"nnopt.losses": {"acme_bad": value}}, {"acme_fake_bad": source})
    with pytest.raises(PluginError) as err:
        Registry().load("losses", "acme_bad")
    assert fragment in str(err.value)
    assert "'acme-bad 0.1'" in str(err.value) and "loss 'acme_bad'" in str(err.value)


# ================================================================== CLI: list / describe (in-process)
@pytest.mark.parametrize("kind", ["optimizers", "optimizer", "nnopt.optimizers"])
def test_list_kind_shows_name_kind_and_distribution(invoke, kind):
    result = invoke("list", kind)
    assert result.exit_code == 0, result
    rows = listing(result.stdout)
    assert rows, result
    assert {r[0] for r in rows} == {"optimizers"}
    provider = f"nnopt {installed_nnopt_version()}"
    assert ("optimizers", "sgd", provider) in rows
    assert ("optimizers", "adam", provider) in rows


def test_list_without_kind_lists_every_kind_in_order(invoke):
    result = invoke("list")
    assert result.exit_code == 0, result
    rows = listing(result.stdout)
    kinds = [r[0] for r in rows]
    assert set(kinds) >= {"datasets", "architectures", "optimizers", "analyzers", "stages"}
    assert [KINDS.index(k) for k in kinds] == sorted(KINDS.index(k) for k in kinds)
    assert ("stages", "train", f"nnopt {installed_nnopt_version()}") in rows


def test_list_json_names_provider_version_and_entry_point(invoke):
    result = invoke("list", "optimizers", "--json")
    assert result.exit_code == 0, result
    items = json.loads(result.stdout)
    sgd = next(i for i in items if i["name"] == "sgd")
    assert sgd == {"kind": "optimizers", "name": "sgd", "provider": "nnopt", "version": installed_nnopt_version(),
                   "entry_point": "nnopt.plugins.optimizers.sgd:SGD", "conflict": False}


@pytest.mark.parametrize(
    ("args", "suggestion"),
    [(["list", "optimisers"], "optimizers"), (["list", "analyser"], "analyzers"), (["describe", "optimisers", "sgd"], "optimizers")],
)
def test_unknown_kind_exits_2_with_did_you_mean(invoke, args, suggestion):
    result = invoke(*args)
    assert result.exit_code == 2, result
    no_traceback(result.stderr)
    assert f"unknown component kind '{args[1]}'" in result.stderr
    assert f"(did you mean '{suggestion}'?)" in result.stderr
    assert result.stdout == ""


def test_unknown_kind_without_close_match_lists_the_kinds(invoke):
    result = invoke("list", "zebra")
    assert result.exit_code == 2, result
    assert "did you mean" not in result.stderr
    assert "kinds: " + ", ".join(KINDS) in result.stderr


def test_describe_prints_docstring_and_parameter_table(invoke):
    result = invoke("describe", "optimizers", "sgd")
    assert result.exit_code == 0, result
    out = result.stdout
    assert out.startswith(f"optimizer 'sgd' — nnopt {installed_nnopt_version()} (nnopt.plugins.optimizers.sgd:SGD)")
    from nnopt.plugins.optimizers.sgd import SGD

    assert SGD.__doc__.strip().splitlines()[0] in out
    assert "θ_{t+1} = θ_t − η_t g_t" in out  # the equations, not only a summary
    assert "Parameters:" in out
    table = out.split("Parameters:", 1)[1]
    expected = {
        "lr": ("float", "default 0.1", "[> 0.0]"),
        "momentum": ("float", "default 0.0", "[>= 0.0, < 1.0]"),
        "dampening": ("float", "default 0.0", "[>= 0.0, <= 1.0]"),
        "nesterov": ("bool", "default False", ""),
        "weight_decay": ("float", "default 0.0", "[>= 0.0]"),
    }
    for name, (typ, default, bounds) in expected.items():
        line = next((ln for ln in table.splitlines() if ln.split()[:1] == [name]), None)
        assert line is not None, f"no row for {name} in:\n{table}"
        assert re.search(rf"\b{typ}\b", line) and default in line and bounds in line, line
    assert "learning rate η" in table  # field descriptions are shown


def test_describe_singular_kind_and_component_without_params(invoke):
    result = invoke("describe", "activation", "relu")
    assert result.exit_code == 0, result
    assert result.stdout.startswith("activation 'relu'")


def test_describe_unknown_name_exits_2_with_did_you_mean(invoke):
    result = invoke("describe", "optimizers", "sdg")
    assert result.exit_code == 2, result
    no_traceback(result.stderr)
    assert "unknown optimizer 'sdg' (did you mean 'sgd'?)" in result.stderr


# ================================================================== CLI: what `list` / `--help` import
IMPORT_CHECK = """
import sys
from nnopt.cli import main
try:
    main({args!r}, standalone_mode=False)
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")
               or m.startswith("nnopt.plugins.") or m.startswith("nnopt_"))
print("IMPORTED:" + ",".join(heavy))
"""


@pytest.mark.parametrize("args", [["list"], ["list", "optimizers"], ["--help"], ["list", "--help"]], ids=" ".join)
def test_list_and_help_import_neither_torch_nor_any_plugin(plugin_env, args, tmp_path):
    """SPEC §4: `nnopt --help` and `nnopt list` do not import torch or any plugin — not even
    with a third-party plugin installed, nor one whose module would fail to import."""
    import subprocess

    env = plugin_env("demo", "broken")
    proc = subprocess.run([sys.executable, "-c", IMPORT_CHECK.format(args=args)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    imported = proc.stdout.rsplit("IMPORTED:", 1)[1].strip()
    assert imported == "", f"nnopt {' '.join(args)} imported: {imported}"
    if args == ["list"]:  # the plugins were there to be listed (and not imported)
        assert "demo_signsgd" in proc.stdout and "broken_probe" in proc.stdout, proc.stdout


# ================================================================== the demo plugin, in-process units
def _load_fixture_module(dist_dir: str, module: str):
    """A fixture plugin's module, imported from its file (not via sys.path, whose entry
    points would then leak into every other test of this process)."""
    path = FIXTURES / dist_dir / module.replace(".", "/")
    spec = importlib.util.spec_from_file_location(f"_fixture_{module.replace('.', '_')}", path.with_suffix(".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_demo_signsgd_steps_by_the_sign_of_the_gradient():
    import torch
    from pydantic import ValidationError

    from nnopt.api import Optimizer

    mod = _load_fixture_module("demo", "nnopt_demo_plugin.signsgd")
    assert issubclass(mod.SignSGD, Optimizer)
    assert "sign(∇" in mod.SignSGD.__doc__
    with pytest.raises(ValidationError):
        mod.SignSGD.Params(lr=0)
    with pytest.raises(ValidationError):
        mod.SignSGD.Params(lr=-1)
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    opt = mod.SignSGD(mod.SignSGD.Params(lr=0.25)).build([w], torch.device("cpu"))
    assert isinstance(opt, torch.optim.Optimizer)
    w.grad = torch.tensor([10.0, -1e-8, 0.0, -3.0])
    opt.step()
    assert torch.equal(w.detach(), torch.tensor([0.75, 2.25, 3.0, 4.25]))
    opt.param_groups[0]["lr"] = 0.5  # schedules scale it through the param groups
    w.grad = torch.tensor([1.0, 1.0, 1.0, 1.0])
    opt.step()
    assert torch.equal(w.detach(), torch.tensor([0.25, 1.75, 2.5, 3.75]))


def test_demo_weight_norm_is_the_euclidean_norm_of_all_parameters():
    import torch

    from nnopt.api import AnalysisContext, Analyzer

    mod = _load_fixture_module("demo", "nnopt_demo_plugin.weight_norm")
    assert issubclass(mod.WeightNorm, Analyzer)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    ctx = AnalysisContext(model=model, loss_fn=None, data=None, device=torch.device("cpu"), generator=torch.Generator())
    out = mod.WeightNorm().analyze(ctx)
    assert set(out["layers"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert out["total"] == pytest.approx(float(flat.norm()), rel=1e-6)
    assert out["layers"]["0.weight"] == pytest.approx(float(model[0].weight.detach().norm()), rel=1e-6)
    json.dumps(out)


# ================================================================== third-party plugins, end to end
DEMO_PIPELINE = tiny(
    name="demo",
    optimizer="{name: demo_signsgd, lr: 0.01}",
    extra="""\
    track:
      - {name: demo_weight_norm, every: 2}
  probe:
    kind: analyze
    from: train
    analyzers: [demo_weight_norm]
""",
)


def test_demo_plugin_is_listed_with_its_distribution(run_cli, demo_env):
    result = run_cli("list", env=demo_env)
    assert result.returncode == 0, result
    rows = listing(result.stdout)
    assert ("optimizers", "demo_signsgd", "nnopt-demo-plugin 0.0.1") in rows
    assert ("analyzers", "demo_weight_norm", "nnopt-demo-plugin 0.0.1") in rows
    assert ("optimizers", "sgd", f"nnopt {installed_nnopt_version()}") in rows  # built-ins still there
    assert "CONFLICT" not in result.stdout


def test_demo_plugin_runs_in_a_pipeline(run_cli, demo_env, write_pipeline, store):
    path = write_pipeline(DEMO_PIPELINE)
    result = run_cli("run", path, "--store", store, "--json", env=demo_env)
    assert result.returncode == 0, result
    no_traceback(result.stderr)
    out = json.loads(result.stdout)
    assert out["status"] == "ok"
    assert out["stages"]["train"]["status"] == "ran"
    norms = out["stages"]["probe"]["results"]["demo_weight_norm"]
    assert set(norms["layers"]) == {"linear1.weight", "linear1.bias", "output.weight", "output.bias"}
    assert norms["total"] == pytest.approx(math.sqrt(sum(v * v for v in norms["layers"].values())), rel=1e-9)
    # provenance names the plugin's distribution for the components it provided (SPEC §6)
    manifest = json.loads((Path(out["stages"]["train"]["dir"]) / "manifest.json").read_text())
    assert manifest["providers"]["optimizers/demo_signsgd"] == "nnopt-demo-plugin 0.0.1"
    assert manifest["providers"]["analyzers/demo_weight_norm"] == "nnopt-demo-plugin 0.0.1"
    # the tracked analyzer's results are logged during training
    tracked = [json.loads(line) for line in (Path(out["stages"]["train"]["dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in tracked if r.get("track") == "demo_weight_norm"][:2] == [0, 2]


def test_demo_plugin_describe(run_cli, demo_env):
    result = run_cli("describe", "optimizer", "demo_signsgd", env=demo_env)
    assert result.returncode == 0, result
    assert result.stdout.startswith("optimizer 'demo_signsgd' — nnopt-demo-plugin 0.0.1 (nnopt_demo_plugin.signsgd:SignSGD)")
    assert "w_{t+1} = w_t − η_t · sign(∇_w L(w_t))" in result.stdout
    assert re.search(r"^\s+lr\s+float\s+default 0\.01\s+\[> 0\.0\]", result.stdout, re.M), result.stdout


# ---------------------------------------------------------------- a name provided twice
def test_clash_is_marked_by_list(run_cli, clash_env):
    result = run_cli("list", "optimizers", env=clash_env)
    assert result.returncode == 0, result
    sgd = [r for r in listing(result.stdout) if r[1] == "sgd"]
    providers = sorted(r[2].split("  ")[0] for r in sgd)
    assert providers == sorted([f"nnopt {installed_nnopt_version()}", "nnopt-clash-plugin 0.0.1"])
    assert all("CONFLICT" in r[2] for r in sgd), sgd
    assert all("CONFLICT" not in r[2] for r in listing(result.stdout) if r[1] != "sgd")


@pytest.fixture(scope="module")
def clash_run(clash_env, tmp_path_factory):
    """``nnopt run`` of a pipeline using ``sgd`` with the clash plugin installed (run once)."""
    return run_pipeline_once(tiny(), clash_env, tmp_path_factory, "clash-run")


def test_clash_fails_a_pipeline_using_the_name_naming_both_distributions(clash_run):
    path, store, result = clash_run
    assert result.returncode == 2, result
    no_traceback(result.stderr)
    line = next(ln for ln in result.stderr.splitlines() if "sgd" in ln)
    assert line.startswith(f"{path}:11:"), line
    assert "stages.train.optimizer" in line and "provided by two distributions" in line
    assert f"nnopt {installed_nnopt_version()}" in line and "nnopt-clash-plugin" in line
    assert not store.exists(), "a spec error must write nothing"


def test_clash_message_suggests_nothing(clash_run):
    """The name is registered: suggesting it again ("did you mean 'sgd'?") would only confuse."""
    _, _, result = clash_run
    assert result.returncode == 2, result
    assert "did you mean" not in result.stderr, result.stderr


def test_clash_does_not_affect_pipelines_not_using_the_name(run_cli, clash_env, write_pipeline):
    result = run_cli("validate", write_pipeline(tiny(optimizer="{name: adam, lr: 0.01}")), env=clash_env)
    assert result.returncode == 0, result


def test_clash_fails_describe_naming_both(run_cli, clash_env):
    result = run_cli("describe", "optimizers", "sgd", env=clash_env)
    assert result.returncode == 2, result
    no_traceback(result.stderr)
    assert "nnopt-clash-plugin" in result.stderr and f"nnopt {installed_nnopt_version()}" in result.stderr


# ---------------------------------------------------------------- a plugin that fails to import
BROKEN_PIPELINE = tiny(
    name="broken",
    extra="""\
  probe:
    kind: analyze
    from: train
    analyzers: [broken_probe]
""",
)


def test_broken_plugin_is_listed(run_cli, broken_env):
    result = run_cli("list", "analyzers", env=broken_env)
    assert result.returncode == 0, result
    assert ("analyzers", "broken_probe", "nnopt-broken-plugin 0.0.1") in listing(result.stdout)


def test_broken_plugin_does_not_break_pipelines_not_using_it(run_cli, broken_env, write_pipeline, store):
    result = run_cli("run", write_pipeline(tiny()), "--store", store, "--json", env=broken_env)
    assert result.returncode == 0, result
    no_traceback(result.stderr)
    assert "broken" not in result.stderr
    assert json.loads(result.stdout)["status"] == "ok"


@pytest.fixture(scope="module")
def broken_run(broken_env, tmp_path_factory):
    """``nnopt run`` of a pipeline using ``broken_probe`` (run once)."""
    return run_pipeline_once(BROKEN_PIPELINE, broken_env, tmp_path_factory, "broken-run")


def test_broken_plugin_fails_pipelines_using_it_naming_plugin_and_distribution(broken_run):
    path, store, result = broken_run
    assert result.returncode == 2, result
    no_traceback(result.stderr)
    line = next(ln for ln in result.stderr.splitlines() if "broken_probe" in ln)
    assert line.startswith(f"{path}:16:"), line
    assert "stages.probe.analyzers[0]" in line
    assert "nnopt-broken-plugin" in line and "failed to load" in line
    assert "nnopt_broken_plugin_missing_dependency" in line  # the cause, for the plugin's user
    assert not store.exists(), "a spec error must write nothing (not even the train stage)"


def test_broken_plugin_message_suggests_nothing(broken_run):
    """The name is registered: suggesting it again ("did you mean 'broken_probe'?") would only confuse."""
    _, _, result = broken_run
    assert result.returncode == 2, result
    assert "did you mean" not in result.stderr, result.stderr
