"""The :func:`landscape.stability.stability` entry: no side effects on the model, optimizer, modes, gradients or the
global RNG; seeds as ints or generators; arguments checked (wrong type: TypeError, out of range: ValueError)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from landscape.stability import EdgeOfStabilityTracker, stability
from tests.stability.helpers import F64, Regression, one_thread, small_mlp  # noqa: F401


def _snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> tuple:
    return (
        copy.deepcopy(model.state_dict()),
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        [m.training for m in model.modules()],
        copy.deepcopy(opt.state_dict()),
        torch.get_rng_state(),
    )


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_no_side_effects_on_model_optimizer_mode_grads_or_global_rng():
    problem = small_mlp()
    model = problem.model
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    loss = problem.loss_fn(model(torch.ones(2, 3, dtype=F64)), torch.zeros(2, 2, dtype=F64))
    loss.backward()
    opt.step()
    before = _snapshot(model, opt)
    stability(problem, opt)
    stability(problem, "sgd", 0.01, batch_size=3)
    stability(problem, "sgd", 0.01, batch_size=3, exact=False, num_probes=4)
    stability(problem, "sam", 0.01, rho=0.05)
    tracker = EdgeOfStabilityTracker(problem, opt, every=1)
    tracker(0)
    tracker(1)
    assert _same(before, _snapshot(model, opt))


def test_a_generator_seed_gives_the_int_seed_the_report_records():
    q = Regression()
    kwargs = {"batch_size": 3, "exact": False, "num_probes": 2}  # Rademacher probes and sampled batches: seeded
    by_generator = stability(q.problem(), "sgd", 0.05, seed=torch.Generator().manual_seed(7), **kwargs)
    assert isinstance(by_generator.seed, int)
    by_int = stability(q.problem(), "sgd", 0.05, seed=by_generator.seed, **kwargs)
    assert [c.value for c in by_generator.criteria] == [c.value for c in by_int.criteria]


def test_a_wrong_type_is_a_type_error_and_a_value_out_of_range_a_value_error():
    q = Regression()
    problem = q.problem()
    with pytest.raises(TypeError, match="problem"):
        stability(object(), "gd", 0.1)
    with pytest.raises(TypeError, match="lr"):
        stability(problem, "gd", "0.1")
    with pytest.raises(ValueError, match="lr"):
        stability(problem, "gd", -0.1)
    with pytest.raises(ValueError, match="momentum"):
        stability(problem, "heavy_ball", 0.1, momentum=1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        stability(problem, "gd", 0.1, weight_decay=-1.0)
    with pytest.raises(TypeError, match="batch_size"):
        stability(problem, "sgd", 0.1, batch_size=2.0)
    with pytest.raises(ValueError, match="batch_size"):
        stability(problem, "sgd", 0.1, batch_size=len(q.X) + 1)
    with pytest.raises(ValueError, match="rho"):
        stability(problem, "sam", 0.1, rho=0.0)
    with pytest.raises(TypeError, match="seed"):
        stability(problem, "gd", 0.1, seed=1.5)
