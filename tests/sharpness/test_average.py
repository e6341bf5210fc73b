"""Average-case sharpness against the exact expectation on quadratics: rho^2 tr(H) / 2, antithetic cancellation of
the linear term, and the adaptive scaling of the noise."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from landscape import Problem
from landscape.sharpness import average_sharpness
from tests.sharpness.helpers import exact_hessian, least_squares_model, loss_function, make_data, random_offset


def test_average_sharpness_at_a_minimum_is_half_rho_squared_trace():
    X, Y = make_data()
    problem = Problem(least_squares_model(X, Y), nn.MSELoss(), (X, Y), batch_size=7)
    trH = float(torch.trace(exact_hessian(X)))
    r = average_sharpness(problem, 0.05, num_samples=40, seed=1)
    assert abs(r.value - 0.05**2 * trH / 2) < 3 * r.stderr
    assert 0 < r.stderr < 0.2 * r.value
    assert r.samples.shape == (40,) and r.num_loss_evaluations == 81
    # Antithetic pairs cancel the linear term exactly: off the minimum the same draws give the same value.
    off = Problem(least_squares_model(X, Y, random_offset()), nn.MSELoss(), (X, Y))
    moved = average_sharpness(off, 0.05, num_samples=40, seed=1)
    np.testing.assert_allclose(moved.samples, r.samples, rtol=1e-8)
    plain = average_sharpness(off, 0.05, num_samples=40, seed=1, antithetic=False)
    assert plain.stderr > 5 * moved.stderr and plain.num_loss_evaluations == 41


def test_adaptive_average_sharpness_scales_the_noise_by_the_weights():
    """On a quadratic at its minimum, E L(w + delta) - L(w) = rho^2 tr(C H C) / 2 with C = diag(|w| + eta)."""
    X, Y = make_data()
    model = least_squares_model(X, Y)
    problem = Problem(model, nn.MSELoss(), (X, Y))
    _, w = loss_function(model, X, Y)
    c = w.abs() + 0.01
    expected = 0.05**2 * float((c**2 * torch.diag(exact_hessian(X))).sum()) / 2
    r = average_sharpness(problem, 0.05, num_samples=60, adaptive=True, seed=3)
    assert abs(r.value - expected) < 3 * r.stderr and r.stderr < 0.2 * r.value
