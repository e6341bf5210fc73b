"""Helpers shared by the sharpness tests: linear least squares (a quadratic with a known Hessian) at and off its
minimum, the same loss written without landscape, and a small ReLU network."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from landscape import Problem
from tests.helpers import gaussian_weights

N, D_IN, D_OUT = 30, 3, 2


def make_data(seed: int = 0, orthogonal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets; with ``orthogonal`` the columns of ``[X, 1]`` are orthogonal, so the Hessian is diagonal."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, D_IN, generator=g, dtype=torch.float64)
    Y = torch.randn(N, D_OUT, generator=g, dtype=torch.float64)
    if orthogonal:
        Q, _ = torch.linalg.qr(X - X.mean(dim=0))
        X = Q * torch.tensor([1.5, 1.0, 0.6], dtype=torch.float64) * math.sqrt(N)
    return X, Y


def design(X: torch.Tensor) -> torch.Tensor:
    return torch.cat([X, torch.ones(len(X), 1, dtype=torch.float64)], dim=1)


def least_squares_model(X: torch.Tensor, Y: torch.Tensor, offset: torch.Tensor | None = None) -> nn.Linear:
    """``nn.Linear`` at the exact minimum of the MSE (normal equations in float64), moved by ``offset`` (flat)."""
    A = design(X)
    W = torch.linalg.solve(A.T @ A, A.T @ Y)
    model = nn.Linear(D_IN, D_OUT).double()
    with torch.no_grad():
        model.weight.copy_(W[:-1].T)
        model.bias.copy_(W[-1])
        if offset is not None:
            model.weight.add_(offset[: D_IN * D_OUT].view(D_OUT, D_IN))
            model.bias.add_(offset[D_IN * D_OUT :])
    return model


def least_squares_problem(
    X: torch.Tensor | None = None,
    Y: torch.Tensor | None = None,
    offset: torch.Tensor | None = None,
    batch_size: int | None = None,
) -> Problem:
    """The mean-squared-error Problem of :func:`least_squares_model` on ``(X, Y)`` (default :func:`make_data`): at its
    minimum, or ``offset`` away from it."""
    if X is None or Y is None:
        X, Y = make_data()
    return Problem(least_squares_model(X, Y, offset), nn.MSELoss(), (X, Y), batch_size=batch_size)


def exact_hessian(X: torch.Tensor) -> torch.Tensor:
    """Hessian of ``mean((X W^T + b - Y)^2)`` in the flat order (weight row-major, then bias): block diagonal."""
    A = design(X)
    G = 2.0 / (N * D_OUT) * (A.T @ A)
    H = torch.zeros(D_OUT * (D_IN + 1), D_OUT * (D_IN + 1), dtype=torch.float64)
    wi = [[o * D_IN + i for i in range(D_IN)] + [D_OUT * D_IN + o] for o in range(D_OUT)]
    for idx in wi:
        H[np.ix_(idx, idx)] = G
    return H


def loss_function(model: nn.Module, X: torch.Tensor, Y: torch.Tensor):
    """Full-data MSE as a function of the flat parameters, written without landscape."""
    named = dict(model.named_parameters())

    def f(flat: torch.Tensor) -> float:
        params, i = {}, 0
        for n, p in named.items():
            params[n] = flat[i : i + p.numel()].view(p.shape)
            i += p.numel()
        with torch.no_grad():
            return float(nn.functional.mse_loss(functional_call(model, params, (X,)), Y))

    w = torch.cat([p.detach().reshape(-1) for p in named.values()])
    return f, w


def random_offset(seed: int = 7, scale: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(D_OUT * (D_IN + 1), generator=g, dtype=torch.float64)


def relu_mlp(seed: int = 1) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    return gaussian_weights(model, g)


def split_flat(model: nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for n, p in model.named_parameters():
        out[n] = flat[i : i + p.numel()].view(p.shape)
        i += p.numel()
    return out
