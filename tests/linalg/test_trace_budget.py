"""Trace estimation within a memory budget: a sketch that does not fit gives way to Hutchinson in blocks that do,
said in the result; an impossible budget is a clear error."""

from __future__ import annotations

import numpy as np
import pytest

import landscape as L
from landscape.linalg.trace import trace_vectors
from landscape.memory import MemoryBudgetError
from tests.linalg.helpers import operator_with_spectrum

N = 400


def test_a_sketch_that_does_not_fit_becomes_hutchinson_in_blocks_that_do():
    lam = np.concatenate([[40.0, 30.0, 20.0], np.random.default_rng(0).uniform(0.0, 1.0, N - 3)])
    op, _ = operator_with_spectrum(lam)
    vector = N * 8
    budget = 2 * 12 * vector  # 12 vectors for the estimator: a Hutch++ of 60 products needs 140
    assert trace_vectors("hutch++", 60, None) > 12
    lean = L.trace(op, method="hutch++", num_matvecs=60, seed=0, memory_budget=budget)
    assert lean.method == "hutchinson" and lean.num_matvecs == 60
    assert "allows 12: Hutchinson in blocks of 4 probes" in lean.settings["memory"]  # 3 vectors per probe
    assert lean.settings["block_size"] == 4
    # Unbiased: within four standard errors of the exact trace (Hutchinson's variance, not Hutch++'s).
    assert abs(lean.value - lam.sum()) <= 4 * lean.stderr
    full = L.trace(op, method="hutch++", num_matvecs=60, seed=0)
    assert full.method == "hutch++" and "memory" not in full.settings


def test_a_budget_without_room_for_one_probe_names_the_numbers():
    op, _ = operator_with_spectrum(np.linspace(0.0, 1.0, N))
    with pytest.raises(MemoryBudgetError, match=r"at least 2 vectors of 400 parameters.*allows 1"):
        L.trace(op, method="hutchinson", memory_budget=2 * N * 8)


def test_frobenius_blocks_fit_the_budget_at_three_vectors_a_probe():
    lam = np.random.default_rng(1).uniform(-1.0, 2.0, N)
    op, _ = operator_with_spectrum(lam)
    vector = N * 8
    lean = L.frobenius_norm(op, num_matvecs=30, seed=0, memory_budget=2 * 12 * vector)  # 12 vectors: blocks of 4
    wide = L.frobenius_norm(op, num_matvecs=30, seed=0)
    assert lean.settings["block_size"] == 4 and wide.settings["block_size"] == 30
    # The same probes in other blocks: the same samples (each ||H z_j||^2 on its own column) up to rounding.
    np.testing.assert_allclose(lean.samples, wide.samples, rtol=1e-12)
    assert L.frobenius_norm(op, num_matvecs=30, seed=0, block_size=7).settings["block_size"] == 7
