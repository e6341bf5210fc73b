"""Kuczynski & Wozniakowski's gap-free bound for Lanczos from a random start (``top_eigen(guarantee=)``): the
formula's inverses agree, and an unlucky start that a residual test accepts on the second eigenvalue is caught."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

import landscape as L
from landscape.linalg import random_start as R
from landscape.linalg._common import start_block
from landscape.linalg.probes import make_generator
from tests.linalg.helpers import DiagonalOperator


@pytest.mark.parametrize("n", [1_000, 10**6, 124_439_808])
@pytest.mark.parametrize("eps", [1e-2, 1e-3])
def test_steps_for_is_the_least_step_count_the_bound_allows(n, eps):
    m = R.steps_for(n, eps, 0.99)
    if m == n:  # exhausted: exact
        assert R.error_at(n, m) == 0.0
        return
    assert R.failure_probability(n, m, eps) <= 0.01 < R.failure_probability(n, m - 1, eps)
    assert R.error_at(n, m, 0.99) <= eps < R.error_at(n, m - 1, 0.99)
    # The closed form: 1.648 sqrt(n) exp(-sqrt(eps) (2k - 1)) <= 0.01 with k = m - 1 products counted.
    k = m - 1
    assert 1.648 * math.sqrt(n) * math.exp(-math.sqrt(eps) * (2 * k - 1)) <= 0.01


def test_gpt2_small_needs_230_steps_for_1e_3():
    assert R.steps_for(124_439_808, 1e-3, 0.99) == 230
    assert R.error_at(124_439_808, 32) == pytest.approx(0.0559, rel=1e-3)  # what the stop-17 run's 32 steps bound


def test_an_unlucky_start_passes_the_residual_test_on_the_second_eigenvalue_and_guarantee_catches_it():
    n = 20_000
    lam = np.concatenate([[1.0, 0.99], 0.95 * np.random.default_rng(0).random(n - 2)])
    op = DiagonalOperator(torch.tensor(lam))
    spread = lam.max() - lam.min()
    # The seed whose start vector holds the least of the top eigenvector e_1 (top_eigen's own draw).
    weight = [
        abs(float(v[0] / v.norm()))
        for v in (start_block(op, None, 1, make_generator(s), "gaussian")[:, 0] for s in range(300))
    ]
    seed = int(np.argmin(weight))
    assert weight[seed] * math.sqrt(n) < 0.02  # a 1-in-50 start, not a rigged one
    plain = L.top_eigen(op, vectors=False, tol=1e-3, seed=seed)
    assert plain.converged.all() and (1.0 - plain.values[0]) / spread > 5e-3  # settled on 0.99, residual test passed
    assert plain.settings["random_start"]["error_vs_spread"] > 1e-2  # ... while its steps bound the error at 5%
    sure = L.top_eigen(op, vectors=False, tol=1e-3, seed=seed, guarantee=1e-3)
    need = R.steps_for(n, 1e-3)
    assert sure.num_matvecs >= need and sure.settings["guarantee"] == 1e-3
    assert sure.settings["random_start"]["error_vs_spread"] <= 1e-3
    assert (1.0 - sure.values[0]) / spread <= 1e-3
    with_vector = L.top_eigen(op, tol=1e-3, seed=seed, guarantee=1e-3)  # the vector by a second run
    assert with_vector.values[0] == sure.values[0] and abs(float(with_vector.vectors[0, 0])) > 0.999


def test_guarantee_refuses_what_it_cannot_bound():
    op = DiagonalOperator(torch.linspace(0, 1, 500, dtype=torch.float64))
    with pytest.raises(ValueError, match="k=1"):
        L.top_eigen(op, k=2, guarantee=1e-3)
    with pytest.raises(ValueError, match="v0"):
        L.top_eigen(op, v0=torch.ones(500, dtype=torch.float64), guarantee=1e-3)
    with pytest.raises(ValueError, match="which"):
        L.top_eigen(op, which="LM", guarantee=1e-3)
    with pytest.raises(ValueError, match=r"needs \d+ Lanczos steps on 500 parameters.*max_matvecs=10 allows 10"):
        L.top_eigen(op, max_matvecs=10, guarantee=1e-3)
    with pytest.raises(ValueError, match="power"):
        L.top_eigen(op, method="power", guarantee=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = L.top_eigen(op, which="SA", vectors=False, guarantee=1e-2, seed=0)  # the other end by symmetry
    assert abs(r.values[0]) <= 1e-2


def test_cli_eigen_guarantee(tmp_path):
    from tests.test_memory import _cli

    r = _cli(tmp_path, "eigen", "--top-k", "1", "--guarantee", "0.01", "--max-matvecs", "400", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{") :])
    assert out["random_start"]["error_vs_spread"] <= 0.01 and out["num_matvecs"] >= R.steps_for(out["num_params"], 0.01)
    r = _cli(tmp_path, "eigen", "--top-k", "2", "--guarantee", "0.01")
    assert r.exit_code != 0 and "k=1" in r.output
