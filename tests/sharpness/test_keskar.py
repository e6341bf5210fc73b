"""Keskar sharpness against closed forms on quadratics (box corners, a one-dimensional subspace, the vertex
maximum), and its memory: refused before any evaluation when it cannot fit, skipped with the reason by sharpness()."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from landscape import Problem
from landscape.sharpness import keskar_sharpness, sharpness
from tests.sharpness.helpers import exact_hessian, least_squares_model, loss_function, make_data, random_offset


def test_keskar_on_a_diagonal_quadratic_is_the_box_corner_value():
    X, Y = make_data(orthogonal=True)
    model = least_squares_model(X, Y)
    problem = Problem(model, nn.MSELoss(), (X, Y), batch_size=8)
    f, w = loss_function(model, X, Y)
    Hd = torch.diag(exact_hessian(X))
    eps = 1e-3
    b = eps * (w.abs() + 1)
    r = keskar_sharpness(problem, eps, maxiter=20)
    assert r.random_start
    np.testing.assert_allclose(r.bounds, b.numpy(), rtol=1e-14)
    assert r.value == pytest.approx(100 * float((Hd * b**2).sum() / 2) / (1 + f(w)), rel=1e-8)
    assert torch.allclose(r.perturbation.abs(), b, rtol=1e-12)
    # Off the minimum the separable maximum is sum_i |g_i| b_i + H_ii b_i^2 / 2, again a corner.
    offset = random_offset(seed=9, scale=0.01)
    model = least_squares_model(X, Y, offset)
    f, w = loss_function(model, X, Y)
    b = eps * (w.abs() + 1)
    g = Hd * offset
    off = keskar_sharpness(Problem(model, nn.MSELoss(), (X, Y)), eps)
    assert not off.random_start
    expected = 100 * float((g.abs() * b + Hd * b**2 / 2).sum()) / (1 + f(w))
    assert off.value == pytest.approx(expected, rel=1e-8)
    assert off.max_loss == pytest.approx(f(w + off.perturbation), rel=1e-14)


def test_keskar_in_a_one_dimensional_subspace_matches_the_closed_form():
    """A = a (unit): max_{|y| <= b} (a^T g) y + (a^T H a) y^2 / 2 = |a^T g| b + a^T H a b^2 / 2, b = eps(|a^T x|+1)."""
    X, Y = make_data(seed=4)
    offset = random_offset(seed=1, scale=0.05)
    model = least_squares_model(X, Y, offset)
    problem = Problem(model, nn.MSELoss(), (X, Y))
    f, w = loss_function(model, X, Y)
    H = exact_hessian(X)
    eps = 1e-2
    r = keskar_sharpness(problem, eps, subspace_dim=1, seed=3)
    a = r.perturbation / r.perturbation.norm()
    b = eps * (abs(float(a @ w)) + 1)
    assert r.bounds[0] == pytest.approx(b, rel=1e-12)
    assert float(r.perturbation.norm()) == pytest.approx(b, rel=1e-12)
    expected = abs(float(a @ (H @ offset))) * b + float(a @ H @ a) * b**2 / 2
    assert r.value == pytest.approx(100 * expected / (1 + f(w)), rel=1e-8)
    other = keskar_sharpness(problem, eps, subspace_dim=1, seed=4)
    assert other.value != r.value


def test_keskar_full_space_is_a_local_box_maximum_below_the_vertex_maximum():
    """A convex quadratic attains its box maximum at a vertex: L-BFGS-B finds a vertex no better than the best."""
    X, Y = make_data()
    model = least_squares_model(X, Y)
    problem = Problem(model, nn.MSELoss(), (X, Y))
    f, w = loss_function(model, X, Y)
    H = exact_hessian(X)
    eps = 1e-3
    b = eps * (w.abs() + 1)
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=w.numel())), dtype=torch.float64) * b
    best = float((0.5 * ((signs @ H) * signs).sum(dim=1)).max())
    r = keskar_sharpness(problem, eps, maxiter=30, seed=0)
    assert 0.5 * 100 * best / (1 + f(w)) < r.value <= 100 * best / (1 + f(w)) * (1 + 1e-8)
    assert torch.all(r.perturbation.abs() <= torch.from_numpy(r.bounds) * (1 + 1e-12))


def test_keskar_says_when_it_cannot_fit_and_sharpness_skips_it_with_the_reason():
    """At 10^7-10^8 parameters neither L-BFGS-B on every coordinate nor a 100-column basis fits: keskar_sharpness
    refuses before any evaluation, naming need, budget and fix; sharpness(keskar="auto") runs the rest."""
    from landscape.memory import MemoryBudgetError
    from landscape.sharpness import keskar_memory

    X, Y = make_data()
    problem = Problem(least_squares_model(X, Y), nn.MSELoss(), (X, Y))
    full, _ = keskar_memory(problem, None)
    sub, what = keskar_memory(problem, 3)
    assert full == 30 * 8 * 8 + 4 * 8 * 8 and sub == 8 * 3 * (8 + 16) and "8 x 3" in what
    with pytest.raises(MemoryBudgetError, match=r"needs 2.1 KiB .* budget is 1.0 KiB.*subspace_dim"):
        keskar_sharpness(problem, 1e-3, memory_budget=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # first-order SAM at an exact minimum warns
        s = sharpness(problem, 0.05, steps=2, subspace_dim=3, num_samples=4, seed=0, memory_budget=1000)
    assert s.keskar is None and s.keskar_subspace is not None  # the 576-byte subspace fits, the full space not
    assert "needs 2.1 KiB" in s.settings["skipped"]["Keskar"] and "Keskar: skipped" in s.summary()
    with pytest.raises(MemoryBudgetError), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the same first-order SAM warning before Keskar refuses
        sharpness(problem, 0.05, subspace_dim=3, seed=0, keskar=True, memory_budget=1000)
    with pytest.raises(ValueError, match="keskar must be"):
        sharpness(problem, keskar="yes")
