"""The HTML report opened from disk in headless Chromium with the network off: no console errors, every plotly
figure rendered; a screenshot is kept in ``$LANDSCAPE_ARTIFACTS`` (default: the test's temporary folder)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from landscape.report import build_report, collect_provenance

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (Debian: apt-get install chromium)")

EXPECTED_FIGURES = 6  # density (linear, log), 3D surface, contour, interpolation, batch-size scaling


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    from test_report import tiny_analyses, tiny_problem  # the same tiny problem as the non-browser tests

    problem, initial = tiny_problem()
    results = tiny_analyses(problem, initial)
    path = tmp_path_factory.mktemp("report") / "report.html"
    build_report(
        path,
        title="browser test <report>",
        spectrum=results.spectrum,
        surface=results.surface,
        interpolation=results.interpolation,
        sharpness=results.sharpness,
        stability=results.stability,
        scaling=results.scaling,
        roughness=results.roughness,
        provenance=collect_provenance(problem, wall_times=results.wall_times),
        notes=results.notes,
    )
    return path


def test_report_renders_offline_without_console_errors(report, tmp_path):
    from playwright.sync_api import sync_playwright

    artifacts = Path(os.environ.get("LANDSCAPE_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context(offline=True, viewport={"width": 1400, "height": 900})
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report.as_uri(), wait_until="load")
            page.wait_for_function(
                "n => document.querySelectorAll('.js-plotly-plot').length >= n", arg=EXPECTED_FIGURES, timeout=60_000
            )
            # Every figure has drawn into an svg or a canvas (3D surfaces use WebGL canvases).
            page.wait_for_function(
                "() => [...document.querySelectorAll('.js-plotly-plot')].every(f => f.querySelector('svg, canvas'))",
                timeout=60_000,
            )
            figures = page.locator(".js-plotly-plot")
            count = figures.count()
            drawn = [figures.nth(i).locator("svg, canvas").count() > 0 for i in range(count)]
            title = page.title()
            page.screenshot(path=str(artifacts / "report.png"), full_page=True)
        finally:
            browser.close()
    assert count == EXPECTED_FIGURES
    assert all(drawn)
    assert errors == []
    assert title == "browser test <report>", "the escaped title reads as the text given"
    assert all(url.startswith("file:") or url.startswith("data:") for url in requests), requests
    assert (artifacts / "report.png").stat().st_size > 10_000
