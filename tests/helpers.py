"""Helpers shared by tests in several folders: what a measurement or a generator must leave as it found it (the
global random number generators, a model in the middle of training), and seeded Gaussian weights."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn


@contextlib.contextmanager
def global_rng_untouched() -> Iterator[None]:
    """The block leaves torch's and numpy's global random number generators in the state it found them in."""
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    yield
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]


def untidy_mlp() -> nn.Sequential:
    """A float64 3-5-2 MLP with dropout, in train mode, with a frozen bias and a stale gradient on its last layer."""
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Dropout(0.5), nn.Linear(5, 2)).double()
    model[0].bias.requires_grad_(False)
    model.train()
    model[3].weight.grad = torch.full_like(model[3].weight, 0.25)
    return model


@contextlib.contextmanager
def model_untouched(model: nn.Module) -> Iterator[None]:
    """The block leaves ``model`` in train mode with the same state, ``requires_grad`` flags and gradients."""
    before = copy.deepcopy(model.state_dict())
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    yield
    assert all(m.training for m in model.modules())
    for n, t in model.state_dict().items():
        assert torch.equal(t, before[n]), n
    for n, p in model.named_parameters():
        assert p.requires_grad == flags[n], n
        assert (p.grad is None) if grads[n] is None else torch.equal(p.grad, grads[n]), n


def gaussian_weights(model: nn.Module, g: torch.Generator) -> nn.Module:
    """``model`` with every parameter drawn from N(0, 1) in float64 by ``g``, in the order of ``parameters()``."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return model
