"""Surfaces against independent computations; plots; no side effects."""

from __future__ import annotations

import copy

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.collections import QuadMesh
from matplotlib.contour import ContourSet
from matplotlib.lines import Line2D
from mpl_toolkits.mplot3d.art3d import Poly3DCollection
from torch import nn
from torch.func import functional_call

from landscape import Problem
from landscape.surface import Surface, filter_normalized, from_vectors, interpolate, random, surface
from tests.conftest import make_case, reference_loss_fn, reference_point
from tests.helpers import gaussian_weights
from tests.surface.helpers import assert_same_state, case_problem, model_state, untidy_model

# Selected before any figure exists (pyplot picks its backend lazily): no display needed.
matplotlib.use("Agg")


@pytest.mark.parametrize("name", ["mlp", "mlp_subset", "mse", "cnn_bn_eval", "cnn_bn_train"])
def test_origin_is_exactly_the_problem_loss(name):
    problem = case_problem(make_case(name))
    s = surface(problem, filter_normalized(problem, 2, seed=0), resolution=3)
    assert s.coords[0][1] == 0.0 and s.coords[1][1] == 0.0
    assert s.loss[1, 1] == problem.loss()


def test_symmetric_span_with_odd_resolution_contains_zero_exactly():
    problem = case_problem(make_case("mlp"))
    s = surface(problem, random(problem, 1, seed=1), span=(-0.7, 0.7), resolution=21)
    assert s.coords[0][10] == 0.0
    assert s.loss[10] == problem.loss()
    np.testing.assert_allclose(s.coords[0], np.linspace(-0.7, 0.7, 21), rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", ["mlp", "mlp_subset", "cnn_bn_eval", "cnn_bn_train"])
def test_every_grid_point_matches_an_independent_loss(name):
    case = make_case(name)
    problem = case_problem(case)
    d = filter_normalized(problem, 2, seed=2)
    s = surface(problem, d, span=(-0.5, 1.0), resolution=3)
    f = reference_loss_fn(case)
    w = reference_point(case)
    with torch.no_grad():
        for i, a in enumerate(s.coords[0]):
            for j, b in enumerate(s.coords[1]):
                ref = float(f(w + float(a) * d.vectors[0] + float(b) * d.vectors[1]))
                assert abs(s.loss[i, j] - ref) < 1e-12 * max(1.0, abs(ref))


def test_quadratic_loss_matches_closed_form():
    """Linear regression with MSE: L(w + a d1 + b d2) = mean((r0 + a r1 + b r2)^2), an exact quadratic."""
    g = torch.Generator().manual_seed(7)
    model = nn.Linear(3, 2).double()
    gaussian_weights(model, g)
    X = torch.randn(23, 3, generator=g, dtype=torch.float64)
    y = torch.randn(23, 2, generator=g, dtype=torch.float64)
    problem = Problem(model, nn.MSELoss(), (X, y), batch_size=5)  # short last batch: weighting must be exact
    d = random(problem, 2, seed=3)
    s = surface(problem, d, span=(-2.0, 1.5), resolution=7)

    Xn, yn = X.numpy(), y.numpy()
    W, c = model.weight.detach().numpy(), model.bias.detach().numpy()
    r = [Xn @ W.T + c - yn]
    for k in range(2):
        parts = problem.unflatten(d.vectors[k])
        r.append(Xn @ parts["weight"].numpy().T + parts["bias"].numpy())
    m = np.array([[np.mean(ri * rj) for rj in r] for ri in r])
    A, B = np.meshgrid(s.coords[0], s.coords[1], indexing="ij")
    closed = m[0, 0] + 2 * A * m[0, 1] + 2 * B * m[0, 2] + A**2 * m[1, 1] + 2 * A * B * m[1, 2] + B**2 * m[2, 2]
    np.testing.assert_allclose(s.loss, closed, rtol=1e-10, atol=1e-12)
    assert s.accuracy is None  # float targets: no accuracy


def test_loss_axes_follow_direction_order():
    case = make_case("mlp")
    problem = case_problem(case)
    g = torch.Generator().manual_seed(0)
    tiny = 1e-4 * torch.randn(problem.num_params, generator=g, dtype=torch.float64)
    large = 3.0 * torch.randn(problem.num_params, generator=g, dtype=torch.float64)
    s = surface(problem, from_vectors(problem, torch.stack([tiny, large])), resolution=5)
    assert s.loss.shape == (5, 5)
    # axis 0 barely moves the loss, axis 1 moves it a lot
    assert np.ptp(s.loss, axis=0).max() < 1e-2 * np.ptp(s.loss, axis=1).min()
    f, w = reference_loss_fn(case), reference_point(case)
    with torch.no_grad():
        ref = float(f(w + float(s.coords[0][0]) * tiny + float(s.coords[1][4]) * large))
    assert abs(s.loss[0, 4] - ref) < 1e-12 * max(1.0, ref)


def test_three_directions_give_a_cube():
    problem = case_problem(make_case("mse"))
    s = surface(problem, random(problem, 3, seed=0), resolution=3)
    assert s.loss.shape == (3, 3, 3) and len(s.coords) == 3
    assert s.loss[1, 1, 1] == problem.loss()
    with pytest.raises(ValueError, match="3D"):
        s.plot()


def test_accuracy_matches_direct_computation():
    case = make_case("mlp")
    problem = case_problem(case)
    s = surface(problem, filter_normalized(problem, 2, seed=0), span=(-3, 3), resolution=5)
    assert s.accuracy is not None and s.accuracy.shape == s.loss.shape
    assert np.all((s.accuracy >= 0) & (s.accuracy <= 1))
    assert np.ptp(s.accuracy) > 0
    state = {k: v.detach() for k, v in case.model.named_parameters()}
    with torch.no_grad():
        direct = float((functional_call(case.model, state, (case.X,)).argmax(dim=1) == case.y).double().mean())
    assert s.accuracy[2, 2] == pytest.approx(direct, abs=1e-15)
    assert surface(problem, random(problem, 1), resolution=3, accuracy=False).accuracy is None


def test_settings_describe_the_run():
    problem = case_problem(make_case("cnn_bn_eval"))
    s = surface(problem, filter_normalized(problem, 1, seed=9), span=(-0.5, 0.5), resolution=3)
    assert isinstance(s, Surface)
    assert s.settings["problem"] == problem.describe()
    assert s.settings["span"] == (-0.5, 0.5) and s.settings["resolution"] == 3
    assert s.settings["directions"]["kind"] == "filter_normalized" and s.settings["directions"]["seed"] == 9
    assert s.wall_time > 0


def test_bad_arguments_are_named():
    problem = case_problem(make_case("mlp"))
    other = case_problem(make_case("mlp_subset"))
    with pytest.raises(ValueError, match="another Problem"):
        surface(problem, random(other, 2))
    with pytest.raises(ValueError, match="resolution"):
        surface(problem, random(problem, 2), resolution=1)
    with pytest.raises(ValueError, match="span"):
        surface(problem, random(problem, 2), span=(1, -1))
    with pytest.raises(TypeError, match="Directions"):
        surface(problem, torch.zeros(2, problem.num_params))
    with pytest.raises(ValueError, match="architecture"):
        interpolate(problem, problem.model, nn.Linear(2, 2))


@pytest.mark.parametrize("name", ["mlp", "cnn_bn_train"])
def test_surface_interpolate_and_plot_leave_no_trace(name):
    case = make_case(name)
    problem = case_problem(case)
    model = untidy_model(problem, grad=0.5)
    other = copy.deepcopy(model)
    before = model_state(model)
    s = surface(problem, filter_normalized(problem, 2, seed=0), resolution=3)
    assert_same_state(before, model_state(model))
    interpolate(problem, model, other, resolution=5)
    assert_same_state(before, model_state(model))
    plt.close(s.plot().figure)
    assert_same_state(before, model_state(model))


@pytest.fixture
def surf2d() -> Surface:
    problem = case_problem(make_case("mlp"))
    return surface(problem, filter_normalized(problem, 2, seed=0), resolution=5)


@pytest.mark.parametrize("log_levels", [False, True])
@pytest.mark.parametrize("kind", ["contour", "filled", "heatmap", "3d"])
def test_plot_2d_kinds(surf2d, kind, log_levels, tmp_path):
    ax = surf2d.plot(kind, log_levels=log_levels)
    fig = ax.figure
    if kind in ("contour", "filled"):
        sets = [c for c in ax.collections if isinstance(c, ContourSet)]
        assert sets and sets[0].filled == (kind == "filled")
    if kind == "heatmap":
        assert any(isinstance(c, QuadMesh) for c in ax.collections)
    if kind == "3d":
        assert ax.name == "3d" and any(isinstance(c, Poly3DCollection) for c in ax.collections)
    assert len(fig.axes) == 2  # every 2D kind has a colour bar  # a colorbar for the filled kinds
    path = tmp_path / f"{kind}.png"
    fig.savefig(path)
    assert path.stat().st_size > 0
    plt.close(fig)


def test_plot_1d_line_and_errors(surf2d, tmp_path):
    problem = case_problem(make_case("mlp"))
    s = surface(problem, random(problem, 1), resolution=5)
    fig, ax = plt.subplots()
    assert s.plot(ax=ax, log_levels=True) is ax
    assert any(isinstance(line, Line2D) for line in ax.lines) and ax.get_yscale() == "log"
    assert s.plot(quantity="accuracy", ax=ax) is ax
    fig.savefig(tmp_path / "line.png")
    assert (tmp_path / "line.png").stat().st_size > 0
    with pytest.raises(ValueError, match="kind"):
        s.plot("contour", ax=ax)
    with pytest.raises(ValueError, match="kind"):
        surf2d.plot("line", ax=ax)
    with pytest.raises(ValueError, match="3D axes"):
        surf2d.plot("3d", ax=ax)
    plt.close(fig)
