"""Suggestions for typos: the candidate one slip away wins over a merely similar one."""

from __future__ import annotations

import pytest

from nnopt.core.errors import _edit_distance, did_you_mean


@pytest.mark.parametrize(("word", "candidates", "expected"), [
    ("adma", ["adam", "adamax", "sgd"], "adam"),         # one swap beats a longer similar name
    ("sdg", ["sgd", "adam"], "sgd"),
    ("lerning_rate", ["learning_rate", "lr"], "learning_rate"),  # one letter dropped
    ("widht", ["width", "widths"], "width"),
    ("adamx", ["adam", "adamax"], "adamax"),             # one letter dropped from adamax; adam is one away too
    ("xyz", ["adam", "sgd"], None),                      # nothing close: no suggestion
])
def test_did_you_mean(word, candidates, expected):
    assert did_you_mean(word, candidates) == expected


@pytest.mark.parametrize(("a", "b", "d"), [("adma", "adam", 1), ("abc", "abc", 0), ("abc", "abd", 1),
                                            ("abc", "ab", 1), ("ab", "ba", 1), ("kitten", "sitting", 3)])
def test_edit_distance_counts_insertions_deletions_substitutions_and_swaps(a, b, d):
    assert _edit_distance(a, b) == d
