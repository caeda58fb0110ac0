"""Every claim in ``pipelines/survey/`` holds when its pipeline runs (small, seeded)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

SURVEY = Path(__file__).resolve().parents[2] / "pipelines" / "survey"
sys.path.insert(0, str(SURVEY))
import claims  # noqa: E402

CLAIMS = claims.claims()


def test_every_claim_pipeline_has_its_check_and_every_check_its_pipeline():
    survey = {p.stem for p in SURVEY.glob("*.yaml")}
    assert survey == {c.name for c in CLAIMS if c.folder == SURVEY}
    # the lottery folder may hold plain example pipelines too; every check there has its pipeline
    assert all(c.pipeline.is_file() for c in CLAIMS)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for every claim: two findings of one pipeline (``uses``) run it once."""
    return tmp_path_factory.mktemp("claims") / "store"


def _grouped(claim):
    """Claims reading one pipeline run in one xdist worker (``--dist loadgroup``), which
    computes it once; the others spread over the workers."""
    return pytest.param(claim, marks=pytest.mark.xdist_group(claim.pipeline.stem), id=claim.name)


@pytest.mark.slow
@pytest.mark.parametrize("claim", [_grouped(c) for c in CLAIMS])
def test_the_claim_holds(claim, store):
    finding = claim.run(store)
    assert finding.holds, f"{claim.claim} — measured: {finding.measured}"


@pytest.mark.slow
@pytest.mark.parametrize("claim", [_grouped(c) for c in CLAIMS])
def test_the_report_of_every_claims_pipeline_is_one_self_contained_page_with_its_plots(claim, store):
    """`nnopt report FILE` of each shipped pipeline (its latest run, a sweep's comparison first):
    one page, every image embedded, one image per plot the run's stages wrote."""
    import re

    from nnopt.core.report import write_report
    from nnopt.core.store import Store

    claim.run(store)  # cached when the claim's own test ran in this worker: only the report is new
    page = write_report(Store(store), [str(claim.pipeline)]).read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched from a network
    assert "stage graph" in page and "Traceback" not in page
    plots = {p.name for p in Path(store).rglob("plots/*.png")}
    if plots:
        assert page.count("data:image/png;base64,") >= 1
