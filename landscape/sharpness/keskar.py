"""Keskar sharpness: the largest relative loss increase in a box around the weights, by L-BFGS-B.

Keskar, Mudigere, Nocedal, Smelyanskiy, Tang 2017 ("On Large-Batch Training for Deep Learning: Generalization Gap
and Sharp Minima"), epsilon-sharpness in the full space (``A = I``) or a random ``p``-dimensional subspace (``A`` a
``P x p`` Gaussian matrix; its columns are normalised to unit length here, like those of ``A = I``):

    phi_{x,f}(eps, A) = 100 [max_{y in C_eps} f(x + A y) - f(x)] / (1 + f(x)),
    C_eps = {y : |y_i| <= eps (|(A^+ x)_i| + 1)},

maximised with scipy's L-BFGS-B under the box bounds (in float64) from the first-order corner (or a random point
of the box when the gradient is numerically zero). :func:`keskar_memory` says what it holds, so a part that cannot
fit the memory budget is refused before anything runs.

Every evaluation is functional (``problem.loss_and_grad(at=...)``): the model keeps its parameters, buffers,
``.grad`` and modes, and the global random state is never touched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import Bounds, minimize
from torch import Tensor

from landscape import reductions
from landscape._checks import Seed, check_int, check_positive, check_seed, generator
from landscape._json import field_dict
from landscape.linalg.probes import sample_probes, seed_record
from landscape.linalg.results import Diagnostics
from landscape.memory import MemoryBudgetError, default_budget, gib
from landscape.problem import Problem, check_problem
from landscape.sharpness._common import ScalarResult, gradient_is_zero

# Corrections scipy's L-BFGS-B keeps (its ``maxcor`` default): its float64 workspace holds 2 maxcor + 5 vectors.
LBFGSB_MAXCOR = 10


@dataclass(frozen=True)
class KeskarSharpness(ScalarResult, Diagnostics):
    """Keskar et al. 2017 epsilon-sharpness ``100 [max_{y in C_eps} f(x + A y) - f(x)] / (1 + f(x))``.

    Attributes
    ----------
    value
        The sharpness (in percent of ``1 + f(x)``) at the best point L-BFGS-B evaluated.
    loss, max_loss
        ``f(x)`` and ``f(x + A y*)``.
    perturbation
        ``A y*`` (flat, problem dtype/device).
    bounds
        ``(p,)`` half-widths ``eps (|(A^+ x)_i| + 1)`` of the box ``C_eps``.
    eps, subspace_dim
        The settings (``subspace_dim`` ``None``: the full space, ``A = I``).
    random_start
        The gradient was numerically zero, so L-BFGS-B started at a random point of the box instead of the
        first-order corner.
    iterations, converged, message
        L-BFGS-B's iteration count, success flag and message.
    num_gradient_evaluations
        Loss-and-gradient evaluations (``f(x)`` and every point L-BFGS-B asked for).
    seed, wall_time, settings
        From :class:`~landscape.linalg.results.Diagnostics` (``settings["problem"]``: the Problem's description;
        ``maxiter``, ``maxfun``).
    """

    value: float
    loss: float
    max_loss: float
    perturbation: Tensor
    bounds: np.ndarray
    eps: float
    subspace_dim: int | None
    random_start: bool
    iterations: int
    converged: bool
    message: str
    num_gradient_evaluations: int

    def summary(self) -> str:
        """A short human-readable report."""
        space = "full space" if self.subspace_dim is None else f"random {self.subspace_dim}-dim subspace"
        return (
            f"Keskar sharpness (eps = {self.eps:g}, {space}): {self.value:.6g} %, f(x) = {self.loss:.6g}, "
            f"max f = {self.max_loss:.6g} ({self.iterations} L-BFGS-B iterations, "
            f"{self.num_gradient_evaluations} gradient evaluations, {self.wall_time:.2f} s)"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers: the fields, with ``perturbation_norm`` for the perturbation and without the box."""
        return {
            **field_dict(self, exclude=("perturbation", "bounds")),
            "perturbation_norm": reductions.norm(self.perturbation),
        }


def keskar_memory(problem: Problem, subspace_dim: int | None) -> tuple[int, str]:
    """``(bytes, what)`` Keskar sharpness holds beyond the problem: the full space runs scipy's L-BFGS-B on ``P``
    float64 coordinates (``2 maxcor + 5`` workspace vectors, ``maxcor = 10``, and about five more for the start,
    the box, the gradient handed over and the best point), plus four parameter-sized tensors; a ``p``-dim subspace
    holds the ``P x p`` basis and its float64 copy for the least-squares coordinates (twice: the solver's own)."""
    n, size = problem.num_params, torch.empty((), dtype=problem.dtype).element_size()
    if subspace_dim is None:
        vectors = 2 * LBFGSB_MAXCOR + 5 + 5
        return vectors * n * 8 + 4 * n * size, f"L-BFGS-B on all {n:,} coordinates ({vectors} float64 vectors)"
    return n * subspace_dim * (size + 16), f"a {n:,} x {subspace_dim} random basis and its float64 least squares"


def keskar_refusal(problem: Problem, subspace_dim: int | None, memory_budget: int | None) -> str | None:
    """``None`` when Keskar sharpness fits ``memory_budget`` (default :func:`landscape.memory.default_budget`),
    else the message of the :class:`~landscape.memory.MemoryBudgetError` it would raise."""
    need, what = keskar_memory(problem, subspace_dim)
    budget = default_budget(problem.device) if memory_budget is None else int(memory_budget)
    if need <= budget:
        return None
    return (
        f"Keskar sharpness ({'full space' if subspace_dim is None else f'{subspace_dim}-dim subspace'}) needs "
        f"{gib(need)} for {what}; the memory budget is {gib(budget)}. Use a smaller subspace_dim "
        "(its basis is P x subspace_dim numbers), keskar=False in sharpness(), or a larger memory_budget="
    )


