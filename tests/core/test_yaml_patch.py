"""A patch edits a pipeline file's TEXT: it means what ``set_path`` means on the data, and keeps
every comment and line it does not touch."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nnopt.core.yaml_patch import DELETE, PatchError, patch_text, set_path, unified_diff

PIPELINES = sorted((Path(__file__).resolve().parents[2] / "pipelines").glob("**/*.yaml"))


def _first_stage_with(data: dict, key: str) -> str | None:
    return next((s for s, v in data["stages"].items() if isinstance(v, dict) and key in v), None)


def _patches(data: dict) -> list[list[tuple[tuple, object]]]:
    """Patches of every kind that make sense for this pipeline: replace a scalar, a mapping, the
    whole model; add a key to a block and a flow mapping; add a nested missing path; extend a
    bare component name; reach into a list of mappings; delete keys."""
    stages = list(data["stages"])
    first, last = stages[0], stages[-1]
    bare = [(("stages", s, k, "nnopt_extra"), 3) for s, v in data["stages"].items() if isinstance(v, dict)
            for k in ("optimizer", "schedule") if isinstance(v.get(k), str)]
    listed = [(("stages", s, k, 0, "every"), 7) for s, v in data["stages"].items() if isinstance(v, dict)
              for k in ("track", "analyzers") if isinstance(v.get(k), list) and v[k] and isinstance(v[k][0], dict)]
    trained = _first_stage_with(data, "optimizer") or first
    return [
        [(("seed",), 123), (("name",), "patched name"), (("data", "batch_size"), 512), (("data", "nnopt_flag"), True)],
        [(("model", "arch"), {"name": "mlp", "widths": [8, 8]}), (("nnopt_top",), {"a": 1})],
        [(("model", "init"), "kaiming_normal"), (("model", "init", "std"), 0.1), *bare],
        [(("stages", trained, "optimizer", "lr"), 0.02), (("stages", first, "nnopt_new", "deep"), [1, 2])],
        [(("stages", trained, "grad_clip"), 1.0), *listed[:1]],
        [(("model",), {"arch": {"name": "mlp", "widths": []}})],
        [(("stages", last), DELETE), (("data", "name"), DELETE), (("loss",), DELETE), (("model", "arch"), DELETE)],
    ]


def _span(text: str, path: tuple) -> range:
    """The lines of ``path``'s key and value as written (empty where it is not written there)."""
    node, key = yaml.compose(text, Loader=yaml.SafeLoader), None
    for part in path:
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            key, node = node.value[part], node.value[part]
        elif isinstance(node, yaml.MappingNode) and any(k.value == part for k, _ in node.value):
            key, node = next((k, v) for k, v in node.value if k.value == part)
        else:
            return range(0)
    first = (key or node).start_mark.line
    while isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and not node.flow_style:
        node = node.value[-1][1] if isinstance(node, yaml.MappingNode) else node.value[-1]
    return range(first, node.end_mark.line + 1)


@pytest.mark.parametrize("pipeline", PIPELINES, ids=lambda p: p.relative_to(p.parents[1]).as_posix())
def test_patched_text_means_set_path_and_keeps_comments(pipeline: Path) -> None:
    text = pipeline.read_text()
    assert PIPELINES and "#" in text
    for patch in _patches(yaml.safe_load(text)):
        out = patch_text(text, patch, pipeline.name)
        expected = yaml.safe_load(text)
        for path, value in patch:
            expected = set_path(expected, path, value)
        assert yaml.safe_load(out) == expected, (patch, out)
        touched = {line for path, _ in patch for line in _span(text, path)}
        kept = [line.strip() for n, line in enumerate(text.splitlines())
                if line.lstrip().startswith("#") and n not in touched]
        assert [c for c in kept if c not in out] == [], patch
        if not any(value is DELETE or isinstance(value, dict) for _, value in patch):
            assert len(out.splitlines()) >= len(text.splitlines())  # nothing but the targets rewritten


def test_set_path_is_pure_and_reads_bare_names_as_components() -> None:
    data = {"model": {"init": "kaiming_normal"}, "stages": {"train": {"track": [{"every": 5}]}}}
    assert set_path(data, ("model", "init", "std"), 0.1)["model"]["init"] == {"name": "kaiming_normal", "std": 0.1}
    assert set_path(data, ("data", "batch_size"), 512)["data"] == {"batch_size": 512}
    assert set_path(data, ("stages", "train", "track", 0, "every"), 9)["stages"]["train"]["track"] == [{"every": 9}]
    assert set_path(data, ("model", "init"), DELETE)["model"] == {}
    assert set_path(data, ("model", "nothing", "here"), DELETE) == data
    assert data == {"model": {"init": "kaiming_normal"}, "stages": {"train": {"track": [{"every": 5}]}}}
    with pytest.raises(PatchError, match=r"stages\.train\.track\[3\]\.every"):
        set_path(data, ("stages", "train", "track", 3, "every"), 1)


DOC = """\
# top comment
model:
  arch: {name: mlp, widths: [64]}  # the network
  init: kaiming_normal

# the training
stages:
  train:
    optimizer:
      name: sgd
      lr: 0.1   # step size
    track:
      - {name: grad_norms, every: 50}
    epochs: 3
# trailing comment
"""


def _lines_changed(before: str, after: str) -> tuple[list[str], list[str]]:
    diff = unified_diff(before, after, "p.yaml").splitlines()[2:]
    return ([d[1:] for d in diff if d.startswith("-")], [d[1:] for d in diff if d.startswith("+")])


