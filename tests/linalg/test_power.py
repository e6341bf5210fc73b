"""Power iteration with deflation (top_eigen(method="power")) against dense eigensolvers."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from landscape.linalg import ConvergenceWarning, power_iteration, top_eigen
from landscape.operators.base import MatrixOperator


@pytest.fixture(autouse=True, scope="module")
def _single_blas_thread():
    # The test matrices are tiny: BLAS threads only add spin-wait contention on a shared 2-core runner.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def operator_with_spectrum(lam, seed: int = 0) -> tuple[MatrixOperator, torch.Tensor]:
    lam = torch.as_tensor(lam, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(lam.numel(), lam.numel(), generator=g, dtype=torch.float64))
    H = (Q * lam) @ Q.T
    return MatrixOperator(0.5 * (H + H.T)), 0.5 * (H + H.T)


# Ratios lambda_{i+1} / lambda_i = 0.8 at the top: ~100 iterations per pair for a 1e-9 relative residual.
SPECTRUM = np.concatenate([[-2.0], np.linspace(-1.5, 3.0, 95), [4.096, 5.12, 6.4, 8.0], [10.0]])


def test_power_top3_matches_eigvalsh():
    op, H = operator_with_spectrum(SPECTRUM)
    res = top_eigen(op, 3, method="power", tol=1e-9, max_matvecs=3000)
    ref = torch.linalg.eigvalsh(H).numpy()[::-1][:3]
    assert res.all_converged and res.method == "power"
    # |theta - lambda| <= residual <= tol * ||H|| = 1e-8, and lambda >= 6.4.
    np.testing.assert_allclose(res.values, ref, rtol=2e-9, atol=0)
    true = (H @ res.vectors - res.vectors * torch.as_tensor(res.values)).norm(dim=0).numpy()
    np.testing.assert_allclose(res.residuals, true, rtol=1e-6, atol=1e-14)
    torch.testing.assert_close(res.vectors.T @ res.vectors, torch.eye(3, dtype=torch.float64), atol=1e-8, rtol=0)


def test_power_smallest_via_shift():
    op, H = operator_with_spectrum(SPECTRUM)
    res = power_iteration(op, 1, which="SA", tol=1e-7, max_matvecs=3000)
    assert res.all_converged and res.settings["shift"] == pytest.approx(-10.0, rel=1e-6)
    # Residual r <= 1e-7 * 10 and the gap to the next eigenvalue is 0.5, so |theta - lambda_min| <= r^2/gap + r.
    assert abs(res.values[0] - (-2.0)) <= 1e-6


def test_power_largest_magnitude_can_be_negative():
    op, H = operator_with_spectrum(np.concatenate([[-12.0], SPECTRUM[1:]]))
    res = power_iteration(op, 2, which="LM", tol=1e-9, max_matvecs=2000)
    np.testing.assert_allclose(res.values, [-12.0, 10.0], rtol=1e-8)


def test_power_budget_too_small_warns():
    op, _ = operator_with_spectrum(SPECTRUM)
    with pytest.warns(ConvergenceWarning, match="raise max_matvecs|Raise max_matvecs"):
        res = power_iteration(op, 2, tol=1e-12, max_matvecs=10)
    assert not res.all_converged and res.num_matvecs <= 10


def test_power_warm_start_from_eigenvectors_converges_at_once():
    op, H = operator_with_spectrum(SPECTRUM)
    evecs = torch.linalg.eigh(H).eigenvectors
    res = power_iteration(op, 2, tol=1e-9, v0=evecs[:, [-1, -2]])
    assert res.all_converged and res.num_matvecs == 2


def test_power_is_deterministic_and_leaves_global_rng_alone():
    op, _ = operator_with_spectrum(SPECTRUM)
    before = torch.get_rng_state().clone(), np.random.get_state()[1].copy(), random.getstate()
    a = power_iteration(op, 2, seed=4, max_matvecs=500)
    b = power_iteration(op, 2, seed=4, max_matvecs=500)
    assert np.array_equal(a.values, b.values) and torch.equal(a.vectors, b.vectors)
    assert torch.equal(before[0], torch.get_rng_state())
    assert np.array_equal(before[1], np.random.get_state()[1]) and before[2] == random.getstate()
