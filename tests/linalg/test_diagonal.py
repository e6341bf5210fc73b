"""Diagonal estimation (Bekas, Kokiopoulou, Saad 2007) and its deflated diag++ variant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landscape.linalg import diagonal
from landscape.operators.base import MatrixOperator
from tests.linalg.helpers import assert_same_rng_state, global_rng_state, operator_with_spectrum


@pytest.fixture(scope="module")
def dense():
    g = torch.Generator().manual_seed(0)
    return operator_with_spectrum(torch.randn(40, generator=g, dtype=torch.float64), seed=1)


def test_exact_for_a_diagonal_matrix_with_rademacher_probes():
    d = torch.linspace(-3, 5, 30, dtype=torch.float64)
    est = diagonal(MatrixOperator(torch.diag(d)), num_matvecs=12, seed=2)
    # z * (D z) = d * z^2 = d exactly for z = +-1 (diag++ is not: H (I - QQ^T) is no longer diagonal).
    torch.testing.assert_close(est.value, d, atol=1e-12, rtol=0)
    assert float(est.stderr.max()) <= 1e-12


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_unbiased_within_four_standard_errors(dense, distribution):
    op, H = dense
    est = diagonal(op, num_matvecs=600, seed=3, distribution=distribution)
    assert est.value.shape == (40,) and est.stderr.shape == (40,) and est.num_matvecs == 600
    z = (est.value - torch.diagonal(H)) / est.stderr
    # 40 entries at 4 standard errors: a false alarm has probability ~40 * 6e-5.
    assert float(z.abs().max()) <= 4.0


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_diagpp_unbiased_within_five_standard_errors(distribution):
    # diag++ with m = 150 sketches 50 directions of a 120-dimensional H and estimates the rest from 50 probes: its
    # stderr rests on 50 samples (t tails, ratio estimator), so 5 standard errors over 120 entries (~1e-3 alarm).
    g = torch.Generator().manual_seed(7)
    op, H = operator_with_spectrum(torch.randn(120, generator=g, dtype=torch.float64), seed=8)
    est = diagonal(op, num_matvecs=150, seed=3, method="diag++", distribution=distribution)
    assert est.num_matvecs == 150 and est.settings["sketch_size"] == 50
    z = (est.value - torch.diagonal(H)) / est.stderr
    assert float(z.abs().max()) <= 5.0


def test_rademacher_stderr_matches_theory(dense):
    # For Rademacher probes Var(z_i (Hz)_i) = sum_{k != i} H_ik^2, so stderr ~ sqrt(that / s) within ~10% at s=600.
    op, H = dense
    est = diagonal(op, num_matvecs=600, seed=4)
    theory = torch.sqrt(((H * H).sum(dim=1) - torch.diagonal(H) ** 2) / 600)
    torch.testing.assert_close(est.stderr, theory, rtol=0.15, atol=0)


def test_diagpp_is_exact_for_low_rank():
    lam = np.zeros(60)
    lam[:4] = [4.0, -2.0, 1.0, 0.5]
    op, H = operator_with_spectrum(lam, seed=5)
    est = diagonal(op, num_matvecs=18, seed=0, method="diag++")  # sketch of 6 >= rank 4
    torch.testing.assert_close(est.value, torch.diagonal(H), atol=1e-12, rtol=0)


def test_blocking_does_not_change_the_estimate(dense):
    op, _ = dense
    a = diagonal(op, num_matvecs=90, seed=6)
    b = diagonal(op, num_matvecs=90, seed=6, block_size=13)
    torch.testing.assert_close(a.value, b.value, atol=1e-12, rtol=0)
    torch.testing.assert_close(a.stderr, b.stderr, atol=1e-12, rtol=1e-9)


def test_same_seed_bit_identical_and_global_rng_untouched(dense):
    op, _ = dense
    before = global_rng_state()
    a = diagonal(op, num_matvecs=30, seed=9, method="diag++")
    b = diagonal(op, num_matvecs=30, seed=9, method="diag++")
    assert torch.equal(a.value, b.value) and torch.equal(a.stderr, b.stderr)
    assert_same_rng_state(before)


@pytest.mark.parametrize(
    "kwargs, match", [({"method": "exact"}, "method"), ({"num_matvecs": 2, "method": "diag++"}, "num_matvecs")]
)
def test_bad_arguments_are_rejected(dense, kwargs, match):
    op, _ = dense
    with pytest.raises(ValueError, match=match):
        diagonal(op, **kwargs)
