"""Roughness index against exact answers: quadratics at and off their minimum, affine invariance, side effects."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from landscape import Problem
from landscape.roughness import RoughnessIndex, roughness_index
from landscape.surface import Directions, filter_normalized, from_vectors, random
from tests.helpers import gaussian_weights, model_untouched, untidy_mlp


def _data(n: int = 30, d_in: int = 3, d_out: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    Y = torch.randn(n, d_out, generator=g, dtype=torch.float64)
    return X, Y


def _least_squares_model(X: torch.Tensor, Y: torch.Tensor, offset: float = 0.0) -> nn.Linear:
    """``nn.Linear`` at the exact minimum of the mean squared error (normal equations in float64), plus ``offset``."""
    A = torch.cat([X, torch.ones(len(X), 1, dtype=torch.float64)], dim=1)
    W = torch.linalg.solve(A.T @ A, A.T @ Y)
    model = nn.Linear(X.shape[1], Y.shape[1]).double()
    with torch.no_grad():
        model.weight.copy_(W[:-1].T + offset)
        model.bias.copy_(W[-1] - offset)
    return model


def _mlp(seed: int = 1, activation: type[nn.Module] = nn.Tanh) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 6), activation(), nn.Linear(6, 2)).double()
    return gaussian_weights(model, g)


def _reference_loss(model: nn.Module, X: torch.Tensor, Y: torch.Tensor):
    """Full-data MSE as a function of the flat parameters, written without landscape."""
    named = dict(model.named_parameters())

    def f(flat: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for n, p in named.items():
            params[n] = flat[i : i + p.numel()].view(p.shape)
            i += p.numel()
        return nn.functional.mse_loss(functional_call(model, params, (X,)), Y)

    w = torch.cat([p.detach().reshape(-1) for p in named.values()])
    return f, w


def test_quadratic_at_its_minimum_has_zero_roughness_and_exact_quadratic():
    X, Y = _data()
    model = _least_squares_model(X, Y)
    problem = Problem(model, nn.MSELoss(), (X, Y), batch_size=7)
    r = roughness_index(problem, 5, span=0.1, points=20, seed=0)
    assert abs(r.value) < 1e-10
    # Every curve is an even parabola: T_d = 1/l exactly, whether or not the grid contains 0.
    np.testing.assert_allclose(r.total_variations, 1 / 0.1, rtol=1e-10)
    assert np.all(r.quadratic_deviation < 1e-10)
    f, w = _reference_loss(model, X, Y)
    H = torch.func.hessian(f)(w)
    D = filter_normalized(problem, 5, seed=0).vectors
    np.testing.assert_allclose(r.curvatures, torch.einsum("ki,ij,kj->k", D, H, D).numpy(), rtol=1e-10)
    np.testing.assert_allclose(r.slopes, 0.0, atol=1e-12)
    assert abs(r.loss - float(f(w))) < 1e-13


@pytest.mark.parametrize("points", [3, 7, 20])
def test_even_parabola_gives_total_variation_one_over_span_for_any_grid(points):
    X, Y = _data(seed=3)
    problem = Problem(_least_squares_model(X, Y), nn.MSELoss(), (X, Y))
    r = roughness_index(problem, 3, span=0.37, points=points, seed=4, quadratic=False)
    np.testing.assert_allclose(r.total_variations, 1 / 0.37, rtol=1e-10)
    assert abs(r.value) < 1e-10


def test_quadratic_off_its_minimum_is_rough_but_exactly_quadratic():
    X, Y = _data()
    model = _least_squares_model(X, Y, offset=0.3)
    problem = Problem(model, nn.MSELoss(), (X, Y), batch_size=8)
    d = random(problem, 4, seed=2)  # Gaussian, so the bias moves too
    r = roughness_index(problem, span=0.5, points=11, directions=d)
    assert r.value > 0.05
    assert np.all(r.quadratic_deviation < 1e-10)
    # Closed forms for a linear model with MSE: slope 2 mean(res * delta), curvature 2 mean(delta^2).
    res = (model(X) - Y).detach()
    for k in range(4):
        dw, db = d.vectors[k, :6].view(2, 3), d.vectors[k, 6:]
        delta = X @ dw.T + db
        assert r.slopes[k] == pytest.approx(float(2 * (res * delta).mean()), rel=1e-10)
        assert r.curvatures[k] == pytest.approx(float(2 * (delta**2).mean()), rel=1e-10)
    # T_d from its definition on the curve the closed form predicts.
    a = np.linspace(-0.5, 0.5, 11)
    for k in range(4):
        curve = r.loss + a * r.slopes[k] + 0.5 * a**2 * r.curvatures[k]
        expected = np.abs(np.diff(curve)).sum() / (1.0 * (curve.max() - curve.min()))
        assert r.total_variations[k] == pytest.approx(expected, rel=1e-9)
    tv = r.total_variations
    assert r.value == pytest.approx(tv.std(ddof=1) / tv.mean(), rel=1e-12)


def test_curves_are_the_full_data_loss_on_the_documented_grid():
    X, Y = _data()
    model = _mlp()
    problem = Problem(model, nn.MSELoss(), (X, Y), batch_size=8)
    r = roughness_index(problem, 3, span=0.2, points=6, seed=5, quadratic=False)
    np.testing.assert_allclose(r.coords, np.linspace(-0.2, 0.2, 6), rtol=0, atol=1e-15)
    assert r.curves.shape == (3, 6) and r.total_variations.shape == (3,)
    assert r.num_evaluations == 18 and r.num_matvecs == 0 and r.num_gradient_evaluations == 0
    assert r.slopes is None and r.curvatures is None and r.quadratic_deviation is None
    f, w = _reference_loss(model, X, Y)
    D = filter_normalized(problem, 3, seed=5).vectors
    with torch.no_grad():
        for k in range(3):
            for j, a in enumerate(r.coords):
                assert r.curves[k, j] == pytest.approx(float(f(w + float(a) * D[k])), rel=1e-12)


def test_invariant_to_affine_rescaling_of_the_loss():
    X, Y = _data()
    mse = nn.MSELoss()

    def scaled(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 3.7 * mse(out, y) + 2.0

    model = _mlp()
    r1 = roughness_index(Problem(model, mse, (X, Y), batch_size=8), 5, span=0.3, points=9, seed=1)
    r2 = roughness_index(Problem(model, scaled, (X, Y), batch_size=8), 5, span=0.3, points=9, seed=1)
    assert r1.value > 0.01
    assert r2.value == pytest.approx(r1.value, rel=1e-10)
    np.testing.assert_allclose(r2.total_variations, r1.total_variations, rtol=1e-10)
    np.testing.assert_allclose(r2.quadratic_deviation, r1.quadratic_deviation, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(r2.curvatures, 3.7 * r1.curvatures, rtol=1e-10)


def test_same_seed_is_bit_identical_other_seed_differs_global_rng_untouched():
    X, Y = _data()
    problem = Problem(_mlp(), nn.MSELoss(), (X, Y), batch_size=8)
    torch.manual_seed(1234)
    np.random.seed(99)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    a = roughness_index(problem, 4, span=0.2, points=7, seed=3)
    b = roughness_index(problem, 4, span=0.2, points=7, seed=3)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert a.value == b.value and a.seed == 3
    for name in ("total_variations", "curves", "slopes", "curvatures", "quadratic_deviation"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    c = roughness_index(problem, 4, span=0.2, points=7, seed=4)
    assert c.value != a.value and not np.array_equal(c.curves, a.curves)


def test_model_is_left_untouched():
    X, Y = _data()
    model = untidy_mlp()
    with model_untouched(model):
        r = roughness_index(Problem(model, nn.MSELoss(), (X, Y)), 3, span=0.2, points=5, seed=0)
        assert r.settings["problem"]["mode"] == "eval"


def test_non_quadratic_loss_is_rough_and_its_taylor_remainder_shrinks_with_span():
    X, Y = _data(n=40)
    problem = Problem(_mlp(activation=nn.Softplus), nn.MSELoss(), (X, Y), batch_size=16)
    wide = roughness_index(problem, 6, span=0.4, points=11, seed=0)
    narrow = roughness_index(problem, 6, span=0.1, points=11, seed=0)
    assert wide.value > 0.05 and narrow.value > 0.05
    assert np.all(wide.quadratic_deviation > 1e-3)
    # The remainder is O(l^3) against a range O(l) (off a minimum) or O(l^2) (near one): the relative deviation
    # falls by ~16 or ~4 when l falls by 4.
    ratio = wide.quadratic_deviation / narrow.quadratic_deviation
    assert np.median(ratio) > 8 and ratio.min() > 4
    # Slopes and curvatures do not depend on the span.
    np.testing.assert_array_equal(wide.slopes, narrow.slopes)
    np.testing.assert_array_equal(wide.curvatures, narrow.curvatures)
    assert wide.num_matvecs == 6 and wide.num_gradient_evaluations == 1


def test_curvatures_match_a_dense_hessian_in_chunks():
    X, Y = _data(n=40)
    model = _mlp(seed=7)
    problem = Problem(model, nn.MSELoss(), (X, Y), batch_size=16)
    r = roughness_index(problem, 5, span=0.1, points=4, seed=2, chunk_size=2)
    f, w = _reference_loss(model, X, Y)
    H = torch.func.hessian(f)(w)
    g = torch.func.grad(f)(w)
    D = filter_normalized(problem, 5, seed=2).vectors
    np.testing.assert_allclose(r.curvatures, torch.einsum("ki,ij,kj->k", D, H, D).numpy(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(r.slopes, (D @ g).numpy(), rtol=1e-10, atol=1e-14)
    assert r.settings["chunk_size"] == 2 and r.num_matvecs == 5


def test_flat_curves_are_flagged_and_left_out():
    X, Y = _data()
    problem = Problem(_mlp(), nn.MSELoss(), (X, Y))
    D = filter_normalized(problem, 4, seed=0).vectors.clone()
    D[1] = 0.0
    with pytest.warns(UserWarning, match="1 of 4 curves are flat"):
        r = roughness_index(problem, span=0.2, points=5, directions=D)
    assert r.flat.tolist() == [False, True, False, False]
    assert math.isnan(r.total_variations[1]) and math.isnan(r.quadratic_deviation[1])
    kept = r.total_variations[[0, 2, 3]]
    assert r.value == pytest.approx(kept.std(ddof=1) / kept.mean(), rel=1e-12)
    assert r.curvatures[1] == 0.0 and r.slopes[1] == 0.0
    with pytest.warns(UserWarning, match="all 2 curves are flat"):
        r = roughness_index(problem, span=0.2, points=5, directions=torch.zeros(2, problem.num_params))
    assert math.isnan(r.value) and r.flat.all()


def test_user_directions_and_result_provenance():
    X, Y = _data()
    problem = Problem(_mlp(), nn.MSELoss(), (X, Y), batch_size=8)
    d = random(problem, 3, seed=11)
    r = roughness_index(problem, span=0.1, points=5, directions=d, seed=999)
    assert isinstance(r, RoughnessIndex) and r.num_directions == 3 and r.points == 5
    assert r.seed == 11 and r.settings["directions"]["kind"] == "random"
    assert r.settings["problem"] == problem.describe() and r.settings["intervals"] == 4
    assert r.wall_time > 0 and float(r) == r.value and r.stderr >= 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.value = 0.0
    u = roughness_index(problem, span=0.1, points=5, directions=from_vectors(problem, d.vectors))
    assert u.seed is None and np.array_equal(u.curves, r.curves)
    text = r.summary()
    assert "RI =" in text and "3 random directions" in text and "mode eval" in text
    json.dumps(r.to_dict())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_directions": 1}, ValueError, "num_directions"),
        ({"num_directions": 0}, ValueError, "num_directions"),
        ({"num_directions": True}, TypeError, "num_directions"),  # the wrong type: not an int
        ({"span": 0.0}, ValueError, "span"),
        ({"span": -0.1}, ValueError, "span"),
        ({"span": math.nan}, ValueError, "span"),
        ({"points": 2}, ValueError, "points"),
        ({"points": 3.0}, TypeError, "points"),  # the wrong type: not an int
        ({"chunk_size": 0}, ValueError, "chunk_size"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    X, Y = _data()
    problem = Problem(_mlp(), nn.MSELoss(), (X, Y))
    with pytest.raises(error, match=match):
        roughness_index(problem, **{"num_directions": 3, **kwargs})


def test_bad_directions_raise_clear_errors():
    X, Y = _data()
    problem = Problem(_mlp(), nn.MSELoss(), (X, Y))
    one = filter_normalized(problem, 1, seed=0)
    with pytest.raises(ValueError, match="at least 2"):
        roughness_index(problem, directions=one)
    wrong = Directions(torch.zeros(3, problem.num_params + 1, dtype=torch.float64), "user", None)
    with pytest.raises(ValueError, match="shape"):
        roughness_index(problem, directions=wrong)
    with pytest.raises(TypeError, match="seed"):
        roughness_index(problem, 3, seed=1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        roughness_index(problem, 2, span=0.1, points=3)


def test_bad_hessian_engine_fails_before_any_curve():
    X, Y = _data()
    problem = Problem(_mlp(), nn.MSELoss(), (X, Y))
    with pytest.raises(ValueError, match="engine"):
        roughness_index(problem, 2, engine="magic")
    r = roughness_index(problem, 2, span=0.1, points=3, engine="magic", quadratic=False)
    assert r.curvatures is None


def test_a_generator_seed_gives_the_int_seed_it_records():
    X, Y = _data()
    problem = Problem(_mlp(), nn.MSELoss(), (X, Y))
    gen = torch.Generator().manual_seed(5)
    state = gen.get_state()
    r = roughness_index(problem, 2, span=0.1, points=3, seed=gen, quadratic=False)
    assert isinstance(r.seed, int) and not torch.equal(gen.get_state(), state)  # one int drawn from the generator
    again = roughness_index(problem, 2, span=0.1, points=3, seed=r.seed, quadratic=False)
    assert np.array_equal(again.curves, r.curves) and again.seed == r.seed
