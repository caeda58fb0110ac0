"""Spec errors (SPEC §7): found before anything runs, all at once, one located line each.

Every row of ``ROWS`` is a pipeline file (a variant of ``BASE``, changed on one or a few
lines) plus ``--set`` arguments, and the diagnostics a user should see, each as
``(where, dotted path, message fragment, suggestion)``: ``where`` is the file line (an int)
or the ``--set PATH=VALUE`` text; ``suggestion`` is what "did you mean" offers, or None for
no suggestion. Each row runs through both ``nnopt validate FILE`` and ``nnopt run FILE --store
DIR`` in this process (click's CliRunner: torch is imported once, not once per row) and must:

- exit 2 with exactly the expected diagnostics on stderr, in the form
  ``FILE:LINE:COL: dotted.path: message (did you mean 'x'?)``, then ``N error(s); nothing was run``;
- print no traceback (and need no ``--debug`` for the message) and nothing on stdout;
- under ``run``, leave no store directory behind.
"""

from __future__ import annotations

import json

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

#: line numbers below refer to this file (rows replace whole lines, so the numbering stays)
BASE = """\
name: t
data: {name: synthetic, task: gaussian_mixture, n_train: 128, n_test: 64, dim: 8, batch_size: 32}
model:
  arch: {name: mlp, widths: [16], activation: relu}
loss: cross_entropy
stages:
  train:
    kind: train
    optimizer: {name: sgd, lr: 0.1}
    epochs: 1
    keep: [0]
  probe:
    kind: analyze
    from: train
    analyzers: [grad_norms]
"""
#   1 name            6 stages:        11 keep          15 analyzers (probe)
#   2 data            7   train:       12   probe:
#   3 model:          8 kind (train)   13 kind (probe)
#   4 arch            9 optimizer      14 from (probe)
#   5 loss           10 epochs

CYCLE = """\
name: t
data: {name: synthetic, task: gaussian_mixture, n_train: 128, dim: 8}
model: {arch: {name: mlp, widths: [16]}}
loss: cross_entropy
stages:
  a:
    kind: train
    from: b
    optimizer: sgd
    epochs: 1
  b:
    kind: train
    from: a
    optimizer: sgd
    epochs: 1
"""


def edit(*pairs: str, text: str = BASE) -> str:
    """``BASE`` with each ``old`` replaced by ``new`` (``edit(old1, new1, old2, new2, ...)``);
    every ``old`` must occur exactly once, so a row cannot silently stop testing anything."""
    assert len(pairs) % 2 == 0
    for old, new in zip(pairs[::2], pairs[1::2]):
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
        text = text.replace(old, new)
    return text


