"""The documentation site (``mkdocs.yml``, ``docs/``): the generated reference is current, the
strict build passes (so a broken link or anchor fails the suite, and so CI), every component
has its section, and the hand-written pages name only real pipelines, components and commands."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from nnopt.cli import main as cli_main
from nnopt.core.docs_reference import write_reference
from nnopt.core.registry import KINDS, Registry

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"
STALE = "the committed docs/reference is stale: run python -m nnopt.core.docs_reference docs/reference"


def _pages(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8") for p in sorted(folder.rglob("*.md"))}


def test_committed_reference_is_what_the_code_generates(tmp_path: Path) -> None:
    written = write_reference(tmp_path / "ref")
    assert written and all(p.is_file() for p in written)
    fresh, committed = _pages(tmp_path / "ref"), _pages(REFERENCE)
    assert sorted(fresh) == sorted(committed), STALE
    for name in fresh:
        assert fresh[name] == committed[name], f"{STALE} ({name} differs)"


def test_generation_is_deterministic(tmp_path: Path) -> None:
    # a second run into the same folder rewrites the same bytes and leaves no stale page
    (tmp_path / "kinds").mkdir()
    (tmp_path / "kinds" / "gone.md").write_text("# a kind no longer registered\n")
    write_reference(tmp_path)
    first = _pages(tmp_path)
    write_reference(tmp_path)
    assert _pages(tmp_path) == first and "kinds/gone.md" not in first


@pytest.mark.xdist_group("docs")
def test_mkdocs_strict_build_passes(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
                           "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "site" / "reference" / "kinds" / "optimizers" / "index.html").is_file()


def test_every_registered_component_has_a_section_on_its_kind_page() -> None:
    registry = Registry()
    for kind in KINDS:
        names = registry.names(kind)
        if not names:
            continue
        page = REFERENCE / "kinds" / f"{kind}.md"
        assert page.is_file(), f"no reference page for kind {kind}: {STALE}"
        headings = set(re.findall(r"^## (\S+)$", page.read_text(encoding="utf-8"), flags=re.M))
        missing = sorted(set(names) - headings)
        assert not missing, f"{kind} without a section in {page.name}: {missing}; {STALE}"


def test_field_map_names_real_pipelines_and_components() -> None:
    text = (DOCS / "field-map.md").read_text(encoding="utf-8")
    paths = set(re.findall(r"pipelines/[\w/.-]+?\.yaml", text))
    assert len(paths) >= 20, "the field map should name the shipped pipelines"
    assert not [p for p in sorted(paths) if not (ROOT / p).is_file()], "field-map.md names missing pipelines"
    # components are written [`NAME`](reference/kinds/KIND.md#ANCHOR)
    links = re.findall(r"\[`([^`]+)`\]\(reference/kinds/(\w+)\.md#[^)]*\)", text)
    assert len(links) >= 50
    registry = Registry()
    unknown = sorted({f"{kind}/{name}" for name, kind in links
                      if kind not in KINDS or name not in registry.names(kind)})
    assert not unknown, f"field-map.md names unregistered components: {unknown}"


def _commands(page: Path) -> list[list[str]]:
    """The ``nnopt ...`` lines of a page's ``sh`` code blocks, split like a shell would."""
    blocks = re.findall(r"```sh\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)
    lines = [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line.split(">", 1)[0]) for line in lines if line.startswith("nnopt ")]


def test_getting_started_commands_are_real() -> None:
    commands = _commands(DOCS / "getting-started.md")
    assert len(commands) >= 8
    for argv in commands:
        sub = cli_main.commands.get(argv[1])
        assert sub is not None, f"no command `nnopt {argv[1]}`"
        options = {opt for param in sub.params for opt in getattr(param, "opts", [])}
        for arg in argv[2:]:
            if arg.startswith("-"):
                assert arg.split("=", 1)[0] in options, f"`nnopt {argv[1]}` has no option {arg}"
            elif arg.startswith("pipelines/"):
                assert (ROOT / arg).is_file(), f"{arg} does not exist"
