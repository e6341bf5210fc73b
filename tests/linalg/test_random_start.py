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


@pytest.mark.parametrize(("theta", "spread"), [(1.0, 2.0), (485.35, 946.0), (3.0, 1.0), (-2.0, 5.0)])
@pytest.mark.parametrize("eps", [1e-2, 1e-3])
def test_relative_steps_for_is_the_least_step_count_the_relative_bound_allows(theta, spread, eps):
    n = 10**6
    m = R.relative_steps_for(n, eps, theta, spread)
    assert R.relative_error_at(n, m, theta, spread) <= eps < R.relative_error_at(n, m - 1, theta, spread)
    # Each end at confidence 0.995, the spread inflated by 1 / (1 - 2 e): never fewer steps than the spread's bound
    # at the same fraction, c = eps |theta| / spread.
    assert m >= R.steps_for(n, min(eps * abs(theta) / spread, 0.5))
    assert R.relative_steps_for(n, eps, 0.0, spread) == n  # no relative error can be certified at zero


def _two_sided(n: int) -> DiagonalOperator:
    """Top 1.0 and 0.99 over a bulk in [-1, 0.95): the spread is twice the top eigenvalue."""
    lam = np.concatenate([[1.0, 0.99, -1.0], -1.0 + 1.95 * np.random.default_rng(1).random(n - 3)])
    return DiagonalOperator(torch.tensor(lam))


def test_a_guarantee_relative_to_the_eigenvalue_runs_until_the_ritz_values_bound_it():
    n = 20_000
    op = _two_sided(n)
    of_spread = L.top_eigen(op, vectors=False, tol=1e-3, seed=0, guarantee=1e-3)
    of_value = L.top_eigen(op, vectors=False, tol=1e-3, seed=0, guarantee=1e-3, guarantee_scale="eigenvalue")
    bound = of_value.settings["random_start"]
    assert of_value.settings["guarantee_scale"] == "eigenvalue" and of_value.converged.all()
    assert bound["error_vs_eigenvalue"] <= 1e-3 and abs(1.0 - of_value.values[0]) <= 1e-3
    # The spread is twice the eigenvalue: 1e-3 of it is 5e-4 of the spread, which needs more steps than 1e-3 of the
    # spread; the spread's run guarantees only about 2e-3 of the eigenvalue.
    assert of_value.num_matvecs > of_spread.num_matvecs
    assert of_spread.settings["random_start"]["error_vs_eigenvalue"] > 1e-3
    # It stops at the first step whose Ritz values certify it (checks are scheduled at the step they ask for).
    theta = of_value.values[0]
    spread = theta - (-1.0)  # the bottom Ritz value has converged to -1 long before
    assert of_value.num_steps == pytest.approx(R.relative_steps_for(n, 1e-3, theta, spread), abs=1)


def test_a_guarantee_relative_to_a_positive_spectrums_eigenvalue_needs_fewer_steps_than_the_spread_bound():
    n = 20_000
    op = DiagonalOperator(torch.tensor(np.concatenate([[1.0], 0.5 + 0.49 * np.random.default_rng(2).random(n - 1)])))
    fewer = R.steps_for(n, 1e-3) - 1
    r = L.top_eigen(op, vectors=False, seed=0, guarantee=1e-3, guarantee_scale="eigenvalue", max_matvecs=fewer)
    assert r.converged.all() and r.num_matvecs <= fewer  # max_matvecs below the spread's steps is no error here
    assert r.settings["random_start"]["error_vs_eigenvalue"] <= 1e-3 and abs(1.0 - r.values[0]) <= 1e-3


def test_a_relative_guarantee_the_budget_cannot_reach_is_flagged_not_claimed():
    n = 20_000
    op = _two_sided(n)
    with pytest.warns(L.ConvergenceWarning):
        r = L.top_eigen(op, vectors=False, seed=0, guarantee=1e-4, guarantee_scale="eigenvalue", max_matvecs=200)
    assert not r.converged.any() and r.num_matvecs == 200
    assert r.settings["random_start"]["error_vs_eigenvalue"] > 1e-4
    with pytest.raises(ValueError, match="guarantee_scale must be 'spread' or 'eigenvalue'"):
        L.top_eigen(op, guarantee=1e-3, guarantee_scale="value")


def test_cli_eigen_guarantee_relative_to_the_eigenvalue(tmp_path):
    from tests.test_memory import _cli

    args = ("eigen", "--top-k", "1", "--guarantee", "0.01", "--max-matvecs", "2000", "--json")
    r = _cli(tmp_path, *args, "--guarantee-scale", "eigenvalue")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{") :])
    assert out["random_start"]["error_vs_eigenvalue"] <= 0.01
