"""Smoke runs of the experiments that print tables and draw one figure: experiments/generalisation_criteria.py (LLA's
generalisation criteria), experiments/hessian_alignment.py (Hessian alignment) and experiments/roughness_training.py
(roughness index along training).

Each script runs twice with ``--smoke``, each run into its own temporary folder (both runs at once, as subprocesses):
it must exit 0, write its PNG and PDF figures (``NAME.png`` and ``.pdf``, here into ``--out``), print well-formed
markdown tables of numbers, and print the same tables both times (the script is deterministic for a seed).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.experiments.smoke import figures_and_tables, run_twice_at_once, same_tables

NAMES = ["generalisation_criteria", "hessian_alignment", "roughness_training"]


@pytest.fixture(scope="module", params=NAMES)
def name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def runs(name, tmp_path_factory) -> list[tuple[subprocess.CompletedProcess, Path]]:
    return run_twice_at_once(name, [tmp_path_factory.mktemp(f"{name}_{k}") for k in range(2)])


def test_smoke_run_writes_figures_and_tables(name, runs):
    figures_and_tables(name, runs)


def test_smoke_run_is_deterministic(runs):
    same_tables(runs)
