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
