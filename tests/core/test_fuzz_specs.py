"""Fuzzing the pipeline file (hypothesis): every malformed spec is a clean error.

Each generated file starts from a small valid pipeline and is broken on purpose, one to
three ways at once: wrong types, unknown keys, components and stage kinds, dependency
cycles, references to missing stages and unkept steps, huge and negative numbers, bytes
that are not UTF-8, YAML alias bombs, matrices over the combination limit, duplicate keys,
nesting past the limit, and plain garbage. Through ``nnopt validate`` and ``nnopt run``
(in-process, click's CliRunner) each must exit 2 with located messages and no traceback,
within a deadline, with the process's peak memory bounded over the whole run, and
``nnopt run`` must write nothing (the store directory is never created).
"""

from __future__ import annotations

import resource
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnopt.cli import main

EXAMPLES = 520
DEADLINE_S = 10.0  # per call, far above the milliseconds an error takes: a hang or blow-up, not a busy CPU
MEMORY_MB = 600  # growth of the process's peak RSS over all examples

BASE = {
    "name": "fuzz",
    "seed": 0,
    "data": {"name": "synthetic", "task": "gaussian_mixture", "n_train": 32, "n_test": 16, "dim": 4, "batch_size": 16},
    "model": {"arch": {"name": "mlp", "widths": [4]}},
    "loss": "cross_entropy",
    "stages": {
        "train": {"kind": "train", "optimizer": {"name": "sgd", "lr": 0.1}, "steps": 2, "keep": [0]},
        "probe": {"kind": "analyze", "from": "train", "analyzers": [{"name": "grad_norms", "source": "train", "samples": 8}]},
    },
}

junk = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10)
not_a_number = st.one_of(st.sampled_from(["fast", "ten", "", "1e", "NaN-ish"]), st.lists(st.integers(), max_size=2),
                         st.dictionaries(junk, st.integers(), min_size=1, max_size=2))
#: (path, values that are wrong for it): types and ranges
WRONG = [
    (("seed",), st.one_of(not_a_number, st.integers(max_value=-1), st.integers(min_value=2**63, max_value=2**80),
                          st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f != int(f)), st.booleans())),
    (("name",), st.one_of(st.integers(), st.lists(junk, min_size=1, max_size=2), st.just("Not Valid!"), st.just("x" * 65))),
    (("stages",), st.one_of(st.integers(), st.just("train"), st.lists(junk, max_size=2), st.just({}))),
    (("stages", "train", "steps"), st.one_of(not_a_number, st.integers(max_value=0), st.booleans())),
    (("stages", "train", "optimizer", "lr"), st.one_of(not_a_number, st.floats(max_value=0.0, allow_nan=False, allow_infinity=False),
                                                       st.just(float("inf")))),
    (("stages", "train", "keep"), st.one_of(st.just([-1]), st.just("all"), st.lists(st.integers(max_value=-1), min_size=1, max_size=3))),
    (("data", "batch_size"), st.one_of(not_a_number, st.integers(max_value=0), st.integers(min_value=-10**30, max_value=-1))),
    (("data", "n_train"), st.one_of(not_a_number, st.integers(max_value=0))),
    (("model", "arch", "widths"), st.one_of(st.just("wide"), st.lists(st.integers(max_value=0), min_size=1, max_size=3),
                                            st.just([10**7, 10**7, 10**7]))),  # 10^14 weights: more than any memory
    (("model",), st.one_of(st.integers(), st.just("mlp"), st.just({}))),
    (("stages", "probe", "analyzers"), st.one_of(st.just("grad_norms_x"), st.integers(), st.just([{"samples": 3}]))),
    (("matrix",), st.one_of(st.just({"seed": []}), st.just({"seed": 3}), st.just([1, 2]), st.just({"no.such.path": [1, 2]}))),
]


def _set(tree: dict, path: tuple, value) -> None:
    node = tree
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


@st.composite
def wrong_value(draw, tree):
    path, values = draw(st.sampled_from(WRONG))
    _set(tree, path, draw(values))


@st.composite
def unknown_name(draw, tree):
    where = draw(st.sampled_from([("stages", "train", "optimizer", "name"), ("model", "arch", "name"), ("loss",),
                                  ("data", "name"), ("stages", "train", "kind"), ("stages", "probe", "analyzers")]))
    name = "zz" + draw(junk)
    _set(tree, where, [{"name": name}] if where[-1] == "analyzers" else name)


@st.composite
def unknown_key(draw, tree):
    where = draw(st.sampled_from([(), ("stages", "train"), ("stages", "train", "optimizer"), ("model",), ("data",),
                                  ("model", "arch"), ("stages", "probe")]))
    _set(tree, where + ("zz" + draw(junk),), draw(st.one_of(st.integers(), junk, st.none())))


@st.composite
def bad_reference(draw, tree):
    ref = draw(st.one_of(st.just("nosuch"), st.just("probe"), st.just("train@999999"), st.just("train@-1"),
                         st.just("train@abc"), st.just("@0"), junk.map(lambda j: "zz" + j), st.integers()))
    where = draw(st.sampled_from([("stages", "probe", "from"), ("stages", "probe", "analyzers")]))
    _set(tree, where, [{"name": "interpolate", "between": [ref, "train"]}] if where[-1] == "analyzers" else ref)


