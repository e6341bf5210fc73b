"""Smoke test of experiments/hessian_structure.py.

The script runs in ``--smoke`` mode as a subprocess (a fresh interpreter, as a user would run it) with its figures
written to a temporary folder: it must exit 0, write the PNG and PDF, and print markdown tables whose numeric cells
parse; a second run with the same seed must print the same numbers.
"""

from __future__ import annotations

import pytest

from tests.experiments.smoke import figures_and_deterministic_tables, numbers


@pytest.mark.slow
def test_smoke_run_writes_figures_and_parsable_deterministic_tables(tmp_path):
    rows = figures_and_deterministic_tables(tmp_path, "hessian_structure.py", first_numeric=0, min_rows=2)
    # in the smoke setting (C = 3, 5 at training loss < 0.5) the gap criterion finds C - 1 outliers
    for row in rows:
        assert int(numbers(row[7])[0]) == int(row[0]) - 1, row
