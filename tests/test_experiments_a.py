"""Smoke tests of experiments/hessian_structure.py and experiments/flat_vs_sharp.py.

Each script runs in ``--smoke`` mode as a subprocess (a fresh interpreter, as a user would run it) with its figures
written to a temporary folder: it must exit 0, write the PNG and PDF, and print markdown tables whose numeric cells
parse; a second run with the same seed must print the same numbers. The two older README experiments
(edge_of_stability.py, batch_size_scaling.py) have no smoke mode and are not run here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NUMBER = re.compile(r"-?\d+(\.\d+)?(e[-+]?\d+)?")


def run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / script), "--smoke", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def table_rows(stdout: str) -> list[list[str]]:
    """Body rows of every markdown table in ``stdout`` (header and separator rows dropped), as lists of cells."""
    rows, lines = [], stdout.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("|") or set(line) <= set("|-"):
            continue
        if i + 1 < len(lines) and set(lines[i + 1]) <= set("|-") and lines[i + 1]:
            continue  # header
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def numbers(cell: str) -> list[float]:
    return [float(m.group(0)) for m in NUMBER.finditer(cell)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "stem", "first_numeric", "min_rows"),
    [("hessian_structure.py", "hessian_structure", 0, 2), ("flat_vs_sharp.py", "flat_vs_sharp", 1, 3)],
)
def test_smoke_run_writes_figures_and_parsable_deterministic_tables(tmp_path, script, stem, first_numeric, min_rows):
    out = run(script, "--out", str(tmp_path))
    for ext in ("png", "pdf"):
        path = tmp_path / f"{stem}.{ext}"
        assert path.is_file() and path.stat().st_size > 1000, path
    rows = table_rows(out)
    assert len(rows) >= min_rows, out
    width = {len(r) for r in rows}
    for row in rows:
        skip = first_numeric + (1 if len(row) == max(width) and stem == "flat_vs_sharp" else 0)
        for cell in row[skip:]:
            values = numbers(cell)
            assert values, f"no number in cell {cell!r} of {row}"
            assert all(v == v for v in values)  # not NaN
    # same seed, same numbers (figures skipped the second time to keep the test short)
    again = run(script, "--no-figure", "--out", str(tmp_path / "again"))
    assert table_rows(again) == rows
    assert not (tmp_path / "again").exists()
    if stem == "hessian_structure":
        # in the smoke setting (C = 3, 5 at training loss < 0.5) the gap criterion finds C - 1 outliers
        for row in rows:
            assert int(numbers(row[7])[0]) == int(row[0]) - 1, row