@st.composite
def cycle(draw, tree):
    n = draw(st.integers(2, 5))
    ids = [f"c{i}" for i in range(n)]
    if not isinstance(tree.get("stages"), dict):
        tree["stages"] = {}
    for i, sid in enumerate(ids):  # c0 <- c1 <- ... <- c(n-1) <- c0
        tree["stages"][sid] = {"kind": "train", "from": ids[(i + 1) % n], "optimizer": "sgd", "steps": 1}


@st.composite
def huge_matrix(draw, tree):
    axes = draw(st.integers(2, 5))
    per_axis = draw(st.integers(int(10_001 ** (1 / axes)) + 1, 120))
    tree["matrix"] = {f"stages.train.{k}": list(range(1, per_axis + 1)) for k in ("steps", "log_every", "eval_every", "seed", "accumulate")[:axes]}


TREE_MUTATIONS = [wrong_value, unknown_name, unknown_key, bad_reference, cycle, huge_matrix]


def alias_bomb(depth: int, fanout: int) -> bytes:
    lines = ["name: bomb", "a0: &a0 [x]"]
    for i in range(1, depth + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fanout) + "]")
    lines.append(f"stages: {{t: {{kind: train, optimizer: sgd, steps: 1, extra: *a{depth}}}}}")
    return ("\n".join(lines) + "\n").encode()


@st.composite
def malformed_file(draw) -> bytes:
    """Bytes of a pipeline file that is wrong in at least one way."""
    kind = draw(st.sampled_from(["tree"] * 6 + ["utf8", "bomb", "duplicate", "nesting", "garbage", "self_alias"]))
    if kind == "tree":
        tree = yaml.safe_load(yaml.safe_dump(BASE))
        for mutation in draw(st.lists(st.sampled_from(TREE_MUTATIONS), min_size=1, max_size=3)):
            draw(mutation(tree))
        return yaml.safe_dump(tree, sort_keys=False).encode()
    text = yaml.safe_dump(BASE, sort_keys=False).encode()
    if kind == "utf8":
        at = draw(st.integers(0, len(text)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xf0\x90\x28\xbc", b"\x80\x80"]))
        return text[:at] + bad + text[at:]
    if kind == "bomb":
        depth, fanout = draw(st.integers(6, 12)), draw(st.integers(8, 12))
        return alias_bomb(depth, fanout)
    if kind == "duplicate":
        key = draw(st.sampled_from([b"seed: 0\n", b"name: fuzz\n", b"loss: cross_entropy\n"]))
        return text + key
    if kind == "nesting":
        depth = draw(st.integers(101, 400))
        return b"name: deep\nstages: {}\nx: " + b"[" * depth + b"]" * depth + b"\n"
    if kind == "self_alias":
        return b"name: loop\nstages: &s {t: *s}\n"
    return draw(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                          st.just(b"name: [unclosed\n"), st.just(b"\t- tab: indented\n"), st.just(b"---\n...\n---\n")))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def test_every_malformed_spec_is_a_clean_error_with_nothing_written(monkeypatch):
    import functools

    from nnopt.core import registry

    # every command reads the metadata of each entry point's distribution again (~0.2 s, the
    # email parser): the same answer each time, remembered here so that the fuzzer's time
    # goes to the pipeline files (reported as an engine slowness of its own)
    original = registry._dist_of
    remembered = functools.lru_cache(maxsize=None)(lambda key, ep: original(ep))
    monkeypatch.setattr(registry, "_dist_of", lambda ep: remembered((ep.group, ep.name, ep.value), ep))
    runner = CliRunner()
    checked = []
    with tempfile.TemporaryDirectory() as tmp:  # the first planning imports torch and the plugins: not the fuzzer's time
        valid = Path(tmp) / "valid.yaml"
        valid.write_text(yaml.safe_dump(BASE))
        assert runner.invoke(main, ["validate", str(valid)], catch_exceptions=False).exit_code == 0
    start_rss = _peak_rss_mb()

    @settings(max_examples=EXAMPLES, deadline=timedelta(seconds=2 * DEADLINE_S), database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(malformed_file(), st.booleans())
    def check(content: bytes, as_json: bool) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path, store = Path(tmp) / "pipeline.yaml", Path(tmp) / "store"
            path.write_bytes(content)
            for args in (["validate", str(path)], ["run", str(path), "--store", str(store), "--no-progress"] + (["--json"] if as_json else [])):
                t0 = time.perf_counter()
                result = runner.invoke(main, args, catch_exceptions=False)
                took = time.perf_counter() - t0
                assert result.exit_code == 2, (args[0], content[:300], result.output[-500:])
                assert "Traceback" not in result.output and "internal error" not in result.output, result.output[-500:]
                assert result.stderr.strip(), "an error says what is wrong"
                assert took < DEADLINE_S, (args[0], took)
            assert not store.exists(), "nothing may be written for an invalid spec"
        checked.append(len(content))

    check()
    assert len(checked) >= 500
    assert _peak_rss_mb() - start_rss < MEMORY_MB
