"""top_eigen(method="lanczos") against dense eigensolvers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from landscape.linalg import ConvergenceWarning, top_eigen
from landscape.operators.base import MatrixOperator
from tests.linalg.helpers import SPECTRUM, operator_with_spectrum


def reference(H: torch.Tensor, k: int, which: str) -> np.ndarray:
    ev = torch.linalg.eigvalsh(H).numpy()
    if which == "LA":
        return ev[::-1][:k]
    if which == "SA":
        return ev[:k]
    return ev[np.argsort(-np.abs(ev), kind="stable")][:k]


@pytest.mark.parametrize("which", ["LA", "SA", "LM"])
@pytest.mark.parametrize("k", [1, 5])
def test_top_eigen_matches_eigvalsh(which, k):
    op, H = operator_with_spectrum(SPECTRUM)
    res = top_eigen(op, k, which=which, tol=1e-9)
    ref = reference(H, k, which)
    assert res.all_converged and res.method == "lanczos" and res.values.dtype == np.float64
    # |theta - lambda| <= ||H v - theta v|| <= tol * ||H|| = 1e-8 and every wanted |lambda| >= 4.8: < 1e-8 relative.
    np.testing.assert_allclose(res.values, ref, rtol=1e-8, atol=0)
    assert np.all(np.abs(res.values - ref) <= res.error_bounds + 1e-12)
    assert res.vectors.shape == (200, k)
    torch.testing.assert_close(res.vectors.T @ res.vectors, torch.eye(k, dtype=torch.float64), atol=1e-10, rtol=0)


def test_reported_residuals_are_the_true_residuals():
    op, H = operator_with_spectrum(SPECTRUM)
    res = top_eigen(op, 5, tol=1e-3)
    true = (H @ res.vectors - res.vectors * torch.as_tensor(res.values)).norm(dim=0).numpy()
    # beta_m |y_mi| equals ||H Q y - theta Q y|| up to rounding (~eps ||H|| sqrt(m)) while the basis is orthonormal.
    np.testing.assert_allclose(res.residuals, true, rtol=0, atol=1e-11 * 10.0)
    assert np.all(res.residuals <= 1e-3 * 10.0)


def test_warm_start_converges_faster():
    op, H = operator_with_spectrum(SPECTRUM)
    cold = top_eigen(op, 1, tol=1e-9, seed=1)
    g = torch.Generator().manual_seed(9)
    guess = cold.vectors[:, 0] + 1e-4 * torch.randn(200, generator=g, dtype=torch.float64)
    warm = top_eigen(op, 1, tol=1e-9, v0=guess, seed=1)
    assert warm.all_converged and warm.settings["warm_start"]
    np.testing.assert_allclose(warm.values, reference(H, 1, "LA"), rtol=1e-8)
    # Lanczos error falls geometrically, so a guess with residual ~1e-2 saves about a quarter of the steps to 1e-8.
    assert warm.num_matvecs < cold.num_matvecs


def test_invariant_warm_start_still_checks_the_rest_of_the_spectrum():
    # Starting on an eigenvector of 9.0 breaks down at once; the restarted block must still find 10.0 above it.
    op, H = operator_with_spectrum(SPECTRUM)
    evecs = torch.linalg.eigh(H).eigenvectors
    res = top_eigen(op, 1, tol=1e-9, v0=evecs[:, -2])
    assert res.all_converged and res.num_matvecs > 1
    np.testing.assert_allclose(res.values, reference(H, 1, "LA"), rtol=1e-8)


def test_warm_start_from_a_block_of_vectors():
    op, H = operator_with_spectrum(SPECTRUM)
    first = top_eigen(op, 5, tol=1e-4)
    again = top_eigen(op, 5, tol=1e-9, v0=first.vectors)
    np.testing.assert_allclose(again.values, reference(H, 5, "LA"), rtol=1e-8)


def test_small_budget_warns_and_reports_not_converged():
    op, _ = operator_with_spectrum(SPECTRUM)
    with pytest.warns(ConvergenceWarning, match="max_matvecs"):
        res = top_eigen(op, 3, tol=1e-12, max_matvecs=6)
    assert not res.converged.all() and res.num_matvecs == 6
    assert op.num_matvecs == 6


def test_converged_run_emits_no_warning():
    op, _ = operator_with_spectrum(SPECTRUM)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        top_eigen(op, 2, tol=1e-6)


def test_exhausting_the_space_gives_all_eigenvalues_exactly():
    op, H = operator_with_spectrum(np.linspace(-1.0, 3.0, 30) ** 3)
    res = top_eigen(op, 30, tol=1e-12, max_matvecs=30)
    assert res.all_converged and res.num_matvecs == 30
    np.testing.assert_allclose(res.values, reference(H, 30, "LA"), rtol=0, atol=1e-12)


def test_breakdown_restart_finds_repeated_eigenvalues():
    # Four distinct eigenvalues with multiplicity 25: each Krylov space is invariant after 4 steps.
    op, H = operator_with_spectrum(np.repeat([-1.0, 0.5, 2.0, 3.0], 25))
    res = top_eigen(op, 3, tol=1e-10, max_matvecs=60)
    assert res.all_converged and res.num_matvecs == 16  # blocks 2-3 add copies of 3.0, block 4 adds nothing
    np.testing.assert_allclose(res.values, [3.0, 3.0, 3.0], rtol=0, atol=1e-12)
    # The three copies come from different restarted blocks: their vectors are orthonormal eigenvectors.
    torch.testing.assert_close(res.vectors.T @ res.vectors, torch.eye(3, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(H @ res.vectors, 3.0 * res.vectors, atol=1e-10, rtol=0)


def test_same_seed_is_bit_identical():
    op, _ = operator_with_spectrum(SPECTRUM)
    a = top_eigen(op, 3, seed=7)
    b = top_eigen(op, 3, seed=7)
    assert np.array_equal(a.values, b.values) and torch.equal(a.vectors, b.vectors)
    assert a.seed == 7 and a.num_matvecs == b.num_matvecs


def test_results_are_frozen():
    op, _ = operator_with_spectrum(SPECTRUM)
    res = top_eigen(op, 1)
    with pytest.raises(AttributeError):
        res.values = None


def test_bad_arguments_are_rejected():
    op, _ = operator_with_spectrum(SPECTRUM)
    with pytest.raises(ValueError, match="which"):
        top_eigen(op, 1, which="BE")
    with pytest.raises(ValueError, match="k must"):
        top_eigen(op, 0)
    with pytest.raises(ValueError, match="method"):
        top_eigen(op, 1, method="arnoldi")
    with pytest.raises(ValueError, match="v0"):
        top_eigen(op, 1, v0=torch.ones(3, dtype=torch.float64))


def test_float32_operator_keeps_its_dtype():
    op64, H = operator_with_spectrum(SPECTRUM)
    op32 = MatrixOperator(H.float())
    res = top_eigen(op32, 3, tol=1e-4)
    assert res.vectors.dtype == torch.float32 and res.values.dtype == np.float64 and res.all_converged
    # Residual <= 1e-4 ||H|| bounds the eigenvalue error; float32 rounding (~1e-6 ||H||) is far below it.
    np.testing.assert_allclose(res.values, reference(H, 3, "LA"), rtol=1e-4)
