"""Helpers shared by the batch-size scaling tests: problems with closed-form references built without landscape.

Per-example gradients of linear least squares in closed form (``g_i = 2 (x_i^T w - y_i) x_i``, ``H = (2/n) X^T X``)
and dense Hessians from ``torch.func.hessian``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call

from landscape import Problem


def seeded(seed: int) -> torch.Generator:
    """A fresh CPU generator seeded with ``seed``."""
    return torch.Generator().manual_seed(seed)


def regression(n: int, d: int, *, noise: float, offset: float, seed: int = 0, reduction: str = "mean", batch=None):
    """``y = X w* + noise * eps``, ``X ~ N(0, I)``; a linear model at ``w = w* + offset * u`` (``u`` a random unit)."""
    g = seeded(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    w_star = torch.randn(d, 1, generator=g, dtype=torch.float64)
    y = X @ w_star + noise * torch.randn(n, 1, generator=g, dtype=torch.float64)
    u = torch.randn(d, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_((w_star + offset * u / u.norm()).T)
    return Problem(model, nn.MSELoss(reduction=reduction), (X, y), batch_size=batch), X, y


def exact_noise(problem: Problem, X: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """``|G|^2``, ``tr(Sigma)``, ``tr(H Sigma)``, ``G^T H G`` from all per-example gradients of the mean MSE."""
    w = problem.model.weight.detach().T
    g = 2.0 * (X @ w - y) * X  # (n, d) per-example gradients of (x^T w - y)^2
    n = len(X)
    G = g.mean(0)
    D = g - G
    H = 2.0 * X.T @ X / n
    sigma = D.T @ D / n
    return {
        "g2": float(G @ G),
        "tr_sigma": float(torch.trace(sigma)),
        "tr_h_sigma": float(torch.trace(H @ sigma)),
        "ghg": float(G @ H @ G),
    }


def tiny_mlp(seed: int = 1, n: int = 24, reduction: str = "mean", batch: int | None = 10):
    g = seeded(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.7 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    X = torch.randn(n, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return Problem(model, nn.CrossEntropyLoss(reduction=reduction), (X, y), batch_size=batch), X, y


def dense_hessian(model: nn.Module, loss_fn, X, y) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(w):
        parts, i = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            k = math.prod(shape)
            parts[name] = w[i : i + k].view(shape)
            i += k
        return loss_fn(functional_call(model, parts, (X,)), y)

    return torch.func.hessian(f)(w0)
