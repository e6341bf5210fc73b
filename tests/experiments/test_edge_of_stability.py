"""Smoke test of experiments/edge_of_stability.py.

The script runs in ``--smoke`` mode in a fresh interpreter with its figures written to a temporary folder: exit 0,
the PNG and PDF written, and the same numbers printed by a second run (wall-time figures removed).
"""

from __future__ import annotations

import pytest

from tests.experiments.smoke import same_output_twice


@pytest.mark.slow
def test_smoke_run_writes_figures_and_is_deterministic(tmp_path):
    first = same_output_twice(tmp_path, "edge_of_stability.py")
    assert "lambda_max / (2/lr)" in first
