"""Stochastic Lanczos quadrature within a memory budget: when the probes' bases do not fit, each probe keeps two
vectors (the three-term recurrence). Its Gauss quadrature equals the fully reorthogonalised one (moments, outlier
weights, extreme nodes) on a known spectrum, ghost copies of converged outliers sharing their weight."""

from __future__ import annotations

import numpy as np
import pytest

import landscape as L
from landscape.linalg.lanczos import lanczos
from landscape.memory import MemoryBudgetError
from tests.linalg.helpers import operator_with_spectrum

N = 1500
PROBES = 6


@pytest.fixture(scope="module")
def known():
    rng = np.random.default_rng(0)
    lam = np.concatenate([[50.0, 40.0, 30.0, 20.0, 10.0], rng.normal(0.0, 1.0, N - 5)])
    op, _ = operator_with_spectrum(lam)
    return lam, op


def test_three_term_recurrence_keeps_moments_and_outliers(known):
    lam, op = known
    two_per_probe = 2 * PROBES * N * 8
    full = L.spectral_density(op, num_probes=PROBES, num_steps=120, seed=0)
    lean = L.spectral_density(op, num_probes=PROBES, num_steps=120, seed=0, memory_budget=2 * two_per_probe)
    assert full.settings["reorthogonalisation"] == "full (CGS2)"
    assert lean.settings["reorthogonalisation"].startswith("local: three-term")
    assert lean.settings["basis_bytes"] == two_per_probe < full.settings["basis_bytes"] / 50
    # Ghosts: after 120 steps the top outlier has converged several times over in the unreorthogonalised runs.
    assert np.sum(np.isclose(lean.nodes[0], 50.0, rtol=1e-10)) > 1 == np.sum(np.isclose(full.nodes[0], 50.0))
    # ... but the quadrature is the same: moments (1/P) tr H^j, the weight of each outlier, the extreme nodes.
    np.testing.assert_allclose(lean.moments(8).value, full.moments(8).value, rtol=1e-8)
    for outlier in (50.0, 40.0, 30.0):
        near = [np.sum(d.weights * (np.abs(d.nodes - outlier) < 1.0) * d.mask, axis=1) for d in (full, lean)]
        np.testing.assert_allclose(near[1], near[0], rtol=1e-8)
    assert lean.lambda_max == pytest.approx(50.0, rel=1e-10) and full.lambda_max == pytest.approx(50.0, rel=1e-10)
    # And the density's first moments are unbiased estimates of the true ones (the probes' sampling error only).
    exact = np.array([np.mean(lam**j) for j in (1, 2)])
    est = lean.moments(2)
    assert np.all(np.abs(est.value - exact) <= 4 * est.stderr)


def test_a_stored_basis_that_does_not_fit_is_an_error(known):
    _, op = known
    with pytest.raises(MemoryBudgetError, match=r"needs 246 basis vectors.*allows 12"):
        lanczos(op, 40, num_probes=PROBES, keep_basis=True, memory_budget=24 * N * 8)
    with pytest.raises(MemoryBudgetError, match="three-term recurrence"):
        lanczos(op, 40, num_probes=PROBES, keep_basis=False, restart_on_breakdown=True, memory_budget=24 * N * 8)


def test_spectrum_top_k_within_a_budget_counts_each_eigenvalue_once(known):
    lam, op = known
    budget = 2 * 3 * PROBES * N * 8  # room for the three-term recurrence, not for the bases
    lean = L.spectrum(op, k=5, num_probes=PROBES, num_steps=120, seed=0, memory_budget=budget)
    full = L.spectrum(op, k=5, num_probes=PROBES, num_steps=120, seed=0)
    assert lean.settings["reorthogonalisation"].startswith("local: three-term")
    assert full.settings["reorthogonalisation"] == "full (CGS2)"
    # The raw tridiagonals repeat the converged outliers (the test above); the top-5 names each one once.
    np.testing.assert_allclose(lean.eigenvalues, [50.0, 40.0, 30.0, 20.0, 10.0], rtol=1e-8)
    np.testing.assert_allclose(lean.eigenvalues, full.eigenvalues, rtol=1e-8)
    assert lean.eigen_converged.all()
    np.testing.assert_allclose(lean.trace.value, full.trace.value, rtol=1e-8)


def test_probes_run_in_groups_when_not_all_fit_at_once(known):
    lam, op = known
    budget = 2 * 2 * PROBES * N * 8  # two vectors for every probe, not their bases
    together = lanczos(op, 30, num_probes=PROBES, keep_basis=False, restart_on_breakdown=False, memory_budget=budget)
    grouped = lanczos(
        op, 30, num_probes=PROBES, keep_basis=False, restart_on_breakdown=False, memory_budget=budget, probe_group=2
    )
    assert together.settings["probe_groups"] == 1 and grouped.settings["probe_groups"] == PROBES // 2
    assert grouped.num_matvecs == together.num_matvecs == PROBES * 30
    # The groups draw the same start vectors, one group after another: the same recurrences, to rounding until the
    # unreorthogonalised runs lose orthogonality (then rounding decides where the ghosts appear), and the same
    # quadrature throughout.
    np.testing.assert_allclose(grouped.alphas[:, :10], together.alphas[:, :10], rtol=1e-10)
    from landscape.linalg.slq import SpectralDensity

    moments = [SpectralDensity.from_lanczos(d, N).moments(6).value for d in (grouped, together)]
    np.testing.assert_allclose(moments[0], moments[1], rtol=1e-8)


