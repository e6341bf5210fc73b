"""The gradient noise scale: how large a batch must be before its gradient is no longer dominated by noise.

McCandlish, Kaplan, Amodei and the OpenAI Dota team, "An empirical model of large-batch training", 2018. With
per-example gradients ``g_i``, ``G = (1/n) sum g_i`` and ``Sigma = (1/n) sum (g_i - G)(g_i - G)^T``, the batch
gradient ``G_B`` of ``B`` examples drawn without replacement satisfies ``E |G_B|^2 = |G|^2 + x(B) tr(Sigma)``, with
the finite-population factor ``x(B) = (n - B) / (B (n - 1))`` of :func:`~landscape.scaling.finite_population_factor`.
From a small and a large batch per pair,

    |G|^2 ~ (x_s |G_big|^2 - x_b |G_small|^2) / (x_s - x_b),
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (x_s - x_b)

are unbiased (with ``x = 1/B`` these are the estimators of McCandlish et al.'s Appendix A); each is averaged over
pairs before the ratio ``B_simple = tr(Sigma) / |G|^2``. With the Hessian,

    eps_max = |G|^2 / (G^T H G),   B_noise = tr(H Sigma) / (G^T H G),   eps_opt(B) = eps_max / (1 + B_noise / B),

where ``tr(H Sigma) = E[(G_B - G)^T H (G_B - G)] / x(B)``, and the critical batch size is ``B_crit ~ B_noise``.
Here ``1/B`` in ``eps_opt`` is replaced by ``x(B)``, so that ``eps_opt(n) = eps_max`` exactly. Sum-reduced losses are
rescaled by ``n/B`` per minibatch, as in :mod:`landscape.scaling.minibatch`.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landscape._checks import Seed, check_batch_size, check_int, seed_int
from landscape._json import field_dict
from landscape.example_pool import Examples
from landscape.linalg._common import mean_and_stderr
from landscape.linalg.results import Diagnostics
from landscape.operators import hessian
from landscape.operators.base import CurvatureOperator
from landscape.problem import Problem, check_problem
from landscape.scaling.minibatch import (
    check_engine,
    finite_population_factor,
    finite_population_factors,
    loss_scale,
    minibatch_problem,
)


@dataclass(frozen=True)
class NoiseScale(Diagnostics):
    """The gradient noise scale of McCandlish et al. (2018) and the step sizes it implies.

    All quantities refer to per-example gradients ``g_i`` normalised so that ``G = (1/n) sum g_i`` is the gradient of
    the problem's loss, and to ``Sigma = (1/n) sum (g_i - G)(g_i - G)^T`` (the covariance over the data set).

    Attributes
    ----------
    b_simple, b_simple_stderr
        ``B_simple = tr(Sigma) / |G|^2`` from the two-batch estimators (each averaged over pairs, then the ratio) and
        its delta-method standard error (from the spread over pairs, with their covariance).
    b_noise, b_noise_stderr
        ``B_noise = tr(H Sigma) / (G^T H G)`` (``nan`` when ``G^T H G <= 0``).
    eps_max
        ``|G|^2 / (G^T H G)``: the optimal full-batch step along ``-G`` in the local quadratic model (exact).
    grad_norm_sq
        ``|G|^2`` from the full-data gradient (exact).
    grad_norm_sq_estimate, grad_norm_sq_estimate_stderr
        The two-batch unbiased estimate of ``|G|^2`` used in ``b_simple`` (exact when ``large_batch = n``).
    trace_sigma, trace_sigma_stderr
        Two-batch unbiased estimate of ``tr(Sigma)``.
    trace_h_sigma, trace_h_sigma_stderr
        ``tr(H Sigma)`` estimated as the mean of ``(G_s - G)^T H (G_s - G) / x(B_s)`` over the small batches.
    gradient_curvature
        ``G^T H G`` (exact).
    small_batch, large_batch, num_samples, num_pairs
        ``B_s``, ``B_b``, ``n`` and the number of (small, large) batch pairs.
    num_matvecs
        Full-data Hessian-vector products (``num_pairs + 1``, one block).
    num_gradient_evaluations
        Minibatch gradients evaluated (full-data ones included).
    seed, wall_time, settings
        From :class:`~landscape.linalg.results.Diagnostics`: the ``int`` seed of the local generator that drew the
        batches (drawn from the ``torch.Generator`` when one was given as ``seed``); ``settings`` holds ``problem``
        (``Problem.describe()``), ``engine``, ``sampling``, ``loss_scale``.
    """

    b_simple: float
    b_simple_stderr: float
    b_noise: float
    b_noise_stderr: float
    eps_max: float
    grad_norm_sq: float
    grad_norm_sq_estimate: float
    grad_norm_sq_estimate_stderr: float
    trace_sigma: float
    trace_sigma_stderr: float
    trace_h_sigma: float
    trace_h_sigma_stderr: float
    gradient_curvature: float
    small_batch: int
    large_batch: int
    num_samples: int
    num_pairs: int
    num_matvecs: int
    num_gradient_evaluations: int

    @property
    def critical_batch_size(self) -> float:
        """``B_crit ~ B_noise``: below it steps are noise-limited (lr ~ B), above it curvature-limited."""
        return self.b_noise

    def eps_opt(self, batch_size: float | np.ndarray) -> float | np.ndarray:
        """``eps_opt(B) = eps_max / (1 + B_noise x(B))``, ``x(B) = (n - B) / (B (n - 1))`` (``1/B`` for ``B << n``):
        the optimal SGD step in the local quadratic model (McCandlish et al. 2018)."""
        x = finite_population_factors(np.asarray(batch_size, dtype=np.float64), self.num_samples)
        out = self.eps_max / (1.0 + self.b_noise * x)
        return float(out) if np.ndim(out) == 0 else out

    def eps_opt_stderr(self, batch_size: float | np.ndarray) -> float | np.ndarray:
        """Delta-method standard error of :meth:`eps_opt` from that of ``B_noise`` (``eps_max`` is exact)."""
        x = finite_population_factors(np.asarray(batch_size, dtype=np.float64), self.num_samples)
        out = self.eps_max * x * self.b_noise_stderr / (1.0 + self.b_noise * x) ** 2
        return float(out) if np.ndim(out) == 0 else out

    def summary(self) -> str:
        """A short human-readable report."""
        return "\n".join(
            [
                f"gradient noise scale (McCandlish et al. 2018) from {self.num_pairs} pairs of batches "
                f"B_s = {self.small_batch}, B_b = {self.large_batch} of n = {self.num_samples} (seed {self.seed}):",
                f"  B_simple = tr(Sigma)/|G|^2 = {self.b_simple:.4g} +- {self.b_simple_stderr:.2g}",
                f"  B_noise = tr(H Sigma)/(G^T H G) = {self.b_noise:.4g} +- {self.b_noise_stderr:.2g} "
                f"(critical batch size)",
                f"  eps_max = |G|^2/(G^T H G) = {self.eps_max:.4g}; |G|^2 = {self.grad_norm_sq:.4g}, "
                f"tr(Sigma) = {self.trace_sigma:.4g} +- {self.trace_sigma_stderr:.2g}",
                f"  ({self.num_gradient_evaluations} gradients, {self.num_matvecs} Hessian-vector products, "
                f"{self.wall_time:.2f} s, mode {self.settings.get('problem', {}).get('mode', '?')})",
            ]
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (``nan`` where undefined)."""
        return field_dict(self)


