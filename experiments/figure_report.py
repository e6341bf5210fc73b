"""Figure for the README: a full-page screenshot of the ``landscape demo`` report, ``figures/report.png``.

Runs the demo (a small MLP trained on scikit-learn's digits, every analysis, a few seconds to a minute on 2 CPU
cores) into ``--out`` and opens its ``report.html`` in headless Chromium (Debian's ``chromium``, driven by
Playwright) with the network off, as a reader would.

    python experiments/figure_report.py [--out landscape-out/demo] [--png figures/report.png]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from landscape.report import run_demo

FIGURES = 6


def screenshot(html: Path, png: Path, *, width: int = 1400) -> int:
    """Full-page screenshot of ``html`` once every plotly figure has drawn; returns the number of figures."""
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is not on PATH (Debian: apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_context(offline=True, viewport={"width": width, "height": 900}).new_page()
            page.goto(html.resolve().as_uri(), wait_until="load")
            page.wait_for_function(
                "n => [...document.querySelectorAll('.js-plotly-plot')].filter(f => f.querySelector('svg, canvas'))"
                ".length >= n",
                arg=FIGURES,
                timeout=60_000,
            )
            page.wait_for_timeout(500)  # let the WebGL surface finish its first frame
            count = page.locator(".js-plotly-plot").count()
            png.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(png), full_page=True)
        finally:
            browser.close()
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("landscape-out/demo"))
    parser.add_argument("--png", type=Path, default=Path(__file__).resolve().parents[1] / "figures" / "report.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    t0 = time.perf_counter()
    html = run_demo(args.out, seed=args.seed)
    demo_time = time.perf_counter() - t0
    count = screenshot(html, args.png)
    print(f"demo {demo_time:.1f} s; {count} figures rendered; screenshot {args.png}")


if __name__ == "__main__":
    main()
