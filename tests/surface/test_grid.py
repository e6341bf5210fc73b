"""Surfaces and interpolation against independent computations; plots; no side effects."""

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
from tests.surface.test_directions import _assert_same_state, _state

# Selected before any figure exists (pyplot picks its backend lazily): no display needed.
matplotlib.use("Agg")


def _problem(case) -> Problem:
    return Problem(case.model, case.loss_fn, case.batches(), params=case.params, mode=case.mode)


@pytest.mark.parametrize("name", ["mlp", "mlp_subset", "mse", "cnn_bn_eval", "cnn_bn_train"])
def test_origin_is_exactly_the_problem_loss(name):
    problem = _problem(make_case(name))
    s = surface(problem, filter_normalized(problem, 2, seed=0), resolution=3)
    assert s.coords[0][1] == 0.0 and s.coords[1][1] == 0.0
    assert s.loss[1, 1] == problem.loss()


def test_symmetric_span_with_odd_resolution_contains_zero_exactly():
    problem = _problem(make_case("mlp"))
    s = surface(problem, random(problem, 1, seed=1), span=(-0.7, 0.7), resolution=21)
    assert s.coords[0][10] == 0.0
    assert s.loss[10] == problem.loss()
    np.testing.assert_allclose(s.coords[0], np.linspace(-0.7, 0.7, 21), rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", ["mlp", "mlp_subset", "cnn_bn_eval", "cnn_bn_train"])
def test_every_grid_point_matches_an_independent_loss(name):
    case = make_case(name)
    problem = _problem(case)
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
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
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
    problem = _problem(case)
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
    problem = _problem(make_case("mse"))
    s = surface(problem, random(problem, 3, seed=0), resolution=3)
    assert s.loss.shape == (3, 3, 3) and len(s.coords) == 3
    assert s.loss[1, 1, 1] == problem.loss()
    with pytest.raises(ValueError, match="3D"):
        s.plot()


def test_accuracy_matches_direct_computation():
    case = make_case("mlp")
    problem = _problem(case)
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
    problem = _problem(make_case("cnn_bn_eval"))
    s = surface(problem, filter_normalized(problem, 1, seed=9), span=(-0.5, 0.5), resolution=3)
    assert isinstance(s, Surface)
    assert s.settings["problem"] == problem.describe()
    assert s.settings["span"] == (-0.5, 0.5) and s.settings["resolution"] == 3
    assert s.settings["directions"]["kind"] == "filter_normalized" and s.settings["directions"]["seed"] == 9
    assert s.wall_time > 0


def test_bad_arguments_are_named():
    problem = _problem(make_case("mlp"))
    other = _problem(make_case("mlp_subset"))
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
    problem = _problem(case)
    model = problem.model
    model.train()
    model[0].eval()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    other = copy.deepcopy(model)
    before = _state(model)
    s = surface(problem, filter_normalized(problem, 2, seed=0), resolution=3)
    _assert_same_state(before, _state(model))
    interpolate(problem, model, other, resolution=5)
    _assert_same_state(before, _state(model))
    plt.close(s.plot().figure)
    _assert_same_state(before, _state(model))


def _perturbed(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
        for n, b in other.named_buffers():
            if n.endswith("running_mean"):
                b.add_(0.5)
            elif n.endswith("running_var"):
                b.mul_(3.0)
    return other


@pytest.mark.parametrize("name", ["mlp", "cnn_bn_eval", "cnn_bn_train"])
def test_interpolation_endpoints_are_each_models_loss(name):
    case = make_case(name)
    pa = _problem(case)
    model_b = _perturbed(case.model, 1)
    pb = Problem(model_b, case.loss_fn, case.batches(), mode=case.mode)
    resolution = 41 if name == "mlp" else 5  # the default grid on the cheap case, 0 and 1 on the grid in both
    s = interpolate(pa, case.model, model_b, resolution=resolution)
    assert s.loss.shape == (resolution,)
    i0, i1 = (resolution - 1) // 4, 3 * (resolution - 1) // 4
    assert s.coords[0][i0] == 0.0 and s.coords[0][i1] == 1.0
    assert s.loss[i0] == pa.loss()
    assert s.loss[i1] == pb.loss()
    assert s.directions.kind == "interpolation"
    torch.testing.assert_close(s.directions.vectors[0], pb.params_vector() - pa.params_vector())


def test_interpolation_mixes_batchnorm_running_statistics():
    case = make_case("cnn_bn_eval")
    pa = _problem(case)
    model_b = _perturbed(case.model, 2)
    s = interpolate(pa, case.model, model_b, span=(0.0, 1.0), resolution=3)
    # parameters of b with the running statistics of a would give another loss at a = 1
    assert abs(s.loss[-1] - pa.loss(at=Problem(model_b, case.loss_fn, case.batches()).params_vector())) > 1e-3
    sd_a, sd_b = case.model.state_dict(), model_b.state_dict()
    for k, a in enumerate(s.coords[0]):
        mid = copy.deepcopy(case.model).eval()
        mid.load_state_dict(
            {n: (1 - a) * sd_a[n] + a * sd_b[n] if sd_a[n].is_floating_point() else sd_a[n] for n in sd_a}
        )
        with torch.no_grad():
            ref = float(case.loss_fn(mid(case.X), case.y))
        assert abs(s.loss[k] - ref) < 1e-12


@pytest.fixture
def surf2d() -> Surface:
    problem = _problem(make_case("mlp"))
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
    problem = _problem(make_case("mlp"))
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


@pytest.mark.parametrize("name", ["mlp", "mlp_subset", "cnn_bn_eval", "cnn_bn_train"])
@pytest.mark.parametrize("batch_points", [3, "auto"])
def test_batched_points_agree_with_one_by_one(name, batch_points):
    problem = _problem(make_case(name))
    d = filter_normalized(problem, 2, seed=4)
    one = surface(problem, d, span=(-0.8, 0.6), resolution=5)
    # chunk=7 < 25 points and not a multiple of 3: partial groups and several data passes
    many = surface(problem, d, span=(-0.8, 0.6), resolution=5, batch_points=batch_points, chunk=7)
    np.testing.assert_allclose(many.loss, one.loss, rtol=1e-10, atol=1e-12)
    if one.accuracy is not None:
        np.testing.assert_array_equal(many.accuracy, one.accuracy)
    assert one.settings["batch_points"] == 1 and one.settings["chunk"] == 64
    assert many.settings["chunk"] == 7
    if batch_points == "auto":
        assert many.settings["batch_points"] in (1, 4, 16)
        assert set(many.settings["auto_timings"]) == {"1", "4", "16"}
    else:
        assert many.settings["batch_points"] == 3


def test_batched_interpolation_agrees_and_keeps_exact_end_points():
    case = make_case("cnn_bn_eval")
    pa = _problem(case)
    model_b = _perturbed(case.model, 3)
    one = interpolate(pa, case.model, model_b, span=(-0.5, 1.5), resolution=9)
    many = interpolate(pa, case.model, model_b, span=(-0.5, 1.5), resolution=9, batch_points=4)
    np.testing.assert_allclose(many.loss, one.loss, rtol=1e-10)
    assert one.loss[2] == pa.loss()


def test_interpolation_between_two_other_models():
    case = make_case("cnn_bn_eval")
    problem = _problem(case)
    a, b = _perturbed(case.model, 4), _perturbed(case.model, 5)
    s = interpolate(problem, a, b, span=(0.0, 1.0), resolution=3)
    assert s.loss[0] == Problem(a, case.loss_fn, case.batches()).loss()
    assert s.loss[-1] == Problem(b, case.loss_fn, case.batches()).loss()


def test_bad_batch_points_are_named():
    problem = _problem(make_case("mlp"))
    for bad in (0, -2, 1.5, "fast", True):
        with pytest.raises(ValueError, match="batch_points"):
            surface(problem, random(problem, 1), resolution=3, batch_points=bad)


def test_diverging_points_are_kept_as_gaps_with_a_warning():
    case = make_case("cnn_bn_eval")
    problem = _problem(case)
    b = _perturbed(case.model, 6)
    with torch.no_grad():
        for n, buf in b.named_buffers():
            if n.endswith("running_var"):
                buf.mul_(50.0)  # extrapolating to a = -0.5 makes 1.5 v_a - 0.5 v_b negative: BatchNorm gives NaN
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        s = interpolate(problem, case.model, b, span=(-0.5, 1.0), resolution=7)
    assert np.isnan(s.loss[0]) and np.all(np.isfinite(s.loss[2:]))
    assert np.isnan(s.accuracy[0]) and np.all(np.isfinite(s.accuracy[2:]))
    assert s.loss[2] == problem.loss()
    plt.close(s.plot(log_levels=True).figure)  # the gap does not stop the plot


def test_memory_budget_caps_vmap_groups_and_keeps_values():
    problem = _problem(make_case("mlp"))
    d = filter_normalized(problem, 2, seed=2)
    one = surface(problem, d, span=(-0.5, 0.5), resolution=5)
    free = surface(problem, d, span=(-0.5, 0.5), resolution=5, batch_points=16, memory_budget=None)
    assert free.settings["batch_points"] == 16 and free.settings["memory"] == {}
    param_bytes = sum(p.numel() * p.element_size() for p in problem.model.parameters())
    probe = surface(problem, d, span=(-0.5, 0.5), resolution=3, batch_points=2)
    per_point = probe.settings["memory"]["bytes_per_point"]
    # A point holds a parameter set plus at least the model's output on the first batch.
    first = next(iter(problem.batches()))
    with torch.no_grad():
        output = problem.model(first.inputs)
    out_bytes = output.numel() * output.element_size()
    assert per_point >= param_bytes + out_bytes
    capped = surface(problem, d, span=(-0.5, 0.5), resolution=5, batch_points=16, memory_budget=3.5 * per_point)
    memory = capped.settings["memory"]
    assert capped.settings["batch_points"] == 3 and memory["points_that_fit"] == 3
    assert memory["batch_points_requested"] == 16 and memory["bytes_per_point"] == per_point
    np.testing.assert_allclose(capped.loss, one.loss, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(free.loss, one.loss, rtol=1e-10, atol=1e-12)
    auto = surface(problem, d, span=(-0.5, 0.5), resolution=5, batch_points="auto", memory_budget=5 * per_point)
    assert set(auto.settings["auto_timings"]) == {"1", "4"}  # 16 points do not fit: not even tried
    tiny = surface(problem, d, span=(-0.5, 0.5), resolution=3, batch_points=4, memory_budget=1)
    assert tiny.settings["batch_points"] == 1  # never below one point
    for bad in (0, -5, True):
        with pytest.raises(ValueError, match="memory_budget"):
            surface(problem, d, resolution=3, batch_points=4, memory_budget=bad)


def test_a_data_loader_gives_the_same_surface_as_tensors():
    case = make_case("cnn_bn_eval")
    problem = _problem(case)
    X = torch.cat([x for x, _ in case.batches()])
    y = torch.cat([t for _, t in case.batches()])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=len(case.batches()[0][1]))
    streamed = Problem(case.model, case.loss_fn, loader, mode=case.mode)
    assert not streamed.in_memory
    d = filter_normalized(problem, 2, seed=3)
    for bp in (1, 3):
        a = surface(problem, d, span=(-0.5, 0.5), resolution=3, batch_points=bp)
        b = surface(streamed, d, span=(-0.5, 0.5), resolution=3, batch_points=bp)
        np.testing.assert_allclose(b.loss, a.loss, rtol=1e-12, atol=0)


def test_an_error_part_way_leaves_the_model_as_it_was():
    case = make_case("mlp")
    calls = {"n": 0}

    def failing(outputs, targets):
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("boom")
        return case.loss_fn(outputs, targets)

    problem = Problem(case.model, failing, case.batches())
    before = _state(case.model)
    params_before = {n: p for n, p in case.model.named_parameters()}
    with pytest.raises(RuntimeError, match="boom"):
        surface(problem, filter_normalized(problem, 2, seed=0), resolution=5)
    _assert_same_state(before, _state(case.model))
    assert all(p is params_before[n] for n, p in case.model.named_parameters())


class _InputGradient(nn.Module):
    """A forward that differentiates with respect to its inputs (physics-informed losses do): vmap cannot run it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 3, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            u = torch.tanh(self.lin(x)).sum()
            (g,) = torch.autograd.grad(u, x, create_graph=True)
        return g


def test_a_forward_vmap_cannot_run_falls_back_to_one_point_or_says_so():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(12, 2, generator=g, dtype=torch.float64)
    problem = Problem(_InputGradient(), nn.MSELoss(), (X, torch.zeros(12, 2, dtype=torch.float64)))
    d = random(problem, 2, seed=0)
    one = surface(problem, d, span=(-0.5, 0.5), resolution=3)
    assert one.loss[1, 1] == problem.loss()
    auto = surface(problem, d, span=(-0.5, 0.5), resolution=3, batch_points="auto")
    assert auto.settings["batch_points"] == 1 and "torch.vmap" in auto.settings["memory"]["vmap_unsupported"]
    np.testing.assert_array_equal(auto.loss, one.loss)
    with pytest.raises(RuntimeError, match="batch_points=1"):
        surface(problem, d, span=(-0.5, 0.5), resolution=3, batch_points=2)