def keskar_sharpness(
    problem: Problem,
    eps: float = 1e-3,
    *,
    subspace_dim: int | None = None,
    maxiter: int = 10,
    maxfun: int | None = None,
    seed: Seed = 0,
    memory_budget: int | None = None,
) -> KeskarSharpness:
    """Keskar et al. 2017 epsilon-sharpness ``100 [max_{y in C_eps} f(x + A y) - f(x)] / (1 + f(x))``.

    ``C_eps = {|y_i| <= eps (|(A^+ x)_i| + 1)}``; ``A = I`` (full space) or a seeded ``P x p`` Gaussian matrix with
    unit columns (``subspace_dim = p``; ``A^+ x`` by least squares). The box maximum is found by scipy's L-BFGS-B
    (a small fixed budget of iterations, 10 by default) on the box rescaled to ``[-1, 1]^p``, with loss and
    gradient ``A^T grad f`` handed over in float64, starting from the first-order corner ``sign(A^T g)`` or, when
    the gradient is numerically zero, from a seeded uniform point of the box. The best value evaluated is reported.

    Parameters
    ----------
    problem : Problem
    eps : float
        Box size ``eps > 0``.
    subspace_dim : int, optional
        ``p`` with ``1 <= p <= P``; ``None`` for the full space. ``A`` takes ``P p`` numbers of the problem's dtype.
    maxiter : int
        L-BFGS-B iterations (``>= 1``).
    maxfun : int, optional
        Budget of loss-and-gradient evaluations inside L-BFGS-B (default ``5 maxiter + 5``).
    seed : int or torch.Generator
        For ``A`` and the random start.
    memory_budget : int, optional
        Bytes it may hold (:func:`keskar_memory`; default :func:`landscape.memory.default_budget`):
        :class:`~landscape.memory.MemoryBudgetError` before anything runs when it does not fit (the full space on
        GPT-2 small needs 32 GB, a 100-dim subspace 250 GB).

    Returns
    -------
    KeskarSharpness
    """
    start = time.perf_counter()
    check_problem(problem)
    eps = check_positive("eps", eps, "half-width scale of the box C_eps")
    maxiter = check_int("maxiter", maxiter, 1, "L-BFGS-B iterations")
    maxfun = 5 * maxiter + 5 if maxfun is None else check_int("maxfun", maxfun, 1, "L-BFGS-B evaluations")
    n = problem.num_params
    if subspace_dim is not None:
        subspace_dim = check_int("subspace_dim", subspace_dim, 1, "dimension of the random subspace")
        if subspace_dim > n:
            raise ValueError(f"subspace_dim = {subspace_dim} exceeds the number of parameters P = {n}")
    seed = check_seed(seed)
    refused = keskar_refusal(problem, subspace_dim, memory_budget)
    if refused is not None:
        raise MemoryBudgetError(refused)
    gen = generator(seed)

    x = problem.params_vector()
    if subspace_dim is None:
        A = None
        coords = x
    else:
        A = sample_probes(
            n, subspace_dim, distribution="gaussian", seed=gen, dtype=x.dtype, device=x.device, normalize=True
        )
        coords = torch.linalg.lstsq(A.double(), x.double().unsqueeze(1)).solution[:, 0].to(x.dtype)
    bounds = eps * (coords.abs() + 1)

    def lift(z: np.ndarray) -> Tensor:
        y = torch.from_numpy(np.clip(z, -1.0, 1.0)).to(dtype=x.dtype, device=x.device) * bounds
        return y if A is None else A @ y

    f0, g0 = problem.loss_and_grad()
    scale = 100.0 / (1.0 + f0)
    best = {"loss": f0, "z": np.zeros(bounds.numel())}
    count = {"grad": 1}

    def objective(z: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = problem.loss_and_grad(at=x + lift(z))
        count["grad"] += 1
        if f > best["loss"]:
            best["loss"], best["z"] = f, z.copy()
        reduced = g if A is None else A.T @ g
        grad = (-scale * bounds * reduced).to(torch.float64).cpu().numpy()
        return -scale * (f - f0), grad

    reduced0 = g0 if A is None else A.T @ g0
    random_start = gradient_is_zero(float((bounds * reduced0).abs().sum()), f0, problem.dtype)
    if random_start:
        z0 = (2 * torch.rand(bounds.numel(), generator=gen, dtype=torch.float64) - 1).numpy()
    else:
        z0 = torch.sign(reduced0).to(torch.float64).cpu().numpy()
    res = minimize(
        objective,
        z0,
        jac=True,
        method="L-BFGS-B",
        bounds=Bounds(-np.ones(z0.size), np.ones(z0.size)),
        options={"maxiter": maxiter, "maxfun": maxfun, "gtol": 0.0},
    )
    return KeskarSharpness(
        value=scale * (best["loss"] - f0),
        loss=float(f0),
        max_loss=float(best["loss"]),
        perturbation=lift(best["z"]),
        bounds=bounds.to(torch.float64).cpu().numpy(),
        eps=eps,
        subspace_dim=subspace_dim,
        random_start=random_start,
        iterations=int(res.nit),
        converged=bool(res.success),
        message=str(res.message),
        num_gradient_evaluations=count["grad"],
        seed=seed_record(seed),
        wall_time=time.perf_counter() - start,
        settings={
            "problem": problem.describe(),
            "maxiter": maxiter,
            "maxfun": maxfun,
            "subspace": "full (A = I)" if A is None else "Gaussian, unit columns",
        },
    )


__all__ = ["KeskarSharpness", "keskar_memory", "keskar_sharpness"]
