"""Smoke test of experiments/flat_vs_sharp.py.

The script runs in ``--smoke`` mode as a subprocess (a fresh interpreter, as a user would run it) with its figures
written to a temporary folder: it must exit 0, write the PNG and PDF, and print markdown tables whose numeric cells
parse (the widest rows carry one more label); a second run with the same seed must print the same numbers.
"""

from __future__ import annotations

import pytest

from tests.experiments.smoke import figures_and_deterministic_tables


@pytest.mark.slow
def test_smoke_run_writes_figures_and_parsable_deterministic_tables(tmp_path):
    figures_and_deterministic_tables(
        tmp_path, "flat_vs_sharp.py", first_numeric=1, min_rows=3, label_in_widest_rows=True
    )
