"""Smoke tests of the two stability experiments (edge_of_stability.py, batch_size_scaling.py).

Each runs in ``--smoke`` mode in a fresh interpreter with its figures written to a temporary folder: exit 0, the PNG
and PDF written, and the same numbers printed by a second run (wall-time figures removed).
"""

from __future__ import annotations

import re

import pytest

from tests.test_experiments_a import run, table_rows

TIMING = re.compile(r"(in )?\(?\d+ s\)?")


@pytest.mark.slow
@pytest.mark.parametrize("script", ["edge_of_stability.py", "batch_size_scaling.py"])
def test_smoke_run_writes_figures_and_is_deterministic(tmp_path, script):
    stem = script.removesuffix(".py")
    first = run(script, "--out", str(tmp_path / "a"))
    for ext in ("png", "pdf"):
        path = tmp_path / "a" / f"{stem}.{ext}"
        assert path.is_file() and path.stat().st_size > 1000, path
    second = run(script, "--out", str(tmp_path / "b"))
    strip = [TIMING.sub("", line) for line in first.splitlines() if "wrote" not in line]
    again = [TIMING.sub("", line) for line in second.splitlines() if "wrote" not in line]
    assert strip == again
    if script == "edge_of_stability.py":
        assert "lambda_max / (2/lr)" in first
    else:
        rows = table_rows(first)
        assert any(r[0].startswith("16") for r in rows) and any("(full)" in r[0] for r in rows)
