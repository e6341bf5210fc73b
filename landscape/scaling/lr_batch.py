"""How curvature and gradient noise change with the batch size, and what that says about the learning rate.

Minibatch Hessians. A minibatch ``S`` of ``B`` examples drawn without replacement from the ``n`` examples of the data
has the Hessian ``H_B = (1/B) sum_{i in S} H_i``, an unbiased estimate of the full-data Hessian ``H`` whose
fluctuation ``H_B - H`` has variance proportional to

    x(B) = (n - B) / (B (n - 1))            (= 1/B for B << n, 0 for B = n; finite-population correction).

Granziol, Zohren and Roberts ("Learning rates as a function of batch size: a random matrix theory approach to neural
network training", JMLR 2022) show that the top eigenvalue of ``H_B`` then moves *up*: an outlier ``lambda_1``
well above the bulk moves to ``lambda'(B) ~ lambda_1 + c x(B)`` (second-order perturbation theory: the first-order
term ``v_1^T (H_B - H) v_1`` averages to zero, the second-order one ``sum_j |v_j^T (H_B - H) v_1|^2 /
(lambda_1 - lambda_j)`` does not), while without an outlier the top of the spectrum is the bulk edge, which grows
like ``sqrt(x(B))``. Gradient descent on one batch is stable iff ``lr < 2 / lambda_max(H_B)``, so the maximal stable
learning rate of SGD grows with ``B`` (linearly while ``c x(B)`` dominates ``lambda_1``: the linear-scaling rule of
Goyal et al. 2017, "Accurate, large minibatch SGD: training ImageNet in 1 hour") and saturates at ``2/lambda_1``. For
Adam the same paper and Malladi, Lyu, Panigrahi, Arora ("On the SDEs and scaling rules for adaptive gradient
algorithms", NeurIPS 2022) give the square-root rule ``lr ~ sqrt(B)``.

Gradient noise scale (McCandlish, Kaplan, Amodei and the OpenAI Dota team, "An empirical model of large-batch
training", 2018). With per-example gradients ``g_i``, ``G = (1/n) sum g_i`` and
``Sigma = (1/n) sum (g_i - G)(g_i - G)^T``, the batch gradient ``G_B`` satisfies
``E |G_B|^2 = |G|^2 + x(B) tr(Sigma)``. From a small and a large batch per pair,

    |G|^2 ~ (x_s |G_big|^2 - x_b |G_small|^2) / (x_s - x_b),
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (x_s - x_b)

are unbiased (with ``x = 1/B`` these are the estimators of McCandlish et al.'s Appendix A); each is averaged over
pairs before the ratio ``B_simple = tr(Sigma) / |G|^2``. With the Hessian,

    eps_max = |G|^2 / (G^T H G),   B_noise = tr(H Sigma) / (G^T H G),   eps_opt(B) = eps_max / (1 + B_noise / B),

where ``tr(H Sigma) = E[(G_B - G)^T H (G_B - G)] / x(B)``, and the critical batch size is ``B_crit ~ B_noise``.
Here ``1/B`` in ``eps_opt`` is replaced by ``x(B)``, so that ``eps_opt(n) = eps_max`` exactly.

Losses with ``reduction="sum"`` are rescaled so that every minibatch quantity estimates the full-data one: the
minibatch loss is ``(n/B) sum_{i in S} l_i``, an unbiased estimate of ``L = sum_i l_i``. With BatchNorm in train mode
the examples of a batch interact; batch quantities are then those of the batch as SGD would see it, and "per-example"
statements hold only approximately.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landscape.example_pool import Examples
from landscape.linalg import ConvergenceWarning, top_eigen
from landscape.operators import hessian
from landscape.operators.base import CurvatureOperator
from landscape.problem import Problem
from landscape.progress import progress as progress_bar

OPTIMIZERS = ("sgd", "adam")
ENGINES = ("double_backward", "forward_over_reverse")


# ---------------------------------------------------------------------------------------------------------- helpers
def _check_int(name: str, value: object, minimum: int, meaning: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int ({meaning}), got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum} ({meaning}), got {value!r}")
    return int(value)


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return int(seed)


def _check_problem(problem: object) -> Problem:
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a landscape.Problem, got {type(problem).__name__}")
    return problem


def _check_batch_size(name: str, batch_size: object, n: int) -> int:
    b = _check_int(name, batch_size, 1, "examples per minibatch")
    if b > n:
        raise ValueError(
            f"{name}={b} is larger than the data set (n={n} examples); minibatches are drawn without replacement, "
            f"so use 1 <= {name} <= {n}"
        )
    return b


def finite_population_factor(batch_size: int, n: int) -> float:
    """``x(B) = (n - B) / (B (n - 1))``: the variance of a mean over ``B`` of ``n`` examples drawn without
    replacement, relative to the per-example variance (``1/B`` for ``B << n``; ``0`` for ``B = n``)."""
    if n <= 1:
        return 0.0
    return (n - batch_size) / (batch_size * (n - 1))


def _loss_scale(problem: Problem, batch_size: int, n: int) -> float:
    """Factor turning a minibatch loss of ``problem.loss_fn`` into an unbiased estimate of the full-data loss."""
    return 1.0 if problem.reduction == "mean" else n / batch_size


def _minibatch(problem: Problem, examples: Examples, idx: Tensor) -> Problem:
    """The problem restricted to the examples ``idx`` (global indices), as one batch (one BatchNorm batch in train
    mode). Data-parallel, the minibatch is gathered onto every rank (:mod:`landscape.example_pool`), except the whole
    data set in eval mode, which stays sharded: the full-data problem itself."""
    whole = idx.numel() == problem.num_samples and bool((idx == torch.arange(idx.numel())).all())
    if problem.dist is not None and whole and problem.mode == "eval":
        return problem
    return examples.problem_of(idx)


def _mean_std_stderr(values: np.ndarray, exact: bool) -> tuple[float, float, float]:
    mean = float(np.mean(values))
    if values.size > 1:
        std = float(np.std(values, ddof=1))
        return mean, std, std / math.sqrt(values.size)
    return (mean, 0.0, 0.0) if exact else (mean, math.nan, math.nan)


# ---------------------------------------------------------------------------------------------- batch sharpness
@dataclass(frozen=True)
class BatchSharpness:
    """Top Hessian eigenvalue of randomly drawn minibatches of one size.

    Attributes
    ----------
    values
        ``(k,)`` float64 ``lambda_max(H_B)`` of each sampled minibatch, in the order drawn. A single value when
        ``batch_size = n`` (every "minibatch" is then the whole data set: nothing is random).
    batch_size
        ``B``, examples per minibatch (drawn without replacement within a batch; batches are independent draws).
    num_samples
        ``n``, examples in the problem's data.
    converged
        ``(k,)`` bool: Lanczos met ``tol`` for that batch.
    residuals
        ``(k,)`` Ritz residual norms ``||H_B v - lambda v||`` (in the units of the rescaled minibatch loss).
    seed
        Seed of the local generator that drew the batches and the Lanczos start vectors.
    tol
        Relative residual tolerance of :func:`landscape.linalg.top_eigen`.
    num_matvecs
        Minibatch Hessian-vector products in total (each costs a pass over ``B`` examples, not ``n``).
    wall_time
        Seconds spent.
    settings
        ``problem`` (``Problem.describe()``: BatchNorm/dropout policy, dtype, parameters), ``engine``, ``sampling``,
        ``loss_scale`` (``n/B`` for sum-reduced losses, else 1), ``num_batches`` asked for.
    """

    values: np.ndarray
    batch_size: int
    num_samples: int
    converged: np.ndarray
    residuals: np.ndarray
    seed: int
    tol: float
    num_matvecs: int
    wall_time: float
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def exact(self) -> bool:
        """Whether the batch is the whole data set (no sampling noise)."""
        return self.batch_size == self.num_samples

    @property
    def mean(self) -> float:
        """Mean of ``values``: an estimate of ``E[lambda_max(H_B)]``."""
        return _mean_std_stderr(self.values, self.exact)[0]

    @property
    def std(self) -> float:
        """Spread of ``lambda_max(H_B)`` across batches (``ddof=1``; 0 for ``B = n``, ``nan`` for one batch)."""
        return _mean_std_stderr(self.values, self.exact)[1]

    @property
    def stderr(self) -> float:
        """Standard error of :attr:`mean`, ``std / sqrt(k)``."""
        return _mean_std_stderr(self.values, self.exact)[2]

    @property
    def num_batches(self) -> int:
        return int(self.values.size)

    @property
    def max(self) -> float:
        """The sharpest sampled batch: SGD meets many batches, and one step with ``lr > 2 / lambda_max(H_B)`` on
        a single batch already kicks the loss up along that batch's top direction."""
        return float(np.max(self.values))

    def quantile(self, q: float) -> float:
        """Empirical ``q``-quantile of ``lambda_max(H_B)`` over the sampled batches (``numpy.quantile``)."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must lie in [0, 1], got {q!r}")
        return float(np.quantile(self.values, q))

    def __float__(self) -> float:
        return self.mean

    def summary(self) -> str:
        """A short human-readable report."""
        mode = self.settings.get("problem", {}).get("mode", "?")
        return (
            f"lambda_max(H_B) at B = {self.batch_size} of n = {self.num_samples}: {self.mean:.6g} +- {self.stderr:.2g} "
            f"(std {self.std:.3g} over {self.num_batches} batch(es), seed {self.seed}; "
            f"{int(self.converged.sum())}/{self.num_batches} converged, {self.num_matvecs} matvecs, "
            f"{self.wall_time:.2f} s, mode {mode})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers."""
        return {
            "values": self.values.tolist(),
            "mean": self.mean,
            "std": self.std,
            "stderr": self.stderr,
            "batch_size": self.batch_size,
            "num_samples": self.num_samples,
            "converged": [bool(c) for c in self.converged],
            "residuals": self.residuals.tolist(),
            "seed": self.seed,
            "tol": self.tol,
            "num_matvecs": self.num_matvecs,
            "wall_time": self.wall_time,
            "settings": self.settings,
        }


