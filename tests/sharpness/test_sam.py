"""Worst-case sharpness (SAM / ASAM, m-sharpness) against exact answers: quadratics (linear least squares) at and
off their minimum, the trust-region solution, box corners, the best iterate and ASAM's scale invariance."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from torch import nn
from torch.func import functional_call

from landscape import Problem
from landscape.sharpness import sam_sharpness
from tests.sharpness.helpers import (
    N,
    exact_hessian,
    least_squares_model,
    least_squares_problem,
    loss_function,
    make_data,
    random_offset,
    relu_mlp,
    split_flat,
)


def test_sam_at_a_quadratic_minimum_is_half_rho_squared_lambda_max():
    X, Y = make_data()
    problem = least_squares_problem(X, Y, batch_size=7)
    lam_max = float(torch.linalg.eigvalsh(exact_hessian(X)).max())
    exact = 0.05**2 * lam_max / 2
    r = sam_sharpness(problem, 0.05, steps=20, seed=0)
    assert r.random_starts == 1  # the gradient is zero at the minimum: the ascent starts on a random point
    assert r.value == pytest.approx(exact, rel=0.05)
    assert r.value <= exact * (1 + 1e-10)
    assert r.perturbation_norm == pytest.approx(0.05, rel=1e-12)
    assert r.constraint_norm == pytest.approx(0.05, rel=1e-12)
    assert r.history.shape == (1, 21)
    assert r.value == pytest.approx(np.nanmax(r.history), rel=1e-14)
    # The best value never decreases with more steps (the best iterate is kept).
    short = sam_sharpness(problem, 0.05, steps=3, seed=0)
    assert short.value <= r.value
    with pytest.warns(UserWarning, match="numerically zero"):
        first = sam_sharpness(problem, 0.05, steps=0, seed=0)
    assert 0 < first.value <= exact * (1 + 1e-10) and first.random_starts == 1


def test_first_order_sam_off_the_minimum_matches_the_formula_by_hand():
    X, Y = make_data()
    model = least_squares_model(X, Y, offset=random_offset())
    problem = Problem(model, nn.MSELoss(), (X, Y), batch_size=8)
    f, w = loss_function(model, X, Y)
    g = torch.func.grad(lambda v: nn.functional.mse_loss(functional_call(model, split_flat(model, v), (X,)), Y))(w)
    rho = 0.05
    r = sam_sharpness(problem, rho, steps=0)
    assert r.random_starts == 0 and r.num_gradient_evaluations == 1 and r.num_loss_evaluations == 1
    assert r.value == pytest.approx(f(w + rho * g / g.norm()) - f(w), rel=1e-10)
    torch.testing.assert_close(r.perturbation, rho * g / g.norm(), rtol=1e-12, atol=1e-15)
    # p = inf: e = rho sign(g), a corner of the box.
    box = sam_sharpness(problem, rho, p=math.inf, steps=0)
    assert box.value == pytest.approx(f(w + rho * torch.sign(g)) - f(w), rel=1e-10)
    assert torch.all(box.perturbation.abs() == rho)
    assert box.constraint_norm == rho
    # ASAM: e = rho T^2 g / ||T g|| with T = |w| + eta.
    t = w.abs() + 0.01
    adaptive = sam_sharpness(problem, rho, adaptive=True, steps=0)
    assert adaptive.value == pytest.approx(f(w + rho * t**2 * g / (t * g).norm()) - f(w), rel=1e-10)
    assert adaptive.constraint_norm == pytest.approx(rho, rel=1e-12)


def test_sam_ascent_off_the_minimum_solves_the_trust_region_problem():
    """On a quadratic, max_{||e|| <= rho} g^T e + e^T H e / 2 has the secular-equation solution e = (mu I - H)^-1 g."""
    X, Y = make_data(seed=2)
    offset = random_offset(seed=3, scale=0.05)
    problem = least_squares_problem(X, Y, offset)
    H = exact_hessian(X)
    g = H @ offset
    lam, Q = torch.linalg.eigh(H)
    lam, gt = lam.numpy(), (Q.T @ g).numpy()
    rho = 0.1
    mu = brentq(lambda x: np.linalg.norm(gt / (x - lam)) - rho, lam[-1] + 1e-12, lam[-1] + 1e3)
    et = gt / (mu - lam)
    exact = float(gt @ et + 0.5 * et @ (lam * et))
    r = sam_sharpness(problem, rho, steps=20)
    first = sam_sharpness(problem, rho, steps=0)
    assert first.value < exact * (1 - 1e-3)  # first order is not the maximum here ...
    assert r.value == pytest.approx(exact, rel=1e-6)  # ... the ascent is
    assert r.history[0, 0] == pytest.approx(first.value, rel=1e-12)
    # One gradient at w, one at the start, one per step but the last (a loss only).
    assert r.num_gradient_evaluations == 21 and r.num_loss_evaluations == 1 and not np.isnan(r.history).any()


def test_box_sharpness_with_a_diagonal_hessian_is_exact_at_the_corners():
    """Diagonal H: max over the box of g^T e + e^T H e / 2 is sum_i |g_i| rho + H_ii rho^2 / 2 (a corner)."""
    X, Y = make_data(orthogonal=True)
    H = exact_hessian(X)
    assert torch.count_nonzero(H - torch.diag(torch.diag(H))) == 0 or torch.allclose(H, torch.diag(torch.diag(H)))
    rho = 0.05
    at_min = least_squares_problem(X, Y)
    r = sam_sharpness(at_min, rho, p="inf", steps=5, seed=4)
    assert r.random_starts == 1 and torch.all(r.perturbation.abs() == rho)
    assert r.value == pytest.approx(rho**2 * float(torch.trace(H)) / 2, rel=1e-9)
    offset = random_offset(seed=5, scale=0.02)
    off = least_squares_problem(X, Y, offset)
    g = torch.diag(H) * offset
    exact = float((g.abs() * rho + torch.diag(H) * rho**2 / 2).sum())
    r = sam_sharpness(off, rho, p=math.inf, steps=5)
    assert r.value == pytest.approx(exact, rel=1e-9)
    # The first-order corner is already a fixed point of the projected step: the ascent stops there.
    assert r.num_gradient_evaluations == 2 and np.isnan(r.history[0, 1:]).all()


def test_ascent_keeps_the_best_iterate_on_a_non_concave_loss():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(24, 3, generator=g, dtype=torch.float64)
    Y = torch.randn(24, 2, generator=g, dtype=torch.float64)
    model = relu_mlp(seed=0)
    model[1] = nn.Tanh()
    problem = Problem(model, nn.MSELoss(), (X, Y))
    r = sam_sharpness(problem, 1.0, p=math.inf, steps=10)
    h = r.history[0]
    assert np.nanmin(h[1:]) < h[0] - 0.1  # some steps overshoot and are rejected ...
    assert r.value == np.nanmax(h) > h[0] + 0.1  # ... the best iterate is reported, above the first-order value
    assert r.perturbed_loss - r.loss == pytest.approx(r.value, rel=1e-12)
    assert float(r.perturbation.abs().max()) <= 1.0 and r.constraint_norm <= 1.0
    assert problem.loss(at=problem.params_vector() + r.perturbation) == pytest.approx(r.perturbed_loss, rel=1e-12)


def test_asam_is_invariant_to_relu_layer_rescaling_and_sam_is_not():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(24, 3, generator=g, dtype=torch.float64)
    Y = torch.randn(24, 2, generator=g, dtype=torch.float64)
    model = relu_mlp()
    scaled = copy.deepcopy(model)
    c = 4.0
    with torch.no_grad():
        scaled[0].weight.mul_(c)
        scaled[0].bias.mul_(c)
        scaled[2].weight.div_(c)
    a, b = Problem(model, nn.MSELoss(), (X, Y)), Problem(scaled, nn.MSELoss(), (X, Y))
    assert b.loss() == pytest.approx(a.loss(), rel=1e-12)
    for steps in (0, 10):
        asam_a = sam_sharpness(a, 0.1, adaptive=True, eta=0.0, steps=steps)
        asam_b = sam_sharpness(b, 0.1, adaptive=True, eta=0.0, steps=steps)
        assert asam_a.value > 1e-3
        assert asam_b.value == pytest.approx(asam_a.value, rel=1e-6)
        sam_a, sam_b = sam_sharpness(a, 0.1, steps=steps), sam_sharpness(b, 0.1, steps=steps)
        assert abs(sam_b.value / sam_a.value - 1) > 0.2
    # With eta > 0 the invariance is only approximate, and the rescaled point differs.
    near_a = sam_sharpness(a, 0.1, adaptive=True, eta=0.01, steps=0)
    near_b = sam_sharpness(b, 0.1, adaptive=True, eta=0.01, steps=0)
    assert near_a.value != near_b.value and near_b.value == pytest.approx(near_a.value, rel=0.2)


def test_m_sharpness_with_m_equal_to_n_is_the_full_batch_value():
    X, Y = make_data()
    problem = least_squares_problem(X, Y, random_offset(), batch_size=7)
    for steps in (0, 6):
        full = sam_sharpness(problem, 0.05, steps=steps)
        one = sam_sharpness(problem, 0.05, steps=steps, m=N)
        assert one.value == pytest.approx(full.value, rel=1e-10)
        assert one.subset_sizes.tolist() == [N] and math.isnan(one.stderr) and one.perturbation is None
        assert one.perturbation_norm == pytest.approx(full.perturbation_norm, rel=1e-10)
    parts = sam_sharpness(problem, 0.05, steps=3, m=10, seed=2)
    assert parts.subset_sizes.tolist() == [10, 10, 10] and parts.history.shape == (3, 4)
    assert parts.value == pytest.approx(parts.subset_values.mean(), rel=1e-14)
    assert parts.subset_values.tolist() == pytest.approx(np.nanmax(parts.history, axis=1).tolist(), rel=1e-14)
    assert parts.stderr == pytest.approx(parts.subset_values.std(ddof=1) / math.sqrt(3), rel=1e-12)
    # Each subset has its own gradient, even at the full-data minimum: the first-order start is defined there.
    at_min = least_squares_problem(X, Y)
    m_at_min = sam_sharpness(at_min, 0.05, steps=0, m=5)
    assert m_at_min.random_starts == 0 and m_at_min.subset_values.size == 6
    assert m_at_min.loss == pytest.approx(at_min.loss(), rel=1e-12)
