"""Frobenius norm estimation: ||H||_F^2 = E||Hz||^2."""

from __future__ import annotations

import math

import pytest
import torch

from landscape.linalg import FrobeniusEstimate, frobenius_norm
from landscape.operators.base import MatrixOperator
from tests.linalg.helpers import assert_same_rng_state, global_rng_state


@pytest.fixture(scope="module")
def dense():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(80, 80, generator=g, dtype=torch.float64)
    H = 0.5 * (A + A.T)
    return MatrixOperator(H), H


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian", "sphere"])
def test_unbiased_within_four_standard_errors(dense, distribution):
    op, H = dense
    est = frobenius_norm(op, num_matvecs=150, seed=1, distribution=distribution)
    exact_sq = float((H * H).sum())
    assert isinstance(est, FrobeniusEstimate) and est.num_matvecs == 150
    assert abs(est.squared - exact_sq) <= 4 * est.squared_stderr
    assert abs(est.value - math.sqrt(exact_sq)) <= 4 * est.stderr


def test_norm_stderr_is_the_delta_method(dense):
    op, _ = dense
    est = frobenius_norm(op, num_matvecs=50, seed=2)
    assert est.value == pytest.approx(math.sqrt(est.squared), rel=1e-15)
    assert est.stderr == pytest.approx(est.squared_stderr / (2 * est.value), rel=1e-15)
    assert est.squared_stderr == pytest.approx(est.samples.std(ddof=1) / math.sqrt(50), rel=1e-12)


def test_exact_for_a_scaled_identity():
    # ||c I z||^2 = c^2 n for every +-1 vector: zero variance.
    est = frobenius_norm(MatrixOperator(3.0 * torch.eye(25, dtype=torch.float64)), num_matvecs=10, seed=0)
    assert est.value == pytest.approx(15.0, rel=1e-14) and est.stderr == pytest.approx(0.0, abs=1e-12)


def test_same_seed_bit_identical_and_global_rng_untouched(dense):
    op, _ = dense
    before = global_rng_state()
    a = frobenius_norm(op, num_matvecs=20, seed=3)
    b = frobenius_norm(op, num_matvecs=20, seed=3)
    assert a.value == b.value and a.stderr == b.stderr
    assert_same_rng_state(before)