def batch_sharpness(
    problem: Problem,
    batch_size: int,
    *,
    num_batches: int = 8,
    seed: int = 0,
    tol: float = 1e-4,
    engine: str = "double_backward",
    max_matvecs: int | None = None,
) -> BatchSharpness:
    """``lambda_max`` of the Hessian of random minibatches of ``batch_size`` examples.

    Each of ``num_batches`` minibatches ``S`` is ``B`` distinct examples drawn uniformly without replacement from the
    problem's ``n`` examples (a fresh draw per batch), and its loss is the problem's loss on ``S`` as one batch
    (``(n/B) sum_{i in S} l_i`` for sum-reduced losses, so that ``E[H_B] = H`` either way). The top eigenvalue of
    ``H_B`` comes from Lanczos (:func:`landscape.linalg.top_eigen`) started at a random vector. Granziol, Zohren,
    Roberts (JMLR 2022): ``E[lambda_max(H_B)] >= lambda_max(H)``, the excess growing like ``1/B`` for an outlier
    (see the module docstring). Gradient descent on that batch is stable iff ``lr < 2 / lambda_max(H_B)``.

    Parameters
    ----------
    problem : Problem
        Its data (any batching) are pooled and minibatches drawn from the pool; the model is never modified.
    batch_size : int
        ``1 <= B <= n``. ``B = n`` evaluates the full-data Hessian once (one value, zero spread).
    num_batches : int
        Number of minibatches drawn.
    seed : int
        Seed of a local ``torch.Generator`` (batches, then Lanczos starts); the global RNG is never touched.
    tol : float
        Relative Ritz residual tolerance of Lanczos.
    engine : str
        Hessian-vector product engine (:func:`landscape.hessian`); fixed by default so that the same seed gives
        bit-identical values.
    max_matvecs : int, optional
        Lanczos budget per batch (default that of :func:`landscape.linalg.top_eigen`).

    Returns
    -------
    BatchSharpness
        ``.values``, ``.mean``, ``.std``, ``.stderr``, with the seed, matvecs and settings.

    Raises
    ------
    ValueError
        ``batch_size`` outside ``[1, n]``, ``num_batches < 1``, ``tol <= 0`` or an unknown engine.
    """
    start = time.perf_counter()
    problem = _check_problem(problem)
    n = problem.num_samples
    batch_size = _check_batch_size("batch_size", batch_size, n)
    num_batches = _check_int("num_batches", num_batches, 1, "minibatches to draw")
    seed = _check_seed(seed)
    if not (isinstance(tol, (int, float, np.floating)) and 0 < tol < 1):
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")

    examples = Examples(problem)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    exact = batch_size == n
    draws = [torch.arange(n)] if exact else [torch.randperm(n, generator=gen)[:batch_size] for _ in range(num_batches)]
    scale = _loss_scale(problem, batch_size, n)
    values, residuals, converged = [], [], []
    matvecs = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for idx in draws:
            op = hessian(_minibatch(problem, examples, idx), engine=engine, block="loop")
            res = top_eigen(op, 1, tol=float(tol), max_matvecs=max_matvecs, seed=gen, vectors=False)
            values.append(scale * float(res.values[0]))
            residuals.append(scale * float(res.residuals[0]))
            converged.append(bool(res.converged[0]))
            matvecs += int(op.num_matvecs)
    # Warnings repeat batch after batch: pass each distinct one on once, and non-convergence as one summary.
    seen: set[tuple[type, str]] = set()
    for w in caught:
        key = (w.category, str(w.message))
        if issubclass(w.category, ConvergenceWarning) or key in seen:
            continue
        seen.add(key)
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not all(converged):
        warnings.warn(
            f"batch_sharpness(B={batch_size}): Lanczos did not reach tol={tol:g} on {converged.count(False)} of "
            f"{len(converged)} batches; raise max_matvecs or loosen tol (see .converged and .residuals)",
            ConvergenceWarning,
            stacklevel=2,
        )
    return BatchSharpness(
        values=np.asarray(values, dtype=np.float64),
        batch_size=batch_size,
        num_samples=n,
        converged=np.asarray(converged, dtype=bool),
        residuals=np.asarray(residuals, dtype=np.float64),
        seed=seed,
        tol=float(tol),
        num_matvecs=matvecs,
        wall_time=time.perf_counter() - start,
        settings={
            "problem": problem.describe(),
            "engine": engine,
            "sampling": "whole data set" if exact else "uniform without replacement within a batch, i.i.d. batches",
            "num_batches": num_batches,
            "loss_scale": scale,
            "max_matvecs": max_matvecs,
        },
    )