def _ratio_stderr(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """``mean(num) / mean(den)`` and its delta-method standard error from paired samples."""
    k = num.size
    r = float(num.mean() / den.mean())
    if k < 2:
        return r, math.nan
    cov = np.cov(np.stack([num, den]), ddof=1) / k
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r**2 * cov[1, 1]) / den.mean() ** 2
    return r, float(math.sqrt(max(var, 0.0)))


def _curvature_along(op: CurvatureOperator, v: Tensor) -> float:
    """``v^T H v`` by one product."""
    return float((v * (op @ v)).sum())


def gradient_noise_scale(
    problem: Problem,
    *,
    small_batch: int | None = None,
    large_batch: int | None = None,
    num_pairs: int = 32,
    seed: Seed = 0,
    engine: str = "double_backward",
) -> NoiseScale:
    """Simple and Hessian-weighted gradient noise scales, ``B_simple`` and ``B_noise`` (McCandlish et al. 2018).

    For each of ``num_pairs`` pairs, ``B_b`` examples are drawn without replacement and the first ``B_s`` of them form
    the small batch. With ``x(B) = (n - B) / (B (n - 1))`` (``E|G_B - G|^2 = x(B) tr(Sigma)``; ``x = 1/B`` for
    ``B << n`` gives the paper's estimators)

        |G|^2     ~ (x_s |G_b|^2 - x_b |G_s|^2) / (x_s - x_b),
        tr(Sigma) ~ (|G_s|^2 - |G_b|^2) / (x_s - x_b),

    both unbiased; they are averaged over pairs and ``B_simple = mean tr(Sigma) / mean |G|^2``. The Hessian-weighted
    scale uses the full-data gradient ``G`` and Hessian ``H``: ``tr(H Sigma) ~ mean (G_s - G)^T H (G_s - G) / x_s``,
    ``B_noise = tr(H Sigma) / (G^T H G)`` and ``eps_max = |G|^2 / (G^T H G)`` (``num_pairs + 1`` products, each
    pair's as it is drawn: memory does not grow with ``num_pairs``). ``B_noise`` is the critical batch size: the
    optimal step ``eps_opt(B) = eps_max / (1 + B_noise / B)`` grows linearly below it and saturates above it.

    Parameters
    ----------
    problem : Problem
        The data are pooled; the model is never modified.
    small_batch : int, optional
        ``B_s >= 1``; default ``min(32, max(1, n // 8))``.
    large_batch : int, optional
        ``B_s < B_b <= n``; default ``n`` (then ``|G|^2`` is exact and only ``tr(Sigma)`` is estimated).
    num_pairs : int
        Number of (small, large) pairs; standard errors need at least 2.
    seed : int or torch.Generator
        Root seed of a local ``torch.Generator``; the global RNG is never touched. A ``torch.Generator`` gives the
        root seed as one ``int`` drawn from it (which advances it); that ``int`` is what the result records.
    engine : str
        Hessian-vector product engine, fixed by default for bit-identical re-runs.

    Returns
    -------
    NoiseScale
        ``b_simple``, ``b_noise`` (``critical_batch_size``), ``eps_max``, ``eps_opt(B)``, with standard errors.

    Raises
    ------
    TypeError
        ``problem`` not a :class:`landscape.Problem`; batch sizes, ``num_pairs`` or ``seed`` of the wrong type.
    ValueError
        Fewer than 2 examples, batch sizes outside ``1 <= B_s < B_b <= n``, ``num_pairs < 1`` or an unknown engine.
    """
    start = time.perf_counter()
    problem = check_problem(problem)
    n = problem.num_samples
    if n < 2:
        raise ValueError("the gradient noise scale needs at least 2 examples")
    if small_batch is None:
        small_batch = min(32, max(1, n // 8))
    small = check_batch_size("small_batch", small_batch, n)
    large = n if large_batch is None else check_batch_size("large_batch", large_batch, n)
    if small >= large:
        raise ValueError(f"small_batch must be smaller than large_batch, got small_batch={small}, large_batch={large}")
    num_pairs = check_int("num_pairs", num_pairs, 1, "pairs of batches to average over")
    engine = check_engine(engine)
    seed = seed_int(seed)

    examples = Examples(problem)
    _, G = problem.loss_and_grad()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x_s, x_b = finite_population_factor(small, n), finite_population_factor(large, n)
    num_grads = 1
    # One product per pair as it is drawn: nothing parameter-sized outlives its pair (num_pairs deviations and their
    # products held at once would be 33 GB on GPT-2 small's 1.24e8 parameters).
    op = hessian(problem, engine=engine, block="loop")
    quad = [_curvature_along(op, G)]
    sq_small, sq_large = [], []
    for _ in range(num_pairs):
        perm = torch.randperm(n, generator=gen)
        g_s = loss_scale(problem, small, n) * minibatch_problem(problem, examples, perm[:small]).loss_and_grad()[1]
        if large == n:
            g_b = G
        else:
            g_b = loss_scale(problem, large, n) * minibatch_problem(problem, examples, perm[:large]).loss_and_grad()[1]
            num_grads += 1
        num_grads += 1
        sq_small.append(float(g_s @ g_s))
        sq_large.append(float(g_b @ g_b))
        quad.append(_curvature_along(op, g_s.sub_(G)))
        del g_s, g_b
    sq_small, sq_large = np.asarray(sq_small), np.asarray(sq_large)
    trace_samples = (sq_small - sq_large) / (x_s - x_b)
    norm_samples = (x_s * sq_large - x_b * sq_small) / (x_s - x_b)
    b_simple, b_simple_stderr = _ratio_stderr(trace_samples, norm_samples)
    grad_norm_sq_estimate, grad_norm_sq_estimate_stderr = mean_and_stderr(norm_samples)
    trace_sigma, trace_sigma_stderr = mean_and_stderr(trace_samples)
    if grad_norm_sq_estimate <= 0:
        warnings.warn(
            f"the two-batch estimate of |G|^2 is not positive ({grad_norm_sq_estimate:.3g}): the gradient is not "
            "resolved above the noise, so B_simple is meaningless; use more pairs or a larger large_batch",
            RuntimeWarning,
            stacklevel=2,
        )

    quad = np.asarray(quad)
    ghg = float(quad[0])
    h_sigma_samples = quad[1:] / x_s
    grad_norm_sq = float(G @ G)
    trace_h_sigma, trace_h_sigma_stderr = mean_and_stderr(h_sigma_samples)
    if ghg > 0:
        eps_max = grad_norm_sq / ghg
        b_noise = trace_h_sigma / ghg
        b_noise_stderr = trace_h_sigma_stderr / ghg
    else:
        warnings.warn(
            f"G^T H G = {ghg:.3g} <= 0: the loss is not convex along the gradient, so eps_max and B_noise (which "
            "assume a local quadratic minimum along -G) are undefined (nan)",
            RuntimeWarning,
            stacklevel=2,
        )
        eps_max = b_noise = b_noise_stderr = math.nan
    return NoiseScale(
        b_simple=b_simple,
        b_simple_stderr=b_simple_stderr,
        b_noise=b_noise,
        b_noise_stderr=b_noise_stderr,
        eps_max=eps_max,
        grad_norm_sq=grad_norm_sq,
        grad_norm_sq_estimate=grad_norm_sq_estimate,
        grad_norm_sq_estimate_stderr=grad_norm_sq_estimate_stderr,
        trace_sigma=trace_sigma,
        trace_sigma_stderr=trace_sigma_stderr,
        trace_h_sigma=trace_h_sigma,
        trace_h_sigma_stderr=trace_h_sigma_stderr,
        gradient_curvature=ghg,
        small_batch=small,
        large_batch=large,
        num_samples=n,
        num_pairs=num_pairs,
        seed=seed,
        num_matvecs=int(op.num_matvecs),
        num_gradient_evaluations=num_grads,
        wall_time=time.perf_counter() - start,
        settings={
            "problem": problem.describe(),
            "engine": engine,
            "sampling": "large batch uniform without replacement, small batch = its first B_s examples",
            "loss_scale": "n/B (sum reduction)" if problem.reduction == "sum" else 1.0,
            "finite_population_factors": {"small": x_s, "large": x_b},
        },
    )
