"""``nnopt report``: self-contained HTML (and Markdown) of runs, sweeps and comparisons."""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from nnopt.cli import main

SWEEP = """\
name: tinysweep
seed: 0
data: {name: digits, batch_size: 128}
model:
  arch: {name: mlp, widths: [16], activation: relu}
loss: cross_entropy
stages:
  train:
    kind: train
    optimizer: {name: sgd, lr: 0.1, momentum: 0.9}
    steps: 6
    eval_every: 3
  probe:
    kind: analyze
    from: train
    analyzers: [{name: grad_norms, source: train, samples: 64}]
matrix:
  stages.train.optimizer.lr: [0.05, 0.2]
"""


def nnopt(store: Path, *args: str):
    result = CliRunner().invoke(main, [*args, "--store", str(store)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> tuple[Path, str]:
    """A store holding one two-combination sweep, and the pipeline file's path."""
    root = tmp_path_factory.mktemp("report")
    path = root / "sweep.yaml"
    path.write_text(SWEEP)
    nnopt(root / "store", "run", str(path))
    return root / "store", str(path)


def report(store: Path, *args: str) -> Path:
    return Path(nnopt(store, "report", *args).stdout.strip())


def test_the_html_is_self_contained_and_every_image_is_an_embedded_png(swept):
    store, path = swept
    page = report(store, path).read_text()
    assert not re.search(r"(src|href)\s*=\s*['\"]?\s*(https?:)?//", page), "an external URL"
    images = re.findall(r"<img src='([^']*)'", page)
    assert len(images) >= 5  # two loss plots, two grad-norm plots, the overlay, the metric-vs-lr plots
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Training and test loss against step" in page  # a caption, not a file name
    assert "Test loss against step, one line per run" in page


def test_the_settings_summary_names_optimizer_and_lr_and_results_are_tables(swept):
    store, path = swept
    page = report(store, path).read_text()
    settings = page.split("<h3>settings</h3>", 1)[1].split("</table>", 1)[0]
    assert "<th>optimizer</th>" in settings and "<th>lr</th>" in settings and "<td>sgd</td>" in settings and "<td>0.05</td>" in settings
    results = page.split("<h4>grad_norms</h4>", 1)[1]
    assert results.startswith("<table")
    assert '"total":' not in page and "{&quot;" not in page  # no raw JSON dump
    assert "<svg" in page and "probe" in page.split("<svg", 1)[1].split("</svg>", 1)[0]  # the stage graph


def test_a_sweep_report_has_one_row_per_combination_and_the_sorter(swept):
    store, path = swept
    page = report(store, path).read_text()
    table = page.split("<table class='sortable'>", 1)[1].split("</table>", 1)[0]
    assert table.count("<tr>") == 1 + 2  # header and the two combinations
    assert "0.05" in table and "0.2" in table
    assert "querySelectorAll('table.sortable')" in page and "addEventListener('click'" in page


def test_runs_named_on_the_command_line_are_compared(swept):
    store, _ = swept
    from nnopt.core.store import Store

    ids = [r["run"] for r in Store(store).runs()]
    page = report(store, *ids).read_text()
    assert f"comparison of {len(ids)} runs" in page and all(i in page for i in ids)


def test_format_md_writes_markdown_with_the_pngs_beside_it(swept, tmp_path):
    store, path = swept
    md = report(store, path, "--format", "md", "-o", str(tmp_path / "out" / "report.md"))
    text = md.read_text()
    pngs = sorted(md.parent.glob("*.png"))
    assert md.suffix == ".md" and len(pngs) >= 5
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    for p in pngs:
        assert f"]({p.name})" in text
    assert "| stages.train.optimizer.lr |" in text and "<table" not in text


def test_a_bad_ref_is_a_clean_error(swept):
    store, _ = swept
    result = CliRunner().invoke(main, ["report", "nope-no-such", "--store", str(store)])
    assert result.exit_code == 2 and "Traceback" not in result.output


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
NO_BROWSER = ("no chromium and chromedriver on PATH (Debian's chromium and chromium-driver packages, which .ci/run "
              "installs when it can): the headless-browser check needs both")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven through chromedriver (selenium), with the flags a closed
    network needs (no background connections) and a fresh profile."""
    import tempfile

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="nnopt-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,1600", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None, reason=NO_BROWSER)
def test_in_headless_chromium_every_image_loads_the_sweep_table_sorts_and_the_page_is_not_blank(swept, browser):
    import io

    from PIL import Image, ImageStat
    from selenium.webdriver.common.by import By

    store, path = swept
    browser.get(report(store, path).as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]);")
    assert len(images) >= 5 and all(done and w > 0 and h > 0 for done, w, h in images)
    table = browser.find_element(By.CSS_SELECTOR, "table.sortable")
    headers = table.find_elements(By.CSS_SELECTOR, "thead th")
    column = next(i for i, h in enumerate(headers) if "lr" in h.text)  # the swept value: 0.05 and 0.2

    def values() -> list[float]:
        return [float(r.find_elements(By.CSS_SELECTOR, "td")[column].text)
                for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]

    headers[column].click()
    first = values()
    headers[column].click()
    second = values()
    assert sorted(first) in (first, first[::-1]) and second == first[::-1] and first != second
    shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("L")
    assert shot.size[0] > 0 and ImageStat.Stat(shot).stddev[0] > 5  # text, tables and plots: not one blank colour


def test_per_layer_lists_of_a_result_become_one_table_with_the_names_first():
    from nnopt.core.report_render import by_item

    result = {"layers": ["linear1", "linear2", "output"], "q_hat": [1.0, 0.5, 0.25], "q": [1.0, 0.6, 0.3],
              "total": 3.0, "histogram": [1, 2]}
    shown = by_item(result)
    assert shown["by item"] == {"columns": ["layers", "q_hat", "q"],
                                "rows": [["linear1", 1.0, 1.0], ["linear2", 0.5, 0.6], ["output", 0.25, 0.3]]}
    assert shown["total"] == 3.0 and shown["histogram"] == [1, 2]  # not aligned with the layers: kept as is
    eig = by_item({"eigenvalues": [3.0, 2.0], "residuals": [1e-4, 2e-4]})["by item"]
    assert eig["columns"] == ["#", "eigenvalues", "residuals"] and eig["rows"][1] == [2, 2.0, 2e-4]
    assert by_item({"weights": [1.0, 2.0]}) == {"weights": [1.0, 2.0]}  # one list is not a table