@pytest.mark.parametrize("path, value, removed, added", [
    # block mapping: a scalar replaced in place, its comment kept
    (("stages", "train", "optimizer", "lr"), 0.02, ["      lr: 0.1   # step size"], ["      lr: 0.02   # step size"]),
    # flow mapping: a key inserted before the brace
    (("model", "arch", "activation"), "tanh", ["  arch: {name: mlp, widths: [64]}  # the network"],
     ["  arch: {name: mlp, widths: [64], activation: tanh}  # the network"]),
    # block mapping: a new last line, after the last entry and before the trailing comment
    (("stages", "train", "grad_clip"), 1.0, [], ["    grad_clip: 1.0"]),
    # missing intermediate mappings become one nested flow value
    (("stages", "train", "data", "batch_size"), 512, [], ["    data: {batch_size: 512}"]),
    # a bare component name extended into a mapping
    (("model", "init", "std"), 0.1, ["  init: kaiming_normal"], ["  init: {name: kaiming_normal, std: 0.1}"]),
    # a whole block mapping replaced by a flow one
    (("stages", "train", "optimizer"), {"name": "adam", "lr": 0.001},
     ["    optimizer:", "      name: sgd", "      lr: 0.1   # step size"], ["    optimizer: {name: adam, lr: 0.001}"]),
    # a value in a list of mappings
    (("stages", "train", "track", 0, "every"), 10, ["      - {name: grad_norms, every: 50}"],
     ["      - {name: grad_norms, every: 10}"]),
    # delete: a block entry's line, a flow item with its comma
    (("stages", "train", "epochs"), DELETE, ["    epochs: 3"], []),
    (("model", "arch", "name"), DELETE, ["  arch: {name: mlp, widths: [64]}  # the network"],
     ["  arch: {widths: [64]}  # the network"]),
    (("stages", "train", "track", 0, "every"), DELETE, ["      - {name: grad_norms, every: 50}"],
     ["      - {name: grad_norms}"]),
])
def test_hand_written_edits_change_only_their_lines(path, value, removed, added) -> None:
    out = patch_text(DOC, [(path, value)])
    assert _lines_changed(DOC, out) == (removed, added)
    assert yaml.safe_load(out) == set_path(yaml.safe_load(DOC), path, value)


def test_inserted_line_goes_after_the_last_entry_and_before_a_following_comment() -> None:
    out = patch_text(DOC, [(("stages", "train", "grad_clip"), 1.0)])
    assert out.endswith("    epochs: 3\n    grad_clip: 1.0\n# trailing comment\n")
    out = patch_text("a: 1  # one\n# after\nb: {c: 2}\n", [(("d",), "x y")])
    assert out == "a: 1  # one\n# after\nb: {c: 2}\nd: x y\n"


def test_deleting_the_last_entry_leaves_an_empty_mapping() -> None:
    out = patch_text("a:\n  b: 1\nc: {d: 2}\n", [(("a", "b"), DELETE), (("c", "d"), DELETE)])
    assert out == "a: {}\nc: {}\n"


ANCHORS = """\
x-train: &train
  optimizer: {name: adam, lr: 0.001}
  epochs: 60
x-flat: &flat {name: sharpness, epsilon: 0.001}
stages:
  small:
    <<: *train
    from: init
  probe:
    analyzers: [*flat]
"""


def test_aliases_and_merge_keys_are_rewritten_where_used() -> None:
    patch = [(("stages", "small", "optimizer", "lr"), 0.02), (("stages", "probe", "analyzers", 0, "epsilon"), 0.1)]
    out = patch_text(ANCHORS, patch)
    assert "    optimizer: {name: adam, lr: 0.02}\n" in out  # written in the stage itself: overrides <<
    assert "    analyzers: [{name: sharpness, epsilon: 0.1}]\n" in out
    expected = yaml.safe_load(ANCHORS)
    for path, value in patch:
        expected = set_path(expected, path, value)
    assert yaml.safe_load(out) == expected
    with pytest.raises(PatchError, match="x-train"):  # the anchor itself: every alias would change
        patch_text(ANCHORS, [(("x-train", "epochs"), 3)])
    with pytest.raises(PatchError, match=r"stages\.small\.epochs.*merge"):
        patch_text(ANCHORS, [(("stages", "small", "epochs"), DELETE)])


def test_errors_name_the_path() -> None:
    with pytest.raises(PatchError, match=r"stages\.train\.track\[4\]\.every"):
        patch_text(DOC, [(("stages", "train", "track", 4, "every"), 1)])
    with pytest.raises(PatchError, match=r"model\.arch\.widths.*not a valid YAML"):
        patch_text("model: {arch: [\n", [(("model", "arch", "widths"), [8])])
    with pytest.raises(PatchError, match=r"data\.batch_size.*empty"):
        patch_text("# nothing here\n", [(("data", "batch_size"), 8)])
    with pytest.raises(PatchError, match=r"seed\.value"):
        patch_text("seed: 3\n", [(("seed", "value"), 8)])


def test_unified_diff_shows_the_changed_line() -> None:
    after = patch_text(DOC, [(("stages", "train", "epochs"), 5)])
    diff = unified_diff(DOC, after, "p.yaml")
    assert diff.startswith("--- a/p.yaml\n+++ b/p.yaml\n")
    assert "\n-    epochs: 3\n" in diff and "\n+    epochs: 5\n" in diff
    assert unified_diff(DOC, DOC, "p.yaml") == ""
