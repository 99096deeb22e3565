"""report.html in a real browser: Debian's headless chromium, driven over the DevTools protocol,
loads the page from disk with the network switched off, and every plot must have decoded, every
table must be there with the right rows and highlights. The screenshot is left at
`test-artifacts/report.png` (repository root, ignored by git) for a person to look at."""

import pytest
from headless_chromium import HeadlessChromium, chromium_path
from repo_paths import ROOT
from report_run import DOMAINS, MODELS, TABLE_IDS, write_synthetic_run

from polydistill.report import write_report

ARTIFACT = ROOT / "test-artifacts" / "report.png"

IMAGES = """Array.from(document.images).map(i => ({
    src: i.getAttribute("src").slice(0, 22), loaded: i.complete && i.naturalWidth > 0,
    width: i.naturalWidth, height: i.naturalHeight}))"""
TABLES = """Object.fromEntries(Array.from(document.querySelectorAll("table")).map(t => [t.id,
    Array.from(t.rows).map(r => Array.from(r.cells).map(c => [c.textContent.trim(), c.className]))
]))"""
OUTSIDE = """document.querySelectorAll("script, link, iframe, object, embed").length"""
BEST_STYLE = (
    """getComputedStyle(document.querySelector("#accuracy-table td.best")).backgroundColor"""
)


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    if chromium_path() is None:
        pytest.fail(
            "chromium is not installed: `make test` installs it "
            "(scripts/install-test-services.sh; apt-get install chromium)"
        )
    run = write_synthetic_run(tmp_path / "run")
    report = write_report(run)
    with HeadlessChromium(tmp_path / "profile") as browser:
        page = browser.open_page(report.as_uri(), offline=True)
        images = browser.evaluate(page, IMAGES)
        tables = browser.evaluate(page, TABLES)
        outside = browser.evaluate(page, OUTSIDE)
        best_style = browser.evaluate(page, BEST_STYLE)
        screenshot = browser.screenshot(page)
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_bytes(screenshot)
    print(f"screenshot of the report: {ARTIFACT}")

    assert len(images) == 4  # loss, accuracy, contributions, tail
    for image in images:
        assert image["src"] == "data:image/png;base64,"
        assert image["loaded"], image
        assert image["width"] > 300 and image["height"] > 200
    assert outside == 0
    assert set(tables) == TABLE_IDS
    accuracy = tables["accuracy-table"]
    assert [cell[0] for cell in accuracy[0]] == ["model", "params", *DOMAINS, "mean"]
    assert sorted(row[0][0] for row in accuracy[1:]) == sorted(MODELS)
    for column in range(2, 2 + len(DOMAINS) + 1):
        values = [float(row[column][0].rstrip("%")) for row in accuracy[1:]]
        best = [row[column][1] == "best" for row in accuracy[1:]]
        assert best == [v == max(values) for v in values]
    assert best_style not in ("", "rgba(0, 0, 0, 0)")  # the highlight shows
    assert len(tables["training-table"]) == 1 + 3
    assert screenshot.startswith(b"\x89PNG")
