"""Errors the engine reports to people: located spec diagnostics and failed stages.

A ``Diagnostic`` is one problem in a pipeline file, located ``FILE:LINE:COL`` at the YAML node
it concerns, with the dotted path, what was expected and a "did you mean". ``SpecError``
carries every diagnostic found, so a user sees all problems of a file at once.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Iterable


@dataclass(frozen=True)
class Location:
    """Where a value came from: a file position, or a command-line override."""

    source: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        if self.line is None:
            return self.source
        return f"{self.source}:{self.line}:{self.column or 1}"


@dataclass
class Diagnostic:
    location: Location
    path: str
    message: str
    suggestion: str | None = None

    def __str__(self) -> str:
        text = f"{self.location}: {self.path or '<root>'}: {self.message}"
        if self.suggestion:
            text += f" (did you mean '{self.suggestion}'?)"
        return text

    def to_json(self) -> dict:
        return {
            "file": self.location.source,
            "line": self.location.line,
            "column": self.location.column,
            "path": self.path,
            "message": self.message,
            "suggestion": self.suggestion,
        }


class SpecError(Exception):
    """The pipeline file or command line is invalid; nothing was run or written (exit 2)."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics = list(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


@dataclass
class Problems:
    """Collects diagnostics while validation goes on, so all are reported at once."""

    items: list[Diagnostic] = field(default_factory=list)

    def add(self, diagnostic: Diagnostic) -> None:
        if diagnostic not in self.items:
            self.items.append(diagnostic)

    def raise_if_any(self) -> None:
        if self.items:
            raise SpecError(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)


class StageError(Exception):
    """A stage cannot complete for a reason worth a one-line message, not a traceback."""


class PluginError(Exception):
    """A component cannot be loaded: unknown, provided twice, or failing to import."""

    def __init__(self, message: str, suggestion: str | None = None):
        self.message, self.suggestion = message, suggestion
        super().__init__(message + (f" (did you mean '{suggestion}'?)" if suggestion else ""))


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """The closest candidate to ``word`` if one is close enough to be a likely typo.

    Typos are mostly one slip: a letter dropped, added, replaced or two swapped, so the
    candidate fewest such edits away wins (optimal-string-alignment distance, at most a third
    of the word); difflib's similarity breaks ties and answers when no candidate is that close
    (``adma`` is ``adam``, one swap, not ``adamax``, which difflib alone would prefer)."""
    word = str(word)
    pool = sorted(set(map(str, candidates)))
    limit = max(1, len(word) // 3)
    near = [(d, c) for c in pool if (d := _edit_distance(word, c)) <= limit]
    if near:
        best = min(d for d, _ in near)
        tied = [c for d, c in near if d == best]
        return max(tied, key=lambda c: difflib.SequenceMatcher(None, word, c).ratio())
    matches = difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _edit_distance(a: str, b: str) -> int:
    """Insertions, deletions, substitutions and adjacent swaps turning ``a`` into ``b``."""
    if abs(len(a) - len(b)) > max(1, len(a) // 3):
        return len(a) + len(b)  # too far apart to be a typo: skip the table
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[len(b)]
