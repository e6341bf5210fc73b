"""Power iteration with deflation (top_eigen(method="power")) against dense eigensolvers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from landscape.linalg import ConvergenceWarning, power_iteration, top_eigen
from tests.linalg.helpers import assert_same_rng_state, global_rng_state, operator_with_spectrum

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
    before = global_rng_state()
    a = power_iteration(op, 2, seed=4, max_matvecs=500)
    b = power_iteration(op, 2, seed=4, max_matvecs=500)
    assert np.array_equal(a.values, b.values) and torch.equal(a.vectors, b.vectors)
    assert_same_rng_state(before)
