"""How the maximal stable learning rate changes with the batch size, from the measured batch-Hessian spectra.

Gradient descent on one batch is stable iff ``lr < 2 / lambda_max(H_B)``. Granziol, Zohren and Roberts ("Learning
rates as a function of batch size: a random matrix theory approach to neural network training", JMLR 2022) show that
``lambda_max(H_B)`` of a minibatch of ``B`` examples exceeds that of the full-data Hessian: an outlier ``lambda_1``
above the bulk moves to ``lambda'(B) ~ lambda_1 + c x(B)``, the bulk edge grows like ``sqrt(x(B))``, with the
finite-population factor ``x(B) = (n - B) / (B (n - 1))`` (:mod:`landscape.scaling.minibatch`). The maximal stable
learning rate of SGD therefore grows with ``B`` (linearly while ``c x(B)`` dominates ``lambda_1``: the linear-scaling
rule of Goyal et al. 2017, "Accurate, large minibatch SGD: training ImageNet in 1 hour") and saturates at
``2/lambda_1``. For Adam the same paper and Malladi, Lyu, Panigrahi, Arora ("On the SDEs and scaling rules for
adaptive gradient algorithms", NeurIPS 2022) give the square-root rule ``lr ~ sqrt(B)``.

:func:`lr_batch_scaling` measures ``lambda_max(H_B)`` across batch sizes, fits both regimes by weighted least squares
(:func:`fit_batch_sharpness`) and adds the gradient noise scale of McCandlish et al. 2018
(:mod:`landscape.scaling.noise_scale`), whose critical batch size ``B_noise`` marks where larger batches stop paying.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from landscape._checks import Seed, check_batch_size, check_int, check_positive, seed_int
from landscape.linalg.results import Diagnostics
from landscape.problem import Problem, check_problem
from landscape.progress import progress as progress_bar
from landscape.scaling.minibatch import (
    BatchSharpness,
    batch_sharpness,
    check_engine,
    check_tol,
    finite_population_factors,
)
from landscape.scaling.noise_scale import NoiseScale, gradient_noise_scale

OPTIMIZERS = ("sgd", "adam")


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
        x = finite_population_factors(np.asarray(batch_size, dtype=np.float64), self.num_samples)
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
    x = finite_population_factors(B, n)
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


def _per_batch_size(statistic: str, doc: str) -> property:
    """A read-only ``(m,)`` array: the ``statistic`` attribute of each :class:`BatchSharpness` of a
    :class:`ScalingReport`, in batch-size order."""

    def get(report: ScalingReport) -> np.ndarray:
        return np.array([getattr(s, statistic) for s in report.sharpness])

    return property(get, doc=doc)


@dataclass(frozen=True)
class ScalingReport(Diagnostics):
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
    num_batches
        Batches per size.
    num_matvecs
        Hessian-vector products in total (minibatch and full-data).
    seed, wall_time, settings
        From :class:`~landscape.linalg.results.Diagnostics`: the ``int`` seed (the same for every batch size; drawn
        from the ``torch.Generator`` when one was given); ``settings`` holds ``problem`` (``Problem.describe()``),
        ``tol``, ``engine``.
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
    num_batches: int
    num_matvecs: int

    @property
    def num_samples(self) -> int:
        return int(self.batch_sizes[-1])

    lambda_mean = _per_batch_size("mean", "``(m,)`` mean ``lambda_max(H_B)`` per batch size.")
    lambda_std = _per_batch_size("std", "``(m,)`` spread of ``lambda_max(H_B)`` over the sampled batches.")
    lambda_stderr = _per_batch_size("stderr", "``(m,)`` standard errors of :attr:`lambda_mean`.")
    lambda_worst = _per_batch_size(
        "max", "``(m,)`` largest ``lambda_max(H_B)`` among the sampled batches of each size."
    )

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
        """Log-log plot against the batch size; returns the matplotlib axes (see
        :func:`landscape.plot.scaling.scaling_plot`).

        ``kind="lr"``: ``2 / lambda_max(H_B)`` with error bars, ``2 / lambda'(B)`` from the fit, the linear (SGD) or
        square-root (Adam) rule, and ``eps_opt(B)`` with the critical batch size ``B_noise``.
        ``kind="sharpness"``: ``lambda_max(H_B)`` with error bars, both fits and ``lambda_max(H)``.
        """
        from landscape.plot.scaling import scaling_plot

        return scaling_plot(self, ax, kind=kind)


def _default_batch_sizes(n: int) -> list[int]:
    sizes = [2**k for k in range(3, 31) if 2**k < n]
    return sizes[-7:]


def lr_batch_scaling(
    problem: Problem,
    batch_sizes: Sequence[int] | None = None,
    *,
    optimizer: str = "sgd",
    num_batches: int = 8,
    seed: Seed = 0,
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
    seed : int or torch.Generator
        Root seed of every local generator (the same for each batch size and the noise scale); the global RNG is
        never touched. A ``torch.Generator`` gives the root seed as one ``int`` drawn from it (which advances it);
        that ``int`` is what the report records, so ``torch.Generator().manual_seed(s)`` gives the same report every
        time.
    tol : float
        Lanczos relative residual tolerance, in ``(0, 1)``.
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
    TypeError
        ``problem`` not a :class:`landscape.Problem`; ``batch_sizes`` not a sequence of ints; ``num_batches``,
        ``seed``, ``tol`` or ``anchor_lr`` of the wrong type.
    ValueError
        Unknown optimizer or engine, batch sizes outside ``[1, n]`` or fewer than one below ``n``, ``num_batches < 1``,
        ``tol`` outside ``(0, 1)``, non-positive ``anchor_lr``.
    """
    start = time.perf_counter()
    problem = check_problem(problem)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    n = problem.num_samples
    if batch_sizes is None:
        batch_sizes = _default_batch_sizes(n)
    if isinstance(batch_sizes, (int, np.integer)) or not isinstance(batch_sizes, (Sequence, np.ndarray)):
        raise TypeError(f"batch_sizes must be a sequence of ints, got {type(batch_sizes).__name__}")
    requested = sorted({check_batch_size("batch_sizes entry", b, n) for b in batch_sizes})
    if not requested or requested[0] >= n:
        raise ValueError(f"batch_sizes needs at least one batch size below n={n} to show a scaling, got {batch_sizes}")
    if anchor_lr is not None:
        anchor_lr = check_positive("anchor_lr", anchor_lr, "learning rate at the anchor batch size")
    num_batches = check_int("num_batches", num_batches, 1, "minibatches per batch size")
    tol = check_tol(tol)
    engine = check_engine(engine)
    seed = seed_int(seed)
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
        anchor, kind = anchor_lr, "given"
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
        seed=seed,
        num_batches=num_batches,
        num_matvecs=int(matvecs),
        wall_time=time.perf_counter() - start,
        settings={"problem": problem.describe(), "tol": tol, "engine": engine, "noise_pairs": noise_pairs},
    )