def test_spectrum_of_a_problem_groups_its_probes_to_fit_the_budget():
    import torch

    from landscape.memory import estimate
    from landscape.models import mlp

    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(256, 32, generator=g), torch.randint(0, 5, (256,), generator=g)
    problem = L.Problem(mlp(32, (128, 128), 5, seed=0), torch.nn.CrossEntropyLoss(), (X, y))
    tight = 20 * problem.num_params * 4  # no room for the bases: the three-term recurrence
    fits = [
        estimate(problem, "spectrum", memory_budget=tight, num_probes=8, num_steps=15, group=m).fits for m in (8, 2)
    ]
    assert fits == [False, True]  # all eight probes at once do not fit, two at a time do
    lean = L.spectrum(problem, k=3, num_probes=8, num_steps=15, memory_budget=tight)
    assert lean.settings["probe_groups"] > 1 and lean.settings["reorthogonalisation"].startswith("local")
    roomy = L.spectrum(problem, k=3, num_probes=8, num_steps=15, memory_budget=8 * 10 * problem.num_params * 4 * 3)
    assert roomy.settings["probe_groups"] == 1
    np.testing.assert_allclose(lean.trace.value, roomy.trace.value, rtol=1e-5)
    np.testing.assert_allclose(lean.eigenvalues, roomy.eigenvalues, rtol=1e-4)


def test_probes_whose_operator_adds_in_place_give_the_same_quadrature(known):
    """Where the operator adds its product into a vector (the Hessian's double backward), the three-term step forms
    ``H q_j - beta_{j-1} q_{j-1}`` in the slot of ``q_{j-1}`` instead of projecting a separate product on both
    vectors: the same recurrence in exact arithmetic, so the same quadrature, ghosts and all."""
    from landscape.linalg.slq import SpectralDensity
    from tests.linalg.test_thick_restart import _AddsInPlace

    _, op = known
    budget = 2 * 2 * PROBES * N * 8
    runs = [
        lanczos(o, 60, num_probes=PROBES, keep_basis=False, restart_on_breakdown=False, memory_budget=budget, seed=1)
        for o in (op, _AddsInPlace(op.matrix))
    ]
    assert runs[0].num_matvecs == runs[1].num_matvecs == PROBES * 60
    np.testing.assert_allclose(runs[1].alphas[:, :10], runs[0].alphas[:, :10], rtol=1e-10)
    np.testing.assert_allclose(runs[1].betas[:, :10], runs[0].betas[:, :10], rtol=1e-10)
    densities = [SpectralDensity.from_lanczos(d, N) for d in runs]
    np.testing.assert_allclose(densities[1].moments(8).value, densities[0].moments(8).value, rtol=1e-8)
    for outlier in (50.0, 40.0, 30.0):
        near = [np.sum(d.weights * (np.abs(d.nodes - outlier) < 1.0) * d.mask, axis=1) for d in densities]
        np.testing.assert_allclose(near[1], near[0], rtol=1e-8)


class _Diagonal(L.CurvatureOperator):
    """``diag(d)``: a product allocates its output block and nothing else (or, adding in place, nothing)."""

    def __init__(self, d, adds_in_place: bool = False):
        super().__init__(d.shape[0], d.dtype, d.device)
        self.d = d
        self.adds = adds_in_place

    @property
    def adds_in_place(self) -> bool:
        return self.adds

    def _matmat(self, V):
        return (V.T * self.d).T  # rows contiguous, like the products of a Problem's operators

    def _add_product(self, v, out) -> bool:
        return self.adds and out.addcmul_(v, self.d) is out


@pytest.mark.parametrize("in_place, vectors", [(False, 3), (True, 2)])
def test_a_three_term_step_holds_the_basis_the_product_and_a_chunk(in_place, vectors):
    """Counted bytes (a tracking allocator): a step of ``p`` three-term recurrences holds their ``2 p`` basis
    vectors, the product's ``p`` (none where the operator adds it in place) and a ``p x COLUMN_CHUNK`` temporary; a
    whole ``(p, n)`` temporary in the reorthogonalisation, the scaling or the start block's normalisation would
    make it ``p`` more."""
    import torch

    from landscape.linalg._common import COLUMN_CHUNK
    from tests.linalg.test_thick_restart import _LiveBytes

    n, p = 4 * COLUMN_CHUNK, 4
    op = _Diagonal(torch.linspace(-1.0, 2.0, n, dtype=torch.float64), in_place)
    vector = n * 8
    with _LiveBytes() as counted:
        dec = lanczos(
            op, 8, num_probes=p, keep_basis=False, restart_on_breakdown=False, memory_budget=40 * vector, seed=0
        )
    assert dec.settings["reorthogonalisation"].startswith("local") and dec.settings["probe_groups"] == 1
    assert counted.peak <= vectors * p * vector + 2 * p * COLUMN_CHUNK * 8, counted.peak / vector
    assert 1.9 < dec.ritz(0)[0].max() <= 2.0 + 1e-12  # a real recurrence: its top Ritz value heads for 2
