"""The field's claims about trainability, each a small seeded pipeline and a check of its result.

Every claim is two files side by side in this folder: ``NAME.yaml``, the pipeline, and
``NAME.py``, which defines ``CLAIM = Claim(...)``: the claim in one sentence, where the field
makes it, and ``check(result) -> Finding``, which reads the ``nnopt run --json`` object of
that pipeline and says whether the finding holds and what was measured. A claim file starts

    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from claims import Claim, Finding, runs_of

    python pipelines/survey/claims.py                    # run every claim, print the table
    python pipelines/survey/claims.py --table docs/survey.md  # and write it there

The test suite runs every claim (``tests/survey/test_claims.py``) and asserts its finding;
the table in ``docs/survey.md`` is this script's output, so it says what nnopt measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
#: the folders whose NAME.yaml + NAME.py pairs are claims: the survey's, and the lottery
#: ticket, landscape and infinite-width reproductions (their claim files import this module
#: the same way)
FOLDERS = (HERE, HERE.parent / "lottery", HERE.parent / "landscape", HERE.parent / "ntk")
# Claim files import this module as `claims`; run as a script it is `__main__`, and must be
# that same module, or a claim's Claim would be another class than the one checked here.
sys.modules.setdefault("claims", sys.modules[__name__])


@dataclass(frozen=True)
class Finding:
    """What a claim's pipeline showed: whether the claim held, and the numbers, in words."""

    holds: bool
    measured: str


@dataclass(frozen=True)
class Claim:
    """A claim of the field, checkable by running ``pipelines/survey/{name}.yaml``."""

    name: str
    claim: str
    source: str
    check: Callable[[dict[str, Any]], Finding]
    folder: Path = HERE
    #: another claim's pipeline this one reads (two findings of one run), else its own
    uses: str | None = None

    @property
    def pipeline(self) -> Path:
        return self.folder / f"{self.uses or self.name}.yaml"

    def run(self, store: str | Path) -> Finding:
        import nnopt

        result = nnopt.run(self.pipeline, store=store)
        return self.check(result)


def claims(folders: tuple[Path, ...] = FOLDERS) -> list[Claim]:
    """Every claim defined in ``folders``, in file-name order within each."""
    from dataclasses import replace

    found = []
    for folder in folders:
        for path in sorted(folder.glob("*.py")):
            if path.resolve() == Path(__file__).resolve() or path.name.startswith("_"):
                continue
            name = f"nnopt_claims_{folder.name}_{path.stem}"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            assert spec.loader is not None
            sys.modules[name] = module  # dataclasses (and pickling, typing) look modules up by name
            spec.loader.exec_module(module)
            claim = getattr(module, "CLAIM", None)
            if not isinstance(claim, Claim):
                raise TypeError(f"{path} defines no CLAIM = Claim(...)")
            if claim.name != path.stem:
                raise ValueError(f"{path}: CLAIM.name is {claim.name!r}, the file says {path.stem!r}")
            found.append(replace(claim, folder=folder))
    return found


def runs_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs of a result: the matrix's combinations, or the single run."""
    return list(result["runs"]) if "runs" in result else [result]


def table(rows: list[tuple[Claim, Finding]]) -> str:
    """The markdown table: pipeline → claim → what nnopt measured."""
    lines = [
        "| pipeline | claim | source | what nnopt measured | holds |",
        "|---|---|---|---|---|",
    ]
    for claim, finding in rows:
        cells = [f"`pipelines/{claim.folder.name}/{claim.name}.yaml`", claim.claim, claim.source, finding.measured,
                 "yes" if finding.holds else "**no**"]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="store to run in (default: a temporary one)")
    parser.add_argument("--table", type=Path, help="write the markdown table into this file, between its markers")
    parser.add_argument("names", nargs="*", help="only these claims")
    args = parser.parse_args(argv)
    selected = [c for c in claims() if not args.names or c.name in args.names]
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or tmp
        rows = []
        for claim in selected:
            finding = claim.run(store)
            print(f"{'holds' if finding.holds else 'FAILS'}  {claim.name}: {finding.measured}", file=sys.stderr)
            rows.append((claim, finding))
    text = table(rows)
    if args.table is not None:
        write_table(args.table, text)
    else:
        print(text, end="")
    return 0 if all(f.holds for _, f in rows) else 1


BEGIN, END = "<!-- survey-table:begin -->", "<!-- survey-table:end -->"


def write_table(path: Path, text: str) -> None:
    """Replace what is between the markers in ``path`` (the whole file when it has none)."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        new = f"{head}{BEGIN}\n{text}{END}{tail}"
    else:
        new = f"{BEGIN}\n{text}{END}\n"
    path.write_text(new, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
