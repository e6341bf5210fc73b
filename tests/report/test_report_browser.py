"""The HTML report opened from disk in headless Chromium with the network off: no console errors, every plotly
figure rendered and inside its card at common window widths; screenshots are kept in ``$LANDSCAPE_ARTIFACTS``
(default: the test's temporary folder)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from landscape.report import collect_provenance

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (Debian: apt-get install chromium)")

EXPECTED_FIGURES = 6  # density (linear, log), 3D surface, contour, interpolation, batch-size scaling


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    from test_report import full_report, tiny_analyses, tiny_problem  # the same tiny problem as the non-browser tests

    problem, initial = tiny_problem()
    results = tiny_analyses(problem, initial)
    path = tmp_path_factory.mktemp("report") / "report.html"
    provenance = collect_provenance(problem, wall_times=results.wall_times)
    full_report(results, provenance, path, title="browser test <report>")
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


WIDTHS = (800, 1100, 1400, 1920)

# Boxes of every figure's card, plot, drawn layers (svg and the 3D view's WebGL canvas) and texts (figure, axis and
# colour-bar titles, legend), in page coordinates.
MEASURE = """() => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const named = e => e.tagName.toLowerCase() + "." + (e.getAttribute("class") || "");
  const said = e => named(e) + " " + JSON.stringify(e.textContent);
  return [...document.querySelectorAll(".js-plotly-plot")].map(plot => ({
    title: (plot.querySelector(".gtitle") || {}).textContent || "untitled",
    card: box(plot.closest(".fig")),
    plot: box(plot),
    layers: [...plot.querySelectorAll("svg.main-svg, canvas")].map(e => [named(e), box(e)]),
    texts: [...plot.querySelectorAll(".g-gtitle, .g-xtitle, .g-ytitle, .cbtitle, .legend")]
      .filter(e => e.getBBox().width > 0)
      .map(e => [said(e), box(e)]),
  }));
}"""

FITS = f"() => ({MEASURE})().every(f => f.layers.every(([_, b]) => b[2] <= f.card[2] + 1 && b[0] >= f.card[0] - 1))"


def _inside(inner, outer, tol: float = 1.0) -> bool:
    return (
        inner[0] >= outer[0] - tol
        and inner[1] >= outer[1] - tol
        and inner[2] <= outer[2] + tol
        and inner[3] <= outer[3] + tol
    )


def _layout_problems(page, width: int) -> list[str]:
    """What sticks out: a plot or its layers out of its card, a title or legend out of its plot, the page wider than
    the window."""
    try:  # the figures redraw at their cards' width once the page has laid them out
        page.wait_for_function(FITS, timeout=10_000)
    except Exception:  # measured below, and the test says which
        pass
    page.wait_for_timeout(300)
    problems = []
    for f in page.evaluate(MEASURE):
        where = f"width {width}, figure {f['title'][:40]!r}"
        if not _inside(f["plot"], f["card"]):
            problems.append(f"{where}: plot {f['plot']} outside its card {f['card']}")
        for name, b in f["layers"]:
            if not _inside(b, f["card"]):
                problems.append(f"{where}: {name} {b} outside its card {f['card']}")
        for name, b in f["texts"]:
            if not _inside(b, f["plot"]):
                problems.append(f"{where}: {name[:80]} {b} clipped by the plot {f['plot']}")
    scroll = page.evaluate("document.documentElement.scrollWidth")
    if scroll > width:
        problems.append(f"width {width}: the page is {scroll} px wide")
    return problems


def test_every_plot_fits_its_card_and_its_titles_fit_the_plot_at_common_widths(report, tmp_path):
    from playwright.sync_api import sync_playwright

    artifacts = Path(os.environ.get("LANDSCAPE_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    counts = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            for width in WIDTHS:
                context = browser.new_context(offline=True, viewport={"width": width, "height": 900})
                page = context.new_page()
                page.goto(report.as_uri(), wait_until="load")
                page.wait_for_function(
                    "n => [...document.querySelectorAll('.js-plotly-plot')].filter(f => f.querySelector('svg')).length"
                    " >= n",
                    arg=EXPECTED_FIGURES,
                    timeout=60_000,
                )
                counts.append(page.locator(".js-plotly-plot").count())
                problems += _layout_problems(page, width)
                page.screenshot(path=str(artifacts / f"report-{width}.png"), full_page=True)
                if width == WIDTHS[-1]:  # the same page, the window made narrow: the figures follow it
                    page.set_viewport_size({"width": WIDTHS[0], "height": 900})
                    problems += [f"after resizing: {p}" for p in _layout_problems(page, WIDTHS[0])]
                context.close()
        finally:
            browser.close()
    assert counts == [EXPECTED_FIGURES] * len(WIDTHS)
    assert not problems, "\n".join(problems)
