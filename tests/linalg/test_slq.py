"""Stochastic Lanczos quadrature: Gauss exactness, density normalisation, moments, breakdown, LLA criteria."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch

from landscape.linalg import SpectralDensity, lanczos, sample_probes, spectral_density
from tests.linalg.helpers import assert_same_rng_state, global_rng_state, operator_with_spectrum

matplotlib.use("Agg")


# A Hessian-like spectrum: a bulk near zero with some negative curvature and a few outliers.
LAM = np.concatenate([np.linspace(-0.5, 1.0, 290), [-1.5], [3.0, 5.0, 8.0, 12.0, 20.0, 30.0, 45.0, 60.0, 80.0]])


@pytest.fixture(scope="module")
def hessian_like():
    return operator_with_spectrum(LAM, seed=1)


def test_shapes_provenance_and_weights(hessian_like):
    op, _ = hessian_like
    dens = spectral_density(op, num_probes=6, num_steps=25, seed=3)
    assert dens.nodes.shape == (6, 25) and dens.weights.shape == (6, 25)
    assert dens.nodes.dtype == np.float64 and dens.num_params == 300
    assert dens.num_matvecs == 150 and dens.seed == 3 and dens.steps.tolist() == [25] * 6
    np.testing.assert_allclose(dens.weights.sum(axis=1), 1.0, atol=1e-13)
    assert np.all(dens.weights >= 0)
    # Ritz values interlace the spectrum, so they stay inside [lambda_min, lambda_max].
    assert dens.nodes.min() >= LAM.min() - 1e-10 and dens.nodes.max() <= LAM.max() + 1e-10


def test_quadrature_is_exact_to_degree_2m_minus_1_per_probe(hessian_like):
    op, H = hessian_like
    m = 10
    V = sample_probes(300, 4, seed=5, normalize=True)
    dens = SpectralDensity.from_lanczos(lanczos(op, m, v0=V, restart_on_breakdown=False), 300)
    Hs = H / 80.0  # scaled so that high powers stay O(1)
    P = torch.eye(300, dtype=torch.float64)
    for j in range(1, 2 * m):
        P = P @ Hs
        exact = torch.einsum("ip,ij,jp->p", V, P, V).numpy()
        gauss = (dens.weights * (dens.nodes / 80.0) ** j).sum(axis=1)
        np.testing.assert_allclose(gauss, exact, rtol=1e-10, atol=1e-14)


def test_spectral_density_equals_lanczos_on_its_probes(hessian_like):
    op, _ = hessian_like
    dens = spectral_density(op, num_probes=3, num_steps=12, seed=9)
    V = sample_probes(300, 3, seed=9, normalize=True)
    ref = SpectralDensity.from_lanczos(lanczos(op, 12, v0=V, restart_on_breakdown=False), 300)
    np.testing.assert_allclose(dens.nodes, ref.nodes, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dens.weights, ref.weights, rtol=0, atol=1e-12)


def test_density_integrates_to_one_and_records_sigma(hessian_like):
    op, _ = hessian_like
    dens = spectral_density(op, num_probes=5, num_steps=30, seed=0)
    assert dens.sigma == pytest.approx((dens.lambda_max - dens.lambda_min) / 30)
    assert dens.settings["sigma_derived"]
    for sigma in (None, 0.05):
        s = dens.sigma if sigma is None else sigma
        grid = np.arange(dens.lambda_min - 12 * s, dens.lambda_max + 12 * s, s / 8)
        # Trapezoid on Gaussians with spacing sigma/8 is accurate far below 1e-8; the tails beyond 12 sigma are 0.
        assert np.trapezoid(dens.density(grid, sigma), grid) == pytest.approx(1.0, abs=1e-8)
    explicit = spectral_density(op, num_probes=2, num_steps=10, seed=0, sigma=0.3)
    assert explicit.sigma == 0.3 and not explicit.settings["sigma_derived"]


def test_trace_and_moments_agree_with_exact_within_four_stderr(hessian_like):
    op, H = hessian_like
    dens = spectral_density(op, num_probes=30, num_steps=20, seed=2)
    mom = dens.moments(3)
    exact = np.array([np.sum(LAM**j) / 300 for j in (1, 2, 3)])
    assert mom.value.shape == (3,) and mom.samples.shape == (30, 3)
    assert np.all(np.abs(mom.value - exact) <= 4 * mom.stderr)
    tr = dens.trace()
    assert abs(tr.value - float(torch.trace(H))) <= 4 * tr.stderr
    assert tr.value == pytest.approx(300 * mom.value[0], rel=1e-14)


def test_breakdown_pads_with_zero_weights_and_stays_exact():
    lam = np.repeat([-1.0, 0.5, 2.0, 3.0], 25)
    op, _ = operator_with_spectrum(lam, seed=2)
    dens = spectral_density(op, num_probes=3, num_steps=10, seed=1)
    assert dens.steps.tolist() == [4, 4, 4] and dens.num_matvecs == 12
    assert dens.nodes.shape == (3, 10) and np.all(dens.weights[:, 4:] == 0)
    np.testing.assert_allclose(dens.nodes[:, :4], np.tile([-1.0, 0.5, 2.0, 3.0], (3, 1)), atol=1e-12)
    # The Krylov space is invariant: the rule is exact for every degree, so moments only carry probe noise.
    mom = dens.moments(6)
    exact = np.array([np.mean(lam**j) for j in range(1, 7)])
    assert np.all(np.abs(mom.value - exact) <= 4 * mom.stderr)
    assert dens.lla_criteria().re == pytest.approx(1 / 3, rel=1e-12)


def test_full_krylov_recovers_the_spectrum_and_re():
    lam = np.linspace(-2.0, 6.0, 40)
    op, _ = operator_with_spectrum(lam, seed=4)
    dens = spectral_density(op, num_probes=2, num_steps=40, seed=0)
    for row in dens.nodes:
        np.testing.assert_allclose(np.sort(row), lam, atol=1e-10)
    crit = dens.lla_criteria()
    assert crit.re == pytest.approx(2.0 / 6.0, rel=1e-10)
    assert crit.lambda_min == pytest.approx(-2.0, abs=1e-10) and crit.lambda_max == pytest.approx(6.0, abs=1e-10)


def test_lla_criteria_formula_on_known_nodes_and_weights():
    nodes = np.array([[-2.0, -1.0, 1.0, 4.0], [-0.5, 0.5, 2.0, 3.0]])
    weights = np.array([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
    dens = SpectralDensity(
        nodes=nodes,
        weights=weights,
        num_params=4,
        sigma=0.1,
        steps=np.array([4, 4]),
        num_matvecs=8,
        seed=0,
        wall_time=0.0,
    )
    for n in (0.5, 1.0):
        neg = (0.2**n + 0.2**n) + 0.125**n
        pos = (0.3**n + 1.6**n) + (0.125**n + 0.5**n + 0.75**n)
        crit = dens.lla_criteria(n)
        assert crit.kh == pytest.approx(neg / pos, rel=1e-14) and crit.n == n
    assert dens.lla_criteria().re == pytest.approx(0.5)


def test_lla_kh_is_zero_for_positive_definite():
    op, _ = operator_with_spectrum(np.linspace(0.5, 4.0, 50), seed=6)
    crit = spectral_density(op, num_probes=2, num_steps=10, seed=0).lla_criteria()
    assert crit.kh == 0.0 and 0 < crit.re < 1


def test_plot_draws_on_given_axes_with_log_option(hessian_like):
    import matplotlib.pyplot as plt

    op, _ = hessian_like
    dens = spectral_density(op, num_probes=2, num_steps=15, seed=0)
    fig, ax = plt.subplots()
    out = dens.plot(ax=ax, log=True)
    assert out is ax and ax.get_yscale() == "log" and len(ax.lines) == 1
    assert np.all(np.asarray(ax.lines[0].get_ydata()) > 0)
    plt.close(fig)
    ax2 = dens.plot()
    assert ax2.get_yscale() == "linear"
    plt.close(ax2.figure)


def test_same_seed_bit_identical_and_global_rng_untouched(hessian_like):
    op, _ = hessian_like
    before = global_rng_state()
    a = spectral_density(op, num_probes=3, num_steps=10, seed=4)
    b = spectral_density(op, num_probes=3, num_steps=10, seed=4)
    assert np.array_equal(a.nodes, b.nodes) and np.array_equal(a.weights, b.weights)
    assert_same_rng_state(before)


def test_one_probe_has_nan_stderr_not_zero(hessian_like):
    op, _ = hessian_like
    mom = spectral_density(op, num_probes=1, num_steps=10, seed=0).moments(2)
    assert np.all(np.isnan(mom.stderr)) and np.all(np.isfinite(mom.value))
    assert math.isnan(spectral_density(op, num_probes=1, num_steps=5, seed=0).trace().stderr)
