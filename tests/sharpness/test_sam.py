"""Sharpness against exact answers: quadratics (linear least squares) at and off their minimum, ASAM's scale
invariance, m-sharpness, determinism and side effects."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from torch import nn
from torch.func import functional_call

from landscape import Problem
from landscape.sharpness import (
    AverageSharpness,
    KeskarSharpness,
    SAMSharpness,
    Sharpness,
    average_sharpness,
    keskar_sharpness,
    sam_sharpness,
    sharpness,
)

N, D_IN, D_OUT = 30, 3, 2


def _data(seed: int = 0, orthogonal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets; with ``orthogonal`` the columns of ``[X, 1]`` are orthogonal, so the Hessian is diagonal."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, D_IN, generator=g, dtype=torch.float64)
    Y = torch.randn(N, D_OUT, generator=g, dtype=torch.float64)
    if orthogonal:
        Q, _ = torch.linalg.qr(X - X.mean(dim=0))
        X = Q * torch.tensor([1.5, 1.0, 0.6], dtype=torch.float64) * math.sqrt(N)
    return X, Y


def _design(X: torch.Tensor) -> torch.Tensor:
    return torch.cat([X, torch.ones(len(X), 1, dtype=torch.float64)], dim=1)


def _least_squares_model(X: torch.Tensor, Y: torch.Tensor, offset: torch.Tensor | None = None) -> nn.Linear:
    """``nn.Linear`` at the exact minimum of the MSE (normal equations in float64), moved by ``offset`` (flat)."""
    A = _design(X)
    W = torch.linalg.solve(A.T @ A, A.T @ Y)
    model = nn.Linear(D_IN, D_OUT).double()
    with torch.no_grad():
        model.weight.copy_(W[:-1].T)
        model.bias.copy_(W[-1])
        if offset is not None:
            model.weight.add_(offset[: D_IN * D_OUT].view(D_OUT, D_IN))
            model.bias.add_(offset[D_IN * D_OUT :])
    return model


def _exact_hessian(X: torch.Tensor) -> torch.Tensor:
    """Hessian of ``mean((X W^T + b - Y)^2)`` in the flat order (weight row-major, then bias): block diagonal."""
    A = _design(X)
    G = 2.0 / (N * D_OUT) * (A.T @ A)
    H = torch.zeros(D_OUT * (D_IN + 1), D_OUT * (D_IN + 1), dtype=torch.float64)
    wi = [[o * D_IN + i for i in range(D_IN)] + [D_OUT * D_IN + o] for o in range(D_OUT)]
    for idx in wi:
        H[np.ix_(idx, idx)] = G
    return H


def _loss_fn(model: nn.Module, X: torch.Tensor, Y: torch.Tensor):
    """Full-data MSE as a function of the flat parameters, written without landscape."""
    named = dict(model.named_parameters())

    def f(flat: torch.Tensor) -> float:
        params, i = {}, 0
        for n, p in named.items():
            params[n] = flat[i : i + p.numel()].view(p.shape)
            i += p.numel()
        with torch.no_grad():
            return float(nn.functional.mse_loss(functional_call(model, params, (X,)), Y))

    w = torch.cat([p.detach().reshape(-1) for p in named.values()])
    return f, w


def _offset(seed: int = 7, scale: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(D_OUT * (D_IN + 1), generator=g, dtype=torch.float64)


def _relu_mlp(seed: int = 1) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model


# ------------------------------------------------------------------------------------------------ SAM / ASAM
def test_sam_at_a_quadratic_minimum_is_half_rho_squared_lambda_max():
    X, Y = _data()
    problem = Problem(_least_squares_model(X, Y), nn.MSELoss(), (X, Y), batch_size=7)
    lam_max = float(torch.linalg.eigvalsh(_exact_hessian(X)).max())
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
    X, Y = _data()
    model = _least_squares_model(X, Y, offset=_offset())
    problem = Problem(model, nn.MSELoss(), (X, Y), batch_size=8)
    f, w = _loss_fn(model, X, Y)
    g = torch.func.grad(lambda v: nn.functional.mse_loss(functional_call(model, _split(model, v), (X,)), Y))(w)
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


def _split(model: nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for n, p in model.named_parameters():
        out[n] = flat[i : i + p.numel()].view(p.shape)
        i += p.numel()
    return out


def test_sam_ascent_off_the_minimum_solves_the_trust_region_problem():
    """On a quadratic, max_{||e|| <= rho} g^T e + e^T H e / 2 has the secular-equation solution e = (mu I - H)^-1 g."""
    X, Y = _data(seed=2)
    offset = _offset(seed=3, scale=0.05)
    problem = Problem(_least_squares_model(X, Y, offset), nn.MSELoss(), (X, Y))
    H = _exact_hessian(X)
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
    X, Y = _data(orthogonal=True)
    H = _exact_hessian(X)
    assert torch.count_nonzero(H - torch.diag(torch.diag(H))) == 0 or torch.allclose(H, torch.diag(torch.diag(H)))
    rho = 0.05
    at_min = Problem(_least_squares_model(X, Y), nn.MSELoss(), (X, Y))
    r = sam_sharpness(at_min, rho, p="inf", steps=5, seed=4)
    assert r.random_starts == 1 and torch.all(r.perturbation.abs() == rho)
    assert r.value == pytest.approx(rho**2 * float(torch.trace(H)) / 2, rel=1e-9)
    offset = _offset(seed=5, scale=0.02)
    off = Problem(_least_squares_model(X, Y, offset), nn.MSELoss(), (X, Y))
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
    model = _relu_mlp(seed=0)
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
    model = _relu_mlp()
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
    X, Y = _data()
    problem = Problem(_least_squares_model(X, Y, _offset()), nn.MSELoss(), (X, Y), batch_size=7)
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
    at_min = Problem(_least_squares_model(X, Y), nn.MSELoss(), (X, Y))
    m_at_min = sam_sharpness(at_min, 0.05, steps=0, m=5)
    assert m_at_min.random_starts == 0 and m_at_min.subset_values.size == 6
    assert m_at_min.loss == pytest.approx(at_min.loss(), rel=1e-12)


# ------------------------------------------------------------------------------------------------ average case
def test_average_sharpness_at_a_minimum_is_half_rho_squared_trace():
    X, Y = _data()
    problem = Problem(_least_squares_model(X, Y), nn.MSELoss(), (X, Y), batch_size=7)
    trH = float(torch.trace(_exact_hessian(X)))
    r = average_sharpness(problem, 0.05, num_samples=40, seed=1)
    assert abs(r.value - 0.05**2 * trH / 2) < 3 * r.stderr
    assert 0 < r.stderr < 0.2 * r.value
    assert r.samples.shape == (40,) and r.num_loss_evaluations == 81
    # Antithetic pairs cancel the linear term exactly: off the minimum the same draws give the same value.
    off = Problem(_least_squares_model(X, Y, _offset()), nn.MSELoss(), (X, Y))
    moved = average_sharpness(off, 0.05, num_samples=40, seed=1)
    np.testing.assert_allclose(moved.samples, r.samples, rtol=1e-8)
    plain = average_sharpness(off, 0.05, num_samples=40, seed=1, antithetic=False)
    assert plain.stderr > 5 * moved.stderr and plain.num_loss_evaluations == 41


def test_adaptive_average_sharpness_scales_the_noise_by_the_weights():
    """On a quadratic at its minimum, E L(w + delta) - L(w) = rho^2 tr(C H C) / 2 with C = diag(|w| + eta)."""
    X, Y = _data()
    model = _least_squares_model(X, Y)
    problem = Problem(model, nn.MSELoss(), (X, Y))
    _, w = _loss_fn(model, X, Y)
    c = w.abs() + 0.01
    expected = 0.05**2 * float((c**2 * torch.diag(_exact_hessian(X))).sum()) / 2
    r = average_sharpness(problem, 0.05, num_samples=60, adaptive=True, seed=3)
    assert abs(r.value - expected) < 3 * r.stderr and r.stderr < 0.2 * r.value


# ------------------------------------------------------------------------------------------------ Keskar
def test_keskar_on_a_diagonal_quadratic_is_the_box_corner_value():
    X, Y = _data(orthogonal=True)
    model = _least_squares_model(X, Y)
    problem = Problem(model, nn.MSELoss(), (X, Y), batch_size=8)
    f, w = _loss_fn(model, X, Y)
    Hd = torch.diag(_exact_hessian(X))
    eps = 1e-3
    b = eps * (w.abs() + 1)
    r = keskar_sharpness(problem, eps, maxiter=20)
    assert r.random_start
    np.testing.assert_allclose(r.bounds, b.numpy(), rtol=1e-14)
    assert r.value == pytest.approx(100 * float((Hd * b**2).sum() / 2) / (1 + f(w)), rel=1e-8)
    assert torch.allclose(r.perturbation.abs(), b, rtol=1e-12)
    # Off the minimum the separable maximum is sum_i |g_i| b_i + H_ii b_i^2 / 2, again a corner.
    offset = _offset(seed=9, scale=0.01)
    model = _least_squares_model(X, Y, offset)
    f, w = _loss_fn(model, X, Y)
    b = eps * (w.abs() + 1)
    g = Hd * offset
    off = keskar_sharpness(Problem(model, nn.MSELoss(), (X, Y)), eps)
    assert not off.random_start
    expected = 100 * float((g.abs() * b + Hd * b**2 / 2).sum()) / (1 + f(w))
    assert off.value == pytest.approx(expected, rel=1e-8)
    assert off.max_loss == pytest.approx(f(w + off.perturbation), rel=1e-14)


def test_keskar_in_a_one_dimensional_subspace_matches_the_closed_form():
    """A = a (unit): max_{|y| <= b} (a^T g) y + (a^T H a) y^2 / 2 = |a^T g| b + a^T H a b^2 / 2, b = eps(|a^T x|+1)."""
    X, Y = _data(seed=4)
    offset = _offset(seed=1, scale=0.05)
    model = _least_squares_model(X, Y, offset)
    problem = Problem(model, nn.MSELoss(), (X, Y))
    f, w = _loss_fn(model, X, Y)
    H = _exact_hessian(X)
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
    X, Y = _data()
    model = _least_squares_model(X, Y)
    problem = Problem(model, nn.MSELoss(), (X, Y))
    f, w = _loss_fn(model, X, Y)
    H = _exact_hessian(X)
    eps = 1e-3
    b = eps * (w.abs() + 1)
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=w.numel())), dtype=torch.float64) * b
    best = float((0.5 * ((signs @ H) * signs).sum(dim=1)).max())
    r = keskar_sharpness(problem, eps, maxiter=30, seed=0)
    assert 0.5 * 100 * best / (1 + f(w)) < r.value <= 100 * best / (1 + f(w)) * (1 + 1e-8)
    assert torch.all(r.perturbation.abs() <= torch.from_numpy(r.bounds) * (1 + 1e-12))


# ------------------------------------------------------------------------------------------------ gathered
def test_sharpness_gathers_every_measure_with_its_error_bar():
    X, Y = _data()
    problem = Problem(_least_squares_model(X, Y), nn.MSELoss(), (X, Y), batch_size=10)
    H = _exact_hessian(X)
    lam = float(torch.linalg.eigvalsh(H).max())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # first-order SAM at an exact minimum warns
        s = sharpness(problem, 0.05, steps=10, subspace_dim=3, num_matvecs=30, num_samples=10, seed=0)
    assert isinstance(s, Sharpness) and s.num_params == 8
    assert s.lambda_max.values[0] == pytest.approx(lam, rel=1e-8) and s.lambda_max.residuals[0] < 1e-6
    assert s.trace.value == pytest.approx(float(torch.trace(H)), rel=1e-8)
    assert s.frobenius.value == pytest.approx(float(torch.linalg.norm(H)), rel=0.2) and s.frobenius.stderr > 0
    assert s.sam.value == pytest.approx(0.05**2 * lam / 2, rel=0.05) and s.sam.steps == 10
    assert s.sam_first_order.steps == 0 and math.isinf(s.sam_inf.p) and s.asam.adaptive
    assert s.keskar.subspace_dim is None and s.keskar_subspace.subspace_dim == 3
    assert s.loss == pytest.approx(problem.loss(), rel=1e-15)
    assert s.num_matvecs == s.lambda_max.num_matvecs + s.trace.num_matvecs + s.frobenius.num_matvecs
    assert s.settings["problem"] == problem.describe()
    text = s.summary()
    for part in ("lambda_max", "trace", "Frobenius", "SAM (p = 2", "p = inf", "ASAM", "average-case", "Keskar"):
        assert part in text, part
    d = json.loads(json.dumps(s.to_dict()))
    assert d["sam"]["p"] == 2 and d["sam_inf"]["p"] == "inf" and d["lambda_max"]["value"] == pytest.approx(lam)
    lean = sharpness(problem, 0.05, eigen=False, trace=False, frobenius=False, sam=False, keskar=False, seed=0)
    assert lean.num_matvecs == 0 and lean.lambda_max is None and lean.sam is None and lean.keskar is None
    assert lean.asam is not None and lean.average is not None
    assert "average-case" in lean.summary()


def test_keskar_says_when_it_cannot_fit_and_sharpness_skips_it_with_the_reason():
    """At 10^7-10^8 parameters neither L-BFGS-B on every coordinate nor a 100-column basis fits: keskar_sharpness
    refuses before any evaluation, naming need, budget and fix; sharpness(keskar="auto") runs the rest."""
    from landscape.memory import MemoryBudgetError
    from landscape.sharpness import keskar_memory

    X, Y = _data()
    problem = Problem(_least_squares_model(X, Y), nn.MSELoss(), (X, Y))
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
    with pytest.raises(MemoryBudgetError):
        sharpness(problem, 0.05, subspace_dim=3, seed=0, keskar=True, memory_budget=1000)
    with pytest.raises(ValueError, match="keskar must be"):
        sharpness(problem, keskar="yes")


# ------------------------------------------------------------------------------------------------ provenance
def test_same_seed_is_bit_identical_and_the_global_rng_untouched():
    X, Y = _data()
    problem = Problem(_least_squares_model(X, Y), nn.MSELoss(), (X, Y), batch_size=7)
    torch.manual_seed(1234)
    np.random.seed(99)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    runs = []
    for _ in range(2):
        runs.append(
            (
                sam_sharpness(problem, 0.05, steps=4, seed=3),
                sam_sharpness(problem, 0.05, steps=2, m=10, seed=3),
                average_sharpness(problem, 0.05, num_samples=4, seed=3),
                keskar_sharpness(problem, subspace_dim=2, maxiter=3, seed=3),
            )
        )
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state)
    (s1, m1, a1, k1), (s2, m2, a2, k2) = runs
    assert s1.value == s2.value and torch.equal(s1.perturbation, s2.perturbation) and s1.seed == 3
    assert np.array_equal(m1.history, m2.history) and np.array_equal(m1.subset_values, m2.subset_values)
    assert np.array_equal(a1.samples, a2.samples) and a1.seed == 3
    assert k1.value == k2.value and torch.equal(k1.perturbation, k2.perturbation)
    assert sam_sharpness(problem, 0.05, steps=4, seed=4).value != s1.value
    assert average_sharpness(problem, 0.05, num_samples=4, seed=4).value != a1.value
    gen = torch.Generator().manual_seed(3)
    assert sam_sharpness(problem, 0.05, steps=4, seed=gen).seed is None


def test_model_is_left_untouched():
    X, Y = _data()
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Dropout(0.5), nn.Linear(5, 2)).double()
    model[0].bias.requires_grad_(False)
    model.train()
    model[3].weight.grad = torch.full_like(model[3].weight, 0.25)
    before = copy.deepcopy(model.state_dict())
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    problem = Problem(model, nn.MSELoss(), (X, Y), batch_size=10)
    results = [
        sam_sharpness(problem, 0.05, steps=3, adaptive=True),
        sam_sharpness(problem, 0.05, steps=2, m=15),
        average_sharpness(problem, 0.05, num_samples=3),
        keskar_sharpness(problem, maxiter=2),
    ]
    assert all(r.settings["problem"]["mode"] == "eval" for r in results)
    assert all(m.training for m in model.modules())
    for n, t in model.state_dict().items():
        assert torch.equal(t, before[n]), n
    for n, p in model.named_parameters():
        assert p.requires_grad == flags[n], n
        assert (p.grad is None) if grads[n] is None else torch.equal(p.grad, grads[n]), n


def test_results_are_frozen_and_self_describing():
    X, Y = _data()
    problem = Problem(_least_squares_model(X, Y, _offset()), nn.MSELoss(), (X, Y))
    r = sam_sharpness(problem, 0.05, p=math.inf, steps=2, seed=5)
    a = average_sharpness(problem, num_samples=3)
    k = keskar_sharpness(problem, maxiter=2)
    assert isinstance(r, SAMSharpness) and isinstance(a, AverageSharpness) and isinstance(k, KeskarSharpness)
    for res in (r, a, k):
        assert res.settings["problem"] == problem.describe() and res.wall_time > 0 and float(res) == res.value
        json.dumps(res.to_dict())
        with pytest.raises(dataclasses.FrozenInstanceError):
            res.value = 0.0
    assert r.settings["method"] == "projected_ascent" and r.to_dict()["p"] == "inf"
    assert "SAM (p = inf" in r.summary() and "average-case" in a.summary() and "Keskar" in k.summary()
    assert r.num_gradient_evaluations + r.num_loss_evaluations <= 1 + 1 + 2


@pytest.mark.parametrize(
    ("func", "kwargs", "match"),
    [
        (sam_sharpness, {"rho": 0.0}, "rho"),
        (sam_sharpness, {"rho": -0.1}, "rho"),
        (sam_sharpness, {"rho": math.nan}, "rho"),
        (sam_sharpness, {"p": 1}, "p must be 2 or inf"),
        (sam_sharpness, {"p": 3.0}, "p must be 2 or inf"),
        (sam_sharpness, {"p": "two"}, "p must be 2 or inf"),
        (sam_sharpness, {"eta": -0.01, "adaptive": True}, "eta"),
        (sam_sharpness, {"steps": -1}, "steps"),
        (sam_sharpness, {"m": 0}, "m must be"),
        (sam_sharpness, {"m": 7}, "does not divide"),
        (sam_sharpness, {"m": 31}, "exceeds"),
        (average_sharpness, {"rho": 0}, "rho"),
        (average_sharpness, {"num_samples": 1}, "num_samples"),
        (keskar_sharpness, {"eps": 0.0}, "eps"),
        (keskar_sharpness, {"subspace_dim": 0}, "subspace_dim"),
        (keskar_sharpness, {"subspace_dim": 9}, "exceeds"),
        (keskar_sharpness, {"maxiter": 0}, "maxiter"),
        (sharpness, {"rho": -1.0}, "rho"),
    ],
)
def test_bad_arguments_raise_clear_errors(func, kwargs, match):
    X, Y = _data()
    problem = Problem(_least_squares_model(X, Y), nn.MSELoss(), (X, Y))
    with pytest.raises(ValueError, match=match):
        func(problem, **kwargs)


def test_bad_types_raise_clear_errors():
    X, Y = _data()
    problem = Problem(_least_squares_model(X, Y), nn.MSELoss(), (X, Y))
    with pytest.raises(TypeError, match="seed"):
        sam_sharpness(problem, seed=1.5)
    with pytest.raises(TypeError, match="Problem"):
        average_sharpness(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="divisor of N"):
        sam_sharpness(problem, m=4)
