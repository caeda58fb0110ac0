"""Checks of what ``nnopt new-plugin`` is given: the distribution name and the kinds.

A mistake is a ``ScaffoldError`` (the CLI turns it into a message and exit 2) that says what
is accepted and, where a close spelling exists, "did you mean".
"""

from __future__ import annotations

import keyword
import re

from nnopt.core.errors import did_you_mean
from nnopt.core.registry import KINDS

from .catalog import EXAMPLES

#: a distribution name that is also an importable package once '-' becomes '_': a letter
#: first, lowercase letters, digits, '_' and '-' (PEP 508 allows more; a package does not)
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_MAX_LENGTH = 64


class ScaffoldError(ValueError):
    """A bad name, kind or target directory: nothing was written."""


def package_name(name: str) -> str:
    """The importable package of distribution ``name`` (``my-plugin`` -> ``my_plugin``),
    checked: a clean error for anything that is not a valid name."""
    if not _NAME.match(name):
        raise ScaffoldError(f"'{name}' is not a plugin name: use lowercase letters, digits, '-' and '_', starting with a "
                            "letter (e.g. 'nnopt-myopt')")
    if len(name) > _MAX_LENGTH:
        raise ScaffoldError(f"'{name}' is {len(name)} characters long; a plugin name has at most {_MAX_LENGTH}")
    if name.endswith(("-", "_")) or "--" in name or "__" in name or "-_" in name or "_-" in name:
        raise ScaffoldError(f"'{name}' is not a plugin name: no leading, trailing or doubled '-' / '_'")
    package = name.replace("-", "_")
    if keyword.iskeyword(package) or package == "nnopt":
        raise ScaffoldError(f"'{name}' cannot be a plugin's package name ('{package}' is taken)")
    return package


def check_kinds(kinds: tuple[str, ...] | list[str]) -> list[str]:
    """The requested kinds in catalog order, without repeats; a singular (``optimizer``) or
    an ``nnopt.`` prefix is accepted as ``nnopt list`` accepts them."""
    wanted: set[str] = set()
    for text in kinds:
        kind = text.strip().lower().removeprefix("nnopt.")
        kind = next((c for c in (kind, kind + "s", kind + "es") if c in KINDS), kind)
        if kind not in EXAMPLES:
            close = did_you_mean(kind, list(EXAMPLES))
            hint = f" (did you mean '{close}'?)" if close else ""
            raise ScaffoldError(f"unknown kind '{text}'{hint}; kinds: {', '.join(EXAMPLES)}")
        wanted.add(kind)
    return [k for k in EXAMPLES if k in wanted]
