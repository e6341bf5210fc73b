"""The faults measured in the `loss-landscapes` package, each one a test that ours does not have them."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from landscape import Problem
from landscape.models import mlp
from landscape.surface import filter_normalized, interpolate, random, surface


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 20, generator=g), torch.randint(0, 4, (64,), generator=g)


def _problem(model: nn.Module | None = None) -> Problem:
    model = mlp(20, [64, 64], 4, seed=0) if model is None else model
    return Problem(model, nn.CrossEntropyLoss(), _data(), batch_size=32)


def test_grid_centre_is_the_models_own_loss():
    # loss-landscapes' grid over [-d, d) steps past the origin: its centre value is not the model's loss.
    problem = _problem()
    for resolution in (3, 11, 21, 51):
        s = surface(problem, random(problem, 2, seed=1), span=(-1.0, 1.0), resolution=resolution)
        c = resolution // 2
        assert s.coords[0][c] == 0.0 and s.coords[1][c] == 0.0
        assert s.loss[c, c] == problem.loss()


def test_random_directions_are_zero_mean_gaussian():
    # loss-landscapes draws directions uniform on [0, 1): every direction points into the positive orthant.
    problem = _problem()
    n = problem.num_params
    d = random(problem, 2, seed=3).vectors
    for v in d:
        # mean of n standard normals: |mean| < 4 / sqrt(n) (a uniform [0, 1) draw has mean 0.5); variance 1 +- 5%
        assert abs(float(v.mean())) < 4 / np.sqrt(n)
        assert abs(float(v.var()) - 1.0) < 0.05
        assert 0.45 < float((v > 0).double().mean()) < 0.55
    # filter normalisation rescales slices by positive factors only: still symmetric about zero
    f = filter_normalized(problem, 1, seed=3, ignore="biasbn").vectors[0]
    nonzero = f[f != 0]
    assert 0.45 < float((nonzero > 0).double().mean()) < 0.55


def test_model_weights_flags_and_mode_are_untouched():
    # loss-landscapes leaves the user's model with changed weights and requires_grad=False.
    model = mlp(20, [64, 64], 4, seed=0)
    model.train()
    next(model.parameters()).requires_grad_(False)  # a frozen layer must stay frozen, the others trainable
    problem = _problem(model)
    flags = [p.requires_grad for p in model.parameters()]
    weights = copy.deepcopy(model.state_dict())
    other = copy.deepcopy(model)
    surface(problem, filter_normalized(problem, 2, seed=0), resolution=5, batch_points=4)
    interpolate(problem, model, other, resolution=5)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert model.training and all(p.grad is None for p in model.parameters())
