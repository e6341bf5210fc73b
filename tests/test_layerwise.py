"""Per-layer traces and diagonals: exact against the blocks of the dense float64 Hessian, the Hutchinson fallback within
its error bars and consistent with diagonal(), groupings, AdaHessian's spatial averaging, table, plot and JSON."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest
import torch
from torch import nn

import landscape as L
from landscape.layerwise import LayerwiseCurvature, layerwise_curvature
from tests.conftest import make_case, reference_hessian
from tests.operators.test_operators import problem_of

matplotlib.use("Agg")


def _block_traces(H: torch.Tensor, problem: L.Problem, groups: tuple[tuple[str, ...], ...]) -> np.ndarray:
    offsets, start = {}, 0
    for n, k in zip(problem.param_names, problem.param_numels, strict=True):
        offsets[n] = (start, start + k)
        start += k
    d = torch.diagonal(H)
    return np.array([sum(float(d[slice(*offsets[n])].sum()) for n in g) for g in groups])


@pytest.mark.parametrize("name", ["mlp", "mlp_subset"])
def test_exact_layer_traces_are_the_dense_block_traces(name):
    pytest.importorskip("backpack")
    case = make_case(name)
    problem = problem_of(case)
    H = reference_hessian(case)
    r = layerwise_curvature(problem)
    assert isinstance(r, LayerwiseCurvature) and r.method == "exact" and r.num_matvecs == 0
    assert r.names == tuple(dict.fromkeys(n.rsplit(".", 1)[0] for n in problem.param_names))
    np.testing.assert_allclose(r.traces, _block_traces(H, problem, r.members), rtol=1e-10, atol=1e-14)
    assert np.all(r.stderrs == 0) and r.total == pytest.approx(float(torch.trace(H)), rel=1e-10, abs=1e-14)
    parts = r.per_parameter()
    assert list(parts) == problem.param_names
    assert all(parts[n].shape == s for n, s in zip(problem.param_names, problem.param_shapes, strict=True))
    assert "exact" in r.table() and all(g in r.table() for g in r.names)
    assert r.settings["requested"] == "auto" and "DiagHessian" in r.settings["note"]


def test_fallback_estimates_every_layer_within_its_error_and_matches_diagonal():
    case = make_case("mse")  # Softplus: no exact Hessian diagonal
    problem = problem_of(case)
    H = reference_hessian(case)
    op = L.hessian(problem)
    r = layerwise_curvature(op, by="parameter", num_matvecs=200, seed=4)
    assert r.method == "hutchinson" and r.num_matvecs == 200 and r.settings["note"].startswith("auto: estimated")
    exact = _block_traces(H, problem, r.members)
    assert np.all(np.abs(r.traces - exact) <= 4 * r.stderrs)
    assert abs(r.total - float(torch.trace(H))) <= 4 * r.total_stderr
    same = L.diagonal(op, method="hutchinson", num_matvecs=200, seed=4)  # same probes, same estimate
    torch.testing.assert_close(r.diagonal.value, same.value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r.diagonal.stderr, same.stderr, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(r.traces.sum(), float(same.value.sum()), rtol=1e-12)


def test_groupings():
    problem = problem_of(make_case("mlp"))
    named = layerwise_curvature(problem, by={"weights": "*.weight", "first bias": ["0.bias"]}, method="hutchinson")
    assert named.names == ("weights", "first bias", "(other)")
    assert named.members == (("0.weight", "2.weight"), ("0.bias",), ("2.bias",))
    assert named.sizes.tolist() == [30 + 15, 5, 3]
    with pytest.raises(ValueError, match="matches none"):
        layerwise_curvature(problem, by={"convs": "conv*"}, method="hutchinson")
    with pytest.raises(ValueError, match="by must be"):
        layerwise_curvature(problem, by="layer")
    with pytest.raises(TypeError, match="Problem or an operator built from one"):
        layerwise_curvature(L.MatrixOperator(torch.eye(3)))


def test_adahessian_averages_each_kernel_over_its_spatial_positions():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 3 * 3, 3)).double()
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(9, 1, 5, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (9,), generator=g)
    r = layerwise_curvature(L.Problem(model, nn.CrossEntropyLoss(), (X, y)), num_matvecs=20)
    D = r.per_parameter()
    pre = r.adahessian(power=0.5)
    kernel = pre[: D["0.weight"].numel()].view_as(D["0.weight"])
    expected = D["0.weight"].mean(dim=(2, 3), keepdim=True).abs().sqrt()
    torch.testing.assert_close(kernel, expected.expand_as(kernel))
    torch.testing.assert_close(pre[-3:], D["3.bias"].abs().sqrt())  # no averaging below three dimensions
    torch.testing.assert_close(r.adahessian(spatial_average=False), r.diagonal.value.abs())


def test_plot_and_json():
    r = layerwise_curvature(problem_of(make_case("mse")), num_matvecs=10)
    ax = r.plot()
    assert len(ax.patches) == len(r.names)
    ax = r.plot(per_parameter=True, log=True)
    assert "diagonal mean" in ax.get_ylabel()
    d = json.loads(json.dumps(r.to_dict()))
    assert d["names"] == list(r.names) and d["method"] == "hutchinson" and d["total"] == pytest.approx(r.total)


def test_probe_blocks_shrink_to_the_budget_with_the_same_probes(monkeypatch):
    problem = problem_of(make_case("mlp"))
    n = problem.num_params
    op = L.hessian(problem)
    full = layerwise_curvature(op, method="hutchinson", num_matvecs=20, seed=5)
    # Room for the two accumulators and 3 probes (3 vectors and one float64 each), not 50: blocks of 3, same draws.
    monkeypatch.setattr("landscape.layerwise.default_budget", lambda device="cpu": n * 16 + 3 * n * 32)
    small = layerwise_curvature(op, method="hutchinson", num_matvecs=20, seed=5)
    np.testing.assert_allclose(small.traces, full.traces, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(small.diagonal.value, full.diagonal.value, rtol=1e-12, atol=1e-15)
    # Not even one probe: refused before any product.
    monkeypatch.setattr("landscape.layerwise.default_budget", lambda device="cpu": n * 16 + n * 31)
    before = op.num_matvecs
    with pytest.raises(L.memory.MemoryBudgetError, match=r"needs .* for one probe of 53 parameters"):
        layerwise_curvature(op, method="hutchinson", num_matvecs=100)
    assert op.num_matvecs == before
