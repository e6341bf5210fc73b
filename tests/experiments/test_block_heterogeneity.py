"""Smoke test of experiments/block_heterogeneity.py (Zhang et al.'s block heterogeneity, a CNN and a ViT on digits).

The script runs twice with ``--smoke`` (tiny models, seconds), each run into its own temporary folder (both at once,
as subprocesses): it must exit 0, write its PNG and PDF figures and its JSON into ``--out``, print well-formed
markdown tables of numbers, and print the same tables both times (fixed seeds and product engine).
"""

from __future__ import annotations

import json
import math

import pytest

from tests.experiments.smoke import figures_and_tables, run_twice_at_once, same_tables

NAME = "block_heterogeneity"


@pytest.mark.slow
def test_smoke_run_writes_figures_json_and_the_same_tables_twice(tmp_path):
    pytest.importorskip("transformers")
    runs = run_twice_at_once(NAME, [tmp_path / "a", tmp_path / "b"])
    figures_and_tables(NAME, runs)
    same_tables(runs)
    record = json.loads((tmp_path / "a" / f"{NAME}.json").read_text())
    assert [(r["model"], r["weights"]) for r in record["runs"]] == [
        ("CNN", "initial"),
        ("CNN", "trained"),
        ("ViT", "initial"),
        ("ViT", "trained"),
    ]
    for run in record["runs"]:
        h = run["block_spectra"]["heterogeneity"]
        blocks = len(run["block_spectra"]["names"])
        assert blocks >= 10 and 0 <= h["mean"] <= h["max"] <= 1 and math.isfinite(run["loss"])
        assert run["block_spectra"]["passes"] <= record["config"]["num_steps"] + 1  # one pass per step, all blocks
    assert len(record["comparisons"]) == 8 and all(isinstance(v["agrees"], bool) for v in record["comparisons"])
    assert record["verdict"] in runs[0][0].stdout
