"""The one-point-at-a-time surface path: direction views, in-place points and accuracy counts, exactly as before."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch.func import functional_call

from landscape import Problem
from landscape.surface import filter_normalized, random, surface
from landscape.surface.evaluate import _Predictions, _warn_non_finite
from landscape.surface.grid import _grid, _param_views, _surface_points
from tests.conftest import make_case


def _problem(name: str) -> Problem:
    case = make_case(name)
    return Problem(case.model, case.loss_fn, case.batches(), params=case.params, mode=case.mode)


@pytest.mark.parametrize("name", ["mlp", "mlp_subset", "cnn_bn_eval"])
def test_param_views_are_unflatten_without_a_copy(name):
    problem = _problem(name)
    vector = torch.randn(problem.num_params, dtype=problem.dtype, generator=torch.Generator().manual_seed(0))
    views = _param_views(problem, vector)
    reference = problem.unflatten(vector)
    assert list(views) == list(reference) == problem.param_names
    for n, v in views.items():
        assert v.shape == reference[n].shape and torch.equal(v, reference[n])
        assert v.untyped_storage().data_ptr() == vector.untyped_storage().data_ptr()  # a view, not a copy


def test_points_are_written_in_place_with_the_fused_adds():
    problem = _problem("mlp")
    vectors = random(problem, 3, seed=4).vectors
    coords = np.array([[0.0, 0.0, 0.0], [0.25, -1.5, 0.75], [-0.5, 0.0, 2.0]])
    points = _surface_points(problem, vectors, coords)
    out = points.buffers()
    ptrs = {n: t.data_ptr() for n, t in out.items()}
    named = dict(problem.model.named_parameters())
    pieces = [problem.unflatten(v) for v in vectors]
    for i, a in enumerate(coords):
        points.fill(i, out)
        for n, t in out.items():
            expected = torch.add(named[n].detach(), pieces[0][n], alpha=float(a[0]))
            for j in (1, 2):
                expected.add_(pieces[j][n], alpha=float(a[j]))
            assert torch.equal(t, expected)  # bit for bit: w_p + a_1 d_1p, then + a_j d_jp in place
            assert t.data_ptr() == ptrs[n]
    points.fill(0, out)
    assert all(torch.equal(out[n], named[n]) for n in out)


@pytest.mark.parametrize("batch_points", [1, 3])
def test_accuracy_counts_every_point_exactly(batch_points):
    case = make_case("mlp")
    problem = _problem("mlp")
    d = filter_normalized(problem, 2, seed=0)
    s = surface(problem, d, span=(-3, 3), resolution=3, batch_points=batch_points)
    named = dict(problem.model.named_parameters())
    d0, d1 = (problem.unflatten(v) for v in d.vectors)
    with torch.no_grad():
        for i, a in enumerate(s.coords[0]):
            for j, b in enumerate(s.coords[1]):
                # The surface's own arithmetic, so the parameters (and any near-tie argmax) are the same bit for bit.
                state = {n: torch.add(named[n], d0[n], alpha=float(a)).add_(d1[n], alpha=float(b)) for n in d0}
                hits = int((functional_call(case.model, state, (case.X,)).argmax(dim=1) == case.y).sum())
                assert s.accuracy[i, j] == hits / len(case.y)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.bfloat16])
def test_predictions_equal_torch_argmax_with_ties_and_nan(dtype):
    """numpy's argmax (host, numpy dtypes) and torch's (anything else) pick the same class: the first maximum, and a
    NaN counts as the maximum in both."""
    g = torch.Generator().manual_seed(0)
    outputs = torch.randint(0, 3, (40, 5), generator=g).to(dtype)  # few distinct values: many ties
    outputs[3, 2] = float("nan")
    outputs[7, :] = float("nan")
    targets = torch.randint(0, 5, (40,), generator=g)
    predicted = _Predictions(40, torch.device("cpu"))
    predicted.set_targets(0, targets[:25])
    predicted.set_targets(25, targets[25:].int())  # any integer label dtype
    predicted.record(0, outputs[:25])
    predicted.record(25, outputs[25:])
    expected = torch.argmax(outputs, dim=-1)
    assert torch.equal(predicted.predicted, expected)
    assert int(predicted.correct()) == int((expected == targets).sum())


def test_grid_is_numpy_linspace_bit_for_bit_with_exact_values_snapped():
    """The coordinates are computed in Python floats with np.linspace's arithmetic: the same values, bit for bit."""
    rng = np.random.default_rng(0)
    for _ in range(2000):
        low = float(rng.normal() * 10.0 ** rng.integers(-3, 3))
        high = low + float(abs(rng.normal()) * 10.0 ** rng.integers(-3, 3)) + 1e-9
        resolution = int(rng.integers(2, 120))
        coords = _grid((low, high), resolution, exact=())
        assert coords.dtype == np.float64 and np.array_equal(coords, np.linspace(low, high, resolution))
    # A value within rounding of an exact one is snapped onto it; the rest are left as they are.
    reference = np.linspace(-0.3, 0.9, 13)
    assert reference[9] == 0.5999999999999999  # rounding: not 0.6
    coords = _grid((-0.3, 0.9), 13, exact=(0.0, 0.6))
    assert coords[3] == 0.0 and coords[9] == 0.6
    keep = [i for i in range(13) if i != 9]
    assert np.array_equal(coords[keep], reference[keep])
    reference = np.linspace(-0.1, 0.5, 7)
    assert reference[1] == -1.3877787807814457e-17
    coords = _grid((-0.1, 0.5), 7, exact=(0.0,))
    assert coords[1] == 0.0 and np.array_equal(coords[2:], reference[2:]) and coords[0] == reference[0]


def test_non_finite_points_are_counted_and_the_first_is_named():
    losses = np.array([[0.5, np.inf, 0.1], [np.nan, 0.2, -np.inf]])
    with pytest.warns(RuntimeWarning, match=r"3 of 6 grid points have a non-finite loss \(first at index \(0, 1\)\)"):
        _warn_non_finite(losses.reshape(-1), losses.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_non_finite(np.array([0.0, 1.0, -2.0]), (3,))