# ---------------------------------------------------------------------------------------- gradient noise scale
@dataclass(frozen=True)
class NoiseScale:
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
    seed
        Seed of the local generator that drew the batches.
    num_matvecs
        Full-data Hessian-vector products (``num_pairs + 1``, one block).
    num_gradient_evaluations
        Minibatch gradients evaluated (full-data ones included).
    wall_time, settings
        Seconds spent; ``problem`` (``Problem.describe()``), ``engine``, ``sampling``, ``loss_scale``.
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
    seed: int
    num_matvecs: int
    num_gradient_evaluations: int
    wall_time: float
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def critical_batch_size(self) -> float:
        """``B_crit ~ B_noise``: below it steps are noise-limited (lr ~ B), above it curvature-limited."""
        return self.b_noise

    def eps_opt(self, batch_size: float | np.ndarray) -> float | np.ndarray:
        """``eps_opt(B) = eps_max / (1 + B_noise x(B))``, ``x(B) = (n - B) / (B (n - 1))`` (``1/B`` for ``B << n``):
        the optimal SGD step in the local quadratic model (McCandlish et al. 2018)."""
        x = _x(np.asarray(batch_size, dtype=np.float64), self.num_samples)
        out = self.eps_max / (1.0 + self.b_noise * x)
        return float(out) if np.ndim(out) == 0 else out

    def eps_opt_stderr(self, batch_size: float | np.ndarray) -> float | np.ndarray:
        """Delta-method standard error of :meth:`eps_opt` from that of ``B_noise`` (``eps_max`` is exact)."""
        x = _x(np.asarray(batch_size, dtype=np.float64), self.num_samples)
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
        names = [f for f in self.__dataclass_fields__ if f != "settings"]
        return {**{f: getattr(self, f) for f in names}, "settings": self.settings}


def _x(batch_size: np.ndarray, n: int) -> np.ndarray:
    """Vectorised :func:`finite_population_factor`."""
    if n <= 1:
        return np.zeros_like(batch_size)
    return (n - batch_size) / (batch_size * (n - 1))