def alias_bomb(levels: int = 8, prefix: str = "x-") -> list[str]:
    """A "billion laughs": anchor ``a`` is 9 scalars, each next anchor 9 aliases of the one
    before, so the last of ``levels`` expands to 9**levels values (YAML lines, one per anchor)."""
    names = "abcdefghijklmnop"[:levels]
    lines = [f"{prefix}a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for before, name in zip(names, names[1:]):
        lines.append(f"{prefix}{name}: &{name} [{', '.join([f'*{before}'] * 9)}]")
    return lines


#: the same bomb as one flow list, for a --set value: [&a [...], &b [*a, ...], ...]
SET_BOMB = "[" + ", ".join(line.split(": ", 1)[1] for line in alias_bomb(prefix="")) + "]"
#: BASE with a matrix that sweeps the whole optimizer (lines 16-17)
SWEEPS_OPTIMIZER = BASE + "matrix:\n  stages.train.optimizer: [sgd, adam]\n"
#: BASE with a matrix that sweeps the learning rate (lines 16-17)
SWEEPS_LR = BASE + "matrix:\n  stages.train.optimizer.lr: [0.1, 0.2]\n"
#: a matrix of 100**5 = 10**10 combinations (line 16)
HUGE_MATRIX = BASE + "matrix:\n" + "".join(f"  {axis}: {list(range(1, 101))}\n" for axis in
                                          ("seed", "stages.train.epochs", "data.batch_size", "data.n_train", "data.n_test"))


@dataclass
class Row:
    id: str
    spec: str
    expected: list[tuple[int | str, str, str, str | None]]
    sets: list[str] = field(default_factory=list)


ROWS = [
    # ------------------------------------------------------------------ YAML itself
    Row("yaml-syntax", edit("loss: cross_entropy", "loss: cross_entropy: x"),
        [(5, "<root>", "YAML syntax error: mapping values are not allowed", None)]),
    Row("yaml-tab-indent", edit("  train:\n", "\ttrain:\n"),
        [(7, "<root>", "YAML syntax error", None)]),
    Row("duplicate-key-top", edit("loss: cross_entropy\n", "loss: cross_entropy\nname: u\n"),
        [(6, "name", "duplicate key 'name' (first given at line 1, column 1)", None)]),
    Row("duplicate-key-nested-block", edit("    epochs: 1\n", "    epochs: 1\n    epochs: 2\n"),
        [(11, "stages.train.epochs", "duplicate key 'epochs' (first given at line 10, column 5)", None)]),
    Row("duplicate-key-nested-flow", edit("lr: 0.1}", "lr: 0.1, lr: 0.2}"),
        [(9, "stages.train.optimizer.lr", "duplicate key 'lr'", None)]),
    Row("duplicate-keys-all-reported", edit("lr: 0.1}", "lr: 0.1, lr: 0.2}", "    epochs: 1\n", "    epochs: 1\n    epochs: 2\n"),
        [(9, "stages.train.optimizer.lr", "duplicate key 'lr'", None),
         (11, "stages.train.epochs", "duplicate key 'epochs'", None)]),
    # ------------------------------------------------------------------ top level
    Row("unknown-top-level-key", edit("loss: cross_entropy", "losss: cross_entropy"),
        [(5, "losss", "unknown key 'losss'; expected one of: ", "loss")]),
    Row("bad-name-pattern", edit("name: t", "name: My Pipe"),
        [(1, "name", "got 'My Pipe'", None)]),
    Row("bad-device", edit("name: t\n", "name: t\ndevice: gpu\n"),
        [(2, "device", "got 'gpu'", None)]),
    # ------------------------------------------------------------------ unknown components
    Row("unknown-dataset", edit("name: synthetic", "name: syntetic"),
        [(2, "data", "unknown dataset 'syntetic'", "synthetic")]),
    Row("unknown-architecture", edit("name: mlp", "name: mlpp"),
        [(4, "model.arch", "unknown architecture 'mlpp'", "mlp")]),
    Row("unknown-nested-activation", edit("activation: relu", "activation: rellu"),
        [(4, "model.arch.activation", "unknown activation 'rellu'", "relu")]),
    Row("unknown-optimizer", edit("name: sgd", "name: sdg"),
        [(9, "stages.train.optimizer", "unknown optimizer 'sdg'", "sgd")]),
    Row("unknown-schedule", edit("    epochs: 1\n", "    epochs: 1\n    schedule: cosin\n"),
        [(11, "stages.train.schedule", "unknown schedule 'cosin'", "cosine")]),
    Row("unknown-analyzer-in-track", edit("    epochs: 1\n", "    epochs: 1\n    track: [{name: grad_norm, every: 2}]\n"),
        [(11, "stages.train.track[0]", "unknown analyzer 'grad_norm'", "grad_norms")]),
    Row("unknown-analyzer-in-analyze", edit("[grad_norms]", "[grad_norm]"),
        [(15, "stages.probe.analyzers[0]", "unknown analyzer 'grad_norm'", "grad_norms")]),
    Row("unknown-stage-kind", edit("kind: analyze", "kind: analyse"),
        [(13, "stages.probe.kind", "unknown stage kind 'analyse'", "analyze")]),
    Row("loss-name-is-not-an-import-path", edit("loss: cross_entropy", "loss: torch.nn:CrossEntropyLoss"),
        [(5, "loss", "unknown loss 'torch.nn:CrossEntropyLoss'", None)]),
    # ------------------------------------------------------------------ params
    Row("unknown-param", edit("lr: 0.1}", "lr: 0.1, momentm: 0.9}"),
        [(9, "stages.train.optimizer.momentm", "unknown key 'momentm'; expected one of: dampening, lr, momentum", "momentum")]),
    Row("unknown-stage-key", edit("    epochs: 1\n", "    epoch: 1\n"),
        [(10, "stages.train.epoch", "unknown key 'epoch'", "epochs")]),
    Row("param-type", edit("lr: 0.1", "lr: abc"),
        [(9, "stages.train.optimizer.lr", "expected a valid number", None)]),
    Row("param-range-lr", edit("lr: 0.1", "lr: -1"),
        [(9, "stages.train.optimizer.lr", "expected greater than 0, got -1", None)]),
    Row("param-range-batch-size", edit("batch_size: 32", "batch_size: 0"),
        [(2, "data.batch_size", "expected greater than or equal to 1, got 0", None)]),
    Row("param-range-list-item", edit("keep: [0]", "keep: [-1]"),
        [(11, "stages.train.keep[0]", "expected greater than or equal to 0, got -1", None)]),
    # ------------------------------------------------------------------ stage structure
    Row("missing-required-optimizer", edit("    optimizer: {name: sgd, lr: 0.1}\n", ""),
        [(8, "stages.train.optimizer", "missing required key 'optimizer'", None)]),
    Row("epochs-and-steps", edit("    epochs: 1\n", "    epochs: 1\n    steps: 5\n"),
        [(8, "stages.train", "give epochs or steps, not both", None)]),
    Row("neither-epochs-nor-steps", edit("    epochs: 1\n", ""),
        [(8, "stages.train", "give epochs or steps", None)]),
    Row("bad-stage-id", edit("  probe:", '  "pro be":'),
        [(12, "stages.pro be", "stage ids may use letters, digits, _ and - only", None)]),
    # ------------------------------------------------------------------ references
    Row("from-unknown-stage", edit("from: train", "from: trian"),
        [(14, "stages.probe.from", "no stage 'trian' in this pipeline", "train")]),
    Row("from-unkept-step", edit("from: train", "from: train@5"),
        [(14, "stages.probe.from", "stage 'train' does not keep step 5 (kept: 0); add 5 to stages.train.keep", None)]),
    Row("from-bad-reference", edit("from: train", "from: train@@3"),
        [(14, "stages.probe.from", "expected STAGE, STAGE@N or STAGE@init", None)]),
    Row("from-self", edit("from: train", "from: probe"),
        [(14, "stages.probe.from", "stage 'probe' cannot read its own weights", None)]),
    Row("from-cycle", CYCLE,
        [(6, "stages.a", "stages depend on each other in a cycle: a -> b -> a", None)]),
    # ------------------------------------------------------------------ --set
    Row("set-unknown-stage", BASE, [("--set stages.trian.epochs=2", "stages.trian", "no stage 'trian' in this pipeline", "train")],
        sets=["stages.trian.epochs=2"]),
    Row("set-bad-value-type", BASE, [("--set stages.train.optimizer.lr=abc", "stages.train.optimizer.lr", "expected a valid number", None)],
        sets=["stages.train.optimizer.lr=abc"]),
    Row("set-unknown-param", BASE,
        [("--set stages.train.optimizer.momentm=0.9", "stages.train.optimizer.momentm", "unknown key 'momentm'", "momentum")],
        sets=["stages.train.optimizer.momentm=0.9"]),
    Row("set-without-equals", BASE, [("--set stages.train.epochs", "<root>", "expected PATH=VALUE", None)],
        sets=["stages.train.epochs"]),
    Row("set-bad-yaml-one-line", BASE, [("--set stages.train.keep=[0", "stages.train.keep", "value is not valid YAML", None)],
        sets=["stages.train.keep=[0"],
        ),
    Row("set-errors-all-reported", BASE,
        [("--set stages.train.optimizer.lr=abc", "stages.train.optimizer.lr", "expected a valid number", None),
         ("--set stages.trian.epochs=2", "stages.trian", "no stage 'trian'", "train")],
        sets=["stages.train.optimizer.lr=abc", "stages.trian.epochs=2"]),
    Row("set-and-file-errors-all-reported", edit("batch_size: 32", "batch_size: 0"),
        [(2, "data.batch_size", "expected greater than or equal to 1", None),
         ("--set stages.train.epochs=0", "stages.train.epochs", "expected greater than or equal to 1", None),
         ("--set stages.trian.epochs=2", "stages.trian", "no stage 'trian'", "train")],
        sets=["stages.train.epochs=0", "stages.trian.epochs=2"]),
    Row("set-without-equals-all-reported", BASE,
        [("--set a", "<root>", "expected PATH=VALUE", None), ("--set b", "<root>", "expected PATH=VALUE", None)],
        sets=["a", "b"],
        ),
    # ------------------------------------------------------------------ matrix
    Row("matrix-bad-value", edit("    analyzers: [grad_norms]\n", "    analyzers: [grad_norms]\nmatrix:\n  stages.train.optimizer.name: [sgd, adma]\n"),
        [(17, "stages.train.optimizer", "unknown optimizer 'adma'", "adam")]),
    Row("matrix-unknown-stage-in-path", edit("    analyzers: [grad_norms]\n", "    analyzers: [grad_norms]\nmatrix:\n  stages.trian.optimizer.name: [sgd, adam]\n"),
        [(17, "stages.trian", "no stage 'trian' in this pipeline", "train")],
        ),
    Row("matrix-unknown-key-in-path", edit("    analyzers: [grad_norms]\n", "    analyzers: [grad_norms]\nmatrix:\n  stages.train.optimizer.nmae: [sgd, adam]\n"),
        [(17, "stages.train.optimizer.nmae", "unknown key 'nmae'", "name")],
        ),
    # ------------------------------------------------------------------ all at once
    Row("three-independent-errors", edit("batch_size: 32", "batch_size: 0", "activation: relu", "activation: rellu", "name: sgd", "name: sdg"),
        [(2, "data.batch_size", "expected greater than or equal to 1", None),
         (4, "model.arch.activation", "unknown activation 'rellu'", "relu"),
         (9, "stages.train.optimizer", "unknown optimizer 'sdg'", "sgd")]),
    Row("errors-in-several-stages", edit("name: sgd", "name: sdg", "kind: analyze", "kind: analyse", "loss: cross_entropy", "loss: cross_entropie"),
        [(5, "loss", "unknown loss 'cross_entropie'", "cross_entropy"),
         (9, "stages.train.optimizer", "unknown optimizer 'sdg'", "sgd"),
         (13, "stages.probe.kind", "unknown stage kind 'analyse'", "analyze")]),
    Row("top-level-error-hides-component-errors", edit("name: t", "name: T", "batch_size: 32", "batch_size: 0"),
        [(1, "name", "got 'T'", None), (2, "data.batch_size", "expected greater than or equal to 1", None)]),
    Row("stage-field-error-hides-component-errors", edit("name: sgd", "name: sdg", "epochs: 1", "epochs: 0"),
        [(9, "stages.train.optimizer", "unknown optimizer 'sdg'", "sgd"),
         (10, "stages.train.epochs", "expected greater than or equal to 1", None)]),
    Row("misspelled-kind-key", edit("kind: analyze", "kinds: analyze"),
        [(13, "stages.probe.kinds", "unknown key 'kinds'", "kind")]),
    # ------------------------------------------------------------------ bounded input (never hangs, never crashes)
    Row("yaml-alias-bomb", BASE + "\n".join(alias_bomb()) + "\n",  # x-a..x-h on lines 16-23
        [(21, "x-f", "this value expands to 597,871 values through YAML aliases (*name), more than the 100,000", None)]),
    Row("yaml-alias-cycle", edit("widths: [16]", "widths: &w [16, *w]"),
        [(4, "model.arch.widths[1]", "a YAML alias inside its own anchor", None)]),
    Row("yaml-nested-too-deep", BASE + "x-deep: " + "[" * 101 + "]" * 101 + "\n",
        [(16, "<root>", "the file nests lists and mappings deeper than 100 levels", None)]),
    Row("yaml-merge-cycle", BASE + "x-opt: &opt {name: sgd, <<: *opt}\n",
        [(16, "x-opt.<<", "a merge key (<<) refers to the mapping that contains it", None)]),
    Row("yaml-impossible-date", edit("epochs: 1", "epochs: 2020-13-45"),  # resolved as a timestamp: datetime raised
        [(10, "stages.train.epochs", "'2020-13-45' is not a valid YAML timestamp (month must be in 1..12); quote it", None)]),
    Row("yaml-tagged-scalar-that-cannot-be-built", edit("lr: 0.1", 'lr: !!float "fast"'),
        [(9, "stages.train.optimizer.lr", "'fast' is not a valid YAML float", None)]),
    Row("set-impossible-date", BASE,
        [("--set stages.train.epochs=2020-13-45", "stages.train.epochs", "is not a valid YAML timestamp", None)],
        sets=["stages.train.epochs=2020-13-45"]),
    Row("set-alias-bomb", BASE, [(f"--set stages.train.optimizer.lr={SET_BOMB}", "stages.train.optimizer.lr[5]", "expands to 597,871 values", None)],
        sets=[f"stages.train.optimizer.lr={SET_BOMB}"]),
    Row("set-alias-cycle", BASE, [("--set model.arch.widths=&w [16, *w]", "model.arch.widths[1]", "a YAML alias inside its own anchor", None)],
        sets=["model.arch.widths=&w [16, *w]"]),
    Row("name-too-long", edit("name: t", "name: " + "t" * 300),
        [(1, "name", "a pipeline name is at most 64 characters; this one has 300", None)]),
    Row("stage-id-too-long", edit("  probe:", "  " + "p" * 400 + ":"),
        [(12, "stages." + "p" * 400, "a stage id is at most 64 characters; this one has 400", None)]),
    Row("matrix-too-many-combinations", HUGE_MATRIX,
        [(16, "matrix", "the matrix has 10,000,000,000 combinations (100 x 100 x 100 x 100 x 100 values), more than the 10,000", None)]),
    Row("npz-path-is-a-directory", edit("{name: synthetic, task: gaussian_mixture, n_train: 128, n_test: 64, dim: 8, batch_size: 32}", "{name: npz, path: /}"),
        [(2, "data.path", "a directory, not a file: /", None)]),
    Row("npz-path-is-proc-self-mem", edit("{name: synthetic, task: gaussian_mixture, n_train: 128, n_test: 64, dim: 8, batch_size: 32}",
                                          "{name: npz, path: /proc/self/mem}"),
        [(2, "data.path", "cannot read the file", None)]),
    Row("npz-path-is-a-device", edit("{name: synthetic, task: gaussian_mixture, n_train: 128, n_test: 64, dim: 8, batch_size: 32}",
                                     "{name: npz, path: /dev/zero}"),
        [(2, "data.path", "not a regular file", None)]),
    Row("model-too-large-for-its-device", edit("widths: [16]", "widths: [100000000000]"),
        [(4, "model.arch", "this model has 1,100,000,000,002 parameters: its weights alone take 4.0 TiB, more than the ", None)]),
    Row("stage-model-too-large-for-its-device",  # probe inherits it through `from: train`: one error, where it is written
        edit("    epochs: 1\n", "    epochs: 1\n    model: {arch: {name: mlp, widths: [100000000000]}}\n"),
        [(11, "stages.train.model.arch", "this model has 1,100,000,000,002 parameters", None)]),
    # ------------------------------------------------------------------ --set and matrix: a --set never changes a swept axis
    Row("set-inside-a-swept-axis", SWEEPS_OPTIMIZER,
        [("--set stages.train.optimizer.bogus=1", "stages.train.optimizer.bogus",
          "the matrix sweeps 'stages.train.optimizer' (at ", None)],
        sets=["stages.train.optimizer.bogus=1"]),
    Row("set-of-a-swept-axis", SWEEPS_OPTIMIZER,
        [("--set stages.train.optimizer=adam", "stages.train.optimizer",
          "pipeline.yaml:17:3), and a --set never changes a swept axis; change the axis itself: --set 'matrix.stages.train.optimizer=[adam]'", None)],
        sets=["stages.train.optimizer=adam"]),
    Row("set-holding-a-swept-axis", SWEEPS_LR,
        [("--set stages.train.optimizer=adam", "stages.train.optimizer",
          "the matrix sweeps 'stages.train.optimizer.lr' (at ", None)],
        sets=["stages.train.optimizer=adam"]),
    Row("set-matrix-axis-not-a-list", BASE, [("--set matrix.seed=3", "matrix.seed", "expected a non-empty list of values", None)],
        sets=["matrix.seed=3"]),
    Row("set-matrix-without-an-axis", BASE, [("--set matrix=[1]", "matrix", "name the axis to set: --set 'matrix.PATH=[v1, v2]'", None)],
        sets=["matrix=[1]"]),
    Row("set-matrix-axis-bad-value", SWEEPS_OPTIMIZER,
        [("--set matrix.stages.train.optimizer=[sgd, adma]", "stages.train.optimizer", "unknown optimizer 'adma'", "adam")],
        sets=["matrix.stages.train.optimizer=[sgd, adma]"]),
    Row("set-and-matrix-errors-all-reported", BASE + "matrix:\n  seed: 3\n",
        [(17, "matrix.seed", "expected a non-empty list of values", None),
         ("--set stages.trian.epochs=2", "stages.trian", "no stage 'trian'", "train")],
        sets=["stages.trian.epochs=2"]),
]


def _params():
    for row in ROWS:
        for command in ("validate", "run"):
            yield pytest.param(row, command, id=f"{row.id}-{command}")


DIAG = re.compile(r"^(?P<path>.+?): (?P<message>.*?)(?: \(did you mean '(?P<hint>[^']*)'\?\))?$")


def parse_diagnostics(stderr: str, file: str) -> tuple[list[dict], list[str]]:
    """The diagnostic lines of ``stderr`` as dicts (where, line, col, path, message, hint),
    and every other line."""
    diags, other = [], []
    located = re.compile(rf"^{re.escape(file)}:(?P<line>\d+):(?P<col>\d+): ")
    for text in stderr.splitlines():
        m = located.match(text)
        if m:
            where, line, col, rest = m.group(0)[:-2], int(m.group("line")), int(m.group("col")), text[m.end():]
        elif text.startswith("--set "):
            where, _, rest = text.partition(": ")
            line = col = None
        else:
            other.append(text)
            continue
        d = DIAG.match(rest)
        assert d, text
        diags.append({"where": where, "line": line, "col": col, **d.groupdict()})
    return diags, other


def check_failure(result, file: str, expected: list[tuple[int | str, str, str, str | None]]) -> None:
    assert result.exit_code == 2, result
    assert "Traceback" not in result.stderr, result
    assert result.stdout == "", result
    diags, other = parse_diagnostics(result.stderr, file)
    n = len(expected)
    assert other == [f"{n} error{'s' if n != 1 else ''}; nothing was run"], result
    assert len(diags) == n, result
    located = [(d["line"], d["col"]) for d in diags if d["line"] is not None]
    assert located == sorted(located), f"diagnostics of the file are not in file order:\n{result}"
    unmatched = list(diags)
    for where, path, fragment, hint in expected:  # in any order: file and --set lines interleave freely
        match = next((d for d in unmatched if (d["line"] == where if isinstance(where, int) else d["where"] == where)
                      and d["path"] == path and fragment in d["message"] and d["hint"] == hint), None)
        assert match is not None, f"no diagnostic {where}: {path}: ...{fragment}... (did you mean {hint!r}) in:\n{result}"
        unmatched.remove(match)


@pytest.mark.parametrize(("row", "command"), list(_params()))
def test_bad_spec(row: Row, command: str, invoke, write_pipeline, store: Path):
    path = write_pipeline(row.spec)
    args = [command, str(path), *[a for s in row.sets for a in ("--set", s)]]
    if command == "run":
        args += ["--store", str(store)]
    result = invoke(*args)
    check_failure(result, str(path), row.expected)
    assert not store.exists(), f"a spec error created the store: {sorted(p.name for p in store.iterdir())}"


def test_rows_are_valid_without_their_change(invoke, write_pipeline):
    """BASE and CYCLE's non-cyclic twin are valid: every row's error is its own change."""
    assert invoke("validate", str(write_pipeline(BASE))).exit_code == 0
    acyclic = edit("    from: b\n", "", text=CYCLE)
    result = invoke("validate", str(write_pipeline(acyclic)))
    assert result.exit_code == 0, result


# ------------------------------------------------------------------ valid specs
@pytest.mark.parametrize(
    ("spec", "sets"),
    [
        (edit("lr: 0.1", "lr: 1e-3"), []),
        (edit("lr: 0.1", "lr: 5E-2"), []),
        (BASE, ["stages.train.optimizer.lr=1e-3"]),
        (edit("    epochs: 1\n", "    steps: 3\n"), []),
        ("x-opt: &opt {name: sgd, lr: 0.5}\n" + edit("optimizer: {name: sgd, lr: 0.1}", "optimizer: {<<: *opt, lr: 0.1}"), []),
        (edit("    analyzers: [grad_norms]\n", "    analyzers: [grad_norms]\nmatrix:\n  stages.train.optimizer.lr: [0.1]\n"),
         ["stages.train.epochs=2"]),
    ],
    ids=["1e-3", "5E-2", "set-1e-3", "steps", "merge-key-overridden", "set-beside-a-matrix"],
)
def test_valid_spec(invoke, write_pipeline, spec, sets):
    path = write_pipeline(spec)
    result = invoke("validate", str(path), *[a for s in sets for a in ("--set", s)])
    assert result.exit_code == 0, result
    assert result.stdout.strip() == f"{path}: valid (1 pipeline, 2 stages)"
    assert result.stderr == ""


def test_1e_minus_3_is_read_as_a_float():
    """YAML 1.1 reads `1e-3` as a string; a pipeline file means the number."""
    from nnopt.core.yaml_source import parse_value, parse_yaml

    data = parse_yaml("lr: 1e-3\nn: 5E+2\nw: 1.5e2\ns: 1e3x\nv: '1e-3'\n", "f.yaml").data
    assert data == {"lr": 0.001, "n": 500.0, "w": 150.0, "s": "1e3x", "v": "1e-3"}
    assert type(data["lr"]) is float and type(data["n"]) is float
    assert parse_value("1e-3") == 0.001 and type(parse_value("1e-3")) is float


# ------------------------------------------------------------------ matrix keys
def test_unknown_matrix_path_is_an_error_at_the_matrix(invoke, write_pipeline, store):
    """Exit 2, located once at the matrix key (not once per value), with a suggestion,
    nothing written."""
    path = write_pipeline(edit("    analyzers: [grad_norms]\n", "    analyzers: [grad_norms]\nmatrix:\n  stages.trian.optimizer.name: [sgd, adam]\n"))
    result = invoke("run", str(path), "--store", str(store))
    assert result.exit_code == 2, result
    diags, _ = parse_diagnostics(result.stderr, str(path))
    assert [(d["line"], d["path"], d["hint"]) for d in diags] == [(17, "stages.trian", "train")], result
    assert not store.exists()


# ------------------------------------------------------------------ the command line around it
@pytest.mark.parametrize("command", ["run", "validate", "plan"])
def test_missing_file_exits_2(invoke, store, command):
    args = [command, "missing.yaml"] + (["--store", str(store)] if command != "validate" else [])
    result = invoke(*args)
    assert result.exit_code == 2, result
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[0] == "missing.yaml: <root>: no such pipeline file"
    assert not store.exists()


def test_a_directory_is_not_a_pipeline_file(invoke, tmp_path, store):
    result = invoke("run", str(tmp_path), "--store", str(store))
    assert result.exit_code == 2, result
    assert "no such pipeline file" in result.stderr and "Traceback" not in result.stderr
    assert not store.exists()


def test_spec_error_leaves_an_existing_store_untouched(invoke, write_pipeline, store):
    store.mkdir()
    (store / "keep.txt").write_text("x")
    result = invoke("run", str(write_pipeline(edit("name: sgd", "name: sdg"))), "--store", str(store))
    assert result.exit_code == 2, result
    assert sorted(p.name for p in store.iterdir()) == ["keep.txt"]


def test_debug_adds_a_traceback_and_changes_no_diagnostic(invoke, write_pipeline):
    path = write_pipeline(edit("name: sgd", "name: sdg"))
    plain = invoke("validate", str(path))
    expected = f"{path}:9:23: stages.train.optimizer: unknown optimizer 'sdg' (did you mean 'sgd'?)"
    assert plain.exit_code == 2
    assert expected in plain.stderr.splitlines() and "Traceback" not in plain.stderr
    for args in (("--debug", "validate", str(path)), ("validate", str(path), "--debug")):  # anywhere on the line
        debug = invoke(*args)
        assert debug.exit_code == 2
        assert "Traceback" in debug.stderr  # SPEC §7: --debug shows one
        assert debug.stderr.splitlines()[-2:] == plain.stderr.splitlines()[-2:]


def test_redo_unknown_stage_is_a_located_error(invoke, write_pipeline, store):
    result = invoke("run", str(write_pipeline(BASE)), "--redo", "trian", "--store", str(store))
    assert result.exit_code == 2, result
    assert "--redo trian: trian: no such stage in this pipeline (did you mean 'train'?)" in result.stderr.splitlines()
    assert not store.exists()


def test_spec_error_subprocess_has_no_traceback(run_cli, write_pipeline, store):
    """The same contract out of process, through `python -m nnopt` (the real entry point)."""
    path = write_pipeline(edit("name: sgd", "name: sdg", "batch_size: 32", "batch_size: 0"))
    result = run_cli("run", path, "--store", store, "--json")
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    out = json.loads(result.stdout)  # with --json, scripts still get one JSON object
    assert out["status"] == "invalid"
    assert [(e["line"], e["path"], e["suggestion"]) for e in out["errors"]] == [(2, "data.batch_size", None), (9, "stages.train.optimizer", "sgd")]
    assert result.stderr.splitlines() == [
        f"{path}:2:95: data.batch_size: expected greater than or equal to 1, got 0",
        f"{path}:9:23: stages.train.optimizer: unknown optimizer 'sdg' (did you mean 'sgd'?)",
        "2 errors; nothing was run",
    ], result
    assert not store.exists()


# ------------------------------------------------------------------ bounded input: fast, small, no crash
def test_an_alias_bomb_is_refused_at_once_in_bounded_memory():
    """9**8 values written in 9 lines are refused without being built: sized per anchor."""
    import time
    import tracemalloc

    from nnopt.core.errors import SpecError
    from nnopt.core.yaml_source import parse_yaml

    text = "\n".join(alias_bomb()) + "\nstages: {train: {values: *h}}\n"
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(SpecError) as err:
            parse_yaml(text, "bomb.yaml")
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seconds < 0.5 and peak < 5_000_000, (seconds, peak)
    assert [str(d) for d in err.value.diagnostics] == [
        "bomb.yaml:6:6: x-f: this value expands to 597,871 values through YAML aliases (*name), more than the "
        "100,000 the file may hold; write the values out, or use fewer aliases"]


def test_merge_keys_resolve_each_anchor_once_and_written_keys_override_merged_ones():
    """``<<: [*a x 9]`` nested 8 deep made PyYAML's flatten_mapping copy 9**8 pairs (minutes);
    the result is one small mapping, got at once. A written key overrides a merged one (YAML's
    merge rule), and of several merged mappings the first wins."""
    import time

    from nnopt.core.yaml_source import parse_yaml

    lines = ["x-a: &a {k0: 0, k1: 1}"]
    for before, name in zip("abcdefg", "bcdefgh"):
        lines.append(f"x-{name}: &{name} {{<<: [{', '.join([f'*{before}'] * 9)}]}}")
    lines.append("top: {<<: [*h, {k1: 5, k2: 2}], k0: 9}")
    start = time.perf_counter()
    data = parse_yaml("\n".join(lines) + "\n", "merge.yaml").data
    assert time.perf_counter() - start < 0.5
    assert data["x-h"] == {"k0": 0, "k1": 1}
    assert data["top"] == {"k0": 9, "k1": 1, "k2": 2}


def test_deep_nesting_is_a_located_error_not_a_crash(run_cli, write_pipeline, store):
    """100,000 nested lists crashed the interpreter in libyaml's recursive composer (SIGSEGV)."""
    path = write_pipeline(BASE + "x-deep: " + "[" * 100_000 + "]" * 100_000 + "\n")
    result = run_cli("run", path, "--store", store)
    assert result.returncode == 2, result
    # nnopt's own limit, or PyYAML's (6.0.4 and later stop at a depth of their own first)
    error, summary = result.stderr.splitlines()
    assert error.startswith(f"{path}:16:") and ": <root>: " in error and "nest" in error, result
    assert summary == "1 error; nothing was run"
    assert not store.exists()


def test_a_fifo_as_data_path_is_refused_without_opening_it(run_cli, write_pipeline, tmp_path, store):
    """Reading a FIFO blocks until a writer comes: the run must not hang (timeout: a failure)."""
    import os

    fifo = tmp_path / "data.npz"
    os.mkfifo(fifo)
    path = write_pipeline(edit("{name: synthetic, task: gaussian_mixture, n_train: 128, n_test: 64, dim: 8, batch_size: 32}",
                               f"{{name: npz, path: {fifo}}}"))
    result = run_cli("run", path, "--store", store, timeout=120)
    assert result.returncode == 2, result
    assert f"{path}:2:" in result.stderr and "data.path: not a regular file (a pipe, socket or device)" in result.stderr, result
    assert "Traceback" not in result.stderr and not store.exists()


def test_a_matrix_is_counted_before_it_is_built():
    """10**10 combinations: refused at once, naming the count, before one is built."""
    import time

    from nnopt.core.overrides import MAX_COMBINATIONS, expand_matrix
    from nnopt.core.yaml_source import parse_yaml

    source = parse_yaml(HUGE_MATRIX, "m.yaml")
    start = time.perf_counter()
    combos, problems = expand_matrix(source)
    assert time.perf_counter() - start < 0.5
    assert combos == [] and MAX_COMBINATIONS == 10_000
    assert [(d.location.line, d.path) for d in problems] == [(16, "matrix")]
    assert "10,000,000,000 combinations" in problems[0].message
