"""Properties of the engine's pure parts, checked over generated inputs (hypothesis)."""

from __future__ import annotations

import random

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from nnopt.core.keys import digest
from nnopt.core.overrides import Override, apply, split_path
from nnopt.core.errors import Location
from nnopt.core.yaml_source import dotted, parse_value, parse_yaml

keys = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
scalars = st.one_of(st.integers(-10**6, 10**6), st.booleans(), st.none(),
                    st.floats(allow_nan=False, allow_infinity=False, width=32),
                    st.text(alphabet="abcdefghij -_", max_size=10))
trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)), max_leaves=20)


def shuffled(value):
    if isinstance(value, dict):
        items = list(value.items())
        random.Random(len(items)).shuffle(items)
        return {k: shuffled(v) for k, v in items}
    if isinstance(value, list):
        return [shuffled(v) for v in value]
    return value


@given(st.dictionaries(keys, trees, max_size=6))
def test_a_key_does_not_depend_on_mapping_order(tree):
    assert digest(tree) == digest(shuffled(tree))


@settings(max_examples=200)
@given(st.dictionaries(keys, trees, min_size=1, max_size=6))
def test_the_positioned_loader_reads_what_safe_load_reads(tree):
    text = yaml.safe_dump(tree, sort_keys=False)
    source = parse_yaml(text, "t.yaml")
    assert source.data == yaml.safe_load(text)
    for key in tree:  # every top-level key has a position, on the line where it is written
        loc = source.keys[(key,)]
        written = text.splitlines()[loc.line - 1][loc.column - 1:]
        assert written.startswith(key) or written.startswith("'" + key + "'")  # YAML quotes keys such as null


@given(trees)
def test_a_set_value_round_trips_through_yaml(value):
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    if text.endswith("..."):  # a bare scalar document
        text = text[:-3].strip()
    assert parse_value(text) == value


@given(st.floats(min_value=1e-30, max_value=1e30, allow_nan=False), st.sampled_from(["e", "E"]))
def test_exponent_floats_without_a_dot_are_floats(x, e):
    mantissa, _, exponent = f"{x:.3e}".partition("e")
    text = f"{mantissa.replace('.', '')[:1]}{e}{int(exponent)}"
    assert isinstance(parse_value(text), float)


@given(st.lists(keys, min_size=1, max_size=4), scalars)
def test_an_override_sets_exactly_its_path(path, value):
    source = parse_yaml("{}\n", "t.yaml")
    assert apply(source, Override(tuple(path), value, Location("--set"), "x")) == []
    node = source.data
    for part in path:
        node = node[part]
    assert node == value
    assert split_path(".".join(path)) == tuple(path)
    assert dotted(tuple(path)) == ".".join(path)
