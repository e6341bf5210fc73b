"""Smoke test of experiments/batch_size_scaling.py.

The script runs in ``--smoke`` mode in a fresh interpreter with its figures written to a temporary folder: exit 0,
the PNG and PDF written, and the same numbers printed by a second run (wall-time figures removed); its table covers
batch sizes from 16 up to the full batch.
"""

from __future__ import annotations

import pytest

from tests.experiments.smoke import same_output_twice, table_rows


@pytest.mark.slow
def test_smoke_run_writes_figures_and_is_deterministic(tmp_path):
    first = same_output_twice(tmp_path, "batch_size_scaling.py")
    rows = table_rows(first)
    assert any(r[0].startswith("16") for r in rows) and any("(full)" in r[0] for r in rows)
