"""Shared pieces of the stability tests: least-squares quadratics with a known Hessian, a bisection on real optimizer
runs, and small float64 networks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from landscape.problem import Problem
from tests.helpers import gaussian_weights

F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    """These problems have at most 60 parameters: intra-op threads only add synchronisation (tens of times slower on
    a busy machine), so run single-threaded and restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def linear(d: int, weight: torch.Tensor) -> nn.Linear:
    model = torch.nn.utils.skip_init(nn.Linear, d, 1, bias=False, dtype=F64)
    with torch.no_grad():
        model.weight.copy_(weight.reshape(1, d))
    return model


class Regression:
    """Least squares ``L(w) = mean_i (x_i^T w - y_i)^2``: Hessian ``H = 2 X^T X / n``, minimiser ``w*``."""

    def __init__(self, n: int = 24, scales: tuple[float, ...] = (2.0, 1.2, 0.9, 0.7), seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        d = len(scales)
        self.X = torch.randn(n, d, generator=g, dtype=F64) * torch.tensor(scales, dtype=F64)
        self.y = self.X @ torch.randn(d, 1, generator=g, dtype=F64) + 0.1 * torch.randn(n, 1, generator=g, dtype=F64)
        self.w_star = torch.linalg.lstsq(self.X, self.y).solution.reshape(-1)
        self.H = 2.0 * self.X.T @ self.X / n
        evals, evecs = torch.linalg.eigh(self.H)
        self.lam, self.v1 = float(evals[-1]), evecs[:, -1]
        self.d = d
        self.start = 1e-6 * (self.v1 + 0.5 * torch.randn(d, generator=g, dtype=F64))

    def model(self, offset: torch.Tensor | None = None) -> nn.Linear:
        return linear(self.d, self.w_star + (self.start if offset is None else offset))

    def problem(self, model: nn.Module | None = None) -> Problem:
        return Problem(self.model() if model is None else model, nn.MSELoss(), (self.X, self.y))

    def loss(self, model: nn.Module) -> torch.Tensor:
        return nn.functional.mse_loss(model(self.X), self.y)

    def diverges(
        self,
        make_optimizer,
        lr: float,
        steps: int = 600,
        sam_rho: float | None = None,
        center: torch.Tensor | None = None,
    ) -> bool:
        """Run the optimizer from ``center + start`` (default ``w*``, the fixed point without weight decay); unstable
        iff the deviation from ``center`` grows between the two halves of the run. A deviation that has shrunk to
        rounding (``1e3 eps (1 + |center|)``) is stable: there the two halves hold only rounding noise, whose order
        depends on the memory layout of the run (a coin flip that made a bisection on Nesterov momentum stop 4%
        below its threshold in one process out of four)."""
        center = self.w_star if center is None else center
        model = linear(self.d, center + self.start)
        w = model.weight
        opt = make_optimizer([w], lr)
        d0 = float(self.start.norm())
        norms = []
        for _ in range(steps):
            opt.zero_grad()
            self.loss(model).backward()
            if sam_rho is not None:
                g = w.grad.detach().clone()
                with torch.no_grad():
                    w.add_(sam_rho * g)
                opt.zero_grad()
                self.loss(model).backward()
                with torch.no_grad():
                    w.sub_(sam_rho * g)
            opt.step()
            dev = float((w.detach().reshape(-1) - center).norm())
            if not math.isfinite(dev) or dev > 1e4 * d0:
                return True
            norms.append(dev)
        if min(norms) <= 1e3 * torch.finfo(F64).eps * (1.0 + float(center.norm())):
            return False
        half = steps // 2
        return max(norms[-20:]) > max(norms[half - 20 : half])


def critical_lr(diverges, predicted: float, iters: int = 14) -> float:
    lo, hi = 0.7 * predicted, 1.4 * predicted
    assert not diverges(lo) and diverges(hi), "the bracket around the predicted threshold does not bracket"
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if diverges(mid) else (mid, hi)
    return 0.5 * (lo + hi)


def make_sgd(momentum: float = 0.0, nesterov: bool = False, dampening: float = 0.0):
    return lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, dampening=dampening)


def small_mlp(reduction: str = "mean") -> Problem:
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    gaussian_weights(model, g)
    X = torch.randn(12, 3, generator=g, dtype=F64)
    y = torch.randn(12, 2, generator=g, dtype=F64)
    return Problem(model, nn.MSELoss(reduction=reduction), (X, y), batch_size=5)


def mlp_problem(seed: int = 0) -> tuple[nn.Module, Problem]:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=F64))
    X = torch.randn(32, 4, generator=g, dtype=F64)
    y = torch.randn(32, 2, generator=g, dtype=F64)
    return model, Problem(model, nn.MSELoss(), (X, y))
