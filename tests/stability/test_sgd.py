"""The SGD criteria: the exact mean-square criterion against the enumerated second-moment recursion, its monotonicity
in the batch size, the necessary conditions bounding it, and the matrix-free statistics against the dense ones."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from landscape.operators import hessian_dense
from landscape.stability import stability
from tests.stability.helpers import Regression, one_thread, small_mlp  # noqa: F401


def _recursion_growth(q: Regression, lr: float, batch_size: int, steps: int = 3000) -> float:
    """Per-step growth of ||E[d d^T]|| under Sigma <- mean over all B-subsets of (I - lr H_S) Sigma (I - lr H_S)."""
    H_i = [2.0 * torch.outer(x, x).numpy() for x in q.X]
    subsets = list(itertools.combinations(range(len(H_i)), batch_size))
    maps = np.stack([np.eye(q.d) - lr * np.mean([H_i[i] for i in s], axis=0) for s in subsets])
    sigma = np.eye(q.d)
    growth = []
    for _ in range(steps):
        sigma = np.einsum("kab,bc,kdc->ad", maps, sigma, maps) / len(subsets)
        norm = np.linalg.norm(sigma)
        sigma /= norm
        growth.append(norm)
    return float(np.mean(growth[-50:]))


def test_exact_sgd_criterion_matches_the_enumerated_second_moment_recursion():
    q = Regression(n=6, scales=(2.0, 1.0, 0.6))
    B = 2
    report = stability(q.problem(), "sgd", 0.05, batch_size=B)
    crit = report["mean-square SGD (exact)"]
    assert crit.kind == "exact" and report.max_stable_lr_is_exact
    lr_star = crit.max_stable_lr
    assert report.max_stable_lr == pytest.approx(lr_star, rel=1e-12)
    for factor in (0.5, 0.99, 1.01, 1.3):
        lr = factor * lr_star
        at = stability(q.problem(), "sgd", lr, batch_size=B)["mean-square SGD (exact)"]
        growth = _recursion_growth(q, lr, B)
        assert at.details["spectral_radius"] == pytest.approx(growth, rel=1e-8)
        assert at.stable == (growth < 1.0) == (factor < 1)


def test_sgd_critical_lr_is_non_decreasing_in_batch_size_and_reaches_gd():
    q = Regression(n=6, scales=(2.0, 1.0, 0.6))
    lrs = [stability(q.problem(), "sgd", 0.01, batch_size=b).max_stable_lr for b in range(1, 7)]
    assert all(a <= b * (1 + 1e-10) for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] == pytest.approx(2 / q.lam, rel=1e-8)
    assert lrs[0] < 0.9 * lrs[-1]


def test_sgd_necessary_conditions_bound_the_exact_threshold():
    q = Regression(n=8, scales=(2.0, 1.0, 0.6, 0.3))
    report = stability(q.problem(), "sgd", 0.05, batch_size=3)
    exact = report["mean-square SGD (exact)"].max_stable_lr
    for c in report.criteria:
        if c.kind == "necessary":
            assert c.max_stable_lr >= exact * (1 - 1e-10), c.name


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matrix_free_sgd_statistics_equal_the_dense_ones(reduction):
    problem = small_mlp(reduction)
    dense = stability(problem, "sgd", 0.01, batch_size=4, exact=True)
    free = stability(problem, "sgd", 0.01, batch_size=4, exact=False, num_probes=problem.num_params)
    assert "mean-square SGD (exact)" in dense.names and "mean-square SGD (exact)" not in free.names
    for c in free.criteria:
        assert c.value == pytest.approx(dense[c.name].value, rel=1e-7, abs=1e-9), c.name
    lam = float(torch.linalg.eigvalsh(hessian_dense(problem))[-1])
    assert dense["mean (gradient descent): lambda_max(H) < 2/lr"].value == pytest.approx(lam, rel=1e-8)


def test_hutchinson_statistics_carry_standard_errors():
    problem = small_mlp()
    free = stability(problem, "sgd", 0.01, batch_size=4, exact=False, num_probes=4)
    details = free["Frobenius (M&M Prop. 3)"].details
    assert details["probes"] == "4 Rademacher" and details["trace_stderr"] > 0
    dense = stability(problem, "sgd", 0.01, batch_size=4, exact=True)
    assert free["Frobenius (M&M Prop. 3)"].details["trace"] == pytest.approx(
        dense["Frobenius (M&M Prop. 3)"].details["trace"], abs=6 * details["trace_stderr"]
    )
