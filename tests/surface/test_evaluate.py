"""How grid points are evaluated: batched through vmap, capped by a memory budget, streamed from a loader, falling
back to one point at a time; all agreeing with one-by-one evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from landscape import Problem
from landscape.surface import filter_normalized, random, surface
from tests.conftest import make_case
from tests.surface.helpers import assert_same_state, case_problem, model_state


@pytest.mark.parametrize("name", ["mlp", "mlp_subset", "cnn_bn_eval", "cnn_bn_train"])
@pytest.mark.parametrize("batch_points", [3, "auto"])
def test_batched_points_agree_with_one_by_one(name, batch_points):
    problem = case_problem(make_case(name))
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


def test_bad_batch_points_are_named():
    problem = case_problem(make_case("mlp"))
    for bad in (0, -2, 1.5, "fast", True):
        with pytest.raises(ValueError, match="batch_points"):
            surface(problem, random(problem, 1), resolution=3, batch_points=bad)


def test_memory_budget_caps_vmap_groups_and_keeps_values():
    problem = case_problem(make_case("mlp"))
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
    problem = case_problem(case)
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
    before = model_state(case.model)
    params_before = {n: p for n, p in case.model.named_parameters()}
    with pytest.raises(RuntimeError, match="boom"):
        surface(problem, filter_normalized(problem, 2, seed=0), resolution=5)
    assert_same_state(before, model_state(case.model))
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
