"""Top Hessian eigenvalue of random minibatches, and how minibatches are drawn.

A minibatch ``S`` of ``B`` examples drawn without replacement from the ``n`` examples of the data has the Hessian
``H_B = (1/B) sum_{i in S} H_i``, an unbiased estimate of the full-data Hessian ``H`` whose fluctuation ``H_B - H``
has variance proportional to

    x(B) = (n - B) / (B (n - 1))            (= 1/B for B << n, 0 for B = n; finite-population correction).

Granziol, Zohren and Roberts ("Learning rates as a function of batch size: a random matrix theory approach to neural
network training", JMLR 2022) show that the top eigenvalue of ``H_B`` then moves *up*: an outlier ``lambda_1``
well above the bulk moves to ``lambda'(B) ~ lambda_1 + c x(B)`` (second-order perturbation theory: the first-order
term ``v_1^T (H_B - H) v_1`` averages to zero, the second-order one ``sum_j |v_j^T (H_B - H) v_1|^2 /
(lambda_1 - lambda_j)`` does not), while without an outlier the top of the spectrum is the bulk edge, which grows
like ``sqrt(x(B))``. Gradient descent on one batch is stable iff ``lr < 2 / lambda_max(H_B)``.

Losses with ``reduction="sum"`` are rescaled so that every minibatch quantity estimates the full-data one: the
minibatch loss is ``(n/B) sum_{i in S} l_i``, an unbiased estimate of ``L = sum_i l_i``. With BatchNorm in train mode
the examples of a batch interact; batch quantities are then those of the batch as SGD would see it, and "per-example"
statements hold only approximately.
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

from landscape._checks import Seed, check_batch_size, check_int, check_positive, seed_int
from landscape.example_pool import Examples
from landscape.linalg import ConvergenceWarning, top_eigen
from landscape.linalg.results import Diagnostics
from landscape.operators import hessian
from landscape.problem import Problem, check_problem

ENGINES = ("double_backward", "forward_over_reverse")


def check_engine(engine: object) -> str:
    """``engine`` itself when it is a Hessian-vector product engine of :func:`landscape.hessian`."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    return engine


def finite_population_factor(batch_size: int, n: int) -> float:
    """``x(B) = (n - B) / (B (n - 1))``: the variance of a mean over ``B`` of ``n`` examples drawn without
    replacement, relative to the per-example variance (``1/B`` for ``B << n``; ``0`` for ``B = n``)."""
    if n <= 1:
        return 0.0
    return (n - batch_size) / (batch_size * (n - 1))


def finite_population_factors(batch_size: np.ndarray, n: int) -> np.ndarray:
    """Vectorised :func:`finite_population_factor`."""
    if n <= 1:
        return np.zeros_like(batch_size)
    return (n - batch_size) / (batch_size * (n - 1))


def loss_scale(problem: Problem, batch_size: int, n: int) -> float:
    """Factor turning a minibatch loss of ``problem.loss_fn`` into an unbiased estimate of the full-data loss."""
    return 1.0 if problem.reduction == "mean" else n / batch_size


def minibatch_problem(problem: Problem, examples: Examples, idx: Tensor) -> Problem:
    """The problem restricted to the examples ``idx`` (global indices), as one batch (one BatchNorm batch in train
    mode). Data-parallel, the minibatch is gathered onto every rank (:mod:`landscape.example_pool`), except the whole
    data set in eval mode, which stays sharded: the full-data problem itself."""
    whole = idx.numel() == problem.num_samples and bool((idx == torch.arange(idx.numel())).all())
    if problem.dist is not None and whole and problem.mode == "eval":
        return problem
    return examples.problem_of(idx)


def check_tol(tol: object) -> float:
    """``tol`` as a ``float`` in ``(0, 1)``: a relative Ritz residual tolerance of Lanczos."""
    tol = check_positive("tol", tol, "relative Ritz residual tolerance of Lanczos")
    if tol >= 1:
        raise ValueError(f"tol must be a number in (0, 1) (relative Ritz residual tolerance of Lanczos), got {tol!r}")
    return tol


def _mean_std_stderr(values: np.ndarray, exact: bool) -> tuple[float, float, float]:
    mean = float(np.mean(values))
    if values.size > 1:
        std = float(np.std(values, ddof=1))
        return mean, std, std / math.sqrt(values.size)
    return (mean, 0.0, 0.0) if exact else (mean, math.nan, math.nan)


@dataclass(frozen=True)
class BatchSharpness(Diagnostics):
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
    tol
        Relative residual tolerance of :func:`landscape.linalg.top_eigen`.
    num_matvecs
        Minibatch Hessian-vector products in total (each costs a pass over ``B`` examples, not ``n``).
    seed, wall_time, settings
        From :class:`~landscape.linalg.results.Diagnostics`. ``seed`` is the ``int`` seed of the local generator
        that drew the batches and the Lanczos start vectors (drawn from the ``torch.Generator`` when one was given
        as ``seed``); ``settings`` holds ``problem`` (``Problem.describe()``: BatchNorm/dropout policy, dtype,
        parameters), ``engine``, ``sampling``, ``loss_scale`` (``n/B`` for sum-reduced losses, else 1),
        ``num_batches`` asked for.
    """

    values: np.ndarray
    batch_size: int
    num_samples: int
    converged: np.ndarray
    residuals: np.ndarray
    tol: float
    num_matvecs: int

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
    seed: Seed = 0,
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
    seed : int or torch.Generator
        Root seed of a local ``torch.Generator`` (batches, then Lanczos starts); the global RNG is never touched. A
        ``torch.Generator`` gives the root seed as one ``int`` drawn from it (which advances it); that ``int`` is
        what the result records, so ``torch.Generator().manual_seed(s)`` gives the same values every time.
    tol : float
        Relative Ritz residual tolerance of Lanczos, in ``(0, 1)``.
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
    TypeError
        ``problem`` not a :class:`landscape.Problem`; ``batch_size``, ``num_batches``, ``seed`` or ``tol`` of the
        wrong type.
    ValueError
        ``batch_size`` outside ``[1, n]``, ``num_batches < 1``, ``tol`` outside ``(0, 1)`` or an unknown engine.
    """
    start = time.perf_counter()
    problem = check_problem(problem)
    n = problem.num_samples
    batch_size = check_batch_size("batch_size", batch_size, n)
    num_batches = check_int("num_batches", num_batches, 1, "minibatches to draw")
    tol = check_tol(tol)
    engine = check_engine(engine)
    seed = seed_int(seed)

    examples = Examples(problem)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    exact = batch_size == n
    draws = [torch.arange(n)] if exact else [torch.randperm(n, generator=gen)[:batch_size] for _ in range(num_batches)]
    scale = loss_scale(problem, batch_size, n)
    values, residuals, converged = [], [], []
    matvecs = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for idx in draws:
            op = hessian(minibatch_problem(problem, examples, idx), engine=engine, block="loop")
            res = top_eigen(op, 1, tol=tol, max_matvecs=max_matvecs, seed=gen, vectors=False)
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
        tol=tol,
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