def _ratio_stderr(num: np.ndarray, den: np.ndarray) -> tuple[float, float]:
    """``mean(num) / mean(den)`` and its delta-method standard error from paired samples."""
    k = num.size
    r = float(num.mean() / den.mean())
    if k < 2:
        return r, math.nan
    cov = np.cov(np.stack([num, den]), ddof=1) / k
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r**2 * cov[1, 1]) / den.mean() ** 2
    return r, float(math.sqrt(max(var, 0.0)))


def _stderr(samples: np.ndarray) -> float:
    return float(samples.std(ddof=1) / math.sqrt(samples.size)) if samples.size > 1 else math.nan


def _curvature_along(op: CurvatureOperator, v: Tensor) -> float:
    """``v^T H v`` by one product."""
    return float((v * (op @ v)).sum())


def gradient_noise_scale(
    problem: Problem,
    *,
    small_batch: int | None = None,
    large_batch: int | None = None,
    num_pairs: int = 32,
    seed: int = 0,
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
    seed : int
        Seed of a local ``torch.Generator``; the global RNG is never touched.
    engine : str
        Hessian-vector product engine, fixed by default for bit-identical re-runs.

    Returns
    -------
    NoiseScale
        ``b_simple``, ``b_noise`` (``critical_batch_size``), ``eps_max``, ``eps_opt(B)``, with standard errors.

    Raises
    ------
    ValueError
        Batch sizes outside ``1 <= B_s < B_b <= n``, ``num_pairs < 1`` or an unknown engine.
    """
    start = time.perf_counter()
    problem = _check_problem(problem)
    n = problem.num_samples
    if n < 2:
        raise ValueError("the gradient noise scale needs at least 2 examples")
    if small_batch is None:
        small_batch = min(32, max(1, n // 8))
    small = _check_batch_size("small_batch", small_batch, n)
    large = n if large_batch is None else _check_batch_size("large_batch", large_batch, n)
    if small >= large:
        raise ValueError(f"small_batch must be smaller than large_batch, got small_batch={small}, large_batch={large}")
    num_pairs = _check_int("num_pairs", num_pairs, 1, "pairs of batches to average over")
    seed = _check_seed(seed)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")

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
        g_s = _loss_scale(problem, small, n) * _minibatch(problem, examples, perm[:small]).loss_and_grad()[1]
        if large == n:
            g_b = G
        else:
            g_b = _loss_scale(problem, large, n) * _minibatch(problem, examples, perm[:large]).loss_and_grad()[1]
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
    if norm_samples.mean() <= 0:
        warnings.warn(
            f"the two-batch estimate of |G|^2 is not positive ({norm_samples.mean():.3g}): the gradient is not "
            "resolved above the noise, so B_simple is meaningless; use more pairs or a larger large_batch",
            RuntimeWarning,
            stacklevel=2,
        )

    quad = np.asarray(quad)
    ghg = float(quad[0])
    h_sigma_samples = quad[1:] / x_s
    grad_norm_sq = float(G @ G)
    if ghg > 0:
        eps_max = grad_norm_sq / ghg
        b_noise = float(h_sigma_samples.mean() / ghg)
        b_noise_stderr = _stderr(h_sigma_samples) / ghg
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
        grad_norm_sq_estimate=float(norm_samples.mean()),
        grad_norm_sq_estimate_stderr=_stderr(norm_samples),
        trace_sigma=float(trace_samples.mean()),
        trace_sigma_stderr=_stderr(trace_samples),
        trace_h_sigma=float(h_sigma_samples.mean()),
        trace_h_sigma_stderr=_stderr(h_sigma_samples),
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


# ------------------------------------------------------------------------------------------------- the fit
FIT_MODELS = ("outlier", "bulk")


@dataclass(frozen=True)
class ScalingFit:
    """Weighted least-squares fit of ``lambda_max(H_B)`` against the batch size.

    ``"outlier"``: ``lambda(B) = a + b x(B)``; ``"bulk"``: ``lambda(B) = a + b sqrt(x(B))``, with
    ``x(B) = (n - B) / (B (n - 1))`` (``1/B`` for ``B << n``). Granziol, Zohren, Roberts (JMLR 2022): an outlier
    ``lambda_1`` above the bulk moves by ``~ c/B`` (so ``a ~ lambda_1``), the bulk edge by ``~ 1/sqrt(B)``.

    Attributes
    ----------
    model
        ``"outlier"`` or ``"bulk"``.
    a, b, a_stderr, b_stderr
        Coefficients and standard errors (``(A^T W A)^{-1}``, inflated by ``chi2_per_dof`` when that exceeds 1).
    chi2_per_dof
        ``sum_B w_B r_B^2 / (m - 2)`` with ``w_B = 1 / stderr_B^2`` (``nan`` for two batch sizes): about 1 when the
        model explains the means within their sampling error.
    max_relative_residual
        ``max_B |lambda_B - fit_B| / lambda_B``.
    weighted
        ``False`` when some batch size had a single batch (no spread), and the fit fell back to ordinary least squares.
    num_samples
        ``n``.
    """

    model: str
    a: float
    b: float
    a_stderr: float
    b_stderr: float
    chi2_per_dof: float
    max_relative_residual: float
    weighted: bool
    num_samples: int

    def predict(self, batch_size: float | np.ndarray) -> np.ndarray:
        """The fitted ``lambda_max(H_B)``."""
        x = _x(np.asarray(batch_size, dtype=np.float64), self.num_samples)
        return self.a + self.b * (x if self.model == "outlier" else np.sqrt(x))

    def formula(self) -> str:
        term = "x(B)" if self.model == "outlier" else "sqrt(x(B))"
        return f"{self.a:.4g} + {self.b:.4g} {term}"

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


def fit_batch_sharpness(
    batch_sizes: np.ndarray, means: np.ndarray, stderrs: np.ndarray, n: int, *, model: str = "outlier", tol: float = 0.0
) -> ScalingFit:
    """Fit ``lambda(B) = a + b f(x(B))`` by weighted least squares (see :class:`ScalingFit`).

    Weights are ``1 / s_B^2`` with ``s_B = max(stderr_B, tol |mean_B|)``: the full-data point (``stderr = 0``) keeps
    the weight its Lanczos accuracy deserves. If some ``B < n`` has no standard error (one batch), all points get
    equal weight.
    """
    if model not in FIT_MODELS:
        raise ValueError(f"model must be one of {FIT_MODELS}, got {model!r}")
    B = np.asarray(batch_sizes, dtype=np.float64)
    lam = np.asarray(means, dtype=np.float64)
    se = np.asarray(stderrs, dtype=np.float64)
    m = B.size
    if m < 2:
        raise ValueError("fitting lambda_max(H_B) needs at least two batch sizes")
    x = _x(B, n)
    A = np.stack([np.ones(m), x if model == "outlier" else np.sqrt(x)], axis=1)
    weighted = bool(np.all(np.isfinite(se)))
    if weighted:
        floor = np.maximum(tol * np.abs(lam), np.finfo(np.float64).tiny)
        sigma = np.maximum(se, floor)
    else:
        sigma = np.ones(m)
    Aw, lw = A / sigma[:, None], lam / sigma
    coef, *_ = np.linalg.lstsq(Aw, lw, rcond=None)
    resid = lam - A @ coef
    dof = m - 2
    chi2 = float(np.sum((resid / sigma) ** 2))
    chi2_dof = chi2 / dof if dof > 0 else math.nan
    cov = np.linalg.pinv(Aw.T @ Aw)
    if weighted:
        cov = cov * (max(chi2_dof, 1.0) if dof > 0 else 1.0)
    else:
        cov = cov * (chi2_dof if dof > 0 else math.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(resid) / np.abs(lam)
    return ScalingFit(
        model=model,
        a=float(coef[0]),
        b=float(coef[1]),
        a_stderr=float(math.sqrt(max(cov[0, 0], 0.0))) if np.isfinite(cov[0, 0]) else math.nan,
        b_stderr=float(math.sqrt(max(cov[1, 1], 0.0))) if np.isfinite(cov[1, 1]) else math.nan,
        chi2_per_dof=chi2_dof if weighted else math.nan,
        max_relative_residual=float(np.max(rel)),
        weighted=weighted,
        num_samples=n,
    )


# --------------------------------------------------------------------------------------------- the report
@dataclass(frozen=True)
class ScalingReport:
    """Batch-Hessian sharpness, predicted maximal stable learning rates and the noise scale across batch sizes.

    Attributes
    ----------
    batch_sizes
        ``(m,)`` ascending batch sizes; the last is always ``n`` (the full data set, the ``B = n`` reference).
    sharpness
        One :class:`BatchSharpness` per batch size.
    fit, fit_bulk
        Fits of ``lambda_max(H_B)`` by ``a + b x(B)`` (Granziol et al.'s outlier regime) and ``a + b sqrt(x(B))``
        (bulk edge), :class:`ScalingFit`.
    optimizer
        ``"sgd"`` or ``"adam"``.
    anchor_batch_size, anchor_lr
        The learning rate ``anchor_lr`` at ``anchor_batch_size`` that the scaling rules start from.
    anchor_kind
        ``"spectral"`` (``2 / lambda_max`` at the anchor), ``"given"`` or ``"relative"`` (Adam without a given
        ``anchor_lr``: the rules are multipliers of the learning rate used at the anchor batch size).
    noise
        :class:`NoiseScale` or ``None`` when not computed.
    seed, num_batches
        Seed (the same for every batch size) and batches per size.
    num_matvecs
        Hessian-vector products in total (minibatch and full-data).
    wall_time, settings
        Seconds spent; ``problem`` (``Problem.describe()``), ``tol``, ``engine``.
    """

    batch_sizes: np.ndarray
    sharpness: tuple[BatchSharpness, ...]
    fit: ScalingFit
    fit_bulk: ScalingFit
    optimizer: str
    anchor_batch_size: int
    anchor_lr: float
    anchor_kind: str
    noise: NoiseScale | None
    seed: int
    num_batches: int
    num_matvecs: int
    wall_time: float
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return int(self.batch_sizes[-1])

    @property
    def lambda_mean(self) -> np.ndarray:
        """``(m,)`` mean ``lambda_max(H_B)`` per batch size."""
        return np.array([s.mean for s in self.sharpness])

    @property
    def lambda_std(self) -> np.ndarray:
        """``(m,)`` spread of ``lambda_max(H_B)`` over the sampled batches."""
        return np.array([s.std for s in self.sharpness])

    @property
    def lambda_stderr(self) -> np.ndarray:
        """``(m,)`` standard errors of :attr:`lambda_mean`."""
        return np.array([s.stderr for s in self.sharpness])

    @property
    def lambda_worst(self) -> np.ndarray:
        """``(m,)`` largest ``lambda_max(H_B)`` among the sampled batches of each size."""
        return np.array([s.max for s in self.sharpness])

    @property
    def lambda_full(self) -> float:
        """``lambda_max(H)`` of the full-data loss (the ``B = n`` row)."""
        return self.sharpness[-1].mean

    @property
    def regime(self) -> str:
        """``"outlier"`` if ``a + b x(B)`` fits better (smaller weighted residual) than ``a + b sqrt(x(B))``, else
        ``"bulk"``."""

        def score(f: ScalingFit) -> float:
            return f.chi2_per_dof if np.isfinite(f.chi2_per_dof) else f.max_relative_residual

        return "outlier" if score(self.fit) <= score(self.fit_bulk) else "bulk"

    @property
    def spectral_lr(self) -> np.ndarray:
        """``2 / E[lambda_max(H_B)]``: gradient descent on a typical batch of size ``B`` is stable below it (the
        predicted maximal stable SGD learning rate)."""
        return 2.0 / self.lambda_mean

    @property
    def spectral_lr_stderr(self) -> np.ndarray:
        return 2.0 * self.lambda_stderr / self.lambda_mean**2

    @property
    def worst_batch_lr(self) -> np.ndarray:
        """``2 / max_S lambda_max(H_S)`` over the sampled batches: below it *every* sampled batch is stable on its own.
        With heavy-tailed batch curvature (small ``B``) SGD's loss already jumps near this value, well below
        :attr:`spectral_lr`; it depends on ``num_batches`` (more batches, rarer and sharper extremes)."""
        return 2.0 / self.lambda_worst

    def fitted_lr(self, batch_size: float | np.ndarray | None = None) -> np.ndarray:
        """``2 / lambda'(B)`` from the outlier fit (at the report's batch sizes by default)."""
        B = self.batch_sizes if batch_size is None else batch_size
        return 2.0 / self.fit.predict(B)

    def linear_rule(self, batch_size: float | np.ndarray | None = None) -> np.ndarray:
        """Goyal et al. 2017: ``lr(B) = anchor_lr * B / B_anchor``."""
        B = np.asarray(self.batch_sizes if batch_size is None else batch_size, dtype=np.float64)
        return self.anchor_lr * B / self.anchor_batch_size

    def sqrt_rule(self, batch_size: float | np.ndarray | None = None) -> np.ndarray:
        """Square-root rule for Adam (Granziol et al. 2022; Malladi et al. 2022): ``anchor_lr sqrt(B / B_anchor)``."""
        B = np.asarray(self.batch_sizes if batch_size is None else batch_size, dtype=np.float64)
        return self.anchor_lr * np.sqrt(B / self.anchor_batch_size)

    @property
    def predicted_lr(self) -> np.ndarray:
        """The predicted maximal stable learning rate per batch size: ``2 / lambda_max(H_B)`` for SGD, the
        square-root rule for Adam (whose own threshold needs its preconditioner; see :mod:`landscape.stability`)."""
        return self.spectral_lr if self.optimizer == "sgd" else self.sqrt_rule()

    @property
    def eps_opt(self) -> np.ndarray | None:
        """McCandlish et al.'s optimal SGD step ``eps_opt(B)`` per batch size (``None`` without the noise scale)."""
        return None if self.noise is None else np.asarray(self.noise.eps_opt(self.batch_sizes.astype(np.float64)))

    def table(self) -> str:
        """A markdown table, one row per batch size."""
        n = self.num_samples
        adam = self.optimizer == "adam"
        rule = "sqrt rule" if adam else "linear rule"
        unit = " (x lr at anchor)" if self.anchor_kind == "relative" else ""
        head = [
            "B",
            "lambda_max(H_B) mean +- se",
            "std",
            "max",
            "fit a+b x(B)",
            "2/mean (pred. max lr)",
            "2/max",
            f"{rule}{unit}",
        ]
        if self.noise is not None:
            head.append("eps_opt(B)")
        rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        rules = self.sqrt_rule() if adam else self.linear_rule()
        fitted = self.fit.predict(self.batch_sizes)
        eps = self.eps_opt
        for i, B in enumerate(self.batch_sizes):
            label = f"{B} (full)" if B == n else str(B)
            cells = [
                label,
                f"{self.lambda_mean[i]:.5g} +- {self.lambda_stderr[i]:.2g}",
                f"{self.lambda_std[i]:.3g}",
                f"{self.lambda_worst[i]:.4g}",
                f"{fitted[i]:.5g}",
                f"{self.spectral_lr[i]:.4g}",
                f"{self.worst_batch_lr[i]:.4g}",
                f"{rules[i]:.4g}",
            ]
            if eps is not None:
                cells.append(f"{eps[i]:.4g}")
            rows.append("| " + " | ".join(cells) + " |")
        return "\n".join(rows)

    def summary(self) -> str:
        """A short human-readable report."""
        f, fb = self.fit, self.fit_bulk
        mode = self.settings.get("problem", {}).get("mode", "?")
        lines = [
            f"batch-size scaling ({self.optimizer}) over B = {', '.join(str(b) for b in self.batch_sizes)} "
            f"(n = {self.num_samples}, {self.num_batches} batches each, seed {self.seed}):",
            f"  lambda_max(H) = {self.lambda_full:.5g}; lambda_max(H_B) at B = {self.batch_sizes[0]}: "
            f"{self.lambda_mean[0]:.5g} +- {self.lambda_stderr[0]:.2g}",
            f"  fit a + b x(B), x = (n-B)/(B(n-1)): a = {f.a:.5g} +- {f.a_stderr:.2g}, b = {f.b:.4g} +- "
            f"{f.b_stderr:.2g}, chi2/dof {f.chi2_per_dof:.3g}, max rel. residual {f.max_relative_residual:.2g}",
            f"  fit a + b sqrt(x(B)): chi2/dof {fb.chi2_per_dof:.3g}, max rel. residual "
            f"{fb.max_relative_residual:.2g} -> regime: {self.regime}",
            f"  predicted max stable lr 2/lambda_max(H_B): {self.spectral_lr[0]:.4g} at B = {self.batch_sizes[0]} "
            f"... {self.spectral_lr[-1]:.4g} at B = n; scaling rules anchored at B = {self.anchor_batch_size}, "
            f"lr = {self.anchor_lr:.4g} ({self.anchor_kind})",
        ]
        if self.noise is not None:
            nz = self.noise
            lines.append(
                f"  noise scale: B_simple = {nz.b_simple:.4g} +- {nz.b_simple_stderr:.2g}, B_noise (critical batch "
                f"size) = {nz.b_noise:.4g} +- {nz.b_noise_stderr:.2g}, eps_max = {nz.eps_max:.4g}"
            )
        lines.append(f"  ({self.num_matvecs} Hessian-vector products, {self.wall_time:.2f} s, mode {mode})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (``nan`` where undefined)."""
        return {
            "batch_sizes": [int(b) for b in self.batch_sizes],
            "lambda_mean": self.lambda_mean.tolist(),
            "lambda_std": self.lambda_std.tolist(),
            "lambda_stderr": self.lambda_stderr.tolist(),
            "lambda_worst": self.lambda_worst.tolist(),
            "lambda_full": self.lambda_full,
            "spectral_lr": self.spectral_lr.tolist(),
            "worst_batch_lr": self.worst_batch_lr.tolist(),
            "fitted_lr": self.fitted_lr().tolist(),
            "predicted_lr": self.predicted_lr.tolist(),
            "linear_rule": self.linear_rule().tolist(),
            "sqrt_rule": self.sqrt_rule().tolist(),
            "eps_opt": None if self.eps_opt is None else self.eps_opt.tolist(),
            "fit": self.fit.to_dict(),
            "fit_bulk": self.fit_bulk.to_dict(),
            "regime": self.regime,
            "optimizer": self.optimizer,
            "anchor_batch_size": self.anchor_batch_size,
            "anchor_lr": self.anchor_lr,
            "anchor_kind": self.anchor_kind,
            "noise": None if self.noise is None else self.noise.to_dict(),
            "sharpness": [s.to_dict() for s in self.sharpness],
            "seed": self.seed,
            "num_batches": self.num_batches,
            "num_matvecs": self.num_matvecs,
            "wall_time": self.wall_time,
            "settings": self.settings,
        }

    def plot(self, ax: Any = None, *, kind: str = "lr") -> Any:
        """Log-log plot against the batch size; returns the matplotlib axes.

        ``kind="lr"``: ``2 / lambda_max(H_B)`` with error bars, ``2 / lambda'(B)`` from the fit, the linear (SGD) or
        square-root (Adam) rule, and ``eps_opt(B)`` with the critical batch size ``B_noise``.
        ``kind="sharpness"``: ``lambda_max(H_B)`` with error bars, both fits and ``lambda_max(H)``.
        """
        if kind not in ("lr", "sharpness"):
            raise ValueError(f"kind must be 'lr' or 'sharpness', got {kind!r}")
        if ax is None:
            import matplotlib.pyplot as plt

            ax = plt.figure(figsize=(6.4, 4.8)).add_subplot()
        B = self.batch_sizes.astype(np.float64)
        grid = np.geomspace(B[0], B[-1], 200)
        if kind == "sharpness":
            ax.errorbar(
                B,
                self.lambda_mean,
                yerr=self.lambda_stderr,
                fmt="o",
                capsize=3,
                label=r"$\lambda_{\max}(H_B)$, mean $\pm$ s.e.",
            )
            ax.plot(grid, self.fit.predict(grid), "-", label=f"fit {self.fit.formula()}")
            ax.plot(grid, self.fit_bulk.predict(grid), ":", label=f"fit {self.fit_bulk.formula()}")
            ax.axhline(self.lambda_full, color="gray", lw=0.8, ls="--", label=r"$\lambda_{\max}(H)$")
            ax.set_ylabel(r"$\lambda_{\max}$ of the batch Hessian")
        else:
            ax.errorbar(
                B,
                self.spectral_lr,
                yerr=self.spectral_lr_stderr,
                fmt="o",
                capsize=3,
                label=r"$2/\lambda_{\max}(H_B)$ (measured spectra)",
            )
            ax.plot(B, self.worst_batch_lr, "v", mfc="none", label=r"$2/\max_S \lambda_{\max}(H_S)$ (sharpest batch)")
            ax.plot(grid, self.fitted_lr(grid), "-", label=r"$2/\lambda'(B)$, fit $a + b\,x(B)$")
            if self.optimizer == "adam":
                ax.plot(grid, self.sqrt_rule(grid), "--", label=r"square-root rule $\propto\sqrt{B}$")
            else:
                ax.plot(grid, self.linear_rule(grid), "--", label=r"linear rule $\propto B$")
            if self.noise is not None and np.isfinite(self.noise.eps_max):
                ax.plot(grid, self.noise.eps_opt(grid), "-.", label=r"$\epsilon_{opt}(B)$ (McCandlish et al.)")
                if np.isfinite(self.noise.b_noise) and B[0] <= self.noise.b_noise <= B[-1]:
                    ax.axvline(self.noise.b_noise, color="gray", lw=0.8, ls=":", label=r"$B_{noise}$")
            ax.set_ylabel("learning rate")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch size B")
        ax.legend(fontsize="small")
        return ax


def _default_batch_sizes(n: int) -> list[int]:
    sizes = [2**k for k in range(3, 31) if 2**k < n]
    return sizes[-7:]


def lr_batch_scaling(
    problem: Problem,
    batch_sizes: Sequence[int] | None = None,
    *,
    optimizer: str = "sgd",
    num_batches: int = 8,
    seed: int = 0,
    tol: float = 1e-4,
    anchor_lr: float | None = None,
    noise: bool = True,
    noise_pairs: int = 32,
    engine: str = "double_backward",
    progress: bool = False,
) -> ScalingReport:
    """How the batch Hessian's top eigenvalue, and with it the maximal stable learning rate, change with batch size.

    For every ``B`` the top eigenvalue of ``num_batches`` random minibatch Hessians is measured
    (:func:`batch_sharpness`). Granziol, Zohren, Roberts (JMLR 2022) predict ``lambda'(B) ~ lambda_1 + c/B`` for an
    outlier above the bulk, else the bulk edge ``~ 1/sqrt(B)``; both ``a + b x(B)`` and ``a + b sqrt(x(B))`` (with the
    finite-population ``x(B) = (n - B) / (B (n - 1))``) are fitted by weighted least squares. Gradient descent on a
    batch is stable iff ``lr < 2 / lambda_max(H_B)``, the predicted maximal stable SGD learning rate; the linear rule
    (Goyal et al. 2017) and, for Adam, the square-root rule (Malladi et al. 2022) are scaled from the anchor. With
    ``noise=True`` the gradient noise scale (:func:`gradient_noise_scale`, McCandlish et al. 2018) adds ``B_simple``,
    ``B_noise`` (critical batch size) and the optimal step ``eps_opt(B) = eps_max / (1 + B_noise / B)``.

    Parameters
    ----------
    problem : Problem
    batch_sizes : sequence of int, optional
        Batch sizes in ``[1, n]`` (duplicates dropped, sorted; ``n`` itself is always added as the reference).
        Default: up to seven powers of two from 8 below ``n``.
    optimizer : {"sgd", "adam"}
    num_batches : int
        Minibatches per batch size.
    seed : int
        Seed of every local generator (the same for each batch size); the global RNG is never touched.
    tol : float
        Lanczos relative residual tolerance.
    anchor_lr : float, optional
        Learning rate at the largest requested batch size that the rules scale from. Default: ``2 / lambda_max(H_B)``
        there for SGD; for Adam ``1`` (the rules are then multipliers of the learning rate used at that batch size).
    noise : bool
        Also compute the gradient noise scale (small batch: the smallest ``B < n``; large batch: ``n``).
    noise_pairs : int
        Small batches for the noise scale.
    engine : str
        Hessian-vector product engine.
    progress : bool
        Show a progress bar over the batch sizes on stderr.

    Returns
    -------
    ScalingReport
        ``.table()``, ``.plot()``, ``.summary()``, ``.to_dict()``.

    Raises
    ------
    ValueError
        Unknown optimizer, batch sizes outside ``[1, n]`` or fewer than one below ``n``, non-positive ``anchor_lr``.
    """
    start = time.perf_counter()
    problem = _check_problem(problem)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    n = problem.num_samples
    if batch_sizes is None:
        batch_sizes = _default_batch_sizes(n)
    if isinstance(batch_sizes, (int, np.integer)) or not isinstance(batch_sizes, (Sequence, np.ndarray)):
        raise TypeError(f"batch_sizes must be a sequence of ints, got {type(batch_sizes).__name__}")
    requested = sorted({_check_batch_size("batch_sizes entry", b, n) for b in batch_sizes})
    if not requested or requested[0] >= n:
        raise ValueError(f"batch_sizes needs at least one batch size below n={n} to show a scaling, got {batch_sizes}")
    if anchor_lr is not None and not (isinstance(anchor_lr, (int, float, np.floating)) and 0 < anchor_lr < math.inf):
        raise ValueError(f"anchor_lr must be a positive finite number, got {anchor_lr!r}")
    sizes = requested if requested[-1] == n else [*requested, n]

    sharp = tuple(
        batch_sharpness(problem, B, num_batches=num_batches, seed=seed, tol=tol, engine=engine)
        for B in progress_bar(sizes, "batch sizes", progress, unit="batch size")
    )
    B_arr = np.asarray(sizes, dtype=np.int64)
    means = np.array([s.mean for s in sharp])
    stderrs = np.array([s.stderr for s in sharp])
    fit = fit_batch_sharpness(B_arr, means, stderrs, n, model="outlier", tol=tol)
    fit_bulk = fit_batch_sharpness(B_arr, means, stderrs, n, model="bulk", tol=tol)

    anchor_b = requested[-1]
    if anchor_lr is not None:
        anchor, kind = float(anchor_lr), "given"
    elif optimizer == "sgd":
        anchor, kind = 2.0 / sharp[sizes.index(anchor_b)].mean, "spectral"
    else:
        anchor, kind = 1.0, "relative"
    nz = None
    if noise:
        nz = gradient_noise_scale(
            problem, small_batch=requested[0], large_batch=n, num_pairs=noise_pairs, seed=seed, engine=engine
        )
    matvecs = sum(s.num_matvecs for s in sharp) + (nz.num_matvecs if nz is not None else 0)
    return ScalingReport(
        batch_sizes=B_arr,
        sharpness=sharp,
        fit=fit,
        fit_bulk=fit_bulk,
        optimizer=optimizer,
        anchor_batch_size=int(anchor_b),
        anchor_lr=anchor,
        anchor_kind=kind,
        noise=nz,
        seed=_check_seed(seed),
        num_batches=int(num_batches),
        num_matvecs=int(matvecs),
        wall_time=time.perf_counter() - start,
        settings={"problem": problem.describe(), "tol": float(tol), "engine": engine, "noise_pairs": noise_pairs},
    )


__all__ = [
    "BatchSharpness",
    "NoiseScale",
    "ScalingFit",
    "ScalingReport",
    "batch_sharpness",
    "finite_population_factor",
    "fit_batch_sharpness",
    "gradient_noise_scale",
    "lr_batch_scaling",
]
