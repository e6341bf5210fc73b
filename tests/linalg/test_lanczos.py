"""The Lanczos decomposition against dense linear algebra: Gauss quadrature, the Lanczos relation, breakdown."""

from __future__ import annotations

import numpy as np
import torch

from landscape.linalg import lanczos, sample_probes, top_eigen
from tests.linalg.helpers import SPECTRUM, assert_same_rng_state, global_rng_state, operator_with_spectrum


def test_lanczos_without_restart_stops_at_the_invariant_subspace():
    op, _ = operator_with_spectrum(np.repeat([-1.0, 0.5, 2.0, 3.0], 25))
    dec = lanczos(op, 20, num_probes=3, seed=0, restart_on_breakdown=False)
    assert dec.steps.tolist() == [4, 4, 4] and dec.num_matvecs == 12
    nodes, weights = dec.quadrature()
    assert nodes.shape == (3, 20) and np.all(weights[:, 4:] == 0)
    np.testing.assert_allclose(nodes[:, :4], np.tile([-1.0, 0.5, 2.0, 3.0], (3, 1)), atol=1e-12)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-14)


def test_gauss_quadrature_is_exact_up_to_degree_2m_minus_1():
    op, H = operator_with_spectrum(SPECTRUM, seed=3)
    m = 8
    V = sample_probes(200, 3, distribution="gaussian", seed=4)
    dec = lanczos(op, m, v0=V)
    nodes, weights = dec.quadrature()
    Hd = H / 10.0  # powers of the scaled matrix keep the numbers O(1)
    for j in range(1, 2 * m + 1):
        exact = torch.einsum("ip,ij,jp->p", V, torch.linalg.matrix_power(Hd, j), V).numpy() / dec.start_norms**2
        gauss = (weights * (nodes / 10.0) ** j).sum(axis=1)
        if j <= 2 * m - 1:
            np.testing.assert_allclose(gauss, exact, rtol=1e-10, atol=1e-13)
        else:
            # Degree 2m is beyond Gauss exactness: the identity must visibly fail (the test can fail).
            assert np.max(np.abs(gauss - exact) / np.abs(exact)) > 1e-6


def test_basis_is_orthonormal_and_satisfies_the_lanczos_relation():
    op, H = operator_with_spectrum(SPECTRUM, seed=5)
    dec = lanczos(op, 40, seed=2)
    Q = dec.basis[0]
    torch.testing.assert_close(Q.T @ Q, torch.eye(40, dtype=torch.float64), atol=1e-12, rtol=0)
    a, b = dec.tridiagonal(0)
    T = np.diag(a) + np.diag(b, 1) + np.diag(b, -1)
    torch.testing.assert_close(Q.T @ H @ Q, torch.as_tensor(T), atol=1e-11, rtol=0)


def test_global_rng_untouched():
    op, _ = operator_with_spectrum(SPECTRUM)
    before = global_rng_state()
    top_eigen(op, 2, seed=1)
    lanczos(op, 10, num_probes=2, seed=1)
    top_eigen(op, 2, seed=torch.Generator().manual_seed(3))
    assert_same_rng_state(before)
