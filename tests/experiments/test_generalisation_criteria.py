"""Smoke runs of experiments/generalisation_criteria.py (LLA's generalisation criteria).

The script runs twice with ``--smoke``, each into its own temporary folder (both runs at once, as subprocesses): it
must exit 0, write its PNG and PDF figures, print well-formed markdown tables of numbers, and print the same tables
both times (the script is deterministic for a seed).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.experiments.smoke import figures_and_tables, run_twice_at_once, same_tables

NAME = "generalisation_criteria"  # writes figures/generalisation_criteria.png and .pdf (here into --out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[tuple[subprocess.CompletedProcess, Path]]:
    return run_twice_at_once(NAME, [tmp_path_factory.mktemp(f"{NAME}_{k}") for k in range(2)])


def test_smoke_run_writes_figures_and_tables(runs):
    figures_and_tables(NAME, runs)


def test_smoke_run_is_deterministic(runs):
    same_tables(runs)
