"""Helpers shared by the surface tests: the Problem of a test case, and a model state that analyses must leave as
they found it."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from landscape import Problem
from tests.conftest import make_case


def case_problem(case) -> Problem:
    """The Problem of a test case of ``tests.conftest.make_case`` (its model, loss, batches, selection and mode)."""
    return Problem(case.model, case.loss_fn, case.batches(), params=case.params, mode=case.mode)


def named_problem(name: str) -> Problem:
    """The Problem of the test case ``make_case(name)``."""
    return case_problem(make_case(name))


def untidy_model(problem: Problem, grad: float = 0.25) -> nn.Module:
    """The Problem's model put in train mode but for its first module (eval), every parameter holding the gradient
    ``grad``: a state an analysis must leave as it found it."""
    model = problem.model
    model.train()
    model[0].eval()
    for p in model.parameters():
        p.grad = torch.full_like(p, grad)
    return model


def model_state(model: nn.Module):
    """What an analysis must not change: weights and buffers, train/eval modes, gradients, the global RNGs."""
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        torch.get_rng_state(),
        np.random.get_state()[1].copy(),
    )


def assert_same_state(before, after) -> None:
    sd0, modes0, grads0, trng0, nrng0 = before
    sd1, modes1, grads1, trng1, nrng1 = after
    assert sd0.keys() == sd1.keys()
    assert all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    assert modes0 == modes1
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(grads0, grads1, strict=True))
    assert torch.equal(trng0, trng1)
    assert np.array_equal(nrng0, nrng1)


def set_params(model: nn.Module, problem: Problem, flat: torch.Tensor) -> nn.Module:
    """A copy of ``model`` whose selected parameters are the flat vector ``flat``."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        named = dict(out.named_parameters())
        for name, value in problem.unflatten(flat).items():
            named[name].copy_(value)
    return out
